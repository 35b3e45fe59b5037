"""The engine on a CUDA GPU: greedy parity with transformers, then throughput against transformers.

    python benchmarks/gpu.py prepare --out DIR          # here: SmolLM2's config and tokenizer, no weights
    python benchmarks/gpu.py run --model DIR [--quick]  # on the GPU machine

`prepare` writes a Hugging Face directory (config.json, tokenizer.json, tokenizer_config.json,
generation_config.json) taken from the embedded GGUF, without weights, so that it travels to a GPU
machine that cannot reach a hub. `run` fills it with seeded random weights at the real shapes when it
has none (the table says so), then prints:

1. greedy parity: ServeWise `--linear-backend fp32` on the GPU against transformers fp32 on the
   same GPU and weights (must be identical), and ServeWise bf16 against transformers bf16 (reported:
   bf16 rounding differs between any two implementations);
2. throughput, bf16, with CUDA graphs and with --enforce-eager: prefill tok/s (one 512-token
   prompt, and 32 at once), decode tok/s at 1/8/32/64/256 sequences (128-token prompts, 128 output
   tokens, ignore_eos), TTFT with a cached 1,000-token prefix vs cold, peak GPU memory;
   transformers `generate` (bf16, same GPU) at 1 and 64 sequences.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from servewise.config import CacheConfig, DeviceConfig, EngineConfig, SchedulerConfig  # noqa: E402
from servewise.engine.llm_engine import LLMEngine  # noqa: E402
from servewise.types import SamplingParams  # noqa: E402
from throughput import bench_decode, bench_prefill, bench_prefix_ttft, random_prompt  # noqa: E402

PARITY_TOKENS = 32


def prepare(out: Path) -> None:
    """SmolLM2's hyperparameters, tokenizer and chat template from the embedded GGUF, as an HF directory."""
    from servewise.loading import load_checkpoint

    ckpt = load_checkpoint(None)
    arch, tok = ckpt.arch, ckpt.tokenizer
    out.mkdir(parents=True, exist_ok=True)
    tok.backend.save(str(out / "tokenizer.json"))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": arch.vocab_size,
        "hidden_size": arch.hidden_size, "intermediate_size": arch.intermediate_size,
        "num_hidden_layers": arch.num_hidden_layers, "num_attention_heads": arch.num_attention_heads,
        "num_key_value_heads": arch.num_key_value_heads, "head_dim": arch.head_dim, "hidden_act": "silu",
        "rms_norm_eps": arch.rms_norm_eps, "rope_theta": arch.rope_theta, "rope_scaling": arch.rope_scaling,
        "max_position_embeddings": arch.max_position_embeddings, "tie_word_embeddings": arch.tie_word_embeddings,
        "bos_token_id": arch.bos_token_id, "eos_token_id": list(arch.eos_token_ids), "torch_dtype": "bfloat16",
        "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1))
    (out / "generation_config.json").write_text(json.dumps({"bos_token_id": arch.bos_token_id,
                                                            "eos_token_id": list(tok.eos_token_ids)}))
    (out / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": tok.bos_token, "eos_token": tok.eos_token,
        "add_bos_token": tok.add_bos_token, "chat_template": tok.chat_template,
        "model_max_length": arch.max_position_embeddings}, indent=1))
    print(f"wrote {out} ({arch.num_hidden_layers} layers, hidden {arch.hidden_size}, vocab {arch.vocab_size}); "
          "no weights: `run` makes random ones")


def fill_random_weights(model_dir: Path, seed: int = 0) -> None:
    from safetensors.torch import save_file
    from tests.factories import tiny_weights

    cfg = json.loads((model_dir / "config.json").read_text())
    weights = tiny_weights(vocab_size=cfg["vocab_size"], hidden_size=cfg["hidden_size"],
                           num_layers=cfg["num_hidden_layers"], num_heads=cfg["num_attention_heads"],
                           num_kv_heads=cfg["num_key_value_heads"], intermediate_size=cfg["intermediate_size"],
                           attention_bias=cfg.get("attention_bias", False),
                           tie_word_embeddings=cfg["tie_word_embeddings"], seed=seed)
    save_file({k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()},
              str(model_dir / "model.safetensors"), metadata={"format": "pt"})


