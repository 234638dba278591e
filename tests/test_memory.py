"""Memory model: a hand-computed oracle, monotonicity, pipeline in-flight counts, published setups."""

from __future__ import annotations

import pytest

from simmoe.config.schema import Scenario
from simmoe.errors import InputError
from simmoe.memory import RESERVE_BYTES, in_flight, memory_breakdown
from simmoe.workload import stage_local_params

TINY = dict(name="tiny", layers=1, hidden=8, vocab=32, attention=dict(type="mha", heads=2), dense_ffn=16)
MOE = dict(name="moe", layers=8, dense_layers=0, hidden=64, vocab=512,
           attention=dict(type="gqa", heads=8, kv_heads=4), dense_ffn=128,
           moe=dict(routed_experts=8, shared_experts=1, top_k=2, expert_ffn=32))
DEEPSEEK_V3 = dict(
    name="DeepSeek-V3", layers=61, dense_layers=3, hidden=7168,
    attention=dict(type="mla", heads=128, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                   qk_rope_head_dim=64, v_head_dim=128),
    dense_ffn=18432, vocab=129280, mtp_depth=1,
    moe=dict(routed_experts=256, shared_experts=1, top_k=8, expert_ffn=2048))
MIXTRAL_8X22B = dict(
    name="Mixtral-8x22B", layers=56, hidden=6144, attention=dict(type="gqa", heads=48, kv_heads=8, head_dim=128),
    dense_ffn=16384, vocab=32768, moe=dict(routed_experts=8, top_k=2, expert_ffn=16384))


def scenario(model=MOE, par=None, routing=None, **training):
    t = dict(seq_len=32, global_batch=64, micro_batch=1, total_tokens=1e9)
    t.update(training)
    p = dict(dp=1)
    p.update(par or {})
    return Scenario.model_validate(dict(model=model, training=t, parallelism=p, routing=routing or {},
                                        cluster=dict(topology="none")))


def test_tiny_dense_by_hand():
    s = scenario(TINY, seq_len=4, global_batch=1, zero_stage=0)
    b = memory_breakdown(s, gpu="H100-SXM")
    n = 32 * 8 + 32 * 8 + 8 + (4 * 8 * 8 + 2 * 8 + 3 * 8 * 16)  # emb, head, final norm, block
    assert b.parameters_bytes == 2 * n
    assert b.gradients_bytes == 4 * n
    assert b.optimizer_bytes == 12 * n  # FP32 master + two FP32 Adam moments
    T, d = 4, 8
    attention = (T * d * 2 + T * d * 2  # ln1 input, QKV input
                 + T * 2 * 4 * 2 + T * 2 * 4  # O (2 heads x 4) in BF16, LSE in FP32
                 + T * (8 + 16) * 2)  # Q, K, V
    ffn = T * d * 2 + T * d * 2 + T * 32 * 2 + T * 16 * 2  # ln2 in, fc1 in, fc1 out, fc2 in
    head = T * d * 2 + T * d * 2 + T * 32 * 4  # final-norm in, head in, FP32 softmax
    assert b.activations_bytes == attention + ffn + head
    assert b.a2a_buffers_bytes == 0 and b.reserve_bytes == RESERVE_BYTES
    assert b.total_bytes == 18 * n + attention + ffn + head + RESERVE_BYTES
    assert b.fits is True and b.hbm_bytes == 80e9
    assert b.gib()["total"] == pytest.approx(b.total_bytes / 2**30)


def test_zero_sharding_by_hand():
    s = scenario(par=dict(ep=2, dp=4), zero_stage=1)
    lp = stage_local_params(s, 0)
    b = memory_breakdown(s)
    assert b.optimizer_bytes == pytest.approx(12 * (lp.dense / 4 + lp.experts / 2))  # edp = 4/2
    assert b.gradients_bytes == 4 * lp.total and b.fits is None  # no GPU named


@pytest.mark.parametrize("par", [dict(ep=2, dp=4), dict(tp=2, ep=4, dp=4, pp=2), dict(ep=8, dp=8, cp=1)])
def test_each_zero_stage_never_uses_more(par):
    totals = [memory_breakdown(scenario(par=par, zero_stage=z)) for z in range(4)]
    for lo, hi in zip(totals[1:], totals[:-1]):
        assert lo.total_bytes <= hi.total_bytes
        assert lo.parameters_bytes + lo.gradients_bytes + lo.optimizer_bytes <= \
            hi.parameters_bytes + hi.gradients_bytes + hi.optimizer_bytes
    assert totals[3].total_bytes < totals[0].total_bytes


