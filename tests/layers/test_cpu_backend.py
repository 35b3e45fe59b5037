"""The CPU transform: one copy of the weights, kept at their stored width, on a build the CPU runs."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import torch
from torch import nn

from servewise.layers import native
from servewise.layers.cpu_backend import CpuBackend
from servewise.layers.fused_decoder import FusedDecoder
from servewise.layers.quant_linear import QuantEmbedding, QuantLinear
from servewise.loading import load_checkpoint
from servewise.loading.checkpoint import LazyTensors
from tests.engine.conftest import make_engine
from tests.engine.test_engine_correctness import engine_greedy
from tests.factories import write_tiny_gguf

pytestmark = pytest.mark.skipif(native.load_library() is None, reason="no C compiler here")


class CountingTensors(LazyTensors):
    """The checkpoint's lazy tensors, recording which ones were decoded to fp32."""

    def __init__(self, inner: LazyTensors) -> None:
        super().__init__({name: (lambda n=name: inner[n]) for name in inner})
        self.decoded: list[str] = []

    def __getitem__(self, name: str) -> torch.Tensor:
        self.decoded.append(name)
        return super().__getitem__(name)


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("gguf") / "tiny.gguf"
    return str(write_tiny_gguf(path, tensor_types=("Q4_0", "Q4_1", "Q8_0", "F16"), tie_word_embeddings=True, seed=4))


_FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj", "gate_proj": "gate_up_proj",
          "up_proj": "gate_up_proj"}


def _module_of(model: nn.Module, hf_name: str) -> nn.Module:
    path = hf_name.removeprefix("model.").removesuffix(".weight").split(".")
    path[-1] = _FUSED.get(path[-1], path[-1])
    return model.get_submodule(".".join(path))


def test_quantized_weights_are_the_only_copy_and_kept_as_stored(tiny_gguf):
    checkpoint = load_checkpoint(tiny_gguf)
    stored = {name: q.ggml_type for name, q in checkpoint.quantized.items()}
    assert isinstance(checkpoint.tensors, LazyTensors)
    counting = CountingTensors(checkpoint.tensors)
    checkpoint.tensors = counting
    engine = make_engine(tiny_gguf, backend="auto", checkpoint=checkpoint)
    model = engine.runner.model
    assert not [m for m in model.modules() if isinstance(m, nn.Linear | nn.Embedding)]
    assert all(p.dim() == 1 for p in model.parameters())  # norms only: no fp32 weight matrix anywhere
    assert isinstance(model.embed_tokens, QuantEmbedding) and isinstance(model.lm_head, QuantLinear)
    assert model.embed_tokens.weight_blocks is model.lm_head.weight_blocks  # tied: one copy
    assert isinstance(model.run_layers, FusedDecoder)
    for name, ggml_type in stored.items():
        module = model.lm_head if name == "model.embed_tokens.weight" else _module_of(model, name)
        bits = module.weight_blocks.bits
        if ggml_type in ("Q4_0", "Q4_1") and bits == 4 or ggml_type == "Q8_0":
            assert name not in counting.decoded, f"{name} ({ggml_type}) was decoded instead of kept as stored"
        else:  # a 4-bit part fused with an 8-bit or float one: requantized to 8 bits from its values
            assert ggml_type in ("Q4_0", "Q4_1") and bits == 8, (name, ggml_type, bits)
    assert sorted({m.weight_blocks.bits for m in model.modules() if isinstance(m, QuantLinear)}) == [4, 8]
    assert len(engine_greedy(engine, [[5, 6, 7]], num_tokens=4)[0]) == 4


def test_int8_backend_widens_every_weight_and_fp32_keeps_nn_linear(tiny_gguf):
    int8 = make_engine(tiny_gguf, backend="int8").runner.model
    assert {m.weight_blocks.bits for m in int8.modules() if isinstance(m, QuantLinear)} == {8}
    fp32 = make_engine(tiny_gguf, backend="fp32").runner.model
    assert not [m for m in fp32.modules() if isinstance(m, QuantLinear)]
    assert fp32.lm_head.weight is fp32.embed_tokens.weight


def test_forced_avx2_runs_the_avx2_kernels_and_gives_the_same_tokens(tiny_dirs):
    features = native.probe_cpu()
    if features is None or not features.supports("avx2"):
        pytest.skip("this CPU cannot run the AVX2 kernels")
    assert CpuBackend.create("auto", "avx2").isa == "avx2"
    prompts = [[5 + i for i in range(n)] for n in (3, 20, 9)]
    tokens = {}
    for isa in ("avx2", "auto"):
        engine = make_engine(tiny_dirs["llama"], backend="auto", cpu_isa=isa)
        lib = native.load_library(isa)
        assert lib is not None and engine.model_info.cpu_kernels == native.library_isa(lib)
        tokens[isa] = engine_greedy(engine, prompts, num_tokens=8)
    assert engine.model_info.cpu_kernels != "avx2" or not features.supports("avx512")
    assert tokens["avx2"] == tokens["auto"]  # every build computes the same bits


def _disassembly(isa: str) -> str | None:
    lib = native.load_library(isa)
    if lib is None or native.library_isa(lib) != isa:
        return None
    return subprocess.run(["objdump", "-d", "--no-show-raw-insn", lib._name], capture_output=True, text=True,
                          check=True).stdout


@pytest.mark.skipif(shutil.which("objdump") is None, reason="objdump not installed")
def test_no_build_holds_amx_and_only_the_avx512_build_holds_avx512():
    for isa in ("avx512", "avx2", "generic"):
        code = _disassembly(isa)
        if code is None:
            continue
        assert not re.search(r"\b(ldtilecfg|tilezero|tileloadd|tdpb\w+)\b", code), f"AMX code in the {isa} build"
        has_avx512 = bool(re.search(r"%zmm|%k[0-7]|%[xy]mm(1[6-9]|2\d|3[01])\b", code))
        assert has_avx512 == (isa == "avx512"), isa


def test_an_untied_embedding_stays_exact_when_float_and_in_blocks_when_stored_quantized(tmp_path, tiny_dirs):
    float_model = make_engine(tiny_dirs["llama"], backend="auto").runner.model
    assert isinstance(float_model.embed_tokens, nn.Embedding)  # safetensors fp32: kept exactly
    path = write_tiny_gguf(tmp_path / "untied.gguf", tensor_types=("Q8_0", "Q4_1"), seed=2)
    checkpoint = load_checkpoint(str(path))
    assert "model.embed_tokens.weight" in checkpoint.quantized
    model = make_engine(path, backend="auto", checkpoint=checkpoint).runner.model
    assert isinstance(model.embed_tokens, QuantEmbedding) and isinstance(model.lm_head, QuantLinear)
    assert model.embed_tokens.weight_blocks is not model.lm_head.weight_blocks
    ids = torch.tensor([0, 7, 100])
    want = load_checkpoint(str(path)).tensors["model.embed_tokens.weight"][ids]
    assert torch.equal(model.embed_tokens(ids), want)  # the file's values exactly
