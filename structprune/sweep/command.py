"""`structprune sweep`: the flags (add_sweep_arguments) and the job (run_sweep_command) behind them.

The CLI wires it with two lines (`add_sweep_arguments(_command(sub, "sweep", ...))`); the parser's
`handler` default is `run_sweep_command`, which returns the exit code: 0 when every point verified,
1 when one did not (the files are still written, the failed rows say why), and raises UsageError (exit
2) for bad input before any work.
"""
from __future__ import annotations

import argparse
import copy
import math
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from structprune.arguments import HelpFormatter, batch_shape, json_object, number
from structprune.data import DataBundle, load_data
from structprune.errors import UsageError
from structprune.io import load_model
from structprune.io.atomic import check_output_dir
from structprune.io.load import LoadedModel
from structprune.recover import RecoveryConfig
from structprune.recover.train import TrainPlan, train_epochs
from structprune.sweep.config import DEFAULT_CRITERIA, RECOVERY_METHODS, SweepConfig, parse_criteria
from structprune.sweep.options import DENSE_LR, GROUP_LASSO, GroupLassoCurve, LatencyProbe, ScratchB
from structprune.sweep.outputs import write_sweep
from structprune.sweep.run import run_sweep
from structprune.sweep.summary import summary_text

EXAMPLES = """\
examples:
  structprune sweep zoo:resnet20 --arch-kwargs '{"in_chans": 1, "image_size": 8}' --data digits \\
      --train-epochs 8 --criteria l2,taylor,dropnet,ispasp,coreset --points 5 --seeds 3 --epochs 2
  structprune sweep weights.pt --arch zoo:resnet20 --data digits --max-reduction 16 --out export/sweep
  structprune sweep zoo:resnet20 --arch-kwargs '{"in_chans": 1, "image_size": 8}' --data digits \
      --train-epochs 6 --criteria l2,taylor --group-lasso 0.1 --scratch all --latency --latency-batch 64
"""


