"""Token counters: how the bench makes prompt lengths exact.

Three sources, all behind :class:`TokenCounter`:

- the server's own ``POST /tokenize`` (ServeWise and vLLM shape), exact for that server;
- a local tokenizer: a ``tokenizer.json`` (or a model directory holding one) through the
  ``tokenizers`` library, or any other model path through ``servewise.loading``;
- an approximation (4 characters a token) when neither is available.

Local counts leave out special tokens (BOS); a chat template adds its own fixed
overhead on top, which the server's usage chunk reports per request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from servewise.bench.client import BenchClient, BenchSetupError

log = logging.getLogger("servewise.bench")

# The approximation when no tokenizer is available: English prose averages ~4 characters a token.
APPROX_CHARS_PER_TOKEN = 4.0


class TokenCounter(Protocol):
    name: str  # what results.json records as the tokenizer: "server", "approx" or "local:<path>"
    max_model_len: int | None  # the server's context length when the source knows it

    async def count(self, text: str) -> int: ...


class ServerTokenCounter:
    """Counts with the server's ``POST /tokenize`` (base is the server root, not /v1)."""

    name = "server"

    def __init__(self, client: BenchClient, model: str) -> None:
        self._client = client
        self._model = model
        self.max_model_len: int | None = None

    async def count(self, text: str) -> int:
        num_tokens, max_model_len = await self._client.tokenize(self._model, text)
        if max_model_len is not None:
            self.max_model_len = int(max_model_len)
        return num_tokens


class LocalTokenCounter:
    """Counts with a tokenizer loaded in this process."""

    def __init__(self, encode: Callable[[str], Any], name: str) -> None:
        self._encode = encode  # text → token ids (a list, or an object with .ids)
        self.name = name
        self.max_model_len: int | None = None

    async def count(self, text: str) -> int:
        return self.count_now(text)

    def count_now(self, text: str) -> int:
        ids = self._encode(text)
        return len(getattr(ids, "ids", ids))

    @classmethod
    def from_path(cls, path: str) -> LocalTokenCounter:
        """A ``tokenizer.json``, a directory holding one, or a model path for servewise.loading."""
        target = Path(path)
        if not target.exists():
            raise BenchSetupError(f"no tokenizer or model at {path}")
        if target.is_dir() and (target / "tokenizer.json").is_file():
            target = target / "tokenizer.json"
        if target.suffix == ".json":
            from tokenizers import Tokenizer

            hf_tokenizer = Tokenizer.from_file(str(target))
            return cls(lambda text: hf_tokenizer.encode(text, add_special_tokens=False), f"local:{path}")
        return cls(_encoder_of(_load_model_tokenizer(path)), f"local:{path}")


class ApproxTokenCounter:
    """No tokenizer at hand: lengths are estimates, and results.json says so."""

    name = "approx"
    max_model_len: int | None = None

    async def count(self, text: str) -> int:
        return max(1, round(len(text) / APPROX_CHARS_PER_TOKEN))


def _load_model_tokenizer(path: str) -> Any:
    # Imported here: loading a model file is heavy and only needed for this flag value.
    from servewise import loading

    load_checkpoint = getattr(loading, "load_checkpoint", None)
    if load_checkpoint is None:
        raise BenchSetupError(f"cannot load a tokenizer from {path}: this build has no "
                              "servewise.loading.load_checkpoint; pass a tokenizer.json instead")
    try:
        return load_checkpoint(path).tokenizer
    except Exception as exc:  # any loader failure is a setup problem of this one flag
        raise BenchSetupError(f"cannot load a tokenizer from {path}: {exc}") from exc


def _encoder_of(tokenizer: Any) -> Callable[[str], Any]:
    """Adapts a `tokenizers.Tokenizer` or an HF-style tokenizer to text → ids."""

    def encode(text: str) -> Any:
        try:
            return tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            return tokenizer.encode(text)

    return encode


async def resolve_token_counter(spec: str, client: BenchClient, model: str) -> TokenCounter:
    """'server', 'approx', a path, or 'auto': the server's /tokenize if it answers, else approx."""
    if spec in ("server", "auto"):
        server = ServerTokenCounter(client, model)
        try:
            await server.count("hello")
            return server
        except BenchSetupError as exc:
            if spec == "server":
                raise
            log.warning("the server has no usable /tokenize (%s); prompt lengths are approximate "
                        "(pass --tokenizer PATH for exact ones)", exc)
            return ApproxTokenCounter()
    if spec == "approx":
        return ApproxTokenCounter()
    return LocalTokenCounter.from_path(spec)
