"""neo_edge_runtime.telemetry: summaries, result selection and batching, capture.

Driven by a fake clock; what is published is recorded. The summaries are checked against
what the cloud side's metrics transform (lambda/summary_metrics) accepts.
"""

from __future__ import annotations

import ast
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from neo_edge_runtime import telemetry as t


class Clock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


def result(i, *, confidence=0.9, version="1.0.0", error=None, latency=2.0):
    r = {"request_id": f"r-{i}", "device": "core-1", "model_name": "digits",
         "model_version": version, "timestamp": "2024-05-01T12:00:00.000Z"}
    if error:
        r["error"] = {"type": error, "message": "bad"}
    else:
        r.update(latency_ms=latency, confidence=confidence, labels=["7"], scores=[confidence],
                 task="classification")
    return r


def make(tmp_path=None, **config):
    clock, sent = Clock(), []
    tel = t.Telemetry(t.TelemetryConfig(**config), lambda topic, m: sent.append((topic, m)),
                      device="core-1", summary_topic="neo-edge/core-1/summary",
                      capture_dir=str(tmp_path / "capture") if tmp_path else None,
                      uploader=t.FolderUploader(str(tmp_path / "bucket")) if tmp_path else None,
                      clock=clock)
    return tel, clock, sent


def published(sent, topic="results"):
    return [r for tp, m in sent if tp.endswith(topic) for r in m["results"]]


def test_all_results_are_batched_into_few_messages():
    tel, clock, sent = make(results="all", batch_seconds=1.0)
    for i in range(30):
        tel.record("neo-edge/core-1/results", result(i))
    assert len(sent) >= 1 and all(
        len(json.dumps(m, separators=(",", ":"))) <= 5000 + 100 for _, m in sent)
    clock.now += 1.0
    tel.tick()
    assert [r["request_id"] for r in published(sent)] == [f"r-{i}" for i in range(30)]
    assert len(sent) < 30 / 5  # at least five results to a message
    assert all(m["schema"] == "neo-edge.results/1" and m["device"] == "core-1" for _, m in sent)


def test_a_batch_waits_at_most_batch_seconds():
    tel, clock, sent = make(batch_seconds=2.0)
    tel.record("x/results", result(1))
    clock.now += 1.0
    tel.tick()
    assert sent == []
    clock.now += 1.0
    tel.tick()
    assert len(published(sent)) == 1


def test_sampled_mode_publishes_the_sample_and_every_notable_result():
    tel, clock, sent = make(results="sampled", sample_rate=0.1, batch_seconds=0)
    for i in range(1000):
        tel.record("x/results", result(i))
    tel.record("x/results", result(5000, confidence=0.2))
    tel.record("x/errors", result(5001, error="PayloadError"))
    chosen = published(sent)
    sampled = [r for r in chosen if r["reason"] == "sampled"]
    assert 60 <= len(sampled) <= 140
    assert {r["request_id"] for r in sampled} == {f"r-{i}" for i in range(1000)
                                                 if t.sampled(f"r-{i}", 0.1)}
    assert [r["reason"] for r in chosen if r["request_id"] == "r-5000"] == ["low_confidence"]
    assert [r["reason"] for r in published(sent, "errors")] == ["error"]


def test_notable_mode_publishes_only_what_matters():
    tel, clock, sent = make(results="notable", batch_seconds=0)
    for i in range(50):
        tel.record("x/results", result(i))
    tel.record("x/results", dict(result(99), anomaly=True))
    assert [r["reason"] for r in published(sent)] == ["anomaly"]


def test_summary_per_model_version_every_interval():
    tel, clock, sent = make(results="notable", summary_seconds=60)
    for i, latency in enumerate([0.3, 0.3, 3.0, 40.0, 20000.0]):
        tel.record("x/results", result(i, latency=latency, confidence=0.95))
    tel.record("x/results", result(10, version="2.0.0", confidence=0.3))
    tel.record("x/errors", result(11, error="Busy"))
    tel.record("x/errors", result(12, error="Busy"))
    clock.now += 59
    tel.tick()
    assert not [m for tp, m in sent if tp.endswith("summary")]
    clock.now += 1
    tel.tick()
    summaries = {m["model_version"]: m for tp, m in sent if tp.endswith("summary")}
    v1, v2 = summaries["1.0.0"], summaries["2.0.0"]
    assert (v1["inferences"], v1["errors"], v1["errors_by_kind"]) == (5, 2, {"Busy": 2})
    assert v2["low_confidence"] == 1 and v2["published"] == 1
    counts = v1["latency_ms"]["counts"]
    bounds = v1["latency_ms"]["bounds"]
    assert sum(counts) == 5 and counts[bounds.index(0.5)] == 2 and counts[-1] == 1
    assert v1["latency_ms"]["max"] == 20000.0
    assert v1["confidence"]["counts"][-1] == 5
    assert v1["window_end"] > v1["window_start"]
    # The next window starts empty.
    clock.now += 60
    tel.tick()
    assert len([m for tp, m in sent if tp.endswith("summary")]) == 2


