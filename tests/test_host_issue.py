"""Host issue (simmoe.engine.host): measured inputs carried faithfully, hand-computable pipelines,
the dispatcher's sync, and the scenario field."""

from __future__ import annotations

import csv
import statistics
from pathlib import Path

import pytest
import yaml

from simmoe.config.loader import load_default_scenario
from simmoe.engine.host import (GRAPH_REPLAY_OPS, GRAPH_SCOPE_PARTS, HOST_DIR, HostCosts, host_costs,
                                is_host_sync, op_host_s, op_part, part_ops, program_host_s)
from simmoe.engine.program import compile_program
from simmoe.engine.runner import Simulation
from simmoe.engine.schedules import build_schedule, exchange_calls
from simmoe.errors import InputError
from simmoe.workload.ops import CollectiveOp, MemoryOp

from test_engine import ConstantCompute, SendingPrograms

ROOT = Path(__file__).resolve().parents[1]


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_cpu_figures_are_the_committed_measurements():
    cpus = yaml.safe_load((HOST_DIR / "cpus.yaml").read_text())["cpus"]
    assert cpus, "no host CPU"
    for name, cpu in cpus.items():
        if "scaled" in cpu:  # not measured here (test_a_scaled_host_is_its_measured_host_times_the_ratio)
            continue
        path = ROOT / cpu["source"].split()[0]
        rows = {r["probe"]: r for r in _csv(path)}
        assert cpu["probe_mul_s"] == pytest.approx(float(rows["mul"]["host_s_per_op"]), rel=1e-6), name
        assert cpu["sync_s"] == pytest.approx(float(rows["item"]["host_s_per_op"]), rel=1e-6), name
        # per linear of a chain of n: 2 GEMMs and 1 gradient add, less one GEMM at the start
        bwd = rows["linear_autograd_backward"]
        n = int(bwd["ops"])
        assert cpu["bwd_kernel_s"] == pytest.approx(float(bwd["host_s_per_op"]) * n / (3 * n - 2), rel=1e-6), name
        if "cpu_mul_s" in cpu:  # the host's CPU speed, where its run had the probe
            assert cpu["cpu_mul_s"] == pytest.approx(float(rows["mul_cpu"]["host_s_per_op"]), rel=1e-6), name


def test_layer_seconds_by_hand_from_the_megatron_measurement():
    rows = _csv(HOST_DIR / "megatron-core-0.16.1-cpu.csv")
    cpus = yaml.safe_load((HOST_DIR / "cpus.yaml").read_text())["cpus"]
    got = host_costs("megatron_core", "x86-lent-1")
    timed = [r for r in rows if r["host_s"]]
    cpu_op_s = statistics.median(float(r["probe_mul_s"]) for r in timed)  # no cpu_mul_s measured
    # phase -> (the CSV's probe column, the GPU host's field for the same probe)
    probe = {"fwd": ("probe_mul_s", "probe_mul_s"), "bwd": ("probe_bwd_kernel_s", "bwd_kernel_s")}
    ops = {}
    for kind in ("dense", "moe"):
        for phase in ("fwd", "bwd"):
            column, field = probe[phase]
            gpu_op_s = cpus["x86-lent-1"][field]
            mine = [r for r in rows if r["layer"] == kind and r["phase"] == phase]
            # the layer's seconds per op less the bare op of its phase, in bare forward ops
            framework = [(float(r["host_s"]) / int(r["ops"]) - float(r[column])) / float(r["probe_mul_s"])
                         for r in mine if r["host_s"]]
            # a GQA model's layer: the reference's ops plus the two fused RoPE calls each way the
            # model's rotary embedding adds (counted by part), at the reference's mean share
            ops[kind, phase] = sum(part_ops("megatron_core", "gqa_rope")[(kind, phase)].values())
            assert ops[kind, phase] == max(int(r["ops"]) for r in mine) + 2
            want = ops[kind, phase] * (statistics.median(framework) * cpu_op_s + gpu_op_s)
            assert got.layer_s[(kind, phase)] == pytest.approx(want)
    # A slower GPU host adds its slower bare issue per op, nothing more: its CPU was not measured.
    slow = host_costs("megatron_core", "x86-lent-2")
    for (kind, phase), s in got.layer_s.items():
        field = probe[phase][1]
        extra = cpus["x86-lent-2"][field] - cpus["x86-lent-1"][field]
        assert extra > 0
        assert slow.layer_s[(kind, phase)] == pytest.approx(s + ops[kind, phase] * extra)
    # Megatron-Core issues more per MoE layer than per dense one, and the counts are what the
    # harness saw: attention is the same code in both.
    assert got.layer_s[("moe", "fwd")] > got.layer_s[("dense", "fwd")]


