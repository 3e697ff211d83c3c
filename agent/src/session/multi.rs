//! Several coordinator replicas behind one [`Connector`]: each attempt goes
//! to one endpoint, and the endpoint after the one that last failed or whose
//! session ended is tried next (round robin), so when the connected replica
//! goes away the agent's next attempt goes to another. The owner's backoff
//! still applies between attempts.
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::StreamExt;
use hostplane_proto::v1::AgentMessage;
use tokio_stream::wrappers::ReceiverStream;

use super::connector::{ConnectError, Connector, Inbound};
use crate::exec::BoxFuture;

pub struct MultiConnector {
    endpoints: Vec<Box<dyn Connector>>,
    /// The endpoint the next attempt goes to, or the one connected while a session is up.
    cursor: Arc<AtomicUsize>,
}

impl MultiConnector {
    /// `endpoints` in the config's order; the first is tried first. Panics when empty
    /// (the config refuses an empty list).
    pub fn new(endpoints: Vec<Box<dyn Connector>>) -> MultiConnector {
        assert!(
            !endpoints.is_empty(),
            "MultiConnector needs at least one endpoint"
        );
        MultiConnector {
            endpoints,
            cursor: Arc::new(AtomicUsize::new(0)),
        }
    }
}

/// Moves the cursor past `from` (unless something already moved it).
struct Advance {
    cursor: Arc<AtomicUsize>,
    from: usize,
    n: usize,
}

impl Drop for Advance {
    fn drop(&mut self) {
        let _ = self.cursor.compare_exchange(
            self.from,
            (self.from + 1) % self.n,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }
}

impl Connector for MultiConnector {
    /// The endpoint the next attempt goes to, or the connected one.
    fn target(&self) -> &str {
        self.endpoints[self.cursor.load(Ordering::SeqCst) % self.endpoints.len()].target()
    }

    fn open(&self, outbound: ReceiverStream<AgentMessage>) -> BoxFuture<'_, Result<Inbound, ConnectError>> {
        Box::pin(async move {
            let i = self.cursor.load(Ordering::SeqCst) % self.endpoints.len();
            let advance = Advance {
                cursor: self.cursor.clone(),
                from: i,
                n: self.endpoints.len(),
            };
            let endpoint = &self.endpoints[i];
            tracing::debug!(
                coordinator = endpoint.target(),
                index = i,
                "trying coordinator endpoint"
            );
            // On failure `advance` drops here; on success it lives as long as the
            // session's inbound stream, so the cursor moves when the session ends.
            let inbound = endpoint.open(outbound).await?;
            Ok(inbound
                .map(move |m| {
                    let _ = &advance;
                    m
                })
                .boxed())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use futures::stream;

    use super::*;

    /// Records every attempt in a shared log; `up` says whether it accepts.
    struct Scripted {
        name: String,
        up: Arc<Mutex<bool>>,
        log: Arc<Mutex<Vec<String>>>,
    }

    impl Connector for Scripted {
        fn target(&self) -> &str {
            &self.name
        }

        fn open(&self, _: ReceiverStream<AgentMessage>) -> BoxFuture<'_, Result<Inbound, ConnectError>> {
            Box::pin(async move {
                self.log.lock().unwrap().push(self.name.clone());
                if *self.up.lock().unwrap() {
                    Ok(stream::pending().boxed())
                } else {
                    Err(ConnectError::Transport {
                        url: self.name.clone(),
                        detail: "down".into(),
                    })
                }
            })
        }
    }

    fn outbound() -> ReceiverStream<AgentMessage> {
        ReceiverStream::new(tokio::sync::mpsc::channel(1).1)
    }

    #[tokio::test]
    async fn attempts_rotate_past_failures_and_ended_sessions() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let ups: Vec<_> = [false, true, true].map(|u| Arc::new(Mutex::new(u))).into();
        let m = MultiConnector::new(
            ["a", "b", "c"]
                .iter()
                .zip(&ups)
                .map(|(n, up)| {
                    Box::new(Scripted {
                        name: n.to_string(),
                        up: up.clone(),
                        log: log.clone(),
                    }) as Box<dyn Connector>
                })
                .collect(),
        );
        assert_eq!(m.target(), "a");
        // a is down: the attempt fails and the next goes to b.
        assert!(m.open(outbound()).await.is_err());
        assert_eq!(m.target(), "b");
        let session = m.open(outbound()).await.unwrap();
        // While connected the target stays the connected endpoint.
        assert_eq!(m.target(), "b");
        drop(session);
        // b's session ended: the next attempt goes to c, then wraps to a.
        assert_eq!(m.target(), "c");
        *ups[1].lock().unwrap() = false;
        *ups[2].lock().unwrap() = false;
        *ups[0].lock().unwrap() = true;
        assert!(m.open(outbound()).await.is_err());
        let session = m.open(outbound()).await.unwrap();
        assert_eq!(m.target(), "a");
        drop(session);
        assert!(m.open(outbound()).await.is_err());
        assert_eq!(*log.lock().unwrap(), ["a", "b", "c", "a", "b"]);
    }

    #[tokio::test]
    async fn one_endpoint_is_retried() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let m = MultiConnector::new(vec![Box::new(Scripted {
            name: "only".into(),
            up: Arc::new(Mutex::new(false)),
            log: log.clone(),
        })]);
        assert!(m.open(outbound()).await.is_err());
        assert!(m.open(outbound()).await.is_err());
        assert_eq!(*log.lock().unwrap(), ["only", "only"]);
        assert_eq!(m.target(), "only");
    }
}
