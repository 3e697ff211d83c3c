//! The coordinator under test: one process on a SQLite file (the default),
//! or `HOSTPLANE_BENCH_REPLICAS` processes on one throwaway PostgreSQL
//! cluster (`HOSTPLANE_BENCH_BACKEND=postgres`, docs/ha.md), each with its own
//! listen and metrics port and its own `ha.name`. A replica can be SIGKILLed
//! and started again under the same name and ports (the chaos run); its CPU
//! is summed over its lives.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use hostplane_common::testing::pg::PgCluster;
use hostplane_proto::v1;
use hostplane_tests::{Admin, Proc, connect_admin, free_addr};

use crate::figures::{Sample, sample};

/// Where the store is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The leader lease (`ha:`), as humantime text; `None`: the coordinator's default.
#[derive(Debug, Clone, Default)]
pub struct Lease {
    pub lease: Option<String>,
    pub renew_every: Option<String>,
    pub renew_deadline: Option<String>,
}

impl Lease {
    pub fn describe(&self) -> String {
        let d = |v: &Option<String>, def: &str| v.clone().unwrap_or_else(|| format!("{def} (default)"));
        format!(
            "lease {}, renew every {}, renew deadline {}",
            d(&self.lease, "15s"),
            d(&self.renew_every, "2s"),
            d(&self.renew_deadline, "10s")
        )
    }
}

/// One coordinator process (and the lives before it).
pub struct Replica {
    pub name: String,
    pub addr: SocketAddr,
    pub metrics: SocketAddr,
    cfg: PathBuf,
    pub log: PathBuf,
    proc: Option<Proc>,
    pid: i32,
    /// CPU of its earlier lives (read just before each SIGKILL).
    dead_cpu: Duration,
    /// Peak RSS over its earlier lives.
    dead_hwm_kib: u64,
    pub lives: u32,
}

impl Replica {
    pub fn pid(&self) -> i32 {
        self.pid
    }
}

/// Per replica: its CPU over all lives, and its current reading.
pub struct ReplicaReading {
    pub name: String,
    pub cpu: Duration,
    pub now: Sample,
    /// Peak RSS over all its lives.
    pub hwm_kib: u64,
    pub lives: u32,
}

pub struct Cluster {
    pub backend: Backend,
    /// Set once GetClusterStatus was found not to report the cluster: the
    /// leader is read from the `leader` row instead (said once on stderr).
    db_fallback: std::sync::atomic::AtomicBool,
    /// The thread that reads the leader row (started on first use).
    db: std::sync::Mutex<Option<LeaderReader>>,
    bin: PathBuf,
    pub replicas: Vec<Replica>,
    /// `None` on SQLite.
    pub pg: Option<PgCluster>,
    /// The SQLite store file.
    store: Option<PathBuf>,
    tck: u64,
}

/// What GetClusterStatus said about the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub holder: String,
    pub epoch: i64,
    /// A live lease (`expires_in_ms` present).
    pub live: bool,
}

