"""GGML tensor bytes -> torch tensors.

Q4_0, Q4_1, Q8_0 (the types of the embedded model) and the float types are decoded here with
vectorised torch ops, ~5x faster than ``gguf.quants`` on one core; every other type goes through
``gguf.quants.dequantize``. The fast paths do the same float32 arithmetic in the same order as
``gguf.quants`` (f16 scale widened to f32, then ``d * q`` or ``d * q + m``), so they agree bit
for bit; tests/loading/test_dequant.py checks it.

Block layouts (32 weights per block):
  Q8_0: f16 d, 32 x int8 q               -> d * q
  Q4_0: f16 d, 16 bytes of nibbles       -> d * (q - 8)
  Q4_1: f16 d, f16 m, 16 bytes of nibbles -> d * q + m
The low nibbles of the 16 bytes are weights 0..15, the high nibbles weights 16..31.
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

# Blocks decoded per chunk: bounds the temporaries to a few tens of MB whatever the tensor size.
_BLOCKS_PER_CHUNK = 1 << 18

FLOAT_TYPES = frozenset({GGMLQuantizationType.F32, GGMLQuantizationType.F16, GGMLQuantizationType.BF16})


def _f16_column(blocks: torch.Tensor, start: int) -> torch.Tensor:
    # blocks: [n, type_size] uint8 -> [n, 1] float32 from the f16 at byte `start`
    return blocks[:, start:start + 2].contiguous().view(torch.float16).to(torch.float32)


def _nibbles_into(packed: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    # packed: [n, 16] uint8 -> out: [n, 32] float32, low nibbles first. In-place ops into the
    # caller's output spare temporaries: ~2x faster than torch.cat + .to on one core.
    n = packed.shape[0]
    q = torch.empty(n, 2, 16, dtype=torch.uint8)
    torch.bitwise_and(packed, 0x0F, out=q[:, 0])
    torch.bitwise_right_shift(packed, 4, out=q[:, 1])
    return out.copy_(q.view(n, 32))


def _q8_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    out.copy_(blocks[:, 2:].view(torch.int8)).mul_(_f16_column(blocks, 0))


def _q4_0(blocks: torch.Tensor, out: torch.Tensor) -> None:
    # (q - 8) is exact in float32, so subtracting after the conversion matches int8 arithmetic.
    _nibbles_into(blocks[:, 2:], out).sub_(8.0).mul_(_f16_column(blocks, 0))


def _q4_1(blocks: torch.Tensor, out: torch.Tensor) -> None:
    _nibbles_into(blocks[:, 4:], out).mul_(_f16_column(blocks, 0)).add_(_f16_column(blocks, 2))


_FAST_BLOCK_DECODERS = {
    GGMLQuantizationType.Q8_0: _q8_0,
    GGMLQuantizationType.Q4_0: _q4_0,
    GGMLQuantizationType.Q4_1: _q4_1,
}


def _as_uint8_tensor(raw: np.ndarray) -> torch.Tensor:
    # A copy-on-write memmap is writable, so torch can wrap it without copying or warning.
    array = np.ascontiguousarray(raw).reshape(-1)
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def _decode_blocks(raw: np.ndarray, ggml_type: GGMLQuantizationType) -> torch.Tensor:
    block_size, type_size = GGML_QUANT_SIZES[ggml_type]
    blocks = _as_uint8_tensor(raw).view(-1, type_size)
    out = torch.empty(blocks.shape[0], block_size, dtype=torch.float32)
    decode = _FAST_BLOCK_DECODERS[ggml_type]
    for start in range(0, blocks.shape[0], _BLOCKS_PER_CHUNK):
        stop = start + _BLOCKS_PER_CHUNK
        decode(blocks[start:stop], out[start:stop])
    return out


def _decode_float(raw: np.ndarray, ggml_type: GGMLQuantizationType) -> torch.Tensor:
    flat = _as_uint8_tensor(raw)
    if ggml_type == GGMLQuantizationType.F32:
        return flat.view(torch.float32)
    if ggml_type == GGMLQuantizationType.F16:
        return flat.view(torch.float16)
    return flat.view(torch.bfloat16)


def dequantize(raw: np.ndarray, ggml_type: GGMLQuantizationType, shape: tuple[int, ...],
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Decode the raw bytes of one GGML tensor into a new contiguous CPU tensor.

    raw: uint8 bytes of the whole tensor; shape: row-major shape, last axis = GGUF dims[0].
    """
    if ggml_type in FLOAT_TYPES:
        # Widening f16/bf16 to f32 is exact, so going through f32 matches gguf.quants; copy=True
        # so that an F32 result owns its memory instead of aliasing the file mapping.
        values = _decode_float(raw, ggml_type).to(torch.float32, copy=True).to(dtype)
    elif ggml_type in _FAST_BLOCK_DECODERS:
        values = _decode_blocks(raw, ggml_type).to(dtype)
    else:
        block_size, type_size = GGML_QUANT_SIZES[ggml_type]
        row_bytes = shape[-1] // block_size * type_size
        decoded = gguf_quants.dequantize(np.asarray(raw).reshape(-1, row_bytes), ggml_type)
        values = torch.from_numpy(np.ascontiguousarray(decoded, dtype=np.float32)).to(dtype)
    return values.reshape(shape).contiguous()
