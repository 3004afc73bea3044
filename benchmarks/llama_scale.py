"""Scale: compress a Llama-architecture decoder of about 1B parameters from a saved Hugging Face folder
to a saved Hugging Face folder, on the CPU: FFN neurons -50 %, whole key/value groups -25 % (their
query heads with them), hidden width kept. Random weights built from the config (no download).

Prints the wall time of each step of the folder-to-folder job (load, analyze + select, rewrite +
verify + config update, save, read back and compare) and the peak RSS the job adds over the loaded
model, against the issue's targets (under 60 s, at most 1.0x the model's size added).

    python benchmarks/llama_scale.py                      # ~1.1B params (TinyLlama's shape), ~4.4 GB
    python benchmarks/llama_scale.py --layers 4 --quick   # a smaller one, to try it out

The dense folder is written once to --work (default /tmp/structprune_llama_scale) and reused.
"""
from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import structprune  # noqa: E402
from helpers import import_transformers  # noqa: E402  -- loads tvshim where this workplace needs it
from structprune.selection import Plan  # noqa: E402


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def dense_folder(args, transformers) -> Path:
    """The dense model saved with save_pretrained (built once, on the meta device then materialised)."""
    folder = Path(args.work) / f"dense_L{args.layers}_H{args.hidden}"
    if (folder / "config.json").exists():
        return folder
    config = transformers.LlamaConfig(
        vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.intermediate,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.kv_heads,
        max_position_embeddings=2048, tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("meta"):
        model = transformers.LlamaForCausalLM(config)
    model = model.to_empty(device="cpu")
    with torch.no_grad():
        for p in model.parameters():  # RoPE's inv_freq is not saved: from_pretrained recomputes it
            p.normal_(0.0, 0.02)
    model.save_pretrained(folder)
    return folder


def merged_plan(model, inputs, graph) -> Plan:
    """FFN groups at 0.5, attention (key/value) groups at 0.25, the hidden width kept."""
    hidden = ["model.embed_tokens", "model.norm", "lm_head"]
    ffn = structprune.select(model, inputs, graph, ratio=0.5, ignore=[*hidden, "model.layers.*.self_attn"])
    heads = structprune.select(model, inputs, graph, ratio=0.25, ignore=[*hidden, "model.layers.*.mlp"])
    keep = dict(ffn.keep)
    keep.update({g: k for g, k in heads.keep.items() if len(k) < heads.sizes[g]})
    return Plan(keep=keep, sizes=dict(ffn.sizes), meta=dict(ffn.meta))


def run(args) -> None:
    transformers = import_transformers()
    folder = dense_folder(args, transformers)
    torch.set_num_threads(args.threads)
    steps: list[tuple[str, float]] = []

    def step(name, fn):
        start = time.perf_counter()
        out = fn()
        steps.append((name, time.perf_counter() - start, peak_rss_bytes()))
        return out

    model = step("load folder", lambda: transformers.AutoModelForCausalLM.from_pretrained(folder).eval())
    model_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    with torch.no_grad():  # from_pretrained maps the file lazily: page every weight in, so the baseline is the
        for p in model.parameters():  # loaded model itself and the first step to read the weights is not charged
            p.sum()
    base_rss = peak_rss_bytes()
    ids = torch.randint(0, args.vocab, (1, args.seq), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    graph = step("analyze", lambda: structprune.analyze(model, inputs))
    plan = step("select", lambda: merged_plan(model, inputs, graph))
    result = step("rewrite + verify + config", lambda: structprune.compress(model, inputs, plan=plan, graph=graph))
    out_dir = Path(tempfile.mkdtemp(dir=args.work))
    step("save folder", lambda: result.model.save_pretrained(out_dir))
    if args.full_reload:
        reloaded = step("read back (full from_pretrained)", lambda: structprune.hf.from_pretrained(out_dir).eval())
        with torch.no_grad():
            diff = float((reloaded(**inputs).logits - result.model(**inputs).logits).abs().max())
    else:
        check = step("read back (hf.check_saved)", lambda: structprune.hf.check_saved(out_dir, result.model, inputs))
        assert check.ok, check.detail
        diff = check.max_abs_difference
    added = (peak_rss_bytes() - base_rss) / model_bytes
    total = sum(seconds for _, seconds, _ in steps)
    layer0 = (result.report.extra.get("hf_config") or {}).get("layers") or [{}]
    cfg = {**{k: getattr(result.model.config, k) for k in ("intermediate_size", "num_key_value_heads",
                                                           "num_attention_heads")}, **layer0[0]}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; dense "
          f"{sum(p.numel() for p in model.parameters()) / 1e6:,.0f}M params -> pruned "
          f"{sum(p.numel() for p in result.model.parameters()) / 1e6:,.0f}M "
          f"(layer 0: intermediate {args.intermediate} -> {cfg['intermediate_size']}, kv heads {args.kv_heads} -> "
          f"{cfg['num_key_value_heads']}, heads {args.heads} -> {cfg['num_attention_heads']})")
    print("\n| step | seconds | peak RSS added so far (x model) |\n|---|---|---|")
    for name, seconds, peak in steps:
        print(f"| {name} | {seconds:.1f} | {max(peak - base_rss, 0) / model_bytes:.2f} |")
    print(f"| **folder to folder** | **{total:.1f}** (target < 60) | |")
    print(f"\npeak RSS added over the loaded model: {added:.2f}x its {model_bytes / 2**30:.2f} GiB (target <= 1.0x)")
    hf_config = result.report.extra.get("hf_config") or {}
    print(f"config update ok: {hf_config.get('ok')}; loader: {hf_config.get('loader')}")
    print(f"reloaded folder vs pruned model: max abs logits difference {diff:.2e}; "
          f"verification {'ok' if result.report.verification['ok'] else 'FAILED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=22)
    parser.add_argument("--hidden", type=int, default=2048)
    parser.add_argument("--intermediate", type=int, default=5632)
    parser.add_argument("--heads", type=int, default=32)
    parser.add_argument("--kv-heads", type=int, default=4)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--seq", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default="/tmp/structprune_llama_scale")
    parser.add_argument("--quick", action="store_true", help="a 4-layer, 512-wide model (seconds)")
    parser.add_argument("--full-reload", action="store_true", help="read back with a full hf.from_pretrained (a "
                        "second copy of the weights) instead of hf.check_saved")
    args = parser.parse_args()
    if args.quick:
        args.layers, args.hidden, args.intermediate, args.heads, args.kv_heads, args.vocab = 4, 512, 1408, 8, 4, 1000
    Path(args.work).mkdir(parents=True, exist_ok=True)
    run(args)


if __name__ == "__main__":
    main()
