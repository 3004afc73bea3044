"""`structprune compress FOLDER --data FILE.txt --recover distill` on a saved random BERT with a tokenizer:
label-free distillation from the command line. The text's held-out lines measure fidelity (cosine of the
pooled embeddings to the dense model), which must rise from the one-shot model's; every artifact is there
and reloads (hf/ with structprune.hf.from_pretrained, as the pruned model); a run killed after its first
checkpoint and resumed ends with the weights of an uninterrupted run; under torchrun (two gloo ranks) the
same job writes one output folder (slow). The CLI runs as subprocesses, two at a time (2 cores)."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from helpers import import_transformers

TESTS = Path(__file__).resolve().parents[1]
CLI = "import sys, helpers; helpers.load_tvshim(); from structprune.cli import main; sys.exit(main(sys.argv[1:]))"
WORDS = ("the a model prunes channels heads layers small fast verified text line sample encoder weights "
         "tokens sentence vector keeps drops every each one two").split()
EPOCHS = 3
JOB = ["compress", "bert", "--data", "text.txt", "--ratio", "0.3", "--recover", "distill", "--finetune-epochs",
       str(EPOCHS), "--batch-size", "16", "--seed", "1"]
TIMEOUT_S = 600


def env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")])}


def run_cli(args: list[str], cwd: Path, launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    command = [sys.executable, *launcher, "cli.py"] if launcher else [sys.executable, "-c", CLI]
    proc = subprocess.run([*command, *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def kill_after_first_checkpoint(args: list[str], cwd: Path, checkpoint: Path) -> int:
    """Start the job, SIGKILL it as soon as its first checkpoint exists; the epochs that checkpoint holds."""
    proc = subprocess.Popen([sys.executable, "-c", CLI, *args], cwd=cwd, env=env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + TIMEOUT_S
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return int(torch.load(checkpoint, weights_only=True)["epochs_done"])


def save_folder(folder: Path) -> None:
    """A random BERT (hidden 32, 2 layers, 4 heads; large initial weights, no dropout, so that pruning
    30% of its channels costs fidelity that distillation must win back) and a word-level tokenizer."""
    t = import_transformers()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS])}
    torch.manual_seed(0)
    config = t.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=64, initializer_range=0.2,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    t.BertModel(config).save_pretrained(folder)
    t.BertTokenizer(vocab=vocab).save_pretrained(folder)


def write_text(path: Path, lines: int = 400) -> None:
    rng = random.Random(0)
    path.write_text("\n".join(" ".join(rng.choices(WORDS, k=rng.randint(4, 14))) for _ in range(lines)) + "\n",
                    encoding="utf-8")


@pytest.fixture(scope="module")
def jobs(tmp_path_factory) -> dict:
    """An uninterrupted run, and a run killed after its first checkpoint then resumed, side by side."""
    base = tmp_path_factory.mktemp("cli_text_distill")
    save_folder(base / "bert")
    write_text(base / "text.txt")
    whole = [*JOB, "--checkpoint-dir", "ck_whole", "--out", "whole"]
    killed = [*JOB, "--no-onnx", "--checkpoint-dir", "ck_killed", "--out", "resumed"]
    with ThreadPoolExecutor(max_workers=2) as pool:
        first = pool.submit(run_cli, whole, base)
        epochs_done = kill_after_first_checkpoint(killed, base, base / "ck_killed" / "recovery-last.pt")
        resumed = run_cli([*killed, "--resume"], base)
        procs = {"whole": first.result(), "resumed": resumed}
    return {"base": base, "procs": procs, "killed_after": epochs_done}


def report(folder: Path) -> dict:
    return json.loads((folder / "report.json").read_text(encoding="utf-8"))


def token_batch(tokenizer_folder: Path, text: Path) -> dict:
    tokenizer = import_transformers().AutoTokenizer.from_pretrained(tokenizer_folder)
    lines = text.read_text(encoding="utf-8").splitlines()[:48]
    encoded = tokenizer(lines, padding=True, return_tensors="pt")
    return {key: encoded[key] for key in ("input_ids", "attention_mask")}  # the inputs model.pt2 was exported with


def pooled_cosine(student, teacher, batch: dict) -> float:
    from structprune.recover.embeddings import mean_pooled

    mask = batch["attention_mask"].float()
    with torch.no_grad():
        s = mean_pooled(student(**batch).last_hidden_state, mask)
        t = mean_pooled(teacher(**batch).last_hidden_state, mask)
    return float(torch.nn.functional.cosine_similarity(s, t, dim=-1).mean())


@pytest.mark.slow  # three CLI jobs, 60 s on 2 cores; tests/unit/test_text_distillation.py covers it in process
def test_distillation_without_labels_raises_held_out_fidelity(jobs) -> None:
    section = report(jobs["base"] / "whole")["recovery"]
    assert section["method"] == "distill" and section["metric"] == "fidelity" and section["epochs"] == EPOCHS
    before, after = section["val_fidelity_before"], section["val_fidelity_after"]
    assert before < 0.9 and after > before + 0.05 and after > 0.95, (before, after)
    history = section["history"]
    assert [h["epoch"] for h in history] == list(range(1, EPOCHS + 1))
    assert history[0]["val_fidelity"] > before and all(h["train_accuracy"] is None for h in history)
    summary = jobs["procs"]["whole"].stdout
    assert "one-shot cosine" in summary and f"{before:.4f}" in summary and f"{after:.4f}" in summary


@pytest.mark.slow  # three CLI jobs, 60 s on 2 cores; tests/unit/test_text_distillation.py covers it in process
def test_every_artifact_is_written_and_hf_reloads_to_the_distilled_model(jobs) -> None:
    base = jobs["base"]
    out = base / "whole"
    assert {"plan.json", "state_dict.pt", "model.pt2", "model.onnx", "report.json", "report.md", "hf"} <= {
        p.name for p in out.iterdir()}
    checked = report(out)["artifacts"]
    assert all(check["ok"] for check in checked.values()) and {"hf/", "model.onnx", "model.pt2"} <= set(checked)
    from structprune import hf  # heads pruned to 3 of 4 leave hidden 32 = 3 x 8 heads, which BertConfig cannot say

    reloaded = hf.from_pretrained(out / "hf").eval()
    dense = import_transformers().BertModel.from_pretrained(base / "bert").eval()
    batch = token_batch(out / "hf", base / "text.txt")
    published = torch.export.load(out / "model.pt2").module()
    with torch.no_grad():
        assert torch.allclose(reloaded(**batch).last_hidden_state, published(**batch)[0], atol=1e-5)
    section = report(out)["recovery"]
    assert pooled_cosine(reloaded, dense, batch) > section["val_fidelity_before"] + 0.05
    assert reloaded.encoder.layer[0].intermediate.dense.out_features < dense.config.intermediate_size


@pytest.mark.slow  # three CLI jobs, 60 s on 2 cores; tests/unit/test_text_distillation.py covers it in process
def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(jobs) -> None:
    base = jobs["base"]
    assert 1 <= jobs["killed_after"] < EPOCHS  # the kill landed inside recovery, not after it
    whole = torch.load(base / "whole" / "state_dict.pt", weights_only=True)
    resumed = torch.load(base / "resumed" / "state_dict.pt", weights_only=True)
    assert whole.keys() == resumed.keys()
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    histories = [report(base / name)["recovery"]["history"] for name in ("whole", "resumed")]
    assert histories[0] == histories[1]


@pytest.mark.slow
def test_torchrun_distils_on_two_ranks_and_writes_one_output(tmp_path: Path) -> None:
    save_folder(tmp_path / "bert")
    write_text(tmp_path / "text.txt")
    (tmp_path / "cli.py").write_text(CLI.replace("; ", "\n"), encoding="utf-8")
    launcher = ("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2")
    run_cli([*JOB, "--no-onnx", "--checkpoint-dir", "ck", "--out", "ranks2"], tmp_path, launcher)
    section = report(tmp_path / "ranks2")["recovery"]
    assert section["metric"] == "fidelity" and section["val_fidelity_after"] > section["val_fidelity_before"] + 0.05
    assert (tmp_path / "ck" / "recovery-last.pt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bert", "ck", "cli.py", "ranks2", "text.txt"]
    from structprune import hf

    reloaded = hf.from_pretrained(tmp_path / "ranks2" / "hf").eval()
    state = torch.load(tmp_path / "ranks2" / "state_dict.pt", weights_only=True)
    assert all(torch.equal(state[k], v) for k, v in reloaded.state_dict().items() if k in state)
