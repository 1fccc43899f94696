"""The build-machine side of ``neo_edge_runtime``: what compiles models and packages them.

==================  ===========================================================
``compiler``        ``compile_model``: ONNX, XGBoost or PyTorch to an artifact
``schedules``       register-tiled CPU schedules (convolutions, pooling, concat)
``winograd``        Winograd convolution for 3x3 stride-1 layers
``xgboost_onnx``    XGBoost trees lowered to ONNX for TVM
``zoo``             small ONNX models for tests and benchmarks
``bench``           an artifact's latency next to ONNX Runtime's
``bundle``          the device bundle (the package top + the TVM runtime library)
``recipe``          Greengrass V2 recipes (pure data: no numpy, no TVM)
``cli``             the ``neo-edge`` command
==================  ===========================================================

None of it runs on a device, and the device bundle leaves this folder out. This module
imports nothing: ``recipe`` and ``bundle`` need only the standard library, so the
construct library and a machine without TVM can use them; the others need the
``compiler`` extra (apache-tvm, onnx) and are imported only when asked for.
"""
