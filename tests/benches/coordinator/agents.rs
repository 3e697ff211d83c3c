//! The simulated agents in their own process: the bench re-executes itself
//! with `HOSTPLANE_BENCH_ROLE=agents`, so the agents and the measuring side
//! (admin client, watchers, readings) do not share a tokio runtime.
//!
//! The two talk over the child's stdin and stdout, one JSON [`Line`] per
//! line: the child says `Connected` once every agent has its first desired
//! state, then runs until the parent writes `stop` (or closes stdin), then
//! sends its `Report` (every latency sample) and exits. Its stderr is the
//! bench's.
use std::path::PathBuf;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::agent::{Agent, AgentReport};

/// Selects the role of this executable.
pub const ROLE_ENV: &str = "HOSTPLANE_BENCH_ROLE";
/// What the agents child is to simulate: `urls nodes dpus dpus_per_node`,
/// `urls` comma-separated (the replicas; agent i starts on the i-th modulo
/// their number and fails over to the next).
const FLEET_ENV: &str = "HOSTPLANE_BENCH_AGENTS_FLEET";

#[derive(Debug, Serialize, Deserialize)]
enum Line {
    /// Every agent has its first desired state.
    Connected,
    /// The agents cannot run (setup failed).
    Failed(String),
    /// Everything the agents saw, after `stop`.
    Report(Box<AgentReport>),
}

/// How long to wait for every agent's first desired state.
pub fn connect_timeout(nodes: usize) -> Duration {
    Duration::from_secs(60) + Duration::from_millis(20 * nodes as u64)
}

/// The child's `main`: run the fleet's agents until told to stop.
pub fn child_main() -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("coordinator bench agents: starting the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(child()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("coordinator bench agents: {e:#}");
            let _ = say(&Line::Failed(format!("{e:#}")));
            ExitCode::FAILURE
        }
    }
}

fn say(line: &Line) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    serde_json::to_writer(&mut out, line)?;
    out.write_all(b"\n")?;
    out.flush()?;
    Ok(())
}

async fn child() -> Result<()> {
    let spec = std::env::var(FLEET_ENV).with_context(|| format!("{FLEET_ENV} is not set"))?;
    let f: Vec<&str> = spec.split_whitespace().collect();
    let [urls, _nodes, dpus, per_node] = f[..] else {
        bail!("{FLEET_ENV}={spec:?}: expected 'urls nodes dpus dpus_per_node'")
    };
    let urls: Vec<String> = urls.split(',').map(str::to_string).collect();
    let fleet = crate::fleet(dpus.parse()?, per_node.parse()?);
    let stop = CancellationToken::new();
    let (hello_tx, mut hello_rx) = mpsc::unbounded_channel();
    let mut agents = JoinSet::new();
    for (i, (node, rshims)) in fleet.iter().enumerate() {
        let agent = Agent::new(node, rshims.clone(), urls.clone(), i);
        agents.spawn(agent.run(hello_tx.clone(), stop.child_token()));
    }
    drop(hello_tx);
    let wait = connect_timeout(fleet.len());
    let deadline = tokio::time::Instant::now() + wait;
    for got in 0..fleet.len() {
        match tokio::time::timeout_at(deadline, hello_rx.recv()).await {
            Ok(Some(())) => {}
            _ => {
                stop.cancel();
                let mut report = AgentReport::default();
                while let Some(r) = agents.join_next().await {
                    report.merge(r.unwrap_or_default());
                }
                bail!(
                    "{got} of {} simulated agents got their first desired state within {wait:?}; \
                     sessions that broke: {:?}",
                    fleet.len(),
                    report.broken
                )
            }
        }
    }
    say(&Line::Connected)?;
    // Until the bench says stop (or goes away).
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    while let Ok(Some(l)) = stdin.next_line().await {
        if l.trim() == "stop" {
            break;
        }
    }
    stop.cancel();
    let mut report = AgentReport::default();
    while let Some(r) = agents.join_next().await {
        report.merge(r.context("a simulated agent panicked")?);
    }
    say(&Line::Report(Box::new(report)))
}

/// The bench's handle on the agents child.
pub struct AgentsProc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Lines<BufReader<ChildStdout>>,
}

impl AgentsProc {
    /// Start the child for this fleet and wait until every agent is connected.
    /// `urls`: the coordinator's replicas (agent i starts on `urls[i % len]`).
    pub async fn start(urls: &[String], nodes: usize, dpus: usize, per_node: usize) -> Result<AgentsProc> {
        let exe: PathBuf = std::env::current_exe().context("locating the bench executable")?;
        let mut child = Command::new(exe)
            .env(ROLE_ENV, "agents")
            .env(FLEET_ENV, format!("{} {nodes} {dpus} {per_node}", urls.join(",")))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting the agents process")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("the agents process has no stdout")?;
        let mut p = AgentsProc {
            child,
            stdin,
            lines: BufReader::new(stdout).lines(),
        };
        let wait = connect_timeout(nodes) + Duration::from_secs(10);
        match tokio::time::timeout(wait, p.next()).await {
            Ok(Ok(Line::Connected)) => Ok(p),
            Ok(Ok(Line::Failed(e))) => bail!("simulated agents: {e}"),
            Ok(Ok(other)) => bail!("simulated agents: unexpected {other:?}"),
            Ok(Err(e)) => Err(e),
            Err(_) => bail!("the agents process said nothing within {wait:?}"),
        }
    }

    pub fn pid(&self) -> Option<i32> {
        self.child.id().map(|p| p as i32)
    }

    async fn next(&mut self) -> Result<Line> {
        let l = self
            .lines
            .next_line()
            .await
            .context("reading the agents process")?
            .context("the agents process ended")?;
        serde_json::from_str(&l).with_context(|| format!("the agents process said {l:?}"))
    }

    /// Stop the agents and collect what they saw.
    pub async fn finish(mut self) -> Result<AgentReport> {
        let t = Instant::now();
        if let Some(mut stdin) = self.stdin.take() {
            stdin
                .write_all(b"stop\n")
                .await
                .context("telling the agents to stop")?;
            stdin.flush().await?;
        }
        let r = match tokio::time::timeout(Duration::from_secs(120), self.next()).await {
            Ok(Ok(Line::Report(r))) => *r,
            Ok(Ok(other)) => bail!("simulated agents: unexpected {other:?}"),
            Ok(Err(e)) => return Err(e),
            Err(_) => bail!("the agents process sent no report within 120 s of stop"),
        };
        match tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await {
            Ok(Ok(s)) if s.success() => {}
            Ok(Ok(s)) => bail!("the agents process exited with {s}"),
            Ok(Err(e)) => bail!("waiting for the agents process: {e}"),
            Err(_) => bail!("the agents process did not exit {:?} after stop", t.elapsed()),
        }
        Ok(r)
    }
}
