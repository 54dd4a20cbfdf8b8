"""AisleClient: the Python API of an Aisle server, every RPC, one place for metadata.

    from engine.client import AisleClient

    with AisleClient("127.0.0.1:50051") as client:
        response = client.search("red velvet sofa", k=5, mode="hybrid",
                                 filter={"price": {"max": 500}}, field_names=["title"])
        for hit in response.hits:
            print(hit.item_id, hit.score, hit.fields["title"])

Results are the typed response messages of the API (aisle.v1.*_pb2, with .pyi stubs). A failed
call raises AisleRpcError, a grpc.RpcError whose str() says what to do next (is the server
running, does it want TLS or a token) and whose code() / details() are the server's.
docs/client.md has more examples.
"""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from aisle.v1 import (
    events_pb2,
    events_pb2_grpc,
    index_admin_pb2,
    index_admin_pb2_grpc,
    privacy_pb2,
    privacy_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
    types_pb2,
)

R = TypeVar("R", bound=Message)
RELOAD_TIMEOUT_S = 120.0  # loading a model and index takes a while


class AisleRpcError(grpc.RpcError):
    """A failed call: `code()` and `details()` as the server (or grpcio) gave them; str() is
    the message a person reads first, with the next step."""

    def __init__(self, error: grpc.RpcError, hint: str) -> None:
        super().__init__(hint)
        self._error = error
        self.hint = hint

    def code(self) -> grpc.StatusCode:
        return self._error.code()

    def details(self) -> str:
        return self._error.details()

    def trailing_metadata(self) -> Any:
        return self._error.trailing_metadata()

    def __str__(self) -> str:
        return self.hint


def explain_error(error: grpc.RpcError, address: str, *, tls: bool, token: bool) -> str:
    """What a person should read for `error` from a call to `address`: the raw text of
    transport errors rewritten with the likely cause and the next step; the server's own
    messages (which already name the field and the fix) kept."""
    code = error.code()
    details = error.details() or ""
    name = code.name if code is not None else "UNKNOWN"
    if code == grpc.StatusCode.UNAVAILABLE:
        if "Connection refused" in details or "connect to remote host" in details:
            port = address.rsplit(":", 1)[-1]
            return (
                f"nothing answers at {address}: is aisle-serve running there? "
                f"(start it with `aisle-serve --index ./index --port {port}`, or pass --addr)"
            )
        if "resolving" in details or "Domain name not found" in details:
            return f"cannot resolve the host of {address}: check the address (--addr HOST:PORT)"
        if "Socket closed" in details and not tls:
            return (
                f"{address} closed the connection: it probably serves TLS; pass its CA "
                "certificate (aisle-search --tls-ca ca.pem, AisleClient(tls_ca=...))"
            )
        if "handshake" in details.lower() and tls:
            return (
                f"the TLS handshake with {address} failed: the server may not use TLS (drop "
                "--tls-ca), or its certificate is not signed by that CA or not for this host "
                "name (--tls-server-name)"
            )
    if code == grpc.StatusCode.UNAUTHENTICATED:
        hint = "pass the server's token (aisle-search --token, AisleClient(admin_token=...))"
        if token:
            hint = "the token sent is not the server's (AISLE_ADMIN_TOKEN / --admin-token-file)"
        return f"UNAUTHENTICATED: {details}; {hint}"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"{address} did not answer in time: raise the deadline (--timeout) or retry"
    return f"{name}: {details}"


