//! The DPUs of one mount, by index, as they come and go at run time
//! (hot-plug): `rshim<N>` appears when a DPU is added and disappears when it
//! is removed, as the rshim driver's device directories do.

use std::ffi::OsStr;
use std::sync::{Arc, OnceLock, RwLock};

use crate::SimError;
use crate::config::{MAX_DPUS, SimConfig};
use crate::dpu::{Attach, Dpu};

/// One slot: the DPU and the generation of its directory's inode (the
/// kernel must not take a new DPU in a reused slot for the old one).
#[derive(Clone)]
struct Slot {
    dpu: Arc<Dpu>,
    generation: u64,
}

pub(crate) struct Slots {
    slots: RwLock<Vec<Option<Slot>>>,
    /// What DPUs added later are made from.
    cfg: SimConfig,
    next_generation: std::sync::atomic::AtomicU64,
    /// Tells the kernel a directory went away (set once mounted).
    notifier: OnceLock<fuser::Notifier>,
}

impl Slots {
    pub fn new(cfg: &SimConfig) -> Slots {
        let slots = (0..cfg.dpus)
            .map(|i| {
                Some(Slot {
                    dpu: Arc::new(Dpu::new(i, cfg)),
                    generation: 0,
                })
            })
            .collect();
        Slots {
            slots: RwLock::new(slots),
            cfg: cfg.clone(),
            next_generation: std::sync::atomic::AtomicU64::new(1),
            notifier: OnceLock::new(),
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Option<Slot>>> {
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Option<Slot>>> {
        self.slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn set_notifier(&self, n: fuser::Notifier) {
        let _ = self.notifier.set(n);
    }

    /// The DPU in slot `d`, if one is plugged in there.
    pub fn get(&self, d: usize) -> Option<Arc<Dpu>> {
        self.read().get(d)?.as_ref().map(|s| s.dpu.clone())
    }

    /// The inode generation of slot `d`'s directory (0 when empty).
    pub fn generation(&self, d: usize) -> u64 {
        self.read()
            .get(d)
            .and_then(|s| s.as_ref().map(|s| s.generation))
            .unwrap_or(0)
    }

    /// The DPUs plugged in, by index.
    pub fn present(&self) -> Vec<Arc<Dpu>> {
        self.read().iter().flatten().map(|s| s.dpu.clone()).collect()
    }

    /// Plug in a new DPU at a never-used index if there is one, else at the
    /// lowest freed one, as the rshim driver picks a new device's
    /// `rshim<N>` (`rshim_find_index`: never-used slots first, then unused
    /// ones). `serial_in_misc`: show its serial in `misc` at
    /// `DISPLAY_LEVEL 1` (None: as the mount's config says).
    pub fn add(&self, attach: Attach, serial_in_misc: Option<bool>) -> Result<Arc<Dpu>, SimError> {
        let mut slots = self.write();
        let freed = slots.iter().position(Option::is_none);
        let index = match freed {
            _ if slots.len() < MAX_DPUS => {
                slots.push(None);
                slots.len() - 1
            }
            Some(i) => i,
            None => {
                return Err(SimError::Config {
                    field: "dpus",
                    message: format!("cannot add a DPU: all {MAX_DPUS} rshim slots are in use"),
                });
            }
        };
        let mut cfg = self.cfg.clone();
        cfg.serial_in_misc = serial_in_misc.unwrap_or(cfg.serial_in_misc);
        // A hot-plugged DPU has no fault unless one is set later.
        cfg.faults.clear();
        let dpu = Arc::new(Dpu::attached(index, &cfg, attach));
        let generation = self
            .next_generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        slots[index] = Some(Slot {
            dpu: dpu.clone(),
            generation,
        });
        drop(slots);
        tracing::info!(rshim = %dpu.name, dev_name = %dpu.dev_name, serial = %dpu.serial, "DPU plugged in");
        Ok(dpu)
    }

    /// Unplug DPU `d`: its directory disappears (the kernel is told at once,
    /// so no cached entry outlives it) and its open `boot` handles fail.
    /// The returned thread ends once the kernel was told; callers on the
    /// FUSE thread must not wait for it.
    pub fn remove(
        &self,
        d: usize,
        dir_ino: u64,
    ) -> Result<(Arc<Dpu>, Option<std::thread::JoinHandle<()>>), SimError> {
        let slot = self
            .write()
            .get_mut(d)
            .and_then(Option::take)
            .ok_or_else(|| SimError::Config {
                field: "dpu",
                message: format!("no DPU rshim{d} to remove"),
            })?;
        slot.dpu.unplug();
        let told = self.notifier.get().cloned().map(|n| {
            let name = slot.dpu.name.clone();
            std::thread::spawn(move || {
                // Best effort: the entry may not be cached at all (ENOENT).
                if let Err(e) = n.delete(fuser::FUSE_ROOT_ID, dir_ino, OsStr::new(&name)) {
                    tracing::debug!(rshim = %name, error = %e, "kernel not told of the removal (no cached entry)");
                }
            })
        });
        Ok((slot.dpu, told))
    }
}
