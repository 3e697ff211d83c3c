//! Replays every saved fuzz input (`fuzz/corpus/<target>/*`) through the same
//! body the libFuzzer target runs (`fuzz/src/lib.rs`), as ordinary tests on
//! the stable toolchain: no cargo-fuzz, no nightly. A body asserts its
//! target's properties (no panic, round trips; see `fuzz/src/lib.rs`), so an
//! input that once crashed the parser and is kept in the corpus keeps the fix
//! honest. An empty or missing corpus folder fails the test, so a replay
//! cannot pass by reading nothing. How to fuzz: docs/fuzzing.md.

// The bodies are shared with the fuzz crate (its own workspace, outside this
// one): include the file rather than depend on a crate that links libFuzzer.
#[path = "../../fuzz/src/lib.rs"]
mod bodies;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn body(target: &str) -> bodies::Body {
    bodies::TARGETS
        .iter()
        .find(|(name, _)| *name == target)
        .unwrap_or_else(|| panic!("no fuzz target {target} in fuzz/src/lib.rs"))
        .1
}

/// Run `target`'s body over every file of its corpus; fail listing each
/// input that panicked (the panic message is printed above by the hook).
fn replay(target: &str) {
    let run = body(target);
    let dir = fuzz_dir().join("corpus").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {} of fuzz target {target}: {e}", dir.display()));
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.expect("read corpus folder").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(
        !files.is_empty(),
        "corpus {} of fuzz target {target} is empty: nothing would be replayed",
        dir.display()
    );
    let mut failed = Vec::new();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        if catch_unwind(AssertUnwindSafe(|| run(&data))).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {} inputs of fuzz target {target} failed:\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

#[test]
fn bfb_corpus() {
    replay("bfb");
}

#[test]
fn rshim_misc_corpus() {
    replay("rshim_misc");
}

#[test]
fn redfish_corpus() {
    replay("redfish");
}

#[test]
fn agent_config_corpus() {
    replay("agent_config");
}

#[test]
fn host_network_corpus() {
    replay("host_network");
}

/// Every target has a libFuzzer entry, a corpus folder and a replay test
/// above; nothing in `fuzz/corpus/` belongs to no target.
#[test]
fn every_target_is_fuzzed_and_replayed() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).expect("fuzz/Cargo.toml");
    let this = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_corpus.rs"))
        .expect("read this test file");
    let mut names: Vec<&str> = bodies::TARGETS.iter().map(|(n, _)| *n).collect();
    names.sort();
    for name in &names {
        assert!(
            manifest.contains(&format!("name = \"{name}\"\npath = \"fuzz_targets/{name}.rs\"")),
            "fuzz/Cargo.toml has no [[bin]] for target {name}"
        );
        assert!(
            fuzz_dir()
                .join("fuzz_targets")
                .join(format!("{name}.rs"))
                .is_file(),
            "fuzz/fuzz_targets/{name}.rs is missing"
        );
        assert!(
            this.contains(&format!("replay(\"{name}\");")),
            "no replay test for fuzz target {name}"
        );
    }
    let mut dirs: Vec<String> = std::fs::read_dir(fuzz_dir().join("corpus"))
        .expect("fuzz/corpus")
        .map(|e| {
            e.expect("read fuzz/corpus")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    dirs.sort();
    assert_eq!(dirs, names, "fuzz/corpus/ folders and fuzz targets differ");
}
