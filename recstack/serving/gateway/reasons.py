"""Why each recommended item is shown: the ensemble's reason outputs in words for the app.

The ensemble (:class:`recstack.ensembles.rerank.RerankTopN`) returns per item a reason code, the
raw id of the history item behind "because you watched" and a score (the cosine similarity, the
trend ratio, or the popularity share). Here they become :class:`Reason` objects: titles from the
catalogue, and for "popular in <genre>" the item's genre in which it ranks highest by train +
valid interactions (the catalogue's popularity order).
"""

from __future__ import annotations

import numpy as np

from recstack.ensembles.rerank import REASONS
from recstack.serving.gateway.catalogue import Catalogue
from recstack.serving.gateway.schemas import Reason

REASON_OUTPUTS = ["reason_code", "reason_item", "reason_score"]


class Reasons:
    """Builds :class:`Reason` objects for one catalogue (genre ranks computed once)."""

    def __init__(self, catalogue: Catalogue):
        self.catalogue = catalogue
        self.best_genre: dict[int, tuple[str, int]] = {}
        seen_per_genre: dict[str, int] = {}
        for item in catalogue.popular:  # most popular first
            best = None
            for genre in catalogue.genres.get(item, ()):
                seen_per_genre[genre] = seen_per_genre.get(genre, 0) + 1
                if best is None or seen_per_genre[genre] < best[1]:
                    best = (genre, seen_per_genre[genre])
            if best is not None:
                self.best_genre[item] = best

    def reason(self, item_id: int, code: int, reason_item: int, score: float) -> Reason | None:
        """The reason of one listed item (None for code 0 or an unknown code)."""
        kind = REASONS.get(int(code), "none")
        value = float(score) if np.isfinite(score) else None
        if kind == "because_you_watched":
            title = self.catalogue.title(reason_item)
            return Reason(kind=kind, text=f"because you watched {title}", item_id=int(reason_item), title=title,
                          similarity=value)
        if kind == "popular_in_genre":
            genre, rank = self.best_genre.get(int(item_id), (None, None))
            text = f"popular in {genre} (#{rank})" if genre else "popular"
            return Reason(kind=kind, text=text, genre=genre, score=value)
        if kind == "new":
            return Reason(kind=kind, text="new: recently added")
        if kind == "trending":
            text = f"trending: {value:.1f}x its usual share of recent views" if value else "trending"
            return Reason(kind=kind, text=text, score=value)
        return None

    def for_list(self, out: dict[str, np.ndarray], row: int = 0) -> list[Reason | None]:
        """Reasons of every slot of list ``row`` of the ensemble's outputs."""
        return [self.reason(int(i), int(c), int(r), float(s)) for i, c, r, s in zip(
            out["item_ids"][row], out["reason_code"][row], out["reason_item"][row], out["reason_score"][row])]
