"""deployment_manager: Greengrass V2 deployments, checked against botocore's service model.

moto has no Greengrass V2: every call goes through ``botocore.stub.Stubber``, which refuses a
request whose parameters do not match the operation's input shape and a canned response that
does not match its output shape.
"""

from __future__ import annotations

import datetime as dt
import json
from types import SimpleNamespace

import pytest
from botocore.stub import ANY, Stubber

GROUP_ARN = "arn:aws:iot:us-east-1:123456789012:thinggroup/digits-fleet"
NOW = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.timezone.utc)
COMPONENT = "com.example.Digits"


def context():
    return SimpleNamespace(function_name="deployment_manager", memory_limit_in_mb=256,
                           invoked_function_arn="arn:aws:lambda:us-east-1:123456789012:function:dm",
                           aws_request_id="req-1")


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("TARGET_ARN", GROUP_ARN)
    for name in ("DEPLOYMENT_NAME", "FAILURE_HANDLING_POLICY", "COMPONENT_UPDATE_TIMEOUT_SECONDS",
                 "IOT_JOB_CONFIGURATION", "FAILURE_THRESHOLD_PERCENT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def manager(env, load_lambda):
    return load_lambda("deployment_manager")


@pytest.fixture
def stub(manager):
    with Stubber(manager.greengrass) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


def latest_deployment(stub, components):
    stub.add_response("list_deployments", {"deployments": [{
        "targetArn": GROUP_ARN, "deploymentId": "d-old", "deploymentName": "neo-edge-digits-fleet",
        "deploymentStatus": "ACTIVE", "isLatestForTarget": True, "creationTimestamp": NOW}]},
        {"targetArn": GROUP_ARN, "historyFilter": "LATEST_ONLY"})
    stub.add_response("get_deployment", {"deploymentId": "d-old", "targetArn": GROUP_ARN,
                                         "deploymentStatus": "ACTIVE", "components": components},
                      {"deploymentId": "d-old"})


def no_deployment(stub):
    stub.add_response("list_deployments", {"deployments": []},
                      {"targetArn": GROUP_ARN, "historyFilter": "LATEST_ONLY"})


def created(stub, expected_components, **expected):
    params = {"targetArn": GROUP_ARN, "deploymentName": "neo-edge-digits-fleet",
              "components": expected_components, "deploymentPolicies": ANY,
              "iotJobConfiguration": ANY, "clientToken": ANY}
    params.update(expected)
    stub.add_response("create_deployment", {"deploymentId": "d-new", "iotJobId": "job-1",
                                            "iotJobArn": "arn:aws:iot:us-east-1:123456789012:job/job-1"},
                      params)


def test_deploys_the_component_version_with_rollback_and_rollout(manager, stub):
    no_deployment(stub)
    created(stub, {COMPONENT: {"componentVersion": "1.0.7"}},
            deploymentPolicies={"failureHandlingPolicy": "ROLLBACK",
                                "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS",
                                                          "timeoutInSeconds": 60},
                                "configurationValidationPolicy": {"timeoutInSeconds": 60}},
            iotJobConfiguration=manager.DEFAULT_IOT_JOB_CONFIGURATION)

    out = manager.handler({"action": "deploy", "component_name": COMPONENT,
                           "component_version": "1.0.7"}, context())

    assert out == {"deployment_id": "d-new", "iot_job_id": "job-1", "target_arn": GROUP_ARN,
                   "components": {COMPONENT: "1.0.7"}, "kept_components": [], "done": False}


def test_keeps_the_components_already_deployed_to_the_group(manager, stub):
    latest_deployment(stub, {
        COMPONENT: {"componentVersion": "1.0.6"},
        "aws.greengrass.Nucleus": {"componentVersion": "2.14.0",
                                   "configurationUpdate": {"merge": '{"logging":{"level":"INFO"}}'}},
    })
    created(stub, {
        COMPONENT: {"componentVersion": "1.0.7"},
        "aws.greengrass.Nucleus": {"componentVersion": "2.14.0",
                                   "configurationUpdate": {"merge": '{"logging":{"level":"INFO"}}'}},
    })

    out = manager.handler({"component_name": COMPONENT, "component_version": "1.0.7"}, context())

    assert out["kept_components"] == ["aws.greengrass.Nucleus"]
    assert out["components"] == {"aws.greengrass.Nucleus": "2.14.0", COMPONENT: "1.0.7"}


