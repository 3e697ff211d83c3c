//! RAPL's limiting half: a zone's long-term constraint, written through
//! powercap sysfs on a blocking thread.
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use hostplane_proto::v1::PowerElement;

use crate::power::caps::{LimitError, Limiter};
use crate::power::{ReadError, parse_u64};

/// A RAPL zone's long-term constraint (`constraint_0_power_limit_uw`): the
/// CPU package cap, the DRAM cap, or (psys) the platform's — the node cap of
/// a host without a BMC.
pub struct RaplLimiter {
    device: String,
    dir: PathBuf,
    element: PowerElement,
    /// The limit before the agent first changed it, restored when lifted.
    original: Arc<Mutex<Option<u64>>>,
}

impl RaplLimiter {
    /// Every writable package, dram and psys zone under `<sysfs_root>/class/powercap`.
    pub fn discover(sysfs_root: &Path) -> Vec<RaplLimiter> {
        let dir = sysfs_root.join("class/powercap");
        let Ok(rd) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| (n.starts_with("intel-rapl:") || n.starts_with("amd-rapl:")) && !n.contains("mmio"))
            .collect();
        names.sort();
        names
            .into_iter()
            .filter_map(|device| {
                let z = dir.join(&device);
                let name = std::fs::read_to_string(z.join("name")).ok()?;
                let element = match name.trim() {
                    n if n.starts_with("package") => PowerElement::Cpu,
                    "dram" => PowerElement::Memory,
                    "psys" => PowerElement::Node,
                    _ => return None,
                };
                z.join("constraint_0_power_limit_uw")
                    .exists()
                    .then(|| RaplLimiter {
                        device,
                        dir: z,
                        element,
                        original: Arc::new(Mutex::new(None)),
                    })
            })
            .collect()
    }
}

/// A powercap file's number (µW): blocking, call on a blocking thread.
fn read_uw(dir: &Path, file: &str) -> Result<u64, ReadError> {
    let p = dir.join(file);
    let bytes = std::fs::read(&p).map_err(|e| ReadError::io(&p, &e))?;
    parse_u64(&p, &bytes)
}

/// Run sysfs I/O on a blocking thread, never on an async worker.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LimitError> + Send + 'static,
) -> Result<T, LimitError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LimitError::Device(format!("the powercap I/O thread failed: {e}")))?
}

/// Set (or, with None, restore) the constraint; the limit now in force.
fn apply_blocking(
    dir: &Path,
    original: &Mutex<Option<u64>>,
    watts: Option<f64>,
) -> Result<Option<f64>, LimitError> {
    let path = dir.join("constraint_0_power_limit_uw");
    let current = read_uw(dir, "constraint_0_power_limit_uw")?;
    let target = {
        let mut orig = original.lock().unwrap_or_else(|p| p.into_inner());
        match watts {
            Some(w) => {
                orig.get_or_insert(current);
                (w * 1e6).round() as u64
            }
            None => match orig.take() {
                Some(o) => o,
                None => return Ok(Some(current as f64 / 1e6)),
            },
        }
    };
    if target != current {
        std::fs::write(&path, target.to_string()).map_err(|e| match e.kind() {
            std::io::ErrorKind::PermissionDenied => LimitError::PermissionDenied { path: path.clone() },
            _ => LimitError::Device(format!("writing {}: {e}", path.display())),
        })?;
    }
    let now = read_uw(dir, "constraint_0_power_limit_uw")?;
    Ok(Some(now as f64 / 1e6))
}

impl Limiter for RaplLimiter {
    fn element(&self) -> PowerElement {
        self.element
    }

    fn device(&self) -> &str {
        &self.device
    }

    fn method(&self) -> &'static str {
        "rapl"
    }

    fn range(&self) -> BoxFuture<'_, Option<(f64, f64)>> {
        let dir = self.dir.clone();
        Box::pin(async move {
            let max = blocking(move || Ok(read_uw(&dir, "constraint_0_max_power_uw")?))
                .await
                .ok()
                .filter(|m| *m > 0)?;
            Some((0.0, max as f64 / 1e6))
        })
    }

    fn apply(&self, watts: Option<f64>) -> BoxFuture<'_, Result<Option<f64>, LimitError>> {
        let (dir, original) = (self.dir.clone(), self.original.clone());
        Box::pin(blocking(move || apply_blocking(&dir, &original, watts)))
    }

    fn original(&self) -> Option<u64> {
        *self.original.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn restore_original(&self, original: Option<u64>) {
        *self.original.lock().unwrap_or_else(|p| p.into_inner()) = original;
    }
}
