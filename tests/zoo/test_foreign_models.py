"""Models nobody here wrote (torchvision's and timm's), compressed at ratio 0.5: each must come back
verified and smaller. The ones that fail today are listed in KNOWN_FAILURES and marked strict xfail, so
the day one is fixed the test XPASSes, fails, and this list must be updated.

timm and torchvision are not dependencies of the project (see ../shared/tools/README.md); without timm
these tests skip, which is an environment limitation, not a result. The full table over 150+ timm
families and torchvision's zoo is benchmarks/foreign_coverage.py.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

import structprune
from helpers import load_tvshim
from structprune.errors import VerificationError

REPO = Path(__file__).resolve().parents[2]  # tests/zoo/ is two folders below the repository
SIDE = 64  # small inputs keep a dozen models affordable on a 2-core CPU
OWN_SIDE = {"maxvit_t": 224,  # its 7x7 windows need 224 x 224
            "crossvit_tiny_240": 120, "eva02_tiny_patch14_224": 56}  # patch 12 and 16 / patch 14 divide these

WORKING = [
    ("torchvision", "resnet18"), ("torchvision", "mobilenet_v3_small"), ("torchvision", "efficientnet_b0"),
    ("torchvision", "convnext_tiny"), ("timm", "resnet10t"), ("timm", "mobilevitv2_050"),
    ("timm", "deit_tiny_patch16_224"), ("timm", "efficientvit_b0"), ("timm", "repvgg_a0"),
    ("timm", "cspresnet50"), ("timm", "mobilevit_s"), ("timm", "regnetx_002"), ("timm", "ghostnet_050"),
    # verified since partial pruning (c09ea16): the modules whose re-capture fails keep their groups whole
    ("torchvision", "swin_t"), ("timm", "poolformer_s12"), ("timm", "edgenext_small"),
    # width attributes (hidden_dim, a layer scale's shape) and attention tied to its input width
    ("torchvision", "vit_b_16"), ("timm", "cait_xxs24_224"), ("timm", "convit_tiny"),
    # channel attention (whole heads through a head_dim x head_dim product); a partition size that equals
    # a head count by chance is left alone
    ("timm", "davit_tiny"), ("torchvision", "maxvit_t"),
    # Swin V2: the k third of the packed qkv bias zeroed in place, a position-bias MLP over a coordinates buffer
    ("torchvision", "swin_v2_t"),
    # timm's Swin V2: the zero k_bias, a non-persistent buffer, pieced into the qkv bias by cat (sliced with the
    # heads); CoaT: value heads split into unequal head groups by an attribute (refreshed piece by piece)
    ("timm", "swinv2_tiny_window8_256"), ("timm", "coat_lite_tiny"),
    # issue 11: weight standardisation (NFNets), wq/wk/wv cross attention (CrossViT), a pointwise Conv1d over
    # class tokens (CoaT), RoPE's stack (EVA-02)
    ("timm", "eca_nfnet_l0"), ("timm", "crossvit_tiny_240"), ("timm", "coat_tiny"),
    ("timm", "eva02_tiny_patch14_224"),
    # issue 11: F.normalize over the channels (SwiftFormer); width attributes found by running the failing class:
    # num_keys = num_heads by chance (cpubone), an input width split by an attribute (SelectiveKernel)
    ("timm", "swiftformer_xs"), ("timm", "cpubone_nano"), ("timm", "skresnet18"),
]

# pruned deep, not only verified: the least params reduction each of these reaches at ratio 0.5
# (measured at SIDE; before the width-attribute refresh and the attention width tie they reached
# 1.44x to 1.66x, or failed; timm's swinv2_tiny_window8_256 1.44x and coat_lite_tiny 1.41x before 7e5ea58
# and fe90b85, now 3.87x and 2.77x)
MIN_REDUCTION = {"vit_b_16": 3.5, "swin_t": 3.5, "poolformer_s12": 3.5, "cait_xxs24_224": 3.5,
                 "convit_tiny": 3.5, "resnet18": 3.5, "davit_tiny": 3.5, "maxvit_t": 3.5, "edgenext_small": 2.4,
                 "swin_v2_t": 3.5, "swinv2_tiny_window8_256": 3.5, "coat_lite_tiny": 2.5,
                 # issue 11 (before: 1.00x, 1.57x, 1.31x). eca_nfnet_l0 keeps its residual widths (ECA's conv1d
                 # slides over channels); crossvit keeps 2 of 3 heads and the width with them (CrossAttention
                 # reshapes by its input width); eva02_tiny's output is its residual (num_classes=0)
                 "eca_nfnet_l0": 1.8, "crossvit_tiny_240": 2.4, "coat_tiny": 2.6, "eva02_tiny_patch14_224": 1.4,
                 # this round (before: 3.19x, 2.40x, 1.01x at 224)
                 "swiftformer_xs": 3.3, "cpubone_nano": 3.0, "skresnet18": 3.5}

# (source, name) -> why compress raises VerificationError today (none at present).
KNOWN_FAILURES: dict[tuple[str, str], str] = {}


def _params():
    cases = [pytest.param(source, name, id=f"{source}:{name}") for source, name in WORKING]
    cases += [pytest.param(source, name, id=f"{source}:{name}",
                           marks=pytest.mark.xfail(strict=True, raises=VerificationError, reason=reason))
              for (source, name), reason in KNOWN_FAILURES.items()]
    return cases


@pytest.fixture(scope="module")
def zoos():
    """(timm, torchvision.models), with tvshim loaded first so torchvision imports on the CPU torch."""
    load_tvshim()
    timm = pytest.importorskip("timm", reason="timm is not installed (see ../shared/tools/README.md)")
    models = pytest.importorskip("torchvision.models", reason="torchvision is not installed")
    return timm, models


def build(zoos, source: str, name: str) -> torch.nn.Module:
    """The architecture with random weights, in eval mode, built for SIDE x SIDE inputs where it asks."""
    timm, models = zoos
    if source == "torchvision":
        size = {"image_size": SIDE} if name.startswith("vit_") else {}  # torchvision's ViT asserts its size
        if name in OWN_SIDE:
            return models.get_model(name, weights=None).eval()
        return models.get_model(name, weights=None, **size).eval()
    try:
        return timm.create_model(name, pretrained=False, img_size=OWN_SIDE.get(name, SIDE)).eval()
    except TypeError:  # convolutional models take any input size and no img_size argument
        return timm.create_model(name, pretrained=False).eval()


@pytest.mark.slow
@pytest.mark.parametrize(("source", "name"), _params())
def test_foreign_model_is_verified_and_pruned(zoos, source, name):
    model = build(zoos, source, name)
    side = OWN_SIDE.get(name, SIDE)
    result = structprune.compress(model, torch.randn(1, 3, side, side), ratio=0.5)
    assert result.report.verification["ok"]
    assert result.report.params_before / result.report.params_after >= MIN_REDUCTION.get(name, 1.05)
