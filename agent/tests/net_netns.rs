//! Host networking on the real kernel: each test makes its own network
//! namespace with veth pairs, runs the agent's network code inside it, and
//! checks the result independently with `ip -j` (not with the agent's own
//! reading). Needs root and network namespaces (CI has both); without them
//! the tests print why and return.
mod net_support;

use std::time::{Duration, Instant};

use hostplane_agent::net::{self, NetConfig, NetError};
use hostplane_proto::v1::{HostNetwork, Route};
use net_support::{Netns, agent, br, dpu, master};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_reapply_change_and_remove() {
    let Some(ns) = Netns::new(3) else { return };
    let stop = CancellationToken::new();
    let h = net::start(ns.cfg(), stop.clone()).unwrap();
    let want = |ports: &[&str], mtu: u32| {
        vec![dpu(
            "d1",
            HostNetwork {
                bridges: vec![br("br-dpu", ports, mtu, &["10.0.0.1/24", "fd00::1/64"])],
                routes: vec![Route {
                    destination: "10.9.0.0/16".into(),
                    gateway: "10.0.0.254".into(),
                    dev: "br-dpu".into(),
                    metric: 0,
                }],
                ..Default::default()
            },
        )]
    };

    // From empty.
    let r = h.set_desired(want(&["veth1", "veth2"], 9000)).await.unwrap();
    assert!(r[0].applied, "{:?}", r[0].objects);
    assert!(r[0].changes > 0);
    let b = ns.link("br-dpu").expect("bridge created");
    assert_eq!(b["mtu"], 9000);
    assert_eq!(b["ifalias"], "hostplane:d1", "ownership tag");
    assert!(b["flags"].as_array().unwrap().iter().any(|f| f == "UP"));
    for p in ["veth1", "veth2"] {
        let l = ns.link(p).unwrap();
        assert_eq!(master(&l), Some("br-dpu"), "{p} attached");
        assert_eq!(l["mtu"], 9000, "{p} takes the bridge MTU");
    }
    assert_eq!(ns.addrs("br-dpu"), ["10.0.0.1/24", "fd00::1/64"]);
    let routes = ns.ip(&["route", "show", "proto", "196"]);
    assert!(
        routes.contains("10.9.0.0/16 via 10.0.0.254 dev br-dpu"),
        "{routes}"
    );

    // The same state again: nothing to do.
    let r = h.set_desired(want(&["veth1", "veth2"], 9000)).await.unwrap();
    assert_eq!(r[0].changes, 0, "a no-op reapply changes nothing");

    // Change the MTU, swap a port.
    let r = h.set_desired(want(&["veth1", "veth3"], 1500)).await.unwrap();
    assert!(r[0].applied);
    assert_eq!(ns.link("br-dpu").unwrap()["mtu"], 1500);
    assert_eq!(master(&ns.link("veth3").unwrap()), Some("br-dpu"));
    let veth2 = ns
        .link("veth2")
        .expect("a removed port is detached, never deleted");
    assert_eq!(master(&veth2), None);

    // Remove it all: the bridge and its route go; the ports stay.
    let r = h.set_desired(vec![]).await.unwrap();
    assert!(r.is_empty());
    assert!(ns.link("br-dpu").is_none(), "bridge removed");
    assert!(ns.link("veth1").is_some());
    assert!(ns.ip(&["route", "show", "proto", "196"]).trim().is_empty());
    stop.cancel();
}

