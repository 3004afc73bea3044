"""Read every written artifact back the way a user loads it, and check it against the pruned model.

No file is trusted until it has been read back: `model.pt2` with `torch.export.load(...).module()`
(without calling `.eval()`, as users do), `state_dict.pt` with `torch.load(weights_only=True)` and,
when the architecture can be rebuilt, loaded strictly into it, `plan.json` with `Plan.load`.
`model.onnx` is read back by onnxruntime in the export stage's parity check, and a Hugging Face
model's `hf/` folder with `structprune.hf.from_pretrained` (its tokenizer with AutoTokenizer). Outputs are compared
with the in-memory pruned model in eval mode at the example's batch and at one row more (and at a
shorter token sequence where that axis is free). The `artifacts` section of report.json records
each check; one failure fails the job before anything is published.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils import _pytree as pytree
from torch.utils.data import DataLoader

from structprune.capture.batch import batch_size, resize_batch, shorter_sequence
from structprune.capture.deploy import SavedPt2
from structprune.data import evaluate_accuracy
from structprune.data.running import eval_outputs, flat_outputs, model_logits, normalize_inputs
from structprune.errors import VerificationError
from structprune.hf import from_pretrained, without_cache
from structprune.hf.folder import same_tokens
from structprune.io.probe import first_line
from structprune.onnx.parity import Parity, output_parity
from structprune.selection import Plan

ARTIFACT_ATOL = 1e-4  # torch vs a re-loaded torch program: same kernels, decomposed ops may reorder sums
ARTIFACT_RTOL = 1e-3
ONNX_ATOL, ONNX_RTOL = 1e-4, 1e-3  # check_parity's defaults


@dataclass(frozen=True, eq=False)
class Written:
    """What a job wrote, and what to check it against: the pruned model, its plan, the saved
    `.pt2`, a way to rebuild the pruned architecture (None when the model had no `--arch`), and the
    ONNX parity section (None with `--no-onnx`); for a Hugging Face model, the folder it came from
    (`hf_source`) and the tokenizer files copied from it into `hf/`."""

    model: nn.Module
    plan: Plan
    saved: SavedPt2
    rebuild: Callable[[], nn.Module] | None
    onnx_parity: dict | None
    hf_source: str | None = None
    tokenizer_files: tuple[str, ...] = ()


@dataclass(frozen=True)
class ArtifactCheck:
    """One file read back: whether it matched, the worst error seen and where it was checked."""

    name: str
    ok: bool
    max_abs_error: float | None
    checked_at: tuple[str, ...]
    atol: float | None = None
    rtol: float | None = None
    detail: str = ""

    def to_json(self) -> dict:
        """The report row (the name is the section's key)."""
        row = asdict(self)
        del row["name"]
        return row


def check_pt2(path: Path, reference: nn.Module, saved: SavedPt2) -> ArtifactCheck:
    """Load `path` as a user would and compare it with `reference` on the shapes it must accept."""
    program = torch.export.load(path).module()
    cases = deployment_cases(saved)
    parities = [_parity(program, reference, inputs, as_loaded=True) for inputs in cases.values()]
    return _from_parities("model.pt2", cases, parities)


def check_state_dict(path: Path, reference: nn.Module, example_inputs: Any,
                     rebuild: Callable[[], nn.Module] | None) -> ArtifactCheck:
    """Weights-only load of `path`: every tensor equal to `reference`'s; loaded strictly into the
    rebuilt pruned architecture (when given), its outputs equal `reference`'s."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    mismatch = _state_mismatch(state, reference.state_dict())
    if mismatch or rebuild is None:
        return ArtifactCheck("state_dict.pt", not mismatch, 0.0 if not mismatch else None, ("tensors",),
                             detail=mismatch or "architecture not rebuilt (the model did not come from --arch)")
    model = rebuild()
    model.load_state_dict(state, strict=True)
    cases = {f"batch {n}": resize_batch(example_inputs, n) for n in _two_batches(example_inputs)}
    parities = [_parity(model, reference, inputs) for inputs in cases.values()]
    return _from_parities("state_dict.pt", cases, parities)


def check_plan(path: Path, plan: Plan) -> ArtifactCheck:
    """`Plan.load(path)` gives back the plan that made the model."""
    loaded = Plan.load(path)
    same = dict(loaded.keep) == dict(plan.keep) and dict(loaded.sizes) == dict(plan.sizes)
    return ArtifactCheck("plan.json", same, None, ("keep", "sizes"),
                         detail="" if same else "the plan read back differs from the plan applied")


def check_hf_folder(path: Path, reference: nn.Module, example_inputs: Any, source: str | None,
                    tokenizer_files: tuple[str, ...]) -> ArtifactCheck:
    """`structprune.hf.from_pretrained(path)` against `reference` at two batch sizes and a shorter token
    sequence; the copied tokenizer (if any) must encode like the source folder's."""
    try:
        model = from_pretrained(path)
    except Exception as exc:  # noqa: BLE001 - a folder that does not load is a failed check, not a crash
        return ArtifactCheck("hf/", False, None, ("load",), detail=f"does not load ({type(exc).__name__}: "
                                                                   f"{first_line(exc)})")
    cases = {f"batch {n}": resize_batch(example_inputs, n) for n in _two_batches(example_inputs)}
    shorter = shorter_sequence(example_inputs)
    cases.update({"sequence - 1": shorter} if shorter is not None else {})
    with without_cache(model, reference):
        check = _from_parities("hf/", cases, [_parity(model, reference, inputs) for inputs in cases.values()])
    if not tokenizer_files or source is None:
        return check
    same = same_tokens(path, source)
    return replace(check, ok=check.ok and same, checked_at=(*check.checked_at, "tokenizer"),
                   detail=check.detail or ("" if same else "the copied tokenizer encodes differently"))


def onnx_check(parity: dict) -> ArtifactCheck:
    """The export stage's onnxruntime read-back of model.onnx (the report's `onnx.parity`)."""
    cases = tuple(f"batch {n}" for n in parity["batch_sizes_checked"])
    cases += ("sequence - 1",) if parity.get("sequence_checked") else ()
    return ArtifactCheck("model.onnx", bool(parity["ok"]), parity["max_abs_error"], cases, ONNX_ATOL, ONNX_RTOL,
                         parity.get("detail", ""))


def read_back(folder: Path, written: Written) -> dict:
    """Read back every artifact in `folder` and check it against `written.model`; returns the
    report's `artifacts` section (VerificationError when one does not match)."""
    checks = [check_plan(folder / "plan.json", written.plan),
              check_state_dict(folder / "state_dict.pt", written.model, written.saved.example_inputs,
                               written.rebuild),
              check_pt2(folder / "model.pt2", written.model, written.saved)]
    if written.onnx_parity is not None:
        checks.append(onnx_check(written.onnx_parity))
    if written.hf_source is not None:
        checks.append(check_hf_folder(folder / "hf", written.model, written.saved.example_inputs, written.hf_source,
                                      written.tokenizer_files))
    return artifacts_section(checks)


def published_accuracy(path: Path, saved: SavedPt2, loader: DataLoader, reference: nn.Module) -> float:
    """Top-1 accuracy of `model.pt2` loaded as a user loads it. Batches are passed the way the
    archive was exported (keyword or positional, bound by `reference.forward`'s signature); a
    static-batch archive is fed batches of its own size, the last one padded with repeated rows."""
    program = CalledAsExported(torch.export.load(path).module(), inspect.signature(reference.forward),
                               keywords=isinstance(saved.example_inputs, dict))
    if not saved.dynamic_batch:
        program = AtFixedBatch(program, batch_size(saved.example_inputs))
    return evaluate_accuracy(program, loader)


class CalledAsExported(nn.Module):
    """Calls an exported program with inputs bound to the original forward's parameters, passed
    by keyword when the program was exported with keyword inputs, else by position."""

    def __init__(self, program: nn.Module, signature: inspect.Signature, keywords: bool) -> None:
        super().__init__()
        self.program, self.signature, self.keywords = program, signature, keywords

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        bound = self.signature.bind(*args, **kwargs)
        if self.keywords:
            return self.program(**bound.arguments)
        return self.program(*bound.args, **bound.kwargs)


class AtFixedBatch(nn.Module):
    """Runs a model that only accepts `batch` rows on any number of rows: chunks of `batch`, the
    last one padded by repeating its rows, outputs trimmed back (tensor outputs only)."""

    def __init__(self, model: nn.Module, batch: int) -> None:
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        inputs = kwargs or (args[0] if len(args) == 1 else args)
        rows = batch_size(inputs)
        outputs = []
        for start in range(0, rows, self.batch):
            chunk = _rows(inputs, start, min(start + self.batch, rows))
            outputs.append(model_logits(self.model, resize_batch(chunk, self.batch))[: batch_size(chunk)])
        return torch.cat(outputs)


def artifacts_section(checks: list[ArtifactCheck]) -> dict:
    """The report's `artifacts` section; raises VerificationError naming every file that failed."""
    failed = [c for c in checks if not c.ok]
    if failed:
        raise VerificationError("artifacts did not match the pruned model when read back, nothing was "
                                "published: " + "; ".join(f"{c.name}: {c.detail or 'outputs differ'} "
                                                          f"(max abs error {c.max_abs_error})" for c in failed))
    return {c.name: c.to_json() for c in checks}


def deployment_cases(saved: SavedPt2) -> dict[str, Any]:
    """Inputs a deployed artifact must accept: two batch sizes when the batch is free (else its
    own), and a shorter token sequence when that axis is free."""
    example = saved.example_inputs
    if not saved.dynamic_batch:
        return {f"batch {batch_size(example)} (static)": example}
    cases = {f"batch {n}": resize_batch(example, n) for n in _two_batches(example)}
    shorter = shorter_sequence(example) if saved.dynamic_sequence else None
    if shorter is not None:
        cases["sequence - 1"] = shorter
    return cases


def _rows(inputs: Any, start: int, stop: int) -> Any:
    return pytree.tree_map(lambda t: t[start:stop] if isinstance(t, torch.Tensor) and t.dim() else t, inputs)


def _two_batches(example_inputs: Any) -> tuple[int, int]:
    batch = batch_size(example_inputs)
    return batch, batch + 1


def _parity(artifact: nn.Module, reference: nn.Module, inputs: Any, as_loaded: bool = False) -> Parity:
    """Outputs of `artifact` against `reference` (eval mode). `as_loaded` runs the artifact exactly
    as it was loaded, without switching it to eval mode, as a user of a `.pt2` would."""
    expected = [t.detach().cpu().numpy() for t in eval_outputs(reference, inputs)]
    run = _outputs_as_loaded if as_loaded else eval_outputs
    try:
        actual = [t.detach().cpu().numpy() for t in run(artifact, inputs)]
    except Exception as exc:  # noqa: BLE001 - the artifact does not run: a failed check, not a crash
        return Parity(float("inf"), float("inf"), False, (), f"does not run ({type(exc).__name__}: {first_line(exc)})")
    return output_parity(actual, expected, atol=ARTIFACT_ATOL, rtol=ARTIFACT_RTOL)


def _outputs_as_loaded(model: nn.Module, inputs: Any) -> list[torch.Tensor]:
    """`eval_outputs` without the switch to eval mode."""
    args, kwargs = normalize_inputs(inputs)
    with torch.no_grad():
        return flat_outputs(model(*args, **kwargs))


def _from_parities(name: str, cases: dict[str, Any], parities: list[Parity]) -> ArtifactCheck:
    worst = max(p.max_abs_error for p in parities)
    detail = "; ".join(f"{case}: {p.detail}" for case, p in zip(cases, parities) if p.detail)
    return ArtifactCheck(name, all(p.ok for p in parities), worst, tuple(cases), ARTIFACT_ATOL,
                         ARTIFACT_RTOL, detail)


def _state_mismatch(state: Any, expected: dict[str, torch.Tensor]) -> str:
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a state_dict"
    if set(state) != set(expected):
        missing, extra = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
        return f"keys differ (missing {missing[:3]}, unexpected {extra[:3]})"
    for key, tensor in expected.items():
        if not torch.equal(state[key], tensor.detach().cpu()):
            return f"tensor {key} differs from the pruned model's"
    return ""
