"""edge_inference: the on-device handler, with a fake model store and a fake Greengrass IPC client.

The fake IPC client records what the function publishes to IoT Core; the fake model checks
names, shapes and dtypes as ``neo_edge_runtime.EdgeModel`` does. A last test compiles a tiny
ONNX model with the real compiler and serves it through the handler.
"""

from __future__ import annotations

import base64
import json
import re
import struct
import sys
import threading
import time
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from neo_edge_runtime.errors import ArtifactError, InputError

THING = "core-1"


# --- fakes ------------------------------------------------------------------------------


class FakeModel:
    """Implements the part of EdgeModel the handler uses."""

    def __init__(self, *, name="digits", version="1.0.0", inputs=None, outputs=None,
                 metadata=None, fn=None):
        self.manifest = {
            "model": {"name": name, "version": version},
            "inputs": inputs or [{"name": "input", "shape": [1, 4], "dtype": "float32"}],
            "outputs": outputs or [{"name": "probs", "shape": [1, 3], "dtype": "float32"}],
            "metadata": metadata if metadata is not None else {
                "labels": ["cat", "dog", "bird"], "task": "classification"},
        }
        self.fn = fn or (lambda x: {"probs": np.array([[0.1, 0.7, 0.2]], np.float32)})
        self.calls: list[dict] = []

    name = property(lambda self: self.manifest["model"]["name"])
    version = property(lambda self: self.manifest["model"]["version"])
    inputs = property(lambda self: self.manifest["inputs"])
    outputs = property(lambda self: self.manifest["outputs"])
    metadata = property(lambda self: self.manifest["metadata"])

    def predict(self, inputs):
        for spec in self.inputs:
            value = inputs[spec["name"]]
            if list(value.shape) != spec["shape"]:
                raise InputError(f"input {spec['name']!r} must have shape {spec['shape']}; "
                                 f"got {list(value.shape)}")
            if value.dtype != np.dtype(spec["dtype"]):
                raise InputError(f"input {spec['name']!r} must be {spec['dtype']}")
        self.calls.append({k: v.copy() for k, v in inputs.items()})
        return self.fn(inputs if len(inputs) > 1 else next(iter(inputs.values())))


class FakeStore:
    """ModelStore's contract: install(path) switches only when the model loads."""

    def __init__(self, models):
        self.models = models  # path -> FakeModel, or an exception to raise
        self.current = None
        self.installed: list[str] = []
        self.num_threads = None

    def install(self, path, smoke_input=None):
        model = self.models[str(path)]
        if isinstance(model, Exception):
            raise model
        self.installed.append(str(path))
        self.current = model
        return model


class FakeIpc:
    """Records publishes; plays the subscription and configuration streams."""

    def __init__(self, failures=0):
        self.published: list[tuple[str, str, dict]] = []
        self.failures = failures
        self.on_request = None
        self.on_configuration = None
        self.configuration: dict = {}

    def publish_to_iot_core(self, *, topic_name, qos, payload):
        if self.failures:
            self.failures -= 1
            raise ConnectionError("ipc connection lost")
        self.published.append((topic_name, qos, json.loads(payload)))

    def subscribe_to_topic(self, *, topic, on_stream_event, on_stream_error=None,
                           on_stream_closed=None):
        self.topic = topic
        self.on_request = on_stream_event
        return SimpleNamespace(), SimpleNamespace()

    def subscribe_to_configuration_update(self, *, key_path, on_stream_event,
                                          on_stream_error=None, on_stream_closed=None):
        self.on_configuration = on_stream_event
        return SimpleNamespace(), SimpleNamespace()

    def get_configuration(self, *, key_path):
        return SimpleNamespace(value=self.configuration)

    def on(self, topic):
        """The results published on ``topic``, out of their batches (the wire format of
        ``neo_edge_runtime.telemetry``)."""
        return [{k: v for k, v in result.items() if k != "reason"}
                for t, _, message in self.published if t == topic
                for result in message["results"]]


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture
def edge(load_lambda):
    module = load_lambda("edge_inference")
    yield module
    module.set_service(None)


def make(edge, model=None, *, ipc=None, models=None, **settings):
    defaults = dict(model_dir="/models/v1", store_dir="/store", input_topic="local/in",
                    results_topic=f"neo-edge/{THING}/results",
                    errors_topic=f"neo-edge/{THING}/errors", device=THING,
                    reload_check_seconds=3600.0)
    defaults.update(settings)
    store = FakeStore(models or {defaults["model_dir"]: model or FakeModel()})
    ipc = ipc or FakeIpc()
    service = edge.InferenceService(edge.Settings(**defaults),
                                    publisher=edge.IpcPublisher(ipc, backoff=0), store=store)
    return SimpleNamespace(service=service, ipc=ipc, store=store,
                           results=lambda: ipc.on(f"neo-edge/{THING}/results"),
                           errors=lambda: ipc.on(f"neo-edge/{THING}/errors"))


def b64(array: np.ndarray) -> dict:
    return {"b64": base64.b64encode(array.tobytes()).decode(), "dtype": str(array.dtype),
            "shape": list(array.shape)}


