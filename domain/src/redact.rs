//! PII redaction: finds e-mail addresses, phone numbers, street addresses and payment card
//! numbers in text, and replaces them as a tenant's [`Policy`] says, before a request is
//! proposed.
//!
//! Owns the detectors, how overlapping findings are resolved, the placeholders, and which fields
//! of a [`Command`] are redacted. Pure like the rest of the crate: no I/O, no clock, no
//! randomness; the keyed hash takes its key as an argument. The leader applies it before
//! proposing (so no raw value reaches the log, a snapshot or a follower) and carries the
//! [`Redactions`] summary in the request, which [`crate::apply`] records in the events.
//!
//! Detection is heuristic and tuned for precision and recall over the labelled corpus in
//! `domain/tests/pii_corpus.jsonl`. Work is linear in the input: the regular expressions run in
//! linear time, and digit runs are tried in windows of at most 7 groups and 20 digits.

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::LazyLock;

use hmac::{Hmac, Mac};
use regex::Regex;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::command::Command;
use crate::limits::{Field, Invalid, Problem};
use crate::model::{Labels, Payload};

/// Event metadata key under which an event records what its request had redacted, as compact
/// JSON in kind order, e.g. `{"card":1,"email":2}`. Only the leader's summary sets it.
pub const REDACTIONS_METADATA_KEY: &str = "pii.redactions";
/// Fewest bytes of a hash key: 256 bits, the HMAC-SHA256 block's worth of secret.
pub const HASH_KEY_BYTES_MIN: usize = 32;
/// Most bytes of a hash key (HMAC hashes a longer key down anyway).
pub const HASH_KEY_BYTES_MAX: usize = 1024;
/// Hex digits of the keyed hash in a `hash` placeholder: 48 bits, so distinct values of one
/// tenant collide only past millions of values, while the placeholder stays short.
pub const HASH_HEX_DIGITS: usize = 12;
/// Fewest digits of a payment card number (ISO/IEC 7812).
pub const CARD_DIGITS_MIN: usize = 13;
/// Most digits of a payment card number (ISO/IEC 7812).
pub const CARD_DIGITS_MAX: usize = 19;
/// Fewest digits of an international phone number after its `+`.
pub const PHONE_INTERNATIONAL_DIGITS_MIN: usize = 8;
/// Most digits of an international phone number after its `+` (E.164).
pub const PHONE_INTERNATIONAL_DIGITS_MAX: usize = 15;

/// What a detector finds. The order is the order of a summary and, in postcard, the encoding:
/// append new kinds last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PiiKind {
    Address,
    Card,
    Email,
    Phone,
}

impl PiiKind {
    pub const ALL: [PiiKind; 4] = [
        PiiKind::Address,
        PiiKind::Card,
        PiiKind::Email,
        PiiKind::Phone,
    ];

    /// The name in summaries, metrics and the corpus.
    pub fn as_str(self) -> &'static str {
        match self {
            PiiKind::Address => "address",
            PiiKind::Card => "card",
            PiiKind::Email => "email",
            PiiKind::Phone => "phone",
        }
    }

    /// The tag of its placeholder: `[CARD]`, `[CARD:…]`.
    fn tag(self) -> &'static str {
        match self {
            PiiKind::Address => "ADDRESS",
            PiiKind::Card => "CARD",
            PiiKind::Email => "EMAIL",
            PiiKind::Phone => "PHONE",
        }
    }

    /// Which of two overlapping findings of equal length wins: the lower rank, the kind whose
    /// detector checks more (a card passes Luhn, an e-mail has an `@`).
    fn rank(self) -> u8 {
        match self {
            PiiKind::Card => 0,
            PiiKind::Email => 1,
            PiiKind::Phone => 2,
            PiiKind::Address => 3,
        }
    }
}

impl std::fmt::Display for PiiKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PiiKind {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, UnknownName> {
        PiiKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownName {
                name: name.to_owned(),
                expected: "address, card, email, phone",
            })
    }
}

/// What happens to PII in a tenant's writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Replaced by a typed placeholder, `[EMAIL]`.
    #[default]
    Mask,
    /// Replaced by a typed placeholder with a keyed hash of the value, `[EMAIL:3f9a1c2e4b5d]`:
    /// equal values stay linkable, the value cannot be recovered without the key.
    Hash,
    /// Left as written (and not counted).
    Keep,
}

