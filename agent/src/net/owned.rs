//! The record of the addresses the agent added. The kernel cannot tag an
//! address with who made it, so the agent writes down each address it
//! created (and only those) and may later remove only what is written here.
//!
//! The daemon keeps it in `<state_dir>/network-owned.json`, the `network`
//! command in its `--state` file: JSON, `{"<bridge>": ["<cidr>", ...]}`,
//! replaced atomically (temporary file, fsync, rename, fsync of the
//! directory), so an agent restart neither forgets an address it added nor
//! claims one it did not.
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use ipnetwork::IpNetwork;

use super::NetError;

/// Addresses the agent added, per bridge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owned {
    pub addresses: BTreeMap<String, BTreeSet<IpNetwork>>,
}

impl Owned {
    /// Load the record from `path`; a missing file is an empty record. A
    /// file that cannot be read or parsed is an error naming it.
    pub fn load(path: &Path) -> Result<Owned, NetError> {
        let bad = |source| NetError::State {
            path: path.into(),
            source,
        };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Owned::default()),
            Err(e) => return Err(bad(e)),
        };
        let raw: BTreeMap<String, BTreeSet<String>> =
            serde_json::from_str(&text).map_err(|e| bad(std::io::Error::other(e)))?;
        let mut o = Owned::default();
        for (bridge, addrs) in raw {
            let mut set = BTreeSet::new();
            for a in addrs {
                let net = a.parse().map_err(|e| {
                    bad(std::io::Error::other(format!(
                        "bridge {bridge}: {a:?} is not a CIDR: {e}"
                    )))
                })?;
                set.insert(net);
            }
            if !set.is_empty() {
                o.addresses.insert(bridge, set);
            }
        }
        Ok(o)
    }

    /// Replace the file at `path` with this record, atomically. Blocking.
    pub fn save(&self, path: &Path) -> Result<(), NetError> {
        let raw: BTreeMap<&String, Vec<String>> = self
            .addresses
            .iter()
            .filter(|(_, a)| !a.is_empty())
            .map(|(b, a)| (b, a.iter().map(|n| n.to_string()).collect()))
            .collect();
        let text = serde_json::to_vec_pretty(&raw).expect("maps of strings serialize");
        // The CLI may run before the daemon ever made its state directory.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        dir.map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| crate::state_file::write_atomic(path, &text))
            .map_err(|source| NetError::State {
                path: path.into(),
                source,
            })
    }

    /// [`save`](Self::save) off the async runtime.
    pub async fn save_async(&self, path: &Path) -> Result<(), NetError> {
        let (me, p) = (self.clone(), path.to_path_buf());
        tokio::task::spawn_blocking(move || me.save(&p))
            .await
            .unwrap_or_else(|e| {
                Err(NetError::State {
                    path: path.into(),
                    source: std::io::Error::other(e),
                })
            })
    }

    /// The addresses recorded for `bridge`.
    pub fn on(&mut self, bridge: &str) -> &mut BTreeSet<IpNetwork> {
        self.addresses.entry(bridge.to_string()).or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_save_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/network-owned.json");
        assert_eq!(Owned::load(&path).unwrap(), Owned::default(), "no file: empty");
        let mut o = Owned::default();
        o.on("br0").insert("10.0.0.1/24".parse().unwrap());
        o.on("br0").insert("fd00::1/64".parse().unwrap());
        o.on("br1");
        o.save(&path).unwrap();
        let back = Owned::load(&path).unwrap();
        assert_eq!(back.addresses.len(), 1, "an empty set is not written: {back:?}");
        assert_eq!(back.addresses["br0"], o.addresses["br0"]);
        assert!(!dir.path().join("sub/network-owned.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("owned.json");
        for text in ["{", r#"{"br0": ["x/24"]}"#, r#"{"br0": "10.0.0.1/24"}"#, "[]"] {
            std::fs::write(&path, text).unwrap();
            let e = Owned::load(&path).unwrap_err().to_string();
            assert!(e.contains("owned.json"), "{text}: {e}");
        }
    }
}
