"""Engines on tiny random checkpoints written by the tests (and the embedded model for end-to-end)."""

from __future__ import annotations

from pathlib import Path

import pytest

from servewise.config import CacheConfig, DeviceConfig, EngineConfig, SchedulerConfig
from servewise.engine.llm_engine import LLMEngine
from servewise.loading import Checkpoint, load_checkpoint
from tests.factories import write_tiny_hf_checkpoint


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: write_tiny_hf_checkpoint(root / arch, architecture=arch, seed=3, max_position_embeddings=1024)
            for arch in ("llama", "qwen2", "mistral")}


def make_engine(path: str | Path, *, backend: str = "fp32", num_blocks: int | None = 512, block_size: int = 4,
                max_num_seqs: int = 64, max_num_batched_tokens: int = 256, prefix_caching: bool = True,
                checkpoint: Checkpoint | None = None) -> LLMEngine:
    config = EngineConfig(
        model=str(path),
        cache=CacheConfig(block_size=block_size, num_blocks=num_blocks, enable_prefix_caching=prefix_caching),
        scheduler=SchedulerConfig(max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens),
        device=DeviceConfig(linear_backend=backend, num_threads=None))
    return LLMEngine(config, checkpoint or load_checkpoint(str(path)))