KV_GIB = 8.0


def engine(model: Path, device: str, backend: str, eager: bool = False, **scheduler: Any) -> LLMEngine:
    return LLMEngine(EngineConfig(
        model=str(model), cache=CacheConfig(kv_cache_memory_bytes=int(KV_GIB * 2**30)),
        scheduler=SchedulerConfig(**{"max_num_seqs": 256, "max_num_batched_tokens": 8192, **scheduler}),
        device=DeviceConfig(device=device, linear_backend=backend, enforce_eager=eager)))


def parity_prompts(count: int = 16) -> list[list[int]]:
    rng = random.Random(7)
    lengths = [1, 3, 8, 15, 16, 17, 33, 64, 100, 128, 200, 255, 300, 511, 700, 1000]
    return [random_prompt(rng, n) for n in lengths[:count]]


def engine_greedy(eng: LLMEngine, prompts: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(max_tokens=PARITY_TOKENS, temperature=0, ignore_eos=True)
    for i, p in enumerate(prompts):
        eng.add_request(f"p{i}", p, params)
    out: dict[str, list[int]] = {}
    while eng.has_unfinished_requests:
        for o in eng.step():
            out.setdefault(o.request_id, []).extend(o.outputs[0].token_ids)
    return [out[f"p{i}"] for i in range(len(prompts))]


def hf_greedy(model_dir: Path, device: str, dtype: torch.dtype, prompts: list[list[int]]) -> list[list[int]]:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(device).eval()
    model.generation_config.eos_token_id = None
    result = []
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([p], device=device)
            gen = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=PARITY_TOKENS,
                                 do_sample=False, pad_token_id=0)
            result.append(gen[0, len(p):].tolist())
    del model
    return result


def agreement(a: list[list[int]], b: list[list[int]]) -> str:
    same = sum(x == y for x, y in zip(a, b, strict=True))
    prefix = [next((i for i, (s, t) in enumerate(zip(x, y, strict=True)) if s != t), len(x))
              for x, y in zip(a, b, strict=True)]
    return f"{same}/{len(a)} identical, mean common prefix {statistics.mean(prefix):.1f}/{PARITY_TOKENS} tokens"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def hf_decode_rate(model_dir: Path, device: str, batch: int, new: int) -> float:
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to(device).eval()
    rng = random.Random(3)
    ids = torch.tensor([random_prompt(rng, 128) for _ in range(batch)], device=device)
    with torch.inference_mode():
        model.generate(ids[:, :16], attention_mask=torch.ones_like(ids[:, :16]), max_new_tokens=4, do_sample=False,
                       pad_token_id=0)  # warm-up
        sync(device)
        t = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                       do_sample=False, pad_token_id=0)
        sync(device)
    return batch * new / (time.perf_counter() - t)


