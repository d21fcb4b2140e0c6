"""Ed25519 identities: key pairs, key files and the peer id that names a party.

A party's id is derived from its public key exactly as libp2p derives a peer id for an
Ed25519 key (protobuf-encoded public key, identity multihash, base58btc; it starts with
"12D3KooW"), so the same key can speak libp2p and the id can never be chosen freely.
Public keys travel as lowercase hex of the 32 raw bytes; signatures as base64.

Key files are small JSON documents written atomically with mode 0600; a key file that
other users can read is refused, as ssh does.
"""

from __future__ import annotations

import base64
import json
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from protocol.durable import write_atomic
from protocol.errors import KeyFileError, SignatureError

_B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
KEY_FILE_FORMAT = "swarmrl-ed25519/1"
MAX_KEY_FILE_BYTES = 64 * 1024  # a key file is ~200 bytes; a larger one is read no further


def b58encode(data: bytes) -> str:
    """Base58btc (Bitcoin alphabet), as used by libp2p peer ids."""
    n = int.from_bytes(data, "big")
    out = ""
    while n:
        n, r = divmod(n, 58)
        out = _B58_ALPHABET[r] + out
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + out


def b58decode(text: str) -> bytes | None:
    """The inverse of `b58encode` (None if `text` has a character outside the alphabet)."""
    n = 0
    for ch in text:
        i = _B58_ALPHABET.find(ch)
        if i < 0:
            return None
        n = n * 58 + i
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b""
    return b"\0" * (len(text) - len(text.lstrip("1"))) + raw


# identity multihash (code 0x00, length 36) of protobuf PublicKey{Type: Ed25519 (1), Data: 32 bytes}
_ED25519_PEER_ID_PREFIX = b"\x00\x24\x08\x01\x12\x20"


def peer_id_from_public_bytes(raw: bytes) -> str:
    """The libp2p peer id of an Ed25519 public key (32 raw bytes)."""
    if len(raw) != 32:
        raise SignatureError(f"an Ed25519 public key has 32 bytes, got {len(raw)}")
    return b58encode(_ED25519_PEER_ID_PREFIX + raw)


def public_bytes_from_peer_id(peer_id: str) -> bytes | None:
    """The Ed25519 public key (32 raw bytes) a libp2p peer id names (None: not such an id)."""
    raw = b58decode(peer_id)
    if raw is None or len(raw) != len(_ED25519_PEER_ID_PREFIX) + 32:
        return None
    if not raw.startswith(_ED25519_PEER_ID_PREFIX):
        return None
    return raw[len(_ED25519_PEER_ID_PREFIX):]


@dataclass(frozen=True)
class PublicKey:
    """An Ed25519 public key, as it travels in messages (hex) and as the id derived from it."""

    raw: bytes

    @classmethod
    def from_hex(cls, text: str) -> "PublicKey":
        try:
            raw = bytes.fromhex(text)
        except (ValueError, TypeError) as exc:
            raise SignatureError("public key is not hex") from exc
        if len(raw) != 32:
            raise SignatureError(f"public key must be 32 bytes (64 hex characters), got {len(raw)}")
        return cls(raw)

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def peer_id(self) -> str:
        return peer_id_from_public_bytes(self.raw)

    def verify(self, signature_b64: str, data: bytes) -> None:
        """Raise SignatureError unless `signature_b64` is this key's signature of `data`."""
        try:
            sig = base64.b64decode(signature_b64, validate=True)
        except (ValueError, TypeError) as exc:
            raise SignatureError("signature is not valid base64") from exc
        if len(sig) != 64:
            raise SignatureError(f"an Ed25519 signature has 64 bytes, got {len(sig)}")
        try:
            Ed25519PublicKey.from_public_bytes(self.raw).verify(sig, data)
        except InvalidSignature as exc:
            raise SignatureError("signature does not match the message and key") from exc


class KeyPair:
    """An Ed25519 private key with its public half."""

    def __init__(self, private: Ed25519PrivateKey):
        self._private = private
        raw = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.public = PublicKey(raw)

    @classmethod
    def generate(cls) -> "KeyPair":
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> "KeyPair":
        """The key pair whose 32-byte private seed is `seed` (deterministic keys for tests)."""
        if len(seed) != 32:
            raise KeyFileError(f"an Ed25519 private seed has 32 bytes, got {len(seed)}")
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def seed(self) -> bytes:
        return self._private.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    @property
    def peer_id(self) -> str:
        return self.public.peer_id

    def sign(self, data: bytes) -> str:
        """Base64 signature of `data`."""
        return base64.b64encode(self._private.sign(data)).decode("ascii")

    # -- key files -------------------------------------------------------------------------

    def save(self, path: Path) -> None:
        """Write this key to `path` atomically with mode 0600 (parent folders are created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "format": KEY_FILE_FORMAT,
            "private_seed": self.seed.hex(),
            "public_key": self.public.hex,
            "peer_id": self.peer_id,
        }
        write_atomic(path, json.dumps(doc, indent=1) + "\n", mode=0o600)

    @classmethod
    def load(cls, path: Path) -> "KeyPair":
        path = Path(path)
        try:
            mode = path.stat().st_mode
        except FileNotFoundError as exc:
            raise KeyFileError(f"key file {path} does not exist (create one with `swarmrl keys new`)") from exc
        if not stat.S_ISREG(mode):
            raise KeyFileError(f"key file {path} is not a regular file (a folder or a device is in its place)")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"key file {path} is accessible by other users (mode {oct(mode & 0o777)}); "
                f"run `chmod 600 {path}`"
            )
        try:
            with path.open("rb") as f:
                raw = f.read(MAX_KEY_FILE_BYTES + 1)
            if len(raw) > MAX_KEY_FILE_BYTES:
                raise KeyFileError(f"key file {path} is larger than {MAX_KEY_FILE_BYTES} bytes: not a swarmrl key file")
            doc = json.loads(raw.decode("utf-8"))
            if doc.get("format") != KEY_FILE_FORMAT:
                raise KeyFileError(f"key file {path} has format {doc.get('format')!r}, expected {KEY_FILE_FORMAT!r}")
            key = cls.from_seed(bytes.fromhex(doc["private_seed"]))
        except KeyFileError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
            raise KeyFileError(f"key file {path} is not a valid swarmrl key file: {str(exc)[:200]}") from exc
        except OSError as exc:
            raise KeyFileError(f"key file {path} cannot be read: {exc}") from exc
        if doc.get("public_key") not in (None, key.public.hex):
            raise KeyFileError(f"key file {path}: public key does not match the private seed")
        return key

    @classmethod
    def load_or_create(cls, path: Path) -> "KeyPair":
        """Load the key at `path`, or create and save a new one if the file does not exist."""
        path = Path(path)
        if path.exists():
            return cls.load(path)
        key = cls.generate()
        key.save(path)
        return key
