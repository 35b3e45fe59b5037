"""Model loading: GGUF files and Hugging Face safetensors directories -> `Checkpoint`.

    from servewise.loading import load_checkpoint
    checkpoint = load_checkpoint(None)  # the embedded SmolLM2-135M-Instruct GGUF
    checkpoint.arch, checkpoint.tensors["model.embed_tokens.weight"], checkpoint.tokenizer

Everything that cannot be loaded raises `servewise.errors.ModelLoadError`.
"""

from servewise.loading.checkpoint import Checkpoint, QuantizedTensor
from servewise.loading.detokenizer import IncrementalDetokenizer
from servewise.loading.load import embedded_model_path, load_checkpoint, load_tokenizer
from servewise.loading.tokenizer import Tokenizer

__all__ = ["Checkpoint", "IncrementalDetokenizer", "QuantizedTensor", "Tokenizer", "embedded_model_path",
           "load_checkpoint", "load_tokenizer"]
