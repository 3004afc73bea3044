"""Capture: one front end, torch.export, turning a model into an fx graph with shapes and FQNs."""
from structprune.capture.export import Captured, capture, lean_export

__all__ = ["Captured", "capture", "lean_export"]
