"""The benchmark: compiled models on the edge runtime against ONNX Runtime.

``make bench`` (or ``python -m benchmarks.run``) builds the zoo (MobileNetV2, ResNet-18,
SqueezeNet 1.1 at 224x224, an MLP, and an XGBoost classifier trained on sklearn's
digits) and the corpus of exported models at full size (:mod:`neo_edge_runtime.compile
.corpus`: PyTorch's dynamo exporter and skl2onnx), compiles each for ``--target``
(default: this machine), applying the tuning databases shipped in ``benchmarks/tuning/``,
and measures TVM and ONNX Runtime on the same input with the same thread count, each in
fresh processes (a model that does not compile is reported with the compiler's message):

- latency: median and p90 over alternating rounds of TVM and ORT processes, and the
  ratio TVM/ORT of the medians;
- cold start: wall time from starting a process to its first result (interpreter,
  imports, load and one inference);
- peak RSS (``ru_maxrss``) of a process that only loads and runs the model;
- accuracy: max abs difference of the outputs against ORT's;
- install size: the device bundle against the installed onnxruntime package;
- the geometric mean of TVM/ORT over the models, per thread count.

Writes ``benchmarks/results/<host>.json``, ``.md`` and ``.png``. The same command runs on
an ARM or NVIDIA device (``--target rasp4b``, ``--target jetson_xavier``): the target is
recorded in the results.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
from neo_edge_runtime.runtime import physical_cores  # the runtime's default pool size

from . import report

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
WORKER = BENCH / "worker.py"
RESULTS = BENCH / "results"
TUNING = BENCH / "tuning"
BUILD = ROOT / "build" / "bench"

CNNS = ("mobilenet_v2", "resnet18", "squeezenet")
ZOO_MODELS = CNNS + ("mlp", "xgboost")
#: The corpus (neo_edge_runtime.compile.corpus), named as there.
CORPUS_MODELS = ("resnet", "mobilenet_v3_small", "efficientnet_b0", "yolo", "unet", "kws_gru",
                 "kws_lstm", "sensor_cnn", "vit", "scaler_logistic_regression",
                 "random_forest", "scaler_mlp_regressor")
MODELS = ZOO_MODELS + CORPUS_MODELS
IMAGE = 224


# ---------------------------------------------------------------------------------------
# The zoo, written to disk once


def _write_if_changed(path: Path, data: bytes) -> Path:
    if not path.exists() or path.read_bytes() != data:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return path


def build_model(name: str, out: Path, corpus_size: str = "full") -> dict:
    """Write the model's source files; return {source, onnx, input, reference,
    input_shapes}.

    ``source`` is what the compiler reads, ``onnx`` what ONNX Runtime runs (the same
    file, except for XGBoost: its ``.json`` and the ONNX lowering of it).
    """
    from neo_edge_runtime.compile import zoo

    if name in CORPUS_MODELS:
        return _build_corpus(name, out, corpus_size)
    if name == "xgboost":
        return _build_xgboost(out)
    if name == "mlp":
        model, shape = zoo.mlp(), [1, 64]
    else:
        model, shape = zoo.ZOO[name](IMAGE), [1, 3, IMAGE, IMAGE]
    onnx_path = _write_if_changed(out / f"{name}.onnx", model.SerializeToString())
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    return {"source": onnx_path, "onnx": onnx_path, "input": {"input": x}}


def _build_corpus(name: str, out: Path, size: str) -> dict:
    """A corpus model, exported again only when the corpus module or torch changed
    (PyTorch's export of a full-size model takes seconds to a minute)."""
    from neo_edge_runtime.compile import corpus

    stamp = _stamp([Path(corpus.__file__)], f"{name}|{size}|{versions()}")
    path, inputs, stamp_file = (out / f"{name}-{size}.onnx", out / f"{name}-{size}-input.npz",
                                out / f"{name}-{size}.stamp")
    if not (path.exists() and inputs.exists() and stamp_file.exists()
            and stamp_file.read_text() == stamp):
        exported = corpus.export(name, size, out)
        np.savez(inputs, **exported.inputs)
        stamp_file.write_text(stamp)
    with np.load(inputs) as z:
        x = {k: z[k] for k in z.files}
    return {"source": path, "onnx": path, "input": x, "size": size,
            "input_shapes": {k: list(v.shape) for k, v in x.items()}}


def _build_xgboost(out: Path) -> dict:
    """A 10-class XGBoost classifier on sklearn's digits (64 features), deterministic:
    fixed seed, one thread, exact histogram method."""
    import xgboost as xgb
    from sklearn.datasets import load_digits

    from neo_edge_runtime.compile.xgboost_onnx import load_xgboost_json, xgboost_to_onnx

    X, y = load_digits(return_X_y=True)
    X = X.astype(np.float32)
    src = out / "xgboost.json"
    if not src.exists():
        clf = xgb.XGBClassifier(n_estimators=50, max_depth=4, learning_rate=0.3,
                                tree_method="hist", random_state=0, n_jobs=1)
        clf.fit(X[:1500], y[:1500])
        out.mkdir(parents=True, exist_ok=True)
        clf.get_booster().save_model(str(src))
    onnx_model = xgboost_to_onnx(load_xgboost_json(str(src)), "xgboost")
    onnx_path = _write_if_changed(out / "xgboost.onnx", onnx_model.SerializeToString())
    x = X[1500:1501]  # a held-out digit
    booster = xgb.Booster()
    booster.load_model(str(src))
    ref = booster.inplace_predict(x)
    return {"source": src, "onnx": onnx_path, "input": {"input": x},
            "reference": np.asarray(ref, dtype=np.float32).reshape(1, -1)}


# ---------------------------------------------------------------------------------------
# Compile, reusing the shipped tuning databases


def tuning_dir(target: str, model: str) -> Path:
    """``benchmarks/tuning/<target>/<model>/``; ``host`` is named after its architecture
    (``host-x86_64``): schedules tuned on one machine are only valid guesses for another
    of the same kind."""
    from neo_edge_runtime.targets import host_arch

    return TUNING / (f"host-{host_arch()}" if target == "host" else target) / model


def _stamp(files: list[Path], extra: str) -> str:
    h = hashlib.sha256(extra.encode())
    for f in files:
        h.update(f.name.encode())
        h.update(f.read_bytes() if f.is_file() else b"-")
    return h.hexdigest()


#: The compiler's modules an artifact depends on (a change recompiles it).
COMPILER_MODULES = ("compiler.py", "generic.py", "schedules.py", "winograd.py", "_tiling.py",
                    "onnx_static.py", "rnn.py")


def compile_one(name: str, src: dict, target: str, tune_trials: int, log) -> tuple[Path, dict]:
    """The artifact folder for ``name`` (recompiled only when an input changed)."""
    from neo_edge_runtime.compile import compiler
    from neo_edge_runtime.targets import host_arch, resolve

    tgt = resolve(target)
    out = BUILD / target / name
    # Tuning records are measured here: they apply to CPU targets of this architecture.
    db = tuning_dir(target, name) if tgt.device == "cpu" and tgt.arch == host_arch() else None
    use_db = db is not None and (tune_trials > 0 or (db / "database_tuning_record.json").exists())
    db_files = [db / "database_tuning_record.json", db / "database_workload.json",
                db / compiler.TUNING_MARKER] if use_db else []
    shapes = src.get("input_shapes")
    # The compiler and the modules whose passes and schedules shape its output.
    code = [Path(compiler.__file__).with_name(f) for f in COMPILER_MODULES]
    stamp_inputs = [Path(src["source"]), *code, *db_files]
    stamp = _stamp(stamp_inputs, f"{target}|{tune_trials}|{shapes}")
    stamp_file = BUILD / target / f"{name}.stamp"
    if out.exists() and stamp_file.exists() and stamp_file.read_text() == stamp:
        log(f"{name}: artifact is up to date")
    else:
        t = time.perf_counter()
        compiler.compile_model(src["source"], target, out, name=name, input_shapes=shapes,
                               tune_trials=tune_trials if use_db else 0,
                               tuning_db=db if use_db else None, progress=tune_trials > 0,
                               log=lambda m: log(f"{name}: {m}"))
        log(f"{name}: compiled in {time.perf_counter() - t:.0f}s")
        if use_db:  # tuning may have added records: the stamp covers the database after
            stamp = _stamp([Path(src["source"]), *code, *db_files],
                           f"{target}|{tune_trials}|{shapes}")
        stamp_file.write_text(stamp)
    manifest = json.loads((out / "manifest.json").read_text())
    return out, manifest


# ---------------------------------------------------------------------------------------
# Measurements, each in fresh processes


def device_bundle() -> Path:
    """This machine's device bundle, built from this source tree and unpacked under
    build/bench/.

    The TVM worker imports the runtime from it, so what is measured is what a device
    installs.
    """
    from neo_edge_runtime.compile.bundle import build_bundle
    from neo_edge_runtime.targets import host_arch

    zipped = build_bundle(host_arch(), BUILD / "bundle-zip")
    dest = BUILD / f"bundle-{host_arch()}"
    stamp = dest / ".source-sha256"
    digest = hashlib.sha256(zipped.read_bytes()).hexdigest()
    if not stamp.exists() or stamp.read_text() != digest:
        import shutil
        import zipfile

        shutil.rmtree(dest, ignore_errors=True)
        with zipfile.ZipFile(zipped) as z:
            z.extractall(dest)
        for f in dest.rglob("*.so"):
            f.chmod(0o755)
        # What an install does (pip does it for onnxruntime): byte-compile once, so a
        # cold start does not compile the runtime's Python modules every time.
        import compileall

        compileall.compile_dir(str(dest), quiet=2, force=True)
        stamp.write_text(digest)
    return dest


_BUNDLE: Optional[Path] = None  # set by main()


def _worker(mode: str, engine: str, model: Path, inputs: Path, threads: int, device: str,
            **opts) -> dict:
    cmd = [sys.executable, str(WORKER), mode, "--engine", engine, "--model", str(model),
           "--input", str(inputs), "--threads", str(threads), "--device", device]
    if engine == "tvm" and _BUNDLE is not None:
        cmd += ["--bundle", str(_BUNDLE)]
    for k, v in opts.items():
        if v is not None:
            cmd += [f"--{k.replace('_', '-')}", str(v)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(ROOT / "edge_runtime")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    t0 = time.time()
    cmd += ["--t0", repr(t0)] if mode == "oneshot" else []
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if done.returncode != 0:
        raise RuntimeError(f"{engine} {mode} worker failed for {model}:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _stats(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"median_ms": float(np.median(a)), "p90_ms": float(np.percentile(a, 90)),
            "runs": int(a.size)}


def measure(name: str, artifact: Path, onnx_path: Optional[Path], inputs: Path, threads: int,
            device: str, runs: int, rounds: int, min_seconds: float, log) -> dict:
    """Latency (alternating rounds of fresh TVM and ORT processes), plus cold start and
    peak RSS (the median / max over ``rounds`` fresh one-shot processes)."""
    engines = {"tvm": artifact}
    if onnx_path is not None:
        engines["ort"] = onnx_path
    lat: dict[str, list] = {e: [] for e in engines}
    per_round = max(1, runs // rounds)
    for _ in range(rounds):
        for engine, model in engines.items():
            lat[engine] += _worker("latency", engine, model, inputs, threads, device,
                                   runs=per_round, warmup=10,
                                   min_seconds=min_seconds / rounds)["ms"]
    out: dict = {"threads": threads}
    outputs = {}
    for engine, model in engines.items():
        shots = []
        for k in range(rounds):
            npz = BUILD / f"{name}-{engine}-outputs.npz"
            shots.append(_worker("oneshot", engine, model, inputs, threads, device,
                                 runs=10, outputs=npz if k == 0 else None))
            if k == 0:
                with np.load(npz) as z:
                    outputs[engine] = [z[f] for f in z.files]
        out[engine] = {**_stats(lat[engine]),
                       "cold_start_ms": float(np.median([s["cold_start_s"] for s in shots])
                                              * 1000.0),
                       "peak_rss_mb": float(max(s["peak_rss_bytes"] for s in shots) / 2**20),
                       "tvm_compiler_imported": any(s["tvm_compiler_imported"] for s in shots),
                       "runtime_from": shots[0]["runtime_from"]}
    if "ort" in out:
        out["ratio_tvm_over_ort"] = out["tvm"]["median_ms"] / out["ort"]["median_ms"]
        out["max_abs_diff_vs_ort"] = float(max(
            np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))
            for a, b in zip(outputs["tvm"], outputs["ort"])))
    log(f"{name} x{threads}: " + "  ".join(
        f"{e} {out[e]['median_ms']:.3f} ms (p90 {out[e]['p90_ms']:.3f})" for e in engines)
        + (f"  TVM/ORT {out['ratio_tvm_over_ort']:.2f}x" if "ort" in out else ""))
    return out, outputs


# ---------------------------------------------------------------------------------------
# What was measured on


def _cpu_model() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Model", "Hardware", "cpu model"):
        for line in info.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    dt = Path("/proc/device-tree/model")
    return dt.read_text().strip("\x00\n") if dt.exists() else platform.processor() or "unknown"


def machine_info() -> dict:
    from neo_edge_runtime.compile.compiler import host_cpu

    info = {"host": platform.node(), "machine": platform.machine(), "cpu": _cpu_model(),
            "llvm_cpu": host_cpu(),
            "physical_cores": physical_cores(), "logical_cores": os.cpu_count(),
            "os": platform.platform(), "python": platform.python_version()}
    try:
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                  / 2**30, 1)
    except (ValueError, OSError):
        pass
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=10)
        if gpu.returncode == 0 and gpu.stdout.strip():
            info["gpu"] = gpu.stdout.strip().splitlines()[0]
    except (OSError, subprocess.TimeoutExpired):
        pass
    return info


