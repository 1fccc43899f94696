"""What ``TrainingJob``, ``NeoCompilationJob`` and ``EdgeCompilationJob`` share: one
custom-resource provider per stack for deploy-time jobs (the CDK Provider framework over
``lambda/sagemaker_job``: SageMaker jobs, and CodeBuild builds of neo-edge's compiler),
job-name prefixes, and the SageMaker execution role's common permissions.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Optional

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_logs as logs
from aws_cdk import aws_stepfunctions as sfn
from aws_cdk import custom_resources as cr
from constructs import Construct

from . import _checkov
from ._lambda import allow_redundant_depends_on, bundled_function
from ._nag import as_seen_from

#: The handler's limit for a job-name prefix (63 - 12 hash digits - 1 hyphen).
MAX_PREFIX = 50
#: CloudFormation waits at most an hour for a custom resource.
TOTAL_TIMEOUT = cdk.Duration.hours(1)
#: The longest a deploy-time job may run, leaving time to start instances and poll.
MAX_JOB_RUNTIME = cdk.Duration.minutes(50)
#: How often ``is_complete`` polls.
QUERY_INTERVAL = cdk.Duration.seconds(30)

_PROVIDER_ID = "NeoEdgeSageMakerJobProvider"


def _sanitize(text: str) -> str:
    cleaned = re.sub(r"[^a-zA-Z0-9]+", "-", text).strip("-")
    return cleaned or "x"


def _short_hash(text: str, n: int = 6) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def nag_arn(scope: Construct, service: str, resource: str) -> str:
    """An ARN spelled the way cdk-nag prints it in a finding (tokens as ``<AWS::...>``)."""
    stack = cdk.Stack.of(scope)
    region = "<AWS::Region>" if cdk.Token.is_unresolved(stack.region) else stack.region
    account = "<AWS::AccountId>" if cdk.Token.is_unresolved(stack.account) else stack.account
    return f"arn:<AWS::Partition>:{service}:{region}:{account}:{resource}"


def nag_flatten(scope: Construct, value: object) -> str:
    """``value`` (a token or string) as cdk-nag prints it in a finding.

    A port of cdk-nag's ``flattenCfnReference``: ``Ref`` -> ``<Id>``, ``Fn::GetAtt`` ->
    ``<Id.Attr>``, ``Fn::Join`` joined, ``${X}`` -> ``<X>``.
    """
    def visit(node: object) -> str:
        if node is None:
            return ""
        if isinstance(node, str):
            return node.replace("${", "<").replace("}", ">")
        if isinstance(node, dict):
            if "Fn::Join" in node:
                delimiter, items = node["Fn::Join"]
                return delimiter.join(visit(i) for i in items)
            if "Fn::Sub" in node:
                return visit(node["Fn::Sub"])
            if "Fn::GetAtt" in node:
                resource, attribute = node["Fn::GetAtt"]
                return f"<{visit(resource)}.{visit(attribute)}>"
            if "Fn::ImportValue" in node:
                return visit(node["Fn::ImportValue"])
            if "Ref" in node:
                return f"<{visit(node['Ref'])}>"
        return json.dumps(node, separators=(",", ":"))
    return visit(cdk.Stack.of(scope).resolve(as_seen_from(scope, value)))


def acknowledge_wildcards(scope: Construct, policy: Optional[Construct], resources: list,
                          reason: str) -> None:
    """Acknowledge IAM5 for exactly these wildcard ``resources`` of ``policy``."""
    if policy is None:
        return
    for resource in resources:
        cdk.Validations.of(policy).acknowledge(cdk.Acknowledgment(
            id=f"AwsSolutions::AwsSolutions-IAM5[Resource::{nag_flatten(scope, resource)}]",
            reason=reason))


class RolePolicy:
    """Least-privilege statements for a job role: exact actions, prefix-scoped objects.

    Statements go to the role's default policy; wildcard object ARNs (a key prefix and
    ``*``) are collected so the caller acknowledges exactly those in cdk-nag.
    """

    def __init__(self, scope: Construct, role: iam.IRole) -> None:
        self._scope = scope
        self.role = role
        self._wildcards: list = []

    def add(self, actions: list, resources: list, conditions: Optional[dict] = None) -> None:
        self.role.add_to_principal_policy(iam.PolicyStatement(
            actions=actions, resources=resources, conditions=conditions))

    def read(self, bucket: s3.IBucket, prefix: str) -> None:
        objects = bucket.arn_for_objects(f"{prefix}*")
        self.add(["s3:GetObject"], [objects])
        self.add(["s3:ListBucket"], [bucket.bucket_arn],
                 {"StringLike": {"s3:prefix": [f"{prefix}*"]}})
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant(self.role, "kms:Decrypt")
        self._wildcards.append(objects)

    def write(self, bucket: s3.IBucket, prefix: str) -> None:
        objects = bucket.arn_for_objects(f"{prefix}*")
        self.add(["s3:PutObject", "s3:AbortMultipartUpload"], [objects])
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant(self.role, "kms:GenerateDataKey", "kms:Encrypt",
                                        "kms:Decrypt")
        self._wildcards.append(objects)

    def acknowledge(self) -> None:
        """Acknowledge the key-prefix wildcards (only on a role this library created)."""
        if not isinstance(self.role, iam.Role):
            return
        acknowledge_wildcards(
            self._scope, self.role.node.try_find_child("DefaultPolicy"), self._wildcards,
            "SageMaker reads and writes objects whose keys it (or the user's data) names "
            "under a fixed key prefix of the artifact bucket; the wildcard covers only that "
            "prefix, and the exact S3 actions needed are listed")


def _logical_id(construct: Construct) -> str:
    child = construct.node.default_child
    return cdk.Stack.of(construct).resolve(child.logical_id)  # type: ignore[union-attr]


def acknowledge(construct: Construct, rule: str, reason: str) -> None:
    cdk.Validations.of(construct).acknowledge(
        cdk.Acknowledgment(id=f"AwsSolutions::AwsSolutions-{rule}", reason=reason))


class SageMakerJobProvider(Construct):
    """The stack's one provider for deploy-time SageMaker jobs. Use :meth:`of`."""

    @classmethod
    def of(cls, scope: Construct) -> "SageMakerJobProvider":
        stack = cdk.Stack.of(scope)
        existing = stack.node.try_find_child(_PROVIDER_ID)
        if existing is not None:
            return existing  # type: ignore[return-value]
        return cls(stack, _PROVIDER_ID)

    def __init__(self, scope: Construct, id: str) -> None:
        super().__init__(scope, id)
        stack = cdk.Stack.of(self)
        name = stack.stack_name if not cdk.Token.is_unresolved(stack.stack_name) else "stack"
        #: Every job of this stack is named ``<stack_token>-...``; the handlers may touch
        #: only those.
        self.stack_token = f"{_sanitize(name)[:14].strip('-')}-{_short_hash(stack.node.path, 4)}"

        self.on_event = bundled_function(
            self, "OnEvent", "sagemaker_job", handler="on_event",
            timeout=cdk.Duration.minutes(2),
            description="neo-edge: starts and stops deploy-time SageMaker jobs")
        self.is_complete = bundled_function(
            self, "IsComplete", "sagemaker_job", handler="is_complete",
            timeout=cdk.Duration.minutes(1),
            description="neo-edge: polls deploy-time SageMaker jobs")

        jobs = []
        for resource, actions in (("training-job", "TrainingJob"),
                                  ("compilation-job", "CompilationJob")):
            arn = stack.format_arn(service="sagemaker", resource=resource,
                                   resource_name=f"{self.stack_token}-*")
            jobs.append((arn, nag_arn(self, "sagemaker", f"{resource}/{self.stack_token}-*")))
            self.on_event.add_to_role_policy(iam.PolicyStatement(
                actions=[f"sagemaker:Create{actions}", f"sagemaker:Describe{actions}",
                         f"sagemaker:Stop{actions}"], resources=[arn]))
            self.is_complete.add_to_role_policy(iam.PolicyStatement(
                actions=[f"sagemaker:Describe{actions}"], resources=[arn]))
        for fn in (self.on_event, self.is_complete):
            for _, finding in jobs:
                cdk.Validations.of(fn.role.node.find_child("DefaultPolicy")).acknowledge(
                    cdk.Acknowledgment(
                        id=f"AwsSolutions::AwsSolutions-IAM5[Resource::{finding}]",
                        reason="job names are derived from a hash of the job's inputs at "
                               "deploy time, so they are known only by prefix; the prefix "
                               "is this stack's own, so the handler can only start, describe "
                               "and stop the jobs this stack names"))

        # The framework's own functions and its waiter state machine.
        framework_logs = logs.LogGroup(self, "FrameworkLogGroup",
                                       retention=logs.RetentionDays.THREE_MONTHS)
        waiter_logs = logs.LogGroup(self, "WaiterLogGroup",
                                    retention=logs.RetentionDays.THREE_MONTHS)
        log_policy = iam.PolicyDocument(statements=[iam.PolicyStatement(
            actions=["logs:CreateLogStream", "logs:PutLogEvents"],
            resources=[framework_logs.log_group_arn])])
        on_event_role = iam.Role(self, "FrameworkOnEventRole",
                                 assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                                 inline_policies={"Logs": log_policy})
        complete_role = iam.Role(self, "FrameworkCompleteRole",
                                 assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                                 inline_policies={"Logs": log_policy})
        self.provider = cr.Provider(
            self, "Provider",
            on_event_handler=self.on_event,
            is_complete_handler=self.is_complete,
            query_interval=QUERY_INTERVAL,
            total_timeout=TOTAL_TIMEOUT,
            framework_on_event_role=on_event_role,
            framework_complete_and_timeout_role=complete_role,
            log_group=framework_logs,
            disable_waiter_state_machine_logging=False,
            waiter_state_machine_log_options=cr.LogOptions(
                destination=waiter_logs, level=sfn.LogLevel.ALL, include_execution_data=False),
        )
        self._acknowledge_framework(on_event_role, complete_role)
        for child in ("framework-onEvent", "framework-isComplete", "framework-onTimeout",
                      "waiter-state-machine"):
            allow_redundant_depends_on(self.provider.node.find_child(child))
        self._skip_dead_letter_queues()

    def _skip_dead_letter_queues(self) -> None:
        """Why no function of the provider has a dead-letter queue (checkov CKV_AWS_116)."""
        for fn in (self.on_event, self.is_complete):
            _checkov.invoked_synchronously(fn, "the CDK Provider framework's functions")
        for child in ("framework-isComplete", "framework-onTimeout"):
            _checkov.invoked_synchronously(self.provider.node.find_child(child),
                                           "the Provider framework's waiter state machine")
        _checkov.skip(
            self.provider.node.find_child("framework-onEvent"), "CKV_AWS_116",
            "CloudFormation invokes it asynchronously and waits for the answer it sends to the "
            "event's callback URL (FAILED on any error of its own); an event it never ran on "
            "fails the stack operation at the custom resource's timeout, which a dead-letter "
            "queue would not change")

    def _acknowledge_framework(self, on_event_role: iam.Role, complete_role: iam.Role) -> None:
        invoke_reason = ("the CDK Provider framework invokes its handler functions by ARN with "
                         "a version or alias qualifier (<function arn>:*); the wildcard covers "
                         "only qualifiers of that one function")
        handlers = [_logical_id(self.on_event), _logical_id(self.is_complete)]
        for role in (on_event_role, complete_role):
            policy = role.node.find_child("DefaultPolicy")
            for logical in handlers:
                cdk.Validations.of(policy).acknowledge(cdk.Acknowledgment(
                    id=f"AwsSolutions::AwsSolutions-IAM5[Resource::<{logical}.Arn>:*]",
                    reason=invoke_reason))
        waiter = self.provider.node.find_child("waiter-state-machine")
        waiter_policy = waiter.node.find_child("Role").node.find_child("DefaultPolicy")
        for child in ("framework-isComplete", "framework-onTimeout"):
            logical = _logical_id(self.provider.node.find_child(child))
            cdk.Validations.of(waiter_policy).acknowledge(cdk.Acknowledgment(
                id=f"AwsSolutions::AwsSolutions-IAM5[Resource::<{logical}.Arn>:*]",
                reason=invoke_reason))
        cdk.Validations.of(waiter_policy).acknowledge(cdk.Acknowledgment(
            id="AwsSolutions::AwsSolutions-IAM5[Resource::*]",
            reason=_checkov.LOG_DELIVERY_REASON))
        acknowledge(waiter, "SF2",
                    "the waiter is the CDK Provider framework's internal state machine, which "
                    "only calls the is-complete function on a timer; both handler functions "
                    "have active X-Ray tracing and the waiter logs every event at level ALL")

    def job_prefix(self, job: Construct) -> str:
        """``<stack token>-<job id>-<hash of its path>``, at most :data:`MAX_PREFIX` long."""
        tail = f"-{_short_hash(job.node.path, 6)}"
        room = MAX_PREFIX - len(self.stack_token) - 1 - len(tail)
        middle = _sanitize(job.node.id)[:room].strip("-") or "job"
        return f"{self.stack_token}-{middle}{tail}"

    def grant_pass_role(self, role: iam.IRole) -> None:
        """Let the starting handler pass ``role`` to SageMaker (and nowhere else)."""
        self.on_event.add_to_role_policy(iam.PolicyStatement(
            actions=["iam:PassRole"], resources=[role.role_arn],
            conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}}))

    def job_resource(self, scope: Construct, id: str, *, kind: str, resource_type: str,
                     request: dict, role: iam.IRole,
                     run_id: Optional[str] = None) -> cdk.CustomResource:
        """The custom resource for one job run as ``role``.

        ``Request`` travels as a JSON string so that numbers and booleans stay numbers and
        booleans; a ``run_id`` forces a new job for the same inputs. The job starts only
        once ``role`` can do what it needs (its default policy exists).
        """
        self.grant_pass_role(role)
        resource = cdk.CustomResource(
            scope, id,
            service_token=self.provider.service_token,
            resource_type=resource_type,
            properties={"Kind": kind, "JobNamePrefix": self.job_prefix(scope),
                        "Request": cdk.Stack.of(scope).to_json_string(request)},
        )
        if run_id:
            resource.node.default_child.add_property_override("RunId", run_id)
        default_policy = role.node.try_find_child("DefaultPolicy")
        if default_policy is not None:
            resource.node.add_dependency(default_policy)
        return resource

    def build_resource(self, scope: Construct, id: str, *, project, request: dict,
                       output_uri: str, role: iam.IRole,
                       run_id: Optional[str] = None) -> cdk.CustomResource:
        """The custom resource for one CodeBuild build of ``project`` (kind ``build``).

        ``request`` is the ``StartBuild`` request without the project's name (the
        environment overrides); ``output_uri`` the ``s3://`` prefix the build writes
        ``model.tar.gz`` under. The handlers may start, follow and stop builds of that
        project only; the build starts once ``role`` can do what it needs.
        """
        self.on_event.add_to_role_policy(iam.PolicyStatement(
            actions=["codebuild:StartBuild", "codebuild:BatchGetBuilds", "codebuild:StopBuild"],
            resources=[project.project_arn]))
        self.is_complete.add_to_role_policy(iam.PolicyStatement(
            actions=["codebuild:BatchGetBuilds"], resources=[project.project_arn]))
        resource = cdk.CustomResource(
            scope, id,
            service_token=self.provider.service_token,
            resource_type="Custom::NeoEdgeCompilationBuild",
            properties={"Kind": "build", "ProjectName": project.project_name,
                        "OutputUri": output_uri,
                        "Request": cdk.Stack.of(scope).to_json_string(request)},
        )
        if run_id:
            resource.node.default_child.add_property_override("RunId", run_id)
        default_policy = role.node.try_find_child("DefaultPolicy")
        if default_policy is not None:
            resource.node.add_dependency(default_policy)
        return resource


