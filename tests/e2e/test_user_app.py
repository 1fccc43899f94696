"""The construct library as a user gets it: the wheel, installed outside the repository.

A user builds nothing from this checkout: ``pip install neo-edge`` into the virtualenv of
their own CDK app (``cdk init app --language python``), then ``cdk synth``. This test does
exactly that in a temporary folder: it builds the wheel, installs it into a fresh venv of
each Python version below (the repository's ``requirements.lock`` as constraints, so the
versions are the tested ones), writes an app that uses every public construct, and runs the
pinned CDK CLI on it with cdk-nag's AwsSolutions pack, which fails the synth on a finding.
"""

from __future__ import annotations

import email.parser
import glob
import json
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap
import zipfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
CDK = ROOT / "node_modules" / ".bin" / "cdk"
BUNDLES = {arch: ROOT / "build" / "bundle" / f"neo-edge-runtime-{arch}.zip"
           for arch in ("aarch64", "x86_64")}
#: The interpreters the construct library is installed and synthesized with here: the
#: repository's own and a newer one (CI covers both).
PYTHONS = ("3.11", "3.12")
#: What a CDK app must not pull in: the compiler stack and the frameworks.
COMPILER_STACK = {"apache-tvm", "apache-tvm-ffi", "onnx", "onnxruntime", "xgboost", "xgboost-cpu",
                  "scikit-learn", "torch", "numpy", "psutil", "cloudpickle", "tqdm"}


def interpreter(version: str) -> str | None:
    """A ``pythonX.Y`` executable: this one, pyenv's, or one on PATH."""
    if f"{sys.version_info[0]}.{sys.version_info[1]}" == version:
        return sys.executable
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = sorted(glob.glob(os.path.join(root, "versions", f"{version}.*", "bin", f"python{version}")))
    if found:
        return found[-1]
    on_path = shutil.which(f"python{version}")
    if on_path and subprocess.run([on_path, "--version"], capture_output=True).returncode == 0:
        return on_path
    return None


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
    out = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--disable-pip-version-check", "-w", str(out), str(ROOT)])
    (path,) = out.glob("neo_edge-*.whl")
    return path


