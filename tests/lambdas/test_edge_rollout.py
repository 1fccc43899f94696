"""Health-gated rollout on the real runtime: shadow trial, promotion, health watch, rollback.

Three versions of a small classifier, each compiled for this host by the real compiler and
served by ``edge_inference`` through a real ``ModelStore`` (staging, smoke test in a
subprocess, symlinks):

- ``1.0.0``: the version serving;
- ``2.0.0``: its weights perturbed (noise of twice their spread): installs and runs fine,
  answers differently: the degraded version;
- ``1.1.0``: the same weights plus a branch ``1e-6 * sqrt(4 - x) @ Z`` that changes no
  answer for inputs below 4 and makes every output NaN above: good on the traffic it is
  shadowed on, broken on the traffic that comes after its promotion.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

THING = "core-1"
RNG = np.random.default_rng(7)
W1 = RNG.normal(size=(8, 16)).astype(np.float32)
W2 = RNG.normal(size=(16, 4)).astype(np.float32)
NOISE = np.random.default_rng(8).normal(scale=2.0, size=W1.shape).astype(np.float32)
LABELS = ["a", "b", "c", "d"]


def _onnx(path: Path, w1: np.ndarray, w2: np.ndarray, nan_branch: bool) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "W2"], ["base"])]
    inits = [numpy_helper.from_array(w1, "W1"), numpy_helper.from_array(w2, "W2")]
    if nan_branch:
        nodes += [helper.make_node("Sub", ["C", "x"], ["room"]),
                  helper.make_node("Sqrt", ["room"], ["root"]),
                  helper.make_node("MatMul", ["root", "Z"], ["tiny"]),
                  helper.make_node("Add", ["base", "tiny"], ["logits"])]
        inits += [numpy_helper.from_array(np.full((1, 8), 4.0, np.float32), "C"),
                  numpy_helper.from_array(np.full((8, 4), 1e-6, np.float32), "Z")]
    else:
        nodes.append(helper.make_node("Identity", ["base"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 4])],
                              inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def versions(tmp_path_factory):
    try:
        from neo_edge_runtime.compile.compiler import compile_model
    except ImportError as exc:
        pytest.skip(f"neo_edge_runtime.compile.compiler is not importable: {exc}")
    root = tmp_path_factory.mktemp("rollout")
    metadata = {"task": "classification", "labels": LABELS}
    out = {}
    for version, w1, nan_branch in (("1.0.0", W1, False), ("2.0.0", W1 + NOISE, False),
                                    ("1.1.0", W1, True)):
        source = _onnx(root / f"mlp-{version}.onnx", w1, W2, nan_branch)
        out[version] = compile_model(source, target="host", output_dir=root / "models" / version,
                                     name="mlp", version=version, metadata=metadata)
    return out


class Ipc:
    def __init__(self):
        self.published = []

    def publish_to_iot_core(self, *, topic_name, qos, payload):
        self.published.append((topic_name, json.loads(payload)))

    def on(self, topic):
        return [m for t, m in self.published if t == topic]

    def results(self):
        return [r for m in self.on("results") for r in m["results"]]


def service(edge, versions, tmp_path, **rollout):
    from neo_edge_runtime.rollout import RolloutConfig

    config = dict(share=1.0, requests=30, min_requests=30, health_requests=30,
                  health_min_requests=10, max_latency_ratio=1000.0)
    config.update(rollout)
    ipc = Ipc()
    svc = edge.InferenceService(
        edge.Settings(model_dir=str(versions["1.0.0"]), store_dir=str(tmp_path / "store"),
                      device=THING, results_topic="results", errors_topic="errors",
                      rollout=RolloutConfig(**config), rollout_topic="rollout"),
        publisher=edge.IpcPublisher(ipc))
    return svc, ipc


def traffic(n: int, low: float = -3.0, high: float = 3.0, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    return [{"request_id": f"r-{seed}-{i}", "data": rng.uniform(low, high, (1, 8)).round(3).tolist()}
            for i in range(n)]


@pytest.fixture
def edge(load_lambda):
    module = load_lambda("edge_inference")
    yield module
    module.set_service(None)


@pytest.mark.slow
def test_a_degraded_version_is_rejected_in_shadow_and_never_serves(edge, versions, tmp_path):
    svc, ipc = service(edge, versions, tmp_path)
    svc.on_configuration({"modelPath": str(versions["2.0.0"])})
    assert svc.store.candidate.version == "2.0.0" and svc.model.version == "1.0.0"

    answered = [svc.handle([request])[0] for request in traffic(40)]

    assert {r["model_version"] for r in answered} == {"1.0.0"}
    assert {r["model_version"] for r in ipc.results()} == {"1.0.0"}
    [decision] = ipc.on("rollout")
    assert decision["decision"] == "reject" and decision["event"] == "shadow"
    assert (decision["model_version"], decision["baseline_version"]) == ("2.0.0", "1.0.0")
    assert decision["device"] == THING and decision["figures"]["requests"] == 30
    assert decision["figures"]["agreement"] < 0.9
    assert any(r.startswith("top-1 agreement") for r in decision["reasons"])
    assert svc.store.candidate is None and svc.model.version == "1.0.0"
    assert not any(p.name.startswith("2.0.0-") for p in (tmp_path / "store/versions").iterdir())
    # Offered again (a restart, a redeployment): refused without a second trial.
    svc.on_configuration({"modelPath": str(versions["2.0.0"]) + "/"})
    assert svc.store.candidate is None and len(ipc.on("rollout")) == 1


@pytest.mark.slow
def test_a_good_version_is_promoted_and_then_watched_healthy(edge, versions, tmp_path):
    svc, ipc = service(edge, versions, tmp_path)
    svc.on_configuration({"modelPath": str(versions["1.1.0"])})

    trial = [svc.handle([r])[0] for r in traffic(30, seed=1)]
    after = [svc.handle([r])[0] for r in traffic(30, seed=2)]

    assert {r["model_version"] for r in trial} == {"1.0.0"}
    assert {r["model_version"] for r in after} == {"1.1.0"}
    promote, healthy = ipc.on("rollout")
    assert promote["decision"] == "promote" and promote["figures"]["agreement"] == 1.0
    assert promote["figures"]["score_difference"] < 1e-4
    assert healthy["decision"] == "healthy" and healthy["figures"]["error_rate"] == 0.0
    assert svc.store.previous_path.name.startswith("1.0.0-")


@pytest.mark.slow
def test_a_version_that_degrades_after_promotion_is_rolled_back(edge, versions, tmp_path):
    svc, ipc = service(edge, versions, tmp_path)
    svc.on_configuration({"modelPath": str(versions["1.1.0"])})
    for request in traffic(30, seed=3):
        svc.handle([request])
    assert svc.model.version == "1.1.0"

    # The traffic moves where 1.1.0 breaks: its answers are errors, then 1.0.0 is back.
    shifted = [svc.handle([r])[0] for r in traffic(15, low=5.0, high=6.0, seed=4)]

    assert all(r.get("error") for r in shifted[:10])
    assert {r["model_version"] for r in shifted[10:]} == {"1.0.0"}
    assert not any(r.get("error") for r in shifted[10:])
    promote, rollback = ipc.on("rollout")
    assert promote["decision"] == "promote"
    assert rollback["decision"] == "rollback" and rollback["event"] == "health"
    assert (rollback["model_version"], rollback["baseline_version"]) == ("1.1.0", "1.0.0")
    assert rollback["figures"]["error_rate"] == 1.0
    assert rollback["figures"]["baseline_error_rate"] == 0.0
    assert svc.model.version == "1.0.0"
    assert svc.store.refusal(rollback["model_id"]).startswith("rolled back: error rate 1")