def test_a_measured_host_cpu_carries_the_framework_by_its_speed(monkeypatch):
    import simmoe.engine.host as host

    ref = host_costs("megatron_core", "x86-lent-1")
    rows = _csv(HOST_DIR / "megatron-core-0.16.1-cpu.csv")
    cpu_op_s = statistics.median(float(r["probe_mul_s"]) for r in rows if r["host_s"])
    lent = dict(host._cpus()["x86-lent-1"])
    monkeypatch.setattr(host, "_cpus", lambda: {"x86-lent-1": lent,
                                                "twice-slower": {**lent, "cpu_mul_s": 2 * cpu_op_s}})
    slow = host_costs("megatron_core", "twice-slower")
    for key, s in ref.layer_s.items():
        ops = sum(part_ops("megatron_core", "gqa_rope")[key].values())
        gpu_op_s = lent["probe_mul_s"] if key[1] == "fwd" else lent["bwd_kernel_s"]
        # the framework's share doubles; the GPU issue share is the host's own
        assert slow.layer_s[key] - ops * gpu_op_s == pytest.approx(2 * (s - ops * gpu_op_s))


def test_a_scaled_host_is_its_measured_host_times_the_ratio():
    cpus = yaml.safe_load((HOST_DIR / "cpus.yaml").read_text())["cpus"]
    scaled = {name: cpu["scaled"] for name, cpu in cpus.items() if "scaled" in cpu}
    assert "grace-gb200" in scaled
    # TransformerEngine issue 2053: one torch.nn.Linear forward's host time, GB200 37.08 us
    # against an H100 DGX's Xeon 13.48 us: x2.75 on every cost of the layer.
    assert scaled["grace-gb200"]["host_us"] / scaled["grace-gb200"]["of_host_us"] == pytest.approx(2.7507, abs=1e-4)
    for name, sc in scaled.items():
        assert "scaled" not in cpus[sc["of"]], name  # one level: the base is measured
        base, this = host_costs("megatron_core", sc["of"]), host_costs("megatron_core", name)
        factor = sc["host_us"] / sc["of_host_us"]
        assert factor > 1.0, name
        for key, s in base.layer_s.items():
            assert this.layer_s[key] == pytest.approx(factor * s, rel=1e-12), (name, key)
        assert this.op_s == pytest.approx(factor * base.op_s)
        assert this.sync_s == pytest.approx(factor * base.sync_s)


def test_unknown_names_are_input_errors():
    with pytest.raises(InputError, match="host.cpu"):
        host_costs("megatron_core", "pentium")
    with pytest.raises(InputError, match="host.cpu"):
        load_default_scenario(["host.stack=megatron_core", "host.cpu=pentium"])


# ----------------------------------------------------------------------------- hand-computable


class LayerPrograms:
    """One layer (index 0) of ``n`` ops of ``d`` seconds forward and backward on each stage."""

    def __init__(self, n: int, d: float) -> None:
        self.n, self.d = n, d

    def stage_program(self, v):
        return ([MemoryOp(f"f{v}.{i}", 0, "fwd", bytes_moved=self.d) for i in range(self.n)],
                [MemoryOp(f"b{v}.{i}", 0, "bwd", bytes_moved=self.d) for i in range(self.n)])

    def step_ops(self, s):
        return []


def _sim(host_fwd_s: float, host_bwd_s: float, n=4, d=1.0, pp=1, gb=64):
    sc = load_default_scenario(["parallelism.ep=4", f"parallelism.pp={pp}",
                                f"training.global_batch={gb}"])
    sim = Simulation(sc, programs=LayerPrograms(n, d), compute=ConstantCompute())
    sim.host_costs = HostCosts("test", "test", {("dense", "fwd"): host_fwd_s, ("dense", "bwd"): host_bwd_s,
                                                ("moe", "fwd"): host_fwd_s, ("moe", "bwd"): host_bwd_s},
                               op_s=0.0, sync_s=0.0)
    return sim


def test_a_host_slower_than_the_gpu_sets_the_pace():
    # pp 1: F0 B0 F1 B1 ... back to back. GPU: 4 + 4 s per micro-batch; host: 6 + 10 s. The host
    # never waits (no sync), so micro-batch i's backward is issued at 16 (i + 1) s, and the GPU
    # cannot finish it earlier: the step is m x 16 s.
    sim = _sim(6.0, 10.0)
    r = sim.run_step(0)
    assert r.step_time_s == pytest.approx(sim.m * 16.0)
    assert r.breakdown()["host_late_s"] == pytest.approx(sim.m * (16.0 - 8.0))


