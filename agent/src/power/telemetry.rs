//! Telemetry for the coordinator: every sample the sampler takes becomes a
//! sequence-numbered [`PowerSample`] in a bounded buffer; the session sends
//! what the coordinator has not seen in batches, drops what it acknowledged,
//! and after a reconnect replays the rest (the coordinator ignores samples at
//! or below the last seq it stored for the epoch, so a replay is harmless).
//! When the coordinator is away longer than the buffer holds, the oldest
//! samples go first; every batch carries how many were dropped since the
//! agent started (cumulative for the epoch, so a lost or replayed batch
//! neither loses nor double-counts drops).
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hostplane_proto::v1::{PowerReading, PowerSample, TelemetryAck, TelemetryBatch};
use serde::{Deserialize, Serialize};

use super::{Method, Reading, Scope};

/// The `power.telemetry` section of the agent config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// Send telemetry to the coordinator at all.
    pub enabled: bool,
    /// How often a batch is sent.
    #[serde(with = "humantime_serde")]
    pub batch_interval: Duration,
    /// Samples kept while the coordinator has not acknowledged them (oldest dropped first).
    pub buffer_samples: usize,
    /// Most samples in one batch (a long replay goes out in several).
    pub max_batch: usize,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            enabled: true,
            batch_interval: Duration::from_secs(5),
            // One hour at 1 Hz; a sample with a dozen readings is well under 1 KiB.
            buffer_samples: 3600,
            max_batch: 300,
        }
    }
}

/// The bounded buffer of samples not yet acknowledged.
#[derive(Debug)]
pub struct TelemetryBuffer {
    epoch: u64,
    next_seq: u64,
    capacity: usize,
    max_batch: usize,
    samples: VecDeque<PowerSample>,
    /// Highest seq sent on the current connection (samples above it are new).
    sent: u64,
    /// Dropped since this buffer was made (this epoch): cumulative, sent in
    /// every batch, never reset, so a batch lost with its connection loses
    /// no count and a replay counts nothing twice.
    dropped: u64,
}

impl TelemetryBuffer {
    /// A buffer for one agent run: `epoch` must differ between runs (the
    /// daemon uses its start time in ms), so the coordinator restarts seq.
    pub fn new(epoch: u64, cfg: &TelemetryConfig) -> TelemetryBuffer {
        TelemetryBuffer {
            epoch,
            next_seq: 1,
            capacity: cfg.buffer_samples.max(1),
            max_batch: cfg.max_batch.max(1),
            samples: VecDeque::new(),
            sent: 0,
            dropped: 0,
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Add one sample taken at `at_ms`; returns its seq.
    pub fn push(&mut self, readings: &[Reading], at_ms: i64) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(PowerSample {
            seq,
            at_ms,
            readings: readings.iter().map(to_proto).collect(),
            node_watts: node_watts(readings),
        });
        seq
    }

    /// The next batch to send on this connection (samples not sent yet), or
    /// None when there is nothing new.
    pub fn next_batch(&mut self) -> Option<TelemetryBatch> {
        let samples: Vec<PowerSample> = self
            .samples
            .iter()
            .filter(|s| s.seq > self.sent)
            .take(self.max_batch)
            .cloned()
            .collect();
        let last = samples.last()?.seq;
        self.sent = last;
        Some(TelemetryBatch {
            epoch: self.epoch,
            samples,
            dropped: self.dropped,
        })
    }

    /// Whether samples wait that were not sent on this connection.
    pub fn has_unsent(&self) -> bool {
        self.samples.back().is_some_and(|s| s.seq > self.sent)
    }

    /// The coordinator stored everything up to `ack.seq`: forget it. Acks of
    /// another epoch (an older run of this agent) are ignored.
    pub fn ack(&mut self, ack: &TelemetryAck) {
        if ack.epoch != self.epoch {
            return;
        }
        while self.samples.front().is_some_and(|s| s.seq <= ack.seq) {
            self.samples.pop_front();
        }
    }

    /// A new connection: everything still buffered is sent again.
    pub fn reconnected(&mut self) {
        self.sent = 0;
    }
}

/// The buffer shared by the sampler (which pushes) and the session (which sends).
#[derive(Debug, Clone)]
pub struct Telemetry(Arc<Mutex<TelemetryBuffer>>);

impl Telemetry {
    pub fn new(buffer: TelemetryBuffer) -> Telemetry {
        Telemetry(Arc::new(Mutex::new(buffer)))
    }

