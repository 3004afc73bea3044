"""Coverage side by side: does each tool prune every zoo model at one ratio and leave a model that runs?

For each model: structprune.compress (verified, or it raises), and Torch-Pruning's MetaPruner with its
group-L2 importance, default settings, the classifier ignored (and num_heads given for the ViT). A
Torch-Pruning result counts as working when the pruned model runs and keeps the output shape; we also
report how far its output moved from the dense model (no recovery either side).

    python benchmarks/coverage.py [--ratio 0.5]
"""
from __future__ import annotations

import argparse
import copy
import traceback

import torch
import torch_pruning as tp

import models_zoo
import structprune
from structprune.data.running import normalize_inputs
from structprune.graph.cost import count_params
from structprune.report.tables import markdown_table


def _run(model, inputs):
    args, kwargs = normalize_inputs(inputs)
    with torch.no_grad():
        out = model(*args, **kwargs)
    return out


def ours(name: str, ratio: float) -> str:
    model = models_zoo.create(name).eval()
    try:
        result = structprune.compress(model, models_zoo.example_inputs(name, batch=2), ratio=ratio)
    except Exception as exc:  # noqa: BLE001 - reported in the table
        return f"failed: {type(exc).__name__}"
    return f"verified, params {result.report.params_reduction:.2f}x fewer"


def torch_pruning(name: str, ratio: float) -> str:
    model = models_zoo.create(name).eval()
    inputs = models_zoo.example_inputs(name, batch=2)
    dense_out = _run(model, inputs)
    before = count_params(model)
    pruned = copy.deepcopy(model)
    heads = _heads(pruned)
    ignored = [[m for m in pruned.modules() if isinstance(m, torch.nn.Linear)][-1]]  # the output layer
    example = inputs if isinstance(inputs, torch.Tensor) else tuple(inputs.values())
    try:
        pruner = tp.pruner.MetaPruner(pruned, example, importance=tp.importance.GroupMagnitudeImportance(p=2),
                                      pruning_ratio=ratio, ignored_layers=ignored, num_heads=heads,
                                      prune_num_heads=bool(heads), prune_head_dims=False)
        pruner.step()
        _refresh_heads(pruned, pruner)
    except Exception as exc:  # noqa: BLE001
        return f"prune failed: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    try:
        out = _run(pruned, inputs)
    except Exception as exc:  # noqa: BLE001
        return f"pruned model fails to run: {type(exc).__name__}: {str(exc).splitlines()[0][:60]}"
    if out.shape != dense_out.shape:
        return f"wrong output shape {tuple(out.shape)}"
    after = count_params(pruned)
    if after >= before:
        return "ran, but nothing was pruned"
    return f"runs, params {before / after:.2f}x fewer (unverified)"


def _heads(model) -> dict:
    """num_heads per projection, as Torch-Pruning's ViT and BERT examples pass it."""
    heads = {}
    for m in model.modules():
        if hasattr(m, "qkv") and hasattr(m, "num_heads"):
            heads[m.qkv] = m.num_heads
        if hasattr(m, "num_attention_heads") and hasattr(m, "query"):
            heads.update({m.query: m.num_attention_heads, m.key: m.num_attention_heads,
                          m.value: m.num_attention_heads})
    return heads


def _refresh_heads(model, pruner) -> None:
    """The attribute update Torch-Pruning's examples do by hand after pruner.step()."""
    for m in model.modules():
        if hasattr(m, "qkv") and hasattr(m, "num_heads"):
            m.num_heads = pruner.num_heads[m.qkv]
            m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        if hasattr(m, "num_attention_heads") and hasattr(m, "query"):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.attention_head_size = m.query.out_features // m.num_attention_heads
            m.all_head_size = m.query.out_features


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    args = parser.parse_args()
    rows = []
    for name in models_zoo.list_models():
        try:
            rows.append([name, ours(name, args.ratio), torch_pruning(name, args.ratio)])
        except Exception:  # noqa: BLE001 - keep the table going
            rows.append([name, "harness error", traceback.format_exc().splitlines()[-1][:80]])
    print(f"ratio {args.ratio}; torch {torch.__version__}; torch-pruning {tp.__version__}")
    print(markdown_table(["model", "structprune", "Torch-Pruning"], rows))


if __name__ == "__main__":
    main()
