"""parallelism.ep_comm_overlap: Megatron's --overlap-moe-expert-parallel-comm, steady-state forward
and backward of two micro-batches run as one paired slot (docs/engine.md)."""

from __future__ import annotations

import pytest

from simmoe.config.loader import load_default_scenario
from simmoe.engine.runner import Simulation
from simmoe.engine.schedules import build_schedule, makespan
from simmoe.errors import InputError
from tests.test_engine import ConstantCompute, ConstantPrograms, small, step


@pytest.mark.parametrize("over,where", [
    (["parallelism.ep_comm_overlap=true"], "1f1b with pp=2"),
    (["parallelism.ep_comm_overlap=true", "parallelism.schedule=dualpipe",
      "training.global_batch=256"], "dualpipe pairs already"),
    (["parallelism.ep_comm_overlap=true", "parallelism.pp=1", "parallelism.ep=1"], "no all-to-all"),
    (["parallelism.ep_comm_overlap=true", "parallelism.schedule=interleaved", "parallelism.vpp=2",
      "parallelism.pipeline_p2p=blocking"], "torch's lockstep runtime"),
])
def test_loader_names_the_field(over, where):
    with pytest.raises(InputError) as err:
        load_default_scenario(over)
    assert "parallelism.ep_comm_overlap" in str(err.value), where


@pytest.mark.parametrize("pp,vpp,ep,schedule,gb", [(1, 1, 8, "1f1b", 512), (2, 2, 8, "interleaved", 256),
                                                   (4, 3, 4, "interleaved", 256)])
def test_constant_op_times_match_the_schedule_oracle(pp, vpp, ep, schedule, gb):
    # Without communication a paired slot is its two items back to back on the shared compute
    # stream: in these layouts the engine's step is the oracle's fused-pair makespan
    # (simmoe.engine.schedules.makespan).
    sc = load_default_scenario([f"parallelism.pp={pp}", f"parallelism.vpp={vpp}", f"parallelism.ep={ep}",
                                f"parallelism.schedule={schedule}", f"training.global_batch={gb}",
                                "parallelism.ep_comm_overlap=true"])
    t_f, t_b = 1.0, 2.0
    sim = Simulation(sc, programs=ConstantPrograms(t_f / vpp, t_b / vpp), compute=ConstantCompute())
    assert any(it.overlap for items in sim.schedule for it in items)
    oracle = makespan(build_schedule(schedule, pp, sim.m, vpp, ep_overlap=True), t_f / vpp, t_b / vpp)
    assert sim.run_step(0).step_time_s == pytest.approx(oracle, rel=1e-12)


@pytest.mark.parametrize("over", [
    ["cluster.topology=h100-roce-4x100g", "cluster.nodes=2"],
    ["routing.imbalance.model=zipf", "routing.imbalance.s=1.0"],
    ["training.global_batch=256"],
])
def test_overlap_hides_all_to_alls_and_never_makes_a_step_slower_without_a_pipeline(over):
    # Without a pipeline a pair's inputs are both on the rank: pairing delays nothing and each
    # micro-batch's all-to-alls run under the other's compute. (With a pipeline a pair also waits
    # for both inputs, so on a small model the step can be slower: why Megatron leaves it off by
    # default. The published A/B of a large one is a validation case, docs/validation.md.)
    base = ["parallelism.pp=1", "parallelism.ep=16", "training.global_batch=128"]
    _, plain = step(small(*base, *over))
    _, overlapped = step(small(*base, *over, "parallelism.ep_comm_overlap=true"))
    assert overlapped.step_time_s < plain.step_time_s
    assert overlapped.breakdown()["exposed_comm_s"] < plain.breakdown()["exposed_comm_s"]
