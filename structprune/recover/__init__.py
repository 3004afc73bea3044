"""Recovery: fine-tuning, distillation, retraining from scratch, LR schedules, dead-neuron rate and
Activate-while-Pruning, under DDP when launched by torchrun. Iterative prune -> recover cycles, which
call the API's compress, are `structprune.iterative.iterative_prune`.

>>> from structprune.recover import RecoveryConfig, lr_at
>>> RecoveryConfig(method="finetune", epochs=1).method, lr_at("constant", 0, 10, 0.1)
('finetune', 0.1)
"""
from structprune.recover.activate import ActivateWhilePruning, ap_scores, channel_dead_rates
from structprune.recover.config import EpochRecord, RecoveryConfig, RecoveryResult
from structprune.recover.dead_neurons import DeadNeuronMeter, DeadRate, dead_neuron_rate
from structprune.recover.distributed import (
    AllReducedCriterion,
    DistContext,
    all_reduce_scores,
    distributed_session,
    is_main_process,
)
from structprune.recover.gate import check_quality_gate
from structprune.recover.losses import RecoveryLoss, distillation_loss
from structprune.recover.objectives import evaluate
from structprune.recover.recover import recover, reinitialize, resolve_method, scratch_b_epochs
from structprune.recover.schedules import SCHEDULES, allr_initial_lr, lr_at, relative_norm_drop, silo_max_lr

__all__ = ["ActivateWhilePruning", "AllReducedCriterion", "DeadNeuronMeter", "DeadRate", "DistContext", "EpochRecord",
           "RecoveryConfig", "RecoveryLoss", "RecoveryResult", "SCHEDULES", "all_reduce_scores", "allr_initial_lr",
           "ap_scores", "channel_dead_rates", "check_quality_gate", "dead_neuron_rate", "distillation_loss",
           "distributed_session", "evaluate", "is_main_process", "lr_at", "recover", "reinitialize",
           "relative_norm_drop", "resolve_method", "scratch_b_epochs", "silo_max_lr"]
