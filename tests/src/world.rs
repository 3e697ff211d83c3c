//! A whole simulated site in a temp dir: the DPU simulator (FUSE), a
//! coordinator on its embedded store (or, with [`WorldOpts::postgres`],
//! several coordinator replicas on one PostgreSQL database: docs/ha.md),
//! agents, and an HTTP server for images.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use hostplane_proto::v1::{self, RebootMethod};

use crate::{Admin, Proc, bin, connect_admin_tls, free_addr, meta, serve_dir, wait_for, write_bfb};

/// How to build the world.
#[derive(Debug, Clone)]
pub struct WorldOpts {
    pub dpus: usize,
    /// Simulator delay per boot stage (e.g. "30ms").
    pub stage_delay: String,
    /// Simulator faults, `rshimN=FAULT` (see docs/simulator.md).
    pub faults: Vec<String>,
    /// Extra YAML appended to the coordinator config (fsm timeouts, lease...).
    pub coordinator_yaml: String,
    /// Extra YAML appended to each agent's config.
    pub agent_yaml: String,
    /// Where to keep the files; a fresh temp dir when None.
    pub dir: Option<PathBuf>,
    /// Run the coordinator as replicas on PostgreSQL instead of one process
    /// on SQLite (docs/ha.md, docs/postgres.md).
    pub postgres: Option<PgStore>,
}

/// Coordinator replicas on one PostgreSQL database (`store.backend:
/// postgres` and `ha:` in each replica's config).
#[derive(Debug, Clone)]
pub struct PgStore {
    /// `store.postgres.url`, without the password (e.g. `PgCluster::url_without_password`).
    pub url: String,
    /// Written to a 0600 file in the world's dir, given as `store.postgres.password_file`.
    pub password: String,
    /// How many replicas (named `c0`, `c1`, ...), each its own process and port.
    pub replicas: usize,
    /// `ha.lease`, `ha.renew_every`, `ha.renew_deadline` (humantime).
    pub lease: String,
    pub renew_every: String,
    pub renew_deadline: String,
}

impl PgStore {
    /// `replicas` replicas with the short lease the HA tests use (3 s, renewed
    /// every 500 ms, acting until 2 s after the last renewal sent).
    pub fn new(url: String, password: String, replicas: usize) -> PgStore {
        PgStore {
            url,
            password,
            replicas,
            lease: "3s".into(),
            renew_every: "500ms".into(),
            renew_deadline: "2s".into(),
        }
    }
}

/// One coordinator replica of a [`PgStore`] world.
pub struct Replica {
    /// Its `ha.name` (the `leader` row's holder while it leads).
    pub name: String,
    pub addr: SocketAddr,
    /// `None` while it is stopped or killed.
    pub proc: Option<Proc>,
}

/// One simulated DPU as the simulator's `.control` file reports it (docs/simulator.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimDpu {
    /// `rshimN`.
    pub name: String,
    pub phase: String,
    pub version: String,
    /// Successful OS installs since the simulator started.
    pub installs: u64,
    /// Image streams pushed into `boot`.
    pub pushes: u64,
    pub boots: u64,
}

impl Default for WorldOpts {
    fn default() -> Self {
        WorldOpts {
            dpus: 2,
            stage_delay: "30ms".into(),
            faults: Vec::new(),
            coordinator_yaml: String::new(),
            agent_yaml: String::new(),
            dir: None,
            postgres: None,
        }
    }
}