def test_a_host_faster_than_the_gpu_costs_nothing():
    # The host runs ahead; every node is issued before the GPU reaches it.
    sim = _sim(3.0, 3.5)
    r = sim.run_step(0)
    assert r.step_time_s == pytest.approx(sim.m * 8.0)
    assert r.breakdown()["host_late_s"] == 0.0


def test_a_pipeline_stage_waiting_for_its_input_lets_the_host_run_ahead():
    # pp 2, host 1.5x the GPU per stage: the host of the last stage issues while waiting for its
    # first input; the step is still bounded below by the host's total issue time per rank.
    sim = _sim(6.0, 6.0, pp=2, gb=32)
    t = sim.run_step(0).step_time_s
    assert t >= sim.m * 12.0 - 1e-9
    plain = _sim(0.0, 0.0, pp=2, gb=32).run_step(0).step_time_s
    assert t > plain


def test_ops_outside_the_layers_cost_one_bare_op_and_share_their_layer_evenly():
    ops = [MemoryOp("embed", None, "fwd", bytes_moved=1.0),
           MemoryOp("L0.a", 0, "fwd", bytes_moved=1.0),
           CollectiveOp("L0.dispatch", 0, "fwd", group="ep", collective="alltoall_dispatch",
                        bytes_per_token=1.0),
           MemoryOp("L0.b", 0, "fwd", bytes_moved=1.0),
           MemoryOp("L1.a", 1, "fwd", bytes_moved=1.0)]
    prog = compile_program(ops)
    costs = HostCosts("t", "t", {("moe", "fwd"): 9.0, ("dense", "fwd"): 4.0,
                                 ("moe", "bwd"): 0.0, ("dense", "bwd"): 0.0}, op_s=0.5, sync_s=0.0)
    seconds, syncs = program_host_s(prog, costs, moe_layers={0})
    per_op = [0.5, 3.0, 3.0, 3.0, 4.0]  # layer 0: 9 s over its 3 ops; layer 1 (dense): 4 s
    by_node = [sum(per_op[i] for i in node.ops) for node in prog.nodes]
    assert seconds == pytest.approx(by_node)
    assert sum(seconds) == pytest.approx(sum(per_op))
    assert [n.label for n, s in zip(prog.nodes, syncs) if s] == ["L0.dispatch"]
    assert is_host_sync(ops[2])
    assert not is_host_sync(CollectiveOp("L0.dispatch", 0, "bwd", group="ep",
                                         collective="alltoall_dispatch"))


# ------------------------------------------------------------------ parts of a layer, CUDA graphs


def test_the_parts_count_the_same_ops_as_the_timed_run():
    """benchmarks/megatron_host_calls.py --parts-out splits each layer's ops by part; per kind and
    phase they add up to the ops of the timed run, and every part is one the model knows."""
    timed = _csv(HOST_DIR / "megatron-core-0.16.1-cpu.csv")
    parts = part_ops("megatron_core")
    known = {p for scope in GRAPH_SCOPE_PARTS.values() for kind in scope.values() for p in kind}
    known |= {"dispatcher", "experts"}
    for kind in ("dense", "moe"):
        for phase in ("fwd", "bwd"):
            want = max(int(r["ops"]) for r in timed if (r["layer"], r["phase"]) == (kind, phase))
            assert sum(parts[(kind, phase)].values()) == want, (kind, phase)
            assert set(parts[(kind, phase)]) <= known, parts[(kind, phase)]
    # what the model's scopes rest on: a MoE layer's forward is mostly attention and router
    assert parts[("moe", "fwd")]["attention"] == parts[("dense", "fwd")]["attention"]
    assert parts[("moe", "fwd")]["router"] > parts[("moe", "fwd")]["experts"]


