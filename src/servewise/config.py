"""Configuration dataclasses: one per component, validated in ``__post_init__``.

Nothing here reads the environment; the CLI builds these from flags and env vars.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

# Rope scaling variants the model code implements (HF `rope_scaling.rope_type`).
SUPPORTED_ROPE_SCALING = ("linear", "llama3", "default")
SUPPORTED_ARCHITECTURES = ("llama", "mistral", "qwen2")


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which and why."""


def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelArchConfig:
    """Hyperparameters of a decoder-only transformer, whatever the file format."""

    architecture: str  # one of SUPPORTED_ARCHITECTURES
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int  # usually hidden_size // num_attention_heads
    rms_norm_eps: float
    rope_theta: float
    max_position_embeddings: int  # the model's context length in tokens
    tie_word_embeddings: bool  # lm_head shares the embedding matrix
    attention_bias: bool = False  # q/k/v projections carry a bias (Qwen2)
    # HF-style rope scaling dict, e.g. {"rope_type": "llama3", "factor": 8.0, ...}; None = plain RoPE.
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False, compare=False)
    bos_token_id: int | None = None
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        _require(self.architecture in SUPPORTED_ARCHITECTURES,
                 f"unknown architecture {self.architecture!r}; supported: {', '.join(SUPPORTED_ARCHITECTURES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads", "head_dim", "max_position_embeddings"):
            value = getattr(self, name)
            _require(isinstance(value, int) and 0 < value < 10_000_000, f"{name} must be a positive int, got {value!r}")
        _require(self.num_attention_heads % self.num_key_value_heads == 0,
                 "num_attention_heads must be a multiple of num_key_value_heads")
        _require(self.head_dim % 2 == 0, "head_dim must be even for RoPE")
        _require(self.rms_norm_eps > 0, "rms_norm_eps must be positive")
        _require(self.rope_theta > 0, "rope_theta must be positive")
        if self.rope_scaling is not None:
            kind = self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))
            _require(kind in SUPPORTED_ROPE_SCALING, f"unsupported rope scaling {kind!r}")

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads


