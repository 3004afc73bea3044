"""Fingerprints of what compress decides and writes, per zoo model: the plan JSON, the pruned
state_dict's bytes, and the channel graph's summary, each as a short sha256. Run it before and after a
refactor and diff the outputs: a behaviour-preserving change leaves every line identical.

    python benchmarks/plan_fingerprints.py > /tmp/before.txt
    ... refactor ...
    python benchmarks/plan_fingerprints.py > /tmp/after.txt && diff /tmp/before.txt /tmp/after.txt
"""
from __future__ import annotations

import argparse
import hashlib

import torch

import models_zoo
import structprune


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def state_dict_digest(model: torch.nn.Module) -> str:
    """The sha256 of every state_dict entry's name, dtype, shape and raw bytes, in key order."""
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().contiguous().cpu().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def fingerprint(name: str, ratio: float, criterion: str) -> str:
    torch.manual_seed(0)
    model = models_zoo.create(name).eval()
    result = structprune.compress(model, models_zoo.example_inputs(name, batch=2), ratio=ratio,
                                  criterion=criterion)
    return " ".join([name, f"plan={digest(result.plan.to_json().encode())}",
                     f"state_dict={state_dict_digest(result.model)}",
                     f"graph={digest(result.graph.summary().encode())}",
                     f"params={result.report.params_after}", f"macs={result.report.macs_after}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--criterion", default="l2")
    parser.add_argument("--only", default="", help="comma-separated zoo model names")
    args = parser.parse_args()
    names = [n for n in models_zoo.list_models() if not args.only or n in args.only.split(",")]
    for name in names:
        print(fingerprint(name, args.ratio, args.criterion), flush=True)


if __name__ == "__main__":
    main()
