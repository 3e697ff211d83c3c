//! Desired-network files, as `hostplane-agent network` reads them: one
//! `HostNetwork`, or a list of `{dpu, pfPciAddress, network}`, in the proto3
//! JSON mapping, written as JSON or YAML.
//!
//! - A file named `*.json`, or whose first non-blank character is `{` or `[`,
//!   is JSON and is parsed as strict JSON (no trailing commas, no comments).
//!   Anything else is YAML.
//! - A key given twice is refused (`duplicate field`), never "last one wins".
//! - Every error names the field path (`bridges[0].mtu`) and, where the
//!   parser knows it, the line and column.
use std::fmt;
use std::path::{Path, PathBuf};

use hostplane_proto::v1::{DpuNetwork, HostNetwork};
use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_path_to_error::Segment;

mod locate;
use locate::locate;

/// The two shapes a file may have.
enum Doc {
    One(HostNetwork),
    Many(Vec<DpuNetwork>),
}

impl<'de> Deserialize<'de> for Doc {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Doc, D::Error> {
        d.deserialize_any(DocVisitor)
    }
}

struct DocVisitor;

impl<'de> Visitor<'de> for DocVisitor {
    type Value = Doc;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a host network (a mapping) or a list of {dpu, pfPciAddress, network}")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Doc, A::Error> {
        HostNetwork::deserialize(de::value::MapAccessDeserializer::new(map)).map(Doc::One)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Doc, A::Error> {
        let mut v = Vec::new();
        while let Some(n) = seq.next_element::<DpuNetwork>()? {
            v.push(n);
        }
        Ok(Doc::Many(v))
    }
}

/// Is this file JSON (else YAML)?
fn is_json(name: &str, text: &str) -> bool {
    name.ends_with(".json") || matches!(text.trim_start().chars().next(), Some('{' | '['))
}

/// pbjson reads numbers through an untagged enum, whose errors say nothing
/// useful; say what was expected instead.
fn explain(msg: String) -> String {
    const NUMBER: [&str; 3] = [
        "data did not match any variant of untagged enum",
        "invalid digit found in string",
        "number too large to fit in target type",
    ];
    if NUMBER.iter().any(|m| msg.starts_with(m)) {
        let at = msg.find(" at line ").map(|i| &msg[i..]).unwrap_or_default();
        return format!("expected a whole number from 0 to 4294967295{at}");
    }
    msg
}

/// `path` as written in messages; "" for the top level.
fn path_text(path: &serde_path_to_error::Path) -> String {
    let p = path.to_string();
    if p == "." || p == "?" { String::new() } else { p }
}

fn with_path(path: &str, msg: String) -> String {
    if path.is_empty() {
        msg
    } else {
        format!("{path}: {msg}")
    }
}

/// A JSON error: serde_json already says where (the parser's position).
fn json_error(e: serde_path_to_error::Error<serde_json::Error>) -> String {
    with_path(&path_text(e.path()), explain(e.inner().to_string()))
}

/// A YAML error, at the position of the node at its path (or of the
/// repeated key), found by [`locate`]; serde_norway's own path prefix and
/// position are replaced.
fn yaml_error(text: &str, e: serde_path_to_error::Error<serde_norway::Error>) -> String {
    let path = path_text(e.path());
    let inner = e.inner();
    let mut msg = inner.to_string();
    if let Some(l) = inner.location()
        && let Some(m) = msg.strip_suffix(&format!(" at line {} column {}", l.line(), l.column()))
    {
        msg = m.to_string();
    }
    if let Some((prefix, rest)) = msg.split_once(": ")
        && !prefix.is_empty()
        && !prefix.contains(' ')
        && path.starts_with(prefix.trim_start_matches('.'))
    {
        msg = rest.to_string();
    }
    let repeated = msg
        .strip_prefix("duplicate field `")
        .and_then(|r| r.split_once('`'))
        .map(|(k, _)| k.to_string());
    let segments: Vec<Segment> = e.path().iter().cloned().collect();
    let at =
        locate(text, &segments, repeated.as_deref()).or(inner.location().map(|l| (l.line(), l.column())));
    let msg = explain(msg);
    match at {
        Some((line, column)) => with_path(&path, format!("{msg} at line {line} column {column}")),
        None => with_path(&path, msg),
    }
}

