"""Recovery without labels: a tiny random BERT encoder (BertModel, whose output is hidden states, not
logits) pruned at ratio 0.5 and distilled from the dense model on random-token sentences given as dict
batches {input_ids, attention_mask} without labels; classification models keep the labelled path.

The encoder uses initializer_range=0.2 (BERT's default is 0.02) and no dropout: at 0.02 a random
encoder's output is almost its embeddings, pruning its FFN and heads leaves the pooled embedding at
cosine 0.9999 to the dense one, and there is nothing to recover."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import structprune
from helpers import import_transformers
from structprune.recover import RecoveryConfig, recover
from structprune.recover.checkpoint import checkpoint_path
from structprune.recover.embeddings import EmbeddingLoss, ProjectedStudent, mean_pooled, states_of
from structprune.recover.objectives import EmbeddingObjective, output_kind

SENTENCES, LENGTH, VOCAB = 48, 12, 100


def bert_config(hidden: int = 32, intermediate: int = 64, **extra):
    transformers = import_transformers()
    return transformers.BertConfig(hidden_size=hidden, num_hidden_layers=2, num_attention_heads=4,
                                   intermediate_size=intermediate, vocab_size=VOCAB, initializer_range=0.2,
                                   hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, **extra)


def sentences(count: int, seed: int) -> list[dict]:
    """Random-token sentences of 3 to LENGTH tokens, zero-padded to LENGTH, as dict samples."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (count, LENGTH), generator=g)
    lengths = torch.randint(3, LENGTH + 1, (count,), generator=g)
    mask = (torch.arange(LENGTH)[None] < lengths[:, None]).long()
    return [{"input_ids": i, "attention_mask": m} for i, m in zip(ids * mask, mask)]


@pytest.fixture(scope="module")
def dense() -> nn.Module:
    torch.manual_seed(0)
    return import_transformers().BertModel(bert_config()).eval()


@pytest.fixture(scope="module")
def loaders() -> tuple[DataLoader, DataLoader]:
    return (DataLoader(sentences(SENTENCES, seed=1), batch_size=8, shuffle=True),
            DataLoader(sentences(16, seed=2), batch_size=8))


@pytest.fixture(scope="module")
def pruned(dense, loaders) -> nn.Module:
    result = structprune.compress(dense, next(iter(loaders[1])), ratio=0.5)
    assert result.report.params_after < result.report.params_before
    return result.model


@pytest.fixture(scope="module")
def narrow() -> nn.Module:
    """A student whose hidden width (16) differs from the teacher's (32): compared through a projection."""
    torch.manual_seed(1)
    return import_transformers().BertModel(bert_config(hidden=16, intermediate=32)).eval()


def cfg(**changes) -> RecoveryConfig:
    return RecoveryConfig(**{"method": "distill", "epochs": 2, "optimizer": "adamw", "lr": 3e-3, "weight_decay": 0.0,
                             "progress": False, **changes})


def pooled_cosine(student: nn.Module, teacher: nn.Module, loader) -> float:
    """Mean cosine of mask-weighted mean-pooled final states, computed here without recovery's code paths."""
    cosines = []
    with torch.no_grad():
        for batch in loader:
            mask = batch["attention_mask"].float().unsqueeze(-1)
            s, t = (m.eval()(**batch).last_hidden_state for m in (student, teacher))
            cosines.append(nn.functional.cosine_similarity((s * mask).sum(1) / mask.sum(1),
                                                           (t * mask).sum(1) / mask.sum(1), dim=-1))
    return float(torch.cat(cosines).mean())


def test_distillation_raises_the_pooled_cosine_to_the_dense_model(dense, pruned, loaders) -> None:
    # measured: 0.696 after one-shot pruning, 0.929 after 2 epochs (6 steps each)
    result = recover(pruned, *loaders, cfg(), dense=dense)
    assert result.method == "distill" and result.metric == "fidelity"
    assert result.initial_val_fidelity == pytest.approx(pooled_cosine(pruned, dense, loaders[1]), abs=1e-5)
    assert result.final_val_fidelity == pytest.approx(pooled_cosine(result.model, dense, loaders[1]), abs=1e-5)
    assert result.initial_val_fidelity < 0.8
    assert result.final_val_fidelity > result.initial_val_fidelity + 0.15
    assert result.history[-1].train_loss < result.history[0].train_loss
    none = recover(pruned, *loaders, cfg(method="none"), dense=dense)
    assert none.metric == "fidelity" and none.final_val_fidelity == pytest.approx(result.initial_val_fidelity)


