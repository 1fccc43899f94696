"""Artifact signing, build side: sign an artifact's manifest with a key file or AWS KMS.

An artifact's ``manifest.json`` lists the sha256 of every file, so one signature over the
manifest's bytes vouches for all of it. :func:`sign_artifact` writes that signature,
``manifest.json.sig``: ECDSA with NIST P-256 and SHA-256, DER-encoded, detached. The
device checks it before it loads anything (``EdgeModel.load(..., public_key=...)``,
:mod:`neo_edge_runtime.signature`), and so can anyone with standard tools::

    openssl dgst -sha256 -verify public.pem -signature manifest.json.sig manifest.json

Why this format and not a Sigstore bundle (OpenSSF ``model-signing``): see
:mod:`neo_edge_runtime.signature`. In short, that verifier would put ``sigstore`` and its
dependencies on devices that run Python 3.8 to 3.12 and install a few pinned wheels, and it
cannot sign with a KMS key; this format needs nothing on the device beyond ``awscrt``,
which it has, and KMS returns it as it is.

Signers (anything with ``public_key_der()`` and ``sign_digest(digest)``):

- :class:`FileSigner`: a PEM private key file (``neo-edge keygen`` writes one; ``openssl
  ecparam -name prime256v1 -genkey`` too), for local mode and laptops;
- :class:`KmsSigner`: an AWS KMS asymmetric key (``KeySpec`` ``ECC_NIST_P256``,
  ``KeyUsage`` ``SIGN_VERIFY``; ``neo_edge.ArtifactSigningKey`` creates one): the private
  key never leaves KMS. It sends KMS the manifest's SHA-256 digest
  (``MessageType=DIGEST``: KMS ``Sign`` takes at most 4096 bytes of message, and a manifest
  with labels may be larger) with ``SigningAlgorithm=ECDSA_SHA_256``; KMS returns the DER
  signature. Parameter names as in botocore's service model
  (``botocore/data/kms/2014-11-01/service-2.json``, operations ``Sign`` and
  ``GetPublicKey``).

Every signature is checked with the signer's public key before it is written, so a
signer that signs with another key than it claims (a KMS alias moved) fails here, not on
the fleet. Build-side only: needs ``cryptography`` (and ``boto3`` for KMS).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, Optional, Protocol, Union

from .. import artifact
from ..errors import NeoEdgeError, SignatureError
from ..signature import SIGNATURE, PublicKey, load_public_key

#: What ``KmsSigner`` asks of the key (KMS ``GetPublicKey``'s ``KeySpec``/``KeyUsage``).
KMS_KEY_SPEC = "ECC_NIST_P256"
KMS_KEY_USAGE = "SIGN_VERIFY"
KMS_SIGNING_ALGORITHM = "ECDSA_SHA_256"


class SigningError(NeoEdgeError, ValueError):
    """A signing key that cannot be used, or a signature that cannot be made."""


class Signer(Protocol):
    """What :func:`sign_artifact` signs with."""

    def public_key_der(self) -> bytes:
        """The DER SubjectPublicKeyInfo of the signing key (NIST P-256)."""

    def sign_digest(self, digest: bytes) -> bytes:
        """The DER ECDSA signature of a SHA-256 ``digest``."""


class FileSigner:
    """Signs with a NIST P-256 private key in a PEM file (PKCS#8 or SEC1 ``EC PRIVATE KEY``).

    Parameters
    ----------
    path:
        The PEM file.
    password:
        For an encrypted key. Default: the key is not encrypted.
    """

    def __init__(self, path: Union[str, os.PathLike], password: Optional[bytes] = None) -> None:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        self.path = Path(path)
        try:
            data = self.path.read_bytes()
        except OSError as exc:
            raise SigningError(f"signing key {str(self.path)!r} cannot be read: "
                               f"{exc.strerror or exc}") from None
        try:
            key = serialization.load_pem_private_key(data, password=password)
        except (ValueError, TypeError) as exc:
            raise SigningError(f"signing key {str(self.path)!r} is not a PEM private key: "
                               f"{exc}") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
            kind = (f"an EC {key.curve.name}" if isinstance(key, ec.EllipticCurvePrivateKey)
                    else f"a {type(key).__name__.lstrip('_')}")
            raise SigningError(f"signing key {str(self.path)!r} must be a NIST P-256 "
                               f"(prime256v1) EC private key; got {kind} key")
        self._key = key

    def public_key_der(self) -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign_digest(self, digest: bytes) -> bytes:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        return self._key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))

    def __repr__(self) -> str:
        return f"FileSigner({str(self.path)!r})"


class KmsSigner:
    """Signs with an AWS KMS asymmetric key; the private key never leaves KMS.

    Parameters
    ----------
    key_id:
        Key id, key ARN, alias name (``alias/neo-edge-signing``) or alias ARN.
    client:
        A boto3 KMS client. Default: ``boto3.client("kms")`` (credentials and region from
        the environment), made on first use.
    public_key:
        The key's public key (PEM text, base64 DER as ``ArtifactSigningKey.public_key``
        gives it, or a PEM file), against which every signature is checked. Default: asked of KMS
        (``GetPublicKey``), which also checks the key's spec and usage.

    The caller needs ``kms:Sign`` on the key (``ArtifactSigningKey.grant_sign``), and
    ``kms:GetPublicKey`` unless ``public_key`` is given.
    """

    def __init__(self, key_id: str, client: Any = None, *,
                 public_key: Optional[str] = None) -> None:
        if not isinstance(key_id, str) or not key_id.strip():
            raise SigningError(f"KMS key id must be a key id, key ARN or alias; got {key_id!r}")
        self.key_id = key_id.strip()
        self._client = client
        self._public_key: Optional[bytes] = None
        if public_key is not None:
            try:
                self._public_key = load_public_key(public_key).der
            except SignatureError as exc:
                raise SigningError(f"public_key of KMS key {self.key_id!r}: {exc}") from None

    @property
    def client(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client("kms")
        return self._client

    def _call(self, operation: str, **params: Any) -> dict:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return getattr(self.client, operation)(**params)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            raise SigningError(f"KMS {operation} with key {self.key_id!r} failed: "
                               f"{error.get('Code')}: {error.get('Message', '')}") from exc
        except BotoCoreError as exc:
            raise SigningError(f"KMS {operation} with key {self.key_id!r} failed: {exc}") from exc

    def public_key_der(self) -> bytes:
        if self._public_key is None:
            response = self._call("get_public_key", KeyId=self.key_id)
            spec = response.get("KeySpec") or response.get("CustomerMasterKeySpec")
            usage = response.get("KeyUsage")
            if spec != KMS_KEY_SPEC or usage != KMS_KEY_USAGE:
                raise SigningError(f"KMS key {self.key_id!r} must be an asymmetric "
                                   f"{KMS_KEY_SPEC} key for {KMS_KEY_USAGE}; got KeySpec "
                                   f"{spec!r}, KeyUsage {usage!r}")
            self._public_key = bytes(response["PublicKey"])
        return self._public_key

    def sign_digest(self, digest: bytes) -> bytes:
        response = self._call("sign", KeyId=self.key_id, Message=digest, MessageType="DIGEST",
                              SigningAlgorithm=KMS_SIGNING_ALGORITHM)
        return bytes(response["Signature"])

    def __repr__(self) -> str:
        return f"KmsSigner({self.key_id!r})"


def public_key_pem(signer: Signer) -> str:
    """The signer's public key as PEM text: what devices are configured with."""
    return PublicKey(signer.public_key_der()).pem


