"""protocol.proof: the versioned container, edge cases, and clean rejection of bad proofs."""

import random
import struct

import numpy as np
import pytest
import torch

from protocol.errors import ProofError
from protocol.proof import (build_proof, build_proofs, decode_header, from_b64, to_b64,
                            verify_proof)
from protocol.proof.blob import HEADER


def hidden(T, H=64, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, H, generator=g).to(dtype)


def perfect(stats):
    return all(s.exp_mismatches == 0 and s.mant_err_mean == 0 and s.sign_mismatches == 0 for s in stats)


@pytest.mark.parametrize("T", [0, 1, 2, 31, 32, 33, 64, 100])
def test_roundtrip_for_every_length(T):
    h = hidden(T)
    blob = build_proof(h)
    hd = decode_header(blob)
    assert (hd.version, hd.chunk_size, hd.topk, hd.tokens, hd.hidden_size) == (1, 32, 128, T, 64)
    assert len(blob) == 16 + 258 * (-(-T // 32))
    stats = verify_proof(h, blob)
    assert len(stats) == -(-T // 32) and perfect(stats)


def test_short_last_chunk_compares_all_its_values():
    # 33 tokens of H=64: the last chunk has 64 values < top-k 128, so k = 64 there
    stats = verify_proof(hidden(33), build_proof(hidden(33)))
    assert [s.k for s in stats] == [128, 64]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_any_float_dtype_is_cast_to_bf16_never_a_null_proof(dtype):
    h = hidden(40, dtype=dtype)
    blob = build_proof(h)
    assert blob == build_proof(h.to(torch.bfloat16))
    assert all(blob[16 + 258 * i: 18 + 258 * i] == b"\xff\xd9" for i in range(2))
    assert perfect(verify_proof(h, blob))


def test_fp32_compute_noise_passes_and_other_values_fail():
    h = hidden(64, H=128)
    blob = build_proof(h)
    noisy = h + 1e-4 * hidden(64, H=128, seed=1)
    close = verify_proof(noisy, blob)
    assert all(s.exp_mismatches <= 2 and s.mant_err_mean < 1 for s in close)
    far = verify_proof(hidden(64, H=128, seed=2), blob)
    assert all(s.exp_mismatches > 100 for s in far)
    flipped = verify_proof(-h, blob)
    assert all(s.exp_mismatches == 0 and s.sign_mismatches == 128 for s in flipped)


def test_batch_build_equals_one_at_a_time():
    hs = [hidden(T, seed=T) for T in (0, 1, 5, 32, 45, 70)]
    assert build_proofs(hs) == [build_proof(h) for h in hs]


def test_ties_break_the_same_way_for_prover_and_verifier():
    # a chunk of many equal magnitudes: the selected positions must be reproducible
    h = torch.ones(32, 64)
    h[0, :10] = 2.0
    h[5, 3] = -1.0
    blob = build_proof(h)
    assert perfect(verify_proof(h.clone(), blob))


def test_wide_chunks_search_an_injective_modulus():
    h = torch.zeros(32, 2048)
    h.view(-1)[0] = 5.0
    h.view(-1)[65497] = 3.0
    h.view(-1)[2::500] = 1.0
    blob = build_proof(h)
    assert blob[16:18] == b"\xff\xd8"
    assert perfect(verify_proof(h, blob))


def test_base64_roundtrip_and_garbage():
    blob = build_proof(hidden(3))
    assert from_b64(to_b64(blob)) == blob
    for bad in ["", "not base64!", "Zm9v\n", "Ā"]:
        with pytest.raises(ProofError):
            from_b64(bad)


def header(version=1, flags=0, chunk=32, topk=128, T=1, H=64, magic=b"TP"):
    return HEADER.pack(magic, version, flags, chunk, topk, T, H)


GOOD = build_proof(hidden(33))


@pytest.mark.parametrize("blob,message", [
    (b"", "truncated"),
    (GOOD[:10], "truncated"),
    (GOOD[:-1], "truncated"),
    (GOOD + b"\x00", "trailing"),
    (b"XX" + GOOD[2:], "magic"),
    (GOOD[:2] + b"\x02" + GOOD[3:], "version 2"),
    (GOOD[:3] + b"\x01" + GOOD[4:], "flags"),
    (header(chunk=0) + b"\x00" * 258, "chunk size"),
    (header(topk=0), "top-k"),
    (header(T=1, H=0), "out of range"),
    (header(T=2**31, H=64), "out of range"),
])
def test_malformed_containers_are_proof_errors(blob, message):
    with pytest.raises(ProofError, match=message):
        decode_header(blob)


def with_chunk(blob, i, chunk):
    off = 16 + 258 * i
    return blob[:off] + chunk + blob[off + 258:]


def test_null_and_out_of_field_chunks_are_rejected_not_crashing():
    h = hidden(33)
    null = with_chunk(GOOD, 0, b"\x00" * 258)
    with pytest.raises(ProofError, match="null"):
        verify_proof(h, null)
    with pytest.raises(ProofError, match="exceeds"):
        verify_proof(h, with_chunk(GOOD, 0, b"\xff\xff" + GOOD[18:16 + 258]))
    with pytest.raises(ProofError, match="outside"):
        verify_proof(h, GOOD[:18] + b"\xff\xff" + GOOD[20:])
    with pytest.raises(ProofError, match="modulus 65497"):  # a chunk of 2048 values needs no other
        verify_proof(h, with_chunk(GOOD, 0, b"\x00\x07" + GOOD[18:16 + 258]))
    # the last chunk has only 64 values: coefficients past 64 must be zero
    tail = bytearray(GOOD)
    tail[-1] = 1
    with pytest.raises(ProofError, match="zero coefficients"):
        verify_proof(h, bytes(tail))


def test_proof_must_match_the_completion_and_the_required_parameters():
    h = hidden(33)
    with pytest.raises(ProofError, match="covers 33 tokens"):
        verify_proof(hidden(34), GOOD)
    with pytest.raises(ProofError, match="size 64"):
        verify_proof(hidden(33, H=32), GOOD)
    weak = build_proof(h, topk=4)
    with pytest.raises(ProofError, match="requires 32 and 128"):
        verify_proof(h, weak)
    assert perfect(verify_proof(h, weak, topk=4))
    with pytest.raises(ProofError):
        verify_proof(torch.zeros(33, 64, dtype=torch.int32), GOOD)
    with pytest.raises(ProofError):
        verify_proof(torch.zeros(33), GOOD)


def test_fuzzed_proofs_only_ever_raise_proof_error():
    rng = random.Random(0)
    h = hidden(40)
    good = build_proof(h)
    outcomes = {"error": 0, "stats": 0}
    for _ in range(300):
        b = bytearray(good)
        op = rng.randrange(4)
        if op == 0:
            for _ in range(rng.randrange(1, 8)):
                b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 1:
            b = b[: rng.randrange(len(b))]
        elif op == 2:
            b = bytearray(rng.randbytes(rng.randrange(0, 600)))
        else:
            b[rng.randrange(16, len(b))] ^= 1 << rng.randrange(8)
        try:
            stats = verify_proof(h, bytes(b))
            outcomes["stats"] += 1
            assert all(isinstance(s.exp_mismatches, int) for s in stats)
        except ProofError:
            outcomes["error"] += 1
    assert outcomes["error"] > 0 and outcomes["stats"] > 0


def test_a_flipped_coefficient_bit_is_detected():
    h = hidden(32, H=128)
    good = bytearray(build_proof(h))
    good[100] ^= 0x01  # one coefficient changes -> the polynomial changes everywhere
    stats = verify_proof(h, bytes(good))
    assert stats[0].exp_mismatches > 100


def test_header_struct_is_sixteen_bytes_big_endian():
    assert HEADER.size == 16
    blob = build_proof(hidden(5, H=64))
    assert struct.unpack(">2sBBHHII", blob[:16]) == (b"TP", 1, 0, 32, 128, 5, 64)
    assert np.frombuffer(blob[16:18], dtype=">u2")[0] == 65497


def test_numpy_bf16_rounding_equals_torch_cast():
    from protocol.proof.toploc import bf16_bits

    g = torch.Generator().manual_seed(3)
    wide = torch.randn(200, 256, generator=g) * torch.exp(torch.randn(200, 256, generator=g) * 8)
    halfway = torch.from_numpy(((np.arange(0, 2**16, 7, dtype=np.uint32) << 16) | 0x8000).view(np.float32).copy())
    halfway = halfway[torch.isfinite(halfway)]
    edge = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), 3.4e38, 1e-40, -1e-45, 65504.0])
    for t in (wide, halfway[None], edge[None], wide.to(torch.float16), wide.double()):
        expected = t.to(torch.bfloat16).view(torch.int16).numpy().astype(np.int64) & 0xFFFF
        assert np.array_equal(bf16_bits(t), expected)
    nan = bf16_bits(torch.tensor([[float("nan")]]))[0, 0]
    assert (nan >> 7) & 0xFF == 0xFF and nan & 0x7F


