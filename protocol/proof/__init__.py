"""Activation proofs: a worker's cheap commitment to the hidden states it computed.

Data flow: a worker builds one proof per completion from the final hidden states of its
tokens (`build_proof`, or `build_proofs` for a batch) and sends it base64-encoded in
`Completion.proof` (`to_b64`); the verifier recomputes the hidden states with one prefill
and compares (`verify_proof`), then judges the per-chunk statistics against thresholds.

The chunks are TOPLOC 0.1.6's (byte-compatible; see `toploc.py` for the layout and where we
deliberately differ), wrapped in a versioned container (`blob.py`). Modules:

- `gf.py`      arithmetic over GF(65497), vectorised over many chunks;
- `toploc.py`  chunking, top-k selection, chunk bytes, comparison statistics;
- `blob.py`    the versioned container and its strict decoder.

Every decoding failure (null, truncated, wrong version, bad modulus, wrong size) is a
`protocol.errors.ProofError`; nothing here crashes or returns a silent null proof.

The layout's numbers are declared here and nowhere else: `DEFAULT_CHUNK_SIZE` tokens per
chunk and `DEFAULT_TOPK` values per chunk (the only layout a run accepts: TOPLOC's decode
batching, and a smaller top-k would be a weaker proof), `CHUNK_BYTES` per chunk, and the size
bounds the coordinator's intake (`proof_size_bounds`) and the wire caps (`max_proof_b64_chars`)
derive from them. Importing this package is cheap: torch is imported by the functions that
build or verify a proof (`toploc.py`), not by `import protocol.proof`, so `protocol.messages`
and the coordinator can use the constants without it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from protocol.errors import ProofError
from protocol.proof import blob as _blob
from protocol.proof.blob import LAYOUT_VERSION, ProofHeader, from_b64, to_b64

if TYPE_CHECKING:
    import torch

    from protocol.proof.toploc import ChunkStats

DEFAULT_CHUNK_SIZE = 32                 # tokens per chunk
DEFAULT_TOPK = 128                      # values per chunk
CHUNK_BYTES = 2 + 2 * DEFAULT_TOPK      # [modulus u16][top-k coefficients u16] = 258
HEADER_ROOM = 64                        # bytes the size bounds allow for the container header (16 in layout 1)

__all__ = [
    "CHUNK_BYTES", "DEFAULT_CHUNK_SIZE", "DEFAULT_TOPK", "HEADER_ROOM", "LAYOUT_VERSION", "ChunkStats", "ProofError",
    "ProofHeader", "build_proof", "build_proofs", "verify_proof", "decode_header", "to_b64", "from_b64",
    "proof_size_bounds", "max_proof_b64_chars",
]


def proof_size_bounds(n_tokens: int) -> tuple[int, int]:
    """(min, max) decoded bytes of a proof for a completion of `n_tokens` tokens."""
    chunks = -(-n_tokens // DEFAULT_CHUNK_SIZE)
    return chunks * CHUNK_BYTES, chunks * CHUNK_BYTES + HEADER_ROOM


def max_proof_b64_chars(max_tokens: int) -> int:
    """Base64 characters of the largest proof of a completion of up to `max_tokens` tokens."""
    return 4 * ((max_tokens // DEFAULT_CHUNK_SIZE + 1) * CHUNK_BYTES + HEADER_ROOM) // 3 + 8


def __getattr__(name: str) -> Any:
    if name == "ChunkStats":  # lives with the torch code; imported when asked for
        from protocol.proof.toploc import ChunkStats

        return ChunkStats
    raise AttributeError(f"module 'protocol.proof' has no attribute {name!r}")


def build_proofs(hiddens: list[torch.Tensor], *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 topk: int = DEFAULT_TOPK) -> list[bytes]:
    """One proof blob per (T, H) hidden-state tensor (any float dtype; cast to bf16). All
    chunks of the batch are interpolated together, so a group costs about one call."""
    from protocol.proof.toploc import bf16_bits, build_chunk_lists

    _blob.check_params(chunk_size, topk)
    bits = [bf16_bits(h) for h in hiddens]
    chunk_lists = build_chunk_lists(bits, chunk_size, topk)
    return [
        _blob.encode(ProofHeader(LAYOUT_VERSION, chunk_size, topk, b.shape[0], b.shape[1]), chunks)
        for b, chunks in zip(bits, chunk_lists)
    ]


def build_proof(hidden: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                topk: int = DEFAULT_TOPK) -> bytes:
    """The proof blob of one completion's (T, H) final hidden states."""
    return build_proofs([hidden], chunk_size=chunk_size, topk=topk)[0]


def decode_header(proof: bytes) -> ProofHeader:
    """The header of a proof blob after a full structural check (ProofError if malformed)."""
    return _blob.decode(proof)[0]


def verify_proof(hidden: torch.Tensor, proof: bytes, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 topk: int = DEFAULT_TOPK, boundary_ulps: int = 0) -> list[ChunkStats]:
    """Per-chunk statistics of the verifier's (T, H) hidden states against a proof blob.

    The proof must use the expected chunk size and top-k (a prover may not weaken its own
    proof) and cover exactly T tokens of hidden size H; otherwise ProofError."""
    from protocol.proof.toploc import bf16_bits, verify_chunk_list

    header, chunks = _blob.decode(proof)
    if (header.chunk_size, header.topk) != (chunk_size, topk):
        raise ProofError(f"proof uses chunk size {header.chunk_size} and top-k {header.topk}; "
                         f"this verifier requires {chunk_size} and {topk}")
    bits = bf16_bits(hidden)
    if (header.tokens, header.hidden_size) != bits.shape:
        raise ProofError(f"proof covers {header.tokens} tokens of hidden size {header.hidden_size}, "
                         f"the completion has {bits.shape[0]} of size {bits.shape[1]}")
    return verify_chunk_list(bits, chunks, chunk_size, topk, boundary_ulps=boundary_ulps)
