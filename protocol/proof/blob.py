"""The versioned proof container that travels in `Completion.proof` (base64).

Collaborators: `toploc.py` makes and checks the chunks; `protocol.proof` (the package) is
the public surface that workers and the verifier call.

Layout version 1, big-endian, 16-byte header then the TOPLOC chunks unchanged:

    offset  size  field
    0       2     magic b"TP"
    2       1     layout version (1)
    3       1     flags (0; reserved)
    4       2     chunk size (tokens per chunk, 32)
    6       2     top-k (128)
    8       4     T, the number of completion tokens covered
    12      4     H, the hidden size
    16      ...   ceil(T / chunk size) chunks of 2 + 2 * top-k bytes ([modulus][coefficients])

Invariants: the blob length is exactly what the header implies; decoding never trusts a
length before checking it against the bytes present; every failure is a ProofError with
one clear line. A later layout gets a new version number; version-1 readers refuse it.
"""

from __future__ import annotations

import base64
import binascii
import struct
from dataclasses import dataclass

from protocol.errors import ProofError

MAGIC = b"TP"
LAYOUT_VERSION = 1
HEADER = struct.Struct(">2sBBHHII")
MAX_CHUNK_SIZE = 4096
MAX_TOPK = 4096
MAX_TOKENS = 1 << 20
MAX_HIDDEN = 1 << 20


@dataclass(frozen=True)
class ProofHeader:
    version: int
    chunk_size: int
    topk: int
    tokens: int
    hidden_size: int

    @property
    def n_chunks(self) -> int:
        return -(-self.tokens // self.chunk_size)

    @property
    def chunk_bytes(self) -> int:
        return 2 + 2 * self.topk


def check_params(chunk_size: int, topk: int) -> None:
    if not 1 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ProofError(f"chunk size must be in [1, {MAX_CHUNK_SIZE}], got {chunk_size}")
    if not 1 <= topk <= MAX_TOPK:
        raise ProofError(f"top-k must be in [1, {MAX_TOPK}], got {topk}")


def encode(header: ProofHeader, chunks: list[bytes]) -> bytes:
    check_params(header.chunk_size, header.topk)
    if len(chunks) != header.n_chunks or any(len(c) != header.chunk_bytes for c in chunks):
        raise ProofError("chunk count or size does not match the proof header")
    head = HEADER.pack(MAGIC, header.version, 0, header.chunk_size, header.topk, header.tokens,
                       header.hidden_size)
    return head + b"".join(chunks)


def decode(blob: bytes) -> tuple[ProofHeader, list[bytes]]:
    """Header and chunks of a proof blob; ProofError unless it is exactly well formed."""
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ProofError("a proof must be bytes")
    blob = bytes(blob)
    if len(blob) < HEADER.size:
        raise ProofError(f"proof truncated: {len(blob)} bytes, the header alone is {HEADER.size}")
    magic, version, flags, chunk_size, topk, tokens, hidden = HEADER.unpack_from(blob)
    if magic != MAGIC:
        raise ProofError("not a swarmrl activation proof (bad magic)")
    if version != LAYOUT_VERSION:
        raise ProofError(f"proof layout version {version} is not supported (this build reads {LAYOUT_VERSION})")
    if flags != 0:
        raise ProofError(f"proof flags {flags:#x} are not defined in layout version {LAYOUT_VERSION}")
    check_params(chunk_size, topk)
    if tokens > MAX_TOKENS or hidden > MAX_HIDDEN or (tokens and hidden == 0):
        raise ProofError(f"proof header out of range (T={tokens}, H={hidden})")
    header = ProofHeader(version, chunk_size, topk, tokens, hidden)
    expected = HEADER.size + header.n_chunks * header.chunk_bytes
    if len(blob) != expected:
        what = "truncated" if len(blob) < expected else "has trailing bytes"
        raise ProofError(f"proof {what}: {len(blob)} bytes, the header implies {expected}")
    cb = header.chunk_bytes
    chunks = [blob[HEADER.size + i * cb : HEADER.size + (i + 1) * cb] for i in range(header.n_chunks)]
    return header, chunks


def to_b64(blob: bytes) -> str:
    return base64.b64encode(blob).decode("ascii")


def from_b64(text: str) -> bytes:
    """Decode the base64 of `Completion.proof`; ProofError for anything that is not strict base64."""
    if not isinstance(text, str) or not text:
        raise ProofError("empty or missing proof")
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError) as exc:
        raise ProofError(f"proof is not valid base64: {exc}") from None