def add_sweep_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add `structprune sweep`'s flags to `parser` and set its handler to run_sweep_command.

    >>> parser = add_sweep_arguments(argparse.ArgumentParser(prog="structprune sweep"))
    >>> args = parser.parse_args(["zoo:mlp", "--data", "digits", "--criteria", "l2,taylor", "--seeds", "3"])
    >>> args.criteria, args.seeds, args.points, args.handler is run_sweep_command
    (('l2', 'taylor'), 3, 5, True)
    """
    parser.epilog = parser.epilog or EXAMPLES
    if parser.formatter_class is argparse.HelpFormatter:  # the CLI's own formatter, where it passes one, stays
        parser.formatter_class = HelpFormatter
    _model_arguments(parser)
    _sweep_arguments(parser)
    parser.set_defaults(handler=run_sweep_command)
    return parser


def run_sweep_command(args: argparse.Namespace) -> int:
    """Run the sweep the flags describe, write its files, print the table and the limit vs the knee."""
    config = _config(args)
    out = Path(args.out) if args.out else None
    if out is not None:
        check_output_dir(out, args.force)  # fail before the work, not after it
    torch.manual_seed(config.seed)
    loaded = _load(args)
    out = out or Path("export") / f"{loaded.name}-sweep"
    check_output_dir(out, args.force)
    bundle = load_data(args.data, input_shape=loaded.sample_shape, batch_size=args.batch_size, seed=config.seed)
    dense = dense_factory(loaded, bundle, args.train_epochs, args) if args.train_epochs else loaded.model
    result = run_sweep(dense, loaded.example_inputs, bundle, config, name=loaded.name)
    write_sweep(result, out, force=args.force)
    print(summary_text(result, str(out)))
    return 0 if result.verified else 1


def dense_factory(loaded: LoadedModel, bundle: DataBundle, epochs: int, args) -> Callable[[int], nn.Module]:
    """seed -> the model trained `epochs` on the bundle (one-cycle, SGD); a zoo model starts from fresh
    weights drawn from the seed, any other from its loaded weights."""
    def make(seed: int) -> nn.Module:
        torch.manual_seed(seed)
        model = _load(args).model if loaded.source == "zoo" else copy.deepcopy(loaded.model)
        return train_dense(model, bundle, epochs, seed)

    return make


def train_dense(model: nn.Module, bundle: DataBundle, epochs: int, seed: int) -> nn.Module:
    """Train `model` in place for `epochs` on `bundle` (SGD, one-cycle, peak LR 0.05); returns it in eval mode."""
    config = RecoveryConfig(epochs=epochs, lr=DENSE_LR, schedule="onecycle", seed=seed, measure_dead_rate=False)
    train_epochs(model, bundle.train, bundle.val, config, TrainPlan(epochs, "onecycle", DENSE_LR),
                 desc=f"train dense (seed {seed})")
    return model.eval()


def _config(args: argparse.Namespace) -> SweepConfig:
    return SweepConfig(criteria=args.criteria, points=args.points, seeds=args.seeds, seed=args.seed,
                       min_reduction=args.min_reduction, max_reduction=args.max_reduction, epochs=args.epochs,
                       recover=args.recover, lr=args.lr, reference=args.reference, knee_drop=args.knee_drop,
                       limit=args.limit, calibration_samples=args.calibration_samples, round_to=args.round_to,
                       group_lasso=_group_lasso(args), scratch=_scratch(args),
                       latency=_latency(args))


def _latency(args: argparse.Namespace) -> LatencyProbe | None:
    if not args.latency:
        if args.latency_batch is not None or args.latency_seeds is not None:
            raise UsageError("--latency-batch and --latency-seeds set how --latency times: add --latency")
        return None
    return LatencyProbe(batch=args.latency_batch, seeds=args.latency_seeds)


def _group_lasso(args: argparse.Namespace) -> GroupLassoCurve | None:
    if args.group_lasso is None:
        if args.sparsity_train is not None:
            raise UsageError("--sparsity-train E goes with --group-lasso LAMBDA (the group-lasso curve's penalty)")
        return None
    return GroupLassoCurve(args.group_lasso, args.sparsity_train or GroupLassoCurve.epochs)


def _scratch(args: argparse.Namespace) -> ScratchB | None:
    if args.scratch is None:
        if args.scratch_max_factor is not None:
            raise UsageError("--scratch-max-factor caps Scratch-B's epochs: it goes with --scratch CURVES")
        return None
    if not args.train_epochs:
        raise UsageError("--scratch trains each pruned architecture for the dense model's training compute, which "
                         "the sweep knows when it trains it: pass --train-epochs E")
    names = args.criteria + ((GROUP_LASSO,) if args.group_lasso is not None else ())
    return ScratchB(names if args.scratch == ("all",) else args.scratch, args.train_epochs, DENSE_LR,
                    args.scratch_max_factor)


def _load(args: argparse.Namespace) -> LoadedModel:
    shape = tuple(args.input_shape[1:]) if args.input_shape else None
    return load_model(args.model, arch=args.arch, arch_kwargs=args.arch_kwargs, trust_pickle=args.trust_pickle,
                      input_shape=shape)


def _model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo:NAME, a .pt2 archive, or a state_dict .pt/.pth with --arch")
    p.add_argument("--arch", metavar="SPEC", help="architecture for a state_dict: zoo:NAME or package.module:factory")
    p.add_argument("--arch-kwargs", type=json_object, default={}, metavar="JSON",
                   help='JSON keyword arguments of the architecture, e.g. \'{"in_chans": 1, "image_size": 8}\'')
    p.add_argument("--trust-pickle", action="store_true", help="load a whole pickled module (runs code from the file)")
    p.add_argument("--input-shape", type=batch_shape, metavar="B,C,H,W", help="example input shape, batch first")
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="labelled data with a validation split: digits | PATH.npz | image folder | module:function")
    p.add_argument("--batch-size", type=_integer(1), default=64, metavar="N", help="batch size of --data")


def _sweep_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--criteria", type=_criteria, default=",".join(DEFAULT_CRITERIA), metavar="A,B,...",
                   help="structprune criteria, one curve each")
    p.add_argument("--points", type=_integer(2), default=5, metavar="N", help="compression levels")
    p.add_argument("--min-reduction", type=_reduction, default=1.5, metavar="X", help="smallest MACs reduction")
    p.add_argument("--max-reduction", type=_reduction, default=8.0, metavar="X", help="largest MACs reduction")
    p.add_argument("--seeds", type=_integer(1), default=1, metavar="N", help="seeds per point (mean ± std)")
    p.add_argument("--seed", type=_integer(0), default=0, metavar="S", help="first seed; also the data split's")
    p.add_argument("--epochs", type=_integer(0), default=2, metavar="E", help="recovery epochs at every point")
    p.add_argument("--recover", choices=RECOVERY_METHODS, default="finetune", help="recovery method")
    p.add_argument("--lr", type=_positive, default=0.01, metavar="LR", help="recovery learning rate")
    p.add_argument("--train-epochs", type=_integer(0), default=0, metavar="E",
                   help="first train the dense model E epochs on --data, per seed (a zoo model from fresh weights)")
    p.add_argument("--knee-drop", type=_positive, default=2.0, metavar="POINTS",
                   help="accuracy points below the dense model that mark a curve's knee")
    p.add_argument("--calibration-samples", type=_integer(1), default=512, metavar="N",
                   help="training samples for data-driven criteria, BatchNorm re-estimation and the limit")
    _arm_arguments(p)
    p.add_argument("--round-to", type=_integer(1), default=1, metavar="N",
                   help="keep every pruned layer a multiple of N channels (8 suits onnxruntime's CPU kernels)")
    p.add_argument("--no-reference", dest="reference", action="store_false",
                   help="leave out Torch-Pruning's reference lines")
    p.add_argument("--no-limit", dest="limit", action="store_false", help="skip the pruning-limit estimate")
    p.add_argument("--out", metavar="DIR", help="output folder; export/<model-name>-sweep/ if not given")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")


def _arm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group-lasso", type=_positive, metavar="LAMBDA",
                   help="add the group_lasso curve: group-lasso sparsity training (penalty weight LAMBDA, e.g. 0.1) "
                        "once per seed, then a group-norm threshold at every point")
    p.add_argument("--sparsity-train", type=_integer(1), metavar="E",
                   help=f"sparsity-training epochs of the group_lasso curve (default {GroupLassoCurve.epochs}); "
                        "counted in the CSV's extra_epochs")
    p.add_argument("--scratch", type=_criteria, metavar="A,B,...|all",
                   help="also train these curves' pruned architectures from scratch (Scratch-B: the dense "
                        "training's epochs x the MACs reduction); needs --train-epochs")
    p.add_argument("--scratch-max-factor", type=_factor, metavar="X",
                   help="cap Scratch-B's compute factor (dense MACs / pruned MACs) at X, e.g. 4")
    p.add_argument("--latency", action="store_true",
                   help="time the dense and every pruned model with onnxruntime (exports each; costs time)")
    p.add_argument("--latency-batch", type=_integer(1), metavar="N",
                   help="batch size of the latency inputs (default: the example input's)")
    p.add_argument("--latency-seeds", type=_integer(1), metavar="N",
                   help="time only the first N seeds' points (default: every seed; each export costs seconds)")


def _integer(minimum: int) -> Callable[[str], int]:
    return number(int, f"an integer >= {minimum}", lambda v: v >= minimum)


_positive = number(float, "a number > 0", lambda v: 0 < v < math.inf)
_reduction = number(float, "a MACs reduction > 1, e.g. 1.5 or 8", lambda v: 1 < v < math.inf)
_factor = number(float, "a compute factor >= 1, e.g. 4", lambda v: 1 <= v < math.inf)


def _criteria(text: str) -> tuple[str, ...]:
    names = parse_criteria(text)
    if not names:
        raise argparse.ArgumentTypeError(f"'{text}' names no criterion; e.g. l2,taylor")
    return names