def test_after_a_canceled_deployment_keeps_the_components_of_the_one_before(manager, stub):
    canceled = {"targetArn": GROUP_ARN, "deploymentId": "d-canceled",
                "deploymentName": "neo-edge-digits-fleet", "deploymentStatus": "CANCELED",
                "isLatestForTarget": True, "creationTimestamp": NOW}
    stub.add_response("list_deployments", {"deployments": [canceled]},
                      {"targetArn": GROUP_ARN, "historyFilter": "LATEST_ONLY"})
    older = [dict(canceled, deploymentId="d-1", deploymentStatus="INACTIVE", isLatestForTarget=False,
                  creationTimestamp=NOW - dt.timedelta(days=2)),
             dict(canceled, deploymentId="d-2", deploymentStatus="INACTIVE", isLatestForTarget=False,
                  creationTimestamp=NOW - dt.timedelta(days=1))]
    stub.add_response("list_deployments", {"deployments": [canceled, older[0]], "nextToken": "p2"},
                      {"targetArn": GROUP_ARN, "historyFilter": "ALL"})
    stub.add_response("list_deployments", {"deployments": [older[1]]},
                      {"targetArn": GROUP_ARN, "historyFilter": "ALL", "nextToken": "p2"})
    stub.add_response("get_deployment", {"deploymentId": "d-2", "targetArn": GROUP_ARN,
                                         "deploymentStatus": "INACTIVE", "components": {
                                             COMPONENT: {"componentVersion": "1.0.6"},
                                             "com.example.Camera": {"componentVersion": "2.0.0"}}},
                      {"deploymentId": "d-2"})
    created(stub, {COMPONENT: {"componentVersion": "1.0.7"},
                   "com.example.Camera": {"componentVersion": "2.0.0"}})

    out = manager.handler({"component_name": COMPONENT, "component_version": "1.0.7"}, context())

    assert out["kept_components"] == ["com.example.Camera"]


def test_deploys_exactly_what_is_named_when_asked(manager, stub):
    created(stub, {COMPONENT: {"componentVersion": "1.0.7",
                               "configurationUpdate": {"merge": '{"threadCount": 2}'}}})
    out = manager.handler({"component_name": COMPONENT, "component_version": "1.0.7",
                           "configuration_merge": {"threadCount": 2},
                           "keep_existing_components": False}, context())
    assert out["kept_components"] == []


def test_several_components_in_the_api_shape(manager, stub):
    no_deployment(stub)
    components = {COMPONENT: {"componentVersion": "1.0.7"},
                  "com.example.Camera": {"componentVersion": "2.0.0"}}
    created(stub, components)
    out = manager.handler({"components": components}, context())
    assert out["components"] == {"com.example.Camera": "2.0.0", COMPONENT: "1.0.7"}


def test_the_client_token_is_stable_across_retries(manager, monkeypatch):
    calls = []

    def fake_call(operation, **kwargs):
        calls.append((operation, kwargs))
        if operation == "list_deployments":
            return {"deployments": []}
        return {"deploymentId": "d-new", "iotJobId": "job-1"}

    monkeypatch.setattr(manager, "_call", fake_call)
    event = {"component_name": COMPONENT, "component_version": "1.0.7", "request_token": "exec-1"}
    manager.handler(event, context())
    manager.handler(event, context())
    manager.handler(dict(event, request_token="exec-2"), context())

    tokens = [kwargs["clientToken"] for operation, kwargs in calls
              if operation == "create_deployment"]
    assert tokens[0] == tokens[1] != tokens[2]
    assert len(tokens[0]) == 64


def test_settings_from_the_environment(env, load_lambda, monkeypatch):
    job = {"timeoutConfig": {"inProgressTimeoutInMinutes": 15}}
    monkeypatch.setenv("IOT_JOB_CONFIGURATION", json.dumps(job))
    monkeypatch.setenv("FAILURE_HANDLING_POLICY", "DO_NOTHING")
    monkeypatch.setenv("COMPONENT_UPDATE_TIMEOUT_SECONDS", "120")
    monkeypatch.setenv("DEPLOYMENT_NAME", "digits")
    manager = load_lambda("deployment_manager")
    with Stubber(manager.greengrass) as stub:
        no_deployment(stub)
        created(stub, {COMPONENT: {"componentVersion": "1.0.7"}}, deploymentName="digits",
                iotJobConfiguration=job,
                deploymentPolicies={"failureHandlingPolicy": "DO_NOTHING",
                                    "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS",
                                                              "timeoutInSeconds": 120},
                                    "configurationValidationPolicy": {"timeoutInSeconds": 120}})
        manager.handler({"component_name": COMPONENT, "component_version": "1.0.7"}, context())
        stub.assert_no_pending_responses()


def test_fails_when_greengrass_throttles_with_a_retryable_error(manager, stub):
    no_deployment(stub)
    stub.add_client_error("create_deployment", service_error_code="ThrottlingException",
                          service_message="Rate exceeded", http_status_code=429)
    with pytest.raises(manager.RetryableError,
                       match=r"greengrass create_deployment was refused for now "
                             r"\(ThrottlingException\): Rate exceeded"):
        manager.handler({"component_name": COMPONENT, "component_version": "1.0.7"}, context())