def test_mla_layers_cost_their_own_ops_at_the_side_by_side_share_by_hand():
    """A multi-latent attention layer issues the ops counted for it (benchmarks/
    megatron_host_calls.py --attention mla). Its other parts are GQA's layer code: the same ops at
    the same cost. Its attention's ops carry the reference run's GQA framework share times the
    ratio timed side by side, where all of the two layers' difference is the attention's."""
    rows = _csv(HOST_DIR / "megatron-core-0.16.1-cpu.csv")
    side = _csv(HOST_DIR / "megatron-core-0.16.1-attention.csv")
    parts = _csv(HOST_DIR / "megatron-core-0.16.1-parts.csv")
    cpus = yaml.safe_load((HOST_DIR / "cpus.yaml").read_text())["cpus"]
    gqa, mla = host_costs("megatron_core", "x86-lent-1"), host_costs("megatron_core", "x86-lent-1",
                                                                     attention="mla")
    timed = [r for r in rows if r["host_s"]]
    cpu_op_s = statistics.median(float(r["probe_mul_s"]) for r in timed)
    probe = {"fwd": ("probe_mul_s", "probe_mul_s"), "bwd": ("probe_bwd_kernel_s", "bwd_kernel_s")}
    max_ep = max(int(r["ep"]) for r in parts)

    def counts(attention, kind, phase, ep):  # part -> ops (the counts do not depend on experts)
        return {r["part"]: int(r["ops"]) for r in parts
                if (r["attention"], r["layer"], r["phase"], int(r["ep"])) == (attention, kind, phase, ep)
                and r["local_experts"] in ("0", "4")}

    for kind in ("dense", "moe"):
        for phase in ("fwd", "bwd"):
            column, field = probe[phase]

            def share(r):
                return (float(r["host_s"]) / int(r["ops"]) - float(r[column])) / float(r["probe_mul_s"])

            framework = statistics.median(share(r) for r in timed
                                          if (r["layer"], r["phase"]) == (kind, phase))
            pairs = {}
            for r in side:
                if (r["layer"], r["phase"]) == (kind, phase):
                    pairs.setdefault((r["local_experts"], r["run"]), {})[r["attention"]] = r
            g_att = counts("gqa", kind, phase, 1)["attention"]
            m_att = counts("mla", kind, phase, 1)["attention"]
            ratio = statistics.median(
                (g_att * share(p["gqa"]) + int(p["mla"]["ops"]) * share(p["mla"])
                 - int(p["gqa"]["ops"]) * share(p["gqa"])) / (m_att * share(p["gqa"]))
                for p in pairs.values())
            gpu_op_s = cpus["x86-lent-1"][field]
            for part, n in counts("mla", kind, phase, max_ep).items():
                want = n * ((ratio if part == "attention" else 1.0) * framework * cpu_op_s + gpu_op_s)
                assert mla.part_s[(kind, phase)][part] == pytest.approx(want), (kind, phase, part)
                if part != "attention":  # the same code as GQA's layer: the same seconds
                    assert mla.part_s[(kind, phase)][part] == pytest.approx(gqa.part_s[(kind, phase)][part])
            assert mla.layer_s[(kind, phase)] == pytest.approx(sum(mla.part_s[(kind, phase)].values()))
            # measured: MLA's attention issues more ops than GQA's, each with more Python around it
            assert ratio > 1 and m_att > g_att
            assert mla.layer_s[(kind, phase)] > gqa.layer_s[(kind, phase)]
            # the side-by-side GQA layer is the reference run's: the same code, the same ops
            assert {int(r["ops"]) for r in side if (r["layer"], r["phase"], r["attention"])
                    == (kind, phase, "gqa")} == {int(r["ops"]) for r in timed
                                                 if (r["layer"], r["phase"]) == (kind, phase)}
            # and the side-by-side MLA layer issued the ops counted by part (ep 1: no exchange)
            assert {int(r["ops"]) for r in side if (r["layer"], r["phase"], r["attention"])
                    == (kind, phase, "mla")} == {sum(counts("mla", kind, phase, 1).values())}
    # MLA's attention is the same code in dense and MoE layers: the same extra seconds in both
    for phase in ("fwd", "bwd"):
        extra = {k: mla.part_s[(k, phase)]["attention"] - gqa.part_s[(k, phase)]["attention"]
                 for k in ("dense", "moe")}
        assert extra["dense"] == pytest.approx(extra["moe"], rel=0.15), (phase, extra)


def test_mha_layers_are_counted_as_gqa_and_the_runner_passes_the_models_attention():
    assert host_costs("megatron_core", "x86-lent-1", attention="mha") == host_costs(
        "megatron_core", "x86-lent-1")
    with pytest.raises(InputError, match="model.attention.type"):
        host_costs("megatron_core", "x86-lent-1", attention="linear")
    from simmoe.config.loader import load_scenario

    sc = load_scenario(ROOT / "scenarios" / "deepseek-v3-h800.yaml",
                       ["host.stack=megatron_core", "host.cpu=x86-lent-1"])
    assert sc.model.attention.type == "mla"
    assert Simulation(sc).host_costs == host_costs("megatron_core", "x86-lent-1", attention="mla")


# the op names of a layer that stand for the rest of Megatron-Core's layer (its residual add) or
# for no module of it (ZeRO's gathers, gradient accumulation)
_OTHER = ("moe.residual", "ffn.residual", "grad_accum", "zero")