/// The manager's tasks — the owner and its two netlink connections' drivers —
/// all run in the tracker it is given (the daemon's net Subsystem): once it
/// is cancelled and the tracker has drained, none is left on the runtime.
/// (A current-thread runtime: the count is read after the tasks ended, never
/// while one is ending on another worker.)
#[tokio::test]
async fn a_stopped_manager_leaves_no_netlink_task_behind() {
    let Some(ns) = Netns::new(1) else { return };
    let metrics = tokio::runtime::Handle::current().metrics();
    let before = metrics.num_alive_tasks();
    let tasks = TaskTracker::new();
    let stop = CancellationToken::new();
    let h = net::start_in(ns.cfg(), &tasks, stop.clone()).unwrap();
    let want = vec![dpu(
        "d1",
        HostNetwork {
            bridges: vec![br("br0", &["veth1"], 0, &["192.0.2.1/24"])],
            ..Default::default()
        },
    )];
    assert!(h.set_desired(want).await.unwrap()[0].applied);
    assert_eq!(tasks.len(), 3, "the owner and its two netlink drivers");
    assert_eq!(metrics.num_alive_tasks(), before + 3);

    stop.cancel();
    tasks.close();
    tasks.wait().await;
    assert_eq!(metrics.num_alive_tasks(), before, "a task outlived the manager");
    assert!(matches!(h.set_desired(Vec::new()).await, Err(NetError::Stopped)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_repaired_within_a_second() {
    let Some(ns) = Netns::new(1) else { return };
    let stop = CancellationToken::new();
    let h = net::start(ns.cfg(), stop.clone()).unwrap();
    let mut reports = h.subscribe();
    let want = vec![dpu(
        "d1",
        HostNetwork {
            bridges: vec![br("br0", &["veth1"], 0, &["192.0.2.1/24"])],
            ..Default::default()
        },
    )];
    h.set_desired(want).await.unwrap();
    assert!(ns.link("br0").is_some());

    ns.ip(&["link", "del", "br0"]);
    let t0 = Instant::now();
    while ns.link("br0").is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(1),
            "br0 not recreated within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let r = tokio::time::timeout(Duration::from_secs(2), reports.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.drift_repairs, 1);
    assert!(r.last_drift.contains("create bridge br0"), "{}", r.last_drift);
    // The repair is complete: port and address are back too.
    for _ in 0..100 {
        if ns.addrs("br0") == ["192.0.2.1/24"] && master(&ns.link("veth1").unwrap()) == Some("br0") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(ns.addrs("br0"), ["192.0.2.1/24"]);
    assert_eq!(master(&ns.link("veth1").unwrap()), Some("br0"));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_objects_are_never_touched() {
    let Some(ns) = Netns::new(2) else { return };
    // A bridge someone else made, with the name the desired state wants, and one it does not name.
    ns.ip(&["link", "add", "br-taken", "type", "bridge"]);
    ns.ip(&["link", "add", "br-other", "type", "bridge"]);
    ns.ip(&["link", "set", "veth2", "master", "br-other"]);
    ns.ip(&["addr", "add", "198.51.100.7/24", "dev", "veth1"]);
    let stop = CancellationToken::new();
    let h = net::start(ns.cfg(), stop.clone()).unwrap();
    let before = ns.all_links();
    // A state that would take over the foreign bridge is refused as a whole.
    let e = h
        .set_desired(vec![dpu(
            "d1",
            HostNetwork {
                bridges: vec![
                    br("br-mine", &[], 0, &["10.1.0.1/24"]),
                    br("br-taken", &["veth1"], 0, &[]),
                ],
                ..Default::default()
            },
        )])
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "dpu d1: host_network.bridges[1].name: interface br-taken exists and was not created by hostplane"
        ),
        "{e}"
    );
    assert_eq!(ns.all_links(), before, "nothing changed, br-mine included");
    // So is one that would take a port of someone else's bridge.
    let e = h
        .set_desired(vec![dpu(
            "d1",
            HostNetwork {
                bridges: vec![br("br-mine", &["veth1", "veth2"], 0, &["10.1.0.1/24"])],
                ..Default::default()
            },
        )])
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("bridges[0].ports[1]: veth2 is a port of br-other, which hostplane did not create"),
        "{e}"
    );
    assert_eq!(ns.all_links(), before, "nothing changed");
    // What touches nothing foreign is applied.
    let r = h
        .set_desired(vec![dpu(
            "d1",
            HostNetwork {
                bridges: vec![br("br-mine", &["veth1"], 0, &["10.1.0.1/24"])],
                ..Default::default()
            },
        )])
        .await
        .unwrap();
    assert!(r[0].applied, "{:?}", r[0].objects);
    let t = ns.link("br-taken").unwrap();
    assert!(t["ifalias"].is_null(), "the foreign bridge was not tagged");
    assert_eq!(
        master(&ns.link("veth2").unwrap()),
        Some("br-other"),
        "a foreign port stays where it is"
    );
    assert_eq!(ns.addrs("veth1"), ["198.51.100.7/24"], "a foreign address stays");
    // Removing everything removes only what the agent made.
    h.set_desired(vec![]).await.unwrap();
    assert!(ns.link("br-mine").is_none());
    assert_eq!(
        master(&ns.link("veth1").unwrap()),
        None,
        "veth1 detached, not deleted"
    );
    assert!(ns.link("br-taken").is_some() && ns.link("br-other").is_some());
    assert_eq!(master(&ns.link("veth2").unwrap()), Some("br-other"));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_state_changes_nothing() {
    let Some(ns) = Netns::new(1) else { return };
    let stop = CancellationToken::new();
    let h = net::start(ns.cfg(), stop.clone()).unwrap();
    let before = ns.all_links();
    let bad = vec![dpu(
        "d1",
        HostNetwork {
            bridges: vec![br("br0", &["veth1"], 0, &[]), br("br1", &["veth1"], 20, &[])],
            ..Default::default()
        },
    )];
    let e = h.set_desired(bad).await.unwrap_err();
    assert!(matches!(e, NetError::Invalid { .. }), "{e}");
    assert!(e.to_string().contains("dpu d1: host_network.bridges[1]"), "{e}");
    assert_eq!(ns.all_links(), before, "nothing changed");
    // An unknown PF is refused before anything else in the state is applied.
    let unknown_pf = vec![dpu(
        "d1",
        HostNetwork {
            bridges: vec![br("br0", &["veth1"], 0, &[])],
            sriov: vec![hostplane_proto::v1::SriovPf {
                pf: "ens9f0".into(),
                num_vfs: 4,
                vfs: vec![],
            }],
            ..Default::default()
        },
    )];
    let e = h.set_desired(unknown_pf).await.unwrap_err();
    assert!(
        e.to_string().contains("host_network.sriov[0].pf") && e.to_string().contains("ens9f0"),
        "{e}"
    );
    assert_eq!(ns.all_links(), before, "nothing changed");
    // diff shows and changes nothing either.
    let good = vec![dpu(
        "d1",
        HostNetwork {
            bridges: vec![br("br0", &["veth1"], 0, &[])],
            ..Default::default()
        },
    )];
    let changes = net::diff(&ns.cfg(), &good).await.unwrap();
    assert!(changes.iter().any(|c| c == "create bridge br0"), "{changes:?}");
    assert_eq!(ns.all_links(), before, "diff changed nothing");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_network_command_applies_diffs_and_shows() {
    let Some(ns) = Netns::new(1) else { return };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("owned.json");
    let file = dir.path().join("net.yaml");
    std::fs::write(
        &file,
        "mtu: 9000\nbridges:\n  - name: br-dpu\n    ports: [veth1]\n    addresses: [\"10.0.0.1/24\", \"10.0.1.1/24\"]\n",
    )
    .unwrap();
    let f = file.to_str().unwrap();

    let (code, out, err) = agent(&ns, &state, &["diff", "--file", f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("would create bridge br-dpu"), "{out}");
    assert!(ns.link("br-dpu").is_none(), "diff changed nothing");

    let (code, out, err) = agent(&ns, &state, &["apply", "--file", f]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("create bridge br-dpu") && out.contains("attach veth1 to br-dpu"),
        "{out}"
    );
    assert_eq!(ns.addrs("br-dpu"), ["10.0.0.1/24", "10.0.1.1/24"]);
    assert_eq!(ns.link("br-dpu").unwrap()["ifalias"], "hostplane:standalone");

    let (code, out, _) = agent(&ns, &state, &["diff", "--file", f]);
    assert_eq!((code, out.trim()), (0, "no changes"));

    // Drop one address from the file: the tool removes the one it added, and only that.
    ns.ip(&["addr", "add", "10.0.2.1/24", "dev", "br-dpu"]);
    std::fs::write(
        &file,
        "mtu: 9000\nbridges:\n  - name: br-dpu\n    ports: [veth1]\n    addresses: [\"10.0.0.1/24\"]\n",
    )
    .unwrap();
    let (code, out, err) = agent(&ns, &state, &["apply", "--file", f]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("remove address 10.0.1.1/24 from br-dpu"), "{out}");
    assert_eq!(
        ns.addrs("br-dpu"),
        ["10.0.0.1/24", "10.0.2.1/24"],
        "the foreign address stays"
    );

    let (code, out, _) = agent(&ns, &state, &["show"]);
    assert_eq!(code, 0);
    let shown: Value = serde_norway::from_str(&out).unwrap();
    assert_eq!(shown["bridges"][0]["name"], "br-dpu");
    assert_eq!(shown["bridges"][0]["ports"][0], "veth1");

    std::fs::write(&file, "bridges:\n  - name: br0\n    mtu: 20\n").unwrap();
    let (code, _, err) = agent(&ns, &state, &["apply", "--file", f]);
    assert_eq!(code, 65, "a bad file is refused: {err}");
    assert!(err.contains("bridges[0].mtu"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ports_by_pci_address_and_vf_resolve_through_sysfs() {
    let Some(ns) = Netns::new(2) else { return };
    // A fake sysfs: veth1 stands for the PCI function 0000:04:00.1, veth2 for VF 0 of PF ens1f0.
    let sys = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(sys.path().join("bus/pci/devices/0000:04:00.1/net/veth1")).unwrap();
    std::fs::create_dir_all(sys.path().join("class/net/ens1f0/device/virtfn0/net/veth2")).unwrap();
    let cfg = NetConfig {
        sysfs_root: sys.path().into(),
        ..ns.cfg()
    };
    let stop = CancellationToken::new();
    let h = net::start(cfg, stop.clone()).unwrap();
    let want = vec![dpu(
        "d1",
        HostNetwork {
            bridges: vec![br(
                "br0",
                &["pci:0000:04:00.1", "vf:ens1f0:0", "vf:ens1f0:1"],
                0,
                &[],
            )],
            ..Default::default()
        },
    )];
    // VF 1 has no netdev: the whole state is refused, naming the port, and nothing is made.
    let e = h.set_desired(want).await.unwrap_err().to_string();
    assert!(
        e.contains("dpu d1: host_network.bridges[0].ports[2]: port vf:ens1f0:1") && e.contains("virtfn1"),
        "{e}"
    );
    assert!(ns.link("br0").is_none(), "no bridge was created");
    let want = vec![dpu(
        "d1",
        HostNetwork {
            bridges: vec![br("br0", &["pci:0000:04:00.1", "vf:ens1f0:0"], 0, &[])],
            ..Default::default()
        },
    )];
    let r = h.set_desired(want).await.unwrap();
    assert!(r[0].applied, "{:?}", r[0].objects);
    assert_eq!(master(&ns.link("veth1").unwrap()), Some("br0"));
    assert_eq!(master(&ns.link("veth2").unwrap()), Some("br0"));
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_is_counted_on_the_dpu_whose_objects_were_repaired() {
    let Some(ns) = Netns::new(2) else { return };
    let stop = CancellationToken::new();
    let h = net::start(ns.cfg(), stop.clone()).unwrap();
    let mut reports = h.subscribe();
    let want = vec![
        dpu(
            "d1",
            HostNetwork {
                bridges: vec![br("br1", &["veth1"], 0, &[])],
                ..Default::default()
            },
        ),
        dpu(
            "d2",
            HostNetwork {
                bridges: vec![br("br2", &["veth2"], 0, &[])],
                ..Default::default()
            },
        ),
    ];
    h.set_desired(want.clone()).await.unwrap();
    ns.ip(&["link", "del", "br1"]);
    let r = tokio::time::timeout(Duration::from_secs(2), reports.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((r.dpu.as_str(), r.drift_repairs), ("d1", 1));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), reports.recv())
            .await
            .is_err(),
        "no drift report for d2, whose bridge was untouched"
    );
    let again = h.set_desired(want).await.unwrap();
    let by = |d: &str| again.iter().find(|r| r.dpu == d).unwrap().drift_repairs;
    assert_eq!((by("d1"), by("d2")), (1, 0));
    // The same count, as a Prometheus counter.
    let mut registry = prometheus_client::registry::Registry::default();
    h.metrics()
        .register(registry.sub_registry_with_prefix("hostplane_network"));
    let text = hostplane_agent::metrics::render(&registry);
    assert!(
        text.contains("hostplane_network_drift_repairs_total{dpu=\"d1\"} 1"),
        "{text}"
    );
    assert!(!text.contains("dpu=\"d2\""), "{text}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vf_attributes_on_a_pf_without_sriov_fail_honestly() {
    // No SR-IOV hardware here: veth1 plays the PF. The count goes to a fake
    // sysfs; the VF attributes go to the real kernel, which refuses them for a
    // veth, and that must be reported, naming the PF and the operation.
    let Some(ns) = Netns::new(1) else { return };
    let sys = tempfile::tempdir().unwrap();
    let dev = sys.path().join("class/net/veth1/device");
    std::fs::create_dir_all(&dev).unwrap();
    std::fs::write(dev.join("sriov_totalvfs"), "4\n").unwrap();
    std::fs::write(dev.join("sriov_numvfs"), "0\n").unwrap();
    // The VF netdevs the driver would create (the agent waits for them after a count change).
    for vf in 0..2 {
        std::fs::create_dir_all(dev.join(format!("virtfn{vf}/net/veth1v{vf}"))).unwrap();
    }
    let cfg = NetConfig {
        sysfs_root: sys.path().into(),
        ..ns.cfg()
    };
    let want = vec![dpu(
        "d1",
        HostNetwork {
            sriov: vec![hostplane_proto::v1::SriovPf {
                pf: "veth1".into(),
                num_vfs: 2,
                vfs: vec![hostplane_proto::v1::VfConfig {
                    index: 0,
                    trust: Some(true),
                    ..Default::default()
                }],
            }],
            ..Default::default()
        },
    )];
    let changes = net::diff(&cfg, &want).await.unwrap();
    assert!(
        changes.iter().any(|c| c == "set vf 0 trust on on veth1"),
        "{changes:?}"
    );
    let stop = CancellationToken::new();
    let h = net::start(cfg, stop.clone()).unwrap();
    let r = h.set_desired(want).await.unwrap();
    assert_eq!(std::fs::read_to_string(dev.join("sriov_numvfs")).unwrap(), "2");
    let count = r[0].objects.iter().find(|o| o.object == "vfs veth1 = 2").unwrap();
    assert!(count.applied, "{count:?}");
    let attrs = r[0]
        .objects
        .iter()
        .find(|o| o.object == "vf attributes on veth1")
        .unwrap();
    assert!(
        !attrs.applied && attrs.error.contains("set VF attributes on veth1"),
        "{attrs:?}"
    );
    assert!(!r[0].applied);
    stop.cancel();
}
