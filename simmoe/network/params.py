"""Network parameters: protocol efficiency per link class, per-message latency and the
message-size efficiency curve. One documented set serves every case (docs/network.md); calibration
may replace it, nothing may key it to a particular case.

CONTRACT: the flow-level and analytical backends read only these methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field


# NCCL's Hopper NVLS efficiency: the in-switch (NVLink SHARP) path moves payload at 0.85 of what
# NCCL's copy-based algorithms reach on the same NVLink ports (NVIDIA/nccl src/graph/tuning.cc,
# ``nvlsEfficiency``: Hopper 0.85, Blackwell 0.74; docs/network.md).
NVLS_EFFICIENCY_HOPPER = 0.85
NVLINK_EFFICIENCY_NCCL = 0.82


@dataclass(frozen=True)
class NetworkParams:
    # Fraction of a link's line rate that collective payload achieves at large messages (protocol
    # headers, flow control, NCCL's LL128/Simple framing). Values and their sources: docs/network.md.
    link_efficiency: dict[str, float] = field(default_factory=lambda: {
        "nvlink": NVLINK_EFFICIENCY_NCCL,
        "pcie": 0.80,
        "ib-ndr": 0.97,
        "ib-hdr": 0.97,
        "ib-xdr": 0.97,
        "eth-100g": 0.90,
        "eth-400g": 0.90,
        "wan": 0.90,
    })
    default_link_efficiency: float = 0.90
    # Transport engines that reach a different fraction of a link class than NCCL does (the
    # figures above). A collective names its engine in meta["engine"]; classes not listed keep
    # link_efficiency. DeepEP's normal kernels copy NVLink payload with a fixed SM budget (24 SMs)
    # and reach about 0.64 of NVLink line rate (DeepEP V2 README, B200 EP8 at 24 SMs); sources in
    # docs/network.md. HybridEP (NVIDIA's TMA-based EP kernels in DeepEP's hybrid-ep branch) on
    # GB200 multi-node NVLink: 0.67 (its published GB200 table, 32 ranks, 32 SMs, kernel time;
    # docs/network.md). NCCL's NVLS all-reduce (in-switch reduction + multicast) runs at NCCL's
    # NVLink rate times its Hopper NVLS efficiency.
    engine_link_efficiency: dict[str, dict[str, float]] = field(default_factory=lambda: {
        "deepep": {"nvlink": 0.64},
        "hybridep": {"nvlink": 0.67},
        "nvls": {"nvlink": NVLINK_EFFICIENCY_NCCL * NVLS_EFFICIENCY_HOPPER},
    })
    # Software + launch latency paid once per sequential step of a collective (NCCL's alpha).
    step_latency_s: float = 5e-6
    # Per-flow message-size efficiency: eff(m) = m / (m + half_efficiency_bytes). Small messages
    # cannot fill a pipe: fixed per-chunk costs dominate.
    half_efficiency_bytes: float = 64 * 1024

    # SMs an NCCL collective holds on each GPU while it runs: one CTA per channel, each on an SM
    # of its own (NVIDIA/nccl issue 689, maintainer: NCCL CTAs won't share an SM with compute
    # kernels). NCCL opens two channels per NVLink of the GPU, at most MAXCHANNELS = 32 (issue
    # 1225: DGX A100, 12 NVLinks, 24 CTAs; issue 892: 8x H800, 8 NVLinks, "16 coll channels";
    # issue 1429: Hopper's channel count follows its 18 NVLinks); without NVLink, 2 (issue 689).
    nccl_channels_per_nvlink: int = 2
    nccl_max_channels: int = 32
    nccl_min_channels: int = 2

    def nccl_sms(self, nvlink_links: int) -> int:
        """SMs an NCCL collective kernel keeps from compute on a GPU with ``nvlink_links`` links."""
        return max(self.nccl_min_channels,
                   min(self.nccl_channels_per_nvlink * int(nvlink_links), self.nccl_max_channels))

    def efficiency_of(self, link_class: str, engine: str | None = None) -> float:
        if engine is not None and link_class in self.engine_link_efficiency.get(engine, {}):
            return self.engine_link_efficiency[engine][link_class]
        return self.link_efficiency.get(link_class, self.default_link_efficiency)

    def message_efficiency(self, size_bytes):
        """Fraction of bandwidth a message of ``size_bytes`` achieves (array-friendly)."""
        return size_bytes / (size_bytes + self.half_efficiency_bytes)


DEFAULT_NETWORK_PARAMS = NetworkParams()
