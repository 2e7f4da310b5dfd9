"""Encoding constants that every stage shares (docs/architecture.md, section 2).

Categorify writes ``PAD`` for null / padding, ``OOV`` for values outside the fitted
vocabulary, and vocabulary codes from ``FIRST_CODE`` on; models, the index and the
serving steps read them with the same meaning, so they are defined once, here.
"""

from __future__ import annotations

PAD = 0
"""Encoded id of a null value and of list padding."""

OOV = 1
"""Encoded id of a value the fitted vocabulary does not contain."""

FIRST_CODE = 2
"""The first vocabulary code: vocabulary value ``i`` (most frequent first) encodes to ``FIRST_CODE + i``."""

HISTORY_LENGTH = 50
"""Default number of a user's most recent items kept as the model input ``history`` (oldest -> newest)."""

SEEN_LIMIT = 1000
"""Most distinct items kept in a user's online ``seen_items`` (the newest first-interactions; older
ones drop out and may be recommended again). It bounds what one request carries through the
ensemble (``seen_items`` [B, S], S <= this) and the over-fetch of a non-flat FAISS index
(``k + S`` results to have ``k`` left after excluding the seen ones); ML-100K's heaviest user has
737 training items, so its lists are unchanged."""
