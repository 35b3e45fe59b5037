"""``servewise bench``: load-test any OpenAI-compatible server; ``servewise bench compare a.json b.json``.

The only place in the bench that reads the environment (OPENAI_API_KEY).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from collections.abc import Callable
from typing import TypeVar

from rich.console import Console

from servewise.bench.client import BenchSetupError, Endpoint, TargetConfig
from servewise.bench.compare import comparison_table, unmatched_points
from servewise.bench.config import BenchConfig
from servewise.bench.datasets import FORMATS
from servewise.bench.distributions import parse_length
from servewise.bench.output import write_outputs
from servewise.bench.overload import check_overload
from servewise.bench.progress import RichProgress
from servewise.bench.report import print_summary
from servewise.bench.results import BenchResult
from servewise.bench.runner import run_benchmark
from servewise.bench.schedule import LoadConfig, sweep
from servewise.bench.slo import parse_slo
from servewise.bench.workloads import WorkloadConfig, WorkloadKind

T = TypeVar("T")
EPILOG = """\
examples:
  servewise bench --base-url http://127.0.0.1:8000/v1 --rates 0.5,1,2,4 --num-requests 50 \\
      --slo ttft=1s,tpot=100ms --output-dir bench-results/run1
  servewise bench --concurrencies 1,8,32 --duration-s 60 --warmup-s 5 --input-len uniform:64,512
  servewise bench --dataset data.jsonl --max-throughput --num-requests 200
  servewise bench --workload shared-prefix --num-prefix-groups 4 --prefix-len 2048 --rate 2
  servewise bench --rate 50 --check-overload
  servewise bench compare bench-results/run1/results.json bench-results/run2/results.json

