"""Typed domain errors of the engine; the interceptor maps each to one gRPC status code."""

from __future__ import annotations

from dataclasses import dataclass

import grpc


@dataclass(frozen=True)
class FieldViolation:
    """One bad request field: `field` is a path such as `filter.price.min`."""

    field: str
    description: str


class AisleError(Exception):
    """Base of the errors a caller can act on. `code` is the gRPC status it becomes."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def within(self, prefix: str) -> AisleError:
        """The same error for a part of a larger request, e.g. ``requests[3].`` of a batch."""
        return type(self)(f"{prefix.rstrip('.')}: {self.message}")


class InvalidArgument(AisleError):
    """The request itself is wrong; `violations` say which fields and why."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, message: str, violations: list[FieldViolation] | None = None) -> None:
        super().__init__(message)
        self.violations = list(violations or [])

    @classmethod
    def field(cls, field: str, description: str) -> InvalidArgument:
        """The error of one bad field."""
        return cls(f"{field}: {description}", [FieldViolation(field, description)])

    def within(self, prefix: str) -> InvalidArgument:
        """The same violations, their fields prefixed (``requests[3].filter.price``)."""
        return InvalidArgument.of(
            [FieldViolation(prefix + v.field, v.description) for v in self.violations]
        )

    @classmethod
    def of(cls, violations: list[FieldViolation]) -> InvalidArgument:
        """The error of several bad fields; the message lists every one."""
        return cls("; ".join(f"{v.field}: {v.description}" for v in violations), violations)


class NotFound(AisleError):
    """A named thing (an item id, a user, an index version) does not exist."""

    code = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(AisleError):
    """The request is valid but the server's state does not allow it (e.g. a stale page token)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(AisleError):
    """The server is at capacity or the caller is over its rate limit; retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(AisleError):
    """The server is not ready (loading, shutting down) or a backend did not answer."""

    code = grpc.StatusCode.UNAVAILABLE


class Unauthenticated(AisleError):
    """A method that needs the admin token was called without a valid one."""

    code = grpc.StatusCode.UNAUTHENTICATED


class Unimplemented(AisleError):
    """A method or option of the published API that this server does not serve yet."""

    code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(AisleError):
    """The caller's deadline passed before the work could be done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED
