"""Model input and artifact output: safe model loading and atomic writes.

>>> from structprune.io import load_model
>>> load_model("zoo:mlp").example_inputs.shape
torch.Size([1, 64])
"""
from structprune.io.atomic import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_text,
    staged_output_dir,
    write_atomically,
)
from structprune.io.load import MODEL_LOADERS, LoadedModel, load_model, safe_name

__all__ = ["MODEL_LOADERS", "LoadedModel", "atomic_torch_save", "atomic_write_bytes", "atomic_write_text",
           "load_model", "safe_name", "staged_output_dir", "write_atomically"]
