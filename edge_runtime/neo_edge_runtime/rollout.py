"""Health-gated model rollout on the device: shadow trials, promotion, health watch, rollback.

Runs in the inference process (stdlib and numpy only, Python 3.8+). Greengrass counts a
deployment as good when the component installs and starts; a model that installs fine but
answers worse would reach every device. So, with shadow trials on (``shadowShare`` > 0):

1. **Stage.** A new model version arriving (a new model folder, a configuration's
   ``modelPath``) is installed beside the current one as the store's *candidate*
   (:meth:`~neo_edge_runtime.store.ModelStore.stage`: the same signature, digest and smoke
   checks as an install), not made current.
2. **Shadow** (:class:`ShadowTrial`). A ``share`` of the requests also run on the
   candidate, with the same inputs; the caller always gets the current model's answer, and
   the candidate's answers go nowhere but into the trial's figures: top-1 agreement, mean
   score difference, error rates, latency p90 of each.
3. **Decide**, after ``requests`` paired requests or ``minutes`` minutes, whichever comes
   first, by the thresholds: **promote** (the candidate becomes current) or **reject** (it is
   removed, and remembered as refused so that the same version is not tried again on this
   device). A trial that ends with fewer than ``min_requests`` pairs rejects: no evidence is
   not evidence of health, and a canary that must wait for traffic says so.
4. **Watch** (:class:`HealthWatch`). For ``health_requests`` requests or ``health_minutes``
   minutes after a promotion, the new version's error rate and latency p90 are compared
   with what the previous version showed in the trial; past a threshold the store rolls
   back (:meth:`~neo_edge_runtime.store.ModelStore.rollback`) and the version is refused.

Every decision (``promote``, ``reject``, ``healthy``, ``rollback``) is published on the
rollout topic as one JSON message (:data:`ROLLOUT_SCHEMA`, :func:`decision_message`) with
both versions, the figures and the thresholds; the cloud side stores them per rollout and
device (``neo_edge.CanaryRollout``) and gates the fleet deployment on them.

Limits, chosen knowingly: the trial and the watch live in memory, so a process restart
mid-trial drops the candidate (the version, offered again at start, is tried anew) and
ends a health watch early. The candidate runs in the serving thread right after the
current model answered, so a trial slows the requests after it by the candidate's time on
``share`` of them. A candidate whose inputs differ from the current model's cannot be
compared on the same requests: it is rejected at once, naming the difference (set
``shadowShare`` to 0 to install such a version outright).
"""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from . import _settings


__all__ = ["HealthWatch", "ROLLOUT_SCHEMA", "RolloutConfig", "RolloutConfigError",
           "RolloutController", "ShadowTrial", "decision_message"]

ROLLOUT_SCHEMA = "neo-edge.rollout/1"
#: The decisions a device publishes; the first two end a shadow trial, the last two a
#: health watch.
DECISIONS = ("promote", "reject", "healthy", "rollback")


class RolloutConfigError(ValueError):
    """A rollout setting is malformed: the message names it and the value received."""


def _number(name: str, raw: Any, low: float, high: float = math.inf) -> float:
    return _settings.number(RolloutConfigError, "rollout", name, raw, low, high)


#: Component configuration key -> (field, environment variable).
KEYS = {
    "shadowShare": ("share", "NEO_EDGE_SHADOW_SHARE"),
    "shadowRequests": ("requests", "NEO_EDGE_SHADOW_REQUESTS"),
    "shadowMinutes": ("minutes", "NEO_EDGE_SHADOW_MINUTES"),
    "shadowMinRequests": ("min_requests", "NEO_EDGE_SHADOW_MIN_REQUESTS"),
    "shadowMinAgreement": ("min_agreement", "NEO_EDGE_SHADOW_MIN_AGREEMENT"),
    "shadowMaxScoreDifference": ("max_score_difference", "NEO_EDGE_SHADOW_MAX_SCORE_DIFFERENCE"),
    "maxErrorRateIncrease": ("max_error_rate_increase", "NEO_EDGE_MAX_ERROR_RATE_INCREASE"),
    "maxLatencyRatio": ("max_latency_ratio", "NEO_EDGE_MAX_LATENCY_RATIO"),
    "latencySlackMs": ("latency_slack_ms", "NEO_EDGE_LATENCY_SLACK_MS"),
    "healthRequests": ("health_requests", "NEO_EDGE_HEALTH_REQUESTS"),
    "healthMinutes": ("health_minutes", "NEO_EDGE_HEALTH_MINUTES"),
    "healthMinRequests": ("health_min_requests", "NEO_EDGE_HEALTH_MIN_REQUESTS"),
    "rolloutId": ("rollout_id", "NEO_EDGE_ROLLOUT_ID"),
}