@pytest.mark.parametrize("scenario", ["deepseek-v3-h800", "llama4-maverick-h100",
                                      "validation/scenarios/qwen3-235b-a22b-h100x256-bf16-ep8-tp4"])
def test_every_op_of_a_layer_stands_for_a_part(scenario):
    """Each simmoe op of a layer maps to the part of Megatron-Core's layer that issues it, so a
    graphed part's ops leave the host (MLA, shared experts, FP8 quantization, TP collectives)."""
    from simmoe.config.loader import load_scenario
    from simmoe.workload import build_stage_program

    sc = load_scenario(ROOT / "scenarios" / f"{scenario}.yaml")
    seen = set()
    for v in range(min(3, sc.parallelism.pp)):
        prog = build_stage_program(sc, v)
        for op in (*prog.forward, *prog.backward):
            if op.layer is None:
                continue
            name = op.name.split(".", 1)[1]
            part = op_part(name)
            seen.add(part)
            assert (part == "other") == name.startswith(_OTHER), name
    assert {"attention", "mlp_norm", "router", "preprocess", "dispatcher", "experts"} <= seen


def _stage(scenario: str):
    """Stage 1's compiled forward and backward programs, and the MoE layers."""
    from simmoe.config.loader import load_scenario
    from simmoe.workload import build_stage_program

    sc = load_scenario(ROOT / "scenarios" / f"{scenario}.yaml")
    prog = build_stage_program(sc, 1)
    moe = frozenset(sc.model.moe_layer_indices())
    return compile_program(prog.forward), compile_program(prog.backward), moe


ZOO_TP4 = "validation/scenarios/qwen3-235b-a22b-h100x256-bf16-ep8-tp4"  # no recompute


def test_a_layers_host_seconds_are_conserved_over_its_parts():
    fwd, bwd, moe = _stage(ZOO_TP4)
    costs = host_costs("megatron_core", "x86-lent-1")
    for prog, phase in ((fwd, "fwd"), (bwd, "bwd")):
        seconds, _ = program_host_s(prog, costs, moe)
        layers = {op.layer for op in prog.ops if op.layer is not None}
        outside = sum(1 for op in prog.ops if op.layer is None and op.phase != "step")
        want = sum(costs.layer_s[("moe" if ly in moe else "dense", phase)] for ly in layers)
        assert sum(seconds) == pytest.approx(want + outside * costs.op_s, rel=1e-9)
        # parts by hand: the router's share of a MoE layer goes to its router and top-k ops
        layer = min(layers & moe)
        n = part_ops("megatron_core", "gqa_rope")[("moe", phase)]  # a GQA model's layer
        per_op = dict(zip((op.name for op in prog.ops), op_host_s(prog.ops, costs, moe)))
        router = [k for k in per_op if k.startswith(f"L{layer}.moe.router") or k.startswith(f"L{layer}.moe.topk")]
        assert sum(per_op[k] for k in router) == pytest.approx(
            costs.layer_s[("moe", phase)] * n["router"] / sum(n.values()), rel=1e-9)


def test_graph_scopes_replay_their_parts_once_per_layer_and_phase():
    """Megatron-Core's partial graphs (attn, moe_router, moe_preprocess): a MoE layer's host
    keeps only the dispatcher's, the experts' and the residual's share, plus one replay."""
    scope = ("attn", "moe_router", "moe_preprocess")
    fwd, bwd, moe = _stage(ZOO_TP4)
    eager = host_costs("megatron_core", "x86-lent-1")
    graphed = host_costs("megatron_core", "x86-lent-1", scope)
    assert graphed.layer_s == eager.layer_s
    for prog, phase in ((fwd, "fwd"), (bwd, "bwd")):
        per_op = dict(zip((op.name for op in prog.ops), op_host_s(prog.ops, graphed, moe)))
        layer = min({op.layer for op in prog.ops if op.layer is not None} & moe)
        n = part_ops("megatron_core", "gqa_rope")[("moe", phase)]  # a GQA model's layer
        kept = n["dispatcher"] + n["experts"] + n["other"]
        mine = {op.name: op_part(op.name.split(".", 1)[1]) for op in prog.ops if op.layer == layer}
        on_graph = [k for k, part in mine.items() if part in ("attention", "mlp_norm", "router", "preprocess")]
        assert on_graph and sum(per_op[k] for k in on_graph) == pytest.approx(graphed.replay_s[phase])
        assert sum(per_op[k] for k in mine) == pytest.approx(
            eager.layer_s[("moe", phase)] * kept / sum(n.values()) + graphed.replay_s[phase])
    bare = {"fwd": graphed.op_s, "bwd": yaml.safe_load((HOST_DIR / "cpus.yaml").read_text())
            ["cpus"]["x86-lent-1"]["bwd_kernel_s"]}
    assert graphed.replay_s == pytest.approx({p: GRAPH_REPLAY_OPS * b for p, b in bare.items()})
    # attn alone leaves a dense layer's MLP on the host; mlp graphs it, and nothing of a MoE layer
    assert host_costs("megatron_core", "x86-lent-1", ("attn",)).graphed == {
        "dense": {"attention"}, "moe": {"attention"}}
    assert host_costs("megatron_core", "x86-lent-1", ("mlp",)).graphed["moe"] == frozenset()


