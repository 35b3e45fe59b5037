import pytest
import torch
from torch import nn

from servewise.layers import native
from servewise.layers.linear import DualLinear, apply_linear_backend, quantize_rows_int8


def _linear(n_in=96, n_out=160, bias=False, seed=0):
    torch.manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias)
    nn.init.normal_(lin.weight, std=0.1)
    return lin


def test_row_int8_quantization_error_is_within_half_a_step():
    w = torch.randn(64, 128)
    q, scale = quantize_rows_int8(w)
    assert q.dtype == torch.int8 and scale.dtype == torch.bfloat16
    err = (q.float() * scale.float()[:, None] - w).abs()
    assert bool((err <= scale.float()[:, None] / 2 + 1e-6).all())


def test_int8_and_gemm_paths_compute_the_same_function():
    lin = _linear(bias=True)
    dual = DualLinear(lin, max_int8_rows=4)
    x = torch.randn(12, 96)
    with torch.inference_mode():
        via_gemm = dual(x)  # 12 rows > 4: fp32 GEMM path
        via_int8 = torch.cat([dual(x[i:i + 1]) for i in range(12)])  # one row at a time: int8 path
    torch.testing.assert_close(via_gemm, via_int8, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(via_gemm, lin(x), atol=0.05, rtol=0.05)


def test_native_int8_rows_do_not_depend_on_the_batch():
    if native.load_library() is None:
        pytest.skip("no C compiler here")
    dual = DualLinear(_linear(n_in=100, n_out=64), max_int8_rows=16)
    x = torch.randn(7, 100)
    with torch.inference_mode():
        together = dual(x)
        for i in range(7):
            assert torch.equal(dual(x[i:i + 1])[0], together[i])


def test_backends_swap_linear_layers():
    model = nn.Sequential(_linear(), nn.ReLU(), _linear(160, 32))
    apply_linear_backend(model, "fp32")
    assert isinstance(model[0], nn.Linear)
    apply_linear_backend(model, "auto")
    assert isinstance(model[0], DualLinear) and model[0].weight_eff is not None
    model2 = nn.Sequential(_linear())
    apply_linear_backend(model2, "int8")
    assert model2[0].weight_eff is None or native.load_library() is None