def _verify_locally(public_der: bytes, message: bytes, signature: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_der_public_key(public_der)
    try:
        key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def sign_artifact(directory: Union[str, os.PathLike], signer: Signer) -> Path:
    """Sign the artifact folder ``directory``: write ``manifest.json.sig`` and return its path.

    The artifact is verified first (every file against the manifest's sha256), since the
    signature vouches for those files; the signature, once made, is checked with the
    signer's public key, and only then written (atomically: a reader never sees half of
    one). An existing signature is replaced.

    Raises
    ------
    ArtifactError
        The folder is not a whole artifact.
    SigningError
        The signer cannot sign, or signed with a key other than its public key.
    """
    folder = Path(directory)
    artifact.verify(folder)
    data = (folder / artifact.MANIFEST).read_bytes()
    public_der = signer.public_key_der()
    PublicKey(public_der)  # a P-256 key, as devices require
    signature = signer.sign_digest(hashlib.sha256(data).digest())
    if not _verify_locally(public_der, data, signature):
        raise SigningError(f"{signer!r} made a signature that does not verify with its own "
                           f"public key (sha256 {hashlib.sha256(public_der).hexdigest()[:16]}"
                           f"...); nothing was written")
    dest = folder / SIGNATURE
    fd, tmp = tempfile.mkstemp(prefix=f".{SIGNATURE}.", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(signature)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def generate_key(path: Union[str, os.PathLike]) -> tuple[Path, Path]:
    """Write a new NIST P-256 private key to ``path`` (PEM, PKCS#8, mode 0600) and its
    public key beside it (``<stem>.pub.pem``); return both paths.

    Refuses to overwrite an existing private key.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private = Path(path)
    public = private.with_name(f"{private.name[:-4] if private.name.endswith('.pem') else private.name}.pub.pem")
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise SigningError(f"signing key {str(private)!r} exists already; not overwritten") \
            from None
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public.write_text(public_key_pem(FileSigner(private)))
    return private, public
