"""Local mode end to end (``local_mode.py --quick``), and the pieces it is made of.

The end-to-end test runs the reduced path in a fresh process, as ``make demo`` does,
and checks what it printed and the ``summary.json`` it wrote. The other tests drive the
training script's script-mode contract and the simulated device's install step directly,
including the ways they must fail.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def local_mode():
    return _load("neo_edge_local_mode", REPO / "local_mode.py")


@pytest.fixture(scope="module")
def train():
    return _load("neo_edge_training_train", REPO / "training" / "train.py")


# --- the whole path ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("local-mode")
    # an earlier run's capture, which this run must not label and retrain on again
    stale = workdir / "bucket" / "captured" / "model=digits_xgboost" / "earlier-run.csv"
    stale.parent.mkdir(parents=True)
    stale.write_text("")
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "local_mode.py"), "--quick", "--workdir", str(workdir),
         "--cdk-out", str(workdir / "cdk.out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else None
    return proc, summary, workdir


@pytest.mark.slow
def test_quick_local_mode_passes_every_step(quick_run):
    proc, summary, _ = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert summary["ok"] is True and summary["quick"] is True
    assert set(summary["timings"]) == {"train", "compile", "package", "device", "synth"}
    for n in range(1, 6):
        assert f"[{n}/5] " in proc.stdout


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "xgboost"])
def test_device_accuracy_equals_training_accuracy(quick_run, kind):
    proc, summary, _ = quick_run
    device = summary["device"][kind]
    assert device["disagreements_with_training"] == 0
    assert device["device_accuracy"] == device["training_accuracy"] == \
        summary["training"]["accuracy"][kind]
    assert device["device_accuracy"] > 0.85 and device["test_size"] == 150
    assert device["max_abs_top_score_diff_vs_ort"] < 1e-4
    printed = re.search(rf"digits-{kind}: accuracy ([0-9.]+) on the device, ([0-9.]+) in training",
                        proc.stdout)
    assert printed and printed.group(1) == printed.group(2) == f"{device['device_accuracy']:.4f}"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["mlp", "xgboost"])
def test_latency_is_reported_next_to_onnx_runtime(quick_run, kind):
    _, summary, _ = quick_run
    latency = summary["device"][kind]["latency"]
    for engine in ("tvm", "tvm_in_service", "ort", "handler"):
        assert 0 < latency[engine]["p50_ms"] <= latency[engine]["p90_ms"]
    assert latency["tvm_in_service"]["count"] == 150  # the test set, warm-up excluded
    # timed as ONNX Runtime is: back to back, three times over the same 150 tensors
    assert latency["tvm"]["count"] == latency["ort"]["count"] == 450
    assert summary["device"][kind]["threads"] == summary["threads"] == 1
    assert summary["device"][kind]["compiler_library_mapped"] is False


@pytest.mark.slow
def test_a_run_retrains_on_its_own_captures_only(quick_run):
    _, summary, workdir = quick_run
    assert summary is not None
    captured = workdir / "bucket" / "captured" / "model=digits_xgboost"
    assert not (captured / "earlier-run.csv").exists()
    assert list(captured.glob("*.csv"))


@pytest.mark.slow
def test_the_device_ran_its_runtime_from_the_installed_bundle(quick_run):
    _, summary, workdir = quick_run
    for kind in ("mlp", "xgboost"):
        module = Path(summary["device"][kind]["runtime_module"])
        assert module.is_relative_to(workdir / "device")
        assert "work" in module.parts and module.parent.name == "neo_edge_runtime"


@pytest.mark.slow
def test_the_device_ran_numpy_and_the_ipc_client_from_the_component_venv(quick_run):
    """The install step made the venv from a bare python3 and filled it from
    requirements-device.txt: nothing came from this host's environment."""
    _, summary, workdir = quick_run
    for kind in ("mlp", "xgboost"):
        device = summary["device"][kind]
        venv = Path(device["runtime_module"]).parents[2] / "venv"
        assert Path(device["python"]) == venv / "bin" / "python3"
        assert Path(device["numpy_module"]).is_relative_to(venv)
        assert Path(device["ipc_module"]).is_relative_to(venv)
        assert (venv / "pyvenv.cfg").read_text().count(
            f"command = {workdir / 'device' / 'bare-python' / 'bin' / 'python3'} -m venv") == 1


