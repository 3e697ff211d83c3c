//! NVML's limiting half: a GPU's power management limit, through the same
//! NVML handle the readings use ([`super::shared`]), each call on a blocking
//! thread (NVML calls block).
use std::sync::Arc;

use futures::future::BoxFuture;
use hostplane_proto::v1::PowerElement;
use nvml_wrapper::Nvml;

use crate::power::caps::{LimitError, Limiter};

/// A GPU's power management limit through NVML (needs root).
pub struct NvmlLimiter {
    nvml: Arc<Nvml>,
    index: u32,
    device: String,
}

impl NvmlLimiter {
    /// One per GPU NVML sees; none when the library is absent. Blocking.
    pub fn discover() -> Vec<NvmlLimiter> {
        let Ok(nvml) = super::shared() else {
            return Vec::new();
        };
        let count = nvml.device_count().unwrap_or(0);
        (0..count)
            .map(|i| NvmlLimiter {
                device: super::device_id(&nvml, i),
                nvml: nvml.clone(),
                index: i,
            })
            .collect()
    }
}

/// Run NVML calls on a blocking thread, never on an async worker.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LimitError> + Send + 'static,
) -> Result<T, LimitError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LimitError::Device(format!("the NVML thread failed: {e}")))?
}

fn apply_blocking(nvml: &Nvml, i: u32, watts: Option<f64>) -> Result<Option<f64>, LimitError> {
    let mut d = nvml
        .device_by_index(i)
        .map_err(|e| LimitError::Device(format!("NVML GPU {i}: {e}")))?;
    let mw = match watts {
        Some(w) => (w * 1e3).round() as u32,
        None => d
            .power_management_limit_default()
            .map_err(|e| LimitError::Device(format!("NVML default power limit of GPU {i}: {e}")))?,
    };
    d.set_power_management_limit(mw).map_err(|e| match e {
        nvml_wrapper::error::NvmlError::NoPermission => LimitError::NvmlNoPermission { gpu: i },
        e => LimitError::Device(format!("NVML set power limit of GPU {i} to {mw} mW: {e}")),
    })?;
    let now = d
        .enforced_power_limit()
        .map_err(|e| LimitError::Device(format!("NVML enforced power limit of GPU {i}: {e}")))?;
    Ok(Some(f64::from(now) / 1e3))
}

impl Limiter for NvmlLimiter {
    fn element(&self) -> PowerElement {
        PowerElement::Gpu
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn method(&self) -> &'static str {
        "nvml"
    }

    fn range(&self) -> BoxFuture<'_, Option<(f64, f64)>> {
        let (nvml, i) = (self.nvml.clone(), self.index);
        Box::pin(async move {
            blocking(move || {
                let d = nvml
                    .device_by_index(i)
                    .map_err(|e| LimitError::Device(e.to_string()))?;
                let c = d
                    .power_management_limit_constraints()
                    .map_err(|e| LimitError::Device(e.to_string()))?;
                Ok((f64::from(c.min_limit) / 1e3, f64::from(c.max_limit) / 1e3))
            })
            .await
            .ok()
        })
    }

    fn apply(&self, watts: Option<f64>) -> BoxFuture<'_, Result<Option<f64>, LimitError>> {
        let (nvml, i) = (self.nvml.clone(), self.index);
        Box::pin(blocking(move || apply_blocking(&nvml, i, watts)))
    }
}
