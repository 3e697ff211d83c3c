//! Deferred replies: the FUSE session has one request thread, so a reply that
//! must wait (the reset delay of `boot`, the `slow` throttle) is handed to
//! this timer thread instead of sleeping on the request thread.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

type Task = Box<dyn FnOnce() + Send>;

struct Job {
    at: Instant,
    task: Task,
}

pub(crate) struct Delayer {
    tx: Option<mpsc::Sender<Job>>,
    thread: Option<JoinHandle<()>>,
}

impl Delayer {
    pub fn new(name: &str) -> std::io::Result<Delayer> {
        let (tx, rx) = mpsc::channel::<Job>();
        let span = tracing::info_span!("reply_delayer", mount = %name);
        let thread = std::thread::Builder::new()
            .name("sim-delayer".to_string())
            .spawn(move || {
                let _enter = span.enter();
                run(rx)
            })?;
        Ok(Delayer {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Run `task` after `delay` (at once, on this thread, if `delay` is zero).
    pub fn after(&self, delay: Duration, task: impl FnOnce() + Send + 'static) {
        if delay.is_zero() {
            task();
            return;
        }
        let job = Job {
            at: Instant::now() + delay,
            task: Box::new(task),
        };
        let Some(tx) = &self.tx else {
            (job.task)();
            return;
        };
        if let Err(mpsc::SendError(job)) = tx.send(job) {
            (job.task)();
        }
    }
}

impl Drop for Delayer {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(rx: mpsc::Receiver<Job>) {
    let mut heap: BinaryHeap<Reverse<(Instant, u64)>> = BinaryHeap::new();
    let mut tasks: HashMap<u64, Task> = HashMap::new();
    let mut seq = 0u64;
    loop {
        let now = Instant::now();
        while let Some(Reverse((at, id))) = heap.peek().copied() {
            if at > now {
                break;
            }
            heap.pop();
            if let Some(task) = tasks.remove(&id) {
                task();
            }
        }
        let received = match heap.peek() {
            Some(Reverse((at, _))) => rx.recv_timeout(at.saturating_duration_since(Instant::now())),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match received {
            Ok(job) => {
                seq += 1;
                heap.push(Reverse((job.at, seq)));
                tasks.insert(seq, job.task);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                // Shutting down: answer everything that is still waiting.
                while let Some(Reverse((_, id))) = heap.pop() {
                    if let Some(task) = tasks.remove(&id) {
                        task();
                    }
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn tasks_run_in_deadline_order_and_pending_ones_run_on_drop() {
        let order = Arc::new(Mutex::new(Vec::new()));
        let d = Delayer::new("test").unwrap();
        for (i, ms) in [(1, 30u64), (2, 10), (3, 20)] {
            let order = Arc::clone(&order);
            d.after(Duration::from_millis(ms), move || order.lock().unwrap().push(i));
        }
        let o = Arc::clone(&order);
        d.after(Duration::ZERO, move || o.lock().unwrap().push(0));
        let o = Arc::clone(&order);
        d.after(Duration::from_secs(3600), move || o.lock().unwrap().push(9));
        while order.lock().unwrap().len() < 4 {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*order.lock().unwrap(), [0, 2, 3, 1]);
        drop(d);
        assert_eq!(*order.lock().unwrap(), [0, 2, 3, 1, 9]);
    }
}
