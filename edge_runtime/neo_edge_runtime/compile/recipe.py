"""The Greengrass V2 component recipe builder: typed inputs in, a validated recipe out.

Plain Python (no aws-cdk, no tvm): the CDK constructs, local mode and the
``component_publisher`` Lambda all build recipes with it, so a recipe packaged on a
laptop and one deployed by CloudFormation come from the same code.

Two levels:

- :func:`build_recipe` assembles any recipe from :class:`Artifact`, :class:`Manifest`,
  :class:`Dependency` and an :func:`access_control` block, and checks what it emits
  (:func:`validate_recipe`): component name, semantic version, platform ``os`` and
  ``architecture`` names, lifecycle steps and their keys, artifact URIs and digests.
- :func:`inference_recipe` is the recipe of the neo-edge inference component: one
  manifest per platform, each with the device bundle of the edge runtime and the
  compiled model for that platform (and, for devices without the package index, the
  wheels of the device requirements), an install step that lays the model out in the
  component's work folder and installs the bundle's pinned device requirements into a
  virtual environment there, a run step that starts the inference process with that
  environment's Python, and the IPC access it needs.

:func:`content_version` derives a component version from content, so the same inputs
always give the same version (a re-synth changes nothing) and any change gives a new
one (Greengrass refuses to create a component version that already exists).

Recipe keys are written in Greengrass' canonical casing (``ComponentName``,
``Manifests``, ``Lifecycle``...); Greengrass reads them case-insensitively.

Strings may carry CDK string tokens (``${Token[...]}``): the constructs build recipes
before CloudFormation resolves bucket names. Validation skips a value that holds one.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Optional, Sequence

from ..errors import NeoEdgeError
from ..signature import parse_public_key
from .bundle import DEVICE_REQUIREMENTS_FILE

#: The only recipe format Greengrass V2 knows.
RECIPE_FORMAT_VERSION = "2020-01-25"

#: Platform ``os`` values Greengrass V2 core devices report (``*`` matches any).
OPERATING_SYSTEMS = ("linux", "windows", "*")
#: Platform ``architecture`` values Greengrass V2 core devices report (``*`` matches any).
ARCHITECTURES = ("amd64", "aarch64", "arm", "x86", "*")

#: Lifecycle steps a manifest may define, in the order the nucleus runs them.
LIFECYCLE_STEPS = ("setenv", "bootstrap", "install", "startup", "run", "shutdown", "recover")
#: Keys of a lifecycle step given as an object rather than a script string.
LIFECYCLE_STEP_KEYS = ("script", "requiresprivilege", "skipif", "timeout", "setenv")

#: The IPC services whose access control :func:`access_control` writes, and the
#: operations each allows.
IPC_OPERATIONS: Mapping[str, tuple] = {
    "aws.greengrass.ipc.pubsub": ("aws.greengrass#PublishToTopic",
                                  "aws.greengrass#SubscribeToTopic"),
    "aws.greengrass.ipc.mqttproxy": ("aws.greengrass#PublishToIoTCore",
                                     "aws.greengrass#SubscribeToIoTCore"),
}

#: The Greengrass nucleus component and the version range this project's recipes need
#: (2.5 added ``{artifacts:decompressedPath}`` for every platform and the IPC used here).
NUCLEUS = "aws.greengrass.Nucleus"
NUCLEUS_REQUIREMENT = ">=2.5.0 <3.0.0"

# Semantic Versioning 2.0.0, the regular expression semver.org publishes.
_SEMVER = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?"
    r"(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$")
_COMPONENT_NAME = re.compile(r"^[a-zA-Z0-9-_.]+$")
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
_URI_SCHEMES = ("s3://", "greengrass:", "docker:")
# Greengrass (semver4j) parses each version number as a Java int.
_MAX_VERSION_NUMBER = 2**31 - 1
# The patch number content_version derives: 28 bits of the digest.
_PATCH_HEX_DIGITS = 7


class RecipeError(NeoEdgeError, ValueError):
    """A recipe input or a built recipe that Greengrass would refuse."""


def is_token(value: Any) -> bool:
    """Whether ``value`` is a string holding a CDK string token (resolved at deploy time)."""
    return isinstance(value, str) and "${Token[" in value


# ---------------------------------------------------------------------------------------
# Typed inputs


@dataclass(frozen=True)
class Artifact:
    """One artifact of a manifest.

    Attributes
    ----------
    uri:
        ``s3://bucket/key`` (or ``greengrass:``/``docker:`` URIs). The file lands in
        ``{artifacts:path}`` under the URI's last path segment.
    sha256:
        The file's SHA-256 as 64 lowercase hex digits, when known. Written as the
        recipe's ``Digest`` (base64, as Greengrass writes it) with ``Algorithm``
        ``SHA-256``; Greengrass recomputes both when it creates the component version,
        and local mode checks them.
    unarchive:
        ``"ZIP"`` to have the nucleus extract the file to
        ``{artifacts:decompressedPath}/<file name without .zip>/``, else ``"NONE"``.
    read, execute:
        Who may read / execute the file on the device: ``NONE``, ``OWNER`` or ``ALL``.
    """

    uri: str
    sha256: Optional[str] = None
    unarchive: str = "NONE"
    read: str = "OWNER"
    execute: str = "NONE"

    def __post_init__(self) -> None:
        if not isinstance(self.uri, str) or not self.uri:
            raise RecipeError(f"artifact uri must be a non-empty string; got {self.uri!r}")
        if not is_token(self.uri) and not self.uri.startswith(_URI_SCHEMES):
            raise RecipeError(f"artifact uri must start with one of {', '.join(_URI_SCHEMES)}; "
                              f"got {self.uri!r}")
        if self.sha256 is not None and not _SHA256_HEX.match(str(self.sha256)):
            raise RecipeError(f"artifact sha256 must be 64 lowercase hex digits; got {self.sha256!r}")
        if self.unarchive not in ("NONE", "ZIP"):
            raise RecipeError(f"artifact unarchive must be one of NONE, ZIP; got {self.unarchive!r}")
        for what, value in (("read", self.read), ("execute", self.execute)):
            if value not in ("NONE", "OWNER", "ALL"):
                raise RecipeError(f"artifact {what} permission must be one of NONE, OWNER, ALL; "
                                  f"got {value!r}")

    @property
    def file_name(self) -> str:
        """The name the file has on the device (the URI's last segment)."""
        return self.uri.rstrip("/").rsplit("/", 1)[-1]

    def to_recipe(self) -> dict:
        out: dict = {"Uri": self.uri, "Unarchive": self.unarchive,
                     "Permission": {"Read": self.read, "Execute": self.execute}}
        if self.sha256 is not None:
            out["Digest"] = base64.b64encode(bytes.fromhex(self.sha256)).decode("ascii")
            out["Algorithm"] = "SHA-256"
        return out


@dataclass(frozen=True)
class Manifest:
    """The artifacts and lifecycle of a component on one platform.

    Attributes
    ----------
    platform:
        ``{"os": "linux", "architecture": "aarch64"}`` and any extra attributes that
        devices declare (``"accelerator": "nvidia"``); ``Target.greengrass_platform``
        gives it for a Neo target.
    artifacts:
        What the nucleus downloads for this platform.
    lifecycle:
        Step name (``install``, ``run``, ...) to a script string or a step object
        (``{"Script": ..., "RequiresPrivilege": ..., "Timeout": ...}``).
    name:
        A label for people. Default: none.
    """

    platform: Mapping[str, str]
    artifacts: Sequence[Artifact] = ()
    lifecycle: Mapping[str, Any] = field(default_factory=dict)
    name: Optional[str] = None

    def to_recipe(self) -> dict:
        out: dict = {}
        if self.name:
            out["Name"] = self.name
        out["Platform"] = dict(self.platform)
        if self.lifecycle:
            out["Lifecycle"] = {_canonical_step(k): _canonical_step_value(v)
                                for k, v in self.lifecycle.items()}
        if self.artifacts:
            out["Artifacts"] = [a.to_recipe() for a in self.artifacts]
        return out


@dataclass(frozen=True)
class Dependency:
    """A dependency on another component: ``HARD`` restarts this one when it changes."""

    version_requirement: str
    dependency_type: str = "HARD"

    def __post_init__(self) -> None:
        if self.dependency_type not in ("HARD", "SOFT"):
            raise RecipeError(f"dependency type must be one of HARD, SOFT; "
                              f"got {self.dependency_type!r}")
        if not isinstance(self.version_requirement, str) or not self.version_requirement.strip():
            raise RecipeError(f"dependency version requirement must be a non-empty string; "
                              f"got {self.version_requirement!r}")

    def to_recipe(self) -> dict:
        return {"VersionRequirement": self.version_requirement,
                "DependencyType": self.dependency_type}


def access_control(component_name: str, *,
                   pubsub_publish: Iterable[str] = (), pubsub_subscribe: Iterable[str] = (),
                   mqtt_publish: Iterable[str] = (), mqtt_subscribe: Iterable[str] = ()) -> dict:
    """The ``accessControl`` block of a component's default configuration.

    One policy per IPC service and direction, each listing its topics (``*`` and
    MQTT wildcards are allowed in topics). ``aws.greengrass.ipc.pubsub`` is the local
    publish/subscribe bus; ``aws.greengrass.ipc.mqttproxy`` is IoT Core through the
    nucleus' connection (the device's IoT policy still applies there).
    """
    _check_component_name(component_name)
    services: dict = {}
    for service, direction, topics in (
            ("aws.greengrass.ipc.pubsub", "publish", pubsub_publish),
            ("aws.greengrass.ipc.pubsub", "subscribe", pubsub_subscribe),
            ("aws.greengrass.ipc.mqttproxy", "publish", mqtt_publish),
            ("aws.greengrass.ipc.mqttproxy", "subscribe", mqtt_subscribe)):
        topics = list(topics)
        if not topics:
            continue
        for topic in topics:
            if not isinstance(topic, str) or not topic:
                raise RecipeError(f"{service} {direction} topics must be non-empty strings; "
                                  f"got {topic!r}")
        operation = IPC_OPERATIONS[service][0 if direction == "publish" else 1]
        short = service.rsplit(".", 1)[-1]
        services.setdefault(service, {})[f"{component_name}:{short}:{direction}"] = {
            "policyDescription": f"{component_name} may {direction} "
                                 f"{'on the local bus' if short == 'pubsub' else 'to IoT Core'}",
            "operations": [operation],
            "resources": topics,
        }
    return services


# ---------------------------------------------------------------------------------------
# Building and validating


def build_recipe(*, component_name: str, manifests: Sequence[Manifest],
                 component_version: Optional[str] = None, description: str = "",
                 publisher: str = "neo-edge",
                 default_configuration: Optional[Mapping[str, Any]] = None,
                 access: Optional[Mapping[str, Any]] = None,
                 dependencies: Optional[Mapping[str, Dependency]] = None,
                 component_type: Optional[str] = None,
                 version_fingerprint: Iterable[Any] = ()) -> dict:
    """A validated Greengrass V2 recipe.

    Parameters
    ----------
    component_name:
        Letters, digits, ``-``, ``_`` and ``.``; at most 128 characters.
    manifests:
        One per platform; at least one.
    component_version:
        A semantic version. Default: derived from the rest of the recipe and
        ``version_fingerprint`` by :func:`content_version`.
    description, publisher:
        For people. Default: no description; publisher ``neo-edge``.
    default_configuration:
        The component's ``DefaultConfiguration``. Default: none (or only ``accessControl``).
    access:
        An :func:`access_control` block, written as ``DefaultConfiguration.accessControl``.
        Default: no IPC access.
    dependencies:
        Component name to :class:`Dependency`. Default: none.
    component_type:
        ``aws.greengrass.generic`` etc. Default: not written (generic).
    version_fingerprint:
        Extra JSON-able values that identify content the recipe refers to but does
        not contain (e.g. the digest of a file behind an unresolved URI); only used
        when the version is derived.

    Raises
    ------
    RecipeError
        For anything :func:`validate_recipe` refuses.
    """
    config: dict = dict(default_configuration or {})
    if access:
        config["accessControl"] = dict(access)
    recipe: dict = {
        "RecipeFormatVersion": RECIPE_FORMAT_VERSION,
        "ComponentName": component_name,
        "ComponentVersion": component_version or "0.0.0",
    }
    if component_type:
        recipe["ComponentType"] = component_type
    if description:
        recipe["ComponentDescription"] = description
    recipe["ComponentPublisher"] = publisher
    if config:
        recipe["ComponentConfiguration"] = {"DefaultConfiguration": config}
    if dependencies:
        recipe["ComponentDependencies"] = {name: dep.to_recipe()
                                           for name, dep in sorted(dependencies.items())}
    recipe["Manifests"] = [m.to_recipe() for m in manifests]
    if component_version is None:
        recipe["ComponentVersion"] = content_version(recipe, *version_fingerprint)
    validate_recipe(recipe)
    return recipe


def validate_recipe(recipe: Mapping[str, Any]) -> None:
    """Check a recipe the way Greengrass would before accepting it.

    Keys are compared case-insensitively, as Greengrass reads them.

    Raises
    ------
    RecipeError
        Naming the offending value and what is allowed.
    """
    r = _lower_keys(recipe)
    if not isinstance(r, dict):
        raise RecipeError(f"a recipe must be a mapping; got {type(recipe).__name__}")
    fmt = r.get("recipeformatversion")
    if fmt != RECIPE_FORMAT_VERSION:
        raise RecipeError(f"recipe format version must be {RECIPE_FORMAT_VERSION}; got {fmt!r}")
    _check_component_name(r.get("componentname"))
    check_version(r.get("componentversion"))
    manifests = r.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise RecipeError(f"a recipe needs at least one manifest; got {manifests!r}")
    seen: set = set()
    for i, manifest in enumerate(manifests):
        platform = manifest.get("platform")
        if platform is None:
            raise RecipeError(f"manifest {i} has no platform; every manifest here names one")
        check_platform(platform)
        key = json.dumps(platform, sort_keys=True)
        if key in seen:
            raise RecipeError(f"manifest {i} repeats platform {platform}: the nucleus would only "
                              f"ever use the first; give each platform one manifest")
        seen.add(key)
        _check_lifecycle(manifest.get("lifecycle", {}), f"manifest {i}")
        for artifact in manifest.get("artifacts", []):
            Artifact(uri=artifact.get("uri"), unarchive=artifact.get("unarchive", "NONE"),
                     read=artifact.get("permission", {}).get("read", "OWNER"),
                     execute=artifact.get("permission", {}).get("execute", "NONE"))
    for name, dep in (r.get("componentdependencies") or {}).items():
        _check_component_name(name)
        Dependency(dep.get("versionrequirement"), dep.get("dependencytype", "HARD"))


def check_version(version: Any) -> None:
    """Raise :class:`RecipeError` unless ``version`` is a semantic version Greengrass takes."""
    if not isinstance(version, str) or not _SEMVER.match(version):
        raise RecipeError(f"component version must be a semantic version like 1.0.0; "
                          f"got {version!r}")
    if len(version) > 64:
        raise RecipeError(f"component version must be at most 64 characters; got {version!r}")
    numbers = [int(n) for n in re.split(r"[-+]", version, maxsplit=1)[0].split(".")]
    if max(numbers) > _MAX_VERSION_NUMBER:
        raise RecipeError(f"component version numbers must be at most {_MAX_VERSION_NUMBER}; "
                          f"got {version!r}")


def check_platform(platform: Any) -> None:
    """Raise :class:`RecipeError` unless ``platform`` is a Greengrass platform mapping."""
    if not isinstance(platform, Mapping):
        raise RecipeError(f"platform must be a mapping like {{'os': 'linux', "
                          f"'architecture': 'aarch64'}}; got {platform!r}")
    p = {str(k).lower(): v for k, v in platform.items()}
    os_ = p.get("os")
    if os_ not in OPERATING_SYSTEMS:
        raise RecipeError(f"platform os must be one of {', '.join(OPERATING_SYSTEMS)}; got {os_!r}")
    arch = p.get("architecture")
    if arch not in ARCHITECTURES:
        raise RecipeError(f"platform architecture must be one of {', '.join(ARCHITECTURES)}; "
                          f"got {arch!r}")
    for key, value in p.items():
        if not isinstance(value, str) or not value:
            raise RecipeError(f"platform attribute {key!r} must be a non-empty string; got {value!r}")


def content_version(*content: Any, major: int = 1, minor: int = 0) -> str:
    """A component version derived from content: ``<major>.<minor>.<patch>``.

    ``patch`` is the first 28 bits of the SHA-256 of the content as canonical JSON
    (sorted keys, no whitespace; bytes are hashed as their SHA-256), so the same content
    always gives the same version and a change gives a different one (a clash between
    two different contents is a one in 268 million chance). Every number stays below
    2**31, which Greengrass needs. The ``ComponentVersion`` of a recipe passed in is
    left out of its own hash.
    """
    for what, n in (("major", major), ("minor", minor)):
        if not isinstance(n, int) or n < 0 or n > _MAX_VERSION_NUMBER:
            raise RecipeError(f"{what} version must be an integer from 0 to "
                              f"{_MAX_VERSION_NUMBER}; got {n!r}")
    h = hashlib.sha256()
    for part in content:
        h.update(_canonical(part).encode("utf-8"))
        h.update(b"\x00")
    patch = int(h.hexdigest()[:_PATCH_HEX_DIGITS], 16)
    return f"{major}.{minor}.{patch}"


def recipe_json(recipe: Mapping[str, Any]) -> str:
    """The recipe as the JSON text Greengrass takes (stable key order, UTF-8)."""
    return json.dumps(recipe, indent=2, sort_keys=False, ensure_ascii=False)


# ---------------------------------------------------------------------------------------
# The inference component

#: The model folder the install step lays out, under the component's work folder.
MODEL_DIR = "{work:path}/model"
#: Where the install step links the unpacked device bundle, under the work folder.
RUNTIME_DIR = "{work:path}/runtime"

#: The default configuration keys of the inference component and their defaults.
INFERENCE_DEFAULTS: Mapping[str, Any] = {
    # The local pub/sub topic the component takes requests from.
    "inputTopic": "neo-edge/inference/input",
    # IoT Core topics are <topicPrefix>/<thing name>/results and .../errors.
    "topicPrefix": "neo-edge",
    # Threads the TVM runtime uses; 0 lets it pick (one per core).
    "threadCount": 0,
    # The public key (PEM, or the base64 of its DER) that every model's manifest.json.sig
    # must verify with; "" for none (the device then checks the files' sha256 only).
    "signingPublicKey": "",
    # Whether a model without a signature is served. When the configuration given to
    # inference_recipe does not say: false when it gives a signingPublicKey, true when
    # not. So a component made with a key refuses unsigned models, and one made without
    # (every component made before signing existed) keeps working as it did; a device
    # never refuses to start for want of a key it was never given.
    "allowUnsigned": True,
    # Telemetry (neo_edge_runtime.telemetry.TelemetryConfig): a summary per model version
    # every summaryIntervalSeconds (0: none) on <topicPrefix>/<thing>/summary; which results
    # are published one by one ("all", "sampled": resultsSampleRate of them plus every
    # notable one, "notable": errors, confidence below lowConfidenceThreshold, anomalies),
    # batched into messages at most resultsBatchSeconds old. All results by default: nothing
    # is dropped unless asked; "sampled" with 0.01 is the fleet-scale setting.
    "summaryIntervalSeconds": 60,
    "publishResults": "all",
    "resultsSampleRate": 0.01,
    "lowConfidenceThreshold": 0.5,
    "resultsBatchSeconds": 1,
    # Capture of inputs for retraining: "off", "sampled" (captureSampleRate of the requests
    # plus the notable ones) or "notable"; spooled on the device (at most
    # captureMaxMegabytes) and uploaded every captureUploadSeconds to captureDestination
    # (s3://bucket/prefix, through the token exchange service; "" keeps them on the device).
    "capture": "off",
    "captureSampleRate": 0.01,
    "captureDestination": "",
    "captureMaxMegabytes": 100,
    "captureUploadSeconds": 300,
    # Health-gated rollout (neo_edge_runtime.rollout.RolloutConfig): a new model version runs
    # in shadow beside the current one on shadowShare of the requests (0: no shadow, it
    # serves at once) for shadowRequests paired requests or shadowMinutes, then is promoted
    # or rejected by the thresholds, and watched for healthRequests / healthMinutes after a
    # promotion (rolled back past maxErrorRateIncrease or maxLatencyRatio). Decisions go to
    # <topicPrefix>/<thing>/rollout, tagged with rolloutId (set by a canary deployment).
    # Off by default: a component made before shadow trials existed behaves as it did.
    "shadowShare": 0,
    "shadowRequests": 100,
    "shadowMinutes": 60,
    "shadowMinRequests": 20,
    "shadowMinAgreement": 0.9,
    "shadowMaxScoreDifference": 0.2,
    "maxErrorRateIncrease": 0.01,
    "maxLatencyRatio": 1.5,
    "latencySlackMs": 1.0,
    "healthRequests": 100,
    "healthMinutes": 30,
    "healthMinRequests": 20,
    "rolloutId": "",
}

#: The telemetry keys of :data:`INFERENCE_DEFAULTS` and the environment variables the run
#: step passes them in (``neo_edge_runtime.telemetry``).
TELEMETRY_ENVIRONMENT: Mapping[str, str] = {
    "summaryIntervalSeconds": "NEO_EDGE_SUMMARY_SECONDS",
    "publishResults": "NEO_EDGE_PUBLISH_RESULTS",
    "resultsSampleRate": "NEO_EDGE_SAMPLE_RATE",
    "lowConfidenceThreshold": "NEO_EDGE_LOW_CONFIDENCE",
    "resultsBatchSeconds": "NEO_EDGE_RESULTS_BATCH_SECONDS",
    "capture": "NEO_EDGE_CAPTURE",
    "captureSampleRate": "NEO_EDGE_CAPTURE_RATE",
    "captureDestination": "NEO_EDGE_CAPTURE_DESTINATION",
    "captureMaxMegabytes": "NEO_EDGE_CAPTURE_MAX_MB",
    "captureUploadSeconds": "NEO_EDGE_CAPTURE_UPLOAD_SECONDS",
}

#: The rollout keys of :data:`INFERENCE_DEFAULTS` and the environment variables the run step
#: passes them in (``neo_edge_runtime.rollout``).
#: (Spelled out, not imported: this module stays importable without numpy.)
ROLLOUT_ENVIRONMENT: Mapping[str, str] = {
    "shadowShare": "NEO_EDGE_SHADOW_SHARE",
    "shadowRequests": "NEO_EDGE_SHADOW_REQUESTS",
    "shadowMinutes": "NEO_EDGE_SHADOW_MINUTES",
    "shadowMinRequests": "NEO_EDGE_SHADOW_MIN_REQUESTS",
    "shadowMinAgreement": "NEO_EDGE_SHADOW_MIN_AGREEMENT",
    "shadowMaxScoreDifference": "NEO_EDGE_SHADOW_MAX_SCORE_DIFFERENCE",
    "maxErrorRateIncrease": "NEO_EDGE_MAX_ERROR_RATE_INCREASE",
    "maxLatencyRatio": "NEO_EDGE_MAX_LATENCY_RATIO",
    "latencySlackMs": "NEO_EDGE_LATENCY_SLACK_MS",
    "healthRequests": "NEO_EDGE_HEALTH_REQUESTS",
    "healthMinutes": "NEO_EDGE_HEALTH_MINUTES",
    "healthMinRequests": "NEO_EDGE_HEALTH_MIN_REQUESTS",
    "rolloutId": "NEO_EDGE_ROLLOUT_ID",
}

#: The virtual environment the install step makes for the run step, under the work folder.
VENV_DIR = "{work:path}/venv"

_LAYOUT_LINES = [
    "set -eu",
    "rm -rf model runtime && mkdir -p model",
    "for a in {artifacts:path}/*; do",
    "  case \"$a\" in *.tar.gz|*.tgz) tar -xzf \"$a\" -C model ;; esac",
    "done",
    "for d in {artifacts:decompressedPath}/*; do",
    "  [ -d \"$d\" ] || continue",
    "  if [ -f \"$d/manifest.json\" ]; then cp -R \"$d/.\" model/; fi",
    "  if [ -d \"$d/neo_edge_runtime\" ]; then ln -sfn \"$d\" runtime; fi",
    "done",
    "test -f model/manifest.json || { echo 'no compiled model (manifest.json) among the artifacts' >&2; exit 1; }",
    "test -d runtime/neo_edge_runtime || { echo 'no device bundle (neo_edge_runtime) among the artifacts' >&2; exit 1; }",
    f"test -f runtime/{DEVICE_REQUIREMENTS_FILE} || {{ echo 'the device bundle has no "
    f"{DEVICE_REQUIREMENTS_FILE}: rebuild it with python -m neo_edge_runtime.compile.bundle' >&2; exit 1; }}",
]


def install_script(wheels: Optional[str] = None) -> str:
    """The install step of the inference component.

    It unpacks a ``.tar.gz`` model (what Neo writes) or takes the folder of an unarchived
    ``.zip`` model (what a CDK folder asset is) into ``{work:path}/model``, links the
    unpacked device bundle (the folder holding ``neo_edge_runtime``) as
    ``{work:path}/runtime``, and installs the bundle's ``requirements-device.txt`` into a
    virtual environment of the component, ``{work:path}/venv``, made with the device's
    ``python3 -m venv``. The environment is made again only when the requirements or the
    device's ``python3`` changed since it was made. Only wheels are installed (nothing is
    built on the device).

    Parameters
    ----------
    wheels:
        The folder (on the device, recipe variables allowed) of wheels to install from
        with ``pip install --no-index --find-links``. Default: the package index.
    """
    source = (f"--no-index --find-links \"{wheels}\"" if wheels else "")
    pip = " ".join(w for w in ["venv/bin/python3 -m pip install --quiet --disable-pip-version-check",
                               "--no-input --only-binary=:all:", source,
                               f"-r runtime/{DEVICE_REQUIREMENTS_FILE}"] if w)
    return "\n".join(_LAYOUT_LINES + [
        "command -v python3 >/dev/null 2>&1 || { echo 'python3 is not on the PATH: install "
        "Python 3.8 or newer (Debian/Ubuntu package python3)' >&2; exit 1; }",
        f"stamp=\"$(python3 -V 2>&1) $(cksum < runtime/{DEVICE_REQUIREMENTS_FILE})\"",
        "if [ ! -x venv/bin/python3 ] || [ \"$(cat venv/.neo-edge-stamp 2>/dev/null)\" != \"$stamp\" ]; then",
        "  python3 -c 'import ensurepip, venv' 2>/dev/null || { echo 'python3 cannot make a "
        "virtual environment: install the Debian/Ubuntu package python3-venv' >&2; exit 1; }",
        "  rm -rf venv",
        "  python3 -m venv venv",
        f"  {pip}",
        "  printf '%s\\n' \"$stamp\" > venv/.neo-edge-stamp",
        "fi",
    ])


#: The install step with the device requirements from the package index
#: (:func:`install_script`).
INSTALL_SCRIPT = install_script()

#: The run step's environment (lifecycle ``Setenv``): the settings of the ``edge_inference``
#: process, from the component configuration. Greengrass puts the values into the
#: environment as they are; none is ever part of a shell command line, so a configuration
#: value (a topic merged by a deployment, say) cannot run anything. The process checks them.
RUN_ENVIRONMENT: Mapping[str, str] = {
    "PYTHONPATH": RUNTIME_DIR,
    "NEO_EDGE_MODEL_DIR": MODEL_DIR,
    "NEO_EDGE_INPUT_TOPIC": "{configuration:/inputTopic}",
    "NEO_EDGE_RESULTS_TOPIC": "{configuration:/topicPrefix}/{iot:thingName}/results",
    "NEO_EDGE_ERRORS_TOPIC": "{configuration:/topicPrefix}/{iot:thingName}/errors",
    "NEO_EDGE_THREADS": "{configuration:/threadCount}",
    "TVM_NUM_THREADS": "{configuration:/threadCount}",
    "NEO_EDGE_SIGNING_PUBLIC_KEY": "{configuration:/signingPublicKey}",
    "NEO_EDGE_ALLOW_UNSIGNED": "{configuration:/allowUnsigned}",
    "NEO_EDGE_SUMMARY_TOPIC": "{configuration:/topicPrefix}/{iot:thingName}/summary",
    "NEO_EDGE_CAPTURE_DIR": "{work:path}/capture",
    **{var: "{configuration:/%s}" % key for key, var in TELEMETRY_ENVIRONMENT.items()},
    "NEO_EDGE_ROLLOUT_TOPIC": "{configuration:/topicPrefix}/{iot:thingName}/rollout",
    **{var: "{configuration:/%s}" % key for key, var in ROLLOUT_ENVIRONMENT.items()},
}

#: The run step: the ``edge_inference`` handler of the device bundle as a plain process of
#: the component's virtual environment; only paths of the component in the command line,
#: its settings in the environment (:data:`RUN_ENVIRONMENT`).
RUN_SCRIPT = f"exec {VENV_DIR}/bin/python3 -u {RUNTIME_DIR}/edge_inference.py"

#: Seconds the install step may take: making the virtual environment and downloading the
#: device requirements on a small device.
INSTALL_TIMEOUT = 900


@dataclass(frozen=True)
class PlatformArtifacts:
    """What the inference component ships to one platform.

    Attributes
    ----------
    platform:
        The Greengrass platform (``Target.greengrass_platform``).
    model:
        The compiled model: a ``.zip`` of the artifact folder (``unarchive="ZIP"``)
        or the ``.tar.gz`` Neo writes (``unarchive="NONE"``).
    runtime:
        The device bundle of the edge runtime for this architecture: a ``.zip``
        (``unarchive="ZIP"``) whose root holds ``neo_edge_runtime/``,
        ``edge_inference.py`` and ``requirements-device.txt``.
    name:
        A label for people (the target name). Default: none.
    wheels:
        A ``.zip`` (``unarchive="ZIP"``) whose root holds the wheels of the device
        requirements for this architecture, for devices that cannot reach the package
        index: the install step then installs from it alone. Default: none (the install
        step installs from the package index).
    """

    platform: Mapping[str, str]
    model: Artifact
    runtime: Artifact
    name: Optional[str] = None
    wheels: Optional[Artifact] = None

    def __post_init__(self) -> None:
        if self.wheels is not None and self.wheels.unarchive != "ZIP":
            raise RecipeError(f"the wheels artifact must be a .zip unpacked on the device "
                              f"(unarchive ZIP); got unarchive {self.wheels.unarchive!r} for "
                              f"{self.wheels.uri!r}")

    @property
    def wheels_dir(self) -> Optional[str]:
        """Where the wheels are on the device: ``{artifacts:decompressedPath}/<zip name
        without .zip>``, or None."""
        if self.wheels is None:
            return None
        name = self.wheels.file_name
        return "{artifacts:decompressedPath}/" + (name[:-len(".zip")] if name.endswith(".zip")
                                                   else name)


def inference_recipe(*, component_name: str, platforms: Sequence[PlatformArtifacts],
                     component_version: Optional[str] = None, description: str = "",
                     publisher: str = "neo-edge",
                     configuration: Optional[Mapping[str, Any]] = None,
                     install_script: Optional[str] = None, run_script: str = RUN_SCRIPT,
                     nucleus_requirement: str = NUCLEUS_REQUIREMENT,
                     version_fingerprint: Iterable[Any] = ()) -> dict:
    """The recipe of a neo-edge inference component.

    Parameters
    ----------
    component_name:
        The component's name (``com.example.Classifier``).
    platforms:
        One entry per platform; at least one.
    component_version:
        Default: derived from the content (:func:`content_version`).
    configuration:
        Overrides of :data:`INFERENCE_DEFAULTS`; unknown keys are refused. Default:
        the defaults.
    install_script, run_script:
        The lifecycle. Default: :func:`install_script` for each platform (from the
        platform's wheels when it ships them, else from the package index) and
        :data:`RUN_SCRIPT`.
    nucleus_requirement:
        The nucleus versions the component runs on. Default: :data:`NUCLEUS_REQUIREMENT`.
    version_fingerprint:
        See :func:`build_recipe`.
    """
    if not platforms:
        raise RecipeError("an inference component needs at least one platform; got none")
    config = dict(INFERENCE_DEFAULTS)
    unknown = sorted(set(configuration or {}) - set(INFERENCE_DEFAULTS))
    if unknown:
        raise RecipeError(f"inference configuration keys must be among "
                          f"{', '.join(INFERENCE_DEFAULTS)}; got {', '.join(unknown)}")
    config.update(configuration or {})
    value = config["threadCount"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise RecipeError(f"inference configuration threadCount must be a number >= 0; "
                          f"got {value!r}")
    topic_prefix = config["topicPrefix"]
    if not isinstance(topic_prefix, str) or not topic_prefix or any(c in topic_prefix for c in "#+"):
        raise RecipeError(f"inference configuration topicPrefix must be a topic without "
                          f"wildcards; got {topic_prefix!r}")
    _check_signing(config, configuration or {})
    _check_telemetry(config)
    _check_rollout(config)
    # The nucleus takes the first manifest whose platform matches the device, and a
    # Jetson (accelerator=nvidia) also matches the plain aarch64 manifest: the more
    # specific platforms go first (stable order otherwise).
    ordered = sorted(platforms, key=lambda p: -len(p.platform))
    manifests = [
        Manifest(platform=p.platform, name=p.name,
                 artifacts=(p.runtime, p.model) + ((p.wheels,) if p.wheels else ()),
                 lifecycle={"setenv": dict(RUN_ENVIRONMENT),
                            "install": {"Script": install_script if install_script is not None
                                        else _install_script(p.wheels_dir),
                                        "Timeout": INSTALL_TIMEOUT},
                            "run": run_script})
        for p in ordered
    ]
    access = access_control(
        component_name,
        pubsub_subscribe=[config["inputTopic"]],
        mqtt_publish=[f"{topic_prefix}/*/results", f"{topic_prefix}/*/errors",
                      f"{topic_prefix}/*/summary", f"{topic_prefix}/*/rollout"],
    )
    return build_recipe(
        component_name=component_name, component_version=component_version,
        description=description or "neo-edge inference: a compiled model on the TVM runtime",
        publisher=publisher, manifests=manifests, default_configuration=config,
        access=access, dependencies={NUCLEUS: Dependency(nucleus_requirement, "SOFT")},
        version_fingerprint=version_fingerprint)


_install_script = install_script


def _check_telemetry(config: Mapping[str, Any]) -> None:
    """The telemetry keys, checked as the device will check them (unresolved tokens aside)."""
    from ..telemetry import TelemetryConfig, TelemetryConfigError

    values = {k: config[k] for k in TELEMETRY_ENVIRONMENT
              if not (isinstance(config[k], str) and is_token(config[k]))}
    try:
        TelemetryConfig().updated(values)
    except TelemetryConfigError as exc:
        raise RecipeError(f"inference configuration: {exc}") from None


def _check_rollout(config: Mapping[str, Any]) -> None:
    """The rollout keys, checked as the device will check them (unresolved tokens aside)."""
    from ..rollout import RolloutConfig, RolloutConfigError

    values = {k: config[k] for k in ROLLOUT_ENVIRONMENT
              if not (isinstance(config[k], str) and is_token(config[k]))}
    try:
        RolloutConfig().updated(values)
    except RolloutConfigError as exc:
        raise RecipeError(f"inference configuration: {exc}") from None


def _check_signing(config: dict, given: Mapping[str, Any]) -> None:
    """Validate ``signingPublicKey`` and ``allowUnsigned`` in ``config`` (the defaults
    merged with ``given``), and derive ``allowUnsigned`` when ``given`` does not set it."""
    key = config["signingPublicKey"]
    if not isinstance(key, str):
        raise RecipeError(f"inference configuration signingPublicKey must be PEM text, the "
                          f"base64 of its DER, or \"\" for none; got {key!r}")
    if key and not is_token(key):
        try:
            parse_public_key(key)
        except NeoEdgeError as exc:
            raise RecipeError(f"inference configuration signingPublicKey: {exc}") from None
    if "allowUnsigned" not in given:
        config["allowUnsigned"] = not key
    allow = config["allowUnsigned"]
    if not isinstance(allow, bool):
        raise RecipeError(f"inference configuration allowUnsigned must be true or false; "
                          f"got {allow!r}")
    if not allow and not key:
        raise RecipeError("inference configuration allowUnsigned is false but there is no "
                          "signingPublicKey to verify signatures with; give one, or allow "
                          "unsigned models")

# ---------------------------------------------------------------------------------------
# Helpers


def _check_component_name(name: Any) -> None:
    if not isinstance(name, str) or not _COMPONENT_NAME.match(name) or len(name) > 128:
        raise RecipeError(f"component name must be 1 to 128 letters, digits, '-', '_' or '.'; "
                          f"got {name!r}")


def _check_lifecycle(lifecycle: Any, where: str) -> None:
    if not isinstance(lifecycle, Mapping):
        raise RecipeError(f"{where} lifecycle must be a mapping of steps; got {lifecycle!r}")
    for step, value in lifecycle.items():
        if step not in LIFECYCLE_STEPS:
            raise RecipeError(f"{where} lifecycle step must be one of "
                              f"{', '.join(LIFECYCLE_STEPS)}; got {step!r}")
        if step == "setenv":
            if not isinstance(value, Mapping):
                raise RecipeError(f"{where} lifecycle setenv must be a mapping; got {value!r}")
            continue
        if isinstance(value, str):
            continue
        if not isinstance(value, Mapping) or "script" not in value:
            raise RecipeError(f"{where} lifecycle {step} must be a script string or an object "
                              f"with a script; got {value!r}")
        for key in value:
            if key not in LIFECYCLE_STEP_KEYS:
                raise RecipeError(f"{where} lifecycle {step} keys must be among "
                                  f"{', '.join(LIFECYCLE_STEP_KEYS)}; got {key!r}")
        skip = value.get("skipif")
        if skip is not None and not re.match(r"^(onpath|exists)\s+\S", str(skip)):
            raise RecipeError(f"{where} lifecycle {step} skipif must be 'onpath <exe>' or "
                              f"'exists <file>'; got {skip!r}")


_STEP_CASE = {"setenv": "Setenv", "bootstrap": "Bootstrap", "install": "Install",
              "startup": "Startup", "run": "Run", "shutdown": "Shutdown", "recover": "Recover"}
_STEP_KEY_CASE = {"script": "Script", "requiresprivilege": "RequiresPrivilege",
                  "skipif": "Skipif", "timeout": "Timeout", "setenv": "Setenv"}


def _canonical_step(step: str) -> str:
    key = str(step).lower()
    if key not in _STEP_CASE:
        raise RecipeError(f"lifecycle step must be one of {', '.join(LIFECYCLE_STEPS)}; got {step!r}")
    return _STEP_CASE[key]


def _canonical_step_value(value: Any) -> Any:
    if isinstance(value, Mapping):
        out = {}
        for k, v in value.items():
            key = str(k).lower()
            out[_STEP_KEY_CASE.get(key, k)] = v
        return out
    return value


def _lower_keys(value: Any) -> Any:
    """Lower-case every mapping key, recursively (as the GDK does before validating)."""
    if isinstance(value, Mapping):
        return {str(k).lower(): _lower_keys(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lower_keys(v) for v in value]
    return value


def _canonical(value: Any) -> str:
    if isinstance(value, (bytes, bytearray)):
        value = hashlib.sha256(value).hexdigest()
    if isinstance(value, Mapping) and "ComponentVersion" in value:
        value = {k: v for k, v in value.items() if k != "ComponentVersion"}
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)

__all__ = [
    "ARCHITECTURES", "Artifact", "DEVICE_REQUIREMENTS_FILE", "Dependency", "INFERENCE_DEFAULTS",
    "INSTALL_SCRIPT", "INSTALL_TIMEOUT", "VENV_DIR", "install_script",
    "LIFECYCLE_STEPS", "Manifest", "NUCLEUS", "NUCLEUS_REQUIREMENT", "OPERATING_SYSTEMS",
    "PlatformArtifacts", "RECIPE_FORMAT_VERSION", "RUN_SCRIPT", "RecipeError",
    "TELEMETRY_ENVIRONMENT", "ROLLOUT_ENVIRONMENT", "access_control",
    "build_recipe", "check_platform", "check_version", "content_version", "inference_recipe",
    "is_token", "recipe_json", "validate_recipe",
]
