"""edge_inference under hostile and overloaded input: hypothesis properties.

- every request gets exactly one answer, under its own request id, in process mode too;
- a valid request's answer does not depend on the bad requests beside it in a batch;
- errors are only ours: PayloadError, the model's InputError, Busy, Timeout;
- time is bounded by the per-request budget (``NEO_EDGE_REQUEST_TIMEOUT``), checked with a
  clock the test moves, never with a stopwatch: a request past its budget is never run;
- memory is bounded by the caps: a PNG inflates to no more than its (budgeted) header
  declares, and the compressed chunks without pixels are never inflated at all.

The fakes (model, store, IPC client) are those of test_edge_inference.py.
"""

from __future__ import annotations

import base64
import functools
import json
import struct
import sys
import zlib
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from test_edge_inference import IMAGE_MODEL, FakeModel, batch_model, make, png

OUR_ERRORS = {"PayloadError", "InputError", "Busy", "Timeout"}
#: An image model whose scores follow its input, so that equal results mean equal inputs.
SEEING_MODEL = dict(IMAGE_MODEL, fn=lambda x: {"probs": np.array(
    [[float(x.mean()), float(x.std()), float(x.max())]], np.float32)})
PROPERTY = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@pytest.fixture
def edge(load_lambda):
    module = load_lambda("edge_inference")
    yield module
    module.set_service(None)


@pytest.fixture(params=["built-in", "pillow"])
def decoder(request, monkeypatch):
    """Image properties run on the device's built-in decoders and on Pillow's."""
    if request.param == "built-in":
        monkeypatch.setitem(sys.modules, "PIL", None)
    else:
        pytest.importorskip("PIL")
    return request.param


class Clock:
    """A monotonic clock the test moves; ``tick`` is added after every reading."""

    def __init__(self, now: float = 1000.0, tick: float = 0.0):
        self.now, self.tick, self.reads = now, tick, 0

    def __call__(self) -> float:
        self.reads += 1
        value = self.now
        self.now += self.tick
        return value


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(
        ">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_file(width: int, height: int, colour: int, compressed: bytes, *, depth: int = 8,
             extra: tuple = (), idat_parts: int = 1) -> bytes:
    """A PNG declaring ``width`` x ``height`` with ``compressed`` as its pixel data (split
    into ``idat_parts`` IDAT chunks) and ``extra`` chunks before it."""
    step = max(1, -(-len(compressed) // idat_parts))
    idats = [compressed[i:i + step] for i in range(0, len(compressed), step)] or [b""]
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0))
            + b"".join(chunk(k, d) for k, d in extra)
            + b"".join(chunk(b"IDAT", part) for part in idats) + chunk(b"IEND", b""))


@functools.lru_cache(maxsize=None)
def zlib_bomb(size: int) -> bytes:
    """What ``size`` zero bytes compress to (about a thousandth of it)."""
    inflater = zlib.compressobj(9)
    block = bytes(1 << 20)
    out = [inflater.compress(block) for _ in range(size >> 20)]
    out.append(inflater.compress(bytes(size & ((1 << 20) - 1))))
    return b"".join(out) + inflater.flush()


def answers(f) -> list[dict]:
    return f.results() + f.errors()


def drain(f) -> None:
    while f.service.serve_once(timeout=0):
        pass


# --- strategies ---------------------------------------------------------------------------

_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                     lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.sampled_from(["data", "tensor", "inputs", "image", "b64",
                                                        "dtype", "shape", "input", "x"]),
                                       inner, max_size=4),
                     max_leaves=16)


