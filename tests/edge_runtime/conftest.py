"""Models built in code and compiled once per test session."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from neo_edge_runtime import compile_model, zoo


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def ops_onnx(models_dir):
    path = models_dir / "ops.onnx"
    onnx.save(zoo.ops_model(16), path)
    return path


@pytest.fixture(scope="session")
def host_artifact(ops_onnx, tmp_path_factory):
    return compile_model(ops_onnx, "host", tmp_path_factory.mktemp("art") / "ops-host",
                         metadata={"labels": [str(k) for k in range(10)]})


@pytest.fixture()
def rng():
    return np.random.default_rng(0)
