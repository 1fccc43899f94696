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
  neo-edge compile model.onnx --target host --tune-minutes 30 --tuning-db tuning/
  neo-edge compile model.tflite --target rasp4b --output build/rasp4b
  neo-edge run build/host --input x.npy
  neo-edge bench build/host --onnx model.onnx --threads 2
  neo-edge inspect build/rasp4b
  neo-edge keygen --out signing/key.pem
  neo-edge compile model.onnx --target rasp4b --output build/rasp4b --signing-key signing/key.pem
  neo-edge sign build/rasp4b --kms-key alias/neo-edge-signing
  neo-edge inspect build/rasp4b --verify --public-key signing/key.pub.pem
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


def _signer(key, kms_key, kms_public_key=None):
    """The signer the options name, or None."""
    from .signing import FileSigner, KmsSigner

    if key and kms_key:
        raise NeoEdgeError("give a signing key file or a KMS key, not both; got "
                           f"{key!r} and {kms_key!r}")
    if key:
        return FileSigner(key)
    if kms_key:
        return KmsSigner(kms_key, public_key=kms_public_key)
    return None


def cmd_compile(args) -> int:
    from .compiler import compile_model

    signer = _signer(args.signing_key, args.signing_kms_key, args.signing_public_key)
    metadata = json.loads(Path(args.metadata).read_text()) if args.metadata else None
    options = dict(framework=args.framework, input_shapes=_parse_shapes(args.input_shape),
                   name=args.name, version=args.version, metadata=metadata,
                   progress=not args.quiet,
                   log=(lambda m: None) if args.quiet else (lambda m: print(m, file=sys.stderr)),
                   signer=signer)
    if args.tune_minutes is not None:
        from .timebox import tune_for

        # --tune-trials beside a time budget caps the trials; 0 (its default) means no cap.
        out = tune_for(args.model, args.target, args.output, minutes=args.tune_minutes,
                       max_trials=args.tune_trials or None, tuning_db=args.tuning_db,
                       **options)
    else:
        out = compile_model(args.model, args.target, args.output, tune_trials=args.tune_trials,
                            tuning_db=args.tuning_db, **options)
    print(out)
    target = resolve(args.target)
    if target.arch not in RUNTIME_ARCHES:
        print(f"neo-edge compile: warning: nothing here can run this artifact: the edge runtime "
              f"exists for {', '.join(RUNTIME_ARCHES)} devices only, not {target.arch} (no "
              f"apache-tvm wheel for it)", file=sys.stderr)
    elif target.runtime_problem:
        print(f"neo-edge compile: warning: nothing here can run this artifact: "
              f"{target.runtime_problem}", file=sys.stderr)
    return 0


def cmd_run(args) -> int:
    import numpy as np

    from ..runtime import EdgeModel

    model = EdgeModel.load(args.artifact, num_threads=args.threads, public_key=args.public_key)
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

    manifest = artifact.verify(args.artifact, public_key=args.public_key) \
        if args.verify or args.public_key else artifact.read_manifest(args.artifact)
    print(artifact.dumps_manifest(manifest), end="")
    return 0


def cmd_sign(args) -> int:
    from .signing import sign_artifact

    signer = _signer(args.key, args.kms_key, args.public_key)
    if signer is None:
        raise NeoEdgeError("neo-edge sign needs --key KEY.pem or --kms-key KEY_ID")
    print(sign_artifact(args.artifact, signer))
    return 0


