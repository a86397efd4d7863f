"""Token files on object storage (gs://, s3://) read in place: slices become ranged reads of whole
blocks, and a bounded cache keeps the recent ones, instead of a full copy of the corpus per host.

A host reads only the windows its devices train on, so with many hosts each one touches a
fraction of the file; blocks are fetched through fsspec (s3fs, gcsfs), whose endpoints and
credentials come from the same variables as the rest of store/paths.py.
"""

from __future__ import annotations

import collections
import threading

import numpy as np

from gptjax.errors import DataError
from gptjax.store import paths

BLOCK_BYTES = 4 << 20  # one ranged GET: large enough to amortise a request, small against the cache


class RemoteTokens:
    """A flat token file at `url` as a read-only 1-D array: `len`, `size`, `dtype`, contiguous
    slices and `max()`. At most `cache_bytes` of blocks are kept (least recently used first out);
    safe to read from several threads (grain's readers)."""

    def __init__(self, url: str, dtype, *, cache_bytes: int, block_bytes: int = BLOCK_BYTES, size: int | None = None):
        self.url, self.dtype = url, np.dtype(dtype)
        self._fs, self._path = paths.filesystem(url)
        nbytes = self._fs.size(self._path) if size is None else size * self.dtype.itemsize
        if nbytes % self.dtype.itemsize:
            raise DataError(f"{url}: {nbytes} bytes is not a whole number of {self.dtype.name} tokens")
        self.size = nbytes // self.dtype.itemsize
        # Blocks hold whole tokens, and the cache at least one block.
        self.block_bytes = max(self.dtype.itemsize, block_bytes - block_bytes % self.dtype.itemsize)
        self.capacity = max(1, cache_bytes // self.block_bytes)
        self._blocks: collections.OrderedDict[int, bytes] = collections.OrderedDict()
        self._lock = threading.Lock()
        self.reads = 0  # ranged GETs made (tests and the curious)

    shape = property(lambda self: (self.size,))
    ndim = 1

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index) -> np.ndarray:
        if not isinstance(index, slice) or index.step not in (None, 1):
            raise TypeError(f"{self.url}: only contiguous slices are read (got {index!r})")
        start, stop, _ = index.indices(self.size)
        if stop <= start:
            return np.empty(0, self.dtype)
        lo, hi = start * self.dtype.itemsize, stop * self.dtype.itemsize
        parts = []
        for b in range(lo // self.block_bytes, -(-hi // self.block_bytes)):
            data = self._block(b)
            first = b * self.block_bytes
            parts.append(data[max(lo - first, 0):hi - first])
        return np.frombuffer(b"".join(parts), self.dtype)

    def max(self) -> int:
        """The largest id, read block by block (each block passes through the cache once)."""
        top = 0
        step = self.block_bytes // self.dtype.itemsize
        for start in range(0, self.size, step):
            top = max(top, int(self[start:start + step].max()))
        return top

    def _block(self, b: int) -> bytes:
        with self._lock:
            if b in self._blocks:
                self._blocks.move_to_end(b)
                return self._blocks[b]
        start = b * self.block_bytes
        end = min(start + self.block_bytes, self.size * self.dtype.itemsize)
        data = self._fs.cat_file(self._path, start=start, end=end)
        if len(data) != end - start:
            raise DataError(f"{self.url}: a read of bytes {start}..{end} returned {len(data)}; the file changed "
                            "or is truncated")
        with self._lock:
            self.reads += 1
            self._blocks[b] = data
            self._blocks.move_to_end(b)
            while len(self._blocks) > self.capacity:
                self._blocks.popitem(last=False)
        return data

    @property
    def cached_bytes(self) -> int:
        with self._lock:
            return sum(len(d) for d in self._blocks.values())
