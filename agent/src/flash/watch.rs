//! Following the DPU's boot log through `misc`, as the only reader.
//!
//! `CLEAR_ON_READ 1` and `DISPLAY_LEVEL 2` are set before `boot` is opened, so
//! lines printed while the stream is still being pushed are not lost (the
//! log is a ~1 KB chip buffer that survives resets); what the buffer held
//! before is drained and ignored, so an old failure is not mistaken for a new
//! one. Every read then returns only new lines. If the device refuses
//! `CLEAR_ON_READ`, new lines are found by overlap with the previous read.
//! `CLEAR_ON_READ 0` is restored at the end, whatever the outcome.

use crate::rshim::{MiscClient, RshimError};

pub(crate) struct LogFollower {
    misc: MiscClient,
    clear_on_read: bool,
    prev: Vec<String>,
}

impl LogFollower {
    /// Set up the device for reading its log; returns the stale lines drained.
    pub async fn start(misc: MiscClient) -> Result<(LogFollower, Vec<String>), RshimError> {
        let clear_on_read = match misc.command("CLEAR_ON_READ", "1").await {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(rshim = %misc.rshim(), error = %e, "CLEAR_ON_READ refused; de-duplicating log reads");
                false
            }
        };
        misc.command("DISPLAY_LEVEL", "2").await?;
        let stale = misc.read_snapshot().await?.log;
        let prev = if clear_on_read { Vec::new() } else { stale.clone() };
        Ok((
            LogFollower {
                misc,
                clear_on_read,
                prev,
            },
            stale,
        ))
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

    /// Restore `CLEAR_ON_READ 0` (best effort: logged, not returned).
    pub async fn finish(&self) {
        if let Err(e) = self.misc.command("CLEAR_ON_READ", "0").await {
            tracing::warn!(rshim = %self.misc.rshim(), error = %e, "could not restore CLEAR_ON_READ 0");
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
        let (mut f, stale) = LogFollower::start(MiscClient::new(Arc::new(fake.clone())))
            .await
            .unwrap();
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
        assert_eq!(fake.commands().last().unwrap(), "CLEAR_ON_READ 0");
    }

    #[tokio::test]
    async fn without_clear_on_read_dedups_by_overlap() {
        let fake = FakeMisc::new("rshim0");
        fake.reject("CLEAR_ON_READ");
        fake.log("INFO[BL2]: old");
        let (mut f, _) = LogFollower::start(MiscClient::new(Arc::new(fake.clone())))
            .await
            .unwrap();
        fake.log("INFO[BL2]: start");
        assert_eq!(f.poll().await.unwrap(), v(&["INFO[BL2]: start"]));
        assert!(f.poll().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn display_level_refused_is_an_error() {
        let fake = FakeMisc::new("rshim2");
        fake.reject("DISPLAY_LEVEL");
        let err = LogFollower::start(MiscClient::new(Arc::new(fake)))
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string().contains("rshim2") && err.to_string().contains("DISPLAY_LEVEL 2"),
            "{err}"
        );
    }
}