@dataclass(frozen=True)
class RolloutConfig:
    """What the component configuration says about rollouts (keys in :data:`KEYS`).

    ``share`` 0 turns shadow trials off: a new version is installed and serves at once, as
    :meth:`~neo_edge_runtime.store.ModelStore.install` always did. The latency check fails
    only when the candidate's p90 is above ``max_latency_ratio`` times the current one's
    *and* ``latency_slack_ms`` above it: on a small model the p90 of a fraction of a
    millisecond moves by more than any ratio from one minute to the next. ``rollout_id``
    (set by the canary deployment) tags the published decisions so that the cloud side
    reads the decisions of its own rollout only.
    """

    share: float = 0.0
    requests: int = 100
    minutes: float = 60.0
    min_requests: int = 20
    min_agreement: float = 0.9
    max_score_difference: float = 0.2
    max_error_rate_increase: float = 0.01
    max_latency_ratio: float = 1.5
    latency_slack_ms: float = 1.0
    health_requests: int = 100
    health_minutes: float = 30.0
    health_min_requests: int = 20
    rollout_id: str = ""

    def __post_init__(self) -> None:
        _number("shadowShare", self.share, 0, 1)
        _number("shadowRequests", self.requests, 1, 1e9)
        _number("shadowMinutes", self.minutes, 0.001, 525600)
        _number("shadowMinRequests", self.min_requests, 0, 1e9)
        _number("shadowMinAgreement", self.min_agreement, 0, 1)
        _number("shadowMaxScoreDifference", self.max_score_difference, 0)
        _number("maxErrorRateIncrease", self.max_error_rate_increase, 0, 1)
        _number("maxLatencyRatio", self.max_latency_ratio, 1)
        _number("latencySlackMs", self.latency_slack_ms, 0)
        _number("healthRequests", self.health_requests, 1, 1e9)
        _number("healthMinutes", self.health_minutes, 0.001, 525600)
        _number("healthMinRequests", self.health_min_requests, 0, 1e9)
        for name, value in (("shadowRequests", self.requests),
                            ("shadowMinRequests", self.min_requests),
                            ("healthRequests", self.health_requests),
                            ("healthMinRequests", self.health_min_requests)):
            if float(value) != int(value):
                raise RolloutConfigError(f"rollout setting {name} must be a whole number; "
                                         f"got {value!r}")
        if self.min_requests > self.requests:
            raise RolloutConfigError(f"rollout setting shadowMinRequests must be at most "
                                     f"shadowRequests ({self.requests}); got {self.min_requests!r}")
        if self.health_min_requests > self.health_requests:
            raise RolloutConfigError(f"rollout setting healthMinRequests must be at most "
                                     f"healthRequests ({self.health_requests}); got "
                                     f"{self.health_min_requests!r}")
        rid = self.rollout_id
        if not isinstance(rid, str) or len(rid) > 128 or any(
                not (c.isalnum() or c in "._:-") for c in rid):
            raise RolloutConfigError(f"rollout setting rolloutId must be at most 128 letters, "
                                     f"digits, '.', '_', ':' or '-'; got {rid!r}")

    @property
    def shadow(self) -> bool:
        return self.share > 0

    def thresholds(self) -> Dict[str, Any]:
        """The thresholds, by configuration key, as published with each decision."""
        return {key: getattr(self, name) for key, (name, _) in KEYS.items() if key != "rolloutId"}

    def updated(self, values: Mapping[str, Any]) -> "RolloutConfig":
        """A copy with the component configuration keys in ``values`` applied (others kept;
        ``None`` and ``""`` mean "not given", except for ``rolloutId``)."""
        changes: Dict[str, Any] = {}
        for key, (name, _) in KEYS.items():
            if key not in values or values[key] is None:
                continue
            value = values[key]
            if name == "rollout_id":
                changes[name] = str(value).strip()
            elif value != "":
                changes[name] = _coerce(name, value)
        try:
            return replace(self, **changes)
        except RolloutConfigError as exc:
            # Name the value as it was given ("0"), not as it was read (0.0).
            head, _, _ = str(exc).partition("; got ")
            key = head.split(" ")[2] if head.startswith("rollout setting ") else None
            if key in values:
                raise RolloutConfigError(f"{head}; got {values[key]!r}") from None
            for low, high in (("shadowMinRequests", "shadowRequests"),
                              ("healthMinRequests", "healthRequests")):
                if key == low and high in values:  # the update lowered the upper one
                    raise RolloutConfigError(
                        f"rollout setting {high} must be at least {low} "
                        f"({getattr(self, KEYS[low][0])}); got {values[high]!r}") from None
            raise

    @classmethod
    def from_environment(cls, env: Optional[Mapping[str, str]] = None) -> "RolloutConfig":
        """The configuration the recipe's ``Setenv`` passes (unset variables: defaults)."""
        return _settings.from_environment(cls, KEYS, env)


