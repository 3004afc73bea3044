"""Readable views of a report dict (`Report.to_json()`): the CLI's end-of-job summary and report.md's
sections for the stages after the rewrite (accuracy, recovery, calibration, artifacts read back). The
lines on how much of the model is prunable and why the rest is blocked live in `report.prunable`.
"""
from __future__ import annotations

from pathlib import Path

from structprune.report.prunable import group_lines, nothing_pruned_warning, top_blocked_reasons  # noqa: F401
from structprune.report.report import verification_label
from structprune.report.tables import format_table, markdown_table


def job_summary(report: dict, out_dir: Path) -> str:
    """The text `structprune compress` prints: before/after table (params, MACs, latency, accuracy),
    channel groups, verification and ONNX parity, artifacts read back, notes, and where it all is."""
    rows = [_count_row("params", report["params"]), _count_row("MACs", report["macs"])]
    latency = report.get("onnx", {}).get("latency")
    if latency:
        rows.append(["onnxruntime ms", f"{latency['dense_ms']:.3f}", f"{latency['pruned_ms']:.3f}",
                     f"{latency['speedup']:.2f}x"])
    fidelity = _fidelity_rows(report.get("recovery")) or _one_shot_fidelity_rows(report.get("fidelity"))
    rows += _accuracy_rows(report.get("accuracy")) + fidelity
    lines = [format_table(["", "before", "after", "change"], rows)] + _target_line(report.get("target"))
    if report.get("accuracy_skipped") and not fidelity:  # text: fidelity instead
        lines.append(f"accuracy: not measured ({report['accuracy_skipped']})")
    lines += group_lines(report.get("groups", []), report.get("prunable"))
    lines += nothing_pruned_warning(report)
    lines.append(_verification_line(report))
    lines += _read_back_lines(report) + _batch_notes(report)
    return "\n".join(lines + [f"artifacts: {out_dir}/"])


def _target_line(target: dict | None) -> list[str]:
    """A budget target (`--target-macs` / `--target-params` / `--target-latency-ms`) beside what the verified
    model keeps (a latency: what the search measured for it, and the dense model's)."""
    if not target:
        return []
    band = "within" if target["within_tolerance"] else "outside"
    how = f"({band} {target['tolerance']:.0%}; {target['allocation']} allocation)"
    if target["kind"] == "latency_ms":
        seen = target.get("dense_ms_seen")
        drift = f"; each timed beside dense, whose own time moved {seen[0]:.3f}-{seen[1]:.3f} ms" if seen else ""
        return [f"target: run in {target['requested']:g} ms, measured {target['achieved']:.3f} ms (dense "
                f"{target['dense_ms']:.3f} ms, {target['probes']} measurements{drift}) {how}"] + (
            [f"target: {target['note']}"] if target.get("note") else [])
    kind = "MACs" if target["kind"] == "macs" else "params"
    return [f"target: keep {target['requested']:g} of {kind}, kept {target['achieved']:.4f} {how}"]


def _count_row(name: str, section: dict) -> list[str]:
    return [name, f"{section['before']:,}", f"{section['after']:,}", f"{section['reduction']:.2f}x"]


def _accuracy_rows(accuracy: dict | None) -> list[list[str]]:
    """Dense vs the final pruned model's accuracy and, when recovery ran, vs the pruned model before it."""
    if not accuracy:
        return []
    before = accuracy.get("before")
    rows = [_accuracy_row("accuracy %", before, accuracy.get("after"))]
    if accuracy.get("one_shot") is not None:
        rows.append(_accuracy_row("one-shot accuracy %", before, accuracy["one_shot"]))
    return rows


def _fidelity_rows(recovery: dict | None) -> list[list[str]]:
    """Label-free distillation: mean cosine of the pooled embeddings to the dense model's on the held-out
    split (the dense model's own is 1), after recovery and one-shot."""
    if not recovery or recovery.get("metric") != "fidelity" or recovery.get("val_fidelity_after") is None:
        return []
    return [_cosine_row(name, recovery[key])
            for name, key in (("cosine to dense", "val_fidelity_after"), ("one-shot cosine", "val_fidelity_before"))
            if recovery.get(key) is not None]


def _one_shot_fidelity_rows(fidelity: dict | None) -> list[list[str]]:
    """Without recovery, on data without labels: the pruned model's mean cosine to the dense model's outputs."""
    if not fidelity or fidelity.get("after") is None:
        return []
    return [_cosine_row("cosine to dense", fidelity["after"])]


def _cosine_row(name: str, cosine: float) -> list[str]:
    """A row of a cosine to the dense model's outputs (the dense model's own is 1)."""
    return [name, "1.0000", f"{cosine:.4f}", f"{cosine - 1.0:+.4f}"]


