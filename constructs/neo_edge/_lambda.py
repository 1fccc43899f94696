"""One way to build every Lambda function of the library: local bundling, no Docker.

Every handler lives in ``lambda/<name>/<name>.py`` with a function named ``handler``.
:func:`bundled_function` turns such a folder into a ``lambda.Function`` that passes the
AwsSolutions cdk-nag pack:

- the asset is bundled on this machine (``cdk.ILocalBundling``): the function folder,
  plus, when asked, the pure-Python ``neo_edge_runtime`` package and Powertools for AWS
  Lambda copied from where they are installed (nothing is downloaded, Docker is never run).
  The function folders are package data of ``neo_edge`` (``neo_edge/_functions/<name>/``),
  so an installed wheel bundles the same files as a checkout;
  the asset hash is the hash of that output, so a re-synth with nothing changed is
  byte-identical;
- a role of its own with only an inline policy to write to the function's own log group
  and to send X-Ray traces (no ``AWSLambdaBasicExecutionRole``); callers add their grants
  to ``function.role`` (they land in the role's default policy);
- a log group with a retention period, active X-Ray tracing, JSON logs.

Usage from another construct::

    from ._lambda import bundled_function

    fn = bundled_function(self, "Handler", "component_publisher",
                          environment={"BUCKET": bucket.bucket_name},
                          include_runtime=True,
                          timeout=cdk.Duration.minutes(1), memory_size=512)
    bucket.grant_read(fn)

The function is ``scope/<id>``; its role is ``scope/<id>Role`` and its log group
``scope/<id>LogGroup`` (construct ids are a public contract: keep them).
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path
from typing import Mapping, Optional

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_destinations as destinations
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from . import _checkov

#: The Lambda asset folders, ``lambda/<name>/``, as the package ships them: package data of
#: ``neo_edge`` in a wheel, a link to the repository's ``lambda/`` in a checkout.
LAMBDA_ROOT = Path(__file__).resolve().parent / "_functions"

#: The interpreter every handler is tested on (the repository's set-up: requirements.lock on
#: Python 3.11), whatever Python synthesizes the app.
RUNTIME = lambda_.Runtime.PYTHON_3_11

#: Installed packages copied next to the handler when ``include_powertools`` is set:
#: Powertools and its one dependency that the Lambda runtime does not provide
#: (boto3, botocore and jmespath are part of the Python runtime).
POWERTOOLS_MODULES = ("aws_lambda_powertools", "typing_extensions")

_SKIP = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".pytest_cache")


def _installed_path(module: str) -> Path:
    """The folder (package) or file (module) an installed top-level module comes from."""
    spec = importlib.util.find_spec(module)
    if spec is None:
        raise ValueError(f"module {module!r} is not installed in this environment; "
                         f"install neo-edge with its dependencies (pip install neo-edge)")
    if spec.submodule_search_locations:
        return Path(list(spec.submodule_search_locations)[0])
    return Path(spec.origin)


def _copy(source: Path, dest_dir: Path) -> None:
    target = dest_dir / source.name
    if source.is_dir():
        shutil.copytree(source, target, ignore=_SKIP, dirs_exist_ok=True)
    else:
        shutil.copyfile(source, target)


@jsii.implements(cdk.ILocalBundling)
class _LocalBundling:
    """Copies the function folder and the chosen packages into the asset output."""

    def __init__(self, function_dir: Path, extra: tuple) -> None:
        self._function_dir = function_dir
        self._extra = extra

    def try_bundle(self, output_dir: str, *, image=None, **_options) -> bool:  # noqa: D401
        out = Path(output_dir)
        for entry in sorted(self._function_dir.iterdir()):
            if entry.name in ("__pycache__", ".pytest_cache") or entry.suffix == ".pyc":
                continue
            _copy(entry, out)
        for source in self._extra:
            _copy(source, out)
        # Same bytes, same hash: permissions are part of neither, but keep them tidy.
        for root, dirs, files in os.walk(out):
            dirs.sort()
            for name in files:
                os.chmod(os.path.join(root, name), 0o644)
        return True


def allow_redundant_depends_on(construct) -> None:
    """Silence cfn-lint W3005 on ``construct``'s CloudFormation resource.

    CDK makes a function (or state machine) depend on everything under its role, so
    that it waits for the role's default policy; the role itself is also referenced by
    ``GetAtt``, which cfn-lint reports as a redundant ``DependsOn``. Harmless.
    """
    cfn = construct.node.default_child if hasattr(construct.node, "default_child") else None
    target = cfn if cfn is not None else construct
    target.add_metadata("cfn-lint", {"config": {"ignore_checks": ["W3005"]}})


def check_reserved_concurrency(name: str, value: Optional[int]) -> None:
    """Raise unless ``value`` (the prop ``name``) is None, a token or a whole number >= 1.

    0 is refused: Lambda would throttle every invocation, which is a switch-off, not a cap.
    """
    if value is None or cdk.Token.is_unresolved(value):
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number of at least 1 (0 would throttle every "
                         f"invocation); got {value!r}")


def function_code(name: str, *, include_runtime: bool = False,
                  include_powertools: bool = True) -> lambda_.Code:
    """The ``lambda.Code`` asset for ``lambda/<name>/``, bundled locally.

    Parameters
    ----------
    name:
        The folder under ``lambda/`` (and the handler module's name).
    include_runtime:
        Copy the ``neo_edge_runtime`` package next to the handler.
    include_powertools:
        Copy Powertools for AWS Lambda (and ``typing_extensions``) from the installed
        environment next to the handler.
    """
    function_dir = LAMBDA_ROOT / name
    if not (function_dir / f"{name}.py").is_file():
        raise ValueError(f"lambda function {name!r} must have a handler module "
                         f"lambda/{name}/{name}.py; got no such file")
    extra: list = []
    if include_runtime:
        extra.append(_installed_path("neo_edge_runtime"))
    if include_powertools:
        extra.extend(_installed_path(m) for m in POWERTOOLS_MODULES)
    return lambda_.Code.from_asset(
        str(function_dir),
        asset_hash_type=cdk.AssetHashType.OUTPUT,
        bundling=cdk.BundlingOptions(
            # Never pulled: local bundling always succeeds (it only copies files).
            image=RUNTIME.bundling_image,
            local=_LocalBundling(function_dir, tuple(extra)),
        ),
    )


def bundled_function(
    scope: Construct,
    id: str,
    name: str,
    *,
    environment: Optional[Mapping[str, str]] = None,
    include_runtime: bool = False,
    include_powertools: bool = True,
    timeout: cdk.Duration = cdk.Duration.seconds(30),
    memory_size: int = 256,
    description: Optional[str] = None,
    handler: str = "handler",
    log_retention: logs.RetentionDays = logs.RetentionDays.THREE_MONTHS,
    reserved_concurrent_executions: Optional[int] = None,
) -> lambda_.Function:
    """A Python 3.11 Lambda function for ``lambda/<name>/<name>.py``.

    Parameters
    ----------
    scope, id:
        Where the function goes; the function is ``scope/<id>``, its role
        ``scope/<id>Role`` and its log group ``scope/<id>LogGroup``.
    name:
        The folder under ``lambda/``; the handler is ``<name>.<handler>``.
    environment:
        Environment variables. Default: only ``POWERTOOLS_SERVICE_NAME`` (= ``name``)
        and ``POWERTOOLS_LOG_LEVEL`` (``INFO``), which the caller may override.
    include_runtime:
        Bundle the pure-Python ``neo_edge_runtime`` package. Default: not bundled.
    include_powertools:
        Bundle Powertools for AWS Lambda from the installed environment. Default: bundled.
    timeout:
        Default: 30 seconds.
    memory_size:
        In MiB. Default: 256.
    description:
        Default: ``"neo-edge <name>"``.
    handler:
        The function in the handler module. Default: ``handler``.
    log_retention:
        How long the function's log group keeps events. Default: three months.
    reserved_concurrent_executions:
        Concurrent executions reserved for the function (and the most it may run at once).
        Default: none reserved; it draws on the account's unreserved concurrency. Why:
        :data:`neo_edge._checkov.RESERVED_CONCURRENCY_REASON` (also the checkov skip
        comment of CKV_AWS_115 on every function left without one).

    Returns
    -------
    lambda.Function
        ``function.role`` is the role created for it (its inline policy allows writing
        to its own log group and X-Ray only: add grants to it), ``function.log_group``
        the log group.
    """
    _checkov.register(scope)
    log_group = logs.LogGroup(scope, f"{id}LogGroup", retention=log_retention,
                              removal_policy=cdk.RemovalPolicy.RETAIN)
    role = iam.Role(
        scope, f"{id}Role",
        assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
        description=f"neo-edge {name} Lambda function",
        inline_policies={
            "Logs": iam.PolicyDocument(statements=[iam.PolicyStatement(
                actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                resources=[log_group.log_group_arn])]),
            "Tracing": iam.PolicyDocument(statements=[iam.PolicyStatement(
                actions=["xray:PutTraceSegments", "xray:PutTelemetryRecords"],
                resources=["*"])]),
        },
    )
    cdk.Validations.of(role.node.default_child).acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-IAM5[Resource::*]",
        reason="the role's inline Tracing policy allows only xray:PutTraceSegments and "
               "xray:PutTelemetryRecords, which support no resource-level permissions "
               "(AWS's own AWSXRayDaemonWriteAccess grants them on *); grants the function "
               "needs go to the role's separate default policy and are checked there"))
    env = {"POWERTOOLS_SERVICE_NAME": name, "POWERTOOLS_LOG_LEVEL": "INFO"}
    env.update(environment or {})
    fn = lambda_.Function(
        scope, id,
        runtime=RUNTIME,
        handler=f"{name}.{handler}",
        code=function_code(name, include_runtime=include_runtime,
                           include_powertools=include_powertools),
        role=role,
        log_group=log_group,
        logging_format=lambda_.LoggingFormat.JSON,
        environment=env,
        timeout=timeout,
        memory_size=memory_size,
        description=description or f"neo-edge {name}",
        reserved_concurrent_executions=reserved_concurrent_executions,
    )
    # Tracing through the property, not ``tracing=``: that would add the X-Ray
    # statement on * to the role's default policy, where grants go.
    fn.node.default_child.add_property_override("TracingConfig.Mode", "Active")
    allow_redundant_depends_on(fn)
    cdk.Validations.of(fn.node.default_child).acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-L1",
        reason=f"the handler and its bundled packages are tested on Python 3.11, the "
               f"interpreter of the project's pinned set-up (requirements.lock); running them "
               f"on a newer runtime than the one tested is the greater risk. The runtime "
               f"moves with the project's pin ({RUNTIME.name})"))
    return fn


def keep_failed_invocations(function: lambda_.Function, id: str = "FailedInvocations", *,
                            retry_attempts: int = 2,
                            retention: cdk.Duration = cdk.Duration.days(14)) -> sqs.Queue:
    """An encrypted, TLS-only SQS queue that keeps the events ``function`` failed on.

    For a function invoked asynchronously (by an IoT rule or an EventBridge rule): Lambda
    retries a failed event ``retry_attempts`` times, then sends it, with the error, to the
    queue (the function's on-failure destination), where it stays for ``retention``; without
    one it would be dropped. The queue is ``<function's scope>/<id>``.
    """
    queue = sqs.Queue(function.node.scope, id, encryption=sqs.QueueEncryption.SQS_MANAGED,
                      enforce_ssl=True, retention_period=retention)
    cdk.Validations.of(queue).acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-SQS3",
        reason="this queue is itself where failed invocations end up (the function's "
               "on-failure destination); a queue behind it would only move them again"))
    function.configure_async_invoke(on_failure=destinations.SqsDestination(queue),
                                    retry_attempts=retry_attempts)
    return queue
