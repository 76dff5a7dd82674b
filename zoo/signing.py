"""Signatures of published variants, against tampering (a checksum beside the weights only catches damage).

A repo folder is signed at push with an elliptic-curve private key through OpenSSF's `model-signing`: a
sigstore bundle (`model.sig`) over the SHA-256 of every file of the folder (the card included, so what the
card says of the signer is signed too). At load, when trusted public keys are configured, a signed repo
must verify with one of them, else it is refused; an unsigned one is refused when signatures are required
and loads (`model.zoo.signed_by` None) otherwise.

The policy comes from the environment (`SigningPolicy.from_env`) or is given to `zoo.load` / `Store`:
`ZOO_TRUSTED_KEYS`, PEM public key files separated by the OS path separator; `ZOO_REQUIRE_SIGNATURES=1`
to refuse unsigned repos. A key is named by its fingerprint, `SHA256:<hex>` of its DER public key, which
is what a card and `model.zoo.signed_by` show.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from zoo.errors import InvalidArgumentError, SignatureError

SIGNATURE_FILE = "model.sig"
# Not covered by a signature: the signature itself, and the attributes file a Hub adds to every new repo.
UNSIGNED_FILES = (SIGNATURE_FILE, ".gitattributes")
TRUSTED_KEYS_VARIABLE = "ZOO_TRUSTED_KEYS"
REQUIRE_VARIABLE = "ZOO_REQUIRE_SIGNATURES"
SIGNING_CURVES = ("secp256r1", "secp384r1", "secp521r1")  # the curves model-signing's key signer takes
_TRUE, _FALSE = ("1", "true", "yes"), ("", "0", "false", "no")


@dataclass(frozen=True)
class SigningPolicy:
    """Which public keys a loaded repo may be signed by (PEM files), and whether an unsigned one is refused."""

    trusted_keys: tuple[Path, ...] = ()
    required: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.required, bool):
            raise InvalidArgumentError(f"required must be True or False, got {self.required!r}")
        keys = tuple(Path(k) for k in self.trusted_keys)
        missing = [str(k) for k in keys if not k.is_file()]
        if missing:
            raise InvalidArgumentError(f"trusted public key file(s) not found: {', '.join(missing)}")
        if self.required and not keys:
            raise InvalidArgumentError("signatures are required but no trusted key is given "
                                       f"(set {TRUSTED_KEYS_VARIABLE})")
        object.__setattr__(self, "trusted_keys", keys)

    @classmethod
    def from_env(cls) -> SigningPolicy:
        keys = tuple(Path(p).expanduser() for p in os.environ.get(TRUSTED_KEYS_VARIABLE, "").split(os.pathsep) if p)
        flag = os.environ.get(REQUIRE_VARIABLE, "").strip().lower()
        if flag not in _TRUE + _FALSE:
            raise InvalidArgumentError(f"{REQUIRE_VARIABLE} must be 1 or 0, got {flag!r}")
        return cls(keys, flag in _TRUE)

    @property
    def verifies(self) -> bool:
        return bool(self.trusted_keys)


def key_fingerprint(pem: bytes) -> str:
    """`SHA256:<hex>` of the DER SubjectPublicKeyInfo of a PEM public or private key."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_public_key(pem)
    except ValueError:
        try:
            key = serialization.load_pem_private_key(pem, password=None).public_key()
        except (ValueError, TypeError) as err:
            raise InvalidArgumentError(f"not a PEM key (or an encrypted one): {err}") from None
    return _fingerprint(key)


def _fingerprint(public_key) -> str:
    from cryptography.hazmat.primitives import serialization

    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "SHA256:" + hashlib.sha256(der).hexdigest()


def _hashing():
    from model_signing import hashing

    # the local hub's and the Hugging Face cache's snapshots are links into their blobs
    return hashing.Config().set_ignored_paths(paths=list(UNSIGNED_FILES)).set_allow_symlinks(True)


def signing_key_fingerprint(private_key: Path) -> str:
    """The fingerprint of the PEM elliptic-curve private key at `private_key` (unencrypted, on a curve
    model-signing takes); InvalidArgumentError for any other file."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    private_key = Path(private_key)
    if not private_key.is_file():
        raise InvalidArgumentError(f"signing key {private_key} not found")
    try:
        key = serialization.load_pem_private_key(private_key.read_bytes(), password=None)
    except (ValueError, TypeError) as err:
        raise InvalidArgumentError(f"{private_key} is not an unencrypted PEM private key: {err}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name not in SIGNING_CURVES:
        raise InvalidArgumentError(f"{private_key} is not an elliptic-curve key on {', '.join(SIGNING_CURVES)} "
                                   "(what model-signing signs with)")
    return _fingerprint(key.public_key())


def sign_folder(folder: Path, private_key: Path) -> str:
    """Writes `folder/model.sig`, signing every other file of `folder` with the PEM elliptic-curve key at
    `private_key` (unencrypted); returns the key's fingerprint."""
    from model_signing import signing

    fingerprint = signing_key_fingerprint(private_key)
    signer = signing.Config().use_elliptic_key_signer(private_key=Path(private_key))
    signer.set_hashing_config(_hashing()).sign(Path(folder), Path(folder) / SIGNATURE_FILE)
    return fingerprint


def verify_folder(folder: Path, policy: SigningPolicy, *, what: str) -> str | None:
    """The fingerprint of the trusted key whose signature covers every file of `folder`; None when the
    policy has no trusted keys, or the folder is unsigned and signatures are not required. SignatureError
    (naming `what`) for a signature no trusted key verifies, a file changed, added or removed since signing,
    or an unsigned folder when signatures are required."""
    if not policy.verifies:
        return None
    signature = Path(folder) / SIGNATURE_FILE
    if not signature.is_file():
        if policy.required:
            raise SignatureError(f"{what} is not signed, and signatures are required ({REQUIRE_VARIABLE})")
        return None
    from model_signing import verifying

    failures = []
    for key in policy.trusted_keys:
        try:
            verifying.Config().use_elliptic_key_verifier(public_key=key).set_hashing_config(_hashing()).verify(
                Path(folder), signature)
        except Exception as err:  # model-signing raises ValueError, JSON and protobuf errors for a bad bundle
            failures.append(f"{key.name}: {' '.join(str(err).split())[:160]}")
            continue
        return key_fingerprint(key.read_bytes())
    raise SignatureError(f"{what}: its signature does not verify with any trusted key ({'; '.join(failures)})")
