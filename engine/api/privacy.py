"""Shoppers' privacy at the gRPC edge: the interceptor that pseudonymises user ids, scrubs
logged query text and applies consent before any other code sees a request, and the Privacy
service (consent and erasure).

`PrivacyEdge` runs first (outermost interceptor), so the serving interceptor, handlers, logs,
metrics and every file see only pseudonyms:

- Search, BatchSearch, Recommend, Events.Record: each ``user_id`` becomes its pseudonym under
  the current key (trainer.privacy.pseudonym); after a rotation the user's recent items held
  under the previous key's pseudonym move to the current one on first sight;
- Events.Record: each event's query text is scrubbed (engine.privacy.scrub) before it is logged;
- consent: a shopper with personalization off gets unpersonalised results: Search loses its
  user id and recent items, Recommend answers from the popularity fallback;
- Privacy methods: ``user_id`` becomes the user's pseudonyms under every key, space-separated
  (erasure must reach what was recorded under the previous key too; pseudonyms hold no space).

An id outside 1..256 characters is left as it is: the handler rejects it (INVALID_ARGUMENT)
and nothing is written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from aisle.v1 import events_pb2, privacy_pb2, privacy_pb2_grpc, retrieval_pb2
from engine.privacy.consent import NO_PERSONALIZATION, ConsentStore, Preferences
from engine.privacy.scrub import QueryScrubber
from engine.search.errors import FailedPrecondition, InvalidArgument
from engine.search.events import UserState
from trainer.privacy.noise import DPConfig
from trainer.privacy.pseudonym import Pseudonymizer, is_pseudonym

log = logging.getLogger(__name__)

MAX_USER_ID_CHARS = 256


@dataclass(frozen=True)
class PrivacyConfig:
    """The deployment's privacy settings. Without `pseudonyms` user ids are kept as given (a
    warning at start); `default` answers for shoppers who never chose."""

    pseudonyms: Pseudonymizer | None = None
    scrubber: QueryScrubber = field(default_factory=QueryScrubber)
    default: Preferences = field(default_factory=Preferences)
    retention_days: float | None = None
    # Compact to `retention_days` every this many hours while serving (None: at start only).
    retention_every_hours: float | None = None
    # The popularity fallback from shoppers' engagement, with DP noise (None: the catalog's).
    popularity_dp: DPConfig | None = None

    def __post_init__(self) -> None:
        if self.retention_days is not None and not self.retention_days > 0:
            raise ValueError(f"--retention-days must be > 0, got {self.retention_days}")
        if self.retention_every_hours is not None:
            if self.retention_days is None:
                raise ValueError(
                    "--retention-every needs --retention-days (how old a record may get)"
                )
            if not self.retention_every_hours > 0:
                raise ValueError(
                    f"--retention-every must be > 0 hours, got {self.retention_every_hours}"
                )

    def candidates(self, user_id: str) -> tuple[str, ...]:
        """Where this raw user id's data may be stored: its pseudonyms, current key first."""
        if self.pseudonyms is None:
            return (user_id,) if user_id else ()
        return self.pseudonyms.candidates(user_id)


def _valid(user_id: str) -> bool:
    return 1 <= len(user_id) <= MAX_USER_ID_CHARS


class PrivacyEdge(grpc.ServerInterceptor):
    """See the module docstring. `consent` and `users` give the live consent store and the
    serving users' recent items (None while there are none)."""

    def __init__(
        self,
        config: PrivacyConfig,
        consent: Callable[[], ConsentStore | None],
        users: Callable[[], UserState | None],
    ) -> None:
        self.config = config
        self._consent = consent
        self._users = users

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None:
            return handler
        rewrite = {
            "/aisle.v1.Retrieval/Search": self._search,
            "/aisle.v1.Retrieval/BatchSearch": self._batch,
            "/aisle.v1.Retrieval/Recommend": self._recommend,
            "/aisle.v1.Events/Record": self._events,
        }.get(method)
        if rewrite is None and method.startswith("/aisle.v1.Privacy/"):
            rewrite = self._privacy
        if rewrite is None:
            return handler
        inner = handler.unary_unary

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            if isinstance(request, _REWRITTEN):  # not a RejectedRequest (undecodable)
                rewrite(request)
            return inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _current(self, user_id: str) -> tuple[str, Preferences]:
        """The user's current pseudonym (after moving a previous key's history to it) and
        their consent."""
        candidates = self.config.candidates(user_id)
        if len(candidates) > 1:
            users = self._users()
            if users is not None:
                users.adopt(candidates[1], candidates[0])
        consent = self._consent()
        prefs = consent.get(candidates) if consent is not None else self.config.default
        return candidates[0], prefs

    def _search(self, request: retrieval_pb2.SearchRequest) -> None:
        if not _valid(request.user_id):
            return
        pseudonym, prefs = self._current(request.user_id)
        if prefs.personalization:
            request.user_id = pseudonym
        else:
            request.ClearField("user_id")
            del request.recent_item_ids[:]

    def _batch(self, request: retrieval_pb2.BatchSearchRequest) -> None:
        for sub in request.requests:
            self._search(sub)

    def _recommend(self, request: retrieval_pb2.RecommendRequest) -> None:
        if not _valid(request.user_id):
            return
        pseudonym, prefs = self._current(request.user_id)
        if prefs.personalization:
            request.user_id = pseudonym
        else:
            del request.history_item_ids[:]
            request.user_id = NO_PERSONALIZATION

    def _events(self, request: events_pb2.RecordRequest) -> None:
        scrub = self.config.scrubber
        for event in request.events:
            if _valid(event.user_id):
                event.user_id = self.config.candidates(event.user_id)[0]
            if event.query:
                event.query = scrub(event.query)

    def _privacy(self, request: Any) -> None:
        if _valid(request.user_id) and self.config.pseudonyms is not None:
            request.user_id = " ".join(self.config.pseudonyms.candidates(request.user_id))


