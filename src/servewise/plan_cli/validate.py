"""``servewise plan validate``: serve each configuration, bench it at the plan's points, and set
predicted against measured.

Per configuration and repeat: a fresh ``servewise serve`` with that configuration's flags
and the SLO class the plan simulated (or the server at ``--base-url``, whose state then
carries over between repeats), the same short warm-up the plan simulates, a speed probe
(``probe.py``: is the machine as fast as when profiled?), then one bench
run of the plan's own workload and load, with ``ignore_eos`` so outputs run to
``max_tokens`` as the plan assumes. Everything measured is kept under ``OUTPUT_DIR/measured/``; the comparison
goes to ``validation.md`` and ``validation.json``.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

from servewise.bench import BenchConfig, TargetConfig, run_benchmark, write_outputs
from servewise.bench.metrics import PointSummary
from servewise.plan.compare import EngineTotals, compare
from servewise.plan.knobs import Knobs
from servewise.plan.planner import Plan
from servewise.plan.sources import warmup_load
from servewise.plan.validation_report import (
    headers,
    point_rows,
    render_markdown,
    summary_lines,
    validation_dict,
)
from servewise.plan_cli.probe import SpeedProbe, speed_probe
from servewise.plan_cli.run import PlanRun

READY_TIMEOUT_S = 600.0


def serve_flags(knobs: Knobs, device: str, *, model_path: str | None = None, slo_class_flag: str | None = None
                ) -> list[str]:
    """The ``servewise serve`` flags of one configuration (the same knobs the plan simulated)."""
    flags = ["--device", device, "--linear-backend", knobs.linear_backend, "--threads", str(knobs.threads),
             "--max-num-seqs", str(knobs.max_num_seqs), "--max-num-batched-tokens", str(knobs.max_num_batched_tokens),
             "--block-size", str(knobs.block_size), "--kv-cache-memory", str(knobs.kv_cache_memory_bytes),
             "--kv-cache-dtype", knobs.kv_cache_dtype, "--queue-policy", knobs.queue_policy,
             "--admission", "enforce" if knobs.admission else "off",
             # the plan does not simulate drafting: serve what it simulated, not the server's default
             "--speculative-ngram", "0"]
    if knobs.num_kv_blocks is not None:
        flags += ["--num-kv-blocks", str(knobs.num_kv_blocks)]
    if knobs.max_model_len is not None:
        flags += ["--max-model-len", str(knobs.max_model_len)]
    if not knobs.prefix_caching:
        flags.append("--no-prefix-caching")
    if model_path:
        flags += ["--model", model_path]
    if slo_class_flag:
        flags += ["--slo-class", slo_class_flag]
    return flags


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"servewise serve exited with status {proc.returncode}; its log ({log}) ends:\n"
                               + log.read_text(errors="replace")[-2000:])
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"servewise serve was not ready after {READY_TIMEOUT_S:.0f} s (log: {log})")


@contextmanager
def served(flags: list[str], log: Path) -> Iterator[str]:
    """``servewise serve`` on a free port for the duration of the block; yields its API root."""
    port = _free_port()
    cmd = [sys.executable, "-m", "servewise.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
           "--no-request-log", *flags]
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    try:
        _wait_ready(f"http://127.0.0.1:{port}/ready", proc, log)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", label) or "base"


def engine_counters(base_url: str) -> EngineTotals | None:
    """The server's engine_busy_seconds and engine_steps counters (None if it exports none)."""
    root = base_url.removesuffix("/v1")
    try:
        with urllib.request.urlopen(root + "/metrics", timeout=10) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return None
    values: dict[str, float] = {}
    for line in text.splitlines():  # e.g. servewise:engine_steps_total{model_name="m"} 123.0
        name, _, value = line.rpartition(" ")
        name = name.split("{", 1)[0]
        if name in ("servewise:engine_busy_seconds_total", "servewise:engine_steps_total"):
            values[name] = values.get(name, 0.0) + float(value)
    if len(values) < 2:
        return None
    return EngineTotals(values["servewise:engine_busy_seconds_total"], values["servewise:engine_steps_total"])