def test_a_recompute_reissues_only_what_it_recomputes():
    """Selective recompute (norms, the experts' activation): the backward program's recompute ops
    cost their forward ops' shares, not the layer's whole forward again."""
    scenario = "validation/scenarios/qwen3-235b-a22b-h100x256-bf16-ep32"  # norm + act recompute
    fwd, bwd, moe = _stage(scenario)
    costs = host_costs("megatron_core", "x86-lent-1")
    fwd_s = dict(zip((op.name for op in fwd.ops), op_host_s(fwd.ops, costs, moe)))
    per_op = dict(zip((op.name for op in bwd.ops), op_host_s(bwd.ops, costs, moe, fwd.ops)))
    # the program sums its ops' seconds by node
    assert sum(program_host_s(bwd, costs, moe, fwd)[0]) == pytest.approx(sum(per_op.values()))
    rc = [k for k, op in zip(per_op, bwd.ops) if op.phase == "recompute"]
    assert rc
    for k in rc:
        assert per_op[k] == pytest.approx(fwd_s[k.removesuffix(".rc")]), k
    layer = min({op.layer for op in bwd.ops if op.layer is not None} & moe)
    layer_rc = sum(per_op[k] for k, op in zip(per_op, bwd.ops) if op.layer == layer and op.phase == "recompute")
    assert 0 < layer_rc < 0.25 * costs.layer_s[("moe", "fwd")]


def test_the_ep_overlap_charges_its_measured_extra_to_each_moe_layers_backward():
    """Megatron's EP all-to-all overlap: the schedule plan's own host work (measured by
    benchmarks/megatron_overlap_host.py, in bare CPU ops) lands on each MoE layer's backward,
    exactly once per layer, and nowhere else; graphed or not."""
    rows = _csv(HOST_DIR / "megatron-core-0.16.1-overlap.csv")
    # what was measured is Python around the same kernels: at most three more ops per pair
    assert all(0 <= int(r["ops_overlap"]) - int(r["ops_plain"]) <= 3 for r in rows)
    per_mul = [(float(r["extra_s"]) + float(r["build_s"])) / float(r["probe_mul_s"]) for r in rows]
    ref_mul = statistics.median(float(r["probe_mul_s"])
                                for r in _csv(HOST_DIR / "megatron-core-0.16.1-cpu.csv") if r["host_s_per_op"])
    fwd, bwd, moe = _stage("validation/scenarios/qwen3-235b-a22b-h100x256-bf16-ep32")
    for scope in ((), ("attn", "moe_router", "moe_preprocess")):
        plain = host_costs("megatron_core", "x86-lent-1", scope)
        over = host_costs("megatron_core", "x86-lent-1", scope, ep_overlap=True)
        assert plain.overlap_s == 0.0
        # x86-lent-1 has no CPU-speed probe of its own: the reference CPU's bare op carries it
        assert over.overlap_s == pytest.approx(statistics.median(per_mul) * ref_mul, rel=1e-9)
        assert min(per_mul) * ref_mul <= over.overlap_s <= max(per_mul) * ref_mul
        for prog, phase in ((fwd, "fwd"), (bwd, "bwd")):
            a = op_host_s(prog.ops, plain, moe, fwd.ops)
            b = op_host_s(prog.ops, over, moe, fwd.ops)
            for layer in {op.layer for op in prog.ops if op.layer is not None}:
                extra = sum(y - x for x, y, op in zip(a, b, prog.ops) if op.layer == layer)
                want = over.overlap_s if phase == "bwd" and layer in moe else 0.0
                assert extra == pytest.approx(want, abs=1e-12), (phase, layer)
            outside = [y - x for x, y, op in zip(a, b, prog.ops) if op.layer is None]
            assert outside == pytest.approx([0.0] * len(outside))


