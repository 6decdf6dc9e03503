//! What starts a workflow besides `weft run`: a cron schedule and a webhook,
//! both served by `weft serve`.

use std::str::FromStr as _;
use std::time::Duration;

use serde::Serialize;

/// What `weft serve` does when a schedule fires while the workflow's
/// previous scheduled run is still going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Overlap {
    /// Skip this firing (the default): a slow run never piles up copies.
    Skip,
    /// Start another run beside it.
    Allow,
}

/// A cron schedule.
#[derive(Debug, Clone)]
pub struct CronTrigger {
    /// The expression as written.
    pub expression: String,
    /// The parsed schedule (UTC).
    pub schedule: cron::Schedule,
    /// What to do when the previous run is still going.
    pub overlap: Overlap,
    /// At start, run once if a firing was missed while weft was down. Never
    /// more than once, however many were missed.
    pub catch_up: bool,
    /// The zone whose wall clock the schedule reads (UTC when `None`).
    pub timezone: Option<chrono_tz::Tz>,
    /// Each firing waits a random time up to this long (spreads many
    /// workflows on one schedule).
    pub jitter: Duration,
}

impl CronTrigger {
    /// Parses a cron expression: 6 fields (seconds first) or 7 (with
    /// years), or the classic 5 (minutes first), read as at second 0.
    pub fn parse_schedule(expression: &str) -> Result<cron::Schedule, String> {
        let fields = expression.split_whitespace().count();
        let full = if fields == 5 { format!("0 {expression}") } else { expression.to_owned() };
        cron::Schedule::from_str(&full).map_err(|e| {
            // The crate's message repeats the expression with a caret of
            // its own; keep its last line, the reason.
            let text = e.to_string();
            let reason = text.lines().rev().find(|l| !l.trim().is_empty() && l.trim() != "^").unwrap_or("").trim().to_owned();
            format!("bad cron expression {expression:?}: {reason}; write 5 fields (min hour day month weekday), 6 with seconds first, or 7 with years")
        })
    }

    /// The next firing strictly after `after`.
    ///
    /// In a time zone the schedule reads the wall clock, and a change of
    /// the clock fires nothing twice and skips nothing: a wall time that
    /// does not exist (the hour skipped in spring) fires once, when the
    /// clock reaches the end of the gap; a wall time that comes twice (the
    /// hour repeated in autumn) fires once, the first time.
    pub fn next_after(
        &self,
        after: chrono::DateTime<chrono::Utc>,
    ) -> Option<chrono::DateTime<chrono::Utc>> {
        use chrono::{LocalResult, TimeZone as _};
        let Some(tz) = self.timezone else { return self.schedule.after(&after).next() };
        // The wall clock, read as if it were UTC, drives the schedule.
        let wall = chrono::Utc.from_utc_datetime(&after.with_timezone(&tz).naive_local());
        for candidate in self.schedule.after(&wall).take(10_000) {
            let naive = candidate.naive_utc();
            let instant = match tz.from_local_datetime(&naive) {
                LocalResult::Single(t) => t,
                LocalResult::Ambiguous(first, _) => first,
                // In a gap: the first minute that exists after it (gaps are
                // at most a few hours).
                LocalResult::None => {
                    let end = (1..=24 * 60).find_map(|m| {
                        tz.from_local_datetime(&(naive + chrono::Duration::minutes(m))).earliest()
                    });
                    let Some(end) = end else { continue };
                    end
                }
            };
            let instant = instant.with_timezone(&chrono::Utc);
            if instant > after {
                return Some(instant);
            }
        }
        None
    }
}

/// How a webhook proves it comes from who it says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "scheme")]
pub enum Verify {
    /// Stripe's `Stripe-Signature: t=…,v1=…`: HMAC-SHA256 over
    /// `"{t}.{payload}"`, within a tolerance of the timestamp.
    Stripe,
    /// HMAC-SHA256 of the body, hex, in `header` (a `sha256=` prefix is
    /// accepted). With `timestamp_header`, the MAC covers
    /// `"{timestamp}.{body}"` and the timestamp must be within tolerance.
    HmacSha256 {
        /// Header carrying the signature.
        header: String,
        /// Header carrying a Unix timestamp, when the sender signs one.
        timestamp_header: Option<String>,
    },
}

/// A webhook that starts the workflow, at `POST /hooks/<workflow name>`.
#[derive(Debug, Clone)]
pub struct WebhookTrigger {
    /// The scheme.
    pub verify: Verify,
    /// The signing secret: `env:NAME` or `file:PATH`, read when the server starts.
    pub secret: String,
    /// How far a signed timestamp may be from now.
    pub tolerance: Duration,
    /// Largest body accepted.
    pub max_body_bytes: usize,
    /// Where the event's id is: deliveries of one id start one run, however
    /// they are signed (a sender's retry is signed anew).
    pub event_id: Option<EventId>,
    /// How long an event id is remembered.
    pub dedupe_window: Duration,
}

/// The field of an event that identifies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventId {
    /// A dotted path into the event (`id`, `meta.event_id`).
    pub path: String,
    /// A delivery without it is refused (set by `event_id`); Stripe's
    /// default `id` is used when present.
    pub required: bool,
}

