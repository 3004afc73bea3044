"""The `structprune` command line. It only parses flags and calls the library.

Exit codes: 0 success; 2 bad usage or input (one-line error, no traceback, no outputs);
1 verification, ONNX parity or quality-gate failure.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import re
import signal
import sys
from importlib import metadata
from typing import NoReturn

from structprune import __version__
from structprune.arguments import HelpFormatter, batch_shape, json_object, number
from structprune.compress_config import DEFAULT_RATIO, DEFAULT_ROUND_TO, CompressConfig
from structprune.criteria import CRITERIA, get_criterion
from structprune.criteria.taps import WEIGHINGS
from structprune.demo import run_demo
from structprune.errors import CaptureError, PlanError, StructpruneError, UsageError
from structprune.group_lasso import GroupLassoConfig
from structprune.inspection import inspect_model
from structprune.onnx.bench import bench_onnx
from structprune.pipeline import JobOptions, run_job
from structprune.recover import distributed_session
from structprune.recover.config import METHODS, RecoveryConfig
from structprune.recover.schedules import SCHEDULES
from structprune.report.graph_figure import check_figure_path
from structprune.sensitivity import DEFAULT_RATIOS, MAX_SAMPLES, METRIC_CHOICES
from structprune.sensitivity_job import SensitivityOptions, run_sensitivity
from structprune.sweep import add_sweep_arguments

USAGE_ERRORS = (UsageError, PlanError, CaptureError)
COMPRESS_EXAMPLES = """\
--ratio 0.5 removes half the channels of every prunable group: about 4x fewer params and MACs
for conv/linear stacks (each pruned layer loses half its inputs and half its outputs).
--target-macs 0.5 (or --target-params F) prunes to a budget instead: keep half the MACs, within 2%.
--target-latency-ms X searches for a model that runs in X ms (onnxruntime median, 1 thread, this machine).
--sparsity-train E --group-lasso LAMBDA first trains E epochs with a group-lasso penalty on every channel group,
then prunes the channels with the smallest coupled norm (to the budget, or below --group-norm-threshold T).

examples:
  structprune compress zoo:resnet20 --ratio 0.5 --data digits --finetune-epochs 3
  structprune compress weights.pt --arch mypkg.nets:build --input-shape 1,3,224,224 --ratio 0.3 --out export/mynet
