//! One PostgreSQL connection for the lease work, owned by its own thread.
//!
//! The elector must step down at its deadline even when PostgreSQL does not
//! answer, so no statement runs on the task that keeps the time: each one is
//! a job for a dedicated thread that owns the synchronous
//! [`postgres::Client`], and the task waits for its answer only until a
//! deadline. A job that misses it is abandoned with its thread and its
//! connection (the query is cancelled on the server, best effort; the
//! session's `statement_timeout` ends it otherwise) and the next job gets a
//! fresh thread and a fresh connection. A job that fails drops the
//! connection too, so the next one reconnects: after PostgreSQL restarts,
//! the first attempt fails and the second opens a new session.
//!
//! A dedicated thread rather than `spawn_blocking`: a `postgres::Client`
//! holds a runtime of its own, which must never be dropped on an async task,
//! and a task that is aborted drops whatever it holds. Here the client only
//! ever lives, and is dropped, on its thread.
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use postgres::{CancelToken, Client, NoTls};
use tokio::time::Instant;

use super::HaError;
use crate::store::{PgOptions, pg_connect};

/// How the lease's connections are opened.
#[derive(Debug, Clone)]
pub(crate) struct Setup {
    pub opts: PgOptions,
    /// `application_name` of the session (shown in `pg_stat_activity`).
    pub app_name: String,
    /// The session's `statement_timeout`, `lock_timeout` and
    /// `idle_in_transaction_session_timeout`: a statement this replica
    /// stopped waiting for ends on the server by then at the latest.
    pub statement_timeout: Duration,
}

impl Setup {
    fn open(&self) -> Result<Client, HaError> {
        let mut c = pg_connect(&self.opts)?;
        let ms = self.statement_timeout.as_millis().max(1).to_string();
        // set_config takes the values as parameters: no quoting of the name.
        c.execute(
            "SELECT set_config('application_name', $1, false), \
                    set_config('statement_timeout', $2, false), \
                    set_config('lock_timeout', $2, false), \
                    set_config('idle_in_transaction_session_timeout', $2, false)",
            &[&self.app_name, &ms],
        )?;
        Ok(c)
    }
}

type Job = Box<dyn FnOnce(&mut Option<Client>) + Send>;

struct Worker {
    jobs: mpsc::Sender<Job>,
    /// The cancel key of the session the thread holds, once it connected.
    cancel: Arc<Mutex<Option<CancelToken>>>,
}

impl Worker {
    fn spawn(name: &str) -> Result<Worker, HaError> {
        let (jobs, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let mut client = None;
                // Ends when the Conn drops or abandons this worker.
                for job in rx {
                    job(&mut client);
                }
            })
            .map_err(|e| HaError::Thread(format!("starting thread {name}: {e}")))?;
        Ok(Worker {
            jobs,
            cancel: Arc::default(),
        })
    }
}

/// Why a job gave no answer.
#[derive(Debug)]
pub(crate) enum OpError {
    /// No answer by the deadline; the connection was abandoned.
    TimedOut,
    /// The statement, the connection or the thread failed.
    Failed(HaError),
}

impl std::fmt::Display for OpError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OpError::TimedOut => f.write_str("PostgreSQL did not answer before the deadline"),
            OpError::Failed(e) => e.fmt(f),
        }
    }
}

/// A connection whose statements run on its own thread (see the module).
pub(crate) struct Conn {
    setup: Arc<Setup>,
    thread_name: String,
    worker: Option<Worker>,
}

impl Conn {
    pub fn new(setup: Setup, thread_name: &str) -> Conn {
        Conn {
            setup: Arc::new(setup),
            thread_name: thread_name.to_string(),
            worker: None,
        }
    }

    /// Runs `f` on the connection (opened first when there is none or it
    /// broke), waiting for its answer until `deadline`.
    pub async fn run<T, F>(&mut self, deadline: Instant, f: F) -> Result<T, OpError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Client) -> Result<T, HaError> + Send + 'static,
    {
        if self.worker.is_none() {
            self.worker = Some(Worker::spawn(&self.thread_name).map_err(OpError::Failed)?);
        }
        let worker = self.worker.as_ref().expect("set above");
        let (tx, rx) = tokio::sync::oneshot::channel();
        let setup = self.setup.clone();
        let cancel = worker.cancel.clone();
        let job: Job = Box::new(move |client: &mut Option<Client>| {
            if client.as_ref().is_some_and(Client::is_closed) {
                *client = None;
            }
            let result = match client {
                Some(c) => f(c),
                None => setup.open().and_then(|mut c| {
                    *lock(&cancel) = Some(c.cancel_token());
                    let r = f(&mut c);
                    *client = Some(c);
                    r
                }),
            };
            if result.is_err() {
                // The next job reconnects (PostgreSQL may have restarted).
                *client = None;
                *lock(&cancel) = None;
            }
            let _ = tx.send(result);
        });
        if worker.jobs.send(job).is_err() {
            self.worker = None;
            return Err(OpError::Failed(HaError::Thread(format!(
                "thread {} ended",
                self.thread_name
            ))));
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(result)) => result.map_err(OpError::Failed),
            Ok(Err(_)) => {
                self.worker = None;
                Err(OpError::Failed(HaError::Thread(format!(
                    "thread {} panicked",
                    self.thread_name
                ))))
            }
            Err(_) => {
                self.abandon();
                Err(OpError::TimedOut)
            }
        }
    }

    /// Leaves the current thread and its session to finish on their own and
    /// asks the server to cancel the statement it runs, so that a renewal
    /// stuck behind a lock does not commit after the replica stepped down.
    fn abandon(&mut self) {
        let Some(worker) = self.worker.take() else {
            return;
        };
        if let Some(token) = lock(&worker.cancel).take() {
            let name = self.thread_name.clone();
            // cancel_query opens a connection of its own, with its own runtime.
            let _ = std::thread::Builder::new()
                .name(format!("{name}-cancel"))
                .spawn(move || {
                    if let Err(e) = token.cancel_query(NoTls) {
                        tracing::debug!(error = %e, thread = name, "cancelling an abandoned lease statement failed");
                    }
                });
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
