"""TLS towards the session's cluster: a client certificate of the cluster's CA is accepted, one
of another CA is refused, and so is a node whose certificate the client's CA did not sign."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import DevCluster
from switchboard import Client, GaveUp, TlsConfig, pb


def other_ca(cluster: DevCluster, tmp_path: Path) -> Path:
    """A CA of another cluster, and a certificate it signed for node 1."""
    command = [str(cluster.binary), "certs", "init", "--dir", str(tmp_path)]
    command += ["--cluster-id", "elsewhere", "--nodes", "1"]
    subprocess.run(command, capture_output=True, check=True, timeout=30)
    return tmp_path


def test_a_client_certificate_of_the_cluster_ca_is_accepted(cluster: DevCluster) -> None:
    certs = cluster.data_dir / "certs"
    tls = TlsConfig.from_files(
        cluster.ca_path, cert=certs / "node-9.pem", key=certs / "node-9-key.pem"
    )
    with Client(cluster.config(tls=tls)) as client:
        assert client.status(pb.StatusRequest()).cluster_id == "switchboard-dev"


def test_a_foreign_certificate_or_ca_is_refused(cluster: DevCluster, tmp_path: Path) -> None:
    foreign = other_ca(cluster, tmp_path)
    impostor = TlsConfig.from_files(
        cluster.ca_path, cert=foreign / "node-1.pem", key=foreign / "node-1-key.pem"
    )
    wrong_trust = TlsConfig.from_files(foreign / "ca.pem")
    for tls in (impostor, wrong_trust):
        config = cluster.config(tls=tls, call_deadline=3.0, retries_max=4)
        with Client(config) as client, pytest.raises(GaveUp):
            client.status(pb.StatusRequest())
