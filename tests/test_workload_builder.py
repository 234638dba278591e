"""The stage programs: which ops, shapes, bytes and groups, for hand-checkable layouts."""

from __future__ import annotations

import pytest

from simmoe.config.schema import Scenario
from simmoe.errors import InputError
from simmoe.workload import (
    build_rank_step_ops,
    build_stage_program,
    build_step_ops,
    optimizer_bytes_per_param,
    rank_virtual_stages,
)
from simmoe.workload.ops import AttentionOp, CollectiveOp, ExpertGemmOp, GemmOp, MemoryOp

MOE = dict(name="moe", layers=4, dense_layers=1, hidden=64, vocab=512,
           attention=dict(type="gqa", heads=8, kv_heads=4), dense_ffn=128,
           moe=dict(routed_experts=8, shared_experts=1, top_k=2, expert_ffn=32))
MLA = dict(name="mla", layers=3, dense_layers=1, hidden=64, vocab=512, mtp_depth=1,
           attention=dict(type="mla", heads=8, q_lora_rank=32, kv_lora_rank=16, qk_nope_head_dim=8,
                          qk_rope_head_dim=4, v_head_dim=8),
           dense_ffn=128, moe=dict(routed_experts=8, shared_experts=1, top_k=2, expert_ffn=32))


def scenario(model=MOE, par=None, **training):
    t = dict(seq_len=32, global_batch=32, micro_batch=2, total_tokens=1e9)
    t.update(training)
    p = dict(dp=1)
    p.update(par or {})
    routing = t.pop("routing", {})
    return Scenario.model_validate(dict(model=model, training=t, parallelism=p, routing=routing,
                                        cluster=dict(topology="none")))


def by_name(ops):
    return {op.name: op for op in ops}


def check_dependencies(ops):
    names = [op.name for op in ops]
    assert len(set(names)) == len(names), "op names must be unique within a list"
    seen = set()
    for op in ops:
        assert set(op.after) <= seen, f"{op.name} waits for an op not before it: {op.after}"
        seen.add(op.name)


def collectives(ops, group=None):
    return [op for op in ops if isinstance(op, CollectiveOp) and (group is None or op.group == group)]


def test_single_gpu_has_no_collectives():
    prog = build_stage_program(scenario(), 0)
    assert not collectives(prog.forward + prog.backward)
    assert prog.tokens == prog.moe_tokens == 64
    f = by_name(prog.forward)
    assert isinstance(f["embed"], MemoryOp) and isinstance(f["head.logits"], GemmOp)
    # GQA: q 8 heads x 8 + k, v 4 heads x 8 each
    assert (f["L0.attn.qkv"].m, f["L0.attn.qkv"].n, f["L0.attn.qkv"].k) == (64, 128, 64)
    core = f["L0.attn.core"]
    assert isinstance(core, AttentionOp) and (core.batch, core.seq_len, core.heads) == (2, 32, 8)
    assert (f["L1.moe.router"].m, f["L1.moe.router"].n, f["L1.moe.router"].k) == (64, 8, 64)
    assert f["L1.moe.router"].dtype == "fp32"
    assert isinstance(f["L1.moe.fc1"], ExpertGemmOp) and (f["L1.moe.fc1"].n, f["L1.moe.fc1"].k) == (64, 64)
    assert (f["L1.moe.fc2"].n, f["L1.moe.fc2"].k) == (64, 32)
    for ops in (prog.forward, prog.backward):
        check_dependencies(ops)


def test_tp_without_sp_all_reduces_twice_per_dense_block():
    prog = build_stage_program(scenario(par=dict(tp=2, dp=1)), 0)
    l0 = [op for op in collectives(prog.forward, "tp") if op.layer == 0]
    assert [op.collective for op in l0] == ["allreduce", "allreduce"]
    assert all(op.size_bytes == 64 * 64 * 2 for op in l0)
    l0_bwd = [op for op in collectives(prog.backward, "tp") if op.layer == 0]
    assert [op.collective for op in l0_bwd] == ["allreduce", "allreduce"]
    assert by_name(prog.forward)["L0.attn.qkv"].n == 64  # 128 / tp


