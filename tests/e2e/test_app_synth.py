"""The reference app synthesizes: in-process with cdk-nag and cfn-lint, and through the
pinned npm CDK CLI (``npx cdk synth``), with no AWS account; checkov finds nothing in it
that the library does not skip with a written reason."""

from __future__ import annotations

import importlib.util
import json
import os
import pathlib
import subprocess
import zipfile

import pytest

from checks import synth_checked

ROOT = pathlib.Path(__file__).resolve().parents[2]
CDK = ROOT / "node_modules" / ".bin" / "cdk"
#: checkov, in the venv of its own that ``make setup`` builds from requirements-checkov.lock.
CHECKOV = ROOT / ".venv-checkov" / "bin" / "checkov"


def load_app():
    spec = importlib.util.spec_from_file_location("neo_edge_reference_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return load_app()


@pytest.fixture(scope="module")
def synthesized(reference, tmp_path_factory):
    app = reference.build_app(outdir=str(tmp_path_factory.mktemp("cdk.out")))
    stack = app.node.find_child("NeoEdgeStack")
    return synth_checked(app, stack)


def test_build_app_passes_nag_and_cfn_lint(synthesized):
    body = synthesized.to_json()
    assert "Parameters" not in body or set(body["Parameters"]) == {"BootstrapVersion"}
    synthesized.resource_count_is("AWS::GreengrassV2::ComponentVersion", 1)
    # rasp4b by neo-edge's compiler in CodeBuild; ml_c5 (the optional endpoint's) by Neo
    synthesized.resource_count_is("Custom::NeoEdgeCompilationBuild", 1)
    synthesized.resource_count_is("Custom::SageMakerCompilationJob", 1)
    synthesized.resource_count_is("AWS::SageMaker::Endpoint", 0)


def test_stack_is_environment_agnostic(synthesized):
    text = json.dumps(synthesized.to_json())
    assert "123456789012" not in text
    assert '"Ref": "AWS::Region"' in text and '"Ref": "AWS::AccountId"' in text


def test_placeholder_bundle_is_deterministic(reference, tmp_path):
    first = reference.placeholder_bundle(tmp_path / "a.zip").read_bytes()
    second = reference.placeholder_bundle(tmp_path / "b.zip").read_bytes()
    assert first == second
    with zipfile.ZipFile(tmp_path / "a.zip") as archive:
        names = archive.namelist()
        assert names == sorted(names)
        assert "edge_inference.py" in names and "neo_edge_runtime/__init__.py" in names
        assert {i.date_time for i in archive.infolist()} == {(1980, 1, 1, 0, 0, 0)}
        assert not any("__pycache__" in n for n in names)


def test_bundles_fall_back_to_the_placeholder(reference, tmp_path, monkeypatch):
    monkeypatch.setattr(reference, "BUNDLE_DIR", tmp_path / "no-bundles")
    monkeypatch.setattr(reference, "PLACEHOLDER_DIR", tmp_path / "placeholder")
    import aws_cdk as cdk
    app = cdk.App(context={"runtimeBundleX8664": "given.zip"})
    bundles = reference.runtime_bundles(app)
    assert bundles == {"aarch64": str(tmp_path / "placeholder" / "neo-edge-runtime.zip"),
                       "x86_64": "given.zip"}
    assert (tmp_path / "placeholder" / "neo-edge-runtime.zip").is_file()


@pytest.mark.skipif(not CDK.exists(), reason="the pinned CDK CLI is not installed (make setup)")
def test_npx_cdk_synth(tmp_path):
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20",
           "CDK_DISABLE_VERSION_CHECK": "1"}
    # The CLI runs cdk.json's app with the same interpreter as this test.
    assert json.loads((ROOT / "cdk.json").read_text())["app"] == ".venv/bin/python app.py"
    out = tmp_path / "cdk.out"
    result = subprocess.run(["npx", "--no-install", "cdk", "synth", "--quiet", "--no-notices",
                             "-o", str(out)], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    template = json.loads((out / "NeoEdgeStack.template.json").read_text())
    kinds = {r["Type"] for r in template["Resources"].values()}
    assert {"AWS::GreengrassV2::Deployment", "AWS::StepFunctions::StateMachine"} <= kinds


@pytest.mark.skipif(not CHECKOV.exists(),
                    reason="checkov's own venv (.venv-checkov, from requirements-checkov.lock) "
                           "is not installed: `make setup` builds it, and `make test` runs this")
def test_checkov_fails_no_check_without_a_written_reason(synthesized, tmp_path):
    """checkov over the reference app's template: every check passes or is skipped in the
    resource's metadata with a reason (neo_edge/_checkov.py); the skips are printed."""
    template = tmp_path / "NeoEdgeStack.template.json"
    template.write_text(json.dumps(synthesized.to_json()))
    result = subprocess.run(
        [str(CHECKOV), "--file", str(template), "--framework", "cloudformation",
         "--output", "json", "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "LOG_LEVEL": "ERROR"})
    assert result.returncode in (0, 1), result.stderr[-4000:]
    reports = json.loads(result.stdout)
    (report,) = reports if isinstance(reports, list) else [reports]
    assert report["check_type"] == "cloudformation"
    summary = report["summary"]
    assert summary["parsing_errors"] == 0 and summary["resource_count"] > 50, summary
    failed = [f"{f['check_id']} {f['resource']}: {f['check_name']}"
              for f in report["results"]["failed_checks"]]
    skipped = report["results"]["skipped_checks"]
    print(f"\ncheckov {summary['checkov_version']}: {summary['passed']} passed, "
          f"{summary['failed']} failed, {summary['skipped']} skipped")
    for check in skipped:
        print(f"  skipped {check['check_id']} {check['resource']}: "
              f"{check['check_result'].get('suppress_comment')}")
    assert not failed, "checkov checks failed without a skip and its reason:\n" + "\n".join(failed)
    unexplained = [f"{c['check_id']} {c['resource']}" for c in skipped
                   if c["check_result"].get("suppress_comment", "No comment provided").strip()
                   in ("", "No comment provided")]
    assert not unexplained, "skipped without a reason: " + ", ".join(unexplained)
    assert summary["passed"] > 0 and skipped
