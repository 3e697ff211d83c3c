//! The power model of one simulated node.
//!
//! Demand follows the workload: per GPU `idle + util * (max - idle)`, and for
//! the rest of the node `rest_idle + mean_util * (rest_max - rest_idle)`.
//! Limits cut the GPUs' targets: a GPU limit caps that GPU; a node limit
//! leaves the rest of the node alone (it cannot be throttled) and shares what
//! remains between the GPUs by water-filling (every GPU above a common cap is
//! cut to it, never below the GPUs' lowest cap). The modelled draw follows
//! the target with a lag that ends: a first-order lag of time constant
//! [`TAU_S`] plus a constant slew, sized so that any step — the largest is a
//! GPU from its maximum to zero — is closed within [`CORRECTION_S`], the
//! `CorrectionInMs` the BMC advertises. From then on the draw is the target
//! exactly, so a new limit is met (not approached) within a second.
//!
//! Nothing runs in the background: [`PowerModel::advance`] integrates from
//! the last time it was called to the time it is given. The caller owns the
//! clock (tests pass times directly).

use std::collections::VecDeque;

use super::model::ModelSpec;
use super::workload::Workload;

/// Time constant of the exponential part of the draw's response to a
/// change of demand or limit.
pub const TAU_S: f64 = 0.75;
/// A change of demand or limit is met within this (`PowerLimit.CorrectionInMs`
/// is this in milliseconds): the draw is at its target after it, whatever the step.
pub const CORRECTION_S: f64 = 1.0;
/// Integration step near the present.
const STEP_S: f64 = 0.05;
/// Integration step for stretches long past (the lag has long settled there).
const COARSE_STEP_S: f64 = 0.5;
/// Stretches older than this before `now` use the coarse step.
const FINE_WINDOW_S: f64 = 10.0;
/// `PowerMetrics.IntervalInMin` (1): min/max/average over this window.
pub const METRICS_WINDOW_S: f64 = 60.0;

/// Min, max and average of the node draw over the last [`METRICS_WINDOW_S`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PowerStats {
    pub min: f64,
    pub max: f64,
    pub average: f64,
}

#[derive(Debug, Clone)]
pub struct PowerModel {
    spec: ModelSpec,
    workload: Workload,
    /// Whether the node has power; without it every part draws nothing.
    powered: bool,
    node_limit: Option<f64>,
    gpu_limits: Vec<Option<f64>>,
    /// Seconds since the start, up to which the state below is integrated.
    t: f64,
    gpu_draw: Vec<f64>,
    rest_draw: f64,
    gpu_energy_j: Vec<f64>,
    rest_energy_j: f64,
    /// One node-draw sample per whole second, the last minute of them.
    samples: VecDeque<(f64, f64)>,
}

