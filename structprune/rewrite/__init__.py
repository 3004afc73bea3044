"""Rewrite: apply a Plan to a copy of the model."""
from structprune.rewrite.apply import rewrite_model, sliced_on_read
from structprune.rewrite.keep import component_keep, kept_indices, new_shape, validate_plan
from structprune.rewrite.on_read import ReplacedOnRead

__all__ = ["ReplacedOnRead", "component_keep", "kept_indices", "new_shape", "rewrite_model", "sliced_on_read",
           "validate_plan"]
