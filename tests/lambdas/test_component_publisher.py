"""component_publisher: Greengrass V2 component versions from compiled artifacts.

S3 (the artifacts' versions) runs under moto; Greengrass V2, which moto lacks, goes through
``botocore.stub.Stubber``, which checks every request and canned response against botocore's
service model.
"""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import boto3
import pytest
from botocore.stub import ANY, Stubber
from moto import mock_aws

from neo_edge_runtime.compile import recipe as recipes

BUCKET = "artifacts"
COMPONENT = "com.example.Digits"
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
RUNTIME_ARM = f"s3://{BUCKET}/runtime/neo-edge-runtime-aarch64.zip"
RUNTIME_X86 = f"s3://{BUCKET}/runtime/neo-edge-runtime-amd64.zip"
MODEL_PI = f"s3://{BUCKET}/compiled/rasp4b/model.tar.gz"
MODEL_C5 = f"s3://{BUCKET}/compiled/ml_c5/model.tar.gz"


def context():
    return SimpleNamespace(function_name="component_publisher", memory_limit_in_mb=256,
                           invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:cp",
                           aws_request_id="req-1")


def arn(version):
    return f"arn:aws:greengrass:us-east-1:123456789012:components:{COMPONENT}:versions:{version}"


@pytest.fixture
def artifacts(monkeypatch):
    with mock_aws():
        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket=BUCKET)
        for uri in (RUNTIME_ARM, RUNTIME_X86, MODEL_PI, MODEL_C5):
            s3.put_object(Bucket=BUCKET, Key=uri.split("/", 3)[3], Body=uri.encode())
        monkeypatch.setenv("COMPONENT_NAME", COMPONENT)
        monkeypatch.setenv("RUNTIME_URIS", json.dumps({"aarch64": RUNTIME_ARM, "amd64": RUNTIME_X86}))
        monkeypatch.delenv("INFERENCE_CONFIGURATION", raising=False)
        monkeypatch.delenv("COMPONENT_DESCRIPTION", raising=False)
        yield s3


@pytest.fixture
def publisher(artifacts, load_lambda):
    return load_lambda("component_publisher")


@pytest.fixture
def stub(publisher):
    with Stubber(publisher.greengrass) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


class Capture:
    """An expected parameter that matches anything and keeps what it was compared with."""

    def __init__(self):
        self.value = None

    def __eq__(self, other):
        self.value = other
        return True

    def __ne__(self, other):
        return not self.__eq__(other)


def created(stub, state="REQUESTED", version="1.0.0"):
    """Queue a CreateComponentVersion answer; return what the function sent."""
    recipe, token = Capture(), Capture()
    stub.add_response("create_component_version", {
        "arn": arn(version), "componentName": COMPONENT, "componentVersion": version,
        "creationTimestamp": NOW, "status": {"componentState": state, "message": "ok"}},
        {"inlineRecipe": recipe, "clientToken": token})
    return SimpleNamespace(recipe=lambda: json.loads(recipe.value), token=lambda: token.value)


EVENT = {"action": "publish", "targets": [{"target": "rasp4b", "model_uri": MODEL_PI},
                                          {"target": "ml_c5", "model_uri": MODEL_C5}]}


def test_publishes_one_manifest_per_target_with_its_runtime_bundle(publisher, stub):
    sent = created(stub)
    out = publisher.handler(EVENT, context())

    recipe = sent.recipe()
    recipes.validate_recipe(recipe)
    assert recipe["ComponentName"] == COMPONENT
    assert out["component_version"] == recipe["ComponentVersion"]
    assert out["recipe"] == recipe and out["state"] == "REQUESTED" and out["done"] is False
    manifests = {m["Name"]: m for m in recipe["Manifests"]}
    assert manifests["rasp4b"]["Platform"] == {"os": "linux", "architecture": "aarch64"}
    assert [a["Uri"] for a in manifests["rasp4b"]["Artifacts"]] == [RUNTIME_ARM, MODEL_PI]
    assert manifests["ml_c5"]["Platform"] == {"os": "linux", "architecture": "amd64"}
    assert [a["Uri"] for a in manifests["ml_c5"]["Artifacts"]] == [RUNTIME_X86, MODEL_C5]
    assert manifests["ml_c5"]["Artifacts"][0]["Unarchive"] == "ZIP"
    assert manifests["ml_c5"]["Artifacts"][1]["Unarchive"] == "NONE"


