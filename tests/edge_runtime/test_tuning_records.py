"""Tuning databases across CPUs of one architecture, and tuning within a time budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import onnx
import pytest
from hypothesis import given, strategies as st

from neo_edge_runtime import compile_model
from neo_edge_runtime.artifact import MANIFEST
from neo_edge_runtime.compile import cli, compiler, timebox, zoo
from neo_edge_runtime.targets import host_arch

REPO_ROOT = Path(__file__).resolve().parents[2]
SHIPPED_MLP_DB = REPO_ROOT / "benchmarks" / "tuning" / "host-x86_64" / "mlp"


def manifest(folder) -> dict:
    return json.loads((Path(folder) / MANIFEST).read_text())


@pytest.fixture()
def tiny_mlp(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(zoo.mlp(features=16, hidden=(), classes=4), path)
    return path


@pytest.fixture()
def shipped_mlp_db(tmp_path):
    """benchmarks/tuning/host-x86_64/mlp, copied: tuned on an emeraldrapids CPU when the
    model's key in the marker still included the exact CPU."""
    if host_arch() != "x86_64":
        pytest.skip("the shipped database is for x86_64")
    db = shutil.copytree(SHIPPED_MLP_DB, tmp_path / "db")
    # The marker as it was shipped before CPUs were recorded (`make bench` migrates the
    # shipped one in place).
    shutil.copyfile(Path(__file__).parent / "data" / "mlp-tuning-marker-before-cpus.json",
                    db / compiler.TUNING_MARKER)
    assert "measured_on" not in json.loads((db / compiler.TUNING_MARKER).read_text())
    return db


@pytest.fixture()
def mlp_onnx(tmp_path):
    path = tmp_path / "mlp.onnx"
    onnx.save(zoo.mlp(), path)
    return path


def test_a_database_from_before_cpus_were_recorded_is_used_and_migrated(shipped_mlp_db,
                                                                        mlp_onnx, tmp_path):
    out = compile_model(mlp_onnx, "host", tmp_path / "art", tuning_db=shipped_mlp_db)
    options = manifest(out)["compile_options"]
    assert options["tune_trials"] == 200 and options["tuned_on"] == ["emeraldrapids"]
    state = compiler.read_tuning_marker(shipped_mlp_db)
    assert list(state["measured_on"].values()) == [{"emeraldrapids": 200}]
    assert list(state["trials"].values()) == [200]


def test_a_database_measured_on_another_cpu_is_used_and_named(shipped_mlp_db, mlp_onnx,
                                                              tmp_path):
    first = compile_model(mlp_onnx, "host", tmp_path / "a1", tuning_db=shipped_mlp_db)
    # The same database, as another CPU of this architecture would have measured it.
    copied = shutil.copytree(shipped_mlp_db, tmp_path / "copied")
    marker = copied / compiler.TUNING_MARKER
    marker.write_text(marker.read_text().replace('"emeraldrapids"', '"other-cpu"'))
    logs = []
    second = compile_model(mlp_onnx, "host", tmp_path / "a2", tuning_db=copied,
                           log=logs.append)
    options = manifest(second)["compile_options"]
    assert options["tune_trials"] == 200 and options["tuned_on"] == ["other-cpu"]
    assert any(f"measured on other-cpu, used on this {compiler.host_cpu()}" in m for m in logs)
    # Its records chose the schedules: the library is the one the original database gives.
    assert (second / "model.so").read_bytes() == (first / "model.so").read_bytes()


def test_tuning_here_records_this_cpu(tmp_path, monkeypatch):
    """What tuning adds is noted under the CPU that measured it (no MetaSchedule run:
    the tuning itself is stood in for)."""
    monkeypatch.setattr(compiler, "_tune", lambda mod, params, *a, **k: (mod, params))
    monkeypatch.setattr(compiler, "host_cpu", lambda: "this-cpu")
    path = tmp_path / "mlp.onnx"
    onnx.save(zoo.mlp(features=16, hidden=(), classes=4), path)
    db = tmp_path / "db"
    out = compile_model(path, "host", tmp_path / "a", tune_trials=5, tuning_db=db)
    assert manifest(out)["compile_options"]["tuned_on"] == ["this-cpu"]
    state = compiler.read_tuning_marker(db)
    assert list(state["measured_on"].values()) == [{"this-cpu": 5}]


def test_an_untuned_build_names_no_cpu(tiny_mlp, tmp_path):
    assert "tuned_on" not in manifest(compile_model(tiny_mlp, "host", tmp_path / "a"))[
        "compile_options"]


def test_the_report_says_which_cpu_tuned_instead_of_untuned():
    from benchmarks import report

    entry = {"kind": "cnn", "tuning_trials": 200, "tuned_on": ["emeraldrapids"]}
    assert report.trials_cell(entry, {"llvm_cpu": "znver4"}) == "200 (tuned on emeraldrapids)"
    assert report.trials_cell(entry, {"llvm_cpu": "emeraldrapids"}) == "200"
    assert report.trials_cell({"tuning_trials": 0}, {"llvm_cpu": "znver4"}) == "untuned"


