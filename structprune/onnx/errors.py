"""Errors of the export stage."""
from __future__ import annotations

from structprune.errors import StructpruneError


class ExportError(StructpruneError):
    """Neither ONNX exporter produced a valid, batch-dynamic model; the message names both failures."""

    stage = "export"
