"""The one place where exceptions become gRPC statuses; also auth, limits and metrics per call."""

from __future__ import annotations

import errno
import hmac
import logging
import re
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine.api.decode import RejectedRequest, checked_deserializer
from engine.api.limits import AdmissionControl, RateLimiter
from engine.api.metrics import ServerMetrics
from engine.search.errors import (
    AisleError,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    Unauthenticated,
)

log = logging.getLogger(__name__)
# One line per API call, gRPC or HTTP gateway: method, code, ms, k, mode (never a user id).
access_log = logging.getLogger("aisle.access")

API_PREFIX = "/aisle.v1."
ADMIN_SERVICE_PREFIX = "/aisle.v1.IndexAdmin/"
# Writes a shop backend makes on its shoppers' behalf need the admin token like IndexAdmin.
ADMIN_METHODS = ("/aisle.v1.Privacy/SetPreferences", "/aisle.v1.Privacy/ForgetUser")
CLIENT_ID_KEY = "x-aisle-client"
# A status message travels in a header: a client's default limit is ~8-16 KB, grpc-js hangs on
# more, so a message (which may echo the request) is cut well below that.
MAX_MESSAGE_CHARS = 1000
MAX_ECHO_CHARS = 200  # a quoted value in a message (an echoed id, text) is cut to this
# Quoted values ('...' or "...") longer than MAX_ECHO_CHARS: the echo of caller input.
_LONG_QUOTED = re.compile(rf"(['\"])([^'\"]{{{MAX_ECHO_CHARS}}})[^'\"]+\1")
# Absolute paths (two components or more): the server's layout is no business of a caller's.
_PATH = re.compile(r"(?<![\w.:/])/(?:[\w.+@-]+/)+[\w.+@-]*")
# OSErrors a caller can understand without the server's log (no path: errno only).
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


def safe_message(text: str) -> str:
    """`text` fit for a status message: echoed values cut to MAX_ECHO_CHARS, server paths
    replaced by "<path>", the whole cut to MAX_MESSAGE_CHARS."""
    text = _LONG_QUOTED.sub(lambda m: f"{m[1]}{m[2]}…{m[1]}", text)
    text = _PATH.sub("<path>", text)
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 1] + "…"
    return text


def os_error(error: OSError) -> AisleError | None:
    """The client-facing error of an OSError a caller can act on (a full or read-only disk);
    None for the rest (INTERNAL). Nothing was acknowledged: the write raised before it."""
    if error.errno in _DISK_FULL:
        return ResourceExhausted("the index root's disk is full: nothing was written")
    if error.errno == errno.EROFS:
        return FailedPrecondition(
            "the index root is on a read-only file system: nothing was written"
        )
    return None


def to_rpc_status(error: AisleError) -> status_pb2.Status:
    """A google.rpc.Status for `error`, with BadRequest field violations when it has them;
    every text goes through `safe_message`."""
    status = status_pb2.Status(code=error.code.value[0], message=safe_message(error.message))
    if isinstance(error, InvalidArgument) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=safe_message(v.field), description=safe_message(v.description)
                )
                for v in error.violations
            ]
        )
        detail = any_pb2.Any()
        detail.Pack(bad_request)
        status.details.append(detail)
    return status


def _metadata_value(metadata: Iterable[tuple[str, Any]] | None, key: str) -> str | None:
    for k, value in metadata or ():
        if k.lower() == key and isinstance(value, str):
            return value
    return None


def access_fields(request: Any) -> dict[str, Any]:
    """k and mode of a request, for the access line (None where the method has no such field)."""
    fields: dict[str, Any] = {"k": None, "mode": None}
    if not isinstance(request, Message):
        return fields
    names = request.DESCRIPTOR.fields_by_name
    if "k" in names:
        fields["k"] = request.k
    if "mode" in names and names["mode"].enum_type is not None:
        value = names["mode"].enum_type.values_by_number.get(request.mode)
        fields["mode"] = value.name if value is not None else request.mode
    return fields


