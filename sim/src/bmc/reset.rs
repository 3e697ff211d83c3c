//! The simulated system's power state and what `ComputerSystem.Reset` does
//! to it (DMTF ComputerSystem schema, `ResetType` of the Resource schema).
//!
//! Like the power model, nothing runs in the background: a reset that takes
//! time (a power cycle, a graceful shutdown or restart) queues the states it
//! passes through with the time each begins, and the BMC applies them when
//! it next looks at its state ([`SystemPower::next_at`], [`SystemPower::fire`]).
//!
//! - `On`: an Off system is On at once; otherwise nothing changes.
//! - `ForceOff`: Off at once, whatever was under way.
//! - `GracefulShutdown`: PoweringOff (the OS shutting down), Off after the
//!   transition delay; nothing changes on a system already Off or PoweringOff.
//! - `GracefulRestart`: PoweringOff, then On after the delay (power is not
//!   removed); an Off system is On at once.
//! - `ForceRestart`: the host restarts with power kept (PowerState stays On);
//!   an Off system is On at once.
//! - `PowerCycle`: power removed at once (Off), restored after the delay (On),
//!   from any state; counted in [`SystemPower::power_cycles`].

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;
use std::time::Duration;

/// How long a power cycle leaves the system Off, and a graceful shutdown or
/// restart stays PoweringOff, unless the BMC is told otherwise.
pub const DEFAULT_TRANSITION: Duration = Duration::from_secs(1);

/// `PowerState` of the system (Resource.PowerState).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
}

impl PowerState {
    /// The Redfish enum member.
    pub fn name(self) -> &'static str {
        match self {
            PowerState::On => "On",
            PowerState::Off => "Off",
            PowerState::PoweringOn => "PoweringOn",
            PowerState::PoweringOff => "PoweringOff",
        }
    }

    /// Whether the node has power (and draws it): every state but Off.
    pub fn powered(self) -> bool {
        self != PowerState::Off
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The `ResetType` values the simulated system accepts
/// (`ResetType@Redfish.AllowableValues`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ResetType {
    On,
    ForceOff,
    GracefulShutdown,
    GracefulRestart,
    ForceRestart,
    PowerCycle,
}

impl ResetType {
    pub const ALL: [ResetType; 6] = [
        ResetType::On,
        ResetType::ForceOff,
        ResetType::GracefulShutdown,
        ResetType::GracefulRestart,
        ResetType::ForceRestart,
        ResetType::PowerCycle,
    ];

    /// The Redfish enum member.
    pub fn name(self) -> &'static str {
        match self {
            ResetType::On => "On",
            ResetType::ForceOff => "ForceOff",
            ResetType::GracefulShutdown => "GracefulShutdown",
            ResetType::GracefulRestart => "GracefulRestart",
            ResetType::ForceRestart => "ForceRestart",
            ResetType::PowerCycle => "PowerCycle",
        }
    }
}

impl fmt::Display for ResetType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A `ResetType` the simulated system does not accept (Redfish enum members
/// are case-sensitive: `powercycle` is refused).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unsupported ResetType {given:?}: expected one of On, ForceOff, GracefulShutdown, GracefulRestart, ForceRestart, PowerCycle"
)]
pub struct UnknownResetType {
    pub given: String,
}

impl FromStr for ResetType {
    type Err = UnknownResetType;

    fn from_str(s: &str) -> Result<ResetType, UnknownResetType> {
        ResetType::ALL
            .into_iter()
            .find(|r| r.name() == s)
            .ok_or_else(|| UnknownResetType { given: s.to_string() })
    }
}

/// The system's power: its state now, the states queued by a reset under
/// way, and how many resets of each type it has been given.
#[derive(Debug, Clone)]
pub struct SystemPower {
    state: PowerState,
    /// (seconds since the start, the state that begins then), in time order.
    pending: VecDeque<(f64, PowerState)>,
    transition_s: f64,
    resets: BTreeMap<ResetType, u64>,
}

impl Default for SystemPower {
    fn default() -> SystemPower {
        SystemPower::new(DEFAULT_TRANSITION)
    }
}

impl SystemPower {
    /// A system that is On, with `transition` as its power-cycle and
    /// graceful-shutdown time.
    pub fn new(transition: Duration) -> SystemPower {
        SystemPower {
            state: PowerState::On,
            pending: VecDeque::new(),
            transition_s: transition.as_secs_f64(),
            resets: BTreeMap::new(),
        }
    }

    pub fn state(&self) -> PowerState {
        self.state
    }

    pub fn transition(&self) -> Duration {
        Duration::from_secs_f64(self.transition_s)
    }

    /// Applies to resets from now on; one under way keeps its times.
    pub fn set_transition(&mut self, transition: Duration) {
        self.transition_s = transition.as_secs_f64();
    }

    /// When the next queued state begins (seconds since the start), if any.
    pub fn next_at(&self) -> Option<f64> {
        self.pending.front().map(|(t, _)| *t)
    }

    /// Enter the next queued state; the new state, or None when none is queued.
    pub fn fire(&mut self) -> Option<PowerState> {
        let (_, state) = self.pending.pop_front()?;
        self.state = state;
        Some(state)
    }

    /// How many resets of type `t` were accepted.
    pub fn resets(&self, t: ResetType) -> u64 {
        self.resets.get(&t).copied().unwrap_or(0)
    }

    /// How many `PowerCycle` resets were accepted.
    pub fn power_cycles(&self) -> u64 {
        self.resets(ResetType::PowerCycle)
    }

