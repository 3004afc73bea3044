"""Decoders whose hidden width is pruned. With an LM head that is not tied, the head reads the pruned stream
from outside the chain of blocks. The blocks are still refit and tuned one by one (their targets the
dense outputs on the channels the stream kept, told by the norms inside each block), and the head is
refit after them by passes from the input."""
from __future__ import annotations

import torch

import structprune
from helpers import import_transformers
from structprune.calibrate import reconstruct
from structprune.calibrate.block_tuning import stream_channels
from structprune.calibrate.reconstruct import NO_CHAIN
from structprune.criteria.obs import StructuredOBS


def _llama_and_batches():
    transformers = import_transformers()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False, use_cache=False)).eval()
    ids = torch.randint(0, 128, (48, 16), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(8, 16, dtype=torch.long)
    batches = [{"input_ids": ids[i:i + 8], "attention_mask": mask} for i in range(0, 32, 8)]
    held_out = {"input_ids": ids[32:], "attention_mask": torch.ones(16, 16, dtype=torch.long)}
    return model, batches, held_out


def test_an_untied_lm_head_after_the_blocks_does_not_stop_block_tuning():
    model, batches, held_out = _llama_and_batches()
    result = structprune.compress(model, batches[0], ratio=0.25, criterion=StructuredOBS(tune_epochs=4), data=batches)
    assert result.report.verification["ok"] and result.model.config.hidden_size < 64
    calibration = result.report.extra["calibration"]
    assert "tuning_skipped" not in calibration
    assert calibration["tuned"] == ["model.layers.0", "model.layers.1"]

    pruned = structprune.apply_plan(model, batches[0], result.plan, graph=result.graph)
    untuned = reconstruct(model, pruned, result.graph, result.plan, batches, tune_epochs=0)
    assert untuned.passes == "blocks" and untuned.untuned == ""
    assert untuned.layers[-1].name == "lm_head"  # refit last, after every block
    with torch.no_grad():
        dense, refit, tuned = (m(**held_out).logits for m in (model, pruned, result.model))
    error = {name: float((out - dense).pow(2).sum() / dense.pow(2).sum()) for name, out in
             (("refit", refit), ("tuned", tuned))}
    assert error["tuned"] < error["refit"]


def test_the_stream_channels_are_read_from_the_norms_when_they_agree():
    model, _, _ = _llama_and_batches()
    block = "model.layers.0"
    keep = [0, 2, 5, 7]
    kept = {f"{block}.input_layernorm.weight": {0: keep}, f"{block}.post_attention_layernorm.weight": {0: keep},
            f"{block}.mlp.up_proj.weight": {1: keep}}
    assert stream_channels(model, kept, block, 64, 4).tolist() == keep
    disagree = {**kept, f"{block}.post_attention_layernorm.weight": {0: [1, 2, 5, 7]}}
    assert stream_channels(model, disagree, block, 64, 4) is None
    assert stream_channels(model, {f"{block}.mlp.up_proj.weight": {1: keep}}, block, 64, 4) is None  # no norm


class StemThenBlocks(torch.nn.Module):
    """A projection outside every container (`stem.1`'s consumer `mid`), then a chain of two blocks."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Linear(6, 16)
        self.mid = torch.nn.Linear(16, 16)
        self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU()),
                                           torch.nn.Sequential(torch.nn.Linear(16, 4))])

    def forward(self, x):
        x = self.mid(torch.relu(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return x


def test_a_consumer_outside_every_container_but_not_last_leaves_no_chain():
    """Only a suffix of the call order may lie outside the blocks; one before them means passes from
    the input, and tuning reported as not run."""
    torch.manual_seed(0)
    net = StemThenBlocks().eval()
    x = torch.randn(64, 6)
    graph = structprune.analyze(net, x[:2])
    groups = ("stem.weight:0", "blocks.0.0.weight:0")
    plan = structprune.Plan({g: tuple(range(8)) for g in groups}, {g: 16 for g in groups})
    small = structprune.apply_plan(net, x[:2], plan, graph=graph)
    report = reconstruct(net, small, graph, plan, [(x, None)], tune_epochs=1)
    assert [f.name for f in report.layers] == ["mid", "blocks.1.0"]
    assert report.passes == "prefixes" and report.untuned == NO_CHAIN


def test_a_tied_gpt2_with_its_hidden_width_pruned_is_tuned_toward_the_kept_channels():
    """The LM head tied to the embedding is not refit, so the blocks form the chain; their outputs are
    narrower than the dense ones, and tuning compares them on the kept channels (it used to fail on the
    shapes)."""
    transformers = import_transformers()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(
        vocab_size=128, n_embd=64, n_layer=2, n_head=4, use_cache=False)).eval()
    ids = torch.randint(0, 128, (32, 16), generator=torch.Generator().manual_seed(1))
    batches = [{"input_ids": ids[i:i + 8], "attention_mask": torch.ones(8, 16, dtype=torch.long)} for i in (0, 8, 16)]
    result = structprune.compress(model, batches[0], ratio=0.25, criterion=StructuredOBS(), data=batches)
    assert result.model.config.n_embd < 64
    pruned = structprune.apply_plan(model, batches[0], result.plan, graph=result.graph)
    report = reconstruct(model, pruned, result.graph, result.plan, batches, tune_epochs=8, tune_lr=1e-4)
    assert report.untuned == "" and [b.name for b in report.blocks] == ["transformer.h.0", "transformer.h.1"]
    assert all(b.error_after < b.error_before for b in report.blocks)
