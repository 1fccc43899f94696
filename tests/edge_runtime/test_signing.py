"""Signed artifacts: integrity is not authenticity.

An attacker who can write an artifact can rewrite manifest.json with new hashes; only a
signature over the manifest, checked on the device before anything loads, stops that.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import numpy as np
import pytest
from botocore.stub import Stubber
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from moto import mock_aws

from neo_edge_runtime import ModelStore, artifact
from neo_edge_runtime.compile import cli
from neo_edge_runtime.compile.signing import (FileSigner, KmsSigner, SigningError, generate_key,
                                              public_key_pem, sign_artifact)
from neo_edge_runtime.errors import ArtifactError, SignatureError
from neo_edge_runtime.runtime import EdgeModel
from neo_edge_runtime.signature import SIGNATURE, PublicKey, load_public_key, parse_public_key

OPENSSL = shutil.which("openssl")


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    ours = generate_key(folder / "ours.pem")
    theirs = generate_key(folder / "theirs.pem")
    return {"private": ours[0], "public": ours[1], "other_private": theirs[0],
            "other_public": theirs[1]}


def _fake_artifact(folder: Path) -> Path:
    """A structurally valid artifact (a library that is never loaded): for checks that
    stop before loading."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model.so").write_bytes(b"\x7fELF" + bytes(range(256)) * 4)
    artifact.write_manifest(folder, {
        "format_version": 1, "model": {"name": "m", "version": "1.0.0"}, "framework": "ONNX",
        "target": {"name": "host", "arch": "x86_64", "device": "cpu"}, "library": "model.so",
        "params": None, "inputs": [{"name": "x", "shape": [1, 4], "dtype": "float32"}],
        "outputs": [{"name": "y", "shape": [1, 2], "dtype": "float32"}],
        "metadata": {"labels": ["a", "b"]}})
    return folder


@pytest.fixture()
def signed_fake(tmp_path, keys):
    folder = _fake_artifact(tmp_path / "fake")
    sign_artifact(folder, FileSigner(keys["private"]))
    return folder


@pytest.fixture()
def signed_host(host_artifact, tmp_path, keys):
    """The session's compiled host artifact, copied and signed with our key."""
    folder = tmp_path / "signed"
    shutil.copytree(host_artifact, folder)
    sign_artifact(folder, FileSigner(keys["private"]))
    return folder


def _tamper_and_rehash(folder: Path) -> None:
    """What an attacker with write access does: change the library, then rewrite the
    manifest with the new hashes (the old signature left in place)."""
    with open(folder / "model.so", "ab") as f:
        f.write(b"\0" * 64)
    manifest = json.loads((folder / "manifest.json").read_text())
    artifact.write_manifest(folder, manifest)


@pytest.fixture()
def nothing_loads(monkeypatch):
    """Fail the test if the TVM runtime is asked to load anything."""
    from neo_edge_runtime import runtime

    def refuse(*args, **kwargs):
        raise AssertionError("the runtime library was used before the signature was checked")

    monkeypatch.setattr(runtime, "_load_runtime_library", refuse)
    monkeypatch.setattr(runtime._ffi, "get_global", refuse)


# --- the device -------------------------------------------------------------------------


def test_a_signed_artifact_loads_and_runs(signed_host, keys):
    model = EdgeModel.load(signed_host, public_key=keys["public"].read_text())
    x = np.ones(model.inputs[0]["shape"], dtype=model.inputs[0]["dtype"])
    reference = EdgeModel.load(signed_host).predict(x)
    np.testing.assert_array_equal(model.predict(x)[model.outputs[0]["name"]],
                                  reference[model.outputs[0]["name"]])


def test_a_tampered_and_rehashed_artifact_is_refused_before_loading(signed_host, keys,
                                                                    nothing_loads):
    _tamper_and_rehash(signed_host)
    artifact.verify(signed_host)  # integrity alone is fooled: every hash matches
    with pytest.raises(SignatureError, match=r"manifest\.json\.sig does not verify "
                                             r"manifest\.json with the configured public key"):
        EdgeModel.load(signed_host, public_key=keys["public"])


