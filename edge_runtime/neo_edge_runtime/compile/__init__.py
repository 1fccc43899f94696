"""The build-machine side of ``neo_edge_runtime``: what compiles models and packages them.

==================  ===========================================================
``compiler``        ``compile_model``: ONNX, XGBoost or PyTorch to an artifact
``schedules``       register-tiled CPU schedules (convolutions, pooling, concat)
``winograd``        Winograd convolution for 3x3 stride-1 layers
``xgboost_onnx``    XGBoost trees lowered to ONNX for TVM
``onnx_ml``         ONNX-ML operators (skl2onnx's) rewritten into standard ONNX
``rnn``             ONNX LSTM, GRU and RNN for TVM's ONNX importer, one loop kernel per direction
``torch_frontend``  converters correcting TVM's PyTorch frontend (negative select)
``zoo``             small ONNX models for tests and benchmarks
``corpus``          models exported by PyTorch (dynamo) and skl2onnx, for tests and benchmarks
``tf_convert``      TensorFlow, TFLite and Keras models to ONNX through tf2onnx
``timebox``         tuning within a time budget (``neo-edge compile --tune-minutes``)
``bench``           an artifact's latency next to ONNX Runtime's
``bundle``          the device bundle (the package top + the TVM runtime library)
``recipe``          Greengrass V2 recipes (pure data: no numpy, no TVM)
``cli``             the ``neo-edge`` command
``cloud``           a SageMaker model.tar.gz in S3 compiled to an artifact in S3
==================  ===========================================================

None of it runs on a device, and the device bundle leaves this folder out. This module
imports nothing: ``recipe`` and ``bundle`` need only the standard library, so the
construct library and a machine without TVM can use them; the others need the
``compiler`` extra (apache-tvm, onnx) and are imported only when asked for.
"""
