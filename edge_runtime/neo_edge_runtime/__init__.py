"""neo_edge_runtime: compile models for edge devices with TVM, and run them there.

The package is split by where the code runs.

Device (the package top: ``runtime``, ``store``, ``artifact``, ``_ffi``, ``errors``,
``targets``): loads and runs a compiled artifact. Needs numpy and the TVM runtime
library that the device bundle carries in ``_lib/``; never the compiler::

    from neo_edge_runtime import EdgeModel
    model = EdgeModel.load("artifact/")
    outputs = model.predict({"input": x})

Build machine (``neo_edge_runtime.compile``: the compiler and its schedules, the model
frontends, the device bundle and Greengrass recipe builders, the ``neo-edge`` command).
Needs the ``compiler`` extra (apache-tvm, onnx); the device bundle leaves it out::

    from neo_edge_runtime import compile_model
    compile_model("model.onnx", target="rasp4b", output_dir="artifact/")

Names are imported lazily so that the device never imports the compiler and the
constructs can import the pure-data modules (``targets``, ``artifact``,
``compile.recipe``) without numpy or TVM.
"""

from __future__ import annotations

import importlib

from .errors import (ArtifactError, CompileError, InputError, NeoEdgeError, SignatureError,
                     TargetError)

__version__ = "0.1.0"

_LAZY = {
    "EdgeModel": "runtime",
    "set_num_threads": "runtime",
    "ModelStore": "store",
    "compile_model": "compile.compiler",
    "detect_framework": "compile.compiler",
}

__all__ = ["ArtifactError", "CompileError", "InputError", "NeoEdgeError", "SignatureError",
           "TargetError", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'neo_edge_runtime' has no attribute {name!r}")
