//! Per-person limits on the commands that make the service do costly work (a room, an
//! agent room, a team, a link token): a small token bucket per surface and sender, in
//! memory. A restart forgets them, which is fine for a brake on bursts.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::LimitsConfig;

/// Buckets kept before full ones are forgotten (a full bucket is the same as none).
const PRUNE_AT: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    /// Commands allowed now; fractions fill up over time.
    tokens: f64,
    updated: Instant,
}

pub struct CommandLimiter {
    burst: f64,
    refill: Duration,
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

impl CommandLimiter {
    pub fn new(config: &LimitsConfig) -> Self {
        Self {
            burst: f64::from(config.command_burst.max(1)),
            refill: Duration::from_secs(config.command_refill_secs.max(1)),
            buckets: Mutex::default(),
        }
    }

    /// Takes one command from `sender`'s bucket on `surface`; `Err` with the wait until
    /// the next one is allowed when the bucket is empty.
    pub fn take(&self, surface: &str, sender: &str, now: Instant) -> Result<(), Duration> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if buckets.len() >= PRUNE_AT {
            buckets.retain(|_, bucket| self.filled(bucket, now) < self.burst);
        }
        let key = (surface.to_string(), sender.to_string());
        let bucket = buckets.entry(key).or_insert(Bucket { tokens: self.burst, updated: now });
        bucket.tokens = self.filled(bucket, now);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        Err(self.refill.mul_f64(1.0 - bucket.tokens))
    }

    fn filled(&self, bucket: &Bucket, now: Instant) -> f64 {
        let elapsed = now.saturating_duration_since(bucket.updated);
        (bucket.tokens + elapsed.as_secs_f64() / self.refill.as_secs_f64()).min(self.burst)
    }
}

/// The wait as people read it: whole seconds, rounded up, or minutes past two minutes.
pub fn wait_text(wait: Duration) -> String {
    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    match secs {
        0..=120 => format!("{} s", secs.max(1)),
        _ => format!("{} minutes", secs.div_ceil(60)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(burst: u32, refill_secs: u64) -> CommandLimiter {
        CommandLimiter::new(&LimitsConfig { command_burst: burst, command_refill_secs: refill_secs })
    }

    #[test]
    fn a_burst_is_allowed_then_one_per_refill() {
        let limiter = limiter(2, 60);
        let start = Instant::now();
        assert!(limiter.take("matrix", "@a:x", start).is_ok());
        assert!(limiter.take("matrix", "@a:x", start).is_ok());
        let wait = limiter.take("matrix", "@a:x", start).unwrap_err();
        assert_eq!(wait, Duration::from_secs(60));
        let later = start + Duration::from_secs(45);
        assert_eq!(limiter.take("matrix", "@a:x", later).unwrap_err(), Duration::from_secs(15));
        assert!(limiter.take("matrix", "@a:x", start + Duration::from_secs(60)).is_ok());
        assert!(limiter.take("matrix", "@a:x", start + Duration::from_secs(60)).is_err());
    }

    #[test]
    fn each_person_and_surface_has_a_bucket_of_their_own() {
        let limiter = limiter(1, 60);
        let now = Instant::now();
        assert!(limiter.take("matrix", "@a:x", now).is_ok());
        assert!(limiter.take("matrix", "@a:x", now).is_err());
        assert!(limiter.take("matrix", "@b:x", now).is_ok(), "another person");
        assert!(limiter.take("discord", "@a:x", now).is_ok(), "the same id on another surface");
    }

    #[test]
    fn the_buckets_do_not_grow_without_bound() {
        let limiter = limiter(1, 1);
        let start = Instant::now();
        for n in 0..PRUNE_AT {
            limiter.take("telegram", &n.to_string(), start).unwrap();
        }
        let later = start + Duration::from_secs(2);
        limiter.take("telegram", "new", later).unwrap();
        assert_eq!(limiter.buckets.lock().unwrap().len(), 1, "refilled buckets are forgotten");
    }

    #[test]
    fn waits_read_as_people_count() {
        assert_eq!(wait_text(Duration::from_millis(14_200)), "15 s");
        assert_eq!(wait_text(Duration::from_millis(10)), "1 s");
        assert_eq!(wait_text(Duration::from_secs(600)), "10 minutes");
    }
}
