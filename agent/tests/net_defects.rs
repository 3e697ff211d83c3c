//! The host-network defects outside clients found (issue 10), each on the
//! real kernel in a throwaway namespace, read back with `ip -j` rather than
//! the agent's own reading. Each of these failed on the reconciler before
//! the fix.
mod net_support;

use std::time::Duration;

use hostplane_agent::net::{self, NetConfig};
use hostplane_proto::v1::{HostNetwork, Route};
use net_support::{Netns, apply, br, dpu, master};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

fn route<'a>(routes: &'a [Value], dst: &str) -> Vec<&'a Value> {
    routes.iter().filter(|r| r["dst"] == dst).collect()
}

/// Gateway changes on the same destination and metric, IPv4 and IPv6, the
/// default routes included: replaced in place by one apply, never deleted.
#[test]
fn a_gateway_change_replaces_the_route_in_place() {
    let Some(ns) = Netns::new(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let net = |gw4: &str, gw6: &str| {
        format!(
            "bridges:\n  - name: br0\n    ports: [veth1]\n    addresses: [10.0.0.1/24, \"fd00::1/64\"]\n\
             routes:\n\
             \x20 - {{destination: default, gateway: {gw4}}}\n\
             \x20 - {{destination: 10.9.0.0/16, gateway: {gw4}, dev: br0, metric: 100}}\n\
             \x20 - {{destination: default6, gateway: \"{gw6}\"}}\n\
             \x20 - {{destination: \"2001:db8:9::/48\", gateway: \"{gw6}\", metric: 100}}\n"
        )
    };
    let (code, out, err) = apply(&ns, dir.path(), "net.yaml", &net("10.0.0.254", "fd00::fe"));
    assert_eq!(code, 0, "{out}{err}");
    for (gw4, gw6) in [("10.0.0.253", "fd00::fd"), ("10.0.0.252", "fd00::fe")] {
        let (code, out, err) = apply(&ns, dir.path(), "net.yaml", &net(gw4, gw6));
        assert_eq!(code, 0, "one apply converges: {out}{err}");
        assert!(out.contains("replace route"), "{out}");
        assert!(!out.contains("delete route"), "{out}");
        for (family, dst, gw) in [
            ("-4", "default", gw4),
            ("-4", "10.9.0.0/16", gw4),
            ("-6", "default", gw6),
            ("-6", "2001:db8:9::/48", gw6),
        ] {
            let routes = ns.owned_routes_of(family);
            let rs = route(&routes, dst);
            assert_eq!(rs.len(), 1, "exactly one {dst}: {routes:?}");
            assert_eq!(rs[0]["gateway"], gw, "{dst}: {routes:?}");
        }
        let (code, out, _) = apply(&ns, dir.path(), "net.yaml", &net(gw4, gw6));
        assert_eq!((code, out.trim()), (0, "no changes"));
    }
}

/// An IPv6 route written without a metric (the docs' own `default6`
/// example) gets metric 1024 from the kernel and then stays: every later
/// apply reports no changes and the route is there after each.
#[test]
fn an_ipv6_route_without_a_metric_settles() {
    let Some(ns) = Netns::new(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = "bridges:\n  - name: br-dpu\n    ports: [veth1]\n    addresses: [\"fd00::1/64\"]\n\
                routes:\n  - {destination: default6, gateway: \"fd00::fe\"}\n  - {destination: \"2001:db8::/48\", dev: br-dpu}\n";
    let (code, out, err) = apply(&ns, dir.path(), "net.yaml", text);
    assert_eq!(code, 0, "{out}{err}");
    for i in 0..3 {
        let (code, out, err) = apply(&ns, dir.path(), "net.yaml", text);
        assert_eq!((code, out.trim()), (0, "no changes"), "apply {i}: {err}");
        let routes = ns.owned_routes_of("-6");
        let d = route(&routes, "default");
        assert_eq!(d.len(), 1, "{routes:?}");
        assert_eq!(
            (d[0]["gateway"].as_str(), d[0]["metric"].as_u64()),
            (Some("fd00::fe"), Some(1024))
        );
        assert_eq!(route(&routes, "2001:db8::/48")[0]["metric"], 1024);
    }
}

/// The daemon with the same state: unrelated netlink events do not flip
/// the route, and nothing is counted as drift.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_events_repair_nothing_in_the_daemon() {
    let Some(ns) = Netns::new(3) else { return };
    let stop = CancellationToken::new();
    let h = net::start(ns.cfg(), stop.clone()).unwrap();
    let mut reports = h.subscribe();
    let state = |a: &[&str], b: &[&str]| {
        vec![dpu(
            "d1",
            HostNetwork {
                bridges: vec![br("br-a", a, 0, &["fd00::1/64"]), br("br-b", b, 0, &[])],
                routes: vec![Route {
                    destination: "default6".into(),
                    gateway: "fd00::fe".into(),
                    ..Default::default()
                }],
                ..Default::default()
            },
        )]
    };
    h.set_desired(state(&["veth1"], &["veth2"])).await.unwrap();
    // Move veth1 from br-a to br-b.
    let r = h.set_desired(state(&[], &["veth2", "veth1"])).await.unwrap();
    assert!(r[0].applied, "{:?}", r[0].objects);
    // Unrelated events: a link someone else adds, brings up, addresses.
    ns.ip(&[
        "link", "add", "other-x", "type", "veth", "peer", "name", "other-y",
    ]);
    ns.ip(&["link", "set", "other-x", "up"]);
    ns.ip(&["addr", "add", "192.0.2.9/24", "dev", "other-x"]);
    ns.ip(&["link", "set", "peer3", "up"]);
    let quiet = tokio::time::timeout(Duration::from_millis(700), reports.recv()).await;
    assert!(quiet.is_err(), "a drift repair was reported: {quiet:?}");
    assert_eq!(master(&ns.link("veth1").unwrap()), Some("br-b"));
    let routes = ns.owned_routes_of("-6");
    assert_eq!(route(&routes, "default").len(), 1, "{routes:?}");
    let again = h.set_desired(state(&[], &["veth2", "veth1"])).await.unwrap();
    assert_eq!((again[0].changes, again[0].drift_repairs), (0, 0));
    stop.cancel();
}

/// "attach a1 to brB / detach a1 from brA": the port ends on brB, in one
/// apply, and the next apply has nothing to do.
#[test]
fn a_port_moves_between_owned_bridges_in_one_apply() {
    let Some(ns) = Netns::new(2) else { return };
    let dir = tempfile::tempdir().unwrap();
    let text = |a: &str, b: &str| {
        format!("bridges:\n  - {{name: br-a, ports: [{a}]}}\n  - {{name: br-b, ports: [{b}]}}\n")
    };
    let (code, _, err) = apply(&ns, dir.path(), "net.yaml", &text("veth1", "veth2"));
    assert_eq!(code, 0, "{err}");
    // Swap both ports at once, then move one back.
    for (a, b, want1, want2) in [
        ("veth2", "veth1", "br-b", "br-a"),
        ("", "veth1, veth2", "br-b", "br-b"),
        ("veth1, veth2", "", "br-a", "br-a"),
    ] {
        let (code, out, err) = apply(&ns, dir.path(), "net.yaml", &text(a, b));
        assert_eq!(code, 0, "{out}{err}");
        assert!(
            !out.contains("detach"),
            "a moved port is never detached first: {out}"
        );
        assert_eq!(master(&ns.link("veth1").unwrap()), Some(want1), "{out}");
        assert_eq!(master(&ns.link("veth2").unwrap()), Some(want2), "{out}");
        let (code, out, _) = apply(&ns, dir.path(), "net.yaml", &text(a, b));
        assert_eq!((code, out.trim()), (0, "no changes"));
    }
}

/// A key given twice is refused naming the key and line; nothing changes
/// (the bridges under the first key stay).
#[test]
fn duplicate_keys_are_refused_and_change_nothing() {
    let Some(ns) = Netns::new(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = apply(
        &ns,
        dir.path(),
        "net.yaml",
        "bridges:\n  - {name: br1}\n  - {name: br2}\n  - {name: br3}\n",
    );
    assert_eq!(code, 0, "{err}");
    let before = ns.all_links();
    for (name, text, line) in [
        (
            "net.yaml",
            "bridges:\n  - {name: br1}\n  - {name: br2}\n  - {name: br3}\nbridges: []\n",
            "line 5",
        ),
        (
            "net.json",
            "{\"bridges\": [{\"name\": \"br1\"}],\n\"mtu\": 1500,\n\"bridges\": []}",
            "line 3",
        ),
        ("net.yaml", "bridges:\n  - name: br1\n    name: br9\n", "line 3"),
    ] {
        let (code, out, err) = apply(&ns, dir.path(), name, text);
        assert_eq!(code, 65, "{out}{err}");
        assert!(err.contains("duplicate field") && err.contains(line), "{err}");
        assert_eq!(ns.all_links(), before, "nothing changed");
    }
}

/// Type errors name the field path and the line; exit 65, nothing changes.
#[test]
fn type_errors_name_the_field() {
    let Some(ns) = Netns::new(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let before = ns.all_links();
    for (text, want) in [
        ("mtu: \"big\"\n", "mtu: expected a whole number"),
        ("mtu: -5\n", "mtu: expected a whole number"),
        (
            "bridges:\n  - name: br0\n    ports: spare0\n",
            "bridges[0].ports: invalid type: string \"spare0\", expected a sequence at line 3",
        ),
        (
            "routes:\n  - destination: default\n    metric: x\n",
            "routes[0].metric: expected a whole number",
        ),
    ] {
        let (code, _, err) = apply(&ns, dir.path(), "net.yaml", text);
        assert_eq!(code, 65, "{text}: {err}");
        assert!(err.contains(want) && err.contains("line "), "{text}: {err}");
    }
    assert_eq!(ns.all_links(), before);
}

/// A reference the host cannot satisfy refuses the whole apply, before any
/// change: no bridge is created for a port that does not exist.
#[test]
fn a_missing_reference_refuses_the_whole_apply() {
    let Some(ns) = Netns::new(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let before = ns.all_links();
    for (text, want) in [
        (
            "bridges:\n  - {name: br-new, ports: [veth1, spare0], addresses: [10.0.0.1/24]}\n",
            "host_network.bridges[0].ports[1]: no interface named spare0",
        ),
        (
            "bridges:\n  - {name: br-new, ports: [veth1]}\nroutes:\n  - {destination: 10.9.0.0/16, dev: eth9}\n",
            "host_network.routes[0].dev: no interface named eth9",
        ),
    ] {
        let (code, out, err) = apply(&ns, dir.path(), "net.yaml", text);
        assert_eq!(code, 65, "{out}{err}");
        assert!(err.contains(want) && err.contains("nothing was changed"), "{err}");
        assert!(ns.link("br-new").is_none(), "the bridge was not created");
        assert_eq!(ns.all_links(), before);
    }
    // A route whose key a foreign route holds is refused; the foreign route stays.
    ns.ip(&["link", "set", "veth1", "up"]);
    ns.ip(&["route", "add", "10.8.0.0/16", "dev", "veth1"]);
    let (code, _, err) = apply(
        &ns,
        dir.path(),
        "net.yaml",
        "bridges:\n  - {name: br-new}\nroutes:\n  - {destination: 10.8.0.0/16, dev: br-new}\n",
    );
    assert_eq!(code, 65, "{err}");
    assert!(
        err.contains("routes[0].destination") && err.contains("hostplane did not add"),
        "{err}"
    );
    assert!(ns.link("br-new").is_none());
    assert!(ns.ip(&["route", "show", "10.8.0.0/16"]).contains("dev veth1"));
}

/// JSON is strict JSON; SR-IOV preflight refusals exit 65 like other invalid input.
#[test]
fn strict_json_and_sriov_refusals_exit_65() {
    let Some(ns) = Netns::new(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("net.json", "{\"bridges\": [{\"name\": \"br0\"}],}"),
        ("net.conf", "{\"bridges\": [{\"name\": \"br0\"},]}"),
    ] {
        let (code, _, err) = apply(&ns, dir.path(), name, text);
        assert_eq!(code, 65, "{name}: {err}");
        assert!(err.contains("trailing comma"), "{err}");
    }
    let (code, _, err) = apply(
        &ns,
        dir.path(),
        "net.yaml",
        "bridges: [{name: br0}]\nsriov:\n  - {pf: ens9f0, numVfs: 4}\n",
    );
    assert_eq!(code, 65, "{err}");
    assert!(err.contains("sriov[0].pf") && err.contains("ens9f0"), "{err}");
    assert!(ns.link("br0").is_none());
}

/// An address someone else added, then listed, then unlisted, stays; the
/// one the agent added goes. The CLI's record is its `--state` file.
#[test]
fn the_cli_removes_only_addresses_it_added() {
    let Some(ns) = Netns::new(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let net = |addrs: &str| format!("bridges:\n  - {{name: br0, ports: [veth1], addresses: [{addrs}]}}\n");
    let (code, _, err) = apply(&ns, dir.path(), "net.yaml", &net(""));
    assert_eq!(code, 0, "{err}");
    ns.ip(&["addr", "add", "10.0.5.1/24", "dev", "br0"]);
    let (code, out, err) = apply(&ns, dir.path(), "net.yaml", &net("10.0.5.1/24, 10.0.6.1/24"));
    assert_eq!(code, 0, "{err}");
    assert!(!out.contains("10.0.5.1"), "already there: {out}");
    let (code, out, err) = apply(&ns, dir.path(), "net.yaml", &net(""));
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("remove address 10.0.6.1/24 from br0") && !out.contains("10.0.5.1"),
        "{out}"
    );
    assert_eq!(ns.addrs("br0"), ["10.0.5.1/24"]);
    let record = std::fs::read_to_string(dir.path().join("owned.json")).unwrap();
    assert!(!record.contains("10.0.5.1"), "{record}");
}

/// The daemon's record lives under its state directory and survives a
/// restart: after one, it still removes what it added, and still never
/// what it did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_address_record_survives_a_restart() {
    let Some(ns) = Netns::new(1) else { return };
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join(net::OWNED_FILE);
    let cfg = NetConfig {
        owned_file: Some(file.clone()),
        ..ns.cfg()
    };
    let want = |addrs: &[&str]| {
        vec![dpu(
            "d1",
            HostNetwork {
                bridges: vec![br("br0", &["veth1"], 0, addrs)],
                ..Default::default()
            },
        )]
    };
    let stop = CancellationToken::new();
    let h = net::start(cfg.clone(), stop.clone()).unwrap();
    h.set_desired(want(&[])).await.unwrap();
    ns.ip(&["addr", "add", "10.0.5.1/24", "dev", "br0"]);
    h.set_desired(want(&["10.0.5.1/24", "10.0.6.1/24", "fd00:6::1/64"]))
        .await
        .unwrap();
    let record: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        record,
        serde_json::json!({"br0": ["10.0.6.1/24", "fd00:6::1/64"]}),
        "only what the agent added is recorded"
    );
    stop.cancel();
    drop(h);

    let stop = CancellationToken::new();
    let h = net::start(cfg, stop.clone()).unwrap();
    let r = h.set_desired(want(&[])).await.unwrap();
    assert!(r[0].applied, "{:?}", r[0].objects);
    assert_eq!(
        ns.addrs("br0"),
        ["10.0.5.1/24"],
        "the agent's two went; the other stays"
    );
    let record: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(record, serde_json::json!({}));
    stop.cancel();
    drop(h);

    // A record that does not parse: the agent starts with an empty one and
    // writes a valid one again.
    std::fs::write(&file, "{ not json").unwrap();
    let stop = CancellationToken::new();
    let h = net::start(
        NetConfig {
            owned_file: Some(file.clone()),
            ..ns.cfg()
        },
        stop.clone(),
    )
    .unwrap();
    h.set_desired(want(&["10.0.7.1/24"])).await.unwrap();
    let record: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(record, serde_json::json!({"br0": ["10.0.7.1/24"]}));
    stop.cancel();
}

/// With SR-IOV in the same state: a missing port refuses the apply before
/// the VF count is written; a VF port of the apply's own VFs is checked
/// once they exist, before any bridge is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn references_are_checked_before_the_vf_count_is_written() {
    let Some(ns) = Netns::new(1) else { return };
    // veth1 plays the PF in a fake sysfs (no SR-IOV hardware here).
    let sys = tempfile::tempdir().unwrap();
    let dev = sys.path().join("class/net/veth1/device");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("sriov_totalvfs"), "4\n").unwrap();
    std::fs::write(dev.join("sriov_numvfs"), "0\n").unwrap();
    std::fs::create_dir_all(dev.join("virtfn0/net/veth1v0")).unwrap();
    let cfg = NetConfig {
        sysfs_root: sys.path().into(),
        vf_wait: Duration::from_millis(200),
        ..ns.cfg()
    };
    let stop = CancellationToken::new();
    let h = net::start(cfg, stop.clone()).unwrap();
    let want = |ports: &[&str]| {
        vec![dpu(
            "d1",
            HostNetwork {
                bridges: vec![br("br0", ports, 0, &[])],
                sriov: vec![hostplane_proto::v1::SriovPf {
                    pf: "veth1".into(),
                    num_vfs: 2,
                    vfs: vec![],
                }],
                ..Default::default()
            },
        )]
    };
    let e = h.set_desired(want(&["spare0"])).await.unwrap_err().to_string();
    assert!(
        e.contains("bridges[0].ports[0]: no interface named spare0"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(dev.join("sriov_numvfs")).unwrap().trim(),
        "0",
        "the VF count was not written"
    );
    // VF 1 never gets a netdev: the count is written (it must be, to make
    // the VFs), the port is then refused, and no bridge is made.
    let e = h
        .set_desired(want(&["vf:veth1:1"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("bridges[0].ports[0]: port vf:veth1:1"), "{e}");
    assert!(
        e.contains("the VF counts were written first; nothing else was changed"),
        "{e}"
    );
    assert!(ns.link("br0").is_none(), "no bridge was made");
    stop.cancel();
}
