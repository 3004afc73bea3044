"""The channel-graph figure of `structprune inspect --graph`: the model's ops top to bottom in
topological order, each coloured by the channel groups its value carries, and a legend of the groups
(size; blocked ones hatched, with their reason).

It reads a networkx graph with the attributes `ChannelGraph.to_networkx()` sets (nodes: `kind`, `label`,
`module`, `groups`; `graph["groups"]`: the group table), not the analysis itself: report sits below graph.
Parameters, buffers and constants are left out of the picture (they are each op's weights, not data flow).
The layout is computed here from `networkx.topological_generations`: one row per generation, nodes in a
row ordered by where their inputs sit. Built on a bare matplotlib Figure (Agg canvas), like `plots.py`.
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import networkx as nx

from structprune.errors import StructpruneError, UsageError
from structprune.io.atomic import write_atomically
from structprune.io.probe import first_line
from structprune.report.prunable import top_blocked_reasons

GRAPH_FORMATS = ("svg", "png", "pdf")
HIDDEN_KINDS = frozenset({"parameter", "buffer", "constant"})
PALETTE = ("#4363d8", "#f58231", "#3cb44b", "#e6194b", "#911eb4", "#42d4f4", "#f032e6", "#bfef45", "#469990",
           "#9a6324", "#ffe119", "#800000", "#aaffc3", "#808000", "#000075", "#fabed4", "#dcbeff", "#ffd8b1")
BLOCKED_FILL, BLOCKED_EDGE, NO_GROUP = "#d0d0d0", "#c0392b", "#ffffff"
ROW_INCHES, COLUMN_INCHES, BOX_WIDTH, BOX_HEIGHT = 0.55, 2.0, 0.82, 0.6  # box sizes in row/column units
MARGIN, TITLE = 0.2, 0.5  # inches around the drawing and above it
LANE_OFFSETS = (0.0, 0.04, -0.04, 0.07, -0.07)  # lanes in one gap between columns (boxes leave 0.18)
LABEL_CHARS, REASON_CHARS, MAX_PIXELS = 30, 70, 30000


def check_figure_path(path: str | os.PathLike) -> Path:
    """The path, if its extension names a figure format and its folder exists; else UsageError.

    >>> check_figure_path("graph.svg").suffix
    '.svg'
    >>> try:
    ...     check_figure_path("graph.txt")
    ... except UsageError as exc:
    ...     print(exc.message)
    'graph.txt' does not end in .svg, .png or .pdf (the extension picks the format)
    """
    target = Path(path)
    if target.suffix.lower().lstrip(".") not in GRAPH_FORMATS:
        raise UsageError(f"'{path}' does not end in .svg, .png or .pdf (the extension picks the format)")
    if not target.parent.is_dir():
        raise UsageError(f"cannot write '{path}': the folder '{target.parent}' does not exist; create it first")
    if target.is_dir():
        raise UsageError(f"cannot write '{path}': it is a folder; name a file ending in .svg, .png or .pdf")
    return target


def layered_layout(G: nx.DiGraph) -> dict[str, tuple[int, int]]:
    """(column, -row) per node on an integer grid: the row is the node's topological generation (inputs
    on top); the column is the free one nearest the mean column of its inputs (a chain stays straight,
    a branch takes the next column), rows filled in the order of where their inputs sit.

    >>> layered_layout(nx.DiGraph([("x", "a"), ("x", "b"), ("a", "c"), ("b", "c")]))
    {'x': (0, 0), 'a': (0, -1), 'b': (1, -1), 'c': (0, -2)}
    """
    order = {n: i for i, n in enumerate(G)}
    column: dict[str, int] = {}
    row_of: dict[str, int] = {}
    for row, generation in enumerate(nx.topological_generations(G)):
        def wanted(n):
            inputs = [column[p] for p in G.predecessors(n)]
            return round(sum(inputs) / len(inputs)) if inputs else 0
        taken: set[int] = set()
        for n in sorted(generation, key=lambda n: (wanted(n), order[n])):
            column[n] = _nearest_free(wanted(n), taken)
            taken.add(column[n])
            row_of[n] = row
    return {n: (column[n], -row_of[n]) for n in G}


def _nearest_free(want: int, taken: set[int]) -> int:
    step = 0
    while True:
        for candidate in (want + step, want - step):
            if candidate not in taken:
                return candidate
        step += 1


def group_colours(groups: dict) -> dict[str, str]:
    """A colour per group id: prunable groups take the palette in order, blocked groups are grey."""
    colours, used = {}, 0
    for gid, row in groups.items():
        colours[gid] = PALETTE[used % len(PALETTE)] if row.get("prunable") else BLOCKED_FILL
        used += bool(row.get("prunable"))
    return colours


def channel_graph_figure(G: nx.MultiDiGraph, title: str = ""):
    """The figure for a `ChannelGraph.to_networkx()` graph (see the module docstring).

    >>> G = nx.MultiDiGraph(groups={"fc.weight:0": {"size": 8, "prunable": True, "why": ""}})
    >>> G.add_node("x", kind="input", label="x", module="", groups=())
    >>> G.add_node("linear", kind="op", label="linear", module="fc", groups=("fc.weight:0",))
    >>> G.add_edge("x", "linear")
    0
    >>> [t.get_text() for t in channel_graph_figure(G).legends[0].get_texts()]
    ['fc.weight:0 (8 channels)']
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # matplotlib loads only when drawing
    from matplotlib.figure import Figure

    shown = G.subgraph(n for n, kind in G.nodes(data="kind") if kind not in HIDDEN_KINDS)
    position = layered_layout(nx.DiGraph(shown))
    groups = G.graph.get("groups", {})
    colours = group_colours(groups)
    handles = _legend_handles(groups, colours)
    xs, ys = [x for x, _ in position.values()] or [0], [y for _, y in position.values()] or [0]
    # sizes in inches, set by hand (one draw at save; a layout engine would draw the figure twice)
    graph_width, graph_height = COLUMN_INCHES * (max(xs) - min(xs) + 1.2), ROW_INCHES * (1 - min(ys))
    legend_width = 0.8 + 0.055 * max((len(h.get_label()) for h in handles), default=10)
    width = MARGIN + graph_width + MARGIN + legend_width
    height = TITLE + max(graph_height, 0.17 * len(handles) + 0.4) + MARGIN
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    ax = figure.add_axes((MARGIN / width, 1 - (TITLE + graph_height) / height, graph_width / width,
                          graph_height / height))
    _draw_edges(ax, shown, position)
    for node, (x, y) in position.items():
        _draw_node(ax, G.nodes[node], x, y, groups, colours)
    ax.set_xlim(min(xs) - 0.6, max(xs) + 0.6)  # the lanes beside the outer columns too
    ax.set_ylim(min(ys) - 0.5, 0.5)
    ax.set_axis_off()
    figure.legend(handles=handles, loc="upper left", bbox_to_anchor=((2 * MARGIN + graph_width) / width,
                  1 - TITLE / height), fontsize=7, title="channel groups", title_fontsize=8, frameon=False)
    figure.suptitle(title or _headline(groups), fontsize=10, y=1 - 0.1 / height, va="top")
    return figure


