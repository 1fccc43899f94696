"""The Greengrass V2 recipe builder: what it emits, what it refuses, and the GDK's schema."""

from __future__ import annotations

import base64
import hashlib
import json
import pathlib
import shutil
import subprocess
import sys
import textwrap
from typing import Optional

import pytest

from neo_edge_runtime.compile import recipe as r
from neo_edge_runtime.targets import resolve

RUNTIME_ZIP = "s3://bucket/runtime/aarch64.zip"
MODEL_ZIP = "s3://bucket/models/rasp4b.zip"


def platforms(*names):
    return [r.PlatformArtifacts(
        platform=resolve(n).greengrass_platform, name=n,
        model=r.Artifact(f"s3://bucket/models/{n}.zip", sha256="ab" * 32, unarchive="ZIP"),
        runtime=r.Artifact(f"s3://bucket/runtime/{resolve(n).arch}.zip", unarchive="ZIP"))
        for n in names]


@pytest.fixture(scope="module")
def inference():
    return r.inference_recipe(component_name="com.example.Classifier",
                              platforms=platforms("rasp4b", "rasp3b", "ml_c5", "jetson_xavier"))


def test_inference_recipe_passes_the_gdk_schema(inference, gdk_recipe_errors):
    assert gdk_recipe_errors(inference) == []


def test_schema_check_can_fail(gdk_recipe_errors, inference):
    broken = json.loads(json.dumps(inference))
    broken["ComponentName"] = "has spaces"
    broken["Manifests"][0]["Artifacts"][0]["Unarchive"] = "TAR"
    assert len(gdk_recipe_errors(broken)) == 2


def test_one_manifest_per_platform_with_greengrass_names_most_specific_first(inference):
    assert [m["Platform"] for m in inference["Manifests"]] == [
        {"os": "linux", "architecture": "aarch64", "accelerator": "nvidia"},
        {"os": "linux", "architecture": "aarch64"},
        {"os": "linux", "architecture": "arm"},
        {"os": "linux", "architecture": "amd64"},
    ]
    assert [m["Name"] for m in inference["Manifests"]] == ["jetson_xavier", "rasp4b", "rasp3b", "ml_c5"]


def test_manifest_ships_runtime_bundle_then_model(inference):
    arts = inference["Manifests"][2]["Artifacts"]
    assert [a["Uri"] for a in arts] == ["s3://bucket/runtime/armv7l.zip", "s3://bucket/models/rasp3b.zip"]
    assert arts[1]["Digest"] == base64.b64encode(bytes.fromhex("ab" * 32)).decode()
    assert arts[1]["Algorithm"] == "SHA-256"
    assert "Digest" not in arts[0]


def test_lifecycle_installs_then_runs(inference):
    life = inference["Manifests"][1]["Lifecycle"]
    assert set(life) == {"Setenv", "Install", "Run"}
    assert "tar -xzf" in life["Install"]["Script"]
    assert life["Setenv"]["NEO_EDGE_INPUT_TOPIC"] == "{configuration:/inputTopic}"
    assert life["Setenv"]["NEO_EDGE_RESULTS_TOPIC"] == (
        "{configuration:/topicPrefix}/{iot:thingName}/results")


def test_no_configuration_value_is_ever_part_of_a_shell_command(inference):
    # Configuration reaches the process through Setenv (the nucleus puts values into the
    # environment as they are); lifecycle scripts hold only the component's own paths.
    for manifest in inference["Manifests"]:
        life = manifest["Lifecycle"]
        for script in (life["Install"]["Script"], life["Run"]):
            assert "{configuration:" not in script and "{iot:" not in script


def test_run_step_uses_the_python_of_the_venv_the_install_step_makes(inference):
    life = inference["Manifests"][0]["Lifecycle"]
    assert life["Install"]["Timeout"] == r.INSTALL_TIMEOUT
    assert "python3 -m venv venv" in life["Install"]["Script"]
    assert "-r runtime/requirements-device.txt" in life["Install"]["Script"]
    assert "{work:path}/venv/bin/python3 -u {work:path}/runtime/edge_inference.py" in life["Run"]
    assert " python3 " not in life["Run"]