"""
SENSITIVITY_EXAMPLES = """\
Each prunable group alone loses each ratio of its channels (the criterion's lowest first); the model is
run on --data and scored by accuracy (labelled data) or by the mean cosine of its outputs to the dense
model's. Writes sensitivity.csv and sensitivity.png (a heat map, groups x ratios) into --out.

examples:
  structprune sensitivity zoo:resnet20 --data digits
  structprune sensitivity zoo:vit --data digits --ratios 0.25,0.5 --metric fidelity --out export/vit-sens
"""


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help / --version (0), or a usage error already printed (2)
        return exc.code if isinstance(exc.code, int) else 0
    try:
        with distributed_session(), _terminate_as_interrupt():  # joins torchrun's process group, if any
            return args.handler(args)
    except USAGE_ERRORS as exc:
        return _fail(exc, 2)
    except StructpruneError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        print("structprune: interrupted; no outputs were written", file=sys.stderr)
        return 130


@contextlib.contextmanager
def _terminate_as_interrupt():
    """SIGTERM (timeout, docker stop, a cluster pre-empting the job) unwinds like Ctrl-C, so staging
    folders are removed on the way out; the previous handler is restored afterwards."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def package_version() -> str:
    """The installed distribution's version; the package's `__version__` when it is not installed."""
    try:
        return metadata.version("structprune")
    except metadata.PackageNotFoundError:
        return __version__


class _Parser(argparse.ArgumentParser):
    """argparse with our error style: one line `structprune: error: ...` on stderr, exit 2, no usage dump."""

    def error(self, message: str) -> NoReturn:
        text = re.sub(r"^argument ([^:]+): ", r"\1: ", " ".join(message.split()))
        self.exit(2, f"structprune: error: {text} (see '{self.prog} --help')\n")


def _fail(exc: Exception, code: int) -> int:
    message = " ".join(str(exc).split())
    print(f"structprune: error: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="structprune", description="Structured pruning for PyTorch models.",
                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_compress(_command(sub, "compress", "prune, verify and export a model", COMPRESS_EXAMPLES))
    _add_apply(_command(sub, "apply", "apply a saved plan.json (no scoring)"))
    _add_inspect(_command(sub, "inspect", "show channel groups, why some are blocked, prunable MACs, per-layer cost"))
    _add_bench(_command(sub, "bench", "onnxruntime latency of an ONNX model"))
    add_sweep_arguments(_command(sub, "sweep", "curves of accuracy vs MACs/params reduction per criterion and seed"))
    _add_sensitivity(_command(sub, "sensitivity", "accuracy or output fidelity when each group alone is pruned "
                                                  "at several ratios: a table, CSV and heat map", SENSITIVITY_EXAMPLES))
    demo = _command(sub, "demo", "train on digits, compress, recover, export (about a minute)")
    demo.add_argument("--out", default="export/demo", metavar="DIR", help="artifact folder")
    demo.set_defaults(handler=_run_demo)
    return parser


def _command(sub, name: str, summary: str, epilog: str | None = None) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=summary, description=summary, epilog=epilog, formatter_class=HelpFormatter)


_RATIO = number(float, "a fraction in [0, 1), e.g. 0.5", lambda v: 0 <= v < 1)
_POSITIVE_INT = number(int, "a positive integer", lambda v: v >= 1)
_COUNT = number(int, "an integer >= 0", lambda v: v >= 0)
_POSITIVE = number(float, "a number > 0", lambda v: 0 < v < math.inf)
_NON_NEGATIVE = number(float, "a number >= 0", lambda v: 0 <= v < math.inf)
_BELOW_ONE = number(float, "a number in [0, 1)", lambda v: 0 <= v < 1)
_OPEN_UNIT = number(float, "a number in (0, 1), e.g. 0.02", lambda v: 0 < v < 1)
_UNIT = number(float, "a number in [0, 1]", lambda v: 0 <= v <= 1)
_GROUP_CAP = number(float, "a number in (0, 1]", lambda v: 0 < v <= 1)
_BUDGET = number(float, "a fraction in (0, 1), e.g. 0.5", lambda v: 0 < v < 1)


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo:NAME, a .pt2 archive, or a state_dict .pt/.pth with --arch")
    p.add_argument("--arch", metavar="SPEC", help="architecture for a state_dict: zoo:NAME or package.module:factory")
    p.add_argument("--arch-kwargs", type=json_object, default={}, metavar="JSON",
                   help='JSON keyword arguments, e.g. \'{"num_classes": 10}\'')
    p.add_argument("--trust-pickle", action="store_true", help="load a whole pickled module (runs code from the file)")
    p.add_argument("--input-shape", type=batch_shape, metavar="B,C,H,W",
                   help="example input shape with the batch first, e.g. 1,3,32,32; needed when MODEL carries no "
                        "example input (--arch package.module:factory, a pickled module)")


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="SPEC",
                   help="digits | PATH.npz | image folder | module:function (calibration and accuracy)")
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=64, metavar="N", help="batch size of --data")
    p.add_argument("--seed", type=_COUNT, default=0, metavar="S", help="seed of zoo weights, data split and recovery")
    p.add_argument("--out", metavar="DIR", help="artifact folder (default export/<model-name>/)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip ONNX export, parity and latency")
    p.add_argument("--strict", action="store_true",
                   help="fail when any group's rewrite does not verify, instead of keeping those groups whole")
    p.add_argument("--no-recapture", dest="recapture", action="store_false",
                   help="verify without re-exporting the pruned model (shapes, sizes, masking still checked)")
    p.add_argument("--finetune-epochs", type=_COUNT, default=0, metavar="E", help="recovery epochs on --data")
    p.add_argument("--recover", default="auto", choices=METHODS,
                   help="recovery method; auto = distill from the dense model")
    p.add_argument("--lr-schedule", default="cosine", choices=sorted(SCHEDULES), help="recovery learning-rate schedule")
    p.add_argument("--lr", type=_POSITIVE, metavar="LR", default=0.01, help="recovery base learning rate")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"), help="recovery optimizer")
    p.add_argument("--label-smoothing", type=_BELOW_ONE, default=0.0, metavar="S", help="recovery label smoothing")
    p.add_argument("--temperature", type=_POSITIVE, default=4.0, metavar="T", help="distillation temperature")
    p.add_argument("--dense-epochs", type=_POSITIVE_INT, metavar="E",
                   help="epochs of the original training (Scratch-E/B, LR rewinding)")
    p.add_argument("--iterative", type=_COUNT, default=0, metavar="N", help="N cycles of prune -> recover")
    p.add_argument("--ap", type=_OPEN_UNIT, nargs="?", const=0.02, metavar="SHARE",
                   help="Activate-while-Pruning: SHARE (0.02 if omitted) of each cycle goes to the deadest channels")
    p.add_argument("--distill-weight", type=_UNIT, default=0.5, metavar="W", help="weight of the distillation KL term")
    p.add_argument("--no-dropout", dest="dropout", action="store_false",
                   help="recover with every dropout off (distilling a dense teacher has no labels to overfit)")
    p.add_argument("--max-accuracy-drop", type=_NON_NEGATIVE, metavar="POINTS",
                   help="quality gate: exit 1 if accuracy drops by more than POINTS")
    p.add_argument("--checkpoint-dir", metavar="DIR", help="save a recovery checkpoint each epoch here")
    p.add_argument("--resume", action="store_true", help="resume recovery from --checkpoint-dir")


