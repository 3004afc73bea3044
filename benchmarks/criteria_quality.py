"""Criteria quality on scikit-learn's digits: our criteria vs Torch-Pruning's, one-shot.

Per model (MLP, VGG-BN, ResNet-20, MobileNetV2 from the zoo, 8x8 grayscale) and seed: train the
dense model (Adam, cosine), then prune to 2x and 4x fewer MACs with every criterion -- ours (l2,
dropnet, taylor, ispasp, coreset, spectral) and Torch-Pruning's magnitude, BN-scale and Taylor
(their own grouping and pruner, on the same trained weights) -- and measure validation accuracy
without fine-tuning: raw, after BatchNorm recalibration, and after least-squares reconstruction +
recalibration (Torch-Pruning's pruned channels are read back into a structprune plan for that).
Uniform per-group ratios, found by bisection on MACs (coreset allocates its own per-layer counts
from the same parameter budget, then the ratio is bisected on MACs too). Prints mean +- std tables
and the target check; writes a PNG (and results JSON) to --out.

    python benchmarks/criteria_quality.py                # 3 seeds (about 15-20 min on 2 busy cores)
    python benchmarks/criteria_quality.py --seeds 0      # one seed
"""
from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch_pruning as tp
from torch import nn
from torch.utils.data import DataLoader, Subset

import models_zoo
import structprune
from structprune.calibrate import apply_channel_scales, recalibrate_batchnorm, reconstruct
from structprune.criteria import Coreset, ScoringContext, SelectingCriterion, get_criterion
from structprune.criteria.views import group_views
from structprune.data import evaluate_accuracy, load_data
from structprune.rewrite import rewrite_model
from structprune.selection import Plan, select_plan

MODELS = {"mlp": ((64,), {}, 30), "vgg": ((1, 8, 8), {}, 15), "resnet20": ((1, 8, 8), {}, 15),
          "mobilenet_v2": ((1, 8, 8), {}, 15)}
OURS = ("l2", "dropnet", "taylor", "ispasp", "coreset", "spectral")
DATA_DRIVEN = ("dropnet", "taylor", "ispasp", "coreset", "spectral")
TP_CRITERIA = ("tp_magnitude", "tp_bn_scale", "tp_taylor")
MODES = ("raw", "recal", "recal+recon")
TARGETS = (2.0, 4.0)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--calib", type=int, default=512, help="calibration samples (from the train split)")
    parser.add_argument("--out", type=Path, default=Path("export/criteria_quality"))
    parser.add_argument("--threads", type=int, default=1)
    return parser.parse_args()


def create(name: str, shape) -> nn.Module:
    kw = {"in_features": shape[0]} if len(shape) == 1 else {"in_chans": shape[0], "image_size": shape[1]}
    return models_zoo.create(name, num_classes=10, **kw, **MODELS[name][1])


def train_dense(name: str, bundle, seed: int, cache: Path) -> nn.Module:
    """Adam 3e-3 with a cosine schedule; weights cached per (model, seed)."""
    torch.manual_seed(seed)
    model = create(name, bundle.input_shape)
    path = cache / f"{name}_seed{seed}.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    epochs = MODELS[name][2]
    opt = torch.optim.Adam(model.parameters(), 3e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * len(bundle.train))
    for _ in range(epochs):
        model.train()
        for x, y in bundle.train:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval()


def macs(model: nn.Module, example) -> float:
    return float(tp.utils.count_ops_and_params(copy.deepcopy(model).eval(), example)[0])


def bisect_ratio(macs_at, target_macs: float) -> float:
    """The smallest uniform ratio whose pruned model has at most target_macs."""
    lo, hi = 0.0, 0.95
    for _ in range(14):
        mid = 0.5 * (lo + hi)
        lo, hi = (lo, mid) if macs_at(mid) <= target_macs else (mid, hi)
    return hi


def uniform_plan(graph, ratio: float, scores=None) -> Plan:
    scores = scores or {g.id: np.zeros(g.size) for g in graph.groups}
    return select_plan(graph.groups, scores, ratio=ratio)


def our_plan(crit, views, ctx, graph, ratio: float, scores, cache: dict) -> Plan:
    """The planner's uniform counts; selecting criteria then choose (coreset also reallocates)."""
    plan = uniform_plan(graph, ratio, scores)
    if not isinstance(crit, SelectingCriterion):
        return plan
    counts = {g: len(k) for g, k in plan.keep.items() if g in scores}
    if isinstance(crit, Coreset):
        sel = crit.select(views, ctx, counts, sensitivities=cache.setdefault("sens", crit.sensitivities(views, ctx)))
    else:
        sel = crit.select(views, ctx, counts)
    return Plan({**plan.keep, **sel.keep}, plan.sizes, {**plan.meta, **sel.meta})


