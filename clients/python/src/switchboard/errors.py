"""The exceptions of the client, all under :class:`SwitchboardError`.

- A write the store refused raises the class of its rejection kind (the server names it in the
  `x-switchboard-rejection` metadata): :class:`AlreadyHandedOff`, :class:`CallEnded`, ... They
  are :class:`Rejected`, and also the class of their gRPC code (:class:`FailedPrecondition`,
  :class:`NotFound`, :class:`InvalidArgument`, ...), so either may be caught.
- Other final answers raise the class of their code: :class:`InvalidArgument`,
  :class:`NotFound`, :class:`PermissionDenied`, :class:`Unauthenticated`, ...
- When the client stops trying, it raises a :class:`GaveUp`: :class:`RetriesExhausted`,
  :class:`DeadlineExceeded`, or :class:`Overloaded` when the nodes were shedding load (nothing
  was done; trying again later with the same request id is safe).

Every error carries the gRPC code and message of the last answer, the request id of a write
(the same on every attempt: retry with it) and what was tried.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence

import grpc


class GiveUpReason(enum.Enum):
    """Why the client stopped trying."""

    #: The server's answer is final (e.g. `NOT_FOUND`); retrying cannot change it.
    NOT_RETRYABLE = "failed"
    #: The whole-call deadline passed.
    DEADLINE = "gave up at the call deadline"
    #: `retries_max` retries were spent.
    RETRIES_EXHAUSTED = "gave up after retries_max retries"


class SwitchboardError(Exception):
    """Base of every error of the client.

    Attributes:
        message: the server's message (or the client's, for a configuration error).
        code: gRPC code of the last answer; `None` when no call was made.
        kind: the rejection kind the server named (`AlreadyHandedOff`), else `None`.
        op: the RPC, e.g. `create_call`.
        request_id: the idempotency key of a write (the same on every attempt); empty for reads.
        attempts: attempts made, redirects included.
        elapsed: seconds from the first attempt to giving up.
        tried: endpoints tried, in the order first tried.
        reason: why the client stopped.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        kind: str | None = None,
        op: str = "",
        request_id: str = "",
        attempts: int = 0,
        elapsed: float = 0.0,
        tried: Sequence[str] = (),
        reason: GiveUpReason = GiveUpReason.NOT_RETRYABLE,
    ) -> None:
        self.message = message
        self.code = code
        self.kind = kind
        self.op = op
        self.request_id = request_id
        self.attempts = attempts
        self.elapsed = elapsed
        self.tried = tuple(tried)
        self.reason = reason
        super().__init__(message)

    def __str__(self) -> str:
        if self.code is None:
            return self.message
        return (
            f"{self.op} {self.reason.value}: {self.code.name}: {self.message} "
            f"({self.attempts} attempt(s) in {self.elapsed * 1000:.0f} ms; "
            f"tried {', '.join(self.tried)})"
        )


class ConfigError(SwitchboardError, ValueError):
    """A configuration that cannot work; the message names the field."""


class InvalidArgument(SwitchboardError):
    """`INVALID_ARGUMENT`: the request is malformed or out of bounds; fix it."""


class NotFound(SwitchboardError):
    """`NOT_FOUND`: no such call for this tenant (another tenant's call is reported the same)."""


class AlreadyExists(SwitchboardError):
    """`ALREADY_EXISTS`."""


class FailedPrecondition(SwitchboardError):
    """`FAILED_PRECONDITION`: the state forbids the request."""


class PermissionDenied(SwitchboardError):
    """`PERMISSION_DENIED`: the token's role or tenant does not allow the request."""


class Unauthenticated(SwitchboardError):
    """`UNAUTHENTICATED`: no token, a bad or expired one, or one of a key the nodes do not know."""


class GaveUp(SwitchboardError):
    """The client stopped trying before any node gave a final answer; `code` is the last answer's.
    The outcome of a write is unknown: retry it with the same `request_id`."""


class RetriesExhausted(GaveUp):
    """`retries_max` retries were spent."""


class DeadlineExceeded(GaveUp):
    """The whole-call deadline passed."""


class Overloaded(GaveUp):
    """The nodes were shedding load (`RESOURCE_EXHAUSTED` with `x-switchboard-overloaded`):
    nothing was done; the cluster is busy, not broken."""


class Rejected(SwitchboardError):
    """The store refused the command with a typed rejection (`kind`); the outcome is known and
    final (and replicated: a retry with the same request id answers the same)."""


class UnknownCall(Rejected, NotFound):
    """The call does not exist for this tenant."""


class CallExists(Rejected, AlreadyExists):
    """A call with the minted id exists already."""


class IllegalTransition(Rejected, FailedPrecondition):
    """The command is not allowed in the call's state."""


class AlreadyHandedOff(Rejected, FailedPrecondition):
    """The call was handed off before; a call is handed off at most once."""


class CallEnded(Rejected, FailedPrecondition):
    """The call has ended; ended calls are immutable."""


class CallLimitReached(Rejected, FailedPrecondition):
    """A per-call limit (turns, events, entities) is reached."""


class Invalid(Rejected, InvalidArgument):
    """A field is out of its bounds or malformed."""


class RequestIdReused(Rejected, FailedPrecondition):
    """The request id was used before for a different request."""


class MissingStamp(Rejected):
    """A create request reached the state machine without the leader's minted id (a server bug)."""


class CallErased(Rejected, FailedPrecondition):
    """The call's content was erased; it takes no more writes but a repeated erase."""


#: The class of each rejection kind, by the name the server sends (`RejectionKind` in
#: proto/switchboard/v1/common.proto without its prefix, in UpperCamelCase).
REJECTIONS: dict[str, type[Rejected]] = {
    cls.__name__: cls
    for cls in (
        UnknownCall,
        CallExists,
        IllegalTransition,
        AlreadyHandedOff,
        CallEnded,
        CallLimitReached,
        Invalid,
        RequestIdReused,
        MissingStamp,
        CallErased,
    )
}

_BY_CODE: dict[grpc.StatusCode, type[SwitchboardError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgument,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExists,
    grpc.StatusCode.FAILED_PRECONDITION: FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
}


def error_class(
    code: grpc.StatusCode, kind: str | None, reason: GiveUpReason, overloaded: bool
) -> type[SwitchboardError]:
    """The exception class for a call that ended with `code` (and the rejection `kind` the
    server named, if any) for `reason`."""
    if reason is GiveUpReason.NOT_RETRYABLE:
        if kind is not None:
            return REJECTIONS.get(kind, Rejected)
        return _BY_CODE.get(code, SwitchboardError)
    if overloaded:
        return Overloaded
    if reason is GiveUpReason.DEADLINE:
        return DeadlineExceeded
    return RetriesExhausted