def sagemaker_execution_role(scope: Construct, id: str, *, log_group_family: str,
                             description: str) -> iam.Role:
    """A role SageMaker assumes for a job, allowed to write the job's logs only."""
    stack = cdk.Stack.of(scope)
    log_resource = f"log-group:/aws/sagemaker/{log_group_family}:*"
    role = iam.Role(
        scope, id,
        assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
        description=description,
        inline_policies={"Logs": iam.PolicyDocument(statements=[iam.PolicyStatement(
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                     "logs:DescribeLogStreams"],
            resources=[stack.format_arn(service="logs", resource=log_resource,
                                        arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)])])},
    )
    cdk.Validations.of(role.node.default_child).acknowledge(cdk.Acknowledgment(
        id=f"AwsSolutions::AwsSolutions-IAM5[Resource::{nag_arn(scope, 'logs', log_resource)}]",
        reason=f"SageMaker writes each job's logs to streams it names at run time in the "
               f"/aws/sagemaker/{log_group_family} log group; the wildcard covers only the "
               f"streams of that one log group"))
    return role


def grant_key(key: Optional[kms.IKey], grantee: iam.IGrantable) -> None:
    """Let SageMaker encrypt volumes and outputs with ``key``.

    Encrypt, decrypt, data keys and ``DescribeKey`` on the key; ``kms:CreateGrant`` only
    with ``kms:GrantIsForAWSResource`` (SageMaker creates grants for the volumes it attaches;
    the role itself may not hand the key to anyone else).
    """
    if key is None:
        return
    key.grant(grantee, "kms:Encrypt", "kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey")
    grantee.grant_principal.add_to_principal_policy(iam.PolicyStatement(
        actions=["kms:CreateGrant"], resources=[key.key_arn],
        conditions={"Bool": {"kms:GrantIsForAWSResource": "true"}}))


def check_runtime(name: str, value: cdk.Duration) -> int:
    """Seconds of ``value``; raise when a deploy-time job could outlive CloudFormation's wait."""
    seconds = int(value.to_seconds())
    limit = int(MAX_JOB_RUNTIME.to_seconds())
    if not cdk.Token.is_unresolved(seconds) and not 0 < seconds <= limit:
        raise ValueError(f"{name} must be between 1 second and {limit // 60} minutes for a "
                         f"deploy-time job (CloudFormation waits at most one hour for a custom "
                         f"resource; run longer jobs in the RetrainPipeline); got "
                         f"{seconds} seconds")
    return seconds
