"""Publish a Greengrass V2 component version for freshly compiled models.

A step of the retraining pipeline, after the compilation jobs. Two actions, for a Step
Functions polling loop (``publish``, then ``Wait`` -> ``status`` -> ``Choice`` on ``done``):

``{"action": "publish", "targets": [{"target": "rasp4b", "model_uri": "s3://.../model.tar.gz"}, ...]}``
    Builds the inference component's recipe with the same builder the CDK constructs and
    local mode use (``neo_edge_runtime.compile.recipe.inference_recipe``; the function's asset
    bundles ``neo_edge_runtime``): one manifest per target, each with the compiled model and
    the device bundle of the edge runtime for that platform, and calls
    ``CreateComponentVersion`` with it inline. ``targets`` may also be a mapping
    ``{"rasp4b": "s3://..."}``. Each target's device bundle is, first found: the entry's
    ``runtime_uri``; ``runtime_uris[<target name>]``; ``runtime_uris[<platform
    architecture>]`` (``aarch64``, ``amd64``, ``arm``, or ``aarch64-nvidia``/``amd64-nvidia``
    for CUDA targets, whose bundle carries the CUDA runtime); ``runtime_uri`` - each looked up in
    the event, then in ``$RUNTIME_URIS``. For devices without access to the package index,
    the wheels of the device requirements (a ``.zip``, see ``EdgeInferenceComponent``'s
    ``device_wheels``) are found the same way in ``wheels_uri``/``wheels_uris`` and
    ``$WHEELS_URIS``; without them the install step uses the package index, as a component
    made without ``device_wheels`` does. Optional: ``model_sha256``/``runtime_sha256`` per
    entry, ``configuration`` (inference configuration overrides), ``component_version``,
    ``description``.

    The version, when not given, is derived from the recipe and from each artifact's S3
    version id (or ETag), read with ``HeadObject``: publishing the same artifacts again gives
    the same version, and Greengrass' ``ConflictException`` for it means the work is already
    done (success); new artifacts at the same keys give a new version. The client token is
    derived from the recipe, so a retried step does not race itself.
    Returns ``{"component_arn", "component_name", "component_version", "state", "done",
    "recipe"}``.

``{"action": "status", "component_arn": "..."}``
    ``DescribeComponent``: ``done`` once the version is ``DEPLOYABLE`` (Greengrass has read
    and digested every artifact).

Errors a state machine catches by name:

- :class:`ComponentVersionFailedError`: Greengrass marked the version ``FAILED`` (typically
  an artifact it could not read); the message carries its reasons.
- :class:`ComponentVersionConflictError`: an explicitly given version already exists with
  other content; pick another version.
- :class:`RetryableError`: throttled, internal error, or the same request still in progress.
- :class:`InvalidRequestError`: the event is malformed, an artifact cannot be read, or the
  recipe builder refused the inputs; do not retry.

Environment variables
---------------------
COMPONENT_NAME
    Required. The component this function publishes versions of (its IAM policy is scoped to
    it).
RUNTIME_URIS
    Optional, a JSON object: device bundle URI by target name or platform architecture.
    Default: the event must name them.
WHEELS_URIS
    Optional, a JSON object: device wheels URI by target name or platform architecture.
    Default: none (devices install their requirements from the package index).
INFERENCE_CONFIGURATION
    Optional, a JSON object of inference configuration overrides (``inputTopic``,
    ``topicPrefix``, ``threadCount``). Default: the recipe builder's.
COMPONENT_DESCRIPTION
    Optional. Default: the recipe builder's.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from typing import Any, Optional

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError
from neo_edge_runtime.compile import recipe as recipes
from neo_edge_runtime import targets as neo_targets
from neo_edge_runtime.errors import NeoEdgeError

__all__ = ["ComponentVersionConflictError", "ComponentVersionFailedError", "ConfigurationError",
           "InvalidRequestError", "RetryableError", "handler"]

_RETRYABLE = ("ThrottlingException", "InternalServerException",
              "RequestAlreadyInProgressException", "ServiceUnavailableException")


class ConfigurationError(RuntimeError):
    """An environment variable the function needs is missing or malformed."""


class InvalidRequestError(ValueError):
    """The event asks for something this function cannot do."""


class RetryableError(RuntimeError):
    """Greengrass refused the call for now (throttled, busy, internal error): retry later."""


class ComponentVersionFailedError(RuntimeError):
    """Greengrass could not make the component version deployable."""


class ComponentVersionConflictError(RuntimeError):
    """The explicitly requested component version already exists."""


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"environment variable {name} is not set; component_publisher "
                                 f"needs it (see the module docstring)")
    return value


def _json_env(name: str) -> dict[str, Any]:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return {}
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

    component_name: str
    runtime_uris: dict[str, Any]
    wheels_uris: dict[str, Any]
    configuration: dict[str, Any]
    description: str

    @classmethod
    def from_environment(cls) -> Settings:
        return cls(
            component_name=_required("COMPONENT_NAME"),
            runtime_uris=_json_env("RUNTIME_URIS"),
            wheels_uris=_json_env("WHEELS_URIS"),
            configuration=_json_env("INFERENCE_CONFIGURATION"),
            description=os.environ.get("COMPONENT_DESCRIPTION", "").strip(),
        )


settings = Settings.from_environment()
logger = Logger()
greengrass = boto3.client("greengrassv2")
s3 = boto3.client("s3")


def _call(operation: str, **kwargs: Any) -> dict[str, Any]:
    try:
        return getattr(greengrass, operation)(**kwargs)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        if code in _RETRYABLE:
            raise RetryableError(f"greengrass {operation} was refused for now ({code}): "
                                 f"{exc.response['Error'].get('Message', '')}") from exc
        raise


def _target_entries(event: dict[str, Any]) -> list[dict[str, Any]]:
    given = event.get("targets")
    if isinstance(given, dict):
        given = [{"target": name, "model_uri": uri} for name, uri in given.items()]
    if not isinstance(given, list) or not given:
        raise InvalidRequestError("targets must be a non-empty list of {'target': ..., "
                                  f"'model_uri': 's3://...'}} or a mapping; got {given!r}")
    for entry in given:
        if (not isinstance(entry, dict) or not isinstance(entry.get("target"), str)
                or not isinstance(entry.get("model_uri"), str)):
            raise InvalidRequestError("each target needs 'target' and 'model_uri' strings; "
                                      f"got {entry!r}")
    return given


def _lookup(kind: str, configured: dict[str, Any], event: dict[str, Any],
            entry: dict[str, Any], platform: dict[str, str]) -> Optional[str]:
    """``<kind>_uri`` of the entry; else ``<kind>_uris[target or architecture]`` of the
    event, then of the environment; else ``<kind>_uri`` of the event, then of the
    environment."""
    single, many = f"{kind}_uri", f"{kind}_uris"
    if entry.get(single):
        return entry[single]
    # A CUDA build of the runtime for an accelerator platform: "aarch64-nvidia".
    arch_key = "-".join(filter(None, (platform["architecture"], platform.get("accelerator"))))
    for source in (event.get(many) or {}, configured):
        for key in (entry["target"], arch_key):
            if source.get(key):
                return source[key]
    for source in (event, configured):
        if source.get(single):
            return source[single]
    return None


def _runtime_uri(event: dict[str, Any], entry: dict[str, Any], platform: dict[str, str]) -> str:
    uri = _lookup("runtime", settings.runtime_uris, event, entry, platform)
    if uri is None:
        arch_key = "-".join(filter(None, (platform["architecture"], platform.get("accelerator"))))
        raise InvalidRequestError(f"no device bundle for target {entry['target']!r} (architecture "
                                  f"{arch_key!r}): give runtime_uri, or runtime_uris keyed by "
                                  f"target name or architecture, in the event or RUNTIME_URIS")
    return uri


def _platforms(event: dict[str, Any]) -> list[recipes.PlatformArtifacts]:
    platforms = []
    for entry in _target_entries(event):
        try:
            platform = neo_targets.resolve(entry["target"]).greengrass_platform
        except NeoEdgeError as exc:
            raise InvalidRequestError(str(exc)) from None
        runtime_uri = _runtime_uri(event, entry, platform)
        if not runtime_uri.endswith(".zip"):
            raise InvalidRequestError(f"the device bundle of target {entry['target']!r} must be a "
                                      f".zip; got {runtime_uri!r}")
        model_uri = entry["model_uri"]
        wheels_uri = _lookup("wheels", settings.wheels_uris, event, entry, platform)
        if wheels_uri is not None and not wheels_uri.endswith(".zip"):
            raise InvalidRequestError(f"the device wheels of target {entry['target']!r} must be "
                                      f"a .zip; got {wheels_uri!r}")
        try:
            platforms.append(recipes.PlatformArtifacts(
                platform=platform, name=entry["target"],
                model=recipes.Artifact(uri=model_uri, sha256=entry.get("model_sha256"),
                                       unarchive="ZIP" if model_uri.endswith(".zip") else "NONE"),
                runtime=recipes.Artifact(uri=runtime_uri, sha256=entry.get("runtime_sha256"),
                                         unarchive="ZIP"),
                wheels=recipes.Artifact(uri=wheels_uri, unarchive="ZIP") if wheels_uri else None,
            ))
        except NeoEdgeError as exc:
            raise InvalidRequestError(f"target {entry['target']!r}: {exc}") from None
    return platforms


def _object_identity(uri: str) -> str:
    """The S3 version id (or ETag) of an artifact: what makes its content this content."""
    bucket, _, key = uri[len("s3://"):].partition("/")
    try:
        head = s3.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response["Error"]["Code"]
        raise InvalidRequestError(f"artifact {uri} cannot be read ({code}); Greengrass could not "
                                  f"read it either") from None
    return head.get("VersionId") or head.get("ETag", "")


def _fingerprint(platforms: list[recipes.PlatformArtifacts], event: dict[str, Any]) -> list[Any]:
    if event.get("fingerprint") is not None:
        return [event["fingerprint"]]
    uris = sorted({a.uri for p in platforms for a in (p.model, p.runtime, p.wheels)
                   if a is not None and a.uri.startswith("s3://")})
    return [[uri, _object_identity(uri)] for uri in uris]


def _component_arn(context: LambdaContext, version: str) -> str:
    # arn:<partition>:lambda:<region>:<account>:function:<name>
    _, partition, _, region, account, *_ = context.invoked_function_arn.split(":")
    return (f"arn:{partition}:greengrass:{region}:{account}:components:"
            f"{settings.component_name}:versions:{version}")


def _outcome(arn: str, version: str, status: dict[str, Any]) -> dict[str, Any]:
    state = status.get("componentState", "REQUESTED")
    if state == "FAILED":
        reasons = "; ".join(f"{k}: {v}" for k, v in sorted((status.get("errors") or {}).items()))
        raise ComponentVersionFailedError(
            f"component {settings.component_name} {version} is FAILED: "
            f"{status.get('message', '')}{' (' + reasons + ')' if reasons else ''}")
    return {"component_arn": arn, "component_name": settings.component_name,
            "component_version": version, "state": state, "done": state == "DEPLOYABLE"}


def publish(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    platforms = _platforms(event)
    configuration = {**settings.configuration, **(event.get("configuration") or {})}
    explicit = event.get("component_version")
    try:
        recipe = recipes.inference_recipe(
            component_name=settings.component_name, platforms=platforms,
            component_version=explicit, configuration=configuration,
            description=event.get("description") or settings.description,
            version_fingerprint=_fingerprint(platforms, event) if explicit is None else ())
    except NeoEdgeError as exc:
        raise InvalidRequestError(f"the recipe builder refused the inputs: {exc}") from None
    version = recipe["ComponentVersion"]
    body = recipes.recipe_json(recipe).encode("utf-8")
    try:
        response = _call("create_component_version", inlineRecipe=body,
                         clientToken=hashlib.sha256(body).hexdigest()[:64])
    except ClientError as exc:
        if exc.response["Error"]["Code"] != "ConflictException":
            raise
        if explicit is not None:
            raise ComponentVersionConflictError(
                f"component {settings.component_name} version {version} already exists; "
                f"give a new component_version, or none to derive it from the content") from None
        # Derived from the content: the same content was published before.
        arn = _component_arn(context, version)
        logger.info("component version already published", extra={"arn": arn})
        out = _outcome(arn, version, _call("describe_component", arn=arn).get("status", {}))
        return {**out, "recipe": recipe}
    arn = response.get("arn") or _component_arn(context, version)
    logger.info("component version created", extra={"arn": arn, "status": response["status"]})
    return {**_outcome(arn, version, response["status"]), "recipe": recipe}


def status(event: dict[str, Any]) -> dict[str, Any]:
    arn = event.get("component_arn")
    if not isinstance(arn, str) or ":components:" not in arn:
        raise InvalidRequestError(f"a status request needs component_arn; got {arn!r}")
    described = _call("describe_component", arn=arn)
    return _outcome(arn, described.get("componentVersion", arn.rsplit(":", 1)[-1]),
                    described.get("status", {}))


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Dispatch on ``event["action"]``: ``publish`` or ``status`` (see the module docstring)."""
    if not isinstance(event, dict):
        raise InvalidRequestError(f"event must be a JSON object; got {type(event).__name__}")
    action = event.get("action", "publish")
    if action == "publish":
        return publish(event, context)
    if action == "status":
        return status(event)
    raise InvalidRequestError(f"action must be one of publish, status; got {action!r}")
