//! The live activity page against real node processes: the SSE route at the HTTP level (events
//! as recorded, resumed with `Last-Event-ID` without gap or repeat, strangers refused), and the
//! page itself in headless Chromium (an activity recorded through the CLI shown within a second
//! of its commit; after its node is killed the page resumes on the next node of `#nodes=`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::{Client, ClientConfig};
use harness::ProcessCluster;
use proto::v1;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};

const LEADER_WAIT: Duration = Duration::from_secs(30);
const SSE_WAIT: Duration = Duration::from_secs(20);
const PAGE_WAIT: Duration = Duration::from_secs(30);
const CDP_CALL_WAIT: Duration = Duration::from_secs(20);
const CLOSE_WAIT: Duration = Duration::from_secs(5);
const STOP_WAIT: Duration = Duration::from_secs(10);
/// Largest HTTP head, SSE message or DevTools message read.
const MESSAGE_BYTES_MAX: usize = 1 << 20;
/// The page must show an event within this long of its commit (issue 12, point 5).
const PAGE_DELAY_MS_MAX: u64 = 1000;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

fn ca(cluster: &ProcessCluster) -> PathBuf {
    cluster
        .certs_dir()
        .expect("test clusters run with TLS")
        .join("ca.pem")
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One HTTP/1.1 exchange on the node's HTTP port (TLS, trusting the cluster's CA).
async fn connect(cluster: &ProcessCluster, http: &str) -> Box<dyn Io> {
    let ca = ca(cluster);
    let pem = node::tls::read_pem_file(&ca).expect("read the CA");
    let roots = node::tls::roots_from_pem(&ca, &pem).expect("CA roots");
    let config = rustls::ClientConfig::builder_with_provider(node::tls::provider())
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(http)
        .await
        .expect("connect to the HTTP port");
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("server name");
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("tls handshake");
    Box::new(tls)
}

/// An HTTP answer: status, lower-cased headers, and the body still to read.
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: BufReader<Box<dyn Io>>,
    chunked: bool,
    /// Decoded body bytes not yet consumed by the SSE parser.
    pending: String,
}

async fn request(
    cluster: &ProcessCluster,
    http: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut io = connect(cluster, http).await;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    head.push_str("\r\n");
    io.write_all(head.as_bytes()).await.expect("send request");
    io.flush().await.expect("flush request");
    let mut body = BufReader::new(io);
    let mut line = String::new();
    body.read_line(&mut line).await.expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status in {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        body.read_line(&mut line).await.expect("header line");
        let trimmed = line.trim_end();
        if trimmed.is_empty() {
            break;
        }
        let (name, value) = trimmed.split_once(':').expect("a header");
        headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
    }
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"));
    Answer {
        status,
        headers,
        body,
        chunked,
        pending: String::new(),
    }
}

/// One Server-Sent Event.
#[derive(Debug, Clone)]
struct Sse {
    event: String,
    id: Option<u64>,
    data: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The next piece of the body (de-chunked), `None` at its end.
    async fn read_body(&mut self) -> Option<Vec<u8>> {
        if !self.chunked {
            let mut bytes = vec![0; 8192];
            let n = self.body.read(&mut bytes).await.ok()?;
            bytes.truncate(n);
            return (n > 0).then_some(bytes);
        }
        let mut size = String::new();
        self.body.read_line(&mut size).await.ok()?;
        let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
        if size == 0 {
            return None;
        }
        assert!(size <= MESSAGE_BYTES_MAX, "chunk of {size} bytes");
        let mut bytes = vec![0; size + 2];
        self.body.read_exact(&mut bytes).await.ok()?;
        bytes.truncate(size);
        Some(bytes)
    }

    async fn text(mut self) -> String {
        let mut text = Vec::new();
        while let Some(bytes) = self.read_body().await {
            text.extend(bytes);
            assert!(text.len() <= MESSAGE_BYTES_MAX, "answer too large");
        }
        String::from_utf8(text).expect("utf-8 body")
    }

