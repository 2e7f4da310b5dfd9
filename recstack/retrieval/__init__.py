"""Item retrieval: a FAISS inner-product index over item-tower embeddings (flat or HNSW)."""

from recstack.retrieval.index import INDEX_FILE, KINDS, META_FILE, ItemIndex, build_index, load_item_embeddings

__all__ = ["INDEX_FILE", "KINDS", "META_FILE", "ItemIndex", "build_index", "load_item_embeddings"]
