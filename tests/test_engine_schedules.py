"""Pipeline schedules as pure functions, against hand-written orders and the 1F1B formula."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.engine.schedules import (
    Item,
    build_schedule,
    dualpipe,
    interleaved_1f1b,
    build_plan,
    dualpipe_plan,
    interleaved_lockstep,
    lockstep_makespan,
    lockstep_plan,
    plan_makespan,
    stage_rank,
    makespan,
    micro_batch_constraint,
    one_f_one_b,
    slots,
    virtual_stage,
)
from simmoe.errors import InputError


def _order(items):
    return [repr(i) for i in items]


def test_1f1b_p4_m8_matches_hand_written_orders():
    s = one_f_one_b(4, 8)
    # Rank 0: p - 0 - 1 = 3 warm-up forwards, then F/B pairs, then 3 cool-down backwards.
    assert _order(s[0]) == ["F0", "F1", "F2", "F3", "B0", "F4", "B1", "F5", "B2", "F6", "B3", "F7",
                            "B4", "B5", "B6", "B7"]
    # Last rank: no warm-up, strict alternation.
    assert _order(s[3]) == ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3", "F4", "B4", "F5", "B5",
                            "F6", "B6", "F7", "B7"]
    for r in range(4):
        first_b = next(i for i, it in enumerate(s[r]) if it.phase == "bwd")
        assert first_b == (4 - r - 1) + 1  # warm-up forwards p - r - 1, then one more forward


@pytest.mark.parametrize("p,m", [(4, 8), (2, 4), (8, 3), (1, 5), (4, 4)])
def test_1f1b_constant_times_bubble_formula(p, m):
    t_f, t_b = 1.0, 2.0
    step = makespan(one_f_one_b(p, m), t_f, t_b)
    assert step == pytest.approx((m + p - 1) * (t_f + t_b))
    bubble = (step - m * (t_f + t_b)) / step
    assert bubble == pytest.approx((p - 1) / (m + p - 1))


def test_interleaved_bubble_shrinks_by_v():
    # Megatron: bubble = (p - 1) (t_f + t_b) / v, t_f and t_b the times of a whole stage.
    p, m, v = 4, 8, 2
    t_f, t_b = 1.0, 2.0
    step = makespan(interleaved_1f1b(p, m, v), t_f / v, t_b / v)
    assert step == pytest.approx(m * (t_f + t_b) + (p - 1) * (t_f + t_b) / v)


def test_interleaved_rank0_order_p2_m4_v2():
    # Hand-derived from Megatron's mapping: forward k -> chunk (k // p) % v, mb (k // (p v)) p + k % p.
    s = interleaved_1f1b(2, 4, 2)
    assert _order(s[0])[:6] == ["F0", "F1", "F0c1", "F1c1", "F2", "B0c1"]


def test_interleaved_needs_m_multiple_of_p():
    with pytest.raises(InputError, match="multiple"):
        interleaved_1f1b(4, 6, 2)


def test_dualpipe_p4_m8_follows_the_reference_order():
    """Orders derived by hand from deepseek-ai/DualPipe's eight steps (p = 4, 8 micro-batches:
    0-3 enter at rank 0, 4-7 ("r") at rank 3; "+" pairs an item with the one before it, "b" is a
    backward whose weight gradient W comes later)."""
    s = dualpipe(4, 8)
    # Rank 0 (h = 0): 2 near forwards; F near, F far; b far, W, F far; pairs F3+B5r, F6r+B0;
    # B6r, pair F7r+B1; B7r, b2; W2, b3; W3.
    assert _order(s[0]) == ["F0", "F1", "F2", "F4r", "b4r", "W4r", "F5r", "F3", "+B5r", "F6r", "+B0",
                            "B6r", "F7r", "+B1", "B7r", "b2", "W2", "b3", "W3"]
    # Rank 1 (a middle rank, h = 1): its first near forward and far backward run unpaired.
    assert _order(s[1]) == ["F0", "F4r", "F1", "F5r", "F2", "B4r", "F6r", "+B0", "F3", "+B5r", "F7r",
                            "+B1", "B6r", "B2", "b7r", "b3", "W7r", "W3"]
    # The mirror image: rank p-1-r runs rank r's order with the directions swapped.
    mirror = {**{i: i + 4 for i in range(4)}, **{i + 4: i for i in range(4)}}
    for r in range(4):
        assert [(mirror[a.mb], a.phase, a.defer_w, a.overlap) for a in s[r]] == \
               [(b.mb, b.phase, b.defer_w, b.overlap) for b in s[3 - r]]
    # Rank r runs stage r for micro-batches 0-3 and stage p-1-r for 4-7.
    assert {virtual_stage(it, 4, 1) for it in s[1] if it.mb < 4} == {1}
    assert {virtual_stage(it, 4, 1) for it in s[1] if it.mb >= 4} == {2}
    for items in s:  # every pair: a forward of one direction, a backward of the other
        for slot in slots(items):
            if len(slot) == 2:
                f, b = slot
                assert f.phase == "fwd" and b.phase == "bwd" and f.reverse != b.reverse


@pytest.mark.parametrize("p,m", [(4, 8), (4, 20), (6, 12), (8, 20), (16, 120)])
@pytest.mark.parametrize("w", [0.0, 0.25, 0.5, 1.0])
def test_dualpipe_bubble_is_the_report_formula(p, m, w):
    """DeepSeek-V3 Table 2: DualPipe's bubble is (PP/2 - 1)(F&B + B - 3W), B a whole backward,
    W its weight gradient, F&B a paired forward-backward chunk (here F + B: free communication, one
    compute stream). Exact when the forward and the input-gradient backward take equal time."""
    f, b_in = 1.0, 1.0
    b = b_in + w
    step = makespan(dualpipe(p, m), f, b, w)
    bubble = step - m * (f + b)
    assert bubble == pytest.approx((p / 2 - 1) * ((f + b) + b - 3 * w), abs=1e-9)
    # 1F1B's (PP - 1)(F + B) is larger.
    assert bubble < (p - 1) * (f + b)
    assert makespan(one_f_one_b(p, m), f, b) - m * (f + b) == pytest.approx((p - 1) * (f + b))


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (8, 20), (16, 120)])
def test_dualpipe_holds_at_most_p_plus_one_activations(p, m):
    """DualPipe's activation memory: PP + 1 micro-batch stages in flight per rank (report, Table 2)."""
    for items in dualpipe(p, m):
        live = peak = 0
        for it in items:
            live += {"fwd": 1, "bwd": -1, "wgt": 0}[it.phase]
            peak = max(peak, live)
        assert peak <= p + 1