@pytest.mark.parametrize("model", [MOE, dict(DEEPSEEK_V3, layers=8, dense_layers=1, mtp_depth=0)])
@pytest.mark.parametrize("precision", ["bf16", "fp8"])
def test_recompute_never_uses_more(model, precision):
    acts = [memory_breakdown(scenario(model, activation_recompute=r, precision=precision)).activations_bytes
            for r in ("none", "selective", "full")]
    assert acts[0] > acts[1] > acts[2]


def test_full_recompute_holds_one_block_per_rank_not_per_micro_batch():
    # Under full recompute each in-flight micro-batch keeps only its blocks' inputs (2*T*d bytes
    # each); the whole activations of one block exist once per rank, while its backward runs.
    s = scenario(par=dict(pp=4, dp=1), activation_recompute="full")
    none = scenario(par=dict(pp=4, dp=1), activation_recompute="none")
    T, d, blocks = 32, 64, 2  # seq_len x micro_batch 1, hidden, 8 layers over 4 stages
    r1, r2 = memory_breakdown(s).per_pp_rank[1:3]  # middle ranks: no head; 3 and 2 in flight
    assert r1.activations_bytes - r2.activations_bytes == blocks * T * d * 2
    one_block = memory_breakdown(none, gpu=None).per_pp_rank[2].activations_bytes / (2 * blocks)
    assert r2.activations_bytes == pytest.approx(2 * blocks * T * d * 2 + one_block)
    assert r2.in_flight_micro_batches == pytest.approx(2.0)


def test_in_flight_micro_batches():
    one_f_one_b = scenario(par=dict(pp=4, dp=1))
    assert [in_flight(one_f_one_b, r) for r in range(4)] == [{0: 4}, {1: 3}, {2: 2}, {3: 1}]
    # Megatron interleaved, p=4, v=2: rank 0 warms up (4-1)*2 + 4 forwards, +1 steady: chunk 0 gets
    # micro-batches 0-3 and 8-10, chunk 1 gets 4-7; vp + p - 1 = 11 in all (Korthikanti et al.).
    inter = scenario(par=dict(pp=4, vpp=2, schedule="interleaved", dp=1))
    assert in_flight(inter, 0) == {0: 7, 4: 4}
    assert in_flight(inter, 3) == {3: 4, 7: 1}
    dual = scenario(par=dict(pp=4, schedule="dualpipe", dp=1))
    assert [in_flight(dual, r) for r in range(4)] == [{0: 4, 3: 1}, {1: 3, 2: 2}, {2: 2, 1: 3}, {3: 1, 0: 4}]
    assert all(sum(in_flight(dual, r).values()) == 4 + 1 for r in range(4))
    # Megatron's EP all-to-all overlap warms up with one forward more (chunk 0 of rank 0 gets
    # micro-batch 11 too, rank 3's chunk 1 micro-batch 5); without a pipeline, two in flight.
    over = scenario(par=dict(pp=4, vpp=2, schedule="interleaved", dp=1, ep_comm_overlap=True))
    assert in_flight(over, 0) == {0: 8, 4: 4}
    assert in_flight(over, 3) == {3: 4, 7: 2}
    assert in_flight(scenario(par=dict(pp=1, dp=1, ep_comm_overlap=True)), 0) == {0: 2}
    few = scenario(par=dict(pp=4, dp=1), global_batch=2)  # 2 micro-batches per step
    assert in_flight(few, 0) == {0: 2}
    runs = scenario(par=dict(pp=4, dp=1, schedule_micro_batches=2))  # runs of 2: at most 2 in flight
    assert [in_flight(runs, r) for r in range(4)] == [{0: 2}, {1: 2}, {2: 2}, {3: 1}]


def test_dualpipe_holds_two_copies_of_the_weights():
    one = memory_breakdown(scenario(par=dict(pp=4, dp=1)))
    dual = memory_breakdown(scenario(par=dict(pp=4, schedule="dualpipe", dp=1)))
    r1 = one.per_pp_rank[1]
    d1 = dual.per_pp_rank[1]
    assert d1.virtual_stages == (1, 2)
    assert d1.parameters_bytes == 2 * (stage_local_params(scenario(par=dict(pp=4, dp=1)), 1).total
                                       + stage_local_params(scenario(par=dict(pp=4, dp=1)), 2).total)
    assert d1.parameters_bytes > r1.parameters_bytes


