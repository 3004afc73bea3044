"""`structprune inspect MODEL --graph FILE`: the channel graph drawn into an SVG/PNG/PDF (format by
extension) with every group in its legend; bad paths are one-line usage errors (exit 2, nothing written)."""
from __future__ import annotations

import xml.etree.ElementTree as ElementTree

import pytest

import structprune.report.graph_figure as graph_figure
from structprune.cli import main
from structprune.inspection import inspect_model

CNN_GROUPS = {"features.0.weight:0": 6, "features.0.weight:1": 3, "features.3.weight:0": 16, "fc1.weight:0": 120,
              "fc2.weight:0": 10}


def run_main(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def svg_texts(path) -> list[str]:
    root = ElementTree.parse(path).getroot()  # raises unless the file is well-formed XML
    assert root.tag.endswith("svg")
    return ["".join(element.itertext()) for element in root.iter() if element.tag.endswith("text")]


def test_inspect_draws_an_svg_whose_legend_names_every_group(tmp_path, capsys) -> None:
    target = tmp_path / "cnn.svg"
    code, out, err = run_main(capsys, "inspect", "zoo:cnn", "--graph", str(target))
    assert code == 0, err
    assert out.startswith("model cnn (zoo): ") and out.rstrip().endswith(f"channel graph: {target}")
    texts = svg_texts(target)
    legend = [t for t in texts if t.endswith(" channels)") or " channels), blocked: " in t]
    assert sorted(t.split(" (")[0] for t in legend) == sorted(CNN_GROUPS)  # one entry per group
    assert "features.3.weight:0 (16 channels)" in legend and "fc1.weight:0 (120 channels)" in legend
    assert "features.0.weight:1 (3 channels), blocked: tied to a model input: x" in legend
    assert "fc2.weight:0 (10 channels), blocked: tied to a model output: output 0" in legend
    assert {"conv2d", "max_pool2d", "linear", "output"} <= set(texts)  # the ops are drawn, labelled by op
    assert [p.name for p in tmp_path.iterdir()] == ["cnn.svg"]  # no temporary file left behind


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG\r\n\x1a\n"), (".PDF", b"%PDF-")])
def test_the_extension_picks_the_format(tmp_path, capsys, suffix: str, magic: bytes) -> None:
    target = tmp_path / f"mlp{suffix}"
    code, _, err = run_main(capsys, "inspect", "zoo:mlp", "--graph", str(target))
    assert code == 0, err
    assert target.read_bytes().startswith(magic)


def test_without_graph_inspect_prints_what_it_always_printed(capsys) -> None:
    code, out, _ = run_main(capsys, "inspect", "zoo:mlp")
    assert code == 0
    assert out == inspect_model("zoo:mlp") + "\n"


@pytest.mark.parametrize(("name", "message"), [
    ("graph.txt", "does not end in .svg, .png or .pdf"),
    ("no/such/folder/graph.svg", "does not exist; create it first"),
    ("", "does not end in .svg, .png or .pdf"),
])
def test_a_bad_graph_path_is_a_one_line_usage_error(tmp_path, capsys, name: str, message: str) -> None:
    code, out, err = run_main(capsys, "inspect", "zoo:mlp", "--graph", str(tmp_path / name) if name else "")
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and err.startswith("structprune: error: --graph: "), err
    assert message in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []


def test_a_folder_that_refuses_the_write_is_a_one_line_usage_error(tmp_path, capsys, monkeypatch) -> None:
    def refuse(path, write):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(graph_figure, "write_atomically", refuse)
    code, out, err = run_main(capsys, "inspect", "zoo:mlp", "--graph", str(tmp_path / "g.svg"))
    assert code == 2 and out == ""  # the inspect text is not printed either: the command failed
    assert len(err.strip().splitlines()) == 1 and "cannot write" in err and "Permission denied" in err, err
    assert list(tmp_path.iterdir()) == []
