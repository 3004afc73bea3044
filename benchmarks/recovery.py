"""Recovery benchmark on scikit-learn's digits (8×8 grayscale), CIFAR-style ResNet-20 from the zoo.

Per seed: train the dense model (SGD, cosine, E epochs); prune it one-shot to ~4x fewer MACs (l2,
ratio 0.5) and recover with fine-tune / distill / Scratch-E (E epochs each) and Scratch-B
(E × MACs ratio epochs); prune iteratively to about the same size (3 cycles of p = 1 − 0.5^(1/3),
E/3 epochs each, so the same E epochs in total) with SILO, LR rewinding, cosine and ALLR; repeat
SILO with Activate-while-Pruning. Prints mean ± std tables and the paired differences that bear on
each paper's claim; writes results.json and PNG curves to --out.

    python benchmarks/recovery.py                 # 3 seeds, E = 15 (about 15-25 min on 2 busy cores)
    python benchmarks/recovery.py --quick         # 1 seed, E = 6: a smoke run
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader, TensorDataset

import models_zoo
import structprune
from structprune.graph.cost import count_macs
from structprune.iterative import iterative_prune
from structprune.recover import RecoveryConfig, evaluate, recover

ONE_SHOT = ("finetune", "distill", "scratch-e", "scratch-b")
ITERATIVE = ("silo", "lrw", "cosine", "allr")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--dense-epochs", type=int, default=15)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--ratio", type=float, default=0.5, help="one-shot channel ratio (0.5 -> ~4x MACs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true", help="1 seed, 6 dense epochs, 2 cycles")
    parser.add_argument("--out", default="export/benchmarks/recovery")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.dense_epochs, args.cycles = [0], 6, 2
    return args


def digits_loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader]:
    """structprune.data's digits when it exists, else the same data built here (fixed 1400/397 split)."""
    try:
        from structprune.data import load_data
        bundle = load_data("digits", input_shape=(1, 8, 8))
        return bundle.train, bundle.val
    except ImportError:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
        train, val = order[:1400], order[1400:]
        return (DataLoader(TensorDataset(x[train], torch.tensor(y)[train]), batch_size=batch_size, shuffle=True),
                DataLoader(TensorDataset(x[val], torch.tensor(y)[val]), batch_size=512))


def base_config(seed: int, **changes) -> RecoveryConfig:
    return RecoveryConfig(**{"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
                             "seed": seed, "progress": False, **changes})


def train_dense(seed: int, epochs: int, loaders) -> tuple[torch.nn.Module, float]:
    torch.manual_seed(seed)
    model = models_zoo.create("resnet20", in_chans=1, image_size=8, num_classes=10)
    config = base_config(seed, method="finetune", epochs=epochs, lr=0.1, measure_dead_rate=False)
    result = recover(model, *loaders, config)
    return result.model, result.final_val_accuracy


def one_shot(dense, example, loaders, args, seed) -> dict:
    compressed = structprune.compress(dense, example, ratio=args.ratio, criterion="l2")
    report, e = compressed.report, args.dense_epochs
    configs = {"finetune": base_config(seed, method="finetune", epochs=e),
               "distill": base_config(seed, method="distill", epochs=e),
               "scratch-e": base_config(seed, method="scratch-e", lr=0.1, dense_epochs=e),
               "scratch-b": base_config(seed, method="scratch-b", lr=0.1, dense_epochs=e)}
    out = {"macs_reduction": report.macs_reduction, "pruned_accuracy": evaluate(compressed.model, loaders[1])[1]}
    for name, config in configs.items():
        result = recover(compressed.model, *loaders, config, dense=dense, dense_macs=report.macs_before,
                         pruned_macs=report.macs_after)
        out[name] = {"accuracy": result.final_val_accuracy, "epochs": result.epochs,
                     "curve": [r.val_accuracy for r in result.history]}
    return out