def test_wheels_shipped_with_a_platform_are_installed_from_without_the_index():
    aarch64, x86_64 = platforms("rasp4b", "ml_c5")
    wheels = r.Artifact("s3://bucket/wheels/aarch64-wheels.zip", unarchive="ZIP")
    offline = r.PlatformArtifacts(platform=aarch64.platform, name="rasp4b", model=aarch64.model,
                                  runtime=aarch64.runtime, wheels=wheels)
    recipe = r.inference_recipe(component_name="c", platforms=[offline, x86_64])
    first, second = recipe["Manifests"]
    assert first["Artifacts"][2] == wheels.to_recipe()
    assert ('--no-index --find-links "{artifacts:decompressedPath}/aarch64-wheels" '
            "-r runtime/requirements-device.txt") in first["Lifecycle"]["Install"]["Script"]
    assert len(second["Artifacts"]) == 2
    assert second["Lifecycle"]["Install"]["Script"] == r.INSTALL_SCRIPT
    assert "--no-index" not in r.INSTALL_SCRIPT


def test_fails_when_wheels_are_not_unpacked_on_the_device():
    (p,) = platforms("rasp4b")
    with pytest.raises(r.RecipeError, match=r"the wheels artifact must be a \.zip unpacked on the "
                                            r"device \(unarchive ZIP\); got unarchive 'NONE' for "
                                            r"'s3://b/w\.zip'"):
        r.PlatformArtifacts(platform=p.platform, model=p.model, runtime=p.runtime,
                            wheels=r.Artifact("s3://b/w.zip"))


def _install_in(tmp_path, python3: Optional[str]):
    """A work folder with an unpacked bundle and model, and a PATH of the tools the install
    step uses plus, unless None, ``python3``: a stand-in shell script. Returns a function
    that runs the install step there."""
    work, bundle, model, bin_dir = (tmp_path / d for d in ("work", "art/bundle", "art/model", "bin"))
    for d in (work, bundle / "neo_edge_runtime", model, bin_dir):
        d.mkdir(parents=True)
    (bundle / "requirements-device.txt").write_text("numpy==2.4.6\n")
    (model / "manifest.json").write_text("{}")
    for tool in ("sh", "rm", "mkdir", "ln", "cp", "cat", "cksum"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    if python3 is not None:
        (bin_dir / "python3").write_text("#!/bin/sh\n" + python3)
        (bin_dir / "python3").chmod(0o755)
    script = (r.INSTALL_SCRIPT.replace("{artifacts:path}", str(tmp_path / "none"))
              .replace("{artifacts:decompressedPath}", str(tmp_path / "art")))
    return lambda: subprocess.run([str(bin_dir / "sh"), "-c", script], cwd=work,
                                  env={"PATH": str(bin_dir)}, capture_output=True, text=True)


def test_fails_with_the_package_to_install_when_python3_has_no_venv(tmp_path):
    # Debian and Ubuntu ship ensurepip in python3-venv: without it, `python3 -m venv` fails.
    install = _install_in(tmp_path, 'case "$1" in -V) echo "Python 3.10.12" ;; *) exit 1 ;; esac\n')
    out = install()
    assert out.returncode == 1
    assert out.stderr == ("python3 cannot make a virtual environment: install the Debian/Ubuntu "
                          "package python3-venv\n")


def test_fails_when_python3_is_not_on_the_path(tmp_path):
    out = _install_in(tmp_path, None)()
    assert out.returncode == 1
    assert out.stderr == ("python3 is not on the PATH: install Python 3.8 or newer "
                          "(Debian/Ubuntu package python3)\n")


def test_the_venv_is_made_again_only_when_the_requirements_change(tmp_path):
    # A python3 that records each venv it makes and each pip install run in one.
    install = _install_in(tmp_path, (
        'case "$1 $2" in\n'
        '  "-V "*) echo "Python 3.11.2" ;;\n'
        '  "-c "*) exit 0 ;;\n'
        '  "-m venv") mkdir -p "$3/bin" && cp "$0" "$3/bin/python3" && echo venv >> ../calls ;;\n'
        '  "-m pip") echo pip >> ../calls ;;\n'
        'esac\n'))
    for _ in range(2):
        out = install()
        assert out.returncode == 0, out.stderr
    assert (tmp_path / "calls").read_text().split() == ["venv", "pip"]
    assert (tmp_path / "work" / "venv" / ".neo-edge-stamp").read_text().startswith("Python 3.11.2 ")
    (tmp_path / "art" / "bundle" / "requirements-device.txt").write_text("numpy==2.4.5\n")
    assert install().returncode == 0
    assert (tmp_path / "calls").read_text().split() == ["venv", "pip", "venv", "pip"]


def test_access_control_for_local_bus_and_iot_core(inference):
    acl = inference["ComponentConfiguration"]["DefaultConfiguration"]["accessControl"]
    assert acl["aws.greengrass.ipc.pubsub"]["com.example.Classifier:pubsub:subscribe"] == {
        "policyDescription": "com.example.Classifier may subscribe on the local bus",
        "operations": ["aws.greengrass#SubscribeToTopic"],
        "resources": ["neo-edge/inference/input"],
    }
    mqtt = acl["aws.greengrass.ipc.mqttproxy"]["com.example.Classifier:mqttproxy:publish"]
    assert mqtt["operations"] == ["aws.greengrass#PublishToIoTCore"]
    assert mqtt["resources"] == ["neo-edge/*/results", "neo-edge/*/errors", "neo-edge/*/summary",
                                 "neo-edge/*/rollout"]


def test_depends_on_the_nucleus(inference):
    assert inference["ComponentDependencies"] == {
        "aws.greengrass.Nucleus": {"VersionRequirement": ">=2.5.0 <3.0.0", "DependencyType": "SOFT"}}


def test_configuration_overrides_defaults():
    rec = r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                             configuration={"threadCount": 2, "inputTopic": "cam/frames"})
    config = rec["ComponentConfiguration"]["DefaultConfiguration"]
    assert (config["threadCount"], config["inputTopic"], config["topicPrefix"]) == (2, "cam/frames", "neo-edge")


