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


@pytest.mark.parametrize("version", ["../../escape", "a/b", ".hidden"])
def test_fails_when_the_version_would_leave_the_store(host_artifact, tmp_path, version):
    bad = shutil.copytree(host_artifact, tmp_path / "bad")
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["model"]["version"] = version
    write_manifest(bad, manifest)
    store = ModelStore(tmp_path / "store")
    with pytest.raises(ArtifactError, match=r"^model version must be letters, digits"):
        store.install(bad)
    assert sorted(p.name for p in (tmp_path / "store" / "versions").iterdir()) == []
    assert not (tmp_path / "escape").exists() and not any(tmp_path.glob("escape*"))


def test_fails_when_the_artifact_holds_a_link(host_artifact, tmp_path):
    linked = shutil.copytree(host_artifact, tmp_path / "linked")
    (tmp_path / "secret").write_text("outside")
    (linked / "extra").symlink_to(tmp_path / "secret")
    with pytest.raises(ArtifactError, match=r"must hold plain files only, not links .*; got extra$"):
        ModelStore(tmp_path / "store").install(linked)


def test_a_corrupt_current_version_falls_back_to_the_previous(host_artifact, v2, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.install(host_artifact)
    store.install(v2)
    lib = store.current_path / "model.so"
    lib.unlink()  # a new file: the loaded library keeps its own (mapped) one
    lib.write_bytes(b"\0" * 64)  # the current version's file, corrupted on disk
    restarted = ModelStore(tmp_path / "store")
    assert restarted.current.version == "1.0.0"
    assert restarted.current_path == store.previous_path


def test_fails_when_neither_version_loads(host_artifact, tmp_path):
    store = ModelStore(tmp_path / "store")
    store.install(host_artifact)
    (store.current_path / "model.so").unlink()
    (store.current_path / "model.so").write_bytes(b"\0" * 64)
    with pytest.raises(ArtifactError, match=r"the current version does not load and there is "
                                            r"no previous one"):
        ModelStore(tmp_path / "store")
