"""The quality gate: fail (exit 1 in the CLI) when recovery leaves the model more than X points below
the dense model's accuracy."""
from __future__ import annotations


def check_quality_gate(before_acc: float, after_acc: float, max_drop: float) -> tuple[bool, str]:
    """(ok, message). Accuracies in percent (0-100, as evaluate_accuracy gives them); `max_drop` in
    percentage points; ok when before − after <= max_drop.

    >>> check_quality_gate(95.0, 94.0, max_drop=2.0)[0], check_quality_gate(95.0, 90.0, max_drop=2.0)[0]
    (True, False)
    """
    for name, value in (("before_acc", before_acc), ("after_acc", after_acc)):
        if not 0.0 <= value <= 100.0:
            raise ValueError(f"{name}={value!r}: accuracies are percentages in [0, 100]")
    if max_drop < 0:
        raise ValueError(f"max_drop={max_drop!r} must be >= 0 (percentage points)")
    drop = before_acc - after_acc
    summary = f"accuracy {before_acc:.2f}% -> {after_acc:.2f}% (drop {drop:.2f} points, allowed {max_drop:g})"
    if drop > max_drop + 1e-9:
        return False, f"quality gate FAILED: {summary}"
    return True, f"quality gate passed: {summary}"
