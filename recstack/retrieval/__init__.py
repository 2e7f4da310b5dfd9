"""Item retrieval: a FAISS inner-product index over item-tower embeddings (flat, HNSW, IVF-Flat, IVF-PQ),
exact search on GPU (FAISS-GPU or PyTorch), and the recall/latency sweep (``recstack index sweep``).

Names resolve lazily (PEP 562): ``from recstack.retrieval import ExactSearch`` (or
:class:`ExactItemIndex`, the FAISS-free exact index a serving host without FAISS uses) does not
import FAISS; the FAISS-backed names (``ItemIndex``, ``build_index``, ``KINDS``...) import it on
first use."""

from recstack.lazy import lazy_exports

_EXPORTS = {
    "ExactSearch": "exact", "exact_search": "exact", "ExactItemIndex": "exact_index",
    "read_flat_index": "flat_file", "INDEX_FILE": "index", "META_FILE": "index", "ItemIndex": "index",
    "build_index": "index", "load_item_embeddings": "index", "KINDS": "kinds", "IndexConfig": "kinds",
}
__all__ = ["INDEX_FILE", "KINDS", "META_FILE", "ExactItemIndex", "ExactSearch", "IndexConfig", "ItemIndex",
           "build_index", "exact_search", "load_item_embeddings", "read_flat_index"]
__getattr__ = lazy_exports(__name__, _EXPORTS)
