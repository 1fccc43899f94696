"""``EdgeDeployment``: the set of components a fleet runs, rolled out safely.

Two facts of Greengrass V2 shape this construct:

1. A deployment to a thing group *replaces* that group's previous deployment: any
   component left out of the new one is uninstalled from every device in the group.
2. Every property of ``AWS::GreengrassV2::Deployment`` is create-only, so any change
   is a replacement: CloudFormation creates the new deployment, which supersedes the
   old revision for the group, then deletes the old one.

So that no user loses components by accident:

- **One deployment owns a fleet's whole component set.** Creating a second
  ``EdgeDeployment`` for the same fleet anywhere in the app raises (the two would
  keep uninstalling each other's components); add components to the one deployment
  (``components=`` or :meth:`EdgeDeployment.add_component`) instead. An empty
  component set (which would uninstall everything) and a component listed twice raise.
- **Updates are new deployments, never clashes.** The deployment name is
  ``<fleet name>-<hash>``, the hash taken over the components, their versions and
  configuration updates and the policies, so each change is a new, identifiable
  revision in the console and in the ``Greengrass V2 Effective Deployment Status
  Change`` events, and an unchanged app re-synthesizes to the same deployment (no
  replacement, no redeployment). Component versions are themselves derived from
  content (see :mod:`neo_edge.component`), so a new model is a new version.
- **Devices keep working when a revision fails.** Defaults: ``ROLLBACK`` on failure
  (each device returns to its previous components), ``NOTIFY_COMPONENTS`` (running
  components may defer the update until they are idle), an exponential rollout that
  starts slowly, and an abort of the rollout once a percentage of devices failed.

The deployment also grants the fleet's token exchange role read access to exactly
the artifact objects of its components.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence, Union

import aws_cdk as cdk
import jsii
from aws_cdk import aws_greengrassv2 as greengrassv2
from constructs import Construct, IValidation
from neo_edge_runtime.compile import recipe as _recipe

from .interfaces import IEdgeComponent, IEdgeDeployment, IEdgeFleet

__all__ = ["AbortFailureType", "ComponentUpdateAction", "DeploymentComponent", "EdgeDeployment",
           "FailureHandling", "NUCLEUS"]

_DEPLOYMENT_ID = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")


class FailureHandling:
    """What devices do when a deployment fails on them."""

    #: Return to the previous components and configuration.
    ROLLBACK = "ROLLBACK"
    #: Stay in whatever state the failed deployment left.
    DO_NOTHING = "DO_NOTHING"


class ComponentUpdateAction:
    """Whether running components are asked before they are updated."""

    #: Components that subscribed to update notifications may defer the update.
    NOTIFY_COMPONENTS = "NOTIFY_COMPONENTS"
    #: Update without asking.
    SKIP_NOTIFY_COMPONENTS = "SKIP_NOTIFY_COMPONENTS"


class AbortFailureType:
    """Which device outcomes count toward the abort threshold."""

    FAILED = "FAILED"
    REJECTED = "REJECTED"
    TIMED_OUT = "TIMED_OUT"
    ALL = "ALL"


@dataclass(frozen=True)
class DeploymentComponent:
    """A component in a deployment, with what the deployment changes about it.

    Use :meth:`of` for a component construct of this library, :meth:`public` for a
    component AWS or someone else publishes (``aws.greengrass.LogManager``).
    """

    name: str
    version: str
    merge: Optional[Mapping[str, Any]] = None
    reset: Sequence[str] = ()
    posix_user: Optional[str] = None
    memory_kb: Optional[int] = None
    cpus: Optional[float] = None
    construct: Optional[IEdgeComponent] = field(default=None, compare=False)

    @classmethod
    def of(cls, component: IEdgeComponent, *, merge: Optional[Mapping[str, Any]] = None,
           reset: Sequence[str] = (), posix_user: Optional[str] = None,
           memory: Optional[cdk.Size] = None, cpus: Optional[float] = None) -> "DeploymentComponent":
        """A component: any :class:`~neo_edge.interfaces.IEdgeComponent` (a component
        construct of this library, or what its ``from_component_version`` returns).

        ``merge`` is merged into the component's configuration on the devices;
        ``reset`` lists JSON pointers (``/threadCount``) reset to their defaults first;
        ``posix_user`` (``user:group``), ``memory`` and ``cpus`` set how it runs.
        """
        return cls(name=component.component_name, version=component.component_version,
                   merge=merge, reset=tuple(reset), posix_user=posix_user,
                   memory_kb=int(memory.to_kibibytes()) if memory is not None else None,
                   cpus=cpus, construct=component)

    @classmethod
    def public(cls, name: str, version: str, *, merge: Optional[Mapping[str, Any]] = None,
               reset: Sequence[str] = (), posix_user: Optional[str] = None,
               memory: Optional[cdk.Size] = None, cpus: Optional[float] = None) -> "DeploymentComponent":
        """A component that already exists in Greengrass, by name and exact version."""
        return cls(name=name, version=version, merge=merge, reset=tuple(reset),
                   posix_user=posix_user,
                   memory_kb=int(memory.to_kibibytes()) if memory is not None else None, cpus=cpus)

    def __post_init__(self) -> None:
        _recipe.access_control(self.name)  # validates the component name
        if not cdk.Token.is_unresolved(self.version):
            _recipe.check_version(self.version)
        for pointer in self.reset:
            if not isinstance(pointer, str) or not (pointer == "" or pointer.startswith("/")):
                raise ValueError(f"reset entries must be JSON pointers like '/threadCount'; got {pointer!r}")
        if self.cpus is not None and not self.cpus > 0:
            raise ValueError(f"cpus must be greater than 0; got {self.cpus!r}")

    def specification(self) -> greengrassv2.CfnDeployment.ComponentDeploymentSpecificationProperty:
        update = None
        if self.merge is not None or self.reset:
            update = greengrassv2.CfnDeployment.ComponentConfigurationUpdateProperty(
                merge=json.dumps(self.merge, sort_keys=True) if self.merge is not None else None,
                reset=list(self.reset) or None)
        run_with = None
        if self.posix_user or self.memory_kb or self.cpus:
            limits = None
            if self.memory_kb or self.cpus:
                limits = greengrassv2.CfnDeployment.SystemResourceLimitsProperty(
                    memory=self.memory_kb, cpus=self.cpus)
            run_with = greengrassv2.CfnDeployment.ComponentRunWithProperty(
                posix_user=self.posix_user, system_resource_limits=limits)
        return greengrassv2.CfnDeployment.ComponentDeploymentSpecificationProperty(
            component_version=self.version, configuration_update=update, run_with=run_with)


#: The Greengrass nucleus component.
NUCLEUS = _recipe.NUCLEUS


class EdgeDeployment(Construct):
    """The components a fleet runs, deployed with rollout, abort criteria and rollback.

    See the module documentation for why one deployment owns a fleet's whole
    component set and how updates become new deployments.

    Parameters
    ----------
    fleet:
        Any :class:`~neo_edge.interfaces.IEdgeFleet`: an
        :class:`~neo_edge.fleet.EdgeFleet` of this stack or another one, or
        ``EdgeFleet.from_thing_group_name(...)``. Its ``thing_group_arn`` is the target;
        its ``token_exchange_role``, when known, is allowed to read the components'
        artifacts.
    components:
        Components (any :class:`~neo_edge.interfaces.IEdgeComponent`:
        ``EdgeInferenceComponent``, ``EdgeLambdaComponent``, or their
        ``from_component_version``) or :class:`DeploymentComponent` entries.
        Everything the fleet should run: what is left out is uninstalled from the
        devices. More can be added with
        :meth:`add_component` before synth.
    nucleus_version:
        Deploy this exact version of ``aws.greengrass.Nucleus`` (updates the devices'
        nucleus). Default: the nucleus is left as installed.
    nucleus_configuration:
        Merged into the nucleus' configuration, e.g.
        ``{"platformOverride": {"accelerator": "nvidia"}}`` for a fleet of Jetsons
        (needs ``nucleus_version``). Default: none.
    failure_handling:
        :class:`FailureHandling`. Default: ``ROLLBACK``.
    component_update_action:
        :class:`ComponentUpdateAction`. Default: ``NOTIFY_COMPONENTS``.
    component_update_timeout:
        How long a notified component may defer the update. Default: 60 seconds.
    configuration_validation_timeout:
        How long components have to validate a configuration update. Default: 30 seconds.
    rollout_base_rate_per_minute:
        Devices notified per minute at first (1 to 1000). Default: 5.
    rollout_increment_factor:
        The rate is multiplied by this (1.1 to 5) each time ``rollout_rate_increase_after``
        more devices succeeded. Default: 2.
    rollout_rate_increase_after:
        Default: 5 devices succeeded.
    rollout_maximum_per_minute:
        The fastest rollout (1 to 1000 devices per minute). Default: 100.
    abort_threshold_percentage:
        Cancel the rollout when this percentage of devices failed (0 to 100).
        Default: 10.
    abort_min_executed_things:
        ... once at least this many devices ran the deployment. Default: 5.
    abort_failure_type:
        :class:`AbortFailureType` counted. Default: ``ALL`` (failed, rejected, timed out).
    in_progress_timeout:
        A device that has not finished after this long counts as timed out.
        Default: no timeout.

    A deployment made elsewhere (to name in ``EdgeTelemetry``):
    :meth:`from_deployment_id`. Satisfies :class:`~neo_edge.interfaces.IEdgeDeployment`.

    Attributes
    ----------
    deployment_name:
        ``<fleet name>-<hash of the content>``.
    deployment_id:
        The deployment's id (``Ref``).
    fleet:
        The fleet deployed to.
    """

    def __init__(self, scope: Construct, id: str, *, fleet: IEdgeFleet,
                 components: Sequence[Union[DeploymentComponent, IEdgeComponent]] = (),
                 nucleus_version: Optional[str] = None,
                 nucleus_configuration: Optional[Mapping[str, Any]] = None,
                 failure_handling: str = FailureHandling.ROLLBACK,
                 component_update_action: str = ComponentUpdateAction.NOTIFY_COMPONENTS,
                 component_update_timeout: cdk.Duration = cdk.Duration.seconds(60),
                 configuration_validation_timeout: cdk.Duration = cdk.Duration.seconds(30),
                 rollout_base_rate_per_minute: int = 5, rollout_increment_factor: float = 2.0,
                 rollout_rate_increase_after: int = 5, rollout_maximum_per_minute: int = 100,
                 abort_threshold_percentage: float = 10, abort_min_executed_things: int = 5,
                 abort_failure_type: str = AbortFailureType.ALL,
                 in_progress_timeout: Optional[cdk.Duration] = None) -> None:
        super().__init__(scope, id)
        target_arn = getattr(fleet, "thing_group_arn", None)
        if target_arn is None:
            raise ValueError(f"fleet must be an EdgeFleet (an object with thing_group_arn); got {fleet!r}")
        self._fleet = fleet
        self._target_key = getattr(fleet, "fleet_name", None) or cdk.Stack.of(self).resolve(target_arn)
        self._check_single_deployment()

        _choice("failure_handling", failure_handling, (FailureHandling.ROLLBACK, FailureHandling.DO_NOTHING))
        _choice("component_update_action", component_update_action,
                (ComponentUpdateAction.NOTIFY_COMPONENTS, ComponentUpdateAction.SKIP_NOTIFY_COMPONENTS))
        _choice("abort_failure_type", abort_failure_type,
                (AbortFailureType.FAILED, AbortFailureType.REJECTED, AbortFailureType.TIMED_OUT,
                 AbortFailureType.ALL))
        _between("rollout_base_rate_per_minute", rollout_base_rate_per_minute, 1, 1000)
        _between("rollout_increment_factor", rollout_increment_factor, 1.1, 5)
        _between("rollout_rate_increase_after", rollout_rate_increase_after, 1, 1000000)
        _between("rollout_maximum_per_minute", rollout_maximum_per_minute, 1, 1000)
        if rollout_maximum_per_minute < rollout_base_rate_per_minute:
            raise ValueError(f"rollout_maximum_per_minute must be at least rollout_base_rate_per_minute "
                             f"({rollout_base_rate_per_minute}); got {rollout_maximum_per_minute}")
        _between("abort_threshold_percentage", abort_threshold_percentage, 0, 100)
        _between("abort_min_executed_things", abort_min_executed_things, 1, 1000000)
        if nucleus_configuration is not None and nucleus_version is None:
            raise ValueError("nucleus_configuration needs nucleus_version: the nucleus is configured "
                             "by deploying it; got a configuration without a version")

        self._components: dict = {}
        self._policies = greengrassv2.CfnDeployment.DeploymentPoliciesProperty(
            failure_handling_policy=failure_handling,
            component_update_policy=greengrassv2.CfnDeployment.DeploymentComponentUpdatePolicyProperty(
                action=component_update_action,
                timeout_in_seconds=int(component_update_timeout.to_seconds())),
            configuration_validation_policy=greengrassv2.CfnDeployment.DeploymentConfigurationValidationPolicyProperty(
                timeout_in_seconds=int(configuration_validation_timeout.to_seconds())))
        self._job = greengrassv2.CfnDeployment.DeploymentIoTJobConfigurationProperty(
            job_executions_rollout_config=greengrassv2.CfnDeployment.IoTJobExecutionsRolloutConfigProperty(
                exponential_rate=greengrassv2.CfnDeployment.IoTJobExponentialRolloutRateProperty(
                    base_rate_per_minute=rollout_base_rate_per_minute,
                    increment_factor=rollout_increment_factor,
                    rate_increase_criteria={"NumberOfSucceededThings": rollout_rate_increase_after}),
                maximum_per_minute=rollout_maximum_per_minute),
            abort_config=greengrassv2.CfnDeployment.IoTJobAbortConfigProperty(criteria_list=[
                greengrassv2.CfnDeployment.IoTJobAbortCriteriaProperty(
                    action="CANCEL", failure_type=abort_failure_type,
                    threshold_percentage=abort_threshold_percentage,
                    min_number_of_executed_things=abort_min_executed_things)]),
            timeout_config=greengrassv2.CfnDeployment.IoTJobTimeoutConfigProperty(
                in_progress_timeout_in_minutes=int(in_progress_timeout.to_minutes()))
            if in_progress_timeout is not None else None)

        self.resource = greengrassv2.CfnDeployment(
            self, "Resource", target_arn=target_arn,
            deployment_name=f"{self._name_prefix()}-empty",
            deployment_policies=self._policies, iot_job_configuration=self._job)
        self.deployment_id = self.resource.ref
        if isinstance(fleet, Construct):
            # The target ARN is built from the group's name, not a reference to it.
            self.resource.node.add_dependency(fleet)
        self.node.add_validation(_NotEmpty(self))

        if nucleus_version is not None:
            self._add(DeploymentComponent.public(NUCLEUS, nucleus_version, merge=nucleus_configuration))
        for component in components:
            self.add_component(component)

    # ------------------------------------------------------------------------------

    def add_component(self, component: Union[DeploymentComponent, IEdgeComponent], *,
                      merge: Optional[Mapping[str, Any]] = None,
                      reset: Sequence[str] = (), posix_user: Optional[str] = None,
                      memory: Optional[cdk.Size] = None, cpus: Optional[float] = None) -> None:
        """Add a component (any :class:`~neo_edge.interfaces.IEdgeComponent`) or a
        :class:`DeploymentComponent` to the set."""
        if isinstance(component, DeploymentComponent):
            entry = component
        else:
            if not hasattr(component, "component_name") or not hasattr(component, "component_version"):
                raise ValueError(f"components must be component constructs (with component_name and "
                                 f"component_version) or DeploymentComponent entries; got {component!r}")
            entry = DeploymentComponent.of(component, merge=merge, reset=reset,
                                           posix_user=posix_user, memory=memory, cpus=cpus)
        self._add(entry)

    @classmethod
    def from_deployment_id(cls, scope: Construct, id: str, deployment_id: str, *,
                           fleet: Optional[IEdgeFleet] = None,
                           deployment_name: Optional[str] = None) -> IEdgeDeployment:
        """A deployment that exists already, by id (``EdgeDeployment.deployment_id``
        of another stack or app, or the id the console shows).

        For ``EdgeTelemetry(deployment=...)``, which then counts that deployment's
        failures only. Nothing is created, and it does not take part in the "one
        deployment per fleet" check (it deploys nothing from this app).

        Parameters
        ----------
        deployment_id:
            Letters, digits, ``-`` and ``_`` (a token is taken as it is).
        fleet:
            The fleet it deploys to, if you have it. Default: unknown (``None``).
        deployment_name:
            Its name, if you know it. Default: unknown (``None``).
        """
        if not cdk.Token.is_unresolved(deployment_id) and (
                not isinstance(deployment_id, str) or not _DEPLOYMENT_ID.match(deployment_id)):
            raise ValueError(f"deployment_id must be a Greengrass deployment id (1 to 128 "
                             f"letters, digits, '-' or '_'); got {deployment_id!r}")
        return _ImportedEdgeDeployment(scope, id, deployment_id=deployment_id, fleet=fleet,
                                       deployment_name=deployment_name)

    @property
    def fleet(self) -> IEdgeFleet:
        """The fleet deployed to."""
        return self._fleet

    @property
    def component_names(self) -> list:
        """The names of the components deployed, sorted."""
        return sorted(self._components)

    @property
    def deployment_name(self) -> str:
        """``<fleet name>-<hash of the content>``."""
        return self.resource.deployment_name

    def _name_prefix(self) -> str:
        return str(getattr(self._fleet, "fleet_name", None) or "neo-edge")[:100]

    def _content_name(self) -> str:
        stack = cdk.Stack.of(self)
        content = {
            "components": stack.resolve(self._specifications()),
            "policies": stack.resolve(self._policies),
            "job": stack.resolve(self._job),
        }
        digest = hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self._name_prefix()}-{digest[:12]}"

    # ------------------------------------------------------------------------------

    def _add(self, entry: DeploymentComponent) -> None:
        if entry.name in self._components:
            raise ValueError(f"component {entry.name} is already in this deployment (version "
                             f"{self._components[entry.name].version}); a deployment runs one "
                             f"version of each component; got it again with version {entry.version}")
        self._components[entry.name] = entry
        self.resource.components = self._specifications()
        self.resource.deployment_name = self._content_name()
        if entry.construct is not None:
            # The component version must exist before the deployment refers to it.
            self.resource.node.add_dependency(entry.construct)
            role = getattr(self._fleet, "token_exchange_role", None)
            grant = getattr(entry.construct, "grant_artifacts_read", None)
            if role is not None and grant is not None:
                grant(role)

    def _specifications(self) -> dict:
        return {name: self._components[name].specification() for name in sorted(self._components)}

    def _check_single_deployment(self) -> None:
        for other in self.node.root.node.find_all():
            if other is self or not isinstance(other, EdgeDeployment):
                continue
            if getattr(other, "_target_key", None) == self._target_key:
                raise ValueError(
                    f"fleet {self._target_key} already has a deployment ({other.node.path}): a "
                    f"Greengrass deployment replaces every component its fleet runs, so two would "
                    f"uninstall each other's components; give that deployment all of the fleet's "
                    f"components (components= or add_component)")


class _ImportedEdgeDeployment(Construct):
    """What :meth:`EdgeDeployment.from_deployment_id` returns (nothing is created)."""

    def __init__(self, scope: Construct, id: str, *, deployment_id: str,
                 fleet: Optional[IEdgeFleet], deployment_name: Optional[str]) -> None:
        super().__init__(scope, id)
        self.deployment_id = deployment_id
        self.deployment_name = deployment_name
        self.fleet = fleet


@jsii.implements(IValidation)
class _NotEmpty:
    def __init__(self, deployment: EdgeDeployment) -> None:
        self._deployment = deployment

    def validate(self) -> list:
        if not self._deployment._components:
            return [f"deployment {self._deployment.node.path} has no components: deployed, it would "
                    f"uninstall every component from the fleet; add the components it should run"]
        return []


def _choice(name: str, value: str, allowed: tuple) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


def _between(name: str, value: float, low: float, high: float) -> None:
    if cdk.Token.is_unresolved(value):
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise ValueError(f"{name} must be from {low} to {high}; got {value!r}")
