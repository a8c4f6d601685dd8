"""Sealed messages from a client to one aggregator: X25519 key agreement, HKDF-SHA256, AES-256-GCM, all
from ``cryptography`` (the shape of HPKE's base mode). The associated data binds a ciphertext to its run,
round, user and aggregator, so a replayed or redirected message fails to open.

Layout: ephemeral public key (32) | nonce (12) | ciphertext with tag (len(plaintext) + 16).
"""
from __future__ import annotations

import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

OVERHEAD = 32 + 12 + 16
_INFO = b"fedrec secure aggregation v1"


class OpenError(ValueError):
    """A sealed message that does not verify (tampered, replayed, or for another recipient)."""


def new_private_key() -> X25519PrivateKey:
    return X25519PrivateKey.generate()


def public_bytes(key: X25519PrivateKey | X25519PublicKey) -> bytes:
    pub = key.public_key() if isinstance(key, X25519PrivateKey) else key
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def load_private(raw: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(raw)


def _key(shared: bytes, eph: bytes, recipient: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=eph + recipient, info=_INFO).derive(shared)


def seal(recipient_public: bytes, plaintext: bytes, aad: bytes) -> bytes:
    """Encrypt ``plaintext`` to the holder of ``recipient_public`` (32 raw bytes)."""
    eph = X25519PrivateKey.generate()
    eph_pub = public_bytes(eph)
    k = _key(eph.exchange(X25519PublicKey.from_public_bytes(recipient_public)), eph_pub, recipient_public)
    nonce = os.urandom(12)
    return eph_pub + nonce + AESGCM(k).encrypt(nonce, plaintext, aad)


def open_sealed(private: X25519PrivateKey, sealed: bytes, aad: bytes) -> bytes:
    """Decrypt a ``seal`` output; OpenError if it does not verify."""
    if len(sealed) < OVERHEAD:
        raise OpenError("sealed message too short")
    eph_pub, nonce, ct = sealed[:32], sealed[32:44], sealed[44:]
    try:
        k = _key(private.exchange(X25519PublicKey.from_public_bytes(eph_pub)), eph_pub, public_bytes(private))
        return AESGCM(k).decrypt(nonce, ct, aad)
    except (InvalidTag, ValueError) as e:
        raise OpenError("sealed message does not verify (tampered, replayed or not for this aggregator)") from e
