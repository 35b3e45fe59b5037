"""Fixtures shared across layers: tiny random checkpoints written once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.factories import write_tiny_hf_checkpoint


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: write_tiny_hf_checkpoint(root / arch, architecture=arch, seed=3, max_position_embeddings=1024)
            for arch in ("llama", "qwen2", "mistral")}
