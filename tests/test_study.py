"""simmoe study: fabric counting and pricing, ranking, study-file validation, study.parquet."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from simmoe.errors import ConfigError, InputError
from simmoe.study import (amortized_usd, competition_ranks, fabric_inventory, load_prices, load_study,
                          price_fabric, rank_rows, run_study)
from simmoe.study.capex import HOURS_PER_YEAR
from simmoe.study.table import COLUMN_NAMES

# 4 DGX H100 (32 NICs) on rail-optimized 8-port switches. By hand: a leaf takes
# floor(8 * 1 / 2) = 4 NICs, so each of the 8 rails needs ceil(4 / 4) = 1 leaf holding its 4 NICs,
# with 4 uplinks: 32 uplinks in all. Spines: at least ceil(32 / 8) = 4 (8 ports each) and 4 divides
# each leaf's 4 uplinks, so 4 spines with one port from every leaf.
# => 8 leaves + 4 spines = 12 switches, 32 NICs, 32 host cables, 32 leaf-spine cables.
TINY_RAIL = """\
name: tiny-rail
node: dgx-h100
nodes: 4
fabric: {type: rail-optimized, tiers: 2, switch_radix: 8, oversubscription: 1}
"""

# A tiny padded MoE on the 2-node topology, analytical network, 1 step: fast.
TINY_SCENARIO = """\
name: tiny
model:
  name: tiny
  layers: 2
  hidden: 256
  attention: {type: gqa, heads: 4, kv_heads: 2, head_dim: 64}
  vocab: 1024
  moe: {routed_experts: 8, top_k: 2, expert_ffn: 512}
training: {seq_len: 256, global_batch: 32, micro_batch: 2, total_tokens: 1.0e9}
parallelism: {ep: 8}
cluster: {topology: dgx-h100-2node}
simulation: {steps: 1, warmup_steps: 0, fidelity: analytical}
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_inventory_tiny_rail_by_hand(tmp_path):
    inv = fabric_inventory(str(_write(tmp_path, "tiny-rail.yaml", TINY_RAIL)))
    assert inv.switches == {("leaf", "ib-ndr", 8): 8, ("spine", "ib-ndr", 8): 4}
    assert inv.nics == {"ib-ndr": 32}
    assert inv.host_links == {"ib-ndr": 32}
    assert inv.switch_links == {"ib-ndr": 32}
    assert inv.routers == 0 and inv.gpus == 32


def test_inventory_shipped_two_tier_fabrics():
    # h100-ndr-rail: 8 rails x 1 leaf of 16 NICs, 16 uplinks each -> 128 leaf-spine cables on 2 spines.
    rail = fabric_inventory("h100-ndr-rail")
    assert rail.switches_by_layer() == {"leaf": 8, "spine": 2}
    assert rail.link_count == 128 + 128
    # 2:1 fat-tree: leaves of 32 NICs (4 whole servers of 8; 42 ports allowed) with 16 uplinks.
    ft = fabric_inventory("h100-ndr-fattree-2to1")
    assert ft.switches_by_layer() == {"leaf": 4, "spine": 2}
    assert ft.switch_links == {"ib-ndr": 64}
    # RoCE: 4 NICs per node -> 64 NICs, 2 leaves of 32, 32 uplinks each.
    roce = fabric_inventory("h100-roce-4x100g")
    assert roce.nics == {"eth-100g": 64} and roce.switch_links == {"eth-100g": 64}


def test_price_and_amortization_by_hand(tmp_path):
    prices_file = _write(tmp_path, "p.yaml", """\
        switches: {ib-ndr: {usd: 6400, radix: 64, basis: test}}
        nics: {ib-ndr: {usd: 100, basis: test}}
        links: {ib-ndr: {usd: 10, basis: test}}
        amortization: {life_years: 2, utilization: 0.5}
    """)
    prices = load_prices(prices_file)
    cap = price_fabric(fabric_inventory(str(_write(tmp_path, "tiny-rail.yaml", TINY_RAIL))), prices)
    # 12 switches of 8 ports at 6400 * 8 / 64 = 800 each; 32 NICs x 100; 64 cables x 10.
    assert cap.switches_usd == pytest.approx(12 * 800)
    assert cap.nics_usd == pytest.approx(3200)
    assert cap.links_usd == pytest.approx(640)
    assert cap.total_usd == pytest.approx(13440)
    # One year of wall time at 50% utilization over 2 years: the whole price; half the GPUs: half.
    one_year_s = HOURS_PER_YEAR * 3600
    assert amortized_usd(1000.0, wall_s=one_year_s, life_years=2, utilization=0.5) == pytest.approx(1000.0)
    assert amortized_usd(1000.0, wall_s=one_year_s, life_years=2, utilization=0.5, share=0.5) == pytest.approx(500)


def test_missing_price_names_the_class(tmp_path):
    prices = load_prices()
    inv = fabric_inventory("h100-roce-4x100g")
    stripped = prices.__class__(**{**prices.__dict__, "nics": {}})
    with pytest.raises(InputError, match="nics.eth-100g"):
        price_fabric(inv, stripped)


def test_bad_prices_file(tmp_path):
    with pytest.raises(InputError, match="basis"):
        load_prices(_write(tmp_path, "p.yaml", "nics: {eth-800g: {usd: 5}}\n"))  # new class, no basis
    with pytest.raises(InputError, match="usd"):
        load_prices(_write(tmp_path, "p.yaml", "nics: {ib-ndr: {usd: -5, basis: x}}\n"))


def test_competition_ranks():
    assert competition_ranks([3.0, 1.0, 3.0, None, 2.0]) == [3, 1, 3, None, 2]