@st.composite
def png_bombs(draw) -> bytes:
    """PNGs whose header and pixel data disagree: small headers over large (or garbage)
    compressed data, large headers over little, compressed text and ICC chunks."""
    width = draw(st.integers(1, 64))
    height = draw(st.integers(1, 64))
    colour = draw(st.sampled_from([0, 2, 4, 6]))
    inflated = draw(st.sampled_from([0, 1, 1 << 12, 1 << 20, 8 << 20]))
    data = draw(st.sampled_from([zlib_bomb(inflated), zlib.compress(bytes(inflated))[:-4],
                                 draw(st.binary(max_size=64))]))
    extra = draw(st.lists(st.tuples(st.sampled_from([b"zTXt", b"iTXt", b"iCCP", b"tEXt"]),
                                    st.just(b"k\x00\x00" + zlib_bomb(4 << 20))), max_size=2))
    return png_file(width, height, colour, data, extra=tuple(extra),
                    idat_parts=draw(st.integers(1, 4)))


_BAD_IMAGES = st.one_of(
    png_bombs(),
    st.binary(max_size=48).map(lambda b: b"\x89PNG\r\n\x1a\n" + b),
    st.binary(max_size=48).map(lambda b: b"P5 " + b),
    st.binary(max_size=48).map(lambda b: b"\xff\xd8\xff" + b))


def _as_request(request_id: str, body) -> dict:
    """A JSON request under ``request_id`` carrying ``body`` (bytes go in as an image)."""
    if isinstance(body, bytes):
        return {"request_id": request_id, "image": base64.b64encode(body).decode()}
    request = dict(body) if isinstance(body, dict) else {"data": body}
    request["request_id"] = request_id
    return request


# --- one answer each, under its own id, only our errors -----------------------------------


@PROPERTY
@given(bodies=st.lists(st.one_of(_JSON, _BAD_IMAGES,
                                 st.just({"data": np.zeros((1, 3, 4, 4)).tolist()})),
                       min_size=1, max_size=6),
       max_queue=st.integers(1, 8), max_batch=st.integers(1, 8))
def test_every_request_gets_one_answer_under_its_own_id(edge, decoder, bodies, max_queue,
                                                        max_batch):
    f = make(edge, FakeModel(**IMAGE_MODEL), max_queue=max_queue, max_batch=max_batch)
    ids = [f"r-{i}" for i in range(len(bodies))]
    for request_id, body in zip(ids, bodies):
        f.service.submit(json.dumps(_as_request(request_id, body)))
    drain(f)
    got = answers(f)
    assert Counter(a["request_id"] for a in got) == Counter(ids)
    assert {a["error"]["type"] for a in got if "error" in a} <= OUR_ERRORS


# --- bad neighbours -----------------------------------------------------------------------


@PROPERTY
@given(bad=st.lists(st.one_of(_BAD_IMAGES, _JSON, st.binary(max_size=64)), min_size=1,
                    max_size=4))
def test_a_valid_image_request_is_unaffected_by_bad_neighbours(edge, decoder, bad):
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3) * 5
    valid = {"request_id": "valid", "image": base64.b64encode(png(image, (0, 4))).decode()}
    (expected,) = make(edge, FakeModel(**SEEING_MODEL)).service.handle([valid])
    assert "error" not in expected
    f = make(edge, FakeModel(**SEEING_MODEL))
    neighbours = [b if isinstance(b, bytes) else _as_request(f"bad-{i}", b)
                  for i, b in enumerate(bad)]
    results = f.service.handle([*neighbours, valid, *neighbours])
    assert len(results) == 2 * len(bad) + 1
    (mine,) = [r for r in results if r["request_id"] == "valid"]
    assert {k: mine.get(k) for k in ("labels", "scores", "task", "error")} == \
        {k: expected.get(k) for k in ("labels", "scores", "task", "error")}
    assert {r["error"]["type"] for r in results if "error" in r} <= OUR_ERRORS


# --- time: the budget -------------------------------------------------------------------


@PROPERTY
@given(waits=st.lists(st.floats(0, 120, allow_nan=False), min_size=1, max_size=8),
       budget=st.floats(0.5, 60, allow_nan=False))