def test_a_publish_failure_loses_the_batch_not_the_process():
    errors = []

    def broken(topic, message):
        raise ConnectionError("offline")

    tel = t.Telemetry(t.TelemetryConfig(batch_seconds=0), broken, device="d", summary_topic="s",
                      on_error=errors.append)
    tel.record("x/results", result(1))
    assert tel.lost == 1 and "offline" in errors[0]


def test_configuration_update_changes_the_mode_and_refuses_bad_values():
    tel, clock, sent = make(batch_seconds=0)
    tel.reconfigure({"publishResults": "notable", "threadCount": 2})
    assert tel.config.results == "notable"
    with pytest.raises(t.TelemetryConfigError) as exc:
        tel.reconfigure({"resultsSampleRate": "lots"})
    assert str(exc.value) == ("telemetry setting resultsSampleRate must be a number from 0 to 1; "
                              "got 'lots'")
    assert tel.config.results == "notable"


def test_configuration_from_the_environment_the_recipe_sets():
    config = t.TelemetryConfig.from_environment({
        "NEO_EDGE_SUMMARY_SECONDS": "30", "NEO_EDGE_PUBLISH_RESULTS": "sampled",
        "NEO_EDGE_SAMPLE_RATE": "0.05", "NEO_EDGE_CAPTURE": "notable"})
    assert (config.summary_seconds, config.results, config.sample_rate, config.capture) == (
        30.0, "sampled", 0.05, "notable")
    assert t.TelemetryConfig.from_environment({}) == t.TelemetryConfig()


@settings(max_examples=60, deadline=None)
@given(st.dictionaries(st.sampled_from(sorted(t._KEYS)),
                       st.one_of(st.text(max_size=8), st.floats(allow_nan=True), st.integers(),
                                 st.booleans(), st.none())))
def test_any_configuration_is_applied_or_refused_by_name(values):
    try:
        config = t.TelemetryConfig().updated(values)
    except t.TelemetryConfigError as exc:
        assert "telemetry setting" in str(exc)
    else:
        assert config.results in t.RESULT_MODES and 0 <= config.sample_rate <= 1


def test_capture_spools_training_rows_and_uploads_them(tmp_path):
    tel, clock, sent = make(tmp_path, capture="sampled", capture_rate=1.0, results="all",
                            batch_seconds=0, capture_upload_seconds=300)
    x = np.arange(4, dtype=np.float32).reshape(1, 4) / 2
    for i in range(3):
        tel.record("x/results", result(i), {"input": x})
    tel.record("x/errors", result(9, error="Busy"), {"input": x})  # errors are not captured
    assert not (tmp_path / "bucket").exists()
    clock.now += 300
    tel.tick()
    (data,) = (tmp_path / "bucket").rglob("*.csv")
    (side,) = (tmp_path / "bucket").rglob("*.jsonl")
    assert data.parent.name == "model=digits"
    rows = list(csv.reader(data.read_text().splitlines()))
    assert rows == [["", "0", "0.5", "1", "1.5"]] * 3
    meta = [json.loads(line) for line in side.read_text().splitlines()]
    assert [(m["request_id"], m["model_version"], m["prediction"]) for m in meta] == [
        (f"r-{i}", "1.0.0", "7") for i in range(3)]
    assert {m["reason"] for m in meta} == {"sampled"}
    assert not list((tmp_path / "capture").rglob("*.csv"))  # uploaded files leave the device


def test_capture_spool_is_bounded(tmp_path):
    tel, clock, sent = make(tmp_path, capture="sampled", capture_rate=1.0, capture_max_mb=0.002)
    x = np.random.default_rng(0).random((1, 64)).astype(np.float32)
    kept = sum(bool(tel.spool.add(result(i), {"input": x})) for i in range(50))
    assert 0 < kept < 50 and tel.spool.dropped == 50 - kept
    assert tel.spool.size() <= 0.002 * 1024 * 1024


def test_labelled_captures_feed_the_training_script(tmp_path):
    """The captured rows, labelled, are a channel train.py reads (label first)."""
    import importlib.util

    tel, clock, sent = make(tmp_path, capture="sampled", capture_rate=1.0)
    x = np.arange(64, dtype=np.float32).reshape(1, 64)
    for i in range(4):
        tel.record("x/results", result(i), {"input": x})
    tel.flush()
    counts = t.label_captures(str(tmp_path / "bucket"), {"r-0": 3, "r-2": 5},
                              str(tmp_path / "channel"))
    assert counts == {"files": 1, "rows": 4, "labelled": 2}
    root = Path(__file__).resolve().parents[2]
    spec = importlib.util.spec_from_file_location("train", root / "training" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    xs, ys = train.read_channel(tmp_path / "channel")
    assert ys.tolist() == [3, 5] and xs.shape == (2, 64)
    np.testing.assert_array_equal(xs[0], x.reshape(-1))


def test_device_module_parses_as_python_3_8():
    source = Path(t.__file__).read_text()
    ast.parse(source, feature_version=(3, 8))