def test_a2a_buffers_capacity_and_worst_case():
    drop = memory_breakdown(scenario(par=dict(ep=4, dp=4)))
    assert drop.a2a_buffers_bytes == 32 * 2 * 64 * (2 + 2)  # tokens x top_k (balanced), dispatch + combine
    padded = memory_breakdown(scenario(par=dict(ep=4, dp=4),
                                       routing=dict(execution="padded", capacity_factor=1.25)))
    assert padded.a2a_buffers_bytes == 1.25 * 32 * 2 * 64 * (2 + 2)


def test_mixtral_8x22b_on_one_dgx_without_sharding_does_not_fit():
    s = scenario(MIXTRAL_8X22B, par=dict(dp=8), seq_len=4096, global_batch=8, zero_stage=0)
    b = memory_breakdown(s, gpu="H100-SXM")
    assert b.fits is False
    assert b.parameters_bytes == pytest.approx(2 * 141e9, rel=0.01)  # every GPU holds all 141B


def test_deepseek_v3_training_setup_fits_h800():
    """The setup DeepSeek trained V3 with (report, sections 3.2-3.3): 2048 H800, PP16 DualPipe,
    EP64, ZeRO-1, FP8, BF16 moments, recomputation of norms and MLA up-projections."""
    s = scenario(DEEPSEEK_V3, par=dict(pp=16, ep=64, dp=128, schedule="dualpipe",
                                       first_stage_layers=2, last_stage_layers=4),
                 routing=dict(dispatch_dtype="fp8"), seq_len=4096, global_batch=15360,
                 precision="fp8", activation_recompute="selective", optimizer=dict(moments_dtype="bf16"))
    b = memory_breakdown(s, gpu="H800-SXM")
    assert b.fits is True
    assert all(sum(in_flight(s, r).values()) == 17 for r in range(16))
    without_recompute = memory_breakdown(s.model_copy(update={"training": s.training.model_copy(
        update={"activation_recompute": "none"})}), gpu="H800-SXM")
    assert without_recompute.fits is False


def test_unresolved_dp_is_an_input_error():
    s = Scenario.model_validate(dict(model=TINY, training=dict(seq_len=4, global_batch=1, micro_batch=1,
                                                                total_tokens=1e9), cluster=dict(topology="x")))
    with pytest.raises(InputError, match="parallelism.dp"):
        memory_breakdown(s)


# ------------------------------------------------------- activation offload, FP8 expert storage

KIMI_K2 = dict(
    name="Kimi-K2", layers=61, dense_layers=1, hidden=7168,
    attention=dict(type="mla", heads=64, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
                   qk_rope_head_dim=64, v_head_dim=128),
    dense_ffn=18432, vocab=163840,
    moe=dict(routed_experts=384, shared_experts=1, top_k=8, expert_ffn=2048))


def _with_training(s, **changes):
    return s.model_copy(update={"training": s.training.model_copy(update=changes)})


@pytest.mark.parametrize("par", [dict(pp=8, dp=1), dict(pp=4, vpp=2, schedule="interleaved", dp=1),
                                 dict(pp=4, schedule="dualpipe", dp=1), dict(pp=2, dp=1)])
def test_offload_keeps_four_stage_micro_batches_and_moves_the_rest_to_host(par):
    kept = memory_breakdown(scenario(par=par, global_batch=64))
    off = memory_breakdown(_with_training(scenario(par=par, global_batch=64), activation_offload=True))
    for k, o in zip(kept.per_pp_rank, off.per_pp_rank):
        # activation_per_micro_batch_bytes sums the rank's stages: a bound on any one of them
        assert o.activations_bytes + o.host_activations_bytes == pytest.approx(k.activations_bytes)
        assert o.activations_bytes <= min(k.activations_bytes, 4 * k.activation_per_micro_batch_bytes) * (1 + 1e-12)
        assert (o.parameters_bytes, o.gradients_bytes, o.optimizer_bytes) == \
            (k.parameters_bytes, k.gradients_bytes, k.optimizer_bytes)
        assert k.host_activations_bytes == 0.0
        if sum(in_flight(scenario(par=par, global_batch=64), o.pp_rank).values()) > 4:
            assert o.host_activations_bytes > 0 and o.total_bytes < k.total_bytes


