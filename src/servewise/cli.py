"""``servewise`` command line: serve, chat, generate, bench.

The only place that reads environment variables and flags; everything below
gets explicit config objects.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

from servewise import __version__
from servewise.config import CacheConfig, DeviceConfig, EngineConfig, SchedulerConfig, ServerConfig

if TYPE_CHECKING:
    from servewise.engine.llm_engine import LLMEngine
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
    g.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    g.add_argument("--linear-backend", default="auto", choices=["auto", "fp32", "int8"],
                   help="CPU linear kernels: auto = int8 for small steps, fp32 GEMM for large ones; "
                        "fp32 = batch-invariant and identical to transformers")
    g.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    g.add_argument("--block-size", type=int, default=16, help="tokens per KV-cache block")
    g.add_argument("--kv-cache-memory", type=parse_size, default=parse_size("1GiB"),
                   help="memory for the KV cache, e.g. 512MiB, 2GiB")
    g.add_argument("--num-kv-blocks", type=int, default=None, help="KV-cache blocks (overrides --kv-cache-memory)")
    g.add_argument("--no-prefix-caching", action="store_true", help="disable automatic prefix caching")
    g.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"],
                   help="K/V storage: auto = fp16 on CPU (fp32 with --linear-backend fp32)")
    g.add_argument("--max-num-seqs", type=int, default=64, help="requests running at once")
    g.add_argument("--max-num-batched-tokens", type=int, default=512, help="tokens computed per engine step")
    g.add_argument("--max-model-len", type=int, default=None, help="context cap (default: the model's)")
    g.add_argument("--queue-policy", default="fcfs", choices=["fcfs", "priority"])
    g.add_argument("--seed", type=int, default=0, help="seed for requests that give none")


def engine_config(args: argparse.Namespace) -> EngineConfig:
    return EngineConfig(
        model=args.model, served_model_name=args.served_model_name, seed=args.seed,
        cache=CacheConfig(block_size=args.block_size, kv_cache_memory_bytes=args.kv_cache_memory,
                          num_blocks=args.num_kv_blocks, enable_prefix_caching=not args.no_prefix_caching,
                          kv_cache_dtype=args.kv_cache_dtype),
        scheduler=SchedulerConfig(max_num_seqs=args.max_num_seqs, max_num_batched_tokens=args.max_num_batched_tokens,
                                  max_model_len=args.max_model_len, queue_policy=args.queue_policy),
        device=DeviceConfig(device=args.device, linear_backend=args.linear_backend,
                            num_threads=args.threads or os.cpu_count() or 1))


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

    from servewise.server.app import create_app, engine_factory_for

    config = engine_config(args)
    server = ServerConfig(host=args.host, port=args.port, max_body_bytes=args.max_body_bytes,
                          log_requests=not args.no_request_log)
    app = create_app(server, config, engine_factory_for(config))
    logging.getLogger("servewise.server").info("ServeWise %s listening on http://%s:%d (OpenAI API under /v1)",
                                               __version__, args.host, args.port)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower(), access_log=False,
                timeout_keep_alive=server.timeout_keep_alive_s, loop="auto", http="auto")
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servewise", description="SLO-first LLM serving.")
    parser.add_argument("--version", action="version", version=f"servewise {__version__}")
    parser.add_argument("--log-level", default=os.environ.get("SERVEWISE_LOG_LEVEL", "info"))
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="OpenAI-compatible HTTP server")
    add_engine_args(serve)
    serve.add_argument("--host", default=os.environ.get("SERVEWISE_HOST", "127.0.0.1"))
    serve.add_argument("--port", type=int, default=int(os.environ.get("SERVEWISE_PORT", "8000")))
    serve.add_argument("--max-body-bytes", type=parse_size, default=parse_size("4MiB"))
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

    bench = sub.add_parser("bench", help="load-test any OpenAI-compatible server", add_help=False)
    bench.add_argument("bench_args", nargs=argparse.REMAINDER)
    bench.set_defaults(func=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "bench":  # the load tester has its own parser and never loads torch
        from servewise.bench.cli import main as bench_main

        return bench_main(argv[1:])
    args = build_parser().parse_args(argv)
    _setup_process(args.log_level)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
