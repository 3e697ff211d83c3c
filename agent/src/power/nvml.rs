//! NVIDIA GPUs through NVML, loaded at run time (`libnvidia-ml.so.1` via
//! nvml-wrapper, which dlopens it): a host without the library simply has no
//! GPU source — the same binary runs everywhere. Per GPU: the power NVML
//! measures (`nvmlDeviceGetPowerUsage`, mW) and the energy counter
//! (`nvmlDeviceGetTotalEnergyConsumption`, mJ since the driver loaded).
use std::time::Instant;

use nvml_wrapper::Nvml;
use nvml_wrapper::error::NvmlError;

use super::{Method, Reading, Scope};

pub struct Gpus {
    nvml: Option<Nvml>,
    /// (name, uuid) per index, read once.
    ids: Vec<String>,
    first_mj: Vec<Option<u64>>,
    /// Why there is no GPU source, when there is none.
    pub absent: Option<String>,
}

impl Gpus {
    pub fn discover() -> Gpus {
        let none = |why: String| Gpus {
            nvml: None,
            ids: Vec::new(),
            first_mj: Vec::new(),
            absent: Some(why),
        };
        let nvml = match Nvml::init() {
            Ok(n) => n,
            Err(NvmlError::LibloadingError(e)) => {
                return none(format!(
                    "libnvidia-ml.so.1 could not be loaded ({e}): no GPU source on this host"
                ));
            }
            Err(e) => return none(format!("NVML did not initialise: {e}")),
        };
        let count = match nvml.device_count() {
            Ok(c) => c,
            Err(e) => return none(format!("NVML could not count GPUs: {e}")),
        };
        let ids = (0..count).map(|i| device_id(&nvml, i)).collect();
        let absent = (count == 0).then(|| "NVML loaded but reports no GPU".to_string());
        Gpus {
            nvml: Some(nvml),
            ids,
            first_mj: vec![None; count as usize],
            absent,
        }
    }

    pub fn sample(&mut self, now: Instant) -> Vec<Reading> {
        let _ = now;
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
                            let first = *self.first_mj[i].get_or_insert(mj);
                            r.energy_joules = Some(mj.saturating_sub(first) as f64 / 1e3);
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
}