def iterative(dense, example, loaders, args, seed) -> dict:
    e, c = args.dense_epochs, args.cycles
    fraction, per_cycle = 1.0 - args.ratio ** (1.0 / c), max(1, e // c)
    configs = {"silo": base_config(seed, method="finetune", epochs=per_cycle, schedule="silo"),
               "lrw": base_config(seed, method="finetune", epochs=per_cycle, schedule="lrw", lr=0.1, dense_epochs=e),
               "cosine": base_config(seed, method="finetune", epochs=per_cycle, schedule="cosine"),
               "allr": base_config(seed, method="finetune", epochs=per_cycle, schedule="allr", lr=0.1, dense_epochs=e)}
    runs = {name: iterative_prune(dense, example, *loaders, cycles=c, fraction=fraction, config=config)
            for name, config in configs.items()}
    runs["silo+ap"] = iterative_prune(dense, example, *loaders, cycles=c, fraction=fraction, config=configs["silo"],
                                      ap_share=0.02)
    return {name: _iterative_summary(run, dense, example) for name, run in runs.items()}


def _iterative_summary(run, dense, example) -> dict:
    macs_before = count_macs(dense, example)
    history = run.history
    return {"accuracy": run.cycles[-1].recovery.final_val_accuracy,
            "macs_reduction": macs_before / run.cycles[-1].report.macs_after,
            "cycle_lr": [max(r.lr_max for r in c.recovery.history) for c in run.cycles],
            "lr": [r.lr for r in history], "curve": [r.val_accuracy for r in history],
            "dead_rate": [100 * r.dead_rate for r in history],
            "dead_after_pruning": [100 * c.dead_rate_after_pruning for c in run.cycles],
            "widths": [int(sum(len(k) for k in c.plan.keep.values())) for c in run.cycles]}


def run_seed(seed: int, args) -> dict:
    loaders, example = digits_loaders(), torch.zeros(1, 1, 8, 8)
    start = time.time()
    dense, dense_acc = train_dense(seed, args.dense_epochs, loaders)
    result = {"seed": seed, "dense_accuracy": dense_acc, "one_shot": one_shot(dense, example, loaders, args, seed),
              "iterative": iterative(dense, example, loaders, args, seed)}
    print(f"seed {seed}: {time.time() - start:.0f}s", flush=True)
    return result


def mean_std(values) -> str:
    values = np.asarray([v for v in values if v is not None], dtype=float)
    return f"{values.mean():6.2f} ± {values.std(ddof=1) if len(values) > 1 else 0.0:4.2f}"


def print_tables(results: list[dict]) -> None:
    one = [r["one_shot"] for r in results]
    dense = mean_std(r["dense_accuracy"] for r in results)
    print(f"\ndense ResNet-20 on digits, {len(results)} seed(s): accuracy {dense} %")
    print(f"\none-shot l2 pruning, {np.mean([o['macs_reduction'] for o in one]):.2f}x fewer MACs "
          f"(no recovery: {mean_std(o['pruned_accuracy'] for o in one)} %)")
    print(f"{'method':<12}{'epochs':>8}   val accuracy %")
    for name in ONE_SHOT:
        print(f"{name:<12}{one[0][name]['epochs']:>8}   {mean_std(o[name]['accuracy'] for o in one)}")
    it = [r["iterative"] for r in results]
    print(f"\niterative pruning, {len(it[0]['silo']['cycle_lr'])} cycles "
          f"({np.mean([i['silo']['macs_reduction'] for i in it]):.2f}x fewer MACs)")
    print(f"{'schedule':<10}{'peak LR per cycle':>26}   val accuracy %   mean dead rate %   dead after pruning %")
    for name in (*ITERATIVE, "silo+ap"):
        lrs = ", ".join(f"{v:.4f}" for v in it[0][name]["cycle_lr"])
        dead = mean_std(np.nanmean([d for d in i[name]["dead_rate"]]) for i in it)
        after = mean_std(np.mean(i[name]["dead_after_pruning"]) for i in it)
        print(f"{name:<10}{lrs:>26}   {mean_std(i[name]['accuracy'] for i in it)}   {dead}      {after}")


def _paired(results, get_a, get_b) -> str:
    diffs = [get_a(r) - get_b(r) for r in results]
    return mean_std(diffs) + " points"


def print_claims(results: list[dict]) -> None:
    one = lambda name: (lambda r: r["one_shot"][name]["accuracy"])  # noqa: E731
    it = lambda name, key="accuracy": (lambda r: r["iterative"][name][key] if key == "accuracy"  # noqa: E731
                                       else float(np.mean(r["iterative"][name][key])))
    print("\npaired differences (a − b, mean ± std over seeds):")
    rows = [("Scratch-B − fine-tune (Liu et al.: >= 0)", one("scratch-b"), one("finetune")),
            ("Scratch-E − fine-tune", one("scratch-e"), one("finetune")),
            ("distill − fine-tune", one("distill"), one("finetune")),
            ("SILO − LR rewinding (Liu et al. 2022: > 0)", it("silo"), it("lrw")),
            ("SILO − cosine", it("silo"), it("cosine")),
            ("LR rewinding − cosine (Renda et al.: > 0)", it("lrw"), it("cosine")),
            ("ALLR − cosine (Zimmer et al.: > 0)", it("allr"), it("cosine")),
            ("AP: accuracy with − without", it("silo+ap"), it("silo")),
            ("AP: mean dead rate with − without (< 0 wanted)", it("silo+ap", "dead_rate"), it("silo", "dead_rate"))]
    for label, a, b in rows:
        print(f"  {label:<50} {_paired(results, a, b)}")


def plot(results: list[dict], out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    first, paths = results[0], []
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ONE_SHOT:
        ax.plot(range(1, len(first["one_shot"][name]["curve"]) + 1), first["one_shot"][name]["curve"], label=name)
    ax.set(xlabel="epoch", ylabel="val accuracy %", title=f"one-shot recovery (seed {first['seed']})")
    paths.append(_save(fig, ax, out / "one_shot_accuracy.png"))
    for key, ylabel in (("lr", "learning rate"), ("curve", "val accuracy %"), ("dead_rate", "dead-neuron rate %")):
        fig, ax = plt.subplots(figsize=(6, 4))
        names = ("silo", "silo+ap") if key == "dead_rate" else (*ITERATIVE, "silo+ap")
        for name in names:
            ax.plot(range(1, len(first["iterative"][name][key]) + 1), first["iterative"][name][key], label=name)
        ax.set(xlabel="epoch (all cycles)", ylabel=ylabel, title=f"iterative pruning (seed {first['seed']})")
        paths.append(_save(fig, ax, out / f"iterative_{key}.png"))
    return paths


def _save(fig, ax, path: Path) -> Path:
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = [run_seed(seed, args) for seed in args.seeds]
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=1))
    print_tables(results)
    print_claims(results)
    print("\nwrote", out / "results.json", *(str(p) for p in plot(results, out)))


if __name__ == "__main__":
    main()
