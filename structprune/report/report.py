"""The Report: what a compression did, JSON-serialisable (schema versioned) and printable."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from structprune.report.tables import format_table

REPORT_SCHEMA = "structprune.report/1"


def verification_label(verification: dict) -> str:
    """"passed", "FAILED", or "passed (no re-capture)" when the re-capture check was skipped.

    >>> verification_label({"ok": True, "recapture": False})
    'passed (no re-capture)'
    """
    if not verification.get("ok"):
        return "FAILED"
    return "passed" if verification.get("recapture", True) else "passed (no re-capture)"


@dataclass(frozen=True)
class GroupRow:
    id: str
    size: int
    kept: int
    prunable: bool
    exact: bool
    why: str


@dataclass(frozen=True)
class Report:
    """Params and MACs before/after, per-group table, verification verdict, plan metadata; `extra`
    holds later stages' sections (onnx, accuracy, recovery)."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    groups: tuple[GroupRow, ...]
    verification: dict
    plan_meta: dict
    extra: dict = field(default_factory=dict)

    @property
    def macs_reduction(self) -> float:
        return self.macs_before / max(self.macs_after, 1)

    @property
    def params_reduction(self) -> float:
        return self.params_before / max(self.params_after, 1)

    def with_extra(self, **sections: Any) -> "Report":
        return Report(self.params_before, self.params_after, self.macs_before, self.macs_after, self.groups,
                      self.verification, self.plan_meta, {**self.extra, **sections})

    def to_json(self) -> dict:
        return {
            "schema": REPORT_SCHEMA,
            "params": {"before": self.params_before, "after": self.params_after,
                       "reduction": round(self.params_reduction, 4)},
            "macs": {"before": self.macs_before, "after": self.macs_after,
                     "reduction": round(self.macs_reduction, 4)},
            "groups": [g.__dict__ for g in self.groups],
            "verification": self.verification,
            "plan": self.plan_meta,
            **self.extra,
        }

    def summary(self) -> str:
        rows = [["params", f"{self.params_before:,}", f"{self.params_after:,}", f"{self.params_reduction:.2f}x"],
                ["MACs", f"{self.macs_before:,}", f"{self.macs_after:,}", f"{self.macs_reduction:.2f}x"]]
        return format_table(["", "before", "after", "reduction"], rows) + \
            f"\nverification: {verification_label(self.verification)}"