impl PowerModel {
    /// A node at time 0, already settled at its demand.
    pub fn new(spec: ModelSpec, workload: Workload) -> PowerModel {
        let mut m = PowerModel {
            spec,
            workload,
            powered: true,
            node_limit: None,
            gpu_limits: vec![None; spec.gpus],
            t: 0.0,
            gpu_draw: vec![0.0; spec.gpus],
            rest_draw: 0.0,
            gpu_energy_j: vec![0.0; spec.gpus],
            rest_energy_j: 0.0,
            samples: VecDeque::new(),
        };
        let (gpus, rest) = m.targets(0.0);
        m.gpu_draw = gpus;
        m.rest_draw = rest;
        m.samples.push_back((0.0, m.node_draw()));
        m
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Seconds since the start the state is integrated up to.
    pub fn time(&self) -> f64 {
        self.t
    }

    /// Integrate up to `now` (seconds since the start). A time in the past is ignored.
    pub fn advance(&mut self, now: f64) {
        while self.t < now {
            let step = if now - self.t > FINE_WINDOW_S {
                COARSE_STEP_S
            } else {
                STEP_S
            };
            let dt = step.min(now - self.t);
            let end = self.t + dt;
            let (gpu_targets, rest_target) = self.targets(end);
            let gpu_slew = slew_for(self.spec.gpu_max_watts);
            for ((draw, energy), target) in self
                .gpu_draw
                .iter_mut()
                .zip(self.gpu_energy_j.iter_mut())
                .zip(gpu_targets)
            {
                let next = approach(*draw, target, gpu_slew, dt);
                *energy += 0.5 * (*draw + next) * dt;
                *draw = next;
            }
            let next = approach(
                self.rest_draw,
                rest_target,
                slew_for(self.spec.rest_max_watts),
                dt,
            );
            self.rest_energy_j += 0.5 * (self.rest_draw + next) * dt;
            self.rest_draw = next;
            let crossed_second = end.floor() > self.t.floor();
            self.t = end;
            if crossed_second {
                let draw = self.node_draw();
                self.samples.push_back((end, draw));
                while self
                    .samples
                    .front()
                    .is_some_and(|(t, _)| *t <= end - METRICS_WINDOW_S)
                {
                    self.samples.pop_front();
                }
            }
        }
    }

    /// What each GPU and the rest of the node would draw at `t` once settled:
    /// demand cut by the limits.
    pub fn targets(&self, t: f64) -> (Vec<f64>, f64) {
        let s = &self.spec;
        if !self.powered {
            return (vec![0.0; s.gpus], 0.0);
        }
        let utils: Vec<f64> = (0..s.gpus).map(|g| self.workload.utilization(t, g)).collect();
        let mean = if utils.is_empty() {
            0.0
        } else {
            utils.iter().sum::<f64>() / utils.len() as f64
        };
        let rest = s.rest_idle_watts + mean * (s.rest_max_watts - s.rest_idle_watts);
        let mut gpus: Vec<f64> = utils
            .iter()
            .zip(&self.gpu_limits)
            .map(|(u, limit)| {
                let demand = s.gpu_idle_watts + u * (s.gpu_max_watts - s.gpu_idle_watts);
                limit.map_or(demand, |l| demand.min(l))
            })
            .collect();
        if let Some(limit) = self.node_limit {
            let budget = limit - rest;
            if gpus.iter().sum::<f64>() > budget {
                let cap = water_fill(&gpus, budget).max(s.gpu_min_cap_watts);
                for g in &mut gpus {
                    *g = g.min(cap);
                }
            }
        }
        (gpus, rest)
    }

    /// The node's draw now: the GPUs and the rest.
    pub fn node_draw(&self) -> f64 {
        self.rest_draw + self.gpu_draw.iter().sum::<f64>()
    }

    pub fn gpu_draws(&self) -> &[f64] {
        &self.gpu_draw
    }

    /// Energy since the start, the whole node, in joules.
    pub fn node_energy_j(&self) -> f64 {
        self.rest_energy_j + self.gpu_energy_j.iter().sum::<f64>()
    }

    /// Energy since the start of GPU `gpu`, in joules. Panics if out of range.
    pub fn gpu_energy_j(&self, gpu: usize) -> f64 {
        self.gpu_energy_j[gpu]
    }

    pub fn stats(&self) -> PowerStats {
        let mut min = f64::INFINITY;
        let mut max = f64::NEG_INFINITY;
        let mut sum = 0.0;
        for (_, w) in &self.samples {
            min = min.min(*w);
            max = max.max(*w);
            sum += w;
        }
        if self.samples.is_empty() {
            let d = self.node_draw();
            return PowerStats {
                min: d,
                max: d,
                average: d,
            };
        }
        PowerStats {
            min,
            max,
            average: sum / self.samples.len() as f64,
        }
    }

    pub fn workload(&self) -> Workload {
        self.workload
    }

    /// Takes effect from the model's current time; call [`advance`](Self::advance) first.
    pub fn set_workload(&mut self, workload: Workload) {
        self.workload = workload;
    }

    /// Whether the node has power.
    pub fn powered(&self) -> bool {
        self.powered
    }

    /// Remove or restore the node's power from the model's current time
    /// (call [`advance`](Self::advance) first). Removing it drops every
    /// draw to zero at once (a power cut, not a lag); restoring it lets the
    /// draw rise to the demand with the usual lag. Limits are kept.
    pub fn set_powered(&mut self, powered: bool) {
        if !powered {
            self.gpu_draw.iter_mut().for_each(|d| *d = 0.0);
            self.rest_draw = 0.0;
        }
        self.powered = powered;
    }

    pub fn node_limit(&self) -> Option<f64> {
        self.node_limit
    }

    /// Accepted node limits: `[node_min_cap, node_max]`.
    pub fn node_limit_range(&self) -> (f64, f64) {
        (self.spec.node_min_cap_watts(), self.spec.node_max_watts())
    }

    /// Accepted GPU limits: `[gpu_min_cap, gpu_max]`.
    pub fn gpu_limit_range(&self) -> (f64, f64) {
        (self.spec.gpu_min_cap_watts, self.spec.gpu_max_watts)
    }

    /// Set or clear the node limit; out of range (or not finite) changes nothing.
    pub fn set_node_limit(&mut self, limit: Option<f64>) -> Result<(), OutOfRange> {
        if let Some(w) = limit {
            check_range(w, self.node_limit_range())?;
        }
        self.node_limit = limit;
        Ok(())
    }

    pub fn gpu_limit(&self, gpu: usize) -> Option<f64> {
        self.gpu_limits.get(gpu).copied().flatten()
    }

    /// Set or clear the limit of GPU `gpu` (0-based). Panics if out of range of the GPUs.
    pub fn set_gpu_limit(&mut self, gpu: usize, limit: Option<f64>) -> Result<(), OutOfRange> {
        if let Some(w) = limit {
            check_range(w, self.gpu_limit_range())?;
        }
        self.gpu_limits[gpu] = limit;
        Ok(())
    }
}

/// A limit outside what the device accepts.
#[derive(Debug, Clone, Copy, PartialEq, thiserror::Error)]
#[error("{value} W is outside the allowed range {min}..={max} W")]
pub struct OutOfRange {
    pub value: f64,
    pub min: f64,
    pub max: f64,
}

fn check_range(value: f64, (min, max): (f64, f64)) -> Result<(), OutOfRange> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(OutOfRange { value, min, max })
    }
}