def token_matches(given: str, expected: str) -> bool:
    """Constant-time comparison of any two strings: compare_digest refuses non-ASCII str, and
    any HTTP/2 client can put such bytes in a header."""
    return hmac.compare_digest(
        given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass")
    )


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    value = _metadata_value(metadata, "authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class ServingInterceptor(grpc.ServerInterceptor):
    """Wraps every unary Aisle method:

    - auth: IndexAdmin methods and Privacy writes (ADMIN_METHODS) need
      `authorization: Bearer <admin_token>` when a token is set;
      with `protect_reads`, every Aisle method does;
    - limits: a per-client rate limit and a cap on requests in flight, both answered with
      RESOURCE_EXHAUSTED at once;
    - decoding: request bytes are parsed by engine.api.decode, so a request that cannot be
      parsed or holds undefined enums / unbounded strings is INVALID_ARGUMENT, not grpcio's
      bare INTERNAL, and counted;
    - errors: AisleError → its status code (with BadRequest details; messages through
      `safe_message`), a full or read-only disk → RESOURCE_EXHAUSTED / FAILED_PRECONDITION,
      a reply over the send limit → RESOURCE_EXHAUSTED, anything else → INTERNAL after
      logging it (internals never reach the caller);
    - metrics: counts by method and code, latency by method, in-flight gauge.
    """

    def __init__(
        self,
        *,
        admin_token: str | None = None,
        protect_reads: bool = False,
        metrics: ServerMetrics | None = None,
        admission: AdmissionControl | None = None,
        rate_limiter: RateLimiter | None = None,
        max_response_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        if protect_reads and admin_token is None:
            raise ValueError("protect_reads needs an admin token")
        self._token = admin_token
        self._protect_reads = protect_reads
        self._metrics = metrics
        self._admission = admission
        self._rate_limiter = rate_limiter
        self._max_response_bytes = max_response_bytes

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(API_PREFIX):
            return handler  # health, reflection and unknown methods pass through untouched
        needs_token = self._token is not None and (
            self._protect_reads
            or method.startswith(ADMIN_SERVICE_PREFIX)
            or method in ADMIN_METHODS
        )
        metadata = handler_call_details.invocation_metadata
        inner = handler.unary_unary
        short = method.rsplit("/", 1)[-1]

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.OK
            entered = False
            try:
                if needs_token:
                    token = _bearer(metadata)
                    if token is None or not token_matches(token, self._token):
                        raise Unauthenticated(
                            f"{short} needs the server's token: send metadata "
                            "'authorization: Bearer <token>' (aisle-search --token, "
                            "AisleClient(token=...), HTTP header Authorization)"
                        )
                if self._rate_limiter is not None:
                    client = _metadata_value(metadata, CLIENT_ID_KEY) or context.peer()
                    if not self._rate_limiter.allow(client):
                        self._reject("rate_limit")
                        raise ResourceExhausted(
                            f"client {client!r} is over its rate limit of "
                            f"{self._rate_limiter.rate:g} requests/s; retry later"
                        )
                if isinstance(request, RejectedRequest):
                    raise request.error
                if self._admission is not None:
                    entered = self._admission.try_enter()
                    if not entered:
                        self._reject("in_flight")
                        raise ResourceExhausted(
                            f"server is at its limit of {self._admission.max_in_flight} "
                            "requests in flight; retry with backoff"
                        )
                if self._metrics is not None:
                    self._metrics.in_flight.inc()
                try:
                    response = inner(request, context)
                finally:
                    if self._metrics is not None:
                        self._metrics.in_flight.dec()
                # grpcio would fail a reply over the send limit with a bare INTERNAL.
                size = response.ByteSize() if isinstance(response, Message) else 0
                if size > self._max_response_bytes:
                    raise ResourceExhausted(
                        f"the reply would be {size} bytes, over the limit of "
                        f"{self._max_response_bytes}: ask for fewer results or fields"
                    )
                return response
            except AisleError as error:
                code = error.code
                context.abort_with_status(rpc_status.to_status(to_rpc_status(error)))
            except Exception as error:
                # abort() raises to unwind the handler; let that through with its code.
                if context.code() is not None:
                    code = context.code()
                    raise
                known = os_error(error) if isinstance(error, OSError) else None
                if known is not None:
                    code = known.code
                    log.error("%s failed: %s", method, error)  # the path is for the operator
                    context.abort_with_status(rpc_status.to_status(to_rpc_status(known)))
                code = grpc.StatusCode.INTERNAL
                log.exception("internal error in %s", method)
                context.abort_with_status(
                    rpc_status.to_status(
                        status_pb2.Status(
                            code=code_pb2.INTERNAL,
                            message=f"internal error in {method}; see the server log",
                        )
                    )
                )
            finally:
                if entered:
                    self._admission.exit()
                if access_log.isEnabledFor(logging.INFO):
                    ms = (time.perf_counter() - started) * 1e3
                    fields = access_fields(request)
                    access_log.info(
                        "%s %s %.1f ms k=%s mode=%s",
                        short,
                        code.name,
                        ms,
                        fields["k"],
                        fields["mode"],
                        extra={"method": short, "code": code.name, "ms": round(ms, 2), **fields},
                    )
                if self._metrics is not None:
                    self._metrics.requests.labels(short, code.name).inc()
                    self._metrics.latency.labels(short).observe(time.perf_counter() - started)
                    if code != grpc.StatusCode.OK:
                        self._metrics.errors.labels(code.name).inc()

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=(
                checked_deserializer(handler.request_deserializer)
                if handler.request_deserializer is not None
                else None
            ),
            response_serializer=handler.response_serializer,
        )

    def _reject(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.rejected.labels(reason).inc()