def _add_compress(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument("--ratio", type=_RATIO, default=DEFAULT_RATIO, metavar="R",
                   help="fraction of each group's channels to remove, in [0, 1)")
    p.add_argument("--target-macs", type=_BUDGET, metavar="F",
                   help="instead of --ratio: keep the fraction F of the dense model's MACs (within 2%%)")
    p.add_argument("--target-params", type=_BUDGET, metavar="F",
                   help="instead of --ratio: keep the fraction F of the dense model's parameters (within 2%%)")
    p.add_argument("--target-latency-ms", type=_POSITIVE, metavar="X",
                   help="instead of --ratio: run in X ms, the onnxruntime median on this machine (1 thread, the "
                        "example inputs), searched by measuring candidate models (within 2%%, or the closest)")
    p.add_argument("--allocation", choices=("global", "uniform", "sensitivity", "coreset"),
                   help="how a budget is spread: one threshold on normalised scores (global, the default with a "
                        "target), one ratio for every group (uniform), deepest where pruning a group alone "
                        "loses least output fidelity on --data (sensitivity; also with --ratio), or by the coreset "
                        "bound of the groups' sensitivities on --data (coreset)")
    p.add_argument("--criterion", default="l2", metavar="NAME", help=_criterion_help())
    p.add_argument("--tune-epochs", type=_POSITIVE, metavar="E",
                   help="after the least-squares refit (--criterion obs, with --data), tune each refit layer with the "
                        "layers feeding it (a transformer's FFN, on token rows) or its whole block by gradient for E "
                        "epochs towards the dense model's outputs; no labels")
    p.add_argument("--weigh", choices=WEIGHINGS,
                   help="how calibration rows count in --criterion obs's choice, refit and tuning: tokens (default: "
                        "every real token once, as a language model's loss counts them) or samples (each sample's "
                        "tokens share one weight, as a mean-pooled sentence embedding counts them)")
    p.add_argument("--calib-samples", type=_POSITIVE_INT, metavar="N",
                   help="calibration samples a data-driven criterion reads from --data (obs: its choice's Hessians "
                        "read the first 1024, its refit and tuning all N; default 2048): more is slower, and closer "
                        "to the dense model")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="one ratio over all groups")
    p.add_argument("--group-ratio", dest="group_ratios", nargs="+", action="extend", default=[],
                   metavar="GLOB=R[:global]",
                   help="a ratio of its own for the groups whose outputs match GLOB (e.g. '*.intermediate.*=0.5' "
                        "'*.attention.*=0.25:global'); other groups are pruned by --ratio, or stay whole without it")
    p.add_argument("--round-to", type=_POSITIVE_INT, default=DEFAULT_ROUND_TO, metavar="N",
                   help="keep channel counts a multiple of N (default 1; 8 with --target-latency-ms)")
    p.add_argument("--attention", choices=("heads", "head_dims"), default="heads",
                   help="prune attention by whole heads or by the same dims of every head")
    p.add_argument("--ignore", nargs="+", default=[], metavar="GLOB", help="module FQN globs to leave whole")
    p.add_argument("--max-group-ratio", type=_GROUP_CAP, default=0.9, metavar="R", help="cap per group with --global")
    _sparsity_flags(p)
    _output_flags(p)
    p.set_defaults(handler=_run_compress)