def _accuracy_row(name: str, before: float | None, after: float | None) -> list[str]:
    change = f"{after - before:+.2f}" if None not in (before, after) else "-"
    return [name, _percent(before), _percent(after), change]


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _verification_line(report: dict) -> str:
    line = f"verification: {verification_label(report['verification'])}"
    parity = report.get("onnx", {}).get("parity")
    if parity:
        line += f"; onnx parity max abs error {_sci(parity['max_abs_error'])}"
    return line


def _read_back_lines(report: dict) -> list[str]:
    """One line for the `artifacts` section (each written file loaded again and compared)."""
    checks = report.get("artifacts")
    if not checks:
        return []
    failed = [name for name, check in checks.items() if not check.get("ok")]
    if failed:
        return [f"artifacts read back: FAILED for {', '.join(failed)}"]
    errors = [c["max_abs_error"] for c in checks.values() if c.get("max_abs_error") is not None]
    details = [f"max abs error {_sci(max(errors))}"] if errors else []
    published = (report.get("accuracy") or {}).get("published")
    if published is not None:
        artifact = report["accuracy"].get("published_artifact", "model.pt2")
        details.append(f"{artifact} accuracy {published:.2f}%")
    suffix = f" ({'; '.join(details)})" if details else ""
    return [f"artifacts read back: {', '.join(checks)}{suffix}"]


def _batch_notes(report: dict) -> list[str]:
    notes, onnx = [], report.get("onnx", {})
    if report.get("pt2_dynamic_batch") is False:
        notes.append("note: model.pt2 has the example's fixed batch (the input model only runs at that batch)")
    if onnx.get("dynamic_batch") is False:
        batch = (onnx.get("parity") or {}).get("batch_sizes_checked", ["the example's"])[0]
        notes.append(f"note: model.onnx has a fixed batch of {batch} (the model only runs at that batch, e.g. a .pt2 "
                     "exported with a static batch)")
    return notes


def _sci(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2e}"


# ----------------------------------------------------------------------------------------------
# report.md sections (Markdown; writers.render_markdown places them)


def stage_sections(report: dict) -> list[str]:
    """report.md's Accuracy, Recovery (or iterative cycles) and Calibration sections, where they ran."""
    return _accuracy_section(report) + _recovery_section(report) + _calibration_section(report.get("calibration"))


def artifacts_section(report: dict) -> list[str]:
    """report.md's "Artifacts read back": one row per file loaded again and compared (absent: nothing)."""
    checks = report.get("artifacts")
    if not checks:
        return []
    rows = [_artifact_row(name, check) for name, check in checks.items()]
    note = ["> `model.pt2` keeps the example's fixed batch."] if report.get("pt2_dynamic_batch") is False else []
    return ["## Artifacts read back", "Each file, loaded as a user loads it, against the pruned model in eval mode.",
            markdown_table(["file", "result", "max abs error", "checked at", "tolerance"], rows), *note]


def _accuracy_section(report: dict) -> list[str]:
    accuracy = report.get("accuracy")
    if not accuracy:
        skipped, fidelity = report.get("accuracy_skipped"), report.get("fidelity")
        measured = [f"Fidelity instead (no labels): the pruned model's {fidelity['metric']}, "
                    f"{fidelity['after']:.4f} on {fidelity['data']}."] if fidelity else []
        return ["## Accuracy", f"Not measured: {skipped}.", *measured] if skipped else []
    recovered = "one_shot" in accuracy
    models = (("one_shot", "pruned, one-shot (before recovery)"),
              ("after", "pruned, after recovery" if recovered else "pruned"), ("published", "model.pt2 as loaded"))
    before = accuracy.get("before")
    rows = [["dense", md_percent(before), "—"]]
    rows += [[name, md_percent(accuracy[key]), _points(accuracy[key], before)]
             for key, name in models if accuracy.get(key) is not None]
    measured = f"Top-1 on {accuracy['data']}." if accuracy.get("data") else ""
    return ["## Accuracy", measured, markdown_table(["model", "accuracy", "change vs dense"], rows)]


def _recovery_section(report: dict) -> list[str]:
    recovery, iterative = report.get("recovery"), report.get("iterative")
    if recovery:
        return ["## Recovery", f"Method {_recovery_line(recovery)}.", _epochs_table([(None, recovery)])]
    if not iterative:
        return []
    cycles = iterative.get("cycles", [])
    rows = [md_cells([c["cycle"], f"{100 * c['pruned_before']:.1f}%", md_int(c.get("params")), md_int(c.get("macs")),
                      _recovery_line(c["recovery"])]) for c in cycles]
    share = 100 * iterative.get("fraction_per_cycle", 0)
    return ["## Recovery (iterative)", f"{len(cycles)} cycles, each pruning {share:.2f}% of what remains.",
            markdown_table(["cycle", "pruned before", "params", "MACs", "recovery"], rows),
            _epochs_table([(c["cycle"], c["recovery"]) for c in cycles])]


