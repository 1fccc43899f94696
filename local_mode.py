#!/usr/bin/env python3
"""Local mode: the whole neo-edge path on this machine, with no AWS account.

``make demo`` runs this script. The five steps are the cloud path's, each done by the
code the cloud path uses:

1. **train**: ``training/train.py`` runs as a subprocess under SageMaker's script-mode
   contract (``SM_MODEL_DIR``, ``SM_CHANNEL_TRAIN``, ``SM_CHANNEL_TEST``,
   ``SM_OUTPUT_DATA_DIR``, ``SM_HPS`` and the hyperparameters as ``--name value``) on
   scikit-learn's digits, written as CSV channels: an MLP (exported to ONNX) and an
   XGBoost classifier;
2. **compile**: both models, with the local compiler (TVM, SageMaker Neo's target
   names), for this host and cross-compiled for an ARM device (``rasp4b``), the label
   names and the image preprocessing in the artifact's metadata;
3. **package**: one Greengrass V2 component per model, its recipe from
   ``neo_edge_runtime.compile.recipe.inference_recipe`` (what ``EdgeInferenceComponent``
   uses), one manifest per platform, laid out as ``greengrass-cli deployment create
   --recipeDir <component>/recipes --artifactDir <component>/artifacts`` takes it, and
   checked against the GDK's recipe schema when ``../shared/schemas`` has it;
4. **device**: what the nucleus does with the manifest for this host's platform, in a
   scratch folder: artifacts copied and their digests checked, ZIPs unpacked, recipe
   variables substituted, the ``Install`` script run with bash, then the ``Run`` script
   run with bash. Both see a bare interpreter as ``python3`` (a virtual environment of
   this host's Python with nothing installed, not even pip, made once per run), as a
   device with only its distribution's Python would: the ``Install`` script makes the
   component's own virtual environment from it and installs the bundle's pinned
   ``requirements-device.txt`` there from PyPI (pip's cache makes repeats fast), and the
   ``Run`` script's Python is that environment's. The one stand-in is the Greengrass IPC
   client: that Python runs this file's ``--device-run`` (standard library only at module
   level) in front of the handler, which checks that the real client module
   (``awsiot.greengrasscoreipc``) imports and then hands the handler a fake client in place
   of the nucleus' (there is no nucleus here). The held-out test set
   goes through ``edge_inference`` one request at a time (the MLP's as PNG images
   preprocessed by the handler, the XGBoost model's as feature rows); accuracy must
   equal what training measured and every prediction must match, else this fails;
   the model call's latency p50/p90 is printed next to ONNX Runtime's, both timed back to
   back on the same tensors and threads, and beside it the call per request in service.
   Then two new versions of the MLP (its weights perturbed, and rounded to half
   precision; compiled and signed as the first) reach that device as configuration
   updates (``modelPath`` and ``shadowShare`` > 0, through the handler's configuration
   subscription): each runs in shadow beside the serving version on half of the requests
   that follow, and the device's decisions are printed (agreement, error rates, latency
   p90): the perturbed one must be rejected without answering a caller, the other
   promoted, watched and found healthy, else this fails;
5. **synth**: the reference app (``app.py``) to ``cdk.out``.

Everything lands under ``--workdir`` (default ``build/local``); ``<workdir>/summary.json``
records accuracies, latencies, artifacts, recipes and templates. Exit status 0 only if
every step passed.
"""

from __future__ import annotations

# Only the standard library at module level: the simulated device runs this file too
# (``--device-run``), and must import its runtime from the device bundle.
import argparse
import base64
import contextlib
import hashlib
import json
import os
import re
import shlex
import shutil
import struct
import subprocess
import sys
import threading
import time
import traceback
import zipfile
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator, Optional

REPO = Path(__file__).resolve().parent
SCHEMA = REPO.parent / "shared" / "schemas" / "greengrass-recipe.schema.json"
TRAIN_SCRIPT = REPO / "training" / "train.py"
#: Device bundles ``make bundle`` builds (the same paths app.py looks for).
BUILT_BUNDLES = REPO / "build" / "bundle"

THING_NAME = "local-device"
COMPONENTS = {"mlp": "com.neoedge.DigitsMlp", "xgboost": "com.neoedge.DigitsXgboost"}
MODEL_NAMES = {"mlp": "digits-mlp", "xgboost": "digits-xgboost"}


def CAPTURE_CONFIGURATION(workdir: Path) -> dict:  # noqa: N802 - a table, per work folder
    """The capture settings of local mode's components: 10 % of the requests and the notable
    ones, to ``<workdir>/bucket/captured`` (the folder standing for the capture prefix)."""
    return {"capture": "sampled", "captureSampleRate": 0.1,
            "captureDestination": str((workdir / "bucket" / "captured").resolve()),
            "captureUploadSeconds": 3600}
# What greengrass-cli and the GDK accept as artifact URIs for a local component.
URI_PREFIX = "s3://BUCKET_NAME/COMPONENT_NAME/COMPONENT_VERSION"
# Greengrass' architecture names for `uname -m`.
GG_ARCH = {"x86_64": "amd64", "aarch64": "aarch64", "armv7l": "arm"}
_ELF_MACHINES = {62: "x86-64", 183: "AArch64", 40: "ARM"}


class LocalModeError(RuntimeError):
    """A step failed: the message says which and why."""


# ---------------------------------------------------------------------------------------
# Output


class Reporter:
    """Step headers with timings, indented detail lines, a progress bar factory."""

    def __init__(self, total_steps: int, stream=None) -> None:
        self.total = total_steps
        self.stream = stream or sys.stdout
        self.timings: dict[str, float] = {}
        self._n = 0

    def line(self, text: str = "") -> None:
        print(text, file=self.stream, flush=True)

    def detail(self, text: str) -> None:
        for part in text.splitlines() or [""]:
            self.line(f"    {part}")

    @contextlib.contextmanager
    def step(self, key: str, title: str) -> Iterator[None]:
        self._n += 1
        self.line(f"\n[{self._n}/{self.total}] {title}")
        t0 = time.perf_counter()
        try:
            yield
        except LocalModeError:
            raise
        except Exception as exc:
            raise LocalModeError(f"step {key} failed: {type(exc).__name__}: {exc}") from exc
        self.timings[key] = round(time.perf_counter() - t0, 2)
        self.line(f"    done in {self.timings[key]:.1f}s")

    def progress(self, total: int, desc: str, file=None):
        from tqdm import tqdm

        return tqdm(total=total, desc=f"    {desc}", file=file or sys.stderr, leave=False,
                    disable=None, dynamic_ncols=True)


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[Any]:
    """Send fd 2 (TVM's C++ warnings) to ``path``; yield a file on the real stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    real = os.fdopen(os.dup(saved), "w")
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
        try:
            yield real
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            real.close()


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _percentiles(ms: list[float]) -> dict:
    import numpy as np

    a = np.asarray(ms, dtype=np.float64)
    if not a.size:
        return {"p50_ms": None, "p90_ms": None, "count": 0}
    p50, p90 = np.percentile(a, [50, 90])
    return {"p50_ms": round(float(p50), 4), "p90_ms": round(float(p90), 4), "count": int(a.size)}


# ---------------------------------------------------------------------------------------
# 1. Train


def train(workdir: Path, quick: bool, rep: Reporter) -> dict:
    """Write the CSV channels, run train.py under the script-mode contract; return its outputs."""
    sys.path.insert(0, str(TRAIN_SCRIPT.parent))
    try:
        import train as training
    finally:
        sys.path.remove(str(TRAIN_SCRIPT.parent))
    data = workdir / "data"
    shutil.rmtree(data, ignore_errors=True)
    channels = training.write_digits_channels(data, limit=600 if quick else None)
    hyper = {"model": "both", "hidden-units": "64,32", "max-iter": 200 if quick else 300,
             "n-estimators": 15 if quick else 40, "max-depth": 4, "seed": 0}
    model_dir, output_dir = workdir / "model", workdir / "output" / "data"
    for d in (model_dir, output_dir):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    env = {**os.environ,
           "SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(output_dir),
           "SM_CHANNEL_TRAIN": str(channels["train"]), "SM_CHANNEL_TEST": str(channels["test"]),
           "SM_CHANNELS": json.dumps(["test", "train"]), "SM_HPS": json.dumps(hyper),
           "SM_CURRENT_HOST": "algo-1", "SM_HOSTS": json.dumps(["algo-1"]),
           "SM_NUM_CPUS": str(os.cpu_count() or 1), "SM_NUM_GPUS": "0"}
    # SageMaker's training toolkit passes every hyperparameter as `--name value` too.
    argv = [a for k, v in hyper.items() for a in (f"--{k}", str(v))]
    rep.detail(f"channels: {channels['train']} and {channels['test']} (CSV, label first)")
    rep.detail(f"python training/train.py {' '.join(argv)}")
    proc = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *argv], env=env, cwd=workdir,
                          capture_output=True, text=True, timeout=600)
    for line in proc.stdout.splitlines():
        rep.detail(f"| {line}")
    if proc.returncode != 0:
        raise LocalModeError(f"training/train.py exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    info = json.loads((model_dir / "model_info.json").read_text())
    predictions = json.loads((output_dir / "predictions.json").read_text())
    for kind in ("mlp", "xgboost"):
        if kind not in info["models"] or not (model_dir / info["models"][kind]["file"]).is_file():
            raise LocalModeError(f"training wrote no {kind} model to {model_dir}")
    return {"info": info, "predictions": predictions, "model_dir": model_dir,
            "channels": channels, "hyperparameters": hyper}


# ---------------------------------------------------------------------------------------
# 2. Compile


def _elf_machine(path: Path) -> str:
    head = path.read_bytes()[:20]
    if head[:4] != b"\x7fELF":
        return "not an ELF file"
    endian = "<" if head[5] == 1 else ">"
    (machine,) = struct.unpack(endian + "H", head[18:20])
    return _ELF_MACHINES.get(machine, f"e_machine {machine}")


def device_target() -> str:
    """The ARM device to cross-compile for: rasp4b, or rasp3b when this host is aarch64."""
    from neo_edge_runtime.targets import host_arch

    return "rasp3b" if host_arch() == "aarch64" else "rasp4b"


#: The local signing key pair, under the work folder: every model is signed with it and the
#: simulated device is configured with its public key, as the cloud path does with KMS.
SIGNING_KEY = Path("signing") / "key.pem"


def signing_key(workdir: Path) -> tuple[Path, Path]:
    """The work folder's signing key pair (private, public), made on first use."""
    from neo_edge_runtime.compile.signing import generate_key

    private = workdir / SIGNING_KEY
    public = private.with_name("key.pub.pem")
    if not (private.is_file() and public.is_file()):
        private.unlink(missing_ok=True)
        generate_key(private)
    return private, public


