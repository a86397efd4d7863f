"""gptjax: GPT-family language models in JAX/Flax NNX."""

from gptjax.config import ConfigError, ModelConfig
from gptjax.model import GPT, abstract_model, init_model

__all__ = ["ConfigError", "GPT", "ModelConfig", "abstract_model", "init_model"]
