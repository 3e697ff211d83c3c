//! Workload profiles: a deterministic GPU utilization (0..=1) per GPU as a
//! function of the time since the BMC started.

use std::f64::consts::TAU;
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// Period of the `training` profile: a step of high load then a dip.
pub const TRAINING_PERIOD_S: f64 = 40.0;
/// Length of the dip at the end of each training period (a checkpoint, an
/// evaluation pass or a data-loader stall: every GPU waits).
pub const TRAINING_DIP_S: f64 = 4.0;
/// Utilization during the dip.
pub const TRAINING_DIP_UTIL: f64 = 0.25;
/// Mean utilization between dips; a small per-GPU ripple rides on it.
pub const TRAINING_HIGH_UTIL: f64 = 0.92;
const TRAINING_RIPPLE: f64 = 0.04;
const TRAINING_RIPPLE_PERIOD_S: f64 = 5.0;

/// How busy the GPUs are over time.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Workload {
    /// Nothing running.
    Idle,
    /// Every GPU at this utilization (0..=1).
    Constant(f64),
    /// High load with a short dip every [`TRAINING_PERIOD_S`] seconds.
    #[default]
    Training,
    /// 0.5 + 0.5 sin(2πt/period) on every GPU.
    Sine { period: Duration },
}

impl Workload {
    /// Utilization of GPU `gpu` (0-based) at `t` seconds after the start, in 0..=1.
    pub fn utilization(&self, t: f64, gpu: usize) -> f64 {
        let u = match *self {
            Workload::Idle => 0.0,
            Workload::Constant(u) => u,
            Workload::Training => {
                let phase = t.rem_euclid(TRAINING_PERIOD_S);
                if phase >= TRAINING_PERIOD_S - TRAINING_DIP_S {
                    TRAINING_DIP_UTIL
                } else {
                    let offset = gpu as f64 * 0.7;
                    TRAINING_HIGH_UTIL
                        + TRAINING_RIPPLE * (TAU * phase / TRAINING_RIPPLE_PERIOD_S + offset).sin()
                }
            }
            Workload::Sine { period } => 0.5 + 0.5 * (TAU * t / period.as_secs_f64()).sin(),
        };
        u.clamp(0.0, 1.0)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Workload::Idle => f.write_str("idle"),
            Workload::Constant(u) => write!(f, "constant:{u}"),
            Workload::Training => f.write_str("training"),
            Workload::Sine { period } => write!(f, "sine:{}", humantime::format_duration(*period)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid workload {given:?}: {reason} (expected idle, training, constant:<0..1> or sine:<period>)")]
pub struct InvalidWorkload {
    pub given: String,
    pub reason: String,
}

impl FromStr for Workload {
    type Err = InvalidWorkload;

    fn from_str(s: &str) -> Result<Workload, InvalidWorkload> {
        let err = |reason: String| InvalidWorkload {
            given: s.to_string(),
            reason,
        };
        let t = s.trim();
        let (kind, arg) = match t.split_once(':') {
            Some((k, a)) => (k.trim(), Some(a.trim())),
            None => (t, None),
        };
        match (kind.to_ascii_lowercase().as_str(), arg) {
            ("idle", None) => Ok(Workload::Idle),
            ("training", None) => Ok(Workload::Training),
            ("constant", Some(a)) => {
                let u: f64 = a.parse().map_err(|_| err(format!("{a:?} is not a number")))?;
                if !(0.0..=1.0).contains(&u) {
                    return Err(err(format!("utilization {a} is outside 0..1")));
                }
                Ok(Workload::Constant(u))
            }
            ("sine", Some(a)) => {
                let period = match a.parse::<f64>() {
                    Ok(secs) if secs.is_finite() && secs > 0.0 => Duration::from_secs_f64(secs),
                    Ok(_) => return Err(err(format!("period {a} must be positive"))),
                    Err(_) => humantime::parse_duration(a).map_err(|e| err(format!("period {a:?}: {e}")))?,
                };
                if period.is_zero() {
                    return Err(err(format!("period {a} must be positive")));
                }
                Ok(Workload::Sine { period })
            }
            ("idle" | "training", Some(_)) => Err(err(format!("{kind} takes no argument"))),
            ("constant" | "sine", None) => Err(err(format!("{kind} needs an argument after ':'"))),
            _ => Err(err(format!("unknown profile {kind:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_parse_and_round_trip() {
        let cases = [
            ("idle", Workload::Idle),
            ("training", Workload::Training),
            ("constant:0.5", Workload::Constant(0.5)),
            ("constant:1", Workload::Constant(1.0)),
            (
                "sine:30",
                Workload::Sine {
                    period: Duration::from_secs(30),
                },
            ),
            (
                "sine:1m",
                Workload::Sine {
                    period: Duration::from_secs(60),
                },
            ),
        ];
        for (text, want) in cases {
            let got: Workload = text.parse().unwrap();
            assert_eq!(got, want, "{text}");
            assert_eq!(got.to_string().parse::<Workload>().unwrap(), want, "{text}");
        }
        assert_eq!(Workload::default(), Workload::Training);
    }

    #[test]
    fn bad_profiles_say_what_is_wrong() {
        for (text, needle) in [
            ("constant:1.5", "outside 0..1"),
            ("constant:-0.1", "outside 0..1"),
            ("constant:half", "not a number"),
            ("constant", "needs an argument"),
            ("sine:0", "must be positive"),
            ("sine:soon", "period"),
            ("idle:3", "takes no argument"),
            ("inference", "unknown profile"),
        ] {
            let e = text.parse::<Workload>().unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
            assert!(e.contains("constant:<0..1>"), "{text}: {e}");
        }
    }

    #[test]
    fn training_is_high_with_periodic_dips() {
        let w = Workload::Training;
        for gpu in 0..8 {
            for step in 0..(TRAINING_PERIOD_S as usize * 4) {
                let t = step as f64 * 0.25;
                let u = w.utilization(t, gpu);
                let in_dip = t >= TRAINING_PERIOD_S - TRAINING_DIP_S;
                if in_dip {
                    assert_eq!(u, TRAINING_DIP_UTIL, "t={t}");
                } else {
                    assert!(u > 0.85 && u <= 0.97, "t={t} u={u}");
                }
            }
        }
        // Periodic and deterministic.
        assert_eq!(
            w.utilization(3.0, 2),
            w.utilization(3.0 + 2.0 * TRAINING_PERIOD_S, 2)
        );
        // The GPUs are not in lockstep between dips.
        assert_ne!(w.utilization(3.0, 0), w.utilization(3.0, 1));
    }

    #[test]
    fn sine_and_constant_follow_their_formula() {
        let w = Workload::Sine {
            period: Duration::from_secs(20),
        };
        assert!((w.utilization(0.0, 0) - 0.5).abs() < 1e-9);
        assert!((w.utilization(5.0, 3) - 1.0).abs() < 1e-9);
        assert!(w.utilization(15.0, 3).abs() < 1e-9);
        assert_eq!(Workload::Constant(0.3).utilization(123.4, 5), 0.3);
        assert_eq!(Workload::Idle.utilization(9.0, 0), 0.0);
    }
}