def png(image: np.ndarray, filters=(0,)) -> bytes:
    """A PNG file of an (H, W, C) uint8 image, each row with the next of ``filters``."""
    h, w, c = image.shape
    colour = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    bpp, raw, prev = c, b"", np.zeros(w * c, np.int32)
    for y in range(h):
        row = image[y].reshape(-1).astype(np.int32)
        kind = filters[y % len(filters)]
        left = np.concatenate([np.zeros(bpp, np.int32), row[:-bpp]])
        upleft = np.concatenate([np.zeros(bpp, np.int32), prev[:-bpp]])
        if kind == 0:
            pred = np.zeros_like(row)
        elif kind == 1:
            pred = left
        elif kind == 2:
            pred = prev
        elif kind == 3:
            pred = (left + prev) // 2
        else:
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            pred = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
        raw += bytes([kind]) + ((row - pred) % 256).astype(np.uint8).tobytes()
        prev = row

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


IMAGE_MODEL = dict(inputs=[{"name": "image", "shape": [1, 3, 4, 4], "dtype": "float32"}],
                   metadata={"task": "classification", "labels": ["a", "b", "c"]})


# --- results ----------------------------------------------------------------------------


def test_a_tensor_request_gives_a_classification_result(edge):
    f = make(edge)
    x = np.arange(4, dtype=np.float32).reshape(1, 4)
    [result] = f.service.handle([json.dumps({"request_id": "r-1", "tensor": b64(x)}).encode()])

    assert f.results() == [result] and f.errors() == []
    assert result["request_id"] == "r-1" and result["device"] == THING
    assert (result["model_name"], result["model_version"]) == ("digits", "1.0.0")
    assert result["labels"] == ["dog", "bird", "cat"] and result["scores"] == [0.7, 0.2, 0.1]
    assert result["confidence"] == 0.7 and result["task"] == "classification"
    assert result["latency_ms"] >= 0 and result["batch_size"] == 1
    assert result["timestamp"].endswith("Z")
    np.testing.assert_array_equal(f.store.current.calls[0]["input"], x)
    assert f.ipc.published[0][1] in ("1", "AT_LEAST_ONCE")


def test_results_fit_the_results_table(edge):
    """What the device publishes is what the Glue table (and so Firehose's Parquet
    conversion) reads: every field it names has the column's type."""
    from neo_edge.telemetry import RESULTS_COLUMNS

    f = make(edge)
    f.service.handle([{"data": [[1, 2, 3, 4]]}, b"not json"])
    (batch,) = [m for t, _, m in f.ipc.published if t.endswith("/results")]
    (errors,) = [m for t, _, m in f.ipc.published if t.endswith("/errors")]
    assert batch["device"] == THING and batch["schema"] == "neo-edge.results/1"
    checks = {"string": lambda v: isinstance(v, str), "double": lambda v: isinstance(v, (int, float)),
              "int": lambda v: isinstance(v, int), "boolean": lambda v: isinstance(v, bool),
              "array<string>": lambda v: all(isinstance(x, str) for x in v),
              "array<double>": lambda v: all(isinstance(x, (int, float)) for x in v),
              "timestamp": lambda v: re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$", v),
              "struct<type:string,message:string>": lambda v: set(v) == {"type", "message"}}
    columns = dict(RESULTS_COLUMNS)
    for result in batch["results"] + errors["results"]:
        assert {"model_name", "model_version", "timestamp", "reason"} <= set(result)
        for name, value in result.items():
            if name in columns and value is not None:
                assert checks[columns[name]](value), (name, value)


def test_logits_get_a_softmax_and_top_k_from_the_setting(edge):
    model = FakeModel(fn=lambda x: {"probs": np.array([[2.0, -1.0, 0.5]], np.float32)})
    f = make(edge, model, top_k=2)
    [result] = f.service.handle([{"data": [1, 2, 3, 4]}])
    assert result["labels"] == ["cat", "bird"]
    assert sum(result["scores"]) < 1 and result["scores"][0] == pytest.approx(0.7856, abs=1e-3)


def test_unlabelled_classes_are_reported_by_index(edge):
    f = make(edge, FakeModel(metadata={}))
    [result] = f.service.handle([{"data": [1, 2, 3, 4]}])
    assert result["task"] == "classification" and result["labels"][0] == "1"


def test_regression_reports_the_value(edge):
    model = FakeModel(outputs=[{"name": "y", "shape": [1, 1], "dtype": "float32"}],
                      metadata={"task": "regression"},
                      fn=lambda x: {"y": np.array([[float(x.sum())]], np.float32)})
    f = make(edge, model)
    [result] = f.service.handle([{"data": [[1, 2, 3, 4]]}])
    assert result["task"] == "regression" and result["value"] == 10.0


def test_anomaly_reports_score_and_flag(edge):
    model = FakeModel(outputs=[{"name": "score", "shape": [1], "dtype": "float32"}],
                      metadata={"task": "anomaly", "anomaly_threshold": 0.5},
                      fn=lambda x: {"score": np.array([0.8], np.float32)})
    f = make(edge, model)
    [result] = f.service.handle([{"data": [1, 2, 3, 4]}])
    assert result["anomaly_score"] == pytest.approx(0.8) and result["anomaly"] is True


