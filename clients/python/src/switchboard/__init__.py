"""Python client of Switchboard, the Raft-replicated system of record for AI voice and chat
calls.

- :class:`Client` (blocking) and :class:`AsyncClient` (asyncio): one method per RPC of
  `switchboard.v1`, taking its request message from :mod:`switchboard.pb`.
- Writes go to the cached leader; a follower's redirect (`x-switchboard-leader-id` /
  `x-switchboard-leader-addr`) is followed at once; unreachable nodes, timeouts and leaderless
  moments are retried on the next node with capped, jittered exponential backoff, always with the
  same `request_id`, which the cluster answers with the original outcome. Everything is bounded by
  `retries_max` and the whole-call deadline.
- Refusals raise typed exceptions (:mod:`switchboard.errors`): one class per rejection kind
  (:class:`AlreadyHandedOff`, :class:`CallEnded`, ...) and per final code.
- :meth:`AsyncClient.watch` streams the event log as it commits and resumes on another node,
  from its last checkpoint, when its node fails.
- :meth:`Client.activity_emitter` / :meth:`AsyncClient.activity_emitter`: fire-and-forget agent
  activity logging in batches.
"""

from switchboard import pb
from switchboard._core import (
    AUTHORIZATION_HEADER,
    LEADER_ADDR_HEADER,
    LEADER_ID_HEADER,
    OVERLOADED_HEADER,
    REJECTION_HEADER,
    RESUME_FROM_HEADER,
    LeaderInfo,
)
from switchboard.activity import (
    ACTIVITY_BATCH_MAX,
    ActivityEmitter,
    AsyncActivityEmitter,
    EmitterConfig,
    EmitterStats,
)
from switchboard.aio import AsyncClient
from switchboard.client import Client
from switchboard.config import (
    DEV_DATA_DIR,
    DEV_ENDPOINTS,
    ClientConfig,
    TlsConfig,
    read_token_file,
)
from switchboard.errors import (
    REJECTIONS,
    AlreadyExists,
    AlreadyHandedOff,
    CallEnded,
    CallErased,
    CallExists,
    CallLimitReached,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    GaveUp,
    GiveUpReason,
    IllegalTransition,
    Invalid,
    InvalidArgument,
    MissingStamp,
    NotFound,
    Overloaded,
    PermissionDenied,
    Rejected,
    RequestIdReused,
    RetriesExhausted,
    SwitchboardError,
    Unauthenticated,
    UnknownCall,
)
from switchboard.watch import AsyncEventWatch

__all__ = [
    "ACTIVITY_BATCH_MAX",
    "AUTHORIZATION_HEADER",
    "DEV_DATA_DIR",
    "DEV_ENDPOINTS",
    "LEADER_ADDR_HEADER",
    "LEADER_ID_HEADER",
    "OVERLOADED_HEADER",
    "REJECTIONS",
    "REJECTION_HEADER",
    "RESUME_FROM_HEADER",
    "ActivityEmitter",
    "AlreadyExists",
    "AlreadyHandedOff",
    "AsyncActivityEmitter",
    "AsyncClient",
    "AsyncEventWatch",
    "CallEnded",
    "CallErased",
    "CallExists",
    "CallLimitReached",
    "Client",
    "ClientConfig",
    "ConfigError",
    "DeadlineExceeded",
    "EmitterConfig",
    "EmitterStats",
    "FailedPrecondition",
    "GaveUp",
    "GiveUpReason",
    "IllegalTransition",
    "Invalid",
    "InvalidArgument",
    "LeaderInfo",
    "MissingStamp",
    "NotFound",
    "Overloaded",
    "PermissionDenied",
    "Rejected",
    "RequestIdReused",
    "RetriesExhausted",
    "SwitchboardError",
    "TlsConfig",
    "Unauthenticated",
    "UnknownCall",
    "pb",
    "read_token_file",
]
