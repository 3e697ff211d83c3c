//! `store copy` (issue 13, "Operations"; coordinator/src/storeops/copy.rs):
//! a store built through `Store` copied SQLite -> PostgreSQL -> SQLite keeps
//! every table's bytes (equal checksums) and reads back equal; a target that
//! holds data is refused and left unchanged; `--replace` replaces it; a row
//! changed between the copy and `verify` is reported by its table. The
//! PostgreSQL cases start the throwaway cluster (hostplane_common::testing::pg)
//! and skip, printing why, only when its binaries are missing; the SQLite
//! cases always run.
use std::path::{Path, PathBuf};

use hostplane_common::testing::pg::{DATABASE, PgCluster, USER};
use hostplane_coordinator::store::{HistoryConfig, SCHEMA_VERSION, Store, StoreError};
use hostplane_coordinator::storeops::copy::{
    CopyError, CopyOptions, TableSummary, copy, summarize, table_names, verify,
};
use hostplane_coordinator::storeops::{CopyArgs, Endpoint, PgSettings, StoreCommand, run_status};
use hostplane_proto::v1::{self, Command, CommandOutcome, CommandResult, Kind, ObjectMeta, Resource};

fn meta(name: &str) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.into(),
        ..Default::default()
    })
}

fn node(name: &str) -> Resource {
    v1::Node {
        metadata: meta(name),
        ..Default::default()
    }
    .into()
}

