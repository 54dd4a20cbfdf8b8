"""The one place where exceptions become gRPC statuses; also auth, limits and metrics per call."""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine.api.limits import AdmissionControl, RateLimiter
from engine.api.metrics import ServerMetrics
from engine.search.errors import AisleError, InvalidArgument, ResourceExhausted, Unauthenticated

log = logging.getLogger(__name__)

API_PREFIX = "/aisle.v1."
ADMIN_SERVICE_PREFIX = "/aisle.v1.IndexAdmin/"
CLIENT_ID_KEY = "x-aisle-client"


def to_rpc_status(error: AisleError) -> status_pb2.Status:
    """A google.rpc.Status for `error`, with BadRequest field violations when it has them."""
    status = status_pb2.Status(code=error.code.value[0], message=error.message)
    if isinstance(error, InvalidArgument) and error.violations:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
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


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    value = _metadata_value(metadata, "authorization")
    if value is None:
        return None
    scheme, _, token = value.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


class ServingInterceptor(grpc.ServerInterceptor):
    """Wraps every unary Aisle method:

    - auth: IndexAdmin methods need `authorization: Bearer <admin_token>` when a token is set;
      with `protect_reads`, every Aisle method does;
    - limits: a per-client rate limit and a cap on requests in flight, both answered with
      RESOURCE_EXHAUSTED at once;
    - errors: AisleError → its status code (with BadRequest details), anything else → INTERNAL
      after logging it (internals never reach the caller);
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
    ) -> None:
        if protect_reads and admin_token is None:
            raise ValueError("protect_reads needs an admin token")
        self._token = admin_token
        self._protect_reads = protect_reads
        self._metrics = metrics
        self._admission = admission
        self._rate_limiter = rate_limiter

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or handler.unary_unary is None or not method.startswith(API_PREFIX):
            return handler  # health, reflection and unknown methods pass through untouched
        needs_token = self._token is not None and (
            self._protect_reads or method.startswith(ADMIN_SERVICE_PREFIX)
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
                    if token is None or not hmac.compare_digest(token, self._token):
                        raise Unauthenticated(
                            f"{method} needs the token: send metadata "
                            "'authorization: Bearer <token>'"
                        )
                if self._rate_limiter is not None:
                    client = _metadata_value(metadata, CLIENT_ID_KEY) or context.peer()
                    if not self._rate_limiter.allow(client):
                        self._reject("rate_limit")
                        raise ResourceExhausted(
                            f"client {client!r} is over its rate limit of "
                            f"{self._rate_limiter.rate:g} requests/s; retry later"
                        )
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
                    return inner(request, context)
                finally:
                    if self._metrics is not None:
                        self._metrics.in_flight.dec()
            except AisleError as error:
                code = error.code
                context.abort_with_status(rpc_status.to_status(to_rpc_status(error)))
            except Exception:
                # abort() raises to unwind the handler; let that through with its code.
                if context.code() is not None:
                    code = context.code()
                    raise
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
                if self._metrics is not None:
                    self._metrics.requests.labels(short, code.name).inc()
                    self._metrics.latency.labels(short).observe(time.perf_counter() - started)
                    if code != grpc.StatusCode.OK:
                        self._metrics.errors.labels(code.name).inc()

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )

    def _reject(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.rejected.labels(reason).inc()
