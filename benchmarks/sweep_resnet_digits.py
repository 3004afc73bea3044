"""Issue 14's measured sweep: a ResNet-20 (zoo, 1x8x8 input) trained on scikit-learn's digits, pruned at 5
MACs reductions (1.5x to 16x) with l2, taylor, dropnet, ispasp and coreset beside Torch-Pruning's L2 and
random importance, 2 fine-tune epochs at every point, 3 seeds, the pruning limit estimated first.
It runs exactly `structprune sweep` with these flags, on one torch thread (about 15-20 minutes of CPU).

    python benchmarks/sweep_resnet_digits.py [--out export/sweep-resnet20-digits] [--seeds 3]
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from structprune.sweep import add_sweep_arguments

FLAGS = ["zoo:resnet20", "--arch-kwargs", '{"in_chans": 1, "image_size": 8, "num_classes": 10}', "--data", "digits",
         "--train-epochs", "6", "--criteria", "l2,taylor,dropnet,ispasp,coreset", "--points", "5",
         "--min-reduction", "1.5", "--max-reduction", "16", "--epochs", "2", "--force"]


def main() -> int:
    own = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    own.add_argument("--out", default="export/sweep-resnet20-digits")
    own.add_argument("--seeds", default="3")
    options = own.parse_args()
    torch.set_num_threads(1)
    args = add_sweep_arguments(argparse.ArgumentParser(prog="structprune sweep")).parse_args(
        [*FLAGS, "--out", options.out, "--seeds", options.seeds])
    start = time.process_time()
    code = args.handler(args)
    print(f"CPU time {time.process_time() - start:.0f}s", file=sys.stderr)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