def _enum(enum: Any, prefix: str, value: int | str | None) -> int:
    """An enum number from a number, a full name (SEARCH_MODE_HYBRID) or a short one (hybrid)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    name = value.upper()
    if not name.startswith(prefix):
        name = prefix + name
    try:
        return enum.Value(name)
    except ValueError:
        names = [
            n.removeprefix(prefix).lower() for n in enum.keys() if not n.endswith("UNSPECIFIED")
        ]
        raise ValueError(f"{value!r} is not one of {', '.join(names)}") from None


def _message(cls: type[R], value: R | Mapping[str, Any] | None) -> R | None:
    """A message from itself or from its JSON form (a dict, as in the HTTP API)."""
    if value is None or isinstance(value, cls):
        return value
    return json_format.ParseDict(dict(value), cls())


class AisleClient:
    """Talks to one Aisle server. Use as a context manager, or call close().

    `admin_token` is the server's token (AISLE_ADMIN_TOKEN): sent as `authorization: Bearer`
    on every call (IndexAdmin needs it; a server with --protect-reads wants it everywhere).
    `tls_ca` (PEM bytes) turns TLS on; `tls_client_cert` is (key, cert) PEM for mutual TLS;
    `client_id` is sent as x-aisle-client (the server rate-limits per client); `timeout_s`
    is every call's deadline unless the call gives its own `timeout_s`.

    `connections` opens that many connections and sends the Retrieval calls (Search,
    BatchSearch, Recommend, SimilarItems, Embed) over them in turn: a server running several
    worker processes (aisle-serve --processes) gets each connection's calls in one worker, so
    one client with a single connection would use one worker. Writes, events, privacy calls
    and health go over the first connection; another worker serves a write within ~0.1 s
    (docs/serving.md, "Several processes"), so with more than one connection a search right
    after an Upsert may not see it yet.
    """

    def __init__(
        self,
        address: str,
        *,
        admin_token: str | None = None,
        timeout_s: float = 10.0,
        client_id: str | None = None,
        tls_ca: bytes | None = None,
        tls_client_cert: tuple[bytes, bytes] | None = None,
        tls_server_name: str | None = None,
        connections: int = 1,
    ):
        if connections < 1:
            raise ValueError(f"connections must be >= 1, got {connections}")
        self.address = address
        self.timeout_s = timeout_s
        self._tls = tls_ca is not None
        self._token = admin_token
        # Each client its own connection: by default grpc shares one connection among every
        # channel of a process to the same address, so a process's clients would all reach one
        # worker of a server running several (aisle-serve --processes).
        options: list[tuple[str, Any]] = [("grpc.use_local_subchannel_pool", 1)]
        if tls_ca is not None:
            key, cert = tls_client_cert or (None, None)
            credentials = grpc.ssl_channel_credentials(tls_ca, key, cert)
            if tls_server_name:
                options.append(("grpc.ssl_target_name_override", tls_server_name))
            self._channels = [
                grpc.secure_channel(address, credentials, options=options)
                for _ in range(connections)
            ]
        else:
            self._channels = [
                grpc.insecure_channel(address, options=options) for _ in range(connections)
            ]
        self._channel = self._channels[0]
        # The one place metadata is made: every call below goes through _call.
        self._metadata: tuple[tuple[str, str], ...] = (
            (("x-aisle-client", client_id),) if client_id else ()
        ) + ((("authorization", f"Bearer {admin_token}"),) if admin_token else ())
        self._retrievals = [retrieval_pb2_grpc.RetrievalStub(c) for c in self._channels]
        self._turn = itertools.count()  # next() is atomic under the GIL: safe across threads
        self._admin = index_admin_pb2_grpc.IndexAdminStub(self._channel)
        self._events = events_pb2_grpc.EventsStub(self._channel)
        self._privacy = privacy_pb2_grpc.PrivacyStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def __enter__(self) -> AisleClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for channel in self._channels:
            channel.close()

    @property
    def _retrieval(self) -> retrieval_pb2_grpc.RetrievalStub:
        """The Retrieval stub of the next connection in turn (see `connections`)."""
        return self._retrievals[next(self._turn) % len(self._retrievals)]

    def _call(self, method: Callable[..., R], request: Message, timeout_s: float | None) -> R:
        try:
            return method(
                request,
                timeout=self.timeout_s if timeout_s is None else timeout_s,
                metadata=self._metadata,
            )
        except grpc.RpcError as error:
            hint = explain_error(error, self.address, tls=self._tls, token=self._token is not None)
            raise AisleRpcError(error, hint) from None

    def wait_until_serving(self, timeout_s: float = 60.0) -> None:
        """Block until the server's health says SERVING; raise TimeoutError otherwise."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                status = self._health.Check(health_pb2.HealthCheckRequest(), timeout=2.0).status
                if status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass  # not listening yet
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.address} is not SERVING after {timeout_s:.0f} s: is aisle-serve "
                    "running there, and has it finished loading (see its log)?"
                )
            time.sleep(0.1)

    # Retrieval

    def search(
        self,
        query: str,
        k: int = 10,
        *,
        mode: int | str | None = None,
        filter: types_pb2.Filter | Mapping[str, Any] | None = None,  # noqa: A002 (API name)
        explain: bool = False,
        include_fields: bool = False,
        page_token: str = "",
        recent_item_ids: Sequence[str] = (),
        timeout_s: float | None = None,
        **fields: object,
    ) -> retrieval_pb2.SearchResponse:
        """Search. `mode`: "dense", "lexical", "hybrid", "ranked" (or the enum); `filter`: a
        Filter or its dict form ({"brands": [...], "price": {"max": 50}}); `explain`: the
        ranker's per-feature contributions on each hit (mode ranked). Other keyword arguments
        are SearchRequest fields (field_names=[...], facets=[...], user_id=..., effort=...);
        `field_names` implies include_fields."""
        if fields.get("field_names"):
            include_fields = True
        request = retrieval_pb2.SearchRequest(
            query=query,
            k=k,
            mode=_enum(retrieval_pb2.SearchMode, "SEARCH_MODE_", mode),
            filter=_message(types_pb2.Filter, filter),
            explain=explain,
            include_fields=include_fields,
            page_token=page_token,
            recent_item_ids=list(recent_item_ids),
            **fields,
        )
        return self._call(self._retrieval.Search, request, timeout_s)

    def batch_search(
        self,
        requests: Sequence[retrieval_pb2.SearchRequest | Mapping[str, Any]],
        *,
        timeout_s: float | None = None,
    ) -> retrieval_pb2.BatchSearchResponse:
        """Several searches in one call (each a SearchRequest or its dict form)."""
        request = retrieval_pb2.BatchSearchRequest(
            requests=[_message(retrieval_pb2.SearchRequest, r) for r in requests]
        )
        return self._call(self._retrieval.BatchSearch, request, timeout_s)

    def similar_items(
        self,
        item_id: str,
        k: int = 10,
        *,
        filter: types_pb2.Filter | Mapping[str, Any] | None = None,  # noqa: A002
        timeout_s: float | None = None,
        **fields: object,
    ) -> retrieval_pb2.SimilarItemsResponse:
        """Items like `item_id`; other keyword arguments are SimilarItemsRequest fields."""
        request = retrieval_pb2.SimilarItemsRequest(
            item_id=item_id, k=k, filter=_message(types_pb2.Filter, filter), **fields
        )
        return self._call(self._retrieval.SimilarItems, request, timeout_s)

    def recommend(
        self,
        history_item_ids: Sequence[str] = (),
        k: int = 10,
        *,
        user_id: str = "",
        filter: types_pb2.Filter | Mapping[str, Any] | None = None,  # noqa: A002
        timeout_s: float | None = None,
        **fields: object,
    ) -> retrieval_pb2.RecommendResponse:
        """Recommendations from a history of item ids and/or a user id's recorded events."""
        request = retrieval_pb2.RecommendRequest(
            history_item_ids=list(history_item_ids),
            k=k,
            user_id=user_id,
            filter=_message(types_pb2.Filter, filter),
            **fields,
        )
        return self._call(self._retrieval.Recommend, request, timeout_s)

    def embed(
        self, texts: Sequence[str], *, items: bool = False, timeout_s: float | None = None
    ) -> retrieval_pb2.EmbedResponse:
        """Vectors of query texts (or of item texts, `items=True`) from the served model."""
        kind = retrieval_pb2.EMBED_KIND_ITEM if items else retrieval_pb2.EMBED_KIND_QUERY
        request = retrieval_pb2.EmbedRequest(texts=list(texts), kind=kind)
        return self._call(self._retrieval.Embed, request, timeout_s)

    # Events

    def record(
        self,
        events: Sequence[events_pb2.Event | Mapping[str, Any]],
        *,
        timeout_s: float | None = None,
    ) -> events_pb2.RecordResponse:
        """Record shopper events. Each is an Event or a dict: user_id, item_id, type ("view",
        "click", "add_to_cart", "purchase"), and optionally query, time (a datetime; default
        now), request_id and position (from the response the shopper acted on)."""
        request = events_pb2.RecordRequest(events=[self._event(e) for e in events])
        return self._call(self._events.Record, request, timeout_s)

    @staticmethod
    def _event(event: events_pb2.Event | Mapping[str, Any]) -> events_pb2.Event:
        if isinstance(event, events_pb2.Event):
            return event
        values = dict(event)
        when = values.pop("time", None) or dt.datetime.now(dt.UTC)
        kind = _enum(events_pb2.EventType, "EVENT_TYPE_", values.pop("type", None))
        message = events_pb2.Event(type=kind, **values)
        message.time.FromDatetime(when)
        return message

    # IndexAdmin

    def upsert(
        self,
        items: Sequence[index_admin_pb2.Item | Mapping[str, Any]],
        *,
        attributes_only: bool = False,
        timeout_s: float | None = None,
    ) -> index_admin_pb2.UpsertResponse:
        """Add or replace items (Items, or dicts of item_id and catalog fields); `attributes_only`
        changes only the given non-text fields (no re-embedding)."""
        request = index_admin_pb2.UpsertRequest(
            mode=(
                index_admin_pb2.UPSERT_MODE_ATTRIBUTES_ONLY
                if attributes_only
                else index_admin_pb2.UPSERT_MODE_UNSPECIFIED
            )
        )
        for item in items:
            if isinstance(item, index_admin_pb2.Item):
                request.items.append(item)
                continue
            values = dict(item)
            added = request.items.add(item_id=str(values.pop("item_id", "")))
            added.fields.update(values)
        return self._call(self._admin.Upsert, request, timeout_s)

    def delete(
        self, item_ids: Sequence[str], *, timeout_s: float | None = None
    ) -> index_admin_pb2.DeleteResponse:
        request = index_admin_pb2.DeleteRequest(item_ids=list(item_ids))
        return self._call(self._admin.Delete, request, timeout_s)

    def status(self, *, timeout_s: float | None = None) -> index_admin_pb2.StatusResponse:
        return self._call(self._admin.Status, index_admin_pb2.StatusRequest(), timeout_s)

    def reload(
        self, version: int = 0, *, timeout_s: float | None = None
    ) -> index_admin_pb2.ReloadResponse:
        """Serve `version` (0: what CURRENT names now)."""
        timeout = max(self.timeout_s, RELOAD_TIMEOUT_S) if timeout_s is None else timeout_s
        request = index_admin_pb2.ReloadRequest(version=version)
        return self._call(self._admin.Reload, request, timeout)

    # Privacy

    def set_preferences(
        self,
        user_id: str,
        *,
        personalization: bool | None = None,
        use_for_training: bool | None = None,
        timeout_s: float | None = None,
    ) -> privacy_pb2.Preferences:
        """Set a user's consent choices (None leaves one as it is)."""
        request = privacy_pb2.SetPreferencesRequest(user_id=user_id)
        if personalization is not None:
            request.personalization = personalization
        if use_for_training is not None:
            request.use_for_training = use_for_training
        return self._call(self._privacy.SetPreferences, request, timeout_s)

    def get_preferences(
        self, user_id: str, *, timeout_s: float | None = None
    ) -> privacy_pb2.Preferences:
        request = privacy_pb2.GetPreferencesRequest(user_id=user_id)
        return self._call(self._privacy.GetPreferences, request, timeout_s)

    def forget_user(
        self, user_id: str, *, timeout_s: float | None = None
    ) -> privacy_pb2.ForgetUserResponse:
        """Erase what the server holds about a user (events, impressions, recent items)."""
        request = privacy_pb2.ForgetUserRequest(user_id=user_id)
        return self._call(self._privacy.ForgetUser, request, timeout_s)
