"""Least-squares reconstruction: after pruning, refit each consumer layer whose input channels were
removed so that, on calibration data, the pruned layer reproduces the dense layer's output.

For a consumer with dense weight W (outputs kept by the plan) and pruned input rows X_p (from the
pruned network, so upstream errors are corrected too), the target is the dense pre-bias output
Y = X_d W^T of the dense network. We solve, by running sums over batches (bounded memory; see
`least_squares.py`),

    min_{W', c}  ||Y - X_p W'^T - 1 c^T||^2 + lam ||W' - W_0||^2,

where W_0 is W restricted to the kept inputs (so a huge ridge returns the plain pruned layer) and
lam = ridge * trace(X_p^T X_p) / d. The intercept c is fit only if the layer has a bias; it absorbs
the mean of what was removed (bias compensation). Without a bias, a following BatchNorm's
recalibration takes up the mean shift. Layers are refit one at a time in forward order, each one
fed by the already-refit network (as in ThiNet/He et al. 2017 channel pruning, with ridge).

Targets: "dense" (above) or "stream" (see `stream.py`): where the consumer's output is added to a
residual stream that a module reads, Y = O_p + (Z_d - Z_p) makes the pruned stream match the dense one
(earlier layers' errors included), rows weighted by 1 / var(Z_d) where that module normalises each
position; elsewhere the dense target. A plan may ask for its target and ridge in
`plan.meta["reconstruction"]` (the `obs` criterion does); explicit arguments win. Padded tokens (a dict
batch's `attention_mask`) are not rows.

Where the consumers lie in a chain of blocks (`chain.py`; for the stream target each consumer's reader
lies in its block or reads the block's output, as in pre-norm transformers) the layers are refit block
by block, and optional tuning by gradient follows each refit (`unit_tuning.py`) or each block
(`block_tuning.py`); otherwise each consumer is reached by a pass from the network's input. Consumers
called after the chain that lie in no container (a decoder's untied LM head reading a pruned hidden
width) do not break it: they are refit after the blocks, by passes from the input. Where a block's
output width was pruned, its tuning targets are the dense outputs on the channels the stream kept.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Iterable

import torch
from torch import nn

from structprune.calibrate.block_tuning import (
    BlockTune,
    TuneSettings,
    owns_parameters,
    stream_channels,
    tune_block,
)
from structprune.calibrate.chain import CONTAINERS, Chain, find_chain, replays, with_stream
from structprune.calibrate.layers import channel_last, form_of, input_rows, take_rows, weight_matrix
from structprune.calibrate.least_squares import Sums, empty_sums, refit_layer, with_ones
from structprune.calibrate.stream import (
    OUTPUT,
    Reader,
    find_reader,
    output_rows,
    reads_output_of,
    run_to_reader,
    stream_inputs,
)
from structprune.calibrate.tail import TailRows, block_outputs
from structprune.calibrate.unit_tuning import Unit, UnitRows, find_unit, tune_unit
from structprune.criteria.obs import PROBE_SAMPLES, RECONSTRUCTION_KEY
from structprune.criteria.readers import spread_weights
from structprune.criteria.taps import checked_weighing, multiply, real_shares, token_places
from structprune.data.batches import Batch, calibration_batches, take_first, token_mask
from structprune.data.recording import recording_of
from structprune.data.running import (
    Call,
    call_model,
    call_order,
    eval_mode,
    first_call,
    first_tensor,
    model_device,
    run_until,
)
from structprune.graph.channel_graph import ChannelGraph
from structprune.rewrite.keep import component_keep, kept_indices
from structprune.selection.plan import Plan


@dataclass(frozen=True)
class LayerFit:
    """One refit layer: its name and the relative output error before/after (on calibration data)."""

    name: str
    error_before: float
    error_after: float


@dataclass(frozen=True)
class ReconstructionReport:
    """Every refit layer, the consumers that could not be refit (with why), the blocks tuned by gradient,
    and how the layers were reached ("blocks": a chain replayed block by block, else "prefixes")."""

    layers: tuple[LayerFit, ...]
    skipped: tuple[tuple[str, str], ...]
    blocks: tuple[BlockTune, ...] = ()
    passes: str = "prefixes"
    untuned: str = ""  # why tuning was asked for and not run ("" where it ran or was not asked for)

    def to_json(self) -> dict:
        return {"layers": [vars(f) for f in self.layers], "skipped": [list(s) for s in self.skipped],
                "blocks": [vars(b) for b in self.blocks], "passes": self.passes, "untuned": self.untuned}


MAX_UNIT_ROWS = 65536  # rows kept per unit for tuning (inputs and targets: rows x width floats each)
NO_CHAIN = ("the refit layers do not lie in one chain of blocks (a ModuleList or Sequential whose blocks each read "
            "the previous one's output), and tuning runs block by block")
FROM_PLAN = "plan"  # reconstruct(max_samples=...): as plan.meta["reconstruction"] asks, else 1024


@dataclass(frozen=True)
class _Settings:
    """How each layer is refit: the target ("dense" or "stream"), ridge, row sampling, block tuning,
    and how rows count (`taps.WEIGHINGS`)."""

    target: str
    ridge: float
    max_rows: int
    generator: torch.Generator
    tune: TuneSettings | None = None
    weigh: str = "tokens"


@dataclass(frozen=True)
class _Job:
    """What every refit reads: both networks, the consumers in call order, their readers, kept axes."""

    dense: nn.Module
    pruned: nn.Module
    order: list[str]
    readers: dict[str, Reader]
    producers: dict[str, list[str]]
    kept: dict
    batches: list[Batch]
    settings: _Settings
    recorded: tuple = ()  # per batch: the dense readers' inputs an earlier pass recorded (`_recorded`), or None


def reconstruct(dense: nn.Module, pruned: nn.Module, graph: ChannelGraph, plan: Plan, loader: Iterable,
                *, ridge: float | None = None, target: str | None = None, max_samples: int | None | str = FROM_PLAN,
                tune_epochs: float | None = None, tune_lr: float | None = None, weigh: str | None = None,
                max_rows_per_batch: int = 8192, max_features: int = 8192, seed: int = 0) -> ReconstructionReport:
    """Refit, in place, the weights (and biases) of `pruned`'s consumer layers of every pruned group.
    `ridge` (default 1e-3), `target` ("dense", default, or "stream"), `max_samples` (default 1024,
    None: all) and `tune_epochs` / `tune_lr` (tuning by gradient after the refits, where the layers lie
    in a chain of blocks: each consumer with its unit on rows, see `unit_tuning`, else the whole block,
    see `block_tuning`; default 0: none, lr 1e-3) and `weigh` (how rows count, `taps.WEIGHINGS`: "tokens",
    the default, or "samples", each sample's real tokens sharing one weight): as given, else as the plan asks.

    >>> import torch, structprune
    >>> net = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    >>> x = torch.randn(64, 6)
    >>> graph = structprune.analyze(net, x[:2])
    >>> plan = Plan({"0.weight:0": (0, 1, 2, 3)}, {"0.weight:0": 8})
    >>> small = structprune.apply_plan(net, x[:2], plan, graph=graph)
    >>> report = reconstruct(net, small, graph, plan, [(x, None)])
    >>> report.layers[0].error_after <= report.layers[0].error_before
    True
    """
    asked = dict(plan.meta.get(RECONSTRUCTION_KEY) or {})
    target = target or asked.get("target", "dense")
    if target not in ("dense", "stream"):
        raise ValueError(f"reconstruction target must be 'dense' or 'stream', got {target!r}")
    ridge = float(asked.get("ridge", 1e-3) if ridge is None else ridge)
    max_samples = asked.get("max_samples", 1024) if max_samples == FROM_PLAN else max_samples
    epochs = float(asked.get("tune_epochs", 0) if tune_epochs is None else tune_epochs)
    weigh = checked_weighing(str(asked.get("weigh", "tokens") if weigh is None else weigh), "reconstruction")
    tune = TuneSettings(epochs, float(asked.get("tune_lr", 1e-3) if tune_lr is None else tune_lr), seed, weigh,
                        ridge) if epochs > 0 else None
    kept = kept_indices(graph, component_keep(graph, plan))
    names, skipped = _consumers(pruned, graph, plan, max_features)
    batches = list(calibration_batches(loader, max_samples, model_device(pruned), who="reconstruction"))
    if not names or not batches:
        return ReconstructionReport((), tuple(skipped))
    settings = _Settings(target, ridge, max_rows_per_batch, torch.Generator().manual_seed(seed), tune, weigh)
    with eval_mode(dense), eval_mode(pruned), torch.no_grad():
        order = call_order(pruned, batches[0].x, names)
        readers = _readers(pruned, order, take_first(batches[0].x, PROBE_SAMPLES)) if target == "stream" else {}
        job = _Job(dense, pruned, order, readers, _producers(graph, plan, order), kept, batches, settings,
                   _recorded(loader, dense, readers, order, batches))
        inside, trailing = _split_trailing(job)
        found = _chain(inside) if inside.order else None
        if found is None:
            why = NO_CHAIN if tune is not None else ""
            return ReconstructionReport(tuple(_refit_by_prefixes(job)), tuple(skipped), untuned=why)
        fits, tuned, untuned = _refit_by_blocks(inside, *found)
        if trailing.order:
            fits += _refit_by_prefixes(trailing)
    why = f"blocks {', '.join(untuned)}" if untuned else ""
    return ReconstructionReport(tuple(fits), tuple(skipped), tuple(tuned), "blocks", why)


def _readers(pruned: nn.Module, names: list[str], x) -> dict[str, Reader]:
    """The stream reader of each consumer that has one (see `stream.find_reader`)."""
    found = {name: find_reader(pruned, name, x) for name in names}
    return {name: reader for name, reader in found.items() if reader is not None}


def _recorded(loader, dense: nn.Module, readers: dict[str, Reader], order: list[str], batches: list[Batch]) -> tuple:
    """Per batch: the input of every consumer's reader in the dense network as an earlier pass of this job
    recorded it (obs's Hessian pass; `data.recording`), or None where the dense network has to run."""
    recording = recording_of(loader)
    if recording is None or not readers or any(name not in readers for name in order):
        return (None,) * len(batches)
    names = {readers[name].name for name in order}
    return tuple(recording.inputs_of(dense, batch.x, names) for batch in batches)


def _chain(job: _Job) -> tuple[Chain, dict[str, Reader]] | None:
    """The chain of blocks holding every consumer, if both networks replay it and each consumer's
    reader lies in the consumer's block or reads that block's output (a pre-norm transformer: the
    next block or the final norm); with each consumer's reader named within its block."""
    x = job.batches[0].x
    chain = find_chain(job.pruned, x, job.order)
    if chain is None or not replays(job.dense, chain, x):
        return None
    local = {name: _local_reader(job, chain, name) for name in job.readers}
    return (chain, local) if all(r is not None for r in local.values()) else None


def _split_trailing(job: _Job) -> tuple[_Job, _Job]:
    """The job on the consumers a chain of blocks may hold, and the job on the trailing ones: those called
    last that lie in no ModuleList or Sequential (a language model's untied `lm_head` reading a pruned
    hidden width), refit after the blocks by passes from the input."""
    containers = [name for name, module in job.pruned.named_modules() if name and isinstance(module, CONTAINERS)]
    split = len(job.order)
    while split and not any(job.order[split - 1].startswith(c + ".") for c in containers):
        split -= 1
    return tuple(dataclasses.replace(job, order=names, readers={n: r for n, r in job.readers.items() if n in names})
                 for names in (job.order[:split], job.order[split:]))


def _local_reader(job: _Job, chain: Chain, name: str) -> Reader | None:
    """`name`'s reader named within its block (`OUTPUT` where it reads the block's output), or None."""
    block, reader = chain.block_of(name), job.readers[name]
    if chain.block_of(reader.name) == block:
        return Reader(reader.name[len(block) + 1:], reader.normalises)
    if reads_output_of(job.pruned, block, reader.name, job.batches[0].x):
        return Reader(OUTPUT, reader.normalises)
    return None


def _refit_by_prefixes(job: _Job) -> list[LayerFit]:
    """Each consumer in call order, its rows from passes of both networks up to it (or its reader)."""
    inputs = [b.x for b in job.batches]
    streams = _dense_streams(job.dense, job.readers, inputs, job.batches)
    return [_refit_one(job, name, name, job.readers, (job.dense, job.pruned), (inputs, inputs), streams)[0]
            for name in job.order]


def _refit_by_blocks(job: _Job, chain: Chain,
                     local_readers: dict[str, Reader]) -> tuple[list[LayerFit], list[BlockTune], list[str]]:
    """Each block in order on the streams the block before it returned (dense and pruned): its
    consumers refit in call order, each tuned with its unit or (if asked) the block tuned after them;
    blocks after the last consumer are not run. Also the blocks whose tuning could not run, with why."""
    calls_d = [None if r is not None else first_call(job.dense, chain.blocks[0], b.x)  # None: recorded
               for r, b in zip(job.recorded, job.batches)]
    calls_p = [first_call(job.pruned, chain.blocks[0], b.x) for b in job.batches]
    fits, tuned, untuned = [], [], []
    last = max(chain.blocks.index(chain.block_of(n)) for n in job.order)
    for block in chain.blocks[:last + 1]:
        inside = [n for n in job.order if chain.block_of(n) == block]
        local = {n: n[len(block) + 1:] for n in inside}
        readers = {local[n]: local_readers[n] for n in inside if n in local_readers}
        dense_block, pruned_block = job.dense.get_submodule(block), job.pruned.get_submodule(block)
        units = _units(job, block, inside, readers, calls_p[0])
        tunes_block = bool(inside and not units) and job.settings.tune is not None \
            and owns_parameters(job.pruned, block)
        if tunes_block:  # its targets are the dense block's outputs on every batch
            calls_d = _every_call(job, block, calls_d)
        streams, outs_d = _dense_streams_and_outputs(dense_block, readers, calls_d, job.batches,
                                                     _recorded_in(job, inside, local, readers))
        tail = _tail(units, local, readers)
        for name in inside:
            unit = units.get(name)
            fit, rows = _refit_one(job, name, local[name], readers, (dense_block, pruned_block),
                                   (calls_d, calls_p), streams, unit, tail)
            fits.append(fit)
            if unit is not None:
                tuned.append(tune_unit(f"{block}.{unit.name}", pruned_block, unit, local[name], rows,
                                       job.settings.tune))
        targets = _kept_targets(job, block, outs_d, calls_p) if tunes_block else None
        if targets is None and tunes_block:
            untuned.append(f"{block} (its output width was pruned and no norm inside it says which channels stay)")
        if targets is not None:
            record, outs_p = tune_block(block, pruned_block, calls_p, targets, job.batches, job.settings.tune)
            tuned.append(record)
        else:
            outs_p = block_outputs(pruned_block, tail, calls_p)
        calls_d = [None if o is None else with_stream(c, o) for c, o in zip(calls_d, outs_d)]
        calls_p = [with_stream(c, o) for c, o in zip(calls_p, outs_p)]
    return fits, tuned, untuned


def _kept_targets(job: _Job, block: str, outs_d: list[torch.Tensor], calls_p: list) -> list[torch.Tensor] | None:
    """The dense block's outputs as targets of the pruned block: as they are, or where the block's output
    width was pruned (a decoder's hidden size), on the channels the pruned stream kept; None where that
    cannot be told."""
    with torch.no_grad():
        width = first_tensor(call_model(job.pruned.get_submodule(block), calls_p[0])).shape[-1]
    if width == outs_d[0].shape[-1]:
        return outs_d
    keep = stream_channels(job.dense, job.kept, block, outs_d[0].shape[-1], width)
    return None if keep is None else [o.index_select(-1, keep.to(o.device)) for o in outs_d]


def _every_call(job: _Job, block: str, calls: list) -> list[Call]:
    """`calls` of the dense `block`, with those of recorded batches (None) found by a pass of the network."""
    return [c if c is not None else first_call(job.dense, block, b.x) for c, b in zip(calls, job.batches)]


def _recorded_in(job: _Job, inside: list[str], local: dict[str, str], readers: dict[str, Reader]) -> list:
    """Per batch, the recorded dense streams of the block's consumers (by local name), or None."""
    return [None if r is None else {local[n]: r[job.readers[n].name] for n in inside if local[n] in readers}
            for r in job.recorded]


def _units(job: _Job, block: str, inside: list[str], readers: dict[str, Reader], call: Call) -> dict[str, Unit]:
    """With tuning asked: the unit of every consumer of `block` (see `unit_tuning`), or none at all when
    one consumer has none (the whole block is tuned instead). A unit needs the stream target and
    parameters used nowhere else."""
    if job.settings.tune is None:
        return {}
    pruned_block, units = job.pruned.get_submodule(block), {}
    for name in inside:
        local = name[len(block) + 1:]
        producers = [p[len(block) + 1:] for p in job.producers.get(name, []) if p.startswith(block + ".")]
        unit = find_unit(pruned_block, local, producers, call) if local in readers else None
        if unit is None or not all(owns_parameters(job.pruned, f"{block}.{n}") for n in (unit.name, local)):
            return {}
        units[name] = unit
    return units


def _tail(units: dict[str, Unit], local: dict[str, str], readers: dict[str, Reader]) -> TailRows | None:
    """Where a block's only consumer belongs to a unit: what to keep so that the block's new output can be
    computed from the unit alone (`tail.py`)."""
    if len(units) != 1 or len(local) != 1:
        return None
    (name, unit), = units.items()
    return TailRows(unit.name, unit.holds_consumer, local[name], readers[local[name]].name)


def _refit_one(job: _Job, name: str, local: str, readers: dict[str, Reader], parts: tuple[nn.Module, nn.Module],
               calls: tuple[list, list], streams: dict, unit: Unit | None = None,
               tail: TailRows | None = None) -> tuple[LayerFit, UnitRows | None]:
    """Consumer `name` (`local` within `parts`: the dense and pruned networks, or one block of each)
    refit from passes of the parts on `calls`; with a `unit`, also the rows it is tuned on (and, with a
    `tail`, what the block's output is computed from afterwards)."""
    (dense_part, pruned_part), (calls_d, calls_p) = parts, calls
    module = pruned_part.get_submodule(local)
    rows = None
    if local in readers:
        also = unit.name if unit is not None else None
        seen = (run_to_reader(pruned_part, local, readers[local].name, c, also) for c in calls_p)
        rows = [] if unit is not None else None
        dense_rows = _kept_stream(streams[local], module, job.kept.get(f"{name}.weight", {}))
        sums = _stream_sums(module, seen, dense_rows, readers[local], job.batches, job.settings, rows, tail)
    else:
        pairs = ((run_until(dense_part, cd, local), run_until(pruned_part, cp, local))
                 for cd, cp in zip(calls_d, calls_p))
        sums = _dense_sums(module, _dense_weight(dense_part.get_submodule(local), job.kept.get(f"{name}.weight", {})),
                           pairs, job.batches, job.settings)
    fit = _refit(module, name, sums, job.settings)
    return fit, (None if rows is None else _unit_rows(rows))


def _kept_stream(rows: list[torch.Tensor], module: nn.Module, axes: dict) -> list[torch.Tensor]:
    """The dense stream rows on the channels the pruned stream kept: those of the consumer's kept
    outputs (all of them unless the plan prunes the stream's width too, e.g. a decoder's hidden size)."""
    outputs = form_of(module).output_axis
    if outputs not in axes:
        return rows
    keep = torch.as_tensor(axes[outputs], dtype=torch.long)
    return [r[:, keep.to(r.device)] for r in rows]


def _unit_rows(parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]) -> UnitRows:
    inputs, targets, weights = zip(*parts)
    return UnitRows(torch.cat(inputs), torch.cat(targets), torch.cat(weights))


def _dense_streams(dense: nn.Module, readers: dict[str, Reader], inputs: list, batches: list[Batch]) -> dict[str, list]:
    """Per consumer with a reader: the dense network's stream rows (real tokens) of every batch, from
    one forward pass per batch."""
    return _dense_streams_and_outputs(dense, readers, inputs, batches)[0] if readers else {}


def _dense_streams_and_outputs(dense: nn.Module, readers: dict[str, Reader], inputs: list, batches: list[Batch],
                               recorded: list | None = None) -> tuple[dict[str, list], list[torch.Tensor | None]]:
    """`_dense_streams`, and the first output tensor of each pass (also the stream of the consumers
    whose reader is `OUTPUT`). Where an input is None the pass is not run: the streams are the batch's
    `recorded` ones (by consumer) and its output is None."""
    out: dict[str, list] = {name: [] for name in readers}
    inner = {name: r for name, r in readers.items() if r.name != OUTPUT}
    outputs = []
    for i, (x, batch) in enumerate(zip(inputs, batches)):
        seen, result = (recorded[i], None) if x is None else stream_inputs(dense, inner, x)
        outputs.append(None if x is None else first_tensor(result))
        for name in readers:
            module = dense.get_submodule(name)
            z = seen[name] if name in inner or x is None else outputs[-1]
            out[name].append(_real_rows(output_rows(module, z), z, module, batch).float())
    return out, outputs


def _real_rows(rows: torch.Tensor, like: torch.Tensor, module: nn.Module, batch: Batch) -> torch.Tensor:
    """`rows` without those of padded tokens (`like`: the tensor the rows were read from)."""
    if not channel_last(module):
        return rows
    valid = token_places(like, -1, token_mask(batch.x))
    return rows if valid is None else rows[valid.reshape(-1).to(rows.device)]


def _real_shares(like: torch.Tensor, module: nn.Module, batch: Batch, settings: _Settings) -> torch.Tensor | None:
    """Per real row of `like` (as `_real_rows` keeps them): its sample's share when rows are weighed by
    samples (`taps.token_shares`); None where every row counts once."""
    if settings.weigh != "samples" or not channel_last(module):
        return None
    return real_shares(like, -1, token_mask(batch.x))


def _consumers(pruned: nn.Module, graph: ChannelGraph, plan: Plan, max_features: int):
    """Names of the layers that read a pruned group on their input axis, and (name, why) of those
    that cannot be refit."""
    names: list[str] = []
    skipped: dict[str, str] = {}
    for gid in plan.pruned_groups():
        for member in graph.group(gid).members:
            owner, _, attr = member.fqn.rpartition(".")
            if member.role != "in" or attr != "weight" or owner in names or owner in skipped:
                continue
            why = _why_not(pruned.get_submodule(owner), member.axis, max_features) or _tied(pruned, owner)
            if why:
                skipped[owner] = why
            else:
                names.append(owner)
    return names, sorted(skipped.items())


def _producers(graph: ChannelGraph, plan: Plan, consumers: list[str]) -> dict[str, list[str]]:
    """Per consumer: the layers whose output channels (weight rows) form the pruned groups it reads."""
    found: dict[str, list[str]] = {}
    for gid in plan.pruned_groups():
        members = graph.group(gid).members
        readers = {m.fqn.rpartition(".")[0] for m in members if m.role == "in"} & set(consumers)
        made = [m.fqn.rpartition(".")[0] for m in members if m.role == "out" and m.fqn.endswith(".weight")]
        for name in readers:
            found.setdefault(name, [])
            found[name] += [p for p in made if p not in found[name]]
    return found


def _tied(model: nn.Module, name: str) -> str:
    """Why a layer sharing a tensor with another module is not refit (else ""): refitting it would
    rewrite that module too (an LM head tied to the input embedding), after the layers before were fit."""
    if owns_parameters(model, name):
        return ""
    return "its weight is tied to another module's (such as an LM head sharing the input embedding)"


def _why_not(module: nn.Module, axis: int, max_features: int) -> str:
    form = form_of(module)
    if form is None:
        return f"{type(module).__name__} is not a Linear, a transposed Conv1D or a groups=1 zero-padded Conv2d"
    if axis != form.input_axis:
        return f"pruned axis {axis} is not the input axis"
    features = weight_matrix(module).shape[1]
    return f"{features} input features exceed max_features={max_features}" if features > max_features else ""


def _refit(module: nn.Module, name: str, sums: Sums, settings: _Settings) -> LayerFit:
    return LayerFit(name, *refit_layer(module, sums, settings.ridge))


def _dense_weight(layer: nn.Module, axes: dict) -> torch.Tensor:
    """Dense weight rows for the kept outputs, all inputs: (kept_out, in_features * kernel)."""
    weight, outputs = weight_matrix(layer).double(), form_of(layer).output_axis
    if outputs in axes:
        weight = weight[torch.as_tensor(axes[outputs], dtype=torch.long, device=weight.device)]
    return weight


def _dense_sums(module, target_w, pairs, batches, settings: _Settings) -> Sums:
    """Sums for the dense target from (dense input, pruned input) of the consumer per batch."""
    sums = empty_sums(module, target_w.shape[0])
    for (x_d, x_p), batch in zip(pairs, batches):
        rows_d = _real_rows(input_rows(module, x_d), x_d, module, batch).double()
        rows_p = _real_rows(input_rows(module, x_p), x_p, module, batch).double()
        shares = _real_shares(x_p, module, batch, settings)
        pick = take_rows(rows_p, settings.max_rows, settings.generator)
        sums.add(with_ones(rows_p[pick], module), rows_d[pick] @ target_w.T, None if shares is None else shares[pick])
    return sums


def _stream_sums(module, seen, dense_rows, reader: Reader, batches, settings: _Settings,
                 unit_rows: list | None = None, tail: TailRows | None = None) -> Sums:
    """Sums for the stream target from (consumer input, its output, reader input, unit input) per batch:
    Y = O_p + (Z_d - Z_p) - bias, rows weighted where the reader normalises. `unit_rows`: a list that
    receives (unit input rows, Y + bias, weights) of the rows used; `tail`: keeps each batch's unit input
    and stream rest."""
    bias = module.bias.detach().double() if module.bias is not None else 0.0
    sums = empty_sums(module, weight_matrix(module).shape[0])
    caps = _unit_caps(batches) if unit_rows is not None else []
    for (x, out, z, u), z_d, batch in zip(seen, dense_rows, batches):
        rows = _real_rows(input_rows(module, x), x, module, batch)
        o_p = _real_rows(output_rows(module, out), out, module, batch).double()
        z_p = _real_rows(output_rows(module, z), z, module, batch).double()
        y = (o_p + (z_d.double() - z_p) - bias).float()  # products in float32, sums in float64
        weight = multiply(spread_weights(z_d) if reader.normalises else None, _real_shares(x, module, batch, settings))
        pick = take_rows(rows, settings.max_rows, settings.generator)
        sums.add(with_ones(rows[pick].float(), module), y[pick], None if weight is None else weight[pick])
        if unit_rows is not None:
            unit_rows.append(_unit_part(u, y + bias, weight, pick, module, batch, settings, caps[len(unit_rows)]))
        if tail is not None:
            tail.keep(u, z, out)
    return sums


def _unit_caps(batches: list[Batch]) -> list[int]:
    """Rows of each batch a unit keeps: all of them unless the batches' real tokens exceed MAX_UNIT_ROWS,
    then a share of MAX_UNIT_ROWS proportional to each batch's tokens (equal shares without a mask)."""
    masks = [token_mask(b.x) for b in batches]
    if any(mask is None for mask in masks):
        return [max(1, MAX_UNIT_ROWS // max(len(batches), 1))] * len(batches)
    counts = [int(mask.sum()) for mask in masks]
    total = sum(counts)
    return counts if total <= MAX_UNIT_ROWS else [max(1, MAX_UNIT_ROWS * c // total) for c in counts]


def _unit_part(u, target, weight, pick, module, batch, settings: _Settings, cap: int):
    """(unit input rows, target rows, weights) of one batch: the rows the refit used, at most `cap`
    of them (a seeded random choice)."""
    if len(pick) > cap:
        pick = pick[take_rows(pick.unsqueeze(1), cap, settings.generator)]
    rows = _real_rows(u.reshape(-1, u.shape[-1]), u, module, batch)[pick].detach().float()
    weights = torch.ones(len(pick), device=rows.device) if weight is None else weight[pick]
    return rows, target.float()[pick], weights
