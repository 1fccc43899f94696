"""checkov findings the library leaves on purpose, each skipped with its reason, written once.

checkov (the IaC scanner) reads a skip from the resource's CloudFormation metadata::

    "Metadata": {"checkov": {"skip": [{"id": "CKV_AWS_115", "comment": "<reason>"}]}}

(checkov's ``cloudformation/context_parser.py``, ``collect_skip_comments``: ``id`` and
``comment`` under ``Metadata.checkov.skip``). Two ways in:

- by resource kind: :data:`KIND_RULES` maps a CloudFormation type and a check id to a rule
  that looks at the resource and returns the reason the check does not apply to it, or
  ``None`` when it must stand (a rule never skips a check the resource would pass, nor one
  whose reason it cannot see in the resource). :func:`register` adds, once per stack, an
  aspect that applies them to every resource inside a ``neo_edge`` construct; resources of
  the user's own in the same stack are left alone;
- one resource at a time: :func:`skip` (and :func:`invoked_synchronously`) where the
  reason depends on how the resource is used, which its template does not show. A
  resource's own skip wins over a kind rule for the same check.

``tests/e2e/test_app_synth.py`` runs checkov over the reference app and fails on any
finding without a reason.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import aws_cdk as cdk
import jsii
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sqs as sqs
from constructs import Construct, IConstruct

__all__ = ["KIND_RULES", "RESERVED_CONCURRENCY_REASON", "invoked_synchronously", "register",
           "skip", "skips_of"]

#: Why no function of the library reserves concurrency unless asked (and the checkov skip
#: comment for CKV_AWS_115).
RESERVED_CONCURRENCY_REASON = (
    "no reserved concurrency unless the construct is given one: a reservation takes from the "
    "account's regional concurrency pool that all its other functions share, so a library "
    "default would be wrong for accounts with many stacks")

#: Why the library's functions run outside a VPC (CKV_AWS_117).
NO_VPC_REASON = (
    "the function calls only AWS service APIs (over TLS, signed with its role) and nothing in "
    "a private network; a VPC would need NAT or an endpoint per service and narrow nothing "
    "its IAM role does not already")

#: Why environment variables keep Lambda's own encryption (CKV_AWS_173).
ENVIRONMENT_KEY_REASON = (
    "Lambda encrypts environment variables at rest with an AWS managed key; these hold "
    "resource names, ARNs and settings, never secrets, so a customer managed key would "
    "guard nothing more")

#: Why a function with an on-failure destination has no dead-letter queue (CKV_AWS_116).
ON_FAILURE_DESTINATION_REASON = (
    "asynchronous events that still fail after Lambda's retries go, with their error, to the "
    "SQS on-failure destination of the function's EventInvokeConfig, the successor of a "
    "dead-letter queue")

#: Why log groups keep CloudWatch Logs' own encryption (CKV_AWS_158).
LOG_GROUP_KEY_REASON = (
    "CloudWatch Logs encrypts every log group at rest with keys it manages; these hold "
    "diagnostics, never secrets, and a customer managed key would need a key policy for the "
    "regional logs service in every stack")

#: Why an SQS-managed encrypted queue passes for encrypted (CKV_AWS_27).
SQS_MANAGED_KEY_REASON = (
    "the queue is encrypted at rest with SQS-managed keys (SqsManagedSseEnabled); the check "
    "counts only a KMS key (KmsMasterKeyId)")

#: Why a policy may allow CloudWatch Logs' log-delivery actions on ``*`` (CKV_AWS_111).
LOG_DELIVERY_REASON = (
    "Step Functions delivers execution logs through CloudWatch Logs vended log delivery "
    "(logs:CreateLogDelivery, logs:DescribeResourcePolicies, ...), whose actions support no "
    "resource-level permissions; AWS's Step Functions logging guide grants them on *")

#: The actions of :data:`LOG_DELIVERY_REASON`: what AWS's guide to Step Functions logging
#: grants on ``*`` (and aws-cdk-lib's StateMachine with it).
LOG_DELIVERY_ACTIONS = frozenset({
    "logs:CreateLogDelivery", "logs:CreateLogStream", "logs:GetLogDelivery",
    "logs:UpdateLogDelivery", "logs:DeleteLogDelivery", "logs:ListLogDeliveries",
    "logs:PutLogEvents", "logs:PutResourcePolicy", "logs:DescribeResourcePolicies",
    "logs:DescribeLogGroups"})

_METADATA_KEY = "checkov"


def _resource(construct: IConstruct) -> cdk.CfnResource:
    if isinstance(construct, cdk.CfnResource):
        return construct
    child = construct.node.default_child
    if not isinstance(child, cdk.CfnResource):
        raise ValueError(f"{construct.node.path} has no CloudFormation resource to carry a "
                         f"checkov skip")
    return child


def skips_of(construct: IConstruct) -> dict[str, str]:
    """The checkov skips ``construct``'s resource carries: check id to reason."""
    entries = _resource(construct).get_metadata(_METADATA_KEY) or {}
    return {e["id"]: e["comment"] for e in entries.get("skip", [])}