@dataclass(frozen=True)
class CacheConfig:
    """The paged KV cache: one pool of fixed-size blocks shared by every request."""

    block_size: int = 16  # tokens per block
    # Memory budget for K and V of all layers, in bytes; used when num_blocks is None.
    kv_cache_memory_bytes: int = 1024 * 1024 * 1024
    num_blocks: int | None = None  # explicit pool size, overrides the memory budget
    enable_prefix_caching: bool = True
    # K/V storage: "auto" = fp16 on CPU unless the fp32 linear backend asks for exactness (then fp32),
    # the model dtype on GPU; or "fp32" / "fp16" explicitly. fp16 halves KV memory and bandwidth.
    kv_cache_dtype: str = "auto"

    def __post_init__(self) -> None:
        _require(self.block_size in (1, 2, 4, 8, 16, 32, 64, 128), "block_size must be a power of two ≤ 128")
        _require(self.kv_cache_dtype in ("auto", "fp32", "fp16", "bf16"),
                 f"kv_cache_dtype must be auto, fp32, fp16 or bf16, got {self.kv_cache_dtype!r}")
        _require(self.kv_cache_memory_bytes > 0, "kv_cache_memory_bytes must be positive")
        _require(self.num_blocks is None or self.num_blocks >= 2, "num_blocks must be ≥ 2")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching limits of one engine step."""

    max_num_seqs: int = 64  # requests running at once
    max_num_batched_tokens: int = 512  # tokens computed per step (prefill chunks + decodes)
    max_model_len: int | None = None  # context cap; None = the model's own
    queue_policy: str = "fcfs"  # waiting-queue order, see engine/queue_policy.py
    # Prefill tokens per step (slo/step_budget.py): "slo" = what keeps the step within the tightest
    # running TPOT × step_tpot_margin by the fitted step cost; "fixed" = max_num_batched_tokens - decodes.
    step_budget: str = "slo"
    step_tpot_margin: float = 0.9  # steps aim at this fraction of the tightest running TPOT target
    min_prefill_chunk_tokens: int = 32  # prefill tokens a step may always take while decodes run

    def __post_init__(self) -> None:
        _require(1 <= self.max_num_seqs <= 4096, "max_num_seqs must be in [1, 4096]")
        _require(self.max_num_batched_tokens >= 1, "max_num_batched_tokens must be ≥ 1")
        _require(self.max_model_len is None or self.max_model_len >= 2, "max_model_len must be ≥ 2")
        _require(self.step_budget in ("slo", "fixed"), f"step_budget must be slo or fixed, got {self.step_budget!r}")
        _require(0 < self.step_tpot_margin <= 1, "step_tpot_margin must be in (0, 1]")
        _require(self.min_prefill_chunk_tokens >= 1, "min_prefill_chunk_tokens must be ≥ 1")


@dataclass(frozen=True)
class SpeculativeConfig:
    """n-gram speculative decoding (prompt lookup), engine/speculative.py."""

    num_speculative_tokens: int = 0  # k: most draft tokens proposed and verified per step; 0 = off
    prompt_lookup_max: int = 3  # longest suffix n-gram looked up in the sequence's own tokens
    prompt_lookup_min: int = 1  # shortest
    max_num_running: int = 4  # never draft while more sequences run (their decode steps are compute-bound)
    # Draft only when the expected tokens per second of the step, by the fitted step cost and the
    # sequence's acceptance, beat not drafting by this factor (the draft length is chosen the same way).
    min_speedup: float = 1.05
    probe_interval_steps: int = 16  # a sequence that stopped drafting tries 1 draft token this often

    def __post_init__(self) -> None:
        _require(0 <= self.num_speculative_tokens <= 16, "num_speculative_tokens must be in [0, 16]")
        _require(1 <= self.prompt_lookup_min <= self.prompt_lookup_max <= 8,
                 "need 1 ≤ prompt_lookup_min ≤ prompt_lookup_max ≤ 8")
        _require(self.max_num_running >= 1, "max_num_running must be ≥ 1")
        _require(self.min_speedup >= 1.0, "min_speedup must be ≥ 1")
        _require(self.probe_interval_steps >= 1, "probe_interval_steps must be ≥ 1")

    @property
    def enabled(self) -> bool:
        return self.num_speculative_tokens > 0


@dataclass(frozen=True)
class DeviceConfig:
    """Where and how the model math runs."""

    device: str = "cpu"  # "cpu" or "cuda" / "cuda:N"
    # Linear-layer kernels: "fp32" everywhere (matches transformers), or "auto": each weight kept
    # in blocks at the width it is stored (4-bit GGUF stays 4-bit; float -> 8-bit), int8
    # activations, native kernels (fastest on CPU; "int8": 8-bit blocks throughout).
    # On a GPU, "auto" computes in bf16 and "fp32" in fp32 (slower, matches transformers fp32).
    linear_backend: str = "auto"
    # CPU kernel build: "auto" = the best this CPU and OS allow (AVX-512 VNNI, AVX2, portable);
    # "avx2" / "generic" cap it (never raise it). Never AMX.
    cpu_isa: str = "auto"
    num_threads: int | None = None  # torch intra-op threads; None = leave torch's default
    # GPU only: True runs every step eagerly; False replays CUDA graphs for decode steps.
    enforce_eager: bool = False

    def __post_init__(self) -> None:
        _require(re.fullmatch(r"cpu|cuda(:\d+)?", self.device) is not None,
                 f"device must be cpu, cuda or cuda:N, got {self.device!r}")
        _require(self.linear_backend in ("auto", "fp32", "int8"),
                 f"linear_backend must be auto, fp32 or int8, got {self.linear_backend!r}")
        _require(self.cpu_isa in ("auto", "avx512", "avx2", "generic"),
                 f"cpu_isa must be auto, avx512, avx2 or generic, got {self.cpu_isa!r}")
        _require(self.num_threads is None or self.num_threads >= 1, "num_threads must be ≥ 1")
        _require(self.device == "cpu" or self.linear_backend != "int8",
                 "linear_backend int8 is a CPU kernel; on a GPU use auto (bf16) or fp32")


@dataclass(frozen=True)
class StructuredOutputConfig:
    """Grammar compilation for structured outputs and tool calls (engine/structured.py)."""

    compile_timeout_s: float = 10.0  # a request whose grammar takes longer gets a 400
    cache_size: int = 256  # compiled grammars kept, least recently used evicted
    compile_threads: int = 2  # compiles running at once (never on the engine loop thread)

    def __post_init__(self) -> None:
        _require(self.compile_timeout_s > 0, "compile_timeout_s must be positive")
        _require(self.cache_size >= 1, "cache_size must be ≥ 1")
        _require(self.compile_threads >= 1, "compile_threads must be ≥ 1")


@dataclass(frozen=True)
class FaultConfig:
    """Deliberate faults, to make a bad rollout candidate on purpose (tests, demos). Off by default."""

    step_delay_s: float = 0.0  # added to every engine step (raises TPOT and TTFT alike)
    fail_ratio: float = 0.0  # share of requests failed at once with an engine error
    seed: int = 0  # which requests fail is drawn from this

    def __post_init__(self) -> None:
        _require(0 <= self.step_delay_s <= 60, "fault step delay must be in [0, 60] s")
        _require(0 <= self.fail_ratio <= 1, "fault fail ratio must be in [0, 1]")

    @property
    def active(self) -> bool:
        return self.step_delay_s > 0 or self.fail_ratio > 0


@dataclass(frozen=True)
class EngineConfig:
    model: str | None = None  # GGUF file or HF directory; None = the embedded SmolLM2 default
    served_model_name: str | None = None
    cache: CacheConfig = field(default_factory=CacheConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    device: DeviceConfig = field(default_factory=DeviceConfig)
    structured: StructuredOutputConfig = field(default_factory=StructuredOutputConfig)
    speculative: SpeculativeConfig = field(default_factory=SpeculativeConfig)
    seed: int = 0  # seed of requests that give none
    fault: FaultConfig = field(default_factory=FaultConfig)  # off unless asked for (rollout tests)


@dataclass(frozen=True)
class ServerConfig:
    """HTTP front end: where to listen and the bounds on every request."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 4 * 1024 * 1024  # larger bodies get 413
    max_messages: int = 1024  # chat messages per request
    max_prompts: int = 64  # prompts per completions request
    log_requests: bool = True  # one JSON line per finished request
    timeout_keep_alive_s: int = 30
    max_grammar_bytes: int = 64 * 1024  # a JSON schema, regex, grammar or tool set larger than this gets 400

    def __post_init__(self) -> None:
        _require(0 <= self.port <= 65535, "port must be in [0, 65535]")
        _require(self.max_body_bytes >= 1024, "max_body_bytes must be ≥ 1024")
        _require(self.max_messages >= 1 and self.max_prompts >= 1, "max_messages and max_prompts must be ≥ 1")
        _require(self.max_grammar_bytes >= 1, "max_grammar_bytes must be ≥ 1")
