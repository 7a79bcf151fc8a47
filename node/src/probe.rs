//! `switchboard probe URL`: a minimal HTTP GET for container health checks, where images built
//! `FROM scratch` have no curl. Succeeds on a 2xx answer within the timeout.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Largest response head read from the probed endpoint.
const RESPONSE_BYTES_MAX: usize = 4096;

#[derive(Debug, Clone, clap::Args)]
pub struct ProbeArgs {
    /// `http://HOST:PORT/PATH`, e.g. http://127.0.0.1:8101/readyz
    pub url: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 2000)]
    pub timeout_ms: u64,
}

/// Splits `http://host:port/path` into `host:port` and `/path`.
pub fn split_url(url: &str) -> anyhow::Result<(&str, &str)> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| anyhow::anyhow!("{url:?} is not an http:// URL"))?;
    Ok(match rest.find('/') {
        Some(slash) => (&rest[..slash], &rest[slash..]),
        None => (rest, "/"),
    })
}

/// Fetches the URL; returns the status line.
pub async fn run(args: ProbeArgs) -> anyhow::Result<String> {
    let (authority, path) = split_url(&args.url)?;
    let fetch = async {
        let mut stream = tokio::net::TcpStream::connect(authority)
            .await
            .with_context(|| format!("failed to connect to {authority}"))?;
        let request =
            format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut head = vec![0u8; RESPONSE_BYTES_MAX];
        let mut filled = 0;
        while filled < head.len() {
            let n = stream.read(&mut head[filled..]).await?;
            if n == 0 {
                break;
            }
            filled += n;
            if head[..filled].windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
        let text = String::from_utf8_lossy(&head[..filled]);
        let status_line = text.lines().next().unwrap_or_default().to_owned();
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
    fn urls_split_into_authority_and_path() {
        assert_eq!(
            split_url("http://127.0.0.1:8101/readyz").expect("url"),
            ("127.0.0.1:8101", "/readyz")
        );
        assert_eq!(
            split_url("http://node1:8101").expect("url"),
            ("node1:8101", "/")
        );
        assert!(split_url("https://x/").is_err());
    }
}
