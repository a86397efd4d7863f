"""gptjax: GPT-family language models in JAX/Flax NNX."""

from gptjax.config import ConfigError, ModelConfig, TrainConfig
from gptjax.generation import generate
from gptjax.hf import export_hf
from gptjax.model import GPT, abstract_model, init_model
from gptjax.pretrained import convert, from_pretrained, save_pretrained

__all__ = ["ConfigError", "GPT", "ModelConfig", "TrainConfig", "abstract_model", "convert", "export_hf",
           "from_pretrained", "generate", "init_model", "save_pretrained"]