impl Cluster {
    /// Start the coordinator(s) and wait until each serves the admin API.
    pub async fn start(
        bin: &Path,
        dir: &Path,
        backend: Backend,
        replicas: usize,
        metrics: bool,
        lease: &Lease,
        tck: u64,
    ) -> Result<Cluster> {
        ensure!(
            backend == Backend::Postgres || replicas == 1,
            "{replicas} replicas need HOSTPLANE_BENCH_BACKEND=postgres (SQLite is one process)"
        );
        let (pg, store_yaml, store) = match backend {
            Backend::Sqlite => {
                let store = dir.join("coordinator.db");
                let yaml = format!("store:\n  path: {}\n", store.display());
                (None, yaml, Some(store))
            }
            Backend::Postgres => {
                let pg = tokio::task::block_in_place(PgCluster::start)
                    .context("starting the throwaway PostgreSQL cluster")?
                    .context(
                        "HOSTPLANE_BENCH_BACKEND=postgres: no PostgreSQL binaries (see above; scripts/setup installs them)",
                    )?;
                let pw = dir.join("pg-password");
                pg.write_password_file(&pw)
                    .with_context(|| format!("writing {}", pw.display()))?;
                let yaml = format!(
                    "store:\n  backend: postgres\n  postgres:\n    url: {}\n    password_file: {}\n    sslmode: disable\n",
                    pg.url_without_password(),
                    pw.display()
                );
                (Some(pg), yaml, None)
            }
        };
        let mut list = Vec::new();
        for i in 0..replicas {
            let name = match backend {
                Backend::Sqlite => "coordinator".to_string(),
                Backend::Postgres => format!("replica-{i}"),
            };
            let addr = free_addr()?;
            let metrics_addr = free_addr()?;
            // Plain TCP: the bench measures the coordinator's own cost, as before mTLS.
            let mut yaml = format!("listen: {addr}\ninsecure: true\n{store_yaml}");
            if metrics {
                yaml.push_str(&format!("metrics:\n  listen: {metrics_addr}\n"));
            }
            if backend == Backend::Postgres {
                yaml.push_str(&format!("ha:\n  name: {name}\n  addr: {addr}\n"));
                for (k, v) in [
                    ("lease", &lease.lease),
                    ("renew_every", &lease.renew_every),
                    ("renew_deadline", &lease.renew_deadline),
                ] {
                    if let Some(v) = v {
                        yaml.push_str(&format!("  {k}: {v}\n"));
                    }
                }
            }
            let cfg = dir.join(format!("{name}.yaml"));
            std::fs::write(&cfg, yaml)?;
            list.push(Replica {
                log: dir.join(format!("{name}.log")),
                name,
                addr,
                metrics: metrics_addr,
                cfg,
                proc: None,
                pid: 0,
                dead_cpu: Duration::ZERO,
                dead_hwm_kib: 0,
                lives: 0,
            });
        }
        let mut cluster = Cluster {
            backend,
            db_fallback: std::sync::atomic::AtomicBool::new(false),
            db: std::sync::Mutex::new(None),
            bin: bin.to_path_buf(),
            replicas: list,
            pg,
            store,
            tck,
        };
        for i in 0..replicas {
            cluster.spawn(i)?;
        }
        for i in 0..replicas {
            cluster.serving(i, Duration::from_secs(60)).await?;
        }
        Ok(cluster)
    }

    fn spawn(&mut self, i: usize) -> Result<()> {
        let r = &mut self.replicas[i];
        let cfg = r.cfg.to_str().context("temp dir path is not UTF-8")?;
        let p = Proc::spawn(&r.name, &self.bin, &["run", "--config", cfg], &r.log)?;
        r.pid = p.pid().context("the coordinator has no pid")?.as_raw();
        r.proc = Some(p);
        r.lives += 1;
        Ok(())
    }