def evaluate_plan(dense, graph, plan, calib, val) -> dict[str, float]:
    """Accuracy raw / after BN recalibration / after reconstruction + recalibration."""
    out = {}
    pruned = rewrite_model(dense, graph, plan)
    apply_channel_scales(pruned, graph, plan)
    out["raw"] = evaluate_accuracy(pruned, val)
    recalibrate_batchnorm(pruned, calib)
    out["recal"] = evaluate_accuracy(pruned, val)
    pruned = rewrite_model(dense, graph, plan)
    apply_channel_scales(pruned, graph, plan)
    reconstruct(dense, pruned, graph, plan, calib)
    recalibrate_batchnorm(pruned, calib)
    out["recal+recon"] = evaluate_accuracy(pruned, val)
    return out


def run_ours(name, dense, example, graph, calib, val, ratios, seed) -> dict:
    views = group_views(graph, dense)
    ctx = ScoringContext(dense, example, calib, seed)
    results = {}
    for crit_name in OURS:
        if crit_name == "bn_scale" and not has_bn(dense):
            continue
        crit, cache = get_criterion(crit_name), {}
        scores = crit.score(views, ctx)
        for target in TARGETS:
            ratio = ratios[target]
            if isinstance(crit, Coreset):
                ratio = bisect_ratio(lambda r: macs(rewrite_model(dense, graph, our_plan(  # noqa: B023 - called at once
                    crit, views, ctx, graph, r, scores, cache)), example), ratios["dense"] / target)  # noqa: B023
            plan = our_plan(crit, views, ctx, graph, ratio, scores, cache)
            results[(target, crit_name)] = evaluate_plan(dense, graph, plan, calib, val)
    return results


def has_bn(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def tp_prune(dense, example, crit_name: str, ratio: float, calib) -> nn.Module:
    model = copy.deepcopy(dense).eval()
    importance = {"tp_magnitude": tp.importance.MagnitudeImportance(p=2),
                  "tp_bn_scale": tp.importance.BNScaleImportance(),
                  "tp_taylor": tp.importance.TaylorImportance()}[crit_name]
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    pruner = tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=ratio, ignored_layers=[head])
    if crit_name == "tp_taylor":
        model.zero_grad()
        for x, y in calib:
            nn.functional.cross_entropy(model(x), y).backward()
    pruner.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def plan_from_pruned(dense, pruned, graph) -> Plan | None:
    """Read which channels another pruner kept: match each group's 1-D members (bias, norm weights
    and statistics: sliced only along the group) of the pruned model to the dense model's."""
    keep = {}
    dense_t = dict(dense.named_parameters()) | dict(dense.named_buffers())
    pruned_t = dict(pruned.named_parameters()) | dict(pruned.named_buffers())
    for group in graph.prunable:
        ones = [m for m in group.members if dense_t[m.fqn].ndim == 1 and m.role != "in"]
        if not ones:
            return None
        rows_d = torch.stack([dense_t[m.fqn].detach() for m in ones], 1)
        rows_p = torch.stack([pruned_t[m.fqn].detach() for m in ones], 1)
        index = {tuple(r.tolist()): i for i, r in enumerate(rows_d)}
        kept = [index.get(tuple(r.tolist())) for r in rows_p]
        if None in kept or len(set(kept)) != len(kept):
            return None
        keep[group.id] = tuple(sorted(int(ones[0].positions[i]) for i in kept))
    return Plan(keep, {g.id: g.size for g in graph.groups})


def run_tp(name, dense, example, graph, calib, val, ratios) -> dict:
    results = {}
    for crit_name in TP_CRITERIA:
        if crit_name == "tp_bn_scale" and not has_bn(dense):
            continue
        for target in TARGETS:
            pruned = tp_prune(dense, example, crit_name, ratios[("tp", target)], calib)
            plan = plan_from_pruned(dense, pruned, graph)  # before recalibration changes the statistics
            res = {"raw": evaluate_accuracy(pruned, val)}
            recalibrate_batchnorm(pruned, calib)
            res["recal"] = evaluate_accuracy(pruned, val)
            if plan is not None:
                ours = rewrite_model(dense, graph, plan)
                reconstruct(dense, ours, graph, plan, calib)
                recalibrate_batchnorm(ours, calib)
                res["recal+recon"] = evaluate_accuracy(ours, val)
            results[(target, crit_name)] = res
    return results


def model_ratios(name, dense, example, graph, calib) -> dict:
    """Uniform ratios hitting each MACs target, for our rewrite and for Torch-Pruning's."""
    dense_macs = macs(dense, example)
    ratios = {"dense": dense_macs}
    for target in TARGETS:
        ratios[target] = bisect_ratio(lambda r: macs(rewrite_model(dense, graph, uniform_plan(graph, r)), example),
                                      dense_macs / target)
        ratios[("tp", target)] = bisect_ratio(lambda r: macs(tp_prune(dense, example, "tp_magnitude", r, calib),
                                                             example), dense_macs / target)
    return ratios


