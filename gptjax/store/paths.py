"""One path layer for local disks and object stores (gs://, s3://), through etils.epath.

Run directories, checkpoints, manifests, metrics, tokenizers and exports are read and written
only through here. Local writes are atomic by rename. Object stores have no directory rename and
no append, but one PUT is atomic, so a remote write is always one whole object; readers see the
old object or the new one.

Endpoints and credentials come from the standard variables: AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_REGION for s3:// (s3fs and botocore read them); Google's
application-default credentials and STORAGE_EMULATOR_HOST for gs:// (gcsfs reads them).
tensorstore, which Orbax uses for array data, reads neither AWS_ENDPOINT_URL nor
STORAGE_EMULATOR_HOST: `tensorstore_env()` passes the latter on, and s3 checkpoints never reach
tensorstore (see mirror.py).
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
from typing import Union

from etils import epath

PathLike = Union[str, os.PathLike, epath.Path]
REMOTE_SCHEMES = ("gs", "s3")


class StorageError(ValueError):
    """A path that cannot be used (an unknown scheme, a link); the message names it, what was
    found and what is accepted. Failing I/O raises OSError as usual."""


def scheme(p: PathLike) -> str:
    """'gs', 's3', or 'local'."""
    text = os.fspath(p)
    head, sep, _ = text.partition("://")
    if not sep:
        return "local"
    if head not in REMOTE_SCHEMES:
        raise StorageError(f"{text}: the scheme {head}:// is not supported; use a local path, gs:// or s3://")
    return head


def is_remote(p: PathLike) -> bool:
    return scheme(p) != "local"


def as_path(p: PathLike) -> epath.Path:
    """An epath.Path; local paths are made absolute (Orbax requires it)."""
    if is_remote(p):
        return epath.Path(os.fspath(p))
    return epath.Path(os.path.abspath(os.fspath(p)))


def cache_root() -> pathlib.Path:
    """Local scratch: encoded corpora, staged checkpoints, measured peak FLOPs."""
    return pathlib.Path(os.environ.get("GPTJAX_CACHE_DIR", pathlib.Path.home() / ".cache" / "gptjax"))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_bytes(p: PathLike, data: bytes) -> None:
    """Readers see the old content or the new, never half (local: temporary file then rename;
    remote: one whole-object write)."""
    path = as_path(p)
    if is_remote(path):
        path.write_bytes(data)
        return
    local = pathlib.Path(os.fspath(path))
    local.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=local.parent, prefix=f".{local.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; others on a cluster must read runs
        os.replace(tmp, local)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def write_text(p: PathLike, text: str) -> None:
    write_bytes(p, text.encode("utf-8"))


def read_text(p: PathLike) -> str:
    return as_path(p).read_text()


def exists(p: PathLike) -> bool:
    return as_path(p).exists()


def is_link(p: PathLike) -> bool:
    """Object stores have no links; on a local disk this never follows one."""
    return not is_remote(p) and os.path.islink(os.fspath(p))


def filesystem(p: PathLike):
    """(fsspec filesystem, path within it) of a gs:// or s3:// URL."""
    import fsspec

    return fsspec.core.url_to_fs(os.fspath(p))


def files(root: PathLike) -> list[str]:
    """Relative paths of every file under `root`, sorted. A symbolic link anywhere is refused:
    Orbax would follow it to a file outside the checkpoint."""
    root = as_path(root)
    if is_remote(root):
        fs, prefix = filesystem(root)
        prefix = prefix.rstrip("/")
        # find() lists every object under the prefix in one request per page (rglob is not
        # implemented for s3 in epath).
        return sorted(f[len(prefix) + 1:] for f in fs.find(prefix) if f.startswith(prefix + "/"))
    out = []
    top = os.fspath(root)
    for dirpath, dirnames, filenames in os.walk(top, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            if os.path.islink(full):
                raise StorageError(f"{full} is a symbolic link; checkpoints and model directories must hold "
                                   "only regular files and directories (a link could point anywhere)")
        out += [os.path.relpath(os.path.join(dirpath, f), top) for f in filenames]
    return sorted(out)


def sha256(p: PathLike) -> str:
    h = hashlib.sha256()
    with as_path(p).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def copy_file(src: PathLike, dst: PathLike) -> None:
    """One file between any two places (local or remote), written whole."""
    src, dst = as_path(src), as_path(dst)
    if not is_remote(dst):
        pathlib.Path(os.fspath(dst)).parent.mkdir(parents=True, exist_ok=True)
    if not is_remote(src) and not is_remote(dst):
        shutil.copyfile(os.fspath(src), os.fspath(dst))
        return
    if not is_remote(src):
        fs, target = filesystem(dst)
        fs.put_file(os.fspath(src), target)
        return
    if not is_remote(dst):
        fs, source = filesystem(src)
        fs.get_file(source, os.fspath(dst))
        return
    dst.write_bytes(src.read_bytes())


def remove_tree(p: PathLike) -> None:
    path = as_path(p)
    if is_remote(path):
        fs, target = filesystem(path)
        if fs.exists(target):
            fs.rm(target, recursive=True)
        return
    if os.path.isdir(os.fspath(path)) and not os.path.islink(os.fspath(path)):
        shutil.rmtree(os.fspath(path))
    elif os.path.lexists(os.fspath(path)):
        os.unlink(os.fspath(path))


def move_tree(src: PathLike, dst: PathLike) -> None:
    """Rename a directory; on s3, which cannot rename directories, copy every object then delete."""
    src, dst = as_path(src), as_path(dst)
    if scheme(src) == "s3":
        for rel in files(src):
            copy_file(src / rel, dst / rel)
        remove_tree(src)
        return
    if not is_remote(dst):
        pathlib.Path(os.fspath(dst)).parent.mkdir(parents=True, exist_ok=True)
    src.rename(dst)


def tensorstore_env() -> None:
    """Point tensorstore's GCS driver at STORAGE_EMULATOR_HOST when one is set: gcsfs honours the
    variable, tensorstore only reads TENSORSTORE_GCS_HTTP_URL, so without this Orbax would write
    array data to the real service while metadata went to the emulator."""
    host = os.environ.get("STORAGE_EMULATOR_HOST")
    if host:
        url = host if "://" in host else f"http://{host}"
        os.environ.setdefault("TENSORSTORE_GCS_HTTP_URL", url)
        # An emulator takes any bearer token; without one tensorstore looks for real credentials.
        os.environ.setdefault("GOOGLE_AUTH_TOKEN_FOR_TESTING", "emulator")
