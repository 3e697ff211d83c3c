//! Host-network benchmark (issue 3): 4 bridges, 64 veth-backed ports, an IPv4
//! and an IPv6 address per bridge and a route per bridge, in a fresh network
//! namespace. Compares the agent's netlink reconciler with the equivalent
//! `ip` shell script (how DPF's host-network daemon did it), and measures a
//! no-op reconcile and the repair of one deleted bridge.
//!
//!     cargo bench -p hostplane-agent --bench net
//!
//! Needs root (network namespaces); prints why and exits 0 otherwise.
use std::process::Command;
use std::time::{Duration, Instant};

use hostplane_agent::net::{self, NetConfig};
use hostplane_proto::v1::{Bridge, DpuNetwork, HostNetwork, Route};
use tokio_util::sync::CancellationToken;

const BRIDGES: usize = 4;
const PORTS: usize = 64;
const RUNS: usize = 5;

struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Option<Netns> {
        let name = format!("hp-bench-{tag}-{}", std::process::id());
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            return None;
        }
        // 64 veth pairs in one `ip -batch` (setup, not timed).
        let batch: String = (0..PORTS)
            .map(|i| format!("link add v{i} type veth peer name p{i}\n"))
            .collect();
        let path = std::env::temp_dir().join(format!("{name}.batch"));
        std::fs::write(&path, batch).unwrap();
        let st = Command::new("ip")
            .args(["-n", &name, "-batch"])
            .arg(&path)
            .status()
            .unwrap();
        assert!(st.success(), "creating veths");
        let _ = std::fs::remove_file(path);
        Some(Netns(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn desired() -> Vec<DpuNetwork> {
    let per = PORTS / BRIDGES;
    let bridges = (0..BRIDGES)
        .map(|b| Bridge {
            name: format!("br{b}"),
            ports: (b * per..(b + 1) * per).map(|i| format!("v{i}")).collect(),
            mtu: 9000,
            addresses: vec![format!("10.0.{b}.1/24"), format!("fd00:{b}::1/64")],
        })
        .collect();
    let routes = (0..BRIDGES)
        .map(|b| Route {
            destination: format!("10.100.{b}.0/24"),
            gateway: format!("10.0.{b}.254"),
            dev: format!("br{b}"),
            metric: 0,
        })
        .collect();
    vec![DpuNetwork {
        dpu: "bench".into(),
        pf_pci_address: String::new(),
        network: Some(HostNetwork {
            bridges,
            routes,
            ..Default::default()
        }),
    }]
}

/// The same state as a shell script of `ip` commands, one process per command.
fn script(ns: &str) -> String {
    let per = PORTS / BRIDGES;
    let mut s = String::from("set -e\n");
    for b in 0..BRIDGES {
        s += &format!(
            "ip -n {ns} link add br{b} type bridge\nip -n {ns} link set br{b} mtu 9000\nip -n {ns} link set br{b} up\n"
        );
        for i in b * per..(b + 1) * per {
            s += &format!(
                "ip -n {ns} link set v{i} mtu 9000\nip -n {ns} link set v{i} master br{b}\nip -n {ns} link set v{i} up\n"
            );
        }
        s += &format!(
            "ip -n {ns} addr add 10.0.{b}.1/24 dev br{b}\nip -n {ns} addr add fd00:{b}::1/64 dev br{b}\n"
        );
        s += &format!("ip -n {ns} route add 10.100.{b}.0/24 via 10.0.{b}.254 dev br{b}\n");
    }
    s
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if Netns::new("probe").is_none() {
        println!("SKIPPED: cannot create network namespaces here (needs root)");
        return;
    }
    let mut agent_apply = Vec::new();
    let mut script_apply = Vec::new();
    let mut noop = Vec::new();
    let mut repair = Vec::new();
    for run in 0..RUNS {
        // The script, in its own fresh namespace.
        let ns = Netns::new(&format!("s{run}")).unwrap();
        let text = script(&ns.0);
        let t = Instant::now();
        let st = Command::new("sh").arg("-c").arg(&text).status().unwrap();
        script_apply.push(t.elapsed());
        assert!(st.success(), "the ip script failed");
        drop(ns);

        // The agent, in another fresh namespace.
        let ns = Netns::new(&format!("a{run}")).unwrap();
        let stop = CancellationToken::new();
        let h = net::start(
            NetConfig {
                netns: Some(ns.0.clone()),
                ..Default::default()
            },
            stop.clone(),
        )
        .unwrap();
        let t = Instant::now();
        let r = h.set_desired(desired()).await.unwrap();
        agent_apply.push(t.elapsed());
        assert!(
            r[0].applied,
            "{:?}",
            r[0].objects.iter().filter(|o| !o.applied).collect::<Vec<_>>()
        );
        for _ in 0..20 {
            let t = Instant::now();
            let r = h.set_desired(desired()).await.unwrap();
            noop.push(t.elapsed());
            assert_eq!(r[0].changes, 0, "the no-op reconcile changed something");
        }
        // Drift: delete br0 and time until the repair is reported.
        // Timed from before the deleting `ip` process starts: an upper bound
        // (it includes starting `ip`; the kernel event comes somewhat later).
        let mut reports = h.subscribe();
        let t = Instant::now();
        let st = Command::new("ip")
            .args(["-n", &ns.0, "link", "del", "br0"])
            .status()
            .unwrap();
        assert!(st.success());
        let rep = tokio::time::timeout(Duration::from_secs(5), reports.recv())
            .await
            .expect("repaired")
            .unwrap();
        repair.push(t.elapsed());
        assert_eq!(rep.drift_repairs, 1);
        stop.cancel();
    }
    let (a, s, n, r) = (
        median(agent_apply),
        median(script_apply),
        median(noop),
        median(repair),
    );
    println!(
        "host network: {BRIDGES} bridges, {PORTS} veth ports, 2 addresses and 1 route per bridge; {RUNS} runs, medians"
    );
    println!(
        "  apply from empty   agent {:8.2} ms   ip script {:8.2} ms   script/agent {:.1}x",
        ms(a),
        ms(s),
        ms(s) / ms(a)
    );
    println!(
        "  no-op reconcile    agent {:8.3} ms   (goal < 5 ms; the script is not idempotent)",
        ms(n)
    );
    println!(
        "  repair deleted br0 agent {:8.2} ms   (upper bound: from starting `ip link del`; goal < 100 ms; incl. the 50 ms debounce; DPF's loop: up to 30 s)",
        ms(r)
    );
}
