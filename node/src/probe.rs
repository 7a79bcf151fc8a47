//! `switchboard probe URL`: a minimal HTTP GET for container health checks, where images built
//! `FROM scratch` have no curl. Succeeds on a 2xx answer within the timeout. `https://` URLs
//! are checked against the CA given with `--ca` (the node's own `--tls-ca` will do).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Largest response head read from the probed endpoint.
const RESPONSE_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// `http://HOST:PORT/PATH` or `https://HOST:PORT/PATH`, e.g. https://127.0.0.1:8101/readyz
    pub url: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
    /// CA certificate (PEM) that signed the node's certificate, for https:// URLs.
    #[arg(long, env = "SWITCHBOARD_TLS_CA")]
    pub ca: Option<PathBuf>,
}

/// Whether a URL asks for TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    Http,
    Https,
}

/// Splits `http(s)://host:port/path` into the scheme, `host:port` and `/path`.
pub fn split_url(url: &str) -> anyhow::Result<(Scheme, &str, &str)> {
    let (scheme, rest) = if let Some(rest) = url.strip_prefix("http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = url.strip_prefix("https://") {
        (Scheme::Https, rest)
    } else {
        anyhow::bail!("{url:?} is not an http:// or https:// URL");
    };
    Ok(match rest.find('/') {
        Some(slash) => (scheme, &rest[..slash], &rest[slash..]),
        None => (scheme, rest, "/"),
    })
}

/// Sends `GET path` on `stream` and reads at most `bytes_max` bytes of the answer.
async fn get_on<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    authority: &str,
    path: &str,
    bytes_max: u64,
) -> anyhow::Result<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut answer = Vec::new();
    // A server may close without a TLS close_notify; what was read until then counts.
    let read = (&mut stream).take(bytes_max).read_to_end(&mut answer).await;
    if answer.is_empty() {
        read?;
    }
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// The TLS client configuration trusting the CA in `ca`.
fn tls_connector(ca: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let pem = crate::tls::read_pem_file(ca)?;
    let roots = crate::tls::roots_from_pem(ca, &pem)?;
    let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// GETs `url` (over TLS checked against `ca` for https://); returns the whole answer, head and
/// body, at most `bytes_max` bytes.
pub async fn get(url: &str, ca: Option<&Path>, bytes_max: u64) -> anyhow::Result<String> {
    let (scheme, authority, path) = split_url(url)?;
    let tcp = tokio::net::TcpStream::connect(authority)
        .await
        .with_context(|| format!("failed to connect to {authority}"))?;
    match scheme {
        Scheme::Http => get_on(tcp, authority, path, bytes_max).await,
        Scheme::Https => {
            let ca = ca.ok_or_else(|| {
                anyhow::anyhow!("{url} is https: give the CA with --ca (or SWITCHBOARD_TLS_CA)")
            })?;
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host)
                .trim_start_matches('[')
                .trim_end_matches(']');
            let name = ServerName::try_from(host.to_owned())
                .with_context(|| format!("{host:?} is not a host name or IP address"))?;
            let stream = tls_connector(ca)?
                .connect(name, tcp)
                .await
                .with_context(|| format!("tls handshake with {authority} failed"))?;
            get_on(stream, authority, path, bytes_max).await
        }
    }
}

/// Fetches the URL; returns the status line.
pub async fn run(args: ProbeArgs) -> anyhow::Result<String> {
    let fetch = async {
        let answer = get(&args.url, args.ca.as_deref(), RESPONSE_BYTES_MAX as u64).await?;
        let status_line = answer.lines().next().unwrap_or_default().to_owned();
        let code = status_line.split_whitespace().nth(1).unwrap_or_default();
        anyhow::ensure!(
            code.starts_with('2'),
            "{} answered {status_line:?}",
            args.url
        );
        Ok::<_, anyhow::Error>(status_line)
    };
    tokio::time::timeout(Duration::from_millis(args.timeout_ms), fetch)
        .await
        .with_context(|| format!("{} did not answer within {} ms", args.url, args.timeout_ms))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_split_into_scheme_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8101/readyz").expect("url"),
            (Scheme::Http, "127.0.0.1:8101", "/readyz")
        );
        assert_eq!(
            split_url("https://node1:8101").expect("url"),
            (Scheme::Https, "node1:8101", "/")
        );
        assert!(split_url("ftp://x/").is_err());
    }
}
