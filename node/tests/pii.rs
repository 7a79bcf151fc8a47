//! PII redaction against real processes: what a client writes is redacted by the leader before
//! it is proposed, so no raw value reaches any node's disk (log, state machine, snapshot); and,
//! as a control, a tenant whose policy is `keep` has its values found by the same search.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use harness::ProcessCluster;
use proto::v1::call_service_client::CallServiceClient;
use proto::v1::cluster_service_client::ClusterServiceClient;
use proto::v1::event_service_client::EventServiceClient;
use proto::v1::{self, Consistency, ReadOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Masked under the default policy.
const MASKED: &str = "acme";
/// `keep` in the config file: the control.
const KEPT: &str = "open";
/// `hash` in the config file.
const HASHED: &str = "linked";
/// Largest `/metrics` answer read.
const METRICS_BYTES_MAX: u64 = 4 << 20;
/// Largest file searched (data directories of this test hold a few MiB).
const SEARCHED_FILE_BYTES_MAX: u64 = 256 << 20;

fn binary() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_switchboard"))
}

fn channel(addr: &str) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("loopback endpoint")
        .connect_lazy()
}

/// Values no other test and no earlier run writes: a card number that passes Luhn, an
/// Australian mobile in E.164 form, an e-mail address.
#[derive(Debug, Clone)]
struct Secrets {
    card: String,
    phone: String,
    email: String,
}

impl Secrets {
    fn new(salt: u64) -> Self {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let seed = (nanos as u64) ^ (u64::from(std::process::id()) << 32) ^ salt;
        let body = format!("4{:014}", seed % 100_000_000_000_000);
        let card = format!("{body}{}", luhn_digit(&body));
        let phone = format!("+614{:08}", (seed / 7) % 100_000_000);
        let email = format!("pii-{seed:x}@example.com");
        Self { card, phone, email }
    }

    /// The card as a caller reads it out: groups of four.
    fn card_spaced(&self) -> String {
        self.card
            .as_bytes()
            .chunks(4)
            .map(|c| String::from_utf8_lossy(c).into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Every form a raw value could take on disk.
    fn needles(&self) -> Vec<String> {
        vec![
            self.card.clone(),
            self.card_spaced(),
            self.phone.clone(),
            self.phone[1..].to_owned(),
            self.email.clone(),
        ]
    }
}

fn luhn_digit(body: &str) -> u32 {
    let sum: u32 = body
        .bytes()
        .rev()
        .enumerate()
        .map(|(i, b)| {
            let d = u32::from(b - b'0');
            if i % 2 == 0 {
                let d = d * 2;
                if d > 9 { d - 9 } else { d }
            } else {
                d
            }
        })
        .sum();
    (10 - sum % 10) % 10
}

/// Every file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(kind) if kind.is_dir() => pending.push(path),
                Ok(kind) if kind.is_file() => files.push(path),
                _ => {}
            }
        }
    }
    files
}

/// The files under `dir` that contain `needle`, byte for byte.
fn files_containing(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let needle = needle.as_bytes();
    files_under(dir)
        .into_iter()
        .filter(|path| {
            let small = std::fs::metadata(path).is_ok_and(|m| m.len() <= SEARCHED_FILE_BYTES_MAX);
            assert!(small, "{} is too large to search", path.display());
            // A file removed meanwhile (a rotated WAL, an old snapshot) holds nothing now.
            std::fs::read(path).is_ok_and(|bytes| bytes.windows(needle.len()).any(|w| w == needle))
        })
        .collect()
}

async fn metrics(http: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(http)
        .await
        .expect("connect to the metrics port");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {http}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send GET /metrics");
    let mut body = String::new();
    stream
        .take(METRICS_BYTES_MAX)
        .read_to_string(&mut body)
        .await
        .expect("read /metrics");
    body
}

struct Writer {
    calls: CallServiceClient<Channel>,
    tenant: &'static str,
    requests: u64,
    last_index: u64,
}

impl Writer {
    fn new(leader: &str, tenant: &'static str) -> Self {
        Self {
            calls: CallServiceClient::new(channel(leader)),
            tenant,
            requests: 0,
            last_index: 0,
        }
    }

    fn request_id(&mut self) -> String {
        self.requests += 1;
        format!("{}-{}", self.tenant, self.requests)
    }

    fn index(&mut self, meta: Option<v1::WriteMeta>) {
        self.last_index = self
            .last_index
            .max(meta.expect("a write answers with its index").index);
    }

    async fn active_call(&mut self) -> String {
        let request_id = self.request_id();
        let created = self
            .calls
            .create_call(v1::CreateCallRequest {
                tenant_id: self.tenant.into(),
                request_id,
                source: "web".into(),
                channel: v1::Channel::Chat.into(),
                ..Default::default()
            })
            .await
            .expect("create")
            .into_inner();
        let call_id = created.call.expect("call").call_id;
        let request_id = self.request_id();
        let started = self
            .calls
            .start_call(v1::StartCallRequest {
                tenant_id: self.tenant.into(),
                request_id,
                call_id: call_id.clone(),
            })
            .await
            .expect("start")
            .into_inner();
        self.index(started.meta);
        call_id
    }

