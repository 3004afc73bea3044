"""Label-free distillation of encoders whose output is not class logits (BERT-style hidden states,
sentence embeddings): read the states a model returns, pool them over the real (unpadded) tokens,
and measure how far the pruned model's embeddings are from the dense model's.

Notation: s, t are the student's and the teacher's final states, (batch, tokens, width) or, for a
model that returns one embedding per sample, (batch, width); m is the attention mask (1 = real
token, 0 = padding); p = Σ m·s / Σ m is the mask-weighted mean-pooled embedding (the
sentence-transformers convention, which all-MiniLM-L6-v2 uses; BERT's `pooler_output`, a tanh
layer over [CLS], is not what sentence encoders are used through and is ignored).

The loss is  a·(1 − cos(p_s, p_t)) + b·‖p_s − p_t‖² / ‖p_t‖² + c·Σ_m ‖s − t‖² / Σ_m ‖t‖²
(batch means; the squared errors are relative to the teacher's energy, so a, b, c weigh terms of
the same scale whatever the encoder's activation magnitudes). Padding positions enter no term.
Fidelity, the validation metric without labels, is the mean cos(p_s, p_t) over samples.

When the student's output width differs from the teacher's (the hidden width itself was pruned and
the output is the hidden state), the student is compared through a linear map W: width_s → width_t
(`ProjectedStudent`), initialised by least squares on training batches and trained with the student;
recovery drops it afterwards and returns the plain student.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import skip_init

from structprune.data.batches import split_batch, to_device
from structprune.data.running import call_model, eval_mode, model_device

MASK_KEY = "attention_mask"


def states_of(output: Any) -> torch.Tensor:
    """The final states of a model output: its `last_hidden_state` (attribute of a Hugging Face
    ModelOutput, or key of a dict), a tensor output, or the first item of a tuple/list; an error
    naming the output otherwise.

    >>> states_of((torch.zeros(2, 5, 8), torch.zeros(2, 8))).shape
    torch.Size([2, 5, 8])
    """
    found = getattr(output, "last_hidden_state", None)
    if found is None and isinstance(output, Mapping):
        found = output.get("last_hidden_state")
    if found is None and isinstance(output, (tuple, list)) and output:
        found = output[0]
    if found is None and isinstance(output, torch.Tensor):
        found = output
    if not isinstance(found, torch.Tensor) or found.dim() not in (2, 3):
        raise TypeError(f"cannot read embeddings from the model's output, a {type(output).__name__}: return the "
                        "final states (batch, tokens, width) or embeddings (batch, width) as a tensor, the first "
                        "item of a tuple, or `last_hidden_state` of a ModelOutput/dict")
    return found


def token_mask(inputs: Any, states: torch.Tensor) -> torch.Tensor:
    """(batch, tokens) float mask of the positions that count: the `attention_mask` entry of dict
    inputs when it fits the states, else every position (for (batch, width) states: one per sample)."""
    mask = inputs.get(MASK_KEY) if isinstance(inputs, Mapping) else None
    if states.dim() == 3 and isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(states.shape[:2]):
        return mask.to(states.dtype)
    return states.new_ones(states.shape[:-1] if states.dim() == 3 else (states.shape[0], 1))


def mean_pooled(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean over tokens (batch, width); (batch, width) states are returned as they are.

    >>> mean_pooled(torch.tensor([[[1.0], [3.0], [100.0]]]), torch.tensor([[1.0, 1.0, 0.0]])).tolist()
    [[2.0]]
    """
    if states.dim() == 2:
        return states
    weights = mask.unsqueeze(-1)
    return (states * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)


def _relative_squared_error(student: torch.Tensor, teacher: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    error = ((student - teacher) ** 2).sum(dim=-1)
    energy = (teacher ** 2).sum(dim=-1)
    return (error * weights).sum() / (energy * weights).sum().clamp_min(1e-12)


@dataclass(frozen=True)
class EmbeddingLoss:
    """a·(1 − cos) of the pooled embeddings + b·relative MSE of the pooled embeddings + c·relative
    MSE of the token states over real tokens (see the module's notation). Returns the loss and the
    per-sample cosines (detached), the fidelity of the batch.

    >>> s, mask = torch.randn(2, 4, 8), torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    >>> loss, cosines = EmbeddingLoss()(s, s, mask)
    >>> abs(float(loss)) < 1e-6, torch.allclose(cosines, torch.ones(2))
    (True, True)
    """

    pooled_cosine: float = 1.0
    pooled_mse: float = 0.0
    token_mse: float = 1.0

    def __call__(self, student: torch.Tensor, teacher: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if student.shape != teacher.shape:
            raise ValueError(f"student states {tuple(student.shape)} and teacher states {tuple(teacher.shape)} "
                             "differ; a pruned output width is compared through ProjectedStudent")
        p_s, p_t = mean_pooled(student, mask), mean_pooled(teacher, mask)
        cosines = F.cosine_similarity(p_s, p_t, dim=-1, eps=1e-8)
        loss = self.pooled_cosine * (1.0 - cosines).mean()
        if self.pooled_mse:
            loss = loss + self.pooled_mse * _relative_squared_error(p_s, p_t, torch.ones_like(cosines))
        if self.token_mse:
            loss = loss + self.token_mse * _relative_squared_error(student, teacher, mask if student.dim() == 3
                                                                   else torch.ones_like(cosines))
        return loss, cosines.detach()


class ProjectedStudent(nn.Module):
    """The student with a linear map from its output width to the teacher's, trained jointly with it;
    recovery returns `.model` and drops the map. Its forward returns the mapped final states."""

    def __init__(self, model: nn.Module, projection: nn.Linear) -> None:
        super().__init__()
        self.model = model
        self.projection = projection

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.projection(states_of(self.model(*args, **kwargs)))


def fit_projection(student: nn.Module, teacher: nn.Module, loader: Iterable, *, max_batches: int = 4,
                   ridge: float = 1e-3) -> nn.Linear:
    """A Linear(width_s → width_t) fitted by ridge least squares from the student's real-token states
    to the teacher's on the first `max_batches` batches (eval mode, no grad): a start that already
    compares like with like, instead of a random map."""
    xs, ys, dtype = [], [], torch.float32
    device = model_device(student)
    with eval_mode(student), eval_mode(teacher), torch.no_grad():
        for index, batch in enumerate(loader):
            if index >= max_batches:
                break
            inputs = to_device(split_batch(batch)[0], device)
            s, t = states_of(call_model(student, inputs)), states_of(call_model(teacher, inputs))
            dtype = s.dtype
            keep = token_mask(inputs, t).reshape(-1) > 0
            xs.append(s.reshape(-1, s.shape[-1])[keep].double())
            ys.append(t.reshape(-1, t.shape[-1])[keep].double())
    x = torch.cat(xs)
    x = torch.cat([x, x.new_ones(x.shape[0], 1)], dim=1)
    gram = x.T @ x
    gram += ridge * gram.diagonal().mean() * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    solution = torch.linalg.solve(gram, x.T @ torch.cat(ys))
    projection = skip_init(nn.Linear, x.shape[1] - 1, solution.shape[1], device=device, dtype=dtype)
    with torch.no_grad():
        projection.weight.copy_(solution[:-1].T)
        projection.bias.copy_(solution[-1])
    return projection
