"""The torch fast paths and the gguf.quants fallback agree with gguf.quants.dequantize bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
from gguf import quants as gguf_quants

from servewise.loading.dequant import dequantize

ROWS, COLS = 48, 512  # 512 = two K-quant super-blocks per row


def _bitwise_equal(a: torch.Tensor, b: np.ndarray) -> bool:
    expected = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
    return a.dtype == torch.float32 and a.shape == expected.shape and torch.equal(a.view(torch.int32),
                                                                                  expected.view(torch.int32))


def _reference(raw: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    return gguf_quants.dequantize(raw.reshape(ROWS, -1), qtype).reshape(ROWS, COLS)


def _random_blocks(qtype: GGMLQuantizationType, seed: int) -> np.ndarray:
    """Random bytes with every f16 scale finite, so all nibble values and scale ranges occur."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(ROWS * COLS // block_size, type_size), dtype=np.uint8)
    scale_bytes = {GGMLQuantizationType.Q4_1: (1, 3)}.get(qtype, (1,))
    for b in scale_bytes:  # high byte of an f16: clear the top exponent bit -> finite
        blocks[:, b] &= 0xBF
    return blocks.reshape(-1)


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_fast_paths_match_gguf_on_quantized_weights(type_name: str) -> None:
    qtype = GGMLQuantizationType[type_name]
    weights = np.random.default_rng(0).normal(0, 0.05, size=(ROWS, COLS)).astype(np.float32)
    raw = gguf_quants.quantize(weights, qtype).reshape(-1)
    assert _bitwise_equal(dequantize(raw, qtype, (ROWS, COLS)), _reference(raw, qtype))


@pytest.mark.parametrize("type_name", ["Q4_0", "Q4_1", "Q8_0"])
def test_fast_paths_match_gguf_on_random_blocks(type_name: str) -> None:
    qtype = GGMLQuantizationType[type_name]
    raw = _random_blocks(qtype, seed=1)
    assert _bitwise_equal(dequantize(raw, qtype, (ROWS, COLS)), _reference(raw, qtype))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN scales in random blocks
@pytest.mark.parametrize("type_name", ["Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q2_K"])
def test_other_types_go_through_gguf(type_name: str) -> None:
    qtype = GGMLQuantizationType[type_name]
    raw = _random_blocks(qtype, seed=2)
    # Random bytes: some scales are NaN/inf, so compare bit patterns.
    assert _bitwise_equal(dequantize(raw, qtype, (ROWS, COLS)), _reference(raw, qtype))


@pytest.mark.parametrize("type_name, np_dtype", [("F32", np.float32), ("F16", np.float16)])
def test_float_types(type_name: str, np_dtype: type) -> None:
    values = np.random.default_rng(3).normal(size=(ROWS, COLS)).astype(np_dtype)
    raw = values.view(np.uint8).reshape(-1)
    ours = dequantize(raw, GGMLQuantizationType[type_name], (ROWS, COLS))
    reference = gguf_quants.dequantize(raw.view(np_dtype), GGMLQuantizationType[type_name]).reshape(ROWS, COLS)
    assert _bitwise_equal(ours, reference)


def test_bf16() -> None:
    raw = gguf_quants.quantize(np.random.default_rng(4).normal(size=(ROWS, COLS)).astype(np.float32),
                               GGMLQuantizationType.BF16).reshape(-1)
    ours = dequantize(raw, GGMLQuantizationType.BF16, (ROWS, COLS))
    assert _bitwise_equal(ours, _reference(raw, GGMLQuantizationType.BF16))


def test_f32_result_does_not_alias_the_input() -> None:
    raw = np.zeros(ROWS * COLS * 4, dtype=np.uint8)
    out = dequantize(raw, GGMLQuantizationType.F32, (ROWS, COLS))
    out.fill_(1.0)
    assert not raw.any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_other_dtypes_round_the_float32_result(dtype: torch.dtype) -> None:
    qtype = GGMLQuantizationType.Q4_1
    raw = _random_blocks(qtype, seed=5)
    ours = dequantize(raw, qtype, (ROWS, COLS), dtype)
    assert ours.dtype == dtype and ours.is_contiguous()
    assert torch.equal(ours, torch.from_numpy(_reference(raw, qtype)).to(dtype))