@pytest.mark.slow
def test_a_degraded_version_is_rejected_in_shadow_and_a_good_one_promoted(quick_run):
    """Two new versions of the MLP reached the serving device as configuration updates
    (modelPath, shadowShare > 0): the one with perturbed weights ran beside 1.0.0 on half
    of the requests, was rejected and answered no caller; the one rounded to half
    precision was promoted, answered the callers after that, and its health watch ended
    healthy. The decisions are the device's own messages, printed with their figures."""
    proc, summary, workdir = quick_run
    degraded, good = summary["device"]["mlp"]["rollout"]
    assert (degraded["version"], degraded["decision"], degraded["health"]) == \
        ("1.1.0", "reject", None)
    assert degraded["figures"]["agreement"] < 0.9 and degraded["figures"]["requests"] == 30
    assert any(r.startswith("top-1 agreement") for r in degraded["reasons"])
    assert degraded["staged"] == "1.1.0" and degraded["answered"] == 0
    assert set(degraded["answered_by"]) == {"1.0.0"} and degraded["serving"] == "1.0.0"
    assert not any(v.startswith("1.1.0-") for v in degraded["store_versions"])
    assert (good["version"], good["decision"], good["health"]) == ("1.2.0", "promote", "healthy")
    assert good["figures"]["agreement"] >= 0.9 and good["reasons"] == []
    assert good["answered_by"]["1.2.0"] == good["answered"] >= 1 and good["serving"] == "1.2.0"
    for entry in (degraded, good):
        f = entry["figures"]
        assert f["error_rate_candidate"] == f["error_rate_current"] == 0.0
        assert f["latency_p90_candidate_ms"] > 0 and f["latency_p90_current_ms"] > 0
        printed = re.search(rf"{re.escape(entry['version'])} \(.*\) in shadow beside 1\.0\.0: "
                            rf"30 paired requests, top-1 agreement ([0-9.]+), error rate "
                            rf"0\.000/0\.000, latency p90 [0-9.]+/[0-9.]+ ms \(new/serving\) -> "
                            rf"(\w+)", proc.stdout)
        assert printed, proc.stdout[-3000:]
        assert printed.groups() == (f"{f['agreement']:.3f}", entry["decision"])
    # What the device published on its rollout topic, as the cloud side receives it.
    published = [json.loads(line)["message"] for line in
                 (workdir / "device" / "com.neoedge.DigitsMlp" / "sim" / "rollouts.jsonl")
                 .read_text().splitlines()]
    assert [(m["model_version"], m["event"], m["decision"]) for m in published] == [
        ("1.1.0", "shadow", "reject"), ("1.2.0", "shadow", "promote"),
        ("1.2.0", "health", "healthy")]
    assert {m["schema"] for m in published} == {"neo-edge.rollout/1"}


@pytest.mark.slow
def test_artifacts_are_compiled_for_host_and_an_arm_device(quick_run):
    _, summary, _ = quick_run
    for kind in ("mlp", "xgboost"):
        arts = summary["artifacts"][kind]
        assert arts["host"]["elf"] == "x86-64" and arts["rasp4b"]["elf"] == "AArch64"
        for art in arts.values():
            manifest = json.loads((Path(art["path"]) / "manifest.json").read_text())
            assert manifest["metadata"]["labels"] == [str(d) for d in range(10)]
            assert manifest["metadata"]["task"] == "classification"
    mlp = json.loads((Path(summary["artifacts"]["mlp"]["host"]["path"]) / "manifest.json")
                     .read_text())
    assert mlp["metadata"]["preprocess"]["scale"] == 1 / 16
    assert mlp["inputs"] == [{"name": "image", "shape": [1, 1, 8, 8], "dtype": "float32"}]


@pytest.mark.slow
def test_components_are_packaged_for_greengrass(quick_run):
    _, summary, _ = quick_run
    for kind, name in (("mlp", "com.neoedge.DigitsMlp"), ("xgboost", "com.neoedge.DigitsXgboost")):
        component = summary["components"][kind]
        recipe = json.loads(Path(component["recipe"]).read_text())
        assert recipe["ComponentName"] == name == component["component"]
        assert recipe["ComponentVersion"] == component["version"]
        assert [m["Platform"]["architecture"] for m in recipe["Manifests"]] == ["amd64", "aarch64"]
        assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["threadCount"] == 1
        folder = Path(component["artifacts"])
        assert folder.parts[-2:] == (name, component["version"])
        for manifest in recipe["Manifests"]:
            for artifact in manifest["Artifacts"]:
                data = (folder / artifact["Uri"].rsplit("/", 1)[-1]).read_bytes()
                assert artifact["Digest"] == base64.b64encode(hashlib.sha256(data).digest()).decode()