def _sparsity_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--sparsity-train", type=_POSITIVE_INT, metavar="E",
                   help="before pruning, train E epochs on --data with a group-lasso penalty (--group-lasso) on every "
                        "channel group, then prune the channels whose coupled l2 norm is lowest (criterion group_norm)")
    p.add_argument("--group-lasso", type=_POSITIVE, metavar="LAMBDA",
                   help="weight of the group-lasso penalty, the sum over channels of their coupled norm, e.g. 1e-3")
    p.add_argument("--group-norm-threshold", type=_POSITIVE, metavar="T",
                   help="with --sparsity-train: prune exactly the channels whose coupled norm is below T, instead of "
                        "the threshold --ratio / --target-macs / --target-params choose")


def _add_apply(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument("plan", help="plan.json written by `structprune compress`")
    _output_flags(p)
    p.set_defaults(handler=_run_compress)


def _add_inspect(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument("--graph", type=_figure_path, metavar="FILE",
                   help="also draw the channel graph (ops top to bottom, coloured by channel group, blocked groups "
                        "hatched, a legend with sizes and reasons) into FILE: .svg, .png or .pdf")
    p.set_defaults(handler=_run_inspect)


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx_model", help="an .onnx file")
    p.add_argument("--against", metavar="ONNX", help="a second .onnx file to compare with")
    p.add_argument("--runs", type=_POSITIVE_INT, default=50, metavar="N", help="timed runs per model")
    p.add_argument("--batch", type=_POSITIVE_INT, default=1, metavar="N", help="batch size of the random inputs")
    p.set_defaults(handler=_run_bench)


def _add_sensitivity(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument("--data", required=True, metavar="SPEC",
                   help="digits | PATH.npz | image folder | module:function; labelled data gives accuracy")
    p.add_argument("--ratios", type=_ratios, default=DEFAULT_RATIOS, metavar="R,R,...",
                   help="shares of each group to prune, comma-separated, each in (0, 1)")
    p.add_argument("--metric", choices=METRIC_CHOICES, default="auto",
                   help="accuracy (needs labels), fidelity (mean cosine to the dense outputs), or auto")
    p.add_argument("--criterion", default="l2", metavar="NAME", help=_criterion_help())
    p.add_argument("--max-samples", type=_POSITIVE_INT, default=MAX_SAMPLES, metavar="N",
                   help="samples each pruned candidate runs on")
    p.add_argument("--ignore", nargs="+", default=[], metavar="GLOB", help="module FQN globs to leave out")
    p.add_argument("--attention", choices=("heads", "head_dims"), default="heads",
                   help="measure attention by whole heads or by the same dims of every head")
    p.add_argument("--batch-size", type=_POSITIVE_INT, default=64, metavar="N", help="batch size of --data")
    p.add_argument("--seed", type=_COUNT, default=0, metavar="S", help="seed of zoo weights, data split and criterion")
    p.add_argument("--out", metavar="DIR", help="folder for sensitivity.csv and .png (default "
                                                "export/<model-name>-sensitivity/)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.set_defaults(handler=_run_sensitivity)


def _ratios(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or any(not 0 < v < 1 for v in values) or len(set(values)) != len(values):
        raise argparse.ArgumentTypeError(f"'{text}' is not a list of distinct fractions in (0, 1), e.g. 0.25,0.5,0.75")
    return tuple(sorted(values))


def _criterion_help() -> str:
    """The registered criteria, data-free ones first (`structprune.criteria.CRITERIA`)."""
    driven = [n for n, c in CRITERIA.items() if getattr(c, "needs_data", False)]
    free = [n for n in CRITERIA if n not in driven]
    return f"channel importance: {', '.join(free)}, or with --data: {', '.join(driven)}"


def _figure_path(text: str):
    try:
        return check_figure_path(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _sample_shape(args: argparse.Namespace) -> tuple[int, ...] | None:
    """--input-shape without its batch: the library builds its example inputs from one sample's shape."""
    return args.input_shape[1:] if args.input_shape else None


def _job_options(args: argparse.Namespace):
    fields = {k: v for k, v in vars(args).items() if k in JobOptions.__dataclass_fields__}
    fields.update(input_shape=_sample_shape(args), compress=_compress_config(args), recovery=_recovery_config(args))
    sparsity = _sparsity_config(args)
    return JobOptions(**fields, **({"sparsity": sparsity} if sparsity else {}))


def _sparsity_config(args: argparse.Namespace) -> GroupLassoConfig | None:
    """The GroupLassoConfig of --sparsity-train / --group-lasso / --group-norm-threshold (None without them);
    UsageError for a flag without the others it needs or beside one it contradicts."""
    epochs, lam, threshold = (getattr(args, name, None) for name in ("sparsity_train", "group_lasso",
                                                                    "group_norm_threshold"))
    if epochs is None:
        if lam is not None or threshold is not None:
            raise UsageError("--group-lasso and --group-norm-threshold go with --sparsity-train E (the epochs of "
                             "group-lasso training before pruning)")
        return None
    problems = _sparsity_conflicts(args, lam, threshold)
    if problems:
        raise UsageError(problems[0])
    return GroupLassoConfig(epochs=epochs, lam=lam, threshold=threshold)


def _sparsity_conflicts(args: argparse.Namespace, lam, threshold) -> list[str]:
    """What is wrong with the flags beside --sparsity-train, each as a one-line message."""
    budget = [f for f, v in (("--target-macs", args.target_macs), ("--target-params", args.target_params),
                             ("--ratio", None if args.ratio is DEFAULT_RATIO else args.ratio)) if v is not None]
    return [message for bad, message in (
        (lam is None, "--sparsity-train needs --group-lasso LAMBDA, the weight of the penalty (e.g. 1e-3)"),
        (not args.data, "--sparsity-train trains on data: pass --data (digits, PATH.npz, a folder, or "
                        "module:function)"),
        (threshold is not None and bool(budget), f"--group-norm-threshold chooses what is pruned; drop "
                                                 f"{' and '.join(budget)}, or drop the threshold to let the budget "
                                                 "choose it"),
        (args.target_latency_ms is not None or args.allocation is not None,
         "--sparsity-train prunes below one threshold on the group norms: it takes --ratio, --target-macs or "
         "--target-params, not --target-latency-ms or --allocation"),
        (args.iterative > 0 or args.ap is not None, "--sparsity-train prunes once after group-lasso training; drop "
                                                    "--iterative and --ap"),
        (bool(args.group_ratios), "--sparsity-train prunes below one threshold on the group norms of all groups; "
                                  "drop --group-ratio"),
        (args.criterion not in ("l2", "group_norm"), f"--sparsity-train ranks channels by their group norm "
                                                     f"(criterion group_norm); drop --criterion {args.criterion}"),
    ) if bad]


def _compress_config(args: argparse.Namespace):
    """The CompressConfig of the flags that name its fields (--ratio, --criterion, --seed, ...)."""
    fields = {k: v for k, v in vars(args).items() if k in CompressConfig.__dataclass_fields__}
    try:
        options = {"tune_epochs": getattr(args, "tune_epochs", None), "weigh": getattr(args, "weigh", None),
                   "max_samples": getattr(args, "calib_samples", None)}
        if any(options.values()):
            fields["criterion"] = _criterion_with(args.criterion, {k: v for k, v in options.items() if v})
        return CompressConfig(**fields)
    except ValueError as exc:  # PlanError and UsageError are ValueErrors too: all are bad flags
        raise UsageError(getattr(exc, "message", str(exc))) from exc


_CRITERION_OPTIONS = {  # criterion field: (flag, what it does, what a criterion without it lacks); default: a refit
    "max_samples": ("--calib-samples", "sets how many calibration samples a data-driven criterion reads", "reads none"),
}


def _criterion_with(name: str, options: dict):
    """Criterion `name` with the options given (`tune_epochs`, `weigh`, `max_samples`); a UsageError where it has
    no such field."""
    criterion = get_criterion(name)
    fields = getattr(criterion, "__dataclass_fields__", {})
    for option in options:
        if option not in fields:
            flag, use, lacks = _CRITERION_OPTIONS.get(option, (None, "applies to the layers a criterion refits",
                                                              "refits none"))
            flag = flag or "--" + option.replace("_", "-")
            raise UsageError(f"{flag} {use}; --criterion {name} {lacks}: use --criterion obs, or drop {flag}")
    return dataclasses.replace(criterion, **options)


def _recovery_config(args: argparse.Namespace):
    """The RecoveryConfig of the recovery flags (--finetune-epochs E is its `epochs`; 0: no recovery)."""
    try:
        return RecoveryConfig(method=args.recover, epochs=args.finetune_epochs, lr=args.lr, optimizer=args.optimizer,
                              schedule=args.lr_schedule, label_smoothing=args.label_smoothing,
                              distill_weight=args.distill_weight, temperature=args.temperature,
                              checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed,
                              dropout=getattr(args, "dropout", True),
                              dense_epochs=args.dense_epochs or args.finetune_epochs or None)
    except ValueError as exc:
        raise UsageError(f"recovery options: {exc}") from exc


def _run_compress(args: argparse.Namespace) -> int:
    if getattr(args, "allocation", None) in ("sensitivity", "coreset") and not args.data:
        raise UsageError(f"--allocation {args.allocation} measures each group's sensitivity on data: pass --data "
                         "(digits, PATH.npz, a folder, or module:function)")
    result = run_job(_job_options(args))
    print(result.summary)
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    load = dict(arch=args.arch, arch_kwargs=args.arch_kwargs, trust_pickle=args.trust_pickle,
                input_shape=_sample_shape(args))
    print(inspect_model(args.model, figure=args.graph, **load))  # a failed drawing prints only its error
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    print(bench_onnx(args.onnx_model, against=args.against, runs=args.runs, batch=args.batch))
    return 0


def _run_sensitivity(args: argparse.Namespace) -> int:
    fields = {k: v for k, v in vars(args).items() if k in SensitivityOptions.__dataclass_fields__}
    fields.update(input_shape=_sample_shape(args), ignore=tuple(args.ignore))
    print(run_sensitivity(SensitivityOptions(**fields)).summary)
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    print(run_demo(out=args.out))
    return 0