def _model_metadata(info: dict, kind: str) -> dict:
    """What the artifact's manifest says of a trained model: task, labels, preprocessing."""
    model = info["models"][kind]
    metadata = {"task": "classification", "labels": info["labels"], "dataset": info["dataset"],
                "trained_by": "training/train.py (SageMaker script mode)",
                "test_accuracy": model["accuracy"]}
    if model.get("preprocess"):
        metadata["preprocess"] = model["preprocess"]
    return metadata


def compile_models(workdir: Path, trained: dict, targets: list[str], rep: Reporter) -> dict:
    from neo_edge_runtime.compile.compiler import compile_model
    from neo_edge_runtime.compile.signing import FileSigner

    signer = FileSigner(signing_key(workdir)[0])

    info = trained["info"]
    out: dict = {}
    jobs = [(kind, target) for kind in ("mlp", "xgboost") for target in targets]
    log = workdir / "logs" / "compile.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    with stderr_to(log) as real_stderr:
        bar = rep.progress(len(jobs), "compiling", file=real_stderr)
        try:
            for kind, target in jobs:
                model = info["models"][kind]
                metadata = _model_metadata(info, kind)
                t0 = time.perf_counter()
                try:
                    folder = compile_model(
                        trained["model_dir"] / model["file"], target,
                        workdir / "compiled" / f"{MODEL_NAMES[kind]}-{target}",
                        framework=model["framework"], name=MODEL_NAMES[kind], version="1.0.0",
                        metadata=metadata, signer=signer)
                except Exception as exc:
                    raise LocalModeError(f"compiling {kind} for {target} failed: {exc}\n"
                                         f"{_tail(log)}") from exc
                manifest = json.loads((folder / "manifest.json").read_text())
                machine = _elf_machine(folder / manifest["library"])
                size = sum(f.stat().st_size for f in folder.iterdir())
                out.setdefault(kind, {})[target] = {
                    "path": str(folder), "elf": machine, "bytes": size,
                    "seconds": round(time.perf_counter() - t0, 2)}
                bar.update(1)
        finally:
            bar.close()
    for kind, by_target in out.items():
        for target, art in by_target.items():
            rep.detail(f"{MODEL_NAMES[kind]:<15} {target:<7} {art['elf']:<8} "
                       f"{art['bytes'] / 1024:7.0f} KiB  {art['seconds']:5.1f}s")
    from neo_edge_runtime.targets import resolve

    for target in targets:
        want = {"x86_64": "x86-64", "aarch64": "AArch64", "armv7l": "ARM"}[resolve(target).arch]
        for kind in out:
            if out[kind][target]["elf"] != want:
                raise LocalModeError(f"{kind} for {target} is a {out[kind][target]['elf']} "
                                     f"library; expected {want}")
    return out


# ---------------------------------------------------------------------------------------
# 3. Package


def _zip_folder(folder: Path, dest: Path) -> Path:
    """A deterministic ZIP of ``folder`` (sorted names, fixed timestamps and modes)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), (1980, 1, 1, 0, 0, 0))
            info.external_attr = (0o755 if os.access(path, os.X_OK) else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, path.read_bytes())
    return dest


def _matches(platform: dict, device: dict) -> bool:
    """Whether a manifest platform matches a device's attributes (``*`` matches any)."""
    return all(v == "*" or device.get(str(k).lower()) == v for k, v in platform.items())


def device_platform() -> dict:
    """What a Greengrass nucleus on this machine would report."""
    from neo_edge_runtime.targets import host_arch

    return {"os": "linux", "architecture": GG_ARCH[host_arch()]}