def test_the_task_setting_overrides_the_manifest(edge):
    f = make(edge, task="regression")
    [result] = f.service.handle([{"data": [1, 2, 3, 4]}])
    assert result["task"] == "regression" and len(result["value"]) == 3


def test_several_inputs_by_name(edge):
    model = FakeModel(inputs=[{"name": "a", "shape": [1, 2], "dtype": "float32"},
                              {"name": "b", "shape": [1, 2], "dtype": "int64"}])
    f = make(edge, model)
    request = {"inputs": {"a": b64(np.ones((1, 2), np.float32)),
                          "b": b64(np.array([[3, 4]], np.int64))}}
    [result] = f.service.handle([request])
    assert "error" not in result
    assert model.calls[0]["b"].tolist() == [[3, 4]]


def test_a_tensor_without_its_batch_axis_and_a_wider_float_are_accepted(edge):
    f = make(edge)
    [result] = f.service.handle([{"tensor": b64(np.arange(4, dtype=np.float64))}])
    assert "error" not in result
    assert f.store.current.calls[0]["input"].dtype == np.float32


def test_raw_binary_tensor(edge):
    f = make(edge)
    x = np.array([[1, 2, 3, 4]], np.float32)
    [result] = f.service.handle([x.tobytes()])
    assert "error" not in result and len(result["request_id"]) == 32
    np.testing.assert_array_equal(f.store.current.calls[0]["input"], x)


def test_raw_tensor_bytes_that_look_like_json_are_still_a_tensor(edge):
    f = make(edge)
    x = np.frombuffer(b"{   " * 4, dtype=np.float32).reshape(1, 4)
    [result] = f.service.handle([x.tobytes()])
    assert "error" not in result
    np.testing.assert_array_equal(f.store.current.calls[0]["input"], x)


# --- images -----------------------------------------------------------------------------


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_png_decoder_reads_every_filter_and_colour_type(edge, filters, channels):
    rng = np.random.default_rng(channels)
    image = rng.integers(0, 256, size=(5, 7, channels), dtype=np.uint8)
    np.testing.assert_array_equal(edge._decode_png(png(image, filters)), image)


def test_pgm_and_ppm_decoders(edge):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4, 1)
    pgm = b"P5\n# comment\n4 3\n255\n" + grey.tobytes()
    np.testing.assert_array_equal(edge.decode_image(pgm), grey)
    rgb = np.arange(36, dtype=np.uint8).reshape(3, 4, 3)
    np.testing.assert_array_equal(edge.decode_image(b"P6 4 3 255\n" + rgb.tobytes()), rgb)


def test_an_image_is_resized_normalised_and_laid_out_nchw(edge):
    model = FakeModel(**IMAGE_MODEL)
    model.manifest["metadata"]["preprocess"] = {"scale": 1 / 255, "mean": [0.5, 0.5, 0.5],
                                                "std": [0.5, 0.5, 0.5]}
    f = make(edge, model)
    image = np.zeros((8, 8, 3), np.uint8)
    image[..., 0] = 255  # red

    [result] = f.service.handle([{"image": base64.b64encode(png(image)).decode()}])

    assert "error" not in result
    x = model.calls[0]["image"]
    assert x.shape == (1, 3, 4, 4) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], 1.0)
    np.testing.assert_allclose(x[0, 1:], -1.0)


def test_a_raw_png_and_nhwc_layout_from_the_setting(edge):
    model = FakeModel(inputs=[{"name": "image", "shape": [1, 2, 2, 1], "dtype": "float32"}])
    f = make(edge, model, preprocess={"layout": "NHWC", "scale": 1.0})
    image = np.full((2, 2, 3), 100, np.uint8)
    [result] = f.service.handle([png(image)])
    assert "error" not in result
    np.testing.assert_allclose(model.calls[0]["image"], 100.0, rtol=1e-5)


# --- bad payloads -----------------------------------------------------------------------


BAD = [
    (b"{not json", "payload is not valid JSON"),
    ("plain text", "payload is not valid JSON"),
    (b"\x00\x01\x02", "raw payload of 3 bytes is neither JSON, an image, nor input 'input' "
                      "(16 bytes of float32 [1, 4])"),
    ([1, 2, 3], "a JSON request must be an object; got list"),
    ({"foo": 1}, "a JSON request needs one of 'tensor', 'inputs', 'data' or 'image'"),
    ({"tensor": b64(np.zeros((1, 5), np.float32))}, "input 'input' must have shape [1, 4]; got [1, 5]"),
    ({"tensor": {"b64": "***", "dtype": "float32", "shape": [1, 4]}}, "b64 is not valid base64"),
    ({"tensor": {"b64": base64.b64encode(b"abc").decode(), "dtype": "float32", "shape": [1, 4]}},
     "3 bytes do not hold shape [1, 4] of float32"),
    ({"tensor": b64(np.zeros((1, 4), np.complex64))}, "is not a numeric tensor"),
    ({"data": [[1, 2], [3]]}, "'data' for input 'input' must be a (nested) list of numbers"),
    ({"data": ["a", "b", "c", "d"]}, "'data' for input 'input' must be a (nested) list"),
    ({"inputs": {"nope": b64(np.zeros((1, 4), np.float32))}}, "unknown input 'nope'"),
    ({"image": "%%%"}, "'image' is not valid base64"),
    ({"image": base64.b64encode(b"\xff\xd8\xff\xe0junk").decode()},
     "undecodable image: JPEG needs Pillow on the device"),
    ({"request_id": "a/b", "data": [1, 2, 3, 4]}, "request_id must match"),
]