def test_sequence_parallel_gathers_and_scatters():
    prog = build_stage_program(scenario(par=dict(tp=2, dp=1, sequence_parallel=True)), 0)
    l0 = [op.collective for op in collectives(prog.forward, "tp") if op.layer == 0]
    assert l0 == ["all_gather", "reduce_scatter", "all_gather", "reduce_scatter"]
    l0_bwd = [op.collective for op in collectives(prog.backward, "tp") if op.layer == 0]
    assert l0_bwd == ["all_gather", "reduce_scatter", "all_gather", "reduce_scatter"]
    f = by_name(prog.forward)
    assert f["L0.ln1"].bytes_moved == 32 * 64 * 2 * 2  # norms on tokens / tp
    assert prog.moe_tokens == 32


def test_dispatch_and_combine_bytes_and_backward_direction():
    fp8 = build_stage_program(scenario(par=dict(ep=4, dp=4), routing=dict(dispatch_dtype="fp8")), 0)
    f = by_name(fp8.forward)
    assert f["L1.moe.dispatch"].collective == "alltoall_dispatch" and f["L1.moe.dispatch"].group == "ep"
    assert f["L1.moe.dispatch"].bytes_per_token == 64 * (1 + 4 / 128)
    assert f["L1.moe.combine"].bytes_per_token == 64 * 2
    b = by_name(fp8.backward)
    # combine's gradients go along the dispatch pattern, dispatch's along the combine pattern
    assert b["L1.moe.combine_bwd"].collective == "alltoall_dispatch"
    assert b["L1.moe.dispatch_bwd"].collective == "alltoall_combine"
    names = [op.name for op in fp8.backward]
    assert names.index("L1.moe.combine_bwd") < names.index("L1.moe.fc2.bwd") < names.index("L1.moe.dispatch_bwd")
    bf16 = build_stage_program(scenario(par=dict(ep=4, dp=4)), 0)
    assert by_name(bf16.forward)["L1.moe.dispatch"].bytes_per_token == 64 * 2


def test_routing_weights_applied_at_the_combine_add_their_gradient_gather():
    """Weighted in the activation (the default: Megatron-Core's grouped experts, NeMo Automodel) the
    probabilities' gradient comes out of the activation's backward; weighted at the combine it is an
    op of its own: each expert row's output gathered and dotted with its token's output gradient,
    (rows + tokens) x hidden BF16, before the combine's gradients leave the rank."""
    T, k, d = 2 * 32, 2, 64  # tokens per micro-batch (micro-batch 2 x sequence 32), top-2, hidden
    default = build_stage_program(scenario(par=dict(ep=4, dp=4)), 0)
    assert not any(op.name.endswith("probs_bwd") for op in default.backward)
    combine = build_stage_program(scenario(par=dict(ep=4, dp=4), routing=dict(probs_applied_at="combine")), 0)
    b = by_name(combine.backward)
    op = b["L1.moe.probs_bwd"]
    assert isinstance(op, MemoryOp) and op.access == "gather"
    assert op.bytes_moved == (T * k + T) * d * 2
    names = [o.name for o in combine.backward]
    assert names.index("L1.moe.unpermute_bwd") < names.index("L1.moe.probs_bwd") < names.index("L1.moe.combine_bwd")
    assert len(combine.backward) == len(default.backward) + 3  # one per MoE layer (L1-L3)
    # the unpermute and the permute's backward are sums of gathered rows, at the copy rate
    assert by_name(default.forward)["L1.moe.unpermute"].access == "gather_sum"
    assert by_name(default.backward)["L1.moe.permute_bwd"].access == "gather_sum"


def test_shared_expert_overlaps_dispatch():
    f = by_name(build_stage_program(scenario(par=dict(ep=4, dp=4)), 0).forward)
    assert f["L1.shared.fc1"].after == ("L1.moe.permute",)
    assert set(f["L1.moe.fc1"].after) == {"L1.moe.dispatch", "L1.shared.fc2"}


