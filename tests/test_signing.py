"""Signed variants (zoo.signing, OpenSSF model-signing): signed at push with an elliptic-curve key, the card
naming the key; verified at load when keys are trusted: tampering, another key, an unsigned repo where
signatures are required are refused with one typed line; nothing is verified without trusted keys."""
from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from huggingface_hub import ModelCard

import zoo
from tiny_zoo import BASE, one_torch_thread, store_env, store_with_base
from zoo.cli import main
from zoo.errors import InvalidArgumentError, SignatureError
from zoo.hub import LocalHub
from zoo.model_cards import validate_card
from zoo.signing import SIGNATURE_FILE, SigningPolicy, key_fingerprint
from zoo.store import Store

OS50 = f"{BASE}_os50"


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> Store:
    store = store_with_base(tmp_path_factory, tmp_path_factory.mktemp("signing"))
    zoo.load(BASE, sparsity=0.5, method="oneshot", store=store, progress=False)
    return store


def write_key(folder: Path, name: str, key=None) -> tuple[Path, Path]:
    """(private key, public key) PEM files of a new P-256 key (or of `key`)."""
    key = key or ec.generate_private_key(ec.SECP256R1())
    private, public = folder / f"{name}.pem", folder / f"{name}.pub.pem"
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                     serialization.PublicFormat.SubjectPublicKeyInfo))
    return private, public


def with_policy(store: Store, *keys: Path, required: bool = False) -> Store:
    return dataclasses.replace(store, signing=SigningPolicy(keys, required))


def test_a_signed_push_names_its_key_and_verifies_at_load(made: Store, tmp_path: Path) -> None:
    private, public = write_key(tmp_path, "team")
    store = dataclasses.replace(made, hub=LocalHub(tmp_path / "hub"))
    pushed = zoo.push(OS50, "acme/r18-signed", sign_key=private, store=store)
    snapshot = store.hub.snapshot("acme/r18-signed")
    assert (snapshot / SIGNATURE_FILE).is_file()
    card = ModelCard.load(snapshot / "README.md")
    fingerprint = key_fingerprint(public.read_bytes())
    assert fingerprint == key_fingerprint(private.read_bytes()) and f"`{fingerprint}`" in str(card)
    validate_card(card)

    model = zoo.load("acme/r18-signed", store=with_policy(store, public), progress=False)
    assert model.zoo.signed_by == fingerprint and model.zoo.source == "hf-hub"
    assert zoo.load("acme/r18-signed", store=store, progress=False).zoo.signed_by is None  # no trusted keys: unchecked
    other_private, other_public = write_key(tmp_path, "other")
    two = zoo.load("acme/r18-signed", store=with_policy(store, other_public, public), progress=False)
    assert two.zoo.signed_by == fingerprint  # any trusted key will do
    with pytest.raises(SignatureError, match="does not verify with any trusted key"):
        zoo.load("acme/r18-signed", store=with_policy(store, other_public), progress=False)
    assert pushed.revision in store.hub.revisions("acme/r18-signed")


def test_a_tampered_file_or_an_added_one_is_refused(made: Store, tmp_path: Path) -> None:
    private, public = write_key(tmp_path, "team")
    store = dataclasses.replace(made, hub=LocalHub(tmp_path / "hub"))
    zoo.push(OS50, "acme/r18-signed", sign_key=private, store=store)
    report = store.hub.snapshot("acme/r18-signed") / "report.json"
    blob = report.resolve()
    original = blob.read_bytes()
    blob.write_bytes(original.replace(b'"top1": 0.', b'"top1": 1.'))  # a claim of better accuracy
    trusting = with_policy(store, public)
    with pytest.raises(SignatureError, match="report.json"):
        zoo.load("acme/r18-signed", store=trusting, progress=False)
    blob.write_bytes(original)
    extra = store.hub.snapshot("acme/r18-signed") / "extra.py"
    extra.write_text("print('hi')\n")
    with pytest.raises(SignatureError, match="extra.py"):
        zoo.load("acme/r18-signed", store=trusting, progress=False)
    extra.unlink()
    restored = zoo.load("acme/r18-signed", store=trusting, progress=False)
    assert restored.zoo.signed_by == key_fingerprint(public.read_bytes())


def test_unsigned_repos_load_unless_signatures_are_required(made: Store, tmp_path: Path) -> None:
    _, public = write_key(tmp_path, "team")
    store = dataclasses.replace(made, hub=LocalHub(tmp_path / "hub"))
    zoo.push(OS50, "acme/r18-plain", store=store)
    assert zoo.load("acme/r18-plain", store=with_policy(store, public), progress=False).zoo.signed_by is None
    with pytest.raises(SignatureError, match="not signed, and signatures are required"):
        zoo.load("acme/r18-plain", store=with_policy(store, public, required=True), progress=False)
    zoo.push(OS50, store=store)  # the registry's own repo name, zoo/<variant>: verified the same way
    with pytest.raises(SignatureError, match="not signed"):
        zoo.load(OS50, store=with_policy(store, public, required=True), progress=False)


def test_policy_and_key_errors_are_typed(tmp_path: Path, made: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InvalidArgumentError, match="no trusted key"):
        SigningPolicy((), required=True)
    with pytest.raises(InvalidArgumentError, match="not found"):
        SigningPolicy((tmp_path / "missing.pem",))
    monkeypatch.setenv("ZOO_REQUIRE_SIGNATURES", "maybe")
    with pytest.raises(InvalidArgumentError, match="ZOO_REQUIRE_SIGNATURES"):
        SigningPolicy.from_env()
    rsa_private, _ = write_key(tmp_path, "rsa", rsa.generate_private_key(public_exponent=65537, key_size=2048))
    store = dataclasses.replace(made, hub=LocalHub(tmp_path / "hub"))
    with pytest.raises(InvalidArgumentError, match="elliptic-curve"):
        zoo.push(OS50, "acme/r18-rsa", sign_key=rsa_private, store=store)
    with pytest.raises(InvalidArgumentError, match="not found"):
        zoo.push(OS50, "acme/r18-rsa", sign_key=tmp_path / "nope.pem", store=store)
    assert store.hub.list_repos() == []


def test_the_cli_signs_and_a_refusal_is_one_line(made: Store, tmp_path: Path) -> None:
    private, public = write_key(tmp_path, "team")
    _, other = write_key(tmp_path, "other")
    env = {**store_env(made), "ZOO_HUB": str(tmp_path / "hub")}
    runner = CliRunner()
    pushed = runner.invoke(main, ["push", OS50, "--repo-id", "acme/r18-cli", "--sign-key", str(private)], env=env)
    assert pushed.exit_code == 0, pushed.output
    ok = runner.invoke(main, ["evaluate", "acme/r18-cli"], env={**env, "ZOO_TRUSTED_KEYS": str(public)})
    assert ok.exit_code == 0, ok.output
    refused = runner.invoke(main, ["evaluate", "acme/r18-cli"], env={**env, "ZOO_TRUSTED_KEYS": str(other)})
    assert refused.exit_code != 0 and "Traceback" not in refused.output
    (line,) = [line for line in refused.stderr.splitlines() if line.strip()]
    assert line.startswith("Error: SignatureError: ") and "does not verify" in line