def package(workdir: Path, compiled: dict, targets: list[str], threads: int,
            bundles: dict[str, Path], rep: Reporter) -> dict:
    """One component per model: artifacts and a recipe from the construct's recipe builder."""
    from neo_edge_runtime.compile import recipe as gg
    from neo_edge_runtime.targets import resolve

    root = workdir / "component"
    shutil.rmtree(root, ignore_errors=True)
    staging = workdir / "staging"
    shutil.rmtree(staging, ignore_errors=True)
    # Device bundles, zipped once per architecture.
    from neo_edge_runtime.compile.bundle import build_bundle

    bundle_zips: dict[str, Path] = {}
    for arch in sorted({resolve(t).arch for t in targets}):
        source = bundles.get(arch)
        if source is None:
            # What make bundle builds (the same function, the same bytes): the TVM runtime
            # library and FFI from this architecture's wheels of the pinned versions.
            source = build_bundle(arch, BUILT_BUNDLES, cache=REPO / "build" / "wheels")
        elif source.is_dir():
            source = _zip_folder(source, staging / f"runtime-{arch}.zip")
        rep.detail(f"device bundle {arch}: {source.stat().st_size / 1e6:.1f} MB ({source.name})")
        bundle_zips[arch] = source

    validator = None
    if SCHEMA.is_file():
        import jsonschema

        validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    out: dict = {}
    for kind, by_target in compiled.items():
        name = COMPONENTS[kind]
        files: dict[str, Path] = {}
        platforms = []
        for target in targets:
            spec = resolve(target)
            model_zip = _zip_folder(Path(by_target[target]["path"]),
                                    staging / name / f"{MODEL_NAMES[kind]}-{target}.zip")
            runtime_zip = bundle_zips[spec.arch]
            runtime_name = f"neo-edge-runtime-{spec.arch}.zip"
            files[model_zip.name] = model_zip
            files[runtime_name] = runtime_zip
            platforms.append(gg.PlatformArtifacts(
                platform=spec.greengrass_platform, name=target,
                model=gg.Artifact(f"{URI_PREFIX}/{model_zip.name}", sha256=_sha256(model_zip),
                                  unarchive="ZIP"),
                runtime=gg.Artifact(f"{URI_PREFIX}/{runtime_name}", sha256=_sha256(runtime_zip),
                                    unarchive="ZIP", execute="OWNER")))
        recipe = gg.inference_recipe(
            component_name=name, platforms=platforms,
            description=f"neo-edge local mode: {MODEL_NAMES[kind]} on the TVM runtime",
            configuration={"threadCount": threads,
                           "signingPublicKey": signing_key(workdir)[1].read_text(),
                           # Each result at once: the simulated caller waits for each one.
                           "resultsBatchSeconds": 0,
                           # Inputs of a tenth of the requests, and of the notable ones, for
                           # retraining; "uploaded" into a folder standing for the bucket.
                           **CAPTURE_CONFIGURATION(workdir)})
        version = recipe["ComponentVersion"]
        art_dir = root / "artifacts" / name / version
        art_dir.mkdir(parents=True)
        for file_name, path in files.items():
            shutil.copy2(path, art_dir / file_name)
        recipe_path = root / "recipes" / f"{name}-{version}.json"
        recipe_path.parent.mkdir(parents=True, exist_ok=True)
        recipe_path.write_text(gg.recipe_json(recipe) + "\n")
        gg.validate_recipe(json.loads(recipe_path.read_text()))
        schema_errors: Optional[list] = None
        if validator is not None:
            lowered = _lower_keys(json.loads(recipe_path.read_text()))
            schema_errors = [e.message for e in validator.iter_errors(lowered)]
            if schema_errors:
                raise LocalModeError(f"recipe {recipe_path} fails the GDK recipe schema: "
                                     + "; ".join(schema_errors[:5]))
        out[kind] = {"component": name, "version": version, "recipe": str(recipe_path),
                     "artifacts": str(art_dir), "schema_checked": validator is not None,
                     "platforms": [m["Platform"] for m in recipe["Manifests"]]}
        rep.detail(f"{name} {version}: {len(recipe['Manifests'])} manifests ("
                   + ", ".join(f"{m['Name']}: {m['Platform']['architecture']}"
                               for m in recipe["Manifests"]) + ")")
        rep.detail(f"  recipe {recipe_path.relative_to(workdir)}"
                   + (" (GDK schema: valid)" if validator is not None else
                      f" (no schema at {SCHEMA}: builder checks only)"))
    shutil.rmtree(staging, ignore_errors=True)
    rep.detail(f"deploy to a local core: sudo greengrass-cli deployment create "
               f"--recipeDir {root / 'recipes'} --artifactDir {root / 'artifacts'} "
               f"--merge {COMPONENTS['mlp']}={out['mlp']['version']}")
    return out


def _lower_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_lower_keys(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------
# 4. The device


_VARIABLE = re.compile(r"\{([A-Za-z0-9_.-]+:)?(artifacts|work|configuration|iot|kernel):([^}]*)\}")


def substitute(script: str, *, component: str, paths: dict, configuration: dict) -> str:
    """Replace the recipe variables the nucleus replaces; refuse any this one cannot."""

    def value(match: re.Match) -> str:
        other, kind, key = match.group(1), match.group(2), match.group(3)
        if other and other.rstrip(":") != component:
            raise LocalModeError(f"recipe variable {match.group(0)} refers to another component; "
                                 "local mode runs one component")
        if kind == "artifacts" and key in ("path", "decompressedPath"):
            return str(paths[key])
        if kind == "work" and key == "path":
            return str(paths["work"])
        if kind == "kernel" and key == "rootPath":
            return str(paths["root"])
        if kind == "iot" and key == "thingName":
            return THING_NAME
        if kind == "configuration" and key.startswith("/"):
            node: Any = configuration
            for part in key[1:].split("/"):
                part = part.replace("~1", "/").replace("~0", "~")
                if not isinstance(node, dict) or part not in node:
                    raise LocalModeError(f"recipe variable {match.group(0)}: no {key} in the "
                                         "component's configuration")
                node = node[part]
            return node if isinstance(node, str) else json.dumps(node)
        raise LocalModeError(f"recipe variable {match.group(0)} is not one local mode knows")

    return _VARIABLE.sub(value, script)


def lifecycle_environment(lifecycle: dict, **variables: Any) -> dict:
    """The recipe's ``Setenv`` with its recipe variables replaced (nothing else is done to
    the values: the nucleus hands them to the lifecycle's processes as they are)."""
    return {key: substitute(str(value), **variables)
            for key, value in (lifecycle.get("Setenv") or {}).items()}


#: Where the bare interpreter of the simulated device lives, under the workdir.
BARE_PYTHON = Path("device") / "bare-python"


def bare_interpreter(workdir: Path, *, fresh: bool = False) -> Path:
    """The ``bin`` folder of the simulated device's ``python3``: a virtual environment of
    this host's Python with nothing installed (no pip either), made when missing (or
    again when ``fresh``)."""
    venv = workdir / BARE_PYTHON
    if fresh:
        shutil.rmtree(venv, ignore_errors=True)
    if not (venv / "bin" / "python3").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True,
                       capture_output=True, text=True)
    return venv / "bin"


def device_environment(bare_bin: Path, **extra: str) -> dict:
    """The environment of a lifecycle script: this one without the host's virtual
    environment and Python settings, ``bare_bin`` first on the PATH.

    ``PIP_NO_COMPILE`` is set: pip then leaves byte-compiling to the first import, which
    saves the install step about a third of its pip time here and changes nothing of what
    gets installed."""
    host_bins = {str(Path(sys.executable).parent), str(Path(sys.prefix) / "bin")}
    if os.environ.get("VIRTUAL_ENV"):
        host_bins.add(str(Path(os.environ["VIRTUAL_ENV"]) / "bin"))
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and p not in host_bins]
    env = {k: v for k, v in os.environ.items()
           if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP",
                        "PYTHONUSERBASE", "PYTHONEXECUTABLE", "__PYVENV_LAUNCHER__")}
    env["PATH"] = os.pathsep.join([str(bare_bin), *path])
    env["PIP_NO_COMPILE"] = "1"
    env.update(extra)
    return env


def install_component(workdir: Path, component: dict, rep: Reporter,
                      bare_bin: Optional[Path] = None) -> dict:
    """The nucleus' part for this machine's platform: download, check, unpack, install.

    ``bare_bin``: the folder whose ``python3`` the install script sees. Default:
    :func:`bare_interpreter`'s.
    """
    bare_bin = bare_bin or bare_interpreter(workdir)
    recipe = json.loads(Path(component["recipe"]).read_text())
    name, version = recipe["ComponentName"], recipe["ComponentVersion"]
    platform = device_platform()
    manifest = next((m for m in recipe["Manifests"] if _matches(m["Platform"], platform)), None)
    if manifest is None:
        raise LocalModeError(f"no manifest of {name} matches this device's platform {platform}")
    root = workdir / "device" / name
    shutil.rmtree(root, ignore_errors=True)
    paths = {"root": root,
             "path": root / "packages" / "artifacts" / name / version,
             "decompressedPath": root / "packages" / "artifacts-unarchived" / name / version,
             "work": root / "work" / name}
    for p in ("path", "decompressedPath", "work"):
        paths[p].mkdir(parents=True)
    source = Path(component["artifacts"])
    for artifact in manifest.get("Artifacts", []):
        file_name = artifact["Uri"].rsplit("/", 1)[-1]
        dest = paths["path"] / file_name
        shutil.copy2(source / file_name, dest)
        if artifact.get("Digest"):
            digest = base64.b64encode(bytes.fromhex(_sha256(dest))).decode()
            if digest != artifact["Digest"]:
                raise LocalModeError(f"artifact {file_name} does not match the recipe's digest")
        if artifact.get("Unarchive") == "ZIP":
            with zipfile.ZipFile(dest) as z:
                z.extractall(paths["decompressedPath"] / file_name[:-len(".zip")])
    configuration = recipe["ComponentConfiguration"]["DefaultConfiguration"]
    step = manifest["Lifecycle"]["Install"]
    script = step["Script"] if isinstance(step, dict) else step
    script = substitute(script, component=name, paths=paths, configuration=configuration)
    log = workdir / "logs" / f"{name}-install.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(["bash", "-c", script], cwd=paths["work"], stdout=f,
                              stderr=subprocess.STDOUT, env=device_environment(bare_bin),
                              timeout=(step.get("Timeout", 120) if isinstance(step, dict) else 120))
    if proc.returncode != 0:
        raise LocalModeError(f"{name} install script exited {proc.returncode}:\n{_tail(log)}")
    seconds = time.perf_counter() - t0
    rep.detail(f"{name}: manifest {manifest.get('Name')} ({manifest['Platform']['architecture']}), "
               f"{len(manifest.get('Artifacts', []))} artifacts, digests checked; install: ok "
               f"({seconds:.1f}s, from {bare_bin / 'python3'})")
    return {"name": name, "version": version, "manifest": manifest, "paths": paths,
            "configuration": configuration, "bare_bin": bare_bin,
            "install_seconds": round(seconds, 2)}


