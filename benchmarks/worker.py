"""One measurement in a fresh process: what a device process does, and nothing else.

Run by ``benchmarks/run.py`` as a script (``python benchmarks/worker.py ...``), one
process per measurement, so that cold start and peak RSS are those of a process that
only loads and runs the model, and TVM and ONNX Runtime run under the same conditions.

Modes:

``oneshot``
    import the engine, load the model, run it once (cold start: wall time from the
    parent's ``--t0`` to the first result, interpreter start-up included), run it
    ``--runs`` more times, then report the peak RSS (``VmHWM``) and save the first
    outputs for the accuracy check.
``latency``
    load, warm up, then time calls: at least ``--runs`` of them and at least
    ``--min-seconds`` of calls. Reports every call's milliseconds.

Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

RUNTIME_MODULE = "neo_edge_runtime.runtime"


def _tvm(model: str, threads: int, bundle: str | None):
    # The device runtime only: libtvm_runtime.so through TVM-FFI's C ABI, never ``import tvm``.
    if bundle:
        sys.path.insert(0, bundle)
    from neo_edge_runtime.runtime import EdgeModel

    m = EdgeModel.load(model, num_threads=threads)
    names = [o["name"] for o in m.outputs]

    def run(feed):
        out = m.predict(feed)
        return [out[n] for n in names]

    return run


def _ort(model: str, threads: int, device: str):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    providers = ["CPUExecutionProvider"]
    if device == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, "CUDAExecutionProvider")
    sess = ort.InferenceSession(model, opts, providers=providers)
    return lambda feed: sess.run(None, feed)


def peak_rss_bytes() -> int:
    """The process's peak resident set size.

    ``VmHWM`` where Linux has it: ``ru_maxrss`` survives ``execve`` and so reports the
    parent's peak for a child forked from a big parent process (the harness has TVM's
    compiler loaded); ``VmHWM`` belongs to this process image alone.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    # macOS reports bytes, Linux kilobytes.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * \
        (1 if sys.platform == "darwin" else 1024)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["oneshot", "latency"])
    p.add_argument("--engine", choices=["tvm", "ort"], required=True)
    p.add_argument("--model", required=True, help="artifact folder (tvm) or .onnx (ort)")
    p.add_argument("--input", required=True, help=".npz of input name to array")
    p.add_argument("--threads", type=int, required=True)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--runs", type=int, default=10)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--min-seconds", type=float, default=0.0)
    p.add_argument("--t0", type=float, help="the parent's time.time() just before start")
    p.add_argument("--outputs", help="where oneshot saves the first result (.npz)")
    p.add_argument("--bundle", help="an unpacked device bundle to import the runtime from")
    args = p.parse_args(argv)

    import numpy as np

    with np.load(args.input) as z:
        feed = {k: z[k] for k in z.files}
    run = _tvm(args.model, args.threads, args.bundle) if args.engine == "tvm" else \
        _ort(args.model, args.threads, args.device)

    if args.mode == "oneshot":
        first = run(feed)
        cold = time.time() - args.t0 if args.t0 else None
        for _ in range(args.runs):
            run(feed)
        if args.outputs:
            np.savez(args.outputs, *[np.asarray(o) for o in first])
        report = {"cold_start_s": cold,
                  "peak_rss_bytes": peak_rss_bytes(),
                  "tvm_compiler_imported": "tvm" in sys.modules,
                  "runtime_from": str(Path(sys.modules[RUNTIME_MODULE].__file__).parent)
                  if RUNTIME_MODULE in sys.modules else None}
    else:
        for _ in range(args.warmup):
            run(feed)
        ms = []
        start = time.perf_counter()
        while len(ms) < args.runs or (time.perf_counter() - start < args.min_seconds
                                      and len(ms) < 100_000):
            t = time.perf_counter()
            run(feed)
            ms.append((time.perf_counter() - t) * 1000.0)
        report = {"ms": ms}
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
