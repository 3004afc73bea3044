"""Rewrite: apply a Plan to a copy of the model."""
from structprune.rewrite.apply import rewrite_model
from structprune.rewrite.keep import component_keep, kept_indices, new_shape, validate_plan

__all__ = ["component_keep", "kept_indices", "new_shape", "rewrite_model", "validate_plan"]
