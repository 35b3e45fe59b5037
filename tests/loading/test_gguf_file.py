"""Bad GGUF files fail with ModelLoadError, fast and without allocating what they claim."""

from __future__ import annotations

import contextlib
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from servewise.errors import ModelLoadError
from servewise.loading import load_checkpoint
from servewise.loading.gguf_file import read_gguf
from tests.factories import write_tiny_gguf

pytestmark = pytest.mark.timeout(60)

U32, U64, STRING, ARRAY = 4, 10, 8, 9


def _str(text: str | bytes, length: int | None = None) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw) if length is None else length) + raw


def _kv_u32(key: str, value: int) -> bytes:
    return _str(key) + struct.pack("<II", U32, value)


def _kv_str(key: str, value: str) -> bytes:
    return _str(key) + struct.pack("<I", STRING) + _str(value)


def _tensor_info(name: str, dims: tuple[int, ...], ggml_type: int = 0, offset: int = 0) -> bytes:
    return _str(name) + struct.pack("<I", len(dims)) + struct.pack(f"<{len(dims)}Q", *dims) + \
        struct.pack("<IQ", ggml_type, offset)


def _gguf(kvs: list[bytes], tensors: list[bytes] = (), data: bytes = b"", *, version: int = 3,
          num_kv: int | None = None, num_tensors: int | None = None, magic: bytes = b"GGUF") -> bytes:
    header = magic + struct.pack("<IQQ", version, len(tensors) if num_tensors is None else num_tensors,
                                 len(kvs) if num_kv is None else num_kv)
    body = header + b"".join(kvs) + b"".join(tensors)
    return body + b"\0" * (-len(body) % 32) + data


def _expect_error(path: Path, content: bytes, *fragments: str) -> ModelLoadError:
    path.write_bytes(content)
    tracemalloc.start()
    try:
        with pytest.raises(ModelLoadError) as info:
            read_gguf(str(path))
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak_bytes < 16 * 1024 * 1024, f"allocated {peak_bytes} bytes on a bad file"
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    return info.value


ARCH = _kv_str("general.architecture", "llama")


@pytest.mark.parametrize("content, fragment", [
    (b"", "not a GGUF file"),
    (b"GGU", "not a GGUF file"),
    (b"GGML" + b"\0" * 100, "not a GGUF file"),
    (b"GGUF\x03\0\0\0", "truncated"),
    (_gguf([ARCH], version=1), "unsupported GGUF version 1"),
    (_gguf([ARCH], version=4), "unsupported GGUF version 4"),
    (b"GGUF" + struct.pack(">I", 3) + b"\0" * 40, "big-endian"),
])
def test_header_errors(tmp_path: Path, content: bytes, fragment: str) -> None:
    _expect_error(tmp_path / "bad.gguf", content, fragment)


@pytest.mark.parametrize("kvs, fragment", [
    ([_str("general.name", 1 << 60) + b"x" * 64], "metadata key 0 is"),
    ([_str("k") + struct.pack("<I", STRING) + _str("v", 1 << 60)], "truncated"),
    ([_str("k") + struct.pack("<IIQ", ARRAY, U32, 1 << 60)], "claims"),
    ([_str("k") + struct.pack("<IIQ", ARRAY, U32, (1 << 24) - 1)], "truncated"),
    ([_str("k") + struct.pack("<IIQ", ARRAY, STRING, (1 << 24) - 1)], "truncated"),
    ([_str("k") + struct.pack("<IIQ", ARRAY, ARRAY, 1)], "array of arrays"),
    ([_str("k") + struct.pack("<I", 99) + b"\0" * 8], "unknown value type 99"),
    ([_kv_u32("a", 1), _kv_u32("a", 2)], "duplicate metadata key"),
    ([_str(b"\xff\xfe") + struct.pack("<II", U32, 1)], "not valid UTF-8"),
    ([ARCH, _kv_u32("general.alignment", 3)], "power of two"),
])
def test_metadata_errors(tmp_path: Path, kvs: list[bytes], fragment: str) -> None:
    _expect_error(tmp_path / "bad.gguf", _gguf(kvs), fragment)