# -- --tune-minutes ----------------------------------------------------------------------


def test_the_first_round_is_fixed_then_rounds_are_sized_to_the_time_left():
    assert timebox.next_round(0, 0.0, 0.0, 0, 600.0) == timebox.FIRST_ROUND_TRIALS
    # 32 trials took 64 s (2 s a trial) and 100 s have gone: 500 s left is 250 trials.
    assert timebox.next_round(32, 100.0, 64.0, 32, 600.0) == 250
    assert timebox.next_round(32, 100.0, 64.0, 32, 600.0, max_trials=100) == 68


def test_no_round_starts_once_the_budget_is_spent_or_too_short_for_one():
    assert timebox.next_round(0, 600.0, 0.0, 0, 600.0) == 0
    # 10 s a trial, 70 s left: 7 trials, fewer than a round is worth.
    assert timebox.next_round(32, 530.0, 320.0, 32, 600.0) == 0
    assert timebox.next_round(100, 10.0, 10.0, 100, 600.0, max_trials=100) == 0


@given(done=st.integers(0, 10_000), elapsed=st.floats(0, 1e5), spent=st.floats(0.001, 1e5),
       trials=st.integers(0, 10_000), budget=st.floats(1, 1e5),
       cap=st.one_of(st.none(), st.integers(1, 20_000)))
def test_a_round_never_passes_the_cap_nor_starts_after_the_deadline(done, elapsed, spent,
                                                                    trials, budget, cap):
    step = timebox.next_round(done, elapsed, spent, trials, budget, cap)
    assert step >= 0
    if elapsed >= budget or (cap is not None and done >= cap):
        assert step == 0
    if cap is not None:
        assert done + step <= max(cap, done)
    if trials and step:  # a sized round fits in the time left, as measured
        assert step * spent / trials <= (budget - elapsed) * (1 + 1e-9) + 1e-6


class FakeCompile:
    """compile_model's stand-in: each round costs ``seconds_per_trial`` per trial it adds
    on a fake clock, and writes a manifest with the model's trials in all."""

    def __init__(self, seconds_per_trial: float):
        self.now, self.rate, self.calls, self.done = 0.0, seconds_per_trial, [], 0

    def clock(self) -> float:
        return self.now

    def __call__(self, model, target, output_dir, *, tune_trials, tuning_db, log, **options):
        self.calls.append(tune_trials)
        self.now += 5.0 + self.rate * max(0, tune_trials - self.done)  # compile + trials
        self.done = max(self.done, tune_trials)
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST).write_text(json.dumps({"compile_options": {"tune_trials": self.done}}))
        return out


def test_tuning_for_minutes_stops_by_the_deadline(tmp_path):
    fake = FakeCompile(seconds_per_trial=0.5)
    out = timebox.tune_for("m.onnx", "host", tmp_path / "art", minutes=2, clock=fake.clock,
                           compile_fn=fake, tuning_db=tmp_path / "db")
    assert out == tmp_path / "art"
    assert fake.calls[0] == timebox.FIRST_ROUND_TRIALS
    assert fake.calls == sorted(fake.calls) and len(fake.calls) >= 2
    assert fake.now <= 120.0 + 5.0  # at most one round's compile over, as estimated


def test_tuning_for_minutes_stops_at_the_trial_cap(tmp_path):
    fake = FakeCompile(seconds_per_trial=0.01)
    timebox.tune_for("m.onnx", "host", tmp_path / "art", minutes=60, max_trials=100,
                     clock=fake.clock, compile_fn=fake, tuning_db=tmp_path / "db")
    assert fake.calls[-1] == 100 and max(fake.calls) == 100


def test_the_cli_passes_the_time_budget_and_the_trial_cap(monkeypatch, tmp_path):
    seen = {}

    def tune_for(model, target, output, **kw):
        seen.update(kw, model=model, target=target, output=output)
        return Path(output)

    monkeypatch.setattr(timebox, "tune_for", tune_for)
    monkeypatch.setattr(compiler, "compile_model", lambda *a, **k: pytest.fail("not tuned"))
    assert cli.main(["compile", "m.onnx", "--tune-minutes", "1.5", "--tune-trials", "300",
                     "--tuning-db", str(tmp_path / "db"), "-o", str(tmp_path / "o"), "-q"]) == 0
    assert seen["minutes"] == 1.5 and seen["max_trials"] == 300
    assert seen["tuning_db"] == str(tmp_path / "db") and seen["model"] == "m.onnx"

    seen.clear()
    assert cli.main(["compile", "m.onnx", "--tune-minutes", "1", "-o", str(tmp_path / "o"),
                     "-q"]) == 0
    assert seen["max_trials"] is None  # no --tune-trials: no cap


def test_fails_when_the_time_budget_is_not_positive(capsys):
    assert cli.main(["compile", "m.onnx", "--tune-minutes", "0", "-q"]) == 2
    assert "tune minutes must be more than 0; got 0.0" in capsys.readouterr().err
