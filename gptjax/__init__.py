"""gptjax: GPT-family language models in JAX/Flax NNX.

Names load on first use (PEP 562), so processes that need only a part of gptjax (tokenizer
workers of `gptjax data prepare`, launchers) do not pay for importing JAX.
"""

import importlib

_EXPORTS = {
    "ConfigError": "gptjax.config", "ModelConfig": "gptjax.config", "TrainConfig": "gptjax.config",
    "generate": "gptjax.generation", "export_hf": "gptjax.interop.hf",
    "GPT": "gptjax.model.gpt", "abstract_model": "gptjax.model.gpt", "init_model": "gptjax.model.gpt",
    "convert": "gptjax.interop.pretrained", "from_pretrained": "gptjax.interop.pretrained",
    "save_pretrained": "gptjax.interop.native",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'gptjax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])
