"""``make deploy-local``: the pinned CDK CLI bootstraps, deploys the reference app into
moto's server mode and destroys it again (scripts/deploy-local.sh)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (ROOT / "node_modules" / ".bin" / "cdk").exists(),
                       reason="the pinned CDK CLI is not installed (make setup)"),
]


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    out = tmp_path_factory.mktemp("deploy-local")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_"))}
    run = subprocess.run([str(ROOT / "scripts" / "deploy-local.sh"), str(out)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    yield run, json.loads((out / "report.json").read_text()), out
    shutil.rmtree(out, ignore_errors=True)


def test_the_stack_is_created_and_destroyed_through_the_cli(deployed):
    run, report, out = deployed
    assert report["stacks"] == {"NeoEdgeStack": "CREATE_COMPLETE"}
    assert "deployed and destroyed" in run.stdout
    assert "destroyed" in (out / "destroy.log").read_text()


def test_every_asset_is_published(deployed):
    _, report, out = deployed
    manifest = json.loads((out / "cdk.out" / "NeoEdgeStack.assets.json").read_text())
    assert report["assets"]["expected"] == len(manifest["files"]) > 0
    assert report["assets"]["uploaded"] == report["assets"]["expected"]


def test_what_moto_does_not_create_is_named(deployed):
    """Each declared resource is either created by moto or stood in for by a placeholder
    the report names; the core of the app (bucket, keys, roles, functions) is real."""
    _, report, _ = deployed
    resources = report["resources"]
    for kind in ("AWS::S3::Bucket", "AWS::KMS::Key", "AWS::IAM::Role", "AWS::Lambda::Function",
                 "AWS::StepFunctions::StateMachine"):
        assert resources[kind]["created"] == resources[kind]["declared"] > 0, kind
    for kind in ("Custom::SageMakerTrainingJob", "AWS::GreengrassV2::ComponentVersion"):
        assert resources[kind]["placeholders"] == resources[kind]["declared"], kind
        assert kind in report["not_created_by_moto"]
