//! PostgreSQL's read connections (docs/ha.md §1): [`super::Store::read_snapshot`]
//! on PostgreSQL runs on one of at most `store.postgres.pool` connections, in
//! a `REPEATABLE READ READ ONLY` transaction, without the revision lock, so
//! the admin API's reads (Get, List pages, Watch history) on every replica
//! never wait for a writer. Connections are opened on demand, kept while
//! healthy and replaced after an error.
use std::cell::RefCell;
use std::sync::{Condvar, Mutex};

use postgres::IsolationLevel;

use super::txn::{Counters, PgStatements, Tx};
use super::{PgOptions, StoreError, Txn, lock, pg_conn};

struct Conn {
    client: postgres::Client,
    stmts: PgStatements,
}

pub(super) struct Readers {
    opts: PgOptions,
    max: usize,
    /// Idle connections, and how many exist (idle or in use).
    state: Mutex<(Vec<Conn>, usize)>,
    freed: Condvar,
}

impl Readers {
    pub(super) fn new(opts: PgOptions) -> Readers {
        Readers {
            max: opts.pool.max(1),
            opts,
            state: Mutex::new((Vec::new(), 0)),
            freed: Condvar::new(),
        }
    }

    /// A connection: an idle one, a new one while fewer than `max` exist,
    /// else the next one freed. On a blocking thread.
    fn checkout(&self) -> Result<Conn, StoreError> {
        let mut st = lock(&self.state);
        loop {
            if let Some(c) = st.0.pop() {
                if !c.client.is_closed() {
                    return Ok(c);
                }
                st.1 -= 1;
                continue;
            }
            if st.1 < self.max {
                st.1 += 1;
                drop(st);
                return match pg_conn::connect(&self.opts) {
                    Ok(client) => Ok(Conn {
                        client,
                        stmts: PgStatements::new(),
                    }),
                    Err(e) => {
                        lock(&self.state).1 -= 1;
                        self.freed.notify_one();
                        Err(e)
                    }
                };
            }
            st = self.freed.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn checkin(&self, c: Conn, healthy: bool) {
        let mut st = lock(&self.state);
        if healthy && !c.client.is_closed() {
            st.0.push(c);
        } else {
            st.1 -= 1;
            drop(st);
            drop(c);
        }
        self.freed.notify_one();
    }

    /// Run `f` in a read-only transaction on one of the connections.
    pub(super) fn read<T, E, F>(&self, counters: &Counters, f: F) -> Result<T, E>
    where
        F: FnOnce(&mut Txn<'_>) -> Result<T, E>,
        E: From<StoreError>,
    {
        let mut c = self.checkout().map_err(E::from)?;
        let out = in_snapshot(&mut c.client, &mut c.stmts, counters, f);
        // A failure may mean the connection is gone: then it is not kept.
        let healthy = out.is_ok() || !c.client.is_closed();
        self.checkin(c, healthy);
        out
    }
}

/// Run `f` on `client` in one `REPEATABLE READ READ ONLY` transaction
/// (the read pool's reads, and the change reader's catch-up).
pub(super) fn in_snapshot<T, E, F>(
    client: &mut postgres::Client,
    stmts: &mut PgStatements,
    counters: &Counters,
    f: F,
) -> Result<T, E>
where
    F: FnOnce(&mut Txn<'_>) -> Result<T, E>,
    E: From<StoreError>,
{
    let tx = client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .map_err(|e| E::from(StoreError::from(e)))?;
    let mut txn = Txn::new(
        Tx::Pg {
            tx: RefCell::new(tx),
            stmts: RefCell::new(stmts),
        },
        counters,
        false,
    )
    .map_err(E::from)?;
    let out = f(&mut txn)?;
    // Ending a read-only transaction commits nothing; a failure here means
    // the connection is gone.
    txn.commit(0).map_err(E::from)?;
    Ok(out)
}

impl Drop for Readers {
    fn drop(&mut self) {
        // Closing a synchronous client blocks on its own runtime: never on a
        // thread that drives async tasks.
        let idle = std::mem::take(&mut lock(&self.state).0);
        if !idle.is_empty() {
            let _ = std::thread::Builder::new()
                .name("pg-close".into())
                .spawn(move || drop(idle));
        }
    }
}
