"""Export stage: a self-contained ONNX file with a dynamic batch, onnxruntime parity, and latency.

>>> import torch, tempfile, os, models_zoo, structprune
>>> from structprune.onnx import export_onnx, check_parity
>>> net, x = models_zoo.create("cnn").eval(), models_zoo.example_inputs("cnn")
>>> pruned = structprune.compress(net, x, ratio=0.5).model
>>> exported = export_onnx(pruned, x, os.path.join(tempfile.mkdtemp(), "cnn.onnx"))
>>> check_parity(pruned, exported.path, x).ok
True
"""
from structprune.errors import ExportError
from structprune.onnx.export import OnnxExport, export_onnx
from structprune.onnx.latency import Latency, compare_latency, ort_latency, session_options
from structprune.onnx.parity import Parity, check_parity
from structprune.onnx.profile import KernelTime, OrtProfile, profile_model, profile_onnx
from structprune.onnx.section import latency_section, onnx_section

__all__ = ["ExportError", "KernelTime", "Latency", "OnnxExport", "OrtProfile", "Parity", "check_parity",
           "compare_latency", "export_onnx", "latency_section", "onnx_section", "ort_latency", "profile_model",
           "profile_onnx", "session_options"]