def test_fp8_follows_deepseek_v3():
    prog = build_stage_program(scenario(MLA, precision="fp8"), 0)
    f = by_name(prog.forward)
    for name in ("L0.attn.q_down", "L0.attn.kv_up", "L0.attn.o", "L0.ffn.fc1", "L1.moe.fc1", "L1.shared.fc2",
                 "mtp0.proj"):
        assert f[name].dtype == "fp8", name
    for name in ("head.logits", "mtp0.head.logits", "L0.attn.core"):
        assert f[name].dtype == "bf16", name
    assert f["L1.moe.router"].dtype == "fp32"
    assert by_name(prog.backward)["L0.ffn.fc1.bwd"].dtype == "fp8"


def test_backward_gemms_double_the_forward_flops():
    prog = build_stage_program(scenario(), 0)
    f, b = by_name(prog.forward), by_name(prog.backward)
    for name in ("L0.attn.qkv", "L0.ffn.fc2", "L1.moe.fc1", "head.logits"):
        assert b[f"{name}.bwd"].model_flops == 2 * f[name].model_flops
        assert b[f"{name}.bwd"].phase == "bwd"


def test_pipeline_placement_and_p2p():
    sc = scenario(MLA, par=dict(pp=2, tp=2, dp=1, sequence_parallel=True))
    first, last = build_stage_program(sc, 0), build_stage_program(sc, 1)
    assert first.blocks == (0, 1) and last.blocks == (2, 3)  # block 3 is the MTP module
    assert "embed" in by_name(first.forward) and "embed" not in by_name(last.forward)
    names = [op.name for op in last.forward]
    assert names.index("L2.moe.residual") < names.index("head.logits") < names.index("mtp0.proj") \
        < names.index("L3.ln1") < names.index("mtp0.head.logits")
    send = first.forward[-1]
    assert send.collective == "p2p_send" and send.group == "pp" and send.size_bytes == 64 * 64 * 2 / 2
    assert last.backward[-1].collective == "p2p_send"
    assert not collectives(last.forward, "pp") and not collectives(first.backward, "pp")


def test_head_sits_on_the_last_stage_even_without_blocks():
    """A split counting the loss as a layer (last_stage_layers 0, or a stage_layers list ending in
    0) leaves the output layer and loss alone on the last virtual stage, as Megatron-Core's
    post-process stage; the stage holding the last block then has no head (it once took it)."""
    for par in (dict(pp=2, vpp=2, first_stage_layers=2, last_stage_layers=0),
                dict(pp=2, vpp=2, stage_layers=[2, 1, 1, 0])):
        sc = scenario(par=dict(par, dp=1), global_batch=8)
        progs = [build_stage_program(sc, v) for v in range(4)]
        assert [p.blocks for p in progs] == [(0, 1), (2,), (3,), ()]
        heads = [v for v, p in enumerate(progs) if "head.logits" in by_name(p.forward)]
        assert heads == [3]
        last = by_name(progs[3].forward)
        assert not [n for n in last if n.startswith("L")] and "head.loss" in last
        assert "head.logits.bwd" in by_name(progs[3].backward)
        assert progs[3].backward[-1].collective == "p2p_send"  # its gradient goes to stage 2
        for p in progs:
            check_dependencies(p.forward)
            check_dependencies(p.backward)


def test_recompute_ops_precede_each_block_backward():
    full = build_stage_program(scenario(MLA, activation_recompute="full"), 0)
    rc = [op for op in full.backward if op.phase == "recompute"]
    assert rc and all(op.model_flops == 0 for op in rc)
    names = [op.name for op in full.backward]
    assert names.index("L1.ln1.rc") < names.index("L1.moe.residual_bwd")
    assert names.index("L1.moe.router.rc") < names.index("L1.moe.fc2.bwd")
    full_ep = build_stage_program(scenario(MLA, par=dict(ep=2, dp=2), activation_recompute="full"), 0)
    assert "L1.moe.dispatch.rc" in {op.name for op in full_ep.backward}  # full recompute re-dispatches
    sel = build_stage_program(scenario(MLA, activation_recompute="selective"), 0)
    rc_sel = {op.name for op in sel.backward if op.phase == "recompute"}
    assert "L1.attn.q_up.rc" in rc_sel and "L1.ln2.rc" in rc_sel and "L1.moe.act.rc" in rc_sel
    assert "L1.attn.o.rc" not in rc_sel and "L1.attn.core.rc" not in rc_sel
    none = build_stage_program(scenario(MLA), 0)
    assert not [op for op in none.backward if op.phase == "recompute"]
    for prog in (full, sel):
        check_dependencies(prog.backward)


