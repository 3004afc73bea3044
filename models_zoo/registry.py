"""The zoo table (name -> factory + spec) and the functions that read it.

Input shapes and class counts in each ZooSpec are read from the factory's own keyword defaults
(`in_chans`, `image_size`, `in_features`, `seq_len`, `num_classes`): one source of truth.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from types import MappingProxyType
from typing import Any

import torch
from torch import nn

from models_zoo.bert import BertForSequenceClassification
from models_zoo.cnn import LeNet
from models_zoo.convnext import ConvNeXt
from models_zoo.csp import CSPNet
from models_zoo.densenet import DenseNet
from models_zoo.mlp import MLP
from models_zoo.mobilenet import MobileNetV2
from models_zoo.resnet_cifar import CifarResNet
from models_zoo.resnet_imagenet import ResNet
from models_zoo.shufflenet import ShuffleNetV2
from models_zoo.vgg import VGG
from models_zoo.vit import VisionTransformer

ModelInputs = torch.Tensor | dict[str, torch.Tensor]

# Which factory keywords give the input shape (without batch) for each input kind.
_SHAPE_KEYS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        "image": ("in_chans", "image_size", "image_size"),
        "vector": ("in_features",),
        "tokens": ("seq_len",),
    }
)


@dataclass(frozen=True)
class ZooSpec:
    """A zoo model's identity and default input: `family` names the coupling rules it stresses."""

    name: str
    family: str
    input_kind: str
    input_shape: tuple[int, ...]
    num_classes: int
    description: str


@dataclass(frozen=True)
class ZooEntry:
    """One row of the zoo table: how to build the model, and its spec."""

    factory: Callable[..., nn.Module]
    spec: ZooSpec


def factory_defaults(factory: Callable[..., nn.Module]) -> dict[str, Any]:
    """The keyword defaults of a model factory (a class or a functools.partial of one)."""
    params = inspect.signature(factory).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def input_shape_of(input_kind: str, settings: Mapping[str, Any]) -> tuple[int, ...]:
    """Input shape without batch, e.g. (in_chans, image_size, image_size) for "image"."""
    return tuple(int(settings[key]) for key in _SHAPE_KEYS[input_kind])


def _entry(
    name: str, factory: Callable[..., nn.Module], family: str, input_kind: str, description: str
) -> ZooEntry:
    settings = factory_defaults(factory)
    shape = input_shape_of(input_kind, settings)
    spec = ZooSpec(name, family, input_kind, shape, int(settings["num_classes"]), description)
    return ZooEntry(factory, spec)


_ENTRIES = (
    _entry("mlp", MLP, "linear", "vector", "Linear/ReLU stack"),
    _entry("cnn", LeNet, "flatten", "image", "LeNet; conv map flattened (C*H*W) into a Linear"),
    _entry("vgg", VGG, "chain", "image", "VGG with BatchNorm: conv-bn-relu chain"),
    _entry("resnet20", partial(CifarResNet, depth=20), "residual", "image", "CIFAR ResNet-20"),
    _entry("resnet56", partial(CifarResNet, depth=56), "residual", "image", "CIFAR ResNet-56"),
    _entry(
        "resnet18",
        partial(ResNet, block="basic", layers=(2, 2, 2, 2)),
        "residual",
        "image",
        "ImageNet ResNet-18 (BasicBlock); benchmark model at image_size=224",
    ),
    _entry(
        "resnet50",
        partial(ResNet, block="bottleneck", layers=(3, 4, 6, 3)),
        "residual",
        "image",
        "ImageNet ResNet-50 (Bottleneck x4); benchmark model at image_size=224",
    ),
    _entry("mobilenet_v2", MobileNetV2, "depthwise", "image", "MobileNetV2 inverted residuals"),
    _entry("densenet", DenseNet, "concat", "image", "DenseNet-BC: layers cat onto the running map"),
    _entry("csp", CSPNet, "split", "image", "YOLOv8 C2f: chunk, chained bottlenecks, cat"),
    _entry("shufflenet", ShuffleNetV2, "shuffle", "image", "ShuffleNetV2: chunk, cat, shuffle"),
    _entry(
        "convnext",
        ConvNeXt,
        "channels_last",
        "image",
        "ConvNeXt: depthwise 7x7, permute, LayerNorm, MLP, layer-scale parameter",
    ),
    _entry("vit", VisionTransformer, "attention", "image", "ViT: fused qkv, class token, pos-emb"),
    _entry(
        "bert",
        BertForSequenceClassification,
        "attention",
        "tokens",
        "BERT encoder classifier: separate query/key/value, HF module names",
    ),
)

ZOO: Mapping[str, ZooEntry] = MappingProxyType({e.spec.name: e for e in _ENTRIES})
