"""File-level checkpoint I/O: safetensors directories read without trusting their file names,
and output directories that appear whole or not at all.

Nothing here knows about models; interop/ (hf.py, native.py) decides what the tensors mean.
"""

from __future__ import annotations

import contextlib
import json
import os
import pathlib
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from gptjax.store import paths

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
# Formats that unpickle on load: opening one can run arbitrary code, so we only ever name them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# Storage dtypes we read; anything else (F64, integers, FP8) would need a lossy or undefined cast.
FLOAT_DTYPES = ("F32", "F16", "BF16")


class CheckpointError(ValueError):
    """A checkpoint we refuse to read; the message names the file, what was found and what is accepted."""


def regular_file(directory: pathlib.Path, name: str) -> pathlib.Path:
    """directory/name, refused unless `name` is a plain file name of a regular file (never a link)."""
    if not isinstance(name, str) or name in ("", ".", "..") or name != pathlib.PurePath(name).name \
            or "\\" in name or "/" in name:
        raise CheckpointError(
            f"{directory}: file name {name!r} is refused; only plain file names inside the checkpoint "
            "directory are accepted (no absolute paths, sub-directories or '..')")
    path = directory / name
    if path.is_symlink():
        raise CheckpointError(f"{path} is a symbolic link; checkpoint files must be regular files "
                              "(a link could point anywhere on this machine)")
    if not path.is_file():
        raise CheckpointError(f"{path} is missing or not a regular file")
    return path


def refuse_links(root: pathlib.Path) -> None:
    """Raise if anything under root is a symbolic link (Orbax would follow it to a foreign file)."""
    try:
        paths.files(root)
    except paths.StorageError as e:
        raise CheckpointError(str(e)) from None


def read_json(directory: pathlib.Path, name: str) -> dict[str, Any]:
    path = regular_file(directory, name)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, found {type(data).__name__}")
    return data


def write_json(path: pathlib.Path, data: dict[str, Any]) -> None:
    paths.write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _safe_open(path: pathlib.Path):
    """safetensors.safe_open, its errors (a truncated or damaged file) as one CheckpointError naming the file."""
    try:
        return safetensors.safe_open(str(path), framework="numpy")
    except safetensors.SafetensorError as e:
        raise CheckpointError(f"{path} is not a readable safetensors file ({e}): it is truncated or damaged; "
                              "download or copy it again") from None


class TensorReader:
    """The tensors of one safetensors checkpoint (single file or sharded), read on demand."""

    def __init__(self, locations: dict[str, pathlib.Path], stack: contextlib.ExitStack):
        self._locations = locations
        self._handles = {path: stack.enter_context(_safe_open(path))
                         for path in sorted(set(locations.values()))}

    def names(self) -> list[str]:
        return sorted(self._locations)

    def dtype(self, name: str) -> str:
        """Storage dtype as safetensors spells it ("F32", "BF16", ...), without reading the data."""
        return self._handles[self._locations[name]].get_slice(name).get_dtype()

    def read(self, name: str) -> np.ndarray:
        dtype = self.dtype(name)
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(f"{self._locations[name]}: tensor {name!r} is stored as {dtype}; "
                                  f"accepted dtypes are {', '.join(FLOAT_DTYPES)}")
        try:
            return self._handles[self._locations[name]].get_tensor(name)
        except safetensors.SafetensorError as e:
            raise CheckpointError(f"{self._locations[name]}: tensor {name!r} cannot be read ({e}): the file is "
                                  "damaged; download or copy it again") from None


@contextlib.contextmanager
def open_safetensors(directory: pathlib.Path) -> Iterator[TensorReader]:
    """Open model.safetensors, or every shard named by model.safetensors.index.json."""
    locations = _tensor_locations(directory)
    with contextlib.ExitStack() as stack:
        yield TensorReader(locations, stack)


def _tensor_locations(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    # transformers prefers the single file when both exist; so do we.
    if (directory / SINGLE_FILE).exists() or (directory / SINGLE_FILE).is_symlink():
        path = regular_file(directory, SINGLE_FILE)
        with _safe_open(path) as f:
            return dict.fromkeys(f.keys(), path)
    if (directory / INDEX_FILE).exists() or (directory / INDEX_FILE).is_symlink():
        return _sharded_locations(directory)
    raise CheckpointError(_no_safetensors_message(directory))


def _sharded_locations(directory: pathlib.Path) -> dict[str, pathlib.Path]:
    weight_map = read_json(directory, INDEX_FILE).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{directory / INDEX_FILE}: 'weight_map' must be a non-empty object "
                              "mapping tensor names to shard file names")
    # Every shard name is checked before any shard is opened.
    shards = {name: regular_file(directory, name) for name in sorted(set(weight_map.values()))}
    locations = {}
    for shard_name, path in shards.items():
        with _safe_open(path) as f:
            stored = set(f.keys())
        listed = {t for t, s in weight_map.items() if s == shard_name}
        if listed - stored:
            raise CheckpointError(f"{directory / INDEX_FILE} places {sorted(listed - stored)[:5]} in "
                                  f"{shard_name}, which does not hold them")
        locations.update({t: path for t in listed})
    return locations


def _no_safetensors_message(directory: pathlib.Path) -> str:
    pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES) \
        if directory.is_dir() else []
    if not pickles:
        return f"{directory} holds neither {SINGLE_FILE} nor {INDEX_FILE}"
    return (f"{directory} holds {', '.join(pickles)} but no {SINGLE_FILE} or {INDEX_FILE}. Pickle "
            "checkpoints can execute arbitrary code when loaded, so gptjax never opens them. Convert once, "
            "in an environment you trust: transformers.AutoModelForCausalLM.from_pretrained(src)"
            ".save_pretrained(dst, safe_serialization=True), then load dst.")


def write_safetensors(path: pathlib.Path, tensors: dict[str, np.ndarray]) -> None:
    # transformers 4.x refuses safetensors files whose metadata lacks a known "format".
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path),
                                metadata={"format": "pt"})


@contextlib.contextmanager
def atomic_directory(path, *, overwrite: bool = False, last: tuple[str, ...] = ()) -> Iterator[pathlib.Path]:
    """Yield a fresh local temporary directory to fill; only if the block succeeds does it appear
    at `path`, so readers never see a half-written checkpoint. Locally that is one rename of a
    sibling; on an object store the files are uploaded with the marker files named in `last`
    (the ones loaders look for) written after everything else. An existing `path` is an error
    unless `overwrite`, in which case it is replaced after the new one is complete."""
    if paths.is_remote(path):
        with _remote_directory(paths.as_path(path), overwrite, last) as tmp:
            yield tmp
        return
    path = pathlib.Path(path).absolute()
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise FileExistsError(f"{path} already exists; choose a new directory or pass overwrite=True")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
        _replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def _remote_directory(path, overwrite: bool, last: tuple[str, ...]) -> Iterator[pathlib.Path]:
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose a new directory or pass overwrite=True")
    with tempfile.TemporaryDirectory(prefix="gptjax-export-") as tmp:
        yield pathlib.Path(tmp)
        paths.remove_tree(path)
        names = paths.files(tmp)
        for rel in sorted(names, key=lambda r: r in last):
            paths.copy_file(pathlib.Path(tmp) / rel, path / rel)


def _replace(new: pathlib.Path, path: pathlib.Path) -> None:
    if not (path.exists() or path.is_symlink()):
        os.rename(new, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(path, old)
    os.rename(new, path)
    if old.is_dir() and not old.is_symlink():
        shutil.rmtree(old)
    else:
        old.unlink()
