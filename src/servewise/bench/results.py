"""results.json: a run's configuration, per-point summaries and every raw request record.

The file is versioned by ``schema_version``; a reader refuses versions it does not
know. Adding a field is a new version; readers keep reading older ones.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from servewise.bench.metrics import PointSummary
from servewise.bench.records import RequestRecord
from servewise.bench.schedule import LoadPoint
from servewise.bench.slo import SloSpec

SCHEMA_VERSION = 1
TOOL_NAME = "servewise-bench"


@dataclass
class PointResult:
    load: LoadPoint  # the sweep point
    started_s: float  # the point's start, seconds after the run's start
    summary: PointSummary
    records: list[RequestRecord]  # every request of the point, warm-up included, by index

    def to_dict(self) -> dict[str, Any]:
        return {"load": self.load.to_dict(), "started_s": round(self.started_s, 6),
                "summary": self.summary.to_dict(), "records": [r.to_dict() for r in self.records]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PointResult:
        return cls(LoadPoint.from_dict(data["load"]), float(data["started_s"]),
                   PointSummary.from_dict(data["summary"]),
                   [RequestRecord.from_dict(r) for r in data.get("records", [])])


@dataclass
class BenchResult:
    config: dict[str, Any]  # BenchConfig.to_dict(): what was asked for (no API key)
    model: str  # the model actually requested
    tokenizer: str  # where prompt token counts came from: "server", "approx" or "local:<path>"
    started_at: str  # ISO 8601, UTC
    points: list[PointResult] = field(default_factory=list)
    max_model_len: int | None = None  # the server's context length, when /tokenize reported it

    @property
    def slo(self) -> SloSpec:
        return SloSpec(**self.config.get("slo", {}))

    @property
    def label(self) -> str:
        target = self.config.get("target", {})
        return f"{self.model} @ {target.get('base_url', '?')} ({target.get('endpoint', '?')})"

    def to_dict(self) -> dict[str, Any]:
        return {"schema_version": SCHEMA_VERSION, "tool": TOOL_NAME, "started_at": self.started_at,
                "model": self.model, "tokenizer": self.tokenizer, "max_model_len": self.max_model_len,
                "config": self.config, "points": [p.to_dict() for p in self.points]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BenchResult:
        version = data.get("schema_version")
        if not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
            raise ValueError(f"unsupported results schema_version {version!r} (this build reads 1..{SCHEMA_VERSION})")
        return cls(config=data["config"], model=data["model"], tokenizer=data["tokenizer"],
                   started_at=data["started_at"], points=[PointResult.from_dict(p) for p in data["points"]],
                   max_model_len=data.get("max_model_len"))

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), separators=(",", ":")) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> BenchResult:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except ValueError as exc:
            raise ValueError(f"{path} is not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a bench results file")
        return cls.from_dict(data)
