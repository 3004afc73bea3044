"""`weigh="samples"`: each calibration sample's real tokens share one weight, so a sample counts once
whatever its length (a mean-pooled sentence embedding's view). Property: repeating every token of a
sample leaves obs's Hessians, choice and refit unchanged under "samples" and changes them under
"tokens" (where the longer sample counts more). Tuning by gradient gets the same row weights; Adam's
normalised steps turn float rounding into visible differences there, so it is checked through the
rows' weights, not the tuned weights."""
from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

import structprune
from structprune.calibrate.block_tuning import relative_error
from structprune.criteria import StructuredOBS
from structprune.criteria.hessian import consumer_grams
from structprune.criteria.taps import consumer_taps, token_shares
from structprune.criteria.views import group_views
from structprune.data.batches import Batch, calibration_batches

MASK = torch.tensor([[True, True, False, False], [True, True, True, True]])


def test_token_shares_give_each_sample_one_unit_of_weight_laid_out_like_its_places():
    per_token = token_shares(torch.zeros(2, 4, 3), -1, MASK)
    assert per_token.tolist() == [[0.5, 0.5, 0.0, 0.0], [0.25] * 4]
    assert token_shares(torch.zeros(8, 3), -1, MASK).reshape(-1).tolist() == per_token.reshape(-1).tolist()
    heads = token_shares(torch.zeros(2, 5, 4, 3), -1, MASK)  # (samples, heads, tokens, dim): 5 copies per token
    assert heads.shape == (2, 20) and heads[0, :4].tolist() == [0.5, 0.5, 0.0, 0.0]
    assert token_shares(torch.zeros(2, 4, 3), -1, None) is None


class PostNormBlock(nn.Module):
    """LayerNorm(h + down(up(h))), up = Linear + GELU: a post-norm feed-forward block (BERT's) on token rows."""

    def __init__(self) -> None:
        super().__init__()
        self.up, self.down, self.norm = nn.Sequential(nn.Linear(8, 24), nn.GELU()), nn.Linear(24, 8), nn.LayerNorm(8)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.norm(h + self.down(self.up(h)))


class PostNormTokens(nn.Module):
    """Token embeddings through two post-norm blocks, each token on its own (the mask marks padding)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed, self.blocks = nn.Embedding(30, 8), nn.ModuleList([PostNormBlock(), PostNormBlock()])

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        for block in self.blocks:
            h = block(h)
        return h


def sentences(repeat_first: int) -> dict:
    """Six sentences of 2-7 tokens, padded; the first one's tokens each written `repeat_first` times."""
    gen = torch.Generator().manual_seed(1)
    texts = [torch.randint(1, 30, (n,), generator=gen) for n in (2, 5, 3, 7, 4, 6)]
    texts[0] = texts[0].repeat_interleave(repeat_first)
    width = max(len(t) for t in texts) + 1
    ids = torch.zeros(len(texts), width, dtype=torch.long)
    mask = torch.zeros(len(texts), width, dtype=torch.long)
    for row, text in enumerate(texts):
        ids[row, :len(text)], mask[row, :len(text)] = text, 1
    return {"input_ids": ids, "attention_mask": mask}


def down_gram(weigh: str, repeat_first: int) -> torch.Tensor:
    net = PostNormTokens().eval()
    views = group_views(structprune.analyze(net, sentences(1)), net)
    taps = [t for t in consumer_taps(views, net) if t.module == "blocks.0.down"]
    grams = consumer_grams(net, taps, calibration_batches([sentences(repeat_first)], None), weigh=weigh)
    return next(iter(grams.values())).gram


def test_samples_weighting_makes_h_blind_to_a_sentence_written_twice_as_long():
    torch.testing.assert_close(down_gram("samples", 1), down_gram("samples", 2))
    assert not torch.allclose(down_gram("tokens", 1), down_gram("tokens", 2), rtol=1e-3)


