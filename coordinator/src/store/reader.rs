//! The change reader (docs/ha.md §4): on PostgreSQL each replica follows the
//! commits of the others. A thread holds a `LISTEN hostplane` connection;
//! on a notification (every commit sends one with its revision), on each
//! (re)connect and at least every `poll`, it reads everything committed
//! after the view's revision in one `REPEATABLE READ READ ONLY` transaction
//! and replays it through [`Store::follow`]: the view, then the watch cache,
//! then the feeds, as the writer does with its own commits. A lost
//! notification therefore only delays a change until the next poll.
//!
//! The thread ends within one `poll` after the store's last clone is
//! dropped. Connection failures are retried with a backoff up to 5 s.
use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;

use super::txn::PgStatements;
use super::{Inner, PgOptions, Store, StoreError, pg_conn, readers};

/// The longest wait between two reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Start following for the store `inner`.
pub(super) fn spawn(inner: Weak<Inner>, opts: PgOptions, poll: Duration) {
    let started = std::thread::Builder::new()
        .name("store-follow".into())
        .spawn(move || run(&inner, &opts, poll));
    if let Err(e) = started {
        tracing::error!(error = %e, "cannot start the store's change reader");
    }
}

fn run(inner: &Weak<Inner>, opts: &PgOptions, poll: Duration) {
    let mut backoff = Duration::from_millis(200);
    loop {
        if inner.strong_count() == 0 {
            return;
        }
        let mut client = match pg_conn::connect(opts).and_then(|mut c| {
            c.batch_execute("LISTEN hostplane")?;
            Ok(c)
        }) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "store change reader: cannot listen");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        backoff = Duration::from_millis(200);
        let mut stmts = HashMap::new();
        loop {
            let Some(strong) = inner.upgrade() else { return };
            let caught = catch_up(&strong, &mut client, &mut stmts);
            drop(strong);
            if let Err(e) = caught {
                tracing::warn!(error = %e, "store change reader: catching up failed; reconnecting");
                break;
            }
            let waited = {
                let mut n = client.notifications();
                let woke = n.timeout_iter(poll).next().map(|_| ());
                // Every pending notification is covered by the next catch-up.
                woke.and_then(|()| n.iter().count().map(|_| ()))
            };
            if let Err(e) = waited {
                tracing::warn!(error = %e, "store change reader: connection lost; reconnecting");
                break;
            }
            if client.is_closed() {
                break;
            }
        }
    }
}

/// Replay everything committed after the view, in one read-only snapshot.
fn catch_up(
    inner: &Inner,
    client: &mut postgres::Client,
    stmts: &mut PgStatements,
) -> Result<(), StoreError> {
    readers::in_snapshot(client, stmts, &inner.counters, |t| Store::follow(inner, t))
}