impl Policy {
    pub const ALL: [Policy; 3] = [Policy::Mask, Policy::Hash, Policy::Keep];

    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Mask => "mask",
            Policy::Hash => "hash",
            Policy::Keep => "keep",
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Policy {
    type Err = UnknownName;

    fn from_str(name: &str) -> Result<Self, UnknownName> {
        Policy::ALL
            .into_iter()
            .find(|policy| policy.as_str() == name)
            .ok_or_else(|| UnknownName {
                name: name.to_owned(),
                expected: "mask, hash, keep",
            })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown name {name:?}: expected one of {expected}")]
pub struct UnknownName {
    pub name: String,
    pub expected: &'static str,
}

/// The cluster-wide secret of `hash` placeholders.
///
/// Why keyed: phone numbers and card numbers come from small spaces (an Australian mobile is
/// one of 10^8 numbers; a card is an issuer prefix, an account number and a Luhn digit), so an
/// unkeyed hash in the log could be reversed by hashing every candidate. HMAC-SHA256 under a key
/// that the log, snapshots and followers' data never contain makes that search impossible for
/// whoever gets the data without the key, while equal values still get equal placeholders.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey(Vec<u8>);

impl HashKey {
    pub fn new(bytes: Vec<u8>) -> Result<Self, HashKeyInvalid> {
        let len = bytes.len();
        if len < HASH_KEY_BYTES_MIN {
            return Err(HashKeyInvalid::Short {
                bytes: len,
                bytes_min: HASH_KEY_BYTES_MIN,
            });
        }
        if len > HASH_KEY_BYTES_MAX {
            return Err(HashKeyInvalid::Long {
                bytes: len,
                bytes_max: HASH_KEY_BYTES_MAX,
            });
        }
        Ok(Self(bytes))
    }
}

/// Never prints the key.
impl std::fmt::Debug for HashKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HashKey({} bytes)", self.0.len())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashKeyInvalid {
    #[error("hash key is {bytes} bytes, under the minimum of {bytes_min}")]
    Short { bytes: usize, bytes_min: usize },
    #[error("hash key is {bytes} bytes, over the bound of {bytes_max}")]
    Long { bytes: usize, bytes_max: usize },
}

/// What a request had redacted: how many findings of each kind. Carried in the proposed request
/// (log-entry format 2) and recorded in its events under [`REDACTIONS_METADATA_KEY`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Redactions(BTreeMap<PiiKind, u32>);

impl Redactions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn count(&self, kind: PiiKind) -> u32 {
        self.0.get(&kind).copied().unwrap_or(0)
    }

    pub fn total(&self) -> u64 {
        self.0.values().map(|&n| u64::from(n)).sum()
    }

    /// Kinds with a non-zero count, in kind order.
    pub fn iter(&self) -> impl Iterator<Item = (PiiKind, u32)> + '_ {
        self.0.iter().map(|(&kind, &n)| (kind, n))
    }

    pub fn add(&mut self, kind: PiiKind) {
        let n = self.0.entry(kind).or_insert(0);
        *n = n.saturating_add(1);
    }

    /// The summary as recorded in an event: compact JSON in kind order, `{"card":1,"email":2}`.
    pub fn to_json(&self) -> String {
        serde_json::to_string(&self.0).expect("a map of names to counts serializes")
    }
}

impl FromIterator<(PiiKind, u32)> for Redactions {
    fn from_iter<I: IntoIterator<Item = (PiiKind, u32)>>(iter: I) -> Self {
        Self(iter.into_iter().filter(|&(_, n)| n > 0).collect())
    }
}

/// One finding: the bytes `start..end` of the text are a value of `kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
    pub kind: PiiKind,
}

impl Span {
    fn len(&self) -> usize {
        self.end - self.start
    }
}

/// Every finding in `text`, in text order, without overlaps: where findings overlap, the longest
/// wins, then the lower [`PiiKind::rank`], then the earlier one.
pub fn find(text: &str) -> Vec<Span> {
    let mut candidates = Vec::new();
    find_emails(text, &mut candidates);
    find_numbers(text, &mut candidates);
    find_addresses(text, &mut candidates);
    resolve(candidates)
}

fn resolve(mut candidates: Vec<Span>) -> Vec<Span> {
    candidates.sort_by_key(|s| (std::cmp::Reverse(s.len()), s.kind.rank(), s.start));
    // Accepted spans by start; they never overlap, so only the last one starting before a
    // candidate's end can overlap it.
    let mut accepted: BTreeMap<usize, Span> = BTreeMap::new();
    for span in candidates {
        let overlaps = accepted
            .range(..span.end)
            .next_back()
            .is_some_and(|(_, a)| a.end > span.start);
        if !overlaps {
            accepted.insert(span.start, span);
        }
    }
    accepted.into_values().collect()
}

fn regex(pattern: &str) -> Regex {
    Regex::new(pattern).expect("detector patterns are valid (checked by every test)")
}

// ---------------------------------------------------------------------------------------------
// E-mail addresses

static EMAIL: LazyLock<Regex> = LazyLock::new(|| {
    regex(
        r"(?i)[a-z0-9_][a-z0-9._%+'\-]{0,63}@(?:[a-z0-9](?:[a-z0-9\-]{0,61}[a-z0-9])?\.)+[a-z]{2,24}\b",
    )
});

fn find_emails(text: &str, out: &mut Vec<Span>) {
    out.extend(EMAIL.find_iter(text).map(|m| Span {
        start: m.start(),
        end: m.end(),
        kind: PiiKind::Email,
    }));
}

// ---------------------------------------------------------------------------------------------
// Card and phone numbers

/// A run of digit groups joined by single separators (space, dot, dash), parentheses around a
/// group, and a leading `+` or `(`.
static NUMBER: LazyLock<Regex> =
    LazyLock::new(|| regex(r"[+(]?[0-9](?:[0-9]|[ .\-]\(?[0-9]|\)[ .\-]?[0-9])*"));

/// Most digits a window holds: the longest card, or the longest international phone number
/// with a trunk `(0)`.
const WINDOW_DIGITS_MAX: usize = CARD_DIGITS_MAX + 1;
/// Fewest digits of anything a window can be (an international phone number).
const WINDOW_DIGITS_MIN: usize = PHONE_INTERNATIONAL_DIGITS_MIN;
/// Most digit groups a window holds: no card or phone number is written in more
/// (`+33 1 23 45 67 89` has six). Keeps a run of single digits cheap.
const WINDOW_GROUPS_MAX: usize = 7;