def test_rank_rows_constructed_case():
    rows = [
        {"variant": "a", "usd_per_million_tokens": 0.5, "total_cost_usd": 50.0, "time_to_train_days_p50": 1.0,
         "energy_mwh": 9.0},
        {"variant": "b", "usd_per_million_tokens": 0.2, "total_cost_usd": 80.0, "time_to_train_days_p50": 3.0,
         "energy_mwh": 1.0},
        {"variant": "c", "usd_per_million_tokens": None, "total_cost_usd": None, "time_to_train_days_p50": None,
         "energy_mwh": None},
        {"variant": "d", "usd_per_million_tokens": 0.2, "total_cost_usd": 20.0, "time_to_train_days_p50": 2.0,
         "energy_mwh": 5.0},
    ]
    ordered = rank_rows(rows)
    # d and b tie on $/token; d is faster, so it goes first; c has no result and goes last.
    assert [r["variant"] for r in ordered] == ["d", "b", "a", "c"]
    assert [r["rank"] for r in ordered] == [1, 2, 3, None]
    by = {r["variant"]: r for r in ordered}
    assert by["b"]["rank_usd_per_token"] == by["d"]["rank_usd_per_token"] == 1
    assert by["a"]["rank_usd_per_token"] == 3
    assert (by["a"]["rank_time_to_train"], by["d"]["rank_time_to_train"], by["b"]["rank_time_to_train"]) == (1, 2, 3)
    assert (by["b"]["rank_energy"], by["d"]["rank_energy"], by["a"]["rank_energy"]) == (1, 2, 3)
    assert by["c"]["rank_total_cost"] is None
    assert [r["variant"] for r in rank_rows(rows, "total_cost_usd")][:3] == ["d", "a", "b"]


def _study(tmp_path: Path, body: str) -> Path:
    _write(tmp_path, "tiny.yaml", TINY_SCENARIO)
    return _write(tmp_path, "s.yaml", "base: tiny.yaml\n" + textwrap.dedent(body))


def test_unknown_variant_field_fails_before_anything_runs(tmp_path, monkeypatch):
    import simmoe.sweep.runner as sweep_runner

    def boom(*a, **k):
        raise AssertionError("a point ran")

    monkeypatch.setattr(sweep_runner, "run_point", boom)
    path = _study(tmp_path, "variants:\n  a: {routing.capcity_factor: 1.0}\n")
    with pytest.raises(ConfigError, match=r"variants\.a\.routing\.capcity_factor.*routing\.capacity_factor"):
        run_study(path, tmp_path / "out", executor="serial", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("variants", ["variants: {}\n", "variants: []\n", "", "variants:\n"])
def test_empty_variants(tmp_path, variants):
    with pytest.raises(ConfigError, match="variants.*at least one variant"):
        load_study(_study(tmp_path, variants))


def test_other_study_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown study key.*did you mean variants"):
        load_study(_study(tmp_path, "variant: {a: {}}\n"))
    with pytest.raises(ConfigError, match=r"variants\.a\.parallelism\.ep=3: variant 'a' is not a valid scenario: does not divide"):
        load_study(_study(tmp_path, "variants:\n  a: {parallelism.ep: 3}\n"))
    with pytest.raises(ConfigError, match="same scenario"):
        load_study(_study(tmp_path, "variants:\n  a: {}\n  b: {parallelism.ep: 8}\n"))
    with pytest.raises(ConfigError, match="rank_by"):
        load_study(_study(tmp_path, "rank_by: speed\nvariants: {a: {}}\n"))
    with pytest.raises(ConfigError, match="samples"):
        load_study(_study(tmp_path, "forecast: {samples: 0}\nvariants: {a: {}}\n"))


def test_study_end_to_end_writes_plain_parquet(tmp_path):
    path = _study(tmp_path, """\
        name: tiny-study
        forecast: {samples: 1}
        variants:
          ep8: {}
          ep4: {parallelism.ep: 4}
          too-big: {model.moe.expert_ffn: 8000000}   # ~6e9 expert parameters per GPU: does not fit
    """)
    out = run_study(path, tmp_path / "out", executor="serial", progress=False)
    table = pq.read_table(tmp_path / "out" / "study.parquet")  # plain pyarrow, no simmoe reader
    assert tuple(table.column_names) == COLUMN_NAMES
    rows = {r["variant"]: r for r in table.to_pylist()}
    assert set(rows) == {"ep8", "ep4", "too-big"}
    assert rows["too-big"]["status"] == "error" and rows["too-big"]["rank"] is None
    assert rows["too-big"]["error_type"] == "InfeasibleScenario"
    for name in ("ep8", "ep4"):
        r = rows[name]
        assert r["status"] == "ok" and r["rank"] in (1, 2)
        assert r["fabric_capex_total_usd"] == pytest.approx(out.capex[next(iter(out.capex))].total_usd)
        assert r["total_cost_usd"] == pytest.approx(r["cost_usd"] + r["fabric_capex_usd"])
        assert r["usd_per_million_tokens"] == pytest.approx(r["total_cost_usd"] / r["tokens"] * 1e6)
        assert r["fabric_switches"] == 1 and r["fabric_nics"] == 16
        assert math.isfinite(r["step_time_s"]) and r["step_time_s"] > 0
    meta = table.schema.metadata
    assert meta[b"schema"] == b"simmoe.study.StudyRow v1"
    # Resumable: a second run reuses every variant.
    again = run_study(path, tmp_path / "out", executor="serial", progress=False)
    assert again.sweep.ran == 0 and again.sweep.skipped == 3
