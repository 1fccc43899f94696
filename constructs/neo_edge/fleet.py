"""``EdgeFleet``: the AWS IoT side of a fleet of Greengrass V2 core devices.

What a device needs to join and what it is allowed to do once it has:

- an IoT thing group (static, or dynamic with a fleet-indexing query) that deployments
  target, and optionally some things created up front and added to it;
- an IoT policy scoped with policy variables: a certificate connects only as the thing
  it is attached to, and publishes and subscribes only on its own topics
  (``$aws/things/<thing>/...`` for Greengrass, jobs and shadows, and
  ``<topic_prefix>/<thing>/...`` for the application);
- the Greengrass token exchange role (trusted by ``credentials.iot.amazonaws.com``) with
  read access to the artifact bucket prefix only, and its IoT role alias;
- optionally a fleet provisioning template, so devices join with a shared claim
  certificate and receive their own certificate, thing and policy.

The names (thing group, policy, role alias) are what the Greengrass installer takes:
``--thing-group-name``, ``--thing-policy-name``, ``--tes-role-alias-name``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Optional, Sequence, Union

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_iot as iot
from aws_cdk import aws_s3 as s3
from aws_cdk import custom_resources as cr
from constructs import Construct

from . import _checkov
from ._lambda import bundled_function
from ._nag import as_seen_from
from .interfaces import IEdgeFleet, IModelArtifactBucket
from .storage import as_bucket

__all__ = ["CLAIM_CLIENT_ID_PREFIX", "EdgeFleet", "THING", "acknowledge_wildcards",
           "nag_wildcard_ids", "provisioning_template_name"]

#: The policy variable AWS IoT replaces with the name of the thing the certificate is attached to.
THING = "${iot:Connection.Thing.ThingName}"
#: MQTT client ids a claim certificate may connect with (the fleet provisioning plugin's
#: ``deviceId``). No device may be named so: otherwise a claim connection could take over a
#: device's client id and disconnect it.
CLAIM_CLIENT_ID_PREFIX = "claim-"

_NAME = re.compile(r"^[a-zA-Z0-9_-]+$")
_THING_NAME = re.compile(r"^[a-zA-Z0-9:_-]+$")
_TOPIC_PREFIX = re.compile(r"^[a-zA-Z0-9_-]+(/[a-zA-Z0-9_-]+)*$")
# The longest suffix the fleet adds to its name (role alias name: 128 characters at most).
_MAX_FLEET_NAME = 128 - len("-TokenExchangeRoleAlias")
# The singleton Lambda function every AwsCustomResource in a stack shares.
_AWS_CUSTOM_RESOURCE_ID = "AWS679f53fac002430cb0da5b7982bd2287"


class _FleetGrants:
    """The grants of a fleet, shared by :class:`EdgeFleet` and an imported fleet.

    They use ``fleet_name``, ``thing_group_arn``, ``topic_prefix`` and
    ``token_exchange_role`` only.
    """

    fleet_name: str
    thing_group_arn: str
    topic_prefix: str
    token_exchange_role: Optional[iam.IRole]

    def allow_artifact_read(self, bucket: Union[s3.IBucket, IModelArtifactBucket],
                            *key_patterns: str) -> iam.Grant:
        """Let the fleet's devices download ``bucket`` objects matching ``key_patterns``.

        Only ``s3:GetObject`` on those keys (and ``kms:Decrypt`` with the bucket's key,
        if it has one), on the token exchange role. ``bucket`` is an ``s3.IBucket`` or
        an :class:`~neo_edge.interfaces.IModelArtifactBucket`. A fleet imported without
        its token exchange role raises: there is no role to grant to.
        """
        if not key_patterns:
            raise ValueError("allow_artifact_read needs at least one key or key pattern; got none")
        role = self.token_exchange_role
        if role is None:
            raise ValueError(
                f"fleet {self.fleet_name} was imported without its token exchange role, so "
                f"its devices cannot be allowed to read artifacts here; pass "
                f"token_exchange_role to EdgeFleet.from_thing_group_name (e.g. "
                f"iam.Role.from_role_name(...)), or grant that role read yourself")
        bucket = as_bucket(bucket)
        grant = iam.Grant.add_to_principal(
            grantee=role, actions=["s3:GetObject"],
            resource_arns=[bucket.arn_for_objects(k) for k in key_patterns])
        if bucket.encryption_key is not None:
            bucket.encryption_key.grant_decrypt(role)
        wildcards = [bucket.arn_for_objects(k) for k in key_patterns if "*" in k]
        if wildcards:
            acknowledge_wildcards(
                role, wildcards,
                reason="devices download the artifacts of whichever component version is "
                       "deployed; object keys under the fleet's artifact prefix change with every "
                       "compiled model, so the role may s3:GetObject under that prefix only")
        return grant

    def grant_deploy(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` create, read and cancel Greengrass deployments to this fleet.

        What the ``deployment_manager`` Lambda of a retraining pipeline needs:
        ``greengrass:CreateDeployment`` and the IoT job and shadow actions it calls on
        the caller's behalf, on this thing group, its things, and deployment jobs.
        """
        stack = cdk.Stack.of(self)
        return iam.Grant.add_to_principal(
            grantee=grantee,
            actions=["greengrass:CreateDeployment", "greengrass:GetDeployment",
                     "greengrass:CancelDeployment", "greengrass:ListDeployments",
                     "iot:CancelJob", "iot:CreateJob", "iot:DescribeJob", "iot:UpdateJob",
                     "iot:DescribeThing", "iot:DescribeThingGroup", "iot:GetThingShadow",
                     "iot:UpdateThingShadow", "iot:DeleteThingShadow"],
            resource_arns=[
                self.thing_group_arn,
                stack.format_arn(service="iot", resource="thing", resource_name="*"),
                stack.format_arn(service="iot", resource="job", resource_name="*"),
                stack.format_arn(service="greengrass", resource="deployments",
                                 resource_name="*", arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME),
            ])

    def grant_publish_to_devices(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` publish on the fleet's application topics (``<prefix>/*``)."""
        stack = cdk.Stack.of(self)
        return iam.Grant.add_to_principal(
            grantee=grantee, actions=["iot:Publish"],
            resource_arns=[stack.format_arn(service="iot", resource="topic",
                                            resource_name=f"{self.topic_prefix}/*")])

    def grant_describe(self, grantee: iam.IGrantable) -> iam.Grant:
        """Let ``grantee`` read the fleet's thing group and list its members."""
        return iam.Grant.add_to_principal(
            grantee=grantee, actions=["iot:DescribeThingGroup", "iot:ListThingsInThingGroup"],
            resource_arns=[self.thing_group_arn])


class EdgeFleet(_FleetGrants, Construct):
    """A fleet of Greengrass V2 core devices: thing group, IoT policy, token exchange role.

    Satisfies :class:`~neo_edge.interfaces.IEdgeFleet`. A fleet defined elsewhere
    (another stack, another app, the console): :meth:`from_thing_group_name`.

    Parameters
    ----------
    scope, id:
        Where the fleet goes.
    fleet_name:
        Names the thing group (as is), the IoT policy (``<name>-DevicePolicy``), the role
        alias (``<name>-TokenExchangeRoleAlias``) and the provisioning template. Letters,
        digits, ``-`` and ``_``. Default: a name unique to this construct's path.
    dynamic_query:
        A fleet-indexing query (``attributes.fleet:cameras``): the thing group is then a
        dynamic thing group whose members are the things matching it (fleet indexing
        must be enabled in the account). Default: a static thing group.
    thing_names:
        Things to create now and add to the (static) group, e.g. devices whose
        certificates are registered separately. Default: none; devices register
        themselves (the Greengrass installer with ``--provision``, or fleet provisioning).
    artifact_bucket:
        The bucket holding the compiled models and device bundles (an ``s3.IBucket`` or
        an :class:`~neo_edge.interfaces.IModelArtifactBucket`, such as
        ``ModelArtifactBucket.from_bucket_name(...)``); the token exchange role may read
        (``s3:GetObject``) objects under ``artifact_prefix`` only, and decrypt with the
        bucket's KMS key. Default: no bucket; components grant read on their own
        artifacts when deployed (``EdgeDeployment`` does it).
    artifact_prefix:
        The key prefix devices may read in ``artifact_bucket``. Default: ``""`` (the
        whole bucket).
    topic_prefix:
        The application's MQTT topics are ``<topic_prefix>/<thing name>/...``. Default:
        ``neo-edge``.
    credential_duration:
        How long the credentials a device gets through the role alias last (15 minutes
        to 12 hours). Default: one hour.
    fleet_provisioning:
        Create a fleet provisioning template (and the claim certificate's IoT policy,
        ``claim_policy``) so that devices holding a claim certificate can register:
        each gets a thing named by the device, its own certificate, this fleet's policy,
        and membership of the (static) group. A pre-provisioning hook (the
        ``provisioning_hook`` Lambda function) allows new thing names only: a copied
        claim certificate cannot take over an existing device. The claim certificate
        connects only with client ids starting with ``claim-`` (set the fleet
        provisioning plugin's ``deviceId`` to ``claim-<serial number>``), which no
        device may be named, so it cannot disconnect a device by taking its client id.
        Default: no template.
    provisioning_thing_name_prefix:
        With ``fleet_provisioning``, devices must name themselves with this prefix
        (``camera-``). Default: any valid thing name.

    Attributes
    ----------
    thing_group:
        The ``AWS::IoT::ThingGroup`` (the construct's ``Resource``).
    policy, token_exchange_role, role_alias, things, provisioning_template, claim_policy,
    provisioning_hook:
        The resources created (the last three ``None`` without fleet provisioning).
    fleet_name, thing_group_name, thing_group_arn, topic_prefix:
        What deployments, telemetry and other stacks refer to.
    """

    def __init__(self, scope: Construct, id: str, *, fleet_name: Optional[str] = None,
                 dynamic_query: Optional[str] = None, thing_names: Sequence[str] = (),
                 artifact_bucket: Union[None, s3.IBucket, IModelArtifactBucket] = None,
                 artifact_prefix: str = "",
                 topic_prefix: str = "neo-edge",
                 credential_duration: Optional[cdk.Duration] = None,
                 fleet_provisioning: bool = False,
                 provisioning_thing_name_prefix: Optional[str] = None) -> None:
        super().__init__(scope, id)
        name = fleet_name if fleet_name is not None else cdk.Names.unique_resource_name(
            self, max_length=64, separator="-")
        _check_name(name)
        _check_topic_prefix(topic_prefix)
        if dynamic_query is not None and not dynamic_query.strip():
            raise ValueError(f"dynamic_query must be a fleet indexing query; got {dynamic_query!r}")
        if dynamic_query is not None and thing_names:
            raise ValueError(f"thing_names cannot be added to a dynamic thing group (its members "
                             f"are the things matching {dynamic_query!r}); got "
                             f"{', '.join(thing_names)}")
        if dynamic_query is not None and fleet_provisioning:
            raise ValueError("fleet_provisioning needs a static thing group to add devices to; "
                             f"got dynamic_query {dynamic_query!r}")
        if provisioning_thing_name_prefix is not None:
            if not fleet_provisioning:
                raise ValueError(f"provisioning_thing_name_prefix applies to fleet_provisioning; "
                                 f"got {provisioning_thing_name_prefix!r} without it")
            if not _THING_NAME.match(provisioning_thing_name_prefix) or \
                    len(provisioning_thing_name_prefix) > 64 or \
                    provisioning_thing_name_prefix.startswith(CLAIM_CLIENT_ID_PREFIX):
                raise ValueError(f"provisioning_thing_name_prefix must be 1 to 64 letters, "
                                 f"digits, ':', '-' or '_', not starting with "
                                 f"{CLAIM_CLIENT_ID_PREFIX!r} (the claim connections' client "
                                 f"ids); got {provisioning_thing_name_prefix!r}")
        for thing in thing_names:
            if not cdk.Token.is_unresolved(thing) and (
                    not _THING_NAME.match(thing) or len(thing) > 128):
                raise ValueError(f"thing names must be 1 to 128 letters, digits, ':', '-' or '_'; "
                                 f"got {thing!r}")
        if len(set(thing_names)) != len(thing_names):
            raise ValueError(f"thing_names must not repeat; got {', '.join(thing_names)}")
        seconds = (credential_duration or cdk.Duration.hours(1)).to_seconds()
        if not cdk.Token.is_unresolved(seconds) and not 900 <= seconds <= 43200:
            raise ValueError(f"credential_duration must be from 15 minutes to 12 hours; "
                             f"got {seconds} seconds")
        if artifact_prefix and (artifact_prefix.startswith("/") or "*" in artifact_prefix):
            raise ValueError(f"artifact_prefix must be a key prefix without a leading '/' or "
                             f"'*'; got {artifact_prefix!r}")

        stack = cdk.Stack.of(self)
        self.fleet_name = name
        self.topic_prefix = topic_prefix
        self.is_dynamic = dynamic_query is not None

        self.thing_group = iot.CfnThingGroup(
            self, "Resource", thing_group_name=name, query_string=dynamic_query,
            thing_group_properties=iot.CfnThingGroup.ThingGroupPropertiesProperty(
                thing_group_description=f"neo-edge fleet {name}"))
        #: The thing group's name (what deployments and the installer use).
        self.thing_group_name = name
        self.thing_group_arn = stack.format_arn(service="iot", resource="thinggroup",
                                                resource_name=name)

        # --- token exchange role and role alias -------------------------------------
        self.token_exchange_role = iam.Role(
            self, "TokenExchangeRole",
            assumed_by=iam.ServicePrincipal("credentials.iot.amazonaws.com"),
            description=f"Greengrass token exchange role of the neo-edge fleet {name}",
            max_session_duration=cdk.Duration.seconds(max(3600, seconds))
            if not cdk.Token.is_unresolved(seconds) else None,
        )
        log_groups = stack.format_arn(service="logs", resource="log-group",
                                      resource_name="/aws/greengrass/*",
                                      arn_format=cdk.ArnFormat.COLON_RESOURCE_NAME)
        self.token_exchange_role.add_to_principal_policy(iam.PolicyStatement(
            sid="GreengrassLogManager",
            actions=["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents",
                     "logs:DescribeLogStreams"],
            resources=[log_groups]))
        acknowledge_wildcards(
            self.token_exchange_role, [log_groups],
            reason="the Greengrass log manager on each device creates a log group per component "
                   "under /aws/greengrass/ (names known only on the device); the role may write "
                   "logs there and nowhere else")
        self._artifact_wildcard: Optional[str] = None
        if artifact_bucket is not None:
            self.allow_artifact_read(artifact_bucket, f"{artifact_prefix}*")
            self._artifact_wildcard = f"{artifact_prefix}*"
        self.role_alias = iot.CfnRoleAlias(
            self, "RoleAlias", role_arn=self.token_exchange_role.role_arn,
            role_alias=f"{name}-TokenExchangeRoleAlias", credential_duration_seconds=seconds)
        self.role_alias_name = f"{name}-TokenExchangeRoleAlias"
        self.role_alias_arn = self.role_alias.attr_role_alias_arn

        # --- the device policy -----------------------------------------------------
        self.policy_name = f"{name}-DevicePolicy"
        self.policy = iot.CfnPolicy(self, "DevicePolicy", policy_name=self.policy_name,
                                    policy_document=self._device_policy(stack))

        # --- things listed up front ----------------------------------------------------
        self.things: list = []
        for i, thing in enumerate(thing_names):
            cfn_thing = iot.CfnThing(self, f"Thing{i}", thing_name=thing)
            self.things.append(cfn_thing)
        if thing_names:
            self._add_members(stack, list(thing_names))

        # --- fleet provisioning ----------------------------------------------------------
        self.provisioning_template: Optional[iot.CfnProvisioningTemplate] = None
        self.claim_policy: Optional[iot.CfnPolicy] = None
        self.provisioning_role: Optional[iam.Role] = None
        self.provisioning_hook = None
        if fleet_provisioning:
            self._fleet_provisioning(stack, provisioning_thing_name_prefix or "")

        cdk.CfnOutput(self, "ThingGroupName", value=name,
                      description="greengrass installer --thing-group-name")
        cdk.CfnOutput(self, "ThingPolicyName", value=self.policy_name,
                      description="greengrass installer --thing-policy-name")
        cdk.CfnOutput(self, "TokenExchangeRoleAliasName", value=self.role_alias_name,
                      description="greengrass installer --tes-role-alias-name")

    # ------------------------------------------------------------------------------
    # Importer

    @classmethod
    def from_thing_group_name(cls, scope: Construct, id: str, thing_group_name: str, *,
                              token_exchange_role: Optional[iam.IRole] = None,
                              topic_prefix: str = "neo-edge") -> "IEdgeFleet":
        """A fleet that exists already, by its thing group's name.

        For a fleet another stack or another app created (an ``EdgeFleet`` there: its
        ``fleet_name`` is the thing group's name), or one made in the console. Nothing
        is created; the result satisfies :class:`~neo_edge.interfaces.IEdgeFleet`, so
        ``EdgeDeployment``, ``EdgeTelemetry`` and ``RetrainPipeline`` take it.

        Parameters
        ----------
        scope, id:
            Where the imported fleet goes.
        thing_group_name:
            1 to 128 letters, digits, ``:``, ``-`` and ``_`` (a token is taken as it is).
            Its ARN is formatted with this stack's partition, region and account.
        token_exchange_role:
            The fleet's Greengrass token exchange role, e.g.
            ``iam.Role.from_role_name(...)``, so that deployments here can allow the
            devices to read their components' artifacts (statements added to that role
            from this stack). Default: no role; then ``EdgeDeployment`` and
            ``RetrainPipeline`` skip the artifact grants (the fleet's owner grants them,
            e.g. with the fleet's ``artifact_bucket``), and an explicit
            ``allow_artifact_read`` raises. ``grant_deploy``, ``grant_describe`` and
            ``grant_publish_to_devices`` need no role.
        topic_prefix:
            The fleet's application topic prefix (as given to ``EdgeFleet``).
            Default: ``neo-edge``.
        """
        if not cdk.Token.is_unresolved(thing_group_name) and (
                not isinstance(thing_group_name, str) or not _THING_NAME.match(thing_group_name)
                or len(thing_group_name) > 128):
            raise ValueError(f"thing_group_name must be 1 to 128 letters, digits, ':', '-' or "
                             f"'_'; got {thing_group_name!r}")
        _check_topic_prefix(topic_prefix)
        return _ImportedEdgeFleet(scope, id, thing_group_name=thing_group_name,
                                  token_exchange_role=token_exchange_role,
                                  topic_prefix=topic_prefix)

    # ------------------------------------------------------------------------------
    # Internals

    def _device_policy(self, stack: cdk.Stack) -> dict:
        def arn(resource: str, name: str) -> str:
            return stack.format_arn(service="iot", resource=resource, resource_name=name)

        own_topics = [f"$aws/things/{THING}/greengrass/*", f"$aws/things/{THING}/greengrassv2/*",
                      f"$aws/things/{THING}/jobs/*", f"$aws/things/{THING}/shadow/*",
                      f"{self.topic_prefix}/{THING}/*"]
        return {
            "Version": "2012-10-17",
            "Statement": [
                {"Sid": "ConnectAsOwnThingOnly", "Effect": "Allow", "Action": "iot:Connect",
                 # The nucleus opens extra connections as <thing>#2, <thing>#3, ...
                 "Resource": [arn("client", THING), arn("client", f"{THING}#*")],
                 "Condition": {"Bool": {"iot:Connection.Thing.IsAttached": "true"}}},
                {"Sid": "OwnTopics", "Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
                 "Resource": [arn("topic", t) for t in own_topics]},
                {"Sid": "OwnTopicFilters", "Effect": "Allow", "Action": "iot:Subscribe",
                 "Resource": [arn("topicfilter", t) for t in own_topics]},
                {"Sid": "OwnShadow", "Effect": "Allow",
                 "Action": ["iot:GetThingShadow", "iot:UpdateThingShadow", "iot:DeleteThingShadow"],
                 "Resource": arn("thing", THING)},
                {"Sid": "TokenExchange", "Effect": "Allow", "Action": "iot:AssumeRoleWithCertificate",
                 "Resource": self.role_alias.attr_role_alias_arn},
                # Greengrass data-plane calls of the nucleus; AWS's minimal core device
                # policy grants them on * (their resources are resolved by the service).
                {"Sid": "GreengrassDataPlane", "Effect": "Allow",
                 "Action": ["greengrass:GetComponentVersionArtifact",
                            "greengrass:ResolveComponentCandidates",
                            "greengrass:GetDeploymentConfiguration",
                            "greengrass:ListThingGroupsForCoreDevice"],
                 "Resource": "*"},
            ],
        }

    def _add_members(self, stack: cdk.Stack, thing_names: list) -> None:
        """Add the listed things to the static group (CloudFormation has no resource for it)."""
        thing_arns = [stack.format_arn(service="iot", resource="thing", resource_name=t)
                      for t in thing_names]
        for i, (thing, thing_arn) in enumerate(zip(thing_names, thing_arns)):
            call = dict(service="Iot", action="addThingToThingGroup",
                        parameters={"thingGroupName": self.fleet_name, "thingName": thing},
                        physical_resource_id=cr.PhysicalResourceId.of(f"{self.fleet_name}/{thing}"))
            member = cr.AwsCustomResource(
                self, f"Member{i}",
                on_create=cr.AwsSdkCall(**call),
                on_update=cr.AwsSdkCall(**call),
                on_delete=cr.AwsSdkCall(
                    service="Iot", action="removeThingFromThingGroup",
                    parameters={"thingGroupName": self.fleet_name, "thingName": thing}),
                policy=cr.AwsCustomResourcePolicy.from_statements([iam.PolicyStatement(
                    actions=["iot:AddThingToThingGroup", "iot:RemoveThingFromThingGroup"],
                    resources=[self.thing_group_arn, thing_arn])]),
                install_latest_aws_sdk=False,
            )
            member.node.add_dependency(self.thing_group)
            member.node.add_dependency(self.things[i])
        provider = stack.node.try_find_child(_AWS_CUSTOM_RESOURCE_ID)
        if provider is not None:
            _acknowledge_custom_resource_provider(provider)

    def _fleet_provisioning(self, stack: cdk.Stack, thing_name_prefix: str) -> None:
        template_name = provisioning_template_name(self.fleet_name)
        template_arn = stack.format_arn(service="iot", resource="provisioningtemplate",
                                        resource_name=template_name)
        hook = bundled_function(
            self, "ProvisioningHook", "provisioning_hook",
            environment={"TEMPLATE_NAME": template_name, "THING_NAME_PREFIX": thing_name_prefix,
                         "RESERVED_PREFIX": CLAIM_CLIENT_ID_PREFIX},
            timeout=cdk.Duration.seconds(10),
            description=f"neo-edge: new devices only into the fleet {self.fleet_name}")
        _checkov.invoked_synchronously(
            hook, "AWS IoT fleet provisioning, which waits for the hook's allowProvisioning "
                  "answer before it provisions a device")
        things = stack.format_arn(service="iot", resource="thing", resource_name="*")
        hook.add_to_role_policy(iam.PolicyStatement(
            sid="SeeExistingThings", actions=["iot:DescribeThing"], resources=[things]))
        acknowledge_wildcards(
            hook.role, [things],
            reason="the hook checks whether the thing name a device asks for exists already; "
                   "names are chosen by devices, so thing/* (read only, DescribeThing) is the "
                   "narrowest resource")
        hook.add_permission("InvokeFromFleetProvisioning",
                            principal=iam.ServicePrincipal("iot.amazonaws.com"),
                            source_arn=template_arn, source_account=stack.account)
        self.provisioning_hook = hook
        role = iam.Role(
            self, "ProvisioningRole", assumed_by=iam.ServicePrincipal("iot.amazonaws.com"),
            description=f"fleet provisioning of the neo-edge fleet {self.fleet_name}")
        role.add_to_principal_policy(iam.PolicyStatement(
            sid="RegisterDevices",
            actions=["iot:CreateThing", "iot:DescribeThing", "iot:UpdateThing",
                     "iot:AddThingToThingGroup", "iot:ListThingGroupsForThing",
                     "iot:UpdateThingGroupsForThing", "iot:DescribeThingGroup",
                     "iot:AttachThingPrincipal", "iot:ListThingPrincipals",
                     "iot:DescribeCertificate", "iot:UpdateCertificate",
                     "iot:CreateCertificateFromCsr", "iot:RegisterCertificate",
                     "iot:RegisterThing", "iot:AttachPolicy", "iot:ListAttachedPolicies",
                     "iot:GetPolicy", "iot:ListPrincipalThings"],
            resources=[
                stack.format_arn(service="iot", resource="thing", resource_name="*"),
                stack.format_arn(service="iot", resource="cert", resource_name="*"),
                self.thing_group_arn,
                stack.format_arn(service="iot", resource="policy", resource_name=self.policy_name),
            ]))
        acknowledge_wildcards(
            role, [stack.format_arn(service="iot", resource="thing", resource_name="*"),
                   stack.format_arn(service="iot", resource="cert", resource_name="*")],
            reason="the provisioning role registers devices it cannot know in advance: thing "
                   "names are chosen by each device at provisioning and certificate ids are "
                   "issued then, so thing/* and cert/* are the narrowest resources; the thing "
                   "group and the policy it attaches are named exactly")
        body = {
            "Parameters": {"ThingName": {"Type": "String"},
                           "AWS::IoT::Certificate::Id": {"Type": "String"}},
            "Resources": {
                "thing": {"Type": "AWS::IoT::Thing",
                          "OverrideSettings": {"AttributePayload": "MERGE", "ThingGroups": "DO_NOTHING"},
                          "Properties": {"ThingName": {"Ref": "ThingName"},
                                         "ThingGroups": [self.fleet_name],
                                         "AttributePayload": {}}},
                "certificate": {"Type": "AWS::IoT::Certificate",
                                "Properties": {"CertificateId": {"Ref": "AWS::IoT::Certificate::Id"},
                                               "Status": "Active"}},
                "policy": {"Type": "AWS::IoT::Policy",
                           "Properties": {"PolicyName": self.policy_name}},
            },
        }
        template = iot.CfnProvisioningTemplate(
            self, "ProvisioningTemplate", template_name=template_name,
            description=f"claim-certificate provisioning into the neo-edge fleet {self.fleet_name}",
            enabled=True, provisioning_role_arn=role.role_arn,
            template_body=json.dumps(body, sort_keys=True),
            pre_provisioning_hook=iot.CfnProvisioningTemplate.ProvisioningHookProperty(
                target_arn=hook.function_arn, payload_version="2020-04-01"))
        template.node.add_dependency(self.thing_group)
        template.node.add_dependency(self.policy)

        def arn(resource: str, name: str) -> str:
            return stack.format_arn(service="iot", resource=resource, resource_name=name)

        claim_topics = ["$aws/certificates/create/*",
                        f"$aws/provisioning-templates/{template_name}/provision/*"]
        self.claim_policy = iot.CfnPolicy(
            self, "ClaimPolicy", policy_name=f"{self.fleet_name}-ClaimPolicy",
            policy_document={
                "Version": "2012-10-17",
                "Statement": [
                    {"Effect": "Allow", "Action": "iot:Connect",
                     "Resource": arn("client", f"{CLAIM_CLIENT_ID_PREFIX}*")},
                    {"Effect": "Allow", "Action": ["iot:Publish", "iot:Receive"],
                     "Resource": [arn("topic", t) for t in claim_topics]},
                    {"Effect": "Allow", "Action": "iot:Subscribe",
                     "Resource": [arn("topicfilter", t) for t in claim_topics]},
                ]})
        self.provisioning_template = template
        self.provisioning_role = role
        self.provisioning_template_name = template_name
        cdk.CfnOutput(self, "ProvisioningTemplateName", value=template_name,
                      description="fleet provisioning template for claim certificates")

    @property
    def artifact_key_pattern(self) -> Optional[str]:
        """The key pattern the fleet may read in its artifact bucket, if it has one."""
        return self._artifact_wildcard


class _ImportedEdgeFleet(_FleetGrants, Construct):
    """What :meth:`EdgeFleet.from_thing_group_name` returns: a fleet this app does not
    manage, known by its thing group's name (nothing is created)."""

    def __init__(self, scope: Construct, id: str, *, thing_group_name: str,
                 token_exchange_role: Optional[iam.IRole], topic_prefix: str) -> None:
        super().__init__(scope, id)
        self.fleet_name = thing_group_name
        self.thing_group_name = thing_group_name
        self.thing_group_arn = cdk.Stack.of(self).format_arn(
            service="iot", resource="thinggroup", resource_name=thing_group_name)
        self.topic_prefix = topic_prefix
        self.token_exchange_role = token_exchange_role


def nag_wildcard_ids(scope: Construct, *arns: str) -> list:
    """cdk-nag's ``AwsSolutions-IAM5[Resource::...]`` finding ids for wildcard resource ARNs.

    cdk-nag names each wildcard resource as it renders the resolved ARN: ``Ref`` as
    ``<Name>``, ``Fn::GetAtt`` as ``<Resource.Attribute>``, ``Fn::Join`` concatenated,
    ``Fn::ImportValue`` as the export's name (another stack's resource).
    Acknowledging each exact finding (rather than the whole rule) keeps any other
    wildcard that appears later a finding.
    """
    stack = cdk.Stack.of(scope)

    def render(value) -> str:
        if isinstance(value, str):
            return value
        if isinstance(value, dict) and "Ref" in value:
            return f"<{value['Ref']}>"
        if isinstance(value, dict) and "Fn::GetAtt" in value:
            return f"<{'.'.join(value['Fn::GetAtt'])}>"
        if isinstance(value, dict) and "Fn::Join" in value:
            sep, parts = value["Fn::Join"]
            return sep.join(render(p) for p in parts)
        if isinstance(value, dict) and "Fn::ImportValue" in value:
            return render(value["Fn::ImportValue"])
        raise ValueError(f"cannot render {value!r} as cdk-nag does")

    # An ARN made from another stack's resource is an import in this stack's template.
    rendered = [render(stack.resolve(as_seen_from(scope, a))) for a in arns]
    return [f"AwsSolutions::AwsSolutions-IAM5[Resource::{r}]" for r in rendered]


def acknowledge_wildcards(scope: Construct, arns, reason: str) -> None:
    """Acknowledge the IAM5 finding of each wildcard ARN in ``arns`` on ``scope``."""
    for finding in nag_wildcard_ids(scope, *arns):
        cdk.Validations.of(scope).acknowledge(cdk.Acknowledgment(id=finding, reason=reason))


#: AWS::IoT::ProvisioningTemplate names are at most 36 characters.
_MAX_TEMPLATE_NAME = 36


def provisioning_template_name(fleet_name: str) -> str:
    """``<fleet>-FleetProvisioning``, or, for a fleet name too long for IoT's 36-character
    limit, its first characters and a hash of the whole name (stable across synths)."""
    name = f"{fleet_name}-FleetProvisioning"
    if len(name) <= _MAX_TEMPLATE_NAME:
        return name
    digest = hashlib.sha256(fleet_name.encode()).hexdigest()[:8]
    return f"{fleet_name[:_MAX_TEMPLATE_NAME - len(digest) - 4]}-{digest}-FP"


def _check_name(name: str) -> None:
    if cdk.Token.is_unresolved(name):
        raise ValueError("fleet_name must be a literal string: the installer and the fleet "
                         "provisioning template need it at synth time; got a token")
    if not _NAME.match(name) or len(name) > _MAX_FLEET_NAME:
        raise ValueError(f"fleet_name must be 1 to {_MAX_FLEET_NAME} letters, digits, '-' or '_'; "
                         f"got {name!r}")


def _check_topic_prefix(topic_prefix: str) -> None:
    if cdk.Token.is_unresolved(topic_prefix):
        raise ValueError("topic_prefix must be a literal string: the device policy and the "
                         "telemetry rule are written with it at synth time; got a token")
    if not isinstance(topic_prefix, str) or not _TOPIC_PREFIX.match(topic_prefix):
        raise ValueError(f"topic_prefix must be topic levels of letters, digits, '-' and '_' "
                         f"without wildcards or a leading '$'; got {topic_prefix!r}")


def _acknowledge_custom_resource_provider(provider: Construct) -> None:
    """The findings of the Lambda function CDK's AwsCustomResource shares in a stack."""
    validations = cdk.Validations.of(provider)
    # aws-cdk-lib makes the function depend on its role explicitly and through GetAtt.
    provider.node.default_child.add_metadata(
        "cfn-lint", {"config": {"ignore_checks": ["W3005"]}})
    validations.acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-IAM4[Policy::arn:<AWS::Partition>:iam::aws:policy/"
           "service-role/AWSLambdaBasicExecutionRole]",
        reason="the function behind CDK's AwsCustomResource uses the AWS managed "
               "AWSLambdaBasicExecutionRole only to write its own logs; the SDK calls it "
               "makes are granted separately, on the exact thing group and things"))
    validations.acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-L1",
        reason="the runtime of the function behind CDK's AwsCustomResource is chosen and "
               "kept current by aws-cdk-lib (the latest Node.js it supports), not by this "
               "library"))
