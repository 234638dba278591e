"""Pipeline schedules as pure functions, against hand-written orders and the 1F1B formula."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from simmoe.engine.schedules import (
    Item,
    build_schedule,
    interleaved_1f1b,
    makespan,
    one_f_one_b,
    overlapped_1f1b,
    slots,
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


def test_overlapped_pairs_forward_with_earlier_backward():
    s = overlapped_1f1b(4, 8)
    assert _order(s[3]) == ["F0", "B0", "+F1", "B1", "+F2", "B2", "+F3", "B3", "+F4", "B4", "+F5",
                            "B5", "+F6", "B6", "+F7", "B7"]
    for items in s:
        for slot in slots(items):
            if len(slot) == 2:
                b, f = slot
                assert b.phase == "bwd" and f.phase == "fwd" and f.mb > b.mb


@settings(max_examples=40, deadline=None)
@given(p=st.integers(1, 6), m=st.integers(1, 12), v=st.integers(1, 3),
       name=st.sampled_from(["1f1b", "interleaved", "dualpipe"]))
def test_every_item_once_and_forward_before_backward(p, m, v, name):
    if name != "interleaved":
        v = 1
    if name == "interleaved" and (m % p or p == 1):
        return
    sched = build_schedule(name, p, m, v)
    for items in sched:
        seen = set()
        for it in items:
            key = (it.mb, it.chunk, it.phase)
            assert key not in seen
            seen.add(key)
            if it.phase == "bwd":
                assert (it.mb, it.chunk, "fwd") in seen
        assert len(seen) == 2 * m * v
    # Never slower than running everything serially, never faster than the busiest rank's work.
    step = makespan(sched, 1.0, 2.0)
    assert m * 3.0 - 1e-9 <= step <= (m * v * 3.0) * p * v + 1e-9


@pytest.mark.parametrize("p,m", [(4, 8), (2, 4), (4, 4), (8, 3)])
def test_overlapped_no_slower_than_1f1b_without_comm(p, m):
    assert makespan(overlapped_1f1b(p, m), 1.0, 2.0) <= makespan(one_f_one_b(p, m), 1.0, 2.0) + 1e-9


def test_unknown_schedule_is_an_input_error():
    with pytest.raises(InputError, match="schedule"):
        build_schedule("gpipe", 2, 2)
    assert Item(0, 0, "fwd") == Item(0, 0, "fwd")