    /// `http://addr` of every replica, in order.
    pub fn urls(&self) -> Vec<String> {
        self.replicas
            .iter()
            .map(|r| format!("http://{}", r.addr))
            .collect()
    }

    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.replicas.iter().position(|r| r.name == name)
    }

    /// The replicas' readings: CPU summed over every life, RSS of the current one.
    pub fn readings(&self) -> Result<Vec<ReplicaReading>> {
        self.replicas
            .iter()
            .map(|r| {
                let now = sample(r.pid, self.tck).with_context(|| format!("reading {}", r.name))?;
                Ok(ReplicaReading {
                    name: r.name.clone(),
                    cpu: r.dead_cpu + now.cpu,
                    hwm_kib: r.dead_hwm_kib.max(now.hwm_kib),
                    now,
                    lives: r.lives,
                })
            })
            .collect()
    }

    /// The coordinator side as one reading: CPU over every replica and life,
    /// RSS and peak RSS summed over the current processes (one process on SQLite).
    pub fn sample(&self) -> Result<Sample> {
        let mut all = Vec::new();
        for r in self.readings()? {
            all.push(r.now.with_cpu(r.cpu));
        }
        Ok(Sample::sum(&all))
    }

    /// The SQLite store's bytes (db + wal + shm); PostgreSQL's data directory.
    pub fn store_bytes(&self) -> u64 {
        match (&self.store, &self.pg) {
            (Some(store), _) => ["", "-wal", "-shm"]
                .iter()
                .filter_map(|s| std::fs::metadata(format!("{}{s}", store.display())).ok())
                .map(|m| m.len())
                .sum(),
            (None, Some(pg)) => dir_bytes(&pg.data_dir()),
            _ => 0,
        }
    }

    /// PostgreSQL's CPU so far: the postmaster (with its reaped children:
    /// backends that ended) and every live child (backends, walwriter,
    /// checkpointer, ...). `None` on SQLite.
    pub fn pg_cpu(&self) -> Option<Result<Duration>> {
        let pg = self.pg.as_ref()?;
        Some((|| {
            let pm = pg.postmaster_pid().context("PostgreSQL has no postmaster.pid")?;
            let mut ticks = proc_ticks(pm, true)?.1;
            for entry in std::fs::read_dir("/proc")? {
                let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                    continue;
                };
                // A process that ended between the listing and the read is gone.
                if let Ok((ppid, t)) = proc_ticks(pid, false)
                    && ppid == pm
                {
                    ticks += t;
                }
            }
            Ok(Duration::from_millis(ticks * 1000 / self.tck))
        })())
    }

    /// Whether the leader came from the database's `leader` row (GetClusterStatus
    /// did not report the cluster) rather than from GetClusterStatus.
    pub fn leader_from_db(&self) -> bool {
        self.db_fallback.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The `leader` row, read straight from the database (PostgreSQL's clock
    /// says whether the lease is live), on one kept connection.
    async fn leader_row(&self) -> Result<Leader> {
        let url = self.pg.as_ref().context("no PostgreSQL")?.url();
        let (tx, rx) = tokio::sync::oneshot::channel();
        {
            let mut reader = self
                .db
                .lock()
                .map_err(|_| anyhow::anyhow!("the leader reader's lock is poisoned"))?;
            let reader = reader.get_or_insert_with(|| leader_reader(url));
            reader
                .send(tx)
                .map_err(|_| anyhow::anyhow!("the leader reader's thread is gone"))?;
        }
        rx.await.context("the leader reader's thread is gone")?
    }

    /// The leader as GetClusterStatus on the first replica (from `from`)
    /// that answers reports it; from the database's `leader` row when the
    /// replicas' GetClusterStatus does not report the cluster.
    pub async fn leader(&self, from: usize) -> Result<Leader> {
        if self.leader_from_db() {
            return self.leader_row().await;
        }
        let mut errors = Vec::new();
        for k in 0..self.replicas.len() {
            let r = &self.replicas[(from + k) % self.replicas.len()];
            match cluster_status(r.addr).await {
                Ok(s) => {
                    if s.backend != self.backend.name() {
                        eprintln!(
                            "coordinator bench: GetClusterStatus on {} says backend {:?}, the bench runs {}: the \
                             server does not report the cluster (AdminApi::with_cluster is not wired in \
                             coordinator/src/server.rs); reading the leader row from the database instead",
                            r.name,
                            s.backend,
                            self.backend.name()
                        );
                        self.db_fallback.store(true, std::sync::atomic::Ordering::Relaxed);
                        return self.leader_row().await;
                    }
                    let l = s.leader.unwrap_or_default();
                    return Ok(Leader {
                        holder: l.holder,
                        epoch: l.epoch,
                        live: l.expires_in_ms.is_some(),
                    });
                }
                Err(e) => errors.push(format!("{}: {e:#}", r.name)),
            }
        }
        bail!("no replica answered GetClusterStatus: {}", errors.join("; "))
    }

    /// Wait until a leader with a live lease other than `not` and an epoch
    /// above `above` is visible; returns it.
    pub async fn wait_new_leader(&self, not: &str, above: i64, timeout: Duration) -> Result<Leader> {
        let t = Instant::now();
        let mut last = None;
        let mut from = 0;
        while t.elapsed() < timeout {
            match self.leader(from).await {
                Ok(l) if l.live && l.holder != not && l.epoch > above && !l.holder.is_empty() => {
                    return Ok(l);
                }
                Ok(l) => last = Some(format!("{l:?}")),
                Err(e) => last = Some(format!("{e:#}")),
            }
            from += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "no new leader (other than {not}, epoch > {above}) within {timeout:?}; last answer: {}",
            last.unwrap_or_default()
        )
    }

    /// SIGKILL replica `i` (its CPU and peak RSS read just before).
    pub async fn kill(&mut self, i: usize) -> Result<()> {
        let tck = self.tck;
        let r = &mut self.replicas[i];
        if let Ok(s) = sample(r.pid, tck) {
            r.dead_cpu += s.cpu;
            r.dead_hwm_kib = r.dead_hwm_kib.max(s.hwm_kib);
        }
        let mut p = r
            .proc
            .take()
            .with_context(|| format!("{} is not running", r.name))?;
        p.crash().await;
        Ok(())
    }

    /// Start replica `i` again (same name, ports and config); see [`Cluster::serving`].
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.spawn(i)
    }

    /// Wait until replica `i` answers an admin call (GetClusterStatus): its
    /// port is bound before its store is open, so a connection alone says little.
    pub async fn serving(&self, i: usize, timeout: Duration) -> Result<()> {
        serving(self.replicas[i].addr, timeout).await.with_context(|| {
            format!(
                "{} (log: {})",
                self.replicas[i].name,
                self.replicas[i].log.display()
            )
        })
    }

    /// SIGTERM every replica; the exit status of each (`None`: killed after 30 s).
    pub async fn stop(&mut self) -> Vec<Option<i32>> {
        let mut out = Vec::new();
        for r in &mut self.replicas {
            out.push(match r.proc.as_mut() {
                Some(p) => p.stop(Duration::from_secs(30)).await,
                None => None,
            });
        }
        out
    }

    /// Copy PostgreSQL's log into `dir` (the cluster's own directory goes with it).
    pub fn save_pg_log(&self, dir: &Path) {
        if let Some(pg) = &self.pg {
            let _ = std::fs::write(dir.join("postgres.log"), pg.log());
        }
    }
}

