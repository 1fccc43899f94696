"""EdgeInferenceComponent and EdgeLambdaComponent."""

from __future__ import annotations

import hashlib
import json
import pathlib
from types import SimpleNamespace

import aws_cdk as cdk
import pytest
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_s3 as s3
from aws_cdk.assertions import Match

from checks import synth_checked
from neo_edge._lambda import bundled_function
from neo_edge.component import (CompiledModel, DeviceMount, EdgeInferenceComponent,
                                EdgeLambdaComponent, EventSource, IsolationMode, VolumeMount)
from neo_edge.choices import TargetDevice

def make_artifact(folder: pathlib.Path, target: str, payload: bytes = b"lib") -> pathlib.Path:
    """A tiny artifact folder in the compiler's format: manifest.json + a library."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.so").write_bytes(payload)
    manifest = {
        "format_version": 1, "model": {"name": "digits", "version": "1"}, "framework": "ONNX",
        "source_sha256": "0" * 64,
        "target": {"name": target, "tvm_target": {"kind": "llvm"}, "arch": "aarch64", "device": "cpu"},
        "inputs": [{"name": "x", "shape": [1, 64], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 10], "dtype": "float32"}],
        "files": {"model.so": hashlib.sha256(payload).hexdigest()},
        "tvm_version": "0.27", "compile_options": {}, "metadata": {},
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, sort_keys=True))
    return folder


def make_bundle(folder: pathlib.Path) -> pathlib.Path:
    (folder / "neo_edge_runtime").mkdir(parents=True, exist_ok=True)
    (folder / "neo_edge_runtime" / "__init__.py").write_text("")
    (folder / "edge_inference.py").write_text(f"# {folder.name}\n")
    return folder


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("component")
    return SimpleNamespace(
        rasp4b=make_artifact(root / "rasp4b", "rasp4b"),
        ml_c5=make_artifact(root / "ml_c5", "ml_c5"),
        gpu=make_artifact(root / "gpu", "ml_g4dn"),
        rasp4b_v2=make_artifact(root / "rasp4b-v2", "rasp4b", b"lib-v2"),
        bundles={"aarch64": make_bundle(root / "bundle-aarch64"),
                 "x86_64": make_bundle(root / "bundle-x86_64"),
                 "x86_64-cuda": make_bundle(root / "bundle-x86_64-cuda")})


def inference_stack(files, models=None, stack_id="Comp", **kwargs):
    app = cdk.App()
    stack = cdk.Stack(app, stack_id)
    if models is None:
        models = [files.rasp4b, files.ml_c5, files.gpu]
    component = EdgeInferenceComponent(stack, "Classifier", component_name="com.example.Classifier",
                                       models=models, runtime_bundles=files.bundles, **kwargs)
    return app, stack, component


@pytest.fixture(scope="module")
def built(files):
    app, stack, component = inference_stack(files)
    neo_job = SimpleNamespace(compiled_model_uri="s3://models/compiled/ml_c5/model-ml_c5.tar.gz",
                              target=TargetDevice.of("ml_c5"), fingerprint="abc")
    from_job = EdgeInferenceComponent(stack, "FromJob", component_name="com.example.Cloud",
                                      models=[neo_job], runtime_bundles=files.bundles)
    fn = bundled_function(stack, "Fn", "sagemaker_job", include_powertools=False)
    lambda_component = EdgeLambdaComponent(
        stack, "Camera", component_name="com.example.Camera",
        function_version=fn.current_version,
        event_sources=[EventSource.local("camera/frames"), EventSource.iot_core("cmd/+/infer")],
        memory_size=cdk.Size.mebibytes(256), devices=[DeviceMount("/dev/video0")],
        volumes=[VolumeMount("/greengrass/v2/work/models", "/models")],
        environment={"MODEL_DIR": "/models"}, timeout=cdk.Duration.seconds(10))
    no_container = EdgeLambdaComponent(
        stack, "OnDemand", component_name="com.example.OnDemand",
        function_version=fn.current_version, pinned=False,
        isolation_mode=IsolationMode.NO_CONTAINER,
        platforms=[{"os": "linux", "architecture": "aarch64"}])
    template = synth_checked(app, stack)
    return SimpleNamespace(template=template, component=component, from_job=from_job,
                           lambda_component=lambda_component, no_container=no_container,
                           stack=stack)


def inline_recipe(template, logical_prefix: str) -> dict:
    """The recipe with the deploy-time parts (asset bucket names) filled with a placeholder."""
    resources = template.find_resources("AWS::GreengrassV2::ComponentVersion")
    (res,) = [r for k, r in resources.items() if k.startswith(logical_prefix)]
    body = res["Properties"]["InlineRecipe"]
    if isinstance(body, dict):
        body = "".join(p if isinstance(p, str) else "bucket" for p in body["Fn::Join"][1])
    return json.loads(body)


def test_synthesized_recipe_passes_the_gdk_schema(built, gdk_recipe_errors):
    recipe = inline_recipe(built.template, "Classifier")
    assert gdk_recipe_errors(recipe) == []


def test_one_manifest_per_target_most_specific_first(built):
    recipe = inline_recipe(built.template, "Classifier")
    assert [(m["Name"], m["Platform"]) for m in recipe["Manifests"]] == [
        ("ml_g4dn", {"os": "linux", "architecture": "amd64", "accelerator": "nvidia"}),
        ("rasp4b", {"os": "linux", "architecture": "aarch64"}),
        ("ml_c5", {"os": "linux", "architecture": "amd64"}),
    ]
    assert [t.name for t in built.component.targets] == ["ml_g4dn", "rasp4b", "ml_c5"]


def test_nvidia_targets_ship_the_cuda_bundle(built):
    recipe = inline_recipe(built.template, "Classifier")
    runtime = {m["Name"]: m["Artifacts"][0]["Uri"] for m in recipe["Manifests"]}
    assets = built.component.runtime_bundle_assets
    assert sorted(assets) == ["aarch64", "x86_64", "x86_64-cuda"]
    assert runtime["ml_g4dn"].endswith(assets["x86_64-cuda"].s3_object_key)
    assert runtime["ml_c5"].endswith(assets["x86_64"].s3_object_key)


@pytest.mark.parametrize("target", ["jetson_xavier", "jetson_nano", "ml_p3"])
def test_fails_when_the_gpu_predates_the_cuda_runtime(files, tmp_path, target):
    """The CUDA bundle's runtime is CUDA 13 (what the apache-tvm wheels link): a GPU older
    than compute capability 7.5 would fail on the device, so synth refuses it."""
    old = make_artifact(tmp_path / target, target)
    with pytest.raises(ValueError, match=f"no edge runtime runs {target}: the bundle's CUDA "
                                         r"runtime is CUDA 13 .* compute capability 7.5 and "
                                         "newer"):
        EdgeInferenceComponent(cdk.Stack(cdk.App(), "S"), "C", component_name="c",
                               models=[files.rasp4b, old], runtime_bundles=files.bundles)


def test_artifacts_are_assets_unpacked_on_the_device(built):
    recipe = inline_recipe(built.template, "Classifier")
    arts = recipe["Manifests"][2]["Artifacts"]
    assert all(a["Uri"].startswith("s3://bucket/") and a["Uri"].endswith(".zip") for a in arts)
    assert [a["Unarchive"] for a in arts] == ["ZIP", "ZIP"]
    # the CUDA bundle for ml_g4dn, the aarch64 one for rasp4b, the x86_64 one for ml_c5
    assert len({m["Artifacts"][0]["Uri"] for m in recipe["Manifests"]}) == 3


def test_component_version_matches_recipe(built):
    recipe = inline_recipe(built.template, "Classifier")
    assert recipe["ComponentVersion"] == built.component.component_version
    assert recipe["ComponentVersion"].startswith("1.0.")


def test_resynth_gives_the_same_version(built, files):
    _, _, again = inference_stack(files, stack_id="Other")
    assert again.component_version == built.component.component_version


def test_new_model_gives_a_new_version(built, files):
    _, _, changed = inference_stack(files, models=[files.rasp4b_v2, files.ml_c5, files.gpu])
    assert changed.component_version != built.component.component_version


def test_configuration_change_gives_a_new_version(built, files):
    _, _, changed = inference_stack(files, configuration={"threadCount": 2})
    assert changed.component_version != built.component.component_version


def test_compilation_job_output_is_a_tarball_extracted_at_install(built):
    recipe = inline_recipe(built.template, "FromJob")
    (manifest,) = recipe["Manifests"]
    assert manifest["Platform"] == {"os": "linux", "architecture": "amd64"}
    model = manifest["Artifacts"][1]
    assert model == {"Uri": "s3://models/compiled/ml_c5/model-ml_c5.tar.gz", "Unarchive": "NONE",
                     "Permission": {"Read": "OWNER", "Execute": "NONE"}}
    assert "tar -xzf" in manifest["Lifecycle"]["Install"]["Script"]


def test_install_puts_the_device_requirements_in_a_venv_the_run_step_uses(built):
    recipe = inline_recipe(built.template, "Classifier")
    for manifest in recipe["Manifests"]:
        install = manifest["Lifecycle"]["Install"]["Script"]
        assert "python3 -m venv venv" in install
        assert ("venv/bin/python3 -m pip install --quiet --disable-pip-version-check --no-input "
                "--only-binary=:all: -r runtime/requirements-device.txt") in install
        assert "--no-index" not in install and len(manifest["Artifacts"]) == 2
        assert manifest["Lifecycle"]["Run"].endswith(
            "{work:path}/venv/bin/python3 -u {work:path}/runtime/edge_inference.py")


def make_wheels(folder: pathlib.Path, arch: str) -> pathlib.Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"numpy-2.4.6-cp311-cp311-manylinux_2_28_{arch}.whl").write_bytes(arch.encode())
    return folder


@pytest.fixture(scope="module")
def offline(files, tmp_path_factory):
    root = tmp_path_factory.mktemp("wheels")
    wheels = {arch: make_wheels(root / arch, arch) for arch in ("aarch64", "x86_64")}
    app, stack, component = inference_stack(files, stack_id="Offline", device_wheels=wheels)
    return SimpleNamespace(template=synth_checked(app, stack), component=component)


def test_device_wheels_are_an_artifact_installed_from_without_the_index(offline,
                                                                      gdk_recipe_errors):
    recipe = inline_recipe(offline.template, "Classifier")
    assert gdk_recipe_errors(recipe) == []
    for manifest in recipe["Manifests"]:
        runtime, model, wheels = manifest["Artifacts"]
        assert wheels["Unarchive"] == "ZIP" and wheels["Uri"].endswith(".zip")
        folder = "{artifacts:decompressedPath}/" + wheels["Uri"].rsplit("/", 1)[-1][:-len(".zip")]
        assert (f'--only-binary=:all: --no-index --find-links "{folder}" '
                f"-r runtime/requirements-device.txt") in manifest["Lifecycle"]["Install"]["Script"]
    gpu, rasp4b, ml_c5 = (m["Artifacts"][2]["Uri"] for m in recipe["Manifests"])
    assert gpu == ml_c5 != rasp4b  # x86_64, aarch64, x86_64: wheels go by architecture
    assert sorted(offline.component.device_wheel_assets) == ["aarch64", "x86_64"]


def test_device_wheels_are_granted_to_the_fleet(offline):
    from aws_cdk import aws_iam as iam
    stack = cdk.Stack(cdk.App(), "G")
    role = iam.Role(stack, "R", assumed_by=iam.ServicePrincipal("credentials.iot.amazonaws.com"))
    offline.component.grant_artifacts_read(role)
    (statement,) = stack.resolve(role.node.find_child("DefaultPolicy").document.to_json())[
        "Statement"]
    # three device bundles (aarch64, x86_64, x86_64-cuda), two wheel folders, three models
    assert len(statement["Resource"]) == 8


def test_fails_when_device_wheels_miss_an_architecture(files, tmp_path):
    with pytest.raises(ValueError) as exc:
        inference_stack(files, device_wheels={"aarch64": make_wheels(tmp_path, "aarch64")})
    assert str(exc.value) == "device_wheels needs wheels for x86_64; got wheels for aarch64"


def test_fails_when_device_wheels_hold_no_wheels(files, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError) as exc:
        inference_stack(files, models=[files.rasp4b],
                        device_wheels={"aarch64": tmp_path / "empty"})
    assert str(exc.value) == (f"device_wheels for aarch64 must hold .whl files at its root; got "
                              f"{str(tmp_path / 'empty')!r}, which holds none")


def test_grant_artifacts_read_is_per_object(built):
    from aws_cdk import aws_iam as iam
    stack = cdk.Stack(cdk.App(), "G")
    role = iam.Role(stack, "R", assumed_by=iam.ServicePrincipal("credentials.iot.amazonaws.com"))
    grant = built.component.grant_artifacts_read(role)
    assert grant is not None and grant.success
    resources = stack.resolve(role.node.find_child("DefaultPolicy").document.to_json())
    (statement,) = resources["Statement"]
    assert statement["Action"] == "s3:GetObject"
    keys = [json.dumps(r) for r in statement["Resource"]]
    # three device bundles (aarch64, x86_64, x86_64-cuda) and three models, each object by
    # its exact key
    assert len(keys) == 6 and all(k.endswith('.zip"]]}') and "*" not in k for k in keys)


def test_lambda_component_from_a_version(built):
    built.template.has_resource_properties("AWS::GreengrassV2::ComponentVersion", {
        "LambdaFunction": {
            "ComponentName": "com.example.Camera",
            "ComponentVersion": built.lambda_component.component_version,
            "LambdaArn": {"Ref": Match.string_like_regexp("FnCurrentVersion")},
            "ComponentPlatforms": [{"Name": "linux", "Attributes": {"os": "linux"}}],
            "ComponentLambdaParameters": {
                "Pinned": True,
                "EventSources": [{"Topic": "camera/frames", "Type": "PUB_SUB"},
                                 {"Topic": "cmd/+/infer", "Type": "IOT_CORE"}],
                "EnvironmentVariables": {"MODEL_DIR": "/models"},
                "TimeoutInSeconds": 10,
                "InputPayloadEncodingType": "json",
                "LinuxProcessParams": {
                    "IsolationMode": "GreengrassContainer",
                    "ContainerParams": {
                        "MemorySizeInKB": 262144, "MountROSysfs": False,
                        "Devices": [{"Path": "/dev/video0", "Permission": "rw", "AddGroupOwner": True}],
                        "Volumes": [{"SourcePath": "/greengrass/v2/work/models",
                                     "DestinationPath": "/models", "Permission": "ro",
                                     "AddGroupOwner": False}]}}}}})


def test_lambda_component_on_demand_without_container(built):
    built.template.has_resource_properties("AWS::GreengrassV2::ComponentVersion", {
        "LambdaFunction": Match.object_like({
            "ComponentName": "com.example.OnDemand",
            "ComponentPlatforms": [{"Name": "linux-aarch64",
                                    "Attributes": {"os": "linux", "architecture": "aarch64"}}],
            "ComponentLambdaParameters": Match.object_like({
                "Pinned": False,
                "LinuxProcessParams": {"IsolationMode": "NoContainer"}})})})


def test_lambda_component_versions_differ_with_parameters(built):
    assert built.lambda_component.component_version != built.no_container.component_version


# ---------------------------------------------------------------------------------------
# Refusals


def test_fails_when_two_models_share_a_platform(files):
    with pytest.raises(ValueError) as exc:
        inference_stack(files, models=[files.rasp4b, files.rasp4b_v2])
    assert str(exc.value) == ("models for rasp4b and rasp4b both run on linux/aarch64: a component "
                              "ships one model per platform (use one component per model)")


def test_fails_when_a_runtime_bundle_is_missing(files):
    app = cdk.App()
    stack = cdk.Stack(app, "S")
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(stack, "C", component_name="c", models=[files.rasp4b, files.gpu],
                               runtime_bundles={"x86_64": files.bundles["x86_64"]})
    assert str(exc.value) == ("runtime_bundles needs a device bundle for aarch64 (rasp4b), "
                              "x86_64-cuda (ml_g4dn); got bundles for x86_64")


def test_fails_when_a_target_is_32_bit_arm(files, tmp_path):
    rasp3b = make_artifact(tmp_path / "rasp3b", "rasp3b")
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(cdk.Stack(cdk.App(), "S"), "C", component_name="c",
                               models=[files.rasp4b, rasp3b], runtime_bundles=files.bundles)
    assert str(exc.value) == (
        "no edge runtime runs on armv7l: apache-tvm publishes runtime wheels for x86_64, aarch64 "
        "only (nothing to build one from for 32-bit ARM); run a 64-bit OS on the device and "
        "compile for an aarch64 target; got rasp3b (armv7l)")


def test_fails_when_runtime_bundle_arch_is_greengrass_style(files):
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(cdk.Stack(cdk.App(), "S"), "C", component_name="c",
                               models=[files.rasp4b], runtime_bundles={"amd64": "x"})
    assert str(exc.value) == ("runtime_bundles keys must be among x86_64, aarch64, x86_64-cuda, "
                              "aarch64-cuda; got amd64")


def test_fails_when_no_models(files):
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(cdk.Stack(cdk.App(), "S"), "C", component_name="c", models=[],
                               runtime_bundles=files.bundles)
    assert str(exc.value) == "models must hold at least one compiled model; got none"


def test_fails_when_folder_has_no_manifest(files, tmp_path):
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(cdk.Stack(cdk.App(), "S"), "C", component_name="c",
                               models=[tmp_path], runtime_bundles=files.bundles)
    assert str(exc.value) == f"a compiled model folder must hold manifest.json; got {str(tmp_path)!r}"


def test_fails_when_job_uri_is_not_s3(files):
    job = SimpleNamespace(compiled_model_uri="https://x/model.tar.gz", target="rasp4b")
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(cdk.Stack(cdk.App(), "S"), "C", component_name="c",
                               models=[job], runtime_bundles=files.bundles)
    assert str(exc.value) == "compiled_model_uri must be an s3:// URI; got 'https://x/model.tar.gz'"


def test_fails_when_target_is_unsupported(files):
    job = SimpleNamespace(compiled_model_uri="s3://b/model.tar.gz", target="ml_inf1")
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(cdk.Stack(cdk.App(), "S"), "C", component_name="c",
                               models=[job], runtime_bundles=files.bundles)
    assert str(exc.value).startswith("target 'ml_inf1' is not supported: Inferentia needs the AWS "
                                     "Neuron compiler; supported targets are host, aisage,")


def test_fails_when_s3_object_is_not_an_archive():
    stack = cdk.Stack(cdk.App(), "S")
    bucket = s3.Bucket.from_bucket_name(stack, "B", "bkt")
    with pytest.raises(ValueError) as exc:
        CompiledModel.from_s3(bucket, "models/model.so", "rasp4b")
    assert str(exc.value) == "a compiled model object must be a .zip, .tar.gz or .tgz; got 'models/model.so'"


def test_fails_when_component_name_is_invalid(files):
    with pytest.raises(ValueError) as exc:
        EdgeInferenceComponent(
            cdk.Stack(cdk.App(), "S"), "C", component_name="bad name", models=[files.rasp4b],
            runtime_bundles=files.bundles)
    assert str(exc.value) == ("component name must be 1 to 128 letters, digits, '-', '_' or '.'; "
                              "got 'bad name'")


@pytest.fixture()
def fn_stack():
    stack = cdk.Stack(cdk.App(), "L")
    fn = lambda_.Function(stack, "Fn", runtime=lambda_.Runtime.PYTHON_3_11, handler="i.h",
                          code=lambda_.Code.from_inline("def h(e, c): pass"))
    return stack, fn


def test_fails_when_lambda_source_is_latest(fn_stack):
    stack, fn = fn_stack
    with pytest.raises(ValueError) as exc:
        EdgeLambdaComponent(stack, "C", component_name="c", function_version=fn.latest_version)
    assert str(exc.value) == ("function_version must be a published version, not $LATEST "
                              "(Greengrass pins a component to one immutable version); got $LATEST")


def test_fails_when_lambda_source_is_an_alias(fn_stack):
    stack, fn = fn_stack
    alias = lambda_.Alias(stack, "Live", alias_name="live", version=fn.current_version)
    with pytest.raises(ValueError) as exc:
        EdgeLambdaComponent(stack, "C", component_name="c", function_version=alias)
    assert str(exc.value) == ("function_version must be a Lambda version, not an alias (Greengrass "
                              "pins a component to one immutable version); got alias 'live'")


def test_fails_when_imported_version_arn_is_unqualified(fn_stack):
    stack, _ = fn_stack
    version = lambda_.Version.from_version_arn(
        stack, "V", "arn:aws:lambda:us-east-1:123456789012:function:f:live")
    with pytest.raises(ValueError) as exc:
        EdgeLambdaComponent(stack, "C", component_name="c", function_version=version)
    assert str(exc.value) == ("function_version must have a version-qualified ARN "
                              "(...:function:name:3); got "
                              "'arn:aws:lambda:us-east-1:123456789012:function:f:live'")


def test_fails_when_no_container_gets_devices(fn_stack):
    stack, fn = fn_stack
    with pytest.raises(ValueError) as exc:
        EdgeLambdaComponent(stack, "C", component_name="c", function_version=fn.current_version,
                            isolation_mode=IsolationMode.NO_CONTAINER,
                            devices=[DeviceMount("/dev/video0")])
    assert str(exc.value) == ("memory_size, devices and volumes apply to container mode only; "
                              "got them with isolation_mode NoContainer")


def test_fails_when_device_is_not_under_dev():
    with pytest.raises(ValueError) as exc:
        DeviceMount("/tmp/video0")
    assert str(exc.value) == "a device path must be under /dev/; got '/tmp/video0'"


def test_fails_when_volume_path_is_relative():
    with pytest.raises(ValueError) as exc:
        VolumeMount("models", "/models")
    assert str(exc.value) == "volume source_path must be an absolute path; got 'models'"


def test_fails_when_memory_is_too_small(fn_stack):
    stack, fn = fn_stack
    with pytest.raises(ValueError) as exc:
        EdgeLambdaComponent(stack, "C", component_name="c", function_version=fn.current_version,
                            memory_size=cdk.Size.kibibytes(1024))
    assert str(exc.value) == "memory_size must be at least 2048 KiB; got 1024 KiB"
