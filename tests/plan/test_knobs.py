"""Grids of configurations and the engine limits they imply."""

from __future__ import annotations

import pytest

from servewise.bench.slo import SloSpec
from servewise.config import EngineConfig
from servewise.engine.llm_engine import kv_capacity, resolve_kv_dtype
from servewise.plan.knobs import Knobs, arch_from_dict, engine_spec, expand_grid, parse_grid, server_slo_class

ARCH = {"architecture": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
        "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3, "head_dim": 64,
        "rms_norm_eps": 1e-5, "rope_theta": 100000.0, "max_position_embeddings": 8192, "tie_word_embeddings": True,
        "eos_token_ids": [2]}


def test_a_grid_is_every_combination_on_the_base():
    grid = parse_grid(["max_num_seqs=16,64", "admission=on,off", "replicas=1"])
    cells = expand_grid(Knobs(max_num_batched_tokens=256), grid)
    assert [(c.max_num_seqs, c.admission, c.replicas) for c in cells] == [
        (16, True, 1), (16, False, 1), (64, True, 1), (64, False, 1)]
    assert all(c.max_num_batched_tokens == 256 for c in cells)
    assert cells[1].label(list(grid)) == "max_num_seqs=16 admission=off replicas=1"


@pytest.mark.parametrize("spec, message", [
    ("max_num_seqs=", "lists no values: the grid would be empty"),
    ("warp_speed=1,2", "KNOB=V1,V2"),
    ("max_num_seqs=many", "bad --grid max_num_seqs value"),
    ("admission=maybe", "expected on or off"),
])
def test_bad_grids_say_what_is_wrong(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_grid([spec])


def test_invalid_cells_are_refused_by_the_engines_own_checks():
    with pytest.raises(ValueError, match="max_num_seqs"):
        expand_grid(Knobs(), parse_grid(["max_num_seqs=0,8"]))
    with pytest.raises(ValueError, match="replicas"):
        Knobs(replicas=0)


def test_engine_spec_sizes_the_pool_as_the_engine_does():
    arch = arch_from_dict(ARCH)
    knobs = Knobs(kv_cache_memory_bytes=256 << 20, block_size=32)
    spec = engine_spec(knobs, arch, "cpu")
    config: EngineConfig = knobs.engine_config("cpu")
    import torch

    assert (spec.num_blocks, spec.max_model_len) == kv_capacity(config, arch, resolve_kv_dtype(config, torch.float32))
    assert spec.block_size == 32 and spec.scheduler.max_num_seqs == 64


def test_the_servers_slo_class_for_the_targets():
    cls, flag = server_slo_class(SloSpec(ttft_s=1.5, tpot_s=0.1), slack=1.25)
    assert flag == "interactive:ttft=1.5s@p99,tpot=0.1s,slack=1.25"
    assert (cls.ttft_s, cls.tpot_s, cls.admission_slack) == (1.5, 0.1, 1.25)
    default, none = server_slo_class(SloSpec())
    assert none is None and default.name == "interactive" and default.ttft_s == 2.0  # the server's built-in
