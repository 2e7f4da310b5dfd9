"""The FAISS-free retrieval path of a GPU serving host: reading a saved flat index without FAISS,
ExactItemIndex (exact top-K with exclusions and adds) equal to ItemIndex, and a lazy FAISS import."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from recstack.errors import InputError
from recstack.retrieval import ExactItemIndex, ItemIndex, read_flat_index
from recstack.retrieval import exact_index as exact_index_module

D = 16


def _saved(tmp_path, kind="flat", n=400, **params):
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, D)).astype(np.float32)
    ids = rng.permutation(np.arange(2, n + 2, dtype=np.int64))
    index = ItemIndex.build(vectors, ids, kind, **params)
    index.save(tmp_path / "index")
    return tmp_path / "index", vectors, ids


def test_flat_file_reader_equals_faiss(tmp_path):
    directory, vectors, ids = _saved(tmp_path)
    got_vectors, got_ids = read_flat_index(directory / "items.faiss")
    np.testing.assert_array_equal(got_ids, ids)
    np.testing.assert_array_equal(got_vectors, vectors)
    # an index that grew after its build (live items) reads back whole, in insertion order
    index = ItemIndex.load(directory)
    extra = np.random.default_rng(1).standard_normal((5, D)).astype(np.float32)
    index.add(extra, np.arange(1000, 1005))
    index.save(directory)
    got_vectors, got_ids = read_flat_index(directory / "items.faiss")
    np.testing.assert_array_equal(got_ids, np.concatenate([ids, np.arange(1000, 1005)]))
    np.testing.assert_array_equal(got_vectors[-5:], extra)


def test_flat_file_reader_refuses_other_kinds(tmp_path):
    directory, _, _ = _saved(tmp_path, "hnsw", hnsw_m=8)
    with pytest.raises(InputError, match="flat"):
        read_flat_index(directory / "items.faiss")
    with pytest.raises(InputError, match="flat index"):
        ExactItemIndex.load(directory, "cpu")
    (directory / "items.faiss").write_bytes(b"IxM2\x03\x00")
    with pytest.raises(InputError, match="truncated"):
        read_flat_index(directory / "items.faiss")


@pytest.mark.parametrize("with_faiss", [True, False])
def test_exact_index_equals_item_index(tmp_path, monkeypatch, with_faiss):
    directory, _, ids = _saved(tmp_path)
    if not with_faiss:  # read the file as a host without FAISS does
        monkeypatch.setattr(exact_index_module, "_faiss", lambda: None)
    exact = ExactItemIndex.load(directory, "cpu")
    assert exact.backend == "torch-cpu" and len(exact) == len(ids)
    reference = ItemIndex.load(directory)
    queries = np.random.default_rng(2).standard_normal((12, D)).astype(np.float32)
    exclude = [ids[:i * 3] for i in range(12)]
    want_ids, want_scores = reference.search(queries, 20, exclude=exclude)
    got_ids, got_scores = exact.search(queries, 20, exclude=exclude)
    np.testing.assert_array_equal(got_ids, want_ids)
    np.testing.assert_allclose(got_scores, want_scores, rtol=1e-5, atol=1e-5)
    # added items are found on the next search, clashes are refused
    new = queries[:2] * 10  # aligned with the first two queries: their best match
    exact.add(new, np.array([5000, 5001]))
    assert exact.search(queries[:2], 1)[0][:, 0].tolist() == [5000, 5001]
    with pytest.raises(InputError, match="already in the index"):
        exact.add(new[:1], np.array([5000]))
    with pytest.raises(InputError, match="dimension"):
        exact.require_dimension(D + 1)


def test_exact_search_imports_without_faiss():
    """A host without FAISS can import the exact search and the retrieval package (lazy FAISS)."""
    code = ("import sys; sys.modules['faiss'] = None\n"
            "import numpy as np\n"
            "from recstack.retrieval import ExactSearch\n"
            "x = np.eye(4, dtype=np.float32)\n"
            "s, i = ExactSearch(x, np.arange(4), 'cpu').search(x[:1], 2)\n"
            "print(i.tolist())\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[[0, 1]]" or out.stdout.strip().startswith("[[0,")