def run(model_dir: Path, device: str, quick: bool) -> None:
    on_gpu = device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit(f"torch {torch.__version__} sees no CUDA GPU: nothing to measure here")
    random_weights = not any(model_dir.glob("*.safetensors"))
    if random_weights:
        fill_random_weights(model_dir)
    name = torch.cuda.get_device_name(device) if on_gpu else "CPU (a dry run: use throughput.py for CPU figures)"
    print(f"Device: {name}, torch {torch.__version__}; model {model_dir}"
          + (" (seeded random weights at the real shapes)" if random_weights else ""))

    prompts = parity_prompts()
    print("\n## Greedy parity, same GPU, same weights "
          f"({len(prompts)} prompts of 1-1,000 tokens x {PARITY_TOKENS} tokens, one batch)")
    fp32 = engine_greedy(engine(model_dir, device, "fp32"), prompts)
    hf32 = hf_greedy(model_dir, device, torch.float32, prompts)
    print(f"- ServeWise fp32 vs transformers fp32: {agreement(fp32, hf32)}")
    chunked = engine_greedy(engine(model_dir, device, "fp32", max_num_batched_tokens=64), prompts)
    print(f"- ServeWise fp32, 64-token prefill chunks vs one batch: {agreement(chunked, fp32)}")
    bf16 = engine_greedy(engine(model_dir, device, "auto"), prompts)
    eager = engine_greedy(engine(model_dir, device, "auto", eager=True), prompts)
    print(f"- ServeWise bf16, CUDA graphs vs --enforce-eager: {agreement(bf16, eager)}")
    hf16 = hf_greedy(model_dir, device, torch.bfloat16, prompts)
    print(f"- ServeWise bf16 vs transformers bf16: {agreement(bf16, hf16)}")
    print(f"- transformers bf16 vs transformers fp32: {agreement(hf16, hf32)}")
    print(f"- ServeWise bf16 vs transformers fp32: {agreement(bf16, hf32)}")
    if on_gpu:
        torch.cuda.empty_cache()

    new = 32 if quick else 128
    columns = {"ServeWise bf16": bench_engine(engine(model_dir, device, "auto"), device, new),
               "ServeWise bf16 --enforce-eager": bench_engine(engine(model_dir, device, "auto", eager=True),
                                                              device, new)}
    theirs = {f"decode tok/s, {n} seqs": f"{hf_decode_rate(model_dir, device, n, new):,.0f}" for n in (1, 64)}
    print(f"\n## Throughput, bf16 ({new} output tokens per sequence; 128-token prompts)")
    print(f"Command: {' '.join(sys.argv)}\n")
    print("| metric | " + " | ".join(columns) + " | transformers generate bf16 |")
    print("|---|" + "---|" * (len(columns) + 1))
    for label in next(iter(columns.values())):
        print(f"| {label} | " + " | ".join(c[label] for c in columns.values()) + f" | {theirs.get(label, '—')} |")


def bench_engine(eng: LLMEngine, device: str, new: int) -> dict[str, str]:
    on_gpu = device.startswith("cuda")
    rng = random.Random(0)
    bench_decode(eng, rng, 4, 16, 4)  # warm-up
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    rows = {"prefill tok/s, one 512-token prompt": f"{bench_prefill(eng, rng):,.0f}"}
    for i in range(32):
        eng.add_request(f"bp{i}", random_prompt(rng, 512), SamplingParams(max_tokens=1, temperature=0))
    sync(device)
    t = time.perf_counter()
    while eng.has_unfinished_requests:
        eng.step()
    rows["prefill tok/s, 32 x 512-token prompts"] = f"{32 * 512 / (time.perf_counter() - t):,.0f}"
    for n in (1, 8, 32, 64, 256):
        bench_decode(eng, rng, n, output_len=4)  # the first steps of a shape capture its CUDA graphs
        rows[f"decode tok/s, {n} seqs"] = f"{bench_decode(eng, rng, n, output_len=new):,.0f}"
    cold, cached = bench_prefix_ttft(eng, rng)
    rows["TTFT cold, 1,016 tokens (ms)"] = f"{cold * 1e3:.1f}"
    rows["TTFT cached 1,000-token prefix (ms)"] = f"{cached * 1e3:.1f}"
    if on_gpu:
        peak = torch.cuda.max_memory_allocated(device) / 2**20
        rows[f"peak GPU memory (MiB, KV pool {KV_GIB:g} GiB)"] = f"{peak:,.0f}"
    graphs = eng.runner.graphs
    rows["CUDA graphs captured (capture time)"] = (f"{len(graphs.graphs)} ({graphs.capture_s:.1f} s)"
                                                  if graphs is not None else "—")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("run")
    r.add_argument("--model", type=Path, required=True, help="an HF directory (from `prepare`, or real weights)")
    r.add_argument("--device", default="cuda")
    r.add_argument("--quick", action="store_true", help="32 output tokens per sequence instead of 128")
    r.add_argument("--kv-gib", type=float, default=KV_GIB, help="KV-cache pool per engine")
    args = parser.parse_args()
    if args.command == "prepare":
        prepare(args.out)
    else:
        globals()["KV_GIB"] = args.kv_gib
        run(args.model, args.device, args.quick)


if __name__ == "__main__":
    main()
