//! `hostplane-coordinator migrate --config F` and `validate` with
//! `store.backend: postgres`, run as the built binary against a throwaway
//! PostgreSQL cluster (hostplane_common::testing::pg): the same lines and
//! exit codes as on SQLite (tests/migrate_cli.rs), the password never
//! printed. Skips, printing why, only when the PostgreSQL binaries are missing.
use std::path::Path;
use std::process::{Command, Output};

use hostplane_common::testing::pg::{DATABASE, PgCluster, USER};
use hostplane_coordinator::store::SCHEMA_VERSION;

const BIN: &str = env!("CARGO_BIN_EXE_hostplane-coordinator");

fn coordinator(dir: &Path, config: &str, args: &[&str]) -> Output {
    let path = dir.join("coordinator.yaml");
    std::fs::write(&path, config).unwrap();
    Command::new(BIN)
        .args(args)
        .arg("--config")
        .arg(&path)
        .env_remove("HOSTPLANE_STORE_PATH")
        .env_remove("HOSTPLANE_STORE_BACKEND")
        .env_remove("HOSTPLANE_STORE_POSTGRES_URL")
        .env_remove("HOSTPLANE_STORE_POSTGRES_PASSWORD_FILE")
        .env("HOSTPLANE_LOG", "warn")
        .output()
        .unwrap()
}

fn config(url: &str, password_file: &Path) -> String {
    format!(
        "insecure: true\nstore:\n  backend: postgres\n  postgres:\n    url: {url}\n    password_file: {}\n",
        password_file.display()
    )
}

fn out(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn migrate_and_validate_on_postgres() {
    let Some(pg) = PgCluster::start().expect("start the throwaway PostgreSQL cluster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    pg.write_password_file(&pw).unwrap();
    let cfg = config(&pg.url_without_password(), &pw);
    let name = format!("postgres {USER}@127.0.0.1:{}/{DATABASE}", pg.port());

    let o = coordinator(dir.path(), &cfg, &["validate"]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("config OK: listen 0.0.0.0:50051, store {name}")
    );

    let o = coordinator(dir.path(), &cfg, &["migrate"]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}{stderr}\n{}", pg.log());
    assert_eq!(
        stdout.trim(),
        format!("store {name}: schema version 0 -> {SCHEMA_VERSION} (new store)")
    );
    let o = coordinator(dir.path(), &cfg, &["migrate"]);
    let (stdout, stderr) = out(&o);
    assert!(o.status.success(), "{stdout}{stderr}");
    assert_eq!(
        stdout.trim(),
        format!("store {name}: schema version {SCHEMA_VERSION} -> {SCHEMA_VERSION} (already current)")
    );
    // The database holds the schema.
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    let v: i64 = c
        .query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, SCHEMA_VERSION);

    // A newer store: refused, exit 1, left as it is.
    c.execute(
        "UPDATE meta SET value = $1 WHERE key = 'schema_version'",
        &[&(SCHEMA_VERSION + 1)],
    )
    .unwrap();
    let o = coordinator(dir.path(), &cfg, &["migrate"]);
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    assert!(
        stderr.contains(&format!(
            "{name}: store postgres has schema version {}",
            SCHEMA_VERSION + 1
        )),
        "{stderr}"
    );
}

#[test]
fn migrate_on_postgres_reports_what_is_wrong() {
    let Some(pg) = PgCluster::start().expect("start the throwaway PostgreSQL cluster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // A wrong password: exit 1, the server's report, not the password.
    let pw = dir.path().join("wrong");
    std::fs::write(&pw, "not-it\n").unwrap();
    let o = coordinator(dir.path(), &config(&pg.url_without_password(), &pw), &["migrate"]);
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(1), "{stdout}{stderr}");
    assert!(stderr.contains("password authentication failed"), "{stderr}");
    assert!(!stderr.contains("not-it"), "{stderr}");

    // A missing password file: a config error (78), naming it.
    let missing = dir.path().join("missing");
    let o = coordinator(
        dir.path(),
        &config(&pg.url_without_password(), &missing),
        &["migrate"],
    );
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(78), "{stdout}{stderr}");
    assert!(
        stderr.contains(&format!(
            "config field store.postgres.password_file: {}: no such file",
            missing.display()
        )),
        "{stderr}"
    );

    // A password in the URL: refused before connecting, and never printed.
    for cmd in ["migrate", "validate"] {
        let o = coordinator(dir.path(), &config(&pg.url(), &pw), &[cmd]);
        let (stdout, stderr) = out(&o);
        assert_eq!(o.status.code(), Some(78), "{cmd}: {stdout}{stderr}");
        assert!(
            stderr.contains("put the password in store.postgres.password_file"),
            "{cmd}: {stderr}"
        );
        assert!(
            !stderr.contains(pg.password()) && !stdout.contains(pg.password()),
            "{cmd}: {stderr}"
        );
    }

    // --store names a SQLite file: refused on postgres rather than ignored.
    let good = dir.path().join("password");
    pg.write_password_file(&good).unwrap();
    let o = coordinator(
        dir.path(),
        &config(&pg.url_without_password(), &good),
        &["migrate", "--store", "/tmp/x.db"],
    );
    let (stdout, stderr) = out(&o);
    assert_eq!(o.status.code(), Some(78), "{stdout}{stderr}");
    assert!(
        stderr.contains("--store: names a SQLite file, but store.backend is postgres"),
        "{stderr}"
    );
}

/// `run` on postgres: the coordinator opens the store on the throwaway
/// cluster (migrating it), serves (gRPC health SERVING), stops on SIGTERM
/// with exit 0, and its log names the database but never the password.
#[test]
fn run_serves_from_postgres() {
    let Some(pg) = PgCluster::start().expect("start the throwaway PostgreSQL cluster") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("password");
    pg.write_password_file(&pw).unwrap();
    // Readable by every user: served, with a warning.
    std::fs::set_permissions(&pw, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let path = dir.path().join("coordinator.yaml");
    std::fs::write(
        &path,
        format!("listen: {addr}\n{}", config(&pg.url_without_password(), &pw)),
    )
    .unwrap();
    let log = dir.path().join("coordinator.log");
    let mut child = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&path)
        .env_remove("HOSTPLANE_STORE_BACKEND")
        .env_remove("HOSTPLANE_STORE_POSTGRES_URL")
        .env_remove("HOSTPLANE_STORE_POSTGRES_PASSWORD_FILE")
        .env("HOSTPLANE_LOG", "info")
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let o = Command::new(BIN)
            .args(["health", "--addr", &addr, "--timeout", "1s"])
            .output()
            .unwrap();
        if o.status.success() {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!(
                "the coordinator exited ({status}) before serving:\n{}{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                std::fs::read_to_string(dir.path().join("stderr")).unwrap_or_default()
            );
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not SERVING within 60 s:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let kill = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    let text =
        std::fs::read_to_string(&log).unwrap() + &std::fs::read_to_string(dir.path().join("stderr")).unwrap();
    assert!(status.success(), "{status}\n{text}");
    assert!(
        text.contains(&format!("postgres {USER}@127.0.0.1:{}/{DATABASE}", pg.port())),
        "{text}"
    );
    assert!(
        !text.contains(pg.password()),
        "the password is in the log:\n{text}"
    );
    assert!(
        text.contains("store.postgres.password_file is readable by every user"),
        "{text}"
    );
    // The store it served is the migrated database.
    let mut c = postgres::Client::connect(&pg.url(), postgres::NoTls).unwrap();
    let v: i64 = c
        .query_one("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .unwrap()
        .get(0);
    assert_eq!(v, SCHEMA_VERSION);
}
