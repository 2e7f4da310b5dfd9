"""Item retrieval: a FAISS inner-product index over item-tower embeddings (flat, HNSW, IVF-Flat, IVF-PQ),
exact search on GPU (FAISS-GPU or PyTorch), and the recall/latency sweep (``recstack index sweep``)."""

from recstack.retrieval.exact import ExactSearch, exact_search
from recstack.retrieval.index import INDEX_FILE, META_FILE, ItemIndex, build_index, load_item_embeddings
from recstack.retrieval.kinds import KINDS, IndexConfig

__all__ = ["INDEX_FILE", "KINDS", "META_FILE", "ExactSearch", "IndexConfig", "ItemIndex", "build_index",
           "exact_search", "load_item_embeddings"]