@pytest.mark.parametrize("k", [1, 2, 5, 37, 100, 128, 256, 511, 512, 513, 1024])
def test_interpolation_reproduces_its_points(k):
    from protocol.proof import gf

    rng = np.random.default_rng(k)
    x = np.stack([rng.choice(gf.P, k, replace=False) for _ in range(6)])
    y = rng.integers(0, 65536, (6, k))
    x[0] = np.arange(1, k + 1)  # factors (z - x) close to P: the largest intermediate values
    y[0] = gf.P - 1
    coeffs = gf.interpolate(x, y)
    assert coeffs.shape == (6, k) and coeffs.max() < gf.P
    assert np.array_equal(gf.evaluate(coeffs, x), y % gf.P)


@pytest.mark.parametrize("n", [1, 64, 300, 512, 513, 700])
def test_convolution_is_exact_on_both_paths(n):
    """gf.convolve rounds a float64 FFT up to FFT_MAX_LEN terms and slides windows past it;
    both must give the exact residues, worst case (every coefficient P-1) included."""
    from protocol.proof import gf

    rng = np.random.default_rng(n)
    a = rng.integers(0, gf.P, (3, n))
    b = rng.integers(0, gf.P, (3, n // 2 + 1))
    a[0], b[0] = gf.P - 1, gf.P - 1
    exact = [[sum(int(a[r, i]) * int(b[r, t - i]) for i in range(max(0, t - b.shape[1] + 1), min(t, n - 1) + 1)) % gf.P
              for t in range(n + b.shape[1] - 1)] for r in range(3)]
    assert gf.convolve(a.astype(float), b.astype(float)).astype(np.int64).tolist() == exact


@pytest.mark.parametrize("L", [1, 2, 9, 17, 18])
def test_equal_length_products_are_exact_on_the_direct_and_fft_paths(L):
    """Equal operands up to gf.DIRECT_MAX_LEN are multiplied by sliding windows, longer by FFT."""
    from protocol.proof import gf

    rng = np.random.default_rng(L)
    a, b = rng.integers(0, gf.P, (2, 4, L))
    a[0], b[0] = gf.P - 1, gf.P - 1
    exact = [[sum(int(a[r, i]) * int(b[r, t - i]) for i in range(max(0, t - L + 1), min(t, L - 1) + 1)) % gf.P
              for t in range(2 * L - 1)] for r in range(4)]
    assert gf.convolve(a.astype(float), b.astype(float)).astype(np.int64).tolist() == exact


@pytest.mark.parametrize("n", [1, 7, 128, 129])
def test_power_table_rows_are_the_powers_of_their_points(n):
    """_bases reads x**r and (x**b)**a from a cached table sized to the largest point; the rows
    must be the powers themselves, for small points and for points near P."""
    from protocol.proof import gf

    x = np.array([[0, 1, 2, 4095], [4096, 30000, gf.P - 2, gf.P - 1]])
    baby, giant, b, g = gf._bases(x, n)
    for (r, c), xv in np.ndenumerate(x):
        assert baby[r, c].astype(np.int64).tolist() == [pow(int(xv), e, gf.P) for e in range(b)]
        assert giant[r, c].astype(np.int64).tolist() == [pow(int(xv), b * e, gf.P) for e in range(g)]
    assert b * g >= n


def test_the_layout_numbers_are_the_codecs_and_need_no_torch():
    """protocol.proof owns 32 / 128 / 258: the size bounds are those of real proofs, and the
    wire types and the coordinator's intake import them without importing torch."""
    import subprocess
    import sys

    from protocol.proof import CHUNK_BYTES, DEFAULT_CHUNK_SIZE, DEFAULT_TOPK, proof_size_bounds

    for T in (1, 32, 33, 100):
        lo, hi = proof_size_bounds(T)
        assert lo <= len(build_proof(hidden(T))) <= hi
    assert (DEFAULT_CHUNK_SIZE, DEFAULT_TOPK, CHUNK_BYTES) == (32, 128, 258) and HEADER.size + CHUNK_BYTES == 274
    code = ("import sys, protocol.messages, protocol.proof, coordinator.rules.intake, coordinator.admission; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