def metadata(wheel: pathlib.Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.parser.Parser().parsestr(archive.read(name).decode())


def requirement_name(requirement: str) -> str:
    name = requirement.split(";")[0].strip()
    for sep in "[=<>!~ (":
        name = name.split(sep)[0]
    return name.lower().replace("_", "-")


def test_installing_the_constructs_pulls_no_compiler_stack(wheel):
    meta = metadata(wheel)
    requires = meta.get_all("Requires-Dist")
    core = {requirement_name(r) for r in requires if "extra ==" not in r}
    assert core == {"aws-cdk-lib", "constructs", "cdk-nag", "aws-lambda-powertools"}
    compiler = {requirement_name(r) for r in requires if 'extra == "compiler"' in r}
    assert {"apache-tvm", "apache-tvm-ffi", "numpy", "onnx"} <= compiler
    assert not core & COMPILER_STACK
    assert meta["Requires-Python"] == ">=3.10"


def test_the_wheel_carries_every_lambda_handler_and_no_checkout_path(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    handlers = {p.name for p in (ROOT / "lambda").iterdir() if (p / f"{p.name}.py").is_file()}
    assert handlers, "the repository has Lambda handlers"
    for name in handlers:
        assert f"neo_edge/_functions/{name}/{name}.py" in names
    assert "neo_edge_runtime/compile/__init__.py" in names
    assert not any("__pycache__" in n or n.endswith(".pyc") for n in names)


USER_APP = textwrap.dedent('''
    """A user's app: three stacks with every public neo-edge construct, cdk-nag on."""
    import os

    import aws_cdk as cdk
    from aws_cdk import aws_events as events
    from aws_cdk import aws_iam as iam
    from aws_cdk import aws_lambda as lambda_
    from aws_cdk import aws_sns as sns
    from cdk_nag import AwsSolutionsChecks

    import neo_edge as ne

    BUNDLES = {"aarch64": os.environ["BUNDLE_AARCH64"], "x86_64": os.environ["BUNDLE_X86_64"]}
    TARGETS = ["rasp4b", "ml_c5"]

    app = cdk.App()
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))

    # The fleets, in a stack of their own.
    fleets = cdk.Stack(app, "Fleets")
    models_bucket = ne.ModelArtifactBucket.from_bucket_name(fleets, "Models", "acme-models")
    cameras = ne.EdgeFleet(fleets, "Cameras", fleet_name="cameras",
                           artifact_bucket=models_bucket.bucket, artifact_prefix="compiled/")
    gateways = ne.EdgeFleet(fleets, "Gateways", fleet_name="gateways", fleet_provisioning=True)

    # Training, compilation, components and deployments in another, on the bucket we have.
    ml = cdk.Stack(app, "Models")
    bucket = ne.ModelArtifactBucket.from_bucket_name(ml, "Models", "acme-models")
    training = ne.TrainingJob(ml, "Train", bucket=bucket,
                              algorithm_image=ne.AlgorithmImage.xgboost(),
                              input_channels={"train": "datasets/train/"}, content_type="text/csv",
                              hyperparameters={"objective": "multi:softprob", "num_class": 3,
                                               "num_round": 20})
    # Devices: neo-edge's compiler in CodeBuild; the endpoint: SageMaker Neo.
    compiled = ne.EdgeCompilationSet(ml, "Compile", bucket=bucket, model=training,
                                     framework=ne.Framework.XGBOOST, targets=TARGETS,
                                     output_prefix="compiled/")
    neo = ne.NeoCompilationJob(ml, "CompileForEndpoint", bucket=bucket, model=training,
                               framework=ne.Framework.XGBOOST, target="ml_c5",
                               output_prefix="compiled/endpoint/")
    ne.CloudInferenceEndpoint(ml, "Endpoint", model=neo)
    classifier = ne.EdgeInferenceComponent(
        ml, "Classifier", component_name="com.acme.Classifier",
        models=list(compiled.jobs.values()),
        runtime_bundles=BUNDLES)

    relay_role = iam.Role(ml, "RelayRole", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    relay = lambda_.Function(ml, "Relay", runtime=lambda_.Runtime.PYTHON_3_13,
                             handler="index.handler", role=relay_role,
                             code=lambda_.Code.from_inline("def handler(event, context):\\n"
                                                           "    return event\\n"))
    # A user's own function, with the user's own finding acknowledged (none of neo-edge's are).
    cdk.Validations.of(relay).acknowledge(cdk.Acknowledgment(
        id="AwsSolutions::AwsSolutions-L1", reason="the relay is tested on Python 3.13"))
    relay_component = ne.EdgeLambdaComponent(ml, "RelayComponent", component_name="com.acme.Relay",
                                             function_version=relay.current_version)
    cameras_deployment = ne.EdgeDeployment(ml, "CamerasDeployment", fleet=cameras,
                                           components=[classifier, relay_component])
    ne.EdgeDeployment(ml, "GatewaysDeployment",
                      fleet=ne.EdgeFleet.from_thing_group_name(ml, "ImportedGateways", "gateways"),
                      components=[classifier])
    alerts = sns.Topic.from_topic_arn(ml, "Alerts", f"arn:aws:sns:{ml.region}:{ml.account}:alerts")
    ne.EdgeTelemetry(ml, "Telemetry", fleet=cameras, results_bucket=bucket.bucket,
                     model_names=["classifier"], deployment=cameras_deployment, alert_topic=alerts)
    ne.RetrainPipeline(ml, "Retrain", training_job=training, compilation=compiled,
                       component=classifier, fleet=cameras, alert_topic=alerts,
                       schedule=events.Schedule.rate(cdk.Duration.days(7)))

    # The whole path in one construct, in a third stack.
    one = cdk.Stack(app, "Digits")
    ne.NeoEdgePipeline(one, "Digits", runtime_bundles=BUNDLES, targets=TARGETS,
                       model_name="digits", fleet_name="digits",
                       hyperparameters={"objective": "multi:softprob", "num_class": 10,
                                        "num_round": 50})
    app.synth()
''')


@pytest.mark.skipif(not CDK.exists(), reason="the pinned CDK CLI is not installed (make setup)")
@pytest.mark.parametrize("version", PYTHONS)
def test_user_app_synthesizes_from_the_installed_wheel(wheel, version, tmp_path):
    python = interpreter(version)
    if python is None:
        pytest.skip(f"no python{version} here (pyenv versions or PATH)")
    for arch, path in BUNDLES.items():
        assert path.is_file(), f"make setup builds the {arch} device bundle: {path}"
    project = tmp_path / "my-edge-app"
    project.mkdir()
    venv = project / ".venv"
    run([python, "-m", "venv", str(venv)])
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "install", str(wheel), "-c", str(ROOT / "requirements.lock")])

    installed = run([str(venv / "bin" / "python"), "-c",
                     "import neo_edge, neo_edge_runtime, importlib.metadata as m; "
                     "print(neo_edge.__file__); print(neo_edge_runtime.__file__); "
                     "print(sorted(d.metadata['Name'].lower() for d in m.distributions()))"],
                    cwd=project).stdout.splitlines()
    assert all(str(venv) in line and str(ROOT) not in line for line in installed[:2]), installed
    assert not set(json.loads(installed[2].replace("'", '"'))) & COMPILER_STACK
    # The command line is there too, and says what to install for compiling.
    refused = subprocess.run([str(venv / "bin" / "neo-edge"), "compile", "model.onnx", "--target",
                              "rasp4b", "--output", "out"], cwd=project, capture_output=True, text=True)
    assert refused.returncode == 2, refused.stderr
    assert "pip install 'neo-edge[compiler]'" in refused.stderr

    (project / "app.py").write_text(USER_APP)
    (project / "cdk.json").write_text(json.dumps({"app": "python3 app.py"}))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(PATH=f"{venv / 'bin'}{os.pathsep}{env['PATH']}", VIRTUAL_ENV=str(venv),
               JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION="20", CDK_DISABLE_VERSION_CHECK="1",
               BUNDLE_AARCH64=str(BUNDLES["aarch64"]), BUNDLE_X86_64=str(BUNDLES["x86_64"]))
    run([str(CDK), "synth", "--quiet", "--no-notices", "-o", "cdk.out"], cwd=project, env=env,
        timeout=900)

    out = project / "cdk.out"
    templates = {name: json.loads((out / f"{name}.template.json").read_text())
                 for name in ("Fleets", "Models", "Digits")}
    groups = [r for r in templates["Fleets"]["Resources"].values() if r["Type"] == "AWS::IoT::ThingGroup"]
    assert sorted(g["Properties"]["ThingGroupName"] for g in groups) == ["cameras", "gateways"]
    deployments = [r["Properties"]["TargetArn"] for r in templates["Models"]["Resources"].values()
                   if r["Type"] == "AWS::GreengrassV2::Deployment"]
    assert len(deployments) == 2 and all("thinggroup/" in json.dumps(t) for t in deployments)
    # Every Lambda asset was bundled from the installed package: its handler is there.
    assets = json.loads((out / "Models.assets.json").read_text())["files"]
    handlers = set()
    for asset in assets.values():
        folder = out / asset["source"]["path"]
        if folder.is_dir():
            handlers |= {p.name for p in folder.glob("*.py")}
    assert {"sagemaker_job.py", "component_publisher.py", "deployment_manager.py",
            "pipeline_trigger.py", "summary_metrics.py"} <= handlers