    /// Every reset type with its count, zeros included.
    pub fn reset_counts(&self) -> impl Iterator<Item = (ResetType, u64)> + '_ {
        ResetType::ALL.into_iter().map(|t| (t, self.resets(t)))
    }

    /// Carry out `reset` at time `now` (seconds since the start): the state
    /// changes at once where the reset says so, later ones are queued.
    pub fn reset(&mut self, reset: ResetType, now: f64) {
        *self.resets.entry(reset).or_insert(0) += 1;
        let later = now + self.transition_s;
        let change: Option<(PowerState, Option<(f64, PowerState)>)> = match (reset, self.state) {
            (ResetType::On, PowerState::Off | PowerState::PoweringOff) => Some((PowerState::On, None)),
            (ResetType::On, PowerState::On | PowerState::PoweringOn) => None,
            (ResetType::ForceOff, _) => Some((PowerState::Off, None)),
            (ResetType::GracefulShutdown, PowerState::On | PowerState::PoweringOn) => {
                Some((PowerState::PoweringOff, Some((later, PowerState::Off))))
            }
            (ResetType::GracefulShutdown, PowerState::Off | PowerState::PoweringOff) => None,
            (ResetType::GracefulRestart | ResetType::ForceRestart, PowerState::Off) => {
                Some((PowerState::On, None))
            }
            (ResetType::GracefulRestart, _) => Some((PowerState::PoweringOff, Some((later, PowerState::On)))),
            (ResetType::ForceRestart, _) => Some((PowerState::On, None)),
            (ResetType::PowerCycle, _) => Some((PowerState::Off, Some((later, PowerState::On)))),
        };
        if let Some((state, queued)) = change {
            self.state = state;
            self.pending.clear();
            self.pending.extend(queued);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Run the queue up to `t`.
    fn settle(p: &mut SystemPower, t: f64) {
        while p.next_at().is_some_and(|at| at <= t) {
            p.fire();
        }
    }

    #[test]
    fn reset_types_parse_exactly() {
        for r in ResetType::ALL {
            assert_eq!(r.name().parse::<ResetType>(), Ok(r));
        }
        let e = "powercycle".parse::<ResetType>().unwrap_err();
        assert!(e.to_string().contains("\"powercycle\""), "{e}");
        assert!(e.to_string().contains("PowerCycle"), "{e}");
        assert!("Nmi".parse::<ResetType>().is_err());
    }

    #[test]
    fn a_power_cycle_is_off_then_on_after_the_delay_and_counted() {
        let mut p = SystemPower::new(Duration::from_millis(500));
        p.reset(ResetType::PowerCycle, 10.0);
        assert_eq!(p.state(), PowerState::Off);
        assert_eq!(p.next_at(), Some(10.5));
        settle(&mut p, 10.49);
        assert_eq!(p.state(), PowerState::Off);
        settle(&mut p, 10.5);
        assert_eq!(p.state(), PowerState::On);
        assert_eq!(p.next_at(), None);
        assert_eq!(p.power_cycles(), 1);
        // From Off, too: it comes back on.
        p.reset(ResetType::ForceOff, 20.0);
        p.reset(ResetType::PowerCycle, 21.0);
        settle(&mut p, 21.5);
        assert_eq!(p.state(), PowerState::On);
        assert_eq!(p.power_cycles(), 2);
        assert_eq!(p.resets(ResetType::ForceOff), 1);
    }

    #[test]
    fn force_off_cancels_what_was_under_way() {
        let mut p = SystemPower::new(Duration::from_secs(1));
        p.reset(ResetType::PowerCycle, 0.0);
        p.reset(ResetType::ForceOff, 0.2);
        settle(&mut p, 5.0);
        assert_eq!(p.state(), PowerState::Off);
        p.reset(ResetType::On, 6.0);
        assert_eq!(p.state(), PowerState::On);
        p.reset(ResetType::On, 7.0);
        assert_eq!(p.state(), PowerState::On);
        assert_eq!(p.resets(ResetType::On), 2);
    }

    #[test]
    fn graceful_resets_pass_through_powering_off() {
        let mut p = SystemPower::new(Duration::from_secs(2));
        p.reset(ResetType::GracefulShutdown, 0.0);
        assert_eq!(p.state(), PowerState::PoweringOff);
        assert!(p.state().powered());
        settle(&mut p, 1.9);
        assert_eq!(p.state(), PowerState::PoweringOff);
        settle(&mut p, 2.0);
        assert_eq!(p.state(), PowerState::Off);
        assert!(!p.state().powered());
        // A shutdown of a system that is off changes nothing.
        p.reset(ResetType::GracefulShutdown, 3.0);
        assert_eq!((p.state(), p.next_at()), (PowerState::Off, None));
        // Restarts of a system that is off power it on.
        p.reset(ResetType::GracefulRestart, 4.0);
        assert_eq!(p.state(), PowerState::On);
        p.reset(ResetType::GracefulRestart, 5.0);
        assert_eq!(p.state(), PowerState::PoweringOff);
        settle(&mut p, 7.0);
        assert_eq!(p.state(), PowerState::On);
        p.reset(ResetType::ForceRestart, 8.0);
        assert_eq!((p.state(), p.next_at()), (PowerState::On, None));
        assert_eq!(p.resets(ResetType::GracefulRestart), 2);
        assert_eq!(p.power_cycles(), 0);
    }
}
