"""benchmarks/block_idle_profile.py: the idle split of a hand-built trace (oracle worked out below),
the gap ranking, iteration windows without CPU ops, and a CPU smoke run."""

from __future__ import annotations


import pytest

@pytest.fixture(scope="module")
def bip(load_benchmark):
    return load_benchmark("block_idle_profile")


def _x(cat, name, ts, dur, tid=1, **args):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "tid": tid, "args": args}


def _launch_and_kernel(corr, launch_ts, kernel_ts, kernel_dur, kernel="k", cat="kernel"):
    return [_x("cuda_runtime", "cudaLaunchKernel", launch_ts, 2.0, correlation=corr),
            _x(cat, kernel, kernel_ts, kernel_dur, tid=7, correlation=corr)]


def _trace():
    """Iteration 0, host window [0, 100] (times in us):
    k1 5-15 and k2 15-20 (launched by 3 and 6): one busy stretch [5, 20];
    k3 35-45 launched at 30-32 inside aten::mm: gap [20, 35], host late 32 - 20 = 12, device 3;
    k4 45-55 (launched at 40-42): stretch [35, 55]; the host waits in a synchronize 50-70;
    k5 80-90 launched 75-77 and k6 85-95 on another stream (launched 78-80): gap [55, 80] overlaps
    the synchronize: sync-late 77 - 55 = 22, device 3; stretch [80, 95].
    Busy 15 + 20 + 15 = 50, span 90, idle 40 = host 12 + sync 22 + device 6.
    Iteration 1, window [100, 200]: a memset 120-130 and a copy 131-140, both launched in time:
    busy 19, span 20, a 1 us device gap."""
    ev = []
    ev += _launch_and_kernel(1, 1, 5, 10, "k1")
    ev += _launch_and_kernel(2, 4, 15, 5, "k2")
    ev += _launch_and_kernel(3, 30, 35, 10, "k3")
    ev += [_x("cpu_op", "aten::outer", 28, 12), _x("cpu_op", "aten::mm", 29, 5)]
    ev += _launch_and_kernel(4, 40, 45, 10, "k4")
    ev.append(_x("cuda_runtime", "cudaStreamSynchronize", 50, 20, correlation=99))
    ev += _launch_and_kernel(5, 75, 80, 10, "k5")
    ev += _launch_and_kernel(6, 78, 85, 10, "k6")
    ev += _launch_and_kernel(7, 110, 120, 10, "Memset (Device)", cat="gpu_memset")
    ev += _launch_and_kernel(8, 113, 131, 9, "Memcpy DtoD", cat="gpu_memcpy")
    ev.append({"ph": "f", "cat": "ac2g", "name": "flow", "ts": 3})  # not a complete event: ignored
    return ev


def test_idle_breakdown_matches_the_hand_oracle(bip):
    rows, gaps = bip.idle_breakdown(_trace(), [(0.0, 100.0), (100.0, 200.0)])
    first, second = rows
    assert first["kernels"] == 6
    assert first["busy_us"] == pytest.approx(50) and first["span_us"] == pytest.approx(90)
    assert first["idle_host_us"] == pytest.approx(12)
    assert first["idle_sync_us"] == pytest.approx(22)
    assert first["idle_device_us"] == pytest.approx(6)
    assert (first["idle_host_us"] + first["idle_sync_us"] + first["idle_device_us"]
            == pytest.approx(first["span_us"] - first["busy_us"]))
    assert second["kernels"] == 2 and second["busy_us"] == pytest.approx(19) and second["span_us"] == pytest.approx(20)
    assert second["idle_host_us"] == 0 and second["idle_device_us"] == pytest.approx(1)
    by_next = {g["next"]: g for g in gaps}
    assert by_next["k3"]["op"] == "aten::mm"  # the innermost op around the launch
    assert by_next["k3"]["host_late_us"] == pytest.approx(12) and not by_next["k3"]["sync"]
    assert by_next["k5"]["sync"] and by_next["k5"]["gap_us"] == pytest.approx(25)
    assert by_next["k5"]["prev"] == "k4"


def test_an_empty_window_has_no_kernels(bip):
    rows, gaps = bip.idle_breakdown(_trace(), [(300.0, 400.0)])
    assert rows == [{"iteration": 0, "kernels": 0}] and gaps == []


def test_top_gaps_sums_by_source_largest_first(bip):
    gaps = [{"prev": "a", "next": "b", "op": "mm", "sync": False, "gap_us": 10.0, "host_late_us": 8.0},
            {"prev": "a", "next": "b", "op": "mm", "sync": False, "gap_us": 30.0, "host_late_us": 20.0},
            {"prev": "c", "next": "d", "op": "add", "sync": True, "gap_us": 35.0, "host_late_us": 35.0}]
    top = bip.top_gaps(gaps)
    assert [(t["prev"], t["count"], t["gap_us"], t["host_late_us"]) for t in top] == \
        [("a", 2, 40.0, 28.0), ("c", 1, 35.0, 35.0)]
    assert len(bip.top_gaps(gaps, n=1)) == 1


def test_windows_without_cpu_ops_end_at_each_event_synchronize(bip):
    ev = [_x("cuda_runtime", "cudaEventSynchronize", t, 5) for t in (100, 200)]
    assert bip._windows_from_launches(ev, 2) == [(float("-inf"), 105), (105, 205)]
    # Fewer synchronizes than iterations (no launches recorded): one window, the caller divides.
    assert bip._windows_from_launches(ev, 3) == [(float("-inf"), float("inf"))]


def test_cpu_smoke_run_writes_its_row(bip, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "idle.csv"
    rows = bip.main(["--device", "cpu", "--tiny", "--case", "qwen3-30b-a3b", "--iterations", "2", "--out", str(out)])
    assert len(rows) == 1 and rows[0]["case"] == "qwen3-30b-a3b" and rows[0]["tiny"]
    assert rows[0]["plain_event_ms"] > 0 and rows[0]["cpu_event_ms"] > 0
    assert out.exists()
    for bad in (["--case", "no-such-case"], ["--iterations", "0"], ["--blocks", "-1"]):
        with pytest.raises(SystemExit):
            bip.main(["--device", "cpu", *bad])
    # The GPU-only stand-ins refuse to run on the CPU rather than record what did not happen.
    for flag, message in ((["--dispatch-us", "100"], "--dispatch-us needs CUDA"),
                          (["--gmm", "grouped"], "--gmm grouped needs CUDA")):
        with pytest.raises(SystemExit, match=message):
            bip.main(["--device", "cpu", "--tiny", "--case", "qwen3-30b-a3b", *flag])
