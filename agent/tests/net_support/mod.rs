//! Shared by the real-kernel network tests: a throwaway network namespace
//! with veth pairs (deleted on drop), read back independently of the agent
//! with `ip -j` (iproute2) or pyroute2, and the `hostplane-agent network`
//! command run against it. Needs root and network namespaces (CI has both);
//! without them the tests print why and return.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;

use hostplane_agent::net::NetConfig;
use hostplane_proto::v1::{Bridge, DpuNetwork, HostNetwork};
use serde_json::Value;

pub struct Netns {
    pub name: String,
}

impl Netns {
    /// A fresh namespace with veth pairs `veth<i>` (peers `peer<i>`), or None (skip) when the kernel
    /// or the user cannot make one.
    pub fn new(veths: usize) -> Option<Netns> {
        let name = format!("hp-test-{}-{}", std::process::id(), rand::random::<u32>());
        let out = Command::new("ip").args(["netns", "add", &name]).output();
        match out {
            Ok(o) if o.status.success() => {}
            Ok(o) => {
                eprintln!(
                    "SKIPPED: cannot create a network namespace: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                return None;
            }
            Err(e) => {
                eprintln!("SKIPPED: `ip` is not available ({e}); run scripts/setup");
                return None;
            }
        }
        let ns = Netns { name };
        for i in 1..=veths {
            ns.ip(&[
                "link",
                "add",
                &format!("veth{i}"),
                "type",
                "veth",
                "peer",
                "name",
                &format!("peer{i}"),
            ]);
        }
        ns.ip(&["link", "set", "lo", "up"]);
        Some(ns)
    }

    pub fn ip(&self, args: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = Command::new("ip")
            .args(["-j", "-n", &self.name])
            .args(args)
            .output()
            .unwrap();
        if !out.status.success() {
            return Value::Null;
        }
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    }

    /// `ip -j link show dev NAME`, or None when it does not exist.
    pub fn link(&self, name: &str) -> Option<Value> {
        self.json(&["link", "show", "dev", name])
            .as_array()
            .and_then(|a| a.first().cloned())
    }

    /// Global-scope addresses of `dev`, sorted, as `addr/prefix`.
    pub fn addrs(&self, dev: &str) -> Vec<String> {
        let v = self.json(&["addr", "show", "dev", dev]);
        let mut out = Vec::new();
        for l in v.as_array().into_iter().flatten() {
            for a in l["addr_info"].as_array().into_iter().flatten() {
                if a["scope"] == "global" {
                    out.push(format!("{}/{}", a["local"].as_str().unwrap(), a["prefixlen"]));
                }
            }
        }
        out.sort();
        out
    }

    pub fn all_links(&self) -> Value {
        self.json(&["link", "show"])
    }

    /// Every route of the main table, both families, as `ip -j` has them.
    pub fn routes(&self) -> Vec<Value> {
        let mut out = Vec::new();
        for fam in ["-4", "-6"] {
            if let Value::Array(a) = self.json(&[fam, "route", "show", "table", "main"]) {
                out.extend(a);
            }
        }
        out
    }

    /// The agent's routes (protocol 196), as `ip -j` has them.
    pub fn owned_routes(&self) -> Vec<Value> {
        self.routes().into_iter().filter(is_owned).collect()
    }

    /// The agent's routes of one family (`-4` or `-6`).
    pub fn owned_routes_of(&self, family: &str) -> Vec<Value> {
        match self.json(&[family, "route", "show", "table", "main"]) {
            Value::Array(a) => a.into_iter().filter(is_owned).collect(),
            _ => Vec::new(),
        }
    }

    pub fn cfg(&self) -> NetConfig {
        NetConfig {
            netns: Some(self.name.clone()),
            ..Default::default()
        }
    }
}

fn is_owned(r: &Value) -> bool {
    r["protocol"] == "196" || r["protocol"] == 196
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// A pyroute2 reader kept running (`read_netns.py --serve`): one Python
/// start for many reads.
pub struct Pyroute2 {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Pyroute2 {
    pub fn start() -> Pyroute2 {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/net_support/read_netns.py");
        let mut child = Command::new("python3")
            .args([script, "--serve"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3 starts");
        let out = std::io::BufReader::new(child.stdout.take().unwrap());
        Pyroute2 { child, out }
    }

    /// Namespace `ns` as pyroute2 reads it.
    pub fn read(&mut self, ns: &Netns) -> Result<Value, String> {
        use std::io::{BufRead, Write};
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{}", ns.name).map_err(|e| e.to_string())?;
        stdin.flush().map_err(|e| e.to_string())?;
        let mut line = String::new();
        self.out.read_line(&mut line).map_err(|e| e.to_string())?;
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("{e}: {line:?}"))?;
        match v.get("error") {
            Some(e) => Err(format!("pyroute2: {e}")),
            None => Ok(v),
        }
    }
}

impl Drop for Pyroute2 {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Why pyroute2 cannot be used here (None: it can).
pub fn pyroute2_missing() -> Option<String> {
    match Command::new("python3").args(["-c", "import pyroute2"]).output() {
        Ok(o) if o.status.success() => None,
        Ok(o) => Some(format!(
            "pyroute2 is not installed (run scripts/setup): {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("python3 is not available ({e}); run scripts/setup")),
    }
}

pub fn dpu(name: &str, net: HostNetwork) -> DpuNetwork {
    DpuNetwork {
        dpu: name.into(),
        pf_pci_address: String::new(),
        network: Some(net),
    }
}

pub fn br(name: &str, ports: &[&str], mtu: u32, addrs: &[&str]) -> Bridge {
    Bridge {
        name: name.into(),
        ports: ports.iter().map(|s| s.to_string()).collect(),
        mtu,
        addresses: addrs.iter().map(|s| s.to_string()).collect(),
    }
}

pub fn master(l: &Value) -> Option<&str> {
    l["master"].as_str()
}

/// `hostplane-agent network ARGS --netns NS --state STATE`: (exit code, stdout, stderr).
pub fn agent(ns: &Netns, state: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hostplane-agent"))
        .arg("network")
        .args(args)
        .args(["--netns", &ns.name, "--state"])
        .arg(state)
        .output()
        .unwrap();
    let s = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code().unwrap_or(-1), s(&out.stdout), s(&out.stderr))
}

/// Write `text` to `dir/name` and `network apply` it: (exit code, stdout, stderr).
pub fn apply(ns: &Netns, dir: &Path, name: &str, text: &str) -> (i32, String, String) {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    agent(
        ns,
        &dir.join("owned.json"),
        &["apply", "--file", file.to_str().unwrap()],
    )
}