pub struct World {
    _tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub dev_root: PathBuf,
    pub opts: WorldOpts,
    pub sim: Option<Proc>,
    /// The SQLite coordinator (`None` in a [`PgStore`] world: see `replicas`).
    pub coordinator: Option<Proc>,
    /// The SQLite coordinator's address, or replica 0's.
    pub coordinator_addr: SocketAddr,
    /// A [`PgStore`] world's replicas, in order (`c0` first); empty on SQLite.
    pub replicas: Vec<Replica>,
    /// The lab PKI (`hostplanectl certs`): ca.crt/.key, server.crt/.key,
    /// client-admin.crt/.key, and agent-NODE.crt/.key made as agents start.
    pub tls_dir: PathBuf,
    /// The admin API of the coordinator (replica 0 in a [`PgStore`] world).
    pub admin: Admin,
    pub agents: Vec<(String, Proc)>,
    pub http_base: String,
    _http: tokio::task::JoinHandle<()>,
}

impl World {
    pub async fn start(opts: WorldOpts) -> Result<World> {
        let (tmp, dir) = match &opts.dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("hostplane-e2e-").tempdir()?;
                let p = t.path().to_path_buf();
                (Some(t), p)
            }
        };
        let dev_root = dir.join("dev");
        std::fs::create_dir_all(dir.join("www"))?;
        std::fs::create_dir_all(dir.join("logs"))?;
        let sim = start_sim(&dir, &dev_root, &opts).await?;
        let (http_base, http) = serve_dir(dir.join("www")).await?;
        // Everything runs over mTLS, as in production: a CA, the coordinator's
        // certificate (127.0.0.1, localhost) and an admin client certificate.
        // Replicas share the server certificate.
        let tls_dir = dir.join("tls");
        hostplane_ctl::certs::lab(&tls_dir, &["localhost"], &[]).context("making the lab certificates")?;
        let (coordinator, replicas, coordinator_addr) = match &opts.postgres {
            None => {
                let (c, addr) = start_coordinator_on_a_free_port(&dir, &opts.coordinator_yaml).await?;
                (Some(c), Vec::new(), addr)
            }
            Some(pg) => {
                write_password_file(&dir.join("pg-password"), &pg.password)?;
                let mut replicas = Vec::with_capacity(pg.replicas);
                for i in 0..pg.replicas.max(1) {
                    let name = format!("c{i}");
                    let addr = free_addr()?;
                    let proc = start_replica(&dir, &name, addr, pg, &opts.coordinator_yaml)?;
                    replicas.push(Replica {
                        name,
                        addr,
                        proc: Some(proc),
                    });
                }
                let addr = replicas[0].addr;
                (None, replicas, addr)
            }
        };
        let admin = connect_admin_tls(coordinator_addr, &tls_dir, Duration::from_secs(20)).await?;
        Ok(World {
            _tmp: tmp,
            dir,
            dev_root,
            opts,
            sim: Some(sim),
            coordinator,
            coordinator_addr,
            replicas,
            tls_dir,
            admin,
            agents: Vec::new(),
            http_base,
            _http: http,
        })
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    /// Stop the coordinator (SIGTERM, or SIGKILL when `crash`) and start it again on the same store
    /// (replica 0 in a [`PgStore`] world).
    pub async fn restart_coordinator(&mut self, crash: bool) -> Result<()> {
        if !self.replicas.is_empty() {
            self.stop_replica(0, crash).await;
            self.start_replica(0)?;
            self.admin = self.replica_admin(0).await?;
            return Ok(());
        }
        if let Some(mut c) = self.coordinator.take() {
            if crash {
                c.crash().await;
            } else {
                c.stop(Duration::from_secs(15)).await;
            }
        }
        self.coordinator = Some(start_coordinator(
            &self.dir,
            self.coordinator_addr,
            &self.opts.coordinator_yaml,
        )?);
        self.admin = connect_admin_tls(self.coordinator_addr, &self.tls_dir, Duration::from_secs(20)).await?;
        Ok(())
    }

    /// Start an agent for `node` (its state dir survives restarts).
    pub fn start_agent(&mut self, node: &str) -> Result<()> {
        self.start_agent_with(node, "")
    }

    /// [`Self::start_agent`] with YAML of its own appended to the agent's config
    /// (after `WorldOpts::agent_yaml`; a section must not repeat one given there).
    /// In a [`PgStore`] world the agent gets every replica's URL, `c0` first.
    pub fn start_agent_with(&mut self, node: &str, own_yaml: &str) -> Result<()> {
        let endpoints: Vec<SocketAddr> = if self.replicas.is_empty() {
            vec![self.coordinator_addr]
        } else {
            self.replicas.iter().map(|r| r.addr).collect()
        };
        self.start_agent_at(node, &endpoints, own_yaml)
    }

    /// Start an agent for `node` whose `coordinator:` is the list `endpoints`
    /// (tried in that order, round robin: agent/src/session/multi.rs).
    pub fn start_agent_at(&mut self, node: &str, endpoints: &[SocketAddr], own_yaml: &str) -> Result<()> {
        anyhow::ensure!(
            !endpoints.is_empty(),
            "an agent needs at least one coordinator endpoint"
        );
        let coordinator = match endpoints {
            [one] => format!("https://{one}"),
            many => many
                .iter()
                .map(|a| format!("\n  - https://{a}"))
                .collect::<String>(),
        };
        let state = self.dir.join("agents").join(node);
        std::fs::create_dir_all(state.join("proc/sys/kernel/random"))?;
        let boot_id = state.join("proc/sys/kernel/random/boot_id");
        if !boot_id.exists() {
            std::fs::write(&boot_id, "00000000-0000-4000-8000-000000000001\n")?;
        }
        let leaf = hostplane_ctl::certs::Leaf::Agent { node: node.into() };
        let stem = leaf.file_stem();
        if !self.tls_dir.join(format!("{stem}.crt")).exists() {
            let ca = hostplane_ctl::certs::Ca::load(&self.tls_dir)?;
            let pair = ca.issue(&leaf, hostplane_ctl::certs::Validity::days(1))?;
            hostplane_ctl::certs::write_pair(&self.tls_dir, &stem, &pair, false)?;
        }
        let cfg = format!(
            "node_name: {node}\n\
             coordinator: {coordinator}\n\
             tls:\n  ca_file: {tls}/ca.crt\n  cert_file: {tls}/{stem}.crt\n  key_file: {tls}/{stem}.key\n\
             state_dir: {state}\n\
             dev_root: {dev}\n\
             procfs_root: {procfs}\n\
             cache:\n  dir: {state}/cache\n\
             {extra}\n\
             {own}\n",
            tls = self.tls_dir.display(),
            state = state.display(),
            dev = self.dev_root.display(),
            procfs = state.join("proc").display(),
            extra = self.opts.agent_yaml,
            own = own_yaml,
        );
        let cfg_path = state.join("agent.yaml");
        std::fs::write(&cfg_path, cfg)?;
        let log = self.log_path(&format!("agent-{node}"));
        let p = Proc::spawn(
            &format!("agent-{node}"),
            &bin("hostplane-agent")?,
            &["run", "--config", cfg_path.to_str().context("utf-8 path")?],
            &log,
        )?;
        self.agents.retain(|(n, _)| n != node);
        self.agents.push((node.to_string(), p));
        Ok(())
    }

    /// Kill an agent with SIGKILL (a crash).
    pub async fn crash_agent(&mut self, node: &str) {
        if let Some((_, p)) = self.agents.iter_mut().find(|(n, _)| n == node) {
            p.crash().await;
        }
    }

    /// Write a test BFB into the HTTP dir and register it as a Bfb resource.
    pub async fn add_bfb(&mut self, name: &str, size: u64, version: &str) -> Result<v1::Bfb> {
        let file = format!("{name}.bfb");
        let path = self.dir.join("www").join(&file);
        let sha = write_bfb(&path, size, version, version.len() as u64 * 7919 + size)?;
        let bfb = v1::Bfb {
            metadata: meta(name),
            spec: Some(v1::BfbSpec {
                url: format!("{}/{file}", self.http_base),
                sha256: sha,
                version: version.into(),
                size_bytes: std::fs::metadata(&path)?.len(),
            }),
        };
        self.create_bfb(bfb).await
    }

    /// Register a Bfb resource for an arbitrary URL and digest.
    pub async fn add_bfb_spec(&mut self, name: &str, url: &str, sha256: &str) -> Result<v1::Bfb> {
        let bfb = v1::Bfb {
            metadata: meta(name),
            spec: Some(v1::BfbSpec {
                url: url.into(),
                sha256: sha256.into(),
                ..Default::default()
            }),
        };
        self.create_bfb(bfb).await
    }

    async fn create_bfb(&mut self, bfb: v1::Bfb) -> Result<v1::Bfb> {
        let r = self
            .admin
            .create(v1::CreateRequest {
                resource: Some(bfb.into()),
            })
            .await?
            .into_inner();
        match r.kind {
            Some(v1::resource::Kind::Bfb(b)) => Ok(b),
            other => anyhow::bail!("create bfb returned {other:?}"),
        }
    }

    /// Create a node with devices `(device name, rshim name)` in one call.
    pub async fn add_node(
        &mut self,
        node: &str,
        reboot: RebootMethod,
        devices: &[(&str, &str)],
        labels: &[(&str, &str)],
    ) -> Result<()> {
        let devices = devices
            .iter()
            .map(|(name, rshim)| v1::Device {
                metadata: Some(v1::ObjectMeta {
                    name: (*name).into(),
                    labels: labels.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                    ..Default::default()
                }),
                spec: Some(v1::DeviceSpec {
                    node: node.into(),
                    rshim: (*rshim).into(),
                    serial: format!("SN-{name}"),
                    // The simulator puts rshimN at PCI bus 0x04 + N.
                    pci_address: rshim
                        .strip_prefix("rshim")
                        .and_then(|n| n.parse::<u32>().ok())
                        .map(|n| format!("0000:{:02x}:00.0", 4 + n))
                        .unwrap_or_default(),
                    ..Default::default()
                }),
                status: None,
            })
            .collect();
        self.admin
            .create_node_with_devices(v1::CreateNodeWithDevicesRequest {
                node: Some(v1::Node {
                    metadata: meta(node),
                    spec: Some(v1::NodeSpec {
                        reboot_method: reboot as i32,
                    }),
                    status: None,
                }),
                devices,
            })
            .await?;
        Ok(())
    }

    pub async fn add_flavor(&mut self, name: &str, bf_cfg: &[(&str, &str)]) -> Result<()> {
        let flavor = v1::Flavor {
            metadata: meta(name),
            spec: Some(v1::FlavorSpec {
                bf_cfg: bf_cfg.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect(),
                ..Default::default()
            }),
        };
        self.admin
            .create(v1::CreateRequest {
                resource: Some(flavor.into()),
            })
            .await?;
        Ok(())
    }

    pub async fn add_deployment(&mut self, name: &str, spec: v1::DeploymentSpec) -> Result<()> {
        let d = v1::Deployment {
            metadata: meta(name),
            spec: Some(spec),
            status: None,
        };
        self.admin
            .create(v1::CreateRequest {
                resource: Some(d.into()),
            })
            .await?;
        Ok(())
    }

    /// Panics unless the simulated DPU behind `rshim` never started a boot:
    /// its log holds no boot line, so it was never reset.
    pub fn assert_never_reset(&self, rshim: &str) {
        let misc = std::fs::read_to_string(self.dev_root.join(rshim).join("misc")).expect("misc is readable");
        assert!(
            !misc.contains("PSC BL1 START"),
            "{rshim} must not have been reset:\n{misc}"
        );
    }

    /// Every simulated DPU's state, from the simulator's `.control` file
    /// (one `rshimN phase=... installs=N ...` line each; docs/simulator.md).
    pub fn sim_dpus(&self) -> Result<Vec<SimDpu>> {
        let path = self.dev_root.join(".control");
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|line| {
                parse_sim_line(line).with_context(|| format!("{}: bad line {line:?}", path.display()))
            })
            .collect()
    }

    /// The log file of replica `i`.
    pub fn replica_log(&self, i: usize) -> PathBuf {
        self.log_path(&format!("coordinator-{}", self.replicas[i].name))
    }

    /// The index of the replica named `name`.
    pub fn replica_index(&self, name: &str) -> Option<usize> {
        self.replicas.iter().position(|r| r.name == name)
    }

    /// A new admin client on replica `i` (retrying the connection for 20 s).
    pub async fn replica_admin(&self, i: usize) -> Result<Admin> {
        connect_admin_tls(self.replicas[i].addr, &self.tls_dir, Duration::from_secs(20)).await
    }

    /// Stop replica `i`: SIGKILL when `crash`, else SIGTERM (15 s grace).
    pub async fn stop_replica(&mut self, i: usize, crash: bool) {
        if let Some(mut p) = self.replicas[i].proc.take() {
            if crash {
                p.crash().await;
            } else {
                p.stop(Duration::from_secs(15)).await;
            }
        }
    }

    /// Start replica `i` again (same name, address and config), after
    /// [`Self::stop_replica`]. Errors when it is running.
    pub fn start_replica(&mut self, i: usize) -> Result<()> {
        let pg = self
            .opts
            .postgres
            .clone()
            .context("start_replica: this world has no replicas (WorldOpts::postgres is None)")?;
        let r = &mut self.replicas[i];
        anyhow::ensure!(r.proc.is_none(), "replica {} is still running", r.name);
        r.proc = Some(start_replica(
            &self.dir,
            &r.name,
            r.addr,
            &pg,
            &self.opts.coordinator_yaml,
        )?);
        Ok(())
    }

    /// GetClusterStatus on replica `i` (a fresh connection).
    pub async fn cluster_status(&self, i: usize) -> Result<v1::ClusterStatus> {
        let mut admin = self.replica_admin(i).await?;
        Ok(admin
            .get_cluster_status(v1::ClusterStatusRequest {})
            .await
            .with_context(|| format!("GetClusterStatus on replica {}", self.replicas[i].name))?
            .into_inner())
    }

    /// Replica `i`'s gRPC health for the whole server, asked through
    /// `hostplane-coordinator health` with its config and the admin client
    /// certificate: `SERVING`, `NOT_SERVING` (or another status name), or an
    /// error saying why there was no answer.
    pub async fn replica_health(&self, i: usize) -> Result<String> {
        let r = &self.replicas[i];
        let cfg = self.dir.join(format!("coordinator-{}.yaml", r.name));
        let out = tokio::process::Command::new(bin("hostplane-coordinator")?)
            .arg("--config")
            .arg(&cfg)
            .args(["health", "--timeout", "2s", "--cert-file"])
            .arg(self.tls_dir.join("client-admin.crt"))
            .arg("--key-file")
            .arg(self.tls_dir.join("client-admin.key"))
            .output()
            .await
            .context("running hostplane-coordinator health")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        match stdout.trim().rsplit_once(": ") {
            Some((_, status)) if !status.is_empty() => Ok(status.to_string()),
            _ => bail!(
                "{}: no health status ({}): {}{}",
                r.name,
                out.status,
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        }
    }

    /// Waits until a running replica reports a live lease (a holder with
    /// `expires_in_ms`) held by a running replica, with an epoch of at least
    /// `min_epoch`, and that replica itself answers `role: leader`. Returns
    /// the leader's index and its own answer.
    pub async fn wait_leader(&self, min_epoch: i64, timeout: Duration) -> Result<(usize, v1::ClusterStatus)> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        loop {
            for (i, r) in self.replicas.iter().enumerate() {
                if r.proc.is_none() {
                    continue;
                }
                let Ok(Ok(mut admin)) = tokio::time::timeout(
                    Duration::from_secs(2),
                    connect_admin_tls(r.addr, &self.tls_dir, Duration::from_secs(1)),
                )
                .await
                else {
                    last = format!("{} unreachable", r.name);
                    continue;
                };
                let st = match admin.get_cluster_status(v1::ClusterStatusRequest {}).await {
                    Ok(st) => st.into_inner(),
                    Err(e) => {
                        last = format!("{}: {e}", r.name);
                        continue;
                    }
                };
                let lease = st.leader.clone().unwrap_or_default();
                last = format!("{} says: {lease:?}", r.name);
                let holder = self
                    .replica_index(&lease.holder)
                    .filter(|h| self.replicas[*h].proc.is_some());
                if let Some(h) = holder
                    && lease.expires_in_ms.is_some()
                    && lease.epoch >= min_epoch
                {
                    let own = if h == i {
                        st
                    } else {
                        match self.cluster_status(h).await {
                            Ok(own) => own,
                            Err(e) => {
                                last = format!("{e:#}");
                                continue;
                            }
                        }
                    };
                    if own.role == "leader" && own.leader.as_ref().map(|l| l.epoch) == Some(lease.epoch) {
                        return Ok((h, own));
                    }
                    last = format!("{} holds epoch {} but answers {own:?}", lease.holder, lease.epoch);
                }
            }
            if tokio::time::Instant::now() > deadline {
                bail!("no leader with epoch >= {min_epoch} after {timeout:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stop everything in order: agents, coordinator, simulator (unmount).
    pub async fn shutdown(mut self) -> Result<()> {
        for (_, mut a) in self.agents.drain(..) {
            a.stop(Duration::from_secs(15)).await;
        }
        if let Some(mut c) = self.coordinator.take() {
            c.stop(Duration::from_secs(15)).await;
        }
        for r in &mut self.replicas {
            if let Some(mut p) = r.proc.take() {
                p.stop(Duration::from_secs(15)).await;
            }
        }
        if let Some(mut s) = self.sim.take() {
            s.stop(Duration::from_secs(10)).await;
        }
        Ok(())
    }
}

async fn start_sim(dir: &Path, dev_root: &Path, opts: &WorldOpts) -> Result<Proc> {
    let mut args: Vec<String> = vec![
        "rshim".into(),
        "--root".into(),
        dev_root.display().to_string(),
        "--dpus".into(),
        opts.dpus.to_string(),
        "--stage-delay".into(),
        opts.stage_delay.clone(),
    ];
    for f in &opts.faults {
        args.push("--fault".into());
        args.push(f.clone());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let p = Proc::spawn("sim", &bin("hostplane-sim")?, &args, &dir.join("logs/sim.log"))?;
    let misc = dev_root.join(format!("rshim{}/misc", opts.dpus.saturating_sub(1)));
    wait_for("the simulator's rshim devices", Duration::from_secs(20), || {
        let misc = misc.clone();
        async move { misc.exists().then_some(()) }
    })
    .await
    .with_context(|| format!("see {}", dir.join("logs/sim.log").display()))?;
    Ok(p)
}

/// One `.control` status line: `rshim0 phase=up version=4.9.0 installs=1 boots=2 pushes=1 ...`.
fn parse_sim_line(line: &str) -> Result<SimDpu> {
    let mut words = line.split_whitespace();
    let name = words.next().context("no DPU name")?.to_string();
    let fields: std::collections::HashMap<&str, &str> = words.filter_map(|w| w.split_once('=')).collect();
    let get = |k: &str| fields.get(k).copied().with_context(|| format!("no {k}="));
    let num = |k: &str| -> Result<u64> { get(k)?.parse().with_context(|| format!("{k}= is not a number")) };
    Ok(SimDpu {
        name,
        phase: get("phase")?.to_string(),
        version: get("version")?.to_string(),
        installs: num("installs")?,
        pushes: num("pushes")?,
        boots: num("boots")?,
    })
}

fn write_password_file(path: &Path, password: &str) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, format!("{password}\n")).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(())
}

/// Replica `name` of a [`PgStore`] world: its own config, audit file and log
/// (`logs/coordinator-NAME.log`), the shared certificates and tokens.
fn start_replica(dir: &Path, name: &str, addr: SocketAddr, pg: &PgStore, extra_yaml: &str) -> Result<Proc> {
    let cfg = dir.join(format!("coordinator-{name}.yaml"));
    std::fs::write(
        &cfg,
        format!(
            "listen: {addr}\n\
             store:\n  backend: postgres\n  postgres:\n    url: {url}\n    password_file: {pw}\n    sslmode: disable\n\
             ha:\n  name: {name}\n  addr: {addr}\n  lease: {lease}\n  renew_every: {renew}\n  renew_deadline: {deadline}\n\
             tls:\n  cert_file: {tls}/server.crt\n  key_file: {tls}/server.key\n  client_ca_file: {tls}/ca.crt\n\
             auth:\n  tokens_file: {tls}/tokens.yaml\n  audit_file: {audit}\n\
             {extra_yaml}\n",
            url = pg.url,
            pw = dir.join("pg-password").display(),
            lease = pg.lease,
            renew = pg.renew_every,
            deadline = pg.renew_deadline,
            tls = dir.join("tls").display(),
            audit = dir.join(format!("audit-{name}.jsonl")).display(),
        ),
    )?;
    Proc::spawn(
        &format!("coordinator-{name}"),
        &bin("hostplane-coordinator")?,
        &["run", "--config", cfg.to_str().context("utf-8 path")?],
        &dir.join(format!("logs/coordinator-{name}.log")),
    )
}

/// Start the coordinator on a port `free_addr` picked, and wait until it
/// listens. A port found free can be taken by another test's process before
/// the coordinator binds it (tests run in parallel): the coordinator then
/// exits at once, and it is started again on another port (three tries).
async fn start_coordinator_on_a_free_port(dir: &Path, extra_yaml: &str) -> Result<(Proc, SocketAddr)> {
    let log = dir.join("logs/coordinator.log");
    for attempt in 1..=3 {
        let addr = free_addr()?;
        let mut c = start_coordinator(dir, addr, extra_yaml)?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok((c, addr));
            }
            if !c.running() {
                let text = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = text.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
                if attempt < 3 && text.contains("in use") {
                    eprintln!("coordinator could not bind {addr} (taken meanwhile); trying another port");
                    break;
                }
                anyhow::bail!("the coordinator exited before listening on {addr}: {tail}");
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "the coordinator did not listen on {addr} within 20s (log: {})",
                    log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    anyhow::bail!("the coordinator could not bind a free port in three tries")
}

fn start_coordinator(dir: &Path, addr: SocketAddr, extra_yaml: &str) -> Result<Proc> {
    let cfg = dir.join("coordinator.yaml");
    std::fs::write(
        &cfg,
        format!(
            "listen: {addr}\nstore:\n  path: {}\n\
             tls:\n  cert_file: {tls}/server.crt\n  key_file: {tls}/server.key\n  client_ca_file: {tls}/ca.crt\n\
             auth:\n  tokens_file: {tls}/tokens.yaml\n  audit_file: {audit}\n\
             {extra_yaml}\n",
            dir.join("coordinator.db").display(),
            tls = dir.join("tls").display(),
            audit = dir.join("audit.jsonl").display(),
        ),
    )?;
    Proc::spawn(
        "coordinator",
        &bin("hostplane-coordinator")?,
        &["run", "--config", cfg.to_str().context("utf-8 path")?],
        &dir.join("logs/coordinator.log"),
    )
}
