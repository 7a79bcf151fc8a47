"""What the client decides without a cluster: configuration checks, the redirect contract,
backoff, the error classes and the RPC table against the generated descriptors."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor

import switchboard
from switchboard import _rpcs, pb
from switchboard._core import (
    LEADER_ADDR_HEADER,
    LEADER_ID_HEADER,
    LEARNED_ENDPOINTS_MAX,
    OVERLOADED_HEADER,
    REJECTION_HEADER,
    ClientCore,
    LeaderInfo,
    Next,
    Peers,
    Status,
    classify,
    route_of,
    uuid7,
)
from switchboard.config import ClientConfig, TlsConfig, normalize_addr
from switchboard.errors import (
    REJECTIONS,
    AlreadyHandedOff,
    ConfigError,
    DeadlineExceeded,
    FailedPrecondition,
    GiveUpReason,
    Invalid,
    InvalidArgument,
    NotFound,
    Overloaded,
    RetriesExhausted,
    SwitchboardError,
    UnknownCall,
    error_class,
)
from switchboard.v1 import activity_pb2, calls_pb2, cluster_pb2, common_pb2, events_pb2


def status(code: grpc.StatusCode, **metadata: str) -> Status:
    return Status(code, "message", dict(metadata))


def test_default_config_is_the_dev_cluster() -> None:
    config = ClientConfig()
    assert list(config.endpoints) == ["127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103"]
    assert config.tls is None and config.token is None


@pytest.mark.parametrize(
    ("changes", "names"),
    [
        ({"endpoints": []}, "endpoints is empty"),
        ({"endpoints": ["127.0.0.1"]}, "'127.0.0.1'"),
        ({"endpoints": "127.0.0.1:7101"}, "not one string"),
        ({"endpoints": ["https://127.0.0.1:7101"]}, "no TLS is configured"),
        ({"request_timeout": 0}, "request_timeout"),
        ({"backoff_initial": 5.0}, "backoff_initial"),
        ({"retries_max": 1001}, "retries_max"),
        ({"resolve": {"node2:7101": "127.0.0.1"}}, "resolve:"),
        ({"token": "two words"}, "token is not usable"),
        ({"token": ""}, "token is not usable"),
    ],
)
def test_a_bad_config_names_its_field(changes: dict[str, object], names: str) -> None:
    with pytest.raises(ConfigError, match=names):
        ClientConfig(**changes)  # type: ignore[arg-type]


def test_a_bad_token_is_never_shown() -> None:
    with pytest.raises(ConfigError) as raised:
        ClientConfig(token="secret value")
    assert "secret" not in str(raised.value)
    assert "secret" not in repr(ClientConfig(token="secret"))


def test_tls_settings_are_checked_when_made() -> None:
    with pytest.raises(ConfigError, match="ca_pem is empty"):
        TlsConfig(ca_pem=b"")
    with pytest.raises(ConfigError, match="not a PEM certificate"):
        TlsConfig(ca_pem=b"-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(ConfigError, match="over the bound"):
        TlsConfig(ca_pem=b"a" * ((1 << 20) + 1))


def test_addresses_are_normalized() -> None:
    assert normalize_addr("127.0.0.1:7101") == "127.0.0.1:7101"
    assert normalize_addr("http://node-1:7101/") == "node-1:7101"
    assert normalize_addr("https://node-1:7101") == "node-1:7101"
    assert normalize_addr("[::1]:7101") == "[::1]:7101"
    for bad in ("ftp://node-1:7101", "node-1:0", ":7101", "node-1:7101/x", "node-1"):
        with pytest.raises(ValueError):
            normalize_addr(bad)


def test_redirect_needs_an_address_other_than_the_refusing_node() -> None:
    redirect = status(
        grpc.StatusCode.UNAVAILABLE,
        **{LEADER_ID_HEADER: "2", LEADER_ADDR_HEADER: "10.0.0.2:7101"},
    )
    assert classify(redirect, "10.0.0.1:7101") == (Next.REDIRECT, LeaderInfo(2, "10.0.0.2:7101"))
    assert classify(redirect, "10.0.0.2:7101") == (Next.RETRY, None)
    no_leader = status(grpc.StatusCode.UNAVAILABLE, **{LEADER_ADDR_HEADER: ""})
    assert classify(no_leader, "10.0.0.1:7101") == (Next.RETRY, None)


def test_caller_errors_are_final_and_transient_ones_retried() -> None:
    for code in (
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAUTHENTICATED,
        # Without the overload header: a message over a size bound, final.
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    ):
        assert classify(status(code), "a:1")[0] is Next.STOP, code
    for code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        assert classify(status(code), "a:1")[0] is Next.RETRY, code
    shed = status(grpc.StatusCode.RESOURCE_EXHAUSTED, **{OVERLOADED_HEADER: "write"})
    assert classify(shed, "a:1")[0] is Next.OVERLOADED


def test_backoff_grows_is_capped_and_jittered() -> None:
    core = ClientCore(ClientConfig(backoff_initial=0.1, backoff_max=0.8))
    for n in range(40):
        expected = min(0.1 * 2 ** min(n, 3), 0.8)
        delay = core.backoff(n)
        assert expected / 2 <= delay <= expected, (n, delay)


def test_learned_addresses_are_bounded_and_the_leader_is_cached() -> None:
    peers = Peers(["127.0.0.1:1"], {})
    for port in range(2, 2 + 3 * LEARNED_ENDPOINTS_MAX):
        peers.remember_leader(LeaderInfo(None, f"127.0.0.1:{port}"))
    endpoints = peers.endpoints
    assert len(endpoints) == 1 + LEARNED_ENDPOINTS_MAX
    assert endpoints[0] == "127.0.0.1:1"
    assert peers.leader is not None and endpoints[-1] == peers.leader.addr


def test_resolve_maps_an_advertised_leader_to_a_known_endpoint() -> None:
    peers = Peers(["127.0.0.1:7102"], {"node2:7101": "127.0.0.1:7102"})
    index, forgotten = peers.remember_leader(LeaderInfo(2, "node2:7101"))
    assert (index, forgotten) == (0, None)
    assert peers.leader == LeaderInfo(2, "127.0.0.1:7102")
    assert peers.dial_addr("node3:7101") == "node3:7101"


def test_reads_route_by_consistency() -> None:
    local = pb.GetCallRequest(read=pb.ReadOptions(consistency=pb.CONSISTENCY_LOCAL))
    assert route_of(_rpcs.GET_CALL, local) is _rpcs.Route.ANY
    assert route_of(_rpcs.GET_CALL, pb.GetCallRequest()) is _rpcs.Route.LEADER
    assert route_of(_rpcs.CREATE_CALL, pb.CreateCallRequest()) is _rpcs.Route.LEADER
    assert route_of(_rpcs.DIGEST, pb.DigestRequest()) is _rpcs.Route.PINNED


def test_a_write_gets_a_request_id_on_a_copy_and_a_given_one_is_kept() -> None:
    core = ClientCore(ClientConfig())
    mine = pb.StartCallRequest(call_id="c")
    plan, sent = core.plan(_rpcs.START_CALL, mine, None)
    assert mine.request_id == "", "the caller's message is left as it is"
    assert uuid.UUID(sent.request_id).version == 7
    assert plan.request_id == sent.request_id
    given = pb.StartCallRequest(call_id="c", request_id="mine")
    plan, sent = core.plan(_rpcs.START_CALL, given, None)
    assert sent.request_id == plan.request_id == "mine"
    read_plan, _ = core.plan(_rpcs.GET_CALL, pb.GetCallRequest(call_id="c"), None)
    assert read_plan.request_id == ""


def test_uuid7_is_time_ordered() -> None:
    first, second = uuid7(), uuid7()
    assert uuid.UUID(first).version == 7 and uuid.UUID(first).variant == uuid.RFC_4122
    assert first[:13] <= second[:13]


def test_every_rejection_kind_of_the_proto_has_its_exception() -> None:
    kinds = common_pb2.RejectionKind
    names = {
        "".join(word.capitalize() for word in name.removeprefix("REJECTION_KIND_").split("_"))
        for name in kinds.keys()
        if name != "REJECTION_KIND_UNSPECIFIED"
    }
    assert names == set(REJECTIONS)
    for name, cls in REJECTIONS.items():
        assert getattr(switchboard, name) is cls
        assert issubclass(cls, switchboard.Rejected) and issubclass(cls, SwitchboardError)


def test_errors_are_classed_by_rejection_code_and_give_up_reason() -> None:
    final = GiveUpReason.NOT_RETRYABLE
    code = grpc.StatusCode.FAILED_PRECONDITION
    assert error_class(code, "AlreadyHandedOff", final, False) is AlreadyHandedOff
    assert issubclass(AlreadyHandedOff, FailedPrecondition)
    assert error_class(grpc.StatusCode.NOT_FOUND, "UnknownCall", final, False) is UnknownCall
    assert issubclass(UnknownCall, NotFound)
    assert error_class(grpc.StatusCode.NOT_FOUND, None, final, False) is NotFound
    assert issubclass(Invalid, InvalidArgument)
    assert error_class(code, "SomethingNew", final, False) is switchboard.Rejected
    assert error_class(grpc.StatusCode.INTERNAL, None, final, False) is SwitchboardError
    unavailable = grpc.StatusCode.UNAVAILABLE
    assert error_class(unavailable, None, GiveUpReason.DEADLINE, False) is DeadlineExceeded
    assert error_class(unavailable, None, GiveUpReason.RETRIES_EXHAUSTED, False) is RetriesExhausted
    shed = grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_class(shed, None, GiveUpReason.DEADLINE, True) is Overloaded


def test_a_status_reads_the_rejection_header() -> None:
    refused = status(grpc.StatusCode.FAILED_PRECONDITION, **{REJECTION_HEADER: "CallEnded"})
    assert refused.rejection == "CallEnded"
    assert status(grpc.StatusCode.FAILED_PRECONDITION).rejection is None


def test_the_rpc_table_covers_every_public_rpc_and_both_clients_have_its_method() -> None:
    declared = {
        (service.name, method.name)
        for module in (calls_pb2, events_pb2, activity_pb2, cluster_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
        if not method.server_streaming
    }
    table = {(rpc.service, rpc.name) for rpc in _rpcs.UNARY_RPCS}
    assert table == declared
    for rpc in _rpcs.UNARY_RPCS:
        assert callable(getattr(switchboard.Client, rpc.method)), rpc.method
        assert callable(getattr(switchboard.AsyncClient, rpc.method)), rpc.method
        method = _method(rpc)
        assert method.input_type is rpc.request_type.DESCRIPTOR, rpc.name
        assert method.output_type is rpc.response_type.DESCRIPTOR, rpc.name
        fields = method.input_type.fields_by_name
        assert ("request_id" in fields) == (rpc.kind is _rpcs.RpcKind.WRITE), rpc.name
        assert ("read" in fields) == (rpc.kind is _rpcs.RpcKind.READ), rpc.name


def _method(rpc: _rpcs.Rpc[Any, Any]) -> MethodDescriptor:
    for module in (calls_pb2, events_pb2, activity_pb2, cluster_pb2):
        service = module.DESCRIPTOR.services_by_name.get(rpc.service)
        if service is not None:
            method: MethodDescriptor = service.methods_by_name[rpc.name]
            return method
    raise AssertionError(rpc)
