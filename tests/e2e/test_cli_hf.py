"""`structprune compress FOLDER` on a saved Hugging Face model (a tiny random BERT with a tokenizer):
`--data FILE.txt` is tokenised with the folder's tokenizer, `hf/` is written beside the other artifacts
and reloads to the pruned model; pickled weights are refused unless `--trust-pickle`; the input folder
is never changed. The CLI runs as a subprocess, two at a time (a 2-core machine)."""
from __future__ import annotations

import csv
import hashlib
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from helpers import import_transformers

TESTS = Path(__file__).resolve().parents[1]
# helpers.load_tvshim: this workplace's torchvision needs a shim before transformers imports it (elsewhere a no-op)
CLI = "import sys, helpers; helpers.load_tvshim(); from structprune.cli import main; sys.exit(main(sys.argv[1:]))"
WORDS = "the a model prunes channels heads layers small fast verified text line sample".split()
TEXT = "the model prunes channels\na small fast model\n\nverified text line sample\nthe heads and layers\n"
ATOL = 1e-5


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-c", CLI, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def describe(proc: subprocess.CompletedProcess) -> str:
    return f"exit {proc.returncode}\n--- stdout ---\n{proc.stdout}\n--- stderr ---\n{proc.stderr}"


def hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def save_tiny_bert(folder: Path, pickled: bool = False) -> None:
    """A random BERT (hidden 32, 2 layers, 4 heads) and a word-level BertTokenizer, saved with
    save_pretrained (or with the weights as a pickled pytorch_model.bin)."""
    t = import_transformers()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    torch.manual_seed(0)
    model = t.BertModel(t.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=64))
    model.save_pretrained(folder)
    t.BertTokenizer(vocab=vocab).save_pretrained(folder)
    if pickled:
        (folder / "model.safetensors").unlink()
        torch.save(model.state_dict(), folder / "pytorch_model.bin")


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("cli_hf")
    save_tiny_bert(base / "bert")
    save_tiny_bert(base / "pickled", pickled=True)
    (base / "calib.txt").write_text(TEXT, encoding="utf-8")
    before = {name: hashes(base / name) for name in ("bert", "pickled")}
    jobs = {
        "text": ["compress", "bert", "--data", "calib.txt", "--no-onnx", "--out", "out_text"],
        "pickled": ["compress", "pickled", "--no-onnx", "--out", "out_pickled"],
        "trusted": ["compress", "pickled", "--trust-pickle", "--no-onnx", "--out", "out_trusted"],
        "text_without_tokenizer": ["compress", "zoo:mlp", "--data", "calib.txt", "--no-onnx", "--out", "out_mlp"],
        "sensitivity": ["sensitivity", "bert", "--data", "calib.txt", "--metric", "fidelity", "--ratios", "0.25,0.5",
                        "--out", "out_sens"],
        "tuned": ["compress", "bert", "--data", "calib.txt", "--criterion", "obs", "--tune-epochs", "2",
                  "--weigh", "samples", "--calib-samples", "3", "--ignore", "*attention*", "--no-onnx",
                  "--out", "out_tuned"],
        "tune_without_refit": ["compress", "bert", "--data", "calib.txt", "--tune-epochs", "2", "--no-onnx",
                               "--out", "out_tune_l2"],
        "group_ratios": ["compress", "bert", "--data", "calib.txt", "--criterion", "obs", "--group-ratio",
                         "*.intermediate.*=0.5", "*.attention.*=0.25:global", "--no-onnx", "--out", "out_groups"],
        "group_ratio_typo": ["compress", "bert", "--group-ratio", "*.intermediat.*=0.5", "--no-onnx",
                             "--out", "out_typo"],
    }
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: pool.submit(run_cli, args, base) for name, args in jobs.items()}
        procs = {name: future.result() for name, future in futures.items()}
    return {"base": base, "procs": procs, "before": before}