def test_a_request_past_its_budget_is_answered_timeout_and_never_run(edge, waits, budget):
    clock = Clock()
    model = batch_model(axis=1)
    f = make(edge, model, request_timeout=budget, max_batch=8)
    f.service.clock = clock
    start = clock.now
    for i, wait in enumerate(waits):  # request i arrives `wait` seconds before serving
        clock.now = start - wait
        f.service.submit(json.dumps({"request_id": f"r-{i}", "data": [[i, 1]]}))
    clock.now = start
    drain(f)
    late = {f"r-{i}" for i, wait in enumerate(waits) if start > (start - wait) + budget}
    timeouts = {e["request_id"] for e in f.errors() if e["error"]["type"] == "Timeout"}
    assert timeouts == late
    assert {r["request_id"] for r in f.results()} == {f"r-{i}" for i in range(len(waits))} - late
    assert len(model.calls) == len(waits) - len(late)  # nothing late was run
    for error in f.errors():
        assert f"time budget of {budget:g} s (NEO_EDGE_REQUEST_TIMEOUT)" in error["error"]["message"]


@PROPERTY
@given(height=st.integers(64, 256), budget=st.integers(1, 3))
def test_decoding_stops_at_the_budget(edge, monkeypatch, height, budget):
    """Paeth rows decode in Python; with a clock that moves 1 s per reading, decoding a tall
    image stops within about ``budget`` readings (16 rows each) and nothing runs."""
    monkeypatch.setitem(sys.modules, "PIL", None)
    clock = Clock(tick=1.0)
    model = FakeModel(inputs=[{"name": "image", "shape": [1, 3, 8, 8], "dtype": "float32"}])
    f = make(edge, model, request_timeout=float(budget))
    f.service.clock = clock
    image = np.random.default_rng(height).integers(0, 255, (height, 32, 3), dtype=np.uint8)
    (result,) = f.service.handle([{"request_id": "tall",
                                   "image": base64.b64encode(png(image, (4,))).decode()}])
    assert result["request_id"] == "tall" and result["error"]["type"] == "Timeout"
    assert model.calls == []
    assert clock.reads <= budget + 4  # readings before, during (one per 16 rows) and after


def test_the_lambda_handler_answers_a_request_that_decoded_past_its_budget(edge, monkeypatch):
    monkeypatch.setitem(sys.modules, "PIL", None)
    f = make(edge, FakeModel(inputs=[{"name": "image", "shape": [1, 3, 8, 8],
                                      "dtype": "float32"}]), request_timeout=2.0)
    f.service.clock = Clock(tick=1.0)
    edge.set_service(f.service)
    image = np.zeros((128, 8, 3), np.uint8)
    result = edge.handler({"request_id": "slow", "image": base64.b64encode(png(image, (3,))).decode()})
    assert result["request_id"] == "slow" and result["error"]["type"] == "Timeout"
    assert result["error"]["message"].startswith("request not decoded within its time budget of 2 s")


@pytest.mark.parametrize(("value", "expected"), [("", 30.0), ("0.5", 0.5), ("120", 120.0)])
def test_the_request_timeout_is_a_setting(edge, value, expected):
    settings = edge.Settings.from_environment({"NEO_EDGE_MODEL_DIR": "/m",
                                               "NEO_EDGE_REQUEST_TIMEOUT": value})
    assert settings.request_timeout == expected


@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", "inf"])
def test_fails_when_the_request_timeout_is_not_a_positive_number(edge, value):
    with pytest.raises(edge.ConfigurationError,
                       match=rf"^environment variable NEO_EDGE_REQUEST_TIMEOUT must be a number of "
                             rf"seconds > 0; got '{value}'$"):
        edge.Settings.from_environment({"NEO_EDGE_MODEL_DIR": "/m",
                                        "NEO_EDGE_REQUEST_TIMEOUT": value})


# --- memory: the decompression caps ---------------------------------------------------------


class _Inflaters:
    """Stands in for the zlib module inside edge_inference; records what each inflater gave."""

    def __init__(self):
        self.outputs: list[int] = []
        self.error = zlib.error

    def decompressobj(self, *args):
        real, outputs = zlib.decompressobj(*args), self.outputs

        class Recording:
            unconsumed_tail = property(lambda _: real.unconsumed_tail)

            def decompress(self, data, max_length=0):
                out = real.decompress(data, max_length)
                outputs.append(len(out))
                return out

        return Recording()


