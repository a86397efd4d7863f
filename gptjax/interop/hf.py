"""Hugging Face weights: load and export safetensors checkpoints of gpt2, gpt_neo, gptj, gpt_neox,
llama and bloom through their Family (hf_config) and tensor table (hf_tables).

Loading builds the model abstractly and fills it from the checkpoint: nothing is randomly
initialised, and weights are only read after the config has been accepted.
"""

from __future__ import annotations

import dataclasses
import itertools
import pathlib
import re
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
from flax import nnx

from gptjax.config import EXECUTION_FIELDS, ConfigError, ModelConfig
from gptjax.interop.hf_config import (
    BIAS_FLAGS,
    CONFIG_FILE,
    FAMILIES,
    LAYOUT_FIELDS,
    Family,
    config_from_hf,
    config_to_hf,
    exported_config,
    with_overrides,
)
from gptjax.interop.hf_tables import Rule
from gptjax.model import kernels
from gptjax.model.gpt import GPT, abstract_model
from gptjax.model.layers import DTYPES
from gptjax.store import tensor_files
from gptjax.store.tensor_files import CheckpointError

_STORAGE_DTYPES = {"F32": "float32", "F16": "float32", "BF16": "bfloat16"}  # F16 -> F32 is exact

# --------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    shape: tuple[int, ...]  # per layer for block parameters, vocabulary axis at vocab_size
    vocab_axis: int | None
    stacked: bool


def _param_specs(state: nnx.State, cfg: ModelConfig) -> dict[str, ParamSpec]:
    specs = {}
    for path, variable in nnx.to_flat_state(state):
        axes = variable.get_metadata()["axes"]
        shape = list(variable.get_value().shape)
        stacked = axes[0] == "layers"
        if stacked:
            axes, shape = axes[1:], shape[1:]
        vocab_axis = axes.index("vocab") if "vocab" in axes else None
        if vocab_axis is not None:
            shape[vocab_axis] = cfg.vocab_size
        specs[".".join(map(str, path))] = ParamSpec(tuple(shape), vocab_axis, stacked)
    return specs


def _applicable(rules: tuple[Rule, ...], specs: dict[str, ParamSpec]) -> list[Rule]:
    """Rows whose parameters this config has (e.g. no bias rows when qkv_bias is False)."""
    return [r for r in rules if all(p in specs for p in r.ours)]


def _layers(rule: Rule, cfg: ModelConfig) -> list[int | None]:
    return list(range(cfg.n_layers)) if rule.per_layer else [None]


def _with_prefix(names: list[str], prefix: str) -> dict[str, str]:
    """Checkpoint name for each full name; base-model checkpoints (saved without the *ForCausalLM
    wrapper) lack the prefix on every tensor."""
    if any(n.startswith(prefix + ".") for n in names):
        return {n: n for n in names}
    return {f"{prefix}.{n}": n for n in names}


def _plan(family: Family, cfg: ModelConfig, specs: dict[str, ParamSpec], names: list[str],
          zero: frozenset[str] = frozenset()):
    """[(rule, layer, checkpoint name)] for every tensor to read; refuses missing and unexpected
    names (`zero`: all-zero biases read as absent, see model_config)."""
    available = _with_prefix(names, family.prefix)
    plan, missing, used = [], [], set()
    for rule in _applicable(family.tensors(family.prefix), specs):
        for layer in _layers(rule, cfg):
            found = [n for n in rule.names(layer) if n in available]
            if found:
                plan.append((rule, layer, available[found[0]]))
                used.add(found[0])
            else:
                missing.append(rule.names(layer)[0])
    unexpected = [n for n in available if n not in used and n not in zero and not _ignorable(n, family, cfg)]
    if missing or unexpected:
        raise CheckpointError(f"{family.model_type} checkpoint does not match its config.json: "
                              f"missing {_some(missing)}; unexpected {_some(unexpected)}")
    return plan


def _ignorable(name: str, family: Family, cfg: ModelConfig) -> bool:
    # A tied head may be saved as a copy of the embedding; _check_tied verifies it is one.
    tied = cfg.tie_embeddings and name in _head_names(family)
    return tied or any(re.fullmatch(p, name) for p in family.ignored)