fn device(name: &str, node: &str, serial: &str) -> Resource {
    v1::Device {
        metadata: meta(name),
        spec: Some(v1::DeviceSpec {
            node: node.into(),
            serial: serial.into(),
            rshim: "rshim0".into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into()
}

fn dpu(name: &str, node: &str, device: &str) -> Resource {
    v1::Dpu {
        metadata: meta(name),
        spec: Some(v1::DpuSpec {
            node: node.into(),
            device: device.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
    .into()
}

fn cmd(id: &str, dpu: &str) -> Command {
    Command {
        id: id.into(),
        dpu: dpu.into(),
        rshim: "rshim0".into(),
        action: None,
    }
}

/// The Device serials the store holds: `dev-7` has none.
fn serial_of(d: usize) -> Option<String> {
    (d != 7).then(|| format!("MT22{d:02}X0{d}"))
}

const NODES: usize = 4;
const DEVICES: usize = 8;
const COMMANDS: usize = 12;
/// Label updates of node-0, one event each: more events than history keeps,
/// so some are pruned (prev_body and history_floor in use).
const UPDATES: usize = 2_500;
const HISTORY: u64 = 2_000;

/// A store as a coordinator leaves it: Nodes, Devices with serials (one
/// without), Dpus, commands open and finished, thousands of events (some
/// pruned), a deleted Dpu, power caps.
fn build_store(path: &Path) {
    let s = Store::open_with(path, HistoryConfig::revisions(HISTORY)).unwrap();
    s.write_sync(|t| {
        for n in 0..NODES {
            t.insert(node(&format!("node-{n}")))?;
        }
        for d in 0..DEVICES {
            let on = format!("node-{}", d % NODES);
            t.insert(device(
                &format!("dev-{d}"),
                &on,
                serial_of(d).as_deref().unwrap_or_default(),
            ))?;
            t.insert(dpu(&format!("dpu-{d}"), &on, &format!("dev-{d}")))?;
        }
        Ok::<_, StoreError>(())
    })
    .unwrap();
    for c in 0..COMMANDS {
        let id = format!("cmd-{c:02}");
        s.write_sync(|t| t.insert_command(&format!("node-{}", c % NODES), &cmd(&id, &format!("dpu-{c}"))))
            .unwrap();
        if c % 3 != 0 {
            let result = CommandResult {
                outcome: if c % 2 == 0 {
                    CommandOutcome::Succeeded as i32
                } else {
                    CommandOutcome::Failed as i32
                },
                message: format!("flash {c}: état «ok» ✓"),
                finished_at_ms: 0,
                power_cycle_required: false,
            };
            assert!(s.write_sync(|t| t.finish_command(&id, &result)).unwrap());
        }
    }
    for batch in 0..UPDATES / 500 {
        s.write_sync(|t| {
            let mut n = t.get(Kind::Node, "node-0")?.unwrap();
            for i in 0..500 {
                let labels = &mut n.metadata_mut().unwrap().labels;
                labels.insert("step".into(), format!("{batch}-{i}"));
                // A NUL in a label: the body's JSON holds it as \u0000.
                labels.insert("nul".into(), format!("a\u{0}b{i}"));
                n = t.update(n)?;
            }
            Ok::<_, StoreError>(())
        })
        .unwrap();
    }
    s.write_sync(|t| t.delete(Kind::Dpu, "dpu-5")).unwrap().unwrap();
    drop(s);
    // Power caps have no Txn method yet: the rows the engine will write.
    let c = rusqlite::Connection::open(path).unwrap();
    c.execute_batch(
        "INSERT INTO power_caps (node, caps, revision) VALUES
           ('node-0', '{\"caps\":[{\"device\":\"dev-0\",\"watts\":150}]}', 7),
           ('node-1', '{\"caps\":[]}', 9);",
    )
    .unwrap();
}

/// Everything the store serves, read back through `Store`.
#[derive(Debug, PartialEq)]
struct Contents {
    revision: u64,
    objects: Vec<Resource>,
    commands: Vec<Option<hostplane_coordinator::store::CommandRow>>,
    desired: Vec<u64>,
    events: Vec<v1::WatchEvent>,
}

fn contents(path: &Path) -> Contents {
    let oldest: i64 = rusqlite::Connection::open(path)
        .unwrap()
        .query_row("SELECT MIN(revision) FROM events", [], |r| r.get(0))
        .unwrap();
    let s = Store::open_with(path, HistoryConfig::revisions(HISTORY)).unwrap();
    contents_of(&s, oldest as u64)
}

fn contents_of(s: &Store, oldest: u64) -> Contents {
    s.write_sync(|t| {
        let mut objects = Vec::new();
        for kind in [Kind::Node, Kind::Device, Kind::Dpu] {
            objects.extend(t.list(kind)?);
        }
        Ok::<_, StoreError>(Contents {
            revision: t.revision()?,
            objects,
            commands: (0..COMMANDS)
                .map(|c| t.command(&format!("cmd-{c:02}")))
                .collect::<Result<_, _>>()?,
            desired: (0..NODES)
                .map(|n| t.desired_version(&format!("node-{n}")))
                .collect::<Result<_, _>>()?,
            events: t.events_since(oldest - 1, &[], 1_000_000)?,
        })
    })
    .unwrap()
}

fn sqlite(path: &Path) -> Endpoint {
    Endpoint::Sqlite(path.to_path_buf())
}

/// The cluster as `store copy` reaches it: a URL without the password, the
/// password in a file.
struct Pg {
    cluster: PgCluster,
    settings: PgSettings,
    _dir: tempfile::TempDir,
}

impl Pg {
    fn start() -> Option<Pg> {
        let cluster = PgCluster::start().expect("start the throwaway PostgreSQL cluster")?;
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pg-password");
        std::fs::write(&pw, format!("{}\n", cluster.password())).unwrap();
        Some(Pg {
            settings: PgSettings {
                password_file: Some(pw),
                ..Default::default()
            },
            cluster,
            _dir: dir,
        })
    }

    fn endpoint(&self) -> Endpoint {
        Endpoint::Postgres(format!(
            "postgres://{USER}@127.0.0.1:{}/{DATABASE}",
            self.cluster.port()
        ))
    }

    fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.cluster.url(), postgres::NoTls).unwrap()
    }

    fn options(&self, from: Endpoint, to: Endpoint) -> CopyOptions {
        let mut o = CopyOptions::new(from, to);
        o.pg = self.settings.clone();
        o
    }
}

fn rows(sums: &[TableSummary], table: &str) -> u64 {
    sums.iter().find(|s| s.table == table).unwrap().rows
}

#[test]
fn sqlite_to_postgres_to_sqlite_keeps_every_row_and_object() {
    let Some(pg) = Pg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    build_store(&a);
    let original = contents(&a);

    // Small batches: every table crosses batch boundaries.
    let mut o = pg.options(sqlite(&a), pg.endpoint());
    o.batch = 7;
    let there = copy(&o).unwrap();
    assert_eq!(there.schema_version, SCHEMA_VERSION);
    assert_eq!(there.revision as u64, original.revision);
    assert!(there.replaced.is_empty());
    assert_eq!(
        there.tables.iter().map(|t| t.table).collect::<Vec<_>>(),
        table_names()
    );
    assert_eq!(
        rows(&there.tables, "meta"),
        3,
        "revision, history_floor, commands_pruned_at"
    );
    assert_eq!(rows(&there.tables, "resources"), (NODES + 2 * DEVICES - 1) as u64);
    assert_eq!(rows(&there.tables, "events"), HISTORY);
    assert_eq!(rows(&there.tables, "commands"), COMMANDS as u64);
    assert_eq!(rows(&there.tables, "desired"), NODES as u64);
    assert_eq!(rows(&there.tables, "power_caps"), 2);

    let mut c = pg.client();
    let serials: Vec<(String, Option<String>)> = c
        .query(
            "SELECT name, serial FROM resources WHERE kind = 'device' ORDER BY name",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let want: Vec<(String, Option<String>)> =
        (0..DEVICES).map(|d| (format!("dev-{d}"), serial_of(d))).collect();
    assert_eq!(serials, want);
    let others: i64 = c
        .query_one(
            "SELECT count(*) FROM resources WHERE kind <> 'device' AND serial IS NOT NULL",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(others, 0);
    // The target's own schema version stays; the copied meta keys match the source's.
    let pg_meta: Vec<(String, i64)> = c
        .query("SELECT key, value FROM meta ORDER BY key", &[])
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let floor: i64 = rusqlite::Connection::open(&a)
        .unwrap()
        .query_row("SELECT value FROM meta WHERE key = 'history_floor'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(floor > 0, "history was pruned");
    assert_eq!(
        pg_meta,
        [
            ("commands_pruned_at".to_string(), 0),
            ("history_floor".to_string(), floor),
            ("revision".to_string(), original.revision as i64),
            ("schema_version".to_string(), SCHEMA_VERSION),
        ]
    );

    // The PostgreSQL engine serves the copy: the same objects, commands,
    // desired versions and history, and Devices found by serial through the
    // filled column.
    {
        let Endpoint::Postgres(url) = pg.endpoint() else {
            unreachable!()
        };
        let store = Store::open_postgres(&pg.settings.options(&url), HistoryConfig::revisions(HISTORY))
            .unwrap_or_else(|e| panic!("open the copied store on PostgreSQL: {e}"));
        let oldest: i64 = c
            .query_one("SELECT MIN(revision) FROM events", &[])
            .unwrap()
            .get(0);
        assert_eq!(contents_of(&store, oldest as u64), original);
        let found = store.write_sync(|t| t.devices_with_serial("MT2203X03")).unwrap();
        assert_eq!(found.iter().map(|r| r.name()).collect::<Vec<_>>(), ["dev-3"]);
    }

    let back = copy(&pg.options(pg.endpoint(), sqlite(&b))).unwrap();
    assert_eq!(
        back.tables, there.tables,
        "the same checksums on all three stores"
    );
    assert_eq!(
        summarize(&sqlite(&a), &PgSettings::default()).unwrap(),
        there.tables
    );
    assert_eq!(contents(&b), original);
}

#[test]
fn sqlite_to_sqlite_copies_and_verifies_without_postgres() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("sub/b.db"));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    build_store(&a);
    let original = contents(&a);
    let r = copy(&CopyOptions::new(sqlite(&a), sqlite(&b))).unwrap();
    assert_eq!(
        verify(&sqlite(&a), &sqlite(&b), &PgSettings::default()).unwrap(),
        r.tables
    );
    assert_eq!(contents(&b), original);
}

/// A target holding data, refused with what it holds and left exactly as it
/// was; then replaced with `--replace`.
fn refuse_then_replace(source: &Endpoint, target: &Endpoint, pg: &PgSettings) {
    let before = summarize(target, pg).unwrap();
    let mut o = CopyOptions::new(source.clone(), target.clone());
    o.pg = pg.clone();
    let e = copy(&o).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, CopyError::NotEmpty { .. }), "{msg}");
    assert!(msg.contains(&target.to_string()), "{msg}");
    assert!(msg.contains("revision 1, 1 resources row, 1 events row"), "{msg}");
    assert!(msg.contains("--replace"), "{msg}");
    assert_eq!(
        summarize(target, pg).unwrap(),
        before,
        "the refused target changed"
    );

    o.replace = true;
    let r = copy(&o).unwrap();
    assert_eq!(r.replaced.revision, 1);
    assert_eq!(r.replaced.rows, [("resources", 1), ("events", 1)]);
    assert_eq!(summarize(target, pg).unwrap(), r.tables);
    assert_eq!(summarize(source, pg).unwrap(), r.tables);
}

/// A store holding one Node that is not in the source.
fn one_node_store(path: &Path) {
    let s = Store::open(path).unwrap();
    s.write_sync(|t| t.insert(node("stranger"))).unwrap();
}

#[test]
fn a_sqlite_target_that_holds_data_is_refused_unchanged_and_replaced_with_replace() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    build_store(&a);
    one_node_store(&b);
    refuse_then_replace(&sqlite(&a), &sqlite(&b), &PgSettings::default());
    let c = contents(&b);
    assert!(c.objects.iter().all(|o| o.name() != "stranger"));
    assert_eq!(c, contents(&a));
}

#[test]
fn a_postgres_target_that_holds_data_is_refused_unchanged_and_replaced_with_replace() {
    let Some(pg) = Pg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    build_store(&a);
    one_node_store(&b);
    copy(&pg.options(sqlite(&b), pg.endpoint())).unwrap();
    refuse_then_replace(&sqlite(&a), &pg.endpoint(), &pg.settings);
    let strangers: i64 = pg
        .client()
        .query_one("SELECT count(*) FROM resources WHERE name = 'stranger'", &[])
        .unwrap()
        .get(0);
    assert_eq!(strangers, 0);
}

#[test]
fn a_row_changed_after_the_copy_is_reported_by_its_table() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    build_store(&a);
    copy(&CopyOptions::new(sqlite(&a), sqlite(&b))).unwrap();
    let c = rusqlite::Connection::open(&b).unwrap();
    c.execute(
        "UPDATE resources SET body = replace(body, 'node-2', 'node-9') WHERE kind = 'node' AND name = 'node-2'",
        [],
    )
    .unwrap();
    let e = verify(&sqlite(&a), &sqlite(&b), &PgSettings::default()).unwrap_err();
    let CopyError::Mismatch { diffs, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(diffs.iter().map(|d| d.table).collect::<Vec<_>>(), ["resources"]);
    assert_eq!(diffs[0].from.rows, diffs[0].to.rows);
    assert!(e.to_string().contains("table resources differs"), "{e}");

    // A missing row: same digest impossible, counts differ.
    c.execute(
        "DELETE FROM events WHERE revision = (SELECT MAX(revision) FROM events)",
        [],
    )
    .unwrap();
    let e = verify(&sqlite(&a), &sqlite(&b), &PgSettings::default()).unwrap_err();
    let CopyError::Mismatch { diffs, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(
        diffs.iter().map(|d| d.table).collect::<Vec<_>>(),
        ["resources", "events"]
    );
    assert_eq!(diffs[1].from.rows, diffs[1].to.rows + 1);
}

#[test]
fn a_row_changed_on_postgres_after_the_copy_is_reported_by_its_table() {
    let Some(pg) = Pg::start() else { return };
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    build_store(&a);
    copy(&pg.options(sqlite(&a), pg.endpoint())).unwrap();
    let mut c = pg.client();
    c.execute(
        "UPDATE commands SET message = message || '!' WHERE id = 'cmd-01'",
        &[],
    )
    .unwrap();
    let e = verify(&sqlite(&a), &pg.endpoint(), &pg.settings).unwrap_err();
    let CopyError::Mismatch { diffs, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(diffs.iter().map(|d| d.table).collect::<Vec<_>>(), ["commands"]);
    c.execute(
        "UPDATE commands SET message = rtrim(message, '!') WHERE id = 'cmd-01'",
        &[],
    )
    .unwrap();
    verify(&sqlite(&a), &pg.endpoint(), &pg.settings).unwrap();

    // The serial column, outside the compared columns, is checked against the body.
    c.execute(
        "UPDATE resources SET serial = 'WRONG' WHERE kind = 'device' AND name = 'dev-3'",
        &[],
    )
    .unwrap();
    let e = verify(&sqlite(&a), &pg.endpoint(), &pg.settings).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("dev-3") && msg.contains("serial"), "{msg}");
}

#[test]
fn a_store_newer_than_the_binary_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    build_store(&a);
    Store::open(&b).unwrap();
    rusqlite::Connection::open(&b)
        .unwrap()
        .pragma_update(None, "user_version", 99)
        .unwrap();
    let e = copy(&CopyOptions::new(sqlite(&a), sqlite(&b))).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("schema version 99"), "{msg}");
    let v: i64 = rusqlite::Connection::open(&b)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    assert_eq!(v, 99);
}

fn args(from: Endpoint, to: Endpoint) -> CopyArgs {
    CopyArgs {
        from,
        to,
        replace: false,
        password_file: None,
        sslmode: Default::default(),
        ca_file: None,
        cert_file: None,
        key_file: None,
    }
}

#[test]
fn the_command_exits_0_when_copied_1_when_refused_and_64_on_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    build_store(&a);
    let missing: PathBuf = dir.path().join("missing.db");
    assert_eq!(run_status(StoreCommand::Copy(args(sqlite(&a), sqlite(&b)))), 0);
    assert_eq!(
        run_status(StoreCommand::Copy(args(sqlite(&a), sqlite(&b)))),
        1,
        "b holds data now"
    );
    assert_eq!(run_status(StoreCommand::Copy(args(sqlite(&a), sqlite(&a)))), 64);
    assert_eq!(
        run_status(StoreCommand::Copy(args(sqlite(&missing), sqlite(&b)))),
        64
    );
    assert!(!missing.exists(), "a missing source is not created");
}

