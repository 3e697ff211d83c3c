//! A whole simulated site in a temp dir: the DPU simulator (FUSE), a
//! coordinator on its embedded store, agents, and an HTTP server for images.
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
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
        }
    }
}

pub struct World {
    _tmp: Option<tempfile::TempDir>,
    pub dir: PathBuf,
    pub dev_root: PathBuf,
    pub opts: WorldOpts,
    pub sim: Option<Proc>,
    pub coordinator: Option<Proc>,
    pub coordinator_addr: SocketAddr,
    /// The lab PKI (`hostplanectl certs`): ca.crt/.key, server.crt/.key,
    /// client-admin.crt/.key, and agent-NODE.crt/.key made as agents start.
    pub tls_dir: PathBuf,
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
        let coordinator_addr = free_addr()?;
        // Everything runs over mTLS, as in production: a CA, the coordinator's
        // certificate (127.0.0.1, localhost) and an admin client certificate.
        let tls_dir = dir.join("tls");
        hostplane_ctl::certs::lab(&tls_dir, &["localhost"], &[]).context("making the lab certificates")?;
        let coordinator = start_coordinator(&dir, coordinator_addr, &opts.coordinator_yaml)?;
        let admin = connect_admin_tls(coordinator_addr, &tls_dir, Duration::from_secs(20)).await?;
        Ok(World {
            _tmp: tmp,
            dir,
            dev_root,
            opts,
            sim: Some(sim),
            coordinator: Some(coordinator),
            coordinator_addr,
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

    /// Stop the coordinator (SIGTERM, or SIGKILL when `crash`) and start it again on the same store.
    pub async fn restart_coordinator(&mut self, crash: bool) -> Result<()> {
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
    pub fn start_agent_with(&mut self, node: &str, own_yaml: &str) -> Result<()> {
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
             coordinator: https://{addr}\n\
             tls:\n  ca_file: {tls}/ca.crt\n  cert_file: {tls}/{stem}.crt\n  key_file: {tls}/{stem}.key\n\
             state_dir: {state}\n\
             dev_root: {dev}\n\
             procfs_root: {procfs}\n\
             cache:\n  dir: {state}/cache\n\
             {extra}\n\
             {own}\n",
            addr = self.coordinator_addr,
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

    /// Stop everything in order: agents, coordinator, simulator (unmount).
    pub async fn shutdown(mut self) -> Result<()> {
        for (_, mut a) in self.agents.drain(..) {
            a.stop(Duration::from_secs(15)).await;
        }
        if let Some(mut c) = self.coordinator.take() {
            c.stop(Duration::from_secs(15)).await;
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