@PROPERTY
@given(width=st.integers(1, 48), height=st.integers(1, 48), colour=st.sampled_from([0, 2, 4, 6]),
       ratio=st.sampled_from([0, 0.5, 1, 2, 1000, 20000]), parts=st.integers(1, 3))
def test_a_png_never_inflates_past_what_its_header_declares(edge, monkeypatch, width, height,
                                                            colour, ratio, parts):
    monkeypatch.setitem(sys.modules, "PIL", None)
    inflaters = _Inflaters()
    monkeypatch.setattr(edge, "zlib", inflaters)
    declared = height * (width * {0: 1, 2: 3, 4: 2, 6: 4}[colour] + 1)
    inflated = int(declared * ratio)
    assume(inflated < 64 << 20)
    bomb = png_file(width, height, colour, zlib_bomb(inflated), idat_parts=parts)
    f = make(edge, FakeModel(**IMAGE_MODEL))
    (result,) = f.service.handle([{"request_id": "bomb", "image": base64.b64encode(bomb).decode()}])
    assert result["request_id"] == "bomb"
    assert inflaters.outputs and max(inflaters.outputs) <= declared + 1
    if inflated > declared:
        assert result["error"]["message"] == (
            f"undecodable image: PNG data inflates past {declared} bytes, the size its "
            f"{width}x{height} header declares (the most it may inflate to)")
    elif inflated < declared:
        assert result["error"]["message"].startswith(
            f"undecodable image: PNG data inflates to {inflated} bytes, short of the {declared}")


@settings(PROPERTY, max_examples=15)
@given(kinds=st.lists(st.sampled_from([b"zTXt", b"iTXt", b"iCCP"]), min_size=1, max_size=3))
def test_pillow_never_inflates_the_chunks_that_carry_no_pixels(edge, monkeypatch, kinds):
    """zTXt, iTXt and iCCP chunks are inflated by Pillow up to 64 MB an image; dropped first,
    they are never inflated, and the image is served."""
    png_plugin = pytest.importorskip("PIL.PngImagePlugin")
    calls = []
    real = png_plugin._safe_zlib_decompress
    monkeypatch.setattr(png_plugin, "_safe_zlib_decompress", lambda s: calls.append(len(s)) or real(s))
    image = np.full((4, 4, 3), 9, np.uint8)
    plain = png(image)
    bombs = b"".join(chunk(k, b"key\x00\x00" + zlib_bomb(8 << 20)) for k in kinds)
    bombed = plain[:33] + bombs + plain[33:]  # after IHDR (8 + 25 bytes)
    f = make(edge, FakeModel(**IMAGE_MODEL))
    results = f.service.handle([{"request_id": "bombed", "image": base64.b64encode(bombed).decode()},
                                {"request_id": "plain", "image": base64.b64encode(plain).decode()}])
    assert calls == []
    assert [r["request_id"] for r in results] == ["bombed", "plain"]
    assert all("error" not in r for r in results)
    assert results[0]["scores"] == results[1]["scores"]


def test_pillow_is_offered_only_the_formats_the_device_recognises(edge):
    """A TIFF (Pillow reads it; its strips may be deflated) is refused unread."""
    import io

    image_module = pytest.importorskip("PIL.Image")
    Image = image_module  # noqa: N806

    buffer = io.BytesIO()
    Image.new("RGB", (4, 4)).save(buffer, format="TIFF", compression="tiff_deflate")
    f = make(edge, FakeModel(**IMAGE_MODEL))
    (result,) = f.service.handle([{"request_id": "tiff",
                                   "image": base64.b64encode(buffer.getvalue()).decode()}])
    assert result["request_id"] == "tiff"
    assert result["error"]["type"] == "PayloadError"
    assert result["error"]["message"].startswith("undecodable image")
