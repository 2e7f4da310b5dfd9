"""Real-time interactions straight into the online store: encode a raw (user, item) event with the
saved Workflow and append it to the user's history. The next request for that user sees the new
history (the user tower re-embeds it, the item is filtered as seen) with no restart and no re-export.

This bypasses the event log (no durability, no idempotency): tests and tools use it to set up
histories. Apps go through :mod:`recstack.events` (`recstack events push`, the gateway), which logs
the event first and applies it with the online updater."""

from __future__ import annotations

import time
from typing import Any

from recstack.errors import InputError
from recstack.ids import FIRST_CODE
from recstack.io import read_json
from recstack.paths import RunPaths


def encode_item(workflow: Any, raw_item_id: int) -> int:
    """Raw item id -> encoded item id with the run's Workflow; InputError for items outside the catalogue."""
    from recstack.workflows import Tags

    id_column = workflow.output_schema.select_by_tag(Tags.ITEM_ID).names[0]
    encoded = int(workflow.transform_request({id_column: int(raw_item_id)})[id_column])
    if encoded < FIRST_CODE:
        raise InputError(f"--item: item {raw_item_id} is not in the catalogue the models were trained on")
    return encoded


def push_event(paths: RunPaths, user_id: int, item_id: int, timestamp: float | None = None,
               online: Any = None, workflow: Any = None) -> dict[str, Any]:
    """Append one interaction to the user's online history; returns the new history (encoded ids).

    ``online`` (an OnlineFeatures) and ``workflow`` can be passed in to avoid reopening them per event.
    """
    from recstack.features.online import OnlineFeatures, push_interactions
    from recstack.workflows import Workflow

    if not (paths.feature_repo / "feature_store.yaml").is_file():
        raise InputError(f"--dataset: {paths.feature_repo} has no Feast repo (run the pipeline first)")
    workflow = workflow or Workflow.load(paths.workflow)
    encoded = encode_item(workflow, item_id)
    history_length = int(read_json(paths.features / "features.json")["history_length"])
    online = online or OnlineFeatures(paths.feature_repo)
    result = push_interactions(online, [int(user_id)], [encoded], [timestamp if timestamp is not None else time.time()],
                               history_length)
    recent, seen = result[int(user_id)]
    return {"user_id": int(user_id), "item_id": int(item_id), "encoded_item_id": encoded,
            "recent_items": list(map(int, recent)), "seen_count": len(seen)}