/// The constant slew (W/s) that, added to the [`TAU_S`] lag, closes a gap of
/// `span` watts in exactly [`CORRECTION_S`]: the gap `e` obeys
/// `de/dt = -(e/TAU + r)`, which reaches 0 at `TAU * ln(1 + e0 / (r * TAU))`.
fn slew_for(span: f64) -> f64 {
    span.max(1.0) / (TAU_S * ((CORRECTION_S / TAU_S).exp() - 1.0))
}

/// `draw` moved towards `target` over `dt` seconds (the exact solution of
/// the lag with slew `slew` for a target held over the step), stopping at
/// the target.
fn approach(draw: f64, target: f64, slew: f64, dt: f64) -> f64 {
    let gap = (draw - target).abs();
    let rt = slew * TAU_S;
    let left = (gap + rt) * (-dt / TAU_S).exp() - rt;
    if left <= 0.0 {
        target
    } else if draw > target {
        target + left
    } else {
        target - left
    }
}

/// The cap `c` with `sum(min(x, c)) == budget`, for `budget < sum(xs)`
/// (0 when the budget is not positive).
fn water_fill(xs: &[f64], budget: f64) -> f64 {
    if budget <= 0.0 {
        return 0.0;
    }
    let mut sorted = xs.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mut left = budget;
    let mut n = sorted.len();
    for x in sorted {
        let share = left / n as f64;
        if x >= share {
            return share;
        }
        left -= x;
        n -= 1;
    }
    // Every value fits: the budget is not binding.
    f64::INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bmc::model::Model;

    fn model(m: Model, w: Workload) -> PowerModel {
        PowerModel::new(*m.spec(), w)
    }

    #[test]
    fn demand_follows_the_profile() {
        let s = *Model::DgxH100.spec();
        let idle = model(Model::DgxH100, Workload::Idle);
        assert!((idle.node_draw() - s.node_idle_watts()).abs() < 1e-9);
        let full = model(Model::DgxH100, Workload::Constant(1.0));
        assert!((full.node_draw() - s.node_max_watts()).abs() < 1e-9);
        let half = model(Model::DgxH100, Workload::Constant(0.5));
        let want = (s.node_idle_watts() + s.node_max_watts()) / 2.0;
        assert!((half.node_draw() - want).abs() < 1e-9);
        for g in half.gpu_draws() {
            assert!((g - (75.0 + 0.5 * 625.0)).abs() < 1e-9);
        }
        // Training: high between dips, lower in them.
        let tr = model(Model::DgxB200, Workload::Training);
        let (busy, _) = tr.targets(10.0);
        let (dip, _) = tr.targets(38.0);
        assert!(busy.iter().sum::<f64>() > 2.0 * dip.iter().sum::<f64>());
    }

    #[test]
    fn the_draw_settles_under_a_new_node_limit() {
        for m in Model::ALL {
            let (min, max) = (m.spec().node_min_cap_watts(), m.spec().node_max_watts());
            // The largest step down (full load to the lowest cap) and a middling one.
            for limit in [min, min + 0.25 * (max - min)] {
                let mut p = model(m, Workload::Constant(1.0));
                p.advance(10.0);
                assert!((p.node_draw() - max).abs() < 1e-6);
                p.set_node_limit(Some(limit)).unwrap();
                p.advance(10.0 + CORRECTION_S / 4.0);
                // A lag, not a jump.
                assert!(p.node_draw() > limit * 1.01, "{m}: {}", p.node_draw());
                // Met within CorrectionInMs, not approached.
                p.advance(10.0 + CORRECTION_S);
                let d = p.node_draw();
                assert!(
                    d <= limit + 1e-6,
                    "{m}: {d} W {CORRECTION_S} s after a {limit} W limit"
                );
                p.advance(30.0);
                let d = p.node_draw();
                assert!((d - limit).abs() < 1e-6, "{m}: {d} vs {limit}");
                // The rest of the node is untouched; the GPUs took the cut, evenly.
                let g = p.gpu_draws();
                assert!(g.iter().all(|x| (x - g[0]).abs() < 1e-6));
                assert!(g[0] >= p.spec().gpu_min_cap_watts - 1e-6);
            }
        }
    }

    proptest::proptest! {
        /// Any model, load and limit, cut at any time: the draw is at or
        /// under the limit CorrectionInMs later, and stays there.
        #[test]
        fn a_limit_is_met_within_the_advertised_correction_time(
            m in 0..Model::ALL.len(),
            load in 0.0f64..=1.0,
            at in 0.0f64..120.0,
            frac in 0.0f64..=1.0,
            gpu_cut in proptest::option::of((0usize..8, 0.0f64..=1.0)),
        ) {
            let m = Model::ALL[m];
            let mut p = model(m, Workload::Constant(load));
            p.advance(at);
            if let Some((g, f)) = gpu_cut {
                let g = g % p.spec().gpus;
                let (lo, hi) = p.gpu_limit_range();
                let w = lo + f * (hi - lo);
                p.set_gpu_limit(g, Some(w)).unwrap();
                p.advance(at + CORRECTION_S);
                proptest::prop_assert!(p.gpu_draws()[g] <= w + 1e-6);
            }
            let t0 = p.time();
            let (lo, hi) = p.node_limit_range();
            let limit = lo + frac * (hi - lo);
            p.set_node_limit(Some(limit)).unwrap();
            for k in 0..20 {
                p.advance(t0 + CORRECTION_S + f64::from(k) * 0.37);
                let d = p.node_draw();
                proptest::prop_assert!(d <= limit + 1e-6, "{m}: {d} W > {limit} W");
            }
        }
    }

    #[test]
    fn the_lowest_node_limit_is_reachable() {
        let mut p = model(Model::DgxH100, Workload::Constant(1.0));
        let (min, _) = p.node_limit_range();
        p.set_node_limit(Some(min)).unwrap();
        p.advance(20.0);
        assert!(p.node_draw() <= min + 1e-3, "{}", p.node_draw());
    }

    #[test]
    fn a_limit_above_demand_changes_nothing_and_clearing_restores_demand() {
        let mut p = model(Model::DgxB300, Workload::Constant(0.2));
        let before = p.node_draw();
        p.set_node_limit(Some(p.spec().node_max_watts())).unwrap();
        p.advance(10.0);
        assert!((p.node_draw() - before).abs() < 1e-6);
        p.set_node_limit(Some(p.node_limit_range().0)).unwrap();
        p.advance(20.0);
        p.set_node_limit(None).unwrap();
        p.advance(40.0);
        assert!((p.node_draw() - before).abs() < 1e-3);
    }

    #[test]
    fn node_limit_spares_gpus_under_the_common_cap() {
        let mut p = model(Model::DgxH100, Workload::Constant(1.0));
        // GPU 0 already limited low: the node cut falls on the others.
        p.set_gpu_limit(0, Some(200.0)).unwrap();
        p.set_node_limit(Some(8_000.0)).unwrap();
        let (gpus, rest) = p.targets(1.0);
        assert_eq!(gpus[0], 200.0);
        assert!((gpus.iter().sum::<f64>() + rest - 8_000.0).abs() < 1e-6);
        let cap = gpus[1];
        assert!(gpus[1..].iter().all(|g| (g - cap).abs() < 1e-9) && cap > 200.0);
    }

    #[test]
    fn gpu_limits_cap_their_gpu_only() {
        let mut p = model(Model::Gb200, Workload::Constant(1.0));
        p.set_gpu_limit(2, Some(500.0)).unwrap();
        p.advance(10.0);
        let g = p.gpu_draws();
        assert!((g[2] - 500.0).abs() < 0.1, "{g:?}");
        assert!((g[0] - 1_200.0).abs() < 1e-6, "{g:?}");
        assert_eq!(p.gpu_limit(2), Some(500.0));
        assert_eq!(p.gpu_limit(1), None);
    }

    #[test]
    fn out_of_range_limits_change_nothing() {
        let mut p = model(Model::DgxH100, Workload::Training);
        p.set_node_limit(Some(9_000.0)).unwrap();
        let (min, max) = p.node_limit_range();
        for bad in [min - 1.0, max + 1.0, f64::NAN, f64::INFINITY, -5.0] {
            let e = p.set_node_limit(Some(bad)).unwrap_err();
            assert_eq!((e.min, e.max), (min, max));
            assert_eq!(p.node_limit(), Some(9_000.0));
        }
        assert!(p.set_gpu_limit(0, Some(100.0)).is_err());
        assert!(p.set_gpu_limit(0, Some(701.0)).is_err());
        assert_eq!(p.gpu_limit(0), None);
    }

    #[test]
    fn energy_integrates_the_draw() {
        let mut p = model(Model::DgxH100, Workload::Constant(0.5));
        let w = p.node_draw();
        p.advance(3_600.0);
        let kwh = p.node_energy_j() / 3.6e6;
        assert!((kwh - w / 1_000.0).abs() < 1e-6, "{kwh}");
        let gpu0 = p.gpu_energy_j(0);
        assert!((gpu0 - p.gpu_draws()[0] * 3_600.0).abs() < 1e-3);
        // Advancing to the past or the same time adds nothing.
        p.advance(100.0);
        p.advance(3_600.0);
        assert!((p.node_energy_j() / 3.6e6 - kwh).abs() < 1e-12);
    }

    #[test]
    fn stats_cover_the_last_minute() {
        let mut p = model(Model::DgxH100, Workload::Idle);
        p.advance(120.0);
        let idle = p.node_draw();
        p.set_workload(Workload::Constant(1.0));
        p.advance(150.0);
        let s = p.stats();
        assert!((s.min - idle).abs() < 1.0, "{s:?}");
        assert!((s.max - p.spec().node_max_watts()).abs() < 1.0, "{s:?}");
        assert!(s.min < s.average && s.average < s.max);
        p.advance(300.0);
        let s = p.stats();
        assert!((s.min - s.max).abs() < 1e-6, "{s:?}");
    }

    #[test]
    fn water_fill_meets_the_budget() {
        assert_eq!(water_fill(&[100.0, 100.0], 150.0), 75.0);
        assert_eq!(water_fill(&[10.0, 100.0, 100.0], 110.0), 50.0);
        assert_eq!(water_fill(&[10.0, 20.0], 100.0), f64::INFINITY);
        assert_eq!(water_fill(&[10.0], -1.0), 0.0);
    }
}

