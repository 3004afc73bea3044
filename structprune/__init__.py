"""structprune: structured pruning as a compiler pass for PyTorch.

>>> import torch, structprune, models_zoo
>>> net = models_zoo.create("cnn").eval()
>>> result = structprune.compress(net, torch.randn(1, 3, 32, 32), ratio=0.5)
>>> result.report.verification["ok"]
True

Options: `compress(model, x, ratio=0.5, ...)` or `compress(model, x, config=CompressConfig(...))`.

Extension points, for a layer the package does not know: the analysis reads two tables, DEFAULT_RULES
(op key such as "aten.conv2d" or "mylib.fused_scale" -> `rule(ctx, node)`) and DEFAULT_MODULE_RULES
(module class -> `rule(ctx, prefix, module)`, for ties its graph does not show); the rewrite reads
DEFAULT_SHRINK_RULES (module class -> `(refresh(module, old), attrs)`, which sets attributes such as
`out_channels` from the sliced tensors). Extend a copy (`DEFAULT_RULES | {...}`) and pass it to
`analyze`/`compress`/`apply_plan` as `rules=`, `module_rules=`, `shrink_rules=`.
"""
from structprune import compat  # noqa: F401  (first: a torch older than 2.13 fails here, in one clear line)

# isort: split
from structprune import api
from structprune.api import CompressConfig, CompressResult, analyze, apply_plan, compress, export, recalibrate, select
from structprune.errors import (
    AnalysisError,
    CaptureError,
    ExportError,
    PlanError,
    QualityError,
    RewriteError,
    StructpruneError,
    UsageError,
    VerificationError,
)
from structprune.graph.channel_graph import ChannelGraph, ChannelGroup
from structprune.rewrite.shrink import DEFAULT_SHRINK_RULES
from structprune.rules import DEFAULT_RULES
from structprune.rules.modules import DEFAULT_MODULE_RULES
from structprune.selection.plan import Plan

__version__ = "0.1.0"

__all__ = [
    # entry points
    "analyze", "select", "compress", "apply_plan", "recalibrate", "export",
    # values that flow between them
    "CompressConfig", "CompressResult", "ChannelGraph", "ChannelGroup", "Plan",
    # extension points
    "DEFAULT_RULES", "DEFAULT_MODULE_RULES", "DEFAULT_SHRINK_RULES",
    # errors
    "StructpruneError", "CaptureError", "AnalysisError", "PlanError", "RewriteError", "VerificationError",
    "ExportError", "UsageError", "QualityError",
    "__version__",
]

_DEPRECATED = ("compress_with_plan",)  # use compress(model, example_inputs, plan=plan)


def __getattr__(name: str):
    """Deprecated names: still served (they warn when called), not part of `__all__`."""
    if name in _DEPRECATED:
        return getattr(api, name)
    raise AttributeError(f"module 'structprune' has no attribute '{name}'")
