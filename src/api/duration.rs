//! Go-style durations as written in `spec.fulfilmentTimeout` (`90s`, `15m`, `1h30m`, `500ms`):
//! the same grammar the CRD's CEL rule admits.

use std::time::Duration;

/// Shortest and longest `spec.fulfilmentTimeout` (the CRD's CEL rule says the same).
pub const MIN_FULFILMENT_TIMEOUT: Duration = Duration::from_secs(30);
pub const MAX_FULFILMENT_TIMEOUT: Duration = Duration::from_secs(168 * 3600);

/// A `spec.fulfilmentTimeout` within its bounds.
pub fn fulfilment_timeout(text: &str) -> Result<Duration, String> {
    let d = parse(text)?;
    if d < MIN_FULFILMENT_TIMEOUT || d > MAX_FULFILMENT_TIMEOUT {
        return Err(format!("`{text}` is outside 30s to 168h"));
    }
    Ok(d)
}

/// Parses a duration made of `<digits><unit>` pairs with units `ms`, `s`, `m`, `h`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || format!("`{text}` is not a duration such as 90s, 15m or 1h30m");
    if text.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        if digits == 0 {
            return Err(bad());
        }
        let value: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        let part = unit.checked_mul(u32::try_from(value).map_err(|_| bad())?).ok_or_else(bad)?;
        total = total.checked_add(part).ok_or_else(bad)?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_single_and_compound_durations() {
        assert_eq!(parse("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse("1m500ms"), Ok(Duration::from_millis(60_500)));
    }

    #[test]
    fn fulfilment_timeouts_are_bounded() {
        assert_eq!(fulfilment_timeout("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(fulfilment_timeout("168h"), Ok(Duration::from_secs(168 * 3600)));
        for bad in ["0s", "29s", "169h", "99999999999999h", "15"] {
            assert!(fulfilment_timeout(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn rejects_what_the_crd_rule_rejects() {
        for bad in ["", "15", "m", "1.5h", "10d", "-5m", "5 m", "1h-"] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }
}
