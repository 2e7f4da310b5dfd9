"""Feast feature store of a run: repository generation, online lookups, real-time history pushes.

Feast itself is imported lazily (building or opening a store), so importing this
package (e.g. by the CLI) stays cheap.
"""

from recstack.features.live_items import LiveItem, LiveItems, live_code, live_items_path
from recstack.features.online import (
    OnlineFeatures,
    open_store,
    push_interaction,
    push_interactions,
)
from recstack.features.repo import PUSH_SOURCE, VIEWS, build_feature_repo, feature_store_yaml

__all__ = [
    "LiveItem",
    "LiveItems",
    "live_code",
    "live_items_path",
    "PUSH_SOURCE",
    "VIEWS",
    "OnlineFeatures",
    "build_feature_repo",
    "feature_store_yaml",
    "open_store",
    "push_interaction",
    "push_interactions",
]
