"""Coverage on code nobody here wrote: timm (one or two architectures per family) and torchvision's
classification zoo, pruned at one ratio by structprune and by Torch-Pruning in the same run.

Every model runs each side in its own fresh subprocess with a timeout. Ours: `structprune.compress`
(verified, or it raises), params and MACs reduction, the prunable shares of channels and MACs as
report.json's `prunable` section defines them (`structprune.graph.cost.prunable_section`: a
conv/linear/matmul/attention op's MACs count when one of its inputs or its output carries a channel of
a group that is prunable and that verification did not block), then ONNX export with onnxruntime parity.
Torch-Pruning: MetaPruner with group-L2 magnitude importance, the classifier ignored, `num_heads`
given for attention projections (whole heads pruned at the same ratio, head attributes refreshed as
its timm example does); it counts as running when the pruned model runs and keeps the output shape.
A model that fails to build or to run a dense forward within the timeout is listed as skipped and
counts neither way.

    python benchmarks/foreign_coverage.py --source all --max-size 224 --csv /tmp/foreign.csv
    python benchmarks/foreign_coverage.py --only resnet18,deit_tiny_patch16_224 --timeout 120
    python benchmarks/foreign_coverage.py --source timm --resume --csv /tmp/timm.csv   # go on after a cut
    python benchmarks/foreign_coverage.py --from-csv /tmp/torchvision.csv,/tmp/timm.csv  # report only
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1].parent / "shared" / "tools"))
import torch
import tvshim  # noqa: F401  -- before torchvision or timm

RESULT_TAG = "RESULT "
DENSE_OK_TAG = "DENSE_OK"
SIZE_WORDS = ("atto", "femto", "pico", "nano", "micro", "xxxs", "xxs", "xs", "tiny", "mini", "small", "s",
              "lite", "light", "b0", "a0", "t", "base", "b", "m", "medium", "large", "l", "huge", "h", "giant", "g")
PARAM_COUNT_RANKS = ((10, "tiny"), (100, "small"), (250, "base"), (500, "large"), (1000, "huge"),
                     (float("inf"), "giant"))
CSV_FIELDS = ["model", "source", "input", "status", "ours_verdict", "ours_params_x", "ours_macs_x",
              "ours_prunable_macs_share", "ours_prunable_channel_share", "ours_onnx", "ours_onnx_max_abs_error",
              "ours_s", "ours_onnx_s", "ours_blocked_reasons", "tp_verdict", "tp_params_x", "tp_macs_x", "tp_s",
              "params_before", "reason"]


# --- which models -------------------------------------------------------------------------------------

def timm_family(name: str) -> str:
    """A timm architecture's family: its name up to the first `_` or digit run ("resnet10t" -> "resnet").

    >>> timm_family("mobilevitv2_050"), timm_family("deit_tiny_patch16_224")
    ('mobilevitv', 'deit')
    """
    return re.match(r"[A-Za-z]+", name).group(0).lower()


def size_rank(name: str) -> int:
    """How small a variant's name says it is: a size word ("tiny", "s", "b0") or a parameter count
    ("88m", "1b"); lower is smaller, names with neither rank last.

    >>> size_rank("vit_tiny_patch16_224") < size_rank("vit_base_patch16_224") < size_rank("aimv2_1b_patch14_224")
    True
    """
    words = []
    for token in name.lower().split("_")[1:]:
        count = re.fullmatch(r"(\d+)([mb])", token)
        if count:
            words.append(_param_count_word(float(count.group(1)) * (1000 if count.group(2) == "b" else 1)))
        elif re.match(r"[a-z]+", token):
            words += [token, re.match(r"[a-z]+", token).group(0)]
    ranks = [SIZE_WORDS.index(w) for w in words if w in SIZE_WORDS]
    return min(ranks, default=len(SIZE_WORDS))


def _param_count_word(millions: float) -> str:
    return next(word for limit, word in PARAM_COUNT_RANKS if millions <= limit)


def first_number(name: str) -> int:
    """The first digit run of a name (depth or width in most timm names: resnet18 < resnet152)."""
    found = re.search(r"\d+", name)
    return int(found.group(0)) if found else 0


def timm_default_side(name: str) -> int:
    """The default input side of a timm architecture from its pretrained config (224 when it has none)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(name)
    return int(cfg.input_size[-1]) if cfg is not None and cfg.input_size else 224