def test_fails_when_a_request_with_the_token_is_in_progress(manager, stub):
    no_deployment(stub)
    stub.add_client_error("create_deployment",
                          service_error_code="RequestAlreadyInProgressException",
                          service_message="in progress", http_status_code=400)
    with pytest.raises(manager.RetryableError, match="RequestAlreadyInProgressException"):
        manager.handler({"component_name": COMPONENT, "component_version": "1.0.7"}, context())


def test_fails_when_greengrass_reports_a_conflict(manager, stub):
    no_deployment(stub)
    stub.add_client_error("create_deployment", service_error_code="ConflictException",
                          service_message="deployment in progress", http_status_code=409)
    with pytest.raises(manager.greengrass.exceptions.ConflictException) as exc:
        manager.handler({"component_name": COMPONENT, "component_version": "1.0.7"}, context())
    assert exc.value.response["Error"]["Code"] == "ConflictException"


@pytest.mark.parametrize(("event", "message"), [
    ({}, "a deploy request names its components: component_name and component_version, or "
         "components; got neither"),
    ({"component_name": COMPONENT}, "component_name and component_version must both be non-empty "
                                    "strings; got 'com.example.Digits' and None"),
    ({"components": {COMPONENT: {"version": "1"}}}, "component 'com.example.Digits' needs a "
                                                    "componentVersion string"),
    ({"components": []}, "components must be a non-empty mapping"),
    ({"action": "undeploy"}, "action must be one of deploy, status; got 'undeploy'"),
    ({"action": "status"}, "a status request needs deployment_id; got None"),
    ({"component_name": COMPONENT, "component_version": "1", "keep_existing_components": "no"},
     "keep_existing_components must be true or false; got 'no'"),
])
def test_fails_when_the_request_is_malformed(manager, stub, event, message):
    with pytest.raises(manager.InvalidRequestError, match=message):
        manager.handler(event, context())


# --- status --------------------------------------------------------------------------


def deployment_is(stub, state, deployment_id="d-new"):
    stub.add_response("get_deployment", {"deploymentId": deployment_id, "targetArn": GROUP_ARN,
                                         "deploymentStatus": state},
                      {"deploymentId": deployment_id})


def devices(stub, *names, next_token=None, token=None):
    params = {"thingGroupArn": GROUP_ARN}
    if token:
        params["nextToken"] = token
    response = {"coreDevices": [{"coreDeviceThingName": n, "status": "HEALTHY"} for n in names]}
    if next_token:
        response["nextToken"] = next_token
    stub.add_response("list_core_devices", response, params)


def device_reports(stub, device, state=None, reason="", deployment_id="d-new"):
    effective = []
    if state is not None:
        effective.append({"deploymentId": deployment_id, "deploymentName": "neo-edge-digits-fleet",
                          "targetArn": GROUP_ARN, "coreDeviceExecutionStatus": state,
                          "reason": reason, "creationTimestamp": NOW, "modifiedTimestamp": NOW})
    effective.append({"deploymentId": "d-old", "deploymentName": "neo-edge-digits-fleet",
                      "targetArn": GROUP_ARN, "coreDeviceExecutionStatus": "SUCCEEDED",
                      "creationTimestamp": NOW, "modifiedTimestamp": NOW})
    stub.add_response("list_effective_deployments", {"effectiveDeployments": effective},
                      {"coreDeviceThingName": device})


def test_status_in_progress_while_devices_are_pending(manager, stub):
    deployment_is(stub, "ACTIVE")
    devices(stub, "core-1", "core-2", "core-3")
    device_reports(stub, "core-1", "SUCCEEDED")
    device_reports(stub, "core-2", "IN_PROGRESS")
    device_reports(stub, "core-3")  # has not heard of it yet

    out = manager.handler({"action": "status", "deployment_id": "d-new"}, context())

    assert out["status"] == "IN_PROGRESS" and out["done"] is False
    assert (out["total"], out["succeeded"], out["failed"], out["pending"]) == (3, 1, 0, 2)
    assert out["pending_devices"] == ["core-2", "core-3"]


def test_status_waits_while_the_group_has_no_core_device(manager, stub):
    deployment_is(stub, "ACTIVE")
    devices(stub)

    out = manager.handler({"action": "status", "deployment_id": "d-new"}, context())

    assert out["status"] == "WAITING_FOR_DEVICES" and out["done"] is False
    assert out["total"] == 0


def test_status_succeeded_when_every_device_succeeded(manager, stub):
    deployment_is(stub, "ACTIVE")
    devices(stub, "core-1", next_token="page-2")
    devices(stub, "core-2", token="page-2")
    device_reports(stub, "core-1", "SUCCEEDED")
    device_reports(stub, "core-2", "COMPLETED")

    out = manager.handler({"action": "status", "deployment_id": "d-new"}, context())

    assert out["status"] == "SUCCEEDED" and out["done"] is True
    assert (out["total"], out["succeeded"]) == (2, 2)


