"""What the gateway knows about items without asking Triton: titles, genres, popularity, and the
item-tower embeddings behind `GET /v1/items/{id}/similar`."""

from __future__ import annotations

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.paths import RunPaths


class Catalogue:
    """The run's items: ``titles`` / ``genres`` by raw id, ``popular`` raw ids (most popular first,
    train + valid counts), and the FAISS index over item-tower embeddings for similar items."""

    def __init__(self, paths: RunPaths):
        from recstack.retrieval import ItemIndex
        from recstack.workflows import Tags, Workflow

        items = pd.read_parquet(paths.data / "items.parquet")
        self.titles: dict[int, str] = dict(zip(items["item_id"].tolist(), items["title"].astype(str).tolist()))
        self.genres: dict[int, list[str]] = ({int(i): list(g) for i, g in zip(items["item_id"], items["genres"])
                                              if g is not None} if "genres" in items else {})
        self.genre_names = sorted({g for gs in self.genres.values() for g in gs})
        popularity = pd.read_parquet(paths.features / "popularity.parquet")
        self.popular: list[int] = popularity["item_key"].astype(np.int64).tolist()
        workflow = Workflow.load(paths.workflow)
        self.id_column = workflow.output_schema.select_by_tag(Tags.ITEM_ID).names[0]
        self._workflow = workflow
        self.embeddings = np.load(paths.models / "two_tower" / "item_embeddings.npy", allow_pickle=False)
        self.index = ItemIndex.load(paths.index)
        table = pd.read_parquet(paths.features / "item_features.parquet", columns=["item_key", self.id_column])
        self._raw_of = dict(zip(table[self.id_column].astype(np.int64).tolist(), table["item_key"].astype(np.int64).tolist()))

    def title(self, item_id: int) -> str:
        return self.titles.get(int(item_id), f"item {item_id}")

    def encode(self, item_id: int) -> int | None:
        """Raw item id -> encoded id, None when the item is not in the trained catalogue."""
        code = int(self._workflow.transform(pd.DataFrame({self.id_column: [int(item_id)]}))[self.id_column].iloc[0])
        return code if FIRST_CODE <= code < len(self.embeddings) else None

    def similar(self, item_id: int, k: int) -> list[tuple[int, float]]:
        """The ``k`` items whose embeddings are closest (inner product) to ``item_id``'s, itself excluded."""
        code = self.encode(item_id)
        if code is None:
            raise KeyError(item_id)
        query = np.ascontiguousarray(self.embeddings[code: code + 1], dtype=np.float32)
        ids, scores = self.index.search(query, k, exclude=[np.array([code], np.int64)])
        return [(self._raw_of[int(i)], float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0 and int(i) in self._raw_of]

    def onboarding_items(self, genres: list[str], per_genre: int) -> list[int]:
        """The ``per_genre`` most popular items of each genre (in popularity order, no repeats)."""
        unknown = [g for g in genres if g not in self.genre_names]
        if unknown:
            raise InputError(f"genres: {unknown} are not genres of this catalogue ({', '.join(self.genre_names)})")
        picked: list[int] = []
        for genre in genres:
            in_genre = [i for i in self.popular if genre in self.genres.get(i, ()) and i not in picked]
            picked += in_genre[:per_genre]
        return picked