def test_an_unsigned_artifact_is_refused_unless_allowed(host_artifact, keys, tmp_path):
    folder = tmp_path / "unsigned"
    shutil.copytree(host_artifact, folder)
    assert not (folder / SIGNATURE).exists()
    with pytest.raises(SignatureError, match=r"is not signed \(it has no manifest\.json\.sig\) "
                                             r"and unsigned artifacts are refused"):
        EdgeModel.load(folder, public_key=keys["public"])
    assert EdgeModel.load(folder, public_key=keys["public"], allow_unsigned=True).name == "ops"


def test_allow_unsigned_still_refuses_a_bad_signature(signed_fake, keys, nothing_loads):
    _tamper_and_rehash(signed_fake)
    with pytest.raises(SignatureError, match="does not verify"):
        EdgeModel.load(signed_fake, public_key=keys["public"], allow_unsigned=True)


def test_an_artifact_signed_with_another_key_is_refused(signed_fake, keys, nothing_loads):
    with pytest.raises(SignatureError, match="signed with another key"):
        EdgeModel.load(signed_fake, public_key=keys["other_public"])


def test_the_store_refuses_a_tampered_version_and_keeps_serving(signed_host, host_artifact,
                                                                keys, tmp_path):
    store = ModelStore(tmp_path / "store", public_key=keys["public"])
    served = store.install(signed_host)
    bad = tmp_path / "bad"
    shutil.copytree(signed_host, bad)
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["model"]["version"] = "2.0.0"
    artifact.write_manifest(bad, manifest)
    with pytest.raises(SignatureError, match="does not verify"):
        store.install(bad)
    assert store.current is served
    with pytest.raises(SignatureError, match="is not signed"):
        store.install(host_artifact)


def test_a_store_of_unsigned_versions_given_a_key_starts_empty(host_artifact, signed_host,
                                                               keys, tmp_path):
    ModelStore(tmp_path / "store").install(host_artifact)  # before the device had a key
    store = ModelStore(tmp_path / "store", public_key=keys["public"])
    assert store.current is None
    assert store.install(signed_host).version == "1.0.0"
    assert ModelStore(tmp_path / "store", public_key=keys["public"]).current is not None


# --- standard tools ---------------------------------------------------------------------


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
def test_openssl_verifies_our_signature(signed_fake, keys):
    def openssl_verify(public):
        return subprocess.run(
            [OPENSSL, "dgst", "-sha256", "-verify", str(public), "-signature",
             str(signed_fake / SIGNATURE), str(signed_fake / "manifest.json")],
            capture_output=True, text=True)

    done = openssl_verify(keys["public"])
    assert (done.returncode, done.stdout.strip()) == (0, "Verified OK")
    assert openssl_verify(keys["other_public"]).returncode == 1


@pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")
def test_the_device_verifies_an_openssl_signature(tmp_path):
    key = tmp_path / "openssl.pem"
    public = tmp_path / "openssl.pub.pem"
    folder = _fake_artifact(tmp_path / "art")
    for cmd in ([OPENSSL, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key],
                [OPENSSL, "ec", "-in", key, "-pubout", "-out", public],
                [OPENSSL, "dgst", "-sha256", "-sign", key, "-out", folder / SIGNATURE,
                 folder / "manifest.json"]):
        subprocess.run([str(c) for c in cmd], check=True, capture_output=True)
    assert artifact.verify(folder, public_key=public)["model"]["name"] == "m"
    assert FileSigner(key).public_key_der() == load_public_key(public).der  # SEC1 key files too


