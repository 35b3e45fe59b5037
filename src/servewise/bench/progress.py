"""Live progress while a point runs: a rich bar on stderr, or nothing."""

from __future__ import annotations

import time
from collections import deque
from typing import Protocol

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from servewise.bench.records import Outcome, RequestRecord

# Rates on the bar are over this trailing window, so they show the current pace.
RATE_WINDOW_S = 5.0
REFRESH_S = 0.25  # the stats text is rebuilt at most this often


class ProgressSink(Protocol):
    def point_started(self, label: str, total: int | None) -> None: ...

    def request_done(self, record: RequestRecord) -> None: ...

    def point_finished(self) -> None: ...


class NullProgress:
    def point_started(self, label: str, total: int | None) -> None:
        pass

    def request_done(self, record: RequestRecord) -> None:
        pass

    def point_finished(self) -> None:
        pass


class RichProgress:
    """Completed/failed counts and current request and token rates; use as a context manager."""

    def __init__(self, console: Console | None = None) -> None:
        self._progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                  TimeElapsedColumn(), TextColumn("{task.fields[stats]}"),
                                  console=console or Console(stderr=True), refresh_per_second=4)
        self._task: TaskID | None = None
        self._window: deque[tuple[float, int]] = deque()  # (finish time, output tokens) of recent requests
        self._num_ok = self._num_failed = 0
        self._started_s = self._last_refresh_s = 0.0

    def __enter__(self) -> RichProgress:
        self._progress.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._progress.stop()

    def point_started(self, label: str, total: int | None) -> None:
        self._window.clear()
        self._num_ok = self._num_failed = 0
        self._started_s = time.perf_counter()
        self._task = self._progress.add_task(label, total=total, stats="")

    def request_done(self, record: RequestRecord) -> None:
        if record.outcome is Outcome.OK:
            self._num_ok += 1
        else:
            self._num_failed += 1
        now_s = time.perf_counter()
        self._window.append((now_s, record.num_output_tokens))
        while self._window and self._window[0][0] < now_s - RATE_WINDOW_S:
            self._window.popleft()
        if self._task is None:
            return
        if now_s - self._last_refresh_s >= REFRESH_S:
            self._last_refresh_s = now_s
            self._progress.update(self._task, advance=1, stats=self._stats(now_s))
        else:
            self._progress.update(self._task, advance=1)

    def point_finished(self) -> None:
        if self._task is not None:
            self._progress.update(self._task, stats=self._stats(time.perf_counter()))
            self._progress.stop_task(self._task)
            self._task = None

    def _stats(self, now_s: float) -> str:
        span_s = max(min(RATE_WINDOW_S, now_s - self._started_s), 1e-3)
        requests_per_s = len(self._window) / span_s
        tokens_per_s = sum(n for _, n in self._window) / span_s
        failed = f"[red]{self._num_failed} failed[/red]" if self._num_failed else "0 failed"
        return f"{self._num_ok} ok, {failed} · {requests_per_s:.1f} req/s · {tokens_per_s:.0f} out tok/s"
