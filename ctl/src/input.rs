//! Reading `-f FILE`: one Resource, a list of them, or several YAML documents,
//! in the proto3 JSON mapping (`{"node": {"metadata": {"name": "n1"}, ...}}`).
use hostplane_proto::v1::{Kind, Resource};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::io::AsyncReadExt;

use crate::error::Error;

/// The text of `path`, or of stdin for `-`.
pub async fn read(path: &str) -> Result<String, Error> {
    let fail = |source| Error::ReadInput {
        path: display(path).into(),
        source,
    };
    if path == "-" {
        let mut s = String::new();
        tokio::io::stdin().read_to_string(&mut s).await.map_err(fail)?;
        Ok(s)
    } else {
        tokio::fs::read_to_string(path).await.map_err(fail)
    }
}

fn display(path: &str) -> &str {
    if path == "-" { "<stdin>" } else { path }
}

/// The documents in `text` as JSON values (YAML may hold several, separated by `---`).
fn documents(path: &str, text: &str) -> Result<Vec<serde_json::Value>, Error> {
    let fail = |reason: String| Error::ParseInput {
        path: display(path).into(),
        reason,
    };
    let lower = path.to_ascii_lowercase();
    let looks_json = lower.ends_with(".json")
        || (!lower.ends_with(".yaml")
            && !lower.ends_with(".yml")
            && text.trim_start().starts_with(['{', '[']));
    if looks_json {
        return serde_json::from_str(text)
            .map(|v| vec![v])
            .map_err(|e| fail(e.to_string()));
    }
    let mut docs = Vec::new();
    for doc in serde_norway::Deserializer::from_str(text) {
        let v = serde_json::Value::deserialize(doc).map_err(|e| fail(e.to_string()))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    Ok(docs)
}

/// Every Resource in `text`; each must name its kind and have a name.
pub fn parse_resources(path: &str, text: &str) -> Result<Vec<Resource>, Error> {
    let mut values = Vec::new();
    for doc in documents(path, text)? {
        match doc {
            serde_json::Value::Array(items) => values.extend(items),
            other => values.push(other),
        }
    }
    if values.is_empty() {
        return Err(Error::InvalidInput {
            path: display(path).into(),
            reason: "holds no resource".into(),
        });
    }
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let at = format!("{} (resource {})", display(path), i + 1);
            let r: Resource = serde_json::from_value(v).map_err(|e| Error::ParseInput {
                path: at.clone(),
                reason: e.to_string(),
            })?;
            if r.kind() == Kind::Unspecified {
                let kinds: Vec<&str> = Kind::ALL.iter().map(|k| k.noun()).collect();
                return Err(Error::InvalidInput {
                    path: at,
                    reason: format!("no resource kind (expected one key of: {})", kinds.join(", ")),
                });
            }
            if r.name().is_empty() {
                return Err(Error::InvalidInput {
                    path: at,
                    reason: "metadata.name: required".into(),
                });
            }
            Ok(r)
        })
        .collect()
}

/// One message of type `T` (e.g. a CreateNodeWithDevicesRequest) from `text`.
pub fn parse_message<T: DeserializeOwned>(path: &str, text: &str) -> Result<T, Error> {
    let mut docs = documents(path, text)?;
    if docs.len() != 1 {
        return Err(Error::InvalidInput {
            path: display(path).into(),
            reason: format!("expected one document, found {}", docs.len()),
        });
    }
    serde_json::from_value(docs.remove(0)).map_err(|e| Error::ParseInput {
        path: display(path).into(),
        reason: e.to_string(),
    })
}

