"""A checkpoint step's integrity manifest: the sha256 of every file, written before the commit and
verified before a restore (checkpoint.py) or an upload (mirror.py); a step that fails it is set
aside, never deleted."""

from __future__ import annotations

import json

from gptjax.store import paths

MANIFEST = "gptjax_manifest.json"
# Orbax's own markers, rewritten around the commit after our manifest is written, and the s3
# mirror's commit marker, written after everything else.
COMMIT_MARKER = "gptjax_committed"
_UNHASHED = {MANIFEST, "commit_success.txt", "_CHECKPOINT_METADATA", COMMIT_MARKER}


def _hashed(step_dir) -> list[str]:
    return [rel for rel in paths.files(step_dir) if rel.rsplit("/", 1)[-1] not in _UNHASHED]


def set_aside(directory, step: int) -> None:
    """Rename a damaged step to `<step>.unusable` (`.unusable.N` beside earlier ones), kept for
    inspection."""
    directory = paths.as_path(directory)
    target, n = directory / f"{step}.unusable", 1
    while target.exists():
        target, n = directory / f"{step}.unusable.{n}", n + 1
    paths.move_tree(directory / str(step), target)


def write_manifest(step_dir) -> None:
    step_dir = paths.as_path(step_dir)
    entries = {rel: paths.sha256(step_dir / rel) for rel in _hashed(step_dir)}
    paths.write_text(step_dir / MANIFEST, json.dumps(entries, indent=0, sort_keys=True))


def verify(step_dir, skip: tuple[str, ...] = ()) -> str | None:
    """None if every file (outside the item folders in `skip`) matches the manifest; otherwise
    what is wrong. I/O errors other than a missing file propagate: they say nothing about the
    checkpoint's integrity."""
    step_dir = paths.as_path(step_dir)
    if not (step_dir / MANIFEST).exists():
        return f"{step_dir} has no {MANIFEST} (damaged, or not written by a verified save)"
    try:
        expected = json.loads((step_dir / MANIFEST).read_text())
        found = _hashed(step_dir)
    except json.JSONDecodeError as e:
        return f"{step_dir / MANIFEST} is not valid JSON ({e})"
    except paths.StorageError as e:
        return str(e)
    kept = [rel for rel in sorted(set(expected) | set(found)) if rel.split("/", 1)[0] not in skip]
    for rel in kept:
        if rel not in found:
            return f"{step_dir / rel} is missing"
        if rel not in expected:
            return f"{step_dir / rel} is not in the manifest"
        if paths.sha256(step_dir / rel) != expected[rel]:
            return f"{step_dir / rel} does not match its sha256 in the manifest (corrupted or truncated)"
    return None
