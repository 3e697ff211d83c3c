//! Timer behaviour of the session with tokio's paused clock and a scripted
//! connector (no network, so virtual time is exact): reconnect backoff and
//! heartbeat cadence.
mod session_support;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use hostplane_agent::exec::BoxFuture;
use hostplane_agent::run_with;
use hostplane_agent::session::{ConnectError, Connector, Inbound};
use hostplane_proto::v1::agent_message::Msg;
use hostplane_proto::v1::{AgentMessage, CoordinatorMessage, coordinator_message};
use session_support::*;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::{ReceiverStream, UnboundedReceiverStream};
use tokio_util::sync::CancellationToken;

/// One connection attempt, answered by the test.
struct Attempt {
    at: Instant,
    outbound: ReceiverStream<AgentMessage>,
    reply: oneshot::Sender<Result<Inbound, ConnectError>>,
}

struct Scripted(mpsc::UnboundedSender<Attempt>);

impl Connector for Scripted {
    fn target(&self) -> &str {
        "scripted"
    }

    fn open(&self, outbound: ReceiverStream<AgentMessage>) -> BoxFuture<'_, Result<Inbound, ConnectError>> {
        let (reply, answer) = oneshot::channel();
        let _ = self.0.send(Attempt {
            at: Instant::now(),
            outbound,
            reply,
        });
        Box::pin(async move { answer.await.expect("test dropped the attempt") })
    }
}

type ToAgent = mpsc::UnboundedSender<Result<CoordinatorMessage, tonic::Status>>;

impl Attempt {
    fn refuse(self) {
        let err = ConnectError::Transport {
            url: "scripted".into(),
            detail: "connection refused".into(),
        };
        let _ = self.reply.send(Err(err));
    }

    fn accept(self) -> (ReceiverStream<AgentMessage>, ToAgent) {
        let (tx, rx) = mpsc::unbounded_channel();
        let _ = self.reply.send(Ok(UnboundedReceiverStream::new(rx).boxed()));
        (self.outbound, tx)
    }
}

struct Harness {
    attempts: mpsc::UnboundedReceiver<Attempt>,
    shutdown: CancellationToken,
    _dir: tempfile::TempDir,
}

async fn start(lease: Duration) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), "http://127.0.0.1:1");
    cfg.session.backoff_initial = Duration::from_millis(500);
    cfg.session.backoff_max = Duration::from_secs(30);
    cfg.session.stable_after = Duration::from_secs(30);
    cfg.session.default_lease = lease;
    let (tx, attempts) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    tokio::spawn(run_with(
        cfg,
        FakeExecutor::new(),
        None,
        Default::default(),
        Arc::new(Scripted(tx)),
        shutdown.clone(),
    ));
    Harness {
        attempts,
        shutdown,
        _dir: dir,
    }
}

impl Harness {
    async fn attempt(&mut self) -> Attempt {
        self.attempts.recv().await.expect("agent stopped")
    }

    /// Refuse `n` attempts.
    async fn refuse(&mut self, n: usize) {
        for _ in 0..n {
            self.attempt().await.refuse();
        }
    }
}

/// The next message the agent sends, and when.
async fn next(outbound: &mut ReceiverStream<AgentMessage>) -> (Msg, Instant) {
    let m = outbound.next().await.expect("stream ended");
    (m.msg.unwrap(), Instant::now())
}

fn ceiling(k: usize) -> Duration {
    Duration::from_millis(500)
        .saturating_mul(1 << k.min(20))
        .min(Duration::from_secs(30))
}

#[tokio::test(start_paused = true)]
async fn reconnect_delays_grow_exponentially_with_full_jitter() {
    let t0 = Instant::now();
    let mut h = start(Duration::from_secs(15)).await;
    let first = h.attempt().await;
    assert_eq!(first.at, t0, "the first attempt is immediate");
    let mut last = first.at;
    first.refuse();
    let mut gaps = Vec::new();
    for _ in 0..14 {
        let a = h.attempt().await;
        gaps.push(a.at - last);
        last = a.at;
        a.refuse();
    }
    for (k, gap) in gaps.iter().enumerate() {
        assert!(
            *gap <= ceiling(k),
            "delay {k} was {gap:?}, above {:?}",
            ceiling(k)
        );
    }
    // With full jitter every delay can be short, but not all 14 of them:
    // the chance that all stay under 2 s is below 1e-10.
    assert!(gaps.iter().any(|g| *g > Duration::from_secs(2)), "{gaps:?}");
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn a_stable_connection_resets_the_backoff() {
    let mut h = start(Duration::from_secs(15)).await;
    // Three rounds: each time the delay bound has grown to 30 s, a connection
    // that stays up past `stable_after` brings the next delay back under 0.5 s
    // (by chance alone, three rounds would pass with probability ~5e-6).
    for round in 0..3 {
        h.refuse(8).await;
        let (outbound, to_agent) = h.attempt().await.accept();
        tokio::time::sleep(Duration::from_secs(31)).await;
        drop(to_agent);
        let ended = Instant::now();
        let next = h.attempt().await;
        let gap = next.at - ended;
        assert!(
            gap <= Duration::from_millis(500),
            "round {round}: next attempt after {gap:?}"
        );
        next.refuse();
        drop(outbound);
    }
    h.shutdown.cancel();
}

#[tokio::test(start_paused = true)]
async fn heartbeats_go_out_every_third_of_the_lease() {
    let mut h = start(Duration::from_secs(30)).await;
    let (mut outbound, to_agent) = h.attempt().await.accept();
    let connected = Instant::now();
    assert!(matches!(next(&mut outbound).await.0, Msg::Hello(_)));

    // Until the coordinator grants a lease: the configured default (30 s -> every 10 s).
    for i in 1..=2 {
        let (m, at) = next(&mut outbound).await;
        assert!(matches!(m, Msg::Heartbeat(ref hb) if hb.sent_at_ms > 0), "{m:?}");
        assert_eq!(at - connected, Duration::from_secs(10 * i));
    }

    // The granted lease (9 s) takes over: every 3 s from the ACK on.
    let mut state = ds(1, vec![]);
    state.lease_seconds = 9;
    to_agent
        .send(Ok(CoordinatorMessage {
            msg: Some(coordinator_message::Msg::Desired(state)),
        }))
        .unwrap();
    let (m, acked) = next(&mut outbound).await;
    assert!(matches!(m, Msg::Ack(ref a) if a.version == 1), "{m:?}");
    for i in 1..=4 {
        let (m, at) = next(&mut outbound).await;
        assert!(matches!(m, Msg::Heartbeat(_)), "{m:?}");
        assert_eq!(at - acked, Duration::from_secs(3 * i));
    }
    h.shutdown.cancel();
}
