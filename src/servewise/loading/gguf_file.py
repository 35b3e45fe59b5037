"""A strict GGUF reader: header, metadata and tensor directory, every size checked first.

Every count, length and offset is checked against the bytes left in the file before it is
used, so a truncated or hostile file fails fast with `ModelLoadError` instead of looping over
a count of 2**60 or allocating it (``gguf.GGUFReader`` does both, and builds one numpy view per
array element, which takes seconds on a 49k-token vocabulary).

Layout (little-endian): magic "GGUF", u32 version, u64 tensor count, u64 metadata count, the
metadata key/values, the tensor infos (name, u32 n_dims, u64 dims[n_dims], u32 ggml type, u64
offset), padding to ``general.alignment``, then the tensor data.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field
from typing import Any, overload

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

from servewise.errors import ModelLoadError

GGUF_MAGIC_BYTES = b"GGUF"
SUPPORTED_GGUF_VERSIONS = (2, 3)
DEFAULT_ALIGNMENT_BYTES = 32
MAX_TENSOR_DIMS = 4  # GGML_MAX_DIMS
MAX_NAME_BYTES = 256  # llama.cpp allows 64 for tensor names; keys are short too
# No real file comes close (vocabularies are < 300k tokens); it bounds the Python objects a
# hostile file of tiny strings could make us build.
MAX_ARRAY_ITEMS = 1 << 24

# GGUF value type id -> (struct format, numpy dtype) for the fixed-size types.
_SCALAR_TYPES: dict[int, tuple[str, str]] = {
    0: ("<B", "<u1"), 1: ("<b", "<i1"), 2: ("<H", "<u2"), 3: ("<h", "<i2"),
    4: ("<I", "<u4"), 5: ("<i", "<i4"), 6: ("<f", "<f4"), 7: ("<?", "?"),
    10: ("<Q", "<u8"), 11: ("<q", "<i8"), 12: ("<d", "<f8"),
}
_STRING_TYPE = 8
_ARRAY_TYPE = 9
_BOOL_TYPE = 7


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One entry of the tensor directory, validated against the file."""

    name: str
    ggml_type: GGMLQuantizationType
    dims: tuple[int, ...]  # GGUF order: dims[0] is the innermost (contiguous) axis
    offset_bytes: int  # absolute offset of the first byte in the file
    num_bytes: int

    @property
    def shape(self) -> tuple[int, ...]:
        """Row-major (PyTorch/Hugging Face) shape: the GGUF dims reversed."""
        return tuple(reversed(self.dims))


class _Cursor:
    """Reads little-endian values from `buf`, refusing to read past its end."""

    def __init__(self, buf: mmap.mmap, path: str) -> None:
        self.buf = buf
        self.path = path
        self.pos = 0
        self.size = len(buf)

    def fail(self, problem: str) -> ModelLoadError:
        return ModelLoadError(self.path, f"{problem} (at byte {self.pos} of {self.size})")

    def need(self, num_bytes: int, what: str) -> None:
        if num_bytes > self.size - self.pos:
            raise self.fail(f"truncated GGUF: {what} needs {num_bytes} bytes, {self.size - self.pos} left")

    def scalar(self, fmt: str, what: str) -> Any:
        size = struct.calcsize(fmt)
        self.need(size, what)
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self, what: str, max_bytes: int | None = None) -> str:
        num_bytes = self.scalar("<Q", f"length of {what}")
        if max_bytes is not None and num_bytes > max_bytes:
            raise self.fail(f"{what} is {num_bytes} bytes long (limit {max_bytes})")
        self.need(num_bytes, what)
        raw = self.buf[self.pos:self.pos + num_bytes]
        self.pos += num_bytes
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise self.fail(f"{what} is not valid UTF-8") from exc