lengths: 128 | fixed:128 | uniform:LOW,HIGH | normal:MEAN,STD | lognormal:MEDIAN,SIGMA
"""


def _floats(text: str) -> list[float]:
    try:
        values = [math.inf if v.strip().lower() == "inf" else float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers (or inf), got {text!r}") from None
    if not values:
        raise argparse.ArgumentTypeError("expected at least one value")
    return values


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _checked(parse: Callable[[str], T]) -> Callable[[str], T]:
    """Turns a parser's ValueError into an argparse usage error."""

    def wrapped(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return wrapped


def add_workload_args(parser: argparse.ArgumentParser) -> None:
    """The workload flags (shared with ``servewise plan``, which replays the same requests)."""
    work = parser.add_argument_group("workload")
    work.add_argument("--workload", choices=[k.value for k in WorkloadKind],
                      help="default: dataset when --dataset is given, else synthetic")
    work.add_argument("--dataset", help="JSONL prompts/messages, ShareGPT or Alpaca file")
    work.add_argument("--dataset-format", choices=FORMATS, default="auto")
    work.add_argument("--input-len", type=_checked(parse_length), default=parse_length("fixed:256"),
                      help="prompt tokens (synthetic; shared-prefix question; mixed chat turns); default fixed:256")
    work.add_argument("--output-len", type=_checked(parse_length),
                      help="max_tokens per request (default: the dataset's reference answers, else fixed:128)")
    work.add_argument("--corpus", help="text file (or dataset) synthetic prompts are cut from")
    work.add_argument("--tokenizer", default="auto",
                      help="auto | server (POST /tokenize) | approx | a tokenizer.json or model path")
    work.add_argument("--num-prefix-groups", type=int, default=8, help="shared-prefix: groups (default 8)")
    work.add_argument("--prefix-len", type=int, default=1024, help="shared-prefix: system prompt tokens")
    work.add_argument("--long-fraction", type=float, default=0.25, help="mixed: share of long prompts")
    work.add_argument("--long-input-len", type=_checked(parse_length), default=parse_length("uniform:2048,4096"))


def add_load_args(parser: argparse.ArgumentParser) -> None:
    """The load-shape flags (shared with ``servewise plan``)."""
    load = parser.add_argument_group("load (default: --max-throughput)")
    shape = load.add_mutually_exclusive_group()
    shape.add_argument("--rate", type=_floats, help="open loop: requests/s (inf = all at once)")
    shape.add_argument("--rates", type=_floats, help="open-loop sweep, e.g. 0.5,1,2,4")
    shape.add_argument("--concurrency", type=_ints, help="closed loop: requests kept in flight")
    shape.add_argument("--concurrencies", type=_ints, help="closed-loop sweep, e.g. 1,8,32")
    shape.add_argument("--max-throughput", action="store_true", help="send every request at once")
    load.add_argument("--burstiness", type=float, default=1.0, help="gamma shape: 1 = Poisson, < 1 = burstier")
    load.add_argument("--max-concurrency", type=int, help="open loop: cap on requests in flight")
    amount = load.add_mutually_exclusive_group()
    amount.add_argument("--num-requests", type=int, help="measured requests per point (default 100)")
    amount.add_argument("--duration-s", type=float, help="send for this long per point, after the warm-up")
    load.add_argument("--warmup-requests", type=int, default=0)
    load.add_argument("--warmup-s", type=float, default=0.0)
    load.add_argument("--seed", type=int, default=0, help="fixes schedules and sampled prompts")
    load.add_argument("--prompt-pool-size", type=int, default=1000,
                      help="closed loop by duration: distinct prompts, reused in turn")


def build_run_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servewise bench", description="Load-test an OpenAI-compatible server.",
                                     epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = parser.add_argument_group("target")
    target.add_argument("--base-url", default="http://127.0.0.1:8000/v1", help="OpenAI API root (default: %(default)s)")
    target.add_argument("--endpoint", choices=[e.value for e in Endpoint], default="chat")
    target.add_argument("--model", help="model id (default: the first of GET /models)")
    target.add_argument("--api-key", help="Bearer token (default: $OPENAI_API_KEY)")
    target.add_argument("--request-timeout-s", type=float, default=600.0)
    target.add_argument("--ignore-eos", action="store_true",
                        help="send ignore_eos so outputs reach max_tokens (a vLLM/ServeWise extension)")
    add_workload_args(parser)
    add_load_args(parser)
    out = parser.add_argument_group("output")
    out.add_argument("--slo", type=_checked(parse_slo), help="e.g. ttft=1s,tpot=100ms[,e2e=10s][,itl=200ms]")
    out.add_argument("--output-dir", help="write results.json, report.md and PNG charts here")
    out.add_argument("--no-progress", action="store_true", help="no live progress bar (off anyway without a TTY)")
    out.add_argument("--check-overload", action="store_true",
                     help="check Retry-After on 429/503, lost accepted requests and 5xx; exit 1 on a problem")
    return parser


def workload_config_from_args(args: argparse.Namespace) -> WorkloadConfig:
    workload_kind = args.workload or (WorkloadKind.DATASET.value if args.dataset else WorkloadKind.SYNTHETIC.value)
    return WorkloadConfig(kind=WorkloadKind(workload_kind), input_len=args.input_len,
                          output_len=args.output_len, dataset_path=args.dataset,
                          dataset_format=args.dataset_format, corpus_path=args.corpus,
                          num_prefix_groups=args.num_prefix_groups, prefix_len=args.prefix_len,
                          long_fraction=args.long_fraction, long_input_len=args.long_input_len)


def load_config_from_args(args: argparse.Namespace) -> LoadConfig:
    rates = [math.inf] if args.max_throughput else args.rate or args.rates
    concurrencies = args.concurrency or args.concurrencies
    if rates is None and concurrencies is None:
        rates = [math.inf]
    num_requests = args.num_requests if args.num_requests is not None or args.duration_s is not None else 100
    return LoadConfig(points=sweep(rates=rates, concurrencies=concurrencies), num_requests=num_requests,
                      duration_s=args.duration_s, warmup_requests=args.warmup_requests, warmup_s=args.warmup_s,
                      burstiness=args.burstiness, max_concurrency=args.max_concurrency, seed=args.seed,
                      prompt_pool_size=args.prompt_pool_size)


def config_from_args(args: argparse.Namespace, env: dict[str, str]) -> BenchConfig:
    return BenchConfig(
        target=TargetConfig(base_url=args.base_url, endpoint=Endpoint(args.endpoint), model=args.model,
                            api_key=args.api_key or env.get("OPENAI_API_KEY") or None,
                            request_timeout_s=args.request_timeout_s, ignore_eos=args.ignore_eos),
        load=load_config_from_args(args),
        workload=workload_config_from_args(args),
        slo=args.slo or parse_slo(""),
        tokenizer=args.tokenizer,
    )


def _console() -> Console:
    # Piped output keeps the full table instead of wrapping it at 80 columns.
    return Console(width=None if sys.stdout.isatty() else 220)


def _run_main(argv: list[str]) -> int:
    parser = build_run_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args, dict(os.environ))
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.WARNING, format="servewise bench: %(message)s")
    show_progress = not args.no_progress and sys.stderr.isatty()
    try:
        if show_progress:
            with RichProgress() as progress:
                result = run_benchmark(config, progress)
        else:
            result = run_benchmark(config)
    except (BenchSetupError, ValueError, OSError) as exc:
        print(f"servewise bench: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("servewise bench: interrupted", file=sys.stderr)
        return 130
    overload = check_overload(result) if args.check_overload else None
    console = _console()
    print_summary(result, console, overload)
    if args.output_dir:
        files = write_outputs(result, args.output_dir, overload)
        console.print(f"wrote {', '.join(f.name for f in files)} to {args.output_dir}")
    return 1 if overload is not None and not overload.passed else 0


def _compare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="servewise bench compare",
                                     description="Two bench runs side by side, with ratios B/A.")
    parser.add_argument("a", help="results.json of run A (the baseline)")
    parser.add_argument("b", help="results.json of run B")
    args = parser.parse_args(argv)
    try:
        a, b = BenchResult.load(args.a), BenchResult.load(args.b)
    except (OSError, ValueError, KeyError) as exc:
        print(f"servewise bench compare: {exc}", file=sys.stderr)
        return 1
    console = _console()
    console.print(comparison_table(a, b))
    for note in unmatched_points(a, b):
        console.print(note)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``servewise bench ...``; returns the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "compare":
        return _compare_main(args[1:])
    if args and args[0] == "run":
        args = args[1:]
    return _run_main(args)