WHEELS_ARM = f"s3://{BUCKET}/wheels/aarch64.zip"
WHEELS_X86 = f"s3://{BUCKET}/wheels/x86_64.zip"


def test_offline_devices_get_their_wheels_in_every_published_version(artifacts, load_lambda,
                                                                    monkeypatch):
    """A component made with ``device_wheels`` installs offline; the versions retraining
    publishes must too, or the first retrained model breaks every offline device."""
    for uri in (WHEELS_ARM, WHEELS_X86):
        artifacts.put_object(Bucket=BUCKET, Key=uri.split("/", 3)[3], Body=b"PK")
    monkeypatch.setenv("WHEELS_URIS", json.dumps({"aarch64": WHEELS_ARM, "amd64": WHEELS_X86}))
    publisher = load_lambda("component_publisher")
    with Stubber(publisher.greengrass) as stub:
        sent = created(stub)
        publisher.handler(EVENT, context())
    recipe = sent.recipe()
    recipes.validate_recipe(recipe)
    manifests = {m["Name"]: m for m in recipe["Manifests"]}
    assert [a["Uri"] for a in manifests["rasp4b"]["Artifacts"]] == [RUNTIME_ARM, MODEL_PI,
                                                                    WHEELS_ARM]
    assert [a["Uri"] for a in manifests["ml_c5"]["Artifacts"]] == [RUNTIME_X86, MODEL_C5,
                                                                   WHEELS_X86]
    install = json.dumps(manifests["rasp4b"]["Lifecycle"])
    assert "--no-index" in install, install


def test_new_wheels_at_the_same_key_give_a_new_version(artifacts, load_lambda, monkeypatch):
    artifacts.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for uri in (RUNTIME_ARM, RUNTIME_X86, MODEL_PI, MODEL_C5, WHEELS_ARM, WHEELS_X86):
        artifacts.put_object(Bucket=BUCKET, Key=uri.split("/", 3)[3], Body=b"v1")
    monkeypatch.setenv("WHEELS_URIS", json.dumps({"aarch64": WHEELS_ARM, "amd64": WHEELS_X86}))
    publisher = load_lambda("component_publisher")
    versions = []
    for body in (b"v1", b"v2"):
        artifacts.put_object(Bucket=BUCKET, Key=WHEELS_ARM.split("/", 3)[3], Body=body)
        with Stubber(publisher.greengrass) as stub:
            sent = created(stub)
            publisher.handler(EVENT, context())
        versions.append(sent.recipe()["ComponentVersion"])
    assert versions[0] != versions[1]


def test_fails_when_the_device_wheels_are_not_a_zip(artifacts, load_lambda, monkeypatch):
    monkeypatch.setenv("WHEELS_URIS", json.dumps({"aarch64": "s3://artifacts/wheels/"}))
    publisher = load_lambda("component_publisher")
    with pytest.raises(publisher.InvalidRequestError,
                       match="the device wheels of target 'rasp4b' must be a .zip; "
                             "got 's3://artifacts/wheels/'"):
        publisher.handler(EVENT, context())


def test_deployable_at_once_is_done(publisher, stub):
    created(stub, state="DEPLOYABLE")
    assert publisher.handler(EVENT, context())["done"] is True