def test_compress_writes_hf_folder_that_reloads_to_the_pruned_model(runs) -> None:
    from structprune import hf

    base, proc = runs["base"], runs["procs"]["text"]
    assert proc.returncode == 0, describe(proc)
    assert "hf/" in proc.stdout and "Traceback" not in proc.stderr, describe(proc)
    out = base / "out_text"
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= \
        {p.name for p in (out / "hf").iterdir()}
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["ok"] and report["artifacts"]["hf/"]["ok"]
    assert "tokenizer" in report["artifacts"]["hf/"]["checked_at"]
    assert report["params"]["after"] < report["params"]["before"]
    ids = torch.tensor([[2, 5, 7, 8, 10, 3], [2, 6, 11, 12, 9, 3]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    reloaded = hf.from_pretrained(out / "hf")
    published = torch.export.load(out / "model.pt2").module()
    with torch.no_grad():
        expected = published(**inputs)
        got = reloaded(**inputs)
    assert (got.last_hidden_state - expected.last_hidden_state).abs().max() <= ATOL
    tokenizer = import_transformers().AutoTokenizer.from_pretrained(out / "hf")
    assert tokenizer("the model prunes heads")["input_ids"] == [2, 5, 7, 8, 10, 3]


def test_one_shot_on_text_reports_fidelity_to_the_dense_model_instead_of_accuracy(runs) -> None:
    proc = runs["procs"]["text"]
    report = json.loads((runs["base"] / "out_text" / "report.json").read_text())
    assert "no labels" in report["accuracy_skipped"]
    fidelity = report["fidelity"]
    assert fidelity["data"] and "cosine" in fidelity["metric"]
    assert 0.0 < fidelity["after"] < 1.0  # channels gone: not quite the dense model's outputs
    row = next((line.split() for line in proc.stdout.splitlines() if line.startswith("cosine to dense")), None)
    assert row is not None and row[3:5] == ["1.0000", f"{fidelity['after']:.4f}"], describe(proc)
    assert "accuracy: not measured" not in proc.stdout
    report_md = (runs["base"] / "out_text" / "report.md").read_text()
    assert f"{fidelity['after']:.4f} on {fidelity['data']}" in report_md


def test_the_input_folders_are_not_changed(runs) -> None:
    base = runs["base"]
    assert {name: hashes(base / name) for name in ("bert", "pickled")} == runs["before"]


def test_pickled_weights_are_refused_with_one_line_and_nothing_written(runs) -> None:
    proc = runs["procs"]["pickled"]
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("structprune: error: "), describe(proc)
    assert "pytorch_model.bin" in lines[0] and "--trust-pickle" in lines[0]
    assert not (runs["base"] / "out_pickled").exists()


def test_trust_pickle_loads_pickled_weights_and_writes_safetensors(runs) -> None:
    proc = runs["procs"]["trusted"]
    assert proc.returncode == 0, describe(proc)
    assert (runs["base"] / "out_trusted" / "hf" / "model.safetensors").is_file()


def test_text_data_without_a_tokenizer_is_a_one_line_usage_error(runs) -> None:
    proc = runs["procs"]["text_without_tokenizer"]
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "tokenizer" in lines[0], describe(proc)


def test_sensitivity_reads_the_text_file_with_the_folders_tokenizer(runs) -> None:
    proc = runs["procs"]["sensitivity"]
    assert proc.returncode == 0, describe(proc)
    with open(runs["base"] / "out_sens" / "sensitivity.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    groups = {row["group"] for row in rows}
    assert {"encoder.layer.0.intermediate.dense.weight:0", "encoder.layer.1.attention.self.query.weight:0"} <= groups
    assert len(rows) == 2 * len(groups) and all(0.0 < float(row["value"]) <= 1.0 + 1e-6 for row in rows)


def test_tune_epochs_tunes_each_ffn_after_the_refit_and_reports_it(runs) -> None:
    proc = runs["procs"]["tuned"]
    assert proc.returncode == 0, describe(proc)
    out = runs["base"] / "out_tuned"
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["ok"] and report["artifacts"]["hf/"]["ok"]
    assert report["calibration"]["reconstructed_layers"] == 2
    assert report["calibration"]["tuned"] == ["encoder.layer.0.intermediate", "encoder.layer.1.intermediate"]
    assert "| units or blocks tuned by gradient after the refit | 2 |" in (out / "report.md").read_text()
    reconstruction = json.loads((out / "plan.json").read_text())["meta"]["reconstruction"]
    assert (reconstruction["weigh"], reconstruction["max_samples"]) == ("samples", 3)


def test_tune_epochs_without_a_refitting_criterion_is_a_one_line_usage_error(runs) -> None:
    proc = runs["procs"]["tune_without_refit"]
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--criterion l2 refits none" in lines[0], describe(proc)
    assert "use --criterion obs" in lines[0]
    assert not (runs["base"] / "out_tune_l2").exists()


def test_group_ratios_prune_ffn_and_heads_by_their_own_ratios_and_the_folder_reloads(runs) -> None:
    from structprune import hf

    proc = runs["procs"]["group_ratios"]
    assert proc.returncode == 0, describe(proc)
    out = runs["base"] / "out_groups"
    report = json.loads((out / "report.json").read_text())
    assert report["verification"]["ok"] and report["artifacts"]["hf/"]["ok"]
    meta = json.loads((out / "plan.json").read_text())["meta"]
    assert meta["group_ratios"] == [
        {"pattern": "*.intermediate.*", "ratio": 0.5, "allocation": None, "groups": 2},
        {"pattern": "*.attention.*", "ratio": 0.25, "allocation": "global", "groups": 2}]
    model = hf.from_pretrained(out / "hf")
    assert [layer.intermediate.dense.out_features for layer in model.encoder.layer] == [32, 32]
    heads = [layer.attention.self.num_attention_heads for layer in model.encoder.layer]
    assert sum(heads) == 6 and min(heads) >= 1  # 2 of the 8 heads, wherever obs's costs are lowest
    assert model.config.hidden_size == 32  # no glob names the hidden width, and no --ratio was given


def test_a_group_ratio_glob_that_matches_nothing_is_a_one_line_usage_error(runs) -> None:
    proc = runs["procs"]["group_ratio_typo"]
    assert proc.returncode == 2, describe(proc)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "glob '*.intermediat.*' matches no group left to prune" in lines[0], describe(proc)
    assert not (runs["base"] / "out_typo").exists()
