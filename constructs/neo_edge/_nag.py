"""Values as the stack that uses them will hold them, for cdk-nag finding ids.

cdk-nag names a wildcard resource by the ARN in the synthesized template. An ARN made
from another stack's resource (a bucket of stack A in a policy of stack B) is
``Fn::ImportValue`` of A's export there, not the ``Fn::GetAtt`` that resolving it now
gives; :func:`as_seen_from` replaces each such reference by the import CDK will make, so
that an acknowledgment names the finding cdk-nag reports.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
import jsii
from constructs import Construct


@jsii.implements(cdk.ITokenMapper)
class _ImportsFor:
    """Maps each reference to another stack's resource to that stack's export, imported."""

    def __init__(self, consumer: cdk.Stack) -> None:
        self._consumer = consumer

    def map_token(self, token: Any) -> Any:
        if isinstance(token, cdk.Reference):
            producer = cdk.Stack.of(token.target)
            if producer.node.path != self._consumer.node.path:
                # The same export (and import) CDK makes for the reference at synth.
                return producer.export_value(token)
        return token


def as_seen_from(scope: Construct, value: Any) -> Any:
    """``value`` with every reference to another stack's resource replaced by the
    ``Fn::ImportValue`` that ``scope``'s stack will hold instead; other values as they are."""
    if not isinstance(value, str) or not cdk.Token.is_unresolved(value):
        return value
    consumer = cdk.Stack.of(scope)
    fragments = cdk.Tokenization.reverse_string(value)
    if not any(isinstance(t, cdk.Reference)
               and cdk.Stack.of(t.target).node.path != consumer.node.path
               for t in fragments.tokens):
        return value
    return fragments.map_tokens(_ImportsFor(consumer)).join(cdk.StringConcat())


def acknowledge_state_machine_role(state_machine: Any, functions: Any) -> Any:
    """Acknowledge what every state machine of ours needs on its role's default policy:
    ``*`` for vended log delivery and X-Ray, and ``<function arn>:*`` for each of
    ``functions`` it invokes. Returns the policy's ``cdk.Validations`` for the caller's own
    acknowledgments, or ``None`` when the role has no default policy."""
    policy = state_machine.role.node.try_find_child("DefaultPolicy")
    if policy is None:
        return None
    stack = cdk.Stack.of(state_machine)
    validations = cdk.Validations.of(policy)
    validations.acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-IAM5[Resource::*]",
        reason="Step Functions delivers execution logs through CloudWatch Logs vended log "
               "delivery (logs:CreateLogDelivery, logs:DescribeResourcePolicies, ...) and "
               "sends X-Ray traces (xray:PutTraceSegments, ...): actions that support no "
               "resource-level permissions"))
    for fn in functions:
        logical = stack.resolve(fn.node.default_child.logical_id)
        validations.acknowledge(cdk.Acknowledgment(
            id=f"AwsSolutions::AwsSolutions-IAM5[Resource::<{logical}.Arn>:*]",
            reason="Step Functions invokes the function by ARN with a version or alias "
                   "qualifier (<function arn>:*); the wildcard covers only qualifiers of "
                   "that one function"))
    return validations
