"""`structprune inspect`: a read-only view of a model (groups, blocked reasons, per-layer params and MACs)."""
from __future__ import annotations

from structprune.api import analyze
from structprune.graph.cost import group_dicts, layer_costs, macs_of, prunable_section
from structprune.io import load_model
from structprune.report.graph_figure import write_channel_graph_figure
from structprune.report.prunable import group_lines
from structprune.report.tables import format_table


def inspect_model(spec: str, figure: str | None = None, **load_kwargs) -> str:
    """Groups, blocked groups with reasons, and per-layer params and MACs, as text. Its group lines are
    the ones `compress` prints: prunable groups and their share of channels and MACs, top blocked reasons.
    `figure` (a .svg/.png/.pdf path): also draw the channel graph there, from the same analysis.

    >>> print(inspect_model("zoo:mlp").splitlines()[0])
    model mlp (zoo): 17,226 params, 17,024 MACs
    """
    loaded = load_model(spec, **load_kwargs)
    graph = analyze(loaded.model, loaded.example_inputs)
    costs = layer_costs(graph.captured, loaded.model)
    total_params = sum(p.numel() for p in {id(p): p for p in loaded.model.parameters()}.values())
    head = f"model {loaded.name} ({loaded.source}): {total_params:,} params, {macs_of(graph.captured):,} MACs"
    layers = format_table(["layer", "type", "params", "MACs"],
                          [[f or "(root)", kind, f"{p:,}", f"{m:,}"] for f, kind, p, m in costs])
    shares = "\n".join(group_lines(group_dicts(graph), prunable_section(graph)))
    parts = [head, shares, graph.summary(), layers]
    if figure is not None:
        path = write_channel_graph_figure(graph.to_networkx(), figure, title=f"{loaded.name}: channel graph")
        parts.append(f"channel graph: {path}")
    return "\n\n".join(parts)
