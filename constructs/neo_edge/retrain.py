"""``RetrainPipeline``: new data in S3 (or a schedule) -> train -> compile for every target
-> publish a component version -> deploy it to the fleet with rollout; notify on failure.

A Step Functions state machine built from AWS SDK tasks with polling loops, not from the
``.sync`` SageMaker and CodeBuild integrations: each job is ``Create*Job`` -> ``Describe*Job`` ->
``Choice`` (done / failed / stopped / too many polls) -> ``Wait`` -> a counter ->
``Describe*Job`` again. Every loop is bounded by a maximum number of polls derived from
the job's own stopping condition; a job that outlives it is stopped and the run fails.
Device targets compile with neo-edge's compiler, each a build of its
:class:`~neo_edge.edge_compilation.EdgeCompilationJob`'s CodeBuild project (``StartBuild``
-> ``BatchGetBuilds`` loop, ``StopBuild`` past the bound); endpoint targets (``ml_*``)
given as ``NeoCompilationJob`` compile with SageMaker Neo after them, kept in the run's
output but not published (Neo's DLR format does not run on the edge runtime). The same
states run under moto's Step Functions executor in the tests, through training and
compilation.

The Greengrass steps are the ``component_publisher`` and ``deployment_manager`` Lambda
functions (each a ``publish``/``deploy`` action, then a ``status`` polling loop).
Their ``RetryableError`` (throttling, busy, internal errors) is retried with back-off;
every other failure, like a failed job, goes to one ``Notify the failure`` state that
publishes the execution name, the error and its cause to an SNS topic, then fails the
execution with the same error.

What a run reuses rather than redefines:

- the training settings of a :class:`~neo_edge.training.TrainingJob` (image, instance,
  hyperparameters, input channels, role, output prefix): its ``request`` is sent again
  with a new job name (and, optionally, a longer stopping condition);
- the compilation settings of each
  :class:`~neo_edge.edge_compilation.EdgeCompilationJob` (its CodeBuild project: target,
  framework, shapes, compiler wheel): the build gets the model just trained and writes
  ``<job output prefix><run id>/model.tar.gz``; of each endpoint
  :class:`~neo_edge.compilation.NeoCompilationJob`, its request, output under
  ``<job output location>/<run id>``;
- the component name and device bundles of an
  :class:`~neo_edge.component.EdgeInferenceComponent`: the new version is built by the
  same recipe builder, with a content-derived version;
- the fleet of an :class:`~neo_edge.fleet.EdgeFleet`: the deployment keeps the fleet's
  other components and moves the inference component to the new version.

Execution input (what ``pipeline_trigger`` sends; a schedule sends
``{"trigger": "schedule"}``)::

    {"trigger": "training_data" | "model" | "schedule", ...,
     "model_data_uri": "s3://..."}      # trigger == "model": skip training

With ``canary`` (a :class:`~neo_edge.canary.CanaryRollout` of the same fleet), the step
``Deploy to the fleet`` becomes the canary's states: the new version goes to the canary
thing group first, the run waits for those devices' shadow and health verdicts, and
deploys to the fleet only when they pass; otherwise the run stops (``CanaryRejected``,
``CanaryReportsIncomplete``), the fleet stays on the version it runs, and the failure is
notified like any other.

Note that a later ``cdk deploy`` whose ``EdgeDeployment`` changed deploys the component
version of the stack again (the pipeline's deployments are revisions of the same fleet).
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from typing import Any, Mapping, Optional, Sequence, Union

import aws_cdk as cdk
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_events as events
from aws_cdk import aws_events_targets as targets
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sns as sns
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import aws_stepfunctions_tasks as tasks
from constructs import Construct

from . import _checkov
from ._lambda import (allow_redundant_depends_on, bundled_function, check_reserved_concurrency,
                      keep_failed_invocations)
from .canary import CanaryRollout
from ._nag import acknowledge_state_machine_role
from ._sagemaker_job import RolePolicy, _sanitize, _short_hash, nag_arn
from .compilation import NeoCompilationJob, NeoCompilationSet
from .edge_compilation import EdgeCompilationJob, EdgeCompilationSet
from .component import EdgeInferenceComponent
from .fleet import acknowledge_wildcards
from .interfaces import IEdgeFleet, IRetrainPipeline
from .training import TrainingJob

__all__ = ["BUILD_QUEUE_MARGIN_S", "CODEBUILD_RETRY_ERRORS", "COMPILATION", "COMPILED_PATH", "ENDPOINT_COMPILED_PATH",
           "ERROR_PATH", "edge_compilation_states", "MAX_JOB_NAME_PREFIX", "MODEL_PATH",
           "RETRYABLE_ERROR", "RUN_PATH", "RetrainPipeline", "SDK_RETRY_ERRORS",
           "SageMakerJobStates", "TRAINING", "compilation_job_states", "sagemaker_job_states",
           "training_job_states"]

_STATE_MACHINE_ARN = re.compile(
    r"^arn:aws[a-z-]*:states:[a-z0-9-]+:\d{12}:stateMachine:[A-Za-z0-9_-]{1,80}$")

#: The longest ``job_name_prefix``: ``<prefix>-c<nn>-<uuid>`` must fit SageMaker's 63.
MAX_JOB_NAME_PREFIX = 20
_JOB_NAME_PREFIX = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9])*$")

#: Errors of an AWS SDK task that are worth a retry (throttling, service hiccups).
SDK_RETRY_ERRORS = ["SageMaker.ThrottlingException", "SageMaker.SageMakerException",
                    "SageMaker.AmazonSageMakerException"]
#: Errors of a CodeBuild AWS SDK task worth a retry (Step Functions names them
#: ``CodeBuild.<exception>``): the account's concurrent-build limit, throttling.
CODEBUILD_RETRY_ERRORS = ["CodeBuild.AccountLimitExceededException",
                          "CodeBuild.ThrottlingException", "CodeBuild.CodeBuildException"]
#: The error both Greengrass Lambda functions raise for a refusal "for now".
RETRYABLE_ERROR = "RetryableError"

#: Where each step keeps its result in the execution state.
RUN_PATH = "$.run"
MODEL_PATH = "$.model"
COMPILED_PATH = "$.compiled"
ENDPOINT_COMPILED_PATH = "$.endpoint_compiled"
ERROR_PATH = "$.error"


@dataclass(frozen=True, kw_only=True)
class SageMakerJobStates:
    """What differs between a training and a compilation polling loop."""

    action: str
    name_key: str
    status_key: str
    done: str
    failed: str
    stopped: str
    error_prefix: str


TRAINING = SageMakerJobStates(action="TrainingJob", name_key="TrainingJobName",
                              status_key="TrainingJobStatus", done="Completed",
                              failed="Failed", stopped="Stopped", error_prefix="TrainingJob")
COMPILATION = SageMakerJobStates(action="CompilationJob", name_key="CompilationJobName",
                                 status_key="CompilationJobStatus", done="COMPLETED",
                                 failed="FAILED", stopped="STOPPED",
                                 error_prefix="CompilationJob")


def _sdk_task(scope: Construct, id: str, *, action: str, parameters: Mapping[str, Any],
              resources: Sequence[str], **props: Any) -> tasks.CallAwsService:
    return tasks.CallAwsService(scope, id, service="sagemaker", action=action,
                                parameters=dict(parameters), iam_resources=list(resources),
                                iam_action=f"sagemaker:{action[0].upper()}{action[1:]}",
                                **props)


def sagemaker_job_states(scope: Construct, *, label: str, kind: SageMakerJobStates,
                         request: Mapping[str, Any], job_name: str, job_arn: str,
                         output_selector: Mapping[str, Any], poll_interval: cdk.Duration,
                         max_polls: int) -> sfn.Chain:
    """The polling loop of one SageMaker job, as a chain that ends in a state holding
    ``output_selector`` (the job's result) or in a ``Fail`` state.

    ``Start <label>`` (Create*Job) -> ``Check <label>`` (Describe*Job) ->
    ``Is <label> over?``: done -> ``Read <label> output``; failed -> ``Read <label>
    failure`` -> ``<Label> failed``; stopped -> ``<Label> stopped``; ``max_polls``
    reached -> ``Stop <label>`` -> ``<Label> timed out``; otherwise ``Wait for
    <label>`` -> ``Count <label> polls`` -> ``Check <label>``.

    Parameters
    ----------
    label:
        Names the states (``training``, ``compilation for rasp4b``); unique per machine.
    request:
        The ``Create*Job`` request without the job name (JSON path values allowed).
    job_name:
        A JSON path expression (``JsonPath.format(...)``) that gives the job's name.
    job_arn:
        The IAM resource of the job (ARN pattern) for the task's permissions.
    output_selector:
        ``ResultSelector`` over the ``Describe*Job`` response once the job is done: the
        output of the chain.
    """
    title = label[0].upper() + label[1:]
    name = {kind.name_key: job_name}
    retry = dict(errors=SDK_RETRY_ERRORS, interval=cdk.Duration.seconds(5), max_attempts=5,
                 backoff_rate=2)

    start = _sdk_task(scope, f"Start {label}", action=f"create{kind.action}",
                      parameters={**request, **name}, resources=[job_arn],
                      result_selector={"attempts": 0}, result_path="$.poll")
    start.add_retry(errors=["SageMaker.ThrottlingException"], interval=cdk.Duration.seconds(5),
                    max_attempts=5, backoff_rate=2)
    check = _sdk_task(scope, f"Check {label}", action=f"describe{kind.action}", parameters=name,
                      resources=[job_arn], result_path="$.job",
                      result_selector={"status": sfn.JsonPath.string_at(f"$.{kind.status_key}")})
    check.add_retry(**retry)
    read_output = _sdk_task(scope, f"Read {label} output", action=f"describe{kind.action}",
                            parameters=name, resources=[job_arn],
                            result_selector=dict(output_selector), result_path="$.output",
                            output_path="$.output")
    read_output.add_retry(**retry)
    read_failure = _sdk_task(
        scope, f"Read {label} failure", action=f"describe{kind.action}", parameters=name,
        resources=[job_arn], result_path="$.failure",
        result_selector={"Cause": sfn.JsonPath.format(
            f"{label} job {{}} failed: {{}}", sfn.JsonPath.string_at(f"$.{kind.name_key}"),
            sfn.JsonPath.string_at("$.FailureReason"))})
    read_failure.add_retry(**retry)
    failed = sfn.Fail(scope, f"{title} failed", error=f"{kind.error_prefix}Failed",
                      cause_path="$.failure.Cause")
    read_failure.add_catch(sfn.Fail(scope, f"{title} failed without a reason",
                                    error=f"{kind.error_prefix}Failed",
                                    cause=f"the {label} job failed"))
    stopped = sfn.Fail(scope, f"{title} stopped", error=f"{kind.error_prefix}Stopped",
                       cause_path=sfn.JsonPath.format(f"{label} job {{}} was stopped", job_name))
    stop = _sdk_task(scope, f"Stop {label}", action=f"stop{kind.action}", parameters=name,
                     resources=[job_arn], result_path=sfn.JsonPath.DISCARD)
    timed_out = sfn.Fail(
        scope, f"{title} timed out", error=f"{kind.error_prefix}TimedOut",
        cause_path=sfn.JsonPath.format(
            f"{label} job {{}} was still running after {max_polls} polls "
            f"{int(poll_interval.to_seconds())} seconds apart; it was stopped", job_name))
    stop.add_catch(timed_out, result_path="$.stop_error")
    wait = sfn.Wait(scope, f"Wait for {label}", time=sfn.WaitTime.duration(poll_interval))
    count = sfn.Pass(scope, f"Count {label} polls", result_path="$.poll", parameters={
        "attempts": sfn.JsonPath.math_add(sfn.JsonPath.number_at("$.poll.attempts"), 1)})
    over = (sfn.Choice(scope, f"Is {label} over?")
            .when(sfn.Condition.string_equals("$.job.status", kind.done), read_output)
            .when(sfn.Condition.string_equals("$.job.status", kind.failed),
                  read_failure.next(failed))
            .when(sfn.Condition.string_equals("$.job.status", kind.stopped), stopped)
            .when(sfn.Condition.number_greater_than_equals("$.poll.attempts", max_polls),
                  stop.next(timed_out))
            .otherwise(wait.next(count).next(check)))
    return sfn.Chain.start(start).next(check).next(over)


def training_job_states(scope: Construct, *, training_job: TrainingJob, job_name: str,
                        job_arn: str, poll_interval: cdk.Duration,
                        max_runtime: Optional[cdk.Duration] = None,
                        run_id: str = "$.run.id") -> sfn.Chain:
    """The training loop: ``training_job``'s request under a new name.

    The chain's output is ``{"model_data_uri": "s3://.../model.tar.gz"}``.
    ``max_runtime`` replaces the job's stopping condition (SageMaker allows up to 28
    days; a deploy-time ``TrainingJob`` is capped at 50 minutes). Spot checkpoints go to
    ``<checkpoint prefix>/<run id>`` so that a run never resumes another's.
    """
    request = copy.deepcopy(training_job.request)
    stopping = dict(request["StoppingCondition"])
    if max_runtime is not None:
        seconds = int(max_runtime.to_seconds())
        if not cdk.Token.is_unresolved(seconds) and not 0 < seconds <= 28 * 24 * 3600:
            raise ValueError(f"training_max_runtime must be from 1 second to 28 days; "
                             f"got {seconds} seconds")
        stopping["MaxRuntimeInSeconds"] = seconds
        if "MaxWaitTimeInSeconds" in stopping:
            stopping["MaxWaitTimeInSeconds"] = max(stopping["MaxWaitTimeInSeconds"], seconds)
    request["StoppingCondition"] = stopping
    if "CheckpointConfig" in request:
        base = request["CheckpointConfig"]["S3Uri"]
        request["CheckpointConfig"] = {"S3Uri": sfn.JsonPath.format(
            f"{base}/{{}}", sfn.JsonPath.string_at(run_id))}
    longest = max(stopping.get("MaxWaitTimeInSeconds", 0), stopping["MaxRuntimeInSeconds"])
    return sagemaker_job_states(
        scope, label="training", kind=TRAINING, request=request, job_name=job_name,
        job_arn=job_arn, poll_interval=poll_interval,
        max_polls=_max_polls(longest, poll_interval),
        output_selector={"model_data_uri": sfn.JsonPath.string_at(
            "$.ModelArtifacts.S3ModelArtifacts")})


def compilation_job_states(scope: Construct, *, job: NeoCompilationJob, job_name: str,
                           job_arn: str, poll_interval: cdk.Duration,
                           model_data_uri: str = "$.model.model_data_uri",
                           run_id: str = "$.run.id") -> sfn.Chain:
    """The compilation loop for ``job``'s target: its request with the model at
    ``model_data_uri`` (a JSON path) and output under ``<job output location>/<run id>``.

    The chain's output is ``{"target": <target name>, "model_uri": "s3://..."}``, the
    entry ``component_publisher`` takes.
    """
    request = copy.deepcopy(job.request)
    request["InputConfig"] = {**request["InputConfig"],
                              "S3Uri": sfn.JsonPath.string_at(model_data_uri)}
    base = request["OutputConfig"]["S3OutputLocation"]
    request["OutputConfig"] = {**request["OutputConfig"], "S3OutputLocation": sfn.JsonPath.format(
        f"{base}/{{}}", sfn.JsonPath.string_at(run_id))}
    name = job.target_spec.name
    return sagemaker_job_states(
        scope, label=f"compilation for {name}", kind=COMPILATION, request=request,
        job_name=job_name, job_arn=job_arn, poll_interval=poll_interval,
        max_polls=_max_polls(request["StoppingCondition"]["MaxRuntimeInSeconds"], poll_interval),
        output_selector={"target": name, "model_uri": sfn.JsonPath.string_at(
            "$.ModelArtifacts.S3ModelArtifacts")})


#: Time a build may wait in CodeBuild's queue and provision, on top of its own timeout.
BUILD_QUEUE_MARGIN_S = 15 * 60


def edge_compilation_states(scope: Construct, *, job: EdgeCompilationJob,
                            poll_interval: cdk.Duration,
                            model_data_uri: str = "$.model.model_data_uri",
                            run_id: str = "$.run.id") -> sfn.Chain:
    """The build loop of ``job``'s CodeBuild project (neo-edge's compiler): the model at
    ``model_data_uri`` (a JSON path), output under ``<job output prefix><run id>/``.

    AWS SDK tasks with a polling loop, as the SageMaker jobs (the ``.sync`` integration,
    ``codebuild:startBuild.sync``, would wait too, but moto's executor, which the tests
    run the definition under, has none): ``Start <label>`` (StartBuild with the run's
    ``MODEL_URI`` and ``OUTPUT_URI``) -> ``Check <label>`` (BatchGetBuilds) -> ``Is
    <label> over?``: ``SUCCEEDED`` -> ``Read <label> output``; ``FAILED``, ``FAULT``,
    ``TIMED_OUT`` -> ``Read <label> failure`` -> ``<Label> failed``; ``STOPPED`` ->
    ``<Label> stopped``; too many polls -> ``Stop <label>`` -> ``<Label> timed out``;
    otherwise wait, count, check again.

    The chain's output is ``{"target": <target name>, "model_uri": "s3://.../model.tar.gz"}``,
    the entry ``component_publisher`` takes.
    """
    name = job.target_spec.name
    label = f"compilation for {name}"
    title = label[0].upper() + label[1:]
    output = f"s3://{job.bucket.bucket_name}/{job.output_prefix}{{}}/"
    project_arn = job.project.project_arn
    build_id = sfn.JsonPath.string_at("$.build.id")
    retry = dict(errors=CODEBUILD_RETRY_ERRORS, interval=cdk.Duration.seconds(10),
                 max_attempts=5, backoff_rate=2)

    def task(id: str, action: str, parameters: dict, **props: Any) -> tasks.CallAwsService:
        return tasks.CallAwsService(scope, id, service="codebuild", action=action,
                                    parameters=parameters, iam_resources=[project_arn],
                                    iam_action=f"codebuild:{action[0].upper()}{action[1:]}",
                                    **props)

    start = task(f"Start {label}", "startBuild", {
        "ProjectName": job.project.project_name,
        "EnvironmentVariablesOverride": [
            {"Name": "MODEL_URI", "Type": "PLAINTEXT",
             "Value": sfn.JsonPath.string_at(model_data_uri)},
            {"Name": "OUTPUT_URI", "Type": "PLAINTEXT",
             "Value": sfn.JsonPath.format(output, sfn.JsonPath.string_at(run_id))}]},
        result_selector={"id": sfn.JsonPath.string_at("$.Build.Id"), "attempts": 0},
        result_path="$.build")
    start.add_retry(**retry)
    ids = {"Ids": sfn.JsonPath.array(build_id)}
    # ArrayGetItem over [*] rather than the path $.Builds[0].BuildStatus: the same value in
    # Step Functions, and moto's executor gives a list for an indexed path.
    check = task(f"Check {label}", "batchGetBuilds", ids, result_path="$.job",
                 result_selector={"status": sfn.JsonPath.array_get_item(
                     sfn.JsonPath.list_at("$.Builds[*].BuildStatus"), 0)})
    check.add_retry(**retry)
    read_output = sfn.Pass(scope, f"Read {label} output", parameters={
        "target": name, "model_uri": sfn.JsonPath.format(f"{output}model.tar.gz",
                                                         sfn.JsonPath.string_at(run_id))})
    read_failure = task(f"Read {label} failure", "batchGetBuilds", ids, result_path="$.failure",
                        result_selector={"Cause": sfn.JsonPath.format(
                            f"{label}: build {{}} ended {{}}; its log: {{}}",
                            sfn.JsonPath.string_at("$.Builds[0].Id"),
                            sfn.JsonPath.string_at("$.Builds[0].BuildStatus"),
                            sfn.JsonPath.string_at("$.Builds[0].Logs.DeepLink"))})
    read_failure.add_retry(**retry)
    failed = sfn.Fail(scope, f"{title} failed", error="CompilationBuildFailed",
                      cause_path="$.failure.Cause")
    read_failure.add_catch(sfn.Fail(scope, f"{title} failed without a reason",
                                    error="CompilationBuildFailed",
                                    cause=f"the {label} build failed"))
    stopped = sfn.Fail(scope, f"{title} stopped", error="CompilationBuildStopped",
                       cause_path=sfn.JsonPath.format(f"{label}: build {{}} was stopped",
                                                      build_id))
    max_polls = _max_polls(job.max_runtime_s + BUILD_QUEUE_MARGIN_S, poll_interval)
    stop = task(f"Stop {label}", "stopBuild", {"Id": build_id},
                result_path=sfn.JsonPath.DISCARD)
    timed_out = sfn.Fail(
        scope, f"{title} timed out", error="CompilationBuildTimedOut",
        cause_path=sfn.JsonPath.format(
            f"{label}: build {{}} was still running after {max_polls} polls "
            f"{int(poll_interval.to_seconds())} seconds apart; it was stopped", build_id))
    stop.add_catch(timed_out, result_path="$.stop_error")
    wait = sfn.Wait(scope, f"Wait for {label}", time=sfn.WaitTime.duration(poll_interval))
    count = sfn.Pass(scope, f"Count {label} polls", result_path="$.build", parameters={
        "id": build_id,
        "attempts": sfn.JsonPath.math_add(sfn.JsonPath.number_at("$.build.attempts"), 1)})
    over = (sfn.Choice(scope, f"Is {label} over?")
            .when(sfn.Condition.string_equals("$.job.status", "SUCCEEDED"), read_output)
            .when(sfn.Condition.or_(*[sfn.Condition.string_equals("$.job.status", s)
                                      for s in ("FAILED", "FAULT", "TIMED_OUT")]),
                  read_failure.next(failed))
            .when(sfn.Condition.string_equals("$.job.status", "STOPPED"), stopped)
            .when(sfn.Condition.number_greater_than_equals("$.build.attempts", max_polls),
                  stop.next(timed_out))
            .otherwise(wait.next(count).next(check)))
    return sfn.Chain.start(start).next(check).next(over)


def _max_polls(seconds: int, interval: cdk.Duration) -> int:
    """Enough polls to see a job through its own stopping condition, plus a margin."""
    return math.ceil(seconds / max(1, int(interval.to_seconds()))) + 5


_JOBS = (EdgeCompilationJob, NeoCompilationJob)
_SETS = (EdgeCompilationSet, NeoCompilationSet)


def _compilation_jobs(value: Any) -> list:
    """The jobs of ``value`` (a set, a job, or a list or mapping of them), checked: one per
    target, at least one ``EdgeCompilationJob``, SageMaker Neo only for endpoint targets."""
    if isinstance(value, _SETS + _JOBS):
        items = [value]
    elif isinstance(value, Mapping):
        items = list(value.values())
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        items = []
    jobs = [j for item in items
            for j in (item.jobs.values() if isinstance(item, _SETS) else [item])]
    if not jobs or not all(isinstance(j, _JOBS) for j in jobs):
        raise ValueError(f"compilation must be an EdgeCompilationSet or a non-empty list (or "
                         f"mapping) of EdgeCompilationJob (and NeoCompilationJob for endpoint "
                         f"targets); got {value!r}")
    names = [j.target_spec.name for j in jobs]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"compilation must have one job per target; got {', '.join(repeated)} "
                         f"more than once")
    dlr = sorted(j.target_spec.name for j in jobs
                 if isinstance(j, NeoCompilationJob) and j.target_spec.instance_family is None)
    if dlr:
        raise ValueError(
            f"compilation must compile device targets with EdgeCompilationJob, whose output the "
            f"runs publish to the component; got SageMaker Neo jobs for {', '.join(dlr)}: Neo "
            f"writes DLR's format (compiled.so, compiled_model.json, compiled.params; no "
            f"manifest.json), which the edge runtime does not load. NeoCompilationJob is for "
            f"endpoint targets (ml_*) only")
    if not any(isinstance(j, EdgeCompilationJob) for j in jobs):
        raise ValueError(f"compilation must hold at least one EdgeCompilationJob (the runs "
                         f"publish its models to the component); got only SageMaker Neo jobs "
                         f"for {', '.join(names)}")
    return jobs


def _check_prefix(name: str, prefix: Optional[str]) -> None:
    if prefix is None or cdk.Token.is_unresolved(prefix):
        return
    if not isinstance(prefix, str) or not prefix or prefix.startswith("/") or "*" in prefix:
        raise ValueError(f"{name} must be a non-empty key prefix without a leading '/' or '*' "
                         f"(e.g. 'models/incoming/'); got {prefix!r}")


class _StateMachineRuns:
    """What a retraining pipeline, made here or imported, offers through its state machine."""

    state_machine: sfn.IStateMachine

    def grant_start_execution(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` start a run (``states:StartExecution``)."""
        return self.state_machine.grant_start_execution(grantee)

    def metric_failed(self, **options: Any) -> cw.Metric:
        """Runs that failed. Default: sum over 5 minutes."""
        return self.state_machine.metric_failed(**options)

    def metric_succeeded(self, **options: Any) -> cw.Metric:
        """Runs that succeeded. Default: sum over 5 minutes."""
        return self.state_machine.metric_succeeded(**options)