@pytest.mark.parametrize(("payload", "message"), BAD)
def test_a_bad_payload_gives_an_error_result_and_the_next_request_is_served(edge, payload,
                                                                             message,
                                                                             monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)  # the built-in decoders, as on a bare device
    f = make(edge)
    results = f.service.handle([payload, {"request_id": "ok", "data": [1, 2, 3, 4]}])

    [error] = f.errors()
    assert error["error"]["type"] == "PayloadError"
    assert message in error["error"]["message"]
    assert error["device"] == THING and error["model_name"] == "digits"
    assert results[0] == error
    assert [r["request_id"] for r in f.results()] == ["ok"]


def test_with_pillow_a_corrupt_jpeg_is_an_error_result(edge):
    pytest.importorskip("PIL")
    f = make(edge)
    f.service.handle([{"image": base64.b64encode(b"\xff\xd8\xff\xe0junk").decode()}])
    assert f.errors()[0]["error"]["message"].startswith("undecodable image: ")


def test_a_tensor_of_another_kind_is_an_error(edge):
    f = make(edge, FakeModel(inputs=[{"name": "ids", "shape": [1, 4], "dtype": "int64"}]))
    f.service.handle([{"tensor": b64(np.zeros((1, 4), np.float32))}])
    assert f.errors()[0]["error"]["message"] == "input 'ids' must be int64; got float32"


def test_an_error_result_keeps_the_request_id_it_was_given(edge):
    f = make(edge)
    f.service.handle([{"request_id": "r-9", "data": [1, 2]}])
    assert f.errors()[0]["request_id"] == "r-9"


def test_an_undecodable_image_is_an_error(edge):
    f = make(edge, FakeModel(**IMAGE_MODEL))
    truncated = png(np.zeros((4, 4, 3), np.uint8))[:40]
    f.service.handle([truncated])
    assert "undecodable image" in f.errors()[0]["error"]["message"]


def test_a_payload_over_the_limit_is_refused_before_decoding(edge):
    f = make(edge, max_payload_bytes=1000)
    f.service.handle([b"{" + b" " * 2000 + b"}", {"data": [1.0] * 300}])
    messages = [e["error"]["message"] for e in f.errors()]
    assert messages[0] == "payload of 2002 bytes is over the limit of 1000 bytes"
    assert messages[1].startswith("payload of ") and messages[1].endswith("limit of 1000 bytes")


def test_a_model_error_is_an_error_result(edge):
    def broken(x):
        raise RuntimeError("kernel crashed")

    f = make(edge, FakeModel(fn=broken))
    [result] = f.service.handle([{"request_id": "r-1", "data": [1, 2, 3, 4]}])
    assert result["error"] == {"type": "RuntimeError", "message": "kernel crashed"}


def test_non_finite_outputs_are_an_error_result(edge):
    f = make(edge, FakeModel(fn=lambda x: {"probs": np.array([[np.nan, 0.1, 0.2]], np.float32)}))
    [result] = f.service.handle([{"data": [1, 2, 3, 4]}])
    assert result["error"]["message"] == "model output scores is not finite"


def test_a_failed_publish_is_retried(edge):
    f = make(edge, ipc=FakeIpc(failures=2))
    f.service.handle([{"request_id": "r-1", "data": [1, 2, 3, 4]}])
    assert [r["request_id"] for r in f.results()] == ["r-1"]


def test_a_lost_connection_does_not_stop_the_function(edge):
    f = make(edge, ipc=FakeIpc(failures=100))
    [result] = f.service.handle([{"data": [1, 2, 3, 4]}])
    assert result["confidence"] == 0.7 and f.ipc.published == []


# --- batching ---------------------------------------------------------------------------


def batch_model(axis=4):
    return FakeModel(inputs=[{"name": "input", "shape": [axis, 2], "dtype": "float32"}],
                     outputs=[{"name": "y", "shape": [axis, 1], "dtype": "float32"}],
                     metadata={"task": "regression"},
                     fn=lambda x: {"y": x.sum(axis=1, keepdims=True)})


def test_a_backed_up_queue_is_served_in_model_batches(edge):
    model = batch_model()
    f = make(edge, model, max_batch=8)
    for i in range(6):
        f.service.submit({"request_id": f"r-{i}", "data": [[i, i]]})

    assert f.service.serve_once(timeout=0) == 6

    assert len(model.calls) == 2  # 4 + 2 (padded)
    assert model.calls[1]["input"][2:].tolist() == [[0, 0], [0, 0]]
    results = f.results()
    assert [r["request_id"] for r in results] == [f"r-{i}" for i in range(6)]
    assert [r["value"] for r in results] == [2.0 * i for i in range(6)]
    assert {r["batch_size"] for r in results} == {6}


