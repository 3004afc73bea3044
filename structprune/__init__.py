"""structprune: structured pruning as a compiler pass for PyTorch.

>>> import torch, structprune, models_zoo
>>> net = models_zoo.create("cnn").eval()
>>> result = structprune.compress(net, torch.randn(1, 3, 32, 32), ratio=0.5)
>>> result.report.verification["ok"]
True
"""
from structprune.api import CompressResult, analyze, apply_plan, compress, compress_with_plan, export, select
from structprune.errors import (AnalysisError, CaptureError, PlanError, RewriteError, StructpruneError,
                                VerificationError)
from structprune.graph.channel_graph import ChannelGraph, ChannelGroup
from structprune.selection.plan import Plan

__version__ = "0.1.0"

__all__ = ["AnalysisError", "CaptureError", "ChannelGraph", "ChannelGroup", "CompressResult", "Plan",
           "PlanError", "RewriteError", "StructpruneError", "VerificationError", "analyze", "apply_plan",
           "compress", "compress_with_plan", "export", "select", "__version__"]
