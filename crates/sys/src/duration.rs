//! The one duration grammar of vpn-operator: Go-style strings (`1m30s`,
//! `750ms`, `1.5s`, `2h`), for every `--*-interval` / `--*-timeout` flag and
//! for the CRDs' duration fields (`MaskProvider.spec.verify.timeout`,
//! `.interval`, re-exported by `vpno-api`). Units: `ns`, `us`/`µs`, `ms`, `s`,
//! `m`, `h`; several may be concatenated; a unit is required except for `0`.
//! Pure: built without the `os` feature.

use std::time::Duration;

/// Regular expression the CRD schema enforces on duration fields, so that the
/// API server rejects malformed values before the controller sees them.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// Why a duration string could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason} (expected e.g. \"90s\", \"1m30s\", \"2h\")")]
pub struct DurationError {
    /// The text that failed to parse.
    pub input: String,
    /// What was wrong with it.
    pub reason: &'static str,
}

/// Parses a Go-style duration such as `1m30s` or `250ms`.
pub fn parse_duration(input: &str) -> Result<Duration, DurationError> {
    let err = |reason| DurationError {
        input: input.to_string(),
        reason,
    };
    let s = input.trim();
    if s.is_empty() {
        return Err(err("empty"));
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(err("expected a number"));
        }
        let value: f64 = rest[..num_len].parse().map_err(|_| err("bad number"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs_per_unit = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(err("missing unit")),
            _ => return Err(err("unknown unit")),
        };
        rest = &rest[unit_len..];
        total += value * secs_per_unit;
    }
    if !total.is_finite() || total > 10.0 * 365.0 * 86400.0 {
        return Err(err("out of range"));
    }
    Ok(Duration::from_secs_f64(total))
}

/// The `value_parser` of every duration flag: the grammar above, and more
/// than zero (an interval or timeout of zero makes no sense).
pub fn positive_duration(input: &str) -> Result<Duration, String> {
    match parse_duration(input) {
        Ok(d) if d.is_zero() => Err(format!("duration {input:?} must be more than zero")),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// Formats a duration the way Go prints it (`1m30s`), for messages.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    let millis = d.subsec_millis();
    if secs == 0 {
        return format!("{millis}ms");
    }
    let mut out = String::new();
    let h = secs / 3600;
    secs %= 3600;
    let m = secs / 60;
    secs %= 60;
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if secs > 0 || millis > 0 {
        if millis > 0 {
            out.push_str(&format!("{secs}.{millis:03}s"));
        } else {
            out.push_str(&format!("{secs}s"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "10", "s", "1x", "1m30", "-1s", "abc"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
    }

    #[test]
    fn flags_take_the_same_grammar_and_refuse_zero() {
        // What the router and the gateway each accepted before: one grammar now.
        for (text, want) in [
            ("1s", Duration::from_secs(1)),
            ("750ms", Duration::from_millis(750)),
            ("1.5s", Duration::from_millis(1500)),
            ("1m30s", Duration::from_secs(90)),
            ("180s", Duration::from_secs(180)),
            ("2m", Duration::from_secs(120)),
            (" 30s ", Duration::from_secs(30)),
        ] {
            assert_eq!(positive_duration(text), Ok(want), "{text}");
        }
        for bad in ["0", "0s", "", "10", "-1s", "1 s", "PT1S", "1d"] {
            let err = positive_duration(bad).unwrap_err();
            assert!(err.contains(bad.trim()), "{bad:?}: {err}");
        }
    }

    #[test]
    fn pattern_agrees_with_parser() {
        // The schema pattern must accept what the parser accepts for the common forms.
        for good in ["1m30s", "250ms", "2h", "1.5s"] {
            assert!(parse_duration(good).is_ok());
        }
        assert_eq!(format_duration(Duration::from_secs(90)), "1m30s");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.500s");
    }
}
