"""`.pt2` archives for fuzzing that make torch run code: pickled parts, legacy layouts, AOTInductor
libraries, and program JSON strings that torch evaluates (sympy expressions, guards, argument names)."""
from __future__ import annotations

import io
import json
import pickle
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch
from fuzz_files import (
    MARKER,
    REFUSED,
    Mutant,
    Mutation,
    Originals,
    RunsCode,
    code_payloads,
    edit_json,
    rewrite_zip,
    saved,
)
from torch._export.serde.schema import SCHEMA_VERSION
from torch._export.serde.serialize import serialize


def _pt2_pickled_weight(data: bytes, payload: RunsCode) -> bytes:
    config = json.loads(zipfile.ZipFile(io.BytesIO(data)).read("archive/data/weights/model_weights_config.json"))
    fqn, meta = next(iter(config["config"].items()))
    meta["use_pickle"] = True
    target = f"archive/data/weights/{meta['path_name']}"

    def edit(name: str, body: bytes) -> bytes:
        if name.endswith("model_weights_config.json"):
            return json.dumps(config).encode()
        return saved(payload) if name == target else body
    return rewrite_zip(data, edit)


def _pt2_legacy_layout(data: bytes, payload: RunsCode) -> bytes:
    """Top-level entries of the pre-2.7 layout: when the new reader fails (it does, on entries outside
    its folder), torch.export.load falls back to them and unpickles serialized_state_dict.pt."""
    program = serialize(torch.export.load(io.BytesIO(data)))
    return rewrite_zip(data, extra=(("version", ".".join(map(str, SCHEMA_VERSION)).encode()),
                                    ("serialized_exported_program.json", program.exported_program),
                                    ("serialized_state_dict.pt", saved({"w": payload})),
                                    ("serialized_constants.pt", program.constants),
                                    ("serialized_example_inputs.pt", program.example_inputs)))


def _pt2_opaque_constant(data: bytes, payload: RunsCode) -> bytes:
    def change(tree: dict) -> None:
        tree["config"]["evil"] = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                  "tensor_meta": None}
    return rewrite_zip(data, edit_json("model_constants_config.json", change),
                       extra=(("archive/data/constants/opaque_obj_0", pickle.dumps(payload)),))


PT2_PICKLES = {
    "sample_inputs": lambda data, payload: rewrite_zip(
        data, lambda name, body: saved(((payload,), {})) if name.endswith("sample_inputs/model.pt") else body),
    "pickled_weight": _pt2_pickled_weight,
    "legacy_weights": lambda data, payload: rewrite_zip(
        data, extra=(("archive/data/weights/model.pt", saved({"features.0.weight": payload})),)),
    "legacy_layout": _pt2_legacy_layout,
    "opaque_constant": _pt2_opaque_constant,
}


def pt2_pickled_code(m: Mutation, o: Originals, case: Path) -> Mutant:
    where, how = m.params
    return Mutant(PT2_PICKLES[where](o.pt2, code_payloads(case / MARKER)[how]), REFUSED)


def _program_edit(field: str, marker: Path) -> Callable[[dict], None]:
    """An edit of models/model.json that makes torch evaluate code that creates `marker`."""
    code = f"__import__('os').system('touch {marker}')"

    def edit(tree: dict) -> None:
        graph_module = tree["graph_module"]
        if field == "expr_str":
            graph_module["graph"]["tensor_values"]["x"]["sizes"][0] = {"as_expr": {"expr_str": code,
                                                                                   "hint": {"as_int": 1}}}
        elif field == "guards_code":
            tree["guards_code"] = [f"{code} == 0"]
        elif field == "forward_arg_names":
            graph_module["module_call_graph"][0]["signature"]["forward_arg_names"] = [f"x={code}"]
        else:  # a node calling os.system, or aten.from_file (which creates files when the graph runs)
            target, arg = ("torch.os.system", "command") if field == "system_node" else (
                "torch.ops.aten.from_file.default", "filename")
            graph_module["graph"]["nodes"].insert(0, {
                "target": target, "inputs": [{"name": arg, "arg": {"as_string": str(marker)}, "kind": 1}],
                "outputs": [{"as_none": True}], "metadata": {}, "is_hop_single_tensor_return": None, "name": "evil"})
    return edit


def pt2_program_code(m: Mutation, o: Originals, case: Path) -> Mutant:
    (field,) = m.params
    if field == "aoti":
        return Mutant(rewrite_zip(o.pt2, extra=(("archive/data/aotinductor/model/model.wrapper.so", b"\x7fELF"),)),
                      REFUSED)
    return Mutant(rewrite_zip(o.pt2, edit_json("models/model.json", _program_edit(field, case / MARKER))), REFUSED)


def pt2_damaged_entry(m: Mutation, o: Originals, case: Path) -> Mutant:
    """Consistent zip, broken content: an entry cut short or missing, so torch.export.load itself fails
    (for a missing entry it logs a traceback of its own)."""
    suffix, cut = m.params
    return Mutant(rewrite_zip(o.pt2, lambda name, body: (body[: int(len(body) * cut)] if cut else None)
                              if name.endswith(suffix) else body), REFUSED)
