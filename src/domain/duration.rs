//! Human durations in config and policy files (`60s`, `30d`, `2h 30m`).

use std::time::Duration;

/// A duration string that does not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("parse duration '{input}': {reason} (examples: \"90s\", \"15m\", \"30d\")")]
pub struct DurationError {
    pub input: String,
    pub reason: String,
}

pub fn parse(input: &str) -> Result<Duration, DurationError> {
    humantime::parse_duration(input.trim()).map_err(|e| DurationError {
        input: input.to_string(),
        reason: e.to_string(),
    })
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
