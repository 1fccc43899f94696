#!/usr/bin/env python3
"""The reference app that `cdk synth` / `cdk deploy` run (see cdk.json)."""

import os

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")

import aws_cdk as cdk  # noqa: E402


def build_app(outdir: str | None = None) -> cdk.App:
    app = cdk.App(outdir=outdir) if outdir else cdk.App()
    cdk.Stack(app, "NeoEdgeStack", description="neo-edge: train once, run anywhere")
    return app


if __name__ == "__main__":
    build_app().synth()