@pytest.mark.slow
def test_the_stack_is_synthesized(quick_run):
    _, summary, workdir = quick_run
    templates = summary["synth"]["templates"]
    assert templates and all(Path(t).is_file() for t in templates)
    assert Path(summary["synth"]["outdir"]) == workdir / "cdk.out"


# --- the training script's contract -----------------------------------------------------


def test_hyperparameters_come_from_sm_hps_and_the_command_line_wins(train):
    env = {"SM_HPS": json.dumps({"n-estimators": "7", "max_depth": 3, "sagemaker_program": "t.py"}),
           "SM_MODEL_DIR": "/m", "SM_CHANNEL_TRAIN": "/t"}
    args = train.parse_args(["--max-depth", "5", "--sagemaker_region", "x"], env=env)
    assert (args.n_estimators, args.max_depth, args.model_dir, args.train) == (7, 5, "/m", "/t")
    assert args.test is None and args.hidden == (64, 32)


@pytest.mark.parametrize("argv, hps", [([], {"max-iter": "many"}), (["--max-iter", "many"], {})])
def test_fails_when_a_hyperparameter_has_the_wrong_type(train, capsys, argv, hps):
    with pytest.raises(SystemExit):
        train.parse_args(argv, env={"SM_HPS": json.dumps(hps)})
    assert "hyperparameter max-iter must be int; got 'many'" in capsys.readouterr().err


def test_the_script_trains_both_models_under_the_script_mode_contract(train, tmp_path):
    channels = train.write_digits_channels(tmp_path / "data", limit=300)
    env = {**os.environ, "SM_MODEL_DIR": str(tmp_path / "model"),
           "SM_CHANNEL_TRAIN": str(channels["train"]), "SM_CHANNEL_TEST": str(channels["test"]),
           "SM_OUTPUT_DATA_DIR": str(tmp_path / "out"),
           "SM_HPS": json.dumps({"n-estimators": 5, "max-iter": 50})}
    proc = subprocess.run([sys.executable, str(REPO / "training" / "train.py"), "--n-estimators",
                           "5"], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / "model" / "model_info.json").read_text())
    assert set(info["models"]) == {"mlp", "xgboost"} and info["test_size"] == 75
    assert re.search(r"mlp: test_accuracy=0\.\d+", proc.stdout)
    predictions = json.loads((tmp_path / "out" / "predictions.json").read_text())
    labels = np.asarray(predictions["labels"])
    for kind in ("mlp", "xgboost"):
        assert np.mean(np.asarray(predictions[kind]) == labels) == info["models"][kind]["accuracy"]
    assert (tmp_path / "model" / "mlp.onnx").is_file()
    assert (tmp_path / "model" / "xgboost.json").is_file()


@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_the_mlp_export_matches_onnx_runtime(train, tmp_path):
    import onnxruntime as ort
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.integers(0, 17, size=(40, 64)).astype(np.float32)
    clf = MLPClassifier(hidden_layer_sizes=(8,), max_iter=20, random_state=0).fit(
        x / 16, np.arange(40) % 3)
    model = train.mlp_to_onnx(clf)
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for row in x[:5]:
        image = (row / 16).reshape(1, 1, 8, 8)
        (probs,) = sess.run(None, {"image": image})
        np.testing.assert_allclose(probs, clf.predict_proba(image.reshape(1, -1)), atol=1e-5)
        np.testing.assert_allclose(probs, train.onnx_forward(model, image), atol=1e-6)


def test_fails_when_a_channel_holds_no_csv(train, tmp_path):
    with pytest.raises(SystemExit, match="holds no .csv files"):
        train.read_channel(tmp_path)


# --- the simulated device ---------------------------------------------------------------


