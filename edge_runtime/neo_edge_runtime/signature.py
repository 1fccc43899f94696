"""Artifact signatures, device side: check that an artifact was signed by the key we trust.

The sha256 of every file is in ``manifest.json`` (:mod:`.artifact`), so a signature over
the manifest's bytes vouches for the whole artifact: integrity (the files match the
manifest) plus authenticity (the manifest is the one the holder of the private key
signed). Without it, anyone who can write the artifact can rewrite the manifest with new
hashes and a library of their own loads.

The format
----------
``manifest.json.sig`` beside ``manifest.json``: an ECDSA signature over the exact bytes of
``manifest.json`` with NIST P-256 and SHA-256, DER-encoded (``ECDSA-Sig-Value``, RFC 3279).
That is what ``openssl dgst -sha256 -sign`` writes and what AWS KMS ``Sign`` returns for an
``ECC_NIST_P256`` key with ``ECDSA_SHA_256``, so anyone can check an artifact with standard
tools::

    openssl dgst -sha256 -verify public.pem -signature manifest.json.sig manifest.json

The public key is a SubjectPublicKeyInfo (``-----BEGIN PUBLIC KEY-----`` PEM), or the base64
of its DER, which is what ``aws kms get-public-key --query PublicKey --output text`` prints.
Its fingerprint, in messages, is the sha256 of that DER.

Why not a Sigstore bundle (OpenSSF ``model-signing``)? It is the state of the art for
model files, but its verifier needs ``model-signing`` and ``sigstore`` (cryptography, TUF,
pydantic, protobuf models, ...) on the device, on Python 3.10 or newer, where our devices
run 3.8 to 3.12 and install only a few pinned wheels; and it signs with a local key, a
certificate, PKCS#11 or Sigstore's keyless flow, not with a KMS key. A detached signature
over our manifest (which already lists every file's sha256, as model-signing's in-toto
statement does) needs nothing new on the device and is checked by ``openssl``.

What verifies it
----------------
``awscrt`` (``awscrt.crypto.EC``, from aws-lc): already a device requirement (the
Greengrass IPC client ``awsiotsdk`` is built on it), with wheels for every device Python
and architecture, so verifying adds no dependency. It is imported only when a signature is
checked: the runtime imports and loads unsigned artifacts without it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
from pathlib import Path
from typing import Optional, Union

from .errors import SignatureError

#: The detached signature's file name, beside ``manifest.json``.
SIGNATURE = "manifest.json.sig"
#: The manifest's file name (as :data:`neo_edge_runtime.artifact.MANIFEST`).
MANIFEST = "manifest.json"
#: The longest DER ECDSA P-256 signature (two 33-byte integers and their headers).
MAX_SIGNATURE_BYTES = 72
#: The largest manifest read for verification (a manifest is a few KiB).
MAX_MANIFEST_BYTES = 16 << 20

# SubjectPublicKeyInfo of an uncompressed NIST P-256 point: SEQUENCE { SEQUENCE {
# id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) } then 0x04 || X || Y.
_P256_SPKI_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
_P256_SPKI_LENGTH = len(_P256_SPKI_PREFIX) + 65
_PEM = re.compile(r"-----BEGIN PUBLIC KEY-----(.*?)-----END PUBLIC KEY-----", re.S)
_BASE64 = re.compile(r"^[A-Za-z0-9+/=\s]+$")

#: What a public key may be given as (see :func:`load_public_key`).
PublicKeyLike = Union["PublicKey", str, bytes, os.PathLike]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class PublicKey:
    """A NIST P-256 public key that artifact signatures are checked with.

    Use :func:`load_public_key` (PEM text, base64 DER or a PEM file) or
    :meth:`from_der`.
    """

    def __init__(self, der: bytes) -> None:
        if len(der) != _P256_SPKI_LENGTH or not der.startswith(_P256_SPKI_PREFIX) \
                or der[len(_P256_SPKI_PREFIX)] != 0x04:
            raise SignatureError(
                "the signing public key must be a NIST P-256 (prime256v1, KMS ECC_NIST_P256) "
                "SubjectPublicKeyInfo with an uncompressed point; got "
                f"{len(der)} bytes starting {der[:8].hex() or 'nothing'}...")
        self.der = bytes(der)

    @classmethod
    def from_der(cls, der: bytes) -> "PublicKey":
        return cls(der)

    @property
    def fingerprint(self) -> str:
        """sha256 of the DER SubjectPublicKeyInfo, in hex (``openssl pkey -pubin -in
        public.pem -outform DER | sha256sum``)."""
        return hashlib.sha256(self.der).hexdigest()

    @property
    def pem(self) -> str:
        body = base64.b64encode(self.der).decode()
        lines = [body[i:i + 64] for i in range(0, len(body), 64)]
        return "-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n"

    def verify(self, message: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (DER ECDSA) is this key's signature of sha256(``message``)."""
        if not 8 <= len(signature) <= MAX_SIGNATURE_BYTES:
            return False
        try:
            from awscrt.crypto import EC
        except ImportError as exc:
            raise SignatureError(
                "verifying artifact signatures needs the awscrt package with "
                "awscrt.crypto.EC (0.32.1 or newer; a device requirement of the neo-edge "
                f"bundle: pip install awscrt==0.32.1); {exc}") from None
        try:
            key = EC.new_key_from_der_data(self.der)
            return bool(key.verify(hashlib.sha256(message).digest(), signature))
        except (RuntimeError, ValueError):  # malformed DER: not a signature of ours
            return False

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicKey) and other.der == self.der

    def __hash__(self) -> int:
        return hash(self.der)

    def __repr__(self) -> str:
        return f"PublicKey(P-256, sha256 {self.fingerprint[:16]})"


