"""Deploy-time jobs: the custom-resource handlers behind ``TrainingJob``,
``NeoCompilationJob`` (SageMaker jobs) and ``EdgeCompilationJob`` (a CodeBuild build of
neo-edge's compiler) (CDK Provider framework: ``on_event`` starts, ``is_complete`` polls).

Resource properties, as the constructs write them::

    Kind:          "training" | "compilation"
    JobNamePrefix: "stack-jobname-abcd1234"   (<= 50 characters, [a-zA-Z0-9-])
    Request:       JSON string of the Create*Job request without its job name
    RunId:         optional; part of the name hash only (bump it to rerun the same inputs)

The job name is ``<prefix>-<first 12 hex digits of sha256(kind + canonical request)>``:
a change of any input gives a new job (and CloudFormation then deletes the old
resource), the same inputs give the same job, so a retried create adopts the job it
already started. The physical resource id is the job name.

- Create/Update: start the job unless one of that name exists (then adopt it).
- Delete: stop the job if it is still running; a job that is not there (a stale or
  never-created physical id) is not an error.
- is_complete: ``Completed`` returns the job name, ARN and model artifact URI as
  ``Data``; ``Failed`` raises with SageMaker's ``FailureReason`` (the deployment fails
  with it); ``Stopped`` raises; throttling while polling is "not yet", not a failure.

Kind ``build`` (a CodeBuild build) has other properties::

    Kind:        "build"
    ProjectName: the CodeBuild project
    Request:     JSON string of the StartBuild request without projectName
                 (environmentVariablesOverride, ...)
    OutputUri:   "s3://bucket/prefix/": where the build writes model.tar.gz
    RunId:       optional

Builds cannot be named, so the physical id is the build id CodeBuild gives
(``<project>:<uuid>``); a retried invocation for the same CloudFormation request passes
the same ``idempotencyToken`` (a hash of the request id and the inputs), so CodeBuild
returns the build it already started. ``SUCCEEDED`` returns ``BuildId``, ``BuildArn``,
``ModelArtifacts`` (``<OutputUri>model.tar.gz``) and ``Report``; ``FAILED``, ``FAULT`` and
``TIMED_OUT`` raise with the failed phases' messages and the build log's link; ``STOPPED``
raises; Delete stops a build still in progress.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from typing import Any, Optional

import boto3
from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.data_classes import CloudFormationCustomResourceEvent
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config
from botocore.exceptions import ClientError

logger = Logger()

#: SageMaker job names: ``^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}``.
MAX_JOB_NAME = 63
HASH_LENGTH = 12
MAX_PREFIX = MAX_JOB_NAME - HASH_LENGTH - 1
_PREFIX_RE = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")

#: botocore's standard retry mode backs off on ThrottlingException and friends.
MAX_ATTEMPTS = int(os.environ.get("SAGEMAKER_MAX_ATTEMPTS", "8"))
RETRY_CONFIG = Config(retries={"mode": "standard", "total_max_attempts": MAX_ATTEMPTS})

THROTTLING_CODES = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException",
                              "RequestLimitExceeded", "ProvisionedThroughputExceededException"})

# Per kind: the API names and the describe response's fields.
KINDS: dict[str, dict[str, str]] = {
    "training": {
        "label": "training job", "name_key": "TrainingJobName", "arn_key": "TrainingJobArn",
        "status_key": "TrainingJobStatus", "create": "create_training_job",
        "describe": "describe_training_job", "stop": "stop_training_job",
        "completed": "Completed", "failed": "Failed", "stopped": "Stopped",
        "running": "InProgress",
    },
    "compilation": {
        "label": "compilation job", "name_key": "CompilationJobName",
        "arn_key": "CompilationJobArn", "status_key": "CompilationJobStatus",
        "create": "create_compilation_job", "describe": "describe_compilation_job",
        "stop": "stop_compilation_job", "completed": "COMPLETED", "failed": "FAILED",
        "stopped": "STOPPED", "running": "INPROGRESS STARTING",
    },
}

_client_cache: Optional[Any] = None
_codebuild_cache: Optional[Any] = None

BUILD_KIND = "build"
#: CodeBuild's ``buildStatus`` values (botocore: codebuild/2016-10-06 StatusType).
BUILD_SUCCEEDED = "SUCCEEDED"
BUILD_FAILED = frozenset({"FAILED", "FAULT", "TIMED_OUT"})
BUILD_STOPPED = "STOPPED"
BUILD_RUNNING = "IN_PROGRESS"
_PROJECT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9\-_]{1,254}$")


class JobError(Exception):
    """A job that failed, was stopped, or could not be started; the message says which."""


def sagemaker_client():
    """The SageMaker client (created once per container, with standard retries)."""
    global _client_cache
    if _client_cache is None:
        _client_cache = boto3.client("sagemaker", config=RETRY_CONFIG)
    return _client_cache


def codebuild_client():
    """The CodeBuild client (created once per container, with standard retries)."""
    global _codebuild_cache
    if _codebuild_cache is None:
        _codebuild_cache = boto3.client("codebuild", config=RETRY_CONFIG)
    return _codebuild_cache


def _build_properties(event: CloudFormationCustomResourceEvent) -> tuple[str, dict, str, str]:
    props = event.resource_properties or {}
    project = props.get("ProjectName")
    if not isinstance(project, str) or not _PROJECT_RE.match(project):
        raise ValueError(f"resource property ProjectName must be a CodeBuild project name; "
                         f"got {project!r}")
    raw = props.get("Request")
    try:
        request = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"resource property Request must be a JSON object; {exc}") from None
    if not isinstance(request, dict) or "projectName" in request:
        raise ValueError(f"resource property Request must be a JSON object without "
                         f"projectName; got {raw!r}")
    output = props.get("OutputUri")
    if not isinstance(output, str) or not output.startswith("s3://") or not output.endswith("/"):
        raise ValueError(f"resource property OutputUri must be an s3:// prefix ending in '/'; "
                         f"got {output!r}")
    return project, request, output, str(props.get("RunId") or "")


def build_token(request_id: str, project: str, request: dict, run_id: str = "") -> str:
    """StartBuild's ``idempotencyToken``: one per CloudFormation request and inputs."""
    canonical = json.dumps({"RequestId": request_id, "Project": project, "Request": request,
                            "RunId": run_id}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def describe_build(build_id: str) -> Optional[dict]:
    """The build, or ``None`` when CodeBuild has no build of that id."""
    found = codebuild_client().batch_get_builds(ids=[build_id])
    builds = found.get("builds") or []
    return builds[0] if builds else None


def _build_failure(build: dict) -> str:
    """What went wrong, from the failed phases' contexts, and where the log is."""
    reasons = []
    for phase in build.get("phases") or []:
        status = phase.get("phaseStatus")
        if status and status != "SUCCEEDED":
            messages = "; ".join(c.get("message", "") for c in phase.get("contexts") or []
                                 if c.get("message"))
            reasons.append(f"{phase.get('phaseType')} {status}"
                           + (f": {messages}" if messages else ""))
    text = "; ".join(reasons) or "no phase reported a reason"
    link = (build.get("logs") or {}).get("deepLink")
    return f"{text} (log: {link})" if link else text


def _start_build(event: CloudFormationCustomResourceEvent) -> dict:
    project, request, _, run_id = _build_properties(event)
    token = build_token(event.request_id, project, request, run_id)
    try:
        build = codebuild_client().start_build(projectName=project, idempotencyToken=token,
                                               **request)["build"]
    except ClientError as exc:
        error = exc.response.get("Error", {})
        raise JobError(f"could not start a build of CodeBuild project {project}: "
                       f"{error.get('Code')}: {error.get('Message')}") from exc
    logger.info("started build", extra={"build_id": build["id"], "project": project})
    return {"PhysicalResourceId": build["id"]}


def _stop_build(event: CloudFormationCustomResourceEvent) -> None:
    project = (event.resource_properties or {}).get("ProjectName")
    build_id = event.physical_resource_id
    # Only a build of this resource's project (a failed create leaves another kind of id).
    if not isinstance(project, str) or not isinstance(build_id, str) \
            or not build_id.startswith(f"{project}:"):
        logger.info("nothing to stop: not a build id", extra={"physical_id": build_id})
        return
    build = describe_build(build_id)
    if build is None or build.get("buildStatus") != BUILD_RUNNING:
        logger.info("build not running", extra={"build_id": build_id})
        return
    try:
        codebuild_client().stop_build(id=build_id)
    except ClientError as exc:
        # It ended between the two calls: nothing left to stop.
        if exc.response.get("Error", {}).get("Code") not in ("InvalidInputException",
                                                             "ResourceNotFoundException"):
            raise
    logger.info("stopping build", extra={"build_id": build_id})


def _build_complete(event: CloudFormationCustomResourceEvent) -> dict:
    project, _, output, _ = _build_properties(event)
    build_id = event.physical_resource_id
    try:
        build = describe_build(build_id)
    except ClientError as exc:
        if _is_throttling(exc):
            logger.warning("throttled while polling; will poll again", extra={"build_id": build_id})
            return {"IsComplete": False}
        raise
    if build is None:
        raise JobError(f"build {build_id} of CodeBuild project {project} does not exist")
    status = build.get("buildStatus")
    if status in BUILD_FAILED:
        raise JobError(f"build {build_id} of CodeBuild project {project} ended {status}: "
                       f"{_build_failure(build)}")
    if status == BUILD_STOPPED:
        raise JobError(f"build {build_id} of CodeBuild project {project} was stopped before "
                       f"it completed")
    if status != BUILD_SUCCEEDED:
        logger.info("build running", extra={"build_id": build_id, "status": status,
                                            "phase": build.get("currentPhase")})
        return {"IsComplete": False}
    data = {"BuildId": build_id, "BuildArn": build.get("arn", ""),
            "ModelArtifacts": f"{output}model.tar.gz", "Report": f"{output}compile-report.json"}
    logger.info("build succeeded", extra=data)
    return {"IsComplete": True, "Data": data}


def _kind(event: CloudFormationCustomResourceEvent) -> Optional[str]:
    return (event.resource_properties or {}).get("Kind")


def _properties(event: CloudFormationCustomResourceEvent) -> tuple[str, str, dict, str]:
    props = event.resource_properties or {}
    kind = props.get("Kind")
    if kind not in KINDS:
        raise ValueError(f"resource property Kind must be one of {', '.join(KINDS)}, "
                         f"{BUILD_KIND}; got {kind!r}")
    prefix = props.get("JobNamePrefix")
    if not isinstance(prefix, str) or len(prefix) > MAX_PREFIX or not _PREFIX_RE.match(prefix):
        raise ValueError(f"resource property JobNamePrefix must be 1-{MAX_PREFIX} characters "
                         f"of a-z, A-Z, 0-9 and '-', starting and ending alphanumeric; "
                         f"got {prefix!r}")
    raw = props.get("Request")
    try:
        request = json.loads(raw) if isinstance(raw, str) else None
    except json.JSONDecodeError as exc:
        raise ValueError(f"resource property Request must be a JSON object; {exc}") from None
    if not isinstance(request, dict):
        raise ValueError(f"resource property Request must be a JSON object; got {raw!r}")
    return kind, prefix, request, str(props.get("RunId") or "")


def job_name(kind: str, prefix: str, request: dict, run_id: str = "") -> str:
    """``<prefix>-<hash>``: the same inputs, the same name; any change, a new name."""
    inputs: dict = {"Kind": kind, "Request": request}
    if run_id:
        inputs["RunId"] = run_id
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    digest = hashlib.sha256(canonical.encode()).hexdigest()[:HASH_LENGTH]
    return f"{prefix}-{digest}"


def _is_not_found(exc: ClientError) -> bool:
    error = exc.response.get("Error", {})
    code, message = error.get("Code", ""), error.get("Message", "").lower()
    if code == "ResourceNotFound":
        return True
    # DescribeTrainingJob answers ValidationException "Requested resource not found."
    return code == "ValidationException" and ("not found" in message
                                              or "could not find" in message)


def _is_throttling(exc: ClientError) -> bool:
    return exc.response.get("Error", {}).get("Code") in THROTTLING_CODES


def describe(kind: str, name: str) -> Optional[dict]:
    """The job's description, or ``None`` when there is no such job."""
    spec = KINDS[kind]
    try:
        return getattr(sagemaker_client(), spec["describe"])(**{spec["name_key"]: name})
    except ClientError as exc:
        if _is_not_found(exc):
            return None
        raise


def _start(kind: str, name: str, request: dict) -> dict:
    spec = KINDS[kind]
    existing = describe(kind, name)
    if existing is not None:
        # Same name, same inputs: a retried create, or the job of an earlier deployment.
        status = existing[spec["status_key"]]
        if status in (spec["failed"], spec["stopped"]):
            reason = existing.get("FailureReason") or "no reason given"
            raise JobError(f"{spec['label']} {name} already ran with these inputs and ended "
                           f"{status}: {reason}; change an input (e.g. the run id) to start "
                           f"a new one")
        logger.info("adopting existing job", extra={"job_name": name, "status": status})
        return {"PhysicalResourceId": name}
    try:
        getattr(sagemaker_client(), spec["create"])(**{spec["name_key"]: name, **request})
    except ClientError as exc:
        error = exc.response.get("Error", {})
        if _is_throttling(exc):
            raise JobError(f"sagemaker kept throttling {spec['create']} for {name} after "
                           f"{MAX_ATTEMPTS} attempts "
                           f"({error.get('Code')}); retry the deployment") from exc
        raise JobError(f"could not start {spec['label']} {name}: "
                       f"{error.get('Code')}: {error.get('Message')}") from exc
    logger.info("started job", extra={"job_name": name, "kind": kind})
    return {"PhysicalResourceId": name}


def _stop(kind: str, name: Optional[str]) -> None:
    spec = KINDS[kind]
    if not name or not _PREFIX_RE.match(name) or len(name) > MAX_JOB_NAME:
        logger.info("nothing to stop: not a job name", extra={"physical_id": name})
        return
    job = describe(kind, name)
    if job is None:
        logger.info("nothing to stop: no such job", extra={"job_name": name})
        return
    status = job[spec["status_key"]]
    if status not in spec["running"].split():
        logger.info("job already ended", extra={"job_name": name, "status": status})
        return
    try:
        getattr(sagemaker_client(), spec["stop"])(**{spec["name_key"]: name})
    except ClientError as exc:
        # It ended between describe and stop: nothing left to stop.
        if exc.response.get("Error", {}).get("Code") != "ValidationException" and \
                not _is_not_found(exc):
            raise
    logger.info("stopping job", extra={"job_name": name})


@logger.inject_lambda_context(log_event=False)
def on_event(event: dict, context: LambdaContext) -> dict:
    """Create/Update start a job (named from its inputs); Delete stops a running one."""
    cfn = CloudFormationCustomResourceEvent(event)
    request_type = cfn.request_type
    if _kind(cfn) == BUILD_KIND:
        logger.append_keys(request_type=request_type, kind=BUILD_KIND)
        if request_type == "Delete":
            _stop_build(cfn)
            return {"PhysicalResourceId": cfn.physical_resource_id}
        if request_type not in ("Create", "Update"):
            raise ValueError(f"RequestType must be Create, Update or Delete; got {request_type!r}")
        return _start_build(cfn)
    kind, prefix, request, run_id = _properties(cfn)
    logger.append_keys(request_type=request_type, kind=kind)
    if request_type == "Delete":
        _stop(kind, cfn.physical_resource_id)
        return {"PhysicalResourceId": cfn.physical_resource_id}
    if request_type not in ("Create", "Update"):
        raise ValueError(f"RequestType must be Create, Update or Delete; got {request_type!r}")
    name = job_name(kind, prefix, request, run_id)
    if request_type == "Update" and cfn.physical_resource_id != name:
        logger.info("inputs changed: new job", extra={"old": cfn.physical_resource_id,
                                                      "new": name})
    return _start(kind, name, request)


@logger.inject_lambda_context(log_event=False)
def is_complete(event: dict, context: LambdaContext) -> dict:
    """Poll the job named by the physical id; raise with SageMaker's reason if it failed."""
    cfn = CloudFormationCustomResourceEvent(event)
    if cfn.request_type == "Delete":
        return {"IsComplete": True}
    if _kind(cfn) == BUILD_KIND:
        return _build_complete(cfn)
    kind, _, _, _ = _properties(cfn)
    spec = KINDS[kind]
    name = cfn.physical_resource_id
    try:
        job = describe(kind, name)
    except ClientError as exc:
        if _is_throttling(exc):
            logger.warning("throttled while polling; will poll again", extra={"job_name": name})
            return {"IsComplete": False}
        raise
    if job is None:
        raise JobError(f"{spec['label']} {name} does not exist; it was deleted outside "
                       f"CloudFormation or never started")
    status = job[spec["status_key"]]
    if status == spec["failed"]:
        reason = job.get("FailureReason") or "no reason given"
        raise JobError(f"{spec['label']} {name} failed: {reason}")
    if status == spec["stopped"]:
        raise JobError(f"{spec['label']} {name} was stopped before it completed")
    if status != spec["completed"]:
        logger.info("job running", extra={"job_name": name, "status": status})
        return {"IsComplete": False}
    artifacts = job.get("ModelArtifacts", {}).get("S3ModelArtifacts", "")
    logger.info("job completed", extra={"job_name": name, "model_artifacts": artifacts})
    data = {"JobName": name, "JobArn": job[spec["arn_key"]], "ModelArtifacts": artifacts}
    if kind == "compilation":
        # The Neo inference container SageMaker chose for this framework and target.
        data["InferenceImage"] = job.get("InferenceImage") or ""
    return {"IsComplete": True, "Data": data}
