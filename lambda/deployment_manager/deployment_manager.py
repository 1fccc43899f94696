"""Deploy component versions to the fleet through Greengrass V2, and follow the deployment.

Two actions, for a Step Functions polling loop (``deploy``, then ``Wait`` -> ``status`` ->
``Choice`` on ``done``):

``{"action": "deploy", "component_name": "com.example.Digits", "component_version": "1.0.7"}``
    Creates a deployment to ``$TARGET_ARN`` (the fleet's thing group). A thing group has one
    deployment at a time and a new one *replaces* it: a component left out is removed from
    every device. So the components of the target's current deployment are kept and the ones
    named here are added or moved to the given version (``"keep_existing_components": false``
    deploys exactly what is named); when the latest deployment was canceled, the newest one
    before it that was not gives the components to keep. Several components may be given as
    ``"components": {"name": {"componentVersion": ..., "configurationUpdate": {...}}}``
    (the ``CreateDeployment`` shape). The request carries a client token derived from the
    target, the components and the optional ``"request_token"`` (pass
    ``$$.Execution.Name``): a retried step does not create a second deployment.
    Returns ``{"deployment_id", "iot_job_id", "target_arn", "components", "done": false}``.

``{"action": "status", "deployment_id": "..."}``
    Reads the deployment (``GetDeployment``) and, for each core device of the thing group
    (``ListCoreDevices``), its execution of this deployment (``ListEffectiveDeployments``).
    Returns ``{"deployment_id", "status": "IN_PROGRESS" | "SUCCEEDED" | "WAITING_FOR_DEVICES",
    "done", "total", "succeeded", "failed", "pending", "failed_devices": [...],
    "pending_devices": [...]}``. A device that has not reported the deployment yet (offline,
    queued) is pending, and a thing group with no core device is waited on
    (``WAITING_FOR_DEVICES``, never ``SUCCEEDED``): bound the loop with the state machine's
    own timeout.

Errors a state machine catches by name:

- :class:`DeploymentFailedError`: the deployment is ``FAILED``, or more devices failed
  (``FAILED``, ``TIMED_OUT``, ``REJECTED``, ``CANCELED`` on the device) than
  ``$FAILURE_THRESHOLD_PERCENT`` allows; Greengrass has rolled those devices back when the
  failure handling policy is ``ROLLBACK`` (the default here).
- :class:`DeploymentCanceledError`: the deployment was canceled, or a newer deployment to the
  target replaced it (``INACTIVE``) before it finished.
- :class:`RetryableError`: Greengrass throttled the call, had an internal error, or a request
  with the same client token is still in progress; retry the step with back-off.
- :class:`InvalidRequestError`: the event is malformed; do not retry.

Environment variables
---------------------
TARGET_ARN
    Required. The thing group (or thing) ARN deployments go to.
DEPLOYMENT_NAME
    Optional. Default: ``neo-edge-<thing group name>``.
FAILURE_HANDLING_POLICY
    Optional, ``ROLLBACK`` or ``DO_NOTHING``. Default: ``ROLLBACK``.
COMPONENT_UPDATE_TIMEOUT_SECONDS
    Optional. How long running components get to reach a safe point
    (``NOTIFY_COMPONENTS``). Default: ``60``.
IOT_JOB_CONFIGURATION
    Optional, JSON in the ``DeploymentIoTJobConfiguration`` shape (rollout rate, abort
    criteria, timeout). Default: exponential rollout from 5 devices a minute (x2 after 5
    successes), abort when 10 % of at least 10 devices fail, 60 minutes per device.
FAILURE_THRESHOLD_PERCENT
    Optional, 0-100. The share of failed devices ``status`` tolerates. Default: ``0``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

__all__ = ["ConfigurationError", "DeploymentCanceledError", "DeploymentFailedError",
           "InvalidRequestError", "RetryableError", "handler"]

DEFAULT_IOT_JOB_CONFIGURATION: dict[str, Any] = {
    "jobExecutionsRolloutConfig": {
        "exponentialRate": {"baseRatePerMinute": 5, "incrementFactor": 2.0,
                            "rateIncreaseCriteria": {"numberOfSucceededThings": 5}},
        "maximumPerMinute": 100,
    },
    "abortConfig": {"criteriaList": [{"failureType": "ALL", "action": "CANCEL",
                                      "thresholdPercentage": 10.0,
                                      "minNumberOfExecutedThings": 10}]},
    "timeoutConfig": {"inProgressTimeoutInMinutes": 60},
}

SUCCEEDED = ("SUCCEEDED", "COMPLETED")
FAILED = ("FAILED", "TIMED_OUT", "REJECTED", "CANCELED")
_RETRYABLE = ("ThrottlingException", "InternalServerException",
              "RequestAlreadyInProgressException", "ServiceUnavailableException")


class ConfigurationError(RuntimeError):
    """An environment variable the function needs is missing or malformed."""


class InvalidRequestError(ValueError):
    """The event asks for something this function cannot do."""


class RetryableError(RuntimeError):
    """Greengrass refused the call for now (throttled, busy, internal error): retry later."""


class DeploymentFailedError(RuntimeError):
    """The deployment failed, or more devices failed than the threshold allows."""


class DeploymentCanceledError(RuntimeError):
    """The deployment was canceled or replaced by a newer one before it finished."""


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"environment variable {name} is not set; deployment_manager "
                                 f"needs it (see the module docstring)")
    return value


def _json_env(name: str, default: dict[str, Any]) -> dict[str, Any]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ConfigurationError(f"environment variable {name} must be a JSON object; "
                                 f"got {raw!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise ConfigurationError(f"environment variable {name} must be a JSON object; got {raw!r}")
    return value


@dataclass(frozen=True)
class Settings:
    """What the environment configures; read once, at import (a cold start)."""

    target_arn: str
    deployment_name: str
    failure_handling_policy: str
    component_update_timeout: int
    iot_job_configuration: dict[str, Any]
    failure_threshold_percent: float

    @classmethod
    def from_environment(cls) -> Settings:
        target = _required("TARGET_ARN")
        if ":thinggroup/" not in target and ":thing/" not in target:
            raise ConfigurationError("environment variable TARGET_ARN must be an IoT thing group "
                                     f"or thing ARN; got {target!r}")
        policy = os.environ.get("FAILURE_HANDLING_POLICY", "").strip() or "ROLLBACK"
        if policy not in ("ROLLBACK", "DO_NOTHING"):
            raise ConfigurationError("environment variable FAILURE_HANDLING_POLICY must be one of "
                                     f"ROLLBACK, DO_NOTHING; got {policy!r}")
        numbers = {}
        for name, default, low, high in (("COMPONENT_UPDATE_TIMEOUT_SECONDS", "60", 1, 86400),
                                         ("FAILURE_THRESHOLD_PERCENT", "0", 0, 100)):
            raw = os.environ.get(name, "").strip() or default
            try:
                numbers[name] = float(raw)
            except ValueError:
                numbers[name] = float("nan")
            if not low <= numbers[name] <= high:
                raise ConfigurationError(f"environment variable {name} must be a number from "
                                         f"{low} to {high}; got {raw!r}")
        return cls(
            target_arn=target,
            deployment_name=(os.environ.get("DEPLOYMENT_NAME", "").strip()
                             or f"neo-edge-{target.rsplit('/', 1)[-1]}"),
            failure_handling_policy=policy,
            component_update_timeout=int(numbers["COMPONENT_UPDATE_TIMEOUT_SECONDS"]),
            iot_job_configuration=_json_env("IOT_JOB_CONFIGURATION", DEFAULT_IOT_JOB_CONFIGURATION),
            failure_threshold_percent=numbers["FAILURE_THRESHOLD_PERCENT"],
        )


settings = Settings.from_environment()
logger = Logger()
greengrass = boto3.client("greengrassv2")


def _call(operation: str, **kwargs: Any) -> dict[str, Any]:
    """Call Greengrass, turning its transient refusals into :class:`RetryableError`."""
    try:
        return getattr(greengrass, operation)(**kwargs)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in _RETRYABLE:
            raise RetryableError(f"greengrass {operation} was refused for now ({code}): "
                                 f"{exc.response['Error'].get('Message', '')}") from exc
        raise


def _requested_components(event: dict[str, Any]) -> dict[str, dict[str, Any]]:
    components: dict[str, dict[str, Any]] = {}
    given = event.get("components")
    if given is not None:
        if not isinstance(given, dict) or not given:
            raise InvalidRequestError("components must be a non-empty mapping of component name "
                                      f"to {{'componentVersion': ...}}; got {given!r}")
        for name, spec in given.items():
            if not isinstance(spec, dict) or not isinstance(spec.get("componentVersion"), str):
                raise InvalidRequestError(f"component {name!r} needs a componentVersion string; "
                                          f"got {spec!r}")
            components[name] = dict(spec)
    name, version = event.get("component_name"), event.get("component_version")
    if name is not None or version is not None:
        if not isinstance(name, str) or not name or not isinstance(version, str) or not version:
            raise InvalidRequestError("component_name and component_version must both be "
                                      f"non-empty strings; got {name!r} and {version!r}")
        spec = {"componentVersion": version}
        if isinstance(event.get("configuration_merge"), dict):
            spec["configurationUpdate"] = {"merge": json.dumps(event["configuration_merge"])}
        components[name] = spec
    if not components:
        raise InvalidRequestError("a deploy request names its components: component_name and "
                                  "component_version, or components; got neither")
    return components


def _deployments(history: str, token: str | None = None) -> dict[str, Any]:
    return _call("list_deployments", targetArn=settings.target_arn, historyFilter=history,
                 **({"nextToken": token} if token else {}))


def _current_components() -> dict[str, dict[str, Any]]:
    """The components the target's devices were last sent (none when it never had any).

    Those of the target's latest deployment, unless it was canceled: a canceled deployment
    reached part of the fleet at most, so its components are not what the fleet runs, and
    the newest deployment before it that was not canceled gives them instead. (Taking none
    would deploy only the requested components and uninstall every other one.)
    """
    latest = [d for d in _deployments("LATEST_ONLY").get("deployments", [])
              if d.get("isLatestForTarget", True)]
    if not latest:
        return {}
    if latest[0].get("deploymentStatus") != "CANCELED":
        chosen = latest[0]
    else:
        history: list[dict[str, Any]] = []
        token = None
        while True:
            page = _deployments("ALL", token)
            history.extend(d for d in page.get("deployments", [])
                           if d.get("deploymentStatus") != "CANCELED")
            token = page.get("nextToken")
            if not token:
                break
        if not history:
            return {}
        chosen = max(history, key=lambda d: d["creationTimestamp"])
    current = _call("get_deployment", deploymentId=chosen["deploymentId"])
    return {name: dict(spec) for name, spec in (current.get("components") or {}).items()}


def deploy(event: dict[str, Any]) -> dict[str, Any]:
    requested = _requested_components(event)
    keep = event.get("keep_existing_components", True)
    if not isinstance(keep, bool):
        raise InvalidRequestError(f"keep_existing_components must be true or false; got {keep!r}")
    components = _current_components() if keep else {}
    kept = sorted(set(components) - set(requested))
    components.update(requested)
    policies = {
        "failureHandlingPolicy": settings.failure_handling_policy,
        "componentUpdatePolicy": {"action": "NOTIFY_COMPONENTS",
                                  "timeoutInSeconds": settings.component_update_timeout},
        "configurationValidationPolicy": {"timeoutInSeconds": settings.component_update_timeout},
    }
    identity = json.dumps([settings.target_arn, components, policies,
                           settings.iot_job_configuration, event.get("request_token")],
                          sort_keys=True)
    response = _call(
        "create_deployment",
        targetArn=settings.target_arn,
        deploymentName=settings.deployment_name,
        components=components,
        deploymentPolicies=policies,
        iotJobConfiguration=settings.iot_job_configuration,
        clientToken=hashlib.sha256(identity.encode()).hexdigest()[:64],
    )
    logger.info("deployment created", extra={"deployment_id": response.get("deploymentId"),
                                             "components": components, "kept": kept})
    return {
        "deployment_id": response["deploymentId"],
        "iot_job_id": response.get("iotJobId"),
        "target_arn": settings.target_arn,
        "components": {name: spec["componentVersion"] for name, spec in sorted(components.items())},
        "kept_components": kept,
        "done": False,
    }


def _core_devices() -> list[str]:
    if ":thing/" in settings.target_arn:
        return [settings.target_arn.rsplit("/", 1)[-1]]
    names: list[str] = []
    token = None
    while True:
        page = _call("list_core_devices", thingGroupArn=settings.target_arn,
                     **({"nextToken": token} if token else {}))
        names.extend(d["coreDeviceThingName"] for d in page.get("coreDevices", []))
        token = page.get("nextToken")
        if not token:
            return names


def _device_execution(device: str, deployment_id: str) -> dict[str, Any] | None:
    token = None
    while True:
        page = _call("list_effective_deployments", coreDeviceThingName=device,
                     **({"nextToken": token} if token else {}))
        for effective in page.get("effectiveDeployments", []):
            if effective["deploymentId"] == deployment_id:
                return effective
        token = page.get("nextToken")
        if not token:
            return None


def status(event: dict[str, Any]) -> dict[str, Any]:
    deployment_id = event.get("deployment_id")
    if not isinstance(deployment_id, str) or not deployment_id:
        raise InvalidRequestError(f"a status request needs deployment_id; got {deployment_id!r}")
    deployment = _call("get_deployment", deploymentId=deployment_id)
    state = deployment.get("deploymentStatus")
    if state == "FAILED":
        raise DeploymentFailedError(f"deployment {deployment_id} to {settings.target_arn} FAILED")
    if state == "CANCELED":
        raise DeploymentCanceledError(f"deployment {deployment_id} was CANCELED")
    if state == "INACTIVE":
        raise DeploymentCanceledError(f"deployment {deployment_id} is INACTIVE: a newer deployment "
                                      f"to {settings.target_arn} replaced it")

    succeeded, failed, pending = [], [], []
    for device in _core_devices():
        execution = _device_execution(device, deployment_id)
        device_state = execution["coreDeviceExecutionStatus"] if execution else "NOT_STARTED"
        if device_state in SUCCEEDED:
            succeeded.append(device)
        elif device_state in FAILED:
            failed.append({"device": device, "status": device_state,
                           "reason": (execution or {}).get("reason", "")})
        else:
            pending.append(device)
    total = len(succeeded) + len(failed) + len(pending)
    out = {
        "deployment_id": deployment_id, "target_arn": settings.target_arn,
        "deployment_status": state, "total": total, "succeeded": len(succeeded),
        "failed": len(failed), "pending": len(pending),
        "failed_devices": failed, "pending_devices": pending,
    }
    logger.info("deployment status", extra=out)
    if failed and 100.0 * len(failed) / total > settings.failure_threshold_percent:
        details = "; ".join(f"{f['device']}: {f['status']} {f['reason']}".strip() for f in failed)
        raise DeploymentFailedError(
            f"deployment {deployment_id} failed on {len(failed)} of {total} devices, more than "
            f"the {settings.failure_threshold_percent:g} % allowed ({details})")
    if not total:
        # Nothing has confirmed the deployment: a thing group with no core device yet is
        # waited on (the state machine's timeout bounds it), never reported succeeded.
        out.update(status="WAITING_FOR_DEVICES", done=False)
        return out
    done = state == "COMPLETED" or not pending
    out.update(status="SUCCEEDED" if done else "IN_PROGRESS", done=done)
    return out


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Dispatch on ``event["action"]``: ``deploy`` or ``status`` (see the module docstring)."""
    if not isinstance(event, dict):
        raise InvalidRequestError(f"event must be a JSON object; got {type(event).__name__}")
    action = event.get("action", "deploy")
    if action == "deploy":
        return deploy(event)
    if action == "status":
        return status(event)
    raise InvalidRequestError(f"action must be one of deploy, status; got {action!r}")
