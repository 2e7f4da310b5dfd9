"""Read the vectors and ids of a saved flat index (``items.faiss``) without FAISS.

A GPU serving host may carry PyTorch but not FAISS; the exact top-K there
(:class:`recstack.retrieval.ExactItemIndex`) needs only the vectors and ids that a flat index
stores verbatim. FAISS writes ``IndexIDMap2(IndexFlatIP)`` (our ``flat`` kind) as::

    b"IxM2" header  b"IxFI" header  vector<float32> (n * d values)  vector<int64> (n ids)

with ``header = d int32, ntotal int64, 2 x int64 (unused), is_trained uint8, metric int32
[, metric_arg float32 when metric > 1]`` and ``vector<T> = count uint64, count values``, all
little-endian (faiss/impl/index_read.cpp). FAISS 1.9+ writes the flat codes as a byte vector
(count = 4 * n * d); both forms are read. Anything else is an InputError naming the kind found.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from recstack.errors import InputError

_HEADER = struct.Struct("<iqqqBi")  # d, ntotal, unused, unused, is_trained, metric_type
_FLAT_FOURCC = (b"IxFI", b"IxF2", b"IxFl")  # inner product, L2, generic metric


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise InputError(f"{self.path}: truncated FAISS file (wanted {size} bytes at offset {self.pos})")
        chunk = self.data[self.pos:self.pos + size]
        self.pos += size
        return chunk

    def header(self) -> tuple[int, int]:
        d, ntotal, _, _, _, metric = _HEADER.unpack(self.take(_HEADER.size))
        if metric > 1:
            self.take(4)  # metric_arg
        return d, ntotal

    def vector(self, dtype: np.dtype) -> np.ndarray:
        (count,) = struct.unpack("<Q", self.take(8))
        return np.frombuffer(self.take(count * np.dtype(dtype).itemsize), dtype=dtype)


def read_flat_index(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """``items.faiss`` of a ``flat`` index -> vectors ``[n, d]`` float32 and ids ``[n]`` int64 (insertion order)."""
    path = Path(path)
    reader = _Reader(path.read_bytes(), path)
    outer = reader.take(4)
    if outer != b"IxM2":
        raise InputError(f"{path}: FAISS index type {outer!r} is not IDMap2 over a flat index (only the flat kind "
                         "can be read without FAISS: install faiss-cpu, or rebuild with --index-kind flat)")
    d, ntotal = reader.header()
    inner = reader.take(4)
    if inner not in _FLAT_FOURCC:
        raise InputError(f"{path}: FAISS index type IDMap2 over {inner!r}, not a flat index (only the flat kind "
                         "can be read without FAISS: install faiss-cpu, or rebuild with --index-kind flat)")
    inner_d, inner_n = reader.header()
    (count,) = struct.unpack("<Q", reader.take(8))
    if count == inner_n * inner_d:
        vectors = np.frombuffer(reader.take(count * 4), dtype="<f4")
    elif count == 4 * inner_n * inner_d:  # codes written as bytes
        vectors = np.frombuffer(reader.take(count), dtype="<f4")
    else:
        raise InputError(f"{path}: flat index holds {count} values, expected {inner_n} x {inner_d}")
    ids = reader.vector(np.dtype("<i8"))
    if (inner_d, inner_n) != (d, ntotal) or ids.size != ntotal:
        raise InputError(f"{path}: inconsistent FAISS file (IDMap {ntotal} x {d}, flat {inner_n} x {inner_d}, "
                         f"{ids.size} ids)")
    return vectors.reshape(ntotal, d).astype(np.float32), ids.astype(np.int64)