def test_dualpipe_needs_even_p_and_enough_micro_batches():
    with pytest.raises(InputError, match="even pp"):
        dualpipe(3, 12)
    with pytest.raises(InputError, match="at least 2 x pp"):
        dualpipe(4, 6)
    with pytest.raises(InputError, match="even number"):
        dualpipe(4, 9)
    with pytest.raises(InputError, match="vpp"):
        build_schedule("dualpipe", 4, 8, 2)


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 6), m=st.integers(1, 12), v=st.integers(1, 3),
       name=st.sampled_from(["1f1b", "interleaved", "dualpipe"]))
def test_every_item_once_and_forward_before_backward(p, m, v, name):
    if name != "interleaved":
        v = 1
    if name == "interleaved" and (m % p or p == 1):
        return
    if name == "dualpipe":
        p, m = 2 * (p // 2 + 1), 2 * m  # even p, even m
        m = max(m, 2 * p)
    sched = build_schedule(name, p, m, v)
    for r, items in enumerate(sched):
        seen = set()
        for it in items:
            key = (it.mb, virtual_stage(it, p, r), it.phase)
            assert key not in seen
            seen.add(key)
            if it.phase == "bwd":
                assert (it.mb, key[1], "fwd") in seen
            if it.phase == "wgt":
                assert (it.mb, key[1], "bwd") in seen
        deferred = {(it.mb, virtual_stage(it, p, r)) for it in items if it.defer_w}
        assert {(mb, s) for mb, s, ph in seen if ph == "wgt"} == deferred
        assert len(seen) == 2 * m * v + len(deferred)
    # Never slower than running everything serially, never faster than the busiest rank's work.
    step = makespan(sched, 1.0, 2.0, 0.5)
    assert m * 3.0 - 1e-9 <= step <= (m * v * 3.0) * p * v + 1e-9


def test_unknown_schedule_is_an_input_error():
    with pytest.raises(InputError, match="schedule"):
        build_schedule("gpipe", 2, 2)
    assert Item(0, 0, "fwd") == Item(0, 0, "fwd")


# ------------------------------------------------------------------ runs of the schedule


def test_one_run_per_local_batch_by_hand():
    # 1F1B, p = 2, one micro-batch per run, two runs, t_f = t_b = 1: rank 0 F0 [0,1], rank 1 F0
    # [1,2] B0 [2,3], rank 0 B0 [3,4]; the second run starts on rank 0 at 4 and ends at 8. One run
    # of both micro-batches: (m + p - 1)(t_f + t_b) = 6.
    two_runs = build_schedule("1f1b", 2, 2, per_run=1)
    assert [[repr(it) for it in items] for items in two_runs] == [["F0", "B0", "F1", "B1"]] * 2
    assert makespan(two_runs, 1.0, 1.0) == 8.0
    assert makespan(build_schedule("1f1b", 2, 2), 1.0, 1.0) == 6.0
    assert build_schedule("1f1b", 2, 2, per_run=2) == build_schedule("1f1b", 2, 2)  # one run


@settings(max_examples=30, deadline=None)
@given(p=st.integers(1, 5), per_run=st.integers(1, 6), runs=st.integers(1, 4), v=st.integers(1, 3),
       name=st.sampled_from(["1f1b", "interleaved", "dualpipe"]))
def test_runs_do_not_overlap_and_each_costs_one_run(p, per_run, runs, v, name):
    # Every schedule here ends a run with rank 0's last backward and starts the next with rank 0's
    # first forward, so runs follow each other without overlap: R runs take R times one run.
    if name != "interleaved":
        v = 1
    if name == "interleaved":
        per_run = p * per_run
    if name == "dualpipe":
        p = 2 * (p // 2 + 1)
        per_run = 2 * (per_run + p)  # even, at least 2p
    m = per_run * runs
    sched = build_schedule(name, p, m, v, per_run=per_run)
    for r, items in enumerate(sched):
        keys = [(it.mb, virtual_stage(it, p, r), it.phase) for it in items]
        assert len(set(keys)) == len(keys)
        assert [it.mb // per_run for it in items] == sorted(it.mb // per_run for it in items)
    one = makespan(build_schedule(name, p, per_run, v), 1.0, 2.0, 0.5)
    assert makespan(sched, 1.0, 2.0, 0.5) == pytest.approx(runs * one, rel=1e-12)


def test_runs_must_divide_the_step():
    with pytest.raises(InputError, match="schedule_micro_batches"):
        build_schedule("1f1b", 2, 6, per_run=4)
    assert micro_batch_constraint("interleaved", 4, 8) == (8, 8)
    assert micro_batch_constraint("dualpipe", 4, 12) == (12, 12)
    assert micro_batch_constraint("dualpipe", 4) == (8, 2)


# ------------------------------------------------------------------ lockstep tables (torch <= 2.9)


def test_lockstep_table_p2_v2_m2_by_hand():
    # Stages s0..s3 on ranks 0, 1, 0, 1. t_f = 0.5, t_b = 1, free sends. Rank 0 runs its four
    # forwards at steps 0-3 (0.5 each, to 2.0); rank 1 F0 s1 at step 1 and F1 s1 at 2 (each ends
    # with rank 0's step), F0 s3 at 4 (2.0-2.5), B0 s3 at 5 (to 3.5: rank 0 idles, waiting for its
    # send), F1 s3 at 6 (to 4.0); step 7: B0 s2 on rank 0 (3.5-4.5) and B1 s3 on rank 1 (4.0-5.0)
    # swap sends, both end at 5.0; steps 9 and 11 two backwards each (to 7.0); rank 0's B1 s0 at
    # step 13 ends at 8.0. Dependencies alone (the same orders, no steps) give 7.5.
    table = interleaved_lockstep(2, 2, 2)
    assert [[(it.step, repr(it)) for it in items] for items in table] == [
        [(0, "F0"), (1, "F1"), (2, "F0c1"), (3, "F1c1"), (7, "B0c1"), (9, "B1c1"), (11, "B0"),
         (13, "B1")],
        [(1, "F0"), (2, "F1"), (4, "F0c1"), (5, "B0c1"), (6, "F1c1"), (7, "B1c1"), (9, "B0"),
         (11, "B1")]]
    assert lockstep_makespan(table, 0.5, 1.0, 0.0) == 8.0
    assert makespan(table, 0.5, 1.0) == 7.5
    # Sends of 0.1 s: the exchanges of steps 0, 1, 2, 3, 5, 7, 9 and 11 each hold both ranks
    # 0.1 s longer (step 4 sends nothing: s3 is the last stage), so 8.0 + 8 x 0.1.
    assert lockstep_makespan(table, 0.5, 1.0, 0.1) == pytest.approx(8.8, rel=1e-12)


def _torch_table(p, v, m):
    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    s = object.__new__(schedules.ScheduleInterleaved1F1B)
    s.pp_group_size, s.n_local_stages, s._n_microbatches = p, v, m
    s.number_of_rounds = max(1, m // p)
    s.microbatches_per_round = m // s.number_of_rounds
    return [s._calculate_single_rank_operations(r) for r in range(p)]


@pytest.mark.parametrize("p,v,m", [(2, 2, 2), (2, 3, 4), (4, 8, 8), (4, 2, 16), (8, 4, 8),
                                   (3, 2, 6), (8, 1, 16)])
def test_lockstep_table_is_torchs(p, v, m):
    # torch computes the same table in ScheduleInterleaved1F1B._calculate_single_rank_operations
    # (unchanged from 2.8 to 2.13; the runtime that walks it changed in 2.10).
    ref = _torch_table(p, v, m)
    ours = interleaved_lockstep(p, m, v)
    for r in range(p):
        want = [(t, a.stage_index, a.microbatch_index,
                 "fwd" if a.computation_type.name == "FORWARD" else "bwd")
                for t, a in enumerate(ref[r]) if a is not None]
        assert [(it.step, virtual_stage(it, p, r), it.mb, it.phase) for it in ours[r]] == want


@settings(max_examples=40, deadline=None)
@given(p=st.integers(2, 6), rounds=st.integers(1, 3), v=st.integers(1, 4),
       t_f=st.floats(0.1, 2.0), t_b=st.floats(0.1, 4.0), t_send=st.floats(0.0, 0.5))
def test_lockstep_orders_and_bounds(p, rounds, v, t_f, t_b, t_send):
    m = p * rounds
    table = interleaved_lockstep(p, m, v)
    for r, items in enumerate(table):
        steps = [it.step for it in items]
        assert steps == sorted(set(steps))  # one item per time step, in order
        if m > p and v > 1:  # Megatron's order; m == p differs (torch caps Megatron's warm-up)
            assert [repr(it) for it in items] == [repr(it) for it in interleaved_1f1b(p, m, v)[r]]
    # Every item once, forward before backward: the general property test's invariant.
    for r, items in enumerate(table):
        seen = set()
        for it in items:
            key = (it.mb, virtual_stage(it, p, r), it.phase)
            assert key not in seen
            if it.phase == "bwd":
                assert (it.mb, key[1], "fwd") in seen
            seen.add(key)
        assert len(seen) == 2 * m * v
    # The barriers only add waits: never faster than the same orders with dependencies alone,
    # and sends only add time.
    free = lockstep_makespan(table, t_f, t_b, 0.0)
    assert free >= makespan(table, t_f, t_b) - 1e-9
    assert lockstep_makespan(table, t_f, t_b, t_send) >= free - 1e-9


def test_lockstep_runs_follow_in_time_steps():
    one = interleaved_lockstep(2, 2, 2)
    two = build_schedule("interleaved", 2, 4, 2, per_run=2, lockstep=True)
    length = 1 + max(it.step for items in one for it in items)
    assert [[it.step for it in items] for items in two] == \
        [[it.step for it in items] + [it.step + length for it in items] for items in one]
    assert lockstep_makespan(two, 0.5, 1.0, 0.0) == 2 * lockstep_makespan(one, 0.5, 1.0, 0.0)
    with pytest.raises(InputError, match="pipeline_p2p"):
        build_schedule("1f1b", 2, 4, lockstep=True)


# ------------------------------------------------------------------ blocking plans


def test_dualpipe_plan_p2_m4_rank0_by_hand():
    # deepseek-ai/DualPipe's reference on rank 0 of 2 (h = 0, a middle rank; micro-batches 0-1
    # enter here, 2-3 at rank 1): step 2 runs F0 with nothing to commit, queues its output, then
    # posts the receive of F2 (the reversed pipeline's micro-batch 0, stage 1 here) and commits it
    # with the queued send before computing F2 (not sent: rank 0 is its last stage). Step 4, first
    # pair unpaired on a middle rank: F1 (nothing queued), B2 (last stage: no receive), then F1's
    # and B2's outputs go with the receives of F3 and B0 before the pair (F3, B0).
    plan = dualpipe_plan(2, 4)[0]
    assert plan[:6] == [("slot", 0), ("commit", (("fwd", 0, 1),), (("fwd", 2, 1),)), ("slot", 1),
                        ("slot", 2), ("slot", 3),
                        ("commit", (("fwd", 1, 1), ("bwd", 2, 0)), (("fwd", 3, 1), ("bwd", 0, 0)))]
    assert [repr(it) for it in dualpipe(2, 4)[0][:5]] == ["F0", "F2r", "F1", "B2r", "F3r"]


def _matched(plan, rank_of_stage):
    """Every send is some rank's receive, posted in the same order per pair of ranks (as NCCL
    matches point-to-point operations)."""
    sends, recvs = {}, {}
    for r, entries in enumerate(plan):
        for e in entries:
            if e[0] != "commit":
                continue
            for key in e[1]:
                sends.setdefault((r, rank_of_stage(key, key[2])), []).append(key)
            for key in e[2]:
                assert rank_of_stage(key, key[2]) == r
                frm = rank_of_stage(key, key[2] - 1 if key[0] == "fwd" else key[2] + 1)
                recvs.setdefault((frm, r), []).append(key)
    assert sends == recvs
    return sum(len(v) for v in sends.values())


@pytest.mark.parametrize("p,m", [(2, 4), (4, 8), (4, 12), (8, 16), (16, 40)])
def test_dualpipe_plan_matches_sends_and_receives(p, m):
    n = m // 2
    # Each micro-batch crosses p - 1 rank boundaries forward and as many backward.
    assert _matched(dualpipe_plan(p, m), lambda k, s: stage_rank(s, p, k[1] >= n)) == 2 * m * (p - 1)


@pytest.mark.parametrize("p,v,m", [(2, 2, 2), (4, 8, 8), (8, 4, 8), (4, 2, 16)])
def test_lockstep_plan_matches_sends_and_receives(p, v, m):
    plan = lockstep_plan(interleaved_lockstep(p, m, v))
    assert _matched(plan, lambda k, s: s % p) == 2 * m * (p * v - 1)


@pytest.mark.parametrize("p,m,per_run", [(2, 4, None), (4, 8, None), (4, 16, 8), (8, 16, None)])
def test_dualpipe_reference_commits_cost_nothing_without_sends(p, m, per_run):
    # The reference pairs its sends and receives so that, with free sends and constant op times,
    # waiting at each commit never delays a rank: the step is the dependencies-only oracle's.
    sched = build_schedule("dualpipe", p, m, per_run=per_run)
    plan = build_plan("dualpipe", p, m, per_run=per_run)
    for t_w in (0.0, 0.5):
        assert plan_makespan(sched, plan, 1.0, 2.5, t_w) == pytest.approx(makespan(sched, 1.0, 2.5, t_w))
    assert plan_makespan(sched, plan, 1.0, 2.5, 0.5, 0.1) > makespan(sched, 1.0, 2.5, 0.5)
    with pytest.raises(InputError, match="pipeline_p2p"):
        build_plan("1f1b", p, m)


def test_ep_overlap_orders_by_hand():
    # Megatron's combined 1F1B (megatron/core/pipeline_parallel/combined_1f1b.py): without a
    # pipeline, forward 0 alone, then forward i+1 with backward i, then the last backward alone.
    assert _order(one_f_one_b(1, 4, ep_overlap=True)[0]) == ["F0", "F1", "+B0", "F2", "+B1", "F3",
                                                            "+B2", "B3"]
    # Interleaved p=2, v=2, m=4: one warm-up forward more than Megatron's (p-r-1)*2 + (v-1)*p, each
    # steady-state forward paired with the backward after it, the cool-down unpaired.
    sched = interleaved_1f1b(2, 4, 2, ep_overlap=True)
    assert _order(sched[0]) == ["F0", "F1", "F0c1", "F1c1", "F2", "F3", "+B0c1", "F2c1", "+B1c1",
                                "F3c1", "+B0", "B1", "B2c1", "B3c1", "B2", "B3"]
    assert _order(sched[1]) == ["F0", "F1", "F0c1", "F1c1", "+B0c1", "F2", "+B1c1", "F3", "+B0",
                                "F2c1", "+B1", "F3c1", "+B2c1", "B3c1", "B2", "B3"]


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 5), k=st.integers(1, 4), v=st.integers(1, 3))
def test_ep_overlap_pairs_never_wait_for_themselves(p, k, v):
    """Every pair is a forward then a backward whose own forward ran earlier on the rank (the
    extra warm-up forward): no slot waits for its own output, and with constant times the
    schedule is no slower than serial work and each item still runs once."""
    name = "1f1b" if p == 1 else "interleaved"
    v = 1 if p == 1 else max(v, 2)
    m = k * p + (1 if p == 1 else 0)
    sched = build_schedule(name, p, m, v, ep_overlap=True)
    for r, items in enumerate(sched):
        done = set()
        for slot in slots(items):
            if len(slot) == 2:
                f, b = slot
                assert f.phase == "fwd" and b.phase == "bwd" and b.overlap and not f.overlap
                assert (b.mb, virtual_stage(b, p, r)) in done
            for it in slot:
                if it.phase == "fwd":
                    done.add((it.mb, virtual_stage(it, p, r)))
        assert sorted((i.mb, i.chunk, i.phase) for i in items) == sorted(
            (i.mb, i.chunk, i.phase) for i in build_schedule(name, p, m, v)[r])
    step = makespan(sched, 1.0, 2.0)
    assert m * 3.0 - 1e-9 <= step <= (m * v * 3.0) * p * v + 1e-9


def test_ep_overlap_is_megatrons_schedules_only():
    with pytest.raises(InputError, match="ep_comm_overlap"):
        build_schedule("1f1b", 4, 8, ep_overlap=True)  # Megatron: interleaved, or no pipeline
    with pytest.raises(InputError, match="ep_comm_overlap"):
        build_schedule("dualpipe", 4, 8, ep_overlap=True)
    with pytest.raises(InputError, match="ep_comm_overlap"):
        build_schedule("interleaved", 2, 4, 2, lockstep=True, ep_overlap=True)

