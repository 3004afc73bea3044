"""Errors structprune raises: each names the stage, and the node or module where it can."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["AnalysisError", "CaptureError", "ExportError", "PlanError", "QualityError", "RewriteError",
           "StructpruneError", "UsageError", "VerificationError", "stage_errors"]


class StructpruneError(Exception):
    """Base class; `stage` says which pipeline stage failed."""

    stage = "structprune"

    def __init__(self, message: str) -> None:
        self.message = message
        super().__init__(f"[{self.stage}] {message}")

    def __reduce__(self):
        """Pickle (e.g. between torchrun ranks) from the bare message, so the stage prefix is not doubled."""
        return type(self), (self.message,)


class CaptureError(StructpruneError):
    """torch.export could not capture the model; the message names the module and what to try."""

    stage = "capture"


class AnalysisError(StructpruneError):
    """Finding the coupled channels of the captured graph failed; the message names the node."""

    stage = "analyze"


class PlanError(StructpruneError, ValueError):
    """Bad selection options, or a plan that does not fit the model (unknown group, wrong size)."""

    stage = "select"


class RewriteError(StructpruneError):
    """Slicing the model's tensors or refreshing its attributes failed."""

    stage = "rewrite"


class VerificationError(StructpruneError):
    """The pruned model failed verification (or ONNX parity) and is not returned."""

    stage = "verify"


class ExportError(StructpruneError):
    """Neither ONNX exporter produced a valid, batch-dynamic model; the message names both failures."""

    stage = "export"


class UsageError(StructpruneError, ValueError):
    """Bad user input (a file, a flag, a spec): the CLI prints it on one line and exits 2."""

    stage = "input"


class QualityError(StructpruneError):
    """The result exists but fails a quality bar (ONNX parity, accuracy gate): the CLI exits 1."""

    stage = "quality"


@contextmanager
def stage_errors(error: type[StructpruneError], doing: str) -> Iterator[None]:
    """Re-raise any exception that is not already a structprune error as `error`, saying what was being
    done (`doing`: the stage's work, with the module or group where known). No bare exception leaves
    a pipeline stage.

    >>> try:
    ...     with stage_errors(RewriteError, "slicing 'fc.weight'"):
    ...         raise IndexError("index 9 is out of bounds")
    ... except RewriteError as exc:
    ...     print(exc)
    [rewrite] slicing 'fc.weight' failed: IndexError: index 9 is out of bounds (a structprune bug or a model \
construct it does not support: please report it with the model)
    """
    try:
        yield
    except StructpruneError:
        raise
    except Exception as exc:  # noqa: BLE001 - typed and re-raised
        first = (str(exc).splitlines() or [""])[0][:300]
        raise error(f"{doing} failed: {type(exc).__name__}: {first} (a structprune bug or a model construct it "
                    "does not support: please report it with the model)") from exc
