"""The examples of examples/python run against the session's cluster: the voice worker hands a
call off, and the console, replaying the tenant's handoffs, accepts and ends it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DevCluster
from switchboard import Client, pb

EXAMPLES = Path(__file__).resolve().parents[3] / "examples" / "python"
TIMEOUT = 60


def run_example(cluster: DevCluster, script: str, *args: str) -> str:
    command = [sys.executable, str(EXAMPLES / script), "--endpoints", ",".join(cluster.endpoints)]
    command += ["--ca", str(cluster.ca_path), "--token-file", str(cluster.token_path), *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, f"{script} failed:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.mark.skipif(not EXAMPLES.is_dir(), reason="not run from the repository")
def test_the_voice_worker_hands_off_and_the_console_ends_the_call(
    cluster: DevCluster, tenant: str
) -> None:
    worker = run_example(cluster, "voice_worker.py", "--tenant", tenant, "--pace", "0")
    assert "handed off at position" in worker
    console = run_example(
        cluster, "console.py", "--tenant", tenant, "--auto", "--handoffs", "1", "--from", "1"
    )
    assert "accepted by Sam and ended" in console
    with Client(cluster.config()) as client:
        (call,) = client.list_calls(pb.ListCallsRequest(tenant_id=tenant)).calls
        assert call.state == pb.CALL_STATE_ENDED
        assert call.resolution == "resolved by Sam"
        assert call.handoff.reason == "caller asked for a human"
