//! `store::pg_connect` against a real throwaway PostgreSQL cluster
//! (hostplane_common::testing::pg): the password from its file, TLS in each
//! sslmode (checked on the server's side in `pg_stat_ssl`), a wrong CA and a
//! certificate for another host refused naming the certificate, and client
//! certificate authentication. Each test skips, printing why, only when the
//! PostgreSQL binaries are missing.

use std::path::{Path, PathBuf};

use hostplane_common::testing::pg::{PgCluster, PgClusterOptions, ServerTls, USER};
use hostplane_coordinator::store::{PgOptions, SslMode, pg_connect};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};

/// A test CA and what it signs, as PEM text.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            pem,
            issuer: Issuer::new(params, key),
        }
    }

    /// `(cert, key)` for `cn` with `sans` (DNS names or IP addresses).
    fn issue(&self, cn: &str, sans: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        for san in sans {
            params.subject_alt_names.push(match san.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*san).try_into().unwrap()),
            });
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }
}

/// The files a client is given: the CA, its certificate and key, the password.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn password(&self, pg: &PgCluster) -> PathBuf {
        let p = self.dir.path().join("password");
        pg.write_password_file(&p).unwrap();
        p
    }
}

fn tls_cluster(ca: &Ca, server_names: &[&str], client_cert_auth: bool) -> Option<PgCluster> {
    let (cert_pem, key_pem) = ca.issue("postgres", server_names);
    PgCluster::start_with(PgClusterOptions {
        tls: Some(ServerTls {
            cert_pem,
            key_pem,
            client_ca_pem: Some(ca.pem.clone()),
            client_cert_auth,
        }),
    })
    .expect("start the throwaway PostgreSQL cluster")
}

fn opts(url: String, password_file: Option<PathBuf>, sslmode: SslMode, ca_file: Option<&Path>) -> PgOptions {
    PgOptions {
        password_file,
        sslmode,
        ca_file: ca_file.map(Path::to_path_buf),
        ..PgOptions::from_url(url)
    }
}

