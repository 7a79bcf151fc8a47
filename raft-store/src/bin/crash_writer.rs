//! Child process of the crash-durability test: opens a store, then forever saves a vote every
//! `ENTRIES_PER_TERM` entries and appends batches of entries, printing `vote <term>` once a vote
//! is saved and `ack <index>` once the store reports every entry up to `index` durable. The test
//! kills it with SIGKILL at a random moment and checks that everything printed survived.

use std::collections::VecDeque;
use std::io::Write;
use std::path::PathBuf;

use domain::{Command, Request, Stamp};
use futures::FutureExt;
use openraft::entry::RaftEntry;
use openraft::impls::leader_id_adv::LeaderId;
use openraft::storage::{IOFlushed, RaftLogStorage};
use openraft::type_config::TypeConfigExt;
use raft_store::{Entry, Identity, LogId, TypeConfig, Vote};

const ENTRIES_PER_TERM: u64 = 40;
const IN_FLIGHT_APPENDS_MAX: usize = 32;

type Ack = openraft::alias::OneshotReceiverOf<TypeConfig, Result<(), std::io::Error>>;

fn entry(term: u64, index: u64) -> Entry {
    let request = Request {
        tenant_id: "crash".into(),
        request_id: format!("r{index}"),
        command: Command::StartCall {
            call_id: uuid::Uuid::from_u128(u128::from(index)),
        },
        stamp: Stamp {
            at_ms: index,
            minted_call_id: None,
            minted_trace_id: None,
        },
        redactions: Default::default(),
    };
    Entry::new_normal(
        LogId::new(LeaderId { term, node_id: 1 }, index),
        raft_store::Proposal(request),
    )
}

fn say(line: std::fmt::Arguments<'_>) {
    let mut out = std::io::stdout().lock();
    // The parent reading our stdout is the whole point; if it is gone, so is the test.
    if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
        std::process::exit(2);
    }
}

async fn acknowledge(
    pending: &mut VecDeque<(u64, Ack)>,
    block: bool,
) -> Result<(), Box<dyn std::error::Error>> {
    while let Some((index, ack)) = pending.front_mut() {
        let result = if block {
            ack.await?
        } else {
            match ack.now_or_never() {
                Some(result) => result?,
                None => return Ok(()),
            }
        };
        result?;
        say(format_args!("ack {index}"));
        pending.pop_front();
        if block {
            return Ok(());
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .ok_or("usage: raft-store-crash-writer DIR SEED")?,
    );
    let seed: u64 = std::env::args().nth(2).ok_or("missing SEED")?.parse()?;
    let store = raft_store::open(&dir, &Identity::new("crash-test", 1))?;
    let mut log = store.log;

    let mut rng = seed | 1;
    let mut next_rand = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut pending: VecDeque<(u64, Ack)> = VecDeque::new();
    let mut index = 1u64;
    for term in 1u64.. {
        log.save_vote(&Vote::new(term, 1)).await?;
        say(format_args!("vote {term}"));
        let term_end = index + ENTRIES_PER_TERM;
        while index < term_end {
            let batch_len = 1 + next_rand() % 8;
            let batch: Vec<Entry> = (index..index + batch_len).map(|i| entry(term, i)).collect();
            index += batch_len;
            let (tx, rx) = TypeConfig::oneshot();
            log.append(batch, IOFlushed::signal(tx)).await?;
            pending.push_back((index - 1, rx));
            acknowledge(&mut pending, false).await?;
            if pending.len() >= IN_FLIGHT_APPENDS_MAX {
                acknowledge(&mut pending, true).await?;
            }
        }
    }
    Ok(())
}
