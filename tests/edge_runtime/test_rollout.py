"""neo_edge_runtime.rollout: settings, the trial's figures and decision, the health watch.

The end-to-end behaviour on compiled models (reject, promote, roll back through
``edge_inference`` and a real ``ModelStore``) is in tests/lambdas/test_edge_rollout.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from neo_edge_runtime.compile import recipe
from neo_edge_runtime.rollout import (KEYS, HealthWatch, RolloutConfig, RolloutConfigError,
                                      ShadowTrial, decision_message)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def answer(label="a", confidence=0.9, latency=1.0, error=False):
    if error:
        return {"error": {"type": "ValueError", "message": "not finite"}}
    return {"labels": [label, "b"], "scores": [confidence, 1 - confidence],
            "confidence": confidence, "latency_ms": latency}


CURRENT = {"name": "m", "version": "1", "id": "1-aaaaaaaaaaaa"}
CANDIDATE = {"name": "m", "version": "2", "id": "2-bbbbbbbbbbbb"}


def trial(clock=None, **config):
    return ShadowTrial(RolloutConfig(share=1.0, **config), current=CURRENT,
                       candidate=CANDIDATE, clock=clock or Clock())


def test_the_recipe_passes_every_rollout_setting_in_the_environment():
    assert dict(recipe.ROLLOUT_ENVIRONMENT) == {k: var for k, (_, var) in KEYS.items()}
    assert set(recipe.ROLLOUT_ENVIRONMENT) <= set(recipe.INFERENCE_DEFAULTS)
    defaults = {k: recipe.INFERENCE_DEFAULTS[k] for k in recipe.ROLLOUT_ENVIRONMENT}
    env = {var: str(defaults[k]) for k, var in recipe.ROLLOUT_ENVIRONMENT.items()}
    assert RolloutConfig.from_environment(env) == RolloutConfig()
    for key, var in recipe.ROLLOUT_ENVIRONMENT.items():
        assert recipe.RUN_ENVIRONMENT[var] == "{configuration:/%s}" % key


def test_fails_when_the_recipe_is_given_a_bad_rollout_setting():
    with pytest.raises(recipe.RecipeError, match="shadowShare must be a number from 0 to 1; "
                                                 "got 2"):
        recipe._check_rollout({**recipe.INFERENCE_DEFAULTS, "shadowShare": 2})


@given(key=st.sampled_from(sorted(k for k in KEYS if k != "rolloutId")),
       value=st.one_of(st.text(max_size=8), st.floats(allow_nan=True), st.booleans(),
                       st.integers(-10**12, 10**12)))
def test_a_setting_is_taken_or_refused_naming_its_key(key, value):
    try:
        config = RolloutConfig().updated({key: value})
    except RolloutConfigError as exc:
        assert str(exc).startswith(f"rollout setting {key} must be")
        assert repr(value) in str(exc) or key in ("shadowMinRequests", "healthMinRequests",
                                                  "shadowRequests", "healthRequests")
    else:
        assert isinstance(config, RolloutConfig)


def test_fails_when_rollout_id_could_break_out_of_a_key():
    with pytest.raises(RolloutConfigError, match="rolloutId must be at most 128"):
        RolloutConfig(rollout_id="a b/c")


def test_agreeing_answers_are_promoted():
    t = trial(requests=4, min_requests=4)
    for _ in range(4):
        t.add(answer(), answer(confidence=0.88), 1.0, 1.1)
    decision, reasons, figures = t.decide()
    assert (decision, reasons) == ("promote", [])
    assert figures["agreement"] == 1.0 and figures["score_difference"] == pytest.approx(0.02)
    assert figures["error_rate_candidate"] == 0.0 and t.due()


def test_each_threshold_passed_is_a_reason():
    t = trial(requests=4, min_requests=4, max_error_rate_increase=0.0, latency_slack_ms=0.5)
    t.add(answer("a"), answer("b", confidence=0.2), 1.0, 5.0)
    t.add(answer("a"), answer("a"), 1.0, 5.0)
    t.add(answer("a"), answer(error=True), 1.0, 5.0)
    t.add(answer("a"), answer("a"), 1.0, 5.0)
    decision, reasons, figures = t.decide()
    assert decision == "reject"
    assert [r.split(" ")[0] for r in reasons] == ["top-1", "mean", "error", "latency"]
    assert figures["agreement"] == pytest.approx(2 / 3, abs=1e-4)
    assert figures["error_rate_candidate"] == 0.25 and figures["latency_p90_candidate_ms"] == 5.0


def test_a_slower_candidate_within_the_slack_is_not_rejected():
    t = trial(requests=2, min_requests=2, latency_slack_ms=1.0)
    for _ in range(2):
        t.add(answer(), answer(), 0.05, 0.5)  # ten times slower, half a millisecond
    assert t.decide()[0] == "promote"


def test_a_trial_that_runs_out_of_time_with_too_few_pairs_rejects():
    clock = Clock()
    t = trial(clock, requests=100, min_requests=20, minutes=1)
    t.add(answer(), answer(), 1.0, 1.0)
    assert not t.due()
    clock.now += 60
    assert t.due()
    decision, reasons, _ = t.decide()
    assert decision == "reject" and reasons == [
        "only 1 paired requests in 60 s; shadowMinRequests is 20"]


def test_the_share_is_a_reproducible_choice_of_requests():
    t = ShadowTrial(RolloutConfig(share=0.25), current=CURRENT, candidate=CANDIDATE)
    chosen = [t.wants(f"r-{i}") for i in range(2000)]
    assert chosen == [t.wants(f"r-{i}") for i in range(2000)]
    assert 0.2 < sum(chosen) / 2000 < 0.3


def test_health_watch_rolls_back_past_the_baseline_and_passes_otherwise():
    config = RolloutConfig(health_requests=10, health_min_requests=5)
    baseline = {"error_rate": 0.0, "latency_p90_ms": 1.0}
    bad = HealthWatch(config, model=CANDIDATE, previous=CURRENT, baseline=baseline)
    for i in range(5):
        assert bad.check() is None
        bad.add(answer(error=i % 2 == 0))
    decision, reasons, figures = bad.check()
    assert decision == "rollback" and figures["error_rate"] == 0.6
    assert reasons[0].startswith("error rate 0.6 is more than maxErrorRateIncrease")

    good = HealthWatch(config, model=CANDIDATE, previous=CURRENT, baseline=baseline)
    for _ in range(10):
        good.add(answer(latency=1.2))
    assert good.check()[0] == "healthy"


def test_health_watch_ends_healthy_when_its_time_is_up():
    clock = Clock()
    watch = HealthWatch(RolloutConfig(health_minutes=1), model=CANDIDATE, previous=CURRENT,
                        baseline={}, clock=clock)
    assert watch.check() is None
    clock.now += 61
    assert watch.check()[0] == "healthy"


def test_fails_when_a_decision_is_unknown():
    with pytest.raises(ValueError, match="decision must be one of promote, reject, healthy, "
                                         "rollback; got 'maybe'"):
        decision_message(event="shadow", decision="maybe", device="d", rollout_id="", model={},
                         baseline={}, reasons=[], figures={}, thresholds={})
