//! Following the DPU's boot log through `misc`, as the only reader.
//!
//! `CLEAR_ON_READ 1` and `DISPLAY_LEVEL 2` are set before `boot` is opened, so
//! lines printed while the stream is still being pushed are not lost (the
//! log is a ~1 KB chip buffer that survives resets); what the buffer held
//! before is drained and ignored, so an old failure is not mistaken for a new
//! one. Every read then returns only new lines. If the device refuses
//! `CLEAR_ON_READ`, new lines are found by overlap with the previous read.
//!
//! `BOOT_TIMEOUT` is set for the flash too (see [`LogFollower::start`]).
//! Every value changed is put back at the end as it was read before the
//! flash (`CLEAR_ON_READ` 0 when the device did not show it), whatever the
//! outcome.

use crate::rshim::{MiscClient, MiscSnapshot, RshimError};

pub(crate) struct LogFollower {
    misc: MiscClient,
    clear_on_read: bool,
    prev: Vec<String>,
    /// `(KEY, value before the flash)` for every value this flash changed,
    /// in the order to put them back.
    restore: Vec<(&'static str, String)>,
    /// The device took our `BOOT_TIMEOUT`.
    pub boot_timeout_set: bool,
}

impl LogFollower {
    /// Set up the device for reading its log: `BOOT_TIMEOUT boot_timeout`
    /// (seconds; best effort: a device that refuses it only has the agent's
    /// own stall timer), `CLEAR_ON_READ 1`, `DISPLAY_LEVEL 2`. `before` is
    /// the snapshot read before anything was changed. Returns the stale
    /// lines drained.
    pub async fn start(
        misc: MiscClient,
        before: &MiscSnapshot,
        boot_timeout: Option<u64>,
    ) -> Result<(LogFollower, Vec<String>), RshimError> {
        let mut restore = Vec::new();
        let mut boot_timeout_set = false;
        if let Some(secs) = boot_timeout {
            let old = before.number("BOOT_TIMEOUT");
            match misc.command("BOOT_TIMEOUT", &secs.to_string()).await {
                Ok(()) => {
                    boot_timeout_set = true;
                    if let Some(old) = old.filter(|o| *o != secs) {
                        restore.push(("BOOT_TIMEOUT", old.to_string()));
                    }
                }
                Err(e) => {
                    tracing::warn!(rshim = %misc.rshim(), error = %e, "BOOT_TIMEOUT refused; only the agent's stall timer bounds the push");
                }
            }
        }
        let clear_on_read = match misc.command("CLEAR_ON_READ", "1").await {
            Ok(()) => {
                let old = before.number("CLEAR_ON_READ").unwrap_or(0);
                if old != 1 {
                    restore.push(("CLEAR_ON_READ", old.to_string()));
                }
                true
            }
            Err(e) => {
                tracing::warn!(rshim = %misc.rshim(), error = %e, "CLEAR_ON_READ refused; de-duplicating log reads");
                false
            }
        };
        let mut f = LogFollower {
            misc,
            clear_on_read,
            prev: Vec::new(),
            restore,
            boot_timeout_set,
        };
        if let Err(e) = f.misc.command("DISPLAY_LEVEL", "2").await {
            f.finish().await;
            return Err(e);
        }
        if let Some(old) = before.display_level().filter(|l| *l != 2) {
            f.restore.push(("DISPLAY_LEVEL", old.to_string()));
        }
        let stale = match f.misc.read_snapshot().await {
            Ok(s) => s.log,
            Err(e) => {
                f.finish().await;
                return Err(e);
            }
        };
        if !f.clear_on_read {
            f.prev = stale.clone();
        }
        Ok((f, stale))
    }

    /// Lines the DPU printed since the last poll.
    pub async fn poll(&mut self) -> Result<Vec<String>, RshimError> {
        let log = self.misc.read_snapshot().await?.log;
        if self.clear_on_read {
            return Ok(log);
        }
        let new = new_lines(&self.prev, &log);
        self.prev = log;
        Ok(new)
    }

