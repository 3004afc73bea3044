"""Peak memory of one prune, ours against Torch-Pruning's, on ~90M-parameter models.

For each model (torchvision convnext_base, timm vit_base_patch16_224; random weights, 224x224, batch 1,
ratio 0.5) and each tool, a fresh Python process builds the model, runs one forward and prunes it. We
report the peak resident memory (RSS) the prune adds over the loaded model, in MB and as a multiple of
the model's size (parameter + buffer bytes). Ours is `structprune.compress` with full verification; it
leaves the dense model untouched and returns a pruned copy, which is counted.

Baseline: RSS after the model is built, one forward has run, garbage is collected and freed heap is
handed back to the OS (malloc_trim). Before that, each tool has pruned a small zoo model of the same
family once in the same process, so lazy imports and one-time set-up (about 100 MB for torch.export)
are not charged to the big model. Peak: the kernel's high-water mark (VmHWM, reset through
/proc/self/clear_refs), or where it cannot be reset, a thread sampling VmRSS every millisecond.

Torch-Pruning: `tp.pruner.MagnitudePruner` with `GroupMagnitudeImportance(p=2)`, the classifier ignored,
`num_heads` given for the ViT's attention and its head attributes refreshed after `step()`, as its timm
example does. It prunes in place ("TP in place"); "TP on a copy" deep-copies the model first, which a
caller does to keep the dense model, as ours does.

    python benchmarks/memory.py                        # both models, all three runs each
    python benchmarks/memory.py --models convnext_base --stages
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Self

TOOLS = ("ours", "tp", "tp_copy")
SAMPLE_SECONDS = 0.001


def load_zoos() -> None:
    """Make torchvision and timm importable on the CPU torch (see shared/tools/README.md)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / ".." / "shared" / "tools"))
    import tvshim  # noqa: F401


def build(name: str):
    if name == "convnext_base":
        import torchvision.models as tm

        return tm.convnext_base(weights=None).eval()
    import timm

    return timm.create_model(name, pretrained=False).eval()


FAMILY = {"convnext_base": "convnext", "vit_base_patch16_224": "vit"}  # the zoo model each warm-up prunes


def status_mb(key: str) -> float:
    """A field of /proc/self/status (VmRSS, VmHWM) in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024 / 1e6
    raise KeyError(key)


def release_freed_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakRss:
    """Peak RSS (MB) inside the block: the kernel's reset high-water mark, else a sampling thread."""

    def __enter__(self) -> Self:
        self.peak, self._stop = 0.0, threading.Event()
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._sampler = None
        except OSError:
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, status_mb("VmRSS"))
            time.sleep(SAMPLE_SECONDS)

    def __exit__(self, *exc) -> None:
        if self._sampler is None:
            self.peak = status_mb("VmHWM")
        else:
            self._stop.set()
            self._sampler.join()
        self.peak = max(self.peak, status_mb("VmRSS"))


def classifier(model):
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]


def prune_ours(model, x, ratio: float) -> dict:
    import structprune

    try:
        result = structprune.compress(model, x, ratio=ratio)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return {"result": f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:80]}"}
    ok = "verified" if result.report.verification["ok"] else "NOT verified"
    return {"result": f"{ok}, params {result.report.params_reduction:.2f}x fewer"}


def prune_tp(model, x, ratio: float) -> dict:
    import torch_pruning as tp

    from structprune.graph.cost import count_params

    before = count_params(model)
    heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")}
    pruner = tp.pruner.MagnitudePruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                       pruning_ratio=ratio, ignored_layers=[classifier(model)], num_heads=heads,
                                       prune_num_heads=bool(heads), prune_head_dims=False)
    pruner.step()
    for m in heads:  # the head attributes Torch-Pruning's timm example refreshes by hand
        owner = next(a for a in model.modules() if getattr(a, "qkv", None) is m)
        owner.num_heads = pruner.num_heads[m]
        owner.head_dim = m.out_features // (3 * owner.num_heads)
        if hasattr(owner, "attn_dim"):
            owner.attn_dim = owner.num_heads * owner.head_dim
    return {"result": f"params {before / count_params(model):.2f}x fewer (unverified)"}


def prune_tp_copy(model, x, ratio: float) -> dict:
    """Torch-Pruning on a deep copy, leaving the caller's dense model as it was (as ours does)."""
    return prune_tp(copy.deepcopy(model), x, ratio)