def test_max_batch_bounds_what_is_taken_at_once(edge):
    f = make(edge, batch_model(), max_batch=3)
    for i in range(5):
        f.service.submit({"data": [[i, i]]})
    assert f.service.serve_once(timeout=0) == 3
    assert f.service.serve_once(timeout=0) == 2


def test_one_failing_request_does_not_fail_its_batch(edge):
    def picky(x):
        if (x < 0).any():
            raise InputError("negative values")
        return {"y": x.sum(axis=1, keepdims=True)}

    model = batch_model()
    model.fn = picky
    f = make(edge, model)
    results = f.service.handle([{"request_id": "a", "data": [[1, 1]]},
                                {"request_id": "b", "data": [[-1, 1]]},
                                {"request_id": "c", "data": [[2, 2]]}])
    assert [r.get("value") for r in results] == [2.0, None, 4.0]
    assert f.errors()[0]["request_id"] == "b" and f.errors()[0]["error"]["type"] == "InputError"


def test_without_a_batch_axis_requests_run_one_by_one(edge):
    model = FakeModel()
    f = make(edge, model)
    results = f.service.handle([{"data": [1, 2, 3, 4]}] * 3)
    assert len(model.calls) == 3 and all(r["batch_size"] == 3 for r in results)


# --- model updates ----------------------------------------------------------------------


def test_a_configuration_update_installs_the_new_version(edge):
    old, new = FakeModel(version="1.0.0"), FakeModel(version="2.0.0")
    f = make(edge, models={"/models/v1": old, "/models/v2": new})
    f.service.on_configuration({"modelPath": "/models/v2", "threadCount": 2})

    [result] = f.service.handle([{"data": [1, 2, 3, 4]}])
    assert result["model_version"] == "2.0.0"
    assert f.store.installed == ["/models/v1", "/models/v2"] and f.store.num_threads == 2


def test_a_new_version_that_fails_leaves_the_old_one_serving(edge):
    f = make(edge, models={"/models/v1": FakeModel(version="1.0.0"),
                           "/models/v2": ArtifactError("smoke inference gave non-finite values")})
    f.service.on_configuration({"modelPath": "/models/v2"})

    [update] = f.errors()
    assert update["error"]["type"] == "ModelUpdateError"
    assert "digits 1.0.0 keeps serving" in update["error"]["message"]
    [result] = f.service.handle([{"data": [1, 2, 3, 4]}])
    assert result["model_version"] == "1.0.0"


def test_a_changed_model_folder_is_reloaded(edge, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"v": 1}')

    class DiskStore(FakeStore):
        def install(self, path, smoke_input=None):
            version = json.loads((Path(path) / "manifest.json").read_text())["v"]
            self.current = FakeModel(version=f"{version}.0.0")
            return self.current

    store = DiskStore({})
    ipc = FakeIpc()
    service = edge.InferenceService(
        edge.Settings(model_dir=str(folder), store_dir=str(tmp_path / "store"), device=THING,
                      reload_check_seconds=0.0),
        publisher=edge.IpcPublisher(ipc), store=store)
    (folder / "manifest.json").write_text('{"v": 22}')

    [result] = service.handle([{"data": [1, 2, 3, 4]}])
    assert result["model_version"] == "22.0.0"


def test_fails_to_start_without_any_model(edge):
    with pytest.raises(edge.ConfigurationError, match="no model could be loaded from '/models/v1'"):
        make(edge, models={"/models/v1": ArtifactError("no manifest.json")})


# --- entry points -----------------------------------------------------------------------


def test_lambda_handler_serves_one_event(edge):
    f = make(edge)
    edge.set_service(f.service)
    result = edge.handler({"request_id": "r-1", "data": [1, 2, 3, 4]}, None)
    assert result["request_id"] == "r-1" and f.results() == [result]
    assert edge.handler(b"{oops", None)["error"]["type"] == "PayloadError"


def test_lambda_handler_fails_clearly_without_a_model_folder(edge, monkeypatch):
    monkeypatch.delenv("NEO_EDGE_MODEL_DIR", raising=False)
    with pytest.raises(edge.ConfigurationError,
                       match="environment variable NEO_EDGE_MODEL_DIR is not set"):
        edge.handler({"data": [1, 2, 3, 4]}, None)


def test_process_mode_subscribes_serves_and_drains_on_stop(edge):
    f = make(edge)
    stop = threading.Event()
    thread = threading.Thread(target=lambda: setattr(f, "rc", edge.main(
        ipc_client=f.ipc, service=f.service, stop=stop)))
    thread.start()
    deadline = time.monotonic() + 5
    while f.ipc.on_request is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert f.ipc.topic == "local/in"

    for i in range(50):
        message = json.dumps({"request_id": f"r-{i}", "data": [1, 2, 3, 4]}).encode()
        f.ipc.on_request(SimpleNamespace(binary_message=SimpleNamespace(message=message),
                                         json_message=None))
    f.ipc.on_request(SimpleNamespace(binary_message=None,
                                     json_message=SimpleNamespace(message={"request_id": "j",
                                                                           "data": [1, 2, 3, 4]})))
    f.ipc.on_request(SimpleNamespace(binary_message=SimpleNamespace(message=b"garbage"),
                                     json_message=None))
    stop.set()
    thread.join(10)

    assert f.rc == 0
    assert sorted(r["request_id"] for r in f.results()) == sorted([f"r-{i}" for i in range(50)]
                                                                 + ["j"])
    assert len(f.errors()) == 1