    /// Put back every `misc` value this flash changed (best effort: a
    /// failure is logged, not returned). The log display level goes last,
    /// after `CLEAR_ON_READ`.
    pub async fn finish(&mut self) {
        let restore = std::mem::take(&mut self.restore);
        for (key, value) in restore.iter().rev() {
            if let Err(e) = self.misc.command(key, value).await {
                tracing::warn!(rshim = %self.misc.rshim(), error = %e, "could not restore {key} {value}");
            }
        }
    }
}

/// `cur` minus the longest prefix of it that is a suffix of `prev` (the
/// part of the buffer already seen).
pub(crate) fn new_lines(prev: &[String], cur: &[String]) -> Vec<String> {
    let max = prev.len().min(cur.len());
    let overlap = (0..=max)
        .rev()
        .find(|&k| prev[prev.len() - k..] == cur[..k])
        .unwrap_or(0);
    cur[overlap..].to_vec()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rshim::testing::FakeMisc;

    fn v(lines: &[&str]) -> Vec<String> {
        lines.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn overlap_table() {
        for (prev, cur, want) in [
            (v(&[]), v(&["a", "b"]), v(&["a", "b"])),
            (v(&["a", "b"]), v(&["a", "b", "c"]), v(&["c"])),
            (v(&["a", "b", "c"]), v(&["b", "c", "d", "e"]), v(&["d", "e"])),
            (v(&["a", "b"]), v(&["a", "b"]), v(&[])),
            (v(&["a", "b"]), v(&["x", "y"]), v(&["x", "y"])),
        ] {
            assert_eq!(new_lines(&prev, &cur), want, "{prev:?} -> {cur:?}");
        }
    }

    #[tokio::test]
    async fn drains_stale_lines_then_reads_only_new_ones() {
        let fake = FakeMisc::new("rshim0");
        fake.log("ERR[MISC]: Installation failed"); // from an earlier attempt
        let (mut f, stale) = start(&fake, None).await.unwrap();
        assert_eq!(stale, v(&["ERR[MISC]: Installation failed"]));
        assert_eq!(fake.commands(), v(&["CLEAR_ON_READ 1", "DISPLAY_LEVEL 2"]));
        assert!(f.poll().await.unwrap().is_empty());
        fake.log("INFO[BL2]: start");
        fake.log("INFO[BL31]: start");
        assert_eq!(
            f.poll().await.unwrap(),
            v(&["INFO[BL2]: start", "INFO[BL31]: start"])
        );
        fake.log("INFO[BL31]: start");
        assert_eq!(
            f.poll().await.unwrap(),
            v(&["INFO[BL31]: start"]),
            "a repeated line is a new line"
        );
        f.finish().await;
        assert_eq!(fake.commands()[2..], v(&["DISPLAY_LEVEL 0", "CLEAR_ON_READ 0"]));
    }

    #[tokio::test]
    async fn restores_what_it_found_including_boot_timeout() {
        let fake = FakeMisc::new("rshim0");
        {
            let mut s = fake.state.lock().unwrap();
            s.display_level = 1;
            s.boot_timeout = 120;
        }
        let (mut f, _) = start(&fake, Some(7)).await.unwrap();
        assert!(f.boot_timeout_set);
        assert_eq!(fake.state.lock().unwrap().boot_timeout, 7);
        f.finish().await;
        let now = {
            let s = fake.state.lock().unwrap();
            (s.display_level, s.clear_on_read, s.boot_timeout)
        };
        assert_eq!(now, (1, false, 120));
        assert_eq!(
            fake.commands(),
            v(&[
                "BOOT_TIMEOUT 7",
                "CLEAR_ON_READ 1",
                "DISPLAY_LEVEL 2",
                "DISPLAY_LEVEL 1",
                "CLEAR_ON_READ 0",
                "BOOT_TIMEOUT 120"
            ])
        );
        // A device that refuses BOOT_TIMEOUT still gets its log followed.
        let fake = FakeMisc::new("rshim1");
        fake.reject("BOOT_TIMEOUT");
        let (f, _) = start(&fake, Some(7)).await.unwrap();
        assert!(!f.boot_timeout_set);
    }

    async fn start(
        fake: &FakeMisc,
        boot_timeout: Option<u64>,
    ) -> Result<(LogFollower, Vec<String>), RshimError> {
        let misc = MiscClient::new(Arc::new(fake.clone()));
        let before = misc.read_snapshot().await.unwrap();
        LogFollower::start(misc, &before, boot_timeout).await
    }

    #[tokio::test]
    async fn without_clear_on_read_dedups_by_overlap() {
        let fake = FakeMisc::new("rshim0");
        fake.reject("CLEAR_ON_READ");
        fake.log("INFO[BL2]: old");
        let (mut f, _) = start(&fake, None).await.unwrap();
        fake.log("INFO[BL2]: start");
        assert_eq!(f.poll().await.unwrap(), v(&["INFO[BL2]: start"]));
        assert!(f.poll().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn display_level_refused_is_an_error() {
        let fake = FakeMisc::new("rshim2");
        fake.reject("DISPLAY_LEVEL");
        let err = start(&fake, None).await.err().unwrap();
        assert!(
            err.to_string().contains("rshim2") && err.to_string().contains("DISPLAY_LEVEL 2"),
            "{err}"
        );
    }
}