def test_the_report_says_which_metric_it_is(dense, pruned, loaders) -> None:
    section = recover(pruned, *loaders, cfg(epochs=1), dense=dense).to_json()
    assert section["metric"] == "fidelity" and section["val_accuracy_before"] is None
    assert section["val_fidelity_after"] > section["val_fidelity_before"]
    epoch = section["history"][0]
    assert epoch["train_accuracy"] is None and epoch["val_accuracy"] is None
    assert 0 < epoch["train_fidelity"] <= 1 and 0 < epoch["val_fidelity"] <= 1


def test_padding_positions_do_not_change_the_loss(dense, pruned, loaders) -> None:
    objective = EmbeddingObjective(dense, EmbeddingLoss(pooled_cosine=1.0, pooled_mse=1.0, token_mse=1.0))
    batch = next(iter(loaders[1]))
    extra = torch.randint(1, VOCAB, (batch["input_ids"].shape[0], 5))
    padded = {"input_ids": torch.cat([batch["input_ids"], extra], dim=1),  # garbage ids, masked out
              "attention_mask": torch.cat([batch["attention_mask"], torch.zeros_like(extra)], dim=1)}
    with torch.no_grad():
        loss, totals = objective.loss_and_totals(pruned, batch)
        padded_loss, padded_totals = objective.loss_and_totals(pruned, padded)
        unmasked_loss, _ = objective.loss_and_totals(pruned, {"input_ids": padded["input_ids"]})
    assert float(loss) > 0.01
    assert float(padded_loss) == pytest.approx(float(loss), rel=1e-5)
    assert torch.allclose(padded_totals, totals, rtol=1e-5)
    assert abs(float(unmasked_loss) - float(loss)) > 1e-3  # the mask is what keeps padding out


def test_the_loss_reads_no_masked_position() -> None:
    student, teacher = torch.randn(3, 6, 8), torch.randn(3, 6, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 0]], dtype=torch.float32)
    noise_s, noise_t = torch.randn(3, 6, 8) * (1 - mask[..., None]), torch.randn(3, 6, 8) * (1 - mask[..., None])
    loss = EmbeddingLoss(1.0, 1.0, 1.0)
    (a, cos_a), (b, cos_b) = loss(student, teacher, mask), loss(student + 100 * noise_s, teacher + noise_t, mask)
    assert float(a) == pytest.approx(float(b), rel=1e-6) and torch.allclose(cos_a, cos_b)
    assert mean_pooled(student, mask)[2].tolist() == pytest.approx(student[2, 0].tolist())


@pytest.mark.parametrize("student", ["pruned", "narrow"])
def test_resume_after_interruption_matches_an_uninterrupted_run(student, dense, loaders, tmp_path, request) -> None:
    model, (train, val) = request.getfixturevalue(student), loaders
    config = cfg(epochs=3, seed=5, progress=True, checkpoint_dir=str(tmp_path / "run"))
    with pytest.raises(_Interrupt):
        recover(model, _InterruptingLoader(train, stop_after=2 * len(train) + 3), val, config, dense=dense)
    assert checkpoint_path(tmp_path / "run").exists()
    resumed = recover(model, train, val, dataclasses.replace(config, resume=True), dense=dense)
    straight = recover(model, train, val, dataclasses.replace(config, checkpoint_dir=str(tmp_path / "other")),
                       dense=dense)
    for key, value in straight.model.state_dict().items():
        assert torch.equal(value, resumed.model.state_dict()[key]), key
    assert [r.to_json() for r in resumed.history] == [r.to_json() for r in straight.history]
    with pytest.raises(ValueError, match="different settings.*token_mse_weight"):
        recover(model, train, val, dataclasses.replace(config, resume=True, token_mse_weight=0.5), dense=dense)


def test_a_student_of_another_width_learns_through_a_projection_that_is_dropped(dense, narrow, loaders) -> None:
    result = recover(narrow, *loaders, cfg(), dense=dense)
    assert result.notes["projection"] == {"student_width": 16, "teacher_width": 32, "dropped_after_recovery": True}
    assert type(result.model).__name__ == "BertModel" and not isinstance(result.model, ProjectedStudent)
    assert states_of(result.model(**next(iter(loaders[1])))).shape[-1] == 16
    # measured: an unrelated random student already reaches cosine 0.910 through the least-squares start (a
    # random map: 0.16); 2 epochs on 48 sentences lower its training loss (0.406 -> 0.371) and keep
    # validation at 0.910
    assert result.initial_val_fidelity > 0.85 and result.final_val_fidelity > 0.85
    assert result.history[-1].train_loss < 0.95 * result.history[0].train_loss
    assert result.history[-1].train_fidelity > result.history[0].train_fidelity


