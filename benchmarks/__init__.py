"""Benchmarks of the edge runtime against ONNX Runtime (``make bench``); not tests."""