def test_recipe_variables_are_substituted(local_mode, tmp_path):
    paths = {"root": tmp_path, "path": tmp_path / "a", "decompressedPath": tmp_path / "d",
             "work": tmp_path / "w"}
    out = local_mode.substitute(
        "cd {work:path} && ls {artifacts:decompressedPath} {artifacts:path} "
        "{configuration:/threadCount} {configuration:/topicPrefix} {iot:thingName}",
        component="c", paths=paths, configuration={"threadCount": 2, "topicPrefix": "t"})
    assert out == (f"cd {tmp_path / 'w'} && ls {tmp_path / 'd'} {tmp_path / 'a'} 2 t "
                   f"{local_mode.THING_NAME}")


@pytest.mark.parametrize("variable, message", [
    ("{configuration:/missing}", "no /missing in the component's configuration"),
    ("{other.Component:work:path}", "refers to another component"),
    ("{iot:region}", "is not one local mode knows"),
])
def test_fails_when_a_recipe_variable_cannot_be_substituted(local_mode, tmp_path, variable,
                                                            message):
    with pytest.raises(local_mode.LocalModeError, match=re.escape(message)):
        local_mode.substitute(variable, component="c", paths={}, configuration={})


def test_the_png_encoder_round_trips_through_the_handler_decoder(local_mode):
    sys.path.insert(0, str(REPO / "lambda" / "edge_inference"))
    try:
        edge = _load("local_mode_edge_inference", REPO / "lambda" / "edge_inference"
                     / "edge_inference.py")
    finally:
        sys.path.pop(0)
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8) % 17
    decoded = edge.decode_image(local_mode._png(grey))
    np.testing.assert_array_equal(decoded[..., 0], grey)


def _fake_component(local_mode, tmp_path, *, with_runtime: bool) -> dict:
    """A component of one fake model through local mode's packager (no compile needed)."""
    models = {}
    for target in ("host", "rasp4b"):
        folder = tmp_path / "compiled" / target
        folder.mkdir(parents=True)
        (folder / "manifest.json").write_text(json.dumps({"target": {"name": target}}))
        models[target] = {"path": str(folder)}
    bundles = {}
    for arch in ("x86_64", "aarch64"):
        bundle = tmp_path / f"bundle-{arch}"
        package = bundle / ("neo_edge_runtime" if with_runtime else "other")
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (bundle / "edge_inference.py").write_text("")
        (bundle / "requirements-device.txt").write_text("# nothing to install\n")
        bundles[arch] = bundle
    rep = local_mode.Reporter(1, stream=io.StringIO())
    return local_mode.package(tmp_path / "work", {"mlp": models}, ["host", "rasp4b"], 1, bundles,
                              rep)["mlp"]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the fake host model is x86_64")
def test_install_lays_out_the_model_and_the_runtime(local_mode, tmp_path):
    component = _fake_component(local_mode, tmp_path, with_runtime=True)
    rep = local_mode.Reporter(1, stream=io.StringIO())
    installed = local_mode.install_component(tmp_path / "work", component, rep)
    work = installed["paths"]["work"]
    assert installed["manifest"]["Name"] == "host"
    assert json.loads((work / "model" / "manifest.json").read_text())["target"]["name"] == "host"
    assert (work / "runtime" / "neo_edge_runtime").is_dir()
    # the component's venv, made by the bare interpreter the install script saw as python3
    bare = tmp_path / "work" / local_mode.BARE_PYTHON / "bin" / "python3"
    config = (work / "venv" / "pyvenv.cfg").read_text()
    assert f"command = {bare} -m venv " in config
    assert (work / "venv" / "bin" / "python3").is_file()


