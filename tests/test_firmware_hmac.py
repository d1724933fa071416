"""The firmware's SHA-256 and HMAC-SHA-256 (firmware/src/sha256.c, hmac_sha256.c), compiled with
the host C compiler, against the published vectors (FIPS 180-2 SHA-256, RFC 4231 HMAC-SHA-256
cases 1-7) and against Python's hashlib/hmac on random keys and messages fed whole and in random
chunks to the streaming API."""

from __future__ import annotations

import ctypes
import hashlib
import hmac
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "firmware" / "src"
HARNESS = Path(__file__).with_name("hmac_harness.c")
# The firmware's own warnings and more: the code must be portable C99 with no implicit conversions.
WARN = ["-std=c99", "-pedantic", "-Wall", "-Wextra", "-Werror", "-Wshadow", "-Wconversion", "-Wsign-conversion"]
SANITIZE = ["-fsanitize=undefined", "-fno-sanitize-recover=all"]


def _cc() -> str:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("needs a host C compiler (cc)")
    return cc


@pytest.fixture(scope="module")
def lib(tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    out = tmp_path_factory.mktemp("hmac") / "libhmac.so"
    base = [_cc(), *WARN, "-O2", "-shared", "-fPIC", f"-I{SRC}", str(SRC / "sha256.c"), str(SRC / "hmac_sha256.c"),
            str(HARNESS), "-o", str(out)]
    # UBSan when this compiler has it (shifts and overflows in the rounds); plain otherwise.
    r = subprocess.run(base[:1] + SANITIZE + base[1:], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        subprocess.run(base, check=True, capture_output=True, text=True)
    c = ctypes.CDLL(str(out))
    c.sha256.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    c.sha256.restype = None
    c.hmac_sha256.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p]
    c.hmac_sha256.restype = None
    c.hmac_sha256_equal.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_size_t]
    c.hmac_sha256_equal.restype = ctypes.c_int
    sizes = ctypes.POINTER(ctypes.c_size_t)
    c.harness_sha256_chunks.argtypes = [ctypes.c_char_p, ctypes.c_size_t, sizes, ctypes.c_size_t, ctypes.c_char_p]
    c.harness_sha256_chunks.restype = None
    c.harness_hmac_chunks.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_char_p, ctypes.c_size_t, sizes,
                                      ctypes.c_size_t, ctypes.c_char_p]
    c.harness_hmac_chunks.restype = None
    c.harness_sha256_repeat.argtypes = [ctypes.c_uint8, ctypes.c_size_t, ctypes.c_char_p]
    c.harness_sha256_repeat.restype = None
    return c


def c_sha256(lib: ctypes.CDLL, msg: bytes) -> bytes:
    out = ctypes.create_string_buffer(32)
    lib.sha256(msg, len(msg), out)
    return out.raw


def c_hmac(lib: ctypes.CDLL, key: bytes, msg: bytes) -> bytes:
    out = ctypes.create_string_buffer(32)
    lib.hmac_sha256(key, len(key), msg, len(msg), out)
    return out.raw


def _cuts(cuts: list[int]) -> ctypes.Array[ctypes.c_size_t]:
    return (ctypes.c_size_t * max(len(cuts), 1))(*cuts)


def c_sha256_chunks(lib: ctypes.CDLL, msg: bytes, cuts: list[int]) -> bytes:
    out = ctypes.create_string_buffer(32)
    lib.harness_sha256_chunks(msg, len(msg), _cuts(cuts), len(cuts), out)
    return out.raw


def c_hmac_chunks(lib: ctypes.CDLL, key: bytes, msg: bytes, cuts: list[int]) -> bytes:
    out = ctypes.create_string_buffer(32)
    lib.harness_hmac_chunks(key, len(key), msg, len(msg), _cuts(cuts), len(cuts), out)
    return out.raw


def random_cuts(rng: np.random.Generator, n: int) -> list[int]:
    """Ascending cut points in 0..n (repeats allowed: empty updates), small and large pieces."""
    k = int(rng.integers(0, 12))
    return sorted(int(v) for v in rng.integers(0, n + 1, size=k))


# -- FIPS 180-2 SHA-256 ------------------------------------------------------------------------