def write_channel_graph_figure(G: nx.MultiDiGraph, path: str | os.PathLike, title: str = "") -> Path:
    """Draw G into `path` (format by extension) atomically, then read the file back and check it is a
    complete SVG/PNG/PDF; a file that is not is removed and the error raised."""
    from matplotlib import rc_context

    target = check_figure_path(path)
    fmt = target.suffix.lower().lstrip(".")
    figure = channel_graph_figure(G, title)
    width, height = figure.get_size_inches()
    dpi = min(100.0, MAX_PIXELS / max(width, height))  # Agg refuses images above 2**16 pixels a side
    metadata = {"Date": None} if fmt in ("svg", "pdf") else None  # with a fixed salt: same graph, same file
    settings = {"svg.fonttype": "none", "svg.hashsalt": "structprune"}  # SVG text stays text: searchable

    def save(stream) -> None:
        with rc_context(settings):
            figure.savefig(stream, format=fmt, dpi=dpi, metadata=metadata)

    try:
        write_atomically(target, save)
    except OSError as exc:
        raise UsageError(f"cannot write '{path}' ({type(exc).__name__}: {first_line(exc)}); "
                         "choose another path") from exc
    _check_written(target, fmt)
    return target


def _check_written(target: Path, fmt: str) -> None:
    data = target.read_bytes()
    valid = {"png": data.startswith(b"\x89PNG\r\n\x1a\n"), "pdf": data.startswith(b"%PDF-")}.get(fmt)
    if fmt == "svg":
        try:
            valid = ElementTree.fromstring(data).tag.endswith("svg")
        except ElementTree.ParseError:
            valid = False
    if not valid:
        target.unlink(missing_ok=True)
        raise StructpruneError(f"the channel graph written to '{target}' did not read back as a {fmt.upper()} "
                               f"({len(data)} bytes); it was removed")