# --- property: any single-byte change is refused ----------------------------------------


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_single_byte_change_of_manifest_or_signature_is_refused(signed_fake, keys, data):
    name = data.draw(st.sampled_from(["manifest.json", SIGNATURE]))
    path = signed_fake / name
    original = path.read_bytes()
    index = data.draw(st.integers(0, len(original) - 1))
    flip = data.draw(st.integers(1, 255))
    changed = bytearray(original)
    changed[index] ^= flip
    path.write_bytes(bytes(changed))
    try:
        with pytest.raises(SignatureError):
            artifact.verify(signed_fake, public_key=keys["public"])
    finally:
        path.write_bytes(original)
    artifact.verify(signed_fake, public_key=keys["public"])


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300) | st.builds(
    lambda b: "-----BEGIN PUBLIC KEY-----\n" + b + "\n-----END PUBLIC KEY-----",
    st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n", max_size=200)))
def test_a_public_key_parses_or_is_refused_clearly(text):
    try:
        key = parse_public_key(text)
    except SignatureError as exc:
        assert "signing public key" in str(exc)
    else:
        assert len(key.der) == 91


# --- public keys ------------------------------------------------------------------------


def test_a_public_key_is_taken_as_pem_base64_der_or_file(keys):
    pem = keys["public"].read_text()
    der = load_public_key(pem).der
    b64 = "".join(pem.strip().splitlines()[1:-1])
    assert load_public_key(b64).der == der
    assert load_public_key(str(keys["public"])).der == der
    assert load_public_key(keys["public"]).der == der
    assert load_public_key(pem.encode()).der == der
    assert PublicKey(der).pem == pem


def test_fails_when_the_public_key_is_another_curve(tmp_path):
    other = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    with pytest.raises(SignatureError, match=r"must be a NIST P-256 \(prime256v1, KMS "
                                             r"ECC_NIST_P256\) SubjectPublicKeyInfo"):
        load_public_key(other)


def test_fails_when_the_public_key_file_is_missing(tmp_path):
    with pytest.raises(SignatureError, match=r"cannot read '.*nope\.pem'"):
        load_public_key(str(tmp_path / "nope.pem"))


def test_fails_when_the_signing_key_is_not_p256(tmp_path):
    path = tmp_path / "p384.pem"
    path.write_bytes(ec.generate_private_key(ec.SECP384R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))
    with pytest.raises(SigningError, match=r"must be a NIST P-256 \(prime256v1\) EC private "
                                           r"key; got an EC secp384r1 key"):
        FileSigner(path)


def test_keygen_refuses_to_overwrite(keys):
    with pytest.raises(SigningError, match="exists already; not overwritten"):
        generate_key(keys["private"])


def test_a_signer_whose_signature_does_not_verify_writes_nothing(tmp_path, keys):
    folder = _fake_artifact(tmp_path / "art")

    class Lying:
        def public_key_der(self):
            return FileSigner(keys["other_private"]).public_key_der()

        def sign_digest(self, digest):
            return FileSigner(keys["private"]).sign_digest(digest)

    with pytest.raises(SigningError, match="does not verify with its own public key"):
        sign_artifact(folder, Lying())
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.so"]


def test_a_tampered_artifact_is_not_signed(tmp_path, keys):
    folder = _fake_artifact(tmp_path / "art")
    with open(folder / "model.so", "ab") as f:
        f.write(b"x")
    with pytest.raises(ArtifactError, match="does not match its manifest"):
        sign_artifact(folder, FileSigner(keys["private"]))
    assert not (folder / SIGNATURE).exists()


# --- KMS --------------------------------------------------------------------------------
# moto 5.2.5 creates ECC_NIST_P256 SIGN_VERIFY keys and answers GetPublicKey, but its Sign
# ignores MessageType (moto/kms/responses.py: DIGEST is hashed again as a RAW message), so
# the DIGEST call is checked with botocore's Stubber against the service model
# (botocore/data/kms/2014-11-01/service-2.json, operation Sign: KeyId, Message,
# MessageType RAW|DIGEST|EXTERNAL_MU, SigningAlgorithm ECDSA_SHA_256, ...), its answer a
# signature made here with a local key.


def test_kms_signer_reads_the_public_key_of_a_p256_key():
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        key_id = kms.create_key(KeySpec="ECC_NIST_P256", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        signer = KmsSigner(key_id, client=kms)
        der = signer.public_key_der()
        assert der == kms.get_public_key(KeyId=key_id)["PublicKey"]
        assert PublicKey(der).pem == public_key_pem(signer)


def test_fails_when_the_kms_key_is_not_a_p256_signing_key():
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        key_id = kms.create_key(KeySpec="RSA_2048", KeyUsage="SIGN_VERIFY")["KeyMetadata"]["KeyId"]
        with pytest.raises(SigningError, match=rf"^KMS key '{key_id}' must be an asymmetric "
                                               r"ECC_NIST_P256 key for SIGN_VERIFY; got KeySpec "
                                               r"'RSA_2048', KeyUsage 'SIGN_VERIFY'$"):
            KmsSigner(key_id, client=kms).public_key_der()


def test_fails_when_kms_refuses():
    with mock_aws():
        kms = boto3.client("kms", region_name="us-east-1")
        with pytest.raises(SigningError, match=r"^KMS get_public_key with key 'alias/nope' "
                                               r"failed: NotFoundException"):
            KmsSigner("alias/nope", client=kms).public_key_der()


def test_kms_signer_signs_the_manifest_digest(tmp_path):
    folder = _fake_artifact(tmp_path / "art")
    local = ec.generate_private_key(ec.SECP256R1())
    der = local.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).digest()
    key_arn = "arn:aws:kms:us-east-1:123456789012:key/1234abcd-12ab-34cd-56ef-1234567890ab"
    kms = boto3.client("kms", region_name="us-east-1")
    with Stubber(kms) as stub:
        stub.add_response("get_public_key", {
            "KeyId": key_arn, "PublicKey": der, "KeySpec": "ECC_NIST_P256",
            "KeyUsage": "SIGN_VERIFY", "SigningAlgorithms": ["ECDSA_SHA_256"]},
            {"KeyId": "alias/neo-edge-signing"})
        stub.add_response("sign", {
            "KeyId": key_arn, "SigningAlgorithm": "ECDSA_SHA_256",
            "Signature": local.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))},
            {"KeyId": "alias/neo-edge-signing", "Message": digest, "MessageType": "DIGEST",
             "SigningAlgorithm": "ECDSA_SHA_256"})
        sign_artifact(folder, KmsSigner("alias/neo-edge-signing", client=kms))
        stub.assert_no_pending_responses()
    assert artifact.verify(folder, public_key=PublicKey(der).pem)["model"]["name"] == "m"


