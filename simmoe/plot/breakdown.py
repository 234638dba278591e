"""steps.parquet -> where each step's time goes (stacked bars), and the communication beside it.

Left: a stacked bar per step whose segments add up to the step time on the critical rank:
expert compute, other compute (the rest of the compute union), optimizer, exposed communication,
pipeline bubble (docs/output.md: exposed + bubble + compute union = step time). Right: seconds
inside all-to-all dispatch, all-to-all combine and DP/EDP collectives, which overlap compute, so
they are drawn beside the step, not stacked into it.
"""

from __future__ import annotations

import numpy as np

from simmoe.plot.common import PALETTE, column, pyplot

MAX_STEPS_SHOWN = 40  # more steps: bars of the mean and the P90 step instead of one bar per step


def plot_breakdown(table, meta: dict[str, str]):  # noqa: ANN001
    plt = pyplot()
    c = {n: np.asarray(column(table, n), float) for n in (
        "step", "step_time_s", "expert_compute_s", "exposed_comm_s", "pipeline_bubble_s", "optimizer_s",
        "a2a_dispatch_s", "a2a_combine_s", "dp_comm_s")}
    if len(c["step"]) > MAX_STEPS_SHOWN:
        order = np.argsort(c["step_time_s"])
        p90 = order[min(len(order) - 1, int(round(0.9 * (len(order) - 1))))]
        c = {k: np.array([v.mean(), v[p90]]) for k, v in c.items()}
        labels = ["mean", "P90 step"]
    else:
        labels = [str(int(s)) for s in c["step"]]
    compute = np.clip(c["step_time_s"] - c["exposed_comm_s"] - c["pipeline_bubble_s"], 0.0, None)
    expert = np.minimum(c["expert_compute_s"], compute)
    optim = np.minimum(c["optimizer_s"], compute - expert)
    other = np.clip(compute - expert - optim, 0.0, None)
    stacked = [("expert compute", expert), ("other compute", other), ("optimizer", optim),
               ("exposed comm", c["exposed_comm_s"]), ("pipeline bubble", c["pipeline_bubble_s"])]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2), gridspec_kw={"width_ratios": [3, 2]})
    x = np.arange(len(labels))
    bottom = np.zeros(len(labels))
    for i, (name, vals) in enumerate(stacked):
        ax.bar(x, vals, bottom=bottom, color=PALETTE[i], label=name, width=0.7)
        bottom += vals
    ax.set_xticks(x, labels, rotation=0 if len(labels) <= 12 else 90)
    ax.set_xlabel("step")
    ax.set_ylabel("seconds on the critical rank")
    ax.set_title("Step time breakdown (segments add up to the step)")
    ax.set_ylim(0, float(bottom.max()) * 1.3 if bottom.max() > 0 else 1)
    ax.legend(loc="upper center", fontsize=8, ncol=3, framealpha=0.9)
    comm = [("a2a dispatch", c["a2a_dispatch_s"]), ("a2a combine", c["a2a_combine_s"]), ("dp comm", c["dp_comm_s"])]
    w = 0.8 / len(comm)
    for i, (name, vals) in enumerate(comm):
        ax2.bar(x + (i - 1) * w, vals, width=w, color=("#56B4E9", "#CC79A7", "#555555")[i], label=name)
    ax2.set_xticks(x, labels, rotation=0 if len(labels) <= 12 else 90)
    ax2.set_xlabel("step")
    ax2.set_ylabel("seconds inside the collectives")
    ax2.set_title("Communication (overlaps compute)")
    top = max(float(np.max(v)) for _, v in comm)
    ax2.set_ylim(0, top * 1.3 if top > 0 else 1)
    ax2.legend(loc="upper center", fontsize=8, ncol=3)
    name = meta.get("scenario_name") or "steps"
    fig.suptitle(f"{name}: {meta.get('fidelity', '')} fidelity, seed {meta.get('seed', '?')}".replace(":  fidelity", ":"),
                 fontsize=11)
    fig.tight_layout()
    return fig