def versions() -> dict:
    out = {}
    for dist in ("apache-tvm", "apache-tvm-ffi", "onnxruntime", "numpy", "xgboost-cpu",
                 "xgboost", "onnx"):
        try:
            out[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def install_sizes() -> dict:
    """The device bundle's unpacked size against the installed onnxruntime package's."""
    from neo_edge_runtime.compile import bundle
    from neo_edge_runtime.targets import host_arch

    sizes: dict = {"arch": host_arch()}
    try:
        sizes["bundle_bytes"] = bundle.installed_size(bundle.bundle_files(host_arch()))
    except Exception as exc:  # a device without the wheels still gets the rest measured
        sizes["bundle_error"] = str(exc)
    try:
        dist = importlib.metadata.distribution("onnxruntime")
        sizes["onnxruntime_bytes"] = sum(
            Path(dist.locate_file(f)).stat().st_size for f in dist.files or []
            if Path(dist.locate_file(f)).is_file())
    except importlib.metadata.PackageNotFoundError:
        pass
    if sizes.get("bundle_bytes") and sizes.get("onnxruntime_bytes"):
        sizes["ratio_bundle_over_onnxruntime"] = sizes["bundle_bytes"] / sizes["onnxruntime_bytes"]
    return sizes


# ---------------------------------------------------------------------------------------


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Compile the model zoo and measure it on the edge runtime against ONNX "
                    "Runtime (latency, cold start, peak RSS, accuracy, install size).")
    p.add_argument("--target", default="host",
                   help="Neo target to compile for and run on: this machine must be that "
                        "device (default: host)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {', '.join(MODELS)} (default: all)")
    p.add_argument("--threads", default=None,
                   help="comma-separated thread counts, same for TVM and ORT (default: the "
                        "physical cores, then 1)")
    p.add_argument("--runs", type=int, default=200,
                   help="timed calls per engine, split over the rounds (default: 200; "
                        "fast models run for at least --min-seconds)")
    p.add_argument("--rounds", type=int, default=3,
                   help="alternating TVM/ORT process rounds (default: 3)")
    p.add_argument("--min-seconds", type=float, default=3.0,
                   help="least total timed seconds per engine and model (default: 3)")
    p.add_argument("--tune-trials", type=int, default=0,
                   help="tune each model until its database holds this many MetaSchedule "
                        "trials (default: 0, apply the shipped databases only)")
    p.add_argument("--compile-only", action="store_true",
                   help="compile the artifacts into build/bench/<target>/ and stop (to copy "
                        "them to a device without the compiler)")
    p.add_argument("--skip-compile", action="store_true",
                   help="use the artifacts already in build/bench/<target>/ (compiled "
                        "elsewhere and copied to this device)")
    p.add_argument("--name", default=platform.node() or "host",
                   help="results file name (default: this machine's host name)")
    p.add_argument("--no-ort", action="store_true",
                   help="measure TVM only (a device without onnxruntime)")
    p.add_argument("--corpus-size", choices=("small", "full"), default="full",
                   help="size of the corpus models (default: full; small is the tests' size)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(msg, flush=True)

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model {unknown[0]!r}; the zoo has {', '.join(MODELS)}")
    from neo_edge_runtime.targets import resolve

    tgt = resolve(args.target)
    cores = physical_cores()
    threads = [int(t) for t in args.threads.split(",")] if args.threads else \
        sorted({cores, 1}, reverse=True)
    have_ort = not args.no_ort and importlib.util.find_spec("onnxruntime") is not None
    global _BUNDLE
    _BUNDLE = device_bundle()
    log(f"TVM runtime from the device bundle unpacked in {_BUNDLE}")

    results = {"schema": 1, "target": {"name": tgt.name, "arch": tgt.arch, "device": tgt.device},
               "machine": machine_info(), "versions": versions(), "threads": threads,
               "settings": {"runs": args.runs, "rounds": args.rounds,
                            "min_seconds": args.min_seconds, "image": IMAGE, "batch": 1,
                            "dtype": "float32", "corpus_size": args.corpus_size},
               "command": "python -m benchmarks.run " + " ".join(argv or sys.argv[1:]),
               "install_size": install_sizes(),
               "tvm_runtime_from": "device bundle",
               "models": {}}
    started = time.time()
    from neo_edge_runtime.compile.corpus import CORPUS
    from neo_edge_runtime.errors import CompileError

    for name in models:
        src = build_model(name, BUILD / "models", args.corpus_size)
        inputs = BUILD / "models" / f"{name}-input.npz"
        np.savez(inputs, **src["input"])
        kind = "cnn" if name in CNNS else f"corpus ({CORPUS[name].task})" \
            if name in CORPUS_MODELS else name
        if args.skip_compile:
            artifact = BUILD / args.target / name
            manifest = json.loads((artifact / "manifest.json").read_text())
        else:
            try:
                artifact, manifest = compile_one(name, src, args.target, args.tune_trials, log)
            except CompileError as exc:  # reported, and the other models still measured
                log(f"{name}: did not compile: {exc}")
                results["models"][name] = {"kind": kind, "error": str(exc), "runs": []}
                continue
            if args.compile_only:
                continue
        entry = {"kind": kind,
                 "tuning_trials": manifest["compile_options"]["tune_trials"],
                 "tuned_on": manifest["compile_options"].get("tuned_on", []),
                 "weight_prepack": manifest["compile_options"]["weight_prepack"],
                 "inputs": manifest["inputs"], "runs": []}
        if "size" in src:
            entry["corpus_size"] = src["size"]
        for n in threads:
            r, outputs = measure(name, artifact, src["onnx"] if have_ort else None, inputs, n,
                                 tgt.device, args.runs, args.rounds, args.min_seconds, log)
            if "reference" in src:  # XGBoost's own predictions
                r["max_abs_diff_vs_xgboost"] = float(np.max(np.abs(
                    outputs["tvm"][0].reshape(1, -1) - src["reference"])))
            entry["runs"].append(r)
        results["models"][name] = entry
    results["elapsed_s"] = round(time.time() - started, 1)
    results["geomean_tvm_over_ort"] = report.geomean_ratios(results)
    if args.compile_only:
        log(f"compiled into {BUILD / args.target}")
        return 0

    RESULTS.mkdir(parents=True, exist_ok=True)
    base = RESULTS / args.name
    base.with_suffix(".json").write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    base.with_suffix(".md").write_text(report.markdown(results))
    log(f"wrote {base.with_suffix('.json')} and {base.with_suffix('.md')}")
    try:
        report.chart(results, base.with_suffix(".png"))
        log(f"wrote {base.with_suffix('.png')}")
    except ImportError:
        log("matplotlib is not installed: no chart (pip install matplotlib)")
    print(report.markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
