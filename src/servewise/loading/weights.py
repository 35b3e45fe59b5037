"""The parameters a decoder of a given `ModelArchConfig` must have, by Hugging Face name.

Both loaders check what a file holds against this table before reading any tensor data, so a
missing tensor or a wrong shape fails with a message and without allocating the model.
"""

from __future__ import annotations

from collections.abc import Mapping

from servewise.config import ModelArchConfig
from servewise.errors import ModelLoadError


def expected_shapes(arch: ModelArchConfig) -> dict[str, tuple[int, ...]]:
    """Hugging Face parameter name -> shape (out_features, in_features for linears)."""
    hidden, q_rows, kv_rows = arch.hidden_size, arch.num_attention_heads * arch.head_dim, \
        arch.num_key_value_heads * arch.head_dim
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (arch.vocab_size, hidden),
        "model.norm.weight": (hidden,),
    }
    if not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, hidden)
    for i in range(arch.num_hidden_layers):
        layer = f"model.layers.{i}"
        shapes.update({
            f"{layer}.input_layernorm.weight": (hidden,),
            f"{layer}.self_attn.q_proj.weight": (q_rows, hidden),
            f"{layer}.self_attn.k_proj.weight": (kv_rows, hidden),
            f"{layer}.self_attn.v_proj.weight": (kv_rows, hidden),
            f"{layer}.self_attn.o_proj.weight": (hidden, q_rows),
            f"{layer}.post_attention_layernorm.weight": (hidden,),
            f"{layer}.mlp.gate_proj.weight": (arch.intermediate_size, hidden),
            f"{layer}.mlp.up_proj.weight": (arch.intermediate_size, hidden),
            f"{layer}.mlp.down_proj.weight": (hidden, arch.intermediate_size),
        })
        if arch.attention_bias:
            shapes.update({
                f"{layer}.self_attn.q_proj.bias": (q_rows,),
                f"{layer}.self_attn.k_proj.bias": (kv_rows,),
                f"{layer}.self_attn.v_proj.bias": (kv_rows,),
            })
    return shapes


def check_shapes(path: str, found: Mapping[str, tuple[int, ...]], arch: ModelArchConfig,
                 describe: Mapping[str, str] | None = None) -> None:
    """Raise ModelLoadError unless `found` has exactly the expected names and shapes.

    describe: optional HF name -> name in the file, so messages name what the file calls it.
    """
    expected = expected_shapes(arch)
    missing = [name for name in expected if name not in found]
    if missing:
        more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ModelLoadError(path, f"missing tensors: {', '.join(missing[:3])}{more}")
    unexpected = [name for name in found if name not in expected]
    if unexpected:
        shown = [describe.get(n, n) if describe else n for n in unexpected[:3]]
        raise ModelLoadError(path, f"unexpected tensors for a {arch.architecture} model with {arch.num_hidden_layers} "
                                   f"layers: {', '.join(shown)}")
    for name, shape in expected.items():  # model order, so the first mismatch reported is stable
        if tuple(found[name]) != shape:
            label = describe.get(name, name) if describe else name
            raise ModelLoadError(path, f"tensor {label} has shape {tuple(found[name])}, expected {shape} "
                                       "from the model's hyperparameters")
