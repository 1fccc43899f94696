"""The neo-edge command line."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from neo_edge_runtime.compile.cli import main


def test_help_names_every_command():
    out = subprocess.run([sys.executable, "-m", "neo_edge_runtime.compile.cli", "--help"],
                         capture_output=True, text=True, check=True).stdout
    for cmd in ("compile", "run", "bench", "inspect", "targets"):
        assert cmd in out


def test_compile_run_inspect(ops_onnx, tmp_path, capsys, rng):
    art = tmp_path / "art"
    assert main(["compile", str(ops_onnx), "--target", "host", "--output", str(art),
                 "--quiet"]) == 0
    x = rng.standard_normal((1, 3, 16, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert main(["run", str(art), "--input", str(tmp_path / "x.npy"),
                 "--save", str(tmp_path / "out.npz")]) == 0
    assert "output [1, 10] float32" in capsys.readouterr().out
    assert np.load(tmp_path / "out.npz")["output"].shape == (1, 10)
    assert main(["inspect", str(art), "--verify"]) == 0
    assert json.loads(capsys.readouterr().out)["target"]["name"] == "host"


def test_compile_for_32_bit_arm_warns_that_nothing_runs_it(ops_onnx, tmp_path, capsys):
    assert main(["compile", str(ops_onnx), "--target", "rasp3b", "--output", str(tmp_path / "a"),
                 "--quiet"]) == 0
    err = capsys.readouterr().err
    assert err.startswith("neo-edge compile: warning: nothing here can run this artifact")
    assert "not armv7l" in err


def test_bench_reports_ratio_against_onnxruntime(host_artifact, ops_onnx, capsys):
    assert main(["bench", str(host_artifact), "--onnx", str(ops_onnx), "--runs", "5",
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ratio_tvm_over_ort"] > 0 and report["max_abs_diff"] < 1e-4


def test_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["compile", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("neo-edge compile: error: model file") and "does not exist" in err