@dataclass
class GGUFFile:
    """A parsed GGUF: metadata values and the tensor directory; tensor bytes stay on disk."""

    path: str
    version: int
    # Key -> value: int/float/bool/str for scalars, list[str] for string arrays,
    # np.ndarray for numeric arrays.
    metadata: dict[str, Any]
    tensors: dict[str, GGUFTensorInfo]  # in file order
    alignment_bytes: int
    file_size_bytes: int

    _mapping: np.memmap | None = field(default=None, repr=False)  # the whole file, mapped on first use

    def tensor_bytes(self, info: GGUFTensorInfo) -> np.ndarray:
        """The raw bytes of one tensor: a uint8 view of a copy-on-write map of the file (writable
        for torch.from_numpy, never written back; pages are read when first touched)."""
        if self._mapping is None:
            self._mapping = np.memmap(self.path, dtype=np.uint8, mode="c")
        return self._mapping[info.offset_bytes:info.offset_bytes + info.num_bytes]

    def error(self, problem: str) -> ModelLoadError:
        return ModelLoadError(self.path, problem)

    @overload
    def get_int(self, key: str) -> int | None: ...

    @overload
    def get_int(self, key: str, default: int) -> int: ...

    def get_int(self, key: str, default: int | None = None) -> int | None:
        value = self.metadata.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(f"metadata {key} must be an integer, got {type(value).__name__}")
        return value

    @overload
    def get_float(self, key: str) -> float | None: ...

    @overload
    def get_float(self, key: str, default: float) -> float: ...

    def get_float(self, key: str, default: float | None = None) -> float | None:
        value = self.metadata.get(key)
        if value is None:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.error(f"metadata {key} must be a number, got {type(value).__name__}")
        return float(value)

    @overload
    def get_bool(self, key: str) -> bool | None: ...

    @overload
    def get_bool(self, key: str, default: bool) -> bool: ...

    def get_bool(self, key: str, default: bool | None = None) -> bool | None:
        value = self.metadata.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(f"metadata {key} must be a bool, got {type(value).__name__}")
        return value

    @overload
    def get_str(self, key: str) -> str | None: ...

    @overload
    def get_str(self, key: str, default: str) -> str: ...

    def get_str(self, key: str, default: str | None = None) -> str | None:
        value = self.metadata.get(key)
        if value is None:
            return default
        if not isinstance(value, str):
            raise self.error(f"metadata {key} must be a string, got {type(value).__name__}")
        return value

    def get_str_list(self, key: str) -> list[str] | None:
        value = self.metadata.get(key)
        if value is None:
            return None
        if not isinstance(value, list):
            raise self.error(f"metadata {key} must be an array of strings")
        return value

    def get_array(self, key: str) -> np.ndarray | None:
        value = self.metadata.get(key)
        if value is None:
            return None
        if not isinstance(value, np.ndarray):
            raise self.error(f"metadata {key} must be a numeric array")
        return value


def _read_value(cur: _Cursor, value_type: int, what: str) -> Any:
    if value_type in _SCALAR_TYPES:
        return cur.scalar(_SCALAR_TYPES[value_type][0], what)
    if value_type == _STRING_TYPE:
        return cur.string(what)
    if value_type == _ARRAY_TYPE:
        return _read_array(cur, what)
    raise cur.fail(f"{what} has unknown value type {value_type}")


def _read_array(cur: _Cursor, what: str) -> Any:
    item_type = cur.scalar("<I", f"item type of {what}")
    count = cur.scalar("<Q", f"length of {what}")
    if count > MAX_ARRAY_ITEMS:
        raise cur.fail(f"{what} claims {count} items (limit {MAX_ARRAY_ITEMS})")
    if item_type in _SCALAR_TYPES:
        dtype = np.dtype(_SCALAR_TYPES[item_type][1])
        cur.need(count * dtype.itemsize, f"{count} items of {what}")
        values = np.frombuffer(cur.buf, dtype=dtype, count=count, offset=cur.pos).copy()
        cur.pos += count * dtype.itemsize
        return values
    if item_type == _STRING_TYPE:
        cur.need(count * 8, f"{count} strings of {what}")  # each string has at least its u64 length
        return [cur.string(f"item {i} of {what}") for i in range(count)]
    if item_type == _ARRAY_TYPE:
        raise cur.fail(f"{what} is an array of arrays, which no supported model uses")
    raise cur.fail(f"{what} has unknown item type {item_type}")


def _read_header(cur: _Cursor) -> tuple[int, int, int]:
    magic = cur.buf[:4] if cur.size >= 4 else cur.buf[:cur.size]
    if magic != GGUF_MAGIC_BYTES:
        raise cur.fail(f"not a GGUF file: magic is {bytes(magic)!r}, expected {GGUF_MAGIC_BYTES!r}")
    cur.pos = 4
    version = cur.scalar("<I", "version")
    if version & 0xFFFF == 0 and version != 0:
        raise cur.fail("big-endian GGUF files are not supported")
    if version not in SUPPORTED_GGUF_VERSIONS:
        raise cur.fail(f"unsupported GGUF version {version}; supported: {SUPPORTED_GGUF_VERSIONS}")
    num_tensors = cur.scalar("<Q", "tensor count")
    num_kv = cur.scalar("<Q", "metadata count")
    # Each key/value takes at least 13 bytes and each tensor info at least 24.
    if num_kv * 13 > cur.size - cur.pos:
        raise cur.fail(f"metadata count {num_kv} cannot fit in the file")
    if num_tensors * 24 > cur.size - cur.pos:
        raise cur.fail(f"tensor count {num_tensors} cannot fit in the file")
    return version, num_tensors, num_kv


def _read_metadata(cur: _Cursor, num_kv: int) -> dict[str, Any]:
    metadata: dict[str, Any] = {}
    for index in range(num_kv):
        key = cur.string(f"metadata key {index}", MAX_NAME_BYTES)
        if key in metadata:
            raise cur.fail(f"duplicate metadata key {key!r}")
        value_type = cur.scalar("<I", f"type of metadata {key}")
        metadata[key] = _read_value(cur, value_type, f"metadata {key}")
    return metadata


