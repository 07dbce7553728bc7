"""The Lambda error tree: every failure a client can see, with AWS's code, status and message.

Domain code raises these; exactly one place (``flocid.api.render``) turns them into the wire
shape. Nothing here knows about HTTP frameworks.

    LambdaError
    ├── ResourceNotFound          404  ResourceNotFoundException      (body key "Message")
    ├── InvalidParameterValue     400  InvalidParameterValueException
    ├── ValidationError           400  ValidationException
    ├── InvalidRequestContent     400  InvalidRequestContentException
    ├── ResourceConflict          409  ResourceConflictException
    ├── ResourceInUse             400  ResourceInUseException
    ├── PreconditionFailed        412  PreconditionFailedException
    ├── RequestTooLarge           413  RequestEntityTooLargeException
    ├── AccessDenied              403  AccessDeniedException          (body key "Message")
    ├── TooManyRequests           429  TooManyRequestsException       (+ Reason, Retry-After)
    ├── UnsupportedMediaType      415  UnsupportedMediaTypeException
    ├── ServiceError              500  ServiceException               (body key "Message")
    └── UnknownOperation          404  UnknownOperationException

AWS's model decides the casing of the message key (peers.md 1.10 item 24): ResourceNotFound,
AccessDenied and ServiceException use ``Message``; the others ``message``.
"""

from __future__ import annotations

from typing import Any, ClassVar


class LambdaError(Exception):
    """An error with an AWS error code, an HTTP status and a message."""

    code: ClassVar[str] = "ServiceException"
    status: ClassVar[int] = 500
    message_key: ClassVar[str] = "message"

    def __init__(self, message: str | None, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        #: Extra body fields (``Reason`` for throttling, say).
        self.extra: dict[str, Any] = extra
        #: Extra response headers (``Retry-After``).
        self.headers: dict[str, str] = {}

    def body(self) -> dict[str, Any]:
        out: dict[str, Any] = {"Type": "User", self.message_key: self.message}
        out.update(self.extra)
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class ResourceNotFound(LambdaError):
    code = "ResourceNotFoundException"
    status = 404
    message_key = "Message"


class InvalidParameterValue(LambdaError):
    code = "InvalidParameterValueException"
    status = 400


class ValidationError(LambdaError):
    code = "ValidationException"
    status = 400


class InvalidRequestContent(LambdaError):
    code = "InvalidRequestContentException"
    status = 400


class ResourceConflict(LambdaError):
    code = "ResourceConflictException"
    status = 409


class ResourceInUse(LambdaError):
    """An event source mapping in a transitional state (Creating, Updating...) cannot be changed;
    AWS's model gives this error HTTP 400, not 409."""

    code = "ResourceInUseException"
    status = 400


class PreconditionFailed(LambdaError):
    code = "PreconditionFailedException"
    status = 412


class RequestTooLarge(LambdaError):
    # The wire code AWS sends; botocore's model calls the shape RequestTooLargeException.
    code = "RequestEntityTooLargeException"
    status = 413


class AccessDenied(LambdaError):
    code = "AccessDeniedException"
    status = 403
    message_key = "Message"


class TooManyRequests(LambdaError):
    code = "TooManyRequestsException"
    status = 429

    def __init__(self, reason: str, retry_after: int = 1) -> None:
        super().__init__("Rate Exceeded.", Reason=reason, retryAfterSeconds=str(retry_after))
        self.headers["Retry-After"] = str(retry_after)


class UnsupportedMediaType(LambdaError):
    code = "UnsupportedMediaTypeException"
    status = 415


class ServiceError(LambdaError):
    code = "ServiceException"
    status = 500
    message_key = "Message"


class UnknownOperation(LambdaError):
    code = "UnknownOperationException"
    status = 404
