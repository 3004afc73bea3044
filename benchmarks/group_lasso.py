"""Group lasso + threshold pruning against l2 magnitude at the same MACs target, on digits (8x8 grayscale).

Per seed: train a zoo model on digits (SGD, one-cycle, --dense-epochs); then, at --target-macs, each arm gets
the same short fine-tune (--finetune-epochs of SGD, cosine, LR 0.01) after pruning:

- l2:            compress(dense, target_macs, criterion='l2') (global allocation, BatchNorm re-estimated)
- l2 + E plain:  the dense model trained --sparsity-epochs more without a penalty, then as l2 (the same extra
                 training compute as group lasso, so the comparison is not only "more epochs")
- group lasso:   --sparsity-epochs with the coupled group-lasso penalty (--lam), then one raw group-norm
                 threshold chosen by the same target (structprune.group_lasso.prune_sparse), BatchNorm re-estimated

Prints accuracy one-shot and after fine-tuning, mean ± std over seeds, and per-seed paired differences;
writes results.json to --out. Digits has a train and a validation split only: lambda was chosen on the
validation split that is also reported (say so when quoting numbers).

    python benchmarks/group_lasso.py --model resnet20 --seeds 1 2 3 --lam 0.1   # about 4 min on a busy core
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch

import models_zoo
from structprune.api import compress
from structprune.data import evaluate_accuracy, load_data
from structprune.group_lasso import prune_sparse, sparsify
from structprune.pipeline import calibration_loader
from structprune.recover import RecoveryConfig, recover
from structprune.recover.group_lasso import GroupLassoConfig
from structprune.recover.train import TrainPlan, train_epochs

DENSE_LR, SPARSITY_LR, FINETUNE_LR = 0.05, 0.01, 0.01
ARMS = ("l2", "l2 + E plain", "group lasso")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--dense-epochs", type=int, default=10)
    parser.add_argument("--sparsity-epochs", type=int, default=5)
    parser.add_argument("--lam", type=float, default=0.1, help="chosen on seed 0 among 0.03, 0.1, 0.3")
    parser.add_argument("--target-macs", type=float, default=0.25)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="export/benchmarks/group_lasso")
    return parser.parse_args()


def quiet(**fields) -> RecoveryConfig:
    return RecoveryConfig(progress=False, measure_dead_rate=False, **fields)


def train(model: torch.nn.Module, bundle, epochs: int, lr: float, schedule: str, seed: int) -> torch.nn.Module:
    """Train `model` in place (plain cross-entropy) and return it in eval mode."""
    config = quiet(epochs=epochs, lr=lr, schedule=schedule, seed=seed)
    train_epochs(model, bundle.train, bundle.val, config, TrainPlan(epochs, schedule, lr), desc="train")
    return model.eval()


def finetuned(result, bundle, args, seed: int) -> dict:
    """One-shot accuracy, accuracy after the shared fine-tune, and the achieved MACs fraction."""
    one_shot = evaluate_accuracy(result.model, bundle.val)
    config = quiet(method="finetune", epochs=args.finetune_epochs, lr=FINETUNE_LR, seed=seed)
    tuned = recover(result.model, bundle.train, bundle.val, config).model if args.finetune_epochs else result.model
    report = result.report
    return {"one_shot": one_shot, "accuracy": evaluate_accuracy(tuned, bundle.val),
            "macs_fraction": report.macs_after / report.macs_before}


def run_seed(args, bundle, example, seed: int) -> dict:
    torch.manual_seed(seed)
    model = models_zoo.create(args.model, in_chans=1, image_size=8, num_classes=10)
    dense = train(model, bundle, args.dense_epochs, DENSE_LR, "onecycle", seed)
    calib = calibration_loader(bundle)
    row = {"seed": seed, "dense": evaluate_accuracy(dense, bundle.val)}
    pruned = compress(dense, example, target_macs=args.target_macs, criterion="l2", seed=seed, data=calib)
    row["l2"] = finetuned(pruned, bundle, args, seed)
    longer = train(copy.deepcopy(dense), bundle, args.sparsity_epochs, SPARSITY_LR, "cosine", seed)
    row["plain_epochs_accuracy"] = evaluate_accuracy(longer, bundle.val)
    pruned = compress(longer, example, target_macs=args.target_macs, criterion="l2", seed=seed, data=calib)
    row["l2 + E plain"] = finetuned(pruned, bundle, args, seed)
    sparse = sparsify(dense, example, bundle.train, bundle.val, GroupLassoConfig(args.sparsity_epochs, args.lam),
                      training=quiet(lr=SPARSITY_LR, seed=seed))
    pruned = prune_sparse(sparse, example, target_macs=args.target_macs, seed=seed, data=calib)
    row["group lasso"] = finetuned(pruned, bundle, args, seed)
    row["sparsity"] = pruned.report.extra["sparsity"]
    return row


def stat(values: list[float]) -> str:
    return f"{np.mean(values):.2f} ± {np.std(values):.2f}"


def print_tables(rows: list[dict], args) -> None:
    print(f"\n{args.model} on digits, target_macs {args.target_macs}, {len(rows)} seeds, fine-tune "
          f"{args.finetune_epochs} epoch(s); dense {stat([r['dense'] for r in rows])} %")
    print("| arm | MACs kept | one-shot % | after fine-tune % |\n|---|---|---|---|")
    for arm in ARMS:
        print(f"| {arm} | {np.mean([r[arm]['macs_fraction'] for r in rows]):.3f} | "
              f"{stat([r[arm]['one_shot'] for r in rows])} | {stat([r[arm]['accuracy'] for r in rows])} |")
    for other in ARMS[:2]:
        diff = [r["group lasso"]["accuracy"] - r[other]["accuracy"] for r in rows]
        print(f"group lasso - {other}, after fine-tune, per seed: {[round(d, 2) for d in diff]} "
              f"(mean {np.mean(diff):+.2f})")
    for r in rows:
        s = r["sparsity"]
        print(f"seed {r['seed']}: sparsity val accuracy per epoch {[e['val_accuracy'] for e in s['history']]}, "
              f"penalty {s['penalty_before']:.1f} -> {s['history'][-1]['penalty']:.1f}, threshold "
              f"{s['threshold']:.4g}, {100 * s['below_threshold_share']:.1f}% of channels below it")


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    bundle = load_data("digits", input_shape=(1, 8, 8), seed=0)
    example = torch.zeros(1, 1, 8, 8)
    rows, start = [], time.perf_counter()
    for seed in args.seeds:
        rows.append(run_seed(args, bundle, example, seed))
        print(f"seed {seed} done ({time.perf_counter() - start:.0f} s)", flush=True)
    print_tables(rows, args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
