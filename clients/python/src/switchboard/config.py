"""How a client reaches a cluster: endpoints, timeouts, retries, token and TLS.

Mirrors `ClientConfig` of the Rust client (`client/src/lib.rs`): every field is checked when the
configuration is made, and a bad one raises :class:`~switchboard.errors.ConfigError` naming it.
Durations are in seconds.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from switchboard.errors import ConfigError

#: The local dev cluster of `scripts/dev` (`switchboard dev`): the default endpoints.
DEV_ENDPOINTS: tuple[str, ...] = ("127.0.0.1:7101", "127.0.0.1:7102", "127.0.0.1:7103")
#: Where `switchboard dev` keeps its data, certificates and admin token, relative to where it runs.
DEV_DATA_DIR = ".switchboard-dev"
#: The dev cluster's CA certificate, inside its data directory.
DEV_CA_FILE = Path("certs") / "ca.pem"
#: The dev cluster's admin token (tenant `default`, role admin), inside its data directory.
DEV_TOKEN_FILE = Path("tokens") / "admin.jwt"

#: Most endpoints a configuration may list.
ENDPOINTS_MAX = 64
#: Upper bound accepted for :attr:`ClientConfig.retries_max`.
RETRIES_MAX_LIMIT = 1000
#: Longest bearer token sent, in bytes (the node's bound too).
TOKEN_BYTES_MAX = 4096
#: Largest token file read, in bytes (the CLI's bound).
TOKEN_FILE_BYTES_MAX = 8 * 1024
#: Largest PEM (CA, certificate or key) a :class:`TlsConfig` holds, in bytes.
TLS_PEM_BYTES_MAX = 1 << 20


def normalize_addr(raw: str) -> str:
    """Turns `host:port`, `http://host:port` or `https://host:port` into `host:port`.

    Raises :class:`ValueError` saying what is wrong with the address.
    """
    addr = raw.strip()
    for scheme in ("http://", "https://"):
        if addr.startswith(scheme):
            addr = addr[len(scheme) :]
            break
    addr = addr.removesuffix("/")
    if "://" in addr:
        raise ValueError("only host:port, http://host:port or https://host:port is supported")
    if "/" in addr:
        raise ValueError("expected host:port without a path")
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise ValueError("expected host:port")
    if not host:
        raise ValueError("host is empty")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("port must be a number in 1..=65535")
    if any(c.isspace() for c in addr):
        raise ValueError("an address holds no spaces")
    return addr


def read_pem(path: str | Path) -> bytes:
    """Reads a PEM file of at most :data:`TLS_PEM_BYTES_MAX` bytes."""
    path = Path(path)
    size = path.stat().st_size
    if size > TLS_PEM_BYTES_MAX:
        raise ConfigError(f"tls: {path} is {size} bytes, over the bound of {TLS_PEM_BYTES_MAX}")
    return path.read_bytes()


def read_token_file(path: str | Path) -> str:
    """The bearer token held in a file (e.g. the dev cluster's `tokens/admin.jwt`)."""
    path = Path(path)
    size = path.stat().st_size
    if size > TOKEN_FILE_BYTES_MAX:
        raise ConfigError(
            f"token file {path} is {size} bytes, over the bound of {TOKEN_FILE_BYTES_MAX}"
        )
    return path.read_text().strip()


@dataclass(frozen=True)
class TlsConfig:
    """How the client speaks TLS: which CA signed the nodes' certificates, and optionally a
    client certificate to present (nodes check it against the same CA)."""

    #: The cluster CA certificate(s), PEM.
    ca_pem: bytes = field(repr=False)
    #: A client certificate chain, PEM (with :attr:`key_pem`).
    cert_pem: bytes | None = field(default=None, repr=False)
    #: The client certificate's private key, PEM (with :attr:`cert_pem`).
    key_pem: bytes | None = field(default=None, repr=False)
    #: The name checked against a node's certificate instead of the host dialled.
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | Path,
        cert: str | Path | None = None,
        key: str | Path | None = None,
        server_name: str | None = None,
    ) -> TlsConfig:
        """Trusts the CA(s) in the PEM file `ca`; presents `cert` and `key` when given."""
        if (cert is None) != (key is None):
            raise ConfigError("tls: a client certificate needs its key, and a key its certificate")
        return cls(
            ca_pem=read_pem(ca),
            cert_pem=read_pem(cert) if cert is not None else None,
            key_pem=read_pem(key) if key is not None else None,
            server_name=server_name,
        )

    def __post_init__(self) -> None:
        pems = {"ca_pem": self.ca_pem, "cert_pem": self.cert_pem, "key_pem": self.key_pem}
        for name, pem in pems.items():
            if pem is not None and len(pem) > TLS_PEM_BYTES_MAX:
                raise ConfigError(
                    f"tls: {name} is {len(pem)} bytes, over the bound of {TLS_PEM_BYTES_MAX}"
                )
        if not self.ca_pem:
            raise ConfigError("tls: ca_pem is empty")
        if (self.cert_pem is None) != (self.key_pem is None):
            raise ConfigError("tls: cert_pem and key_pem go together")
        # Parses the CA now, so that a bad file is a configuration error, not a failure of
        # every call.
        try:
            ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))
        except (ssl.SSLError, UnicodeDecodeError, ValueError) as error:
            raise ConfigError(f"tls: ca_pem is not a PEM certificate: {error}") from None
        if self.cert_pem is not None and b"-----BEGIN CERTIFICATE-----" not in self.cert_pem:
            raise ConfigError("tls: cert_pem is not a PEM certificate")
        if self.key_pem is not None and b"PRIVATE KEY-----" not in self.key_pem:
            raise ConfigError("tls: key_pem is not a PEM private key")