/// Parse a desired-network file's text. `name` is the file name (its
/// `.json` suffix selects JSON); `dpu` owns the objects of a single network.
/// Errors name the field path and the line.
pub fn parse(name: &str, text: &str, dpu: &str) -> Result<Vec<DpuNetwork>, String> {
    let doc = if is_json(name, text) {
        let mut de = serde_json::Deserializer::from_str(text);
        let doc: Doc = serde_path_to_error::deserialize(&mut de).map_err(json_error)?;
        de.end().map_err(|e| e.to_string())?;
        doc
    } else {
        if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#') || l == "---"
        }) {
            return Err("the file is empty (write `{}` for a network with no objects)".into());
        }
        let de = serde_norway::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| yaml_error(text, e))?
    };
    Ok(match doc {
        Doc::One(network) => vec![DpuNetwork {
            dpu: dpu.into(),
            pf_pci_address: String::new(),
            network: Some(network),
        }],
        Doc::Many(v) => v,
    })
}

/// Why a desired-network file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("reading {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    /// Not a desired network: `reason` is [`parse`]'s (the field path and the line).
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// Read and parse a desired-network file (see [`parse`]).
pub fn load(path: &Path, dpu: &str) -> Result<Vec<DpuNetwork>, FileError> {
    let text = std::fs::read_to_string(path).map_err(|source| FileError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    parse(name, &text, dpu).map_err(|reason| FileError::Invalid {
        path: path.to_path_buf(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(name: &str, text: &str) -> String {
        parse(name, text, "d").unwrap_err()
    }

    #[test]
    fn both_shapes_in_both_formats() {
        let one = parse(
            "n.yaml",
            "mtu: 9000\nbridges:\n  - name: br0\n    ports: [veth1]\n",
            "d1",
        )
        .unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].dpu, "d1");
        let n = one[0].network.as_ref().unwrap();
        assert_eq!((n.mtu, n.bridges[0].ports[0].as_str()), (9000, "veth1"));
        let same = parse(
            "n",
            r#"{"mtu": 9000, "bridges": [{"name": "br0", "ports": ["veth1"]}]}"#,
            "d1",
        )
        .unwrap();
        assert_eq!(one, same);
        let many = parse(
            "n.yaml",
            "- dpu: a\n  pfPciAddress: 0000:04:00.0\n  network: {mtu: 1500}\n- dpu: b\n",
            "x",
        )
        .unwrap();
        assert_eq!(many.len(), 2);
        assert_eq!(
            (many[0].dpu.as_str(), many[0].pf_pci_address.as_str()),
            ("a", "0000:04:00.0")
        );
        let many_json = parse(
            "n.json",
            r#"[{"dpu": "a", "pfPciAddress": "0000:04:00.0", "network": {"mtu": 1500}}, {"dpu": "b"}]"#,
            "x",
        )
        .unwrap();
        assert_eq!(many, many_json);
        assert_eq!(
            parse("n.json", "{}", "d").unwrap()[0].network,
            Some(HostNetwork::default())
        );
    }

    /// (name, text, what the error must contain), each a file that must be refused.
    const BAD: &[(&str, &str, &[&str])] = &[
        // Duplicate keys, YAML and JSON, top level and nested: refused naming key and line.
        (
            "n.yaml",
            "bridges:\n  - name: a\nbridges:\n  - name: b\n",
            &["duplicate field `bridges` at line 3 column 1"],
        ),
        (
            "n.yaml",
            "bridges:\n  - name: a\n    mtu: 1500\n    mtu: 9000\n",
            &["bridges[0]: duplicate field `mtu` at line 4 column 5"],
        ),
        (
            "n.yaml",
            "bridges:\n  - name: a\n  - {name: b, name: c}\n",
            &["bridges[1]: duplicate field `name` at line 3 column 15"],
        ),
        (
            "n.json",
            "{\"bridges\": [],\n \"bridges\": [{\"name\": \"b\"}]}",
            &["duplicate field `bridges`", "line 2"],
        ),
        (
            "n",
            "{\"mtu\": 1, \"mtu\": 2}",
            &["duplicate field `mtu`", "line 1"],
        ),
        (
            "n.yaml",
            "num_vfs: 1\nmtu: 2\nnumVfs: 3\n",
            &["duplicate field `numVfs` at line 3 column 1"],
        ),
        // Type errors name the field path and the line.
        (
            "n.yaml",
            "mtu: big\n",
            &["mtu: expected a whole number", "at line 1 column 6"],
        ),
        (
            "n.yaml",
            "mtu: \"big\"\n",
            &["mtu: expected a whole number", "at line 1 column 6"],
        ),
        (
            "n.yaml",
            "mtu: -5\n",
            &["mtu: expected a whole number", "at line 1 column 6"],
        ),
        (
            "n.yaml",
            "bridges:\n  - name: br0\n    mtu: -5\n",
            &["bridges[0].mtu: expected a whole number from 0 to 4294967295 at line 3 column 10"],
        ),
        (
            "n.yaml",
            "bridges:\n  - name: br0\n    ports: spare0\n",
            &[
                "bridges[0].ports: invalid type: string \"spare0\"",
                "at line 3 column 12",
            ],
        ),
        (
            "n.yaml",
            "bridges: [{name: a, ports: spare0}]\n",
            &["bridges[0].ports: invalid type", "line 1 column 28"],
        ),
        (
            "n.json",
            "{\"mtu\": \"big\"}",
            &["mtu: expected a whole number", "line 1"],
        ),
        (
            "n.json",
            "{\"routes\": [{\"metric\": -1}]}",
            &["routes[0].metric: ", "line 1"],
        ),
        (
            "n.yaml",
            "- dpu: a\n  network:\n    mtu: x\n",
            &["[0].network.mtu: expected a whole number", "line 3 column 10"],
        ),
        (
            "n.yaml",
            "bridgez: []\n",
            &["bridgez: unknown field `bridgez`", "line 1"],
        ),
        // JSON is strict JSON.
        ("n.json", "{\"mtu\": 9000,}", &["trailing comma", "line 1"]),
        ("n", "{\"bridges\": [{\"name\": \"b\"},]}", &["trailing comma"]),
        ("n.json", "{\"mtu\": 9000} {}", &["trailing characters"]),
        ("n.yaml", "", &["empty"]),
        ("n.yaml", "# nothing\n", &["empty"]),
        ("n.yaml", "42\n", &["a host network"]),
    ];

    #[test]
    fn bad_files_are_refused_naming_the_field_and_line() {
        for (name, text, wants) in BAD {
            let e = err(name, text);
            for w in *wants {
                assert!(e.contains(w), "{name} {text:?}: {e:?} lacks {w:?}");
            }
        }
    }

    proptest::proptest! {
        /// Whatever the input, parsing returns (no panic), and a refusal
        /// names a field path or a position.
        #[test]
        fn any_text_is_parsed_or_refused(text in "[-a-z:\\[\\]{}\" ,0-9\n]{0,60}") {
            if let Err(e) = parse("n.yaml", &text, "d") {
                proptest::prop_assert!(!e.is_empty());
            }
            let _ = parse("n.json", &text, "d");
        }

        /// A top-level key repeated anywhere in a file is refused, in both formats.
        #[test]
        fn a_repeated_key_is_refused(key in proptest::sample::select(vec!["mtu", "numVfs", "bridges", "routes", "sriov"]), gap in 0usize..3) {
            let value = |k: &str| if k == "mtu" || k == "numVfs" { "1".to_string() } else { "[]".to_string() };
            let mut lines = vec![format!("{key}: {}", value(key))];
            for other in ["mtu", "bridges", "routes"].iter().filter(|k| **k != key).take(gap) {
                lines.push(format!("{other}: {}", value(other)));
            }
            lines.push(format!("{key}: {}", value(key)));
            let yaml = lines.join("\n");
            let e = err("n.yaml", &yaml);
            proptest::prop_assert!(e.contains(&format!("duplicate field `{key}`")), "{}", e);
            let json = format!("{{{}}}", lines.iter().map(|l| {
                let (k, v) = l.split_once(": ").unwrap();
                format!("\"{k}\": {v}")
            }).collect::<Vec<_>>().join(", "));
            let e = err("n.json", &json);
            proptest::prop_assert!(e.contains(&format!("duplicate field `{key}`")), "{}", e);
        }
    }

    #[test]
    fn load_errors_say_which_file_and_why() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.yaml");
        let e = load(&missing, "d").unwrap_err();
        assert!(
            matches!(&e, FileError::Read { path, .. } if path == &missing),
            "{e}"
        );
        assert!(
            e.to_string()
                .starts_with(&format!("reading {}: ", missing.display())),
            "{e}"
        );

        let bad = dir.path().join("n.yaml");
        std::fs::write(&bad, "mtu: lots\n").unwrap();
        let e = load(&bad, "d").unwrap_err();
        let FileError::Invalid { path, reason } = &e else {
            panic!("{e}")
        };
        assert_eq!(path, &bad);
        assert_eq!(e.to_string(), format!("{}: {reason}", bad.display()));
        assert!(reason.contains("mtu"), "{reason}");
    }
}
