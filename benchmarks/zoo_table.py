"""The zoo table: every registered model compressed at one ratio, with its groups, blocked groups and
their reasons, params and MACs before -> after, and the verification verdict.

    python benchmarks/zoo_table.py --ratio 0.5 [--global]
"""
from __future__ import annotations

import argparse
from collections import Counter

import models_zoo
import structprune
from structprune.report.tables import markdown_table


def row(name: str, ratio: float, global_pruning: bool) -> list:
    model = models_zoo.create(name).eval()
    result = structprune.compress(model, models_zoo.example_inputs(name, batch=2), ratio=ratio,
                                  global_pruning=global_pruning)
    graph, rep = result.graph, result.report
    reasons = Counter(r.kind.value for g in graph.blocked for r in g.reasons)
    inexact = sum(1 for g in graph.prunable if not g.exact)
    verdict = "verified" if rep.verification["ok"] else "FAILED"
    err = rep.verification["masking_error"]
    return [name, len(graph.prunable), inexact, len(graph.blocked),
            ", ".join(f"{k} ×{v}" for k, v in sorted(reasons.items())),
            f"{rep.params_before:,} → {rep.params_after:,}", f"{rep.macs_before:,} → {rep.macs_after:,}",
            f"{rep.macs_reduction:.2f}x", f"{verdict} (masking err {err:.1e})" if err is not None else verdict]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ratio", type=float, default=0.5)
    parser.add_argument("--global", dest="global_pruning", action="store_true")
    args = parser.parse_args()
    rows = [row(name, args.ratio, args.global_pruning) for name in models_zoo.list_models()]
    print(markdown_table(["model", "prunable groups", "of which inexact", "blocked groups", "blocked because",
                          "params", "MACs", "MACs reduction", "verdict"], rows))


if __name__ == "__main__":
    main()
