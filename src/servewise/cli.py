"""``servewise`` command line: serve, chat, generate, bench, profile, plan.

The only place that reads environment variables and flags; everything below
gets explicit config objects.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from servewise import __version__
from servewise.config import (
    CacheConfig,
    ConfigError,
    DeviceConfig,
    EngineConfig,
    FaultConfig,
    SchedulerConfig,
    ServerConfig,
    SpeculativeConfig,
    StructuredOutputConfig,
)
from servewise.errors import ModelLoadError
from servewise.plan_cli import add_profile_parser

if TYPE_CHECKING:
    from servewise.engine.llm_engine import LLMEngine
    from servewise.fleet.config import FleetConfig
    from servewise.server.slo_runtime import SLOSettings
    from servewise.types import SamplingParams

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 2**10, "m": 1e6, "mb": 1e6, "mib": 2**20,
          "g": 1e9, "gb": 1e9, "gib": 2**30, "t": 1e12, "tb": 1e12, "tib": 2**40}


def parse_size(text: str) -> int:
    """'512MiB', '1GiB', '2g', '1048576' -> bytes."""
    m = _SIZE.match(text)
    unit = (m.group(2) or "").lower() if m else None
    if m is None or unit not in _UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (try 512MiB or 2GiB)")
    return int(float(m.group(1)) * _UNITS[unit])


def add_engine_args(p: argparse.ArgumentParser) -> None:
    env = os.environ.get
    g = p.add_argument_group("model and engine")
    g.add_argument("--model", default=env("SERVEWISE_MODEL"),
                   help="GGUF file or Hugging Face directory (default: the embedded SmolLM2-135M-Instruct)")
    g.add_argument("--served-model-name", default=None, help="model name clients use (default: from the file)")
    g.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (bf16 on a GPU)")
    g.add_argument("--linear-backend", default="auto", choices=["auto", "fp32", "int8"],
                   help="CPU linear kernels: auto = weights in blocks at their stored width (4-bit GGUF stays "
                        "4-bit), int8 activations; int8 = 8-bit blocks throughout; fp32 = identical to "
                        "transformers. On a GPU: auto = bf16, fp32 = fp32")
    g.add_argument("--cpu-isa", default=env("SERVEWISE_CPU_ISA", "auto"), choices=["auto", "avx512", "avx2", "generic"],
                   help="CPU kernel build (default: the best this CPU and OS allow; also SERVEWISE_CPU_ISA); "
                        "a lower one is used when the CPU cannot run the one asked for")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    g.add_argument("--enforce-eager", action="store_true",
                   help="GPU: no CUDA graphs (decode steps launch every kernel from Python)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    g.add_argument("--kv-cache-memory", type=parse_size, default=parse_size("1GiB"),
                   help="memory for the KV cache, e.g. 512MiB, 2GiB")
    g.add_argument("--num-kv-blocks", type=int, default=None, help="KV-cache blocks (overrides --kv-cache-memory)")
    g.add_argument("--no-prefix-caching", action="store_true", help="disable automatic prefix caching")
    g.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="K/V storage: auto = fp16 on CPU (fp32 with --linear-backend fp32)")
    g.add_argument("--max-num-seqs", type=int, default=64, help="requests running at once")
    g.add_argument("--max-num-batched-tokens", type=int, default=512, help="tokens computed per engine step")
    g.add_argument("--step-budget", default="slo", choices=["slo", "fixed"],
                   help="prompt tokens per step next to running decodes: slo = what keeps the step within the "
                        "tightest running TPOT target (by the fitted step cost); fixed = all the rest of "
                        "--max-num-batched-tokens")
    g.add_argument("--speculative-ngram", type=int, default=4, metavar="K",
                   help="n-gram speculative decoding (prompt lookup): draft up to K tokens from the sequence's "
                        "own text and verify them in the same step (same tokens as without); 0 = off. A sequence "
                        "drafts only when the measured step costs and its acceptance say it pays, never while "
                        "more than 4 sequences run")
    g.add_argument("--max-model-len", type=int, default=None, help="context cap (default: the model's)")
    g.add_argument("--queue-policy", default="fcfs", choices=["fcfs", "priority"])
    g.add_argument("--seed", type=int, default=0, help="seed for requests that give none")
    g.add_argument("--grammar-compile-timeout", type=float, default=10.0,
                   help="seconds a structured-output schema or grammar may take to compile (else 400)")
    f = p.add_argument_group("deliberate faults (to make a bad rollout candidate on purpose; off by default)")
    f.add_argument("--fault-step-delay-ms", type=float, default=0.0, help="add this much to every engine step")
    f.add_argument("--fault-fail-ratio", type=float, default=0.0, help="fail this share of requests at once")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model, served_model_name=args.served_model_name, seed=args.seed,
        cache=CacheConfig(block_size=args.block_size, kv_cache_memory_bytes=args.kv_cache_memory,
                          num_blocks=args.num_kv_blocks, enable_prefix_caching=not args.no_prefix_caching,
                          kv_cache_dtype=args.kv_cache_dtype),
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                  max_model_len=args.max_model_len, queue_policy=args.queue_policy,
                                  step_budget=args.step_budget),
        speculative=SpeculativeConfig(num_speculative_tokens=args.speculative_ngram),
        device=DeviceConfig(device=args.device, linear_backend=args.linear_backend, cpu_isa=args.cpu_isa,
                            num_threads=args.threads or os.cpu_count() or 1, enforce_eager=args.enforce_eager),
        structured=StructuredOutputConfig(compile_timeout_s=args.grammar_compile_timeout),
        fault=FaultConfig(step_delay_s=args.fault_step_delay_ms / 1000.0, fail_ratio=args.fault_fail_ratio))


def add_slo_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("SLOs, admission, tenants")
    g.add_argument("--slo-config", default=os.environ.get("SERVEWISE_SLO_CONFIG"),
                   help="YAML/TOML/JSON file of SLO classes (see README)")
    g.add_argument("--slo-class", action="append", default=[], metavar="SPEC",
                   help='an SLO class, e.g. "interactive:ttft=1s@p99,tpot=100ms,priority=0,slack=1.5" (repeatable)')
    g.add_argument("--default-slo-class", default=None)
    g.add_argument("--allow-client-slo-class", action="store_true",
                   help="clients may pick their class (X-SLO-Class header or the body's priority field), "
                        "never one more urgent than their API key's")
    g.add_argument("--admission", default="enforce", choices=["enforce", "off"],
                   help="enforce: shed (429 + Retry-After) requests predicted to miss their TTFT SLO; "
                        "off: predict and report only")
    g.add_argument("--max-queued-prefill-tokens", type=int, default=None, help="shed above this prefill backlog")
    g.add_argument("--max-waiting-requests", type=int, default=None, help="shed above this many waiting requests")
    g.add_argument("--api-keys-file", default=os.environ.get("SERVEWISE_API_KEYS_FILE"),
                   help="API keys -> tenant, SLO class, limits (YAML/TOML/JSON); also SERVEWISE_API_KEYS")
    g.add_argument("--public-metrics", action="store_true", help="serve /metrics without an API key")
    g.add_argument("--price-per-device-hour", type=float, default=None, help="$ per device-hour, for cost reports")
    g.add_argument("--watchdog-timeout", type=float, default=30.0,
                   help="seconds without an engine step, while work waits, before /ready turns 503")
    g.add_argument("--drain-timeout", type=float, default=30.0,
                   help="on SIGTERM, seconds in-flight requests get to finish")


def slo_settings(args: argparse.Namespace) -> SLOSettings:
    from servewise.server.slo_runtime import SLOSettings
    from servewise.slo import (
        AdmissionMode,
        default_slo_config,
        load_api_keys,
        load_slo_config,
        parse_api_keys,
    )
    from servewise.slo.spec_loading import slo_config_from_flags

    if args.slo_config and args.slo_class:
        raise SystemExit("give either --slo-config or --slo-class, not both")
    if args.slo_config:
        slo = load_slo_config(args.slo_config)
    elif args.slo_class:
        slo = slo_config_from_flags(args.slo_class, default_class=args.default_slo_class,
                                    allow_client_class=args.allow_client_slo_class)
    else:
        slo = default_slo_config()
    if args.allow_client_slo_class or args.default_slo_class:
        slo = dataclasses.replace(slo, allow_client_class=args.allow_client_slo_class or slo.allow_client_class,
                                  default_class=args.default_slo_class or slo.default_class)
    keys = None
    if args.api_keys_file:
        keys = load_api_keys(args.api_keys_file)
    elif os.environ.get("SERVEWISE_API_KEYS"):
        keys = parse_api_keys(os.environ["SERVEWISE_API_KEYS"])
    public = ("/health", "/ready") + (("/metrics",) if args.public_metrics else ())
    return SLOSettings(
        slo_config=slo, admission_mode=AdmissionMode.ENFORCE if args.admission == "enforce" else AdmissionMode.OBSERVE,
        max_queued_prefill_tokens=args.max_queued_prefill_tokens, max_num_waiting_requests=args.max_waiting_requests,
        api_keys=keys, public_routes=public, price_per_device_hour=args.price_per_device_hour,
        watchdog_timeout_s=args.watchdog_timeout, drain_timeout_s=args.drain_timeout)


def add_fleet_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("fleet (Ray Serve; without --replicas this is one process and Ray is never imported)")
    g.add_argument("--replicas", type=int, default=None,
                   help="serve through N engine replicas on Ray Serve (a local Ray, or --ray-address)")
    g.add_argument("--ray-address", default=os.environ.get("SERVEWISE_RAY_ADDRESS"),
                   help="join this Ray cluster (e.g. auto, or ray://head:10001) instead of starting one")
    g.add_argument("--min-replicas", type=int, default=None, help="with --max-replicas: autoscale on SLO headroom")
    g.add_argument("--max-replicas", type=int, default=None)
    g.add_argument("--replica-threads", type=int, default=None,
                   help="torch threads per replica (default: cores / max replicas)")
    g.add_argument("--num-cpus-per-replica", type=float, default=None,
                   help="Ray CPUs each replica reserves (default: --replica-threads)")
    g.add_argument("--num-gpus-per-replica", type=float, default=0.0, help="Ray GPUs each replica reserves")
    g.add_argument("--router", default="servewise", choices=["servewise", "pow2", "prefix-affinity"],
                   help="servewise: predicted TTFT with prefix affinity; pow2, prefix-affinity: Ray's own routers "
                        "(for comparison)")
    g.add_argument("--scale-down-delay", type=float, default=60.0,
                   help="seconds one replica fewer must look enough before the autoscaler removes one")


def fleet_config(args: argparse.Namespace) -> FleetConfig:
    from servewise.fleet.autoscaling import ScalingConfig
    from servewise.fleet.config import FleetConfig

    autoscale = args.min_replicas is not None or args.max_replicas is not None
    if autoscale and (args.min_replicas is None or args.max_replicas is None):
        raise ConfigError("give both --min-replicas and --max-replicas to autoscale")
    num_replicas = args.replicas if args.replicas is not None else (args.min_replicas or 1)
    max_replicas = args.max_replicas if autoscale else num_replicas
    threads = args.replica_threads or max(1, (os.cpu_count() or 1) // max(1, max_replicas))
    engine = dataclasses.replace(engine_config(args), device=dataclasses.replace(
        engine_config(args).device, num_threads=threads))
    try:
        scaling = ScalingConfig(min_replicas=args.min_replicas, max_replicas=args.max_replicas,
                                downscale_delay_s=args.scale_down_delay) if autoscale else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return FleetConfig(engine=engine, server=server_config(args), slo=slo_settings(args), num_replicas=num_replicas,
                       scaling=scaling, num_cpus_per_replica=args.num_cpus_per_replica or float(threads),
                       num_gpus_per_replica=args.num_gpus_per_replica, ray_address=args.ray_address,
                       router=args.router, serve_argv=tuple(getattr(args, "serve_argv", ())), log_level=args.log_level,
                       engine_from_argv=engine_config_from_serve_argv)


def engine_config_from_serve_argv(argv: Sequence[str]) -> EngineConfig:
    """The engine `servewise serve <argv>` would run (a rollout candidate's: the fleet's flags, then
    the candidate's). ConfigError for flags that do not parse."""
    parser = build_parser()
    parser.exit_on_error = False
    try:
        args = parser.parse_args(["serve", *argv])
    except (argparse.ArgumentError, SystemExit) as exc:
        raise ConfigError(f"bad engine flags {' '.join(argv)!r}: {exc}") from None
    return engine_config(args)


def fleet_config_from_argv(argv: Sequence[str]) -> FleetConfig:
    """The fleet of `servewise serve <argv>` (a KubeRay RayService passes the flags this way)."""
    args = build_parser().parse_args(["serve", *argv])
    args.serve_argv = list(argv)
    if args.replicas is None and args.min_replicas is None:
        args.replicas = 1
    return fleet_config(args)


def server_config(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(host=args.host, port=args.port, max_body_bytes=args.max_body_bytes,
                        log_requests=not args.no_request_log, max_grammar_bytes=args.max_grammar_bytes)


def _setup_process(level: str) -> None:
    # Two cores: tokenizer thread pools and a second OpenMP pool would oversubscribe them.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("servewise.requests").handlers = [_request_log_handler()]
    logging.getLogger("servewise.requests").propagate = False


def _request_log_handler() -> logging.Handler:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    return handler


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from servewise.server.app import create_app, local_backend_factory
    from servewise.server.lifecycle import DrainingServer

    if args.replicas is not None or args.min_replicas is not None or args.max_replicas is not None:
        from servewise.fleet.launcher import run_fleet

        try:
            fleet = fleet_config(args)
        except ConfigError:
            raise  # main() says it in one line, exit status 2
        except (ValueError, OSError) as exc:
            raise SystemExit(f"servewise serve: {exc}") from None
        return run_fleet(fleet)
    config = engine_config(args)
    server = server_config(args)
    try:
        settings = slo_settings(args)
    except (ValueError, OSError) as exc:
        raise SystemExit(f"servewise serve: {exc}") from None
    app = create_app(server, config, local_backend_factory(config, settings), settings)
    logging.getLogger("servewise.server").info(
        "ServeWise %s listening on http://%s:%d (OpenAI API under /v1); SLO classes %s, admission %s, %s",
        __version__, args.host, args.port, ", ".join(settings.slo_config.class_names), args.admission,
        f"{len(settings.api_keys)} API keys" if settings.api_keys else "no API keys (open)")
    uv_config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level.lower(),
                               access_log=False, timeout_keep_alive=server.timeout_keep_alive_s,
                               timeout_graceful_shutdown=5)
    state = app.state.servewise
    DrainingServer(uv_config, state, settings.drain_timeout_s).run()
    if state.load_error is not None:
        print(f"servewise serve: error: {state.load_error}", file=sys.stderr)
        return 1
    return 0


def _stream_one(llm_engine: LLMEngine, tokens: list[int], params: SamplingParams, out: TextIO) -> str:
    """Run one request to completion on a synchronous engine, printing text as it comes."""
    llm_engine.add_request(f"cli-{id(tokens)}", tokens, params)
    text = []
    while llm_engine.has_unfinished_requests:
        for o in llm_engine.step():
            for c in o.outputs:
                text.append(c.text)
                print(c.text, end="", flush=True, file=out)
    print(file=out)
    return "".join(text)


def cmd_generate(args: argparse.Namespace) -> int:
    from servewise.engine.llm_engine import LLMEngine
    from servewise.types import SamplingParams

    engine = LLMEngine(engine_config(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.sample_seed)
    tok = engine.tokenizer
    if args.raw:
        tokens = tok.encode(args.prompt)
    else:
        text = tok.apply_chat_template([{"role": "user", "content": args.prompt}], add_generation_prompt=True)
        tokens = tok.encode(text, add_special_tokens=False)
    _stream_one(engine, tokens, params, sys.stdout)
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from servewise.engine.llm_engine import LLMEngine
    from servewise.types import SamplingParams

    engine = LLMEngine(engine_config(args))
    params = SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.sample_seed)
    messages: list[dict[str, str]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print(f"Chatting with {engine.model_info.name} ({engine.model_info.path}). Ctrl-D to quit.")
    while True:
        try:
            line = input("you> ")
        except EOFError:
            print()
            return 0
        if not line.strip():
            continue
        messages.append({"role": "user", "content": line})
        text = engine.tokenizer.apply_chat_template(messages, add_generation_prompt=True)
        tokens = engine.tokenizer.encode(text, add_special_tokens=False)
        print("assistant> ", end="", flush=True)
        reply = _stream_one(engine, tokens, params, sys.stdout)
        messages.append({"role": "assistant", "content": reply})


def cmd_rollout(args: argparse.Namespace) -> int:
    import httpx

    from servewise.fleet.rollout_cli import run

    try:
        status, text = run(args.action, args.base_url, args.api_key, args.spec, args.json)
    except httpx.HTTPError as exc:
        print(f"servewise rollout {args.action}: error: cannot reach {args.base_url}: {exc}", file=sys.stderr)
        return 1
    print(text, file=sys.stderr if status else sys.stdout)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servewise", description="SLO-first LLM serving.")
    parser.add_argument("--version", action="version", version=f"servewise {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("SERVEWISE_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server (one process, or a fleet with --replicas)")
    add_engine_args(serve)
    add_slo_args(serve)
    add_fleet_args(serve)
    serve.add_argument("--host", default=os.environ.get("SERVEWISE_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("SERVEWISE_PORT", "8000")))
    serve.add_argument("--max-body-bytes", type=parse_size, default=parse_size("4MiB"))
    serve.add_argument("--max-grammar-bytes", type=parse_size, default=parse_size("64KiB"),
                       help="largest JSON schema, regex, grammar or tool set a request may send")
    serve.add_argument("--no-request-log", action="store_true", help="no JSON line per finished request")
    serve.set_defaults(func=cmd_serve)

    for name, func, helptext in (("generate", cmd_generate, "complete one prompt in the terminal"),
                                 ("chat", cmd_chat, "chat with the model in the terminal")):
        p = sub.add_parser(name, help=helptext)
        add_engine_args(p)
        if name == "generate":
            p.add_argument("prompt")
            p.add_argument("--raw", action="store_true", help="no chat template: complete the text as is")
        else:
            p.add_argument("--system", default=None, help="system prompt")
        p.add_argument("--max-tokens", type=int, default=256)
        p.add_argument("--temperature", type=float, default=0.0)
        p.add_argument("--sample-seed", type=int, default=None)
        p.set_defaults(func=func)

    rollout = sub.add_parser("rollout", help="canary or shadow a new model version on a running fleet")
    rollout.add_argument("action", choices=["start", "status", "promote", "pause", "resume", "abort"])
    rollout.add_argument("spec", nargs="?", help="start: the rollout spec (rollout.yaml; see README)")
    rollout.add_argument("--base-url", default=os.environ.get("SERVEWISE_BASE_URL", "http://127.0.0.1:8000"),
                         help="the fleet (the ingress's URL)")
    rollout.add_argument("--api-key", default=os.environ.get("SERVEWISE_ADMIN_KEY"),
                         help="an admin API key when the fleet has keys (also SERVEWISE_ADMIN_KEY)")
    rollout.add_argument("--json", action="store_true", help="print the status as JSON")
    rollout.set_defaults(func=cmd_rollout)

    bench = sub.add_parser("bench", help="load-test any OpenAI-compatible server", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=None)

    # The capacity planner (servewise.plan_cli): profile is an engine command; plan, like bench,
    # has its own parser (main() hands it the arguments).
    add_profile_parser(sub, add_engine_args)
    plan = sub.add_parser("plan", help="capacity planner: latency, goodput and replicas from a profile",
                          add_help=False)
    plan.add_argument("plan_args", nargs=argparse.REMAINDER)
    plan.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # the load tester has its own parser and never loads torch
        from servewise.bench.cli import main as bench_main

        return bench_main(argv[1:])
    if argv and argv[0] == "plan":
        from servewise.plan_cli import main as plan_main

        return plan_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "serve":
        args.serve_argv = argv[argv.index("serve") + 1:]
    _setup_process(args.log_level)
    try:
        return int(args.func(args))
    except (ConfigError, ModelLoadError) as exc:  # the user's to fix: one line, no traceback
        print(f"servewise {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
