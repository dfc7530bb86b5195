//! Human durations in config and policy files (`60s`, `30d`, `2h 30m`), within a sane range.
//!
//! Waits (health timeouts, soaks, the registry deadline) are added to a clock, so they are held
//! to [`MAX_WAIT`]; ages in policies (`pushed_within`) to [`MAX_AGE`]. Neither bound can overflow
//! an `Instant` or a date, and a value beyond them is a typing mistake, not an intent.

use std::time::Duration;

/// The longest wait accepted (health timeout, soak, registry deadline): 30 days.
pub const MAX_WAIT: Duration = Duration::from_secs(30 * 86_400);
/// The longest age accepted in a retention policy: 100 years.
pub const MAX_AGE: Duration = Duration::from_secs(36_500 * 86_400);

/// A duration string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("parse duration '{input}': {reason} (examples: \"90s\", \"15m\", \"30d\")")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

/// Parses an age (as in a policy): at most [`MAX_AGE`].
pub fn parse(input: &str) -> Result<Duration, DurationError> {
    parse_at_most(input, MAX_AGE, "100 years")
}

/// Parses a wait (a timeout or a soak): at most [`MAX_WAIT`].
pub fn parse_wait(input: &str) -> Result<Duration, DurationError> {
    parse_at_most(input, MAX_WAIT, "30 days")
}

fn parse_at_most(input: &str, max: Duration, max_words: &str) -> Result<Duration, DurationError> {
    let d = humantime::parse_duration(input.trim()).map_err(|e| DurationError {
        input: input.to_string(),
        reason: e.to_string(),
    })?;
    if d > max {
        return Err(DurationError {
            input: input.to_string(),
            reason: format!("longer than {max_words}"),
        });
    }
    Ok(d)
}

/// Clap value parser for a wait given as a flag (`--soak 5m`): a bad value is a usage error.
pub fn wait_flag(input: &str) -> Result<String, String> {
    parse_wait(input).map(|_| input.to_string()).map_err(|e| e.to_string())
}

/// Serde helper: a duration written as a human string.
pub mod serde_human {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse(&s).map_err(serde::de::Error::custom)
    }

    pub fn deserialize_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        deserialize(d).map(Some)
    }

    pub fn deserialize_wait_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        deserialize_wait(d).map(Some)
    }

    /// A wait (timeout): at most [`super::MAX_WAIT`].
    pub fn deserialize_wait<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_wait(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_units_users_write() {
        let cases = [
            ("60s", 60),
            ("15m", 900),
            ("2h", 7200),
            ("30d", 30 * 86400),
            ("1h 30m", 5400),
        ];
        for (input, secs) in cases {
            assert_eq!(parse(input).unwrap(), Duration::from_secs(secs), "{input}");
        }
    }

    #[test]
    fn waits_beyond_thirty_days_are_refused_not_overflowed() {
        assert_eq!(parse_wait("30d").unwrap(), MAX_WAIT);
        for bad in [
            "31d",
            "300000000000y",
            "18446744073709551615s",
            "1000000000000000000000000s",
        ] {
            let err = parse_wait(bad).unwrap_err();
            assert!(err.to_string().contains(bad), "{err}");
        }
        assert!(parse("300000000000y").is_err());
        assert!(parse("36500d").is_ok());
        // The bound itself can be added to a clock.
        assert!(std::time::Instant::now().checked_add(MAX_WAIT).is_some());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_duration_text_never_panics(s in "\\PC{0,30}") {
            if let Ok(d) = parse_wait(&s) {
                proptest::prop_assert!(d <= MAX_WAIT);
            }
            if let Ok(d) = parse(&s) {
                proptest::prop_assert!(d <= MAX_AGE);
            }
        }

        #[test]
        fn number_and_unit_text_never_panics(n in proptest::num::u64::ANY, unit in "(ns|us|ms|s|m|h|d|w|M|y)") {
            let text = format!("{n}{unit}");
            let _ = parse(&text);
            let _ = parse_wait(&text);
        }
    }

    #[test]
    fn rejects_unitless_and_garbage_with_examples() {
        for bad in ["60", "soon", ""] {
            let err = parse(bad).unwrap_err();
            assert!(err.to_string().contains("examples"), "{err}");
        }
    }
}

/// A duration the way users write one: `90d`, `12h`, `15m`, `30s` (largest whole unit).
pub fn format(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0 => "0s".into(),
        _ if s.is_multiple_of(86_400) => format!("{}d", s / 86_400),
        _ if s.is_multiple_of(3600) => format!("{}h", s / 3600),
        _ if s.is_multiple_of(60) => format!("{}m", s / 60),
        _ => format!("{s}s"),
    }
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn formats_in_the_largest_whole_unit() {
        for (secs, want) in [(90 * 86_400, "90d"), (7200, "2h"), (90, "90s"), (900, "15m"), (0, "0s")] {
            assert_eq!(format(Duration::from_secs(secs)), want);
        }
    }
}