/// Asks the leader reader's thread for one read of the `leader` row.
type LeaderReader = std::sync::mpsc::Sender<tokio::sync::oneshot::Sender<Result<Leader>>>;

/// A thread that keeps one connection to the database (the synchronous
/// client must not run or be dropped where async tasks run) and answers each
/// request with the `leader` row; it ends (and closes the connection) when
/// the sender is dropped with the [`Cluster`].
fn leader_reader(url: String) -> LeaderReader {
    let (tx, rx) = std::sync::mpsc::channel::<tokio::sync::oneshot::Sender<Result<Leader>>>();
    std::thread::spawn(move || {
        let mut client: Option<postgres::Client> = None;
        for reply in rx {
            let r = (|| {
                if client.is_none() {
                    client = Some(
                        postgres::Client::connect(&url, postgres::NoTls)
                            .context("connecting to the bench's PostgreSQL")?,
                    );
                }
                let c = client.as_mut().context("no connection")?;
                let row = c
                    .query_one(
                        "SELECT holder, epoch, expires_at > now() FROM leader WHERE id = 1",
                        &[],
                    )
                    .context("reading the leader row");
                let row = match row {
                    Ok(row) => row,
                    Err(e) => {
                        client = None;
                        return Err(e);
                    }
                };
                Ok(Leader {
                    holder: row.get(0),
                    epoch: row.get(1),
                    live: row.get(2),
                })
            })();
            let _ = reply.send(r);
        }
    });
    tx
}

