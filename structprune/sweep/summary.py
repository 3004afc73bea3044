"""Text of a sweep for people and for sweep.json: the mean table, the limit beside the knee, pruning vs
Scratch-B and double descent (structprune.sweep.verdicts)."""
from __future__ import annotations

import math
from dataclasses import asdict

from structprune.sweep.curves import CurvePoint, Knee
from structprune.sweep.rows import COLUMNS
from structprune.sweep.run import SweepResult
from structprune.sweep.verdicts import descent_lines, scratch_lines

SCHEMA = "structprune.sweep/1"
KNEE_METRICS = ("accuracy", "accuracy_one_shot")
TABLE_HEADER = ("tool", "criterion", "target", "MACs reduction", "params reduction", "one-shot acc %",
                "acc %", "delta", "verified")
# the optional arms' columns: (header, shown when, cell of a CurvePoint)
ARM_COLUMNS = (
    ("extra epochs", lambda c: c.group_lasso is not None, lambda p: str(p.extra_epochs)),
    ("Scratch-B acc %", lambda c: c.scratch is not None, lambda p: p.accuracy_scratch.text()),
    ("acc - Scratch-B", lambda c: c.scratch is not None, lambda p: p.scratch_gain.text()),
    ("latency speedup", lambda c: c.latency is not None, lambda p: p.latency_speedup.text()),
    ("speedup / MACs", lambda c: c.latency is not None, lambda p: p.speedup_per_mac.text(3)),
)


def table_header(result: SweepResult) -> tuple[str, ...]:
    """TABLE_HEADER, then the columns of the arms this sweep ran (extra epochs, Scratch-B, latency)."""
    return TABLE_HEADER + tuple(name for name, shown, _ in ARM_COLUMNS if shown(result.config))


def mean_table(result: SweepResult) -> list[tuple[str, ...]]:
    """One line per curve and point: mean ± std over seeds (table_header's columns)."""
    dense = result.baseline()
    arms = [cell for _, shown, cell in ARM_COLUMNS if shown(result.config)]
    lines = []
    for curve in result.curves():
        for p in curve.points:
            lines.append((curve.tool, curve.criterion, f"{p.target:g}x", *_base_cells(p, dense.mean),
                          *(cell(p) for cell in arms)))
    return lines


def _base_cells(p: CurvePoint, dense: float) -> tuple[str, ...]:
    delta = "n/a" if math.isnan(p.accuracy.mean) else f"{p.accuracy.mean - dense:+.2f}"
    return (p.macs_reduction.text(), p.params_reduction.text(), p.accuracy_one_shot.text(), p.accuracy.text(), delta,
            f"{'yes' if p.verified else 'NO'} ({p.seeds} seeds)")


def verdict_lines(result: SweepResult) -> list[str]:
    """Pruning vs Scratch-B per curve that has it, and double descent (see structprune.sweep.verdicts)."""
    curves = result.curves()
    return [*scratch_lines(curves), *descent_lines(curves, result.config.seeds)]


def limit_vs_knee(result: SweepResult) -> list[str]:
    """Sentences: the estimated limit, the observed knees (after recovery, one-shot), and how they compare."""
    drop = result.config.knee_drop
    after, one_shot = result.observed_knee("accuracy"), result.observed_knee("accuracy_one_shot")
    lines = [f"knee: the first point whose mean accuracy is more than {drop:g} points below the dense model's "
             f"({result.baseline().text()} %); observed knee = the knee of the best structprune criterion"]
    if result.limit is None:
        lines.append("estimated limit: not computed")
    else:
        limit = result.limit
        lines.append(f"estimated limit (before the sweep): {limit.channel_fraction:.1%} of {limit.channels} prunable "
                     f"channels by magnitude = {limit.macs_reduction:.2f}x MACs, {limit.params_reduction:.2f}x params "
                     f"(eps {limit.tolerance:.3g}, {limit.method} spectrum)")
    lines.append(f"observed knee after recovery: {_knee_text(after)}")
    lines.append(f"observed knee one-shot (before recovery): {_knee_text(one_shot)}")
    magnitude = next((k for k in result.knees("accuracy_one_shot") if (k.tool, k.criterion) == ("structprune", "l2")),
                     None)
    if magnitude is not None:
        lines.append(f"magnitude (l2) knee one-shot, the setting the estimate models: {magnitude.text()}")
    if result.limit is not None:
        lines.append(f"limit vs knee: {_compare(result.limit.macs_reduction, after)} (after recovery); "
                     f"{_compare(result.limit.macs_reduction, one_shot)} (one-shot)"
                     + (f"; {_compare(result.limit.macs_reduction, magnitude)} (l2 one-shot)" if magnitude else ""))
    return lines


def summary_json(result: SweepResult) -> dict:
    """sweep.json: settings, limit, knees, notes, and the table's columns (the rows are sweep.csv)."""
    return {"schema": SCHEMA, "model": result.name, "config": asdict(result.config),
            "reductions": list(result.config.reductions), "baseline_accuracy": asdict(result.baseline()),
            "limit": result.limit.to_json() if result.limit else None,
            "knees": {metric: [asdict(k) for k in result.knees(metric)] for metric in KNEE_METRICS},
            "limit_vs_knee": limit_vs_knee(result), "verdicts": verdict_lines(result), "verified": result.verified,
            "rows": len(result.rows),
            "columns": list(COLUMNS), "notes": list(result.notes)}


def summary_text(result: SweepResult, out_dir: str) -> str:
    """What the command prints: the mean table, the limit vs the knee, notes and where the files are."""
    table = [table_header(result), *mean_table(result)]
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in table]
    failed = [r for r in result.rows if not r.verified]
    text += ["", *limit_vs_knee(result), *verdict_lines(result), *result.notes,
             f"points verified: {len(result.rows) - len(failed)} of {len(result.rows)}"
             + "".join(f"\n  failed: {r.tool} {r.criterion} seed {r.seed} at {r.target:g}x: {r.error or 'check failed'}"
                       for r in failed),
             f"sweep: {out_dir}/sweep.csv, sweep.png, sweep.html, sweep.json"]
    return "\n".join(text)


def _knee_text(knee: Knee | None) -> str:
    return "no curves" if knee is None else f"{knee.criterion}: {knee.text()}"


def _compare(limit: float, knee: Knee | None) -> str:
    """Where the limit falls against a knee: before the last safe point (conservative), between it and the
    knee (agrees), or past the knee (optimistic)."""
    if knee is None:
        return "nothing to compare"
    low, high = knee.last_ok or 1.0, knee.reduction or math.inf
    where = "agrees: between the last safe point and the knee" if low <= limit <= high else \
        ("conservative: below the last safe point" if limit < low else "optimistic: past the knee")
    knee_text = f"knee {knee.reduction:.2f}x" if knee.reduction else "no knee in the sweep"
    return f"limit {limit:.2f}x vs {knee_text} (last safe {low:.2f}x): {where}"
