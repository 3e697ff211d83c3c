//! The NVIDIA GPU facet, through NVML loaded at run time
//! (`libnvidia-ml.so.1` via nvml-wrapper, which dlopens it): a host without
//! the library simply has no GPU source — the same binary runs everywhere.
//! Reading (here): per GPU the power NVML measures
//! (`nvmlDeviceGetPowerUsage`, mW) and the energy counter
//! (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver loaded).
//! Limiting ([`limit`]): the GPU's power management limit. Both use the one
//! process-wide NVML handle ([`shared`]). When the library is there but NVML
//! does not initialise (the driver not loaded yet), it is tried again every
//! [`RETRY_INIT`]. Every NVML call blocks: callers run them on a blocking
//! thread (the sampler's `spawn_blocking`, the limiter's own).
mod limit;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use super::{Method, Reading, Scope};

/// How long after NVML failed to initialise (with its library present) it
/// is tried again.
pub const RETRY_INIT: Duration = Duration::from_secs(60);

pub use super::EnergySince;
pub use limit::NvmlLimiter;

type Init = fn() -> Result<Arc<Nvml>, NvmlError>;

/// The process's NVML handle, initialised on first success and shared by
/// the readings and the limits (NVML's own init is process-wide too).
/// Blocking.
pub fn shared() -> Result<Arc<Nvml>, NvmlError> {
    static HANDLE: Mutex<Option<Arc<Nvml>>> = Mutex::new(None);
    let mut h = HANDLE.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(n) = h.as_ref() {
        return Ok(n.clone());
    }
    let n = Arc::new(Nvml::init()?);
    *h = Some(n.clone());
    Ok(n)
}

pub struct Gpus {
    nvml: Option<Arc<Nvml>>,
    /// (name, uuid) per index, read once.
    ids: Vec<String>,
    energy: Vec<EnergySince>,
    /// Why there is no GPU source, when there is none.
    pub absent: Option<String>,
    /// When to try NVML again: set while its library is there but it did
    /// not initialise or count the GPUs.
    retry_at: Option<Instant>,
    init: Init,
}

impl Gpus {
    pub fn discover() -> Gpus {
        Gpus::discover_with(shared, Instant::now())
    }

    fn discover_with(init: Init, now: Instant) -> Gpus {
        let none = |why: String, retry: bool| Gpus {
            nvml: None,
            ids: Vec::new(),
            energy: Vec::new(),
            absent: Some(why),
            retry_at: retry.then(|| now + RETRY_INIT),
            init,
        };
        let nvml = match init() {
            Ok(n) => n,
            // No driver on this host: no GPU source, and no point trying again.
            Err(NvmlError::LibloadingError(e)) => {
                return none(
                    format!("libnvidia-ml.so.1 could not be loaded ({e}): no GPU source on this host"),
                    false,
                );
            }
            Err(e) => return none(format!("NVML did not initialise: {e}"), true),
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => return none(format!("NVML could not count GPUs: {e}"), true),
        };
        let ids = (0..count).map(|i| device_id(&nvml, i)).collect();
        let absent = (count == 0).then(|| "NVML loaded but reports no GPU".to_string());
        Gpus {
            nvml: Some(nvml),
            ids,
            energy: vec![EnergySince::default(); count as usize],
            absent,
            retry_at: None,
            init,
        }
    }

    /// Try NVML again when it is due; a change is logged once.
    fn retry(&mut self, now: Instant) {
        if self.retry_at.is_none_or(|at| now < at) {
            return;
        }
        let again = Gpus::discover_with(self.init, now);
        match &again.absent {
            None => tracing::info!(gpus = again.ids.len(), "NVML initialised: GPUs found"),
            Some(why) if again.absent != self.absent => {
                tracing::info!(%why, "still no GPU source");
            }
            Some(_) => {}
        }
        *self = again;
    }

