//! After healing every member has the same state: equal state-machine digests at the same
//! applied index, and identical event logs.

use super::{Facts, Verdict};

pub fn check(facts: &Facts) -> Verdict {
    let mut verdict = Verdict::new("replicas identical after healing");
    let Some(reference) = facts.nodes.first() else {
        verdict.violation("no node state was collected".to_owned());
        return verdict;
    };
    for node in &facts.nodes {
        match (&node.digest, &reference.digest) {
            (None, _) => verdict.violation(format!("node {} gave no digest", node.node_id)),
            (Some(mine), Some(theirs)) if mine != theirs => verdict.violation(format!(
                "node {} digest {} at applied index {} differs from node {}: {} at {}",
                node.node_id, mine.1, mine.0, reference.node_id, theirs.1, theirs.0
            )),
            _ => {}
        }
        match (&node.events, &reference.events) {
            (None, _) => verdict.violation(format!("node {} gave no event log", node.node_id)),
            (Some(mine), Some(theirs)) if mine != theirs => {
                let first_diff = mine
                    .iter()
                    .zip(theirs.iter())
                    .position(|(a, b)| a != b)
                    .unwrap_or(mine.len().min(theirs.len()));
                verdict.violation(format!(
                    "node {} event log ({} events) differs from node {} ({} events) from offset {first_diff}",
                    node.node_id,
                    mine.len(),
                    reference.node_id,
                    theirs.len()
                ));
            }
            _ => {}
        }
    }
    verdict.checked = format!(
        "{} nodes, {} events each",
        facts.nodes.len(),
        reference.events.as_ref().map_or(0, Vec::len)
    );
    verdict
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checkers::NodeFinal;
    use crate::checkers::fixtures::*;

    fn node(id: u64, digest: &str, events: Vec<crate::history::SeenEvent>) -> NodeFinal {
        NodeFinal {
            node_id: id,
            digest: Some((5, digest.to_owned())),
            events: Some(events),
        }
    }

    #[test]
    fn identical_nodes_pass() {
        let facts = Facts {
            nodes: vec![node(1, "ab", healthy_log()), node(2, "ab", healthy_log())],
            ..Facts::default()
        };
        assert!(check(&facts).ok());
    }

    #[test]
    fn diverged_nodes_are_caught() {
        let mut shorter = healthy_log();
        shorter.pop();
        let facts = Facts {
            nodes: vec![
                node(1, "ab", healthy_log()),
                node(2, "cd", healthy_log()),
                node(3, "ab", shorter),
            ],
            ..Facts::default()
        };
        assert_eq!(check(&facts).violation_count, 2);
    }
}
