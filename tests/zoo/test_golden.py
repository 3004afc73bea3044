"""Golden analyses: `ChannelGraph.summary()` of every zoo model (eval mode, example inputs at batch 2)
equals the file `tests/golden/<model>.txt`, so any change to which channels are coupled, which groups
are prunable, their sizes, member counts, masking exactness or blocked reasons shows up as a diff.

After an intended change to the analysis, regenerate the files and review the diff before committing:

    STRUCTPRUNE_UPDATE_GOLDEN=1 python -m pytest tests/zoo/test_golden.py     (or: make golden)
    git diff tests/golden
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest

import models_zoo
import structprune

GOLDEN = Path(__file__).resolve().parents[1] / "golden"
UPDATE_VAR = "STRUCTPRUNE_UPDATE_GOLDEN"
REGENERATE = f"{UPDATE_VAR}=1 python -m pytest tests/zoo/test_golden.py"


def summary_of(name: str) -> str:
    """The text a golden file holds: the model's analysis summary and a final newline."""
    model, x = models_zoo.create(name).eval(), models_zoo.example_inputs(name, batch=2)
    return structprune.analyze(model, x).summary() + "\n"


def updating() -> bool:
    return os.environ.get(UPDATE_VAR, "") not in ("", "0")


@pytest.mark.parametrize("name", models_zoo.list_models())
def test_summary_matches_the_golden_file(name: str) -> None:
    path, got = GOLDEN / f"{name}.txt", summary_of(name)
    if updating() and (not path.exists() or path.read_text() != got):
        path.write_text(got)
    if not path.exists():
        pytest.fail(f"zoo model {name!r} has no golden file {path}; write it with {REGENERATE}", pytrace=False)
    want = path.read_text()
    if got != want:
        diff = "".join(difflib.unified_diff(want.splitlines(keepends=True), got.splitlines(keepends=True),
                                            f"tests/golden/{name}.txt", f"analyze({name}).summary()"))
        pytest.fail(f"the analysis of zoo model {name!r} differs from its golden file:\n{diff}\n"
                    f"if the change is intended, regenerate with {REGENERATE} and review `git diff tests/golden`",
                    pytrace=False)


def test_every_golden_file_belongs_to_a_zoo_model() -> None:
    stale = sorted(p.name for p in GOLDEN.glob("*.txt") if p.stem not in models_zoo.list_models())
    assert not stale, f"golden files of models no longer in the zoo: {stale}; delete them"
