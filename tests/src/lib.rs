//! The end-to-end harness: starts the real binaries (`hostplane-coordinator`,
//! `hostplane-agent`, `hostplane-sim`) as child processes over real sockets
//! and a real FUSE mount, serves BFB images over HTTP, and drives the admin
//! API. Used by the tests in `tests/tests/` and by the demo (`hostplane-demo`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hostplane_proto::v1::admin_service_client::AdminServiceClient;
use hostplane_proto::v1::{self, DpuPhase, Kind, ObjectMeta};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use sha2::Digest;
use tokio::process::{Child, Command};
use tonic::transport::Channel;

pub mod power;
pub mod world;

/// Path of a workspace binary next to the test executable (`target/<profile>/NAME`).
pub fn bin(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe
        .parent()
        .context("test executable has no parent dir")?
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "{} not found: run `cargo build --workspace --bins` first",
            p.display()
        );
    }
    Ok(p)
}

/// Why the simulator cannot run here, if it cannot (no /dev/fuse, no fusermount3).
pub fn fuse_unavailable() -> Option<String> {
    if !Path::new("/dev/fuse").exists() {
        return Some(
            "/dev/fuse is missing (kernel without FUSE, or a container without --device /dev/fuse)".into(),
        );
    }
    let has_fusermount = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|p| p.join("fusermount3").exists()))
        .unwrap_or(false);
    if !has_fusermount {
        return Some("fusermount3 is not installed (run scripts/setup)".into());
    }
    None
}

/// Skip the calling test (return early) with a printed reason when FUSE is unavailable.
#[macro_export]
macro_rules! require_fuse {
    () => {
        if let Some(why) = $crate::fuse_unavailable() {
            eprintln!("SKIPPED: {why}");
            return;
        }
    };
}

/// A child process that is terminated (SIGTERM, then SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(name: &str, program: &Path, args: &[&str], log: &Path) -> Result<Proc> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        let child = Command::new(program)
            .args(args)
            .env(
                "HOSTPLANE_LOG",
                std::env::var("HOSTPLANE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc {
            name: name.into(),
            child: Some(child),
        })
    }

    pub fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| c.id())
            .map(|id| Pid::from_raw(id as i32))
    }

    /// SIGTERM and wait up to `grace`; SIGKILL after that. Returns the exit status code if any.
    pub async fn stop(&mut self, grace: Duration) -> Option<i32> {
        let mut child = self.child.take()?;
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, child.wait()).await {
            Ok(Ok(status)) => status.code(),
            _ => {
                let _ = child.kill().await;
                None
            }
        }
    }

    /// SIGKILL at once: a crash, for restart tests.
    pub async fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut()
            && let Some(pid) = child.id()
        {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.start_kill();
        }
    }
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests).
pub fn free_addr() -> Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Poll `f` every 50 ms until it returns Some, or fail after `timeout` with `what`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Write a valid test BFB of `size` bytes; returns its sha256 (hex).
pub fn write_bfb(path: &Path, size: u64, version: &str, seed: u64) -> Result<String> {
    let f = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
    hostplane_bfb::write_test_bfb(&mut w, size, version, seed)?;
    std::io::Write::flush(&mut w)?;
    sha256_file(path)
}

pub fn sha256_file(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h)?;
    Ok(hex::encode(h.finalize()))
}

/// Serve `dir` over HTTP on 127.0.0.1 (Range requests supported). Returns the base URL.
pub async fn serve_dir(dir: PathBuf) -> Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((format!("http://{addr}"), task))
}