#[cfg(test)]
mod power_off_tests {
    use super::*;
    use crate::bmc::model::Model;

    #[test]
    fn without_power_nothing_is_drawn_and_limits_stay() {
        let mut p = PowerModel::new(*Model::DgxH100.spec(), Workload::Constant(1.0));
        p.set_node_limit(Some(8_000.0)).unwrap();
        p.advance(5.0);
        assert!(p.node_draw() > 7_000.0, "{}", p.node_draw());
        let energy = p.node_energy_j();
        p.set_powered(false);
        assert!(!p.powered());
        assert_eq!(p.node_draw(), 0.0);
        p.advance(10.0);
        assert_eq!(p.node_draw(), 0.0);
        assert!(p.gpu_draws().iter().all(|w| *w == 0.0));
        assert_eq!(p.node_energy_j(), energy, "nothing is used while off");
        assert_eq!(p.node_limit(), Some(8_000.0));
        p.set_gpu_limit(0, Some(300.0)).unwrap();
        p.set_powered(true);
        p.advance(10.0 + CORRECTION_S);
        let (gpus, rest) = p.targets(p.time());
        assert!((p.node_draw() - (rest + gpus.iter().sum::<f64>())).abs() < 1e-6);
        assert!(p.node_draw() <= 8_000.0 + 1e-6, "{}", p.node_draw());
        assert!(p.gpu_draws()[0] <= 300.0 + 1e-6);
        assert!(p.node_energy_j() > energy);
    }
}