def test_the_same_artifacts_give_the_same_version_and_token(publisher):
    outs, tokens = [], []
    for _ in range(2):
        with Stubber(publisher.greengrass) as stub:
            sent = created(stub)
            outs.append(publisher.handler(EVENT, context())["component_version"])
            tokens.append(sent.token())
    assert outs[0] == outs[1] and tokens[0] == tokens[1]


def test_new_artifacts_at_the_same_keys_give_a_new_version(publisher, artifacts):
    versions = []
    for body in (b"first", b"second"):
        artifacts.put_object(Bucket=BUCKET, Key="compiled/rasp4b/model.tar.gz", Body=body)
        with Stubber(publisher.greengrass) as stub:
            created(stub)
            versions.append(publisher.handler(EVENT, context())["component_version"])
    assert versions[0] != versions[1]


def test_an_explicit_version_and_configuration(publisher, stub):
    sent = created(stub, version="2.1.0")
    event = dict(EVENT, component_version="2.1.0", configuration={"threadCount": 2},
                 description="digits")
    out = publisher.handler(event, context())
    assert out["component_version"] == "2.1.0" and out["component_arn"] == arn("2.1.0")
    default = sent.recipe()["ComponentConfiguration"]["DefaultConfiguration"]
    assert default["threadCount"] == 2
    assert sent.recipe()["ComponentDescription"] == "digits"


def test_targets_as_a_mapping_and_runtime_from_the_event(publisher, stub):
    sent = created(stub)
    publisher.handler({"targets": {"jetson_xavier": MODEL_PI},
                       "runtime_uris": {"aarch64-nvidia": "s3://other/runtime-cuda.zip"},
                       "fingerprint": "exec-1"}, context())
    [manifest] = sent.recipe()["Manifests"]
    assert manifest["Platform"] == {"os": "linux", "architecture": "aarch64",
                                    "accelerator": "nvidia"}
    assert manifest["Artifacts"][0]["Uri"] == "s3://other/runtime-cuda.zip"


def test_an_existing_version_of_the_same_content_is_success(publisher, stub):
    stub.add_client_error("create_component_version", service_error_code="ConflictException",
                          service_message="already exists", http_status_code=409)
    stub.add_response("describe_component", {
        "componentName": COMPONENT, "status": {"componentState": "DEPLOYABLE"}}, {"arn": ANY})

    out = publisher.handler(EVENT, context())

    assert out["done"] is True and out["state"] == "DEPLOYABLE"
    assert out["component_arn"] == arn(out["component_version"])


def test_fails_when_an_explicit_version_exists(publisher, stub):
    stub.add_client_error("create_component_version", service_error_code="ConflictException",
                          http_status_code=409)
    with pytest.raises(publisher.ComponentVersionConflictError,
                       match="component com.example.Digits version 2.1.0 already exists"):
        publisher.handler(dict(EVENT, component_version="2.1.0"), context())


def test_fails_when_throttled_with_a_retryable_error(publisher, stub):
    stub.add_client_error("create_component_version", service_error_code="ThrottlingException",
                          service_message="Rate exceeded", http_status_code=429)
    with pytest.raises(publisher.RetryableError,
                       match=r"greengrass create_component_version was refused for now "
                             r"\(ThrottlingException\): Rate exceeded"):
        publisher.handler(EVENT, context())


def test_fails_when_greengrass_marks_the_version_failed(publisher, stub):
    stub.add_response("create_component_version", {
        "arn": arn("1.0.0"), "componentName": COMPONENT, "componentVersion": "1.0.0",
        "creationTimestamp": NOW,
        "status": {"componentState": "FAILED", "message": "artifact error",
                   "errors": {MODEL_PI: "access denied"}}})
    with pytest.raises(publisher.ComponentVersionFailedError,
                       match=f"is FAILED: artifact error \\({MODEL_PI}: access denied\\)"):
        publisher.handler(EVENT, context())


