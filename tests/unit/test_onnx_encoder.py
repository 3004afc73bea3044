"""ONNX of a pruned BERT-like encoder (a small random BertModel, heads and FFN neurons pruned): the file's
batch and sequence axes are dynamic and named, onnxruntime matches torch at batch sizes and sequence
lengths other than the export's (shorter, longer, padded), and benchmarks/encoder_onnx.py's latency
function returns the dense and pruned medians at 32 x 64."""
from __future__ import annotations

import onnx
import onnxruntime as ort
import pytest
import torch

import structprune
from benchmarks import encoder_onnx
from benchmarks.encoder_onnx import BATCH, SEQUENCE, EncoderOnnxLatency, encoder_onnx_latency
from helpers import import_transformers
from structprune.onnx import check_parity, export_onnx
from structprune.onnx.inputs import tokens_at

VOCAB = 100


@pytest.fixture(scope="module")
def encoders() -> tuple[torch.nn.Module, torch.nn.Module, dict]:
    t = import_transformers()
    torch.manual_seed(0)
    config = t.BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                          intermediate_size=64, max_position_embeddings=80, initializer_range=0.2)
    dense = t.BertModel(config).eval()
    ids = torch.randint(1, VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    example = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    pruned = structprune.compress(dense, example, ratio=0.5).model
    assert pruned.encoder.layer[0].attention.self.num_attention_heads == 2
    return dense, pruned, example


@pytest.fixture(scope="module")
def exported(encoders, tmp_path_factory):
    _, pruned, example = encoders
    return export_onnx(pruned, example, tmp_path_factory.mktemp("onnx") / "encoder.onnx")


def dims(values) -> dict[str, list]:
    return {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim] for v in values}


def test_pruned_encoder_exports_with_named_dynamic_batch_and_sequence_axes(exported) -> None:
    graph = onnx.load(exported.path).graph
    assert exported.dynamic_batch and exported.dynamic_sequence
    assert dims(graph.input) == {"input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"]}
    assert list(dims(graph.output).values()) == [["batch", "sequence", 32], ["batch", 32]]


@pytest.mark.parametrize("batch, sequence", [(5, 9), (3, 40), (1, 80)])
def test_onnxruntime_matches_torch_at_other_batch_sizes_and_lengths_with_padding(encoders, exported, batch,
                                                                                   sequence) -> None:
    _, pruned, _ = encoders
    g = torch.Generator().manual_seed(batch)
    ids = torch.randint(1, VOCAB, (batch, sequence), generator=g)
    mask = (torch.arange(sequence) < torch.randint(1, sequence + 1, (batch, 1), generator=g)).long()
    mask[0] = 1  # at least one row without padding
    session = ort.InferenceSession(exported.path, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input_ids": (ids * mask).numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():
        want = pruned(input_ids=ids * mask, attention_mask=mask)
    assert got[0].shape == (batch, sequence, 32) and got[1].shape == (batch, 32)
    torch.testing.assert_close(torch.from_numpy(got[0]), want.last_hidden_state, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.from_numpy(got[1]), want.pooler_output, atol=1e-4, rtol=1e-4)


def test_parity_check_covers_a_batch_and_a_length_both_unlike_the_export(encoders, exported) -> None:
    _, pruned, example = encoders
    parity = check_parity(pruned, exported.path, example, dynamic_sequence=True)
    assert parity.ok and parity.sequence_checked and parity.batch_sizes_checked == (2, 3)
    assert parity.max_abs_error < 1e-4


def test_tokens_at_repeats_ids_and_fills_the_mask() -> None:
    example = {"input_ids": torch.tensor([[7, 8, 0], [9, 0, 0]]), "attention_mask": torch.tensor([[1, 1, 0],
                                                                                                     [1, 0, 0]])}
    resized = tokens_at(example, 3, 5)
    assert resized["input_ids"].tolist() == [[7, 8, 0, 7, 8], [9, 0, 0, 9, 0], [7, 8, 0, 7, 8]]
    assert resized["attention_mask"].shape == (3, 5) and bool(resized["attention_mask"].all())


@pytest.mark.slow  # five exports of ~9 s each on a 2-core CPU; the column's bookkeeping is tested below
def test_encoder_onnx_latency_times_dense_and_pruned_at_32_by_64(encoders) -> None:
    dense, pruned, example = encoders
    result = encoder_onnx_latency(pruned, example, dense, runs=3, warmup=1)
    assert set(result) == {"ort_ms_dense", "ort_ms_pruned", "speedup"} and (BATCH, SEQUENCE) == (32, 64)
    assert result["ort_ms_dense"] > 0 and result["ort_ms_pruned"] > 0
    assert result["speedup"] == pytest.approx(result["ort_ms_dense"] / result["ort_ms_pruned"])
    column = EncoderOnnxLatency(runs=2, warmup=1)
    first, second = column(pruned, example, dense), column(pruned, example, dense)
    assert len(column._dense) == 1 and all(r["ort_ms_pruned"] > 0 for r in (first, second))


def test_the_latency_column_exports_the_dense_model_once_and_times_at_32_by_64(encoders, monkeypatch) -> None:
    """EncoderOnnxLatency's bookkeeping, with the export and the timing replaced by recorders."""
    dense, pruned, example = encoders
    exports, timings = [], []
    monkeypatch.setattr(encoder_onnx, "exported", lambda model, ex, path, at: exports.append((model, at)) or str(path))
    monkeypatch.setattr(encoder_onnx, "timed", lambda d, p, inputs, runs, warmup, threads: timings.append(
        (d, p, inputs["input_ids"].shape, runs, warmup, threads)) or {"speedup": 1.0})
    column = EncoderOnnxLatency(runs=4, warmup=2)
    column(pruned, example, dense), column(pruned, example, dense)
    assert [model for model, _ in exports] == [dense, pruned, pruned]
    assert all(at["input_ids"].shape == (BATCH, SEQUENCE) for _, at in exports)
    assert timings[0][0] == timings[1][0] and timings[0][2:] == ((BATCH, SEQUENCE), 4, 2, 1)


def test_inputs_in_a_tokenizers_order_keep_their_names(encoders, tmp_path) -> None:
    """A tokenizer returns input_ids, token_type_ids, attention_mask; forward() takes attention_mask second.
    Each ONNX input must carry its own name (they were swapped: the mask fed as token types)."""
    dense, _, example = encoders
    ids = example["input_ids"]
    types = (torch.arange(ids.shape[1]) >= ids.shape[1] // 2).long().expand_as(ids).contiguous()
    mask = torch.ones_like(ids)
    mask[1, -4:] = 0
    tokenizer_order = {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}
    onnx_file = export_onnx(dense, tokenizer_order, tmp_path / "dense.onnx")
    assert set(onnx_file.input_names) == set(tokenizer_order)
    parity = check_parity(dense, onnx_file.path, tokenizer_order, dynamic_sequence=True)
    assert parity.ok and parity.max_abs_error < 1e-4, parity