/// A window of whole digit groups inside a run, tried as a card or a phone number. Built on
/// the stack: a long run is tried in many windows.
struct Window<'t> {
    text: &'t str,
    start: usize,
    end: usize,
    /// The byte ranges of its digit groups.
    groups: &'t [(usize, usize)],
    digits: [u8; WINDOW_DIGITS_MAX],
    digit_count: usize,
}

impl<'t> Window<'t> {
    fn new(text: &'t str, start: usize, groups: &'t [(usize, usize)]) -> Self {
        let mut digits = [0u8; WINDOW_DIGITS_MAX];
        let mut digit_count = 0;
        for &(from, to) in groups {
            for &b in &text.as_bytes()[from..to] {
                if digit_count < WINDOW_DIGITS_MAX {
                    digits[digit_count] = b;
                }
                digit_count += 1;
            }
        }
        Self {
            text,
            start,
            end: groups.last().map_or(start, |g| g.1),
            groups,
            digits,
            digit_count,
        }
    }

    /// The digits, without separators.
    fn digits(&self) -> &str {
        let n = self.digit_count.min(WINDOW_DIGITS_MAX);
        std::str::from_utf8(&self.digits[..n]).unwrap_or("")
    }

    /// Digits per group.
    fn lens(&self) -> impl Iterator<Item = usize> + '_ {
        self.groups.iter().map(|(from, to)| to - from)
    }

    /// The text between consecutive groups.
    fn seps(&self) -> impl Iterator<Item = &'t str> + '_ {
        self.groups
            .windows(2)
            .map(|pair| &self.text[pair[0].1..pair[1].0])
    }

    fn plus(&self) -> bool {
        self.text[self.start..].starts_with('+')
    }

    fn has_parens(&self) -> bool {
        self.text[self.start..self.end].contains(['(', ')'])
    }
}

fn find_numbers(text: &str, out: &mut Vec<Span>) {
    for run in NUMBER.find_iter(text) {
        let groups = digit_groups(text, run.start(), run.end());
        let mut i = 0;
        while i < groups.len() {
            match longest_number_at(text, run.start(), &groups, i) {
                Some((j, span)) => {
                    out.push(span);
                    i = j + 1;
                }
                None => i += 1,
            }
        }
    }
}

/// The byte ranges of the maximal digit runs in `text[start..end]`.
fn digit_groups(text: &str, start: usize, end: usize) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut groups = Vec::new();
    let mut at = start;
    while at < end {
        if bytes[at].is_ascii_digit() {
            let from = at;
            while at < end && bytes[at].is_ascii_digit() {
                at += 1;
            }
            groups.push((from, at));
        } else {
            at += 1;
        }
    }
    groups
}

/// The longest window of groups starting at group `i` that is a card or a phone number, with the
/// index of its last group. Windows hold at most [`WINDOW_GROUPS_MAX`] groups and
/// [`WINDOW_DIGITS_MAX`] digits, so each start tries a bounded number of them and the work on a
/// run is linear in its length.
fn longest_number_at(
    text: &str,
    run_start: usize,
    groups: &[(usize, usize)],
    i: usize,
) -> Option<(usize, Span)> {
    // The digit count of each window i..=j, as j grows.
    let mut counts = [0usize; WINDOW_GROUPS_MAX];
    let mut windows = 0;
    let mut digits = 0;
    for (from, to) in groups[i..].iter().take(WINDOW_GROUPS_MAX) {
        digits += to - from;
        if digits > WINDOW_DIGITS_MAX {
            break;
        }
        counts[windows] = digits;
        windows += 1;
    }
    let bytes = text.as_bytes();
    let mut start = groups[i].0;
    if start > run_start && matches!(bytes[start - 1], b'+' | b'(') {
        start -= 1;
        if start > run_start && bytes[start] == b'(' && bytes[start - 1] == b'+' {
            start -= 1;
        }
    }
    for (k, &count) in counts[..windows].iter().enumerate().rev() {
        if count < WINDOW_DIGITS_MIN {
            break;
        }
        let j = i + k;
        let window = Window::new(text, start, &groups[i..=j]);
        if !bounded(text, &window, j + 1 == groups.len()) {
            continue;
        }
        let kind = if is_card(&window) {
            PiiKind::Card
        } else if is_phone(&window) {
            PiiKind::Phone
        } else {
            continue;
        };
        return Some((
            j,
            Span {
                start: window.start,
                end: window.end,
                kind,
            },
        ));
    }
    None
}

/// A number stands on its own: it is not part of a word, an amount, a reference (`#…`), a
/// dotted or dashed identifier, or a longer dotted number it was cut from.
fn bounded(text: &str, window: &Window<'_>, last_group: bool) -> bool {
    let before = text[..window.start].chars().next_back();
    let after = text[window.end..].chars().next();
    let before_ok = match before {
        None => true,
        Some(c) if c.is_alphanumeric() || c == '_' => false,
        // An amount, a reference, a path or date, or a number cut from a dashed or dotted
        // identifier (`INV-0412…`, `10.0412…`).
        Some('$' | '€' | '£' | '#' | '/' | '@' | '\\' | '-' | '.') => false,
        Some(_) => true,
    };
    let after_ok = match after {
        None => true,
        Some(c) if c.is_alphanumeric() || c == '_' => false,
        Some('.') => last_group,
        Some(_) => true,
    };
    before_ok && after_ok
}

