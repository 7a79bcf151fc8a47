//! Precision and recall of the PII detectors over a labelled corpus.
//!
//! `pii_corpus.jsonl` holds one example per line: a text and the PII values it contains, each
//! with its kind (`[]` for a negative). Negatives include what detectors confuse with PII:
//! order numbers, timestamps, version strings, IP addresses, amounts, Luhn-invalid digit runs,
//! a number and a name without a street type.
//!
//! Scoring: a finding is a true positive when it has the labelled kind and covers the whole
//! labelled value (redaction is about not leaking: a finding that covers more, such as a suburb
//! after a street, still redacts the value); every other finding is a false positive, and every
//! labelled value no finding covers is a false negative. The test prints precision and recall
//! per kind and overall and fails under [`THRESHOLD`].

use std::collections::BTreeMap;

use domain::redact::{PiiKind, find};

/// Least precision and least recall accepted, per kind and overall.
const THRESHOLD: f64 = 0.95;
/// Least number of examples the corpus must hold.
const EXAMPLES_MIN: usize = 200;

const CORPUS: &str = include_str!("pii_corpus.jsonl");

#[derive(serde::Deserialize)]
struct Example {
    text: String,
    pii: Vec<(String, String)>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Score {
    true_positives: u32,
    false_positives: u32,
    false_negatives: u32,
}

impl Score {
    fn precision(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_positives,
        )
    }

    fn recall(&self) -> f64 {
        ratio(
            self.true_positives,
            self.true_positives + self.false_negatives,
        )
    }

    fn add(&mut self, other: Score) {
        self.true_positives += other.true_positives;
        self.false_positives += other.false_positives;
        self.false_negatives += other.false_negatives;
    }
}

fn ratio(num: u32, den: u32) -> f64 {
    if den == 0 {
        1.0
    } else {
        f64::from(num) / f64::from(den)
    }
}

fn examples() -> Vec<Example> {
    CORPUS
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("corpus line {} is not an example: {e}", n + 1))
        })
        .collect()
}

/// Scores one example; the misses are described for the failure message.
fn score(example: &Example, scores: &mut BTreeMap<PiiKind, Score>, misses: &mut Vec<String>) {
    let text = &example.text;
    let found = find(text);
    let mut used = vec![false; found.len()];
    // Labels are in text order: each is looked for after the previous one, so a value that
    // also occurs inside an earlier one ("60 Pitt Street ... 60 Pitt St") is found where it is.
    let mut from = 0;
    for (kind, value) in &example.pii {
        let kind: PiiKind = kind
            .parse()
            .unwrap_or_else(|_| panic!("unknown kind {kind:?} in the corpus"));
        let start = from
            + text[from..]
                .find(value.as_str())
                .unwrap_or_else(|| panic!("{value:?} is not in {text:?} after byte {from}"));
        let end = start + value.len();
        from = end;
        let hit = found.iter().enumerate().position(|(i, span)| {
            !used[i] && span.kind == kind && span.start <= start && span.end >= end
        });
        let score = scores.entry(kind).or_default();
        match hit {
            Some(i) => {
                used[i] = true;
                score.true_positives += 1;
            }
            None => {
                score.false_negatives += 1;
                misses.push(format!("missed {kind} {value:?} in {text:?}"));
            }
        }
    }
    for (span, used) in found.iter().zip(used) {
        if !used {
            scores.entry(span.kind).or_default().false_positives += 1;
            misses.push(format!(
                "false {} {:?} in {text:?}",
                span.kind,
                &text[span.start..span.end]
            ));
        }
    }
}

#[test]
fn detectors_reach_the_precision_and_recall_threshold_on_the_corpus() {
    let examples = examples();
    assert!(
        examples.len() >= EXAMPLES_MIN,
        "the corpus has {} examples, fewer than {EXAMPLES_MIN}",
        examples.len()
    );
    let mut scores: BTreeMap<PiiKind, Score> = PiiKind::ALL
        .iter()
        .map(|&k| (k, Score::default()))
        .collect();
    let mut misses = Vec::new();
    for example in &examples {
        score(example, &mut scores, &mut misses);
    }
    let negatives = examples.iter().filter(|e| e.pii.is_empty()).count();
    println!(
        "corpus: {} examples ({negatives} without PII)",
        examples.len()
    );
    println!("kind     labelled  tp  fp  fn  precision  recall");
    let mut overall = Score::default();
    let mut below = Vec::new();
    for (kind, score) in &scores {
        overall.add(*score);
        report(kind.as_str(), score);
        if score.precision() < THRESHOLD || score.recall() < THRESHOLD {
            below.push(kind.as_str());
        }
    }
    report("overall", &overall);
    if overall.precision() < THRESHOLD || overall.recall() < THRESHOLD {
        below.push("overall");
    }
    for miss in &misses {
        println!("  {miss}");
    }
    assert!(
        below.is_empty(),
        "under the threshold of {THRESHOLD}: {below:?}\n{}",
        misses.join("\n")
    );
}

fn report(name: &str, score: &Score) {
    println!(
        "{name:<8} {:>8} {:>3} {:>3} {:>3}  {:>9.3}  {:>6.3}",
        score.true_positives + score.false_negatives,
        score.true_positives,
        score.false_positives,
        score.false_negatives,
        score.precision(),
        score.recall()
    );
}

/// The scorer itself: a finding of the wrong kind or one that does not cover the value is no
/// hit, so the threshold can fail.
#[test]
fn the_scorer_counts_partial_and_wrongly_typed_findings_as_misses() {
    let mut scores = BTreeMap::new();
    let mut misses = Vec::new();
    score(
        &Example {
            text: "call 0412 345 678".into(),
            pii: vec![("card".into(), "0412 345 678".into())],
        },
        &mut scores,
        &mut misses,
    );
    assert_eq!(scores[&PiiKind::Card].false_negatives, 1);
    assert_eq!(scores[&PiiKind::Phone].false_positives, 1);
    assert_eq!(scores[&PiiKind::Card].recall(), 0.0);
    let mut scores = BTreeMap::new();
    score(
        &Example {
            text: "at 12 Smith St".into(),
            pii: vec![("address".into(), "at 12 Smith St".into())],
        },
        &mut scores,
        &mut misses,
    );
    assert_eq!(scores[&PiiKind::Address].true_positives, 0);
    assert_eq!(scores[&PiiKind::Address].false_negatives, 1);
}
