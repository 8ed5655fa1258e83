"""Ed25519 keys for the drill ledger and the evidence bundle: the signing key of
`ATB_SIGNING_KEY_FILE` (read once, checked before work starts, its bytes never shown) and
public keys named by the SHA-256 of their DER form, as `openssl` computes it by hand."""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backup_core.tools.errors import ConfigError, ToolchainError

KEY_ENV = "ATB_SIGNING_KEY_FILE"


def require_crypto() -> None:
    """Signatures need `cryptography` (the drill extra): one clear line (exit 3) without it."""
    if importlib.util.find_spec("cryptography") is None:
        raise ToolchainError("Ed25519 signatures need the cryptography package, which this "
                             "install lacks: pip install 'atb-backup-drills[drill]'")


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key as PEM (SubjectPublicKeyInfo); its fingerprint is the SHA-256 of
    its DER form, which `openssl pkey -pubin -outform DER | sha256sum` gives by hand."""

    pem: bytes

    @property
    def fingerprint(self) -> str:
        require_crypto()
        from cryptography.hazmat.primitives import serialization

        der = self._key().public_bytes(serialization.Encoding.DER,
                                       serialization.PublicFormat.SubjectPublicKeyInfo)
        return hashlib.sha256(der).hexdigest()

    def _key(self) -> Any:
        require_crypto()
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            key = serialization.load_pem_public_key(self.pem)
        except (ValueError, TypeError) as exc:
            raise ConfigError("not a PEM public key") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError("the public key is not an Ed25519 key")
        return key

    def verifies(self, signature: bytes, data: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature

        try:
            self._key().verify(signature, data)
        except InvalidSignature:
            return False
        return True

    @classmethod
    def read(cls, path: Path) -> PublicKey:
        try:
            key = cls(path.read_bytes())
            _ = key.fingerprint
        except OSError as exc:
            raise ConfigError(f"cannot read the public key {path}: {exc.strerror}") from exc
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        return key


@dataclass(frozen=True)
class Signer:
    """An Ed25519 private key (its bytes never leave this object: not in a log, an error or
    a record)."""

    private_pem: bytes
    public: PublicKey

    def sign(self, data: bytes) -> bytes:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key = serialization.load_pem_private_key(self.private_pem, password=None)
        assert isinstance(key, Ed25519PrivateKey)  # load_signer took only such a key
        return key.sign(data)

    def __repr__(self) -> str:
        return f"Signer(fingerprint={self.public.fingerprint})"


def load_signer(path: Path) -> Signer:
    """The Ed25519 key of `ATB_SIGNING_KEY_FILE` (PEM, PKCS#8 as `openssl genpkey -algorithm
    ed25519` writes it), checked before any work starts (exit 2 when it is not one)."""
    require_crypto()
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{KEY_ENV}: cannot read {path}: {exc.strerror}") from exc
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{KEY_ENV}: {path} is not an unencrypted PEM private key "
                          "(make one with: openssl genpkey -algorithm ed25519)") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{KEY_ENV}: {path} is not an Ed25519 key (make one with: openssl "
                          "genpkey -algorithm ed25519)")
    pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return Signer(raw, PublicKey(pem))


def signer_from_env(env: Mapping[str, str]) -> Signer | None:
    path = env.get(KEY_ENV)
    return load_signer(Path(path)) if path else None
