"""Errors structprune raises: each names the stage, and the node or module where it can."""
from __future__ import annotations


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
    stage = "capture"


class AnalysisError(StructpruneError):
    stage = "analyze"


class PlanError(StructpruneError, ValueError):
    stage = "select"


class RewriteError(StructpruneError):
    stage = "rewrite"


class VerificationError(StructpruneError):
    stage = "verify"


class UsageError(StructpruneError, ValueError):
    """Bad user input (a file, a flag, a spec): the CLI prints it on one line and exits 2."""

    stage = "input"


class QualityError(StructpruneError):
    """The result exists but fails a quality bar (ONNX parity, accuracy gate): the CLI exits 1."""

    stage = "quality"