    /// The next SSE message (comments skipped), waiting at most `SSE_WAIT`.
    async fn next_sse(&mut self) -> Sse {
        let deadline = Instant::now() + SSE_WAIT;
        loop {
            if let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut sse = Sse {
                    event: "message".to_owned(),
                    id: None,
                    data: String::new(),
                };
                for line in block.lines() {
                    if let Some(value) = line.strip_prefix("event:") {
                        sse.event = value.trim().to_owned();
                    } else if let Some(value) = line.strip_prefix("id:") {
                        sse.id = Some(value.trim().parse().expect("a numeric id"));
                    } else if let Some(value) = line.strip_prefix("data:") {
                        sse.data.push_str(value.strip_prefix(' ').unwrap_or(value));
                    }
                }
                if sse.data.is_empty() && sse.id.is_none() {
                    continue; // a keep-alive comment
                }
                return sse;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let bytes = tokio::time::timeout(left, self.read_body())
                .await
                .expect("an SSE message within the wait")
                .expect("the stream is still open");
            self.pending
                .push_str(&String::from_utf8(bytes).expect("utf-8"));
            assert!(
                self.pending.len() <= MESSAGE_BYTES_MAX,
                "SSE message too large"
            );
        }
    }

    /// The positions of the next `n` events, skipping `open` and `progress`.
    async fn next_events(&mut self, n: usize) -> Vec<(u64, Value)> {
        let mut events = Vec::new();
        while events.len() < n {
            let sse = self.next_sse().await;
            match sse.event.as_str() {
                "open" | "progress" => {}
                "message" => {
                    let event: Value = serde_json::from_str(&sse.data).expect("event json");
                    let position = sse.id.expect("an event has an id");
                    assert_eq!(event["position"], json!(position.to_string()));
                    events.push((position, event));
                }
                other => panic!("unexpected SSE event {other}: {}", sse.data),
            }
        }
        events
    }
}

