"""Deliberate faults (``EngineConfig.fault``): a slow or flaky engine made on purpose, so a bad
rollout candidate can be shown being rolled back. They wrap the engine's parts; nothing else
knows about them."""

from __future__ import annotations

import random
import time
from typing import Any

from servewise.config import FaultConfig


class SlowRunner:
    """The model runner with ``step_delay_s`` added to every step (inside the step's timing)."""

    def __init__(self, runner: Any, step_delay_s: float) -> None:
        self._runner = runner
        self._delay_s = step_delay_s

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(self._delay_s)
        return self._runner.execute(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runner, name)


class FailureDraw:
    """Which requests to fail: each with probability ``fail_ratio``, reproducibly from the seed."""

    def __init__(self, config: FaultConfig) -> None:
        self._ratio = config.fail_ratio
        self._rng = random.Random(config.seed)

    def fails(self) -> bool:
        return self._ratio > 0 and self._rng.random() < self._ratio