def test_status_until_deployable(publisher, stub):
    for state in ("INITIATED", "DEPLOYABLE"):
        stub.add_response("describe_component", {
            "arn": arn("1.0.3"), "componentName": COMPONENT, "componentVersion": "1.0.3",
            "status": {"componentState": state}}, {"arn": arn("1.0.3")})
    event = {"action": "status", "component_arn": arn("1.0.3")}
    assert publisher.handler(event, context())["done"] is False
    assert publisher.handler(event, context())["done"] is True


def test_status_fails_when_the_version_failed(publisher, stub):
    stub.add_response("describe_component", {
        "arn": arn("1.0.3"), "componentName": COMPONENT, "componentVersion": "1.0.3",
        "status": {"componentState": "FAILED", "message": "bad digest"}}, {"arn": arn("1.0.3")})
    with pytest.raises(publisher.ComponentVersionFailedError,
                       match="component com.example.Digits 1.0.3 is FAILED: bad digest"):
        publisher.handler({"action": "status", "component_arn": arn("1.0.3")}, context())


@pytest.mark.parametrize(("event", "message"), [
    ({"targets": []}, "targets must be a non-empty list"),
    ({"targets": [{"target": "rasp4b"}]}, "each target needs 'target' and 'model_uri' strings"),
    ({"targets": {"rasp5": MODEL_PI}}, "rasp5"),
    ({"targets": {"rasp4b": "https://example.com/m.tar.gz"}},
     "artifact uri must start with one of s3://"),
    ({"targets": {"rasp4b": MODEL_PI}, "runtime_uris": {"rasp4b": "s3://b/runtime.tar.gz"}},
     "the device bundle of target 'rasp4b' must be a .zip; got 's3://b/runtime.tar.gz'"),
    ({"targets": {"rasp4b": MODEL_PI, "imx8qm": MODEL_PI}, "fingerprint": "x"},
     "the recipe builder refused the inputs: manifest 1 repeats platform"),
    ({"targets": {"rasp4b": f"s3://{BUCKET}/compiled/missing.tar.gz"}},
     f"artifact s3://{BUCKET}/compiled/missing.tar.gz cannot be read"),
    ({"targets": {"rasp4b": MODEL_PI}, "configuration": {"colour": "red"}},
     "inference configuration keys must be among"),
    ({"targets": {"jetson_xavier": MODEL_PI}},
     "no device bundle for target 'jetson_xavier' \\(architecture 'aarch64-nvidia'\\)"),
    ({"action": "unpublish"}, "action must be one of publish, status; got 'unpublish'"),
    ({"action": "status"}, "a status request needs component_arn; got None"),
])
def test_fails_when_the_request_is_malformed(publisher, stub, event, message):
    with pytest.raises(publisher.InvalidRequestError, match=message):
        publisher.handler(event, context())


def test_fails_when_no_runtime_bundle_fits(artifacts, load_lambda, monkeypatch):
    monkeypatch.setenv("RUNTIME_URIS", json.dumps({"amd64": RUNTIME_X86}))
    publisher = load_lambda("component_publisher")
    with pytest.raises(publisher.InvalidRequestError,
                       match="no device bundle for target 'rasp4b' \\(architecture 'aarch64'\\)"):
        publisher.handler({"targets": {"rasp4b": MODEL_PI}}, context())


def test_fails_when_the_component_name_is_missing(artifacts, load_lambda, monkeypatch):
    monkeypatch.delenv("COMPONENT_NAME")
    with pytest.raises(RuntimeError, match="environment variable COMPONENT_NAME is not set"):
        load_lambda("component_publisher")


def test_fails_when_a_json_setting_is_malformed(artifacts, load_lambda, monkeypatch):
    monkeypatch.setenv("INFERENCE_CONFIGURATION", "threadCount=2")
    with pytest.raises(RuntimeError, match="INFERENCE_CONFIGURATION must be a JSON object; "
                                           "got 'threadCount=2'"):
        load_lambda("component_publisher")