def test_samples_weighting_of_h_is_the_hand_computed_weighted_gram():
    net, batch = PostNormTokens().eval(), sentences(1)
    gram = down_gram("samples", 1)
    with torch.no_grad():
        hidden = net.blocks[0].up(net.embed(batch["input_ids"]))
    mask = batch["attention_mask"].bool()
    rows = torch.cat([hidden[mask], torch.ones(int(mask.sum()), 1)], 1).double()
    weights = (1.0 / mask.sum(1, keepdim=True)).expand(mask.shape)[mask].double()
    torch.testing.assert_close(gram, (rows * weights[:, None]).T @ rows, rtol=1e-4, atol=1e-6)


def compressed(weigh: str, repeat_first: int, tune_epochs: float = 0.0) -> tuple[nn.Module, structprune.Plan]:
    criterion = StructuredOBS(weigh=weigh, tune_epochs=tune_epochs, tune_lr=1e-2)
    result = structprune.compress(PostNormTokens().eval(), sentences(1), ratio=0.5, criterion=criterion,
                                  data=[sentences(repeat_first)])
    assert result.report.verification["ok"] and result.report.extra["calibration"]["reconstructed_layers"] == 2
    return result.model, result.plan


def test_tuning_runs_on_each_unit_with_the_samples_weighting():
    model, plan = compressed("samples", 2, tune_epochs=3.0)
    assert plan.meta["reconstruction"]["weigh"] == "samples" and plan.meta["reconstruction"]["tune_epochs"] == 3.0
    assert model.blocks[0].up[0].out_features == 12


def unit_rows(weigh: str, monkeypatch) -> list:
    reconstruct_module = importlib.import_module("structprune.calibrate.reconstruct")
    seen = []
    monkeypatch.setattr(reconstruct_module, "tune_unit",
                        lambda *args: seen.append(args[4]) or reconstruct_module.BlockTune(args[0], 0, 0.0, 0.0))
    compressed(weigh, 2, tune_epochs=1.0)
    return seen


def test_unit_rows_weigh_each_token_by_one_over_its_sentence_length(monkeypatch):
    by_samples, by_tokens = unit_rows("samples", monkeypatch), unit_rows("tokens", monkeypatch)
    assert len(by_samples) == len(by_tokens) == 2  # one unit per block
    lengths = torch.tensor([4, 5, 3, 7, 4, 6])  # the real tokens of sentences(2)
    share = (1.0 / lengths).repeat_interleave(lengths)
    samples, tokens = by_samples[0], by_tokens[0]  # the first block's: the same inputs (the embeddings) in both
    torch.testing.assert_close(samples.inputs, tokens.inputs)
    torch.testing.assert_close(samples.weights, tokens.weights * share)  # the spread weighting times the share


@pytest.mark.parametrize("weigh", ["samples", "tokens"])
def test_choice_and_refit_under_samples_ignore_how_long_a_sentence_is(weigh):
    (short, short_plan), (long, long_plan) = compressed(weigh, 1), compressed(weigh, 2)
    assert short_plan.meta["reconstruction"]["weigh"] == weigh
    pairs = zip(short.state_dict().values(), long.state_dict().values())
    same = short_plan.keep == long_plan.keep and all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in pairs)
    assert same == (weigh == "samples")


def test_block_errors_weigh_each_sample_once():
    target = torch.zeros(2, 4, 3)
    out = torch.zeros(2, 4, 3)
    out[0, :2] = torch.tensor([1.0, -1.0, 0.0])  # sample 0 (2 real tokens): every real token wrong
    target[..., 0] = 1.0  # a target with variance per position, so errors are defined
    batch = [Batch({"input_ids": torch.zeros(2, 4), "attention_mask": MASK.long()}, None)]
    per_sample, per_token = (relative_error([out], [target], batch, weigh) for weigh in ("samples", "tokens"))
    # sample 0 carries half the weight by samples and 2 of 6 real tokens by tokens
    errors = ((out - target) ** 2).mean(-1) / target.var(-1)
    assert per_sample == pytest.approx(0.5 * float(errors[0, :2].mean()) + 0.5 * float(errors[1].mean()))
    assert per_token == pytest.approx(float(errors[MASK].mean()))


def test_unknown_weighing_is_refused():
    with pytest.raises(ValueError, match="weigh must be one of tokens, samples"):
        StructuredOBS(weigh="sentences")