    pub fn sample(&mut self, now: Instant) -> Vec<Reading> {
        self.retry(now);
        let Some(nvml) = &self.nvml else { return Vec::new() };
        (0..self.ids.len())
            .map(|i| {
                let mut r = Reading {
                    source: "nvml",
                    scope: Scope::Gpu,
                    device: self.ids[i].clone(),
                    watts: None,
                    energy_joules: None,
                    method: Method::Measured,
                    window: None,
                    age: None,
                    error: None,
                };
                match nvml.device_by_index(i as u32) {
                    Err(e) => r.error = Some(format!("NVML device {i}: {e}")),
                    Ok(d) => {
                        match d.power_usage() {
                            Ok(mw) => r.watts = Some(f64::from(mw) / 1e3),
                            Err(e) => r.error = Some(format!("NVML power usage of GPU {i}: {e}")),
                        }
                        // Energy since the agent first read it (the counter runs since driver load).
                        if let Ok(mj) = d.total_energy_consumption() {
                            r.energy_joules = Some(self.energy[i].add(mj));
                        }
                    }
                }
                r
            })
            .collect()
    }
}

/// How a GPU is named in readings and cap reports: `gpu<index>:<name>:<uuid>`.
pub fn device_id(nvml: &Nvml, i: u32) -> String {
    let d = nvml.device_by_index(i);
    let name = d.as_ref().ok().and_then(|d| d.name().ok()).unwrap_or_default();
    let uuid = d.as_ref().ok().and_then(|d| d.uuid().ok()).unwrap_or_default();
    format!("gpu{i}:{name}:{uuid}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a host without the NVIDIA driver this says why and reads nothing;
    /// on a GPU host it reads every GPU (run it there with `--nocapture`).
    #[test]
    fn a_host_without_nvml_has_no_gpu_source_and_says_why() {
        let mut g = Gpus::discover();
        let readings = g.sample(Instant::now());
        match &g.absent {
            Some(why) => {
                assert!(readings.is_empty());
                if why.contains("could not be loaded") {
                    assert!(g.retry_at.is_none(), "no library: not tried again");
                }
                assert!(why.contains("libnvidia-ml") || why.contains("NVML"), "{why}");
                eprintln!("no GPU source: {why}");
            }
            None => {
                assert!(!readings.is_empty());
                for r in &readings {
                    eprintln!("{} {:?} W", r.device, r.watts);
                    assert!(r.error.is_none(), "{r:?}");
                    assert!(r.watts.is_some_and(|w| w > 0.0), "{r:?}");
                }
            }
        }
    }

    #[test]
    fn energy_counts_the_increases_and_survives_a_counter_reset() {
        let mut e = EnergySince::default();
        assert_eq!(e.add(5_000_000), 0.0, "the first reading is the baseline");
        assert_eq!(e.add(5_001_500), 1.5);
        assert_eq!(e.add(5_003_000), 3.0);
        // A driver reload: the counter starts over near 0.
        assert_eq!(e.add(200), 3.0, "the reset adds nothing");
        assert_eq!(e.add(1_200), 4.0, "and counting goes on from the new value");
        assert_eq!(e.add(1_200), 4.0);
    }

    static INIT_CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

    fn driver_not_loaded() -> Result<Arc<Nvml>, NvmlError> {
        INIT_CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(NvmlError::DriverNotLoaded)
    }

    #[test]
    fn nvml_that_did_not_initialise_is_tried_again_after_a_while() {
        let calls = || INIT_CALLS.load(std::sync::atomic::Ordering::SeqCst);
        let t0 = Instant::now();
        let mut g = Gpus::discover_with(driver_not_loaded, t0);
        assert_eq!(calls(), 1);
        assert!(
            g.absent.as_deref().unwrap().contains("did not initialise"),
            "{:?}",
            g.absent
        );
        assert!(g.sample(t0 + Duration::from_secs(1)).is_empty());
        assert!(g.sample(t0 + RETRY_INIT / 2).is_empty());
        assert_eq!(calls(), 1, "not before RETRY_INIT");
        assert!(g.sample(t0 + RETRY_INIT).is_empty());
        assert_eq!(calls(), 2, "tried again");
        assert!(g.sample(t0 + RETRY_INIT + Duration::from_secs(1)).is_empty());
        assert_eq!(calls(), 2, "and then not before another RETRY_INIT");
        assert!(g.sample(t0 + RETRY_INIT * 2).is_empty());
        assert_eq!(calls(), 3);
    }
}
