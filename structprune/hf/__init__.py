"""Hugging Face models in and out (the optional extra `structprune[hf]`, which installs transformers).

- `without_cache(model)`: run a causal LM without its KV cache while structprune captures, verifies and
  exports it (runtime.py); `compress`, `analyze`, `apply_plan` and `export` do this for you.
- `update_config(original, pruned, example_inputs)`: write the pruned widths into `pruned.config`
  (config.py); `compress` runs it on every `PreTrainedModel` and reports it as `hf_config`.
- `from_pretrained(folder)`: load what `save_pretrained` wrote from a pruned model, including models
  whose blocks kept different widths, which transformers' own loader cannot build (load.py).
- `check_saved(folder, model, example_inputs)`: prove `from_pretrained(folder)` gives `model` without
  loading a second copy of its weights (readback.py; for models too large to hold twice).

Importing this package does not import transformers; its functions do, when they need it.

>>> from structprune import hf
>>> hf.is_hf_model(object())
False
"""
from structprune.hf.config import ConfigUpdate, update_config
from structprune.hf.layout import LAYOUTS, LayerSizes, Layout
from structprune.hf.load import from_pretrained
from structprune.hf.readback import SavedCheck, check_saved
from structprune.hf.rebuild import ATTRIBUTES_KEY, LAYERS_KEY, with_hf_shrink_rules
from structprune.hf.runtime import is_hf_model, restore_runtime_flags, without_cache

__all__ = ["ATTRIBUTES_KEY", "LAYERS_KEY", "LAYOUTS", "ConfigUpdate", "LayerSizes", "Layout", "SavedCheck",
           "check_saved", "from_pretrained", "is_hf_model", "restore_runtime_flags", "update_config",
           "with_hf_shrink_rules", "without_cache"]
