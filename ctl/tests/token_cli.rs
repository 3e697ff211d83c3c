//! `hostplanectl token create|list|revoke` through the real binary: the file
//! it writes is what the coordinator reads (hashes only, 0600), a token is
//! shown once, and bad input changes nothing.
use std::os::unix::fs::PermissionsExt;

use hostplane_common::tokens::{self, Role};

/// Nothing listens here: token commands never connect.
const NO_SERVER: &str = "http://127.0.0.1:1";

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn ctl(server: &str, args: &[&str]) -> Run {
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_hostplanectl"))
        .arg("--server")
        .arg(server)
        .args(args)
        .output()
        .await
        .unwrap();
    Run {
        code: o.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

#[tokio::test]
async fn create_list_revoke_and_refusals() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    let f = file.to_str().unwrap();

    let r = ctl(
        NO_SERVER,
        &["token", "create", "alice", "--role", "admin", "--tokens-file", f],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let alice = r.stdout.trim().to_string();
    assert_eq!(alice.len(), 64, "one token on stdout: {:?}", r.stdout);
    assert!(r.stderr.contains("added alice (admin)"), "{}", r.stderr);
    let r = ctl(
        NO_SERVER,
        &["token", "create", "vic", "--role", "viewer", "--tokens-file", f],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let vic = r.stdout.trim().to_string();
    assert_ne!(alice, vic);

    // What the coordinator will read: the hashes, the roles, never the tokens.
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(!text.contains(&alice) && !text.contains(&vic), "{text}");
    let parsed = tokens::load(&file).unwrap();
    let got: Vec<(String, Role, String)> = parsed
        .tokens
        .iter()
        .map(|t| (t.name.clone(), t.role, t.sha256.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("alice".into(), Role::Admin, tokens::hash_token(&alice)),
            ("vic".into(), Role::Viewer, tokens::hash_token(&vic)),
        ]
    );
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the tokens file is private");

    // An existing file keeps its mode (and owner) when rewritten: an
    // operator's `chmod 640` + `chown root:hostplane` survives.
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o640)).unwrap();
    let r = ctl(
        NO_SERVER,
        &["token", "create", "kim", "--role", "operator", "--tokens-file", f],
    )
    .await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640, "the mode the operator set is kept");
    let r = ctl(NO_SERVER, &["token", "revoke", "kim", "--tokens-file", f]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);

    let r = ctl(NO_SERVER, &["token", "list", "--tokens-file", f]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "NAME\tROLE\nalice\tadmin\nvic\tviewer\n");

    // A name twice, revoking a stranger, a broken file: refused (6), file unchanged.
    let before = std::fs::read(&file).unwrap();
    let r = ctl(
        NO_SERVER,
        &["token", "create", "alice", "--role", "viewer", "--tokens-file", f],
    )
    .await;
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("a token named \"alice\" exists"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "no token printed for a refused create");
    let r = ctl(NO_SERVER, &["token", "revoke", "bob", "--tokens-file", f]).await;
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(r.stderr.contains("no token named \"bob\""), "{}", r.stderr);
    assert_eq!(std::fs::read(&file).unwrap(), before);

    let broken = dir.path().join("broken.yaml");
    std::fs::write(&broken, "tokens:\n  - {name: a, role: root, sha256: x}\n").unwrap();
    let r = ctl(
        NO_SERVER,
        &[
            "token",
            "create",
            "c",
            "--role",
            "admin",
            "--tokens-file",
            broken.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(r.code, 6, "{}", r.stderr);
    assert!(
        r.stderr.contains("broken.yaml") && r.stderr.contains("root"),
        "{}",
        r.stderr
    );
    assert_eq!(
        std::fs::read_to_string(&broken).unwrap(),
        "tokens:\n  - {name: a, role: root, sha256: x}\n"
    );

    // Revoke: gone from the file, the other kept.
    let r = ctl(NO_SERVER, &["token", "revoke", "alice", "--tokens-file", f]).await;
    assert_eq!(r.code, 0, "{}", r.stderr);
    let left = tokens::load(&file).unwrap();
    assert_eq!(left.tokens.len(), 1);
    assert_eq!(left.tokens[0].name, "vic");
}

/// Concurrent edits of one file lose nothing: each run holds a lock on
/// `<file>.lock` for its read-modify-write.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_all_land() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.yaml");
    let f = file.to_str().unwrap().to_string();
    let runs: Vec<_> = (0..12)
        .map(|i| {
            let f = f.clone();
            tokio::spawn(async move {
                let name = format!("u{i}");
                ctl(
                    NO_SERVER,
                    &["token", "create", &name, "--role", "viewer", "--tokens-file", &f],
                )
                .await
            })
        })
        .collect();
    for r in runs {
        let r = r.await.unwrap();
        assert_eq!(r.code, 0, "{}", r.stderr);
    }
    let mut names: Vec<String> = tokens::load(&file)
        .unwrap()
        .tokens
        .into_iter()
        .map(|t| t.name)
        .collect();
    names.sort();
    let mut want: Vec<String> = (0..12).map(|i| format!("u{i}")).collect();
    want.sort();
    assert_eq!(names, want, "every concurrent create is in the file");
}
