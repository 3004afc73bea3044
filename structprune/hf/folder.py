"""Write a pruned Hugging Face model as a folder a user loads: `save_pretrained` plus the source folder's
tokenizer files, and the checks that read it back.

The folder is read back with `structprune.hf.from_pretrained` (transformers' own loader where the config
describes every block) and its outputs compared with the pruned model; the copied tokenizer is loaded
with AutoTokenizer and must encode a probe text exactly as the source folder's tokenizer does.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from structprune.io.hf_folder import quiet_progress

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "tokenizer.model", "spiece.model",
                   "sentencepiece.bpe.model", "chat_template.jinja", "chat_template.json")
PROBE_TEXT = "structprune reads every file back before it hands it over."


def save_folder(model: nn.Module, dest: Path, source: str | Path | None = None) -> tuple[str, ...]:
    """`model.save_pretrained(dest)` (safetensors) and a copy of the tokenizer files `source` holds;
    returns the names of the tokenizer files copied."""
    with quiet_progress():
        model.save_pretrained(dest)
    copied = tuple(name for name in TOKENIZER_FILES if source is not None and (Path(source) / name).is_file())
    for name in copied:
        shutil.copyfile(Path(source) / name, Path(dest) / name)
    return copied


def same_tokens(dest: Path, source: str | Path) -> bool:
    """Does the tokenizer copied into `dest` encode PROBE_TEXT as the one in `source` does?"""
    from transformers import AutoTokenizer  # lazy: the optional extra structprune[hf]

    def encode(folder: str | Path) -> list[int]:
        return list(AutoTokenizer.from_pretrained(folder)(PROBE_TEXT)["input_ids"])

    return encode(dest) == encode(source)