#[test]
fn a_postgres_database_whose_collation_is_not_byte_order_copies_and_verifies() {
    let Some(pg) = Pg::start() else { return };
    let mut c = pg.client();
    if let Err(e) = c.batch_execute(
        "CREATE DATABASE icu_store TEMPLATE template0 ENCODING 'UTF8' LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C'",
    ) {
        eprintln!("this PostgreSQL cannot create an ICU database ({e}); skipped");
        return;
    }
    let url = format!("postgres://{USER}@127.0.0.1:{}/icu_store", pg.cluster.port());
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    let names = ["node-a", "Node-B", "node-c", "Zeta", "éclair"];
    {
        let s = Store::open(&a).unwrap();
        for n in names {
            s.write_sync(|t| t.insert(node(n))).unwrap();
        }
    }
    // The database's own order is not SQLite's byte order: without the C
    // collation the two sides would hash the same rows in different orders.
    let mut icu = postgres::Client::connect(
        &format!(
            "host=127.0.0.1 port={} user={USER} password={} dbname=icu_store",
            pg.cluster.port(),
            pg.cluster.password()
        ),
        postgres::NoTls,
    )
    .unwrap();
    let ordered: Vec<String> = icu
        .query("SELECT n FROM unnest($1::text[]) AS n ORDER BY n", &[&&names[..]])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut bytewise: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    bytewise.sort();
    assert_ne!(
        ordered, bytewise,
        "the ICU database orders like bytes; the test shows nothing"
    );

    let there = copy(&pg.options(sqlite(&a), Endpoint::Postgres(url.clone()))).unwrap();
    assert_eq!(rows(&there.tables, "resources"), names.len() as u64);
    let back = copy(&pg.options(Endpoint::Postgres(url.clone()), sqlite(&b))).unwrap();
    assert_eq!(back.tables, there.tables);
    verify(&sqlite(&a), &Endpoint::Postgres(url), &pg.settings).unwrap();
}

