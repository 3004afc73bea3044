"""Reference architectures for structprune, each stressing one family of channel-coupling rules.

>>> import models_zoo
>>> model = models_zoo.create("resnet20").eval()
>>> model(models_zoo.example_inputs("resnet20")).shape
torch.Size([2, 10])
"""

from models_zoo.api import as_call_args, create, example_inputs, list_models, spec
from models_zoo.registry import ZOO, ModelInputs, ZooEntry, ZooSpec

__all__ = [
    "ZOO",
    "ModelInputs",
    "ZooEntry",
    "ZooSpec",
    "as_call_args",
    "create",
    "example_inputs",
    "list_models",
    "spec",
]
