"""EdgeCompilationJob and EdgeCompilationSet: neo-edge's compiler in AWS CodeBuild, per target.

What the build runs is checked against the compile module's own argument parser
(``neo_edge_runtime.compile.cloud.build_parser``); the wheel the build installs is checked
by pip itself (``pip install --dry-run --report``), not by a full install.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import io
import json
import pathlib
import shlex
import subprocess
import sys
import zipfile
from types import SimpleNamespace

import aws_cdk as cdk
import pytest

from checks import synth_checked
from neo_edge import (AlgorithmImage, ArtifactSigningKey, CompiledModel, EdgeCompilationJob,
                      EdgeCompilationSet, EdgeDeployment, EdgeFleet, EdgeInferenceComponent,
                      ModelArtifactBucket, NeoCompilationJob, TargetPlatform, TrainingJob)
from neo_edge.edge_compilation import (SIGNING_KMS_KEY_VARIABLE, SIGNING_PUBLIC_KEY_VARIABLE,
                                       installed_wheel)
from neo_edge_runtime.compile import cloud
from neo_edge_runtime.compile.cloud import build_parser

TARGETS = ["rasp4b", "ml_g4dn", "ml_c5"]


def make_bundle(folder: pathlib.Path) -> str:
    (folder / "neo_edge_runtime").mkdir(parents=True, exist_ok=True)
    (folder / "neo_edge_runtime" / "__init__.py").write_text("")
    (folder / "edge_inference.py").write_text(f"# {folder.name}\n")
    return str(folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("edge")
    outdir = root / "cdk.out"
    app = cdk.App(outdir=str(outdir))
    stack = cdk.Stack(app, "EdgeCompile")
    models = ModelArtifactBucket(stack, "Models")
    train = TrainingJob(stack, "Train", bucket=models, algorithm_image=AlgorithmImage.xgboost(),
                        input_channels={"train": "data/train/"})
    xgb = EdgeCompilationSet(stack, "Xgb", bucket=models, model=train, framework="xgboost",
                             targets=TARGETS)
    onnx = EdgeCompilationJob(stack, "Onnx", bucket=models, model="models/resnet.tar.gz",
                              framework="onnx", data_input_config={"input": [1, 3, 224, 224]},
                              target="rasp4b", tuning_db="tuning/rasp4b/", model_name="resnet",
                              model_version="2.0.0")
    fleet = EdgeFleet(stack, "Fleet", fleet_name="edge-fleet")
    component = EdgeInferenceComponent(
        stack, "Classifier", component_name="com.example.Xgb", models=list(xgb.jobs.values()),
        runtime_bundles={a: make_bundle(root / a) for a in ("aarch64", "x86_64", "x86_64-cuda")})
    EdgeDeployment(stack, "Deployment", fleet=fleet, components=[component])
    template = synth_checked(app, stack)
    return SimpleNamespace(template=template, body=template.to_json(), stack=stack, xgb=xgb,
                           onnx=onnx, models=models, train=train, component=component,
                           fleet=fleet, outdir=outdir)


def logical(stack, construct) -> str:
    return stack.resolve(construct.node.default_child.logical_id)


def flatten(value) -> str:
    """A CloudFormation string with every token as ``T``."""
    if isinstance(value, str):
        return value
    return "".join(p if isinstance(p, str) else "T" for p in value["Fn::Join"][1])


def project_of(built, job) -> dict:
    return built.body["Resources"][logical(built.stack, job.project)]["Properties"]


def buildspec(built, job) -> dict:
    return json.loads(flatten(project_of(built, job)["Source"]["BuildSpec"]))


def statements_of(built, role) -> list:
    role_id = logical(built.stack, role)
    return [s for r in built.template.find_resources("AWS::IAM::Policy").values()
            if {"Ref": role_id} in r["Properties"]["Roles"]
            for s in r["Properties"]["PolicyDocument"]["Statement"]]


# ---------------------------------------------------------------------------------------
# The CodeBuild project


def test_one_project_and_one_build_per_target(built):
    assert list(built.xgb.jobs) == TARGETS
    assert built.xgb["rasp4b"] is built.xgb.jobs["rasp4b"]
    built.template.resource_count_is("AWS::CodeBuild::Project", 4)
    built.template.resource_count_is("Custom::NeoEdgeCompilationBuild", 4)
    # No SageMaker Neo anywhere.
    built.template.resource_count_is("Custom::SageMakerCompilationJob", 0)


def test_project_runs_on_codebuilds_standard_linux_image_without_docker(built):
    properties = project_of(built, built.xgb["rasp4b"])
    assert properties["Environment"] == {
        "ComputeType": "BUILD_GENERAL1_LARGE", "Image": "aws/codebuild/standard:7.0",
        "ImagePullCredentialsType": "CODEBUILD", "PrivilegedMode": False,
        "Type": "LINUX_CONTAINER"}
    assert properties["Artifacts"] == {"Type": "NO_ARTIFACTS"}
    assert properties["TimeoutInMinutes"] == 30
    assert properties["LogsConfig"]["CloudWatchLogs"]["Status"] == "ENABLED"


def test_every_project_builds_from_the_one_wheel_asset(built):
    sources = {json.dumps(project_of(built, j)["Source"]["Location"])
               for j in [*built.xgb.jobs.values(), built.onnx]}
    assert len(sources) == 1
    (source,) = sources
    assert json.loads(source)["Fn::Join"][1][-1].endswith(".zip")
    assert project_of(built, built.onnx)["Source"]["Type"] == "S3"


def test_buildspec_installs_the_wheel_with_its_pinned_compiler_extra(built):
    spec = buildspec(built, built.xgb["ml_c5"])
    install = spec["phases"]["install"]
    assert install["runtime-versions"] == {"python": "3.11"}
    name, _, _ = installed_wheel()
    assert install["commands"] == [
        "python -m pip install --quiet --disable-pip-version-check --only-binary=:all: "
        "-r requirements-compiler.txt",
        f"python -m pip install --quiet --disable-pip-version-check --no-deps ./{name}"]


def test_arm_targets_install_their_cross_compiler(built):
    first = buildspec(built, built.xgb["rasp4b"])["phases"]["install"]["commands"][0]
    assert first.endswith("apt-get install -y -qq --no-install-recommends gcc-aarch64-linux-gnu")


def build_arguments(built, job) -> list:
    (command,) = buildspec(built, job)["phases"]["build"]["commands"]
    words = shlex.split(command)
    assert words[:3] == ["python", "-m", "neo_edge_runtime.compile.cloud"]
    return words[3:]


def test_build_runs_the_compile_module_with_the_jobs_arguments(built):
    arguments = build_arguments(built, built.xgb["ml_g4dn"])
    assert arguments == ["--model", "$MODEL_URI", "--output", "$OUTPUT_URI",
                         "--target", "ml_g4dn", "--framework", "xgboost"]
    # The module's own parser takes them.
    parsed = build_parser().parse_args(arguments)
    assert (parsed.target, parsed.framework, parsed.input_shape) == ("ml_g4dn", "xgboost", [])


def test_build_passes_shapes_tuning_records_and_names(built):
    arguments = build_arguments(built, built.onnx)
    parsed = build_parser().parse_args(arguments)
    assert parsed.target == "rasp4b" and parsed.framework == "onnx"
    assert parsed.input_shape == ["input=1,3,224,224"]
    assert parsed.tuning_db == "s3://T/tuning/rasp4b/"
    assert (parsed.name, parsed.version) == ("resnet", "2.0.0")


def test_build_refuses_to_run_without_its_model_and_output(built):
    (check,) = buildspec(built, built.onnx)["phases"]["pre_build"]["commands"]
    for env in ({}, {"MODEL_URI": "s3://b/m.tar.gz"}, {"OUTPUT_URI": "s3://b/out/"}):
        assert subprocess.run(["bash", "-c", check], env=env, capture_output=True).returncode == 1
    both = {"MODEL_URI": "s3://b/m.tar.gz", "OUTPUT_URI": "s3://b/out/"}
    assert subprocess.run(["bash", "-c", check], env=both).returncode == 0


# ---------------------------------------------------------------------------------------
# The deploy-time build


def build_resource(built, job) -> dict:
    return built.body["Resources"][logical(built.stack, job.resource)]


def test_deploy_time_build_gets_the_trained_model_and_its_own_output_prefix(built):
    job = built.xgb["rasp4b"]
    resource = build_resource(built, job)
    properties = resource["Properties"]
    assert properties["Kind"] == "build"
    assert properties["ProjectName"] == {"Ref": logical(built.stack, job.project)}
    digest = job.compiled_model_key.split("/")[-2]
    assert job.compiled_model_key == f"compiled/Xgb/rasp4b/{digest}/model.tar.gz"
    assert len(digest) == 16 and int(digest, 16) >= 0
    assert flatten(properties["OutputUri"]) == f"s3://T/compiled/Xgb/rasp4b/{digest}/"
    parts = properties["Request"]["Fn::Join"][1]
    assert {"Fn::GetAtt": [logical(built.stack, built.train.resource), "ModelArtifacts"]} in parts
    request = json.loads(flatten(properties["Request"]))
    assert request == {"environmentVariablesOverride": [
        {"name": "MODEL_URI", "value": "T", "type": "PLAINTEXT"},
        {"name": "OUTPUT_URI", "value": f"s3://T/compiled/Xgb/rasp4b/{digest}/",
         "type": "PLAINTEXT"}]}
    # The build starts once the role's policy exists.
    assert resource["DependsOn"] == [logical(built.stack, built.xgb.role.node.find_child(
        "DefaultPolicy"))]
    assert built.stack.resolve(job.compiled_model_uri) == {
        "Fn::GetAtt": [logical(built.stack, job.resource), "ModelArtifacts"]}


def _job(stack_id: str, **props) -> EdgeCompilationJob:
    stack = cdk.Stack(cdk.App(), stack_id)
    models = ModelArtifactBucket(stack, "Models")
    defaults = dict(bucket=models, model="models/model.tar.gz", target="rasp4b")
    return EdgeCompilationJob(stack, "Job", **{**defaults, **props})


def test_output_key_is_the_same_for_the_same_inputs_and_new_for_any_change():
    key = _job("A").compiled_model_key
    assert _job("B").compiled_model_key == key
    for change in ({"run_id": "2"}, {"model": "models/other.tar.gz"}, {"target": "imx8qm"},
                   {"framework": "xgboost"}, {"model_version": "1.0.1"}):
        assert _job("C", **change).compiled_model_key != key, change


def test_provider_may_start_follow_and_stop_only_these_projects(built):
    provider = built.stack.node.find_child("NeoEdgeSageMakerJobProvider")
    projects = {logical(built.stack, j.project) for j in [*built.xgb.jobs.values(), built.onnx]}
    starts = [s for s in statements_of(built, provider.on_event.role)
              if "codebuild:StartBuild" in s["Action"]]
    assert {s["Resource"]["Fn::GetAtt"][0] for s in starts} == projects
    assert all(s["Action"] == ["codebuild:StartBuild", "codebuild:BatchGetBuilds",
                               "codebuild:StopBuild"] for s in starts)
    polls = [s for s in statements_of(built, provider.is_complete.role)
             if str(s["Action"]).startswith("codebuild:")]
    assert {s["Action"] for s in polls} == {"codebuild:BatchGetBuilds"}
    assert {s["Resource"]["Fn::GetAtt"][0] for s in polls} == projects


# ---------------------------------------------------------------------------------------
# Least privilege


def resource_text(built, resource) -> str:
    return json.dumps(built.stack.resolve(resource), sort_keys=True)


def test_role_reads_the_model_writes_the_output_prefix_and_nothing_else(built):
    statements = statements_of(built, built.onnx.role)
    actions = sorted(a for s in statements for a in
                     (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))
    assert actions == sorted([
        "s3:GetObject", "s3:ListBucket", "kms:Decrypt",             # the model
        "s3:GetObject", "s3:ListBucket",                            # the tuning records
        "s3:PutObject", "s3:AbortMultipartUpload",                  # the output prefix
        "kms:GenerateDataKey", "kms:Encrypt", "kms:Decrypt",        # the bucket's key
        "s3:GetObject", "s3:GetObjectVersion",                      # the wheel
        "s3:GetBucketAcl", "s3:GetBucketLocation",                  # its bucket
        "logs:CreateLogStream", "logs:PutLogEvents"])               # its log group
    assert not any("*" in a for a in actions)
    assert all(s["Resource"] != "*" for s in statements)
    by_action = {json.dumps(s["Action"]): s for s in statements}
    put = by_action[json.dumps(["s3:PutObject", "s3:AbortMultipartUpload"])]
    assert flatten(put["Resource"]) == "T/compiled/Onnx/*"
    reads = [flatten(s["Resource"]) for s in statements if s["Action"] == "s3:GetObject"]
    assert sorted(reads) == ["T/models/resnet.tar.gz*", "T/tuning/rasp4b/*"]
    wheel = by_action[json.dumps(["s3:GetObject", "s3:GetObjectVersion"])]
    assert flatten(wheel["Resource"]).endswith(".zip") and "*" not in flatten(wheel["Resource"])
    logs = by_action[json.dumps(["logs:CreateLogStream", "logs:PutLogEvents"])]
    assert logs["Resource"] == {"Fn::GetAtt": [logical(built.stack, built.onnx.log_group), "Arn"]}


def test_role_uses_no_kms_key_when_the_bucket_has_none(tmp_path):
    from aws_cdk import aws_s3 as s3
    app = cdk.App(outdir=str(tmp_path))
    stack = cdk.Stack(app, "NoKey")
    bucket = s3.Bucket.from_bucket_name(stack, "Plain", "plain-models")
    job = EdgeCompilationJob(stack, "Job", bucket=bucket, model="models/model.tar.gz",
                             target="ml_c5")
    statements = [s for s in stack.resolve(job.role.node.find_child("DefaultPolicy")
                                           .document.to_json())["Statement"]]
    assert not [s for s in statements if "kms" in json.dumps(s["Action"])]


def test_role_is_assumed_by_codebuild_only(built):
    role = built.body["Resources"][logical(built.stack, built.xgb.role)]["Properties"]
    assert role["AssumeRolePolicyDocument"]["Statement"] == [{
        "Action": "sts:AssumeRole", "Effect": "Allow",
        "Principal": {"Service": "codebuild.amazonaws.com"}}]
    assert "ManagedPolicyArns" not in role


# ---------------------------------------------------------------------------------------
# The component takes the outputs


def test_component_ships_the_builds_artifacts_and_devices_read_exactly_them(built):
    recipe = json.loads(flatten(next(iter(built.template.find_resources(
        "AWS::GreengrassV2::ComponentVersion").values()))["Properties"]["InlineRecipe"]))
    assert sorted(m["Name"] for m in recipe["Manifests"]) == sorted(TARGETS)
    assert all(m["Artifacts"][1]["Uri"] == "T" and m["Artifacts"][1]["Unarchive"] == "NONE"
               for m in recipe["Manifests"])
    assert [m.key for m in built.component.models] == [
        j.compiled_model_key for j in built.xgb.jobs.values()]
    role_id = logical(built.stack, built.fleet.token_exchange_role)
    gets = [s for r in built.template.find_resources("AWS::IAM::Policy").values()
            if {"Ref": role_id} in r["Properties"]["Roles"]
            for s in r["Properties"]["PolicyDocument"]["Statement"]
            if s["Action"] == "s3:GetObject"]
    keys = {flatten(r) for s in gets for r in
            (s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]])}
    for job in built.xgb.jobs.values():
        assert f"T/{job.compiled_model_key}" in keys


def test_sagemaker_neo_output_is_refused_by_the_component(tmp_path):
    stack = cdk.Stack(cdk.App(), "Refused")
    models = ModelArtifactBucket(stack, "Models")
    neo = NeoCompilationJob(stack, "Neo", bucket=models, model="models/model.tar.gz",
                            framework="XGBOOST", target="rasp4b")
    message = (r"^models must be neo-edge artifacts, and Refused/Neo \(target rasp4b\) is a "
               r"SageMaker Neo compilation job: Neo writes DLR's format \(compiled.so, "
               r"compiled_model.json, compiled.params; no manifest.json\), which the edge "
               r"runtime does not load .* Compile for the device with EdgeCompilationJob \(or "
               r"EdgeCompilationSet\) instead")
    with pytest.raises(ValueError, match=message):
        EdgeInferenceComponent(stack, "C", component_name="com.example.C", models=[neo],
                               runtime_bundles={"aarch64": make_bundle(tmp_path / "a")})
    with pytest.raises(ValueError, match=message):
        CompiledModel.from_compilation_job(neo)
    # Any job that says it is in DLR's format.
    dlr = SimpleNamespace(compiled_model_uri="s3://b/m.tar.gz", target="rasp4b",
                          artifact_format="dlr")
    with pytest.raises(ValueError, match=r"is a SageMaker Neo compilation job"):
        CompiledModel.from_compilation_job(dlr)


# ---------------------------------------------------------------------------------------
# The wheel


def _wheel_files(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return {n: archive.read(n) for n in archive.namelist()}


def test_asset_holds_the_wheel_and_the_compiler_requirements(built):
    name, data, requirements = installed_wheel()
    manifest = json.loads(next(built.outdir.glob("EdgeCompile.assets.json")).read_text())
    folders = [built.outdir / a["source"]["path"] for a in manifest["files"].values()
               if (built.outdir / a["source"]["path"] / name).is_file()]
    (folder,) = folders
    assert sorted(p.name for p in folder.iterdir()) == sorted([name, "requirements-compiler.txt"])
    assert (folder / name).read_bytes() == data
    lines = (folder / "requirements-compiler.txt").read_text().splitlines()
    assert lines == list(requirements)


def test_wheel_metadata_carries_the_compiler_extra_pinned():
    name, data, requirements = installed_wheel()
    files = _wheel_files(data)
    version = name.split("-")[1]
    assert name == f"neo_edge-{version}-py3-none-any.whl"
    info = f"neo_edge-{version}.dist-info"
    meta = email.parser.Parser().parsestr(files[f"{info}/METADATA"].decode())
    assert (meta["Name"], meta["Version"]) == ("neo-edge", version)
    compiler = [r.split(";")[0].strip() for r in meta.get_all("Requires-Dist")
                if 'extra == "compiler"' in r]
    assert {"apache-tvm", "apache-tvm-ffi", "numpy", "onnx"} <= {
        r.split("==")[0] for r in compiler}
    assert list(requirements[:len(compiler)]) == compiler
    assert all("==" in r for r in requirements), requirements
    assert any(r.startswith("boto3==") for r in requirements)
    assert b"Tag: py3-none-any" in files[f"{info}/WHEEL"]


def test_wheel_holds_both_packages_and_a_correct_record():
    _, data, _ = installed_wheel()
    files = _wheel_files(data)
    for module in ("neo_edge/__init__.py", "neo_edge/edge_compilation.py",
                   "neo_edge_runtime/__init__.py", "neo_edge_runtime/compile/cloud.py",
                   "neo_edge/_functions/sagemaker_job/sagemaker_job.py"):
        assert module in files, module
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in files)
    (record_name,) = [n for n in files if n.endswith(".dist-info/RECORD")]
    rows = [line.split(",") for line in files[record_name].decode().splitlines()]
    assert {r[0] for r in rows} == set(files)
    for path, digest, size in rows:
        if path == record_name:
            assert (digest, size) == ("", "")
            continue
        expected = base64.urlsafe_b64encode(hashlib.sha256(files[path]).digest()).rstrip(b"=")
        assert digest == f"sha256={expected.decode()}" and int(size) == len(files[path]), path


def test_wheel_is_the_same_bytes_when_made_again():
    first = installed_wheel()
    installed_wheel.cache_clear()
    assert installed_wheel() == first


def test_pip_accepts_the_wheel(tmp_path):
    name, data, _ = installed_wheel()
    wheel = tmp_path / name
    wheel.write_bytes(data)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--no-index",
         "--ignore-installed", "--disable-pip-version-check", "--quiet", "--report", "-",
         str(wheel)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    (item,) = json.loads(result.stdout)["install"]
    assert item["metadata"]["name"] == "neo-edge"
    assert item["metadata"]["version"] == name.split("-")[1]


# ---------------------------------------------------------------------------------------
# Signed builds


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    app = cdk.App(outdir=str(tmp_path_factory.mktemp("signed") / "cdk.out"))
    stack = cdk.Stack(app, "SignedCompile")
    models = ModelArtifactBucket(stack, "Models")
    key = ArtifactSigningKey(stack, "Signing")
    jobs = EdgeCompilationSet(stack, "Xgb", bucket=models, model="models/model.tar.gz",
                              framework="xgboost", targets=["rasp4b", "jetson_xavier"],
                              signing_key=key)
    template = synth_checked(app, stack)  # cdk-nag's AwsSolutions and cfn-lint
    return SimpleNamespace(template=template, body=template.to_json(), stack=stack, key=key,
                           xgb=jobs, models=models)


def _p256_public_key_b64() -> str:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    der = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode()


def test_signed_builds_get_the_key_from_the_projects_environment(signed):
    key_id = logical(signed.stack, signed.key.key)
    public_key_id = logical(signed.stack, signed.key.public_key_resource)
    for job in signed.xgb.jobs.values():
        assert job.signing_key is signed.key
        assert project_of(signed, job)["Environment"]["EnvironmentVariables"] == [
            {"Name": SIGNING_KMS_KEY_VARIABLE, "Type": "PLAINTEXT",
             "Value": {"Fn::GetAtt": [key_id, "Arn"]}},
            {"Name": SIGNING_PUBLIC_KEY_VARIABLE, "Type": "PLAINTEXT",
             "Value": {"Fn::GetAtt": [public_key_id, "PublicKey"]}}]
    assert signed.xgb.signing_key is signed.key


def test_signed_build_command_parses_with_the_modules_own_parser(signed):
    """The build's command, run by bash with the environment a build has (the project's
    variables and the run's MODEL_URI and OUTPUT_URI), gives the compile module arguments
    its parser and its signing check take."""
    (command,) = buildspec(signed, signed.xgb["rasp4b"])["phases"]["build"]["commands"]
    module = "python -m neo_edge_runtime.compile.cloud "
    assert command.startswith(module)
    show = f"{shlex.quote(sys.executable)} -c 'import json, sys; print(json.dumps(sys.argv[1:]))' "
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    public_key = _p256_public_key_b64()
    env = {"MODEL_URI": "s3://models/model.tar.gz", "OUTPUT_URI": "s3://models/out/",
           SIGNING_KMS_KEY_VARIABLE: key_arn, SIGNING_PUBLIC_KEY_VARIABLE: public_key,
           "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", "-c", show + command[len(module):]], env=env,
                          capture_output=True, text=True, check=True)
    arguments = json.loads(proc.stdout)
    parsed = build_parser().parse_args(arguments)
    assert (parsed.model, parsed.output, parsed.target) == (
        "s3://models/model.tar.gz", "s3://models/out/", "rasp4b")
    assert (parsed.signing_kms_key, parsed.signing_public_key) == (key_arn, public_key)
    key_id, key = cloud.parse_signing(parsed.signing_kms_key, parsed.signing_public_key)
    assert key_id == key_arn and base64.b64encode(key.der).decode() == public_key


def test_signed_role_may_sign_with_that_key_only(signed):
    statements = statements_of(signed, signed.xgb.role)
    key_arn = {"Fn::GetAtt": [logical(signed.stack, signed.key.key), "Arn"]}
    signing = [s for s in statements if "kms:Sign" in json.dumps(s["Action"])]
    assert signing == [{"Action": "kms:Sign", "Effect": "Allow", "Resource": key_arn}]
    # No GetPublicKey (the public key comes with the build), no other use of the key.
    other_kms = [s for s in statements if "kms:" in json.dumps(s["Action"]) and s not in signing]
    assert other_kms and all(s["Resource"] != key_arn for s in other_kms)
    assert not [s for s in statements if "kms:GetPublicKey" in json.dumps(s["Action"])]


def test_deploy_time_build_overrides_only_its_model_and_output(signed):
    """CodeBuild's StartBuild environmentVariablesOverride "overrides, for this build only,
    the latest ones already defined in the build project" (botocore's model, codebuild
    2016-10-06, StartBuildInput): the signing variables are not named, so they stay."""
    import botocore.session

    doc = botocore.session.get_session().get_service_model("codebuild").operation_model(
        "StartBuild").input_shape.members["environmentVariablesOverride"].documentation
    assert "overrides, for this build only, the latest ones already defined" in doc
    for job in signed.xgb.jobs.values():
        request = json.loads(flatten(build_resource(signed, job)["Properties"]["Request"]))
        assert [v["name"] for v in request["environmentVariablesOverride"]] == [
            "MODEL_URI", "OUTPUT_URI"]


def test_signing_is_part_of_the_output_key():
    stack = cdk.Stack(cdk.App(), "Keys")
    models = ModelArtifactBucket(stack, "Models")
    first, second = ArtifactSigningKey(stack, "First"), ArtifactSigningKey(stack, "Second")
    digests = [EdgeCompilationJob(stack, f"Job{i}", bucket=models, model="models/model.tar.gz",
                                  target="rasp4b", output_prefix="compiled/",
                                  signing_key=key).compiled_model_key
               for i, key in enumerate([None, first, second, first])]
    assert len(set(digests[:3])) == 3 and digests[3] == digests[1]


def test_fails_when_the_signing_key_is_not_a_signing_key(stack):
    arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    with pytest.raises(ValueError, match=r"^signing_key must be an ArtifactSigningKey \(key_arn, "
                                         r"public_key, grant_sign\); got 'arn:aws:kms:"):
        _bad(stack, signing_key=arn)


# ---------------------------------------------------------------------------------------
# Failures at synth


@pytest.fixture()
def stack():
    return cdk.Stack(cdk.App(), "Bad")


def _bad(stack, **props):
    models = ModelArtifactBucket(stack, "Models")
    defaults = dict(bucket=models, model="models/model.tar.gz", target="rasp4b")
    return EdgeCompilationJob(stack, "Job", **{**defaults, **props})


def test_fails_when_the_framework_is_not_one_the_compiler_takes(stack):
    with pytest.raises(ValueError, match=r"^framework must be one of XGBOOST, ONNX, PYTORCH, "
                                         r"SKLEARN for the neo-edge compiler .*; got 'TFLITE'$"):
        _bad(stack, framework="tflite")


def test_fails_when_the_target_is_a_platform(stack):
    with pytest.raises(ValueError, match=r"^target must be a target device for the neo-edge "
                                         r"compiler in AWS .*; got TargetPlatform.LINUX_ARM64"):
        _bad(stack, target=TargetPlatform.LINUX_ARM64)


def test_fails_when_the_target_is_unknown(stack):
    with pytest.raises(ValueError, match=r"rasp5"):
        _bad(stack, target="rasp5")


def test_fails_when_output_prefix_is_not_a_prefix(stack):
    with pytest.raises(ValueError, match=r"^output_prefix must be a key prefix in the bucket "
                                         r"ending in '/'.*; got 'compiled'$"):
        _bad(stack, output_prefix="compiled")


def test_fails_when_a_shape_is_not_positive_integers(stack):
    with pytest.raises(ValueError, match=r"^data_input_config must map input names .*; got "
                                         r"'input': \[1, 0, 224\]$"):
        _bad(stack, data_input_config={"input": [1, 0, 224]})


def test_fails_when_max_runtime_outlives_cloudformations_wait(stack):
    with pytest.raises(ValueError, match=r"^max_runtime must be between 1 second and 50 minutes"):
        _bad(stack, max_runtime=cdk.Duration.hours(2))


def test_fails_when_a_set_repeats_a_target(stack):
    models = ModelArtifactBucket(stack, "Models")
    with pytest.raises(ValueError, match=r"^targets must not repeat a target; got rasp4b more "
                                         r"than once$"):
        EdgeCompilationSet(stack, "Set", bucket=models, model="m.tar.gz",
                           targets=["rasp4b", "rasp4b"])

