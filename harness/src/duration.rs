//! The one duration grammar of every command line (`switchboard --timeout`, the drill, the
//! bench, `regions`): a number, optionally with a fraction, then a unit — `250ms`, `1.5s`, `2m`,
//! `2min`, `1h` — or a bare number of seconds (`7`). No spaces inside, no sign, no exponent.
//! Callers add their own bounds (the CLI refuses zero, for example); the grammar only refuses
//! what no caller could mean: more than [`DURATION_MAX`]. Where a bare number would be
//! ambiguous (is `--timeout 500` seconds or milliseconds?), [`parse_duration_with_unit`]
//! refuses it.

use std::time::Duration;

use crate::Error;

/// The longest duration any command line accepts: every duration here is a timeout or a run
/// length, and a week bounds both.
pub const DURATION_MAX: Duration = Duration::from_secs(7 * 24 * 3600);

/// Fraction digits kept: below a nanosecond for every unit, and small enough that the
/// arithmetic below cannot overflow a `u128`.
const FRACTION_DIGITS_MAX: u32 = 12;

/// Parses a duration of the grammar above; errors name the text and say what to write.
pub fn parse_duration(text: &str) -> Result<Duration, Error> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let not_a_number = || Error::DurationNumber {
        text: text.to_owned(),
    };
    if !number.contains(|c: char| c.is_ascii_digit()) {
        return Err(not_a_number());
    }
    let unit_ns: u128 = match unit {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => {
            return Err(Error::DurationUnit {
                text: text.to_owned(),
                unit: unit.to_owned(),
            });
        }
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if fraction.contains('.') {
        return Err(not_a_number());
    }
    let too_long = || Error::DurationTooLong {
        text: text.to_owned(),
        max: DURATION_MAX,
    };
    // Digits only (checked above), so a parse failure means too many of them.
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().map_err(|_| too_long())?
    };
    let kept = &fraction[..fraction.len().min(FRACTION_DIGITS_MAX as usize)];
    let scale = 10u128.pow(u32::try_from(kept.len()).unwrap_or(FRACTION_DIGITS_MAX));
    let fraction: u128 = if kept.is_empty() {
        0
    } else {
        kept.parse().map_err(|_| not_a_number())?
    };
    let nanos = whole
        .checked_mul(unit_ns)
        .and_then(|n| n.checked_add(fraction * unit_ns / scale))
        .ok_or_else(too_long)?;
    if nanos > DURATION_MAX.as_nanos() {
        return Err(too_long());
    }
    let nanos = u64::try_from(nanos).map_err(|_| too_long())?;
    Ok(Duration::from_nanos(nanos))
}

/// [`parse_duration`], but a bare number is refused: the unit must be written.
pub fn parse_duration_with_unit(text: &str) -> Result<Duration, Error> {
    let trimmed = text.trim();
    if trimmed.ends_with(|c: char| c.is_ascii_digit() || c == '.') {
        return Err(Error::DurationNoUnit {
            text: trimmed.to_owned(),
        });
    }
    parse_duration(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> Duration {
        match parse_duration(text) {
            Ok(duration) => duration,
            Err(e) => panic!("{text:?} must parse: {e}"),
        }
    }

    fn refused(text: &str) -> String {
        match parse_duration(text) {
            Ok(duration) => panic!("{text:?} must be refused, parsed as {duration:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn every_unit_the_command_lines_used_is_accepted() {
        assert_eq!(ok("250ms"), Duration::from_millis(250));
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("2m"), Duration::from_secs(120));
        assert_eq!(ok("2min"), Duration::from_secs(120));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
    }

    #[test]
    fn a_bare_number_is_seconds() {
        assert_eq!(ok("7"), Duration::from_secs(7));
        assert_eq!(ok("0"), Duration::ZERO);
    }

    #[test]
    fn fractions_are_exact() {
        assert_eq!(ok("1.5s"), Duration::from_millis(1500));
        assert_eq!(ok("0.1s"), Duration::from_millis(100));
        assert_eq!(ok("2.5ms"), Duration::from_micros(2500));
        assert_eq!(ok(".5m"), Duration::from_secs(30));
        assert_eq!(ok("1.25h"), Duration::from_secs(4500));
        assert_eq!(ok("0.0000000001s"), Duration::ZERO);
    }

    #[test]
    fn where_a_unit_is_required_a_bare_number_is_refused() {
        assert_eq!(
            parse_duration_with_unit("5").map_err(|e| e.to_string()),
            Err("\"5\" has no unit: write e.g. 500ms, 5s or 2m".to_owned())
        );
        assert!(parse_duration_with_unit("1.").is_err());
        assert_eq!(
            parse_duration_with_unit(" 1.5s ").ok(),
            Some(Duration::from_millis(1500))
        );
        assert!(
            parse_duration_with_unit("5x")
                .map_err(|e| e.to_string())
                .is_err_and(|e| e.contains("unknown unit"))
        );
    }

    #[test]
    fn surrounding_whitespace_is_ignored() {
        assert_eq!(ok(" 60s\n"), Duration::from_secs(60));
    }

    #[test]
    fn the_maximum_is_accepted_and_more_is_refused() {
        assert_eq!(ok("168h"), DURATION_MAX);
        assert!(refused("169h").contains("exceeds the maximum of 168 h"));
        assert!(refused("99999999999999999999999999999999999999999s").contains("exceeds"));
    }

    #[test]
    fn text_without_a_number_is_refused_saying_what_to_write() {
        for text in ["", "s", "fast", ".", ".s", "-5s", "1.2.3s", "s5"] {
            let message = refused(text);
            assert!(message.contains("write e.g. 500ms"), "{text:?}: {message}");
        }
        assert_eq!(
            refused("s"),
            "\"s\" does not start with a number: write e.g. 500ms, 5s or 2m"
        );
    }

    #[test]
    fn unknown_units_and_inner_spaces_are_refused_naming_the_unit() {
        assert_eq!(
            refused("5 s"),
            "unknown unit \" s\" in \"5 s\": use ms, s, m (or min) or h; a bare number is seconds"
        );
        for text in ["10d", "5S", "1e3s", "5sec", "3us"] {
            assert!(refused(text).contains("unknown unit"), "{text:?}");
        }
    }
}