fn is_card(w: &Window<'_>) -> bool {
    let n = w.digit_count;
    if w.plus() || w.has_parens() || !(CARD_DIGITS_MIN..=CARD_DIGITS_MAX).contains(&n) {
        return false;
    }
    // One separator throughout: "4111 1111 1111 1111", "4111-1111-…", or none.
    let mut seps = w.seps();
    let sep_ok = seps
        .next()
        .is_none_or(|first| matches!(first, " " | "-") && w.seps().all(|s| s == first));
    sep_ok && issuer_allows(w.digits()) && luhn_valid(w.digits())
}

/// Whether a card of this length can start with these digits (ISO/IEC 7812 issuer ranges of the
/// networks in use: Visa, Mastercard, American Express, Discover, Diners, JCB, UnionPay,
/// Maestro). Keeps timestamps, barcodes and other Luhn-valid runs out.
fn issuer_allows(digits: &str) -> bool {
    let n = digits.len();
    let prefix = |len: usize| digits[..len].parse::<u32>().unwrap_or(0);
    match digits.as_bytes()[0] {
        b'2' => (2221..=2720).contains(&prefix(4)) && n == 16,
        b'3' => match prefix(2) {
            34 | 37 => n == 15,
            30 | 36 | 38 | 39 => (14..=19).contains(&n),
            35 => (3528..=3589).contains(&prefix(4)) && (16..=19).contains(&n),
            _ => false,
        },
        b'4' => matches!(n, 13 | 16 | 19),
        b'5' => match prefix(2) {
            51..=55 => n == 16,
            50 | 56..=59 => (13..=19).contains(&n),
            _ => false,
        },
        b'6' => (13..=19).contains(&n),
        _ => false,
    }
}

/// The Luhn checksum (ISO/IEC 7812-1): a card number that fails it is not a card number.
pub fn luhn_valid(digits: &str) -> bool {
    let mut sum = 0u32;
    for (i, b) in digits.bytes().rev().enumerate() {
        if !b.is_ascii_digit() {
            return false;
        }
        let mut d = u32::from(b - b'0');
        if i % 2 == 1 {
            d *= 2;
            if d > 9 {
                d -= 9;
            }
        }
        sum += d;
    }
    !digits.is_empty() && sum.is_multiple_of(10)
}

fn is_phone(w: &Window<'_>) -> bool {
    let window_text = &w.text[w.start..w.end];
    if window_text.matches('(').count() != window_text.matches(')').count() {
        return false;
    }
    let dotted = w.seps().any(|s| s.contains('.'));
    if dotted && w.seps().any(|s| s != ".") {
        return false;
    }
    let d = w.digits().as_bytes();
    if w.plus() {
        // "+44 (0)20 …": the trunk 0 in parentheses is not part of the number.
        let trunk = usize::from(window_text.contains("(0)"));
        let n = d.len() - trunk;
        return (PHONE_INTERNATIONAL_DIGITS_MIN..=PHONE_INTERNATIONAL_DIGITS_MAX).contains(&n)
            && d[0] != b'0';
    }
    // An IPv4 address or a version number: four dotted groups of up to three digits.
    if dotted && w.groups.len() == 4 && w.lens().all(|n| n <= 3) {
        return false;
    }
    let australian = d.len() == 10
        && ((d[0] == b'0' && matches!(d[1], b'2' | b'3' | b'4' | b'5' | b'7' | b'8'))
            || d.starts_with(b"1300")
            || d.starts_with(b"1800"));
    let british = d.len() == 11 && d[0] == b'0' && matches!(d[1], b'1' | b'2' | b'3' | b'7' | b'8');
    australian || british || is_north_american(w)
}

/// `(415) 555-2671`, `415-555-2671`, `415.555.2671`, `1-800-555-0199`: grouped 3-3-4 (after an
/// optional country code 1), area code and exchange not starting with 0 or 1. A bare run of ten
/// digits is not taken: order numbers look the same.
fn is_north_american(w: &Window<'_>) -> bool {
    let digits = w.digits();
    let national = if w.lens().eq([3, 3, 4]) {
        digits
    } else if w.lens().eq([1, 3, 3, 4]) && digits.starts_with('1') {
        &digits[1..]
    } else {
        return false;
    };
    let d = national.as_bytes();
    (b'2'..=b'9').contains(&d[0]) && (b'2'..=b'9').contains(&d[3])
}

// ---------------------------------------------------------------------------------------------
// Street addresses

/// Street types, full and abbreviated (Australia Post, USPS, Royal Mail usage).
const STREET_TYPES: &str = "street|st|road|rd|avenue|ave|av|boulevard|boulevarde|blvd|lane|ln|drive|dr|court|ct|place|pl|crescent|cres|cr|highway|hwy|parade|pde|terrace|tce|way|close|cl|circuit|cct|esplanade|esp|square|sq|grove|gr|parkway|pkwy|mews|row|walk|track|promenade|arcade|alley";
/// Street types spelled out, for transcripts written in lower case.
const STREET_TYPES_LOWER: &str = "street|st|road|rd|avenue|ave|boulevard|blvd|lane|drive|court|place|crescent|highway|parade|terrace";
/// Australian states and territories.
const AU_STATES: &str = "NSW|VIC|Vic|QLD|Qld|SA|WA|TAS|Tas|NT|ACT";