def test_step_ops_by_zero_stage():
    par = dict(tp=1, ep=2, dp=4)
    z0 = build_step_ops(scenario(par=par, zero_stage=0), 0)
    assert [(op.group, op.collective) for op in collectives(z0)] == [("dp_cp", "allreduce"), ("edp", "allreduce")]
    z1 = build_step_ops(scenario(par=par, zero_stage=1), 0)
    assert [(op.group, op.collective) for op in collectives(z1)] == [
        ("dp_cp", "reduce_scatter"), ("edp", "reduce_scatter"), ("dp_cp", "all_gather"), ("edp", "all_gather")]
    z3 = build_step_ops(scenario(par=par, zero_stage=3), 0)
    assert not collectives(z3)
    # ZeRO-3 gathers parameters per block in forward and backward; ZeRO-2 reduce-scatters per block
    prog3 = build_stage_program(scenario(par=par, zero_stage=3), 0)
    assert any(op.name == "L1.zero3_ag" for op in prog3.forward)
    assert any(op.name == "L1.zero_rs_experts" for op in prog3.backward)
    prog2 = build_stage_program(scenario(par=par, zero_stage=2), 0)
    assert not any("zero3" in op.name for op in prog2.forward)
    assert any(op.name == "L1.zero_rs" for op in prog2.backward)
    for prog in (prog3, prog2):
        check_dependencies(prog.forward)
        check_dependencies(prog.backward)


def test_optimizer_bytes():
    assert optimizer_bytes_per_param(scenario()) == 4 + 4 + 4 + 2 + 2 * (4 + 4)  # Adam, FP32 states
    bf16 = scenario(optimizer=dict(moments_dtype="bf16"))
    assert optimizer_bytes_per_param(bf16) == 4 + 4 + 4 + 2 + 2 * (2 + 2)
    z1 = scenario(par=dict(ep=2, dp=4), zero_stage=1)
    opt = by_name(build_step_ops(z1, 0))["step.optimizer"]
    from simmoe.workload import stage_local_params
    lp = stage_local_params(z1, 0)
    assert opt.bytes_moved == pytest.approx((lp.dense / 4 + lp.experts / 2) * 30)


def test_rank_step_ops_cover_every_chunk():
    sc = scenario(par=dict(pp=2, vpp=2, schedule="interleaved", dp=1))
    assert rank_virtual_stages(sc, 1) == (1, 3)
    ops = build_rank_step_ops(sc, 1)
    assert [op.name for op in ops] == ["v1.step.optimizer", "v3.step.optimizer"]
    dual = scenario(par=dict(pp=4, schedule="dualpipe", dp=1))
    assert rank_virtual_stages(dual, 0) == (0, 3)


def test_bad_virtual_stage_is_an_input_error():
    with pytest.raises(InputError, match="virtual_stage"):
        build_stage_program(scenario(par=dict(pp=2, dp=1)), 2)


def test_zero3_gathers_are_prefetched_one_block_ahead():
    """A rank issues ops in program order, so each block's ZeRO-3 gather must be listed before the
    previous block's compute (FSDP prefetch) for it to overlap that compute; the block's first op
    still waits for its own gather."""
    prog = build_stage_program(scenario(par=dict(tp=1, ep=2, dp=4), zero_stage=3), 0)
    for ops, order in ((prog.forward, range(4)), (prog.backward, range(3, -1, -1))):
        check_dependencies(ops)
        names = [op.name for op in ops]
        pos = {n: i for i, n in enumerate(names)}
        order = list(order)
        for prev, nxt in zip(order, order[1:]):
            first_of_prev = min(i for i, op in enumerate(ops)
                                if op.name.startswith(f"L{prev}.") and "zero" not in op.name)
            gathers = [n for n in names if n.startswith(f"L{nxt}.zero3_ag")]
            assert gathers and all(pos[g] < first_of_prev for g in gathers), (prev, nxt)
            first_of_next = next(op for op in ops if op.name.startswith(f"L{nxt}.") and "zero" not in op.name)
            assert gathers[-1] in first_of_next.after
