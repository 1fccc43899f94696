#!/usr/bin/env python3
"""The reference app that `cdk synth` / `cdk deploy` run (see cdk.json).

One environment-agnostic stack, ``NeoEdgeStack``: a ``NeoEdgePipeline`` that trains the
built-in XGBoost on the digits data set, compiles it for a Raspberry Pi 4 (neo-edge's
compiler, in CodeBuild) and ml.c5 (SageMaker Neo, for the optional endpoint), ships it to a
sample fleet through Greengrass, watches the fleet and retrains on new data.

Context (``cdk synth -c key=value``):

``runtimeBundleAarch64``, ``runtimeBundleX8664``
    The device bundle per architecture. Default: ``build/bundle/neo-edge-runtime-<arch>.zip``
    (``make bundle``) when it exists, else a placeholder bundle generated from the sources
    (the runtime package and the inference handler, without the TVM runtime library),
    so that a fresh clone synthesizes.
``fleetName``
    Default: ``neo-edge-fleet`` (at most 17 characters: the fleet provisioning
    template is named ``<fleet>-FleetProvisioning``, 36 at most).
``endpoint``
    ``true`` also serves the ml_c5 model from a SageMaker endpoint (billed by the hour).
    Default: no endpoint.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Optional

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402
from aws_cdk import aws_events as events  # noqa: E402

from neo_edge import NeoEdgePipeline  # noqa: E402

ROOT = Path(__file__).resolve().parent
#: What ``make bundle`` builds.
BUNDLE_DIR = ROOT / "build" / "bundle"
#: Where the placeholder bundle is written.
PLACEHOLDER_DIR = ROOT / "build" / "placeholder-bundle"
ARCHES = ("aarch64", "x86_64")
#: Fixed zip timestamps: the same sources always give the same bytes (and asset hash).
_EPOCH = (1980, 1, 1, 0, 0, 0)


def placeholder_bundle(dest: Path) -> Path:
    """Write a device bundle zip of the runtime sources to ``dest``; return ``dest``.

    The zip holds ``neo_edge_runtime/`` (the files a real bundle takes from the package:
    all but the build side, ``neo_edge_runtime.compile``) and ``edge_inference.py`` (from
    ``lambda/edge_inference/``) at its root, sorted, with fixed timestamps and
    permissions, so the bytes depend on the sources only. It has no TVM runtime library:
    enough to synthesize and inspect, not to run a model on a device (``make bundle``
    builds the real ones).
    """
    from neo_edge_runtime.compile.bundle import package_files

    files = package_files()
    handler = ROOT / "lambda" / "edge_inference" / "edge_inference.py"
    files["edge_inference.py"] = handler.read_bytes()
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name in sorted(files):
            info = zipfile.ZipInfo(name, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, files[name])
    if dest.exists() and dest.read_bytes() == tmp.read_bytes():
        tmp.unlink()
    else:
        tmp.replace(dest)
    return dest


def runtime_bundles(app: cdk.App) -> dict:
    """The device bundle per architecture: context, else ``make bundle``'s, else a placeholder."""
    bundles = {}
    placeholder: Optional[Path] = None
    for arch in ARCHES:
        given = app.node.try_get_context(f"runtimeBundle{arch.replace('_', '').capitalize()}")
        built = BUNDLE_DIR / f"neo-edge-runtime-{arch}.zip"
        if given:
            bundles[arch] = str(given)
        elif built.is_file():
            bundles[arch] = str(built)
        else:
            if placeholder is None:
                placeholder = placeholder_bundle(PLACEHOLDER_DIR / "neo-edge-runtime.zip")
            bundles[arch] = str(placeholder)
    return bundles


def _flag(app: cdk.App, key: str) -> bool:
    value = app.node.try_get_context(key)
    return value is True or str(value).lower() == "true"


def build_app(outdir: str | None = None) -> cdk.App:
    """The app with ``NeoEdgeStack``; ``outdir`` defaults to ``cdk.out``."""
    app = cdk.App(outdir=outdir) if outdir else cdk.App()
    stack = cdk.Stack(app, "NeoEdgeStack", description="neo-edge: train once, run anywhere")
    NeoEdgePipeline(
        stack, "Digits",
        runtime_bundles=runtime_bundles(app),
        targets=["rasp4b", "ml_c5"],
        component_name="com.neoedge.Digits",
        model_name="digits",
        training_data_prefix="datasets/digits/train/",
        hyperparameters={"objective": "multi:softprob", "num_class": 10, "num_round": 50},
        fleet_name=app.node.try_get_context("fleetName") or "neo-edge-fleet",
        fleet_provisioning=True,
        endpoint_target="ml_c5" if _flag(app, "endpoint") else None,
        retrain_schedule=events.Schedule.rate(cdk.Duration.days(7)),
    )
    return app


if __name__ == "__main__":
    build_app().synth()
