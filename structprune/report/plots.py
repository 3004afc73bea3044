"""The report figure: channels kept per group (left) and the pruned model relative to dense (right).

Built on a bare `matplotlib.figure.Figure` with the Agg canvas: no pyplot, so no global figure state
and no display is needed.
"""
from __future__ import annotations

from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch

PRUNED, UNCHANGED, BLOCKED, DENSE = "#2a6fb0", "#9cc3e6", "#b8b8b8", "#d9d9d9"
LABEL_CHARS = 40


def report_figure(report: dict) -> Figure:
    """A two-panel figure for a report dict (see SCHEMA.md).

    >>> fig = report_figure({"groups": [{"id": "fc.weight:0", "size": 8, "kept": 4, "prunable": True}],
    ...                      "params": {"before": 10, "after": 5}})
    >>> [ax.get_title() for ax in fig.axes]
    ['Channels kept per group', 'Pruned relative to dense (dense = 1)']
    """
    groups = report.get("groups", [])
    height = min(max(4.0, 0.26 * len(groups) + 1.6), 40.0)
    figure = Figure(figsize=(13, height), layout="constrained")
    FigureCanvasAgg(figure)
    left, right = figure.subplots(1, 2, width_ratios=(3, 2))
    _plot_groups(left, groups)
    _plot_comparison(right, relative_metrics(report))
    figure.suptitle(_headline(report))
    handles = [Patch(color=DENSE, label="dense model"), Patch(color=PRUNED, label="pruned model / group"),
               Patch(color=UNCHANGED, label="unchanged group"), Patch(color=BLOCKED, label="blocked group")]
    figure.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    return figure


def relative_metrics(report: dict) -> dict[str, float]:
    """Pruned / dense for params, MACs, latency and accuracy, where the report has them.

    >>> relative_metrics({"params": {"before": 100, "after": 25}, "accuracy": {"before": 0.9, "after": 0.9}})
    {'params': 0.25, 'accuracy': 1.0}
    """
    latency = (report.get("onnx") or {}).get("latency") or report.get("latency") or {}
    pairs = {"params": _pair(report.get("params"), "before", "after"),
             "MACs": _pair(report.get("macs"), "before", "after"),
             "latency": _pair(latency, "dense_ms", "pruned_ms"),
             "accuracy": _pair(report.get("accuracy"), "before", "after")}
    return {name: after / before for name, (before, after) in pairs.items() if before}


def _pair(section: dict | None, dense_key: str, pruned_key: str) -> tuple[float, float]:
    section = section or {}
    dense, pruned = section.get(dense_key), section.get(pruned_key)
    return (float(dense), float(pruned)) if dense is not None and pruned is not None else (0.0, 0.0)


def _plot_groups(ax, groups: list[dict]) -> None:
    ax.set_title("Channels kept per group")
    if not groups:
        ax.text(0.5, 0.5, "no channel groups", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    rows = list(range(len(groups)))[::-1]  # first group at the top
    fractions = [g["kept"] / max(g["size"], 1) for g in groups]
    ax.barh(rows, fractions, color=[_group_colour(g) for g in groups], height=0.7)
    for row, group, fraction in zip(rows, groups, fractions):
        ax.text(min(fraction, 1.0) + 0.01, row, f"{group['kept']}/{group['size']}", va="center", fontsize=7)
    ax.set_yticks(rows, [_short(g["id"]) for g in groups], fontsize=_label_size(len(groups)))
    ax.set_xlim(0, 1.15)
    ax.set_ylim(-0.6, len(groups) - 0.4)
    ax.set_xlabel("kept fraction of channels")


def _plot_comparison(ax, relative: dict[str, float]) -> None:
    ax.set_title("Pruned relative to dense (dense = 1)")
    if not relative:
        ax.text(0.5, 0.5, "no metrics", ha="center", va="center", transform=ax.transAxes)
        ax.set_axis_off()
        return
    names, values = list(relative), list(relative.values())
    positions = list(range(len(names)))
    ax.bar([p - 0.2 for p in positions], [1.0] * len(names), width=0.4, color=DENSE)
    ax.bar([p + 0.2 for p in positions], values, width=0.4, color=PRUNED)
    for position, value in zip(positions, values):
        ax.text(position + 0.2, value + 0.02, f"{value:.2f}", ha="center", va="bottom", fontsize=9)
    ax.axhline(1.0, color="black", linewidth=0.6, linestyle=":")
    ax.set_xticks(positions, names)
    ax.set_ylim(0, max(1.0, *values) * 1.15)
    ax.set_ylabel("pruned / dense")


def _headline(report: dict) -> str:
    verification = report.get("verification") or {}
    verdict = "verification passed" if verification.get("ok") else "verification FAILED"
    params = report.get("params") or {}
    if "before" in params and "after" in params:
        return f"structprune: params {params['before']:,} → {params['after']:,}, {verdict}"
    return f"structprune: {verdict}"


def _group_colour(group: dict) -> str:
    if not group.get("prunable", True):
        return BLOCKED
    return PRUNED if group["kept"] < group["size"] else UNCHANGED


def _short(group_id: str) -> str:
    return group_id if len(group_id) <= LABEL_CHARS else "…" + group_id[-(LABEL_CHARS - 1):]


def _label_size(count: int) -> float:
    return 8.0 if count <= 40 else max(5.0, 8.0 - (count - 40) / 30)


def sensitivity_figure(groups: list[str], ratios: list[float], values: list[list[float]], metric: str,
                       baseline: float) -> Figure:
    """A heat map of a sensitivity table: one row per group, one column per ratio, coloured by the loss
    against the dense model (darker loses more), each cell labelled with its value; NaN cells are grey.

    >>> fig = sensitivity_figure(["a", "b"], [0.25, 0.5], [[0.99, 0.9], [1.0, 1.0]], "fidelity", 1.0)
    >>> fig.axes[0].get_xlabel(), len(fig.axes[0].get_yticklabels())
    ('share of the group pruned (that group alone)', 2)
    """
    figure = Figure(figsize=(2.2 + 1.1 * len(ratios), min(max(2.6, 0.3 * len(groups) + 1.6), 40.0)),
                    layout="constrained")
    FigureCanvasAgg(figure)
    ax = figure.subplots()
    loss = [[baseline - v for v in row] for row in values]
    cmap = colormaps["Reds"].with_extremes(bad=BLOCKED)
    worst = max([v for row in loss for v in row if v == v] + [1e-12])  # gains (negative loss) show as none
    image = ax.imshow(loss, aspect="auto", cmap=cmap, vmin=0.0, vmax=worst, interpolation="nearest")
    for i, row in enumerate(values):
        for j, value in enumerate(row):
            dark = loss[i][j] > 0.6 * worst  # white text on the darkest cells
            ax.text(j, i, "failed" if value != value else _cell(value, metric), ha="center", va="center", fontsize=7,
                    color="white" if dark else "black")
    ax.set_xticks(range(len(ratios)), [f"{r:g}" for r in ratios])
    ax.set_yticks(range(len(groups)), [_short(g) for g in groups], fontsize=_label_size(len(groups)))
    ax.set_xlabel("share of the group pruned (that group alone)")
    unit = "accuracy points" if metric == "accuracy" else "cosine to the dense output"
    figure.colorbar(image, ax=ax, label=f"loss in {unit}")
    ax.set_title(f"Sensitivity by {metric} (dense {_cell(baseline, metric)})")
    return figure


def _cell(value: float, metric: str) -> str:
    return f"{value:.1f}%" if metric == "accuracy" else f"{value:.3f}"
