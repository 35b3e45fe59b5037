"""Engines on tiny random checkpoints written by the tests (fixture `tiny_dirs` in tests/conftest.py).

`SERVEWISE_TEST_DEVICE=cuda pytest tests/engine` runs these same tests on a GPU (CI has none).
"""

from __future__ import annotations

import os
from pathlib import Path

from servewise.config import CacheConfig, DeviceConfig, EngineConfig, SchedulerConfig, SpeculativeConfig
from servewise.engine.llm_engine import LLMEngine
from servewise.loading import Checkpoint, load_checkpoint

TEST_DEVICE = os.environ.get("SERVEWISE_TEST_DEVICE", "cpu")
# `SERVEWISE_CPU_ISA=avx2 pytest tests` runs every engine on the AVX2 kernels (as the CLI does).
TEST_CPU_ISA = os.environ.get("SERVEWISE_CPU_ISA", "auto")


def make_engine(path: str | Path, *, backend: str = "fp32", num_blocks: int | None = 512, block_size: int = 4,
                max_num_seqs: int = 64, max_num_batched_tokens: int = 256, prefix_caching: bool = True,
                kv_cache_dtype: str = "auto", checkpoint: Checkpoint | None = None,
                enforce_eager: bool = False, cpu_isa: str = TEST_CPU_ISA,
                speculative: SpeculativeConfig | None = None) -> LLMEngine:
    config = EngineConfig(
        model=str(path),
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=prefix_caching,
                          kv_cache_dtype=kv_cache_dtype),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        speculative=speculative or SpeculativeConfig(),
        device=DeviceConfig(device=TEST_DEVICE, linear_backend=backend, num_threads=None,
                            enforce_eager=enforce_eager, cpu_isa=cpu_isa))
    return LLMEngine(config, checkpoint or load_checkpoint(str(path)))
