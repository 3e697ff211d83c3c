//! `hostplanectl status` (alias `cluster`): the coordinator cluster as the
//! replica that answers sees it (GetClusterStatus): the store backend and
//! schema version, the leader and its epoch, and every replica.
use hostplane_proto::v1::{ClusterStatus, ClusterStatusRequest, LeaderStatus};

use super::{Conn, Ctx, Out, emit};
use crate::error::Error;
use crate::output::{self, Format, TableWriter, age};

pub async fn run(conn: &Conn, ctx: &Ctx, out: &mut Out) -> Result<u8, Error> {
    let mut client = conn.client().await?;
    let status = client
        .get_cluster_status(ClusterStatusRequest {})
        .await?
        .into_inner();
    emit(out, &render(&status, ctx.format)?).await?;
    Ok(0)
}

pub fn render(s: &ClusterStatus, format: Format) -> Result<String, Error> {
    match format {
        Format::Json | Format::Yaml => output::serialized(s, format),
        Format::Name => Ok(s
            .replicas
            .iter()
            .map(|r| format!("replica/{}\n", r.name))
            .collect()),
        Format::Table => Ok(table(s)),
    }
}

/// `0.3s` under 10 s (heartbeats come every few seconds), then as AGE columns.
pub fn ago(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 10_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else {
        age(1, 1 + ms)
    }
}

fn dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// Whether `l` is a live lease (on SQLite the coordinator always leads).
fn live(backend: &str, l: &LeaderStatus) -> bool {
    !l.holder.is_empty() && (l.expires_in_ms.is_some() || backend != "postgres")
}

fn leader_line(backend: &str, l: &LeaderStatus) -> String {
    if l.holder.is_empty() {
        return "none (no replica has taken the lease yet)".into();
    }
    let at = if l.addr.is_empty() {
        String::new()
    } else {
        format!(" at {}", l.addr)
    };
    match (backend, l.expires_in_ms) {
        ("postgres", Some(ms)) => format!("{}{at}, lease expires in {}", l.holder, ago(ms)),
        ("postgres", None) => format!(
            "none: the lease of {}{at} expired or was released; a follower takes over at its next poll",
            l.holder
        ),
        _ => format!("{}{at} (a single coordinator: no lease)", l.holder),
    }
}

fn table(s: &ClusterStatus) -> String {
    let leader = s.leader.clone().unwrap_or_default();
    let mut out = format!(
        "Backend:  {} (schema {})\nLeader:   {}\nEpoch:    {}\nAnswered: {} ({}), store revision {}\n\n",
        dash(&s.backend),
        s.schema_version,
        leader_line(&s.backend, &leader),
        leader.epoch,
        dash(&s.replica),
        dash(&s.role),
        s.store_revision
    );
    let header = ["REPLICA", "ADDR", "VERSION", "SEEN", "LEADER"];
    let mut t = TableWriter::new(header.iter().map(|h| h.to_string()).collect());
    let rows: Vec<Vec<String>> = s
        .replicas
        .iter()
        .map(|r| {
            let leads = if r.name != leader.holder {
                "-"
            } else if live(&s.backend, &leader) {
                "yes"
            } else {
                "expired"
            };
            vec![
                r.name.clone(),
                dash(&r.addr).into(),
                dash(&r.version).into(),
                ago(r.seen_ago_ms),
                leads.into(),
            ]
        })
        .collect();
    if rows.is_empty() {
        out.push_str("No replica has a heartbeat row.\n");
    } else {
        out.push_str(&t.render(&rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use hostplane_proto::v1::ReplicaStatus;

    fn replica(name: &str, seen: i64) -> ReplicaStatus {
        ReplicaStatus {
            name: name.into(),
            addr: format!("{name}:50051"),
            version: "0.1.0".into(),
            started_at_ms: 1,
            seen_ago_ms: seen,
        }
    }

    fn pg(expires: Option<i64>) -> ClusterStatus {
        ClusterStatus {
            backend: "postgres".into(),
            schema_version: 6,
            replica: "b".into(),
            role: "follower".into(),
            leader: Some(LeaderStatus {
                holder: "a".into(),
                addr: "a:50051".into(),
                epoch: 3,
                expires_in_ms: expires,
            }),
            replicas: vec![replica("a", 300), replica("b", 45_000)],
            store_revision: 42,
        }
    }

    #[test]
    fn postgres_table_marks_the_leader_and_the_lease() {
        assert_eq!(
            table(&pg(Some(12_400))),
            "Backend:  postgres (schema 6)\n\
             Leader:   a at a:50051, lease expires in 12s\n\
             Epoch:    3\n\
             Answered: b (follower), store revision 42\n\
             \n\
             REPLICA   ADDR      VERSION   SEEN   LEADER\n\
             a         a:50051   0.1.0     0.3s   yes\n\
             b         b:50051   0.1.0     45s    -\n"
        );
        let expired = table(&pg(None));
        assert!(
            expired.contains("Leader:   none: the lease of a at a:50051 expired or was released"),
            "{expired}"
        );
        assert!(
            expired.contains("a:50051   0.1.0     0.3s   expired\n"),
            "{expired}"
        );
    }

    #[test]
    fn sqlite_leads_without_a_lease() {
        let s = ClusterStatus {
            backend: "sqlite".into(),
            schema_version: 5,
            replica: "c".into(),
            role: "leader".into(),
            leader: Some(LeaderStatus {
                holder: "c".into(),
                addr: String::new(),
                epoch: 0,
                expires_in_ms: None,
            }),
            replicas: vec![replica("c", 0)],
            store_revision: 7,
        };
        let t = table(&s);
        assert!(
            t.contains("Leader:   c (a single coordinator: no lease)\n"),
            "{t}"
        );
        assert!(t.contains("c         c:50051   0.1.0     0.0s   yes\n"), "{t}");
    }

    #[test]
    fn seen_ages() {
        assert_eq!(ago(0), "0.0s");
        assert_eq!(ago(9_949), "9.9s");
        assert_eq!(ago(45_000), "45s");
        assert_eq!(ago(600_000), "10m");
        assert_eq!(ago(-5), "0.0s");
    }
}
