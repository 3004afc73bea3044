"""Hugging Face models in and out (structprune/hf): `compress` captures causal LMs without their KV cache,
writes the pruned widths into `model.config`, and `save_pretrained` -> load gives back the same model:
transformers' own `from_pretrained` where one config describes every block, `structprune.hf.from_pretrained`
where blocks differ (global pruning) or the family cannot express the width (BERT's attention).
Tiny random models built from config classes (hidden 32, 2 layers, vocab 100); nothing is downloaded."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import structprune
from helpers import import_transformers
from structprune import hf
from structprune.data.running import eval_outputs

ATOL = 1e-5
VOCAB, HIDDEN, LAYERS, HEADS, KV_HEADS, MLP, POSITIONS = 100, 32, 2, 4, 2, 64, 64


def tiny(name: str) -> torch.nn.Module:
    """A small random model of one family, built from its config class."""
    t = import_transformers()
    decoder = dict(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                   num_key_value_heads=KV_HEADS, intermediate_size=MLP, max_position_embeddings=POSITIONS)
    built = {
        "bert": lambda: t.BertModel(t.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                                 num_attention_heads=HEADS, intermediate_size=MLP,
                                                 max_position_embeddings=POSITIONS)),
        "llama": lambda: t.LlamaForCausalLM(t.LlamaConfig(**decoder)),
        "qwen2": lambda: t.Qwen2ForCausalLM(t.Qwen2Config(**decoder)),
        "gpt2": lambda: t.GPT2LMHeadModel(t.GPT2Config(vocab_size=VOCAB, n_embd=HIDDEN, n_layer=LAYERS, n_head=HEADS,
                                                       n_positions=POSITIONS, bos_token_id=0, eos_token_id=0)),
        "distilbert": lambda: t.DistilBertModel(t.DistilBertConfig(vocab_size=VOCAB, dim=HIDDEN, n_layers=LAYERS,
                                                                   n_heads=HEADS, hidden_dim=MLP,
                                                                   max_position_embeddings=POSITIONS)),
    }[name]
    torch.manual_seed(0)
    return built().eval()


def tokens(batch: int = 2, length: int = 8) -> dict:
    ids = torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(1))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def max_diff(a: torch.nn.Module, b: torch.nn.Module, inputs: dict) -> float:
    with hf.without_cache(a, b):
        left, right = eval_outputs(a, inputs), eval_outputs(b, inputs)
    assert [t.shape for t in left] == [t.shape for t in right]
    return max(float((x - y).abs().max()) for x, y in zip(left, right))


@pytest.fixture(scope="module")
def pruned() -> dict:
    """Each family compressed once at ratio 0.5 (default criterion), with the dense model and its state."""
    found = {}
    for name in ("bert", "llama", "qwen2", "gpt2", "distilbert"):
        model = tiny(name)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        config = model.config.to_dict()
        found[name] = (model, state, config, structprune.compress(model, tokens(), ratio=0.5))
    return found


@pytest.mark.parametrize("name", ["bert", "llama", "qwen2", "gpt2", "distilbert"])
def test_compress_verifies_and_leaves_the_users_model_and_use_cache_alone(pruned, name: str) -> None:
    model, state, config, result = pruned[name]
    assert result.report.verification["ok"]
    assert result.report.params_after < result.report.params_before
    assert model.config.to_dict() == config
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert getattr(result.model.config, "use_cache", None) == getattr(model.config, "use_cache", None)
    assert result.report.extra["hf_config"]["ok"]


@pytest.mark.parametrize("name", ["bert", "llama", "qwen2", "gpt2", "distilbert"])
def test_save_pretrained_round_trip_gives_the_same_outputs(pruned, name: str, tmp_path) -> None:
    _, _, _, result = pruned[name]
    result.model.save_pretrained(tmp_path)
    loaded = hf.from_pretrained(tmp_path)
    assert type(loaded) is type(result.model)
    assert max_diff(loaded, result.model, tokens(3, 7)) <= ATOL


@pytest.mark.parametrize("name", ["llama", "qwen2", "gpt2"])
def test_uniform_pruned_decoders_load_with_plain_transformers(pruned, name: str, tmp_path) -> None:
    """One config describes every block: the config's fields are the pruned widths and transformers'
    own from_pretrained rebuilds the model; nothing of structprune's is recorded in config.json."""
    _, _, _, result = pruned[name]
    section = result.report.extra["hf_config"]
    assert section["loader"] == "transformers from_pretrained"
    result.model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert hf.LAYERS_KEY not in saved and hf.ATTRIBUTES_KEY not in saved
    loaded = type(result.model).from_pretrained(tmp_path).eval()
    assert max_diff(loaded, result.model, tokens()) <= ATOL