_REWRITTEN = (
    retrieval_pb2.SearchRequest,
    retrieval_pb2.BatchSearchRequest,
    retrieval_pb2.RecommendRequest,
    events_pb2.RecordRequest,
    privacy_pb2.SetPreferencesRequest,
    privacy_pb2.GetPreferencesRequest,
    privacy_pb2.ForgetUserRequest,
)


def _candidates(request: Any, config: PrivacyConfig) -> tuple[str, ...]:
    """The user's pseudonyms PrivacyEdge put in a Privacy request (the id as given when the
    deployment has no keys).

    Raises:
        InvalidArgument: the id was not 1..256 characters (the edge left it as it was).
    """
    if config.pseudonyms is None:
        if not _valid(request.user_id):
            raise InvalidArgument.field("user_id", f"must be 1 to {MAX_USER_ID_CHARS} characters")
        return (request.user_id,)
    parts = tuple(request.user_id.split(" "))
    if not all(is_pseudonym(p) for p in parts):
        raise InvalidArgument.field("user_id", f"must be 1 to {MAX_USER_ID_CHARS} characters")
    return parts


class PrivacyServicer(privacy_pb2_grpc.PrivacyServicer):
    """Consent (durable in the events dir's consent.json) and erasure. `service` gives the
    serving SearchService (its event log, users and versions); `consent` the store (None when
    the server keeps no events dir, so choices cannot be stored)."""

    def __init__(
        self,
        config: PrivacyConfig,
        consent: Callable[[], ConsentStore | None],
        service: Callable[[], Any],
        forget_datasets: Callable[[tuple[str, ...]], int] | None = None,
    ) -> None:
        self._config = config
        self._consent = consent
        self._service = service
        self._forget_datasets = forget_datasets

    def _store(self) -> ConsentStore:
        store = self._consent()
        if store is None:
            raise FailedPrecondition(
                "this server keeps no events dir, so consent cannot be stored: serve an index "
                "root or give --events-dir"
            )
        return store

    def SetPreferences(self, request, context):  # noqa: N802 (gRPC method names)
        candidates = _candidates(request, self._config)
        prefs = self._store().set(
            candidates,
            personalization=(
                request.personalization if request.HasField("personalization") else None
            ),
            use_for_training=(
                request.use_for_training if request.HasField("use_for_training") else None
            ),
        )
        return _preferences(prefs)

    def GetPreferences(self, request, context):  # noqa: N802
        candidates = _candidates(request, self._config)
        store = self._consent()
        return _preferences(store.get(candidates) if store else self._config.default)

    def ForgetUser(self, request, context):  # noqa: N802
        candidates = _candidates(request, self._config)
        removed, held, _ = self._service().forget_users(candidates)
        store = self._consent()
        if store is not None:
            store.forget(candidates)
        rows = self._forget_datasets(candidates) if self._forget_datasets else 0
        return privacy_pb2.ForgetUserResponse(
            events_removed=removed.count("events.jsonl"),
            impressions_removed=removed.count("impressions.jsonl"),
            recent_items_removed=held,
            dataset_rows_removed=rows,
        )


def _preferences(prefs: Preferences) -> privacy_pb2.Preferences:
    return privacy_pb2.Preferences(
        personalization=prefs.personalization,
        use_for_training=prefs.use_for_training,
        defaults=prefs.defaults,
    )