def test_graph_scope_errors_name_the_field():
    with pytest.raises(InputError, match="host.cuda_graph_scope"):
        host_costs("megatron_core", "x86-lent-1", ("full_iteration",))
    from simmoe.config.loader import ScenarioError

    for bad, says in (("[attn]", "host.stack none"), ("[moe_preprocess]", "moe_router"),
                      ("[full_iteration]", "host.cuda_graph_scope"), ("[attn,attn]", "twice")):
        stack = ["host.stack=megatron_core"] if "none" not in says else []
        with pytest.raises(ScenarioError, match=says):
            load_default_scenario([*stack, f"host.cuda_graph_scope={bad}"])


# ----------------------------------------------------------------------------- whole scenarios


SMALL = ["model.layers=4", "model.hidden=512", "training.seq_len=1024", "training.micro_batch=2",
         "training.global_batch=64", "simulation.steps=1", "simulation.warmup_steps=0"]


@pytest.mark.parametrize("cpu", ["x86-lent-1", "x86-lent-2"])
def test_the_host_never_makes_a_step_faster_and_a_slower_host_is_slower(cpu):
    base = Simulation(load_default_scenario(SMALL)).run_step(0)
    fast = Simulation(load_default_scenario(SMALL + ["host.stack=megatron_core",
                                                     "host.cpu=x86-lent-1"])).run_step(0)
    this = Simulation(load_default_scenario(SMALL + ["host.stack=megatron_core",
                                                     f"host.cpu={cpu}"])).run_step(0)
    assert this.step_time_s >= base.step_time_s
    assert this.step_time_s >= fast.step_time_s - 1e-12
    assert base.breakdown()["host_late_s"] == 0.0


def test_the_dispatch_sync_holds_the_host_until_the_dispatch_starts():
    # With every issue cost zero, only the sync acts: the host may not issue past a forward
    # dispatch before it starts, so the step can only get slower, and it is deterministic.
    sc = load_default_scenario(SMALL)
    sim = Simulation(sc)
    sim.host_costs = HostCosts("t", "t", {k: 0.0 for k in [("moe", "fwd"), ("moe", "bwd"),
                                                          ("dense", "fwd"), ("dense", "bwd")]},
                               op_s=0.0, sync_s=1e-3)
    a = sim.run_step(0).step_time_s
    b = sim.run_step(0).step_time_s
    plain = Simulation(sc).run_step(0).step_time_s
    assert a == b
    moe_fwd = len(sim._moe_layer_set) * sim.m  # one sync per MoE layer forward, per micro-batch
    assert plain + 1e-3 <= a <= plain + moe_fwd * 1e-3 + 1e-9


# ----------------------------------------------------------------------------- pipeline sync


def test_exchange_calls_are_megatron_1f1b_calls_by_hand():
    # p 3, m 4. Megatron-Core's forward_backward_pipelining_without_interleaving, written out
    # per rank: the p2p calls between consecutive items (start and end included) that
    # communicate on that stage (the first stage's recv_forward and send_backward, and the last
    # stage's send_forward and recv_backward, return without communicating).
    want = {
        # rank 0: F0 F1 | F2 B0 F3 B1 | B2 B3
        # send_forward x2, (recv_forward: none), sfrb, (sbrf: none), sfrb, (send_backward: none),
        # recv_backward x2
        0: [0, 1, 1, 1, 0, 1, 1, 1, 0],
        # rank 1: F0 | F1 B0 F2 B1 F3 B2 | B3
        # recv_forward; send_forward + recv_forward; sfrb; sbrf; sfrb; sbrf; sfrb;
        # send_backward + recv_backward; send_backward
        1: [1, 2, 1, 1, 1, 1, 1, 2, 1],
        # rank 2: F0 B0 F1 B1 F2 B2 F3 B3 (no warm-up)
        # recv_forward; (sfrb: none); sbrf; ...; send_backward
        2: [1, 0, 1, 0, 1, 0, 1, 0, 1],
    }
    sched = build_schedule("1f1b", 3, 4)
    for rank, items in enumerate(sched):
        seq = [None, *items, None]
        got = [exchange_calls(a, b, 3, rank, 3) for a, b in zip(seq, seq[1:])]
        assert got == want[rank], rank


def _sync_sim(sync: bool | None, host_s: float, sync_s: float, gb: int = 32):
    sc = load_default_scenario(["parallelism.ep=4", "parallelism.pp=2", f"training.global_batch={gb}",
                                "host.stack=megatron_core",
                                f"host.pipeline_sync={'null' if sync is None else str(sync).lower()}"])
    sim = Simulation(sc, programs=LayerPrograms(1, 1.0), compute=ConstantCompute())
    sim.host_costs = HostCosts("test", "test", {(k, p): host_s for k in ("dense", "moe")
                                                for p in ("fwd", "bwd")}, op_s=0.0, sync_s=sync_s)
    return sim