def test_fails_when_a_device_failed(manager, stub):
    deployment_is(stub, "ACTIVE")
    devices(stub, "core-1", "core-2")
    device_reports(stub, "core-1", "SUCCEEDED")
    device_reports(stub, "core-2", "FAILED", reason="component com.example.Digits broke")

    with pytest.raises(manager.DeploymentFailedError,
                       match=r"deployment d-new failed on 1 of 2 devices, more than the 0 % allowed "
                             r"\(core-2: FAILED component com.example.Digits broke\)"):
        manager.handler({"action": "status", "deployment_id": "d-new"}, context())


def test_failures_within_the_threshold_are_tolerated(env, load_lambda, monkeypatch):
    monkeypatch.setenv("FAILURE_THRESHOLD_PERCENT", "50")
    manager = load_lambda("deployment_manager")
    with Stubber(manager.greengrass) as stub:
        deployment_is(stub, "ACTIVE")
        devices(stub, "core-1", "core-2")
        device_reports(stub, "core-1", "SUCCEEDED")
        device_reports(stub, "core-2", "TIMED_OUT")
        out = manager.handler({"action": "status", "deployment_id": "d-new"}, context())
    assert out["done"] is True and out["failed_devices"] == [
        {"device": "core-2", "status": "TIMED_OUT", "reason": ""}]


def test_fails_when_the_deployment_failed(manager, stub):
    deployment_is(stub, "FAILED")
    with pytest.raises(manager.DeploymentFailedError,
                       match=f"deployment d-new to {GROUP_ARN} FAILED"):
        manager.handler({"action": "status", "deployment_id": "d-new"}, context())


@pytest.mark.parametrize(("state", "message"), [
    ("CANCELED", "deployment d-new was CANCELED"),
    ("INACTIVE", "deployment d-new is INACTIVE: a newer deployment"),
])
def test_fails_when_the_deployment_was_canceled_or_replaced(manager, stub, state, message):
    deployment_is(stub, state)
    with pytest.raises(manager.DeploymentCanceledError, match=message):
        manager.handler({"action": "status", "deployment_id": "d-new"}, context())


def test_status_throttled_is_retryable(manager, stub):
    stub.add_client_error("get_deployment", service_error_code="ThrottlingException",
                          http_status_code=429)
    with pytest.raises(manager.RetryableError):
        manager.handler({"action": "status", "deployment_id": "d-new"}, context())


def test_status_of_a_single_core_device_target(env, load_lambda, monkeypatch):
    monkeypatch.setenv("TARGET_ARN", "arn:aws:iot:us-east-1:123456789012:thing/core-9")
    manager = load_lambda("deployment_manager")
    with Stubber(manager.greengrass) as stub:
        deployment_is(stub, "ACTIVE")
        device_reports(stub, "core-9", "SUCCEEDED")
        out = manager.handler({"action": "status", "deployment_id": "d-new"}, context())
    assert out["done"] is True and out["total"] == 1


# --- configuration -------------------------------------------------------------------


def test_fails_when_the_target_is_missing(env, load_lambda, monkeypatch):
    monkeypatch.delenv("TARGET_ARN")
    with pytest.raises(RuntimeError, match="environment variable TARGET_ARN is not set"):
        load_lambda("deployment_manager")


@pytest.mark.parametrize(("name", "value", "message"), [
    ("TARGET_ARN", "arn:aws:s3:::bucket", "TARGET_ARN must be an IoT thing group or thing ARN; "
                                          "got 'arn:aws:s3:::bucket'"),
    ("FAILURE_HANDLING_POLICY", "RETRY", "FAILURE_HANDLING_POLICY must be one of ROLLBACK, "
                                         "DO_NOTHING; got 'RETRY'"),
    ("FAILURE_THRESHOLD_PERCENT", "150", "FAILURE_THRESHOLD_PERCENT must be a number from 0 to "
                                         "100; got '150'"),
    ("COMPONENT_UPDATE_TIMEOUT_SECONDS", "soon", "COMPONENT_UPDATE_TIMEOUT_SECONDS must be a "
                                                 "number from 1 to 86400; got 'soon'"),
    ("IOT_JOB_CONFIGURATION", "[1]", r"IOT_JOB_CONFIGURATION must be a JSON object; got '\[1\]'"),
    ("IOT_JOB_CONFIGURATION", "{", "IOT_JOB_CONFIGURATION must be a JSON object; got '{'"),
])
def test_fails_when_a_setting_is_malformed(env, load_lambda, monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(RuntimeError, match=message):
        load_lambda("deployment_manager")
