"""Fixtures shared across layers: tiny random checkpoints written once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.factories import embedded_gguf_path, write_tiny_hf_checkpoint
from tests.server.conftest import LiveServer, start_server, stop_server


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny")
    return {arch: write_tiny_hf_checkpoint(root / arch, architecture=arch, seed=3, max_position_embeddings=1024)
            for arch in ("llama", "qwen2", "mistral")}


@pytest.fixture(scope="session")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A live `servewise serve` on the embedded model, started once per test session."""
    embedded_gguf_path()  # skips cleanly if the embedded model is not installed
    server = start_server(tmp_path_factory.mktemp("live"), "--max-num-seqs", "32", "--kv-cache-memory", "512MiB",
                          "--max-body-bytes", "64KiB", "--max-grammar-bytes", "8KiB")
    yield server
    stop_server(server)
