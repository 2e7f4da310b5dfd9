"""What the gateway knows about items without asking Triton: titles, genres, popularity, and the
item-tower embeddings behind `GET /v1/items/{id}/similar`, items added after training included."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.paths import RunPaths


class Catalogue:
    """The run's items: ``titles`` / ``genres`` by raw id, ``popular`` raw ids (most popular first,
    train + valid counts), and the FAISS index over item-tower embeddings for similar items.
    Items added after training (the live-item registry) join at :meth:`refresh`: their titles,
    codes and item-tower embeddings (the index gets them too)."""

    def __init__(self, paths: RunPaths, live_items: Path | None = None):
        from recstack.ensembles.live import ItemTower, LiveItemFeed
        from recstack.features.live_items import live_items_path
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
        self.live_codes: dict[int, int] = {}
        self._live_embeddings: dict[int, np.ndarray] = {}
        tower_dir = paths.models / "two_tower"
        self._feed = LiveItemFeed(live_items or live_items_path(paths), paths.workflow, tower_dir)
        self._tower = ItemTower(tower_dir)
        self.refresh(force=True)

    def refresh(self, force: bool = False) -> int:
        """Take in the items added since the last refresh (polled at most every ``LIVE_POLL_S``
        unless ``force``); returns how many."""
        batch = self._feed.poll(force)
        if batch is None:
            return 0
        embeddings = self._tower.embed(batch.blocks)
        self.index.add(embeddings, batch.codes)
        for item, code, vector in zip(batch.items, batch.codes.tolist(), embeddings):
            self.live_codes[item.item_id] = code
            self._raw_of[code] = item.item_id
            self._live_embeddings[code] = vector
            self.titles[item.item_id] = item.title or f"item {item.item_id}"
        return len(batch)

    def title(self, item_id: int) -> str:
        return self.titles.get(int(item_id), f"item {item_id}")

    def encode(self, item_id: int) -> int | None:
        """Raw item id -> encoded id, None when the item is neither trained nor added live."""
        code = int(self._workflow.transform(pd.DataFrame({self.id_column: [int(item_id)]}))[self.id_column].iloc[0])
        if FIRST_CODE <= code < len(self.embeddings):
            return code
        self.refresh()
        return self.live_codes.get(int(item_id))

    def similar(self, item_id: int, k: int) -> list[tuple[int, float]]:
        """The ``k`` items whose embeddings are closest (inner product) to ``item_id``'s, itself excluded."""
        self.refresh()
        code = self.encode(item_id)
        if code is None:
            raise KeyError(item_id)
        vector = self._live_embeddings[code][None, :] if code in self._live_embeddings else self.embeddings[code: code + 1]
        query = np.ascontiguousarray(vector, dtype=np.float32)
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