def _head_names(family: Family) -> tuple[str, ...]:
    rule = next(r for r in family.tensors(family.prefix) if r.ours == ("head.kernel",))
    return rule.names(None)


def _some(names: list[str]) -> str:
    if not names:
        return "none"
    return ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")


def _iter_arrays(plan, reader: tensor_files.TensorReader, specs: dict[str, ParamSpec],
                 cfg: ModelConfig) -> Iterator[tuple[str, np.ndarray]]:
    """(our path, array) for each parameter, one rule's tensors at a time: the host never holds
    more than one rule's parameters (a checkpoint larger than host memory still loads)."""
    dtype = DTYPES[cfg.param_dtype]
    for _, group in itertools.groupby(plan, key=lambda item: item[0]):
        per_layer: dict[str, list[np.ndarray]] = {}
        for rule, _, name in group:
            shapes = [specs[p].shape for p in rule.ours]
            x = reader.read(name)
            expected = tuple(rule.transform.hf_shape(shapes))
            if x.shape != expected:
                raise CheckpointError(f"tensor {name} has shape {x.shape}; config.json implies {expected}")
            for path, y in zip(rule.ours, rule.transform.to_ours(x, shapes)):
                per_layer.setdefault(path, []).append(y)
        for path, ys in per_layer.items():
            yield path, _pad_vocab(np.stack(ys) if specs[path].stacked else ys[0], specs[path], cfg).astype(dtype)


def _pad_vocab(x: np.ndarray, spec: ParamSpec, cfg: ModelConfig) -> np.ndarray:
    # Padded rows are zero; the model masks their logits, so their values never matter.
    if spec.vocab_axis is None or cfg.padded_vocab == cfg.vocab_size:
        return x
    widths = [(0, 0)] * x.ndim
    widths[spec.vocab_axis] = (0, cfg.padded_vocab - cfg.vocab_size)
    return np.pad(x, widths)


def _check_tied(family: Family, cfg: ModelConfig, reader: tensor_files.TensorReader) -> None:
    if not cfg.tie_embeddings:
        return
    available = _with_prefix(reader.names(), family.prefix)
    embed = next(r for r in family.tensors(family.prefix) if r.ours == ("embed.table",)).hf
    for head in _head_names(family):
        if head in available and not np.array_equal(reader.read(available[head]), reader.read(available[embed])):
            raise CheckpointError(f"{head} differs from {embed}, but config.json ties them "
                                  "(tie_word_embeddings); set it to false to load an untied head")


def _checkpoint_dtype(reader: tensor_files.TensorReader, names: list[str]) -> str:
    dtypes = {reader.dtype(n) for n in names}
    unknown = dtypes - set(_STORAGE_DTYPES)
    if unknown:
        raise CheckpointError(f"checkpoint stores {sorted(unknown)} tensors; accepted: {', '.join(_STORAGE_DTYPES)}")
    return "bfloat16" if dtypes == {"BF16"} else "float32"


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(".")
        node = nested
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return nested


def load_hf(path: str | pathlib.Path, **overrides: Any) -> GPT:
    """A GPT from a Hugging Face directory (config.json + safetensors). `overrides` may set
    EXECUTION_FIELDS, the vocabulary padding and the parameter dtype (default: the checkpoint's)."""
    directory = pathlib.Path(path)
    with_overrides(config_from_hf(tensor_files.read_json(directory, CONFIG_FILE)), overrides,
                   EXECUTION_FIELDS + LAYOUT_FIELDS)  # refuse bad overrides before reading weights
    cfg = model_config(directory)
    cfg = with_overrides(cfg.replace(param_dtype=checkpoint_dtype(directory)), overrides,
                         EXECUTION_FIELDS + LAYOUT_FIELDS)
    graphdef, state = nnx.split(abstract_model(cfg, kernels.for_device(cfg, jax.local_devices()[0])))
    nnx.replace_by_pure_dict(state, read_params(directory, cfg, lambda _, a: jax.numpy.asarray(a)))
    return nnx.merge(graphdef, state)