def _recovery_line(recovery: dict) -> str:
    epochs, notes = recovery["epochs"], (recovery.get("notes") or {})
    line = (f"`{recovery['method']}`, {epochs} epoch{'s' * (epochs != 1)}, schedule `{recovery.get('schedule')}`, "
            f"peak LR {recovery.get('base_lr', 0):.3g}; {_validation_change(recovery)}")
    noted = ", ".join(f"{k} `{v}`" for k, v in notes.items() if v not in (None, [], {}))
    return line + (f" ({noted})" if noted else "")


def _validation_change(recovery: dict) -> str:
    """What validation measured before → after recovery: accuracy, or (without labels) fidelity."""
    if recovery.get("metric") == "fidelity":
        before, after = recovery.get("val_fidelity_before"), recovery.get("val_fidelity_after")
        return f"validation fidelity (cosine to the dense model) {_num(before)} → {_num(after)}"
    return (f"validation accuracy {md_percent(recovery.get('val_accuracy_before'))} → "
            f"{md_percent(recovery.get('val_accuracy_after'))}")


def _epochs_table(runs: list[tuple[int | None, dict]]) -> str:
    """One row per epoch of each (cycle, recovery section); a leading cycle column for iterative runs."""
    cycles = runs[0][0] is not None
    rows = [md_cells(([cycle] if cycles else []) + _epoch_cells(epoch)) for cycle, run in runs
            for epoch in run.get("history", [])]
    metric = "fidelity" if runs[0][1].get("metric") == "fidelity" else "accuracy"
    head = ["epoch", "train loss", f"train {metric}", "val loss", f"val {metric}", "LR (last step)", "dead neurons"]
    return markdown_table((["cycle"] if cycles else []) + head, rows) if rows else "No epochs recorded."


def _epoch_cells(epoch: dict) -> list:
    dead = epoch.get("dead_rate")
    shown = ((_num(epoch.get("train_fidelity")), _num(epoch.get("val_fidelity"))) if "train_fidelity" in epoch
             else (md_percent(epoch.get("train_accuracy")), md_percent(epoch.get("val_accuracy"))))
    return [epoch["epoch"], _num(epoch.get("train_loss")), shown[0], _num(epoch.get("val_loss")), shown[1],
            md_sci(epoch.get("lr")), "—" if dead is None else f"{100 * dead:.1f}%"]


def _count(value) -> int:
    return len(value) if isinstance(value, list) else value


def _calibration_section(calibration: dict | None) -> list[str]:
    steps = (("batchnorm_layers_recalibrated", "BatchNorm layers with re-estimated statistics"),
             ("reconstructed_layers", "layers refitted by least squares (reconstruction)"),
             ("tuned", "units or blocks tuned by gradient after the refit"))
    rows = [[name, _count(calibration[key])] for key, name in steps if key in (calibration or {})]
    skipped = (calibration or {}).get("tuning_skipped")
    return (["## Calibration", markdown_table(["step", "layers"], rows)] if rows else []) + \
        ([f"Tuning was asked for and not run: {skipped}."] if skipped else [])


def _artifact_row(name: str, check: dict) -> list[str]:
    result = ("ok" if check.get("ok") else "**FAILED**") + (f": {check['detail']}" if check.get("detail") else "")
    where = ", ".join(map(str, check.get("checked_at") or check.get("batch_sizes") or []))
    atol, rtol = check.get("atol"), check.get("rtol")
    tolerance = "—" if atol is None else f"atol {atol:.0e}" + (f", rtol {rtol:.0e}" if rtol is not None else "")
    return md_cells([f"`{name}`", result, md_sci(check.get("max_abs_error")), where, tolerance])


def _points(value: float, reference: float | None) -> str:
    return "—" if reference is None else f"{value - reference:+.2f} pts"


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.4f}"


def md_cells(row: list) -> list[str]:
    """Table cells as text, with `|` escaped and no line breaks."""
    return [str(c).replace("|", "\\|").replace("\n", " ") for c in row]


def md_int(value) -> str:
    return f"{value:,}" if isinstance(value, int) else "—"


def md_percent(value: float | None) -> str:
    """Accuracies are percentages (0-100) in the report."""
    return "—" if value is None else f"{value:.2f}%"


def md_sci(value: float | None) -> str:
    return "—" if value is None else f"{value:.1e}"
