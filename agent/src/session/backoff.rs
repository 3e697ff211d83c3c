//! Reconnect delays: exponential with full jitter (AWS's "full jitter": the
//! delay is uniform in `[0, min(max, initial * 2^attempt)]`), reset by the
//! caller after a stable connection.
use std::time::Duration;

use rand::Rng;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// Upper bound of the next delay.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(31)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// The next delay, uniform in `[0, ceiling]`; each call doubles the ceiling up to `max`.
    pub fn next_delay(&mut self, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rng.random_range(0..=nanos))
    }

    /// Back to the first (shortest) delay bound.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    use super::*;

    #[test]
    fn ceiling_doubles_up_to_the_max() {
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut rng = StdRng::seed_from_u64(1);
        let mut ceilings = Vec::new();
        for _ in 0..9 {
            ceilings.push(b.ceiling().as_millis());
            b.next_delay(&mut rng);
        }
        assert_eq!(
            ceilings,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        for _ in 0..100 {
            b.next_delay(&mut rng);
        }
        assert_eq!(b.ceiling(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(500));
    }

    #[test]
    fn delays_are_jittered_within_the_ceiling() {
        let mut rng = StdRng::seed_from_u64(7);
        let mut b = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        let mut delays = Vec::new();
        for _ in 0..200 {
            let ceiling = b.ceiling();
            let d = b.next_delay(&mut rng);
            assert!(d <= ceiling, "{d:?} > {ceiling:?}");
            delays.push(d);
        }
        // Full jitter: capped delays spread over [0, 30s], not bunched at the cap.
        let capped = &delays[10..];
        assert!(capped.iter().any(|d| *d < Duration::from_secs(10)));
        assert!(capped.iter().any(|d| *d > Duration::from_secs(20)));
    }
}