def test_kms_signer_with_a_known_public_key_needs_sign_only(tmp_path, keys):
    """What the build does with ``grant_sign`` (kms:Sign only): no GetPublicKey call."""
    folder = _fake_artifact(tmp_path / "art")
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).digest()
    kms = boto3.client("kms", region_name="us-east-1")
    with Stubber(kms) as stub:
        stub.add_response("sign", {"Signature": FileSigner(keys["private"]).sign_digest(digest)},
                          {"KeyId": "k", "Message": digest, "MessageType": "DIGEST",
                           "SigningAlgorithm": "ECDSA_SHA_256"})
        sign_artifact(folder, KmsSigner("k", client=kms, public_key=keys["public"].read_text()))
    artifact.verify(folder, public_key=keys["public"])


# --- the command ------------------------------------------------------------------------


def test_the_command_makes_keys_signs_and_verifies(tmp_path, capsys):
    folder = _fake_artifact(tmp_path / "art")
    assert cli.main(["keygen", "--out", str(tmp_path / "k.pem")]) == 0
    assert cli.main(["sign", str(folder), "--key", str(tmp_path / "k.pem")]) == 0
    assert cli.main(["inspect", str(folder), "--public-key", str(tmp_path / "k.pub.pem")]) == 0
    generate_key(tmp_path / "other.pem")
    capsys.readouterr()
    assert cli.main(["inspect", str(folder), "--public-key", str(tmp_path / "other.pub.pem")]) == 2
    assert "signed with another key" in capsys.readouterr().err


# --- the device's configuration ---------------------------------------------------------


