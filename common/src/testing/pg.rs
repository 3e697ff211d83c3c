//! A throwaway PostgreSQL cluster for tests: `initdb` in a temporary
//! directory, `postgres` on 127.0.0.1 and a free port (and a Unix socket in
//! that directory), a superuser with a password and a database for the test.
//! The postmaster is this process's child. Dropping the [`PgCluster`] stops
//! it (an immediate shutdown, SIGKILL if that hangs), reaps it and removes the
//! directory, also when the test panics.
//!
//! [`PgCluster::start_with`] can start it with TLS (`ssl = on`, the
//! certificate and key the test made) and, optionally, client-certificate
//! authentication for TCP connections over TLS (`hostssl ... cert`).
//!
//! The binaries are Debian's, in `/usr/lib/postgresql/<version>/bin` (the
//! newest version there), or in `$HOSTPLANE_PG_BINDIR`; `scripts/setup`
//! installs them. When they are missing [`PgCluster::start`] prints why and
//! returns `None`, so the test can skip. PostgreSQL refuses to run as root:
//! under root the cluster runs as `nobody`, its directory chowned to it.

use std::fs;
use std::io::{self, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The superuser the fixture creates.
pub const USER: &str = "hostplane";
/// The database the fixture creates for the test (owned by [`USER`]).
pub const DATABASE: &str = "hostplane_test";

/// Where the PostgreSQL binaries are: `$HOSTPLANE_PG_BINDIR` when set, else
/// the newest `/usr/lib/postgresql/<version>/bin` that holds `initdb`,
/// `postgres` and `createdb`. `None` when there is none.
pub fn bindir() -> Option<PathBuf> {
    let has_tools = |dir: &Path| {
        ["initdb", "postgres", "createdb"]
            .iter()
            .all(|t| dir.join(t).is_file())
    };
    if let Some(dir) = std::env::var_os("HOSTPLANE_PG_BINDIR") {
        let dir = PathBuf::from(dir);
        return has_tools(&dir).then_some(dir);
    }
    let mut found: Vec<(Vec<u32>, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let version = entry
                .file_name()
                .to_str()?
                .split('.')
                .map(|p| p.parse().ok())
                .collect::<Option<Vec<u32>>>()?;
            let bin = entry.path().join("bin");
            has_tools(&bin).then_some((version, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, bin)| bin)
}

/// The server's TLS settings for [`PgCluster::start_with`], as PEM text.
#[derive(Debug, Clone, Default)]
pub struct ServerTls {
    /// The server's certificate (chain).
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// CA certificate(s) the server accepts client certificates from (`ssl_ca_file`).
    pub client_ca_pem: Option<String>,
    /// TCP connections over TLS authenticate by client certificate alone
    /// (`hostssl all all 127.0.0.1/32 cert`, before the password rule): the
    /// certificate's CN is the user. Needs `client_ca_pem`.
    pub client_cert_auth: bool,
}

/// How [`PgCluster::start_with`] sets the cluster up.
#[derive(Debug, Clone, Default)]
pub struct PgClusterOptions {
    /// `ssl = on` with these files; `None`: TLS off (the server refuses it).
    pub tls: Option<ServerTls>,
}

/// A running throwaway cluster; stopped and removed on drop.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bindir: PathBuf,
    port: u16,
    password: String,
    /// `(uid, gid)` the server runs as when the test runs as root.
    run_as: Option<(u32, u32)>,
    /// The postmaster, a child of this process; `None` once stopped.
    server: Option<Child>,
}

impl PgCluster {
    /// Starts a cluster. `Ok(None)` (with the reason on stderr) only when the
    /// PostgreSQL binaries are missing; any other failure is an error.
    pub fn start() -> io::Result<Option<PgCluster>> {
        Self::start_with(PgClusterOptions::default())
    }

    /// [`PgCluster::start`] with `opts` (TLS).
    pub fn start_with(opts: PgClusterOptions) -> io::Result<Option<PgCluster>> {
        let Some(bindir) = bindir() else {
            eprintln!(
                "PostgreSQL binaries not found (no /usr/lib/postgresql/*/bin with initdb, postgres and createdb, \
                 HOSTPLANE_PG_BINDIR unset or wrong); scripts/setup installs them"
            );
            return Ok(None);
        };
        let run_as = if nix::unistd::geteuid().is_root() {
            let nobody = nix::unistd::User::from_name("nobody")
                .map_err(io::Error::from)?
                .ok_or_else(|| {
                    io::Error::other("running as root and there is no user `nobody` to run PostgreSQL as")
                })?;
            Some((nobody.uid.as_raw(), nobody.gid.as_raw()))
        } else {
            None
        };
        let dir = tempfile::Builder::new().prefix("hostplane-pg-").tempdir()?;
        if let Some((uid, gid)) = run_as {
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        }
        let password = format!("pw-{:016x}", rand::random::<u64>());
        let mut cluster = PgCluster {
            dir,
            bindir,
            port: 0,
            password,
            run_as,
            server: None,
        };
        cluster.init()?;
        if let Some(tls) = &opts.tls {
            cluster.configure_tls(tls)?;
        }
        cluster.launch()?;
        cluster.create_database()?;
        Ok(Some(cluster))
    }

    /// `initdb`: superuser [`USER`] with a password; local (socket)
    /// connections trusted, TCP ones need the password (SCRAM).
    fn init(&self) -> io::Result<()> {
        let pwfile = self.dir.path().join("pwfile");
        fs::write(&pwfile, format!("{}\n", self.password))?;
        fs::set_permissions(&pwfile, fs::Permissions::from_mode(0o600))?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&pwfile, Some(uid), Some(gid))?;
        }
        let out = self
            .tool("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-U",
                USER,
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "-N",
            ])
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()?;
        check("initdb", &out)?;
        fs::remove_file(&pwfile)?;
        Ok(())
    }

    /// Writes the TLS files into the data directory (the key 0600 and owned
    /// by the server's user, which PostgreSQL insists on) and turns `ssl` on;
    /// with `client_cert_auth`, TLS connections over TCP authenticate by
    /// certificate.
    fn configure_tls(&self, tls: &ServerTls) -> io::Result<()> {
        let data = self.data_dir();
        let mut files = vec![("server.crt", &tls.cert_pem), ("server.key", &tls.key_pem)];
        if let Some(ca) = &tls.client_ca_pem {
            files.push(("root.crt", ca));
        }
        for (name, pem) in files {
            let path = data.join(name);
            fs::write(&path, pem)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            if let Some((uid, gid)) = self.run_as {
                std::os::unix::fs::chown(&path, Some(uid), Some(gid))?;
            }
        }
        let mut conf = fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        writeln!(
            conf,
            "\n# hostplane PgCluster TLS\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'"
        )?;
        if tls.client_ca_pem.is_some() {
            writeln!(conf, "ssl_ca_file = 'root.crt'")?;
        }
        if tls.client_cert_auth {
            if tls.client_ca_pem.is_none() {
                return Err(io::Error::other(
                    "ServerTls::client_cert_auth needs client_ca_pem (the CA of the client certificates)",
                ));
            }
            // The first matching line wins: this one before initdb's password rules.
            let hba = data.join("pg_hba.conf");
            let rest = fs::read_to_string(&hba)?;
            fs::write(&hba, format!("hostssl all all 127.0.0.1/32 cert\n{rest}"))?;
        }
        Ok(())
    }

    /// Starts `postgres -D data` as a child of this process (so this process
    /// reaps it: `pg_ctl start` would leave it to PID 1, which in a container
    /// may never reap it) on a free port, and waits until `postmaster.pid`
    /// says it is ready. A port taken between choosing it and the server
    /// binding it is retried with another.
    fn launch(&mut self) -> io::Result<()> {
        let mut last = None;
        for _ in 0..5 {
            self.port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let mut conf = fs::OpenOptions::new()
                .append(true)
                .open(self.data_dir().join("postgresql.conf"))?;
            // Later lines win: each try appends its port.
            writeln!(
                conf,
                "\n# hostplane PgCluster\nlisten_addresses = '127.0.0.1'\nport = {}\n\
                 unix_socket_directories = '{}'\nfsync = off\nfull_page_writes = off\n",
                self.port,
                self.dir.path().display()
            )?;
            drop(conf);
            let log = fs::File::create(self.log_path())?;
            let child = self
                .tool("postgres")
                .arg("-D")
                .arg(self.data_dir())
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            self.server = Some(child);
            match self.wait_ready() {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.kill_server();
                    let log = self.log();
                    let e = io::Error::other(format!("{e}\nserver log:\n{log}"));
                    if !log.contains("could not bind") && !log.contains("Address already in use") {
                        return Err(e);
                    }
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| io::Error::other("postgres did not start")))
    }

    /// Polls (as `pg_ctl start -w` does) until the postmaster writes "ready"
    /// into `postmaster.pid`, or exits, or a minute passes.
    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pidfile = self.data_dir().join("postmaster.pid");
        loop {
            let child = self.server.as_mut().expect("server spawned");
            if let Some(status) = child.try_wait()? {
                self.server = None;
                return Err(io::Error::other(format!(
                    "postgres exited ({status}) before it was ready"
                )));
            }
            let contents = fs::read_to_string(&pidfile).unwrap_or_default();
            let lines: Vec<&str> = contents.lines().collect();
            if lines.len() >= 8 && lines[0].trim() == child.id().to_string() && lines[7].trim() == "ready" {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(io::Error::other("postgres was not ready within 60 s"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn create_database(&self) -> io::Result<()> {
        let out = self
            .tool("createdb")
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", USER, "-O", USER, DATABASE])
            .output()?;
        check("createdb", &out)
    }

    /// A command for one of the PostgreSQL binaries, run as the cluster's user.
    fn tool(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bindir.join(name));
        cmd.current_dir(self.dir.path())
            .env_remove("PGDATA")
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.run_as {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }

    /// A connection URL for [`DATABASE`] as [`USER`] over TCP (password auth).
    pub fn url(&self) -> String {
        format!(
            "postgres://{USER}:{}@127.0.0.1:{}/{DATABASE}",
            self.password, self.port
        )
    }

    /// [`PgCluster::url`] without the password (give it from a file), `host`
    /// being the name the client connects to and checks the certificate
    /// against; the address is always 127.0.0.1 (`hostaddr`).
    pub fn url_for_host(&self, host: &str) -> String {
        format!(
            "postgres://{USER}@{host}:{}/{DATABASE}?hostaddr=127.0.0.1",
            self.port
        )
    }

    /// [`PgCluster::url`] without the password.
    pub fn url_without_password(&self) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// Writes the password into `path` (with a trailing newline, as an
    /// operator's editor would), mode 0600.
    pub fn write_password_file(&self, path: &Path) -> io::Result<()> {
        fs::write(path, format!("{}\n", self.password))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
    }

    /// A libpq key-value connection string for [`DATABASE`] over the Unix socket.
    pub fn socket_conninfo(&self) -> String {
        format!(
            "host={} port={} user={USER} dbname={DATABASE}",
            self.socket_dir().display(),
            self.port
        )
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn password(&self) -> &str {
        &self.password
    }

    /// The directory holding the server's Unix socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("server.log")
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// The postmaster's pid, from `postmaster.pid` (`None` once stopped).
    pub fn postmaster_pid(&self) -> Option<i32> {
        fs::read_to_string(self.data_dir().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Stops the server now: an immediate shutdown (SIGQUIT, what `pg_ctl
    /// stop -m immediate` sends), then waits for the postmaster to exit (it
    /// ends its backends first) and reaps it; SIGKILL if it has not exited in
    /// 30 s. Drop does the same.
    pub fn stop(&mut self) -> io::Result<()> {
        let Some(mut child) = self.server.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        if child.try_wait()?.is_none() {
            kill(pid, Signal::SIGQUIT).map_err(io::Error::from)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    child.kill()?;
                    child.wait()?;
                    return Err(io::Error::other("postgres ignored SIGQUIT for 30 s; killed"));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Stops the server with a fast shutdown (SIGINT, what `pg_ctl stop -m
    /// fast` sends: open sessions are ended, then a clean checkpoint) and
    /// waits until the postmaster exited and was reaped; SIGKILL if that
    /// takes over 30 s. The data directory and port stay, for
    /// [`PgCluster::start_again`].
    pub fn stop_fast(&mut self) -> io::Result<()> {
        let Some(mut child) = self.server.take() else {
            return Ok(());
        };
        let pid = Pid::from_raw(i32::try_from(child.id()).map_err(io::Error::other)?);
        if child.try_wait()?.is_none() {
            kill(pid, Signal::SIGINT).map_err(io::Error::from)?;
            let deadline = Instant::now() + Duration::from_secs(30);
            while child.try_wait()?.is_none() {
                if Instant::now() >= deadline {
                    child.kill()?;
                    child.wait()?;
                    return Err(io::Error::other(
                        "postgres did not finish a fast shutdown (SIGINT) in 30 s; killed",
                    ));
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        Ok(())
    }

    /// Starts the stopped server again on the same data directory, port and
    /// socket (the configuration [`PgCluster::start`] wrote), as a child of
    /// this process, and waits until it is ready. Errors when it is running,
    /// or when it cannot start (the server log is in the message; the port
    /// may have been taken while it was down).
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.server.is_some() {
            return Err(io::Error::other(
                "start_again: the PostgreSQL server is still running",
            ));
        }
        // Append: the server log keeps what came before the restart.
        let log = fs::OpenOptions::new().append(true).open(self.log_path())?;
        let child = self
            .tool("postgres")
            .arg("-D")
            .arg(self.data_dir())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        self.server = Some(child);
        if let Err(e) = self.wait_ready() {
            self.kill_server();
            return Err(io::Error::other(format!(
                "{e} (restarting on port {})\nserver log:\n{}",
                self.port,
                self.log()
            )));
        }
        Ok(())
    }

    /// [`PgCluster::stop_fast`], then [`PgCluster::start_again`] (what `pg_ctl
    /// restart -m fast` does).
    pub fn restart(&mut self) -> io::Result<()> {
        self.stop_fast()?;
        self.start_again()
    }

    fn kill_server(&mut self) {
        if let Some(mut child) = self.server.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("PgCluster: {e}");
        }
        // The TempDir field removes the directory after this.
    }
}

/// Whether `pid` is a live process (a zombie waiting for its parent is not).
pub fn process_alive(pid: i32) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the command name, which is in parentheses.
        Ok(stat) => {
            stat.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                != Some("Z")
        }
        Err(_) => false,
    }
}

fn check(what: &str, out: &Output) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}