@dataclass(frozen=True)
class ClientConfig:
    """How a client behaves. Checked when made; :class:`~switchboard.errors.ConfigError` names
    the first bad field. The defaults are those of the Rust client."""

    #: gRPC addresses of cluster nodes, `host:port` (an `http://` or `https://` prefix is
    #: accepted; whether TLS is spoken is :attr:`tls`'s to say).
    endpoints: Sequence[str] = DEV_ENDPOINTS
    #: Timeout of one attempt, in seconds; an attempt that runs out is retried elsewhere.
    request_timeout: float = 3.0
    #: Deadline of a whole call, retries and backoff included, in seconds (a method's
    #: `timeout=` overrides it for one call).
    call_deadline: float = 10.0
    #: Attempts after the first, redirects included.
    retries_max: int = 16
    #: First backoff delay, in seconds; it doubles per failed attempt.
    backoff_initial: float = 0.05
    #: Cap of the backoff delay, in seconds.
    backoff_max: float = 1.0
    #: Where to connect for an address the cluster names: advertised `host:port` to reachable
    #: `host:port` (a node advertises `node2:7101` inside a container network; a client on the
    #: host reaches it at `127.0.0.1:7102`). Applied to the endpoints and to every leader address
    #: a redirect names.
    resolve: Mapping[str, str] = field(default_factory=dict)
    #: The bearer token sent with every request (`authorization: Bearer <token>`): a JWT from
    #: `switchboard token issue`. `None` only against a node started with `--insecure`.
    token: str | None = field(default=None, repr=False)
    #: TLS towards the nodes; `None` speaks plaintext, which only an `--insecure` node answers.
    tls: TlsConfig | None = None

    @classmethod
    def for_dev_cluster(
        cls,
        data_dir: str | Path = DEV_DATA_DIR,
        endpoints: Sequence[str] = DEV_ENDPOINTS,
    ) -> ClientConfig:
        """The configuration of a cluster started by `switchboard dev` (`scripts/dev`): its
        endpoints, and the CA and admin token it keeps in `data_dir`."""
        data_dir = Path(data_dir)
        return cls(
            endpoints=tuple(endpoints),
            token=read_token_file(data_dir / DEV_TOKEN_FILE),
            tls=TlsConfig.from_files(data_dir / DEV_CA_FILE),
        )

    def __post_init__(self) -> None:
        if isinstance(self.endpoints, str):
            raise ConfigError("endpoints must be a list of host:port, not one string")
        if not self.endpoints:
            raise ConfigError("endpoints is empty: give at least one host:port")
        if len(self.endpoints) > ENDPOINTS_MAX:
            raise ConfigError(
                f"endpoints lists {len(self.endpoints)} addresses, "
                f"at most {ENDPOINTS_MAX} are allowed"
            )
        for endpoint in self.endpoints:
            try:
                normalize_addr(endpoint)
            except ValueError as error:
                raise ConfigError(f"endpoints: invalid address {endpoint!r}: {error}") from None
            if self.tls is None and endpoint.strip().startswith("https://"):
                raise ConfigError(
                    f"endpoints: {endpoint!r} is https:// but no TLS is configured "
                    "(give the cluster CA)"
                )
        if len(self.resolve) > ENDPOINTS_MAX:
            raise ConfigError(
                f"resolve lists {len(self.resolve)} pairs, at most {ENDPOINTS_MAX} are allowed"
            )
        for pair in self.resolve.items():
            for addr in pair:
                try:
                    normalize_addr(addr)
                except ValueError as error:
                    raise ConfigError(f"resolve: invalid address {addr!r}: {error}") from None
        durations = {
            "request_timeout": self.request_timeout,
            "call_deadline": self.call_deadline,
            "backoff_initial": self.backoff_initial,
            "backoff_max": self.backoff_max,
        }
        for name, seconds in durations.items():
            if not seconds > 0:
                raise ConfigError(f"{name} must be greater than zero")
        if self.backoff_initial > self.backoff_max:
            raise ConfigError(
                f"backoff_initial ({self.backoff_initial} s) exceeds backoff_max "
                f"({self.backoff_max} s)"
            )
        if not 0 <= self.retries_max <= RETRIES_MAX_LIMIT:
            raise ConfigError(f"retries_max {self.retries_max} is not in 0..={RETRIES_MAX_LIMIT}")
        if self.token is not None:
            reason = None
            if not self.token:
                reason = "it is empty"
            elif len(self.token.encode()) > TOKEN_BYTES_MAX:
                reason = f"it is longer than {TOKEN_BYTES_MAX} bytes"
            elif not all("!" <= c <= "~" for c in self.token):
                reason = "it holds a space or a character that is not visible ASCII"
            if reason:
                # Never the token itself.
                raise ConfigError(f"token is not usable: {reason}")
