"""Give freed heap memory back to the OS during long CPU loops (glibc only).

A CPU worker decoding a batch allocates one step's logits and sampling temporaries (batch x
vocabulary floats, ~10 MB each at a 152k vocabulary) next to a KV cache that grows every step.
glibc's dynamic mmap threshold then serves those large blocks from the heap, and the growing
cache allocations between them keep the freed blocks from being reused or trimmed: measured on
the 30M / 151,936-vocabulary model (bench/memory.py --sections worker), resident memory grew
~7.6 MB per decoding step (16 x 160 tokens: 1.21 GB above the weights) though nothing was
held. `malloc_trim(0)` returns every free page of every arena to the OS; called every few steps
it bounds that growth. Fixing the mmap threshold (mallopt) bounds it too but costs a page-fault
storm per step (2x the CPU time, measured), so this module trims instead.

No effect (and no error) where glibc is absent (macOS, musl) or on GPU-resident loops, where
torch's caching allocator owns the memory.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["trim"]


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        fn = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def trim() -> bool:
    """Return free heap pages to the OS; True if glibc did (or could) do it."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