FIPS_SHA256 = [
    (b"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
    (b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
     "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"),
]
MILLION_A = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0"


@pytest.mark.parametrize(("msg", "digest"), FIPS_SHA256)
def test_sha256_fips_vectors(lib: ctypes.CDLL, msg: bytes, digest: str) -> None:
    assert hashlib.sha256(msg).hexdigest() == digest
    assert c_sha256(lib, msg).hex() == digest
    # Every single cut point: the partial-block path at every offset.
    for at in range(len(msg) + 1):
        assert c_sha256_chunks(lib, msg, [at]).hex() == digest, at


def test_sha256_million_a(lib: ctypes.CDLL) -> None:
    msg = b"a" * 1_000_000
    assert hashlib.sha256(msg).hexdigest() == MILLION_A
    assert c_sha256(lib, msg).hex() == MILLION_A
    out = ctypes.create_string_buffer(32)
    lib.harness_sha256_repeat(ord("a"), 1_000_000, out)
    assert out.raw.hex() == MILLION_A
    rng = np.random.default_rng(18)
    assert c_sha256_chunks(lib, msg, random_cuts(rng, len(msg))).hex() == MILLION_A


def test_sha256_every_length_around_the_padding_boundaries(lib: ctypes.CDLL) -> None:
    """0..200 bytes: empty input, 55/56 (length field fits or spills a block), 63/64/65, 119/120..."""
    data = bytes(range(256)) * 2
    for n in range(201):
        msg = data[:n]
        assert c_sha256(lib, msg) == hashlib.sha256(msg).digest(), n


# -- RFC 4231 HMAC-SHA-256 ----------------------------------------------------------------------

RFC4231 = [
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (b"Jefe", b"what do ya want for nothing?", "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"),
    (b"\xaa" * 20, b"\xdd" * 50, "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe"),
    (bytes(range(1, 26)), b"\xcd" * 50, "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b"),
    # Case 5: the tag truncated to 128 bits.
    (b"\x0c" * 20, b"Test With Truncation", "a3b6167473100ee06e0c796c2955552b"),
    # Cases 6 and 7: a 131-byte key, longer than the block, is hashed first.
    (b"\xaa" * 131, b"Test Using Larger Than Block-Size Key - Hash Key First",
     "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"),
    (b"\xaa" * 131, b"This is a test using a larger than block-size key and a larger than block-size data. The key "
                    b"needs to be hashed before being used by the HMAC algorithm.",
     "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2"),
]


@pytest.mark.parametrize(("key", "msg", "tag"), RFC4231, ids=[f"case{i}" for i in range(1, 8)])
def test_hmac_rfc4231(lib: ctypes.CDLL, key: bytes, msg: bytes, tag: str) -> None:
    want = bytes.fromhex(tag)
    n = len(want)
    assert hmac.new(key, msg, hashlib.sha256).digest()[:n] == want
    got = c_hmac(lib, key, msg)
    assert got[:n] == want
    assert lib.hmac_sha256_equal(got, want, n) == 1
    for at in range(len(msg) + 1):
        assert c_hmac_chunks(lib, key, msg, [at])[:n] == want, at


# -- random keys and messages against Python -------------------------------------------------------


def test_hmac_and_sha256_random_against_python(lib: ctypes.CDLL) -> None:
    """200 (key, message) pairs of random lengths 0..300, whole and in random chunks."""
    rng = np.random.default_rng(20261206)
    for i in range(200):
        key = rng.integers(0, 256, size=int(rng.integers(0, 301)), dtype=np.uint8).tobytes()
        msg = rng.integers(0, 256, size=int(rng.integers(0, 301)), dtype=np.uint8).tobytes()
        want = hmac.new(key, msg, hashlib.sha256).digest()
        assert c_hmac(lib, key, msg) == want, i
        assert c_hmac_chunks(lib, key, msg, random_cuts(rng, len(msg))) == want, i
        digest = hashlib.sha256(msg).digest()
        assert c_sha256(lib, msg) == digest, i
        assert c_sha256_chunks(lib, msg, random_cuts(rng, len(msg))) == digest, i


def test_tag_comparison(lib: ctypes.CDLL) -> None:
    tag = c_hmac(lib, b"key", b"message")
    assert lib.hmac_sha256_equal(tag, bytes(tag), 32) == 1
    assert lib.hmac_sha256_equal(tag, b"\x00" * 32, 0) == 1  # nothing to compare
    for pos in range(32):
        for bit in (0x01, 0x80, 0xFF):
            other = bytearray(tag)
            other[pos] ^= bit
            assert lib.hmac_sha256_equal(tag, bytes(other), 32) == 0, (pos, bit)
            # A truncated comparison looks at its first n bytes only.
            assert lib.hmac_sha256_equal(tag, bytes(other), pos) == 1, pos
