"""The one place where exceptions become gRPC statuses, plus the admin-token check."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Iterable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine.errors import AisleError, InvalidArgument, Unauthenticated

log = logging.getLogger(__name__)

ADMIN_SERVICE_PREFIX = "/aisle.v1.IndexAdmin/"


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


def _bearer(metadata: Iterable[tuple[str, Any]] | None) -> str | None:
    for key, value in metadata or ():
        if key.lower() == "authorization" and isinstance(value, str):
            scheme, _, token = value.partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
    return None


class ErrorMappingInterceptor(grpc.ServerInterceptor):
    """Maps AisleError to its status code and anything else to INTERNAL (after logging it).

    When `admin_token` is set, IndexAdmin methods also need `authorization: Bearer <token>`.
    """

    def __init__(self, admin_token: str | None = None) -> None:
        self._admin_token = admin_token

    def intercept_service(self, continuation: Callable, handler_call_details: Any) -> Any:
        handler = continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler  # health/reflection streams and unknown methods pass through untouched
        method = handler_call_details.method
        needs_token = self._admin_token is not None and method.startswith(ADMIN_SERVICE_PREFIX)
        metadata = handler_call_details.invocation_metadata
        inner = handler.unary_unary

        def wrapped(request: Any, context: grpc.ServicerContext) -> Any:
            try:
                if needs_token:
                    token = _bearer(metadata)
                    if token is None or not hmac.compare_digest(token, self._admin_token):
                        raise Unauthenticated(
                            f"{method} needs the admin token: send metadata "
                            "'authorization: Bearer <token>'"
                        )
                return inner(request, context)
            except AisleError as error:
                context.abort_with_status(rpc_status.to_status(to_rpc_status(error)))
            except Exception:
                # abort_with_status raises to unwind the handler; let that through untouched.
                if context.code() is not None:
                    raise
                log.exception("internal error in %s", method)
                context.abort_with_status(
                    rpc_status.to_status(
                        status_pb2.Status(
                            code=code_pb2.INTERNAL,
                            message=f"internal error in {method}; see the server log",
                        )
                    )
                )

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