def test_offload_by_hand_on_1f1b():
    # 1F1B, pp=8: rank r holds 8 - r micro-batches of its stage (one stage per rank). With offload
    # the GPU keeps min(8 - r, 4) of them and host RAM the rest.
    s = scenario(par=dict(pp=8, dp=1), global_batch=64)
    kept = memory_breakdown(s)
    off = memory_breakdown(_with_training(s, activation_offload=True))
    for r in range(8):
        per_mb = kept.per_pp_rank[r].activation_per_micro_batch_bytes
        assert off.per_pp_rank[r].activations_bytes == pytest.approx(min(8 - r, 4) * per_mb)
        assert off.per_pp_rank[r].host_activations_bytes == pytest.approx(max(8 - r - 4, 0) * per_mb)
    assert off.gib()["host_activations"] == pytest.approx(off.host_activations_bytes / 2**30)


def test_offload_keeps_the_largest_in_flight_stage_micro_batches():
    # Interleaved p=4, v=2, one MoE block per chunk: rank 3 holds chunk 3 x 4 and chunk 7 (with the
    # LM head, the largest) x 1 at its peak. With offload it keeps chunk 7's and three of chunk 3's.
    s = scenario(par=dict(pp=4, vpp=2, schedule="interleaved", dp=1), global_batch=64)
    kept = memory_breakdown(s)
    block = kept.per_pp_rank[1].activation_per_micro_batch_bytes / 2  # chunks 1 and 5: one block each
    with_head = kept.per_pp_rank[3].activation_per_micro_batch_bytes - block
    assert with_head > block and in_flight(s, 3) == {3: 4, 7: 1}
    r3 = memory_breakdown(_with_training(s, activation_offload=True)).per_pp_rank[3]
    assert r3.activations_bytes == pytest.approx(with_head + 3 * block)
    assert r3.host_activations_bytes == pytest.approx(block)


def test_fp8_expert_activations_by_hand():
    # MOE: 8 MoE layers, T = 32 tokens, top-2, d = 64, expert_ffn 32 (SwiGLU input 64 wide), pp = 1
    # (one micro-batch in flight), no recompute. FP8 storage turns the experts' fc1 input (rows x d)
    # and SwiGLU input (rows x 2 f_e) from 2 bytes into 1 + 4/128 bytes; rows = T * top_k = 64.
    s = scenario()
    bf16 = memory_breakdown(s).activations_bytes
    fp8 = memory_breakdown(_with_training(s, fp8_expert_activations=True)).activations_bytes
    assert bf16 - fp8 == pytest.approx(8 * 64 * (64 + 64) * (2 - (1 + 4 / 128)))
    # With FP8 GEMMs these tensors are FP8 already: the flag changes nothing.
    f = _with_training(s, precision="fp8")
    assert memory_breakdown(_with_training(f, fp8_expert_activations=True)).activations_bytes == \
        memory_breakdown(f).activations_bytes


def test_kimi_k2_training_setup_fits_h800_only_with_offload():
    """Kimi K2's setup (report arXiv 2507.20534, section 2.4): 2048 H800, PP16 with virtual stages
    (here vpp=2), EP16, ZeRO-1, Muon, selective recompute, FP8 storage of the experts'
    up-projection and SwiGLU inputs, CPU offload of the remaining activations. The report's
    figure: "approximately 30 GB of GPU memory for all states" per GPU."""
    s = scenario(KIMI_K2, par=dict(pp=16, vpp=2, schedule="interleaved", ep=16, dp=128,
                                   first_stage_layers=1, last_stage_layers=0),
                 seq_len=4096, global_batch=16384, activation_recompute="selective",
                 optimizer=dict(type="muon"), fp8_expert_activations=True, activation_offload=True)
    b = memory_breakdown(s, gpu="H800-SXM")
    assert b.fits is True
    middle = b.per_pp_rank[1]  # a rank without embedding or head
    states = middle.parameters_bytes + middle.gradients_bytes + middle.optimizer_bytes
    assert states == pytest.approx(30e9, rel=0.15)
    assert memory_breakdown(_with_training(s, activation_offload=False), gpu="H800-SXM").fits is False