def run_model(name: str, seeds, args, table: dict) -> None:
    ratios = None
    for seed in seeds:
        t0 = time.time()
        bundle = load_data("digits", input_shape=MODELS[name][0], batch_size=64, seed=seed)
        dense = train_dense(name, bundle, seed, args.out / "cache")
        calib = DataLoader(Subset(bundle.train.dataset, range(args.calib)), batch_size=128)
        example = next(iter(calib))[0][:2]
        graph = structprune.analyze(dense, example)
        if ratios is None:
            ratios = model_ratios(name, dense, example, graph, calib)
            print(f"  {name}: uniform ratios " + ", ".join(
                f"{t:.0f}x ours {ratios[t]:.3f} / tp {ratios[('tp', t)]:.3f}" for t in TARGETS), flush=True)
        table.setdefault(("dense", name), []).append(evaluate_accuracy(dense, bundle.val))
        for key, res in {**run_ours(name, dense, example, graph, calib, bundle.val, ratios, seed),
                         **run_tp(name, dense, example, graph, calib, bundle.val, ratios)}.items():
            for mode, acc in res.items():
                table.setdefault((*key, mode, name), []).append(acc)
        print(f"  {name} seed {seed}: {time.time() - t0:.0f}s", flush=True)


def cell(values) -> str:
    if not values:
        return "n/a"
    return f"{np.mean(values):5.1f} ± {np.std(values):4.1f}"


def print_tables(table: dict, models) -> None:
    print("\ndense accuracy: " + "  ".join(f"{m} {cell(table[('dense', m)])}" for m in models))
    for target in TARGETS:
        print(f"\n=== {target:.0f}x fewer MACs, one-shot, validation accuracy % (mean ± std) ===")
        print(f"{'criterion':14s} {'mode':12s} " + " ".join(f"{m:>14s}" for m in models))
        for crit in OURS + TP_CRITERIA:
            for mode in MODES:
                print(f"{crit:14s} {mode:12s} " + " ".join(f"{cell(table.get((target, crit, mode, m))):>14s}"
                                                           for m in models))


def check_target(table: dict, models) -> bool:
    """At 4x: best of our data-driven (recal+recon) minus best TP (recal) >= 5 points, every model."""
    print("\n=== target: at 4x, best data-driven (recal+recon) beats best Torch-Pruning (recal) by >= 5 points ===")
    ok = True
    for m in models:
        ours = max((np.mean(table[k]), k[1]) for c in DATA_DRIVEN if (k := (4.0, c, "recal+recon", m)) in table)
        theirs = max((np.mean(table[k]), k[1]) for c in TP_CRITERIA if (k := (4.0, c, "recal", m)) in table)
        fair = max(((np.mean(table[k]), k[1]) for c in TP_CRITERIA if (k := (4.0, c, "recal+recon", m)) in table),
                   default=(float("nan"), "n/a"))
        margin = ours[0] - theirs[0]
        ok &= margin >= 5
        print(f"{m:14s} ours {ours[1]} {ours[0]:.1f}  tp {theirs[1]} {theirs[0]:.1f}  "
              f"margin {margin:+.1f}  {'PASS' if margin >= 5 else 'FAIL'}   "
              f"(tp + our recal+recon: {fair[1]} {fair[0]:.1f})")
    return ok


def plot(table: dict, models, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    crits = OURS + TP_CRITERIA
    fig, axes = plt.subplots(2, len(TARGETS), figsize=(12, 7), sharey=True)
    for row, mode in enumerate(("recal", "recal+recon")):
        for col, target in enumerate(TARGETS):
            ax, width = axes[row][col], 0.8 / len(crits)
            for i, crit in enumerate(crits):
                vals = [table.get((target, crit, mode, m), []) for m in models]
                ax.bar(np.arange(len(models)) + i * width, [np.mean(v) if v else 0 for v in vals], width,
                       yerr=[np.std(v) if v else 0 for v in vals], label=crit, hatch="//" if "tp_" in crit else "")
            ax.set_xticks(np.arange(len(models)) + 0.4 - width / 2, models)
            ax.set_title(f"{target:.0f}x MACs, {mode}")
            ax.set_ylabel("val accuracy %")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(crits), fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(path, dpi=120)


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    table: dict = {}
    t0 = time.time()
    for name in args.models:
        run_model(name, args.seeds, args, table)
    print_tables(table, args.models)
    ok = check_target(table, args.models)
    plot(table, args.models, args.out / "criteria_quality.png")
    (args.out / "results.json").write_text(json.dumps({" | ".join(map(str, k)): v for k, v in table.items()}, indent=1))
    print(f"\nseeds {args.seeds}; {time.time() - t0:.0f}s; wrote {args.out / 'criteria_quality.png'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