def test_version_is_derived_from_content_and_stable(inference):
    again = r.inference_recipe(component_name="com.example.Classifier",
                               platforms=platforms("rasp4b", "rasp3b", "ml_c5", "jetson_xavier"))
    assert again == inference
    major, minor, patch = inference["ComponentVersion"].split(".")
    assert (major, minor) == ("1", "0") and 0 <= int(patch) < 2**28


def test_version_changes_with_any_content():
    base = r.inference_recipe(component_name="c", platforms=platforms("rasp4b"))
    other_config = r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                                      configuration={"threadCount": 1})
    other_fingerprint = r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                                           version_fingerprint=["model-v2"])
    versions = {base["ComponentVersion"], other_config["ComponentVersion"],
                other_fingerprint["ComponentVersion"]}
    assert len(versions) == 3


def test_version_is_the_same_in_another_process(inference):
    code = ("from neo_edge_runtime.compile import recipe as r;"
            " from neo_edge_runtime.targets import resolve;"
            "p=[r.PlatformArtifacts(platform=resolve(n).greengrass_platform, name=n,"
            " model=r.Artifact(f's3://bucket/models/{n}.zip', sha256='ab'*32, unarchive='ZIP'),"
            " runtime=r.Artifact(f's3://bucket/runtime/{resolve(n).arch}.zip', unarchive='ZIP'))"
            " for n in ('rasp4b','rasp3b','ml_c5','jetson_xavier')];"
            "print(r.inference_recipe(component_name='com.example.Classifier', platforms=p)['ComponentVersion'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=pathlib.Path(r.__file__).parents[2])
    assert out.stdout.strip() == inference["ComponentVersion"]


def test_content_version_ignores_the_version_field():
    assert (r.content_version({"ComponentVersion": "1.0.0", "a": 1})
            == r.content_version({"ComponentVersion": "9.9.9", "a": 1}))


def test_content_version_hashes_bytes():
    assert r.content_version(b"abc") == r.content_version(hashlib.sha256(b"abc").hexdigest())
    assert r.content_version(b"abc") != r.content_version(b"abd")


def test_explicit_version_is_kept():
    rec = r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                             component_version="2.1.0-rc.1")
    assert rec["ComponentVersion"] == "2.1.0-rc.1"


def test_generic_recipe_with_setenv_and_step_object(gdk_recipe_errors):
    rec = r.build_recipe(
        component_name="com.example.Hello", component_version="1.2.3",
        manifests=[r.Manifest(platform={"os": "linux", "architecture": "*"},
                              lifecycle={"setenv": {"A": "1"},
                                         "install": {"script": "true", "requiresprivilege": True,
                                                     "skipif": "onpath python3"},
                                         "run": "echo hi"})],
        access=r.access_control("com.example.Hello", mqtt_subscribe=["cmd/#"]))
    assert rec["Manifests"][0]["Lifecycle"] == {
        "Setenv": {"A": "1"}, "Run": "echo hi",
        "Install": {"Script": "true", "RequiresPrivilege": True, "Skipif": "onpath python3"}}
    assert gdk_recipe_errors(rec) == []


