"""The sweep figure: validation accuracy after recovery (top) and one-shot (middle) against MACs reduction
(left) and params reduction (right), mean ± std over seeds, one line per criterion (Torch-Pruning's
dotted, with squares), the dense baseline, each structprune curve's knee (▼), and the estimated pruning
limit. With Scratch-B, the top panels also draw each such curve's architectures trained from scratch
(dashed, ×, the curve's colour); a point where accuracy rises with reduction beyond the seed noise (double
descent, structprune.sweep.verdicts) is ringed (○). With latency, a bottom row: onnxruntime speedup
against MACs reduction beside the ideal (speedup = MACs reduction), and speedup / MACs reduction.

Built on a bare matplotlib Figure with the Agg canvas (no pyplot: no global state, no display);
matplotlib is imported when a figure is drawn, not with the sweep.
"""
from __future__ import annotations

import io
import itertools
import math

from structprune.sweep.curves import Curve, Knee
from structprune.sweep.run import SweepResult
from structprune.sweep.verdicts import rises

PANELS = (("macs_reduction", "MACs reduction (dense / pruned, theoretical speedup)"),
          ("params_reduction", "params reduction (compression ratio)"))
ROWS = (("accuracy", "accuracy % after recovery"), ("accuracy_one_shot", "accuracy % one-shot (no recovery)"))
LATENCY = (("latency_speedup", "onnxruntime speedup (dense / pruned median)"),
           ("speedup_per_mac", "onnxruntime speedup / MACs reduction"))
TICKS = (1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)
LIMIT_COLOUR, BASELINE_COLOUR = "black", "#444444"


def sweep_png(result: SweepResult) -> bytes:
    """The figure as PNG bytes (see the module docstring)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    latency = result.config.latency is not None
    figure = Figure(figsize=(13, 14 if latency else 9.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.subplots(3 if latency else 2, 2)
    for row, (metric, ylabel) in zip(axes, ROWS):
        knees = {(k.tool, k.criterion): k for k in result.knees(metric)}
        for ax, (attribute, _) in zip(row, PANELS):
            _panel(ax, result, attribute, metric, knees)
            _limit_line(ax, result, attribute)
        row[0].set_ylabel(ylabel)
    for ax, (_, xlabel) in zip(axes[1], PANELS):
        ax.set_xlabel(xlabel)
    if latency:
        _latency_row(axes[2], result)
    axes[0][0].legend(fontsize=8, loc="lower left")
    figure.suptitle(_title(result))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _panel(ax, result: SweepResult, attribute: str, metric: str, knees: dict) -> None:
    dense = result.baseline()
    ax.axhline(dense.mean, color=BASELINE_COLOUR, linewidth=1, linestyle=":", label=f"dense {dense.text()} %")
    ax.axhspan(dense.mean - dense.std, dense.mean + dense.std, color=BASELINE_COLOUR, alpha=0.08)
    for curve, colour in zip(result.curves(), _colours()):
        _curve(ax, curve, attribute, metric, knees.get((curve.tool, curve.criterion)), colour)
        if metric == "accuracy":
            _curve(ax, curve, attribute, "accuracy_scratch", None, colour)
    _log_axis(ax)


def _log_axis(ax) -> None:
    ax.set_xscale("log")
    low, high = ax.get_xlim()
    ticks = [t for t in TICKS if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}x" for t in ticks])
    ax.minorticks_off()
    ax.grid(True, alpha=0.3)


def _colours():
    """One colour per curve, in the order of result.curves(), the same in every panel."""
    return (f"C{i % 10}" for i in itertools.count())


def _curve(ax, curve: Curve, attribute: str, metric: str, knee: Knee | None, colour: str) -> None:
    """Draw `curve`'s `metric` against `attribute` in `colour` (nothing when no point was measured)."""
    points = [p for p in curve.points if math.isfinite(getattr(p, attribute).mean) and
              math.isfinite(getattr(p, metric).mean)]
    if not points:  # every seed failed at every point (the table says why), or the arm did not run
        return
    x, y = [getattr(p, attribute) for p in points], [getattr(p, metric) for p in points]
    reference, scratch = curve.tool != "structprune", metric == "accuracy_scratch"
    style = {"marker": "s", "linestyle": ":"} if reference else \
        ({"marker": "x", "linestyle": "--"} if scratch else {"marker": "o", "linestyle": "-"})
    ax.errorbar([s.mean for s in x], [s.mean for s in y], yerr=[s.std for s in y], xerr=[s.std for s in x],
                markersize=4, capsize=2, color=colour, label=_label(curve) + (" Scratch-B" if scratch else ""), **style)
    at = next((p for p in points if knee is not None and p.macs_reduction.mean == knee.reduction), None)
    if at is not None and not reference:
        ax.plot([getattr(at, attribute).mean], [getattr(at, metric).mean], marker="v", markersize=10,
                color=colour, markeredgecolor="black")
    risen = {r.point for r in rises(curve, metric)} if metric in ("accuracy", "accuracy_scratch") else set()
    for p in (p for p in points if p.index in risen):
        ax.plot([getattr(p, attribute).mean], [getattr(p, metric).mean], marker="o", markersize=14,
                markerfacecolor="none", markeredgecolor=colour, markeredgewidth=1.5)


def _latency_row(row, result: SweepResult) -> None:
    """onnxruntime speedup and speedup / MACs reduction against MACs reduction, ideal lines dotted."""
    for ax, (metric, ylabel) in zip(row, LATENCY):
        for curve, colour in zip(result.curves(), _colours()):
            _curve(ax, curve, "macs_reduction", metric, None, colour)
        low, high = ax.get_xlim()
        ideal = [max(low, 1.0), high]
        ax.plot(ideal, ideal if metric == "latency_speedup" else [1.0, 1.0], color=BASELINE_COLOUR, linestyle=":",
                label="ideal (every MAC saved is time saved)")
        _log_axis(ax)
        ax.set_ylabel(ylabel)
        ax.set_xlabel(PANELS[0][1])
    row[0].legend(fontsize=8, loc="upper left")


def _limit_line(ax, result: SweepResult, key: str) -> None:
    if result.limit is None:
        return
    value = getattr(result.limit, key)
    ax.axvline(value, color=LIMIT_COLOUR, linewidth=2, linestyle="-.",
               label=f"estimated limit {value:.2f}x ({result.limit.channel_fraction:.0%} of channels)")
    if key == "params_reduction":
        ax.legend(handles=[ax.get_lines()[-1]], fontsize=8, loc="lower left")


def _label(curve: Curve) -> str:
    return f"Torch-Pruning {curve.criterion[3:]}" if curve.tool != "structprune" else curve.criterion


def _title(result: SweepResult) -> str:
    config = result.config
    seeds = f"{config.seeds} seed{'s' if config.seeds > 1 else ''}"
    recovery = f"{config.epochs} epochs {config.recover}" if config.epochs else "no recovery"
    return f"{result.name}: validation accuracy vs reduction, mean ± std over {seeds}, recovery {recovery}\n" \
           f"▼ knee (> {config.knee_drop:g} points below dense); ○ rise beyond seed noise (double descent)" + \
           ("; dashed ×: Scratch-B of the curve's architectures" if config.scratch else "")
