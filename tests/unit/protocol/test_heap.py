"""protocol.heap: free heap pages go back to the OS where glibc is the allocator."""

import platform

import pytest

from protocol import heap


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_trim_reaches_glibc_and_gives_back_freed_heap():
    import ctypes

    assert heap._malloc_trim() is not None
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    # 64 KB blocks stay under the mmap threshold: freed, they stay in the heap until trimmed
    blocks = [libc.malloc(64 * 1024) for _ in range(2000)]
    for b in blocks:
        ctypes.memset(b, 1, 64 * 1024)
    keep = blocks[-1]  # the top block pins the heap's end: only malloc_trim can return the rest
    for b in blocks[:-1]:
        libc.free(b)
    assert heap.trim() is True
    libc.free(keep)


def test_trim_never_raises():
    assert isinstance(heap.trim(), bool)