def test_tokens_in_uris_are_accepted():
    art = r.Artifact("${Token[TOKEN.12]}")
    assert art.file_name == "${Token[TOKEN.12]}"


# ---------------------------------------------------------------------------------------
# Refusals


@pytest.mark.parametrize("version,message", [
    ("1.0", "component version must be a semantic version like 1.0.0; got '1.0'"),
    ("01.0.0", "component version must be a semantic version like 1.0.0; got '01.0.0'"),
    ("1.0.2147483648", "component version numbers must be at most 2147483647; got '1.0.2147483648'"),
])
def test_fails_when_version_is_not_semver(version, message):
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                           component_version=version)
    assert str(exc.value) == message


def test_fails_when_component_name_is_invalid():
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="my component", platforms=platforms("rasp4b"))
    assert str(exc.value) == ("component name must be 1 to 128 letters, digits, '-', '_' or '.'; "
                              "got 'my component'")


def test_fails_when_architecture_is_uname_style():
    with pytest.raises(r.RecipeError) as exc:
        r.build_recipe(component_name="c", component_version="1.0.0",
                       manifests=[r.Manifest(platform={"os": "linux", "architecture": "x86_64"})])
    assert str(exc.value) == ("platform architecture must be one of amd64, aarch64, arm, x86, *; "
                              "got 'x86_64'")


def test_fails_when_os_is_unknown():
    with pytest.raises(r.RecipeError) as exc:
        r.build_recipe(component_name="c", component_version="1.0.0",
                       manifests=[r.Manifest(platform={"os": "android", "architecture": "arm"})])
    assert str(exc.value) == "platform os must be one of linux, windows, *; got 'android'"


def test_fails_when_lifecycle_step_is_unknown():
    with pytest.raises(r.RecipeError) as exc:
        r.build_recipe(component_name="c", component_version="1.0.0",
                       manifests=[r.Manifest(platform={"os": "linux", "architecture": "arm"},
                                             lifecycle={"start": "x"})])
    assert str(exc.value) == ("lifecycle step must be one of setenv, bootstrap, install, startup, "
                              "run, shutdown, recover; got 'start'")


def test_fails_when_lifecycle_step_key_is_unknown():
    with pytest.raises(r.RecipeError) as exc:
        r.build_recipe(component_name="c", component_version="1.0.0",
                       manifests=[r.Manifest(platform={"os": "linux", "architecture": "arm"},
                                             lifecycle={"run": {"script": "x", "user": "root"}})])
    assert str(exc.value) == ("manifest 0 lifecycle run keys must be among script, "
                              "requiresprivilege, skipif, timeout, setenv; got 'user'")


def test_fails_when_validating_a_recipe_with_a_bad_step():
    rec = {"RecipeFormatVersion": "2020-01-25", "ComponentName": "c", "ComponentVersion": "1.0.0",
           "Manifests": [{"Platform": {"os": "linux", "architecture": "arm"},
                          "Lifecycle": {"Run": {"RequiresPrivilege": True}}}]}
    with pytest.raises(r.RecipeError) as exc:
        r.validate_recipe(rec)
    assert str(exc.value) == ("manifest 0 lifecycle run must be a script string or an object with "
                              "a script; got {'requiresprivilege': True}")


def test_fails_when_platform_repeats():
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="c", platforms=platforms("rasp4b", "rk3399"))
    assert str(exc.value) == ("manifest 1 repeats platform {'os': 'linux', 'architecture': "
                              "'aarch64'}: the nucleus would only ever use the first; give each "
                              "platform one manifest")


def test_fails_when_no_platform():
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="c", platforms=[])
    assert str(exc.value) == "an inference component needs at least one platform; got none"


def test_fails_when_artifact_uri_is_a_path():
    with pytest.raises(r.RecipeError) as exc:
        r.Artifact("/tmp/model.zip")
    assert str(exc.value) == ("artifact uri must start with one of s3://, greengrass:, docker:; "
                              "got '/tmp/model.zip'")


def test_fails_when_digest_is_not_sha256_hex():
    with pytest.raises(r.RecipeError) as exc:
        r.Artifact(MODEL_ZIP, sha256="abc")
    assert str(exc.value) == "artifact sha256 must be 64 lowercase hex digits; got 'abc'"


