"""The pruning limit: how far a model can be pruned before its accuracy collapses, predicted before any
sweep from its channel magnitudes and the flatness of its loss (after Zhang et al., adapted to channel
groups; see `structprune.limit.estimate`).

>>> from structprune.limit import estimate_pruning_limit, PruningLimit
"""
from structprune.limit.estimate import PruningLimit, estimate_pruning_limit
from structprune.limit.gates import ChannelGates, channel_gates
from structprune.limit.spectrum import Spectrum, exact_spectrum, lanczos_spectrum, squared_width

__all__ = ["ChannelGates", "PruningLimit", "Spectrum", "channel_gates", "estimate_pruning_limit", "exact_spectrum",
           "lanczos_spectrum", "squared_width"]
