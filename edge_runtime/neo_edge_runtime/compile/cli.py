"""``neo-edge``: compile a model for an edge device, run it, benchmark it, inspect it."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..errors import NeoEdgeError
from ..targets import RUNTIME_ARCHES, resolve

EPILOG = """\
examples:
  neo-edge compile model.onnx --target rasp4b --output build/rasp4b
  neo-edge compile model.onnx --target host --tune-trials 512 --tuning-db tuning/
  neo-edge run build/host --input x.npy
  neo-edge bench build/host --onnx model.onnx --threads 2
  neo-edge inspect build/rasp4b
  neo-edge targets
"""


def _parse_shapes(items):
    shapes = {}
    for item in items or []:
        name, _, dims = item.partition("=")
        if not dims:
            raise NeoEdgeError(f"--input-shape must look like name=1,3,224,224; got {item!r}")
        try:
            shapes[name] = [int(d) for d in dims.split(",")]
        except ValueError:
            raise NeoEdgeError(f"--input-shape must look like name=1,3,224,224; "
                               f"got {item!r}") from None
    return shapes


def _load_inputs(model, paths):
    import numpy as np

    inputs = {}
    for p in paths:
        data = np.load(p)
        if hasattr(data, "files"):  # .npz: one array per input name
            inputs.update({k: data[k] for k in data.files})
        else:
            inputs[model.inputs[len(inputs)]["name"]] = data
    return inputs


def cmd_compile(args) -> int:
    from .compiler import compile_model

    metadata = json.loads(Path(args.metadata).read_text()) if args.metadata else None
    out = compile_model(args.model, args.target, args.output, framework=args.framework,
                        input_shapes=_parse_shapes(args.input_shape), name=args.name,
                        version=args.version, tune_trials=args.tune_trials,
                        tuning_db=args.tuning_db, metadata=metadata,
                        progress=not args.quiet,
                        log=(lambda m: None) if args.quiet else
                        (lambda m: print(m, file=sys.stderr)))
    print(out)
    arch = resolve(args.target).arch
    if arch not in RUNTIME_ARCHES:
        print(f"neo-edge compile: warning: nothing here can run this artifact: the edge runtime "
              f"exists for {', '.join(RUNTIME_ARCHES)} devices only, not {arch} (no apache-tvm "
              f"wheel for it)", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from ..runtime import EdgeModel

    model = EdgeModel.load(args.artifact, num_threads=args.threads)
    if args.input:
        inputs = _load_inputs(model, args.input)
    else:
        rng = np.random.default_rng(0)
        inputs = {i["name"]: rng.standard_normal(i["shape"]).astype(i["dtype"])
                  for i in model.inputs}
        print("no --input given: running on random normal inputs", file=sys.stderr)
    outputs = model.predict(inputs)
    if args.save:
        np.savez(args.save, **outputs)
    np.set_printoptions(precision=5, suppress=True, threshold=50)
    for name, value in outputs.items():
        print(f"{name} {list(value.shape)} {value.dtype}\n{value}")
    return 0


def cmd_bench(args) -> int:
    from .bench import bench_artifact, format_report

    report = bench_artifact(args.artifact, onnx_path=args.onnx, threads=args.threads,
                            runs=args.runs, warmup=args.warmup)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def cmd_inspect(args) -> int:
    from .. import artifact

    manifest = artifact.verify(args.artifact) if args.verify else \
        artifact.read_manifest(args.artifact)
    print(artifact.dumps_manifest(manifest), end="")
    return 0


def cmd_targets(args) -> int:
    from ..targets import TARGET_DEVICES, UNSUPPORTED_DEVICES, host_target

    rows = [host_target()] + [TARGET_DEVICES[k] for k in sorted(TARGET_DEVICES)]
    for t in rows:
        print(f"{t.name:16} {t.arch:8} {t.device:5} {t.description}")
    print("\nnot supported:")
    for name, why in sorted(UNSUPPORTED_DEVICES.items()):
        print(f"{name:16} {why}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="neo-edge", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compile models for edge devices with TVM (SageMaker Neo's target names), "
                    "and run them with the small edge runtime.", epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    c = sub.add_parser("compile", help="compile a model into an artifact folder",
                       description="Compile an ONNX, XGBoost or PyTorch (.pt2) model "
                                   "for a Neo target device into an artifact folder.")
    c.add_argument("model", help="model file (.onnx, .json/.ubj XGBoost, .pt2 from torch.export.save)")
    c.add_argument("--target", "-t", default="host",
                   help="Neo target device (rasp4b, jetson_xavier, ml_c5, ...) or 'host' "
                        "(default: host); `neo-edge targets` lists them")
    c.add_argument("--output", "-o", default="artifact", help="artifact folder (default: artifact)")
    c.add_argument("--framework", help="ONNX, XGBOOST or PYTORCH (default: from suffix)")
    c.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="static shape for an input with dynamic dimensions (repeatable)")
    c.add_argument("--name", help="model name in the manifest (default: file name)")
    c.add_argument("--version", default="1.0.0", help="model version (default: 1.0.0)")
    c.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="tune for this machine: template schedules for the convolutions and N "
                        "MetaSchedule trials for the other kernels (default: 0, untuned)")
    c.add_argument("--tuning-db", metavar="DIR",
                   help="tuning database folder, reused by later compiles of the same model")
    c.add_argument("--metadata", metavar="JSON_FILE",
                   help="JSON file stored in the manifest (labels, preprocessing)")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="run a compiled artifact on inputs from .npy/.npz files")
    r.add_argument("artifact", help="artifact folder")
    r.add_argument("--input", "-i", action="append",
                   help=".npy (inputs in manifest order) or .npz (arrays named as the inputs)")
    r.add_argument("--threads", type=int, help="TVM thread pool size")
    r.add_argument("--save", metavar="OUT.npz", help="also save the outputs")
    r.set_defaults(func=cmd_run)

    b = sub.add_parser("bench", help="latency of an artifact, next to ONNX Runtime's")
    b.add_argument("artifact", help="artifact folder")
    b.add_argument("--onnx", help="the source ONNX model, run by ONNX Runtime on the same input")
    b.add_argument("--threads", type=int, default=1, help="threads for both (default: 1)")
    b.add_argument("--runs", type=int, default=200, help="timed runs (default: 200)")
    b.add_argument("--warmup", type=int, default=10, help="untimed runs first (default: 10)")
    b.add_argument("--json", action="store_true", help="print JSON")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("inspect", help="print an artifact's manifest")
    i.add_argument("artifact", help="artifact folder")
    i.add_argument("--verify", action="store_true", help="also check every file's sha256")
    i.set_defaults(func=cmd_inspect)

    t = sub.add_parser("targets", help="list the supported target devices")
    t.set_defaults(func=cmd_targets)
    return p


#: Top-level modules of the ``compiler`` extra: the construct library alone does not install them.
COMPILER_EXTRA_MODULES = frozenset({"numpy", "tvm", "tvm_ffi", "onnx", "onnxruntime", "xgboost",
                                    "sklearn", "psutil", "cloudpickle", "tqdm"})


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NeoEdgeError as exc:
        print(f"neo-edge {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in COMPILER_EXTRA_MODULES:
            raise
        print(f"neo-edge {args.command}: error: this command needs the compiler, which is not "
              f"installed (no module {exc.name!r}): pip install 'neo-edge[compiler]' "
              f"(Python 3.11 or newer)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