impl EventId {
    /// The id in `event`, as text (a string, or a number's digits).
    pub fn of(&self, event: &serde_json::Map<String, serde_json::Value>) -> Option<String> {
        let mut parts = self.path.split('.');
        let first = event.get(parts.next()?)?;
        let found = parts.try_fold(first, |at, field| at.get(field))?;
        match found {
            serde_json::Value::String(s) if !s.is_empty() => Some(s.clone()),
            serde_json::Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }
}

/// How long an event id is remembered by default: past Stripe's retries
/// (up to three days in live mode).
pub const DEFAULT_DEDUPE_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// Default tolerance for signed timestamps (Stripe's own default).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);

/// Default body cap for webhooks.
pub const DEFAULT_MAX_BODY: usize = 1 << 20;

/// A workflow's triggers.
#[derive(Debug, Clone, Default)]
pub struct Trigger {
    /// On a schedule.
    pub cron: Option<CronTrigger>,
    /// On a webhook.
    pub webhook: Option<WebhookTrigger>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_six_and_seven_field_expressions_parse() {
        assert!(CronTrigger::parse_schedule("*/15 * * * *").is_ok());
        assert!(CronTrigger::parse_schedule("0 */15 * * * *").is_ok());
        assert!(CronTrigger::parse_schedule("0 0 3 * * * 2027").is_ok());
        let err = CronTrigger::parse_schedule("every minute").err().unwrap_or_default();
        assert!(err.contains("bad cron expression"), "{err}");
    }

    fn berlin(expression: &str) -> Result<CronTrigger, String> {
        Ok(CronTrigger {
            expression: expression.into(),
            schedule: CronTrigger::parse_schedule(expression)?,
            overlap: Overlap::Skip,
            catch_up: false,
            timezone: Some(chrono_tz::Europe::Berlin),
            jitter: Duration::ZERO,
        })
    }

    fn utc(text: &str) -> Result<chrono::DateTime<chrono::Utc>, String> {
        chrono::DateTime::parse_from_rfc3339(text).map(|t| t.to_utc()).map_err(|e| e.to_string())
    }

    /// The firings in [from, to), UTC, RFC 3339.
    fn firings(trigger: &CronTrigger, from: &str, to: &str) -> Result<Vec<String>, String> {
        let (mut at, to) = (utc(from)?, utc(to)?);
        let mut out = Vec::new();
        while let Some(next) = trigger.next_after(at) {
            if next >= to || out.len() > 1000 {
                break;
            }
            out.push(next.to_rfc3339());
            at = next;
        }
        Ok(out)
    }

    #[test]
    fn a_wall_time_in_the_skipped_spring_hour_fires_once_when_the_clock_resumes()
    -> Result<(), String> {
        // Berlin, 2026-03-29: 02:00 CET becomes 03:00 CEST (01:00 UTC).
        let daily = berlin("30 2 * * *")?;
        assert_eq!(
            firings(&daily, "2026-03-28T00:00:00Z", "2026-03-31T00:00:00Z")?,
            ["2026-03-28T01:30:00+00:00", "2026-03-29T01:00:00+00:00", "2026-03-30T00:30:00+00:00"]
        );
        let quarterly = berlin("*/15 * * * *")?;
        let around = firings(&quarterly, "2026-03-29T00:40:00Z", "2026-03-29T01:20:00Z")?;
        assert_eq!(
            around,
            ["2026-03-29T00:45:00+00:00", "2026-03-29T01:00:00+00:00", "2026-03-29T01:15:00+00:00"],
            "02:00–02:45 do not exist: one firing at 03:00"
        );
        Ok(())
    }

    #[test]
    fn a_wall_time_in_the_repeated_autumn_hour_fires_once() -> Result<(), String> {
        // Berlin, 2026-10-25: 03:00 CEST becomes 02:00 CET (01:00 UTC).
        let daily = berlin("30 2 * * *")?;
        assert_eq!(
            firings(&daily, "2026-10-24T12:00:00Z", "2026-10-27T00:00:00Z")?,
            ["2026-10-25T00:30:00+00:00", "2026-10-26T01:30:00+00:00"],
            "02:30 comes twice on the 25th and fires once"
        );
        let quarterly = berlin("*/15 * * * *")?;
        let hour = firings(&quarterly, "2026-10-24T23:50:00Z", "2026-10-25T02:10:00Z")?;
        assert_eq!(
            hour,
            [
                "2026-10-25T00:00:00+00:00",
                "2026-10-25T00:15:00+00:00",
                "2026-10-25T00:30:00+00:00",
                "2026-10-25T00:45:00+00:00",
                "2026-10-25T02:00:00+00:00"
            ],
            "02:00–02:45 fire once (CEST); the repeated 02:xx CET do not; then 03:00 CET"
        );
        Ok(())
    }

    #[test]
    fn the_next_firing_comes_after() -> Result<(), String> {
        let trigger = CronTrigger {
            expression: "0 0 * * * *".into(),
            schedule: CronTrigger::parse_schedule("0 0 * * * *")?,
            overlap: Overlap::Skip,
            catch_up: false,
            timezone: None,
            jitter: Duration::ZERO,
        };
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:30:00Z")
            .map_err(|e| e.to_string())?
            .to_utc();
        let next = trigger.next_after(now).map(|t| t.to_rfc3339());
        assert_eq!(next.as_deref(), Some("2026-12-01T11:00:00+00:00"));
        Ok(())
    }
}
