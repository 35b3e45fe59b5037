"""The quantized kernels against their PyTorch reference, on every build this CPU can run.

avx2 and generic run on any x86 CPU with AVX2; avx512 only where the CPU and OS allow it
(skipped with the reason otherwise). All builds must agree bit for bit.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
import torch

from servewise.layers import native
from servewise.layers.native.isa import ISAS
from servewise.layers.quant_linear import (
    ACT_BYTES_PER_BLOCK,
    QuantEmbedding,
    QuantLinear,
    error_bound,
    quantize_activations,
    reference_linear,
)
from servewise.layers.quant_weights import BlockRows, PackedWeight, dequantize, pack, quantize_q8


def library(isa: str) -> ctypes.CDLL:
    features = native.probe_cpu()
    if isa != "generic" and (features is None or not features.supports(isa)):
        pytest.skip(f"this CPU or OS cannot run the {isa} kernels ({features.describe() if features else 'not x86'})")
    lib = native.load_library(isa)
    if lib is None:
        pytest.skip("no C compiler here")
    assert native.library_isa(lib) == isa
    return lib


def random_weight(bits: int, n: int, k: int, seed: int) -> PackedWeight:
    rng = np.random.default_rng(seed)
    if bits == 8:
        return pack(quantize_q8(torch.from_numpy(rng.standard_normal((n, k)).astype(np.float32)) * 0.05))
    kb = -(-k // 32)
    codes = rng.integers(0, 16, (n, kb, 32), dtype=np.uint8)
    d = rng.uniform(0.001, 0.02, (n, kb)).astype(np.float16)
    m = (-8 * d.astype(np.float32) * rng.uniform(0.5, 1.5, (n, kb))).astype(np.float16)
    return pack(BlockRows(4, codes, d, m, k))


def activations(rows: int, k: int, seed: int) -> torch.Tensor:
    """Real-model-like rows: mostly O(1) with a few outlier channels 100x larger."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, k, generator=g)
    x[:, ::37] *= 100
    return x


SHAPES = [(4, 70, 45), (4, 96, 576), (8, 70, 45), (8, 64, 200)]  # (bits, n, k): ragged tiles and blocks


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize(("bits", "n", "k"), SHAPES)
def test_kernel_matches_the_reference_within_the_stated_bound(isa, bits, n, k):
    lib = library(isa)
    weight, bias = random_weight(bits, n, k, seed=n + k), torch.randn(n)
    layer = QuantLinear(weight, bias, lib)
    for rows in (1, 3, 8, 9, 33, 300):  # remainders of every micro-kernel, and more than one row panel
        x = activations(rows, k, seed=rows)
        out = layer(x).double()
        # the same arithmetic in float64: only fp32 accumulation separates them
        scale = (x.abs() @ dequantize(weight).abs().T).double() + bias.abs().double()
        assert bool(((out - reference_linear(x, weight, bias)).abs() <= 1e-5 * scale + 1e-6).all())
        # against unquantized activations: within the activation-rounding bound
        exact = x.double() @ dequantize(weight).double().T + bias.double()
        assert bool(((out - exact).abs() <= error_bound(x, weight) + 1e-5 * scale + 1e-6).all())


@pytest.mark.parametrize(("bits", "n", "k"), SHAPES)
def test_every_build_gives_bitwise_identical_results(bits, n, k):
    weight, x = random_weight(bits, n, k, seed=7), activations(21, k, seed=3)
    outputs = {}
    for isa in ISAS:
        features = native.probe_cpu()
        lib = native.load_library(isa) if isa == "generic" or (features and features.supports(isa)) else None
        if lib is not None:
            outputs[isa] = QuantLinear(weight, None, lib)(x)
    if len(outputs) < 2:
        pytest.skip("fewer than two kernel builds can run here")
    first = next(iter(outputs.values()))
    assert all(torch.equal(first, out) for out in outputs.values()), list(outputs)


@pytest.mark.parametrize("isa", ISAS)
def test_a_row_gives_the_same_bits_alone_or_in_any_batch(isa):
    lib = library(isa)
    for bits in (4, 8):
        layer = QuantLinear(random_weight(bits, 50, 96, seed=bits), torch.randn(50), lib)
        x = activations(40, 96, seed=1)
        together = layer(x)
        for i in (0, 7, 8, 39):
            assert torch.equal(layer(x[i:i + 1])[0], together[i])
            assert torch.equal(layer(x[i:i + 5])[0], together[i])


@pytest.mark.parametrize("isa", ISAS)
def test_activation_rounding_matches_the_reference(isa):
    lib = library(isa)
    x = activations(5, 70, seed=4)
    kb = 3
    work = torch.zeros(5 * kb * ACT_BYTES_PER_BLOCK, dtype=torch.uint8)
    assert lib.sw_quantize_rows(x.data_ptr(), 5, 70, kb, work.data_ptr()) == 0
    plane = 5 * kb * 32
    hi, lo = (work[i * plane:(i + 1) * plane].view(torch.int8).to(torch.int32) for i in (0, 1))
    d = work[4 * plane:4 * plane + 5 * kb * 4].view(torch.float32).reshape(5, kb)
    q_ref, d_ref = quantize_activations(x)
    assert torch.equal((128 * hi + lo).reshape(5, -1), q_ref.to(torch.int32))
    assert torch.equal(d, d_ref)
    assert bool((lo.abs() <= 64).all()) and bool((hi.abs() <= 127).all())


@pytest.mark.parametrize("isa", ISAS)
def test_embedding_rows_are_the_weights_values(isa):
    lib = library(isa)
    for bits in (4, 8):
        weight = random_weight(bits, 37, 70, seed=5)
        ids = torch.tensor([0, 36, 5, 5, 17])
        assert torch.equal(QuantEmbedding(weight, lib)(ids), dequantize(weight)[ids])
        with pytest.raises(IndexError):
            QuantEmbedding(weight, lib)(torch.tensor([37]))


@pytest.fixture(scope="module")
def embedded_blocks() -> dict[str, PackedWeight]:
    from servewise.layers.quant_weights import WeightPart, block_rows
    from servewise.loading import load_checkpoint
    from tests.factories import embedded_gguf_path

    checkpoint = load_checkpoint(embedded_gguf_path())
    names = {"gate_up": ["model.layers.3.mlp.gate_proj.weight", "model.layers.3.mlp.up_proj.weight"],
             "down": ["model.layers.3.mlp.down_proj.weight"], "lm_head": ["model.embed_tokens.weight"]}
    return {key: pack(block_rows([WeightPart(checkpoint.quantized[n], lambda: torch.empty(0)) for n in parts]))
            for key, parts in names.items()}


@pytest.mark.parametrize("isa", ISAS)
def test_real_weights_from_the_embedded_gguf(isa, embedded_blocks):
    lib = library(isa)
    assert [w.bits for w in embedded_blocks.values()] == [4, 4, 8]  # Q4_1 layers, Q8_0 lm_head
    for name, weight in embedded_blocks.items():
        x = activations(6, weight.k, seed=len(name))
        out = QuantLinear(weight, None, lib)(x).double()
        scale = (x.abs() @ dequantize(weight).abs().T).double()
        assert bool(((out - reference_linear(x, weight, None)).abs() <= 1e-5 * scale + 1e-6).all()), name
