"""parallelism.tp_comm_overlap: sequence-parallel TP all-gathers / reduce-scatters beside the GEMMs
they feed or drain (Transformer Engine userbuffers), docs/workload.md."""

from __future__ import annotations

import pytest

from simmoe.config.loader import load_scenario
from simmoe.config.schema import Scenario
from simmoe.engine.program import compile_program
from simmoe.engine.runner import Simulation
from simmoe.errors import InputError
from simmoe.workload import build_stage_program
from simmoe.workload.ops import CollectiveOp, GemmOp

DENSE = dict(name="dense", layers=2, hidden=512, vocab=1024,
             attention=dict(type="gqa", heads=8, kv_heads=4), dense_ffn=2048)


def scenario(overlap: bool, **par):
    p = dict(tp=4, dp=1, sequence_parallel=True, tp_comm_overlap=overlap)
    p.update(par)
    return Scenario.model_validate(dict(
        model=DENSE, parallelism=p, cluster=dict(topology="none"),
        training=dict(seq_len=256, global_batch=4, micro_batch=1, total_tokens=1e9, precision="fp8")))


def _tp(ops):
    return [op for op in ops if isinstance(op, CollectiveOp) and op.group == "tp"]


@pytest.mark.parametrize("part", ["forward", "backward"])
def test_same_tp_bytes_with_and_without_overlap(part):
    plain = getattr(build_stage_program(scenario(False), 0), part)
    over = getattr(build_stage_program(scenario(True), 0), part)
    for kind in ("all_gather", "reduce_scatter"):
        a = sum(op.size_bytes for op in _tp(plain) if op.collective == kind)
        b = sum(op.size_bytes for op in _tp(over) if op.collective == kind)
        assert a > 0 and b == pytest.approx(a, rel=1e-12)
    # overlapped layer collectives keep no SMs; the embedding's and the head's stay NCCL kernels
    for op in _tp(over):
        layer_linear = op.name.startswith("L") and (".attn." in op.name or ".ffn." in op.name)
        assert op.holds_sms is (not layer_linear), op.name


def test_all_gather_runs_beside_the_gemm_it_feeds():
    ops = build_stage_program(scenario(True), 0).forward
    names = [op.name for op in ops]
    by = {op.name: op for op in ops}
    ag = by["L0.ffn.ag"]
    fc1 = by["L0.ffn.fc1"]
    after_fc1 = ops[names.index("L0.ffn.fc1") + 1]
    # the GEMM (and its quantization) do not wait for the gather; the op after the GEMM does
    assert ag.name not in fc1.after and ag.name not in by["L0.ffn.fc1.quant"].after
    assert ag.name in after_fc1.after
    prog = compile_program(ops)  # and the engine accepts the dependencies
    assert not prog.empty


def test_reduce_scatter_splits_into_a_chunk_beside_the_gemm_and_the_last_after_it():
    ops = build_stage_program(scenario(True), 0).forward
    by = {op.name: op for op in ops}
    beside, last = by["L0.ffn.tp_out.overlap"], by["L0.ffn.tp_out"]
    # 3 of 4 chunks start with the GEMM (after its input quantization), the last after both
    assert beside.after == ("L0.ffn.fc2.quant",)
    assert set(last.after) == {"L0.ffn.fc2", "L0.ffn.tp_out.overlap"}
    assert beside.size_bytes == pytest.approx(3 * last.size_bytes)
    assert isinstance(by["L0.ffn.fc2"], GemmOp)


def test_overlap_needs_sequence_parallelism():
    with pytest.raises(InputError) as err:
        load_scenario("scenarios/validation/scenarios/llama3-70b-h100x64-fp8.yaml",
                      ["parallelism.sequence_parallel=false"])
    assert "parallelism.tp_comm_overlap" in str(err.value)


def _llama70b_step(*over: str):
    # Llama 3 70B's layer shapes on one pipeline of 8 H100 nodes, 8 micro-batches (fast).
    sc = load_scenario("scenarios/validation/scenarios/llama3-70b-h100x64-fp8.yaml",
                       ["training.global_batch=16", *over])
    return Simulation(sc).run_step(0)


def test_overlap_hides_some_but_at_most_all_of_the_tp_comm():
    overlapped = _llama70b_step()
    exposed = _llama70b_step("parallelism.tp_comm_overlap=false")
    assert overlapped.step_time_s < exposed.step_time_s
    # Oracle: overlap can hide at most every TP collective of the critical rank, whose time the
    # run without overlap spends waiting on them in program order.
    tl = exposed.timeline.timelines[exposed.critical]
    tp_s = sum(end - start for start, end, _label, category, _phase in tl.comm if category == "tp")
    assert tp_s > 0
    assert overlapped.step_time_s >= exposed.step_time_s - tp_s
