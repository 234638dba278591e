"""Run a study: the variants as one sweep (resumable, one atomic file per variant), then fabric
capex, $ per token and ranks, written to DIR/study.parquet."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simmoe.study.spec import VARIANT_COLUMN, StudySpec, load_study, overrides_json
from simmoe.study.table import COLUMN_NAMES, SCHEMA, rank_rows, write_study_parquet


@dataclass
class StudyOutcome:
    spec: StudySpec
    rows: list[dict[str, Any]]  # ranked
    path: Path
    sweep: Any  # simmoe.sweep.SweepOutcome
    capex: dict[str, Any] = field(default_factory=dict)  # topology path -> FabricCapex

    def to_dict(self) -> dict[str, Any]:
        return {"study": self.spec.name, "study_parquet": str(self.path), "variants": len(self.rows),
                "ran": self.sweep.ran, "skipped": self.sweep.skipped, "rank_by": self.spec.rank_by,
                "rows": self.rows}


def default_out_dir(spec: StudySpec) -> Path:
    return Path("results") / spec.name


def _sweep_rows(dataset: Path) -> dict[str, dict[str, Any]]:
    import pyarrow.parquet as pq

    return {r[VARIANT_COLUMN]: r for r in pq.read_table(dataset).to_pylist()}


def assemble_rows(spec: StudySpec, results: dict[str, dict[str, Any]], prices) -> tuple[list[dict], dict]:  # noqa: ANN001
    """One study row per variant from its sweep result (status + evaluator columns) and the capex."""
    from simmoe.study.capex import amortized_usd, fabric_inventory, price_fabric

    capex: dict[str, Any] = {}
    rows = []
    for v in spec.variants:
        res = results.get(v.name) or {"status": "missing", "error": "not run"}
        topo_path = str(v.scenario.topology_path)
        if topo_path not in capex:
            capex[topo_path] = price_fabric(fabric_inventory(topo_path), prices)
        cap = capex[topo_path]
        inv = cap.inventory
        row: dict[str, Any] = {c: None for c in COLUMN_NAMES}
        row.update(variant=v.name, overrides=overrides_json(v.overrides), status=res.get("status"),
                   error=res.get("error"), error_type=res.get("error_type"), topology=inv.topology,
                   gpus=int(v.scenario.gpus), fabric_switches=inv.switch_count, fabric_nics=inv.nic_count,
                   fabric_links=inv.link_count, fabric_capex_total_usd=cap.total_usd,
                   fabric_share=v.scenario.gpus / inv.gpus)
        if res.get("status") == "ok":
            for c in ("step_time_s", "tokens_per_s_per_gpu", "mfu", "a2a_dispatch_s", "a2a_combine_s",
                      "exposed_comm_s", "dp_comm_s", "expert_compute_s", "dropped_token_fraction",
                      "expert_load_max_over_mean", "peak_memory_gib", "time_to_train_days_p10",
                      "time_to_train_days_p50", "time_to_train_days_p90"):
                row[c] = res.get(c)
            row["tokens"] = res.get("tokens_p50")
            row["gpu_hours"] = res.get("gpu_hours_p50")
            row["cost_usd"] = res.get("cost_usd_p50")
            row["energy_mwh"] = res.get("energy_mwh_p50")
            row["tco2e"] = res.get("tco2e_p50")
            row["fabric_capex_usd"] = amortized_usd(cap.total_usd, wall_s=res["time_to_train_s_p50"],
                                                    life_years=prices.life_years, utilization=prices.utilization,
                                                    share=row["fabric_share"])
            row["total_cost_usd"] = row["cost_usd"] + row["fabric_capex_usd"]
            row["usd_per_million_tokens"] = row["total_cost_usd"] / (row["tokens"] / 1e6)
        rows.append(row)
    return rank_rows(rows, spec.rank_by), capex


def _metadata(spec: StudySpec, prices) -> dict[str, str]:  # noqa: ANN001
    import dataclasses

    from simmoe import __version__

    table = {s: {k: dataclasses.asdict(p) for k, p in getattr(prices, s).items()} for s in ("switches", "nics", "links")}
    table["routers"] = dataclasses.asdict(prices.router)
    return {"simmoe_version": __version__, "schema": SCHEMA, "simmoe.study.name": spec.name,
            "simmoe.study.description": spec.description, "simmoe.study.file": str(spec.file),
            "simmoe.study.base": str(spec.base), "simmoe.study.text": spec.text,
            "simmoe.study.rank_by": spec.rank_by, "simmoe.study.samples": str(spec.samples),
            "simmoe.study.forecast_overrides": json.dumps(spec.forecast_overrides, default=str),
            "simmoe.study.prices_files": json.dumps(list(prices.files)),
            "simmoe.study.prices": json.dumps(table),
            "simmoe.study.fabric_life_years": str(prices.life_years),
            "simmoe.study.fabric_utilization": str(prices.utilization),
            "simmoe.study.variant_scenarios": json.dumps(
                {v.name: v.scenario.model_dump(mode="json") for v in spec.variants}, default=str)}


def run_study(study: StudySpec | str | Path, out_dir: str | Path | None = None, *, executor: Any = "local",
              workers: int | None = None, steps: int | None = None, samples: int | None = None,
              progress: bool = True, retry_errors: bool = False) -> StudyOutcome:
    """Validate (if given a path), simulate and forecast every unfinished variant, rank, write."""
    from simmoe.study.prices import load_prices
    from simmoe.sweep import run_sweep

    spec = study if isinstance(study, StudySpec) else load_study(study, steps=steps, samples=samples)
    prices = load_prices(spec.prices)
    out = Path(out_dir) if out_dir is not None else default_out_dir(spec)
    sweep = run_sweep(spec.sweep_spec(), out, executor=executor, workers=workers, progress=progress,
                      retry_errors=retry_errors)
    rows, capex = assemble_rows(spec, _sweep_rows(sweep.dataset), prices)
    path = write_study_parquet(rows, out / "study.parquet", _metadata(spec, prices))
    return StudyOutcome(spec=spec, rows=rows, path=path, sweep=sweep, capex=capex)