def run_component(workdir: Path, installed: dict, requests: list[dict], rep: Reporter,
                  label: str, updates: Optional[list[dict]] = None) -> dict:
    """Run the recipe's Run script; its Python serves ``requests`` through a fake IPC client.

    The script must start the handler with the Python of the component's virtual
    environment (``exec env ... <work>/venv/bin/python3 -u <handler>``); that Python runs
    this file's ``--device-run`` in front of the handler, which gives the handler a fake
    IPC client.

    ``updates`` (:func:`rollout_updates`): configuration updates delivered one after the
    other once ``requests`` are served, each followed by requests (``requests`` again,
    under new ids) until the device's final decision on the version it names.
    """
    name, paths = installed["name"], installed["paths"]
    lifecycle = installed["manifest"]["Lifecycle"]
    script = substitute(lifecycle["Run"], component=name, paths=paths,
                        configuration=installed["configuration"])
    words = shlex.split(script)
    venv_python = str(paths["work"] / "venv" / "bin" / "python3")
    if words[:1] != ["exec"] or venv_python not in words:
        raise LocalModeError(f"{name}'s run script is not 'exec {venv_python} ...': {script}")
    at = words.index(venv_python) + 1
    words[at:at] = ["-u", str(Path(__file__).resolve()), "--device-run"]
    sim = workdir / "device" / name / "sim"
    sim.mkdir(parents=True, exist_ok=True)
    requests_path, results_path = sim / "requests.jsonl", sim / "results.jsonl"
    stats_path, log = sim / "stats.json", workdir / "logs" / f"{name}-run.log"
    updates_path = sim / "updates.json"
    with open(requests_path, "w") as f:
        for r in requests:
            f.write(json.dumps(r) + "\n")
    for p in (results_path, stats_path, updates_path, sim / "summaries.jsonl",
              sim / "rollouts.jsonl"):
        p.unlink(missing_ok=True)
    if updates:
        updates_path.write_text(json.dumps(updates))
    bare_bin = installed.get("bare_bin") or bare_interpreter(workdir)
    env = {"PATH": device_environment(bare_bin)["PATH"],
           "HOME": os.environ.get("HOME", str(sim)), "LANG": "C.UTF-8",
           "AWS_IOT_THING_NAME": THING_NAME, "SVCUID": "local-mode",
           "NEO_EDGE_LOCAL_REQUESTS": str(requests_path), "NEO_EDGE_LOCAL_RESULTS": str(results_path),
           "NEO_EDGE_LOCAL_STATS": str(stats_path),
           "NEO_EDGE_LOCAL_CONFIGURATION": json.dumps(installed["configuration"]),
           "NEO_EDGE_LOCAL_UPDATES": str(updates_path) if updates else "",
           "NEO_EDGE_LOCAL_COMPONENT": name,
           "NEO_EDGE_RELOAD_CHECK_SECONDS": "3600",
           "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    # Setenv: the values go into the environment as they are, as the nucleus does.
    env.update(lifecycle_environment(lifecycle, component=name, paths=paths,
                                     configuration=installed["configuration"]))
    with open(log, "w") as out:
        proc = subprocess.Popen(["bash", "-c", shlex.join(words)], cwd=paths["work"], env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        bar = rep.progress(len(requests), label)
        done = 0
        deadline = (time.monotonic() + 120 + 0.5 * len(requests)
                    + sum(30 + 0.1 * u["max_requests"] for u in updates or ()))
        try:
            while proc.poll() is None:
                if time.monotonic() > deadline:
                    proc.kill()
                    raise LocalModeError(f"{name} did not serve {len(requests)} requests in time:"
                                         f"\n{_tail(log)}")
                time.sleep(0.1)
                if results_path.exists():
                    with open(results_path) as f:
                        n = sum(1 for _ in f)
                    bar.update(n - done)
                    done = n
        finally:
            bar.close()
    if proc.returncode != 0 or not stats_path.exists():
        raise LocalModeError(f"{name}'s run step exited {proc.returncode}:\n{_tail(log)}")
    stats = json.loads(stats_path.read_text())
    published = [json.loads(line) for line in results_path.read_text().splitlines() if line]
    return {"stats": stats, "published": published, "log": str(log)}


def _device_run(argv: list[str]) -> int:
    """The simulated device's handler process: load edge_inference.py, serve the requests file.

    Runs in the process the recipe's Run script starts, with its interpreter (the
    component's virtual environment) and environment (the bundle on PYTHONPATH). The
    Greengrass IPC client module must import there, as it must on a device; the handler
    then gets a fake client instead of one connected to a nucleus. Requests go in through
    the subscription callback the handler registered with the IPC client, one at a time;
    each result it publishes to IoT Core is appended to the results file.
    """
    here = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if p not in (here, "")]  # only the device's modules
    script = next((a for a in argv if a.endswith(".py")), None)
    if script is None:
        print(f"--device-run: no script among {argv}", file=sys.stderr)
        return 2
    import importlib.util

    try:
        import awsiot.greengrasscoreipc.clientv2 as ipc_module
    except ImportError as exc:
        print(f"the device's Python ({sys.executable}) cannot import the Greengrass IPC client: "
              f"{exc}", file=sys.stderr)
        return 1

    spec = importlib.util.spec_from_file_location("edge_inference", script)
    module = importlib.util.module_from_spec(spec)
    sys.modules["edge_inference"] = module
    spec.loader.exec_module(module)

    requests = [json.loads(line) for line in
                Path(os.environ["NEO_EDGE_LOCAL_REQUESTS"]).read_text().splitlines() if line]
    ipc = _LocalIpc(Path(os.environ["NEO_EDGE_LOCAL_RESULTS"]),
                    json.loads(os.environ.get("NEO_EDGE_LOCAL_CONFIGURATION", "{}")),
                    rollout_topic=os.environ.get("NEO_EDGE_ROLLOUT_TOPIC", ""))
    stop = threading.Event()
    outcome: dict = {}

    def serve() -> None:
        outcome["rc"] = module.main([], ipc_client=ipc, stop=stop)

    server = threading.Thread(target=serve, name="edge-inference-main")
    server.start()
    while ipc.on_request is None:
        if not server.is_alive():
            print(f"edge_inference exited {outcome.get('rc')} before subscribing", file=sys.stderr)
            return 1
        time.sleep(0.01)
    service = module.get_service()
    model = service.model
    model.warmup(10)
    model.reset_latency()
    end_to_end = []
    for i, request in enumerate(requests):
        event = SimpleNamespace(binary_message=None, json_message=SimpleNamespace(message=request))
        t0 = time.perf_counter()
        ipc.on_request(event)
        if not ipc.wait_for(i + 1, timeout=60):
            print(f"no result for request {i} within 60s", file=sys.stderr)
            stop.set()
            return 1
        end_to_end.append((time.perf_counter() - t0) * 1000.0)
    in_service = model.latency_stats()  # the test set's, one call per request served
    pool = [r for r in requests if r.get("request_id") != "bad-request"]
    model_latency = _back_to_back_latency(model, [service.decode(r).inputs for r in pool])
    rollout = None
    if os.environ.get("NEO_EDGE_LOCAL_UPDATES"):
        updates = json.loads(Path(os.environ["NEO_EDGE_LOCAL_UPDATES"]).read_text())
        try:
            rollout = [_deliver_update(ipc, service, pool, update) for update in updates]
        except TimeoutError as exc:
            print(str(exc), file=sys.stderr)
            stop.set()
            return 1
    stop.set()
    server.join(60)
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    import neo_edge_runtime

    stats = {"model_latency": model_latency, "model_latency_in_service": in_service,
             "end_to_end_ms": end_to_end, "rollout": rollout,
             "threads": service.settings.num_threads, "input_topic": service.settings.input_topic,
             "results_topic": service.settings.results_topic,
             "errors_topic": service.settings.errors_topic,
             "runtime_module": neo_edge_runtime.__file__,
             "python": sys.executable, "python_prefix": sys.prefix,
             "numpy_module": sys.modules["numpy"].__file__, "ipc_module": ipc_module.__file__,
             "compiler_library_mapped": "libtvm_compiler.so" in maps or "/libtvm.so" in maps,
             "tvm_imported": "tvm" in sys.modules, "rc": outcome.get("rc")}
    Path(os.environ["NEO_EDGE_LOCAL_STATS"]).write_text(json.dumps(stats))
    return int(outcome.get("rc") or 0)


def _deliver_update(ipc: "_LocalIpc", service: Any, pool: list[dict], update: dict) -> dict:
    """One configuration update as the nucleus delivers it (the new configuration, then the
    update event on the handler's subscription), then requests from ``pool``, one at a
    time, until the device's final decision on the version the update names."""
    version = update["version"]
    before = len(ipc.rollouts)
    ipc.configuration = {**ipc.configuration, **update["configuration"]}
    ipc.update_configuration()
    candidate = service.store.candidate
    staged = getattr(candidate, "version", None)
    answered_by: dict = {}
    sent = 0
    t0 = time.perf_counter()

    def final() -> bool:
        return any(m.get("model_version") == version and m.get("decision") in ROLLOUT_FINAL
                   for m in ipc.rollouts[before:])

    while not final() and sent < update["max_requests"]:
        payload = dict(pool[sent % len(pool)], request_id=f"rollout-{version}-{sent:05d}")
        expected = ipc.published + 1
        ipc.on_request(SimpleNamespace(binary_message=None,
                                       json_message=SimpleNamespace(message=payload)))
        sent += 1
        if not ipc.wait_for(expected, timeout=60):
            raise TimeoutError(f"no result for {payload['request_id']} within 60s")
        service.queue.join()  # served, and the rollout's bookkeeping of it done
        answer = ipc.last_result
        key = answer.get("model_version") if "error" not in answer else "error"
        answered_by[key] = answered_by.get(key, 0) + 1
    store_versions = sorted(p.name for p in (Path(service.store.root) / "versions").iterdir())
    return {"version": version, "staged": staged, "requests": sent, "answered_by": answered_by,
            "decisions": ipc.rollouts[before:], "serving": service.model.version,
            "store_versions": store_versions, "seconds": round(time.perf_counter() - t0, 2)}


def retrain_on_captures(workdir: Path, trained: dict, rep: Reporter) -> dict:
    """The loop closed: the XGBoost device's captured inputs, labelled, retrain the model.

    The device uploaded its captures (label column empty, prediction and model version in
    the sidecar) under ``<workdir>/bucket/captured/``; here the test set's labels stand in
    for a labelling job (:func:`neo_edge_runtime.telemetry.label_captures`), the labelled
    rows join the training channel, and ``training/train.py`` runs again on it, evaluated
    on the test rows that were not captured.
    """
    import numpy as np

    from neo_edge_runtime.telemetry import label_captures

    sys.path.insert(0, str(TRAIN_SCRIPT.parent))
    try:
        import train as training
    finally:
        sys.path.remove(str(TRAIN_SCRIPT.parent))
    captured = workdir / "bucket" / "captured" / f"model={MODEL_NAMES['xgboost'].replace('-', '_')}"
    if not list(captured.glob("*.csv")):
        raise LocalModeError(f"the device captured nothing under {captured}")
    x_test, y_test = training.read_channel(trained["channels"]["test"])
    labels = {f"test-{i:05d}": int(y) for i, y in enumerate(y_test)}
    retrain = workdir / "retrain"
    shutil.rmtree(retrain, ignore_errors=True)
    channel, test = retrain / "train", retrain / "test"
    counts = label_captures(str(captured), labels, str(channel))
    shutil.copy(Path(trained["channels"]["train"]) / "digits.csv", channel / "digits.csv")
    used = set()
    for side in captured.glob("*.jsonl"):
        used |= {json.loads(line)["request_id"] for line in side.read_text().splitlines() if line}
    keep = [i for i in range(len(y_test)) if f"test-{i:05d}" not in used]
    test.mkdir(parents=True)
    np.savetxt(test / "digits.csv", np.column_stack([y_test[keep], x_test[keep]]), delimiter=",",
               fmt="%g")
    model_dir, output_dir = retrain / "model", retrain / "output"
    model_dir.mkdir()
    output_dir.mkdir()
    hyper = dict(trained["hyperparameters"], model="xgboost")
    argv = [a for k, v in hyper.items() for a in (f"--{k}", str(v))]
    env = {**os.environ, "SM_MODEL_DIR": str(model_dir), "SM_OUTPUT_DATA_DIR": str(output_dir),
           "SM_CHANNEL_TRAIN": str(channel), "SM_CHANNEL_TEST": str(test),
           "SM_HPS": json.dumps(hyper)}
    proc = subprocess.run([sys.executable, str(TRAIN_SCRIPT), *argv], env=env, cwd=retrain,
                          capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        raise LocalModeError(f"retraining on the captured data failed:\n{proc.stderr[-3000:]}")
    info = json.loads((model_dir / "model_info.json").read_text())
    accuracy = info["models"]["xgboost"].get("accuracy")
    rep.detail(f"retraining: {counts['labelled']} captured rows labelled (of {counts['rows']}) "
               f"joined the training channel; XGBoost retrained, accuracy {accuracy} on the "
               f"{len(keep)} test rows not captured")
    return {"captured": counts, "channel": str(channel), "accuracy": accuracy,
            "evaluated_on": len(keep)}


class _LocalIpc:
    """The part of ``GreengrassCoreIPCClientV2`` that edge_inference uses, in one process."""

    def __init__(self, results: Path, configuration: dict, rollout_topic: str = "") -> None:
        self._results = open(results, "w")
        self._cond = threading.Condition()
        self.published = 0
        self.last_result: dict = {}
        self.on_request: Optional[Callable[[Any], None]] = None
        self.on_configuration: Optional[Callable[[Any], None]] = None
        self.configuration = configuration
        self.rollout_topic = rollout_topic
        #: The rollout decisions published (also in rollouts.jsonl beside the results).
        self.rollouts: list[dict] = []

    def publish_to_iot_core(self, *, topic_name: str, qos: Any, payload: bytes) -> None:
        message = json.loads(payload)
        if self.rollout_topic and topic_name == self.rollout_topic:
            with open(Path(self._results.name).with_name("rollouts.jsonl"), "a") as f:
                f.write(json.dumps({"topic": topic_name, "message": message}) + "\n")
            self.rollouts.append(message)
            return
        # A batch of results (neo_edge_runtime.telemetry): one line per result; a summary:
        # kept apart (summaries.jsonl beside the results), not counted as a result.
        results = message.get("results") if isinstance(message, dict) else None
        if results is None:
            with open(Path(self._results.name).with_name("summaries.jsonl"), "a") as f:
                f.write(json.dumps({"topic": topic_name, "message": message}) + "\n")
            return
        with self._cond:
            for result in results:
                self._results.write(json.dumps({"topic": topic_name, "qos": str(qos),
                                                "message": result}) + "\n")
                self.published += 1
                self.last_result = result
            self._results.flush()
            self._cond.notify_all()

    def wait_for(self, count: int, timeout: float) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self.published >= count, timeout)

    def subscribe_to_topic(self, *, topic: str, on_stream_event: Callable, on_stream_error=None,
                           on_stream_closed=None) -> tuple:
        self.topic = topic
        self.on_request = on_stream_event
        return SimpleNamespace(), SimpleNamespace()

    def subscribe_to_configuration_update(self, *, key_path, on_stream_event, on_stream_error=None,
                                          on_stream_closed=None) -> tuple:
        self.on_configuration = on_stream_event
        return SimpleNamespace(), SimpleNamespace()

    def update_configuration(self) -> None:
        """What the nucleus does when a deployment changes the component's configuration:
        the subscribers get a ``ConfigurationUpdateEvents`` naming the key path (the
        configuration itself is read back with ``get_configuration``)."""
        if self.on_configuration is None:
            raise RuntimeError("the handler did not subscribe to configuration updates")
        self.on_configuration(SimpleNamespace(configuration_update_event=SimpleNamespace(
            component_name=os.environ.get("NEO_EDGE_LOCAL_COMPONENT", ""), key_path=[])))

    def get_configuration(self, *, key_path) -> Any:
        return SimpleNamespace(value=self.configuration)


def _png(grey: "Any") -> bytes:
    """An 8-bit greyscale PNG of a 2-D uint8 array (no filters)."""
    h, w = grey.shape
    raw = b"".join(b"\x00" + bytes(row) for row in grey.astype("uint8").tolist())

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


def _rounded(latency: dict) -> dict:
    """p50, p90 (ms, to 0.1 us) and count of :meth:`EdgeModel.latency_stats`."""
    return {"p50_ms": round(latency["p50_ms"], 4), "p90_ms": round(latency["p90_ms"], 4),
            "count": latency["count"]}


def _back_to_back_latency(model, inputs: list, repeats: int = 3) -> dict:
    """The device model's per-call latency timed as :func:`_ort_latency` times ONNX
    Runtime: called back to back on the same tensors, after ten warm-up calls. Timed per
    request while serving, each call also pays for the caches and the thread pool going
    cold between messages (the MLP: 20 us a call there against 6 us back to back), which
    ONNX Runtime's figure never includes; that figure is kept as ``in_service``."""
    for x in inputs[:10]:
        model.predict(dict(x))
    model.reset_latency()
    for _ in range(repeats):
        for x in inputs:
            model.predict(dict(x))
    return model.latency_stats()


def _ort_latency(onnx_path: Path, inputs: list, threads: int, repeats: int) -> tuple[dict, list]:
    """ONNX Runtime on the same inputs and threads: per-call latency and outputs."""
    import numpy as np

    from neo_edge_runtime.compile.bench import ort_session

    sess = ort_session(str(onnx_path), threads)
    name = sess.get_inputs()[0].name
    for x in inputs[:10]:
        sess.run(None, {name: x})
    outputs, times = [], []
    for _ in range(repeats):
        for x in inputs:
            t0 = time.perf_counter()
            result = sess.run(None, {name: x})
            times.append((time.perf_counter() - t0) * 1000.0)
    for x in inputs:
        outputs.append(np.asarray(sess.run(None, {name: x})[0]))
    return _percentiles(times), outputs


def simulate_device(workdir: Path, trained: dict, components: dict, threads: int,
                    rep: Reporter, rollout: Optional[list[dict]] = None) -> dict:
    """Install and run each component on the simulated core; serve the test set through it.

    ``rollout`` (:func:`rollout_versions`): new versions of the MLP, delivered to its
    device once it has served the test set (:func:`rollout_updates`) and checked
    (:func:`check_rollout`); the outcome is the MLP entry's ``rollout``.
    """
    import numpy as np

    sys.path.insert(0, str(TRAIN_SCRIPT.parent))
    try:
        import train as training
    finally:
        sys.path.remove(str(TRAIN_SCRIPT.parent))
    x_test, y_test = training.read_channel(trained["channels"]["test"])
    labels = trained["info"]["labels"]
    expected = trained["predictions"]
    if expected["labels"] != y_test.tolist():
        raise LocalModeError("the test channel changed since training")
    grey = x_test.astype(np.uint8).reshape(-1, 8, 8)
    report: dict = {}
    # This run's captures only: kept from an earlier run, they were labelled and retrained
    # on again (a second `make demo` reported twice the captured rows).
    shutil.rmtree(Path(CAPTURE_CONFIGURATION(workdir)["captureDestination"]), ignore_errors=True)
    bare_bin = bare_interpreter(workdir, fresh=True)
    for kind in ("mlp", "xgboost"):
        info = trained["info"]["models"][kind]
        installed = install_component(workdir, components[kind], rep, bare_bin)
        if kind == "mlp":
            requests = [{"request_id": f"test-{i:05d}", "image": base64.b64encode(_png(g)).decode()}
                        for i, g in enumerate(grey)]
            scale = float(info["preprocess"]["scale"])
            ort_inputs = [(g.astype(np.float32) * scale).reshape(1, 1, 8, 8) for g in grey]
            onnx_path = trained["model_dir"] / info["file"]
        else:
            requests = [{"request_id": f"test-{i:05d}", "data": row.tolist()}
                        for i, row in enumerate(x_test)]
            ort_inputs = [row.reshape(1, -1).astype(np.float32) for row in x_test]
            from neo_edge_runtime.compile.xgboost_onnx import load_xgboost_json, xgboost_to_onnx

            onnx_path = workdir / "model" / "xgboost-lowered.onnx"
            onnx_path.write_bytes(xgboost_to_onnx(load_xgboost_json(
                str(trained["model_dir"] / info["file"]))).SerializeToString())
        # One request the handler must refuse, on the errors topic, without stopping.
        requests.append({"request_id": "bad-request", "data": [1.0, 2.0, 3.0]})
        updates = rollout_updates(installed, rollout) if kind == "mlp" and rollout else None
        ran = run_component(workdir, installed, requests, rep, f"{MODEL_NAMES[kind]} requests",
                            updates=updates)
        stats = ran["stats"]
        by_id = {m["message"]["request_id"]: m for m in ran["published"]}
        results_topic, errors_topic = stats["results_topic"], stats["errors_topic"]
        bad = by_id.get("bad-request")
        if bad is None or bad["topic"] != errors_topic or "error" not in bad["message"]:
            raise LocalModeError(f"{kind}: the malformed request did not give an error result on "
                                 f"{errors_topic}: {bad}")
        predicted, top_scores = [], []
        for i in range(len(y_test)):
            m = by_id.get(f"test-{i:05d}")
            if m is None or m["topic"] != results_topic or "error" in m["message"]:
                raise LocalModeError(f"{kind}: request test-{i:05d} got no result on "
                                     f"{results_topic}: {m}")
            predicted.append(labels.index(m["message"]["labels"][0]))
            top_scores.append(m["message"]["scores"][0])
        predicted_a = np.asarray(predicted)
        accuracy = float(np.mean(predicted_a == y_test))
        disagree = int(np.sum(predicted_a != np.asarray(expected[kind])))
        ort, ort_out = _ort_latency(onnx_path, ort_inputs, threads, repeats=3)
        ort_top = np.asarray([o.reshape(-1).max() for o in ort_out])
        score_diff = float(np.max(np.abs(np.asarray(top_scores) - ort_top)))
        if not stats["runtime_module"].startswith(str(installed["paths"]["work"])) and \
                not stats["runtime_module"].startswith(str(installed["paths"]["decompressedPath"])):
            raise LocalModeError(f"{kind}: the device loaded neo_edge_runtime from "
                                 f"{stats['runtime_module']}, not from its bundle")
        venv = installed["paths"]["work"] / "venv"
        for what in ("python_prefix", "numpy_module", "ipc_module"):
            if not Path(stats[what]).is_relative_to(venv):
                raise LocalModeError(f"{kind}: the handler's {what.replace('_', ' ')} is "
                                     f"{stats[what]}, not in the component's venv {venv}")
        model_latency = stats["model_latency"]
        entry = {
            "component": installed["name"], "version": installed["version"],
            "test_size": int(len(y_test)), "training_accuracy": info["accuracy"],
            "device_accuracy": accuracy, "disagreements_with_training": disagree,
            "max_abs_top_score_diff_vs_ort": score_diff,
            "latency": {"tvm": _rounded(model_latency),
                        "tvm_in_service": _rounded(stats["model_latency_in_service"]),
                        "ort": ort, "handler": _percentiles(stats["end_to_end_ms"])},
            "threads": threads, "runtime_module": stats["runtime_module"],
            "python": stats["python"], "numpy_module": stats["numpy_module"],
            "ipc_module": stats["ipc_module"], "install_seconds": installed["install_seconds"],
            "compiler_library_mapped": stats["compiler_library_mapped"],
            "log": ran["log"],
        }
        report[kind] = entry
        rep.detail(f"{MODEL_NAMES[kind]}: accuracy {accuracy:.4f} on the device, "
                   f"{info['accuracy']:.4f} in training ({len(y_test)} test images, "
                   f"{disagree} predictions differ); top score vs ORT max |diff| {score_diff:.1e}")
        rep.detail(f"  Python {stats['python']} (the component's venv, made by the install "
                   f"step in {installed['install_seconds']:.1f}s: numpy and the IPC client "
                   f"from requirements-device.txt)")
        rep.detail(f"  runtime from the bundle ({Path(stats['runtime_module']).parent}); "
                   f"TVM compiler library mapped: {stats['compiler_library_mapped']}")
        if disagree or accuracy != info["accuracy"]:
            raise LocalModeError(
                f"{kind}: device accuracy {accuracy:.6f} differs from training's "
                f"{info['accuracy']:.6f} ({disagree} of {len(y_test)} predictions differ)")
        if score_diff > 1e-4:
            raise LocalModeError(f"{kind}: top-class scores differ from ONNX Runtime's by "
                                 f"{score_diff:.2e} (> 1e-4)")
        if updates:
            rep.detail(f"new versions delivered to the {MODEL_NAMES[kind]} device (configuration "
                       f"updates: modelPath, "
                       + ", ".join(f"{k} {v}" for k, v in ROLLOUT_CONFIGURATION.items()) + "):")
            entry["rollout"] = check_rollout(stats["rollout"] or [], rollout, rep)
    rep.line("")
    rep.detail(f"{'model':<16}{'accuracy':>9}  {'TVM p50/p90 ms':>16}  {'ORT p50/p90 ms':>16}  "
               f"{'TVM served p50/p90':>19}  {'handler p50/p90 ms':>19}   "
               f"({threads} thread{'s' if threads != 1 else ''})")
    for kind, e in report.items():
        lat = e["latency"]
        rep.detail(f"{MODEL_NAMES[kind]:<16}{e['device_accuracy']:>9.4f}  "
                   f"{lat['tvm']['p50_ms']:>7.3f} /{lat['tvm']['p90_ms']:>7.3f}  "
                   f"{lat['ort']['p50_ms']:>7.3f} /{lat['ort']['p90_ms']:>7.3f}  "
                   f"{lat['tvm_in_service']['p50_ms']:>8.3f} /"
                   f"{lat['tvm_in_service']['p90_ms']:>8.3f}  "
                   f"{lat['handler']['p50_ms']:>8.3f} /{lat['handler']['p90_ms']:>8.3f}")
    rep.detail("(TVM: the model call on the device and ORT: ONNX Runtime, each called back to "
               "back on the test set's tensors; TVM served: the model call per request while "
               "serving, caches and thread pool cold between messages; handler: request in to "
               "result published, decoding and preprocessing included)")
    return report


# ---------------------------------------------------------------------------------------
# 4b. New versions of the serving model, health-gated on the device

#: The versions rolled out to the simulated device once the first one has served its test
#: set: ``(version, how it was made, the shadow decision it must get)``. Both are the trained
#: MLP with its weights changed, compiled and signed as the first one was.
ROLLOUT_VERSIONS = (
    ("1.1.0", "weights perturbed by noise of twice their spread", "reject"),
    ("1.2.0", "weights rounded to half precision", "promote"),
)
#: The rollout settings each version arrives with (a configuration update:
#: ``neo_edge_runtime.rollout.RolloutConfig``'s keys): half of the requests in shadow, a
#: decision after 30 paired requests, a health watch of 30 requests after a promotion, so
#: that the whole rollout takes a few seconds. ``latencySlackMs`` is wider than its default
#: (1 ms): this machine runs other work beside the demo, and a scheduling hiccup must not
#: be what decides.
ROLLOUT_CONFIGURATION = {"shadowShare": 0.5, "shadowRequests": 30, "shadowMinRequests": 30,
                         "healthRequests": 30, "healthMinRequests": 10, "latencySlackMs": 5}
#: Requests the device may take for one version before its rollout counts as stuck.
ROLLOUT_MAX_REQUESTS = 400
#: The decisions that end a version's rollout on the device.
ROLLOUT_FINAL = ("reject", "healthy", "rollback")


def changed_mlp(source: Path, dest: Path, how: str) -> Path:
    """The trained MLP's ONNX graph with its weights changed (``how``, from
    :data:`ROLLOUT_VERSIONS`): noise of twice each weight matrix's spread (a version that
    loads, runs and gives finite scores, mostly for the wrong digit: what a bad export or
    a training run gone wrong ships), or every initializer rounded to half precision and
    back (a new version that answers as the current one does)."""
    import numpy as np
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(source))
    rng = np.random.default_rng(19)
    for tensor in model.graph.initializer:
        array = numpy_helper.to_array(tensor).astype(np.float32)
        if how.startswith("weights perturbed") and array.ndim == 2:
            array = array + rng.normal(scale=2.0 * float(array.std()), size=array.shape)
        elif how.startswith("weights rounded"):
            array = array.astype(np.float16)
        tensor.CopyFrom(numpy_helper.from_array(array.astype(np.float32), tensor.name))
    dest.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(dest))
    return dest


