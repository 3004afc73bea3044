"""Speed of the core pass against Torch-Pruning, measured in the same run.

For each model at 224x224, batch 1: our capture + analysis, our full compress (no fine-tuning; it
includes scoring, rewrite and verification), Torch-Pruning's DependencyGraph build, and Torch-Pruning's
pruner construction + step. Prints the median of `--repeats` runs, the ratios, and where our time goes.
One untimed round of both tools comes first (lazy imports and first-call set-up, several times a
steady-state run for both). The garbage collector runs (untimed) before each side, so neither is
charged a full collection of the other's garbage; collections triggered inside a side's own run stay
in its time.

    python benchmarks/core_speed.py            # resnet50, vit, densenet at 224
    python benchmarks/core_speed.py --repeats 1 --models resnet50
"""
from __future__ import annotations

import argparse
import gc
import statistics
import time

import torch
import torch_pruning as tp

import models_zoo
import structprune
from structprune.api import build_report
from structprune.capture import capture
from structprune.report.tables import format_table
from structprune.rewrite import rewrite_model
from structprune.rules.build import build_channel_graph
from structprune.verify import verify_rewrite

CONFIGS = {
    "resnet50": dict(image_size=224, num_classes=1000),
    "vit": dict(image_size=224, num_classes=1000, patch_size=16, embed_dim=192, depth=12, num_heads=3),
    "densenet": dict(image_size=224, num_classes=1000, growth_rate=32, block_config=(6, 12, 24, 16)),
}


STAGES = ("capture", "rules", "select", "rewrite", "verify", "report")


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def ours(model, x) -> dict[str, float]:
    """Stage times of one compress, run stage by stage (the same calls compress makes)."""
    cap, t_capture = timed(lambda: capture(model, x))
    graph, t_rules = timed(lambda: build_channel_graph(cap, modules=dict(model.named_modules())))
    plan, t_select = timed(lambda: structprune.select(model, x, graph, ratio=0.5))
    pruned, t_rewrite = timed(lambda: rewrite_model(model, graph, plan))
    verdict, t_verify = timed(lambda: verify_rewrite(model, pruned, x, graph, plan))
    assert verdict.ok, verdict.failures()
    _, t_report = timed(lambda: build_report(model, pruned, x, graph, plan, verdict))
    fast, t_verify_fast = timed(lambda: verify_rewrite(model, pruned, x, graph, plan, recapture=False))
    assert fast.ok and fast.pruned_macs == verdict.pruned_macs, fast.failures()
    stages = dict(capture=t_capture, rules=t_rules, select=t_select, rewrite=t_rewrite, verify=t_verify,
                  report=t_report)
    stages["analysis"] = t_capture + t_rules
    stages["compress"] = sum(stages[k] for k in STAGES)
    stages["compress_no_recapture"] = stages["compress"] - t_verify + t_verify_fast
    return stages


def torch_pruning(name, model, x) -> dict[str, float]:
    _, t_graph = timed(lambda: tp.DependencyGraph().build_dependency(model, example_inputs=x))
    heads = {m.qkv: m.num_heads for m in model.modules() if hasattr(m, "qkv")} if name == "vit" else {}
    ignored = [m for n, m in model.named_modules() if n in ("fc", "head", "classifier")]

    def prune():
        pruner = tp.pruner.MetaPruner(model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=0.5, ignored_layers=ignored, num_heads=heads,
                                      prune_num_heads=bool(heads), prune_head_dims=False)
        pruner.step()

    _, t_prune = timed(prune)
    return {"graph": t_graph, "prune": t_prune}


def warm_up(name: str, x: torch.Tensor) -> None:
    """One untimed run of each tool: a first run pays one-time costs (lazy imports, first-call set-up)."""
    ours(models_zoo.create(name, **CONFIGS[name]).eval(), x)
    torch_pruning(name, models_zoo.create(name, **CONFIGS[name]).eval(), x)


def run(name: str, repeats: int) -> dict:
    torch.manual_seed(0)
    x = torch.randn(1, 3, 224, 224)
    mine, theirs = [], []
    warm_up(name, x)
    for _ in range(repeats):
        model = models_zoo.create(name, **CONFIGS[name]).eval()
        with torch.no_grad():
            model(x)  # warm-up: oneDNN builds kernels for the dense shapes once, for both tools
        gc.collect()  # each side starts from a collected heap: neither pays for the other's garbage
        mine.append(ours(model, x))
        gc.collect()
        theirs.append(torch_pruning(name, models_zoo.create(name, **CONFIGS[name]).eval(), x))
    med = lambda rows, key: statistics.median(r[key] for r in rows)  # noqa: E731
    return {"ours": {k: med(mine, k) for k in mine[0]}, "tp": {k: med(theirs, k) for k in theirs[0]}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(CONFIGS))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {name: run(name, args.repeats) for name in args.models}
    rows = []
    for name, r in results.items():
        o, t = r["ours"], r["tp"]
        rows.append([name, f"{o['analysis']:.2f}", f"{t['graph']:.2f}", f"{o['analysis'] / t['graph']:.2f}x",
                     f"{o['compress']:.2f}", f"{t['prune']:.2f}", f"{o['compress'] / t['prune']:.2f}x",
                     f"{o['compress_no_recapture']:.2f}", f"{o['compress_no_recapture'] / t['prune']:.2f}x"])
    print(f"torch {torch.__version__}, torch-pruning {tp.__version__}, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    print(format_table(["model", "ours capture+analysis s", "TP DepGraph s", "ratio", "ours compress s",
                        "TP prune s", "ratio", "ours, recapture=False s", "ratio"], rows))
    stage_rows = [[name] + [f"{r['ours'][k]:.2f}" for k in ("capture", "rules", "select", "rewrite", "verify",
                                                             "report")] for name, r in results.items()]
    print("\nwhere our compress time goes (seconds):")
    print(format_table(["model", "capture", "rules+solve", "score+select", "rewrite", "verify", "params+MACs"],
                       stage_rows))


if __name__ == "__main__":
    main()
