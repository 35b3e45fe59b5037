"""Quantized weights in the native kernels' layout: the one copy a CPU model keeps.

A weight [n, k] goes through two forms:
- ``BlockRows``: row-major 32-wide blocks, the form conversions and concatenation use
  (4-bit: value = d * code + m, code 0..15; 8-bit: value = d * q, q -128..127; d, m fp16).
- ``PackedWeight``: tiles of 16 rows, the kernels' layout (native/sw_kernels.h). Built
  once at load; the BlockRows are dropped.

Where values come from (error vs the file's own dequantized weights):
- GGUF Q4_0, Q4_1, Q8_0: the file's values exactly (Q4_0's d*(q-8) is d*q + (-8d)).
- GGUF Q4_K: the sub-block scale d*sc and min dmin*m are rounded to fp16 (relative
  error <= 2^-11 of the block's scale).
- anything else (float weights, other GGML types): quantized to 8 bits per 32-wide block,
  symmetric, |error| <= d / 2 = max|w| / 254 per block.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from gguf.quants import Q4_K

BLOCK = 32
TILE_ROWS = 16
RAW_4BIT_TYPES = frozenset({"Q4_0", "Q4_1", "Q4_K"})
RAW_TYPES = RAW_4BIT_TYPES | {"Q8_0"}


class RawBlocks(Protocol):
    """The GGML blocks of one weight, as a GGUF loader keeps them (loading.QuantizedTensor)."""

    @property
    def ggml_type(self) -> str: ...

    @property
    def shape(self) -> tuple[int, int]: ...  # (out_features, in_features)

    @property
    def data(self) -> np.ndarray: ...  # uint8 [out_features, bytes_per_row]


@dataclass
class WeightPart:
    """One checkpoint tensor that goes into a (possibly fused) linear weight."""

    raw: RawBlocks | None  # the file's blocks when stored quantized
    load_float: Callable[[], torch.Tensor]  # the fp32 values (decoded only if the blocks are not used)


@dataclass
class BlockRows:
    bits: int  # 4 or 8
    codes: np.ndarray  # [n, kb, 32]: uint8 0..15 (4-bit) or int8 (8-bit); zero past k
    d: np.ndarray  # [n, kb] float16
    m: np.ndarray | None  # [n, kb] float16, 4-bit only
    k: int  # in_features


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
    return np.ascontiguousarray(blocks[..., start:start + 2]).view(np.float16)[..., 0]


def _nibble_codes(qs: np.ndarray) -> np.ndarray:
    # qs: [..., 16] bytes -> [..., 32] codes: low nibbles are weights 0..15, high 16..31
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _finite(*arrays: np.ndarray) -> bool:
    return all(bool(np.isfinite(a).all()) for a in arrays)


def from_ggml(raw: RawBlocks) -> BlockRows | None:
    """The blocks of a Q4_0/Q4_1/Q4_K/Q8_0 weight, or None for other types or scales that
    do not fit fp16 (the caller then quantizes the decoded values)."""
    n, k = raw.shape
    data = np.asarray(raw.data, dtype=np.uint8)
    if raw.ggml_type == "Q8_0":
        blocks = data.reshape(n, -1, 34)
        return BlockRows(8, blocks[..., 2:].view(np.int8), _f16(blocks, 0), None, k)  # a view of the file
    if raw.ggml_type == "Q4_0":
        blocks = data.reshape(n, -1, 18)
        d = _f16(blocks, 0)
        m = (d.astype(np.float32) * -8).astype(np.float16)  # exact unless it overflows
        return BlockRows(4, _nibble_codes(blocks[..., 2:]), d, m, k) if _finite(m) else None
    if raw.ggml_type == "Q4_1":
        blocks = data.reshape(n, -1, 20)
        return BlockRows(4, _nibble_codes(blocks[..., 4:]), _f16(blocks, 0), _f16(blocks, 2), k)
    if raw.ggml_type == "Q4_K":
        return _from_q4_k(data.reshape(-1, 144), n, k)
    return None


def _from_q4_k(blocks: np.ndarray, n: int, k: int) -> BlockRows | None:
    # A 256-wide super-block: fp16 d, dmin, 6-bit scale and min per 32-wide sub-block, and
    # 128 bytes where chunk i (32 bytes) holds sub-block 2i in low nibbles, 2i+1 in high.
    d = _f16(blocks, 0).astype(np.float32)[:, None]
    dmin = _f16(blocks, 2).astype(np.float32)[:, None]
    sc, mn = Q4_K.get_scale_min(blocks[:, 4:16])
    with np.errstate(over="ignore"):
        d_sub = (d * sc.astype(np.float32)).astype(np.float16)
        m_sub = (-(dmin * mn.astype(np.float32))).astype(np.float16)
    if not _finite(d_sub, m_sub):
        return None
    qs = blocks[:, 16:].reshape(-1, 4, 1, 32)
    codes = (qs >> np.array([0, 4], dtype=np.uint8).reshape(1, 1, 2, 1)) & 0x0F  # [S, 4, 2, 32]
    return BlockRows(4, codes.reshape(n, -1, BLOCK), d_sub.reshape(n, -1), m_sub.reshape(n, -1), k)


def quantize_q8(weight: torch.Tensor) -> BlockRows:
    """Symmetric 8-bit per 32-wide block (Q8_0's rule): d = max|w| / 127 in fp16, q = round(w / d)."""
    w = weight.detach().float()
    n, k = w.shape
    kb = -(-k // BLOCK)
    blocks = torch.nn.functional.pad(w, (0, kb * BLOCK - k)).reshape(n, kb, BLOCK)
    d = (blocks.abs().amax(dim=-1) / 127.0).to(torch.float16)
    inv = torch.where(d.float() > 0, 1.0 / d.float(), torch.zeros(()))
    q = torch.round(blocks * inv[..., None]).clamp_(-127, 127).to(torch.int8)
    return BlockRows(8, q.numpy(), d.numpy(), None, k)


def _widen(rows: BlockRows, load_float: Callable[[], torch.Tensor]) -> BlockRows:
    return rows if rows.bits == 8 else quantize_q8(load_float())


def block_rows(parts: Sequence[WeightPart], bits: int | None = None) -> BlockRows:
    """One weight from its parts (q/k/v or gate/up are stacked along the rows).

    bits None: 4-bit when every part is stored in a 4-bit GGML type, else 8-bit (4-bit parts
    are then requantized from their values); bits 8: 8-bit throughout.
    """
    converted = [from_ggml(p.raw) if p.raw is not None else None for p in parts]
    four = bits is None and all(c is not None and c.bits == 4 for c in converted)
    if not four:
        converted = [_widen(c, p.load_float) if c is not None else quantize_q8(p.load_float())
                     for c, p in zip(converted, parts, strict=True)]
    rows = [c for c in converted if c is not None]
    if len({r.k for r in rows}) != 1:
        raise ValueError("parts of one weight must have the same in_features")
    m = np.concatenate([r.m for r in rows if r.m is not None]) if four else None
    return BlockRows(rows[0].bits, np.concatenate([r.codes for r in rows]), np.concatenate([r.d for r in rows]),
                     m, rows[0].k)


@dataclass
class PackedWeight:
    """A weight [n, k] in tiles of 16 rows (layout: native/sw_kernels.h). The only copy."""

    bits: int  # 4 or 8
    n: int  # out_features
    k: int  # in_features
    tile_bytes: int  # bytes per tile of 16 rows (a multiple of 64)
    tiles: torch.Tensor  # uint8 [ceil(n / 16) * tile_bytes]

    @property
    def kb(self) -> int:
        return -(-self.k // BLOCK)

    @property
    def num_tiles(self) -> int:
        return -(-self.n // TILE_ROWS)

    def _code_bytes(self) -> int:
        return self.kb * (256 if self.bits == 4 else 512)


def pack(rows: BlockRows) -> PackedWeight:
    """Interleave 16 rows per tile: k-group g (4 values) of each row is one 32-bit lane.
    Written straight into the tile buffer: no full-size temporary besides the codes."""
    n, kb = rows.d.shape
    nt = -(-n // TILE_ROWS)
    code_bytes, scale_bytes = kb * (256 if rows.bits == 4 else 512), kb * (64 if rows.bits == 4 else 32)
    tile_bytes = -(-(code_bytes + scale_bytes) // 64) * 64
    tiles = torch.zeros(nt, tile_bytes, dtype=torch.uint8)  # torch's allocator: 64-byte aligned
    out = tiles.numpy()
    for t0 in range(0, n, 64 * TILE_ROWS):  # bounded temporaries for the 4-bit nibble merge
        rows_in = slice(t0, min(n, t0 + 64 * TILE_ROWS))
        _pack_tiles(rows, rows_in, out[t0 // TILE_ROWS:-(-rows_in.stop // TILE_ROWS)], code_bytes)
    return PackedWeight(rows.bits, n, rows.k, tile_bytes, tiles.reshape(-1))


def _pack_tiles(rows: BlockRows, rows_in: slice, out: np.ndarray, code_bytes: int) -> None:
    # out: [tiles, tile_bytes] for the rows `rows_in` (zero rows past n stay zero)
    count, kb = rows_in.stop - rows_in.start, rows.d.shape[1]
    nt = out.shape[0]

    def tiled(a: np.ndarray) -> np.ndarray:  # [count, ...] -> [nt, 16, ...]
        full = np.zeros((nt * TILE_ROWS, *a.shape[1:]), a.dtype)
        full[:count] = a
        return full.reshape(nt, TILE_ROWS, *a.shape[1:])

    groups = tiled(rows.codes[rows_in].view(np.uint8).reshape(count, kb, 8, 4)).transpose(0, 2, 3, 1, 4)
    codes = out[:, :code_bytes]
    if rows.bits == 4:
        assert rows.m is not None
        codes.reshape(nt, kb, 4, TILE_ROWS, 4)[:] = groups[:, :, :4] | (groups[:, :, 4:] << 4)
        scales = np.stack([tiled(rows.d[rows_in]), tiled(rows.m[rows_in])], axis=1).transpose(0, 3, 1, 2)
    else:
        codes.reshape(nt, kb, 8, TILE_ROWS, 4)[:] = groups
        scales = tiled(rows.d[rows_in]).transpose(0, 2, 1)  # [nt, kb, 16]
    out[:, code_bytes:code_bytes + scales[0].nbytes] = np.ascontiguousarray(scales).view(np.uint8).reshape(nt, -1)


def unpack(weight: PackedWeight) -> BlockRows:
    """The inverse of ``pack`` (for references and tests)."""
    nt, kb, n = weight.num_tiles, weight.kb, weight.n
    tiles = weight.tiles.reshape(nt, weight.tile_bytes).numpy()
    code_bytes = weight._code_bytes()
    if weight.bits == 4:
        chunks = tiles[:, :code_bytes].reshape(nt, kb, 4, TILE_ROWS, 4)
        groups = np.concatenate([chunks & 0x0F, chunks >> 4], axis=2)  # [nt, kb, 8, 16, 4]
        scales = tiles[:, code_bytes:code_bytes + kb * 64].copy().view(np.float16).reshape(nt, kb, 2, TILE_ROWS)
        d, m = (scales[:, :, i].transpose(0, 2, 1).reshape(-1, kb)[:n] for i in (0, 1))
    else:
        groups = tiles[:, :code_bytes].reshape(nt, kb, 8, TILE_ROWS, 4)
        d = tiles[:, code_bytes:code_bytes + kb * 32].copy().view(np.float16).reshape(nt, kb, TILE_ROWS)
        d, m = d.transpose(0, 2, 1).reshape(-1, kb)[:n], None
    codes = groups.transpose(0, 3, 1, 2, 4).reshape(nt * TILE_ROWS, kb, BLOCK)[:n]
    return BlockRows(weight.bits, codes if weight.bits == 4 else codes.view(np.int8), d, m, weight.k)


def dequantize(weight: PackedWeight | BlockRows) -> torch.Tensor:
    """[n, k] fp32 values: d * code + m (two roundings, as GGUF dequantization) or d * q."""
    rows = unpack(weight) if isinstance(weight, PackedWeight) else weight
    values = torch.from_numpy(rows.codes.astype(np.float32)).reshape(len(rows.d), -1, BLOCK)
    values = values * torch.from_numpy(rows.d.astype(np.float32))[..., None]
    if rows.m is not None:
        values = values + torch.from_numpy(rows.m.astype(np.float32))[..., None]
    return values.reshape(len(rows.d), -1)[:, :rows.k].contiguous()
