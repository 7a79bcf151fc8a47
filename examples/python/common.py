"""Command-line options shared by the examples: how to reach a cluster.

The defaults are the cluster `scripts/dev` starts from the repository root: endpoints
127.0.0.1:7101-7103, and the CA and admin token it keeps in `.switchboard-dev/`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from switchboard import DEV_DATA_DIR, DEV_ENDPOINTS, ClientConfig, TlsConfig, read_token_file


def add_cluster_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds --endpoints, --ca, --token-file, --insecure and --tenant."""
    parser.add_argument(
        "--endpoints",
        default=",".join(DEV_ENDPOINTS),
        help="node gRPC addresses, host:port, comma separated (default: %(default)s)",
    )
    parser.add_argument(
        "--ca",
        type=Path,
        default=Path(DEV_DATA_DIR) / "certs" / "ca.pem",
        help="the cluster CA certificate, PEM (default: %(default)s)",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        default=Path(DEV_DATA_DIR) / "tokens" / "admin.jwt",
        help="file holding the bearer token (default: %(default)s)",
    )
    parser.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext and no token, for a cluster started with `switchboard dev --insecure`",
    )
    parser.add_argument(
        "--tenant", default="demo", help="tenant of the calls (default: %(default)s)"
    )


def client_config(args: argparse.Namespace) -> ClientConfig:
    """The client configuration the options describe."""
    endpoints = [e.strip() for e in args.endpoints.split(",") if e.strip()]
    if args.insecure:
        return ClientConfig(endpoints=endpoints)
    return ClientConfig(
        endpoints=endpoints,
        token=read_token_file(args.token_file),
        tls=TlsConfig.from_files(args.ca),
    )