/// Whether this connection is over TLS, as the server sees it.
fn server_says_ssl(client: &mut postgres::Client) -> bool {
    client
        .query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

fn connect_err(o: &PgOptions) -> String {
    match pg_connect(o) {
        Ok(_) => panic!("connected with {o:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_password_comes_from_its_file() {
    let Some(pg) = PgCluster::start().expect("start the throwaway PostgreSQL cluster") else {
        return;
    };
    let files = Files::new();
    let o = opts(
        pg.url_without_password(),
        Some(files.password(&pg)),
        SslMode::Disable,
        None,
    );
    let mut c = pg_connect(&o).unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    let (user, app): (String, String) = c
        .query_one(
            "SELECT current_user::text, current_setting('application_name')",
            &[],
        )
        .unwrap()
        .get_tuple();
    assert_eq!((user.as_str(), app.as_str()), (USER, "hostplane-coordinator"));
    assert!(!server_says_ssl(&mut c), "sslmode disable is plain TCP");

    // A wrong password: the server's report, naming authentication.
    let wrong = files.write("wrong", "not-the-password\n");
    let e = connect_err(&opts(
        pg.url_without_password(),
        Some(wrong),
        SslMode::Disable,
        None,
    ));
    assert!(
        e.contains("28P01") && e.contains("password authentication failed"),
        "{e}"
    );
    assert!(!e.contains(pg.password()), "{e}");

    // A missing file: named, and nothing sent.
    let missing = files.dir.path().join("no-such-password");
    let e = connect_err(&opts(
        pg.url_without_password(),
        Some(missing.clone()),
        SslMode::Disable,
        None,
    ));
    assert!(
        e.contains(&format!(
            "store.postgres.password_file {}: no such file",
            missing.display()
        )),
        "{e}"
    );

    // No password at all where the server asks for one.
    let e = connect_err(&opts(pg.url_without_password(), None, SslMode::Disable, None));
    assert!(e.contains("password missing"), "{e}");

    // TLS asked of a server without it.
    let e = connect_err(&opts(
        pg.url_without_password(),
        Some(files.password(&pg)),
        SslMode::Require,
        None,
    ));
    assert!(e.contains("TLS"), "{e}");
    // prefer falls back to plain TCP.
    let mut c = pg_connect(&opts(
        pg.url_without_password(),
        Some(files.password(&pg)),
        SslMode::Prefer,
        None,
    ))
    .unwrap();
    assert!(!server_says_ssl(&mut c));
}

#[test]
fn each_sslmode_over_tls() {
    let ca = Ca::new("hostplane test CA");
    let Some(pg) = tls_cluster(&ca, &["localhost", "127.0.0.1"], false) else {
        return;
    };
    let files = Files::new();
    let pw = files.password(&pg);
    let ca_file = files.write("ca.crt", &ca.pem);
    for (mode, ca_file) in [
        (SslMode::Prefer, None),
        (SslMode::Require, None),
        (SslMode::Require, Some(ca_file.as_path())),
        (SslMode::VerifyCa, Some(ca_file.as_path())),
        (SslMode::VerifyFull, Some(ca_file.as_path())),
    ] {
        for host in ["localhost", "127.0.0.1"] {
            let o = opts(pg.url_for_host(host), Some(pw.clone()), mode, ca_file);
            let mut c = pg_connect(&o).unwrap_or_else(|e| panic!("{mode} to {host}: {e}\n{}", pg.log()));
            assert!(server_says_ssl(&mut c), "{mode} to {host} is not TLS");
        }
    }
    let mut c = pg_connect(&opts(
        pg.url_without_password(),
        Some(pw.clone()),
        SslMode::Disable,
        None,
    ))
    .unwrap();
    assert!(!server_says_ssl(&mut c), "disable stays plain on a TLS server");

    // Another CA's certificate in ca_file: refused, naming the certificate.
    let other = Ca::new("someone else's CA");
    let wrong_ca = files.write("other-ca.crt", &other.pem);
    for mode in [SslMode::VerifyFull, SslMode::VerifyCa, SslMode::Require] {
        let e = connect_err(&opts(
            pg.url_for_host("localhost"),
            Some(pw.clone()),
            mode,
            Some(&wrong_ca),
        ));
        assert!(
            e.contains("certificate") && e.contains("UnknownIssuer"),
            "{mode}: {e}"
        );
    }
    // A ca_file that is no certificate: named by its key and path.
    let junk = files.write("junk.crt", "not a certificate\n");
    let e = connect_err(&opts(
        pg.url_for_host("localhost"),
        Some(pw.clone()),
        SslMode::VerifyFull,
        Some(&junk),
    ));
    assert!(
        e.contains(&format!("store.postgres.ca_file {}", junk.display()))
            && e.contains("no CERTIFICATE block"),
        "{e}"
    );
}

#[test]
fn verify_full_checks_the_host_name_and_verify_ca_does_not() {
    let ca = Ca::new("hostplane test CA");
    // The certificate names db.example only; the test connects to localhost.
    let Some(pg) = tls_cluster(&ca, &["db.example"], false) else {
        return;
    };
    let files = Files::new();
    let pw = files.password(&pg);
    let ca_file = files.write("ca.crt", &ca.pem);
    let e = connect_err(&opts(
        pg.url_for_host("localhost"),
        Some(pw.clone()),
        SslMode::VerifyFull,
        Some(&ca_file),
    ));
    assert!(e.contains("certificate not valid for name \"localhost\""), "{e}");
    // The name the certificate holds is accepted (the address stays 127.0.0.1).
    let mut c = pg_connect(&opts(
        pg.url_for_host("db.example"),
        Some(pw.clone()),
        SslMode::VerifyFull,
        Some(&ca_file),
    ))
    .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    assert!(server_says_ssl(&mut c));
    // verify-ca checks only the chain.
    let mut c = pg_connect(&opts(
        pg.url_for_host("localhost"),
        Some(pw),
        SslMode::VerifyCa,
        Some(&ca_file),
    ))
    .unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    assert!(server_says_ssl(&mut c));
}

#[test]
fn a_client_certificate_is_accepted_where_pg_hba_asks_for_one() {
    let ca = Ca::new("hostplane test CA");
    let Some(pg) = tls_cluster(&ca, &["localhost"], true) else {
        return;
    };
    let files = Files::new();
    let ca_file = files.write("ca.crt", &ca.pem);
    let (cert, key) = ca.issue(USER, &[]);
    let cert_file = files.write("client.crt", &cert);
    let key_file = files.write("client.key", &key);
    // No password: the certificate (CN = the user) is the authentication.
    let o = PgOptions {
        cert_file: Some(cert_file.clone()),
        key_file: Some(key_file.clone()),
        ..opts(
            pg.url_for_host("localhost"),
            None,
            SslMode::VerifyFull,
            Some(&ca_file),
        )
    };
    let mut c = pg_connect(&o).unwrap_or_else(|e| panic!("{e}\n{}", pg.log()));
    let (ssl, dn): (bool, String) = c
        .query_one(
            "SELECT ssl, client_dn FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .unwrap()
        .get_tuple();
    assert!(ssl);
    assert!(dn.contains(&format!("CN={USER}")), "{dn}");

    // Without one, the server refuses (its report names the certificate).
    let e = connect_err(&opts(
        pg.url_for_host("localhost"),
        None,
        SslMode::VerifyFull,
        Some(&ca_file),
    ));
    assert!(e.contains("certificate"), "{e}");
    // A certificate for another user: refused by the server.
    let (cert, key) = ca.issue("mallory", &[]);
    let o = PgOptions {
        cert_file: Some(files.write("m.crt", &cert)),
        key_file: Some(files.write("m.key", &key)),
        ..opts(
            pg.url_for_host("localhost"),
            None,
            SslMode::VerifyFull,
            Some(&ca_file),
        )
    };
    let e = connect_err(&o);
    assert!(e.contains("certificate authentication failed"), "{e}");
    // A certificate without its key is a settings error, before connecting.
    let o = PgOptions {
        cert_file: Some(cert_file),
        ..opts(
            pg.url_for_host("localhost"),
            None,
            SslMode::VerifyFull,
            Some(&ca_file),
        )
    };
    let e = connect_err(&o);
    assert!(
        e.contains("store.postgres.cert_file is set without key_file"),
        "{e}"
    );
}

trait GetTuple {
    fn get_tuple<A, B>(&self) -> (A, B)
    where
        A: for<'a> postgres::types::FromSql<'a>,
        B: for<'a> postgres::types::FromSql<'a>;
}

impl GetTuple for postgres::Row {
    fn get_tuple<A, B>(&self) -> (A, B)
    where
        A: for<'a> postgres::types::FromSql<'a>,
        B: for<'a> postgres::types::FromSql<'a>,
    {
        (self.get(0), self.get(1))
    }
}
