"""ServeWise: SLO-first LLM inference serving."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

# Heavy imports (torch) stay lazy so `servewise bench` and the CLI start fast.
_EXPORTS = {
    "LLM": "servewise.engine.llm",
    "SamplingParams": "servewise.types",
    "AsyncEngine": "servewise.engine.async_engine",
    "LLMEngine": "servewise.engine.llm_engine",
    "EngineConfig": "servewise.config",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'servewise' has no attribute {name!r}")


__all__ = ["__version__", *_EXPORTS]