PRUNE = {"ours": prune_ours, "tp": prune_tp, "tp_copy": prune_tp_copy}


def stage_peaks(model, x, ratio: float, baseline: float) -> dict:
    """Our compress, stage by stage (the calls `compress` makes): each stage's peak over the baseline."""
    import structprune
    from structprune.api import build_report
    from structprune.rewrite import rewrite_model
    from structprune.verify import verify_rewrite

    held, peaks = {}, {}
    stages = {
        "capture+analysis": lambda: structprune.analyze(model, x),
        "score+select": lambda: structprune.select(model, x, held["capture+analysis"], ratio=ratio),
        "rewrite": lambda: rewrite_model(model, held["capture+analysis"], held["score+select"]),
        "verify": lambda: verify_rewrite(model, held["rewrite"], x, held["capture+analysis"], held["score+select"]),
        "params+MACs": lambda: build_report(model, held["rewrite"], x, held["capture+analysis"],
                                            held["score+select"], held["verify"]),
    }
    for stage, run in stages.items():
        with PeakRss() as rss:
            held[stage] = run()
        peaks[stage] = rss.peak - baseline
    return {"stages": peaks}


def worker(tool: str, name: str, ratio: float, threads: int) -> dict:
    """One measurement in this (fresh) process."""
    import torch

    import models_zoo

    torch.set_num_threads(threads)
    load_zoos()
    family = FAMILY[name]
    PRUNE["ours" if tool == "stages" else tool](models_zoo.create(family).eval(),
                                                models_zoo.example_inputs(family, batch=1), ratio)
    model, x = build(name), torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        model(x)
    model_mb = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers())) / 1e6
    release_freed_memory()
    baseline = status_mb("VmRSS")
    if tool == "stages":
        return {"model_mb": model_mb, **stage_peaks(model, x, ratio, baseline)}
    with PeakRss() as rss:
        out = PRUNE[tool](model, x, ratio)
    return {"model_mb": model_mb, "added_mb": rss.peak - baseline, **out}


def measure(tool: str, name: str, args) -> dict:
    """Run `worker` in a fresh interpreter `args.repeats` times; the median added peak."""
    runs = []
    for _ in range(args.repeats):
        cmd = [sys.executable, __file__, "--worker", tool, name, "--ratio", str(args.ratio),
               "--threads", str(args.threads)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} on {name} failed:\n{done.stderr[-2000:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    if tool == "stages":
        return runs[-1]
    return {**runs[-1], "added_mb": statistics.median(r["added_mb"] for r in runs)}


def cell(added_mb: float, model_mb: float) -> str:
    return f"+{added_mb:.0f} MB ({added_mb / model_mb:.2f}x)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(FAMILY))
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--stages", action="store_true", help="also our peak per compress stage")
    parser.add_argument("--worker", nargs=2, metavar=("TOOL", "MODEL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(*args.worker, args.ratio, args.threads)))
        return
    from structprune.report.tables import markdown_table

    rows, stage_rows = [], []
    for name in args.models:
        r = {tool: measure(tool, name, args) for tool in TOOLS}
        mb = r["ours"]["model_mb"]
        rows.append([name, f"{mb:.0f}", cell(r["ours"]["added_mb"], mb), cell(r["tp"]["added_mb"], mb),
                     cell(r["tp_copy"]["added_mb"], mb), r["ours"]["result"], r["tp"]["result"]])
        if args.stages:
            peaks = measure("stages", name, args)["stages"]
            stage_rows.append([name] + [cell(v, mb) for v in peaks.values()])
    print(f"ratio {args.ratio}, batch 1, 224x224, {args.threads} threads, median of {args.repeats} fresh "
          "process(es) per cell; added peak RSS over the loaded model (x model size)")
    print(markdown_table(["model", "model MB", "ours (compress)", "TP in place", "TP on a copy", "ours",
                          "Torch-Pruning"], rows))
    if stage_rows:
        print("\nour peak per stage over the loaded model (each stage run on the previous stages' results):")
        print(markdown_table(["model", "capture+analysis", "score+select", "rewrite", "verify", "params+MACs"],
                             stage_rows))


if __name__ == "__main__":
    main()