def test_fails_when_unarchive_is_tar():
    with pytest.raises(r.RecipeError) as exc:
        r.Artifact(MODEL_ZIP, unarchive="TAR")
    assert str(exc.value) == "artifact unarchive must be one of NONE, ZIP; got 'TAR'"


def test_fails_when_configuration_key_is_unknown():
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                           configuration={"threads": 2})
    assert str(exc.value) == ("inference configuration keys must be among inputTopic, topicPrefix, "
                              "threadCount, signingPublicKey, allowUnsigned, summaryIntervalSeconds, "
                              "publishResults, resultsSampleRate, lowConfidenceThreshold, "
                              "resultsBatchSeconds, capture, captureSampleRate, captureDestination, "
                              "captureMaxMegabytes, captureUploadSeconds, shadowShare, "
                              "shadowRequests, shadowMinutes, shadowMinRequests, shadowMinAgreement, "
                              "shadowMaxScoreDifference, maxErrorRateIncrease, maxLatencyRatio, "
                              "latencySlackMs, healthRequests, healthMinutes, healthMinRequests, "
                              "rolloutId; got threads")


def test_fails_when_thread_count_is_negative():
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                           configuration={"threadCount": -1})
    assert str(exc.value) == "inference configuration threadCount must be a number >= 0; got -1"


def test_fails_when_topic_prefix_has_wildcards():
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                           configuration={"topicPrefix": "a/#"})
    assert str(exc.value) == ("inference configuration topicPrefix must be a topic without "
                              "wildcards; got 'a/#'")


def test_fails_when_dependency_type_is_unknown():
    with pytest.raises(r.RecipeError) as exc:
        r.Dependency(">=1.0.0", "STRONG")
    assert str(exc.value) == "dependency type must be one of HARD, SOFT; got 'STRONG'"


def test_fails_when_skipif_is_malformed():
    with pytest.raises(r.RecipeError) as exc:
        r.build_recipe(component_name="c", component_version="1.0.0",
                       manifests=[r.Manifest(platform={"os": "linux", "architecture": "arm"},
                                             lifecycle={"install": {"script": "x", "skipif": "always"}})])
    assert str(exc.value) == ("manifest 0 lifecycle install skipif must be 'onpath <exe>' or "
                              "'exists <file>'; got 'always'")


def test_telemetry_keys_reach_the_process_environment():
    recipe = r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                                configuration={"publishResults": "sampled",
                                               "resultsSampleRate": 0.05})
    assert recipe["ComponentConfiguration"]["DefaultConfiguration"]["publishResults"] == "sampled"
    setenv = recipe["Manifests"][0]["Lifecycle"]["Setenv"]
    assert setenv["NEO_EDGE_PUBLISH_RESULTS"] == "{configuration:/publishResults}"
    assert setenv["NEO_EDGE_SAMPLE_RATE"] == "{configuration:/resultsSampleRate}"
    assert setenv["NEO_EDGE_SUMMARY_TOPIC"] == "{configuration:/topicPrefix}/{iot:thingName}/summary"


def test_fails_when_a_telemetry_setting_is_bad():
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                           configuration={"publishResults": "some"})
    assert str(exc.value) == ("inference configuration: telemetry setting publishResults must be "
                              "one of all, sampled, notable; got 'some'")
    with pytest.raises(r.RecipeError) as exc:
        r.inference_recipe(component_name="c", platforms=platforms("rasp4b"),
                           configuration={"resultsSampleRate": 2})
    assert str(exc.value) == ("inference configuration: telemetry setting resultsSampleRate must "
                              "be a number from 0 to 1; got 2")


def test_the_recipe_builder_needs_no_numpy():
    """The construct library builds recipes in a user's CDK app, which has no numpy: the
    configuration checks of telemetry, rollout and signing must not import it."""
    code = textwrap.dedent("""
        import sys
        sys.modules["numpy"] = None  # import numpy raises ImportError
        from neo_edge_runtime.compile import recipe as r
        from neo_edge_runtime.targets import resolve
        platform = r.PlatformArtifacts(
            platform=resolve("rasp4b").greengrass_platform, name="rasp4b",
            model=r.Artifact("s3://bucket/m.zip", sha256="ab" * 32, unarchive="ZIP"),
            runtime=r.Artifact("s3://bucket/aarch64.zip", unarchive="ZIP"))
        r.inference_recipe(component_name="c", platforms=[platform], configuration={
            "publishResults": "sampled", "resultsSampleRate": 0.05, "shadowShare": 0.25})
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"