/// Wait until the replica at `addr` answers GetClusterStatus.
pub async fn serving(addr: SocketAddr, timeout: Duration) -> Result<()> {
    let t = Instant::now();
    loop {
        match cluster_status(addr).await {
            Ok(_) => return Ok(()),
            Err(e) if t.elapsed() > timeout => bail!("not serving {timeout:?} after its start: {e:#}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

async fn cluster_status(addr: SocketAddr) -> Result<v1::ClusterStatus> {
    let mut admin: Admin = connect_admin(addr, Duration::from_millis(500)).await?;
    let s = tokio::time::timeout(
        Duration::from_secs(5),
        admin.get_cluster_status(v1::ClusterStatusRequest {}),
    )
    .await
    .context("GetClusterStatus took over 5 s")??;
    Ok(s.into_inner())
}

/// (ppid, utime + stime [+ cutime + cstime]) in clock ticks, from /proc/<pid>/stat.
fn proc_ticks(pid: i32, with_children: bool) -> Result<(i32, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).context("no ')' in stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // After `(comm)`: state is field 3; ppid 4; utime 14, stime 15, cutime 16, cstime 17.
    let n = |i: usize| -> Result<u64> {
        f.get(i - 3)
            .and_then(|v| v.parse().ok())
            .context("short /proc/<pid>/stat")
    };
    let mut t = n(14)? + n(15)?;
    if with_children {
        t += n(16)? + n(17)?;
    }
    Ok((n(4)? as i32, t))
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    rd.filter_map(Result::ok)
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            _ => e.metadata().map(|m| m.len()).unwrap_or(0),
        })
        .sum()
}

/// What the `pg_stat_activity` sampler saw (docs/ha.md §8: the revision lock's wait).
#[derive(Debug, Default, Clone)]
pub struct LockWaits {
    pub samples: u64,
    /// Sum over samples of the coordinators' backends waiting on a lock
    /// (`wait_event_type = 'Lock'`: the revision row's `FOR UPDATE` waits for
    /// its holder's transaction), and of those running a statement.
    pub waiting: u64,
    pub active: u64,
    /// Samples with at least one backend waiting on a lock.
    pub with_waiter: u64,
    /// The wait events seen, with how many backend-samples each.
    pub events: std::collections::BTreeMap<String, u64>,
    pub error: Option<String>,
}

impl LockWaits {
    pub fn mean_waiting(&self) -> f64 {
        self.waiting as f64 / self.samples.max(1) as f64
    }

    pub fn mean_active(&self) -> f64 {
        self.active as f64 / self.samples.max(1) as f64
    }

    pub fn share_with_waiter(&self) -> f64 {
        self.with_waiter as f64 * 100.0 / self.samples.max(1) as f64
    }
}

/// Samples `pg_stat_activity` every `every` on a connection of its own until stopped.
pub struct LockSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<LockWaits>,
}

impl LockSampler {
    pub fn start(cluster: &Cluster, every: Duration) -> Option<LockSampler> {
        let url = cluster.pg.as_ref()?.url();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = LockWaits::default();
            let mut client = match postgres::Client::connect(&url, postgres::NoTls) {
                Ok(c) => c,
                Err(e) => {
                    out.error = Some(format!("connecting: {e}"));
                    return out;
                }
            };
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let rows = client.query(
                    "SELECT state, wait_event_type, wait_event FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
                    &[],
                );
                match rows {
                    Ok(rows) => {
                        out.samples += 1;
                        let mut waiting = 0;
                        for r in rows {
                            let state: Option<String> = r.get(0);
                            let kind: Option<String> = r.get(1);
                            let event: Option<String> = r.get(2);
                            if state.as_deref() == Some("active") {
                                out.active += 1;
                            }
                            if kind.as_deref() == Some("Lock") {
                                waiting += 1;
                            }
                            if let (Some(k), Some(e)) = (kind, event)
                                && state.as_deref() == Some("active")
                            {
                                *out.events.entry(format!("{k}:{e}")).or_default() += 1;
                            }
                        }
                        out.waiting += waiting;
                        out.with_waiter += u64::from(waiting > 0);
                    }
                    Err(e) => {
                        out.error = Some(format!("sampling: {e}"));
                        return out;
                    }
                }
                std::thread::sleep(every);
            }
            out
        });
        Some(LockSampler { stop, thread })
    }

    /// Stop and return what it saw.
    pub async fn finish(self) -> LockWaits {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join().unwrap_or_default())
            .await
            .unwrap_or_default()
    }
}
