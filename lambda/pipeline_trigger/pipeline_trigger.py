"""Start the retraining pipeline when new training data (or a new model) lands in S3.

Invoked by an S3 event notification (``{"Records": [...]}``) or by an EventBridge rule on
S3 ``Object Created`` events; each created object is one candidate:

- under ``$TRAINING_PREFIX``: new training data, the pipeline runs from training;
- under ``$MODEL_PREFIX`` (when set): a model trained elsewhere, the pipeline skips training
  and starts at compilation;
- anything else, any key under one of ``$IGNORE_PREFIXES`` (the pipeline's own outputs:
  model artifacts, compiled models, results), and, when ``$TRIGGER_SUFFIXES`` is set, any key
  not ending in one of them, is ignored. The pipeline writing its outputs therefore never
  starts it again.

Each start is ``StartExecution`` on ``$STATE_MACHINE_ARN`` with an execution name derived from
the bucket, key and object version (or, in an unversioned bucket, ETag and event sequencer):
S3 delivers an event at least once, and a second delivery of the same event gets
``ExecutionAlreadyExists``, which counts as success. A deliberate re-upload is a new version
(or a new sequencer) and starts a new run.

Execution input::

    {"trigger": "training_data" | "model", "bucket": ..., "key": ..., "version_id": ... | null,
     "etag": ..., "object_uri": "s3://bucket/key",
     "training_data_uri": "s3://bucket/<TRAINING_PREFIX>",   # trigger == "training_data"
     "model_data_uri": "s3://bucket/key"}                    # trigger == "model"

To upload a data set of many files without starting a run per file, set ``TRIGGER_SUFFIXES``
(e.g. ``_SUCCESS,manifest.json``) and write that marker last.

Environment variables
---------------------
STATE_MACHINE_ARN
    Required. The retraining state machine.
TRAINING_PREFIX
    Required. Key prefix of new training data, e.g. ``datasets/train/``.
IGNORE_PREFIXES
    Optional, comma-separated key prefixes never acted on (the pipeline's outputs).
    Default: none (but keys outside ``TRAINING_PREFIX`` and ``MODEL_PREFIX`` are ignored anyway).
MODEL_PREFIX
    Optional. Key prefix of model uploads that skip training. Default: unset, no model trigger.
TRIGGER_SUFFIXES
    Optional, comma-separated key suffixes that start a run. Default: every object does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote_plus

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import S3Event, S3EventBridgeNotificationEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.exceptions import ClientError

__all__ = ["ConfigurationError", "InvalidEventError", "ObjectCreated", "execution_name", "handler"]

#: Step Functions execution names: 1-80 characters, letters, digits, - and _.
_NAME_UNSAFE = re.compile(r"[^0-9A-Za-z_-]+")


class ConfigurationError(RuntimeError):
    """An environment variable the function needs is missing or malformed."""


class InvalidEventError(ValueError):
    """The event is neither an S3 notification nor an EventBridge S3 event."""


def _required(name: str) -> str:
    value = os.environ.get(name, "").strip()
    if not value:
        raise ConfigurationError(f"environment variable {name} is not set; pipeline_trigger "
                                 f"needs it (see the module docstring)")
    return value


def _list(name: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in os.environ.get(name, "").split(",") if p.strip())


@dataclass(frozen=True)
class Settings:
    """What the environment configures; read once, at import (a cold start)."""

    state_machine_arn: str
    training_prefix: str
    model_prefix: str | None
    ignore_prefixes: tuple[str, ...] = field(default_factory=tuple)
    trigger_suffixes: tuple[str, ...] = field(default_factory=tuple)

    @classmethod
    def from_environment(cls) -> Settings:
        settings = cls(
            state_machine_arn=_required("STATE_MACHINE_ARN"),
            training_prefix=_required("TRAINING_PREFIX").lstrip("/"),
            model_prefix=os.environ.get("MODEL_PREFIX", "").strip().lstrip("/") or None,
            ignore_prefixes=tuple(p.lstrip("/") for p in _list("IGNORE_PREFIXES")),
            trigger_suffixes=_list("TRIGGER_SUFFIXES"),
        )
        for name, prefix in (("TRAINING_PREFIX", settings.training_prefix),
                             ("MODEL_PREFIX", settings.model_prefix)):
            for ignored in settings.ignore_prefixes:
                if prefix is not None and prefix.startswith(ignored):
                    raise ConfigurationError(
                        f"{name} {prefix!r} lies under IGNORE_PREFIXES entry {ignored!r}; "
                        f"nothing under it would ever start the pipeline")
        return settings


@dataclass(frozen=True)
class ObjectCreated:
    """One created object, whichever way S3 reported it."""

    bucket: str
    key: str
    etag: str
    version_id: str | None
    sequencer: str


settings = Settings.from_environment()
logger = Logger()
sfn = boto3.client("stepfunctions")


def created_objects(event: dict[str, Any]) -> list[ObjectCreated]:
    """The created objects an S3 notification or EventBridge S3 event reports.

    Other kinds of S3 event (deletions, restores, the ``s3:TestEvent`` S3 sends when a
    notification is configured) report none.
    """
    if not isinstance(event, dict):
        raise InvalidEventError(f"event must be a JSON object; got {type(event).__name__}")
    if "Records" in event:
        objects = []
        for record in S3Event(event).records:
            if not record.event_name.startswith("ObjectCreated:"):
                continue
            obj = record.s3.get_object
            objects.append(ObjectCreated(bucket=record.s3.bucket.name, key=unquote_plus(obj.key),
                                         etag=obj.etag, version_id=obj.version_id,
                                         sequencer=obj.get("sequencer", "")))
        return objects
    if event.get("source") == "aws.s3" and "detail" in event:
        if event.get("detail-type") != "Object Created":
            return []
        detail = S3EventBridgeNotificationEvent(event).detail
        return [ObjectCreated(bucket=detail.bucket.name, key=detail.object.key,
                              etag=detail.object.etag,
                              version_id=detail.object.get("version-id"),
                              sequencer=detail.object.get("sequencer", ""))]
    if event.get("Event") == "s3:TestEvent":
        return []
    raise InvalidEventError("event is neither an S3 notification (Records) nor an EventBridge "
                            f"S3 event (source aws.s3); got keys {sorted(event)}")


def classify(obj: ObjectCreated) -> tuple[str | None, str]:
    """``(trigger, reason)``: the kind of run an object starts, or None and why not."""
    for prefix in settings.ignore_prefixes:
        if obj.key.startswith(prefix):
            return None, f"under ignored prefix {prefix!r}"
    if obj.key.endswith("/"):
        return None, "a folder marker"
    if settings.trigger_suffixes and not obj.key.endswith(settings.trigger_suffixes):
        return None, f"does not end in one of {list(settings.trigger_suffixes)}"
    if obj.key.startswith(settings.training_prefix):
        return "training_data", "new training data"
    if settings.model_prefix is not None and obj.key.startswith(settings.model_prefix):
        return "model", "new model upload"
    return None, "outside the training and model prefixes"


def execution_name(trigger: str, obj: ObjectCreated) -> str:
    """A name that is the same for every delivery of one S3 event, and at most 80 characters."""
    identity = obj.version_id or f"{obj.etag}:{obj.sequencer}"
    digest = hashlib.sha256(f"{obj.bucket}\n{obj.key}\n{identity}".encode()).hexdigest()[:20]
    tail = _NAME_UNSAFE.sub("-", obj.key.rsplit("/", 1)[-1]).strip("-")[:40] or "object"
    prefix = "retrain" if trigger == "training_data" else "model"
    return f"{prefix}-{tail}-{digest}"


def execution_input(trigger: str, obj: ObjectCreated) -> dict[str, Any]:
    body: dict[str, Any] = {
        "trigger": trigger, "bucket": obj.bucket, "key": obj.key,
        "version_id": obj.version_id, "etag": obj.etag,
        "object_uri": f"s3://{obj.bucket}/{obj.key}",
    }
    if trigger == "training_data":
        body["training_data_uri"] = f"s3://{obj.bucket}/{settings.training_prefix}"
    else:
        body["model_data_uri"] = f"s3://{obj.bucket}/{obj.key}"
    return body


@logger.inject_lambda_context
def handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    """Start one pipeline execution per created object that should start one.

    Returns
    -------
    dict
        ``{"started": [...], "already_started": [...], "ignored": [...]}``, each entry naming
        the key (and, for the first two, the execution name).

    Raises
    ------
    InvalidEventError
        The event is not an S3 event.
    botocore.exceptions.ClientError
        ``StartExecution`` failed for a reason other than a duplicate (S3 retries the event;
        executions it already started are then duplicates).
    """
    outcome: dict[str, list[dict[str, Any]]] = {"started": [], "already_started": [], "ignored": []}
    seen: set[str] = set()
    for obj in created_objects(event):
        trigger, reason = classify(obj)
        if trigger is None:
            logger.info("object ignored", extra={"key": obj.key, "reason": reason})
            outcome["ignored"].append({"key": obj.key, "reason": reason})
            continue
        name = execution_name(trigger, obj)
        if name in seen:
            continue
        seen.add(name)
        try:
            response = sfn.start_execution(stateMachineArn=settings.state_machine_arn, name=name,
                                           input=json.dumps(execution_input(trigger, obj),
                                                            sort_keys=True))
        except ClientError as exc:
            if exc.response["Error"]["Code"] != "ExecutionAlreadyExists":
                raise
            logger.info("execution already started", extra={"key": obj.key, "execution": name})
            outcome["already_started"].append({"key": obj.key, "name": name})
            continue
        logger.info("pipeline started", extra={"key": obj.key, "trigger": trigger,
                                               "execution_arn": response["executionArn"]})
        outcome["started"].append({"key": obj.key, "name": name, "trigger": trigger,
                                   "execution_arn": response["executionArn"]})
    return outcome