    /// A turn, a context update and an event, each carrying the secrets.
    async fn write_secrets(&mut self, call_id: &str, s: &Secrets) {
        let request_id = self.request_id();
        let turn = self
            .calls
            .append_turn(v1::AppendTurnRequest {
                tenant_id: self.tenant.into(),
                request_id,
                call_id: call_id.into(),
                speaker: "caller".into(),
                text: format!(
                    "my card is {}, call me on {} or mail {}",
                    s.card_spaced(),
                    s.phone,
                    s.email
                ),
                confidence: 0.9,
                language: "en".into(),
                ..Default::default()
            })
            .await
            .expect("append turn")
            .into_inner();
        self.index(turn.meta);
        let request_id = self.request_id();
        let context = self
            .calls
            .update_context(v1::UpdateContextRequest {
                tenant_id: self.tenant.into(),
                request_id,
                call_id: call_id.into(),
                summary: Some(format!("caller {} wants a refund", s.email)),
                entities: [
                    ("phone".to_owned(), s.phone.clone()),
                    ("card".to_owned(), s.card.clone()),
                ]
                .into(),
            })
            .await
            .expect("update context")
            .into_inner();
        self.index(context.meta);
        let request_id = self.request_id();
        let payload = serde_json::json!({
            "payment": {"card": s.card, "contact": [s.email, s.phone]},
            "amount_cents": 1250,
        });
        let logged = self
            .calls
            .log_event(v1::LogEventRequest {
                tenant_id: self.tenant.into(),
                request_id,
                call_id: call_id.into(),
                event_type: "payment.taken".into(),
                payload: Some(v1::log_event_request::Payload::PayloadJson(
                    payload.to_string(),
                )),
                metadata: [("reply_to".to_owned(), s.email.clone())].into(),
            })
            .await
            .expect("log event")
            .into_inner();
        self.index(logged.meta);
    }
}

fn local(min_index: u64) -> Option<ReadOptions> {
    Some(ReadOptions {
        consistency: Consistency::Local.into(),
        min_index,
    })
}

/// What a reader of `call_id` on node `addr` sees: turns, context and events as one text, and
/// the events.
async fn read_back(
    addr: &str,
    tenant: &str,
    call_id: &str,
    min_index: u64,
) -> (String, Vec<v1::Event>) {
    let mut calls = CallServiceClient::new(channel(addr));
    let turns = calls
        .list_turns(v1::ListTurnsRequest {
            tenant_id: tenant.into(),
            call_id: call_id.into(),
            read: local(min_index),
            ..Default::default()
        })
        .await
        .expect("list turns")
        .into_inner();
    let context = calls
        .get_context(v1::GetContextRequest {
            tenant_id: tenant.into(),
            call_id: call_id.into(),
            read: local(min_index),
            ..Default::default()
        })
        .await
        .expect("get context")
        .into_inner();
    let events = EventServiceClient::new(channel(addr))
        .list_call_events(v1::ListCallEventsRequest {
            tenant_id: tenant.into(),
            call_id: call_id.into(),
            read: local(min_index),
            ..Default::default()
        })
        .await
        .expect("list call events")
        .into_inner();
    (format!("{turns:?}\n{context:?}\n{events:?}"), events.events)
}