def skip(construct: IConstruct, check_id: str, reason: str, *, replace: bool = True) -> None:
    """Skip checkov's ``check_id`` on ``construct``'s CloudFormation resource, for ``reason``
    (one line, true of this resource). With ``replace=False`` an existing skip of the same
    check is kept."""
    if not check_id.startswith(("CKV_", "CKV2_")):
        raise ValueError(f"check_id must be a checkov check id like CKV_AWS_115; got {check_id!r}")
    if not reason.strip() or "\n" in reason:
        raise ValueError(f"reason must be one non-empty line; got {reason!r}")
    resource = _resource(construct)
    skips = skips_of(resource)
    if check_id in skips and not replace:
        return
    skips[check_id] = reason
    resource.add_metadata(_METADATA_KEY, {"skip": [{"id": k, "comment": v}
                                                   for k, v in sorted(skips.items())]})


def invoked_synchronously(function: lambda_.IFunction, by: str) -> None:
    """Record that only ``by`` invokes ``function``, synchronously: no dead-letter queue
    (CKV_AWS_116) would ever receive one of its events."""
    skip(function, "CKV_AWS_116",
         f"invoked synchronously, by {by}: every error goes back to the caller; a dead-letter "
         f"queue only ever receives asynchronous invocations")


# ---------------------------------------------------------------------------------------
# Rules by resource kind


def _reserved_concurrency(fn: lambda_.CfnFunction) -> Optional[str]:
    return RESERVED_CONCURRENCY_REASON if fn.reserved_concurrent_executions is None else None


def _no_vpc(fn: lambda_.CfnFunction) -> Optional[str]:
    return NO_VPC_REASON if fn.vpc_config is None else None


def _environment_key(fn: lambda_.CfnFunction) -> Optional[str]:
    return ENVIRONMENT_KEY_REASON if fn.kms_key_arn is None else None


def _dead_letter(fn: lambda_.CfnFunction) -> Optional[str]:
    """The on-failure destination's reason, when the function has one and no DLQ."""
    if fn.dead_letter_config is not None:
        return None
    config = fn.node.scope.node.try_find_child("EventInvokeConfig") if fn.node.scope else None
    cfn = config.node.default_child if config is not None else None
    if not isinstance(cfn, lambda_.CfnEventInvokeConfig):
        return None
    destinations = cdk.Stack.of(fn).resolve(cfn.destination_config) or {}
    on_failure = destinations.get("OnFailure") or destinations.get("onFailure") or {}
    return ON_FAILURE_DESTINATION_REASON if on_failure else None


def _log_group_key(group: logs.CfnLogGroup) -> Optional[str]:
    return LOG_GROUP_KEY_REASON if group.kms_key_id is None else None


def _sqs_managed(queue: sqs.CfnQueue) -> Optional[str]:
    managed = cdk.Stack.of(queue).resolve(queue.sqs_managed_sse_enabled)
    return SQS_MANAGED_KEY_REASON if queue.kms_master_key_id is None and managed is True else None


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


def _log_delivery_only(policy: iam.CfnPolicy) -> Optional[str]:
    """The log-delivery reason when every statement on ``*`` allows only those actions."""
    document = cdk.Stack.of(policy).resolve(policy.policy_document) or {}
    on_star = [s for s in document.get("Statement", [])
               if s.get("Effect") == "Allow" and "*" in _as_list(s.get("Resource"))]
    if on_star and all(set(_as_list(s.get("Action"))) <= LOG_DELIVERY_ACTIONS for s in on_star):
        return LOG_DELIVERY_REASON
    return None


#: CloudFormation type -> checkov check id -> rule(resource) -> reason or None.
KIND_RULES: Mapping[str, Mapping[str, Callable[[Any], Optional[str]]]] = {
    "AWS::Lambda::Function": {
        "CKV_AWS_115": _reserved_concurrency,
        "CKV_AWS_116": _dead_letter,
        "CKV_AWS_117": _no_vpc,
        "CKV_AWS_173": _environment_key,
    },
    "AWS::Logs::LogGroup": {"CKV_AWS_158": _log_group_key},
    "AWS::SQS::Queue": {"CKV_AWS_27": _sqs_managed},
    "AWS::IAM::Policy": {"CKV_AWS_111": _log_delivery_only},
}


def _in_library(node: IConstruct) -> bool:
    """Whether ``node`` lies inside a construct of this library (or of a subclass of one)."""
    return any(cls.__module__.split(".")[0] == "neo_edge"
               for scope in node.node.scopes for cls in type(scope).__mro__)


@jsii.implements(cdk.IAspect)
class _KindSkips:
    """Applies :data:`KIND_RULES` to the library's resources."""

    def visit(self, node: IConstruct) -> None:
        if not isinstance(node, cdk.CfnResource):
            return
        rules = KIND_RULES.get(node.cfn_resource_type)
        if not rules or not _in_library(node):
            return
        for check_id, rule in rules.items():
            reason = rule(node)
            if reason:
                skip(node, check_id, reason, replace=False)


def register(scope: Construct) -> None:
    """Apply the kind rules to the library's resources in ``scope``'s stack (once a stack)."""
    aspects = cdk.Aspects.of(cdk.Stack.of(scope))
    if not any(isinstance(a, _KindSkips) for a in aspects.all):
        aspects.add(_KindSkips())
