"""Capture: one front end, torch.export, turning a model into an fx graph with shapes and FQNs."""
from structprune.capture.export import (
    Captured,
    capture,
    eval_mode,
    lean_export,
    normalize_inputs,
)

__all__ = ["Captured", "capture", "eval_mode", "lean_export", "normalize_inputs"]
