"""Studies: one workload across named variants (fabrics, placements, capacity factors, ...), each
simulated and forecast on the sweep machinery, then ranked by $ per token (fabric capex included),
time to train and energy (docs/study.md).

    spec = load_study("scenarios/studies/fabrics-50b.yaml", steps=1)
    outcome = run_study(spec, "results/fabrics-50b", workers=2)   # outcome.rows, outcome.path
"""

from simmoe.study.capex import FabricCapex, FabricInventory, amortized_usd, fabric_inventory, price_fabric
from simmoe.study.prices import PriceTable, load_prices
from simmoe.study.runner import StudyOutcome, assemble_rows, run_study
from simmoe.study.spec import StudySpec, Variant, load_study
from simmoe.study.table import competition_ranks, rank_rows, write_study_parquet

__all__ = ["FabricCapex", "FabricInventory", "PriceTable", "StudyOutcome", "StudySpec", "Variant",
           "amortized_usd", "assemble_rows", "competition_ranks", "fabric_inventory", "load_prices",
           "load_study", "price_fabric", "rank_rows", "run_study", "write_study_parquet"]