def test_the_pipeline_sync_holds_the_host_until_its_input_is_in():
    # pp 2, one micro-batch, GPU 1 s per item, host 3 s per item, a synchronize costs 0.25 s.
    # Without the sync the host runs ahead: F0 on rank 0 ends at 3 (issued at 3); rank 1 runs F0
    # 3-4 but its host issued it by 3 and B0 by 6, so B0 ends at 6; rank 0's B0 was issued by 6
    # too, runs 6-7: the step is 7 s.
    assert _sync_sim(False, 3.0, 0.25).run_step(0).step_time_s == pytest.approx(7.0)
    # With the sync: rank 1's host waits for F0's input (3) and a synchronize: issues F0 by 6.25
    # and B0 by 9.25, when its output gradient leaves. Rank 0's host waited in
    # send_forward_recv_backward since 3: it resumes at 9.25 + 0.25, and B0 ends at 12.5.
    sim = _sync_sim(True, 3.0, 0.25)
    assert sim.m == 1
    assert sim.run_step(0).step_time_s == pytest.approx(12.5)


def test_the_pipeline_sync_is_megatrons_default_for_1f1b_only():
    assert _sync_sim(None, 0.0, 0.0).scenario.host_pipeline_sync
    plain = load_default_scenario(["parallelism.ep=4", "parallelism.pp=2", "training.global_batch=64"])
    assert not plain.host_pipeline_sync  # host.stack none: no host to wait
    inter = load_default_scenario(["parallelism.ep=4", "parallelism.pp=2", "parallelism.vpp=2",
                                   "parallelism.schedule=interleaved", "training.global_batch=64",
                                   "host.stack=megatron_core"])
    assert not inter.host_pipeline_sync  # overlapped, unbatched p2p
    for bad in (["parallelism.pp=2", "host.pipeline_sync=true"],  # no host
                ["parallelism.pp=1", "host.stack=megatron_core", "host.pipeline_sync=true"],
                ["parallelism.pp=2", "parallelism.vpp=2", "parallelism.schedule=interleaved",
                 "host.stack=megatron_core", "host.pipeline_sync=true"]):
        with pytest.raises(InputError, match="host.pipeline_sync"):
            load_default_scenario(["parallelism.ep=4", "training.global_batch=64", *bad])


@pytest.mark.parametrize("host_s,sync_s", [(0.0, 0.0), (0.5, 0.0), (2.0, 0.1)])
def test_the_pipeline_sync_never_makes_a_step_faster(host_s, sync_s):
    off = _sync_sim(False, host_s, sync_s, gb=256).run_step(0).step_time_s
    on = _sync_sim(True, host_s, sync_s, gb=256).run_step(0).step_time_s
    assert on >= off - 1e-12
    if host_s > 1.0:  # a host slower than the GPU, held at each exchange: strictly slower
        assert on > off


class _SendsTakeNoSMs(ConstantCompute):
    def with_sms_held(self, sms):  # compute beside an NCCL send keeps its constant time
        return self


def test_the_pipeline_sync_waits_for_the_rank_s_own_sends():
    # pp 2, two micro-batches, 1 s per item, each output sent in T s, no host cost: only the
    # synchronize's wait for the exchange acts. Without it the step is 6 + 2T (two sends on the
    # critical path). With it rank 1 waits in send_backward_recv_forward for its B0 send before
    # issuing F1, so F1 starts at 3 + 2T instead of 3 + T and everything after moves by T: 6 + 3T.
    def run(sync):
        sc = load_default_scenario(["parallelism.ep=4", "parallelism.pp=2", "training.global_batch=64",
                                    "host.stack=megatron_core", f"host.pipeline_sync={str(sync).lower()}"])
        sim = Simulation(sc, programs=SendingPrograms(1.0, 1.0, 4e8, 2), compute=_SendsTakeNoSMs())
        sim.host_costs = HostCosts("t", "t", {(k, p): 0.0 for k in ("dense", "moe") for p in ("fwd", "bwd")},
                                   op_s=0.0, sync_s=0.0)
        assert sim.m == 2
        return sim.run_step(0)
    off, on = run(False), run(True)
    sends = [end - start for tl in off.timeline.timelines for start, end, _l, cat, _p in tl.comm if cat == "pp"]
    t = sends[0]
    assert t > 1e-3 and sends == pytest.approx([t] * len(sends))
    assert off.step_time_s == pytest.approx(6 + 2 * t)
    assert on.step_time_s == pytest.approx(6 + 3 * t)
