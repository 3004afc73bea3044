"""Issue 14's measured sweep: a ResNet-20 (zoo, 1x8x8 input) trained 6 epochs on scikit-learn's digits per
seed, pruned at 5 MACs reductions (1.5x to 16x) with l2, taylor, dropnet, ispasp and coreset beside
Torch-Pruning's L2 and random importance, 2 fine-tune epochs at every point, 2 seeds, the pruning limit
estimated first; plus the group_lasso curve (5 sparsity epochs, lambda 0.1, once per seed), Scratch-B of
l2's architectures (6 dense epochs x MACs reduction, the factor capped at 4; one curve only: Scratch-B
costs up to 24 epochs a point), and onnxruntime latency at batch 64 of every point of the first seed (each
pruned architecture is exported once, ~7 s each). It runs exactly `structprune sweep` with these flags, on
one torch thread (about 20 minutes of CPU; 2 seeds since the arms were added, 3 before: pass --seeds 3).

    python benchmarks/sweep_resnet_digits.py [--out export/sweep-resnet20-digits] [--seeds 2] [--scratch l2]
                                             [--round-to 8]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from structprune.sweep import add_sweep_arguments

FLAGS = ["zoo:resnet20", "--arch-kwargs", '{"in_chans": 1, "image_size": 8, "num_classes": 10}', "--data", "digits",
         "--train-epochs", "6", "--criteria", "l2,taylor,dropnet,ispasp,coreset", "--points", "5",
         "--min-reduction", "1.5", "--max-reduction", "16", "--epochs", "2", "--group-lasso", "0.1",
         "--sparsity-train", "5", "--scratch-max-factor", "4", "--latency", "--latency-batch", "64",
         "--latency-seeds", "1", "--force"]


def main() -> int:
    own = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    own.add_argument("--out", default="export/sweep-resnet20-digits")
    own.add_argument("--seeds", default="2")
    own.add_argument("--scratch", default="l2", help="curves whose architectures get Scratch-B (or 'all')")
    own.add_argument("--round-to", default="1", help="keep multiples of N channels at every point (default 1)")
    options = own.parse_args()
    torch.set_num_threads(1)
    args = add_sweep_arguments(argparse.ArgumentParser(prog="structprune sweep")).parse_args(
        [*FLAGS, "--out", options.out, "--seeds", options.seeds, "--scratch", options.scratch,
         "--round-to", options.round_to])
    start, wall = time.process_time(), time.perf_counter()
    code = args.handler(args)
    print(f"CPU time {time.process_time() - start:.0f}s, wall {time.perf_counter() - wall:.0f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