/// A test CA (rcgen): its PEM and what it signs.
struct Ca {
    pem: String,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// `(cert, key)` PEM for `cn`, valid for the DNS names `sans`.
    fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(sans.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
        params.distinguished_name.push(rcgen::DnType::CommonName, cn);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

#[test]
fn the_tls_flags_reach_postgres_verify_full_with_a_client_certificate() {
    use hostplane_common::testing::pg::{PgClusterOptions, ServerTls};
    use hostplane_coordinator::store::SslMode;

    let ca = Ca::new("hostplane test CA");
    let (cert_pem, key_pem) = ca.issue("postgres", &["localhost"]);
    // Over TLS the server authenticates by client certificate alone: the
    // copy connects only if --cert-file/--key-file, --ca-file and
    // --sslmode all reached the connection.
    let Some(pg) = PgCluster::start_with(PgClusterOptions {
        tls: Some(ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem: Some(ca.pem.clone()),
            client_cert_auth: true,
        }),
    })
    .expect("start the throwaway PostgreSQL cluster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let ca_file = file("ca.crt", &ca.pem);
    let (cert, key) = ca.issue(USER, &[]);
    let (cert_file, key_file) = (file("client.crt", &cert), file("client.key", &key));
    let a = dir.path().join("a.db");
    build_store(&a);
    let to: Endpoint = format!("postgres:{}", pg.url_for_host("localhost"))
        .parse()
        .unwrap();
    let tls_args = |ca_file: PathBuf| CopyArgs {
        sslmode: SslMode::VerifyFull,
        ca_file: Some(ca_file),
        cert_file: Some(cert_file.clone()),
        key_file: Some(key_file.clone()),
        ..args(sqlite(&a), to.clone())
    };

    // A CA that did not sign the server's certificate: refused, exit 1.
    let other = file("other-ca.crt", &Ca::new("another CA").pem);
    assert_eq!(run_status(StoreCommand::Copy(tls_args(other))), 1);
    // Without --ca-file verify-full is a usage error.
    let mut no_ca = tls_args(ca_file.clone());
    no_ca.ca_file = None;
    assert_eq!(run_status(StoreCommand::Copy(no_ca)), 64);

    assert_eq!(
        run_status(StoreCommand::Copy(tls_args(ca_file))),
        0,
        "{}",
        pg.log()
    );
    let resources: i64 = postgres::Client::connect(&pg.url(), postgres::NoTls)
        .unwrap()
        .query_one("SELECT count(*) FROM resources", &[])
        .unwrap()
        .get(0);
    assert_eq!(resources, (NODES + 2 * DEVICES - 1) as i64);
}

/// Every table and column of the schema is copied, or named as not copied:
/// a later migration that adds one fails here until the copy learns it.
#[test]
fn the_copy_covers_every_table_and_column_of_the_schema() {
    use hostplane_coordinator::storeops::copy::{PG_ONLY_COLUMNS, PG_ONLY_TABLES, copied_columns};
    use std::collections::BTreeMap;

    let want: BTreeMap<String, Vec<String>> = copied_columns()
        .into_iter()
        .map(|(t, cols)| (t.to_string(), cols.iter().map(|c| c.to_string()).collect()))
        .collect();

    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.db");
    Store::open(&a).unwrap();
    let c = rusqlite::Connection::open(&a).unwrap();
    let tables: Vec<String> = c
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let mut sqlite_layout = BTreeMap::new();
    for t in tables {
        let cols: Vec<String> = c
            .prepare(&format!("SELECT name FROM pragma_table_info('{t}') ORDER BY cid"))
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        sqlite_layout.insert(t, cols);
    }
    assert_eq!(sqlite_layout, want, "SQLite's tables and columns");

    let Some(pg) = Pg::start() else { return };
    let mut client = pg.client();
    hostplane_coordinator::store::pg_migrate(&mut client).unwrap();
    let mut pg_layout: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for r in client
        .query(
            "SELECT table_name::text, column_name::text FROM information_schema.columns \
             WHERE table_schema = 'public' ORDER BY table_name, ordinal_position",
            &[],
        )
        .unwrap()
    {
        let (t, col): (String, String) = (r.get(0), r.get(1));
        if PG_ONLY_TABLES.contains(&t.as_str()) || PG_ONLY_COLUMNS.contains(&(t.as_str(), col.as_str())) {
            continue;
        }
        pg_layout.entry(t).or_default().push(col);
    }
    assert_eq!(pg_layout, want, "PostgreSQL's tables and columns");
}

#[test]
fn the_binary_copies_and_prints_each_tables_rows_and_checksum() {
    let bin = env!("CARGO_BIN_EXE_hostplane-coordinator");
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.db"), dir.path().join("b.db"));
    build_store(&a);
    let run = |extra: &[&str]| {
        let from = format!("sqlite:{}", a.display());
        let to = format!("sqlite:{}", b.display());
        std::process::Command::new(bin)
            .args(["store", "copy", "--from", &from, "--to", &to])
            .args(extra)
            .output()
            .unwrap()
    };
    let out = run(&[]);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let sums = summarize(&sqlite(&b), &PgSettings::default()).unwrap();
    for t in &sums {
        assert!(
            stdout.lines().any(
                |l| l.split_whitespace().collect::<Vec<_>>() == [t.table, &t.rows.to_string(), &t.sha256]
            ),
            "{stdout} lacks {t:?}"
        );
    }
    assert!(stdout.contains("verified"), "{stdout}");

    let out = run(&[]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("already holds store data"),
        "{out:?}"
    );
    assert_eq!(run(&["--replace"]).status.code(), Some(0));
    let out = run(&["--sslmode", "sometimes"]);
    assert_eq!(out.status.code(), Some(64), "{out:?}");
}
