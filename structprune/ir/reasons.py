"""Typed reasons why a channel group cannot be pruned."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class ReasonKind(str, Enum):
    MODEL_INPUT = "model_input"
    MODEL_OUTPUT = "model_output"
    UNSUPPORTED_OP = "unsupported_op"
    DATA_DIMENSION = "data_dimension"
    TENSOR_CONSTANT = "tensor_constant"
    FIXED_SIZE = "fixed_size"
    MODULE_CONSTRAINT = "module_constraint"
    USER_IGNORED = "user_ignored"
    TOO_LARGE = "too_large"


_TEXT = {
    ReasonKind.MODEL_INPUT: "tied to a model input",
    ReasonKind.MODEL_OUTPUT: "tied to a model output",
    ReasonKind.UNSUPPORTED_OP: "passes through an op without a channel rule",
    ReasonKind.DATA_DIMENSION: "tied to a data (non-channel) dimension",
    ReasonKind.TENSOR_CONSTANT: "tied to a tensor constant",
    ReasonKind.FIXED_SIZE: "tied to a tensor created with a fixed size",
    ReasonKind.MODULE_CONSTRAINT: "a module cannot represent the pruned shape",
    ReasonKind.USER_IGNORED: "ignored by the user",
    ReasonKind.TOO_LARGE: "reshape too large to analyse",
}


@dataclass(frozen=True)
class Reason:
    """Why a group is blocked: the kind, the op or module involved, and the graph node."""

    kind: ReasonKind
    detail: str = ""
    node: str = ""

    def __str__(self) -> str:
        text = _TEXT[self.kind]
        if self.detail:
            text += f": {self.detail}"
        if self.node:
            text += f" (node {self.node})"
        return text

    def to_json(self) -> dict:
        return {"kind": self.kind.value, "detail": self.detail, "node": self.node, "text": str(self)}
