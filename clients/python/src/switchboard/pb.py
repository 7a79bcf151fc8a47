"""The messages and enums of the public API (`switchboard.v1`) in one namespace, e.g.
`pb.CreateCallRequest`, `pb.CALL_STATE_ACTIVE`, `pb.Event`.

They are generated at build time from `proto/switchboard/v1/*.proto` into `switchboard.v1`
(`calls_pb2`, `events_pb2`, ...); this module only gathers them.
"""

# ruff: noqa: F403
from switchboard.v1.activity_pb2 import *
from switchboard.v1.calls_pb2 import *
from switchboard.v1.cluster_pb2 import *
from switchboard.v1.common_pb2 import *
from switchboard.v1.events_pb2 import *
