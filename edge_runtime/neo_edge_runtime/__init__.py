"""neo_edge_runtime: compile models for edge devices with TVM, and run them there.

Device side (TVM runtime library only)::

    from neo_edge_runtime import EdgeModel
    model = EdgeModel.load("artifact/")
    outputs = model.predict({"input": x})

Build side (full TVM)::

    from neo_edge_runtime import compile_model
    compile_model("model.onnx", target="rasp4b", output_dir="artifact/")

Names are imported lazily so that the device never imports the compiler and the
constructs can import the pure-data modules (``targets``, ``artifact``, ``recipe``)
without numpy or TVM.
"""

from __future__ import annotations

import importlib

from .errors import ArtifactError, CompileError, InputError, NeoEdgeError, TargetError

__version__ = "0.1.0"

_LAZY = {
    "EdgeModel": "runtime",
    "set_num_threads": "runtime",
    "ModelStore": "store",
    "compile_model": "compiler",
    "detect_framework": "compiler",
}

__all__ = ["ArtifactError", "CompileError", "InputError", "NeoEdgeError", "TargetError",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'neo_edge_runtime' has no attribute {name!r}")
