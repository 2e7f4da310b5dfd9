"""Request and response bodies of the gateway (pydantic): every input is validated here, so a
bad request is a 422 naming the field, never a 500."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from recstack.events.schema import MAX_TIMESTAMP
from recstack.serving.gateway.config import MAX_EVENTS_PER_REQUEST

INT64 = dict(ge=-(2**63), le=2**63 - 1)
Int64 = Annotated[int, Field(**INT64)]
EventType = Literal["view", "click", "add_to_cart", "purchase", "rating", "like", "dislike", "share"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Event(Strict):
    """One interaction. ``event_id`` is the client's idempotency key: a repeat is stored once."""

    event_id: str = Field(min_length=1, max_length=128, pattern=r"^[\x21-\x7e]+$")
    user: int = Field(**INT64, description="raw user id")
    item: int = Field(**INT64, description="raw item id")
    type: EventType
    value: float | None = Field(default=None, allow_inf_nan=False, description="e.g. the rating (required for type rating)")
    timestamp: float | None = Field(default=None, ge=0, le=MAX_TIMESTAMP, allow_inf_nan=False,
                                    description="unix seconds (default: when received)")


class EventsIn(Strict):
    events: list[Event] = Field(min_length=1, max_length=MAX_EVENTS_PER_REQUEST)


class EventsOut(BaseModel):
    accepted: int = Field(description="events newly stored (durable before this response)")
    duplicates: int = Field(description="events whose event_id was already stored (not stored again)")
    offsets: list[int]


class NewUser(Strict):
    """A user who arrives with interests: liked items and/or genres (both optional)."""

    user_id: int = Field(**INT64)
    items: list[Int64] = Field(default_factory=list, max_length=100)
    genres: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(default_factory=list, max_length=20)


class NewUserOut(BaseModel):
    user_id: int
    onboarding_items: list[int] = Field(description="items logged as the user's first likes")


class NewItem(Strict):
    """An item added after training, with its raw side features (the run's item columns that the
    Workflow reads, e.g. ``{"genres": ["Comedy"], "year": 2026}``; missing ones count as unknown)."""

    item_id: int = Field(**INT64)
    title: str | None = Field(default=None, max_length=500)
    features: dict[Annotated[str, Field(min_length=1, max_length=100)], Any] = Field(default_factory=dict,
                                                                                   max_length=50)


class NewItemOut(BaseModel):
    item_id: int
    seq: int = Field(description="position in the live-item registry (1 = first item added after training)")
    added_at: float = Field(description="unix seconds")


class Reason(BaseModel):
    """Why an item is on the list (true of the model's inputs; see recstack.ensembles.rerank)."""

    kind: str = Field(description="because_you_watched | popular_in_genre | new | trending")
    text: str
    item_id: int | None = Field(default=None, description="the history item (because_you_watched)")
    title: str | None = Field(default=None, description="its title")
    similarity: float | None = Field(default=None, description="cosine similarity of the two items' embeddings")
    genre: str | None = Field(default=None, description="the genre (popular_in_genre)")
    score: float | None = Field(default=None, description="recent / usual interaction share (trending) or popularity share "
                                                              "(popular_in_genre)")


class RecommendedItem(BaseModel):
    item_id: int
    title: str
    score: float | None = Field(description="ranker score (null for an exploration slot, which was not ranked)")
    explored: bool = Field(default=False, description="placed to collect feedback on a new item")
    reason: Reason | None = Field(default=None, description="why the item is shown")


class RequestContextOut(BaseModel):
    """The context the ranker was given: derived from the request time (UTC) and the device sent."""

    request_time: int = Field(description="unix seconds (the request's `request_time`, else when it was received)")
    hour: int = Field(description="hour of day 0..23, UTC")
    weekday: int = Field(description="0 = Monday .. 6 = Sunday, UTC")
    device: str | None = Field(default=None, description="the device sent, if any")


class Recommendations(BaseModel):
    user_id: int
    items: list[RecommendedItem]
    context: RequestContextOut | None = Field(default=None, description="the request context passed to the ranker")
    cold_start: bool = Field(description="true when the user had no history: popular items were served")
    model_version: int = Field(description="version of the served model that ranked the list")
    explored: int = Field(default=0, description="how many items of the list are exploration slots")
    experiment: str | None = Field(default=None, description="the running A/B experiment (null: none)")
    variant: str | None = Field(default=None, description="the user's variant in it (sticky per user)")
    fallback: Literal["popularity"] | None = Field(
        default=None, description="set when the list is not personal because the online store could not be "
                                  "reached: \"popularity\" = the most popular items were served")


class SimilarItems(BaseModel):
    item_id: int
    items: list[RecommendedItem]


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)