def test_process_mode_applies_configuration_updates(edge):
    f = make(edge, models={"/models/v1": FakeModel(version="1.0.0"),
                           "/models/v2": FakeModel(version="2.0.0")})
    stop = threading.Event()
    stop.set()  # serve nothing: only wire the streams
    edge.main(ipc_client=f.ipc, service=f.service, stop=stop)
    f.ipc.configuration = {"modelPath": "/models/v2"}
    f.ipc.on_configuration(SimpleNamespace())
    assert f.service.model.version == "2.0.0"


def test_process_mode_needs_an_input_topic(edge):
    f = make(edge, input_topic=None)
    assert edge.main(ipc_client=f.ipc, service=f.service, stop=threading.Event()) == 1


@pytest.mark.parametrize(("name", "value", "message"), [
    ("NEO_EDGE_MAX_BATCH", "0", "NEO_EDGE_MAX_BATCH must be an integer >= 1; got '0'"),
    ("NEO_EDGE_TOP_K", "many", "NEO_EDGE_TOP_K must be an integer >= 1; got 'many'"),
    ("NEO_EDGE_TASK", "detection", "NEO_EDGE_TASK must be one of classification, regression, "
                                   "anomaly; got 'detection'"),
    ("NEO_EDGE_PREPROCESS", "[1]", r"NEO_EDGE_PREPROCESS must be a JSON object; got '\[1\]'"),
    ("NEO_EDGE_RESULTS_TOPIC", "neo-edge/#/results",
     r"NEO_EDGE_RESULTS_TOPIC must be an MQTT topic of at most 256 bytes without wildcards"),
    ("NEO_EDGE_INPUT_TOPIC", "a" * 300, r"NEO_EDGE_INPUT_TOPIC must be an MQTT topic of at most"),
    ("NEO_EDGE_ERRORS_TOPIC", "x\ny", r"NEO_EDGE_ERRORS_TOPIC must be an MQTT topic"),
])
def test_fails_when_a_setting_is_malformed(edge, name, value, message):
    with pytest.raises(edge.ConfigurationError, match=message):
        edge.Settings.from_environment({"NEO_EDGE_MODEL_DIR": "/m", name: value})


def test_settings_from_the_greengrass_environment(edge):
    settings = edge.Settings.from_environment({
        "NEO_EDGE_MODEL_DIR": "/greengrass/v2/work/c/model", "AWS_IOT_THING_NAME": THING,
        "NEO_EDGE_INPUT_TOPIC": "in", "NEO_EDGE_THREADS": "0", "NEO_EDGE_MAX_BATCH": "16"})
    assert settings.store_dir == "/greengrass/v2/work/c/model-store"
    assert settings.results_topic == f"neo-edge/{THING}/results"
    assert settings.errors_topic == f"neo-edge/{THING}/errors"
    assert settings.num_threads is None and settings.max_batch == 16


# --- the real runtime -------------------------------------------------------------------