def test_the_bare_interpreter_has_nothing_installed(local_mode, tmp_path):
    bare = local_mode.bare_interpreter(tmp_path)
    assert bare == tmp_path / local_mode.BARE_PYTHON / "bin"
    code = ("import importlib.util, sys; print(sys.prefix); "
            "print([m for m in ('numpy', 'pip', 'awsiot', 'neo_edge_runtime') "
            "if importlib.util.find_spec(m)])")
    env = local_mode.device_environment(bare)
    out = subprocess.run(["python3", "-c", code], env=env, capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [str(bare.parent), "[]"]
    assert "VIRTUAL_ENV" not in env and str(Path(sys.executable).parent) not in env["PATH"]


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the fake host model is x86_64")
def test_fails_when_the_bundle_has_no_runtime(local_mode, tmp_path):
    component = _fake_component(local_mode, tmp_path, with_runtime=False)
    rep = local_mode.Reporter(1, stream=io.StringIO())
    with pytest.raises(local_mode.LocalModeError,
                       match=r"install script exited 1:\nno device bundle \(neo_edge_runtime\)"):
        local_mode.install_component(tmp_path / "work", component, rep)


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the fake host model is x86_64")
def test_fails_when_an_artifact_does_not_match_its_digest(local_mode, tmp_path):
    component = _fake_component(local_mode, tmp_path, with_runtime=True)
    model_zip = next(Path(component["artifacts"]).glob("digits-mlp-host.zip"))
    with zipfile.ZipFile(model_zip, "a") as z:
        z.writestr("extra.txt", "tampered")
    rep = local_mode.Reporter(1, stream=io.StringIO())
    with pytest.raises(local_mode.LocalModeError,
                       match="artifact digits-mlp-host.zip does not match the recipe's digest"):
        local_mode.install_component(tmp_path / "work", component, rep)


def test_hostile_configuration_values_reach_the_process_verbatim(local_mode, tmp_path):
    # The simulated core substitutes recipe variables and applies Setenv as the nucleus does.
    import shlex

    from neo_edge_runtime.compile import recipe
    from neo_edge_runtime.targets import resolve

    target = resolve("ml_c5")
    inference = recipe.inference_recipe(component_name="com.example.Classifier", platforms=[
        recipe.PlatformArtifacts(platform=target.greengrass_platform, name=target.name,
                                 model=recipe.Artifact("s3://b/model.zip", unarchive="ZIP"),
                                 runtime=recipe.Artifact("s3://b/runtime.zip", unarchive="ZIP"))])
    life = inference["Manifests"][0]["Lifecycle"]
    hostile = {"inputTopic": f'in"; touch {tmp_path}/pwned; echo "',
               "topicPrefix": f"$(touch {tmp_path}/pwned)`touch {tmp_path}/pwned`",
               "threadCount": 0}
    work = tmp_path / "work"
    (work / "venv" / "bin").mkdir(parents=True)
    (work / "runtime").mkdir()
    dump = tmp_path / "env.json"
    # A stand-in for the venv's python: it records the environment it was started with.
    python = work / "venv" / "bin" / "python3"
    python.write_text(f"#!{sys.executable}\nimport json, os\n"
                      f"json.dump(dict(os.environ), open({str(dump)!r}, 'w'))\n")
    python.chmod(0o755)
    # A deployment merges the hostile values into the recipe's default configuration (the
    # run step's Setenv names every key of it).
    merged = {**inference["ComponentConfiguration"]["DefaultConfiguration"], **hostile}
    variables = dict(component="com.example.Classifier", configuration=merged,
                     paths={"work": work, "path": tmp_path, "decompressedPath": tmp_path,
                            "root": tmp_path})
    env = {"PATH": "/usr/bin:/bin", **local_mode.lifecycle_environment(life, **variables)}
    script = local_mode.substitute(life["Run"], **variables)
    subprocess.run(["bash", "-c", script], env=env, check=True, cwd=work)
    seen = json.loads(dump.read_text())
    assert seen["NEO_EDGE_INPUT_TOPIC"] == hostile["inputTopic"]
    assert seen["NEO_EDGE_RESULTS_TOPIC"].startswith(hostile["topicPrefix"] + "/")
    assert not (tmp_path / "pwned").exists()
    assert shlex.split(script)[0] == "exec"


@pytest.mark.slow
def test_the_retraining_step_consumes_what_the_device_captured(quick_run):
    """The simulated device captured a tenth of its requests (and the notable ones) into the
    folder standing for the capture prefix; labelled, they joined the training channel."""
    _, summary, workdir = quick_run
    retraining = summary["retraining"]
    captured = retraining["captured"]
    assert captured["rows"] >= 5 and captured["labelled"] == captured["rows"]
    channel = Path(retraining["channel"])
    files = sorted(p.name for p in channel.glob("*.csv"))
    assert "digits.csv" in files and len(files) >= 2
    assert retraining["evaluated_on"] == 150 - captured["rows"]
    assert retraining["accuracy"] > 0.8
    uploads = list((workdir / "bucket" / "captured").rglob("*.jsonl"))
    assert uploads and all(json.loads(line)["model_version"] for f in uploads
                           for line in f.read_text().splitlines())