def test_impossible_counts(tmp_path: Path) -> None:
    _expect_error(tmp_path / "kv.gguf", _gguf([ARCH], num_kv=1 << 60), "metadata count")
    _expect_error(tmp_path / "t.gguf", _gguf([ARCH], num_tensors=1 << 60), "tensor count")


@pytest.mark.parametrize("tensors, data, fragment", [
    ([_tensor_info("w", (8,), offset=0)], b"\0" * 16, "runs past the end"),
    ([_tensor_info("w", (1 << 40, 1 << 20), offset=0)], b"\0" * 64, "runs past the end"),
    ([_tensor_info("w", (8,), offset=1 << 62)], b"\0" * 64, "runs past the end"),
    ([_tensor_info("w", (8,), offset=4)], b"\0" * 64, "not aligned"),
    ([_tensor_info("a", (16,), offset=0), _tensor_info("b", (16,), offset=32)], b"\0" * 128, "overlap"),
    ([_tensor_info("a", (8,)), _tensor_info("a", (8,), offset=32)], b"\0" * 64, "duplicate tensor"),
    ([_tensor_info("w", (8,), ggml_type=77)], b"\0" * 64, "unknown ggml type 77"),
    ([_tensor_info("w", (8,), ggml_type=2)], b"\0" * 64, "not a multiple"),  # Q4_0 rows of 8
    ([_tensor_info("w", ())], b"\0" * 64, "dimensions"),
    ([_tensor_info("w", (1, 1, 1, 1, 1))], b"\0" * 64, "dimensions"),
    ([_tensor_info("w", (8, 0))], b"\0" * 64, "empty dimension"),
])
def test_tensor_directory_errors(tmp_path: Path, tensors: list[bytes], data: bytes, fragment: str) -> None:
    _expect_error(tmp_path / "bad.gguf", _gguf([ARCH], tensors, data), fragment)


def test_valid_minimal_file_parses(tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(_gguf([ARCH, _kv_u32("llama.block_count", 2)], [_tensor_info("w", (8, 2))], b"\0" * 64))
    gguf = read_gguf(str(path))
    assert gguf.metadata == {"general.architecture": "llama", "llama.block_count": 2}
    assert gguf.tensors["w"].shape == (2, 8) and gguf.tensors["w"].num_bytes == 64


@pytest.fixture(scope="module")
def tiny_gguf_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf").read_bytes()


def test_truncation_anywhere_is_a_load_error(tmp_path: Path, tiny_gguf_bytes: bytes) -> None:
    path = tmp_path / "cut.gguf"
    size = len(tiny_gguf_bytes)
    cuts = sorted({*range(0, 64, 7), *np.linspace(64, size - 1, 40, dtype=int).tolist()})
    for cut in cuts:
        path.write_bytes(tiny_gguf_bytes[:cut])
        with pytest.raises(ModelLoadError):
            load_checkpoint(str(path))


def test_corrupt_bytes_never_raise_anything_else(tmp_path: Path, tiny_gguf_bytes: bytes) -> None:
    """Flip bytes in the header and metadata: the file loads or fails with ModelLoadError."""
    (tmp_path / "intact.gguf").write_bytes(tiny_gguf_bytes)
    header_bytes = min(t.offset_bytes for t in read_gguf(str(tmp_path / "intact.gguf")).tensors.values())
    rng = np.random.default_rng(0)
    path = tmp_path / "flipped.gguf"
    for _ in range(60):
        corrupt = bytearray(tiny_gguf_bytes)
        for position in rng.integers(4, header_bytes, size=3):
            corrupt[position] = int(rng.integers(0, 256))
        path.write_bytes(bytes(corrupt))
        with contextlib.suppress(ModelLoadError):
            load_checkpoint(str(path))
