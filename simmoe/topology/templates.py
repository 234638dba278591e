"""Node templates: what one server looks like inside (GPUs, NVLink domain, NICs, PCIe).

A template is data. GPU and NIC figures (NVLink and PCIe rates, NIC line rate) come from
simmoe/data/hardware.yaml; a template only says how many of each and how they are wired. A topology
file may override any field (``node: {template: dgx-h100, nic: Ethernet-400G}``).

Wiring model, shared by every template:

* An NVSwitch system (one HGX baseboard, or a whole NVL72 rack) is one crossbar node per NVLink
  domain with one link each way per GPU at the GPU's NVLink rate per direction. NVSwitch is
  non-blocking, so the crossbar adds no constraint beyond the GPU's own NVLink ports.
* GPU ``i`` of a server talks to NIC ``i * nics_per_server // gpus_per_server`` over its own PCIe
  link (on DGX this goes through a PCIe switch shared by the GPU and its NIC; when several GPUs share
  a NIC, the NIC's single port is the shared bottleneck, which is what the model captures).
"""

from __future__ import annotations

from dataclasses import dataclass

# Latency per link and direction, in seconds. These are assumptions, chosen inside published ranges
# and documented in docs/topology.md; calibration (measured all-to-all / all-reduce at small
# messages) is the way to replace them.
#  - NVLink: a GPU -> NVSwitch -> GPU hop is commonly quoted at roughly 0.5-1 us of one-way latency
#    for small messages; we split 0.8 us as 0.4 us per link.
#  - PCIe: GPU -> PCIe switch -> NIC, one way, a few hundred ns to ~0.5 us; we take 0.5 us, which
#    also absorbs the NIC's own processing.
NVLINK_LATENCY_S = 0.4e-6
PCIE_LATENCY_S = 0.5e-6


@dataclass(frozen=True)
class NodeTemplate:
    name: str
    description: str
    gpu: str  # key into simmoe/data/hardware.yaml gpus
    gpus_per_server: int
    nic: str  # key into simmoe/data/hardware.yaml nics
    nics_per_server: int
    # Servers sharing one NVLink domain: 1 for an HGX/DGX box, 18 compute trays for GB200 NVL72.
    servers_per_nvlink_domain: int = 1
    # None: take the GPU's figure from hardware.yaml.
    nvlink_GBps_per_direction: float | None = None
    pcie_GBps_per_direction: float | None = None
    nvlink_latency_s: float = NVLINK_LATENCY_S
    pcie_latency_s: float = PCIE_LATENCY_S


TEMPLATES: dict[str, NodeTemplate] = {t.name: t for t in [
    NodeTemplate(
        name="dgx-h100",
        description="NVIDIA DGX H100: 8 H100-SXM on NVSwitch (450 GB/s per direction per GPU), "
                    "8 ConnectX-7 400G NICs, one per GPU over PCIe Gen5",
        gpu="H100-SXM", gpus_per_server=8, nic="ConnectX-7-NDR", nics_per_server=8),
    NodeTemplate(
        name="hgx-h800",
        description="HGX H800 as in DeepSeek-V3's cluster: 8 H800 on NVLink (200 GB/s per "
                    "direction, 400 bidirectional), one 400G InfiniBand NIC per GPU",
        gpu="H800-SXM", gpus_per_server=8, nic="ConnectX-7-NDR", nics_per_server=8),
    NodeTemplate(
        name="dgx-a100",
        description="NVIDIA DGX A100: 8 A100-SXM-80GB on NVSwitch (300 GB/s per direction), "
                    "8 ConnectX-6 HDR 200G NICs over PCIe Gen4",
        gpu="A100-SXM-80GB", gpus_per_server=8, nic="ConnectX-6-HDR", nics_per_server=8),
    NodeTemplate(
        name="dgx-b200",
        description="NVIDIA DGX B200: 8 B200 on NVLink 5 (900 GB/s per direction), "
                    "8 ConnectX-7 400G NICs",
        gpu="B200", gpus_per_server=8, nic="ConnectX-7-NDR", nics_per_server=8),
    NodeTemplate(
        name="gb200-nvl72",
        description="GB200 NVL72 rack: 18 compute trays of 4 GPUs in one 72-GPU NVLink domain "
                    "(900 GB/s per direction per GPU), one 400G ConnectX-7 per GPU "
                    "(set nic: ConnectX-8-XDR and pcie_GBps_per_direction: 128 for 800G)",
        gpu="GB200", gpus_per_server=4, nic="ConnectX-7-NDR", nics_per_server=4,
        servers_per_nvlink_domain=18),
    NodeTemplate(
        name="h100-roce-4x100g",
        description="H100 HGX server with only 4 x 100 GbE RoCE NICs: two GPUs share each NIC "
                    "through PCIe (the weak-interconnect case)",
        gpu="H100-SXM", gpus_per_server=8, nic="Ethernet-100G", nics_per_server=4),
]}


def template_names() -> list[str]:
    return sorted(TEMPLATES)
