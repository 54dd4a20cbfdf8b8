"""One gRPC method called from HTTP through the very handler stack gRPC uses.

A JSON body becomes the request message (protobuf's JSON mapping), its bytes go through the
interceptors' checked deserializer, and the call runs the servicer wrapped by the same interceptor
instances the gRPC server has, in the same order (the privacy edge, then the ServingInterceptor):
pseudonymous ids, auth, rate limit, admission, decoding checks, error mapping and metrics are
that code, not a copy. The interceptor ends a failed call with
`context.abort_with_status`; here that raises CallFailed, carrying the google.rpc.Status.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2

# gRPC status code → HTTP status, as google.rpc.Code documents the mapping.
HTTP_STATUS = {
    code_pb2.OK: 200,
    code_pb2.CANCELLED: 499,
    code_pb2.UNKNOWN: 500,
    code_pb2.INVALID_ARGUMENT: 400,
    code_pb2.DEADLINE_EXCEEDED: 504,
    code_pb2.NOT_FOUND: 404,
    code_pb2.ALREADY_EXISTS: 409,
    code_pb2.PERMISSION_DENIED: 403,
    code_pb2.UNAUTHENTICATED: 401,
    code_pb2.RESOURCE_EXHAUSTED: 429,
    code_pb2.FAILED_PRECONDITION: 400,
    code_pb2.ABORTED: 409,
    code_pb2.OUT_OF_RANGE: 400,
    code_pb2.UNIMPLEMENTED: 501,
    code_pb2.INTERNAL: 500,
    code_pb2.UNAVAILABLE: 503,
    code_pb2.DATA_LOSS: 500,
}
DEFAULT_TIMEOUT_S = 10.0
TIMEOUT_HEADER = "x-aisle-timeout-ms"  # the HTTP caller's deadline (gRPC's grpc-timeout)


class CallFailed(Exception):
    """A call that ended with a non-OK google.rpc.Status."""

    def __init__(self, status: status_pb2.Status) -> None:
        super().__init__(status.message)
        self.status = status

    @property
    def http_status(self) -> int:
        return HTTP_STATUS.get(self.status.code, 500)

    def body(self) -> dict[str, Any]:
        """The JSON error body: code name, message, and any field violations."""
        body: dict[str, Any] = {
            "code": code_pb2.Code.Name(self.status.code),
            "message": self.status.message,
        }
        violations = []
        for detail in self.status.details:
            bad = error_details_pb2.BadRequest()
            if detail.Unpack(bad):
                violations += [
                    {"field": v.field, "description": v.description} for v in bad.field_violations
                ]
        if violations:
            body["field_violations"] = violations
        return body


def invalid_argument(message: str) -> CallFailed:
    return CallFailed(status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message))


class HttpCallContext:
    """The part of grpc.ServicerContext that the interceptor and servicers use."""

    def __init__(self, peer: str, metadata: tuple[tuple[str, str], ...], timeout_s: float):
        self._peer = peer
        self._metadata = metadata
        self._deadline = time.monotonic() + timeout_s
        self._code: grpc.StatusCode | None = None

    def peer(self) -> str:
        return self._peer

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    def time_remaining(self) -> float:
        return max(0.0, self._deadline - time.monotonic())

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def is_active(self) -> bool:
        return self.time_remaining() > 0

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        pass

    def abort_with_status(self, status: Any) -> None:
        self._code = status.code
        raise CallFailed(_rpc_status_of(status))

    def abort(self, code: grpc.StatusCode, details: str) -> None:
        self._code = code
        raise CallFailed(status_pb2.Status(code=code.value[0], message=details))


def _rpc_status_of(status: Any) -> status_pb2.Status:
    """grpc_status's Status (code + details + binary trailer) back to a google.rpc.Status."""
    for key, value in status.trailing_metadata or ():
        if key == "grpc-status-details-bin":
            return status_pb2.Status.FromString(value)
    return status_pb2.Status(code=status.code.value[0], message=status.details)


@dataclass(frozen=True)
class _CallDetails:
    method: str
    invocation_metadata: tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Method:
    """One unary gRPC method: its full name, request/response classes and the servicer's
    bound handler."""

    name: str  # "/aisle.v1.Retrieval/Search"
    request: type[Message]
    handler: Callable[[Message, Any], Message]


class Bridge:
    """Calls gRPC methods with HTTP inputs through `interceptors`, outermost first, as
    grpc.server(interceptors=...) applies them."""

    def __init__(self, interceptors: Sequence[grpc.ServerInterceptor]) -> None:
        self._interceptors = tuple(interceptors)

    def call(
        self,
        method: Method,
        body: Mapping[str, Any] | None,
        *,
        headers: Mapping[str, str],
        peer: str,
    ) -> Message:
        """Parse `body` (JSON mapping of the request), run the call, return the response;
        raise CallFailed with the status the gRPC caller would get."""
        request = method.request()
        try:
            json_format.ParseDict(dict(body or {}), request)
        except json_format.ParseError as error:
            raise invalid_argument(f"request body: {error}") from None
        metadata = tuple(
            (key.lower(), value)
            for key, value in headers.items()
            if key.lower() in ("authorization", "x-aisle-client")
        )
        timeout_s = DEFAULT_TIMEOUT_S
        raw_timeout = headers.get(TIMEOUT_HEADER)
        if raw_timeout is not None:
            try:
                timeout_s = float(raw_timeout) / 1e3
            except ValueError:
                raise invalid_argument(f"{TIMEOUT_HEADER}: not a number: {raw_timeout!r}") from None
            if not timeout_s > 0:
                raise invalid_argument(f"{TIMEOUT_HEADER}: must be > 0")

        def continuation(_details: Any) -> grpc.RpcMethodHandler:
            return grpc.unary_unary_rpc_method_handler(
                method.handler,
                request_deserializer=method.request.FromString,
                response_serializer=lambda m: m.SerializeToString(),
            )

        for interceptor in reversed(self._interceptors):  # the innermost wraps the servicer
            continuation = _wrapped(interceptor, continuation)
        handler = continuation(_CallDetails(method.name, metadata))
        checked = handler.request_deserializer(request.SerializeToString())
        context = HttpCallContext(peer, metadata, timeout_s)
        return handler.unary_unary(checked, context)


def _wrapped(interceptor: grpc.ServerInterceptor, inner: Callable) -> Callable:
    return lambda details: interceptor.intercept_service(inner, details)