def rollout_versions(workdir: Path, trained: dict, rep: Reporter) -> list[dict]:
    """The new versions of :data:`ROLLOUT_VERSIONS`, compiled for this host and signed."""
    from neo_edge_runtime.compile.compiler import compile_model
    from neo_edge_runtime.compile.signing import FileSigner

    info = trained["info"]
    source = trained["model_dir"] / info["models"]["mlp"]["file"]
    signer = FileSigner(signing_key(workdir)[0])
    log = workdir / "logs" / "compile-rollout.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    out = []
    t0 = time.perf_counter()
    with stderr_to(log):
        for version, how, expected in ROLLOUT_VERSIONS:
            onnx_path = changed_mlp(source, workdir / "rollout" / f"mlp-{version}.onnx", how)
            metadata = {k: v for k, v in _model_metadata(info, "mlp").items()
                        if k != "test_accuracy"}
            metadata["changed_from"] = f"1.0.0: {how}"
            try:
                folder = compile_model(
                    onnx_path, "host", workdir / "compiled" / f"{MODEL_NAMES['mlp']}-{version}-host",
                    framework=info["models"]["mlp"]["framework"], name=MODEL_NAMES["mlp"],
                    version=version, metadata=metadata, signer=signer)
            except Exception as exc:
                raise LocalModeError(f"compiling version {version} of the MLP failed: {exc}\n"
                                     f"{_tail(log)}") from exc
            out.append({"version": version, "how": how, "expected": expected,
                        "path": str(folder)})
    rep.detail(f"new versions of {MODEL_NAMES['mlp']} compiled for host in "
               f"{time.perf_counter() - t0:.1f}s: "
               + "; ".join(f"{v['version']}, {v['how']}" for v in out))
    return out