class _Interrupt(Exception):
    pass


class _InterruptingLoader:
    """Yields the wrapped loader's batches and raises after `stop_after` of them (a killed run); the
    batches recovery reads before training (to see the outputs, to fit a projection) count too."""

    def __init__(self, loader, stop_after: int) -> None:
        self.loader, self.stop_after, self.seen = loader, stop_after, 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            if self.seen == self.stop_after:
                raise _Interrupt()
            self.seen += 1
            yield batch


def test_auto_reads_what_the_dense_model_returns(dense, loaders) -> None:
    transformers = import_transformers()
    classifier = transformers.BertForSequenceClassification(bert_config(num_labels=3)).eval()
    unlabelled = loaders[1]
    labelled = [{**b, "labels": torch.zeros(b["input_ids"].shape[0], dtype=torch.long)} for b in unlabelled]
    mlp, features = nn.Linear(4, 3), torch.randn(8, 4)
    assert output_kind(dense, unlabelled) == output_kind(dense, labelled) == "embeddings"
    assert output_kind(classifier, labelled) == "logits"
    assert output_kind(mlp, [(features, torch.zeros(8, dtype=torch.long))]) == "logits"
    assert output_kind(mlp, [features]) == "embeddings"  # a (batch, width) output without labels


def test_a_classifier_keeps_the_labelled_path(loaders) -> None:
    transformers = import_transformers()
    torch.manual_seed(0)
    classifier = transformers.BertForSequenceClassification(bert_config(num_labels=3)).eval()
    labelled = [{**b, "labels": b["input_ids"][:, 0] % 3} for b in loaders[0]]
    small = structprune.compress(classifier, {k: v for k, v in labelled[0].items() if k != "labels"},
                                 ratio=0.5).model
    result = recover(small, labelled, labelled[:2], cfg(epochs=1), dense=classifier)
    assert result.metric == "accuracy" and result.initial_val_fidelity is None
    assert result.final_val_accuracy is not None and "val_fidelity" not in result.history[0].to_json()


def test_classification_recovery_is_unchanged_by_the_objective_fields(tmp_path) -> None:
    torch.manual_seed(0)
    x, y = torch.randn(96, 8), torch.randint(0, 3, (96,))
    data = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    dense = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    small = structprune.compress(dense, x[:2], ratio=0.5).model
    auto = recover(small, data, data, cfg(optimizer="sgd", lr=0.05, checkpoint_dir=str(tmp_path)), dense=dense)
    logits = recover(small, data, data, cfg(optimizer="sgd", lr=0.05, distill_target="logits",
                                            token_mse_weight=0.0), dense=dense)
    assert auto.metric == logits.metric == "accuracy"
    for a, b in zip(auto.model.state_dict().values(), logits.model.state_dict().values()):
        assert torch.equal(a, b)
    fingerprint = torch.load(checkpoint_path(tmp_path), weights_only=True)["fingerprint"]
    assert not {"distill_target", "token_mse_weight", "pooled_cosine_weight"} & set(fingerprint)
    assert set(auto.history[0].to_json()) == {"epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy",
                                              "lr", "lr_max", "dead_rate", "dead_rate_per_layer"}


def test_embeddings_need_the_dense_model_and_a_positive_weight(pruned, loaders) -> None:
    with pytest.raises(ValueError, match="dense="):
        recover(pruned, *loaders, cfg(method="finetune", distill_target="embeddings"))
    with pytest.raises(TypeError, match="labels"):
        recover(pruned, *loaders, cfg(method="finetune"))
    with pytest.raises(ValueError, match="positive weight"):
        RecoveryConfig(pooled_cosine_weight=0.0, token_mse_weight=0.0)
    with pytest.raises(ValueError, match="distill_target"):
        RecoveryConfig(distill_target="hidden")


def test_progress_bar_shows_cosine_instead_of_accuracy(dense) -> None:
    objective = EmbeddingObjective(dense, EmbeddingLoss())
    running, last = objective.postfix(torch.tensor([1.0, 1.8, 2.0], dtype=torch.float64), None)
    assert running == {"loss": "0.5000", "cos": "0.9000"} and last == {}
