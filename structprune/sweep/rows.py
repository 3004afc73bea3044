"""SweepRow: one criterion x compression level x seed of a sweep, as it goes into sweep.csv."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

TOOLS = ("structprune", "torch-pruning")


@dataclass(frozen=True)
class SweepRow:
    """One pruned-and-recovered point. `target` is the MACs reduction asked for (dense / pruned);
    `compression_ratio` = params_before / params_after and `theoretical_speedup` = macs_before /
    macs_after are what was achieved. Accuracies are validation top-1 in percent: `accuracy_one_shot`
    before recovery, `accuracy` after, `delta` = accuracy - baseline_accuracy (the dense model's, same
    seed). `verified`: structprune's verification passed (`check` "structprune": re-capture, sizes,
    masking equivalence), or, for Torch-Pruning's rows (`check` "shapes"), the pruned model ran at two
    batch sizes with the dense model's output shape. `error` is why a point failed ("" when it did not).

    Optional arms (0 or NaN when not run): `extra_epochs`, training epochs spent before pruning beyond the
    dense model's (the group-lasso curve's sparsity training), so curves compare at a visible cost;
    `accuracy_scratch`, the same pruned architecture trained from re-initialised weights for
    `scratch_epochs` (Scratch-B) in `scratch_seconds`; `latency_dense_ms` / `latency_ms`, onnxruntime
    medians of the dense and the pruned model, `latency_speedup` their ratio and `speedup_per_mac` = latency_speedup /
    theoretical_speedup (1: the MACs saved are all time saved).
    """

    tool: str
    criterion: str
    seed: int
    point: int
    target: float
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    compression_ratio: float
    theoretical_speedup: float
    accuracy_one_shot: float
    accuracy: float
    baseline_accuracy: float
    delta: float
    verified: bool
    check: str
    seconds: float
    extra_epochs: int = 0
    accuracy_scratch: float = math.nan
    scratch_epochs: int = 0
    scratch_seconds: float = math.nan
    latency_dense_ms: float = math.nan
    latency_ms: float = math.nan
    latency_speedup: float = math.nan
    speedup_per_mac: float = math.nan
    error: str = ""

    def to_csv(self) -> dict[str, str]:
        """Every field as the text written to sweep.csv (floats to 4 decimals, NaN as 'nan')."""
        return {name: _text(value) for name, value in asdict(self).items()}

    @classmethod
    def from_csv(cls, record: dict[str, str]) -> SweepRow:
        """The row back from sweep.csv text (what read-back compares)."""
        kinds = {f.name: f.type for f in fields(cls)}
        return cls(**{name: _parse(record[name], kinds[name]) for name in kinds})


COLUMNS = tuple(f.name for f in fields(SweepRow))


def failed_row(tool: str, criterion: str, seed: int, point: int, target: float, before: tuple[int, int],
               baseline: float, check: str, seconds: float, error: str) -> SweepRow:
    """A point that could not be pruned (the error says why): no model, so no accuracy, not verified."""
    nan = math.nan
    return SweepRow(tool, criterion, seed, point, target, before[0], 0, before[1], 0, nan, nan, nan, nan, baseline,
                    nan, False, check, seconds, error=error)


def _text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def _parse(text: str, kind: str):
    if kind == "bool":
        return text == "true"
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    return text