def rollout_updates(installed: dict, versions: list[dict]) -> list[dict]:
    """Each new version as the device gets it: its folder in the component's work folder
    (where a deployment's artifacts land, and where a configured ``modelPath`` may point),
    and a configuration update naming it, with :data:`ROLLOUT_CONFIGURATION`."""
    updates = []
    for v in versions:
        dest = installed["paths"]["work"] / "updates" / f"{MODEL_NAMES['mlp']}-{v['version']}"
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(v["path"], dest)
        updates.append({"version": v["version"], "max_requests": ROLLOUT_MAX_REQUESTS,
                        "configuration": {**ROLLOUT_CONFIGURATION, "modelPath": str(dest)}})
    return updates


def check_rollout(outcomes: list[dict], versions: list[dict], rep: Reporter) -> list[dict]:
    """Print each version's shadow decision; fail unless each got the expected one, the
    rejected one answered no caller and the promoted one serves."""
    if len(outcomes) != len(versions):
        raise LocalModeError(f"the device reports {len(outcomes)} rollouts of the "
                             f"{len(versions)} versions delivered")
    report = []
    for v, outcome in zip(versions, outcomes):
        decisions = [m for m in outcome["decisions"] if m.get("model_version") == v["version"]]
        shadow = next((m for m in decisions if m.get("event") == "shadow"), None)
        health = next((m for m in decisions if m.get("event") == "health"), None)
        if shadow is None:
            raise LocalModeError(f"version {v['version']} got no shadow decision in "
                                 f"{outcome['requests']} requests: {outcome}")
        f = shadow["figures"]

        def pair(a: Any, b: Any, fmt: str) -> str:
            return "/".join("n/a" if x is None else format(x, fmt) for x in (a, b))

        answered = outcome["answered_by"].get(v["version"], 0)
        rep.detail(
            f"{shadow['model_version']} ({v['how']}) in shadow beside "
            f"{shadow['baseline_version']}: {f['requests']} paired requests, top-1 agreement "
            f"{f['agreement']:.3f}, error rate {pair(f['error_rate_candidate'], f['error_rate_current'], '.3f')}, "
            f"latency p90 {pair(f['latency_p90_candidate_ms'], f['latency_p90_current_ms'], '.3f')} ms "
            f"(new/serving) -> {shadow['decision']}"
            + (f" ({'; '.join(shadow['reasons'])})" if shadow["reasons"] else ""))
        rep.detail(f"  callers answered by {v['version']}: {answered} of {outcome['requests']}"
                   + (f"; health watch: {health['decision']} after "
                      f"{health['figures']['requests']} requests" if health else "")
                   + f"; serving now: {outcome['serving']} ({outcome['seconds']:.1f}s)")
        entry = {"version": v["version"], "how": v["how"], "decision": shadow["decision"],
                 "reasons": shadow["reasons"], "figures": f,
                 "health": health["decision"] if health else None,
                 "requests": outcome["requests"], "answered": answered,
                 "answered_by": outcome["answered_by"], "serving": outcome["serving"],
                 "staged": outcome["staged"], "store_versions": outcome["store_versions"],
                 "seconds": outcome["seconds"]}
        report.append(entry)
        if shadow["decision"] != v["expected"]:
            raise LocalModeError(f"version {v['version']} ({v['how']}) was to be "
                                 f"{v['expected']}d in shadow; the device decided "
                                 f"{shadow['decision']}: {shadow['reasons']}")
        if outcome["staged"] != v["version"]:
            raise LocalModeError(f"version {v['version']} was not staged beside the serving "
                                 f"one (candidate: {outcome['staged']})")
        if v["expected"] == "reject" and (
                answered or outcome["serving"] == v["version"]
                or any(n.startswith(f"{v['version']}-") for n in outcome["store_versions"])):
            raise LocalModeError(f"rejected version {v['version']} answered {answered} callers "
                                 f"or is still in the store: {entry}")
        if v["expected"] == "promote" and (
                health is None or health["decision"] != "healthy" or not answered
                or outcome["serving"] != v["version"]):
            raise LocalModeError(f"promoted version {v['version']} does not serve healthy: "
                                 f"{entry}")
    return report