def _edge_inference():
    """The handler module, imported from its asset folder as the device does."""
    name = "edge_inference_signing_test"
    if name not in sys.modules:
        path = (Path(__file__).resolve().parents[2] / "lambda" / "edge_inference"
                / "edge_inference.py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up there
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.mark.parametrize("key, allow, expected", [
    ("", "", (None, True)), ("KEY", "", ("KEY", False)), ("KEY", "true", ("KEY", True)),
    ("KEY", "False", ("KEY", False)), ("", "true", (None, True))])
def test_the_handler_reads_the_signing_settings(keys, key, allow, expected):
    pem = keys["public"].read_text()
    env = {"NEO_EDGE_MODEL_DIR": "/m", "NEO_EDGE_SIGNING_PUBLIC_KEY": pem if key else "",
           "NEO_EDGE_ALLOW_UNSIGNED": allow}
    settings = _edge_inference().Settings.from_environment(env)
    got = (settings.signing_public_key and "KEY", settings.allow_unsigned)
    assert got == expected
    if key:
        assert settings.signing_public_key == pem.strip()


@pytest.mark.parametrize("env, message", [
    ({"NEO_EDGE_ALLOW_UNSIGNED": "false"}, "is false but no signing public key is set"),
    ({"NEO_EDGE_ALLOW_UNSIGNED": "maybe"}, "must be true or false; got 'maybe'"),
    ({"NEO_EDGE_SIGNING_PUBLIC_KEY": "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----"},
     "NEO_EDGE_SIGNING_PUBLIC_KEY \\(configuration signingPublicKey\\): the signing public key "
     "must be a NIST P-256")])
def test_fails_when_the_signing_settings_are_wrong(env, message):
    module = _edge_inference()
    with pytest.raises(module.ConfigurationError, match=message):
        module.Settings.from_environment({"NEO_EDGE_MODEL_DIR": "/m", **env})


def test_the_handler_serves_a_signed_model_and_refuses_a_tampered_one(signed_host, keys,
                                                                      tmp_path):
    module = _edge_inference()
    env = {"NEO_EDGE_MODEL_DIR": str(signed_host), "NEO_EDGE_STORE_DIR": str(tmp_path / "s"),
           "NEO_EDGE_SIGNING_PUBLIC_KEY": keys["public"].read_text()}

    class Publisher:
        def publish(self, topic, message):
            pass

    service = module.InferenceService(module.Settings.from_environment(env),
                                      publisher=Publisher())
    served = service.model
    assert served.name == "ops"
    _tamper_and_rehash(signed_host)
    assert service.load(str(signed_host)) is False
    assert service.model is served
    with pytest.raises(SignatureError, match="does not verify"):
        service.store.install(signed_host)


def test_the_recipe_requires_a_valid_key_and_derives_allow_unsigned(keys):
    from neo_edge_runtime.compile import recipe as r

    platforms = [r.PlatformArtifacts(platform={"os": "linux", "architecture": "amd64"},
                                     model=r.Artifact("s3://b/m.zip", unarchive="ZIP"),
                                     runtime=r.Artifact("s3://b/r.zip", unarchive="ZIP"))]

    def config(**given):
        return r.inference_recipe(component_name="c", platforms=platforms, configuration=given)[
            "ComponentConfiguration"]["DefaultConfiguration"]

    assert (config()["signingPublicKey"], config()["allowUnsigned"]) == ("", True)
    pem = keys["public"].read_text()
    assert config(signingPublicKey=pem)["allowUnsigned"] is False
    with pytest.raises(r.RecipeError, match="^inference configuration signingPublicKey: the "
                                            "signing public key is not valid base64; got "
                                            "'not a key'$"):
        config(signingPublicKey="not a key")
    with pytest.raises(r.RecipeError, match="allowUnsigned is false but there is no "
                                            "signingPublicKey"):
        config(allowUnsigned=False)
    with pytest.raises(r.RecipeError, match="allowUnsigned must be true or false; got 'no'"):
        config(signingPublicKey=pem, allowUnsigned="no")


def test_the_runtime_imports_and_loads_unsigned_without_awscrt(host_artifact):
    code = ("import sys; sys.modules['awscrt'] = None; "
            "from neo_edge_runtime import EdgeModel; "
            f"print(EdgeModel.load({str(host_artifact)!r}).name)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(Path(artifact.__file__).parents[1])})
    assert (done.returncode, done.stdout.strip()) == (0, "ops"), done.stderr