/// The redaction record of the call's event of `event_type`.
fn redactions_of<'e>(events: &'e [v1::Event], event_type: &str) -> Option<&'e str> {
    events
        .iter()
        .find(|e| e.event_type == event_type)?
        .metadata
        .get("pii.redactions")
        .map(String::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_raw_pii_reaches_any_node_disk_and_kept_values_do() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key_file = dir.path().join("pii.key");
    std::fs::write(&key_file, "a-test-key-that-is-32-bytes-long\n").expect("write key");
    let config_file = dir.path().join("node.json");
    std::fs::write(
        &config_file,
        serde_json::json!({
            "pii-tenant-policies": {KEPT: "keep", HASHED: "hash"},
            "pii-hash-key-file": key_file,
        })
        .to_string(),
    )
    .expect("write config");
    let config_arg = format!("--config={}", config_file.display());
    let mut cluster = ProcessCluster::start(binary(), 3, &[config_arg.as_str(), "--insecure"])
        .expect("start cluster");
    let leader_id = cluster.wait_for_leader(LEADER_WAIT).await.expect("leader");
    let leader = cluster.grpc(leader_id);

    let masked = Secrets::new(1);
    let kept = Secrets::new(2);
    let hashed = Secrets::new(3);
    let mut writers = Vec::new();
    for (tenant, secrets) in [(MASKED, &masked), (KEPT, &kept), (HASHED, &hashed)] {
        let mut writer = Writer::new(&leader, tenant);
        let call_id = writer.active_call().await;
        writer.write_secrets(&call_id, secrets).await;
        writers.push((writer, call_id));
    }
    let last_index = writers.iter().map(|(w, _)| w.last_index).max().unwrap_or(0);

    // Read back from every node: redacted for the masked and hashed tenants, as written for
    // the kept one; the events record what was redacted.
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for &id in &ids {
        let addr = cluster.grpc(id);
        let (seen, events) = read_back(&addr, MASKED, &writers[0].1, last_index).await;
        for needle in masked.needles() {
            assert!(
                !seen.contains(&needle),
                "node {id} returned {needle}: {seen}"
            );
        }
        for placeholder in ["[CARD]", "[PHONE]", "[EMAIL]"] {
            assert!(seen.contains(placeholder), "node {id}: no {placeholder}");
        }
        // The turn and the context: one card, one phone, one e-mail each; the event: its
        // payload's card, e-mail and phone and its metadata's e-mail.
        let one_each = Some(r#"{"card":1,"email":1,"phone":1}"#);
        assert_eq!(
            redactions_of(&events, "turn.appended"),
            one_each,
            "node {id}"
        );
        assert_eq!(
            redactions_of(&events, "context.updated"),
            one_each,
            "node {id}"
        );
        assert_eq!(
            redactions_of(&events, "payment.taken"),
            Some(r#"{"card":1,"email":2,"phone":1}"#),
            "node {id}"
        );
        assert_eq!(redactions_of(&events, "call.started"), None, "node {id}");
        let (seen, events) = read_back(&addr, KEPT, &writers[1].1, last_index).await;
        assert!(seen.contains(&kept.email), "node {id}: kept value missing");
        assert_eq!(redactions_of(&events, "turn.appended"), None, "node {id}");
        let (seen, _) = read_back(&addr, HASHED, &writers[2].1, last_index).await;
        for needle in hashed.needles() {
            assert!(
                !seen.contains(&needle),
                "node {id} returned {needle}: {seen}"
            );
        }
        assert!(seen.contains("[EMAIL:"), "node {id}: {seen}");
    }

    // What cannot be proposed safely is refused: PII inside opaque payload bytes (it cannot be
    // rewritten without breaking their encoding), and a client-set redaction record.
    let refused = Secrets::new(4);
    let mut calls = CallServiceClient::new(channel(&leader));
    let opaque = calls
        .log_event(v1::LogEventRequest {
            tenant_id: MASKED.into(),
            request_id: "opaque".into(),
            call_id: writers[0].1.clone(),
            event_type: "payment.raw".into(),
            payload: Some(v1::log_event_request::Payload::PayloadBytes(
                format!("\x0a\x10{}", refused.email).into_bytes(),
            )),
            metadata: Default::default(),
        })
        .await
        .expect_err("pii in opaque bytes");
    assert_eq!(opaque.code(), tonic::Code::InvalidArgument, "{opaque:?}");
    assert!(opaque.message().contains("send it as JSON"), "{opaque:?}");
    let forged = calls
        .log_event(v1::LogEventRequest {
            tenant_id: KEPT.into(),
            request_id: "forged".into(),
            call_id: writers[1].1.clone(),
            event_type: "note".into(),
            payload: None,
            metadata: [("pii.redactions".to_owned(), "{}".to_owned())].into(),
        })
        .await
        .expect_err("a client-set redaction record");
    assert_eq!(forged.code(), tonic::Code::InvalidArgument, "{forged:?}");

    let exposition = metrics(&cluster.nodes[&leader_id].http).await;
    assert!(
        exposition
            .lines()
            .any(|l| l.starts_with("switchboard_pii_redactions_total")
                && l.contains(r#"kind="card""#)
                && l.contains(r#"policy="mask""#)),
        "no card redactions counted on the leader"
    );

    // Every node builds a snapshot of what it applied: the state machine's records are then in
    // a plain file as well as in RocksDB, and the log entries are in the write-ahead log.
    for &id in &ids {
        let response = ClusterServiceClient::new(channel(&cluster.grpc(id)))
            .trigger_snapshot(v1::TriggerSnapshotRequest {})
            .await
            .expect("trigger snapshot")
            .into_inner();
        assert!(
            response.snapshot_index >= last_index,
            "node {id} snapshot at {} before {last_index}",
            response.snapshot_index
        );
    }

    for node in cluster.nodes.values() {
        let never_written = masked
            .needles()
            .into_iter()
            .chain(hashed.needles())
            .chain(refused.needles());
        for needle in never_written {
            let found = files_containing(&node.data_dir, &needle);
            assert!(
                found.is_empty(),
                "node {}: raw {needle:?} in {found:?}",
                node.id
            );
        }
        // The control: the same search sees values written under `keep`.
        for needle in [&kept.card, &kept.email, &kept.phone] {
            let found = files_containing(&node.data_dir, needle);
            assert!(
                !found.is_empty(),
                "node {}: the search did not find the kept {needle:?}",
                node.id
            );
        }
    }
}