_WHOLE = ("requests", "min_requests", "health_requests", "health_min_requests")


def _coerce(name: str, value: Any) -> Any:
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return value  # __post_init__ names it
    if name in _WHOLE and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def _p90(values: List[float]) -> Optional[float]:
    import numpy as np

    return round(float(np.percentile(np.asarray(values, np.float64), 90)), 4) if values else None


def _primary(result: Mapping[str, Any]) -> Optional[np.ndarray]:
    """The score a result is judged by: classification confidence, anomaly score, or the
    regression value(s)."""
    import numpy as np

    for key in ("confidence", "anomaly_score", "value"):
        value = result.get(key)
        if value is not None:
            return np.asarray(value, np.float64).reshape(-1)
    return None


def _same(current: Mapping[str, Any], candidate: Mapping[str, Any]) -> Optional[bool]:
    """Whether two answers agree on top-1 (classification) or on the anomaly flag; None
    when the task has no such answer (regression)."""
    if current.get("labels") and candidate.get("labels"):
        return current["labels"][0] == candidate["labels"][0]
    if "anomaly" in current and "anomaly" in candidate:
        return bool(current["anomaly"]) == bool(candidate["anomaly"])
    return None


class ShadowTrial:
    """Paired answers of the current model and a candidate, and the decision on them.

    Parameters
    ----------
    config:
        :class:`RolloutConfig` (its thresholds, share and length).
    current, candidate:
        Who is compared: mappings with ``name``, ``version`` and ``id`` (the store's
        ``<version>-<digest12>``), as published.
    clock:
        Seconds, monotonic (tests). Default: ``time.monotonic``.
    """

    def __init__(self, config: RolloutConfig, *, current: Mapping[str, Any],
                 candidate: Mapping[str, Any],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.current = dict(current)
        self.candidate = dict(candidate)
        self._clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self.pairs: List[Tuple[Mapping[str, Any], Mapping[str, Any], Optional[float],
                               Optional[float]]] = []

    def wants(self, request_id: str) -> bool:
        """Whether this request also runs on the candidate: a ``share`` of the requests,
        chosen by a hash of the request id (reproducible, the same choice as the
        telemetry's sampling), until the trial has its pairs."""
        from .telemetry import sampled

        return len(self.pairs) < self.config.requests and sampled(
            f"shadow:{request_id}", self.config.share)

    def add(self, current: Mapping[str, Any], candidate: Mapping[str, Any],
            current_ms: Optional[float], candidate_ms: Optional[float]) -> None:
        """One request's two answers (each a result, or one with an ``error``) and the
        latency of the model call that gave each."""
        with self._lock:
            self.pairs.append((current, candidate, current_ms, candidate_ms))

    def due(self) -> bool:
        """Whether the trial is over: its pairs collected, or its time spent."""
        return (len(self.pairs) >= self.config.requests
                or self._clock() - self.started >= self.config.minutes * 60.0)

    def figures(self) -> Dict[str, Any]:
        """What the decision is made on."""
        import numpy as np

        with self._lock:
            pairs = list(self.pairs)
        n = len(pairs)
        errors = [sum(1 for p in pairs if p[i].get("error")) for i in (0, 1)]
        both = [(c, k) for c, k, _, _ in pairs if not c.get("error") and not k.get("error")]
        same = [s for s in (_same(c, k) for c, k in both) if s is not None]
        diffs = []
        for c, k in both:
            a, b = _primary(c), _primary(k)
            if a is not None and b is not None and a.shape == b.shape:
                diffs.append(float(np.mean(np.abs(a - b))))
        confidence = [[float(r["confidence"]) for r in side if r.get("confidence") is not None]
                      for side in zip(*both)] if both else [[], []]
        return {
            "requests": n,
            "seconds": round(self._clock() - self.started, 3),
            "agreement": round(sum(same) / len(same), 4) if same else None,
            "score_difference": round(float(np.mean(diffs)), 6) if diffs else None,
            "error_rate_current": round(errors[0] / n, 4) if n else None,
            "error_rate_candidate": round(errors[1] / n, 4) if n else None,
            "latency_p90_current_ms": _p90([p[2] for p in pairs if p[2] is not None]),
            "latency_p90_candidate_ms": _p90([p[3] for p in pairs if p[3] is not None]),
            "confidence_current": (round(float(np.mean(confidence[0])), 4)
                                   if confidence[0] else None),
            "confidence_candidate": (round(float(np.mean(confidence[1])), 4)
                                     if len(confidence) > 1 and confidence[1] else None),
        }

    def decide(self) -> Tuple[str, List[str], Dict[str, Any]]:
        """``("promote" | "reject", reasons, figures)``: reject when any threshold is passed
        (each reason names the figure, its value and the threshold)."""
        c = self.config
        f = self.figures()
        reasons = []
        if f["requests"] < c.min_requests:
            reasons.append(f"only {f['requests']} paired requests in {f['seconds']:g} s; "
                           f"shadowMinRequests is {c.min_requests}")
        if f["agreement"] is not None and f["agreement"] < c.min_agreement:
            reasons.append(f"top-1 agreement {f['agreement']:g} is below shadowMinAgreement "
                           f"{c.min_agreement:g}")
        if f["score_difference"] is not None and f["score_difference"] > c.max_score_difference:
            reasons.append(f"mean score difference {f['score_difference']:g} is above "
                           f"shadowMaxScoreDifference {c.max_score_difference:g}")
        reasons.extend(_health_reasons(
            c, f["error_rate_candidate"], f["error_rate_current"],
            f["latency_p90_candidate_ms"], f["latency_p90_current_ms"], "the current version's"))
        return ("reject" if reasons else "promote"), reasons, f


def _health_reasons(config: RolloutConfig, error_rate: Optional[float],
                    baseline_error_rate: Optional[float], p90: Optional[float],
                    baseline_p90: Optional[float], baseline: str) -> List[str]:
    reasons = []
    if error_rate is not None and baseline_error_rate is not None and (
            error_rate - baseline_error_rate > config.max_error_rate_increase + 1e-12):
        reasons.append(f"error rate {error_rate:g} is more than maxErrorRateIncrease "
                       f"{config.max_error_rate_increase:g} above {baseline} "
                       f"{baseline_error_rate:g}")
    if p90 is not None and baseline_p90 is not None and (
            p90 > baseline_p90 * config.max_latency_ratio
            and p90 - baseline_p90 > config.latency_slack_ms):
        reasons.append(f"latency p90 {p90:g} ms is over maxLatencyRatio "
                       f"{config.max_latency_ratio:g} times {baseline} {baseline_p90:g} ms "
                       f"(and more than latencySlackMs {config.latency_slack_ms:g} ms above it)")
    return reasons


class HealthWatch:
    """The figures of a newly promoted version against its predecessor's baseline.

    ``baseline`` holds ``error_rate`` and ``latency_p90_ms`` (the previous version's, from
    the trial). :meth:`check` says ``"rollback"`` as soon as, with at least
    ``health_min_requests`` requests seen, a threshold is passed, and ``"healthy"`` once
    the window (``health_requests`` requests or ``health_minutes``) is over without that.
    A window that ends with fewer requests than ``health_min_requests`` ends healthy: the
    version passed its trial, and nothing seen since says otherwise.
    """

    def __init__(self, config: RolloutConfig, *, model: Mapping[str, Any],
                 previous: Mapping[str, Any], baseline: Mapping[str, Optional[float]],
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.model = dict(model)
        self.previous = dict(previous)
        self.baseline = dict(baseline)
        self._clock = clock
        self.started = clock()
        self._lock = threading.Lock()
        self.errors = 0
        self.latencies: List[float] = []
        self.requests = 0

    def add(self, result: Mapping[str, Any]) -> None:
        """One answer of the watched version (a result, or one with an ``error``)."""
        with self._lock:
            self.requests += 1
            if result.get("error"):
                self.errors += 1
            elif isinstance(result.get("latency_ms"), (int, float)):
                self.latencies.append(float(result["latency_ms"]))

    def figures(self) -> Dict[str, Any]:
        with self._lock:
            n, errors, latencies = self.requests, self.errors, list(self.latencies)
        return {"requests": n, "seconds": round(self._clock() - self.started, 3),
                "error_rate": round(errors / n, 4) if n else None,
                "latency_p90_ms": _p90(latencies),
                "baseline_error_rate": self.baseline.get("error_rate"),
                "baseline_latency_p90_ms": self.baseline.get("latency_p90_ms")}

    def check(self) -> Optional[Tuple[str, List[str], Dict[str, Any]]]:
        """``("rollback" | "healthy", reasons, figures)`` when decided, else ``None``."""
        c = self.config
        f = self.figures()
        if f["requests"] >= max(1, c.health_min_requests):
            reasons = _health_reasons(c, f["error_rate"], f["baseline_error_rate"],
                                      f["latency_p90_ms"], f["baseline_latency_p90_ms"],
                                      "the previous version's")
            if reasons:
                return "rollback", reasons, f
        if f["requests"] >= c.health_requests or f["seconds"] >= c.health_minutes * 60.0:
            return "healthy", [], f
        return None


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds").replace(
        "+00:00", "Z")


def decision_message(*, event: str, decision: str, device: str, rollout_id: str,
                     model: Mapping[str, Any], baseline: Mapping[str, Any],
                     reasons: List[str], figures: Mapping[str, Any],
                     thresholds: Mapping[str, Any]) -> Dict[str, Any]:
    """The message published for a decision (:data:`ROLLOUT_SCHEMA`).

    ``model`` is the version decided on (the candidate of a trial, the promoted version of
    a health watch), ``baseline`` the one it was compared with; each ``{"name",
    "version", "id"}``. The top-level keys are what the cloud side's IoT rule stores per
    ``rollout_id`` and ``device`` (DynamoDB writes each top-level key as an attribute).
    """
    if decision not in DECISIONS:
        raise ValueError(f"decision must be one of {', '.join(DECISIONS)}; got {decision!r}")
    return {"schema": ROLLOUT_SCHEMA, "event": event, "decision": decision,
            "rollout_id": rollout_id, "device": device, "model_name": model.get("name"),
            "model_version": model.get("version"), "model_id": model.get("id"),
            "baseline_version": baseline.get("version"), "baseline_id": baseline.get("id"),
            "reasons": list(reasons), "figures": dict(figures), "thresholds": dict(thresholds),
            "timestamp": _now()}


def _who(model: Any, store: Any, path_attr: str) -> Dict[str, Any]:
    path = getattr(store, path_attr, None)
    return {"name": getattr(model, "name", None), "version": getattr(model, "version", None),
            "id": getattr(path, "name", None)}


class RolloutController:
    """Stages new versions, runs their trials and health watches, and acts on the decisions.

    What the inference process calls (``edge_inference.InferenceService``):
    :meth:`offer` for each new model folder, :meth:`observe` after each model call,
    :meth:`tick` when idle, :meth:`reconfigure` on a configuration update.

    Parameters
    ----------
    config:
        :class:`RolloutConfig`.
    store:
        A ``ModelStore`` (``stage``, ``promote``, ``reject``, ``rollback``, ``refuse``).
    publish:
        ``publish(message)``: the decision messages (may raise; the error is logged).
    postprocess:
        ``postprocess(model, outputs, index)``: turns the candidate's outputs into a
        result, as the current model's are.
    device:
        The thing name.
    log:
        ``log(level, message)``.
    clock:
        Seconds, monotonic. Default: ``time.monotonic``.
    """

    def __init__(self, config: RolloutConfig, store: Any, *,
                 publish: Callable[[Mapping[str, Any]], None],
                 postprocess: Callable[..., Mapping[str, Any]], device: str,
                 log: Callable[[str, str], None] = lambda level, message: None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.store = store
        self._publish = publish
        self._postprocess = postprocess
        self.device = device
        self._log = log
        self._clock = clock
        self._lock = threading.RLock()
        self.trial: Optional[ShadowTrial] = None
        self.watch: Optional[HealthWatch] = None
        self.decisions: List[Dict[str, Any]] = []

    @property
    def active(self) -> bool:
        return self.config.shadow and all(
            hasattr(self.store, m) for m in ("stage", "promote", "reject", "version_name"))

    def reconfigure(self, values: Mapping[str, Any]) -> None:
        """Apply a configuration update; a bad value is refused whole (and raised). A trial
        running goes on with the new thresholds."""
        config = self.config.updated(values)
        with self._lock:
            self.config = config
            for part in (self.trial, self.watch):
                if part is not None:
                    part.config = config

    # -- a new version ---------------------------------------------------------------

    def offer(self, model_dir: str) -> bool:
        """Take a new version at ``model_dir`` into a trial. ``False`` when trials are off
        or nothing serves yet (the caller installs it outright, as before), or when it is
        the current version; ``True`` when it is on trial (or was refused). Raises what
        the store raises for a version that cannot be staged (the current one keeps
        serving)."""
        if not self.active or self.store.current is None:
            return False
        name = self.store.version_name(model_dir)
        current_path = getattr(self.store, "current_path", None)
        if current_path is not None and current_path.name == name:
            return False
        with self._lock:
            trial = self.trial
            if trial is not None and trial.candidate.get("id") == name:
                return True
            reason = self.store.refusal(name) if hasattr(self.store, "refusal") else None
            if reason is not None:
                self._log("warning", f"model version {name} at {model_dir} was refused on this "
                                     f"device before ({reason}); the current one keeps serving")
                return True
            if trial is not None:
                self._finish_trial("reject", [f"superseded by version {name} before the trial "
                                              f"ended"], trial.figures())
            candidate = self.store.stage(model_dir)
            if candidate is None:
                return False
            current = self.store.current
            who = _who(candidate, self.store, "candidate_path")
            if [dict(i) for i in candidate.inputs] != [dict(i) for i in current.inputs]:
                self.trial = ShadowTrial(self.config, current=_who(current, self.store,
                                                                   "current_path"),
                                         candidate=who, clock=self._clock)
                self._finish_trial("reject", [
                    f"its inputs {[(i['name'], list(i['shape']), i['dtype']) for i in candidate.inputs]} "
                    f"differ from the current version's "
                    f"{[(i['name'], list(i['shape']), i['dtype']) for i in current.inputs]}: "
                    f"the two cannot answer the same requests (shadowShare 0 installs such a "
                    f"version outright)"], {"requests": 0})
                return True
            self.watch = None  # a new version ends the watch of the one before
            self.trial = ShadowTrial(self.config, current=_who(current, self.store,
                                                               "current_path"),
                                     candidate=who, clock=self._clock)
            self._log("info", f"model version {who['id']} is on trial beside "
                              f"{self.trial.current['id']} on {self.config.share:g} of the "
                              f"requests")
            return True

    # -- each model call -------------------------------------------------------------

    def observe(self, model: Any, inputs: Optional[Mapping[str, np.ndarray]],
                request_ids: List[str], results: List[Mapping[str, Any]],
                axis: Optional[int], latency_ms: Optional[float]) -> None:
        """After the current ``model`` answered ``request_ids`` with ``results`` from one
        call on ``inputs`` (rows stacked along the batch axis when ``axis`` is set; inputs
        ``None`` when the call failed): run the candidate on the same inputs when the
        trial wants one of them, feed the health watch, and act on what is due."""
        try:
            trial, watch = self.trial, self.watch
            if trial is not None and inputs is not None and model is self.store.current:
                wanted = [i for i, rid in enumerate(request_ids) if trial.wants(rid)]
                if wanted:
                    self._shadow(trial, inputs, wanted, results, axis, latency_ms)
            if watch is not None and model is self.store.current:
                for result in results:
                    watch.add(result)
            self.tick()
        except Exception as exc:  # noqa: BLE001 - the answers are out; serving goes on
            self._log("error", f"rollout bookkeeping failed: {exc!r}")

    def _shadow(self, trial: ShadowTrial, inputs: Mapping[str, np.ndarray], wanted: List[int],
                results: List[Mapping[str, Any]], axis: Optional[int],
                latency_ms: Optional[float]) -> None:
        candidate = self.store.candidate
        if candidate is None:
            return
        start = time.perf_counter()
        try:
            outputs = candidate.predict(dict(inputs))
            error = None
        except Exception as exc:  # noqa: BLE001 - the candidate's failure is a figure
            outputs, error = None, f"{type(exc).__name__}: {exc}"
        candidate_ms = (time.perf_counter() - start) * 1000.0
        for i in wanted:
            if outputs is not None:
                try:
                    answer = dict(self._postprocess(candidate, outputs,
                                                    i if axis is not None else None))
                except Exception as exc:  # noqa: BLE001
                    answer = {"error": {"type": type(exc).__name__, "message": str(exc)}}
            else:
                answer = {"error": {"type": "ModelError", "message": error}}
            trial.add(results[i], answer, latency_ms, candidate_ms)

    def tick(self) -> None:
        """Act on a trial or watch that is due (its requests, or its time)."""
        with self._lock:
            trial, watch = self.trial, self.watch
            if trial is not None and trial.due():
                decision, reasons, figures = trial.decide()
                self._finish_trial(decision, reasons, figures)
            elif watch is not None:
                verdict = watch.check()
                if verdict is not None:
                    self._finish_watch(*verdict)

    # -- decisions -------------------------------------------------------------------

    def _finish_trial(self, decision: str, reasons: List[str], figures: Mapping[str, Any]) -> None:
        trial = self.trial
        self.trial = None
        if trial is None:
            return
        try:
            if decision == "promote":
                self.store.promote()
                self.watch = HealthWatch(
                    self.config, model=trial.candidate, previous=trial.current,
                    baseline={"error_rate": figures.get("error_rate_current"),
                              "latency_p90_ms": figures.get("latency_p90_current_ms")},
                    clock=self._clock)
            else:
                self.store.reject("; ".join(reasons) or "rejected")
        except Exception as exc:  # noqa: BLE001 - the old version keeps serving
            self._log("error", f"the {decision} of model version {trial.candidate['id']} "
                               f"failed: {exc!r}")
            decision, reasons = "reject", reasons + [f"{decision} failed: {exc}"]
            try:
                if self.store.candidate is not None:
                    self.store.reject("; ".join(reasons))
            except Exception:  # noqa: BLE001
                pass
        self._decided("shadow", decision, trial.candidate, trial.current, reasons, figures)

    def _finish_watch(self, decision: str, reasons: List[str], figures: Mapping[str, Any]) -> None:
        watch = self.watch
        self.watch = None
        if watch is None:
            return
        if decision == "rollback":
            try:
                self.store.rollback()
                if watch.model.get("id") and hasattr(self.store, "refuse"):
                    self.store.refuse(watch.model["id"], "rolled back: " + "; ".join(reasons))
            except Exception as exc:  # noqa: BLE001
                reasons = reasons + [f"rollback failed: {exc}"]
                self._log("error", f"rollback of model version {watch.model['id']} failed: "
                                   f"{exc!r}")
        self._decided("health", decision, watch.model, watch.previous, reasons, figures)

    def _decided(self, event: str, decision: str, model: Mapping[str, Any],
                 baseline: Mapping[str, Any], reasons: List[str],
                 figures: Mapping[str, Any]) -> None:
        message = decision_message(event=event, decision=decision, device=self.device,
                                   rollout_id=self.config.rollout_id, model=model,
                                   baseline=baseline, reasons=reasons, figures=figures,
                                   thresholds=self.config.thresholds())
        self.decisions.append(message)
        level = "info" if decision in ("promote", "healthy") else "warning"
        self._log(level, f"model version {model.get('id')}: {decision} (against "
                         f"{baseline.get('id')})" + (f": {'; '.join(reasons)}" if reasons else ""))
        try:
            self._publish(message)
        except Exception as exc:  # noqa: BLE001 - the decision stands; the report is lost
            self._log("error", f"could not publish the {decision} of {model.get('id')}: {exc!r}")