def pick_timm_models(per_family: int) -> list[str]:
    """The `per_family` likely-smallest variants of every timm family, deterministically: by the size
    word in the name, then the default input side, the first number in the name, the name's length and
    alphabetical order (no model is built to choose)."""
    import timm

    families: dict[str, list[str]] = {}
    for name in timm.list_models():
        families.setdefault(timm_family(name), []).append(name)
    picked = []
    for family in sorted(families):
        ranked = sorted(families[family],
                        key=lambda n: (size_rank(n), timm_default_side(n), first_number(n), len(n), n))
        picked += ranked[:per_family]
    return picked


def torchvision_models() -> list[str]:
    """torchvision's classification zoo (the top-level `torchvision.models` builders)."""
    import torchvision

    return sorted(torchvision.models.list_models(module=torchvision.models))


def select_models(source: str, per_family: int, only: list[str], limit: int | None) -> list[tuple[str, str]]:
    """(source, name) pairs to measure: torchvision first, then timm; `only` filters by name; `limit`
    keeps N in all, shared evenly between the sources (so a short check covers both)."""
    lists = []
    if source in ("torchvision", "all"):
        lists.append([("torchvision", n) for n in torchvision_models() if not only or n in only])
    if source in ("timm", "all"):
        import timm

        names = [n for n in only if n in set(timm.list_models())] if only else pick_timm_models(per_family)
        lists.append([("timm", n) for n in names])
    if limit:
        lists = [pairs[:limit // len(lists) + (i < limit % len(lists))] for i, pairs in enumerate(lists)]
    return [pair for pairs in lists for pair in pairs]


# --- building a model (inside a worker) -------------------------------------------------------------------

def build(source: str, name: str, max_size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """The model (random weights, eval mode) and a batch-1 image at its default size capped at `max_size`."""
    if source == "torchvision":
        import torchvision

        side = min(224, max_size)
        size = {"image_size": side} if name.startswith("vit_") and side != 224 else {}  # its ViT asserts the size
        return torchvision.models.get_model(name, weights=None, **size).eval(), torch.randn(1, 3, side, side)
    return build_timm(name, max_size)


def build_timm(name: str, max_size: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """A timm model at its default input size; over `max_size`, rebuilt with `img_size` when it accepts one
    (models with a fixed input size), otherwise just fed the capped size."""
    import timm

    model = timm.create_model(name, pretrained=False)
    channels, height, width = model.pretrained_cfg.get("input_size", (3, 224, 224))
    if max(height, width) > max_size:
        height = width = max_size
        try:
            model = timm.create_model(name, pretrained=False, img_size=max_size)
        except TypeError:
            pass
    return model.eval(), torch.randn(1, channels, height, width)


def first_tensor(out):
    """The first tensor of a model's output (a tensor, a tuple/list, or a dict)."""
    if isinstance(out, torch.Tensor):
        return out
    values = out.values() if isinstance(out, dict) else out
    return next(first_tensor(v) for v in values)


def dense_forward(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Run the dense model once (the skip check) and say so on stdout, so a timeout after it is a failure."""
    with torch.no_grad():
        out = first_tensor(model(x))
    print(DENSE_OK_TAG, flush=True)
    return out


def build_and_run(source: str, name: str, max_size: int):
    """Build the model and run it dense once: (model, input, dense output). A timm model that fails at the
    capped size (some assert their feature-map sizes) is tried again at its own default size."""
    model, x = build(source, name, max_size)
    try:
        return model, x, dense_forward(model, x)
    except Exception:
        if source != "timm":
            raise
        uncapped, x_default = build_timm(name, sys.maxsize)
        if x_default.shape == x.shape:
            raise
        return uncapped, x_default, dense_forward(uncapped, x_default)


def first_line(exc: BaseException, width: int = 400) -> str:
    """`Type: first line of the message`, cut to `width` characters."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:width]


# --- our side ----------------------------------------------------------------------------------------------

def ours_worker(source: str, name: str, max_size: int, ratio: float) -> dict:
    """Compress, verify and export one model; a dict for the parent (its errors recorded, not raised)."""
    import structprune
    from structprune.graph.cost import prunable_section
    from structprune.report.prunable import top_blocked_reasons

    model, x, _ = build_and_run(source, name, max_size)
    result = {"input": "x".join(map(str, x.shape[1:]))}
    start = time.perf_counter()
    try:
        compressed = structprune.compress(model, x, ratio=ratio)
    except Exception as exc:  # noqa: BLE001 - the table records it
        return {**result, "verdict": first_line(exc), "seconds": time.perf_counter() - start}
    report = compressed.report
    groups = report.to_json()["groups"]
    shares = prunable_section(compressed.graph, [g["id"] for g in groups if g["prunable"]])  # as report.json
    result.update(verdict="verified", seconds=time.perf_counter() - start, params_x=report.params_reduction,
                  macs_x=report.macs_reduction, params_before=report.params_before,
                  macs_share=shares["macs_share"], channel_share=shares["channel_share"],
                  blocked="; ".join(f"{t} ({n})" for t, n in top_blocked_reasons(groups)))
    print_result(result)  # so a timeout during the export still keeps the verdict
    return {**result, **onnx_parity(compressed.model, x)}


def onnx_parity(pruned: torch.nn.Module, x: torch.Tensor) -> dict:
    """ONNX export + onnxruntime parity of the pruned model: "ok", or the error it raised."""
    import structprune

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            section = structprune.api.export(pruned, x, Path(tmp) / "m.onnx")
        except Exception as exc:  # noqa: BLE001
            return {"onnx": first_line(exc), "onnx_seconds": time.perf_counter() - start}
    parity = section["parity"]
    return {"onnx": "ok" if parity["ok"] else "mismatch", "onnx_error": parity.get("max_abs_error"),
            "onnx_seconds": time.perf_counter() - start}


# --- Torch-Pruning's side ---------------------------------------------------------------------------------

def classifier_layers(source: str, model: torch.nn.Module) -> list[torch.nn.Module]:
    """The output layers Torch-Pruning must leave alone: timm's `get_classifier()` (every head of a
    distilled model), otherwise the last nn.Linear (the last conv when there is none, as in SqueezeNet)."""
    if source == "timm" and hasattr(model, "get_classifier"):
        heads = model.get_classifier()
        heads = list(heads) if isinstance(heads, (tuple, list)) else [heads]
        heads = [h for h in heads if isinstance(h, torch.nn.Module) and any(True for _ in h.parameters())]
        if heads:
            return heads
    for kind in (torch.nn.Linear, torch.nn.Conv2d):
        layers = [m for m in model.modules() if isinstance(m, kind)]
        if layers:
            return layers[-1:]
    return []


def attention_heads(model: torch.nn.Module) -> dict:
    """num_heads per fused qkv projection (timm `Attention`, torchvision Swin), as TP's timm example passes it."""
    heads = {}
    for m in model.modules():
        qkv, n = getattr(m, "qkv", None), getattr(m, "num_heads", None)
        if isinstance(qkv, torch.nn.Linear) and isinstance(n, int) and qkv.out_features % (3 * n) == 0:
            heads[qkv] = n
    return heads


def refresh_heads(model: torch.nn.Module, pruned_heads: dict) -> None:
    """The attribute update TP's timm example does by hand after `pruner.step()`."""
    for m in model.modules():
        qkv = getattr(m, "qkv", None)
        if isinstance(qkv, torch.nn.Linear) and qkv in pruned_heads:
            m.num_heads = pruned_heads[qkv]
            if hasattr(m, "head_dim"):
                m.head_dim = qkv.out_features // (3 * m.num_heads)
            if hasattr(m, "attn_dim"):
                m.attn_dim = qkv.out_features // 3


def tp_worker(source: str, name: str, max_size: int, ratio: float) -> dict:
    """Prune one model with Torch-Pruning and check the result runs with the dense output shape."""
    import torch_pruning as tp

    model, x, dense = build_and_run(source, name, max_size)
    macs_before, params_before = tp.utils.count_ops_and_params(model, x)
    start = time.perf_counter()
    try:
        heads = attention_heads(model)
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=classifier_layers(source, model),
                                      num_heads=heads, prune_num_heads=bool(heads), prune_head_dims=False,
                                      head_pruning_ratio=ratio if heads else 0.0)
        pruner.step()
        refresh_heads(model, pruner.num_heads)
    except Exception as exc:  # noqa: BLE001
        return {"verdict": "prune failed: " + first_line(exc), "seconds": time.perf_counter() - start}
    result = {**tp_check(model, x, dense), "seconds": time.perf_counter() - start}
    print_result(result)  # so a timeout while counting still keeps the verdict
    return {**result, **tp_reductions(model, x, macs_before, params_before)}


def tp_check(model: torch.nn.Module, x: torch.Tensor, dense: torch.Tensor) -> dict:
    """"runs", or why the pruned model is not usable (fails to run, wrong output shape)."""
    try:
        with torch.no_grad():
            out = first_tensor(model(x))
    except Exception as exc:  # noqa: BLE001
        return {"verdict": "fails to run: " + first_line(exc)}
    if out.shape != dense.shape:
        return {"verdict": f"wrong output shape {tuple(out.shape)}"}
    return {"verdict": "runs"}


def tp_reductions(model: torch.nn.Module, x: torch.Tensor, macs_before: float, params_before: int) -> dict:
    """Params and MACs reduction of a Torch-Pruning result (empty when it cannot be counted)."""
    import torch_pruning as tp

    try:
        macs_after, params_after = tp.utils.count_ops_and_params(model, x)
    except Exception:  # noqa: BLE001 - a model that does not run has no count
        return {}
    return {"params_x": params_before / max(params_after, 1), "macs_x": macs_before / max(macs_after, 1)}


def print_result(result: dict) -> None:
    """Hand a (partial or final) result to the parent on stdout; the parent reads the last one."""
    print(RESULT_TAG + json.dumps(result), flush=True)


def worker_main(args: argparse.Namespace) -> None:
    """One side on one model in this (fresh) process; the result goes to stdout as one JSON line."""
    limit_memory(args.max_memory_gb)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    side = ours_worker if args.worker == "ours" else tp_worker
    try:
        result = side(args.worker_source, args.worker_model, args.max_size, args.ratio)
    except Exception as exc:  # noqa: BLE001 - build or dense forward failed: the parent skips the model
        result = {"error": first_line(exc)}
    print_result(result)


def limit_memory(gigabytes: float) -> None:
    """Cap this process's address space, so a side that runs away (Torch-Pruning on some timm models
    grew past 23 GB on a 24 GB machine) fails with MemoryError in its own row instead of waking the
    kernel's OOM killer, which also took the parent and other jobs down."""
    import resource
    if gigabytes > 0:
        cap = int(gigabytes * 2 ** 30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))


def default_memory_gb(jobs: int) -> float:
    """Two thirds of the machine's memory, shared by the parallel jobs."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30
    return round(total * 2 / 3 / max(jobs, 1), 1)


# --- the parent: subprocesses, rows, summary -------------------------------------------------------------

def run_side(side: str, source: str, name: str, args: argparse.Namespace) -> dict:
    """Run one side in a fresh subprocess; on timeout, kill its process group and say how far it got."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", side, "--worker-source", source,
           "--worker-model", name, "--max-size", str(args.max_size), "--ratio", str(args.ratio),
           "--threads", str(args.threads), "--max-memory-gb", str(args.max_memory_gb)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=args.timeout)
        timed_out = False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        (out, err), timed_out = proc.communicate(), True
    results = [json.loads(line[len(RESULT_TAG):]) for line in out.splitlines() if line.startswith(RESULT_TAG)]
    state = {"dense_ok": DENSE_OK_TAG in out, **(results[-1] if results else {})}
    if timed_out:
        return {**state, "timeout": True}
    if results:
        return state
    tail = (err.strip().splitlines() or [f"exit code {proc.returncode}"])[-1]
    return {**state, "crash": f"worker died (exit {proc.returncode}): {tail}"[:400]}


def side_verdict(result: dict, timeout: float) -> str:
    """A side's verdict line from its worker result (timeouts and crashes included)."""
    if result.get("timeout") and not result.get("verdict"):
        return f"timeout ({timeout:.0f} s)"
    return result.get("crash") or result.get("verdict") or result.get("error", "no result")


def onnx_verdict(ours: dict, timeout: float) -> str:
    """Our ONNX result: "ok", the error, "timeout" when the export ran past it, "" when it never ran."""
    if ours.get("onnx"):
        return ours["onnx"]
    return f"timeout ({timeout:.0f} s)" if ours.get("timeout") and ours.get("verdict") == "verified" else ""


def skip_reason(result: dict, timeout: float) -> str | None:
    """Why a model is skipped (it did not build or run dense within the timeout), or None."""
    if result.get("dense_ok"):
        return None
    if result.get("timeout"):
        return f"no dense forward within {timeout:.0f} s"
    return "build or dense forward failed: " + (result.get("error") or result.get("crash") or "unknown")


def measure(source: str, name: str, args: argparse.Namespace) -> dict:
    """Both sides on one model, each in its own subprocess: one CSV row (a dict)."""
    ours = run_side("ours", source, name, args)
    row = {"model": name, "source": source, "input": ours.get("input", "")}
    skipped = skip_reason(ours, args.timeout)
    if skipped:
        return {**row, "status": "skipped", "reason": skipped}
    tp_result = run_side("tp", source, name, args)
    row.update(status="measured", ours_verdict=side_verdict(ours, args.timeout), ours_params_x=ours.get("params_x"),
               ours_macs_x=ours.get("macs_x"), ours_prunable_macs_share=ours.get("macs_share"),
               ours_prunable_channel_share=ours.get("channel_share"), ours_onnx=onnx_verdict(ours, args.timeout),
               ours_onnx_max_abs_error=ours.get("onnx_error"), ours_s=ours.get("seconds"),
               ours_onnx_s=ours.get("onnx_seconds"), ours_blocked_reasons=ours.get("blocked", ""),
               params_before=ours.get("params_before"), tp_verdict=side_verdict(tp_result, args.timeout),
               tp_params_x=tp_result.get("params_x"), tp_macs_x=tp_result.get("macs_x"),
               tp_s=tp_result.get("seconds"))
    row["reason"] = row_reason(row)
    return row


def ours_ok(row: dict) -> bool:
    """structprune returned a verified model."""
    return row.get("ours_verdict") == "verified"


def tp_ok(row: dict) -> bool:
    """Torch-Pruning's model runs and keeps the dense output shape."""
    return row.get("tp_verdict") == "runs"


def row_reason(row: dict) -> str:
    """What explains the row: our error, or our top blocked reasons when we prune less than TP."""
    if not ours_ok(row):
        return row["ours_verdict"]
    if row.get("ours_onnx") not in ("ok", ""):
        return "ONNX: " + row["ours_onnx"]
    if tp_ok(row) and falls_short(row):
        share = row.get("ours_prunable_channel_share")
        return (f"prunable channels {fmt(share, '.0%', '')}; blocked: " + (row.get("ours_blocked_reasons") or "-"))
    return ""


def falls_short(row: dict, margin: float = 0.95) -> bool:
    """Both produced a model and ours removes less than `margin` of TP's params reduction."""
    ours, theirs = row.get("ours_params_x"), row.get("tp_params_x")
    return ours is not None and theirs is not None and ours < margin * theirs


def relative_to_tp(row: dict) -> float:
    """Our params reduction over TP's (0 when we failed, inf when only we ran): for sorting worst first."""
    if not ours_ok(row):
        return 0.0 if tp_ok(row) else 0.5
    if not (tp_ok(row) and row.get("tp_params_x")):
        return float("inf")
    return row["ours_params_x"] / row["tp_params_x"]


def fmt(value, spec: str = ".2f", suffix: str = "x") -> str:
    """A number for the table ("-" when missing)."""
    return "-" if value is None or value == "" else f"{float(value):{spec}}{suffix}"


def table_row(row: dict) -> list:
    """One printed row (the CSV keeps every field, this shows the ones the table names)."""
    onnx = row.get("ours_onnx") or "-"
    if onnx == "ok" and row.get("ours_onnx_max_abs_error") is not None:
        onnx = f"ok ({float(row['ours_onnx_max_abs_error']):.1e})"
    return [row["model"], row["source"], row["ours_verdict"].split(":")[0][:40], fmt(row.get("ours_params_x")),
            fmt(row.get("ours_macs_x")), fmt(row.get("ours_prunable_macs_share"), ".0%", ""), short_error(onnx, 60),
            fmt(row.get("ours_s"), ".1f", ""), short_error(row["tp_verdict"], 70), fmt(row.get("tp_params_x")),
            fmt(row.get("tp_macs_x")), fmt(row.get("tp_s"), ".1f", ""), short_error(row.get("reason") or "", 160)]


def short_error(text: str, width: int) -> str:
    """An error line without structprune's stage boilerplate and its closing advice, cut to `width`.

    >>> short_error("VerificationError: [verify] the pruned model failed verification and is not returned: "
    ...             "recapture: [capture] torch.export could not capture M in module 'a': bad. Try: x", 80)
    "VerificationError: re-capture: module 'a': bad"
    """
    for noise, replacement in SHORTENINGS:
        text = re.sub(noise, replacement, text)
    return text.replace("|", "/")[:width]


SHORTENINGS = ((r"\[verify\] the pruned model failed verification and is not returned: ", ""),
               (r"recapture: \[capture\] torch\.export could not capture \w+(?: in)? ?", "re-capture: "),
               (r"\. Try: .*$", ""))
TABLE_HEADERS = ["model", "source", "ours verdict", "ours params×", "MACs×", "prunable MACs", "ONNX parity", "s",
                 "TP verdict", "TP params×", "MACs×", "s", "reason"]


def summary_lines(rows: list[dict]) -> list[str]:
    """The verdict counts the issue asks for, with the models named."""
    measured = [r for r in rows if r["status"] == "measured"]
    short = [r["model"] for r in measured if ours_ok(r) and tp_ok(r) and falls_short(r)]
    tp_only = [r["model"] for r in measured if tp_ok(r) and not ours_ok(r)]
    ours_only = [r["model"] for r in measured if ours_ok(r) and not tp_ok(r)]
    skipped = [f"{r['model']} ({r['reason']})" for r in rows if r["status"] == "skipped"]
    return [f"verified: {sum(ours_ok(r) for r in measured)} of {len(measured)}",
            f"ONNX parity ok: {sum(r.get('ours_onnx') == 'ok' for r in measured)} of {len(measured)}",
            f"TP runs (output shape kept): {sum(tp_ok(r) for r in measured)} of {len(measured)}",
            f"we prune < 0.95x of TP's params reduction: {len(short)} models ({', '.join(short)})",
            f"TP runs and we fail: {len(tp_only)} models ({', '.join(tp_only)})",
            f"we verify and TP fails: {len(ours_only)} models ({', '.join(ours_only)})",
            f"skipped: {len(skipped)} ({'; '.join(skipped)})"]


def print_report(rows: list[dict], args: argparse.Namespace, seconds: float | None) -> None:
    """The table (worst relative to TP first), then the summary lines."""
    import torch_pruning as tp

    from structprune.report.tables import markdown_table

    measured = sorted((r for r in rows if r["status"] == "measured"), key=lambda r: (relative_to_tp(r), r["model"]))
    if seconds is None:
        print(f"{len(rows)} models read from {args.from_csv}; "
              f"torch {torch.__version__}; torch-pruning {tp.__version__}")
    else:
        print(f"ratio {args.ratio}; max input side {args.max_size}; timeout {args.timeout:.0f} s per side; "
              f"torch {torch.__version__}; torch-pruning {tp.__version__}; "
              f"{len(rows)} models in {seconds / 60:.1f} min")
    print("prunable MACs: share of the dense MACs in conv/linear/matmul/attention ops that read or produce a "
          "channel of a prunable group")
    print(markdown_table(TABLE_HEADERS, [table_row(r) for r in measured]))
    print("\n".join(summary_lines(rows)))


def read_csv_rows(path: str) -> list[dict]:
    """Rows of a CSV this script wrote (numbers back to floats, empty cells to None): a run cut short
    can still be reported with `--from-csv`."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key in CSV_FIELDS:
            if key.endswith(("_x", "_share", "_s", "_error")) or key == "params_before":
                row[key] = float(row[key]) if row.get(key) not in (None, "") else None
            else:
                row[key] = row.get(key) or ""
    return rows


def rows_of_csvs(paths: list[str]) -> list[dict]:
    """The rows of several CSVs, one per (source, model): the last file's row wins."""
    rows = {}
    for path in paths:
        rows.update({(row["source"], row["model"]): row for row in read_csv_rows(path)})
    return list(rows.values())


def already_measured(path: str | None) -> set[tuple[str, str]]:
    """(source, model) pairs an earlier run already wrote to the CSV (for `--resume`)."""
    if not path or not Path(path).exists():
        return set()
    return {(row["source"], row["model"]) for row in read_csv_rows(path)}


def write_csv_row(path: str | None, row: dict) -> None:
    """Append one row (header first when the file is new), so a run cut short keeps what it measured."""
    if not path:
        return
    new = not Path(path).exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerow(row)


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (worker flags hidden: the parent passes them to its subprocesses)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=["timm", "torchvision", "all"], default="all")
    parser.add_argument("--per-family", type=int, default=1, help="timm variants per family (default 1)")
    parser.add_argument("--only", default="", help="comma-separated model names")
    parser.add_argument("--limit", type=int, default=None,
                        help="measure N models in all, the first of each source in equal shares")
    parser.add_argument("--max-size", type=int, default=224, help="cap on the input side (default 224)")
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds per side per model (default 300)")
    parser.add_argument("--jobs", type=int, default=1, help="models measured in parallel (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per worker (default cores/jobs)")
    parser.add_argument("--max-memory-gb", type=float, default=None,
                        help="address-space cap per worker (default 2/3 of memory / jobs; 0: none)")
    parser.add_argument("--csv", default=None, help="write every row to this CSV (appended as rows finish)")
    parser.add_argument("--resume", action="store_true", help="keep the --csv file and skip the models in it")
    parser.add_argument("--from-csv", default=None,
                        help="only print the table and summary of earlier CSVs (comma-separated; last row wins)")
    parser.add_argument("--worker", choices=["ours", "tp"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-source", help=argparse.SUPPRESS)
    parser.add_argument("--worker-model", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // max(args.jobs, 1))
    if args.max_memory_gb is None:
        args.max_memory_gb = default_memory_gb(args.jobs)
    return args


def main(argv=None) -> None:
    """Measure the selected models (or report an earlier CSV) and print the table and summary."""
    args = parse_args(argv)
    if args.worker:
        return worker_main(args)
    if args.from_csv:
        return print_report(rows_of_csvs(args.from_csv.split(",")), args, None)
    only = [n.strip() for n in args.only.split(",") if n.strip()]
    models = select_models(args.source, args.per_family, only, args.limit)
    done = already_measured(args.csv) if args.resume else set()
    models = [pair for pair in models if pair not in done]
    if args.csv and Path(args.csv).exists() and not args.resume:
        Path(args.csv).unlink()
    print(f"measuring {len(models)} models, {args.jobs} at a time", file=sys.stderr, flush=True)
    start, rows = time.perf_counter(), []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        for future in as_completed([pool.submit(measure, source, name, args) for source, name in models]):
            row = future.result()
            rows.append(row)
            write_csv_row(args.csv, row)
            print(f"[{len(rows)}/{len(models)} {(time.perf_counter() - start) / 60:.1f} min] {row['source']} "
                  f"{row['model']}: {row.get('ours_verdict', row['status'])} | "
                  f"{row.get('tp_verdict', row.get('reason'))}",
                  file=sys.stderr, flush=True)
    print_report(rows, args, time.perf_counter() - start)


if __name__ == "__main__":
    main()