/// Check that every resource is of `kind` (for `<noun> create|apply|update -f`).
pub fn expect_kind(path: &str, kind: Kind, items: &[Resource]) -> Result<(), Error> {
    match items.iter().find(|r| r.kind() != kind) {
        None => Ok(()),
        Some(r) => Err(Error::InvalidInput {
            path: display(path).into(),
            reason: format!(
                "holds {}/{}, expected only {} resources (use `hostplanectl create|apply|update -f` for mixed kinds)",
                r.kind().noun(),
                r.name(),
                kind.noun()
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{CreateNodeWithDevicesRequest, RebootMethod, resource};

    use super::*;

    #[test]
    fn json_object_and_array() {
        let one =
            r#"{"node": {"metadata": {"name": "n1"}, "spec": {"rebootMethod": "REBOOT_METHOD_AGENT"}}}"#;
        let rs = parse_resources("-", one).unwrap();
        assert_eq!(rs.len(), 1);
        let Some(resource::Kind::Node(n)) = &rs[0].kind else {
            panic!("{rs:?}")
        };
        assert_eq!(n.metadata.as_ref().unwrap().name, "n1");
        assert_eq!(n.spec.as_ref().unwrap().reboot_method(), RebootMethod::Agent);

        let many = format!("[{one}, {{\"bfb\": {{\"metadata\": {{\"name\": \"b\"}}}}}}]");
        let rs = parse_resources("x.json", &many).unwrap();
        assert_eq!(
            rs.iter().map(|r| r.kind()).collect::<Vec<_>>(),
            vec![Kind::Node, Kind::Bfb]
        );
    }

    #[test]
    fn yaml_documents_and_lists() {
        let text = "node:\n  metadata:\n    name: n1\n    labels: {rack: r1}\n---\n\
                    - device:\n    metadata: {name: d1}\n    spec: {node: n1, rshim: rshim0}\n\
                    - flavor:\n    metadata: {name: f1}\n    spec:\n      hostNetwork: {numVfs: 8, mtu: 9000}\n";
        let rs = parse_resources("x.yaml", text).unwrap();
        assert_eq!(
            rs.iter().map(|r| r.name()).collect::<Vec<_>>(),
            vec!["n1", "d1", "f1"]
        );
        let Some(resource::Kind::Flavor(f)) = &rs[2].kind else {
            panic!()
        };
        assert_eq!(f.spec.as_ref().unwrap().host_network.as_ref().unwrap().num_vfs, 8);
        assert_eq!(rs[0].metadata().unwrap().labels["rack"], "r1");
    }

    #[test]
    fn bad_documents_name_the_problem() {
        let e = parse_resources("a.yaml", "gadget:\n  metadata: {name: x}\n").unwrap_err();
        assert!(
            e.to_string().starts_with("cannot parse a.yaml (resource 1):"),
            "{e}"
        );
        assert_eq!(e.exit_code(), 6);
        let e = parse_resources("a.json", "{}").unwrap_err();
        assert!(e.to_string().contains("no resource kind"), "{e}");
        let e = parse_resources("a.json", r#"{"node": {"spec": {}}}"#).unwrap_err();
        assert!(e.to_string().contains("metadata.name: required"), "{e}");
        let e = parse_resources("a.json", "{not json").unwrap_err();
        assert!(matches!(e, Error::ParseInput { .. }), "{e}");
        let e = parse_resources("a.yaml", "").unwrap_err();
        assert!(e.to_string().contains("holds no resource"), "{e}");
    }

    #[test]
    fn kind_check() {
        let rs = parse_resources("-", r#"{"bfb": {"metadata": {"name": "b"}}}"#).unwrap();
        assert!(expect_kind("-", Kind::Bfb, &rs).is_ok());
        let e = expect_kind("-", Kind::Node, &rs).unwrap_err();
        assert!(e.to_string().contains("holds bfb/b, expected only node"), "{e}");
    }

    #[test]
    fn create_with_devices_request() {
        let text =
            "node: {metadata: {name: n1}}\ndevices:\n  - metadata: {name: a}\n    spec: {rshim: rshim0}\n";
        let req: CreateNodeWithDevicesRequest = parse_message("req.yaml", text).unwrap();
        assert_eq!(req.node.unwrap().metadata.unwrap().name, "n1");
        assert_eq!(req.devices.len(), 1);
        assert!(parse_message::<CreateNodeWithDevicesRequest>("r.yaml", "a: 1\n---\nb: 2\n").is_err());
    }

    #[tokio::test]
    async fn missing_file_names_the_path() {
        let e = read("/nonexistent/x.yaml").await.unwrap_err();
        assert!(
            e.to_string().starts_with("cannot read /nonexistent/x.yaml:"),
            "{e}"
        );
    }
}