def test_llama_gqa_config_holds_the_pruned_heads(pruned) -> None:
    """Grouped-query attention: the config's head counts are read from the pruned projections."""
    model, _, _, result = pruned["llama"]
    config, attention = result.model.config, result.model.model.layers[0].self_attn
    assert config.num_attention_heads * config.head_dim == attention.q_proj.out_features
    assert config.num_key_value_heads * config.head_dim == attention.k_proj.out_features
    assert config.num_key_value_heads < config.num_attention_heads
    assert config.hidden_size == result.model.model.embed_tokens.embedding_dim
    assert config.intermediate_size == result.model.model.layers[0].mlp.up_proj.out_features


def test_bert_attention_width_needs_the_structprune_loader(pruned, tmp_path) -> None:
    """BERT builds its attention hidden_size wide, so heads pruned under a kept hidden size are recorded
    per block; the saved folder says so and structprune.hf.from_pretrained rebuilds it."""
    _, _, _, result = pruned["bert"]
    section = result.report.extra["hf_config"]
    assert section["loader"] == "structprune.hf.from_pretrained"
    heads = result.model.encoder.layer[0].attention.self.num_attention_heads
    assert [layer["num_attention_heads"] for layer in section["layers"]] == [heads] * LAYERS
    result.model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved[hf.LAYERS_KEY] == section["layers"]


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_global_pruning_keeps_different_widths_per_block_and_round_trips(name: str, tmp_path) -> None:
    model = tiny(name)
    result = structprune.compress(model, tokens(), ratio=0.5, global_pruning=True)
    layers = result.report.extra["hf_config"]["layers"]
    assert len({json.dumps(layer, sort_keys=True) for layer in layers}) > 1, layers
    assert result.report.extra["hf_config"]["loader"] == "structprune.hf.from_pretrained"
    result.model.save_pretrained(tmp_path)
    assert max_diff(hf.from_pretrained(tmp_path), result.model, tokens(3, 7)) <= ATOL


def test_without_cache_restores_the_flag_even_on_error() -> None:
    model = tiny("llama")
    with pytest.raises(RuntimeError), hf.without_cache(model):
        assert model.config.use_cache is False
        raise RuntimeError("boom")
    assert model.config.use_cache is True


def test_analyze_and_export_run_a_causal_lm_that_uses_its_cache(tmp_path) -> None:
    model = tiny("gpt2")
    assert model.config.use_cache
    assert structprune.analyze(model, tokens()).prunable
    section = structprune.export(model, tokens(), tmp_path / "m.onnx")
    assert section["parity"]["ok"] and model.config.use_cache


def test_an_encoder_decoder_whose_decoder_stack_holds_its_own_config_captures_and_generates() -> None:
    """T5 gives its decoder stack a copy of the config; that copy's use_cache made the capture fail with
    an EncoderDecoderCache in the output."""
    t = import_transformers()
    torch.manual_seed(0)
    model = t.T5ForConditionalGeneration(t.T5Config(vocab_size=VOCAB, d_model=HIDDEN, d_ff=MLP, d_kv=8, num_layers=2,
                                                    num_heads=HEADS, decoder_start_token_id=0)).eval()
    assert model.decoder.config is not model.config and model.decoder.config.use_cache
    inputs = {**tokens(), "decoder_input_ids": tokens()["input_ids"][:, :4]}
    result = structprune.compress(model, inputs, ratio=0.5)
    assert result.report.verification["ok"] and result.report.params_after < result.report.params_before
    assert model.decoder.config.use_cache and result.model.decoder.config.use_cache
    assert result.model.generate(inputs["input_ids"], max_new_tokens=3, do_sample=False).shape == (2, 4)