/// An admin API client; over mTLS it sends the lab's admin bearer token.
pub type Admin = AdminServiceClient<tonic::service::interceptor::InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to every call, when it has a token.
#[derive(Clone, Default)]
pub struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl Bearer {
    pub fn new(token: &str) -> Result<Bearer> {
        Ok(Bearer(Some(format!("Bearer {token}").parse()?)))
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// The lab's admin token in `tls_dir` (`hostplanectl certs` lab: `admin.token`).
pub fn lab_admin_token(tls_dir: &Path) -> Result<String> {
    let p = tls_dir.join(hostplane_ctl::certs::LAB_ADMIN_TOKEN);
    Ok(std::fs::read_to_string(&p)
        .with_context(|| format!("reading {}", p.display()))?
        .trim()
        .to_string())
}

/// Connect to a coordinator serving mTLS at `addr` with the lab set in
/// `tls_dir` (`hostplanectl certs`: `ca.crt`, `client-admin.crt/.key`,
/// `admin.token`), retrying until `timeout`.
pub async fn connect_admin_tls(addr: SocketAddr, tls_dir: &Path, timeout: Duration) -> Result<Admin> {
    let read = |f: &str| std::fs::read(tls_dir.join(f)).with_context(|| format!("reading {f}"));
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(read("ca.crt")?))
        .identity(tonic::transport::Identity::from_pem(
            read("client-admin.crt")?,
            read("client-admin.key")?,
        ));
    let bearer = Bearer::new(&lab_admin_token(tls_dir)?)?;
    let endpoint = tonic::transport::Endpoint::from_shared(format!("https://{addr}"))?.tls_config(tls)?;
    wait_for(&format!("coordinator at https://{addr}"), timeout, || {
        let (endpoint, bearer) = (endpoint.clone(), bearer.clone());
        async move {
            endpoint
                .connect()
                .await
                .ok()
                .map(|ch| AdminServiceClient::with_interceptor(ch, bearer))
        }
    })
    .await
}

/// Connect to the admin API (plain http: a coordinator run with --insecure), retrying until `timeout`.
pub async fn connect_admin(addr: SocketAddr, timeout: Duration) -> Result<Admin> {
    let url = format!("http://{addr}");
    wait_for(&format!("coordinator at {url}"), timeout, || {
        let url = url.clone();
        async move {
            let ch = tonic::transport::Endpoint::from_shared(url)
                .ok()?
                .connect()
                .await
                .ok()?;
            Some(AdminServiceClient::with_interceptor(ch, Bearer::default()))
        }
    })
    .await
}

pub fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

pub async fn get_dpu(admin: &mut Admin, name: &str) -> Result<Option<v1::Dpu>> {
    match admin
        .get(v1::GetRequest {
            kind: Kind::Dpu as i32,
            name: name.into(),
        })
        .await
    {
        Ok(r) => match r.into_inner().kind {
            Some(v1::resource::Kind::Dpu(d)) => Ok(Some(d)),
            other => bail!("get dpu {name} returned {other:?}"),
        },
        Err(s) if s.code() == tonic::Code::NotFound => Ok(None),
        Err(s) => Err(s.into()),
    }
}

pub fn phase_of(d: &v1::Dpu) -> DpuPhase {
    d.status
        .as_ref()
        .map(|s| s.phase())
        .unwrap_or(DpuPhase::Unspecified)
}

/// Wait until the Dpu is in `phase`; fails early if it lands in Error while waiting for something else.
pub async fn wait_phase(
    admin: &mut Admin,
    name: &str,
    phase: DpuPhase,
    timeout: Duration,
) -> Result<v1::Dpu> {
    let deadline = Instant::now() + timeout;
    let mut last = None;
    loop {
        if let Some(d) = get_dpu(admin, name).await? {
            let p = phase_of(&d);
            if p == phase {
                return Ok(d);
            }
            if p == DpuPhase::Error && phase != DpuPhase::Error {
                let msg = d.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
                bail!(
                    "dpu {name} went to Error while waiting for {}: {msg}",
                    phase.display_name()
                );
            }
            last = Some(p);
        }
        if Instant::now() > deadline {
            bail!(
                "timed out after {timeout:?} waiting for dpu {name} to reach {} (last phase {:?})",
                phase.display_name(),
                last.map(|p| p.display_name())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Wait until the Dpu `name` exists as a new object, created after `after_ms`
/// (a reprovisioned Dpu comes back with the same name).
pub async fn wait_recreated(admin: &Admin, name: &str, after_ms: i64, timeout: Duration) -> Result<v1::Dpu> {
    wait_for(&format!("dpu {name} to be recreated"), timeout, || {
        let mut admin = admin.clone();
        async move {
            let d = get_dpu(&mut admin, name).await.ok()??;
            (d.metadata.as_ref()?.created_at_ms > after_ms).then_some(d)
        }
    })
    .await
}

/// Why `kubernetes-validate` (the manifest and Helm chart tests' schema
/// checker) cannot run, if it cannot.
pub fn kubernetes_validate_missing() -> Option<String> {
    match std::process::Command::new("kubernetes-validate")
        .arg("--version")
        .output()
    {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "kubernetes-validate --version failed: {}",
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Some(format!(
            "kubernetes-validate is not installed ({e}); scripts/setup installs it with pip"
        )),
    }
}
