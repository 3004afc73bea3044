"""Text data for a Hugging Face model: `FILE.txt`, one sample per line, tokenised with the tokenizer
saved in the model's folder (transformers, the optional extra `structprune[hf]`).

Every line (blank ones skipped) becomes `input_ids` and `attention_mask`, truncated to one fixed length
and padded on the right; a batch is cut to its longest line (`TokenSamples.collate`: the columns dropped
are padding in every row, and no real token changes position), so short texts cost short passes (a
tuned obs compress of all-MiniLM-L6-v2 on 2,560 docstring lines: 5:36 -> 2:55 for the whole job, peak
memory 5.4 -> 2.4 GB, the same model). A tokenizer without a padding token pads with its end-of-text (or
unknown) token, the mask keeps padding out. Text has no labels: it serves calibration, data-driven
criteria and label-free distillation, never accuracy. A seeded `val_fraction` of the lines (20% by
default) is held out: calibration and training never see it, and distillation measures its fidelity
(cosine of pooled embeddings to the dense model) there.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, default_collate

from structprune.data.bundle import DataBundle, DataOptions, holdout_split, make_bundle
from structprune.data.messages import one_line
from structprune.errors import UsageError

TEXT_FORM = "FILE.txt (one text per line, tokenised with the tokenizer of a Hugging Face model folder)"
TEXT_MAX_LENGTH = 128  # tokens per sample, unless the model has fewer positions
TOKEN_KEYS = ("input_ids", "attention_mask")


class TokenSamples(Dataset):
    """Tokenised lines: sample i is `{"input_ids": ..., "attention_mask": ...}` (one row each)."""

    def __init__(self, encoded: dict[str, torch.Tensor]) -> None:
        self.encoded = {k: encoded[k] for k in TOKEN_KEYS}

    def __len__(self) -> int:
        return len(self.encoded["input_ids"])

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {k: v[index] for k, v in self.encoded.items()}

    @staticmethod
    def collate(samples: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """Samples stacked into a batch as long as its longest text (padding is on the right).

        >>> short = {"input_ids": torch.tensor([5, 6, 0, 0]), "attention_mask": torch.tensor([1, 1, 0, 0])}
        >>> longer = {"input_ids": torch.tensor([7, 8, 9, 0]), "attention_mask": torch.tensor([1, 1, 1, 0])}
        >>> TokenSamples.collate([short, longer])["input_ids"].tolist()
        [[5, 6, 0], [7, 8, 9]]
        """
        batch = default_collate(samples)
        longest = max(int(batch["attention_mask"].sum(dim=1).max()), 1)
        return {k: v[:, :longest] for k, v in batch.items()}


def length_batched(dataset: Dataset, indices: list[int], batch_size: int, seed: int = 0) -> list[int]:
    """`indices` reordered so that each run of `batch_size` holds texts of similar length (fewer padded
    tokens once `TokenSamples.collate` cuts the batch), the runs in a seeded order; unchanged unless every
    sample is a dict with an `attention_mask`.

    >>> texts = [{"attention_mask": torch.ones(n)} for n in (5, 1, 4, 2)]
    >>> sorted(tuple(sorted(run)) for run in zip(*[iter(length_batched(texts, [0, 1, 2, 3], 2))] * 2))
    [(0, 2), (1, 3)]
    """
    lengths = [_real_length(dataset[i]) for i in indices]
    if not indices or any(n is None for n in lengths):
        return list(indices)
    ranked = [i for _, i in sorted(zip(lengths, indices), key=lambda pair: pair[0])]
    runs = [ranked[k:k + batch_size] for k in range(0, len(ranked), batch_size)]
    order = torch.randperm(len(runs), generator=torch.Generator().manual_seed(seed)).tolist()
    return [i for run in order for i in runs[run]]


def _real_length(sample: Any) -> int | None:
    mask = sample.get("attention_mask") if isinstance(sample, dict) else None
    return int(mask.sum()) if isinstance(mask, torch.Tensor) else None


def is_text_spec(spec: str) -> bool:
    """Is `spec` a text file (by its `.txt` extension)?

    >>> is_text_spec("calibration.TXT"), is_text_spec("digits")
    (True, False)
    """
    return spec.lower().endswith(".txt")


def text_loader(tokenizer_folder: str | Path, max_length: int = TEXT_MAX_LENGTH) -> Callable[[str, DataOptions],
                                                                                          DataBundle]:
    """A loader for `FILE.txt` specs that tokenises with the tokenizer in `tokenizer_folder`."""

    def load(spec: str, options: DataOptions) -> DataBundle:
        return load_text_bundle(spec, options, Path(tokenizer_folder), max_length)

    return load


def refuse_text(spec: str, options: DataOptions) -> DataBundle:
    """A `.txt` spec for a model that brings no tokenizer."""
    raise UsageError(f"{spec}: text data is tokenised with the model's tokenizer, so it needs a Hugging Face model "
                     "folder (config.json and tokenizer files) as MODEL")


def load_text_bundle(spec: str, options: DataOptions, tokenizer_folder: Path, max_length: int) -> DataBundle:
    """Read `spec`'s lines, tokenise them to `max_length` tokens, and bundle them (unlabelled; a seeded
    held-out share for validation)."""
    path = Path(spec)
    lines = read_lines(path)
    tokenizer = _tokenizer(tokenizer_folder)
    tokenizer.padding_side = "right"  # so a batch can be cut to its longest line (`TokenSamples.collate`)
    try:
        encoded = tokenizer(lines, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    except Exception as exc:  # noqa: BLE001 - tokenizers raise assorted errors on text they cannot encode
        raise UsageError(f"{path}: the tokenizer of {tokenizer_folder} could not encode it ({one_line(exc)})") from exc
    split = holdout_split(len(lines), options)
    return make_bundle(path.stem, TokenSamples(encoded), split, None, (max_length,), options, TokenSamples.collate)


def read_lines(path: Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file; a UsageError for a missing, unreadable or empty file."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise UsageError(f"data file {path} does not exist; check the path") from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise UsageError(f"{path} is not a readable UTF-8 text file ({one_line(exc)})") from exc
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise UsageError(f"{path} holds no text; write one sample per line")
    return lines


def _tokenizer(folder: Path) -> Any:
    try:
        from transformers import AutoTokenizer  # lazy: the optional extra structprune[hf]

        tokenizer = AutoTokenizer.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - no tokenizer files, a broken install, a damaged file alike
        raise UsageError(f"text data needs the model folder's tokenizer, and {folder} has none that loads "
                         f"({one_line(exc)}); save the tokenizer beside the model (tokenizer.save_pretrained)") from exc
    if tokenizer.pad_token is None:
        filler = tokenizer.eos_token or tokenizer.unk_token
        if filler is None:
            raise UsageError(f"the tokenizer of {folder} has no padding, end-of-text or unknown token to pad with")
        tokenizer.pad_token = filler
    return tokenizer
