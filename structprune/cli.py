"""The `structprune` command line. It only parses flags and calls the library.

Exit codes: 0 success; 2 bad usage or input (one-line error, no traceback, no outputs);
1 verification, ONNX parity or quality-gate failure.
"""
from __future__ import annotations

import argparse
import json
import sys

from structprune.errors import CaptureError, PlanError, StructpruneError, UsageError

USAGE_ERRORS = (UsageError, PlanError, CaptureError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _distributed():
            return args.handler(args)
    except USAGE_ERRORS as exc:
        return _fail(exc, 2)
    except StructpruneError as exc:
        return _fail(exc, 1)
    except KeyboardInterrupt:
        print("structprune: interrupted; no outputs were written", file=sys.stderr)
        return 130


def _distributed():
    """Join the torchrun process group when launched by torchrun; a no-op otherwise."""
    from structprune.recover import distributed_session

    return distributed_session()


def _fail(exc: Exception, code: int) -> int:
    message = " ".join(str(exc).split())
    print(f"structprune: error: {message}", file=sys.stderr)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="structprune", description="Structured pruning for PyTorch models.")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_compress(sub.add_parser("compress", help="prune, verify and export a model"))
    _add_apply(sub.add_parser("apply", help="apply a saved plan.json (no scoring)"))
    _add_inspect(sub.add_parser("inspect", help="show channel groups, blocked groups, per-layer cost"))
    _add_bench(sub.add_parser("bench", help="onnxruntime latency of an ONNX model"))
    demo = sub.add_parser("demo", help="train on digits, compress, recover, export (about a minute)")
    demo.add_argument("--out", default="export/demo", help="artifact folder (default export/demo)")
    demo.set_defaults(handler=_run_demo)
    return parser


def _model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="zoo:NAME, a .pt2 archive, or a state_dict .pt/.pth with --arch")
    p.add_argument("--arch", help="architecture for a state_dict: zoo:NAME or package.module:factory")
    p.add_argument("--arch-kwargs", type=_json_object, default={}, help='JSON keyword arguments, e.g. \'{"num_classes": 10}\'')
    p.add_argument("--trust-pickle", action="store_true", help="allow loading a whole pickled module (runs code from the file)")
    p.add_argument("--input-shape", type=_shape, help="example input shape including batch, e.g. 1,3,32,32")


def _output_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="digits | PATH.npz | image folder | module:function (calibration and accuracy)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="artifact folder (default export/<model-name>/)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out folder")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="skip ONNX export, parity and latency")
    p.add_argument("--no-recapture", dest="recapture", action="store_false",
                   help="verify without re-exporting the pruned model (shapes, sizes, masking still checked)")
    p.add_argument("--finetune-epochs", type=int, default=0, help="recovery epochs on --data (0 = none)")
    p.add_argument("--recover", default="auto", choices=("auto", "finetune", "distill", "scratch-e", "scratch-b", "none"),
                   help="recovery method; auto = distill from the dense model")
    p.add_argument("--lr-schedule", default="cosine", choices=_schedules(), help="recovery learning-rate schedule")
    p.add_argument("--lr", type=float, default=0.01, help="recovery base learning rate")
    p.add_argument("--optimizer", default="sgd", choices=("sgd", "adamw"))
    p.add_argument("--label-smoothing", type=float, default=0.0)
    p.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    p.add_argument("--dense-epochs", type=int, help="epochs of the original training (Scratch-E/B, LR rewinding)")
    p.add_argument("--iterative", type=int, default=0, metavar="N", help="N cycles of prune -> recover")
    p.add_argument("--ap", type=float, nargs="?", const=0.02, metavar="SHARE",
                   help="Activate-while-Pruning: spend SHARE (default 0.02) of each cycle on the deadest channels")
    p.add_argument("--distill-weight", type=float, default=0.5, help="weight of the KL term in distillation")
    p.add_argument("--max-accuracy-drop", type=float, help="quality gate: exit 1 if accuracy drops more (points)")
    p.add_argument("--checkpoint-dir", help="save a recovery checkpoint each epoch here")
    p.add_argument("--resume", action="store_true", help="resume recovery from --checkpoint-dir")


def _add_compress(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of channels to remove, in [0, 1)")
    p.add_argument("--criterion", default="l2", help="channel importance criterion (default l2)")
    p.add_argument("--global", dest="global_pruning", action="store_true", help="one ratio over all groups")
    p.add_argument("--round-to", type=int, default=1, help="keep channel counts a multiple of N")
    p.add_argument("--attention", choices=("heads", "head_dims"), default="heads",
                   help="prune attention by whole heads (default) or by per-head dims")
    p.add_argument("--ignore", nargs="+", default=[], metavar="GLOB", help="module FQN globs to leave whole")
    p.add_argument("--max-group-ratio", type=float, default=0.9, help="cap per group with --global")
    _output_flags(p)
    p.set_defaults(handler=_run_compress)


def _add_apply(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.add_argument("plan", help="plan.json written by `structprune compress`")
    _output_flags(p)
    p.set_defaults(handler=_run_compress)


def _add_inspect(p: argparse.ArgumentParser) -> None:
    _model_flags(p)
    p.set_defaults(handler=_run_inspect)


def _add_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("onnx_model", help="an .onnx file")
    p.add_argument("--against", help="a second .onnx file to compare with")
    p.add_argument("--runs", type=int, default=50)
    p.add_argument("--batch", type=int, default=1)
    p.set_defaults(handler=_run_bench)


def _schedules() -> list[str]:
    from structprune.recover import SCHEDULES

    return sorted(SCHEDULES)


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON: {exc.msg}") from exc
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object like {\"num_classes\": 10}")
    return value


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"'{text}' is not a comma-separated list of sizes") from exc
    if len(shape) < 2 or min(shape) < 1:
        raise argparse.ArgumentTypeError(f"'{text}' needs a batch size and at least one positive dim")
    return shape


def _job_options(args: argparse.Namespace):
    from structprune.pipeline import JobOptions

    fields = {k: v for k, v in vars(args).items() if k in JobOptions.__dataclass_fields__}
    fields["input_shape"] = args.input_shape[1:] if args.input_shape else None
    fields["ignore"] = tuple(getattr(args, "ignore", ()))
    return JobOptions(**fields)


def _run_compress(args: argparse.Namespace) -> int:
    from structprune.pipeline import run_job

    result = run_job(_job_options(args))
    print(result.summary)
    return 0


def _run_inspect(args: argparse.Namespace) -> int:
    from structprune.inspection import inspect_model

    print(inspect_model(args.model, arch=args.arch, arch_kwargs=args.arch_kwargs, trust_pickle=args.trust_pickle,
                        input_shape=args.input_shape[1:] if args.input_shape else None))
    return 0


def _run_bench(args: argparse.Namespace) -> int:
    from structprune.inspection import bench_onnx

    print(bench_onnx(args.onnx_model, against=args.against, runs=args.runs, batch=args.batch))
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from structprune.demo import run_demo

    print(run_demo(out=args.out))
    return 0