def parse_public_key(text: str) -> PublicKey:
    """A key from PEM text (``-----BEGIN PUBLIC KEY-----``) or the base64 of its DER.

    Pure Python: the recipe builder and the constructs check configured keys with it.
    """
    if not isinstance(text, str):
        raise SignatureError(f"the signing public key must be text; got {_short(text)}")
    match = _PEM.search(text)
    body = match.group(1) if match else text.strip()
    if (not match and "-----" in text) or not body.strip() or not _BASE64.match(body):
        raise SignatureError("the signing public key must be PEM text (-----BEGIN PUBLIC "
                             "KEY----- ...) or the base64 of its DER; got " + _short(text))
    try:
        der = base64.b64decode("".join(body.split()), validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"the signing public key is not valid base64; got {_short(text)}") \
            from None
    return PublicKey(der)


def load_public_key(value: PublicKeyLike) -> PublicKey:
    """A :class:`PublicKey` from what a user or a configuration gives.

    ``value`` is a :class:`PublicKey`; PEM text or the base64 of the DER
    SubjectPublicKeyInfo (``str`` or ``bytes``); or the path of a PEM file
    (``os.PathLike``, or a ``str`` that is neither of the above).
    """
    if isinstance(value, PublicKey):
        return value
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise SignatureError("the signing public key must be PEM text or base64 (ASCII); "
                                 f"got {_short(bytes(value))}") from None
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("-----") or (len(text) >= 100 and _BASE64.match(text)):
            return parse_public_key(text)
        value = Path(value)
    if isinstance(value, os.PathLike):
        path = Path(value)
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SignatureError(f"the signing public key must be PEM text, base64 DER or a "
                                 f"PEM file; cannot read {str(path)!r}: "
                                 f"{getattr(exc, 'strerror', None) or exc}") from None
        try:
            return parse_public_key(text)
        except SignatureError as exc:
            raise SignatureError(f"{str(path)!r}: {exc}") from None
    raise SignatureError(f"the signing public key must be PEM text, base64 DER, a PEM file "
                         f"path or a PublicKey; got {_short(value)}")


def read_verified_manifest(folder: Union[str, os.PathLike], public_key: Optional[PublicKey], *,
                           allow_unsigned: bool = False) -> bytes:
    """The bytes of ``folder``'s ``manifest.json``, once its signature is checked.

    With ``public_key``: ``manifest.json.sig`` must be that key's signature of those very
    bytes, or :class:`SignatureError`; an artifact without the file is refused too unless
    ``allow_unsigned``. Without ``public_key``: nothing is checked. The bytes returned are
    the ones verified: parse these, never the file again.
    """
    folder = Path(folder)
    path = folder / MANIFEST
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError:
        raise SignatureError(f"{str(folder)!r} is not an artifact folder: it has no "
                             f"{MANIFEST}") from None
    except OSError as exc:
        raise SignatureError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_MANIFEST_BYTES:
        raise SignatureError(f"{path} is over {MAX_MANIFEST_BYTES} bytes: not a manifest")
    if public_key is None:
        return data
    sig_path = folder / SIGNATURE
    if not sig_path.is_file():
        if allow_unsigned:
            return data
        raise SignatureError(
            f"artifact {str(folder)!r} is not signed (it has no {SIGNATURE}) and unsigned "
            f"artifacts are refused: sign it (neo-edge sign {folder} --key KEY.pem, or "
            f"--kms-key KEY_ID), or allow unsigned artifacts explicitly (allow_unsigned, "
            f"component configuration allowUnsigned)")
    with open(sig_path, "rb") as f:
        signature = f.read(MAX_SIGNATURE_BYTES + 1)
    if not public_key.verify(data, signature):
        raise SignatureError(
            f"artifact {str(folder)!r}: {SIGNATURE} does not verify {MANIFEST} with the "
            f"configured public key (sha256 {public_key.fingerprint[:16]}...): the manifest "
            f"was changed after it was signed, or it was signed with another key")
    return data
