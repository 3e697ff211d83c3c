//! `reboot_host { power_cycle }` once the Reset POST has left the agent: the
//! BMC simulator behind a TCP proxy that holds back or drops the BMC's
//! answer to the POST (some BMCs answer only after the power operation; a
//! power cut may take the answer with it).
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hostplane_agent::exec::{BoxFuture as ExecFuture, Executor, FlashJobs, HostExecutor};
use hostplane_agent::flash::{FlashError, FlashReport, FlashRequest};
use hostplane_agent::power::bmc::{BmcConfig, BmcPowerCycle};
use hostplane_proto::v1::{
    BfbRef, Command, CommandOutcome, FlashProgress, RebootHost, RshimInfo, command::Action,
};
use hostplane_sim::bmc::{BmcHandle, BmcOptions, BmcSim, Model};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

struct NoRshims;

impl FlashJobs for NoRshims {
    fn discover(&self) -> ExecFuture<'_, Vec<RshimInfo>> {
        Box::pin(async { Vec::new() })
    }

    fn prepare<'a>(
        &'a self,
        _: &'a BfbRef,
        _: &'a CancellationToken,
    ) -> ExecFuture<'a, Result<PathBuf, FlashError>> {
        unreachable!("no bfb jobs here")
    }

    fn flash(
        &self,
        _: FlashRequest,
        _: mpsc::Sender<FlashProgress>,
        _: CancellationToken,
    ) -> ExecFuture<'_, Result<FlashReport, FlashError>> {
        unreachable!("no bfb jobs here")
    }
}

/// What the proxy does with the BMC's answer to the Reset POST.
#[derive(Clone, Copy)]
enum Answer {
    /// Passed on after this long.
    After(Duration),
    /// Never passed on: the connection is closed once the POST reached the BMC.
    Dropped,
}

/// A proxy in front of the simulator; every other request passes untouched.
struct Proxy {
    url: String,
    /// Notified when a Reset POST went through to the BMC.
    posted: Arc<Notify>,
}

async fn proxy(upstream: &str, answer: Answer) -> Proxy {
    let upstream = upstream.trim_start_matches("http://").to_string();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let posted = Arc::new(Notify::new());
    let notify = posted.clone();
    tokio::spawn(async move {
        loop {
            let Ok((client, _)) = listener.accept().await else {
                return;
            };
            let server = TcpStream::connect(&upstream).await.unwrap();
            tokio::spawn(pipe(client, server, answer, notify.clone()));
        }
    });
    Proxy { url, posted }
}

