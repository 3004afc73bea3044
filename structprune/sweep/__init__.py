"""Sweeps: prune one model at several MACs budgets with several criteria and seeds under one recovery
budget, beside Torch-Pruning's criteria, and write accuracy-vs-reduction curves (CSV, PNG, HTML) with the
pruning limit estimated before the sweep and the knee observed in it.

Python: `run_sweep(model, example_inputs, bundle, SweepConfig(...))` then `write_sweep(result, "out/")`.
Optional arms (structprune.sweep.options): the group-lasso curve (`GroupLassoCurve`), Scratch-B of the named
curves' architectures (`ScratchB`), onnxruntime latency of every point (`LatencyProbe`).
Command line: `add_sweep_arguments(parser)` adds `structprune sweep`'s flags; `run_sweep_command(args)` runs it.

>>> SweepConfig(criteria=("l2", "taylor"), seeds=3).seed_values
(0, 1, 2)
"""
from structprune.sweep.command import add_sweep_arguments, run_sweep_command, train_dense
from structprune.sweep.config import REFERENCE_CRITERIA, SweepConfig
from structprune.sweep.curves import Curve, CurvePoint, Knee, Stat
from structprune.sweep.options import GROUP_LASSO, GroupLassoCurve, LatencyProbe, ScratchB
from structprune.sweep.outputs import SweepFiles, write_sweep
from structprune.sweep.rows import COLUMNS, SweepRow
from structprune.sweep.run import SweepResult, run_sweep

__all__ = ["COLUMNS", "GROUP_LASSO", "REFERENCE_CRITERIA", "Curve", "CurvePoint", "GroupLassoCurve", "Knee",
           "LatencyProbe", "ScratchB", "Stat", "SweepConfig", "SweepFiles", "SweepResult", "SweepRow",
           "add_sweep_arguments", "run_sweep", "run_sweep_command", "train_dense", "write_sweep"]