def cmd_keygen(args) -> int:
    from .signing import generate_key

    private, public = generate_key(args.out)
    print(f"private key {private} (keep it secret)\npublic key  {public} (give it to devices)")
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
                       description="Compile an ONNX, XGBoost or PyTorch (.pt2) model, or a "
                                   "TensorFlow SavedModel, TFLite or Keras model (converted "
                                   "with tf2onnx: pip install 'neo-edge[tensorflow]'), for a "
                                   "Neo target device into an artifact folder.")
    c.add_argument("model", help="model file (.onnx, .json/.ubj XGBoost, .pt2 from "
                                 "torch.export.save, .tflite, .keras/.h5) or SavedModel folder")
    c.add_argument("--target", "-t", default="host",
                   help="Neo target device (rasp4b, jetson_xavier, ml_c5, ...) or 'host' "
                        "(default: host); `neo-edge targets` lists them")
    c.add_argument("--output", "-o", default="artifact", help="artifact folder (default: artifact)")
    c.add_argument("--framework", help="ONNX, XGBOOST, PYTORCH, TENSORFLOW, TFLITE or KERAS "
                                       "(default: from the suffix)")
    c.add_argument("--input-shape", action="append", metavar="NAME=D0,D1,...",
                   help="static shape for an input with dynamic dimensions (repeatable)")
    c.add_argument("--name", help="model name in the manifest (default: file name)")
    c.add_argument("--version", default="1.0.0", help="model version (default: 1.0.0)")
    c.add_argument("--tune-trials", type=int, default=0, metavar="N",
                   help="tune for this machine: template schedules for the convolutions and N "
                        "MetaSchedule trials for the other kernels (default: 0, untuned); with "
                        "--tune-minutes, the most trials to spend")
    c.add_argument("--tune-minutes", type=float, metavar="M",
                   help="tune for this machine for about M minutes: rounds of trials sized "
                        "from the time per trial so far, each writing the artifact "
                        "(default: no time budget)")
    c.add_argument("--tuning-db", metavar="DIR",
                   help="tuning database folder, reused by later compiles of the same model")
    c.add_argument("--metadata", metavar="JSON_FILE",
                   help="JSON file stored in the manifest (labels, preprocessing)")
    c.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    c.add_argument("--signing-key", metavar="KEY.pem",
                   help="sign the manifest with this P-256 private key (manifest.json.sig)")
    c.add_argument("--signing-kms-key", metavar="KEY_ID",
                   help="sign the manifest with this AWS KMS ECC_NIST_P256 key (id, ARN or alias)")
    c.add_argument("--signing-public-key", metavar="PEM_OR_BASE64",
                   help="with --signing-kms-key: its public key (PEM text, base64 DER or a PEM "
                        "file), so that kms:Sign alone is needed (default: kms:GetPublicKey)")
    c.set_defaults(func=cmd_compile)

    r = sub.add_parser("run", help="run a compiled artifact on inputs from .npy/.npz files")
    r.add_argument("artifact", help="artifact folder")
    r.add_argument("--input", "-i", action="append",
                   help=".npy (inputs in manifest order) or .npz (arrays named as the inputs)")
    r.add_argument("--threads", type=int, help="TVM thread pool size")
    r.add_argument("--save", metavar="OUT.npz", help="also save the outputs")
    r.add_argument("--public-key", metavar="PUB.pem",
                   help="refuse the artifact unless its manifest.json.sig verifies with this key")
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
    i.add_argument("--public-key", metavar="PUB.pem",
                   help="also check manifest.json.sig with this public key (implies --verify)")
    i.set_defaults(func=cmd_inspect)

    s = sub.add_parser("sign", help="sign an artifact's manifest (manifest.json.sig)",
                       description="Sign an artifact folder: an ECDSA P-256/SHA-256 signature of "
                                   "manifest.json, which lists every file's sha256. Check it with "
                                   "openssl dgst -sha256 -verify PUB.pem -signature "
                                   "manifest.json.sig manifest.json")
    s.add_argument("artifact", help="artifact folder")
    s.add_argument("--key", metavar="KEY.pem", help="P-256 private key file (PEM)")
    s.add_argument("--kms-key", metavar="KEY_ID",
                   help="AWS KMS ECC_NIST_P256 SIGN_VERIFY key: id, ARN or alias")
    s.add_argument("--public-key", metavar="PEM_OR_BASE64",
                   help="with --kms-key: its public key (PEM text, base64 DER or a PEM file), so "
                        "that kms:Sign alone is needed (default: kms:GetPublicKey)")
    s.set_defaults(func=cmd_sign)

    k = sub.add_parser("keygen", help="make a P-256 signing key pair (PEM)")
    k.add_argument("--out", default="neo-edge-signing.pem", metavar="KEY.pem",
                   help="private key file, written 0600; the public key goes beside it as "
                        "<name>.pub.pem (default: neo-edge-signing.pem)")
    k.set_defaults(func=cmd_keygen)

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