fn entry(agent: &str, task: &str, message: &str) -> v1::ActivityEntry {
    v1::ActivityEntry {
        activity_type: v1::ActivityType::Progress.into(),
        activity: Some(v1::Activity {
            agent_type: agent.to_owned(),
            agent_name: agent.to_owned(),
            project_id: "P-1".to_owned(),
            task_id: task.to_owned(),
            task_description: "watch the page".to_owned(),
            severity: v1::Severity::Warning.into(),
            status: v1::ActivityStatus::InProgress.into(),
            message: message.to_owned(),
        }),
        payload_json: "{}".to_owned(),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_delivers_activity_resumes_after_last_event_id_and_refuses_strangers() {
    let mut cluster = ProcessCluster::start(binary(), 1, &[]).expect("start cluster");
    cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a leader");
    let http = cluster.nodes[&1].http.clone();
    let writer = cluster.token("w", "acme", "agent").expect("token");
    let viewer = cluster.token("v", "acme", "viewer").expect("token");
    let stranger = cluster.token("s", "other", "viewer").expect("token");
    let auth = format!("Bearer {viewer}");

    let mut stream = request(
        &cluster,
        &http,
        "GET",
        "/live/events?min_severity=warning&type=agent.",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(stream.status, 200);
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    assert_eq!(stream.header("access-control-allow-origin"), Some("*"));
    let opened = stream.next_sse().await;
    assert_eq!(opened.event, "open", "{opened:?}");

    let client = Client::new(ClientConfig {
        endpoints: cluster.endpoints(),
        ..cluster.client_config_with_token(&writer)
    })
    .expect("client");
    let mut recorded = Vec::new();
    for n in 0..5 {
        let receipt = client
            .record_activity(v1::RecordActivityRequest {
                entries: vec![entry("agent-sse", &format!("T-{n}"), &format!("step {n}"))],
                ..Default::default()
            })
            .await
            .expect("record activity");
        recorded.push(receipt.first_position);
    }

    // Two events, then the connection is dropped as a failing network would.
    let first = stream.next_events(2).await;
    assert_eq!(first[0].1["eventType"], json!("agent.progress"));
    assert_eq!(first[0].1["activity"]["message"], json!("step 0"));
    assert_eq!(
        first[0].1["activity"]["severity"],
        json!("SEVERITY_WARNING")
    );
    drop(stream);

    let last_seen = first[1].0.to_string();
    let mut resumed = request(
        &cluster,
        &http,
        "GET",
        "/live/events?min_severity=warning&type=agent.",
        &[("Authorization", &auth), ("Last-Event-ID", &last_seen)],
    )
    .await;
    assert_eq!(resumed.status, 200);
    let rest = resumed.next_events(3).await;
    let seen: Vec<u64> = first.iter().chain(&rest).map(|(p, _)| *p).collect();
    assert_eq!(
        seen, recorded,
        "every event once, in order, across the resume"
    );
    // Nothing after them but progress: no repeat of what was already delivered.
    let after = resumed.next_sse().await;
    assert_eq!(after.event, "progress", "{after:?}");
    let progress: Value = serde_json::from_str(&after.data).expect("progress json");
    assert_eq!(progress["resumeFrom"], json!(recorded[4] + 1));
    drop(resumed);

    // Refused: no token, a token of another tenant naming this one; a stranger watching its own
    // tenant sees none of these events.
    let missing = request(&cluster, &http, "GET", "/live/events", &[]).await;
    assert_eq!(missing.status, 401);
    let other = format!("Bearer {stranger}");
    let refused = request(
        &cluster,
        &http,
        "GET",
        "/live/events?tenant=acme",
        &[("Authorization", &other)],
    )
    .await;
    let status = refused.status;
    assert_eq!(status, 403, "{}", refused.text().await);
    let mut own = request(
        &cluster,
        &http,
        "GET",
        "/live/events?from=1",
        &[("Authorization", &other)],
    )
    .await;
    assert_eq!(own.status, 200);
    let deadline = Instant::now() + SSE_WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "the stranger's watch did not pass the recorded positions"
        );
        let sse = own.next_sse().await;
        assert_ne!(
            sse.event, "message",
            "another tenant's event leaked: {sse:?}"
        );
        if sse.event == "progress" {
            let progress: Value = serde_json::from_str(&sse.data).expect("progress json");
            if progress["resumeFrom"].as_u64() > Some(recorded[4]) {
                break;
            }
        }
    }
    drop(own);

    // The page on another node's origin may ask (CORS preflight).
    let preflight = request(&cluster, &http, "OPTIONS", "/live/events", &[]).await;
    assert_eq!(preflight.status, 204);
    let allowed = preflight
        .header("access-control-allow-headers")
        .unwrap_or_default();
    assert!(allowed.contains("authorization") && allowed.contains("last-event-id"));

    let stats = request(
        &cluster,
        &http,
        "GET",
        "/live/stats",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(stats.status, 200);
    let stats: Value = serde_json::from_str(&stats.text().await).expect("stats json");
    assert_eq!(stats["byType"]["agent.progress"], json!("5"), "{stats}");
    let calls = request(
        &cluster,
        &http,
        "GET",
        "/live/calls",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(calls.status, 200);
    let calls: Value = serde_json::from_str(&calls.text().await).expect("calls json");
    assert_eq!(calls["calls"], json!([]), "{calls}");

    // A node stopping ends its SSE streams with where to resume, and an open stream does not
    // hold its HTTP server's graceful shutdown.
    let mut open = request(
        &cluster,
        &http,
        "GET",
        "/live/events",
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(open.next_sse().await.event, "open");
    let stopped = cluster.stop(1, STOP_WAIT).expect("the node stops");
    assert!(stopped.success(), "{stopped:?}");
    let end = loop {
        let sse = open.next_sse().await;
        if sse.event != "progress" {
            break sse;
        }
    };
    assert_eq!(end.event, "end", "{end:?}");
    let end: Value = serde_json::from_str(&end.data).expect("end json");
    assert_eq!(end["code"], json!("Unavailable"), "{end}");
    assert_eq!(end["resumeFrom"], json!(recorded[4] + 1), "{end}");
}

/// Chromium driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`: fd 3 in,
/// fd 4 out, messages ended by NUL), which needs no WebSocket client. Its process group is
/// killed when this is dropped, so a failing test leaves no browser behind.
struct Chromium {
    child: tokio::process::Child,
    to_browser: tokio::process::ChildStdin,
    from_browser: BufReader<tokio::process::ChildStdout>,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Chromium {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            let pid = i32::try_from(pid).expect("Linux pids fit in an i32");
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn chromium_binary() -> PathBuf {
    let name = std::env::var("CHROMIUM").unwrap_or_else(|_| "chromium".to_owned());
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(&name))
            .find(|path| path.is_file())
    });
    found.unwrap_or_else(|| {
        panic!(
            "headless Chromium is needed by this test and '{name}' is not on PATH: install the \
             Debian package 'chromium' (scripts/ensure-system-deps chromium) or set CHROMIUM"
        )
    })
}

impl Chromium {
    fn start() -> Self {
        let binary = chromium_binary();
        let profile = tempfile::tempdir().expect("profile dir");
        // The shell gives the browser its pipe on fds 3 and 4, then execs it.
        let child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec "$0" "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#)
            .arg(&binary)
            .args([
                "--headless=new",
                "--remote-debugging-pipe",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-timer-throttling",
                "--disable-renderer-backgrounding",
                // The cluster's CA is its own; the page is what is tested, not the trust store.
                "--ignore-certificate-errors",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .expect("start chromium");
        let mut child = child;
        let to_browser = child.stdin.take().expect("piped stdin");
        let from_browser = BufReader::new(child.stdout.take().expect("piped stdout"));
        Self {
            child,
            to_browser,
            from_browser,
            next_id: 1,
            _profile: profile,
        }
    }

    /// Sends one command and waits for its answer (events in between are passed over).
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = serde_json::to_vec(&message).expect("json");
        bytes.push(0);
        self.to_browser
            .write_all(&bytes)
            .await
            .expect("write to chromium");
        self.to_browser.flush().await.expect("flush to chromium");
        let answer = async {
            loop {
                let mut raw = Vec::new();
                let n = self
                    .from_browser
                    .read_until(0, &mut raw)
                    .await
                    .expect("read from chromium");
                assert!(n > 0, "chromium closed its DevTools pipe");
                assert!(raw.len() <= MESSAGE_BYTES_MAX, "DevTools message too large");
                raw.pop();
                let reply: Value = serde_json::from_slice(&raw).expect("DevTools json");
                if reply["id"] == json!(id) {
                    return reply;
                }
            }
        };
        let reply = tokio::time::timeout(CDP_CALL_WAIT, answer)
            .await
            .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
        assert!(reply.get("error").is_none(), "{method}: {reply}");
        reply["result"].clone()
    }

    /// Asks the browser to quit (it reaps its own helpers), then waits a bounded time; `Drop`
    /// kills whatever is left.
    async fn close(mut self) {
        let mut bytes =
            serde_json::to_vec(&json!({ "id": 0, "method": "Browser.close" })).expect("json");
        bytes.push(0);
        if self.to_browser.write_all(&bytes).await.is_ok() {
            let _ = self.to_browser.flush().await;
            let _ = tokio::time::timeout(CLOSE_WAIT, self.child.wait()).await;
        }
    }

    async fn open(&mut self, url: &str) -> String {
        let target = self
            .call(None, "Target.createTarget", json!({ "url": url }))
            .await;
        let target_id = target["targetId"].as_str().expect("target id").to_owned();
        let attached = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await;
        attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned()
    }

    async fn eval(&mut self, session: &str, expression: &str) -> Value {
        let result = self
            .call(
                Some(session),
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true }),
            )
            .await;
        assert!(
            result.get("exceptionDetails").is_none(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until `done` says so, at most `PAGE_WAIT`.
    async fn eval_until(
        &mut self,
        session: &str,
        expression: &str,
        why: &str,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + PAGE_WAIT;
        loop {
            let value = self.eval(session, expression).await;
            if done(&value) {
                return value;
            }
            assert!(Instant::now() < deadline, "{why}: last seen {value}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The page's rows, oldest first: `[position, delay_ms]`.
const ROWS: &str = "JSON.stringify([...document.querySelectorAll('#feed tbody tr')].reverse()\
    .map(tr => [Number(tr.dataset.position), Number(tr.dataset.delayMs)]))";

fn rows(value: &Value) -> Vec<(u64, u64)> {
    let rows: Vec<(u64, u64)> =
        serde_json::from_str(value.as_str().unwrap_or("[]")).expect("rows json");
    rows
}

fn cli_record(cluster: &ProcessCluster, token: &str, message: &str) -> u64 {
    let output = Command::new(binary())
        .args(["activity", "record", "--type", "progress"])
        .args(["--agent-type", "agent-page", "--task", "T-page"])
        .args(["--severity", "error", "--message", message])
        .args(["--endpoints", &cluster.endpoints().join(",")])
        .args(["--token", token])
        .arg("--ca")
        .arg(ca(cluster))
        .output()
        .expect("run the CLI");
    assert!(
        output.status.success(),
        "activity record: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8(output.stdout).expect("utf-8");
    // "recorded positions P..=P (index I)"
    stdout
        .split_whitespace()
        .nth(2)
        .and_then(|range| range.split("..=").next())
        .and_then(|first| first.parse().ok())
        .unwrap_or_else(|| panic!("no position in {stdout:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_cli_activity_within_a_second_and_resumes_on_another_node() {
    let mut cluster = ProcessCluster::start(binary(), 3, &[]).expect("start cluster");
    let leader = cluster
        .wait_for_leader(LEADER_WAIT)
        .await
        .expect("a leader");
    let writer = cluster.token("w", "acme", "agent").expect("token");
    let viewer = cluster.token("v", "acme", "viewer").expect("token");
    // The page starts on a follower, so the kill below tests the page's failover, not an
    // election; the next node of its list is the leader.
    let follower = *cluster
        .nodes
        .keys()
        .find(|id| **id != leader)
        .expect("a follower");
    let order: Vec<u64> = std::iter::once(follower)
        .chain(cluster.nodes.keys().copied().filter(|id| *id != follower))
        .collect();
    let urls: Vec<String> = order
        .iter()
        .map(|id| format!("https://{}", cluster.nodes[id].http))
        .collect();
    let page = format!("{}/live#nodes={}&token={viewer}", urls[0], urls.join(","));

    let mut chromium = Chromium::start();
    let session = chromium.open(&page).await;
    chromium
        .eval_until(
            &session,
            "document.body && document.body.dataset.state",
            "the page connects",
            |state| state == "live",
        )
        .await;

    let first = cli_record(&cluster, &writer, "before the kill");
    let shown = chromium
        .eval_until(&session, ROWS, "the page shows the recorded event", |v| {
            !rows(v).is_empty()
        })
        .await;
    let shown = rows(&shown);
    assert_eq!(shown.first().map(|r| r.0), Some(first), "{shown:?}");
    assert!(
        shown[0].1 <= PAGE_DELAY_MS_MAX,
        "shown {} ms after its commit",
        shown[0].1
    );
    let row_class = chromium
        .eval(
            &session,
            "document.querySelector('#feed tbody tr').className",
        )
        .await;
    assert_eq!(row_class, json!("sev-error"));

    // Kill the node the page reads from, and write while the page looks for another.
    let before = chromium.eval(&session, "document.body.dataset.node").await;
    assert_eq!(before, json!(urls[0]));
    cluster.kill(follower).expect("kill the page's node");
    let mut expected = vec![first];
    for n in 0..3 {
        expected.push(cli_record(
            &cluster,
            &writer,
            &format!("after the kill {n}"),
        ));
    }
    let shown = chromium
        .eval_until(
            &session,
            ROWS,
            "the page shows every event after the failover",
            |v| rows(v).len() >= expected.len(),
        )
        .await;
    let positions: Vec<u64> = rows(&shown).iter().map(|r| r.0).collect();
    assert_eq!(positions, expected, "each event once, none missing");
    let after = chromium.eval(&session, "document.body.dataset.node").await;
    assert_ne!(after, json!(urls[0]), "the page moved to another node");
    // The page counts what it rendered: a replay dropped by position is not counted.
    let shown_count = chromium.eval(&session, "document.body.dataset.shown").await;
    assert_eq!(shown_count, json!(expected.len().to_string()));
    chromium.close().await;
}
