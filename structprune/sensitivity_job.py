"""`structprune sensitivity MODEL --data SPEC`: each prunable group pruned alone at a few ratios, measured by
accuracy (labelled data) or output fidelity (`structprune.sensitivity`); prints a table and writes
`sensitivity.csv` and `sensitivity.png` into a staged folder that is published only when both files were
read back as written.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from structprune.api import analyze
from structprune.compress_config import CompressConfig
from structprune.data import DataBundle, load_data
from structprune.errors import PlanError, UsageError
from structprune.hf import with_hf_shrink_rules
from structprune.io import load_model, staged_output_dir
from structprune.io.load import LoadedModel
from structprune.pipeline import calibration_loader, data_sources
from structprune.planning import score_groups
from structprune.report.sensitivity_files import write_sensitivity_csv, write_sensitivity_png
from structprune.report.tables import format_table
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES
from structprune.selection import SensitivityTable
from structprune.sensitivity import DEFAULT_RATIOS, MAX_SAMPLES, METRIC_CHOICES, check_ratios, measure_sensitivity


@dataclass(frozen=True)
class SensitivityOptions:
    """Options of `structprune sensitivity`; building one checks them (UsageError, worded for the CLI).

    >>> SensitivityOptions("zoo:mlp", "digits", ratios=(0.5, 0.25)).ratios
    (0.25, 0.5)
    """

    model: str
    data: str
    ratios: tuple[float, ...] = DEFAULT_RATIOS
    out: str | None = None
    force: bool = False
    criterion: str = "l2"
    metric: str = "auto"
    max_samples: int = MAX_SAMPLES
    seed: int = 0
    batch_size: int = 64
    ignore: tuple[str, ...] = ()
    attention: str = "heads"
    arch: str | None = None
    arch_kwargs: Mapping[str, Any] = field(default_factory=dict)
    trust_pickle: bool = False
    input_shape: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "ratios", check_ratios(self.ratios))
            CompressConfig(criterion=self.criterion, ignore=self.ignore, attention=self.attention, seed=self.seed)
        except ValueError as exc:  # PlanError and UsageError are ValueErrors too
            raise UsageError(getattr(exc, "message", str(exc))) from exc
        if self.metric not in METRIC_CHOICES:
            raise UsageError(f"--metric must be one of {', '.join(METRIC_CHOICES)}, got {self.metric!r}")
        if self.max_samples < 1:
            raise UsageError(f"--max-samples must be at least 1, got {self.max_samples}")


@dataclass(frozen=True)
class SensitivityResult:
    out_dir: Path
    table: SensitivityTable
    summary: str


def run_sensitivity(options: SensitivityOptions) -> SensitivityResult:
    """Measure the table, write and read back its files, and return them with the printed summary."""
    torch.manual_seed(options.seed)  # zoo:NAME models are built from the seed
    loaded = load_model(options.model, arch=options.arch, arch_kwargs=dict(options.arch_kwargs),
                        trust_pickle=options.trust_pickle, input_shape=options.input_shape)
    bundle = _load_bundle(options, loaded)
    table = _measure(loaded, bundle, options)
    out_dir = Path(options.out) if options.out else Path("export") / f"{loaded.name}-sensitivity"
    with staged_output_dir(out_dir, options.force) as stage:
        write_sensitivity_csv(table.rows(), stage / "sensitivity.csv")
        write_sensitivity_png(list(table.groups), list(table.ratios), [list(v) for v in table.values], table.metric,
                              table.baseline, stage / "sensitivity.png")
    return SensitivityResult(out_dir, table, sensitivity_summary(loaded.name, table, options, out_dir))


def _load_bundle(options: SensitivityOptions, loaded: LoadedModel) -> DataBundle:
    return load_data(options.data, input_shape=loaded.sample_shape, batch_size=options.batch_size, seed=options.seed,
                     sources=data_sources(loaded))


def _measure(loaded: LoadedModel, bundle: DataBundle, options: SensitivityOptions) -> SensitivityTable:
    """Analyse, score with the criterion on calibration data, and measure on the validation split (the
    first training samples where there is none)."""
    config = CompressConfig(criterion=options.criterion, ignore=options.ignore, attention=options.attention,
                            seed=options.seed)
    graph = analyze(loaded.model, loaded.example_inputs, attention=options.attention)
    scored = score_groups(loaded.model, loaded.example_inputs, graph, config, calibration_loader(bundle))
    data = bundle.val if bundle.val is not None else calibration_loader(bundle, options.max_samples)
    try:
        return measure_sensitivity(loaded.model, loaded.example_inputs, graph, scored.scores, data,
                                   ratios=options.ratios, metric=options.metric, max_samples=options.max_samples,
                                   ignore=options.ignore,
                                   shrink_rules=with_hf_shrink_rules(loaded.model, DEFAULT_SHRINK_RULES))
    except PlanError as exc:  # what the data cannot measure is bad input on the command line
        raise UsageError(exc.message) from exc


def sensitivity_summary(name: str, table: SensitivityTable, options: SensitivityOptions, out_dir: Path) -> str:
    """The printed table (groups x ratios), the most and least sensitive group, and where the files are."""
    value = (lambda v: f"{v:.2f}") if table.metric == "accuracy" else (lambda v: f"{v:.4f}")
    head = (f"sensitivity of {name} by {table.metric} (dense {value(table.baseline)}), criterion {options.criterion}, "
            f"up to {options.max_samples} samples: each group pruned alone")
    rows = [[g, n, *(value(v) for v in values)] for g, n, values in zip(table.groups, table.sizes, table.values)]
    lines = [head, format_table(["group", "size", *(f"{r:g}" for r in table.ratios)], rows)]
    if table.groups:
        deepest = np.nan_to_num(table.drops()[:, -1], nan=np.inf)
        lines.append(f"at {table.ratios[-1]:g}: most sensitive {table.groups[int(np.argmax(deepest))]} "
                     f"(loses {deepest.max():.4g}), least {table.groups[int(np.argmin(deepest))]} "
                     f"(loses {deepest.min():.4g})")
    else:
        lines.append("no prunable groups: nothing to measure (structprune inspect MODEL says why)")
    lines.append(f"files: {out_dir / 'sensitivity.csv'}, {out_dir / 'sensitivity.png'}")
    return "\n".join(lines)