def _draw_edges(ax, shown: nx.MultiDiGraph, position: dict) -> None:
    """An arrow between neighbouring rows goes straight. A longer one drops into the gap below its source
    row, runs down the gap beside its source column (boxes sit on columns, so it crosses none) and comes
    in through the gap above its target row; lanes that share a gap are set side by side."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as DrawnPath

    lanes: dict[tuple[float, int], int] = {}
    for source, target in sorted(set(shown.edges())):
        (x0, y0), (x1, y1) = position[source], position[target]
        points = [(x0, y0 - BOX_HEIGHT / 2), (x1, y1 + BOX_HEIGHT / 2)]
        if y0 - y1 > 1:
            gap = x0 + (0.5 if x1 >= x0 else -0.5)
            rows = range(int(y1), int(y0))
            used = max(lanes.get((gap, r), 0) for r in rows)
            lanes.update(((gap, r), used + 1) for r in rows)
            lane = gap + LANE_OFFSETS[used % len(LANE_OFFSETS)]
            points[1:1] = [(x0, y0 - 0.5), (lane, y0 - 0.5), (lane, y1 + 0.5), (x1, y1 + 0.5)]
        ax.add_patch(FancyArrowPatch(path=DrawnPath(points), arrowstyle="-|>", mutation_scale=7,
                                     color="#555555", linewidth=0.6, zorder=1))


def _draw_node(ax, attrs: dict, x: float, y: float, groups: dict, colours: dict) -> None:
    from matplotlib.patches import Rectangle

    ids = attrs.get("groups") or ()
    stripe = BOX_WIDTH / max(len(ids), 1)
    left, bottom = x - BOX_WIDTH / 2, y - BOX_HEIGHT / 2
    for i, gid in enumerate(ids or (None,)):
        blocked = gid is not None and not groups.get(gid, {}).get("prunable", True)
        ax.add_patch(Rectangle((left + i * stripe, bottom), stripe, BOX_HEIGHT, zorder=2, linewidth=0,
                               facecolor=colours.get(gid, NO_GROUP), hatch="////" if blocked else None,
                               edgecolor=BLOCKED_EDGE if blocked else "none"))
    ax.add_patch(Rectangle((left, bottom), BOX_WIDTH, BOX_HEIGHT, fill=False, linewidth=0.6, zorder=3,
                           edgecolor="#222222"))
    module = attrs.get("module") or ""
    text = attrs.get("label", "?") + (f"\n{_short(module)}" if module and attrs.get("kind") == "op" else "")
    ax.text(x, y, text, ha="center", va="center", fontsize=6, zorder=4, linespacing=1.1,
            bbox={"facecolor": "white", "alpha": 0.75, "edgecolor": "none", "pad": 0.6})


def _legend_handles(groups: dict, colours: dict) -> list:
    from matplotlib.patches import Patch

    handles = []
    for gid, row in groups.items():
        label = f"{gid} ({row.get('size', '?')} channels)"
        if not row.get("prunable", True):
            reasons = "; ".join(text for text, _ in top_blocked_reasons([{**row, "prunable": False}]))
            label += f", blocked: {_cut(reasons, REASON_CHARS)}"
        blocked = not row.get("prunable", True)
        handles.append(Patch(facecolor=colours[gid], hatch="////" if blocked else None,
                             edgecolor=BLOCKED_EDGE if blocked else colours[gid], label=label))
    return handles


def _headline(groups: dict) -> str:
    prunable = sum(bool(row.get("prunable")) for row in groups.values())
    return f"channel graph: {prunable} prunable groups, {len(groups) - prunable} blocked"


def _short(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else "…" + name[-(LABEL_CHARS - 1):]


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "…"