def _bench(run: PlanRun, base_url: str, out_dir: Path, say: Callable[[str], None],
           probe: Callable[[str], SpeedProbe | None]) -> tuple[list[PointSummary], EngineTotals | None, SpeedProbe | None]:
    """The warm-up the plan simulated, the speed probe, then the plan's sweep: the sweep's summaries,
    the engine's busy time and steps during it, and the probe."""
    target = TargetConfig(base_url=base_url, endpoint=run.endpoint, ignore_eos=True)
    # A fresh server pays one-off costs on its first requests (allocations, kernels' first calls);
    # the plan predicts a warm one, so a few requests go first, unmeasured (and simulated alike).
    say(f"warming up {base_url}")
    run_benchmark(BenchConfig(target, warmup_load(run.load), run.workload, run.settings.slo, run.tokenizer))
    found = probe(base_url)
    if found is not None:
        say(found.describe())
    before = engine_counters(base_url)
    say(f"bench run against {base_url}")
    result = run_benchmark(BenchConfig(target, run.load, run.workload, run.settings.slo, run.tokenizer))
    after = engine_counters(base_url)
    write_outputs(result, out_dir)
    engine = after.minus(before) if after is not None and before is not None else None
    return [p.summary for p in result.points], engine, found


def measure(run: PlanRun, plan: Plan, args: argparse.Namespace, out_dir: Path, say: Callable[[str], None]
            ) -> tuple[dict[str, list[list[PointSummary]]], dict[str, list[EngineTotals]], list[SpeedProbe]]:
    """Per configuration label, per repeat: the bench's summaries of the plan's points, and the
    engine's busy time and steps over the sweep; and each repeat's speed probe."""
    if args.base_url and len(run.cells) > 1:
        raise ValueError("--base-url is one server, so one configuration: drop the --grid, or let validate "
                         "start `servewise serve` for each configuration")
    measured: dict[str, list[list[PointSummary]]] = {}
    engine: dict[str, list[EngineTotals]] = {}
    probes: list[SpeedProbe] = []
    for knobs in run.cells:
        label = knobs.label(run.varied)
        cell_dir = out_dir / "measured" / _slug(label)
        cell_dir.mkdir(parents=True, exist_ok=True)
        if knobs.replicas > 1 and not args.base_url:
            say(f"skipping {label}: a fleet of {knobs.replicas} replicas needs --base-url (validate serves one engine)")
            continue
        device = run.planner.profiles.for_knobs(knobs).backend.device
        measured[label], engine[label] = [], []
        for k in range(args.repeats):  # each repeat on a fresh server: the state the plan simulates
            run_dir = cell_dir / f"run-{k + 1}"
            run_dir.mkdir(parents=True, exist_ok=True)
            probe = functools.partial(speed_probe, run, knobs, label, k + 1)
            if args.base_url:
                summaries, totals, found = _bench(run, args.base_url.rstrip("/"), run_dir, say, probe)
            else:
                say(f"serving {label} (run {k + 1}/{args.repeats})")
                flags = serve_flags(knobs, device, model_path=run.model_path, slo_class_flag=run.slo_class_flag)
                with served([*flags, *args.serve_arg], run_dir / "server.log") as url:
                    summaries, totals, found = _bench(run, url, run_dir, say, probe)
            measured[label].append(summaries)
            probes += [found] if found is not None else []
            if totals is not None:
                engine[label].append(totals)
    return measured, engine, probes


def validate(run: PlanRun, plan: Plan, args: argparse.Namespace, console: Console,
             progress: Callable[[str], None]) -> int:
    if args.repeats < 1:
        raise ValueError("--repeats must be ≥ 1")
    out_dir = Path(args.output_dir or "plan-validation")
    out_dir.mkdir(parents=True, exist_ok=True)
    measured, engine, probes = measure(run, plan, args, out_dir, progress)
    validation = compare(plan, measured, run.settings.min_attainment, engine)
    table = Table(title="servewise plan validate: predicted / measured (error)",
                  caption="times in ms; measured = median of the repeats; ✓/✗ = within the issue's target")
    for i, column in enumerate(headers()):
        table.add_column(column, justify="left" if i < 2 else "right")
    for row in point_rows(validation):
        table.add_row(*row)
    console.print(table)
    for line in summary_lines(validation) + [p.describe() for p in probes]:
        console.print(line, markup=False)
    context = run.context
    header = [f"- Model: {context.model}", *(f"- Profile: {p}" for p in context.profiles),
              f"- Workload: {context.workload}", f"- Load: {context.load}; {args.repeats} bench run(s) per configuration",
              f"- SLO: {context.slo}", *(f"- {p.describe()}" for p in probes)]
    (out_dir / "validation.md").write_text(render_markdown(validation, header), encoding="utf-8")
    result = {**validation_dict(validation), "speed_probes": [{**asdict(p), "error": p.error} for p in probes]}
    (out_dir / "validation.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    console.print(f"wrote validation.md, validation.json and measured/ to {out_dir}")
    return 0