def _tiny_onnx(path: Path, weight: np.ndarray) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["logits"]),
         helper.make_node("Softmax", ["logits"], ["probs"], axis=-1)],
        "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 3])],
        [numpy_helper.from_array(weight, "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


WEIGHT = np.arange(12, dtype=np.float32).reshape(4, 3) / 10


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Two versions of a tiny classifier compiled for this host by the real compiler."""
    try:
        from neo_edge_runtime.compile.compiler import compile_model
    except ImportError as exc:  # the compiler is part of the runtime package's build extra
        pytest.skip(f"neo_edge_runtime.compile.compiler is not importable: {exc}")
    root = tmp_path_factory.mktemp("compiled")
    metadata = {"task": "classification", "labels": ["a", "b", "c"]}
    out = {}
    for version, weight in (("1.0.0", WEIGHT), ("2.0.0", -WEIGHT)):
        source = _tiny_onnx(root / f"tiny-{version}.onnx", weight)
        out[version] = compile_model(source, target="host", output_dir=root / version,
                                     name="tiny", version=version, metadata=metadata)
    return out


def _softmax_rows(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@pytest.mark.slow
def test_a_compiled_model_is_served_through_the_handler(edge, compiled, tmp_path):
    ipc = FakeIpc()
    service = edge.InferenceService(
        edge.Settings(model_dir=str(compiled["1.0.0"]), store_dir=str(tmp_path / "store"),
                      device=THING, results_topic="r", errors_topic="e"),
        publisher=edge.IpcPublisher(ipc))
    edge.set_service(service)
    x = np.array([[1.0, 0.5, -1.0, 2.0]], np.float32)

    by_data = edge.handler({"request_id": "r-1", "data": x.tolist()})
    by_bytes = edge.handler(x.tobytes())
    bad = edge.handler({"request_id": "r-3", "data": [1.0, 2.0]})

    expected = _softmax_rows(x @ WEIGHT)[0]
    order = np.argsort(-expected)
    for result in (by_data, by_bytes):
        assert (result["model_name"], result["model_version"]) == ("tiny", "1.0.0")
        assert result["labels"] == [["a", "b", "c"][i] for i in order]
        np.testing.assert_allclose(result["scores"], expected[order], rtol=1e-4, atol=1e-6)
    assert bad["error"]["type"] == "PayloadError"
    assert [m["request_id"] for m in ipc.on("r")] == ["r-1", by_bytes["request_id"]]
    assert [m["request_id"] for m in ipc.on("e")] == ["r-3"]


@pytest.mark.slow
def test_the_model_store_swaps_versions_and_keeps_a_broken_one_out(edge, compiled, tmp_path):
    import shutil

    ipc = FakeIpc()
    service = edge.InferenceService(
        edge.Settings(model_dir=str(compiled["1.0.0"]), store_dir=str(tmp_path / "store"),
                      device=THING, results_topic="r", errors_topic="e"),
        publisher=edge.IpcPublisher(ipc))
    x = {"data": [[1.0, 0.5, -1.0, 2.0]]}

    service.on_configuration({"modelPath": str(compiled["2.0.0"])})
    [v2] = service.handle([x])
    assert v2["model_version"] == "2.0.0"
    expected = _softmax_rows(np.array(x["data"], np.float32) @ -WEIGHT)[0]
    assert v2["scores"][0] == pytest.approx(float(expected.max()), rel=1e-4)

    broken = compiled["1.0.0"].parent / "broken"  # among the model folders
    shutil.copytree(compiled["1.0.0"], broken, dirs_exist_ok=True)
    library = next(p for p in broken.iterdir() if p.suffix == ".so")
    library.write_bytes(library.read_bytes()[:-16] + b"\0" * 16)  # tampered: digest mismatch
    service.on_configuration({"modelPath": str(broken)})

    [still] = service.handle([x])
    assert still["model_version"] == "2.0.0"
    assert ipc.on("e")[0]["error"]["type"] == "ModelUpdateError"


# --- hostile input: one answer per request under its own id, bounded work ----------------


def png_header_only(width: int, height: int) -> bytes:
    """A tiny PNG declaring ``width`` x ``height`` grey pixels, with almost no data."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.fixture(params=["built-in", "pillow"])
def decoder(request, monkeypatch):
    """Each image test runs on the device's built-in decoders and on Pillow's."""
    if request.param == "built-in":
        monkeypatch.setitem(sys.modules, "PIL", None)
    else:
        pytest.importorskip("PIL")
    return request.param


@pytest.mark.parametrize("width,height", [(8170, 8170), (1, 60_000_000)])
def test_an_image_bomb_is_refused_by_its_header(edge, decoder, width, height, monkeypatch):
    inflated = []
    monkeypatch.setattr(edge, "zlib", SimpleNamespace(
        error=zlib.error, decompressobj=lambda: inflated.append(1) or zlib.decompressobj()))
    f = make(edge, FakeModel(**IMAGE_MODEL))
    (result,) = f.service.handle([png_header_only(width, height)])
    assert inflated == []  # refused before any pixel data is inflated
    assert result["error"]["type"] == "PayloadError"
    assert "pixels is over the budget of 1048576 pixels" in result["error"]["message"]


def test_an_image_of_no_pixels_is_refused(edge, decoder):
    f = make(edge, FakeModel(**IMAGE_MODEL))
    (result,) = f.service.handle([png_header_only(0, 10)])
    assert result["error"]["type"] == "PayloadError"


def test_the_pixel_budget_is_a_setting(edge, decoder):
    f = make(edge, FakeModel(**IMAGE_MODEL), max_image_pixels=10)
    (result,) = f.service.handle([png(np.zeros((4, 4, 1), np.uint8))])
    assert "4x4 pixels is over the budget of 10 pixels" in result["error"]["message"]


def test_a_png_that_inflates_past_its_header_is_refused(edge, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 4, 4, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 50_000_000)) + chunk(b"IEND", b""))
    f = make(edge, FakeModel(**IMAGE_MODEL))
    (result,) = f.service.handle([bomb])
    assert result["error"]["message"] == ("undecodable image: PNG data inflates past 20 bytes, "
                                          "the size its 4x4 header declares (the most it may "
                                          "inflate to)")


@pytest.mark.parametrize("payload", [
    {"request_id": "deep", "data": json.loads("[" * 50 + "1" + "]" * 50)},
    {"request_id": "huge", "data": [10 ** 400]},
    {"request_id": "dims", "tensor": {"b64": "", "dtype": "float32", "shape": [0] * 70}},
    {"request_id": "wide", "tensor": {"b64": "", "dtype": "float32", "shape": [2 ** 62, 2 ** 62]}},
    {"request_id": "img", "image": base64.b64encode(b"P5 99999999999 1 255\n").decode()},
    {"request_id": "ppm", "image": base64.b64encode(b"P6 2 2 0\n" + b"\0" * 12).decode()},
])
def test_a_malformed_request_is_answered_under_its_own_id(edge, decoder, payload):
    f = make(edge, FakeModel(**IMAGE_MODEL) if "image" in payload else FakeModel())
    (result,) = f.service.handle([payload])
    assert result["request_id"] == payload["request_id"]
    assert result["error"]["type"] == "PayloadError"