/// House number, street name (capitalized words or an ordinal) and street type, with an optional
/// unit or level before it and an optional suburb, state and postcode (Australian) or city,
/// state and ZIP code (US) after it: `Unit 5/12 Smith St`, `Level 3, 100 George Street Sydney
/// NSW 2000`, `123 Main St, Springfield, IL 62704`.
static ADDRESS: LazyLock<Regex> = LazyLock::new(|| {
    regex(&format!(
        r"(?x)
        (?: \b(?i:unit|apt|apartment|suite|ste|flat|shop|level|lvl|floor) \s+ [0-9]{{1,4}}[A-Za-z]? \s* [,/]? \s* )?
        \b [0-9]{{1,5}}[A-Za-z]? (?: [/\-] [0-9]{{1,5}}[A-Za-z]? )? ,? \s+
        (?: (?: [A-Z][A-Za-z'\-]* | [0-9]{{1,3}}(?i:st|nd|rd|th) ) \s+ ){{1,4}}?
        (?i:{STREET_TYPES}) \b \.?
        (?:
            ,? \s+ (?: [A-Z][A-Za-z'\-]* ,? \s+ ){{0,3}}? (?:{AU_STATES}) \b (?: \s+ [0-9]{{4}} \b )?
          | ,? \s+ (?: [A-Z][A-Za-z'\-]* \s+ ){{0,2}} [A-Z][A-Za-z'\-]* , \s+ [A-Z]{{2}} \s+ [0-9]{{5}} (?: -[0-9]{{4}} )? \b
        )?"
    ))
});

/// The same in lower case (ASR transcripts): `12 smith street`. Its street name may not contain
/// a word of [`NOT_STREET_NAMES`] (`2 hours to drive`, `3 blocks down the road`).
static ADDRESS_LOWER: LazyLock<Regex> = LazyLock::new(|| {
    regex(&format!(
        r"\b[0-9]{{1,5}}[a-z]?(?:/[0-9]{{1,5}})?\s+((?:[a-z][a-z'\-]*\s+){{1,3}}?)(?:{STREET_TYPES_LOWER})\b"
    ))
});

/// Words that do not occur in a street name but do between a number and a street type in
/// ordinary speech.
const NOT_STREET_NAMES: &[&str] = &[
    "a", "about", "across", "along", "an", "and", "at", "blocks", "by", "cars", "days", "down",
    "for", "from", "her", "his", "hours", "in", "into", "is", "km", "kms", "less", "metres",
    "meters", "miles", "minutes", "months", "more", "my", "near", "of", "off", "on", "onto", "or",
    "our", "over", "people", "per", "than", "that", "the", "their", "this", "times", "to", "under",
    "up", "was", "weeks", "were", "with", "years", "your",
];

/// `PO Box 1234`, `GPO Box 99`, `Locked Bag 7`.
static POST_BOX: LazyLock<Regex> = LazyLock::new(|| {
    regex(r"\b(?i:p\.?\s?o\.?\s+box|gpo\s+box|post\s+office\s+box|locked\s+bag)\s+[0-9]{1,6}\b")
});

fn find_addresses(text: &str, out: &mut Vec<Span>) {
    let span = |start, end| Span {
        start,
        end,
        kind: PiiKind::Address,
    };
    out.extend(ADDRESS.find_iter(text).map(|m| span(m.start(), m.end())));
    out.extend(POST_BOX.find_iter(text).map(|m| span(m.start(), m.end())));
    for captures in ADDRESS_LOWER.captures_iter(text) {
        let (Some(whole), Some(name)) = (captures.get(0), captures.get(1)) else {
            continue;
        };
        if name
            .as_str()
            .split_whitespace()
            .all(|word| !NOT_STREET_NAMES.contains(&word))
        {
            out.push(span(whole.start(), whole.end()));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Applying a policy

/// A policy ready to apply: `hash` holds its key.
#[derive(Debug, Clone, Copy)]
pub enum Redactor<'k> {
    Keep,
    Mask,
    Hash(&'k HashKey),
}

impl Redactor<'_> {
    pub fn policy(&self) -> Policy {
        match self {
            Redactor::Keep => Policy::Keep,
            Redactor::Mask => Policy::Mask,
            Redactor::Hash(_) => Policy::Hash,
        }
    }

    /// `text` with every finding replaced, counting each in `summary`. `keep` returns it as is.
    pub fn text(&self, text: &str, summary: &mut Redactions) -> String {
        if matches!(self, Redactor::Keep) {
            return text.to_owned();
        }
        let spans = find(text);
        if spans.is_empty() {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for span in spans {
            out.push_str(&text[at..span.start]);
            out.push_str(&self.placeholder(span.kind, &text[span.start..span.end]));
            summary.add(span.kind);
            at = span.end;
        }
        out.push_str(&text[at..]);
        out
    }

    fn placeholder(&self, kind: PiiKind, value: &str) -> String {
        match self {
            Redactor::Hash(key) => {
                let mut mac = Hmac::<Sha256>::new_from_slice(&key.0)
                    .expect("HMAC accepts keys of any length");
                mac.update(b"switchboard.pii.v1\0");
                mac.update(kind.as_str().as_bytes());
                mac.update(b"\0");
                mac.update(normalize(kind, value).as_bytes());
                let digest = mac.finalize().into_bytes();
                let hex: String = digest
                    .iter()
                    .flat_map(|b| [b >> 4, b & 0xf])
                    .take(HASH_HEX_DIGITS)
                    .map(|nibble| char::from_digit(u32::from(nibble), 16).unwrap_or('0'))
                    .collect();
                format!("[{}:{hex}]", kind.tag())
            }
            Redactor::Mask | Redactor::Keep => format!("[{}]", kind.tag()),
        }
    }

    /// The command with every field that may carry PII redacted, and what was redacted: turn
    /// text, context summary and entity values, event payloads (every JSON string, and numbers
    /// that are card numbers), event and call metadata values, handoff reason, end reason and
    /// resolution. Identifiers, enums, the call's source and the handoff target are left alone.
    ///
    /// Refused, whatever the policy: an event's metadata key [`REDACTIONS_METADATA_KEY`] (only the
    /// leader's summary may set it), and under `mask` or `hash` opaque payload bytes in which PII
    /// is found (they cannot be rewritten without breaking their encoding, and must not be
    /// proposed raw).
    pub fn command(&self, command: Command) -> Result<(Command, Redactions), Invalid> {
        let reserved_key = match &command {
            Command::LogEvent { metadata, .. } => metadata.contains_key(REDACTIONS_METADATA_KEY),
            Command::RecordActivity { entries } => entries
                .iter()
                .any(|e| e.metadata.contains_key(REDACTIONS_METADATA_KEY)),
            _ => false,
        };
        if reserved_key {
            return Err(Invalid::new(Field::MetadataKey, Problem::Reserved));
        }
        let mut summary = Redactions::new();
        if matches!(self, Redactor::Keep) {
            return Ok((command, summary));
        }
        let s = &mut summary;
        let command = match command {
            Command::CreateCall {
                source,
                channel,
                metadata,
                trace_id,
            } => Command::CreateCall {
                source,
                channel,
                metadata: self.labels(metadata, s),
                trace_id,
            },
            Command::StartCall { call_id } => Command::StartCall { call_id },
            Command::AppendTurn {
                call_id,
                speaker,
                text,
                confidence,
                language,
                spoken_at_ms,
            } => Command::AppendTurn {
                call_id,
                speaker,
                text: self.text(&text, s),
                confidence,
                language,
                spoken_at_ms,
            },
            Command::LogEvent {
                call_id,
                event_type,
                payload,
                metadata,
            } => Command::LogEvent {
                call_id,
                event_type,
                payload: self.payload(payload, s)?,
                metadata: self.labels(metadata, s),
            },
            Command::UpdateContext {
                call_id,
                summary,
                entities,
            } => Command::UpdateContext {
                call_id,
                summary: summary.map(|text| self.text(&text, s)),
                entities: self.labels(entities, s),
            },
            Command::RequestHandoff {
                call_id,
                reason,
                urgency,
                target,
            } => Command::RequestHandoff {
                call_id,
                reason: self.text(&reason, s),
                urgency,
                target,
            },
            Command::EndCall {
                call_id,
                reason,
                resolution,
            } => Command::EndCall {
                call_id,
                reason: self.text(&reason, s),
                resolution: self.text(&resolution, s),
            },
            // The reason is free text kept in the `call.erased` event; the actor is the token's
            // subject, set by the node, not by the caller.
            Command::EraseCall {
                call_id,
                reason,
                actor,
            } => Command::EraseCall {
                call_id,
                reason: self.text(&reason, s),
                actor,
            },
            // Agent activity: the free text (task description, message), the JSON payload and
            // metadata values; names and ids are left alone.
            Command::RecordActivity { entries } => Command::RecordActivity {
                entries: entries
                    .into_iter()
                    .map(|mut entry| -> Result<_, Invalid> {
                        let a = &mut entry.activity;
                        a.task_description = self.text(&a.task_description, s);
                        a.message = self.text(&a.message, s);
                        entry.payload = match self.payload(Payload::Json(entry.payload), s)? {
                            Payload::Json(text) => text,
                            Payload::Bytes(_) => unreachable!("a JSON payload stays JSON"),
                        };
                        entry.metadata = self.labels(entry.metadata, s);
                        Ok(entry)
                    })
                    .collect::<Result<_, _>>()?,
            },
            command @ (Command::SetRetention { .. } | Command::CompactActivity) => command,
        };
        Ok((command, summary))
    }

    fn labels(&self, labels: Labels, summary: &mut Redactions) -> Labels {
        labels
            .into_iter()
            .map(|(key, value)| {
                let value = self.text(&value, summary);
                (key, value)
            })
            .collect()
    }

    fn payload(&self, payload: Payload, summary: &mut Redactions) -> Result<Payload, Invalid> {
        match payload {
            Payload::Json(text) => {
                // Validation refuses a payload that is not JSON; it is left for it to refuse.
                let Ok(mut value) = serde_json::from_str::<serde_json::Value>(&text) else {
                    return Ok(Payload::Json(text));
                };
                let before = summary.total();
                self.json(&mut value, summary);
                // Rewritten only when something was redacted, so a clean payload keeps its
                // bytes (key order, spacing).
                Ok(Payload::Json(if summary.total() == before {
                    text
                } else {
                    value.to_string()
                }))
            }
            Payload::Bytes(bytes) => {
                if find(&String::from_utf8_lossy(&bytes)).is_empty() {
                    Ok(Payload::Bytes(bytes))
                } else {
                    Err(Invalid::new(Field::Payload, Problem::OpaquePii))
                }
            }
        }
    }

    /// Redacts every string in a JSON value, and replaces a number that is a card or phone
    /// number with its placeholder. Depth is bounded by the JSON parser's recursion limit.
    fn json(&self, value: &mut serde_json::Value, summary: &mut Redactions) {
        use serde_json::Value;
        match value {
            Value::String(text) => *text = self.text(text, summary),
            Value::Number(number) => {
                let digits = number.to_string();
                let spans = find(&digits);
                if spans.len() == 1 && spans[0].start == 0 && spans[0].end == digits.len() {
                    *value = Value::String(self.text(&digits, summary));
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.json(v, summary)),
            Value::Object(map) => map.values_mut().for_each(|v| self.json(v, summary)),
            Value::Null | Value::Bool(_) => {}
        }
    }
}

/// The form of a value that its keyed hash covers, so that spelling variants of one value link:
/// an e-mail in lower case, a card or phone number as its digits (and `+`), an address in lower
/// case with single spaces.
fn normalize(kind: PiiKind, value: &str) -> String {
    match kind {
        PiiKind::Email => value.to_lowercase(),
        PiiKind::Card | PiiKind::Phone => value
            .chars()
            .filter(|c| c.is_ascii_digit() || *c == '+')
            .collect(),
        PiiKind::Address => value
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .to_lowercase(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::CallId;

    fn kinds(text: &str) -> Vec<(PiiKind, &str)> {
        find(text)
            .into_iter()
            .map(|s| (s.kind, &text[s.start..s.end]))
            .collect()
    }

    fn key(byte: u8) -> HashKey {
        HashKey::new(vec![byte; HASH_KEY_BYTES_MIN]).expect("long enough")
    }

    #[test]
    fn luhn_accepts_valid_numbers_and_refuses_a_changed_digit() {
        assert!(luhn_valid("4111111111111111"));
        assert!(luhn_valid("378282246310005"));
        assert!(!luhn_valid("4111111111111112"));
        assert!(!luhn_valid(""));
        assert!(!luhn_valid("41111x1111111111"));
    }

    #[test]
    fn a_digit_run_that_fails_luhn_is_not_a_card() {
        assert_eq!(
            kinds("card 4111 1111 1111 1111"),
            [(PiiKind::Card, "4111 1111 1111 1111")]
        );
        assert!(kinds("card 4111 1111 1111 1112").is_empty());
    }

    #[test]
    fn mask_replaces_each_finding_with_its_typed_placeholder_and_counts_it() {
        let mut summary = Redactions::new();
        let text = Redactor::Mask.text(
            "mail jo@example.com or jo@example.org, call 0412 345 678, card 4111111111111111, \
             at 12 Smith St",
            &mut summary,
        );
        assert_eq!(
            text,
            "mail [EMAIL] or [EMAIL], call [PHONE], card [CARD], at [ADDRESS]"
        );
        assert_eq!(summary.count(PiiKind::Email), 2);
        assert_eq!(summary.count(PiiKind::Phone), 1);
        assert_eq!(summary.count(PiiKind::Card), 1);
        assert_eq!(summary.count(PiiKind::Address), 1);
        assert_eq!(summary.total(), 5);
        assert_eq!(
            summary.to_json(),
            r#"{"address":1,"card":1,"email":2,"phone":1}"#
        );
    }

    #[test]
    fn keep_leaves_the_text_and_counts_nothing() {
        let mut summary = Redactions::new();
        let raw = "jo@example.com 0412 345 678";
        assert_eq!(Redactor::Keep.text(raw, &mut summary), raw);
        assert!(summary.is_empty());
    }

    #[test]
    fn hash_links_equal_values_and_depends_on_the_key() {
        let a = key(1);
        let b = key(2);
        let mut summary = Redactions::new();
        let one = Redactor::Hash(&a).text("call 0412 345 678", &mut summary);
        let again = Redactor::Hash(&a).text("call 0412345678", &mut summary);
        let other_key = Redactor::Hash(&b).text("call 0412 345 678", &mut summary);
        let other_value = Redactor::Hash(&a).text("call 0412 345 679", &mut summary);
        assert!(one.starts_with("call [PHONE:"), "{one}");
        assert_eq!(one.len(), "call [PHONE:]".len() + HASH_HEX_DIGITS);
        assert_eq!(one, again, "spelling variants of one number link");
        assert_ne!(one, other_key, "the hash is keyed");
        assert_ne!(one, other_value);
        assert!(!one.contains("0412"));
        assert_eq!(summary.count(PiiKind::Phone), 4);
    }

    #[test]
    fn a_hash_key_has_bounds_and_never_prints() {
        assert!(HashKey::new(vec![0; HASH_KEY_BYTES_MIN - 1]).is_err());
        assert!(HashKey::new(vec![0; HASH_KEY_BYTES_MAX + 1]).is_err());
        assert_eq!(format!("{:?}", key(7)), "HashKey(32 bytes)");
    }

    #[test]
    fn overlapping_findings_resolve_to_the_longest() {
        // The phone number inside the e-mail address is part of the longer finding.
        assert_eq!(
            kinds("mail 0412345678@example.com"),
            [(PiiKind::Email, "0412345678@example.com")]
        );
        let spans = resolve(vec![
            Span {
                start: 0,
                end: 5,
                kind: PiiKind::Phone,
            },
            Span {
                start: 3,
                end: 12,
                kind: PiiKind::Address,
            },
            Span {
                start: 10,
                end: 14,
                kind: PiiKind::Card,
            },
            Span {
                start: 3,
                end: 12,
                kind: PiiKind::Card,
            },
        ]);
        assert_eq!(
            spans,
            [Span {
                start: 3,
                end: 12,
                kind: PiiKind::Card,
            }]
        );
    }

    #[test]
    fn a_command_has_every_free_text_field_redacted() {
        let call_id = CallId::from_u128(1);
        let redactor = Redactor::Mask;
        let (command, summary) = redactor
            .command(Command::LogEvent {
                call_id,
                event_type: "payment.taken".into(),
                payload: Payload::Json(
                    r#"{"card":"4111 1111 1111 1111","n":4111111111111111,"who":{"mail":["a@b.co"]},"ok":true}"#
                        .into(),
                ),
                metadata: Labels::from([("phone".to_owned(), "0412 345 678".to_owned())]),
            })
            .expect("json payload");
        let Command::LogEvent {
            payload: Payload::Json(payload),
            metadata,
            ..
        } = command
        else {
            panic!("a log event stays a log event");
        };
        let payload: serde_json::Value = serde_json::from_str(&payload).expect("json");
        assert_eq!(
            payload,
            serde_json::json!({"card":"[CARD]","n":"[CARD]","who":{"mail":["[EMAIL]"]},"ok":true})
        );
        assert_eq!(metadata["phone"], "[PHONE]");
        assert_eq!(summary.to_json(), r#"{"card":2,"email":1,"phone":1}"#);

        let (command, summary) = redactor
            .command(Command::UpdateContext {
                call_id,
                summary: Some("lives at 12 Smith St".into()),
                entities: Labels::from([
                    ("email".to_owned(), "jo@example.com".to_owned()),
                    ("removed".to_owned(), String::new()),
                ]),
            })
            .expect("no payload");
        assert_eq!(
            command,
            Command::UpdateContext {
                call_id,
                summary: Some("lives at [ADDRESS]".into()),
                entities: Labels::from([
                    ("email".to_owned(), "[EMAIL]".to_owned()),
                    ("removed".to_owned(), String::new()),
                ]),
            }
        );
        assert_eq!(summary.total(), 2);

        let (command, _) = redactor
            .command(Command::EndCall {
                call_id,
                reason: "card 4111111111111111".into(),
                resolution: "mailed jo@example.com".into(),
            })
            .expect("no payload");
        assert_eq!(
            command,
            Command::EndCall {
                call_id,
                reason: "card [CARD]".into(),
                resolution: "mailed [EMAIL]".into(),
            }
        );
    }

    #[test]
    fn a_clean_json_payload_keeps_its_bytes() {
        let raw = r#"{ "z": 1,  "a": "hello" }"#;
        let (command, summary) = Redactor::Mask
            .command(Command::LogEvent {
                call_id: CallId::from_u128(1),
                event_type: "x".into(),
                payload: Payload::Json(raw.into()),
                metadata: Labels::new(),
            })
            .expect("json");
        assert!(summary.is_empty());
        assert!(matches!(command, Command::LogEvent { payload: Payload::Json(p), .. } if p == raw));
    }

    #[test]
    fn an_opaque_payload_with_pii_is_refused_and_without_is_kept() {
        let event = |bytes: &[u8]| Command::LogEvent {
            call_id: CallId::from_u128(1),
            event_type: "x".into(),
            payload: Payload::Bytes(bytes.to_vec()),
            metadata: Labels::new(),
        };
        let error = Redactor::Mask
            .command(event(b"\x0a\x10jo@example.com\x12\x02hi"))
            .expect_err("pii in opaque bytes");
        assert_eq!(error, Invalid::new(Field::Payload, Problem::OpaquePii));
        assert!(Redactor::Mask.command(event(b"\x0a\x02hi")).is_ok());
        // Keep does not look.
        assert!(
            Redactor::Keep
                .command(event(b"\x0a\x10jo@example.com"))
                .is_ok()
        );
    }

    #[test]
    fn a_client_may_not_set_the_redaction_record_under_any_policy() {
        for redactor in [Redactor::Keep, Redactor::Mask] {
            let error = redactor
                .command(Command::LogEvent {
                    call_id: CallId::from_u128(1),
                    event_type: "x".into(),
                    payload: Payload::Json("{}".into()),
                    metadata: Labels::from([(REDACTIONS_METADATA_KEY.to_owned(), "{}".to_owned())]),
                })
                .expect_err("reserved key");
            assert_eq!(error, Invalid::new(Field::MetadataKey, Problem::Reserved));
        }
    }

    #[test]
    fn redacting_twice_changes_nothing_more() {
        for redactor in [Redactor::Mask, Redactor::Hash(&key(3))] {
            let mut summary = Redactions::new();
            let once = redactor.text(
                "jo@example.com, +61 412 345 678, 4111 1111 1111 1111, Unit 5/12 Smith St",
                &mut summary,
            );
            let mut again = Redactions::new();
            assert_eq!(redactor.text(&once, &mut again), once);
            assert!(again.is_empty(), "{once} {again:?}");
        }
    }

    #[test]
    fn policies_and_kinds_parse_from_their_names() {
        for policy in Policy::ALL {
            assert_eq!(policy.as_str().parse::<Policy>().ok(), Some(policy));
        }
        for kind in PiiKind::ALL {
            assert_eq!(kind.as_str().parse::<PiiKind>().ok(), Some(kind));
        }
        let error = "redact".parse::<Policy>().expect_err("not a policy");
        assert!(error.to_string().contains("mask, hash, keep"), "{error}");
    }

    #[test]
    fn a_long_digit_run_is_scanned_in_bounded_windows() {
        // 20 000 groups: linear work, and nothing in it is a card or a phone number.
        let text = "1 ".repeat(20_000);
        assert!(find(&text).is_empty());
    }
}
