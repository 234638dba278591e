"""Plots of simmoe results (docs/plot.md): step breakdowns, sweeps (lines, heatmaps), forecast
distributions and ranked studies. matplotlib (Agg backend) is imported only when a plot is drawn.

    fig = plot_results("results/default/steps.parquet")            # kind detected from metadata
    save_plot("results/default/steps.parquet", "steps.png")
"""

from simmoe.plot.api import KINDS, detect_kind, plot_results, save_plot

__all__ = ["KINDS", "detect_kind", "plot_results", "save_plot"]
