"""The test session's cluster: `switchboard dev --nodes 3` on free ports in a temporary
directory (TLS, tokens), started once and stopped at the end of the session.

The binary is `$SWITCHBOARD_BINARY`, else `/var/tmp/switchboard-target/debug/switchboard`
(what `scripts/dev` builds). Tests that need no cluster run without it.
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from switchboard import AsyncClient, Client, ClientConfig, SwitchboardError, pb

DEFAULT_BINARY = Path("/var/tmp/switchboard-target/debug/switchboard")
NODES = 3
#: Elections, restarts and catch-up on a loaded 2-core machine: generous bounds.
READY_TIMEOUT = 90.0
HEALTHY_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0

T = TypeVar("T")


def wait_until(what: str, timeout: float, probe: Callable[[], T | None], every: float = 0.2) -> T:
    """Polls `probe` until it returns something other than `None`; fails after `timeout` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None:
            return value
        if time.monotonic() >= deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def unique(prefix: str) -> str:
    """A name no other test uses (tenants, tasks), so that tests do not see each other's data."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def _ports_free(ports: list[int]) -> bool:
    for port in ports:
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _free_base_port() -> int:
    """A gRPC base port such that node i's gRPC (base + i - 1) and HTTP (+ 1000) ports are free."""
    for _ in range(200):
        base = random.randrange(20000, 40000)
        ports = [base + i for i in range(NODES)] + [base + 1000 + i for i in range(NODES)]
        if _ports_free(ports):
            return base
    raise RuntimeError("no free ports found for the test cluster")


@dataclasses.dataclass
class DevCluster:
    """A running `switchboard dev` cluster and what tests do to it."""

    binary: Path
    data_dir: Path
    base_port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def endpoints(self) -> list[str]:
        return [self.addr(node_id) for node_id in range(1, NODES + 1)]

    @property
    def ca_path(self) -> Path:
        return self.data_dir / "certs" / "ca.pem"

    @property
    def token_path(self) -> Path:
        return self.data_dir / "tokens" / "admin.jwt"

    def addr(self, node_id: int) -> str:
        return f"127.0.0.1:{self.base_port + node_id - 1}"

    def config(self, **changes: object) -> ClientConfig:
        """The admin configuration of this cluster, with deadlines that outlast an election on
        a loaded machine, and `changes` applied."""
        config = ClientConfig.for_dev_cluster(self.data_dir, self.endpoints)
        defaults: dict[str, object] = {"call_deadline": 30.0, "retries_max": 200}
        return dataclasses.replace(config, **{**defaults, **changes})  # type: ignore[arg-type]

    def issue_token(self, tenant: str, role: str) -> str:
        """A token of `role` for `tenant`, signed with the dev cluster's key."""
        key = self.data_dir / "tokens" / "token-signing-dev.pem"
        command = [str(self.binary), "token", "issue", "--key", str(key)]
        command += ["--tenant", tenant, "--role", role, "--subject", "pytest", "--ttl", "1h"]
        done = subprocess.run(command, capture_output=True, check=True, timeout=30)
        return done.stdout.decode().strip()

    def node_pid(self, node_id: int) -> int | None:
        """The pid of node `node_id`'s `serve` process (a child of `dev`), if it runs."""
        listen = self.addr(node_id).encode()
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
                parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if parent != self.process.pid or b"serve" not in args:
                continue
            if any(a == b"--listen" and b == listen for a, b in itertools.pairwise(args)):
                return int(proc.name)
        return None

    def leader_id(self, timeout: float = HEALTHY_TIMEOUT) -> int:
        """The leader's node id, once the nodes agree on one."""
        return wait_until("a leader the nodes agree on", timeout, self._agreed_leader)

    def kill_node(self, node_id: int) -> None:
        """SIGKILLs node `node_id`; `dev` restarts it after 3 s."""
        pid = self.node_pid(node_id)
        assert pid is not None, f"node {node_id} is not running"
        os.kill(pid, signal.SIGKILL)
        wait_until(f"node {node_id} (pid {pid}) to die", 10, lambda: _gone(pid))

    def wait_healthy(self, timeout: float = HEALTHY_TIMEOUT) -> None:
        """Waits until every node runs and they agree on a leader (after a kill, `dev` restarts
        the node)."""
        self.leader_id(timeout)

    def _agreed_leader(self) -> int | None:
        leaders = set()
        for node_id in range(1, NODES + 1):
            if self.node_pid(node_id) is None:
                return None
            config = self.config(endpoints=[self.addr(node_id)], call_deadline=2.0, retries_max=0)
            try:
                with Client(config) as client:
                    status = client.status(pb.StatusRequest())
            except SwitchboardError:
                return None
            if not status.HasField("leader_id"):
                return None
            leaders.add(status.leader_id)
        return leaders.pop() if len(leaders) == 1 else None


def _gone(pid: int) -> bool | None:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return True
    return True if state == "Z" else None


def _binary() -> Path:
    binary = Path(os.environ.get("SWITCHBOARD_BINARY", DEFAULT_BINARY))
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"the switchboard binary is missing: {binary} is not an executable file. Build it "
            "with `cargo build -p node --bin switchboard` (scripts/dev does) or point "
            "SWITCHBOARD_BINARY at one.",
            pytrace=False,
        )
    return binary


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def cluster() -> Iterator[DevCluster]:
    """A 3-node TLS cluster with tokens for the whole session."""
    binary = _binary()
    work = Path(tempfile.mkdtemp(prefix="switchboard-pytest-"))
    log_path = work / "dev.log"
    base_port = _free_base_port()
    data_dir = work / "data"
    command = [str(binary), "dev", "--nodes", str(NODES), "--base-port", str(base_port)]
    command += ["--data-dir", str(data_dir), "--fresh"]
    with open(log_path, "wb") as log:
        # Its own session, so that teardown can signal `dev` and every node it started at once.
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    running = DevCluster(binary, data_dir, base_port, process, log_path)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        while not (running.ca_path.exists() and running.token_path.exists()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"switchboard dev did not start:\n{_log_tail(log_path)}", pytrace=False)
            time.sleep(0.2)
        running.wait_healthy(READY_TIMEOUT)
        yield running
    finally:
        _stop(process)
        shutil.rmtree(work, ignore_errors=True)


def _stop(process: subprocess.Popen[bytes]) -> None:
    """Stops `dev` (which stops its nodes), then kills whatever of its session is left."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(STOP_TIMEOUT)


@pytest.fixture
def tenant() -> str:
    """A tenant of this test alone."""
    return unique("t")


async def new_voice_call(client: AsyncClient, tenant: str) -> str:
    """Creates a voice call of `tenant`; returns its id."""
    created = await client.create_call(
        pb.CreateCallRequest(tenant_id=tenant, channel=pb.CHANNEL_VOICE)
    )
    return created.call.call_id