def model_config(path: str | pathlib.Path) -> ModelConfig:
    """The model a Hugging Face directory holds: its config.json's, except that a group of biases
    (hf_config.BIAS_FLAGS) stored as all zeros is read as absent. A bias-free model exported to a
    model type that always has biases (gpt2) comes back bias-free, and a run started from it trains
    no biases the model never had."""
    directory = pathlib.Path(path)
    hf_config = tensor_files.read_json(directory, CONFIG_FILE)
    cfg = config_from_hf(hf_config)
    with tensor_files.open_safetensors(directory) as reader:
        return _without_zero_biases(cfg, FAMILIES[hf_config["model_type"]], reader)[0]


def _without_zero_biases(cfg: ModelConfig, family: Family,
                         reader: tensor_files.TensorReader) -> tuple[ModelConfig, frozenset[str]]:
    """`cfg` without its all-zero bias groups, and the checkpoint names of those biases."""
    available = _with_prefix(reader.names(), family.prefix)
    specs = set(_param_specs(nnx.state(abstract_model(cfg)), cfg))
    zero: set[str] = set()
    for flag in BIAS_FLAGS:
        if not getattr(cfg, flag):
            continue
        without = cfg.replace(**{flag: False})
        removed = specs - set(_param_specs(nnx.state(abstract_model(without)), without))
        names = [name for rule in family.tensors(family.prefix) if set(rule.ours) <= removed
                 for layer in _layers(rule, cfg) for name in rule.names(layer) if name in available]
        if names and not any(np.any(reader.read(available[name])) for name in names):
            cfg, specs, zero = without, specs - removed, zero | set(names)
    return cfg, frozenset(zero)


def checkpoint_dtype(path: str | pathlib.Path) -> str:
    """float32 or bfloat16: the dtype the directory's weights are stored in."""
    directory = pathlib.Path(path)
    hf_config = tensor_files.read_json(directory, CONFIG_FILE)
    cfg, family = config_from_hf(hf_config), FAMILIES[hf_config["model_type"]]
    with tensor_files.open_safetensors(directory) as reader:
        plan = _plan(family, cfg, _param_specs(nnx.state(abstract_model(cfg)), cfg), reader.names())
        return _checkpoint_dtype(reader, [name for _, _, name in plan])


def read_params(path: str | pathlib.Path, cfg: ModelConfig,
                put: Callable[[str, np.ndarray], Any]) -> dict[str, Any]:
    """The directory's weights as a nested pure dict for `cfg` (its config.json's model, up to
    EXECUTION_FIELDS and LAYOUT_FIELDS), each parameter passed through `put(path, array)` as soon
    as it is read (a loader places it on its devices and the host copy is dropped)."""
    directory = pathlib.Path(path)
    hf_config = tensor_files.read_json(directory, CONFIG_FILE)
    family = FAMILIES[hf_config["model_type"]]
    with tensor_files.open_safetensors(directory) as reader:
        ours, zero = _without_zero_biases(config_from_hf(hf_config), family, reader)
        for name, value in dataclasses.asdict(cfg).items():
            if name not in EXECUTION_FIELDS + LAYOUT_FIELDS and value != getattr(ours, name):
                raise ConfigError(f"ModelConfig.{name} = {value!r} does not match {directory / CONFIG_FILE} and "
                                  f"its weights, which give {getattr(ours, name)!r}: the weights belong to that model")
        # Spec shapes hold the unpadded vocabulary, so they do not depend on padding or dtype.
        specs = _param_specs(nnx.state(abstract_model(cfg)), cfg)
        plan = _plan(family, cfg, specs, reader.names(), zero)
        _checkpoint_dtype(reader, [name for _, _, name in plan])  # refuses unknown dtypes
        _check_tied(family, cfg, reader)
        done = {p: put(p, a) for p, a in _iter_arrays(plan, reader, specs, cfg)}
    _check_covered(done, specs, family)
    return _nest(done)


def _check_covered(done: dict[str, Any], specs: dict[str, ParamSpec], family: Family) -> None:
    left = sorted(set(specs) - set(done))
    if left:  # a config the table does not describe: a bug in this module, not in the checkpoint
        raise ConfigError(f"the {family.model_type} tensor table has no row for parameters {left}")