def test_the_core_library_imports_and_prunes_without_transformers() -> None:
    code = ("import sys; sys.modules['transformers'] = None; sys.modules['safetensors'] = None\n"
            "import torch, structprune\n"
            "net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))\n"
            "r = structprune.compress(net, torch.randn(2, 4), ratio=0.5)\n"
            "print(r.report.verification['ok'], 'hf_config' in r.report.extra)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["True", "False"], proc.stderr


def test_load_model_reads_a_saved_folder_and_refuses_one_only_structprune_can_build(pruned, tmp_path) -> None:
    """`structprune compress FOLDER` loads with transformers (plain widths) and example token inputs;
    a folder with per-block widths is refused with a pointer to structprune.hf.from_pretrained."""
    from structprune.errors import UsageError
    from structprune.io import load_model

    pruned["llama"][3].model.save_pretrained(tmp_path / "llama")
    loaded = load_model(tmp_path / "llama")
    assert (loaded.source, loaded.folder) == ("hf", str(tmp_path / "llama"))
    assert tuple(loaded.example_inputs["input_ids"].shape) == (2, 16)
    assert max_diff(loaded.model, pruned["llama"][3].model, tokens()) <= ATOL
    pruned["bert"][3].model.save_pretrained(tmp_path / "bert")
    with pytest.raises(UsageError, match="structprune.hf.from_pretrained"):
        load_model(tmp_path / "bert")


def test_text_lines_are_tokenised_padded_on_the_right_and_each_batch_cut_to_its_longest_line(tmp_path) -> None:
    from structprune.data import load_data
    from structprune.data.load import DATA_SOURCES, text_source
    from structprune.pipeline import calibration_loader

    t = import_transformers()
    t.BertTokenizer(vocab={w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a", "b"])},
                    padding_side="left").save_pretrained(tmp_path)  # the folder asks for left padding
    (tmp_path / "data.txt").write_text("a b\n\na a a a a a a a a a\nb\n", encoding="utf-8")
    bundle = load_data(str(tmp_path / "data.txt"), sources=(text_source(tmp_path, 6), *DATA_SOURCES), batch_size=8)
    train, val = next(iter(bundle.train)), next(iter(bundle.val))  # a seeded 20% (here one line) held out
    assert set(train) == set(val) == {"input_ids", "attention_mask"}
    lengths = [*train["attention_mask"].sum(1).tolist(), *val["attention_mask"].sum(1).tolist()]
    assert sorted(lengths) == [3, 4, 6] and bundle.num_classes is None  # truncated to 6 tokens
    for batch in (train, val):  # padding on the right, the batch as long as its longest line
        mask = batch["attention_mask"]
        assert batch["input_ids"].shape == mask.shape == (len(mask), int(mask.sum(1).max()))
        assert all(row.tolist() == [1] * int(row.sum()) + [0] * (len(row) - int(row.sum())) for row in mask)
        assert ((batch["input_ids"] == 0) == (mask == 0)).all()  # [PAD] exactly where the mask is 0
    calibration = next(iter(calibration_loader(bundle)))
    assert calibration["input_ids"].shape == train["input_ids"].shape


def test_calibration_batches_texts_of_similar_length_together_in_a_seeded_order(tmp_path) -> None:
    from structprune.data import load_data
    from structprune.data.load import DATA_SOURCES, text_source
    from structprune.pipeline import calibration_loader

    t = import_transformers()
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "a"])}
    t.BertTokenizer(vocab=vocab).save_pretrained(tmp_path)
    (tmp_path / "data.txt").write_text("".join("a " * n + "\n" for n in range(1, 21)), encoding="utf-8")
    bundle = load_data(str(tmp_path / "data.txt"), sources=(text_source(tmp_path, 32), *DATA_SOURCES), val_fraction=0)
    runs = [[int(n) for n in b["attention_mask"].sum(1)] for b in calibration_loader(bundle, 16, batch_size=4)]
    ranked = sorted(_first_lengths(bundle, 16))  # the first 16 training lines, each batch four of similar length
    assert sorted(sorted(run) for run in runs) == [ranked[i:i + 4] for i in range(0, 16, 4)]
    assert runs != sorted(runs)  # the batches in a seeded order, not shortest first
    again = calibration_loader(bundle, 16, batch_size=4)
    assert [b["input_ids"].shape[1] for b in again] == [max(run) for run in runs]
    assert runs == [[int(n) for n in b["attention_mask"].sum(1)] for b in again]


def _first_lengths(bundle, count: int) -> list[int]:
    dataset = bundle.train.dataset
    return [int(dataset[i]["attention_mask"].sum()) for i in range(count)]


def test_a_vit_round_trips_and_an_ffn_pruned_distilbert_loads_with_plain_transformers(tmp_path) -> None:
    t = import_transformers()
    torch.manual_seed(0)
    vit = t.ViTModel(t.ViTConfig(image_size=16, patch_size=4, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                 num_attention_heads=HEADS, intermediate_size=MLP)).eval()
    pixels = {"pixel_values": torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))}
    result = structprune.compress(vit, pixels, ratio=0.5)
    assert result.report.verification["ok"] and result.report.extra["hf_config"]["ok"]
    result.model.save_pretrained(tmp_path / "vit")
    assert max_diff(hf.from_pretrained(tmp_path / "vit"), result.model, pixels) <= ATOL

    bert = tiny("distilbert")
    result = structprune.compress(bert, tokens(), ratio=0.5, ignore=["*attention*"])
    assert result.report.extra["hf_config"]["loader"] == "transformers from_pretrained"
    assert result.model.config.hidden_dim == MLP // 2 and result.model.config.dim == HIDDEN
    result.model.save_pretrained(tmp_path / "distilbert")
    loaded = type(result.model).from_pretrained(tmp_path / "distilbert").eval()
    assert max_diff(loaded, result.model, tokens(3, 7)) <= ATOL