async fn pipe(client: TcpStream, server: TcpStream, answer: Answer, posted: Arc<Notify>) {
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let reset = Arc::new(AtomicBool::new(false));
    let seen = reset.clone();
    let up = tokio::spawn(async move {
        let mut buf = vec![0u8; 16384];
        loop {
            let n = match cr.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let text = String::from_utf8_lossy(&buf[..n]);
            let is_reset = text.starts_with("POST ") && text.contains("ComputerSystem.Reset");
            if sw.write_all(&buf[..n]).await.is_err() {
                return;
            }
            if is_reset {
                seen.store(true, Ordering::SeqCst);
                posted.notify_waiters();
            }
        }
    });
    let mut buf = vec![0u8; 16384];
    loop {
        let n = match sr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if reset.load(Ordering::SeqCst) {
            match answer {
                Answer::After(d) => tokio::time::sleep(d).await,
                // The BMC did it; its answer never reaches the agent.
                Answer::Dropped => break,
            }
        }
        if cw.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    up.abort();
    let _ = cw.shutdown().await;
}

struct Node {
    bmc: BmcHandle,
    _dir: tempfile::TempDir,
    cfg: BmcConfig,
}

/// A simulated BMC (admin/admin) and a `power.bmc` pointing at `url` (the
/// proxy), with a 1 s `power.bmc.timeout`.
async fn node(name: &str) -> Node {
    let bmc = BmcSim::spawn(BmcOptions::new(name, Model::DgxH100)).unwrap();
    bmc.set_power_transition(Duration::from_millis(200));
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    std::fs::write(&pw, "admin\n").unwrap();
    let cfg = BmcConfig {
        url: bmc.url(),
        username: "admin".into(),
        password_file: Some(pw),
        min_request_interval: Duration::from_millis(5),
        timeout: Duration::from_secs(1),
        ..Default::default()
    };
    Node { bmc, _dir: dir, cfg }
}

fn executor(cfg: &BmcConfig, url: &str) -> HostExecutor {
    let cfg = BmcConfig {
        url: url.to_string(),
        ..cfg.clone()
    };
    HostExecutor::new(Arc::new(NoRshims), vec!["false".into()])
        .with_bmc(Arc::new(BmcPowerCycle::new(cfg, None)))
}

fn power_cycle() -> Command {
    Command {
        id: "c-cycle".into(),
        dpu: "dpu-a".into(),
        rshim: "rshim0".into(),
        action: Some(Action::RebootHost(RebootHost { power_cycle: true })),
    }
}

async fn run(ex: &HostExecutor, cancel: CancellationToken) -> (CommandOutcome, String) {
    let (tx, _rx) = mpsc::channel(1);
    let r = ex.execute(power_cycle(), tx, cancel).await;
    (r.outcome(), r.message)
}

#[tokio::test]
async fn a_bmc_that_answers_after_power_bmc_timeout_is_still_a_power_cycle() {
    let n = node("slow").await;
    let p = proxy(&n.bmc.url(), Answer::After(Duration::from_millis(2500))).await;
    let start = Instant::now();
    let (o, m) = run(&executor(&n.cfg, &p.url), CancellationToken::new()).await;
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(m.starts_with("power cycle issued through the BMC at"), "{m}");
    assert!(start.elapsed() >= Duration::from_millis(2500));
    assert_eq!(n.bmc.power_cycles(), 1);
    n.bmc.shutdown().await;
}

#[tokio::test]
async fn a_cancel_after_the_post_was_sent_waits_for_the_bmcs_answer() {
    let n = node("cancelled-late").await;
    let p = proxy(&n.bmc.url(), Answer::After(Duration::from_millis(1500))).await;
    let ex = executor(&n.cfg, &p.url);
    let cancel = CancellationToken::new();
    let posted = p.posted.notified();
    let canceller = {
        let cancel = cancel.clone();
        async move {
            posted.await;
            cancel.cancel();
        }
    };
    let ((o, m), ()) = tokio::join!(run(&ex, cancel.clone()), canceller);
    assert!(cancel.is_cancelled());
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(m.starts_with("power cycle issued through the BMC at"), "{m}");
    assert_eq!(n.bmc.power_cycles(), 1);
    n.bmc.shutdown().await;
}

#[tokio::test]
async fn a_cancel_before_the_post_is_honoured_and_nothing_is_sent() {
    let n = node("cancelled-early").await;
    let ex = executor(&n.cfg, &n.bmc.url());
    let cancel = CancellationToken::new();
    // Cancelled once the command has started (its first request to the
    // BMC is under way), long before the three reads before the POST end.
    let canceller = async {
        tokio::task::yield_now().await;
        cancel.cancel();
    };
    let ((o, m), ()) = tokio::join!(run(&ex, cancel.clone()), canceller);
    assert_eq!(o, CommandOutcome::Cancelled, "{m}");
    assert!(m.contains("cancelled before the reset was sent"), "{m}");
    assert_eq!(n.bmc.power_cycles(), 0);
    n.bmc.shutdown().await;
}

#[tokio::test]
async fn a_post_whose_answer_is_lost_may_have_been_issued_and_is_not_failed() {
    let n = node("lost").await;
    let p = proxy(&n.bmc.url(), Answer::Dropped).await;
    let (o, m) = run(&executor(&n.cfg, &p.url), CancellationToken::new()).await;
    // Not FAILED: the coordinator waits for the new boot id (FAILED, or
    // INTERRUPTED at the old boot id, would put the Dpus in Error).
    assert_eq!(o, CommandOutcome::Succeeded, "{m}");
    assert!(m.starts_with("the power cycle may have been issued"), "{m}");
    assert!(m.contains("ComputerSystem.Reset"), "the POST's URL: {m}");
    assert_eq!(n.bmc.power_cycles(), 1, "the BMC did it");
    n.bmc.shutdown().await;
}
