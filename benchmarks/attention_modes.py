"""Whole heads or per-head dims: which attention unit keeps more accuracy, ours and Torch-Pruning's.

A zoo ViT (8x8 digits, patch 1 -> 64 tokens, 4 heads x 8 dims, 2 blocks) is trained per seed; then only
its attention (the qkv rows and proj columns) is pruned by `--ratio`, once by whole heads and once by
per-head dims, with L2 magnitude -- ours (attention="heads" / "head_dims") and Torch-Pruning's
(MetaPruner with prune_num_heads / prune_head_dims, every other layer ignored, head attributes refreshed
as its ViT example does). Prints validation accuracy without fine-tuning and after `--epochs` of
distillation from the dense model (mean +- std over seeds), plus params, in one table.

    python benchmarks/attention_modes.py                 # 3 seeds, ratio 0.5 (about 2 min)
    python benchmarks/attention_modes.py --seeds 0 --ratio 0.25
"""
from __future__ import annotations

import argparse
import statistics

import torch
import torch_pruning as tp
from torch import nn

import models_zoo
import structprune
from structprune.data import evaluate_accuracy, load_data
from structprune.recover import RecoveryConfig, recover
from structprune.report.tables import format_table
from structprune.selection import Plan

VIT = dict(in_chans=1, image_size=8, num_classes=10, embed_dim=32, depth=2, num_heads=4)
MODES = ("heads", "head_dims")


def train_dense(bundle, seed: int, epochs: int) -> nn.Module:
    """The zoo ViT trained from scratch with recovery's trainer (finetune = plain training), AdamW, cosine."""
    torch.manual_seed(seed)
    config = RecoveryConfig(method="finetune", epochs=epochs, optimizer="adamw", lr=3e-3, weight_decay=1e-4,
                            seed=seed, measure_dead_rate=False, progress=False)
    return recover(models_zoo.create("vit", **VIT), bundle.train, bundle.val, config).model.eval()


def attention_only(plan: Plan, graph) -> Plan:
    """The plan restricted to groups of qkv rows (heads or head dims); every other group stays whole."""
    attention = {g.id for g in graph.groups
                 if any(m.fqn.endswith("attn.qkv.weight") and m.axis == 0 for m in g.members)}
    keep = {g: (k if g in attention else tuple(range(plan.sizes[g]))) for g, k in plan.keep.items()}
    return Plan(keep, plan.sizes, plan.meta)


def ours(dense: nn.Module, example, mode: str, ratio: float) -> nn.Module:
    graph = structprune.analyze(dense, example, attention=mode)
    plan = attention_only(structprune.select(dense, example, graph, ratio=ratio, criterion="l2"), graph)
    return structprune.apply_plan(dense, example, plan, graph=graph)


def torch_pruning(dense: nn.Module, example, mode: str, ratio: float) -> nn.Module:
    import copy

    model = copy.deepcopy(dense)
    attns = [m for m in model.modules() if hasattr(m, "qkv") and hasattr(m, "num_heads")]
    qkvs = {a.qkv for a in attns}
    ignored = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d, nn.LayerNorm)) and m not in qkvs]
    pruner = tp.pruner.MetaPruner(model, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                  pruning_ratio=ratio, ignored_layers=ignored,
                                  num_heads={a.qkv: a.num_heads for a in attns},
                                  prune_num_heads=mode == "heads", prune_head_dims=mode == "head_dims",
                                  head_pruning_ratio=ratio)
    pruner.step()
    for a in attns:
        a.num_heads = pruner.num_heads[a.qkv]
        a.head_dim = a.qkv.out_features // (3 * a.num_heads)
    return model.eval()


def params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def measure(dense, prune, mode, ratio, bundle, example, epochs) -> dict:
    small = prune(dense, example, mode, ratio)
    raw = evaluate_accuracy(small, bundle.val)
    tuned = recover(small, bundle.train, bundle.val, RecoveryConfig(epochs=epochs, optimizer="adamw", lr=1e-3,
                                                                    weight_decay=1e-4, progress=False), dense=dense)
    return {"raw": raw, "tuned": tuned.final_val_accuracy, "params": params(small),
            "shape": _shape(small)}


def _shape(model: nn.Module) -> str:
    a = next(m for m in model.modules() if hasattr(m, "qkv"))
    return f"{a.num_heads}x{a.head_dim}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--dense-epochs", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=3, help="distillation epochs after pruning")
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows: dict[tuple[str, str], list[dict]] = {}
    dense_acc = []
    for seed in args.seeds:
        bundle = load_data("digits", input_shape=(1, 8, 8), batch_size=64, seed=seed)
        dense = train_dense(bundle, seed, args.dense_epochs)
        dense_acc.append(evaluate_accuracy(dense, bundle.val))
        example = next(iter(bundle.val))[0][:2]
        for tool, prune in (("structprune", ours), ("Torch-Pruning", torch_pruning)):
            for mode in MODES:
                rows.setdefault((tool, mode), []).append(
                    measure(dense, prune, mode, args.ratio, bundle, example, args.epochs))
    print(f"ViT on digits, attention pruned by {args.ratio} (qkv rows + proj columns), {len(args.seeds)} seeds; "
          f"dense accuracy {_stat(dense_acc)} %, {params(dense):,} params (heads x head_dim = 4x8)")
    table = [[tool, mode, runs[0]["shape"], f"{runs[0]['params']:,}", _stat([r["raw"] for r in runs]),
              _stat([r["tuned"] for r in runs])] for (tool, mode), runs in rows.items()]
    print(format_table(["tool", "unit", "heads x dim", "params", "accuracy, no fine-tune %",
                        f"after {args.epochs} distill epochs %"], table))


def _stat(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f}"


if __name__ == "__main__":
    main()