# ---------------------------------------------------------------------------------------
# 5. Synth


def synth(outdir: Path, rep: Reporter) -> dict:
    """``app.build_app(outdir=...).synth()`` in a fresh process (as ``cdk synth`` runs app.py)."""
    code = ("import sys; sys.path.insert(0, sys.argv[2]); import app; "
            "app.build_app(outdir=sys.argv[1]).synth()")
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    proc = subprocess.run([sys.executable, "-c", code, str(outdir), str(REPO)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise LocalModeError(f"cdk synth failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    templates = sorted(str(p) for p in outdir.glob("*.template.json"))
    if not templates:
        raise LocalModeError(f"cdk synth wrote no template to {outdir}")
    for t in templates:
        resources = json.loads(Path(t).read_text()).get("Resources", {})
        rep.detail(f"{Path(t).name}: {len(resources)} resources")
    return {"outdir": str(outdir), "templates": templates}


# ---------------------------------------------------------------------------------------
# Main


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="neo-edge local mode: train, compile, package, run on a simulated "
                    "Greengrass device and synthesize the stack, with no AWS account.")
    p.add_argument("--quick", action="store_true",
                   help="a reduced run: 600 images, fewer training iterations and trees")
    p.add_argument("--workdir", type=Path, default=REPO / "build" / "local",
                   help="scratch folder for data, models, artifacts, the component and the "
                        "device (default: build/local)")
    p.add_argument("--cdk-out", type=Path, default=REPO / "cdk.out",
                   help="where the synthesized stack goes (default: cdk.out)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads for the TVM runtime and ONNX Runtime alike (the component's "
                        "threadCount; default: 1)")
    p.add_argument("--runtime-bundle", action="append", default=[], metavar="ARCH=PATH",
                   help="a device bundle (.zip or folder) to ship for ARCH (aarch64, "
                        "x86_64). Default: for this host's architecture, one assembled from "
                        "the sources and the installed TVM runtime; for others, "
                        "build/bundle/neo-edge-runtime-<arch>.zip (make bundle) when it "
                        "exists, else the Python part only")
    args = p.parse_args(argv)
    if args.threads < 1:
        p.error(f"--threads must be at least 1; got {args.threads}")
    args.bundles = {}
    for item in args.runtime_bundle:
        arch, _, path = item.partition("=")
        if arch not in GG_ARCH or not path or not Path(path).exists():
            p.error(f"--runtime-bundle must be ARCH=PATH with ARCH one of "
                    f"{', '.join(GG_ARCH)} and an existing path; got {item!r}")
        args.bundles[arch] = Path(path).resolve()
    return args


def run(args: argparse.Namespace) -> dict:
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    rep = Reporter(5)
    summary: dict = {"ok": False, "quick": args.quick, "threads": args.threads,
                     "workdir": str(workdir)}
    summary_path = workdir / "summary.json"
    summary_path.unlink(missing_ok=True)
    started = time.perf_counter()
    rep.line(f"neo-edge local mode{' (quick)' if args.quick else ''}: workdir {workdir}")
    try:
        with rep.step("train", "Train: training/train.py under SageMaker's script-mode contract"):
            trained = train(workdir, args.quick, rep)
            summary["training"] = {
                "hyperparameters": trained["hyperparameters"],
                "accuracy": {k: v["accuracy"] for k, v in trained["info"]["models"].items()},
                "model_dir": str(trained["model_dir"])}
        targets = ["host", device_target()]
        with rep.step("compile", f"Compile for {' and '.join(targets)} (local TVM compiler, "
                                 "Neo's target names)"):
            compiled = compile_models(workdir, trained, targets, rep)
            summary["artifacts"] = compiled
        with rep.step("package", "Package: Greengrass components from the construct's recipe "
                                 "builder"):
            components = package(workdir, compiled, targets, args.threads, args.bundles, rep)
            summary["components"] = components
        with rep.step("device", "Device: the recipe's install and run lifecycle on a simulated "
                                f"core ({device_platform()['architecture']})"):
            versions = rollout_versions(workdir, trained, rep)
            summary["device"] = simulate_device(workdir, trained, components, args.threads, rep,
                                                rollout=versions)
            summary["retraining"] = retrain_on_captures(workdir, trained, rep)
        with rep.step("synth", f"Synth: app.py to {args.cdk_out}"):
            summary["synth"] = synth(args.cdk_out.resolve(), rep)
        summary["ok"] = True
    except LocalModeError as exc:
        summary["error"] = str(exc)
        raise
    finally:
        summary["timings"] = rep.timings
        summary["seconds"] = round(time.perf_counter() - started, 2)
        summary_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    rep.line(f"\nlocal mode passed in {summary['seconds']:.0f}s; summary: {summary_path}")
    return summary


def main(argv: Optional[list[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--device-run"]:
        return _device_run(argv[1:])
    args = parse_args(argv)
    try:
        run(args)
    except LocalModeError as exc:
        print(f"\nlocal mode FAILED: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        print("\nlocal mode interrupted", file=sys.stderr)
        return 130
    except Exception:  # a bug here, not a failed check: show it whole
        traceback.print_exc()
        print("\nlocal mode FAILED with an unexpected error (above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
