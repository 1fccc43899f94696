"""The corpus of real exported models: each compiles for this machine (untuned), matches
ONNX Runtime on the exporter's own file, and runs from the device bundle with no compiler.

The ONNX files come from the exporters themselves (``torch.onnx.export(..., dynamo=True)``
and skl2onnx), so what is tested is what users bring. The models are exported and
compiled once per module; the device check runs them all in one fresh interpreter.
"""

from __future__ import annotations

import json
import textwrap

import numpy as np
import onnxruntime as ort
import pytest

from neo_edge_runtime import CompileError, EdgeModel, compile_model
from neo_edge_runtime.compile import corpus
from test_bundle import bundle, device, device_python, run_on_device  # noqa: F401 (fixtures)

pytest.importorskip("torch")
pytest.importorskip("onnxscript")
pytest.importorskip("skl2onnx")

#: What does not compile yet, and why (the message the compiler gives names the operators).
KNOWN_FAILURES: dict[str, str] = {}


def _param(name):
    if name in KNOWN_FAILURES:
        return pytest.param(name, marks=pytest.mark.xfail(
            raises=CompileError, strict=False, reason=KNOWN_FAILURES[name]))
    return name


class Corpus:
    """Exports and compiles corpus models on first use; keeps what each gave."""

    def __init__(self, folder):
        self.folder = folder
        self.exported, self.artifacts, self.errors = {}, {}, {}

    def export(self, name):
        if name not in self.exported:
            self.exported[name] = corpus.export(name, "small", self.folder / "onnx")
        return self.exported[name]

    def compiled(self, name):
        """The artifact folder, or the CompileError compiling it raised (raised again)."""
        if name in self.errors:
            raise self.errors[name]
        if name not in self.artifacts:
            e = self.export(name)
            try:
                self.artifacts[name] = compile_model(
                    e.path, "host", self.folder / "art" / name,
                    input_shapes={k: list(v.shape) for k, v in e.inputs.items()})
            except CompileError as exc:
                self.errors[name] = exc
                raise
        return self.artifacts[name]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    return Corpus(tmp_path_factory.mktemp("corpus"))


def test_the_exporters_write_what_users_get(models):
    """The files are the exporters' own: PyTorch's dynamo exporter writes one
    self-contained file at its default opset; skl2onnx uses the ONNX-ML domain."""
    resnet = models.export("resnet")
    assert resnet.path.name == "resnet-small.onnx"
    assert not list(resnet.path.parent.glob("*.data"))
    assert resnet.opsets == {"ai.onnx": 20} and "Conv" in resnet.operators
    assert "ConvTranspose" in models.export("unet").operators
    assert {"HardSwish", "HardSigmoid"} <= set(models.export("mobilenet_v3_small").operators)
    assert "ai.onnx.ml.TreeEnsembleClassifier" in models.export("random_forest").operators


@pytest.mark.parametrize("name", [_param(n) for n in corpus.CORPUS])
def test_compiles_and_matches_onnxruntime(models, name):
    art = models.compiled(name)
    e = models.export(name)
    expected = ort.InferenceSession(str(e.path), providers=["CPUExecutionProvider"]) \
        .run(None, e.inputs)
    got = EdgeModel.load(art).predict(e.inputs)
    assert len(got) == len(expected)
    for (out_name, ours), theirs in zip(got.items(), expected):
        assert ours.shape == theirs.shape, out_name
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-3, err_msg=out_name)


def test_every_compiled_model_runs_from_the_device_bundle(models, device, device_python,
                                                          tmp_path):
    """A fresh interpreter with only the bundle and numpy gives the host's outputs."""
    cases = {}
    for name in corpus.CORPUS:
        try:
            art = models.compiled(name)
        except CompileError:
            continue  # reported by test_compiles_and_matches_onnxruntime
        e = models.export(name)
        np.savez(tmp_path / f"{name}-in.npz", **e.inputs)
        np.savez(tmp_path / f"{name}-out.npz", **EdgeModel.load(art).predict(e.inputs))
        cases[name] = str(art)
    assert len(cases) >= 7, f"only {sorted(cases)} compiled"
    code = textwrap.dedent(f"""
        import json, sys, numpy as np
        for package in ("tvm", "tvm_ffi", "onnx", "torch"):
            try:
                __import__(package)
            except ImportError:
                pass
            else:
                sys.exit(f"the {{package}} package is importable in the device venv")
        from neo_edge_runtime import EdgeModel
        ran = []
        for name, art in json.loads({json.dumps(json.dumps(cases))}).items():
            m = EdgeModel.load(art, num_threads=1)
            got = m.predict(dict(np.load(f"{tmp_path}/{{name}}-in.npz")))
            expected = np.load(f"{tmp_path}/{{name}}-out.npz")
            assert list(got) == list(expected.files), (name, list(got))
            for k in got:
                np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-5,
                                           err_msg=name)
            ran.append(name)
        print(" ".join(ran))
    """)
    out = run_on_device(device_python, device, code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == list(cases)
