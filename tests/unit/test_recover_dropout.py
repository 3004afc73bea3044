"""RecoveryConfig(dropout=False): the student trains with every dropout off (modules, and attention's
dropout_p, which reads the module's mode) while BatchNorm keeps batch statistics; runs with dropout keep
their checkpoint fingerprint; on a tiny BERT with heavy dropout, distillation without it ends closer to
the dense model."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import structprune
from helpers import import_transformers
from structprune.recover import RecoveryConfig, recover
from structprune.recover.train import train_mode

VOCAB, LENGTH = 100, 12


def test_train_mode_without_dropout_keeps_batchnorm_on_batch_statistics() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 2))
    train_mode(net, dropout=False)
    assert [m.training for m in net] == [False, True, False, False]
    x = torch.randn(16, 4)
    before = net[1].running_mean.clone()
    assert torch.equal(net(x), net(x))  # no dropout noise
    assert not torch.equal(net[1].running_mean, before)  # BatchNorm still updates its averages
    train_mode(net)
    assert all(m.training for m in net)


def test_fingerprint_names_dropout_only_when_it_is_off() -> None:
    assert "dropout" not in RecoveryConfig().fingerprint()
    assert RecoveryConfig(dropout=False).fingerprint()["dropout"] is False


def _sentences(count: int, seed: int) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (count, LENGTH), generator=g)
    mask = (torch.arange(LENGTH)[None] < torch.randint(4, LENGTH + 1, (count, 1), generator=g)).long()
    return [{"input_ids": i, "attention_mask": m} for i, m in zip(ids * mask, mask)]


@pytest.mark.parametrize("seed", [0, 1])
def test_distilling_without_dropout_ends_closer_to_the_dense_model(seed: int) -> None:
    t = import_transformers()
    torch.manual_seed(seed)
    config = t.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          vocab_size=VOCAB, initializer_range=0.2, hidden_dropout_prob=0.3,
                          attention_probs_dropout_prob=0.3)
    dense = t.BertModel(config).eval()
    train = DataLoader(_sentences(64, seed=1), batch_size=8, shuffle=True)
    val = DataLoader(_sentences(32, seed=2), batch_size=16)
    pruned = structprune.compress(dense, next(iter(val)), ratio=0.5).model
    runs = {dropout: recover(pruned, train, val, RecoveryConfig(method="distill", epochs=3, optimizer="adamw",
                                                                 lr=3e-3, weight_decay=0.0, progress=False,
                                                                 dropout=dropout), dense=dense)
            for dropout in (True, False)}
    before = runs[True].initial_val_fidelity
    assert runs[False].final_val_fidelity > runs[True].final_val_fidelity > before
    assert pruned.training is False and dense.training is False


def test_the_cli_flag_no_dropout_reaches_the_recovery_config() -> None:
    from structprune.cli import _job_options, build_parser

    def recovery(*flags: str):
        return _job_options(build_parser().parse_args(["compress", "zoo:mlp", *flags])).recovery

    assert recovery("--no-dropout").dropout is False and recovery().dropout is True