def test_json_nested_past_the_interpreter_limit_is_a_payload_error(edge):
    f = make(edge, FakeModel())
    (result,) = f.service.handle([b"[" * 100_000 + b"]" * 100_000])
    assert result["error"]["type"] == "PayloadError"


def two_input_model(axis=4):
    return FakeModel(inputs=[{"name": "a", "shape": [axis, 2], "dtype": "float32"},
                             {"name": "b", "shape": [axis, 2], "dtype": "float32"}],
                     outputs=[{"name": "y", "shape": [axis, 1], "dtype": "float32"}],
                     metadata={"task": "regression"},
                     fn=lambda x: {"y": (x["a"] + x["b"]).sum(axis=1, keepdims=True)})


def test_a_request_missing_an_input_does_not_fail_its_batch(edge):
    f = make(edge, two_input_model())
    row = np.ones((1, 2), np.float32)
    results = f.service.handle([{"request_id": "ok", "inputs": {"a": b64(row), "b": b64(row)}},
                                {"request_id": "half", "inputs": {"a": b64(row)}}])
    assert results[0]["value"] == 4.0
    assert results[1]["request_id"] == "half"
    assert results[1]["error"]["message"].startswith("'inputs' lacks 'b'")


def test_a_whole_batch_request_and_row_requests_are_all_served(edge):
    model = batch_model()
    f = make(edge, model)
    whole = np.arange(8, dtype=np.float32).reshape(4, 2)
    results = f.service.handle([{"request_id": "row-1", "data": [[1, 1]]},
                                {"request_id": "whole", "tensor": b64(whole)},
                                {"request_id": "row-2", "data": [[2, 2]]}])
    assert [r["request_id"] for r in results] == ["row-1", "whole", "row-2"]
    assert all("error" not in r for r in results)
    assert results[0]["value"] == 2.0 and results[2]["value"] == 4.0
    assert len(model.calls) == 2  # the two rows stacked, the whole batch alone


def test_a_full_queue_answers_busy_at_once(edge):
    f = make(edge, FakeModel(), max_queue=2)
    for i in range(3):
        f.service.submit(json.dumps({"request_id": f"r-{i}", "data": [1, 2, 3, 4]}))
    (busy,) = f.errors()
    assert busy["request_id"] == "r-2" and busy["error"]["type"] == "Busy"
    assert f.service.serve_once(timeout=0) == 2


def test_a_payload_over_the_limit_is_answered_before_queueing(edge):
    f = make(edge, FakeModel(), max_payload_bytes=100)
    f.service.submit(b"x" * 101)
    assert f.service.queue.qsize() == 0
    assert f.errors()[0]["error"]["type"] == "PayloadError"


_ANY_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats()
                         | st.text(max_size=8),
                         lambda inner: st.lists(inner, max_size=4)
                         | st.dictionaries(st.sampled_from(["request_id", "data", "tensor", "inputs",
                                                            "image", "b64", "dtype", "shape",
                                                            "input", "x"]), inner, max_size=4),
                         max_leaves=16)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=st.lists(st.one_of(_ANY_JSON, st.binary(max_size=64)), min_size=1, max_size=4))
def test_bad_neighbours_leave_a_valid_request_unaffected(edge, bad):
    f = make(edge, batch_model())
    valid = {"request_id": "valid", "data": [[3, 4]]}
    results = f.service.handle([*bad, valid, *bad])
    assert len(results) == 2 * len(bad) + 1
    (mine,) = [r for r in results if r["request_id"] == "valid" and "error" not in r]
    assert mine["value"] == 7.0
    for result in results:
        if "error" in result:
            assert result["error"]["type"] in ("PayloadError", "InputError")


@pytest.mark.parametrize("path", ["/usr/lib/evil", "/models/../etc/model", "relative/elsewhere"])
def test_a_configured_model_path_outside_the_model_folders_is_not_loaded(edge, path):
    f = make(edge, models={"/models/v1": FakeModel(), path: FakeModel(version="6.6.6")})
    f.service.on_configuration({"modelPath": path})
    assert f.store.installed == ["/models/v1"]
    (error,) = f.errors()
    assert error["error"]["type"] == "ConfigurationError"
    assert error["error"]["message"].startswith(f"modelPath {path!r} is outside the model folders")


def test_model_roots_come_from_the_environment(edge):
    settings = edge.Settings.from_environment({"NEO_EDGE_MODEL_DIR": "/greengrass/work/c/model",
                                               "NEO_EDGE_MODEL_ROOTS": "/data/models:/opt/m"})
    assert settings.allowed_model_roots == ("/data/models", "/opt/m")
    default = edge.Settings.from_environment({"NEO_EDGE_MODEL_DIR": "/greengrass/work/c/model"})
    assert default.allowed_model_roots == ("/greengrass/work/c",)
