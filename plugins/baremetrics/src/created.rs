//! A customer's `created`: Baremetrics keeps it as a Unix timestamp (whole
//! seconds), and a workflow may give one or an RFC 3339 date-time.
//!
//! The vendored OpenAPI description contradicts itself here: the request
//! schemas of create and update type `created` as a `date-time` string
//! while their own text says "A unix timestamp", every answer types it as
//! an integer (`1492605754`), and the user-management guide says integer.
//! The connector sends the integer the answers, the text and the guide
//! agree on, and converts a date-time so that a user who writes
//! `"2024-01-02T03:04:05Z"` is not refused.

use serde_json::{Number, Value};

/// `created` as Baremetrics keeps it: a Unix timestamp; a blank stays
/// `null` (Baremetrics then sets "now" on create). The error says what was
/// given and what is accepted.
pub(crate) fn normalize(value: &Value) -> Result<Value, String> {
    let seconds = match value {
        Value::Null => return Ok(Value::Null),
        Value::String(text) if text.is_empty() => return Ok(Value::Null),
        Value::Number(number) => whole_seconds(number),
        Value::String(text) => text.parse::<i64>().ok().or_else(|| rfc3339_seconds(text)),
        Value::Bool(_) | Value::Array(_) | Value::Object(_) => None,
    };
    seconds.map(|seconds| Value::Number(seconds.into())).ok_or_else(|| {
        format!(
            "`created` must be a Unix timestamp in seconds (1704164645) or an RFC 3339 \
             date-time (2024-01-02T03:04:05Z), not {value}"
        )
    })
}

fn whole_seconds(number: &Number) -> Option<i64> {
    if let Some(seconds) = number.as_i64() {
        return Some(seconds);
    }
    let float = number.as_f64()?;
    // 1.7e9 is a whole number of seconds; 1.5 is not, and a timestamp
    // beyond i64 is not a date.
    (float.fract() == 0.0 && float.abs() < 9.0e18).then_some(float as i64)
}

/// Seconds since the Unix epoch of an RFC 3339 date-time
/// (`2024-01-02T03:04:05Z`, `2024-01-02 03:04:05.250+02:00`); fractions of
/// a second are dropped. `None` for anything else.
pub(crate) fn rfc3339_seconds(text: &str) -> Option<i64> {
    let bytes = text.as_bytes();
    let digits = |at: usize, len: usize| -> Option<i64> {
        let part = bytes.get(at..at + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        std::str::from_utf8(part).ok()?.parse().ok()
    };
    let separator = |at: usize, want: &[u8]| bytes.get(at).is_some_and(|b| want.contains(b));
    if !(separator(4, b"-")
        && separator(7, b"-")
        && separator(10, b"Tt ")
        && separator(13, b":")
        && separator(16, b":"))
    {
        return None;
    }
    let (year, month, day) = (digits(0, 4)?, digits(5, 2)?, digits(8, 2)?);
    let (hour, minute, second) = (digits(11, 2)?, digits(14, 2)?, digits(17, 2)?);
    let mut at = 19;
    if separator(at, b".") {
        at += 1;
        let start = at;
        while bytes.get(at).is_some_and(u8::is_ascii_digit) {
            at += 1;
        }
        if at == start {
            return None;
        }
    }
    let offset = match bytes.get(at)? {
        b'Z' | b'z' if at + 1 == bytes.len() => 0,
        sign @ (b'+' | b'-') if at + 6 == bytes.len() && separator(at + 3, b":") => {
            let (hours, minutes) = (digits(at + 1, 2)?, digits(at + 4, 2)?);
            if hours > 23 || minutes > 59 {
                return None;
            }
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'-' { -offset } else { offset }
        }
        _ => return None,
    };
    let valid = (1..=12).contains(&month)
        && (1..=days_in_month(year, month)).contains(&day)
        && hour < 24
        && minute < 60
        // 60: a leap second, which Unix time folds into the next one.
        && second <= 60;
    if !valid {
        return None;
    }
    let days = days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_date_time_becomes_the_unix_timestamp() {
        for (text, seconds) in [
            ("1970-01-01T00:00:00Z", 0),
            ("2024-01-02T03:04:05Z", 1_704_164_645),
            ("2024-01-02t03:04:05z", 1_704_164_645),
            ("2024-01-02 03:04:05+00:00", 1_704_164_645),
            ("2024-01-02T05:04:05.999+02:00", 1_704_164_645),
            ("2024-01-01T22:04:05-05:00", 1_704_164_645),
            ("2017-04-19T12:42:34Z", 1_492_605_754),
            ("2000-02-29T00:00:00Z", 951_782_400),
            ("1969-12-31T23:59:59Z", -1),
        ] {
            assert_eq!(rfc3339_seconds(text), Some(seconds), "{text}");
        }
    }

    #[test]
    fn what_is_not_a_date_time_is_refused() {
        for text in [
            "2024-01-02",
            "2024-01-02T03:04Z",
            "2024-13-02T03:04:05Z",
            "2023-02-29T03:04:05Z",
            "2024-01-02T24:00:00Z",
            "2024-01-02T03:04:05",
            "2024-01-02T03:04:05+0200",
            "2024-01-02T03:04:05.Z",
            "2024-01-02T03:04:05Z trailing",
            "２０２４-01-02T03:04:05Z",
            "",
        ] {
            assert_eq!(rfc3339_seconds(text), None, "{text}");
        }
    }

    #[test]
    fn created_keeps_integers_and_converts_the_rest_or_says_what_is_accepted() {
        assert_eq!(normalize(&json!(1_492_605_754)), Ok(json!(1_492_605_754)));
        assert_eq!(normalize(&json!(1.4926e9)), Ok(json!(1_492_600_000)));
        assert_eq!(normalize(&json!("1492605754")), Ok(json!(1_492_605_754)));
        assert_eq!(normalize(&json!("2017-04-19T12:42:34Z")), Ok(json!(1_492_605_754)));
        assert_eq!(normalize(&json!(null)), Ok(json!(null)));
        assert_eq!(normalize(&json!("")), Ok(json!(null)));
        for bad in [json!(1.5), json!("yesterday"), json!(true), json!({"at": 1})] {
            let error = normalize(&bad).expect_err("refused");
            assert!(error.contains("RFC 3339"), "{error}");
        }
    }
}