class RetrainPipeline(_StateMachineRuns, Construct):
    """Retrain, recompile, republish and redeploy, on new data or on a schedule.

    Parameters
    ----------
    training_job:
        The :class:`~neo_edge.training.TrainingJob` whose settings each run reuses
        (its role, input channels and output prefix too).
    compilation:
        The :class:`~neo_edge.edge_compilation.EdgeCompilationSet` (or a list or mapping
        of ``EdgeCompilationJob``, or of sets) whose targets each run compiles for with
        neo-edge's compiler in CodeBuild, all in parallel, and publishes. It may also hold
        ``NeoCompilationJob`` objects (or a ``NeoCompilationSet``) for endpoint targets
        (``ml_*``): compiled by SageMaker Neo after the others, the outputs kept in the
        run's ``endpoint_compiled`` and not published. A Neo job for a device target is
        refused: its DLR-format output does not run on the edge runtime.
    component:
        The :class:`~neo_edge.component.EdgeInferenceComponent` whose new versions the
        runs publish: its name and its device bundles (one for each target's
        architecture). An imported component will not do: the runs rebuild it.
    fleet:
        The fleet the new versions are deployed to: any
        :class:`~neo_edge.interfaces.IEdgeFleet` (an ``EdgeFleet`` of this stack or
        another, or ``EdgeFleet.from_thing_group_name(...)``). Its devices are allowed
        to read what the runs compile, through its ``token_exchange_role``; a fleet
        imported without one is skipped there (its owner grants that read).
    inference_configuration:
        The inference configuration of the published versions (as
        ``EdgeInferenceComponent``'s ``configuration``); a component with a
        ``signing_key`` adds its public key (``signingPublicKey``), so that devices keep
        verifying the models the runs compile. Default: the recipe builder's.
    trigger_on_new_data:
        Start a run when an object is created under the training job's ``train``
        channel prefix (its first channel, if none is called ``train``), through
        EventBridge and the ``pipeline_trigger`` function. EventBridge notifications
        are switched on for a bucket created in this app; switch them on yourself for
        an imported one. Default: on.
    trigger_suffixes:
        Only keys ending in one of these start a run (write the marker last when a data
        set has many files, e.g. ``["_SUCCESS"]``). Default: every new object.
    trigger_reserved_concurrent_executions:
        Concurrent executions reserved for the trigger function (also the most it runs
        at once). Default: none reserved, it draws on the account's unreserved
        concurrency (:data:`neo_edge._checkov.RESERVED_CONCURRENCY_REASON`).
    model_upload_prefix:
        Objects created under this prefix are models trained elsewhere: the run skips
        training and compiles them. Default: no model uploads.
    schedule:
        Also start a run on this schedule (``events.Schedule.rate(...)``).
        Default: no schedule.
    alert_topic:
        Where failures are reported: any ``sns.ITopic``, including an imported one
        (``sns.Topic.from_topic_attributes(..., key_arn=...)`` when it is encrypted, so
        that the state machine may use the key). Default: a topic is created,
        encrypted with a KMS key of its own and accepting TLS only.
    poll_interval:
        How often jobs, the component and the deployment are polled. Default: 1 minute.
    training_max_runtime:
        Replaces the training job's stopping condition for pipeline runs (up to 28 days).
        Default: the training job's.
    deployment_timeout:
        How long a run waits for every device of the fleet to take the new version;
        after that it fails (devices that come online later still get it).
        Default: 1 hour.
    failure_threshold_percent:
        The share of devices that may fail the deployment before the run fails.
        Default: 0.
    canary:
        Deploy each new version through this
        :class:`~neo_edge.canary.CanaryRollout` (whose ``fleet`` must be ``fleet``)
        instead of to the fleet at once: to its canary thing group first, then to the
        fleet only once every canary device reported the version healthy (at most its
        ``max_canary_failures`` rejecting it in shadow or rolling it back); otherwise the
        run fails, the fleet keeps its version, and ``alert_topic`` is told. The canary's
        deployers, reports table, poll interval, timeouts and device configuration are
        used for those steps (so ``deployment_timeout`` and ``failure_threshold_percent``
        are not: the latter must stay 0), and its canary devices may read what the runs
        compile. Default: no canary, the fleet gets each version at once.
    job_name_prefix:
        Job names are ``<prefix>-t-<uuid>`` and ``<prefix>-c<n>-<uuid>``; at most 20
        letters, digits and hyphens. Default: derived from the construct's id and path.
    timeout:
        The longest a run may take. Default: 24 hours.

    A pipeline defined elsewhere (to start runs from another stack or app):
    :meth:`from_state_machine_arn`. Satisfies
    :class:`~neo_edge.interfaces.IRetrainPipeline`.

    Attributes
    ----------
    state_machine, state_machine_arn, trigger_function, publisher_function,
    deployer_function (with ``canary``, the canary's ``fleet_deployer``), canary (or
    ``None``), alert_topic, data_rule, schedule_rule, log_group, job_name_prefix
    """

    def __init__(
        self, scope: Construct, id: str, *,
        training_job: TrainingJob,
        compilation: Union[EdgeCompilationSet, NeoCompilationSet,
                           Sequence[Union[EdgeCompilationJob, NeoCompilationJob,
                                          EdgeCompilationSet, NeoCompilationSet]],
                           Mapping[str, Union[EdgeCompilationJob, NeoCompilationJob]]],
        component: EdgeInferenceComponent,
        fleet: IEdgeFleet,
        inference_configuration: Optional[Mapping[str, Any]] = None,
        trigger_on_new_data: bool = True,
        trigger_suffixes: Sequence[str] = (),
        trigger_reserved_concurrent_executions: Optional[int] = None,
        model_upload_prefix: Optional[str] = None,
        schedule: Optional[events.Schedule] = None,
        alert_topic: Optional[sns.ITopic] = None,
        poll_interval: cdk.Duration = cdk.Duration.minutes(1),
        training_max_runtime: Optional[cdk.Duration] = None,
        deployment_timeout: cdk.Duration = cdk.Duration.hours(1),
        failure_threshold_percent: float = 0,
        canary: Optional[CanaryRollout] = None,
        job_name_prefix: Optional[str] = None,
        timeout: cdk.Duration = cdk.Duration.hours(24),
    ) -> None:
        super().__init__(scope, id)
        # --- checks --------------------------------------------------------------------
        if not isinstance(training_job, TrainingJob):
            raise ValueError(f"training_job must be a TrainingJob (its settings are reused by "
                             f"every run); got {training_job!r}")
        jobs = _compilation_jobs(compilation)
        edge_jobs = [j for j in jobs if isinstance(j, EdgeCompilationJob)]
        endpoint_jobs = [j for j in jobs if isinstance(j, NeoCompilationJob)]
        bundles = getattr(component, "runtime_bundle_assets", None)
        if not isinstance(bundles, Mapping) or not hasattr(component, "component_name"):
            raise ValueError(f"component must be an EdgeInferenceComponent (the runs publish "
                             f"new versions of it with its device bundles); got {component!r}")
        missing = sorted({f"{j.target_spec.runtime_bundle} ({j.target_spec.name})"
                          for j in edge_jobs if j.target_spec.runtime_bundle not in bundles})
        if missing:
            raise ValueError(f"component must have a device bundle for the architecture of "
                             f"every compilation target; none for {', '.join(missing)}")
        if not hasattr(fleet, "thing_group_arn") or not hasattr(fleet, "grant_deploy"):
            raise ValueError(f"fleet must be an EdgeFleet; got {fleet!r}")
        _check_prefix("model_upload_prefix", model_upload_prefix)
        for suffix in trigger_suffixes:
            if not isinstance(suffix, str) or not suffix or "," in suffix:
                raise ValueError(f"trigger_suffixes must be non-empty key endings without ','; "
                                 f"got {suffix!r}")
        check_reserved_concurrency("trigger_reserved_concurrent_executions",
                                   trigger_reserved_concurrent_executions)
        interval_s = poll_interval.to_seconds()
        if not cdk.Token.is_unresolved(interval_s) and not 1 <= interval_s <= 3600:
            raise ValueError(f"poll_interval must be from 1 second to 1 hour; "
                             f"got {interval_s} seconds")
        if not 0 <= failure_threshold_percent <= 100:
            raise ValueError(f"failure_threshold_percent must be from 0 to 100; "
                             f"got {failure_threshold_percent!r}")
        if canary is not None:
            if not isinstance(canary, CanaryRollout):
                raise ValueError(f"canary must be a CanaryRollout; got {canary!r}")
            resolve = cdk.Stack.of(self).resolve
            if resolve(canary.fleet.thing_group_arn) != resolve(fleet.thing_group_arn):
                raise ValueError(f"canary must roll out to this pipeline's fleet "
                                 f"({getattr(fleet, 'fleet_name', fleet)}); got a CanaryRollout "
                                 f"of {getattr(canary.fleet, 'fleet_name', canary.fleet)}")
            if failure_threshold_percent:
                raise ValueError(f"failure_threshold_percent applies to a deployment straight to "
                                 f"the fleet; with canary, the canary devices' verdicts decide "
                                 f"(its max_canary_failures); got {failure_threshold_percent!r}")
        if job_name_prefix is None:
            job_name_prefix = (f"{_sanitize(id)[:MAX_JOB_NAME_PREFIX - 7].strip('-') or 'retrain'}"
                               f"-{_short_hash(self.node.path, 6)}")
        if (not isinstance(job_name_prefix, str) or len(job_name_prefix) > MAX_JOB_NAME_PREFIX
                or not _JOB_NAME_PREFIX.match(job_name_prefix)):
            raise ValueError(f"job_name_prefix must be 1 to {MAX_JOB_NAME_PREFIX} letters, digits "
                             f"and inner hyphens; got {job_name_prefix!r}")
        if len(jobs) > 99:
            raise ValueError(f"compilation may have at most 99 targets; got {len(jobs)}")

        stack = cdk.Stack.of(self)
        self.job_name_prefix = job_name_prefix
        self.training_job = training_job
        self.compilation_jobs = jobs
        bucket = training_job.bucket
        training_arn = stack.format_arn(service="sagemaker", resource="training-job",
                                        resource_name=f"{job_name_prefix}-*")
        compilation_arn = stack.format_arn(service="sagemaker", resource="compilation-job",
                                           resource_name=f"{job_name_prefix}-*")

        # --- alerts ----------------------------------------------------------------------
        if alert_topic is None:
            key = kms.Key(self, "AlertKey", enable_key_rotation=True,
                          description=f"neo-edge retraining alerts {self.node.path}")
            alert_topic = sns.Topic(self, "Alerts", master_key=key, enforce_ssl=True,
                                    display_name="neo-edge retraining alerts")
        self.alert_topic = alert_topic

        # --- the Greengrass functions -------------------------------------------------------
        runtime_uris = {
            j.target_spec.name: f"s3://{bundles[j.target_spec.runtime_bundle].s3_bucket_name}/"
                                f"{bundles[j.target_spec.runtime_bundle].s3_object_key}"
            for j in edge_jobs}
        publisher_env = {"COMPONENT_NAME": component.component_name,
                         "RUNTIME_URIS": stack.to_json_string(runtime_uris)}
        # Offline devices install from the wheels shipped with the component: every version
        # a run publishes ships them too.
        wheels = getattr(component, "device_wheel_assets", None) or {}
        if wheels:
            publisher_env["WHEELS_URIS"] = stack.to_json_string({
                j.target_spec.name: f"s3://{wheels[j.target_spec.arch].s3_bucket_name}/"
                                    f"{wheels[j.target_spec.arch].s3_object_key}"
                for j in edge_jobs})
        inference_configuration = dict(inference_configuration or {})
        signing_key = getattr(component, "signing_key", None)
        if signing_key is not None and "signingPublicKey" not in inference_configuration:
            # The versions a run publishes verify their models as the component's devices
            # do (the builds sign them: the same projects, with their signing variables).
            inference_configuration["signingPublicKey"] = signing_key.public_key
        if inference_configuration:
            publisher_env["INFERENCE_CONFIGURATION"] = json.dumps(inference_configuration,
                                                                  sort_keys=True)
        self.publisher_function = bundled_function(
            self, "Publisher", "component_publisher", include_runtime=True,
            environment=publisher_env, timeout=cdk.Duration.minutes(1),
            description=f"neo-edge: publishes {component.component_name} versions")
        _checkov.invoked_synchronously(self.publisher_function,
                                       "the retraining state machine (a LambdaInvoke task)")
        self._grant_publish(stack, component, edge_jobs)
        self.canary = canary
        if canary is None:
            self.deployer_function = bundled_function(
                self, "Deployer", "deployment_manager", timeout=cdk.Duration.minutes(1),
                environment={"TARGET_ARN": fleet.thing_group_arn,
                             "FAILURE_THRESHOLD_PERCENT": f"{failure_threshold_percent:g}"},
                description=f"neo-edge: deploys {component.component_name} to the fleet")
            _checkov.invoked_synchronously(self.deployer_function,
                                           "the retraining state machine (a LambdaInvoke task)")
            self._grant_deploy(stack, fleet)
        else:
            self.deployer_function = canary.fleet_deployer
        # Devices read what the runs compile (under each job's output prefix); a fleet
        # imported without its role leaves that to its owner. Canary devices take each
        # version first: they read it, and the component's own artifacts, too.
        for devices in [fleet] + ([canary.canary_fleet] if canary is not None else []):
            if getattr(devices, "token_exchange_role", None) is not None:
                devices.allow_artifact_read(bucket,
                                            *sorted({f"{j.output_prefix}*" for j in edge_jobs}))
        if canary is not None and getattr(canary.canary_fleet, "token_exchange_role",
                                          None) is not None:
            component.grant_artifacts_read(canary.canary_fleet.token_exchange_role)

        # --- the model source: a training run, or an uploaded model ----------------------
        if model_upload_prefix is not None:
            for role in {j.role.node.path: j.role for j in jobs}.values():
                policy = RolePolicy(self, role)
                policy.read(bucket, model_upload_prefix)
                policy.acknowledge()

        # --- the state machine ---------------------------------------------------------------
        definition = self._definition(stack, training_job, jobs, training_arn, compilation_arn,
                                      poll_interval, training_max_runtime, deployment_timeout,
                                      canary)
        self.log_group = logs.LogGroup(self, "Logs", retention=logs.RetentionDays.THREE_MONTHS,
                                       removal_policy=cdk.RemovalPolicy.RETAIN)
        self.state_machine = sfn.StateMachine(
            self, "Resource", definition_body=sfn.DefinitionBody.from_chainable(definition),
            timeout=timeout, tracing_enabled=True,
            logs=sfn.LogOptions(destination=self.log_group, level=sfn.LogLevel.ALL,
                                include_execution_data=True),
            comment="neo-edge retraining: train, compile for every target, publish, deploy")
        # Only SageMaker jobs take a role to pass; a build runs as its project's role.
        roles = {r.node.path: r for r in [training_job.role] + [j.role for j in endpoint_jobs]}
        self.state_machine.add_to_role_policy(iam.PolicyStatement(
            actions=["iam:PassRole"], resources=[r.role_arn for r in roles.values()],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}))
        topic_key = getattr(alert_topic, "master_key", None)
        if topic_key is not None:
            # Exact actions rather than the key's grant helpers (which add kms:GenerateDataKey*).
            self.state_machine.add_to_role_policy(iam.PolicyStatement(
                actions=["kms:GenerateDataKey", "kms:Decrypt"], resources=[topic_key.key_arn]))
        allow_redundant_depends_on(self.state_machine)
        self._acknowledge_machine()

        # --- triggers ------------------------------------------------------------------------
        channels = training_job.input_channels
        training_prefix = channels.get("train", next(iter(channels.values())))
        ignore = sorted({training_job.output_prefix, *(j.output_prefix for j in jobs)})
        trigger_env = {"STATE_MACHINE_ARN": self.state_machine.state_machine_arn,
                       "TRAINING_PREFIX": training_prefix,
                       "IGNORE_PREFIXES": ",".join(ignore)}
        if model_upload_prefix is not None:
            trigger_env["MODEL_PREFIX"] = model_upload_prefix
        if trigger_suffixes:
            trigger_env["TRIGGER_SUFFIXES"] = ",".join(trigger_suffixes)
        self.trigger_function = None
        self.failed_triggers = None
        self.data_rule = None
        if trigger_on_new_data:
            self.trigger_function = bundled_function(
                self, "Trigger", "pipeline_trigger", environment=trigger_env,
                reserved_concurrent_executions=trigger_reserved_concurrent_executions,
                description="neo-edge: starts retraining on new training data")
            self.state_machine.grant_start_execution(self.trigger_function)
            #: S3 events the trigger failed on (after Lambda's retries), with the error.
            self.failed_triggers = keep_failed_invocations(self.trigger_function, "FailedTriggers")
            prefixes = [training_prefix] + ([model_upload_prefix] if model_upload_prefix else [])
            self.data_rule = events.Rule(
                self, "NewData",
                description=f"new training data (or models) in {self.node.path}'s bucket",
                event_pattern=events.EventPattern(
                    source=["aws.s3"], detail_type=["Object Created"],
                    detail={"bucket": {"name": [bucket.bucket_name]},
                            "object": {"key": [{"prefix": p} for p in prefixes]}}),
                targets=[targets.LambdaFunction(self.trigger_function, retry_attempts=4)])
            cfn_bucket = bucket.node.default_child
            if isinstance(cfn_bucket, s3.CfnBucket):
                cfn_bucket.add_property_override(
                    "NotificationConfiguration.EventBridgeConfiguration.EventBridgeEnabled", True)
        self.schedule_rule = None
        if schedule is not None:
            self.schedule_rule = events.Rule(
                self, "Schedule", schedule=schedule,
                description=f"scheduled retraining {self.node.path}",
                targets=[targets.SfnStateMachine(
                    self.state_machine,
                    input=events.RuleTargetInput.from_object({"trigger": "schedule"}))])

    # ------------------------------------------------------------------------------

    @classmethod
    def from_state_machine_arn(cls, scope: Construct, id: str,
                               state_machine_arn: str) -> IRetrainPipeline:
        """A retraining pipeline that exists already, by its state machine's ARN
        (``RetrainPipeline.state_machine_arn`` of another stack or app).

        To start runs from elsewhere (``grant_start_execution``) and watch them
        (``metric_failed``, ``metric_succeeded``). Nothing is created.

        Parameters
        ----------
        state_machine_arn:
            ``arn:aws:states:<region>:<account>:stateMachine:<name>`` (a token is taken
            as it is).
        """
        if not cdk.Token.is_unresolved(state_machine_arn) and (
                not isinstance(state_machine_arn, str)
                or not _STATE_MACHINE_ARN.match(state_machine_arn)):
            raise ValueError(f"state_machine_arn must be a Step Functions state machine ARN "
                             f"(arn:aws:states:<region>:<account>:stateMachine:<name>); got "
                             f"{state_machine_arn!r}")
        return _ImportedRetrainPipeline(scope, id, state_machine_arn)

    @property
    def state_machine_arn(self) -> str:
        """The state machine's ARN."""
        return self.state_machine.state_machine_arn

    # ------------------------------------------------------------------------------

    def _definition(self, stack: cdk.Stack, training_job: TrainingJob, jobs: list,
                    training_arn: str, compilation_arn: str, poll_interval: cdk.Duration,
                    training_max_runtime: Optional[cdk.Duration],
                    deployment_timeout: cdk.Duration,
                    canary: Optional[CanaryRollout] = None) -> sfn.IChainable:
        prefix = self.job_name_prefix
        run_id = sfn.JsonPath.string_at(f"{RUN_PATH}.id")

        # Failure: one notification, then the execution fails with the same error.
        failed = sfn.Fail(self, "Retraining failed", error_path=f"{ERROR_PATH}.Error",
                          cause_path=f"{ERROR_PATH}.Cause")
        notify = tasks.SnsPublish(
            self, "Notify the failure", topic=self.alert_topic,
            subject="neo-edge retraining failed",
            message=sfn.TaskInput.from_text(sfn.JsonPath.format(
                "neo-edge retraining {} failed: {}: {}",
                sfn.JsonPath.string_at("$$.Execution.Name"),
                sfn.JsonPath.string_at(f"{ERROR_PATH}.Error"),
                sfn.JsonPath.string_at(f"{ERROR_PATH}.Cause"))),
            result_path=sfn.JsonPath.DISCARD)
        notify.add_catch(failed, result_path="$.notify_error")
        notify.next(failed)

        def catch(state) -> None:
            state.add_catch(notify, errors=[sfn.Errors.ALL], result_path=ERROR_PATH)

        def give_up(name: str, error: str, cause: str) -> sfn.Pass:
            return sfn.Pass(self, name, result_path=ERROR_PATH,
                            result=sfn.Result.from_object({"Error": error, "Cause": cause}))

        prepare = sfn.Pass(self, "Prepare the run", result_path=RUN_PATH, parameters={
            "id": sfn.JsonPath.uuid(),
            "execution": sfn.JsonPath.string_at("$$.Execution.Name")})

        # Training, in a one-branch Parallel so that its Fail states are caught here.
        train = sfn.Parallel(self, "Train", result_path=MODEL_PATH,
                             result_selector={"model_data_uri": sfn.JsonPath.array_get_item(
                                 sfn.JsonPath.list_at("$[*].model_data_uri"), 0)})
        train.branch(training_job_states(
            self, training_job=training_job, poll_interval=poll_interval,
            max_runtime=training_max_runtime, job_arn=training_arn,
            job_name=sfn.JsonPath.format(f"{prefix}-t-{{}}", run_id)))
        catch(train)
        uploaded = sfn.Pass(self, "Use the uploaded model", result_path=MODEL_PATH,
                            parameters={"model_data_uri": sfn.JsonPath.string_at(
                                "$.model_data_uri")})

        # The component's models: neo-edge's compiler, one CodeBuild build per target.
        compile_all = sfn.Parallel(self, "Compile for every target", result_path=COMPILED_PATH)
        for job in jobs:
            if isinstance(job, EdgeCompilationJob):
                compile_all.branch(edge_compilation_states(self, job=job,
                                                           poll_interval=poll_interval))
        catch(compile_all)
        # Endpoint targets: SageMaker Neo, output kept in $.endpoint_compiled (not published;
        # the endpoint keeps serving the model it was deployed with).
        compiled_next: sfn.IChainable = compile_all
        if any(isinstance(j, NeoCompilationJob) for j in jobs):
            compile_endpoints = sfn.Parallel(self, "Compile for the endpoints",
                                             result_path=ENDPOINT_COMPILED_PATH)
            for i, job in enumerate(jobs):
                if isinstance(job, NeoCompilationJob):
                    compile_endpoints.branch(compilation_job_states(
                        self, job=job, poll_interval=poll_interval, job_arn=compilation_arn,
                        job_name=sfn.JsonPath.format(f"{prefix}-c{i}-{{}}", run_id)))
            catch(compile_endpoints)
            compile_all.next(compile_endpoints)
            compiled_next = compile_endpoints

        # Publish the component version and wait until it is deployable.
        component_fields = {
            "component_arn": sfn.JsonPath.string_at("$.Payload.component_arn"),
            "component_name": sfn.JsonPath.string_at("$.Payload.component_name"),
            "component_version": sfn.JsonPath.string_at("$.Payload.component_version"),
            "done": sfn.JsonPath.string_at("$.Payload.done")}
        publish = self._invoke("Publish the component version", self.publisher_function, {
            "action": "publish", "targets": sfn.JsonPath.list_at(COMPILED_PATH),
            "description": sfn.JsonPath.format("neo-edge model retrained by {}",
                                               sfn.JsonPath.string_at("$$.Execution.Name"))},
            component_fields, "$.component")
        check_component = self._invoke("Check the component version", self.publisher_function, {
            "action": "status",
            "component_arn": sfn.JsonPath.string_at("$.component.component_arn")},
            component_fields, "$.component")
        for state in (publish, check_component):
            catch(state)

        interval_s = int(poll_interval.to_seconds())
        component_polls = _max_polls(600, poll_interval)
        done = sfn.Succeed(self, "Retrained and deployed")
        if canary is None:
            deploy = self._invoke("Deploy to the fleet", self.deployer_function, {
                "action": "deploy",
                "component_name": sfn.JsonPath.string_at("$.component.component_name"),
                "component_version": sfn.JsonPath.string_at("$.component.component_version"),
                "request_token": sfn.JsonPath.string_at("$$.Execution.Name")},
                {"deployment_id": sfn.JsonPath.string_at("$.Payload.deployment_id"),
                 "done": sfn.JsonPath.string_at("$.Payload.done")}, "$.deployment")
            check_deployment = self._invoke("Check the deployment", self.deployer_function, {
                "action": "status",
                "deployment_id": sfn.JsonPath.string_at("$.deployment.deployment_id")},
                {"deployment_id": sfn.JsonPath.string_at("$.Payload.deployment_id"),
                 "done": sfn.JsonPath.string_at("$.Payload.done"),
                 "succeeded": sfn.JsonPath.number_at("$.Payload.succeeded"),
                 "failed": sfn.JsonPath.number_at("$.Payload.failed"),
                 "pending": sfn.JsonPath.number_at("$.Payload.pending")}, "$.deployment")
            for state in (deploy, check_deployment):
                catch(state)
            deployment_polls = max(1, math.ceil(int(deployment_timeout.to_seconds())
                                                / interval_s))
            deployed_loop = self._poll(
                "the deployment", check_deployment, "$.deployment.done", done, deployment_polls,
                poll_interval, give_up(
                    "The deployment took too long", "DeploymentTimedOut",
                    f"devices were still taking the deployment after {deployment_polls} polls "
                    f"{interval_s} seconds apart (Greengrass keeps deploying to them)"
                ).next(notify))
            deploy.next(deployed_loop)
        else:
            # The canary group, its devices' verdicts, then the fleet; a stop goes to the
            # same notification as every other failure ($.error holds Error and Cause).
            deploy = canary.rollout_states(self, notify=notify, component_path="$.component",
                                           done=done)
        component_loop = self._poll(
            "the component version", check_component, "$.component.done", deploy,
            component_polls, poll_interval, give_up(
                "The component took too long", "ComponentVersionNotDeployable",
                f"the component version was not deployable after {component_polls} polls "
                f"{interval_s} seconds apart").next(notify))
        publish.next(component_loop)
        compiled_next.next(publish)
        train.next(compile_all)
        uploaded.next(compile_all)

        source = (sfn.Choice(self, "Train or use the uploaded model?")
                  .when(sfn.Condition.and_(
                      sfn.Condition.string_equals("$.trigger", "model"),
                      sfn.Condition.is_present("$.model_data_uri")), uploaded)
                  .otherwise(train))
        return sfn.Chain.start(prepare).next(source)

    def _invoke(self, name: str, fn, payload: dict, selector: dict,
                result_path: str) -> tasks.LambdaInvoke:
        task = tasks.LambdaInvoke(self, name, lambda_function=fn,
                                  payload=sfn.TaskInput.from_object(payload),
                                  result_selector=selector, result_path=result_path)
        task.add_retry(errors=[RETRYABLE_ERROR], interval=cdk.Duration.seconds(10),
                       max_attempts=6, backoff_rate=2)
        return task

    def _poll(self, what: str, check: sfn.TaskStateBase, done_path: str, on_done: sfn.IChainable,
              max_polls: int, poll_interval: cdk.Duration, on_timeout: sfn.IChainable
              ) -> sfn.IChainable:
        """``Start polling <what>`` -> ``Is <what> done?``: done -> ``on_done``;
        ``max_polls`` reached -> ``on_timeout``; else wait, count, ``check``, ask again."""
        counter = f"$.polls_{re.sub(r'[^a-z]+', '_', what.lower()).strip('_')}"
        start = sfn.Pass(self, f"Start polling {what}", result_path=counter,
                         result=sfn.Result.from_object({"attempts": 0}))
        wait = sfn.Wait(self, f"Wait for {what}", time=sfn.WaitTime.duration(poll_interval))
        count = sfn.Pass(self, f"Count polls of {what}", result_path=counter, parameters={
            "attempts": sfn.JsonPath.math_add(sfn.JsonPath.number_at(f"{counter}.attempts"), 1)})
        ask = (sfn.Choice(self, f"Is {what} done?")
               .when(sfn.Condition.boolean_equals(done_path, True), on_done)
               .when(sfn.Condition.number_greater_than_equals(f"{counter}.attempts", max_polls),
                     on_timeout)
               .otherwise(wait))
        wait.next(count).next(check).next(ask)
        return start.next(ask)

    # ------------------------------------------------------------------------------

    def _grant_publish(self, stack: cdk.Stack, component: EdgeInferenceComponent,
                       jobs: list) -> None:
        fn = self.publisher_function
        name = component.component_name
        component_arn = stack.format_arn(service="greengrass", resource="components",
                                         resource_name=name,
                                         arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
        versions = f"{component_arn}:versions:*"
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="PublishComponentVersions", actions=["greengrass:CreateComponentVersion"],
            resources=[component_arn, versions]))
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="DescribeComponentVersions", actions=["greengrass:DescribeComponent"],
            resources=[versions]))
        acknowledge_wildcards(
            fn.role, [versions],
            reason="component versions are derived from the content at run time; the function "
                   "may create and describe versions of its one component only")
        # Greengrass reads (and digests) the artifacts with the caller's permissions, and the
        # function reads their version ids: the device bundles and the compiled outputs.
        bundles = component.runtime_bundle_assets
        arches = sorted({j.target_spec.runtime_bundle for j in jobs})
        wheels = getattr(component, "device_wheel_assets", None) or {}
        shipped = [bundles[a] for a in arches] + [wheels[a] for a in
                                                  sorted({j.target_spec.arch for j in jobs})
                                                  if a in wheels]
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="ReadDeviceBundles", actions=["s3:GetObject"],
            resources=sorted({asset.bucket.arn_for_objects(asset.s3_object_key)
                              for asset in shipped}, key=str)))
        compiled = sorted({f"{j.output_prefix}*" for j in jobs})
        bucket = jobs[0].bucket
        objects = [bucket.arn_for_objects(p) for p in compiled]
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="ReadCompiledModels", actions=["s3:GetObject"], resources=objects))
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant_decrypt(fn)
        acknowledge_wildcards(
            fn.role, objects,
            reason="each run writes its compiled models under the compilation job's output "
                   "prefix with names SageMaker chooses; the function may read that prefix only")

    def _grant_deploy(self, stack: cdk.Stack, fleet: IEdgeFleet) -> None:
        fn = self.deployer_function
        fleet.grant_deploy(fn)
        core_devices = stack.format_arn(service="greengrass", resource="coreDevices",
                                        resource_name="*",
                                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="FollowDevices", actions=["greengrass:ListEffectiveDeployments"],
            resources=[core_devices]))
        fn.add_to_role_policy(iam.PolicyStatement(
            sid="ListFleetDevices", actions=["greengrass:ListCoreDevices"], resources=["*"]))
        acknowledge_wildcards(
            fn.role, ["*"],
            reason="greengrass:ListCoreDevices supports no resource-level permissions; the "
                   "function lists the core devices of its fleet's thing group only")
        acknowledge_wildcards(
            fn.role, [core_devices,
                      stack.format_arn(service="iot", resource="thing", resource_name="*"),
                      stack.format_arn(service="iot", resource="job", resource_name="*"),
                      stack.format_arn(service="greengrass", resource="deployments",
                                       resource_name="*",
                                       arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)],
            reason="a Greengrass deployment creates an IoT job with a generated id for the "
                   "fleet's thing group and runs on whichever core devices are in the group; "
                   "their ids are known only at run time. The thing group itself is named "
                   "exactly")

    def _acknowledge_machine(self) -> None:
        functions = [self.publisher_function] + (
            [self.deployer_function] if self.canary is None
            else [self.canary.canary_deployer, self.canary.fleet_deployer])
        validations = acknowledge_state_machine_role(self.state_machine, functions)
        if validations is None:
            return
        for resource in ("training-job", "compilation-job"):
            validations.acknowledge(cdk.Acknowledgment(
                id=f"AwsSolutions::AwsSolutions-IAM5[Resource::"
                   f"{nag_arn(self, 'sagemaker', f'{resource}/{self.job_name_prefix}-*')}]",
                reason="each run names its jobs <prefix>-<uuid> at run time; the prefix is this "
                       "pipeline's own, so the state machine can only create, describe and "
                       "stop the jobs it names"))


class _ImportedRetrainPipeline(_StateMachineRuns, Construct):
    """What :meth:`RetrainPipeline.from_state_machine_arn` returns (nothing is created)."""

    def __init__(self, scope: Construct, id: str, state_machine_arn: str) -> None:
        super().__init__(scope, id)
        self.state_machine = sfn.StateMachine.from_state_machine_arn(
            self, "Resource", state_machine_arn)
        self.state_machine_arn = self.state_machine.state_machine_arn
