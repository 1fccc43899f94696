"""ModelStore: atomic switch to a new version only after it loads and passes a smoke test."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest

from neo_edge_runtime import ArtifactError, ModelStore, compile_model
from neo_edge_runtime.compile import zoo
from neo_edge_runtime.artifact import write_manifest


@pytest.fixture()
def v2(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(zoo.mlp(features=8, hidden=(16,), classes=3), path)
    return compile_model(path, "host", tmp_path / "v2", version="2.0.0")


def test_install_makes_the_new_version_current(host_artifact, v2, tmp_path):
    store = ModelStore(tmp_path / "store")
    assert store.current is None
    store.install(host_artifact)
    assert store.current.version == "1.0.0"
    store.install(v2)
    assert store.current.version == "2.0.0"
    assert store.previous_path is not None
    assert (tmp_path / "store" / "current").is_symlink()


def test_a_broken_new_version_leaves_the_old_one_serving(host_artifact, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.install(host_artifact)
    before = store.current_path
    broken = shutil.copytree(host_artifact, tmp_path / "broken")
    lib = broken / "model.so"
    lib.write_bytes(lib.read_bytes()[:4096])  # truncated, and the manifest re-signed for it
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["model"]["version"] = "9.9.9"
    write_manifest(broken, manifest)
    with pytest.raises(ArtifactError, match="new model version 9.9.9-.* was not installed, the "
                                            "current one keeps serving: loading it crashed the "
                                            "smoke-test process"):
        store.install(broken)
    assert store.current_path == before and store.current.version == "1.0.0"
    store.current.predict(np.zeros((1, 3, 16, 16), np.float32))
    assert sorted(p.name for p in (tmp_path / "store" / "versions").iterdir()) == \
        [before.name]


def test_a_new_version_with_non_finite_outputs_is_refused(host_artifact, v2, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.install(host_artifact)
    with pytest.raises(ArtifactError, match="non-finite values in output 'output'"):
        store.install(v2, smoke_input={"input": np.full((1, 8), 3e38, np.float32)})
    assert store.current.version == "1.0.0"


def test_rollback_returns_to_the_previous_version(host_artifact, v2, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.install(host_artifact)
    store.install(v2)
    assert store.rollback().version == "1.0.0"
    assert ModelStore(tmp_path / "store").current.version == "1.0.0"  # survives a restart


def test_fails_when_rolling_back_with_no_previous_version(host_artifact, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.install(host_artifact)
    with pytest.raises(ArtifactError, match="has no previous version to roll back to"):
        store.rollback()