def export_hf(model: GPT, path: str | pathlib.Path, *, model_type: str | None = None,
              overwrite: bool = False, tokenizer=None) -> pathlib.Path:
    """Write config.json + model.safetensors that transformers loads as the same model, and with
    a `tokenizer` (default: the model's own, if it has one) tokenizer.json + tokenizer_config.json
    that AutoTokenizer loads and that encode as gptjax does."""
    cfg = model.cfg
    hf_config = config_to_hf(cfg, model_type)  # refuses lossy exports before anything is written
    tokenizer = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    tokenizer_files = _tokenizer_files(tokenizer, cfg) if tokenizer is not None else {}
    # Written even when None: each model type's own defaults (50256 for gpt2) may lie outside the
    # vocabulary, a character one's included.
    eot = tokenizer.eot_id if tokenizer is not None else None
    hf_config.update(eos_token_id=eot, bos_token_id=eot)
    family = FAMILIES[hf_config["model_type"]]
    exported = exported_config(cfg, config_from_hf(hf_config))  # with the biases written as zeros
    state = nnx.state(model, nnx.Param)
    ours = {".".join(map(str, p)): np.asarray(jax.device_get(v.get_value())) for p, v in nnx.to_flat_state(state)}
    tensors = _export_tensors(family, exported, _param_specs(nnx.state(abstract_model(exported)), exported), ours)
    with tensor_files.atomic_directory(path, overwrite=overwrite, last=(CONFIG_FILE,)) as tmp:
        tensor_files.write_json(tmp / CONFIG_FILE, hf_config)
        tensor_files.write_safetensors(tmp / tensor_files.SINGLE_FILE, tensors)
        for name, text in tokenizer_files.items():
            (tmp / name).write_text(text)
    return path


def _tokenizer_files(tokenizer, cfg: ModelConfig) -> dict[str, str]:
    """tokenizer.json and a tokenizer_config.json naming its end-of-text token. Special tokens a
    tokenizer adds past the model's vocabulary would index no embedding row: refused."""
    import json

    import tokenizers

    from gptjax.data.tokenizer import hf_tokenizer_json

    text = hf_tokenizer_json(tokenizer)
    tok = tokenizers.Tokenizer.from_str(text)
    size = tok.get_vocab_size(with_added_tokens=True)
    if size > cfg.vocab_size:
        raise ConfigError(f"the tokenizer has {size} tokens (added special tokens included) but the model's "
                          f"vocabulary is {cfg.vocab_size}; grow the vocabulary (model.vocab_size) when adding tokens")
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": cfg.max_seq_len,
                              "clean_up_tokenization_spaces": False}
    if tokenizer.eot_id is not None:
        eot = tok.id_to_token(tokenizer.eot_id)
        config.update(eos_token=eot, bos_token=eot, unk_token=eot)
    return {"tokenizer.json": text, "tokenizer_config.json": json.dumps(config, indent=1)}


def _export_tensors(family: Family, cfg: ModelConfig, specs: dict[str, ParamSpec],
                    ours: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    unpadded = {p: _unpad_vocab(a, specs[p], cfg) for p, a in ours.items()}
    dtype = next(iter(ours.values())).dtype
    for p in set(specs) - set(ours):  # a bias the model type has and the model lacks: zero
        unpadded[p] = np.zeros(((cfg.n_layers,) if specs[p].stacked else ()) + specs[p].shape, dtype)
    tensors, used = {}, set()
    for rule in _applicable(family.tensors(family.prefix), specs):
        for layer in _layers(rule, cfg):
            parts = tuple(unpadded[p][layer] if layer is not None else unpadded[p] for p in rule.ours)
            tensors[rule.names(layer)[0]] = rule.transform.to_hf(parts)
            used.update(rule.ours)
    _check_covered({p: None for p in used}, specs, family)
    return tensors


def _unpad_vocab(x: np.ndarray, spec: ParamSpec, cfg: ModelConfig) -> np.ndarray:
    if spec.vocab_axis is None:
        return x
    axis = spec.vocab_axis + (1 if spec.stacked else 0)
    return np.take(x, np.arange(cfg.vocab_size), axis=axis)
