"""load_data: one spec string -> a DataBundle. The accepted forms are a table, tried in order.

Text (`FILE.txt`) is tokenised with a model's tokenizer, which the table cannot know: the default entry
refuses it, and a job with a Hugging Face model folder puts `text_source(folder)` first.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from structprune.data.bundle import DataBundle, DataOptions
from structprune.data.digits import load_digits_bundle
from structprune.data.image_folder import load_image_folder_bundle
from structprune.data.npz import load_npz_bundle
from structprune.data.python_spec import is_callable_spec, load_callable_bundle
from structprune.data.text import TEXT_FORM, TEXT_MAX_LENGTH, is_text_spec, refuse_text, text_loader
from structprune.errors import UsageError


@dataclass(frozen=True)
class DataSource:
    """One accepted spec form: `form` documents it, `matches` recognises it, `load` builds it."""

    form: str
    matches: Callable[[str], bool]
    load: Callable[[str, DataOptions], DataBundle]


def _is_folder(spec: str) -> bool:
    try:
        return Path(spec).is_dir()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a folder
        return False


DATA_SOURCES: tuple[DataSource, ...] = (
    DataSource("digits", lambda spec: spec == "digits", load_digits_bundle),
    DataSource("PATH.npz (arrays x and optional y)", lambda spec: spec.lower().endswith(".npz"),
               load_npz_bundle),
    DataSource("FOLDER with one sub-folder of images per class", _is_folder, load_image_folder_bundle),
    DataSource("module:function returning a DataLoader or (train, val)", is_callable_spec,
               load_callable_bundle),
    DataSource(TEXT_FORM, is_text_spec, refuse_text),
)


def text_source(tokenizer_folder: str | Path, max_length: int = TEXT_MAX_LENGTH) -> DataSource:
    """`FILE.txt` tokenised with the tokenizer saved in `tokenizer_folder` (a Hugging Face model folder),
    padded and truncated to `max_length` tokens; put it before DATA_SOURCES."""
    return DataSource(TEXT_FORM, is_text_spec, text_loader(tokenizer_folder, max_length))


def load_data(
    spec: str,
    *,
    input_shape: tuple[int, ...] | None = None,
    batch_size: int = 64,
    seed: int = 0,
    val_fraction: float = 0.2,
    sources: tuple[DataSource, ...] = DATA_SOURCES,
) -> DataBundle:
    """Load data for calibration, fine-tuning and accuracy; the same seed gives the same split and order.

    `input_shape` (without batch) is the model's input: samples are fitted to it.

    >>> bundle = load_data("digits", input_shape=(64,), batch_size=32)
    >>> bundle.num_classes, bundle.input_shape, next(iter(bundle.train))[0].shape
    (10, (64,), torch.Size([32, 64]))
    """
    spec = str(spec)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise UsageError(f"seed must be a non-negative integer, got {seed!r}")
    shape = None if input_shape is None else tuple(input_shape)
    options = DataOptions(shape, batch_size, seed, val_fraction).checked()
    for source in sources:
        if source.matches(spec):
            return source.load(spec, options)
    raise UsageError(_unknown_spec_message(spec, sources))


def _unknown_spec_message(spec: str, sources: tuple[DataSource, ...]) -> str:
    forms = "; ".join(source.form for source in sources)
    missing = "" if _exists(spec) else " (no file or folder has that name)"
    return f"data spec {spec!r} is not understood{missing}; use one of: {forms}"


def _exists(spec: str) -> bool:
    try:
        return Path(spec).exists()
    except (OSError, ValueError):
        return False