    pub fn lock(&self) -> MutexGuard<'_, TelemetryBuffer> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn scope_name(s: Scope) -> &'static str {
    match s {
        Scope::Node => "node",
        Scope::Psys => "psys",
        Scope::Package => "package",
        Scope::Core => "core",
        Scope::Uncore => "uncore",
        Scope::Dram => "dram",
        Scope::Gpu => "gpu",
        Scope::Other => "other",
    }
}

fn to_proto(r: &Reading) -> PowerReading {
    PowerReading {
        source: r.source.to_string(),
        scope: scope_name(r.scope).to_string(),
        device: r.device.clone(),
        watts: r.watts,
        energy_joules: r.energy_joules,
        measured: r.method == Method::Measured,
        window_ms: r
            .window
            .map_or(0, |w| w.as_millis().min(u128::from(u32::MAX)) as u32),
        age_ms: r
            .age
            .map_or(0, |a| a.as_millis().min(u128::from(u32::MAX)) as u32),
        error: r.error.clone().unwrap_or_default(),
    }
}

/// The node's draw as best the readings tell, never summing scopes that
/// overlap: a whole-node reading (the BMC, a node-scope hwmon sensor) when
/// there is one; else RAPL psys (the platform) plus the GPUs; else the CPU
/// packages, DRAM and GPUs summed (disjoint domains, a lower bound); None when
/// no reading has a value.
pub fn node_watts(readings: &[Reading]) -> Option<f64> {
    let valued = || readings.iter().filter(|r| r.error.is_none() && r.watts.is_some());
    let sum = |scope: Scope| -> Option<f64> {
        let v: Vec<f64> = valued()
            .filter(|r| r.scope == scope)
            .filter_map(|r| r.watts)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    if let Some(node) = valued().filter(|r| r.scope == Scope::Node).find_map(|r| r.watts) {
        return Some(node);
    }
    // The same GPUs may be read by NVML and by the BMC: count one source only.
    let gpu_source = ["nvml", "redfish"]
        .into_iter()
        .find(|src| valued().any(|r| r.scope == Scope::Gpu && r.source == *src));
    let gpus = {
        let v: Vec<f64> = valued()
            .filter(|r| r.scope == Scope::Gpu && gpu_source.is_none_or(|s| r.source == s))
            .filter_map(|r| r.watts)
            .collect();
        (!v.is_empty()).then(|| v.iter().sum())
    };
    if let Some(psys) = sum(Scope::Psys) {
        return Some(psys + gpus.unwrap_or(0.0));
    }
    let parts = [sum(Scope::Package), sum(Scope::Dram), gpus];
    parts
        .iter()
        .any(Option::is_some)
        .then(|| parts.iter().flatten().sum())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(source: &'static str, scope: Scope, device: &str, watts: Option<f64>) -> Reading {
        Reading {
            source,
            scope,
            device: device.into(),
            watts,
            energy_joules: None,
            method: Method::Measured,
            window: None,
            age: None,
            error: None,
        }
    }

    fn cfg(buffer: usize, max_batch: usize) -> TelemetryConfig {
        TelemetryConfig {
            buffer_samples: buffer,
            max_batch,
            ..Default::default()
        }
    }

    fn seqs(b: &TelemetryBatch) -> Vec<u64> {
        b.samples.iter().map(|s| s.seq).collect()
    }

    #[test]
    fn batches_carry_new_samples_once_and_acks_free_them() {
        let mut t = TelemetryBuffer::new(42, &cfg(10, 100));
        assert!(t.next_batch().is_none(), "nothing to send yet");
        for i in 0..3 {
            t.push(&[], i);
        }
        let b = t.next_batch().unwrap();
        assert_eq!((b.epoch, seqs(&b), b.dropped), (42, vec![1, 2, 3], 0));
        assert!(
            t.next_batch().is_none(),
            "sent samples are not sent twice on one connection"
        );
        t.push(&[], 4);
        assert_eq!(seqs(&t.next_batch().unwrap()), vec![4]);
        t.ack(&TelemetryAck { epoch: 42, seq: 2 });
        assert_eq!(t.len(), 2, "1 and 2 acknowledged");
        t.ack(&TelemetryAck { epoch: 7, seq: 100 });
        assert_eq!(t.len(), 2, "an ack of another epoch frees nothing");
    }

    #[test]
    fn a_reconnect_replays_what_was_not_acknowledged() {
        let mut t = TelemetryBuffer::new(1, &cfg(10, 100));
        for i in 0..4 {
            t.push(&[], i);
        }
        t.next_batch().unwrap();
        t.ack(&TelemetryAck { epoch: 1, seq: 2 });
        t.reconnected();
        assert!(t.has_unsent());
        assert_eq!(seqs(&t.next_batch().unwrap()), vec![3, 4]);
    }

    #[test]
    fn a_full_buffer_drops_the_oldest_and_says_how_many() {
        let mut t = TelemetryBuffer::new(1, &cfg(3, 2));
        for i in 0..5 {
            t.push(&[], i);
        }
        assert_eq!(t.len(), 3);
        let b = t.next_batch().unwrap();
        assert_eq!(
            (seqs(&b), b.dropped),
            (vec![3, 4], 2),
            "max_batch 2; seq 1 and 2 were dropped"
        );
        let b = t.next_batch().unwrap();
        assert_eq!(
            (seqs(&b), b.dropped),
            (vec![5], 2),
            "the count is cumulative: the next batch says 2 again"
        );
    }

    #[test]
    fn the_drop_count_survives_a_lost_batch_and_a_replay() {
        let mut t = TelemetryBuffer::new(1, &cfg(2, 10));
        for i in 0..3 {
            t.push(&[], i);
        }
        // Sent, but the connection dies before the ack: the count is not lost.
        assert_eq!(t.next_batch().unwrap().dropped, 1);
        t.reconnected();
        let b = t.next_batch().unwrap();
        assert_eq!((seqs(&b), b.dropped), (vec![2, 3], 1), "the replay says 1 again");
        t.ack(&TelemetryAck { epoch: 1, seq: 3 });
        for i in 3..6 {
            t.push(&[], i);
        }
        assert_eq!(
            t.next_batch().unwrap().dropped,
            2,
            "one more drop (seq 4) on top of the first: a running total"
        );
    }

    #[test]
    fn node_draw_never_sums_overlapping_scopes() {
        let pkg = reading("rapl", Scope::Package, "intel-rapl:0", Some(100.0));
        let core = reading("rapl", Scope::Core, "intel-rapl:0:0", Some(60.0));
        let dram = reading("rapl", Scope::Dram, "intel-rapl:0:1", Some(10.0));
        let psys = reading("rapl", Scope::Psys, "intel-rapl:1", Some(150.0));
        let gpu = reading("nvml", Scope::Gpu, "gpu0", Some(300.0));
        let bmc = reading("redfish", Scope::Node, "DGX", Some(900.0));
        let mut broken = reading("redfish", Scope::Node, "DGX", None);
        broken.error = Some("401".into());

        assert_eq!(
            node_watts(&[pkg.clone(), core.clone(), dram.clone()]),
            Some(110.0),
            "core is inside package"
        );
        assert_eq!(
            node_watts(&[pkg.clone(), psys.clone(), gpu.clone()]),
            Some(450.0),
            "psys covers package"
        );
        assert_eq!(
            node_watts(&[pkg.clone(), gpu.clone(), bmc.clone()]),
            Some(900.0),
            "the BMC covers all"
        );
        assert_eq!(
            node_watts(&[broken, pkg.clone(), gpu.clone()]),
            Some(400.0),
            "a failed node reading is not a 0"
        );
        assert_eq!(node_watts(&[core]), None, "core alone says nothing of the node");
        let bmc_gpu = reading("redfish", Scope::Gpu, "HGX_GPU_SXM_1", Some(310.0));
        assert_eq!(
            node_watts(&[pkg.clone(), gpu.clone(), bmc_gpu.clone()]),
            Some(400.0),
            "a GPU read by NVML and by the BMC is counted once (NVML's)"
        );
        assert_eq!(
            node_watts(&[pkg.clone(), bmc_gpu]),
            Some(410.0),
            "the BMC's GPUs when NVML has none"
        );
        assert_eq!(node_watts(&[]), None);
    }

    #[test]
    fn readings_keep_their_provenance_on_the_wire() {
        let mut r = reading("rapl", Scope::Package, "intel-rapl:0", Some(12.5));
        r.method = Method::Integrated;
        r.window = Some(Duration::from_millis(1000));
        r.energy_joules = Some(99.0);
        let mut bad = reading("hwmon", Scope::Other, "hwmon1/power1", None);
        bad.error = Some("permission denied".into());
        let mut t = TelemetryBuffer::new(1, &cfg(4, 4));
        t.push(&[r, bad], 5);
        let s = &t.next_batch().unwrap().samples[0];
        let (a, b) = (&s.readings[0], &s.readings[1]);
        assert_eq!(
            (a.source.as_str(), a.scope.as_str(), a.measured, a.window_ms),
            ("rapl", "package", false, 1000)
        );
        assert_eq!((a.watts, a.energy_joules), (Some(12.5), Some(99.0)));
        assert_eq!((b.watts, b.error.as_str()), (None, "permission denied"));
        assert_eq!(s.node_watts, Some(12.5));
    }
}
