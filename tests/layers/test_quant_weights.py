"""GGUF blocks -> the kernels' tiles: the file's values are kept, and packing loses nothing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from servewise.layers.quant_weights import (
    BlockRows,
    WeightPart,
    block_rows,
    dequantize,
    from_ggml,
    pack,
    quantize_q8,
    unpack,
)


@dataclass(frozen=True)
class Raw:
    ggml_type: str
    shape: tuple[int, int]
    data: np.ndarray


def raw_of(values: np.ndarray, ggml_type: str) -> Raw:
    data = gguf_quants.quantize(values, GGMLQuantizationType[ggml_type])
    return Raw(ggml_type, values.shape, data)


def file_values(raw: Raw) -> torch.Tensor:
    return torch.from_numpy(gguf_quants.dequantize(raw.data, GGMLQuantizationType[raw.ggml_type]))


def random_q4_k(rows: int, cols: int, seed: int = 0) -> Raw:
    """Random Q4_K super-blocks (gguf-py cannot quantize to Q4_K): small finite fp16 d and dmin,
    random 6-bit scales/mins and nibbles."""
    rng = np.random.default_rng(seed)
    block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType.Q4_K]
    blocks = rng.integers(0, 256, (rows * cols // block_size, type_size), dtype=np.uint8)
    blocks[:, 0:4] = rng.uniform(1e-4, 2e-2, (len(blocks), 2)).astype(np.float16).view(np.uint8)
    return Raw("Q4_K", (rows, cols), blocks.reshape(rows, -1))


@pytest.mark.parametrize("ggml_type", ["Q4_0", "Q4_1", "Q8_0"])
def test_q4_0_q4_1_and_q8_0_blocks_keep_the_files_values_exactly(ggml_type):
    values = np.random.default_rng(1).standard_normal((40, 96)).astype(np.float32)
    raw = raw_of(values, ggml_type)
    rows = from_ggml(raw)
    assert rows is not None and rows.bits == (8 if ggml_type == "Q8_0" else 4)
    assert torch.equal(dequantize(pack(rows)), file_values(raw))


def test_q4_k_sub_block_scales_are_rounded_to_fp16_and_nothing_else():
    raw = random_q4_k(16, 512)
    rows = from_ggml(raw)
    assert rows is not None and rows.bits == 4
    want = file_values(raw)
    # per 32-wide sub-block: |error| <= |code| * |d rounding| + |m rounding| <= 2^-11 (15 |d*sc| + |dmin*m|)
    d = torch.from_numpy(rows.d.astype(np.float32)).repeat_interleave(32, dim=1)
    m = torch.from_numpy(rows.m.astype(np.float32)).repeat_interleave(32, dim=1)
    bound = 2.0 ** -11 * (15 * d.abs() + m.abs()) * 1.001 + 1e-7
    assert bool(((dequantize(pack(rows)) - want).abs() <= bound).all())


def test_pack_then_unpack_is_the_identity_for_ragged_shapes():
    rng = np.random.default_rng(2)
    for bits, (n, k) in [(4, (37, 70)), (8, (37, 70)), (4, (16, 32)), (8, (1, 5))]:
        kb = -(-k // 32)
        codes = rng.integers(0, 16, (n, kb, 32), dtype=np.uint8) if bits == 4 else \
            rng.integers(-128, 128, (n, kb, 32)).astype(np.int8)
        codes.reshape(n, -1)[:, k:] = 0
        d = rng.uniform(0.01, 1, (n, kb)).astype(np.float16)
        m = rng.uniform(-1, 0, (n, kb)).astype(np.float16) if bits == 4 else None
        rows = BlockRows(bits, codes, d, m, k)
        packed = pack(rows)
        assert packed.tile_bytes % 64 == 0 and packed.tiles.numel() == -(-n // 16) * packed.tile_bytes
        back = unpack(packed)
        assert np.array_equal(back.codes, codes) and np.array_equal(back.d, d)
        assert (back.m is None and m is None) or np.array_equal(back.m, m)
        assert torch.equal(dequantize(packed), dequantize(rows))


def test_8_bit_requantization_error_is_at_most_half_a_step():
    w = torch.randn(24, 100) * torch.linspace(0.1, 10, 100)
    rows = quantize_q8(w)
    step = torch.from_numpy(rows.d.astype(np.float32)).repeat_interleave(32, dim=1)[:, :100]
    assert bool(((dequantize(rows) - w).abs() <= step / 2 * 1.0001 + 1e-7).all())


def test_fused_parts_stay_4_bit_only_when_every_part_is_4_bit():
    rng = np.random.default_rng(3)
    q, k = (rng.standard_normal((n, 64)).astype(np.float32) for n in (48, 16))
    parts = [WeightPart(raw_of(q, "Q4_1"), lambda: torch.from_numpy(q)),
             WeightPart(raw_of(k, "Q4_0"), lambda: torch.from_numpy(k))]
    fused = block_rows(parts)
    assert fused.bits == 4
    assert torch.equal(dequantize(fused), torch.cat([file_values(p.raw) for p in parts]))  # type: ignore[arg-type]
    v = rng.standard_normal((16, 64)).astype(np.float32)
    mixed = block_rows([WeightPart(raw_of(q, "Q8_0"), lambda: torch.from_numpy(q)),
                        WeightPart(None, lambda: torch.from_numpy(v))])
    assert mixed.bits == 8
    assert torch.equal(dequantize(mixed)[:48], file_values(raw_of(q, "Q8_0")))  # Q8_0 kept exactly
    assert block_rows(parts, bits=8).bits == 8  # the int8 backend widens 4-bit parts