def _read_tensor_info(cur: _Cursor, index: int) -> tuple[str, GGMLQuantizationType, tuple[int, ...], int]:
    name = cur.string(f"name of tensor {index}", MAX_NAME_BYTES)
    num_dims = cur.scalar("<I", f"dimension count of tensor {name}")
    if not 1 <= num_dims <= MAX_TENSOR_DIMS:
        raise cur.fail(f"tensor {name} has {num_dims} dimensions (1 to {MAX_TENSOR_DIMS} allowed)")
    dims = tuple(cur.scalar("<Q", f"dimension of tensor {name}") for _ in range(num_dims))
    if any(d == 0 for d in dims):
        raise cur.fail(f"tensor {name} has an empty dimension: {dims}")
    raw_type = cur.scalar("<I", f"type of tensor {name}")
    try:
        ggml_type = GGMLQuantizationType(raw_type)
    except ValueError:
        raise cur.fail(f"tensor {name} has unknown ggml type {raw_type}") from None
    if ggml_type not in GGML_QUANT_SIZES:
        raise cur.fail(f"tensor {name} has ggml type {ggml_type.name} of unknown size")
    relative_offset = cur.scalar("<Q", f"offset of tensor {name}")
    return name, ggml_type, dims, relative_offset


def _tensor_num_bytes(path: str, name: str, ggml_type: GGMLQuantizationType, dims: tuple[int, ...]) -> int:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    if dims[0] % block_size:
        raise ModelLoadError(path, f"tensor {name}: row length {dims[0]} is not a multiple of the "
                                   f"{ggml_type.name} block size {block_size}")
    num_elements = 1
    for d in dims:
        num_elements *= d
    return num_elements // block_size * type_size


def _read_tensor_directory(cur: _Cursor, num_tensors: int) -> list[tuple[str, GGMLQuantizationType, tuple[int, ...], int]]:
    entries = [_read_tensor_info(cur, i) for i in range(num_tensors)]
    names = [e[0] for e in entries]
    if len(set(names)) != len(names):
        duplicate = next(n for n in names if names.count(n) > 1)
        raise cur.fail(f"duplicate tensor {duplicate!r}")
    return entries


def _place_tensors(path: str, entries: list[tuple[str, GGMLQuantizationType, tuple[int, ...], int]],
                   data_start: int, alignment: int, file_size: int) -> dict[str, GGUFTensorInfo]:
    infos: dict[str, GGUFTensorInfo] = {}
    for name, ggml_type, dims, relative_offset in entries:
        num_bytes = _tensor_num_bytes(path, name, ggml_type, dims)
        if relative_offset % alignment:
            raise ModelLoadError(path, f"tensor {name}: offset {relative_offset} is not aligned to {alignment} bytes")
        start = data_start + relative_offset
        if start + num_bytes > file_size:
            raise ModelLoadError(path, f"tensor {name}: data [{start}, {start + num_bytes}) runs past the end "
                                       f"of the file ({file_size} bytes); the file is truncated or corrupt")
        infos[name] = GGUFTensorInfo(name, ggml_type, dims, start, num_bytes)
    by_offset = sorted(infos.values(), key=lambda t: t.offset_bytes)
    for before, after in zip(by_offset, by_offset[1:], strict=False):
        if before.offset_bytes + before.num_bytes > after.offset_bytes:
            raise ModelLoadError(path, f"tensors {before.name} and {after.name} overlap")
    return infos


def _alignment(path: str, metadata: dict[str, Any]) -> int:
    value = metadata.get("general.alignment", DEFAULT_ALIGNMENT_BYTES)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0 or value & (value - 1):
        raise ModelLoadError(path, f"general.alignment must be a positive power of two, got {value!r}")
    return value


def read_gguf(path: str) -> GGUFFile:
    """Parse and validate a GGUF file's header, metadata and tensor directory."""
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size < 24:
                magic = f.read(4)
                if magic != GGUF_MAGIC_BYTES:
                    raise ModelLoadError(path, f"not a GGUF file: magic is {magic!r}, expected {GGUF_MAGIC_BYTES!r}")
                raise ModelLoadError(path, f"truncated GGUF: {file_size} bytes is shorter than the header")
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
                cur = _Cursor(buf, path)
                version, num_tensors, num_kv = _read_header(cur)
                metadata = _read_metadata(cur, num_kv)
                entries = _read_tensor_directory(cur, num_tensors)
                header_end = cur.pos
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    alignment = _alignment(path, metadata)
    data_start = -(-header_end // alignment) * alignment
    tensors = _place_tensors(path, entries, data_start, alignment, file_size)
    return GGUFFile(path, version, metadata, tensors, alignment, file_size)
