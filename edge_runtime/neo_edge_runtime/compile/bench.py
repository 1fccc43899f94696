"""Latency of a compiled artifact next to ONNX Runtime's, same input, same threads.

Build-machine helper for ``neo-edge bench`` and ``benchmarks/``; ONNX Runtime is
imported only when a comparison is asked for.
"""

from __future__ import annotations

import platform
import time
from typing import Callable, Optional

import numpy as np


def time_calls(fn: Callable[[], object], runs: int, warmup: int) -> np.ndarray:
    """Wall-clock seconds of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = np.empty(runs)
    for k in range(runs):
        t = time.perf_counter()
        fn()
        out[k] = time.perf_counter() - t
    return out


def summarize(seconds: np.ndarray) -> dict:
    ms = seconds * 1000.0
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)),
            "runs": int(ms.size)}


def ort_session(onnx_path: str, threads: int):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])


def bench_artifact(artifact_dir: str, *, onnx_path: Optional[str] = None, threads: int = 1,
                   runs: int = 200, warmup: int = 10, seed: int = 0) -> dict:
    """Median/p90 latency of the artifact and, given ``onnx_path``, of ONNX Runtime."""
    from ..runtime import EdgeModel

    model = EdgeModel.load(artifact_dir, num_threads=threads)
    rng = np.random.default_rng(seed)
    inputs = {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"])
              for i in model.inputs}
    report = {"model": model.name, "target": model.manifest["target"]["name"],
              "host": platform.node(), "machine": platform.machine(), "threads": threads,
              "tvm": summarize(time_calls(lambda: model.predict(inputs), runs, warmup))}
    if onnx_path:
        sess = ort_session(onnx_path, threads)
        ours = model.predict(inputs)
        theirs = sess.run(None, inputs)
        report["ort"] = summarize(time_calls(lambda: sess.run(None, inputs), runs, warmup))
        report["ratio_tvm_over_ort"] = report["tvm"]["median_ms"] / report["ort"]["median_ms"]
        report["max_abs_diff"] = float(max(np.max(np.abs(a - b))
                                           for a, b in zip(ours.values(), theirs)))
    return report


def format_report(r: dict) -> str:
    lines = [f"{r['model']} on {r['target']} ({r['machine']}, {r['threads']} threads)",
             f"  TVM   median {r['tvm']['median_ms']:.3f} ms   p90 {r['tvm']['p90_ms']:.3f} ms"]
    if "ort" in r:
        lines += [f"  ORT   median {r['ort']['median_ms']:.3f} ms   p90 {r['ort']['p90_ms']:.3f} ms",
                  f"  TVM/ORT {r['ratio_tvm_over_ort']:.2f}x   max |diff| {r['max_abs_diff']:.2e}"]
    return "\n".join(lines)
