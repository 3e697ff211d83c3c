//! Hot-plug over the agent stream: inventory updates (`AgentMessage.inventory`)
//! recorded like Hello's (the Node's inventory, each Device's presence), and
//! the optional auto-registration of Devices for reported rshims
//! (`agents.auto_register_devices`). On the engine `HOSTPLANE_TEST_STORE` picks.
use std::net::SocketAddr;
use std::time::Duration;

use hostplane_coordinator::audit::Audit;
use hostplane_coordinator::fsm::testing::{self, get_node, seed};
use hostplane_coordinator::store::Store;
use hostplane_coordinator::stream::{AUTO_REGISTERED_LABEL, AgentStream, StreamConfig};
use hostplane_proto::v1::{
    Device, DeviceSpec, Hello, Inventory, Kind, ObjectMeta, RebootMethod, RshimInfo, agent_message, resource,
};
use tokio_util::sync::CancellationToken;

mod backend;
mod stream_common;
use stream_common::{msg, open, session_cfg};

struct Server {
    addr: SocketAddr,
    store: Store,
    stop: CancellationToken,
    audit_file: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn device(name: &str, node: &str, rshim: &str, serial: &str) -> hostplane_proto::v1::Resource {
    Device {
        metadata: Some(ObjectMeta {
            name: name.into(),
            ..Default::default()
        }),
        spec: Some(DeviceSpec {
            node: node.into(),
            rshim: rshim.into(),
            serial: serial.into(),
            ..Default::default()
        }),
        status: None,
    }
    .into()
}

/// n1 with d1 (rshim0, serial SN-D1) and d2 (rshim9); n2 with `n1-rshim4`
/// (a Device whose name an auto-registration on n1 would take).
async fn serve(auto_register: bool) -> Server {
    serve_with(
        backend::store(),
        StreamConfig {
            auto_register_devices: auto_register,
            ..session_cfg()
        },
    )
    .await
}

/// [`serve`] on `store` with `cfg`.
async fn serve_with(store: Store, cfg: StreamConfig) -> Server {
    seed(
        &store,
        vec![
            testing::node("n1", RebootMethod::Agent),
            testing::node("n2", RebootMethod::Agent),
            device("d1", "n1", "rshim0", "SN-D1"),
            device("d2", "n1", "rshim9", "SN-D2"),
            device("n1-rshim4", "n2", "rshim4", "SN-N2"),
        ],
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let audit_file = dir.path().join("audit.jsonl");
    let audit = Audit::open(Some(&audit_file)).unwrap();
    let stop = CancellationToken::new();
    let addr = stream_common::serve(AgentStream::new(store.clone(), cfg).with_audit(audit), &stop).await;
    Server {
        addr,
        store,
        stop,
        audit_file,
        _dir: dir,
    }
}

fn rshim(name: &str, serial: &str, pci: &str) -> RshimInfo {
    RshimInfo {
        name: name.into(),
        serial: serial.into(),
        pci_address: pci.into(),
        dev_info: "BlueField-3(Rev 1)".into(),
        ..Default::default()
    }
}

fn hello(rshims: Vec<RshimInfo>) -> hostplane_proto::v1::AgentMessage {
    msg(agent_message::Msg::Hello(Hello {
        node_name: "n1".into(),
        agent_version: "0.1.0-test".into(),
        boot_id: "boot-a".into(),
        inventory: Some(Inventory { rshims }),
        last_applied_version: 0,
    }))
}

fn update(rshims: Vec<RshimInfo>) -> agent_message::Msg {
    agent_message::Msg::Inventory(Inventory { rshims })
}

async fn get_device(store: &Store, name: &str) -> Option<Device> {
    let name = name.to_string();
    match store.read(move |t| t.get(Kind::Device, &name)).await.unwrap() {
        Some(hostplane_proto::v1::Resource {
            kind: Some(resource::Kind::Device(d)),
        }) => Some(d),
        _ => None,
    }
}

async fn devices(store: &Store) -> Vec<String> {
    let mut names: Vec<String> = store
        .read(|t| {
            let mut all = t.list_on_node(Kind::Device, "n1")?;
            all.extend(t.list_on_node(Kind::Device, "n2")?);
            Ok::<_, hostplane_coordinator::store::StoreError>(all)
        })
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.name().to_string())
        .collect();
    names.sort();
    names
}

/// The Device's presence and its Present condition's reason.
async fn presence(store: &Store, name: &str) -> (bool, String, String) {
    let d = get_device(store, name)
        .await
        .unwrap_or_else(|| panic!("device {name}"));
    let st = d.status.unwrap_or_default();
    let c = st
        .conditions
        .iter()
        .find(|c| c.r#type == "Present")
        .cloned()
        .unwrap_or_default();
    (st.present, c.reason, c.message)
}

async fn eventually<F, Fut>(what: &str, f: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..1000 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn inventory_updates_record_presence_and_the_node_inventory() {
    let s = serve(false).await;
    let mut a = open(s.addr, hello(vec![rshim("rshim0", "SN-D1", "0000:04:00.2")]))
        .await
        .unwrap();
    a.next().await.unwrap();
    assert!(presence(&s.store, "d1").await.0);
    assert!(!presence(&s.store, "d2").await.0);

    // rshim9 comes (with a new, unknown rshim3 beside it).
    a.send(update(vec![
        rshim("rshim0", "SN-D1", "0000:04:00.2"),
        rshim("rshim3", "SN-NEW", "0000:07:00.2"),
        rshim("rshim9", "SN-D2", "0000:0d:00.2"),
    ]))
    .await;
    let store = s.store.clone();
    eventually("d2 present", || {
        let store = store.clone();
        async move { presence(&store, "d2").await.0 }
    })
    .await;
    let n = get_node(&s.store, "n1").await.unwrap().status.unwrap();
    let names: Vec<String> = n.inventory.unwrap().rshims.into_iter().map(|r| r.name).collect();
    assert_eq!(names, ["rshim0", "rshim3", "rshim9"]);
    assert_eq!(presence(&s.store, "d2").await.1, "InInventory");

    // rshim0 goes: its Device is absent, and the condition says it was removed.
    a.send(update(vec![rshim("rshim9", "SN-D2", "0000:0d:00.2")]))
        .await;
    let store = s.store.clone();
    eventually("d1 absent", || {
        let store = store.clone();
        async move { !presence(&store, "d1").await.0 }
    })
    .await;
    let (_, reason, message) = presence(&s.store, "d1").await;
    assert_eq!(reason, "Removed");
    assert!(
        message.contains("no longer reports rshim0") && message.contains("removed from the host"),
        "{message}"
    );
    assert!(presence(&s.store, "d2").await.0);
    // Auto-registration is off: no Device for rshim3.
    assert_eq!(devices(&s.store).await, ["d1", "d2", "n1-rshim4"]);
    // The session is still the same one: it goes on.
    a.send(agent_message::Msg::Heartbeat(Default::default())).await;
    let n = get_node(&s.store, "n1").await.unwrap().status.unwrap();
    assert!(n.reachable);
}

#[tokio::test]
async fn auto_registration_creates_missing_devices_and_never_overwrites() {
    let s = serve(true).await;
    // In Hello: rshim0 has d1; rshim1 is new; rshim2 has no serial (real rshim shows none).
    let mut a = open(
        s.addr,
        hello(vec![
            rshim("rshim0", "SN-D1", "0000:04:00.2"),
            rshim("rshim1", "SN-R1", "0000:05:00.2"),
            rshim("rshim2", "", "0000:06:00.2"),
        ]),
    )
    .await
    .unwrap();
    a.next().await.unwrap();
    let d = get_device(&s.store, "n1-rshim1").await.expect("auto-registered");
    let meta = d.metadata.unwrap();
    assert_eq!(
        meta.labels.get(AUTO_REGISTERED_LABEL).map(String::as_str),
        Some("true")
    );
    let spec = d.spec.unwrap();
    assert_eq!(
        (
            spec.node.as_str(),
            spec.rshim.as_str(),
            spec.serial.as_str(),
            spec.pci_address.as_str()
        ),
        ("n1", "rshim1", "SN-R1", "0000:05:00.0")
    );
    assert!(d.status.unwrap().present);
    assert!(
        get_device(&s.store, "n1-rshim2").await.is_none(),
        "no serial, no Device"
    );

    // Hot-plugged: a USB rshim (no PCI address), one whose serial d1 already
    // has, and rshim4, whose name n2's Device already holds.
    a.send(update(vec![
        rshim("rshim0", "SN-D1", "0000:04:00.2"),
        rshim("rshim1", "SN-R1", "0000:05:00.2"),
        RshimInfo {
            usb_path: "1-1.4".into(),
            ..rshim("rshim3", "SN-USB", "")
        },
        rshim("rshim4", "SN-R4", "0000:08:00.2"),
        rshim("rshim5", "SN-D1", "0000:09:00.2"),
    ]))
    .await;
    let store = s.store.clone();
    eventually("n1-rshim3 registered", || {
        let store = store.clone();
        async move { get_device(&store, "n1-rshim3").await.is_some() }
    })
    .await;
    let usb = get_device(&s.store, "n1-rshim3").await.unwrap().spec.unwrap();
    assert_eq!((usb.serial.as_str(), usb.pci_address.as_str()), ("SN-USB", ""));
    // Never overwritten: n2's Device keeps its spec.
    let other = get_device(&s.store, "n1-rshim4").await.unwrap().spec.unwrap();
    assert_eq!((other.node.as_str(), other.serial.as_str()), ("n2", "SN-N2"));
    assert!(get_device(&s.store, "n1-rshim5").await.is_none(), "serial in use");
    assert_eq!(
        devices(&s.store).await,
        ["d1", "d2", "n1-rshim1", "n1-rshim3", "n1-rshim4"]
    );

    // A Device created by hand is left alone when its rshim comes again;
    // a second update does not create anything twice.
    a.send(update(vec![rshim("rshim1", "SN-R1", "0000:05:00.2")]))
        .await;
    let store = s.store.clone();
    eventually("d1 absent", || {
        let store = store.clone();
        async move { !presence(&store, "d1").await.0 }
    })
    .await;
    assert_eq!(devices(&s.store).await.len(), 5);

    // Audited: one record per Device created.
    let audit = std::fs::read_to_string(&s.audit_file).unwrap();
    let created: Vec<&str> = audit.lines().filter(|l| l.contains("auto-registered")).collect();
    assert_eq!(created.len(), 2, "{audit}");
    assert!(
        created[0].contains("device/n1-rshim1") && created[0].contains("SN-R1"),
        "{audit}"
    );
    assert!(
        created[1].contains("device/n1-rshim3") && created[1].contains("usb 1-1.4"),
        "{audit}"
    );
}

/// The rshim names of n1's recorded inventory.
async fn node_rshims(store: &Store) -> Vec<String> {
    let st = get_node(store, "n1").await.unwrap().status.unwrap_or_default();
    st.inventory
        .unwrap_or_default()
        .rshims
        .into_iter()
        .map(|r| r.name)
        .collect()
}

/// SQL (in the engine's dialect) that makes every write of a Device row
/// fail, and the SQL that undoes it: a store whose writes fail for a while.
fn refuse_device_writes() -> (&'static str, &'static str) {
    match backend::engine() {
        backend::Engine::Sqlite => (
            "CREATE TRIGGER refuse_devices BEFORE UPDATE ON resources WHEN NEW.kind = 'device' \
             BEGIN SELECT RAISE(ABORT, 'test: device writes refused'); END;",
            "DROP TRIGGER refuse_devices;",
        ),
        backend::Engine::Postgres => (
            "CREATE FUNCTION refuse_devices() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'test: device writes refused'; END $$; \
             CREATE TRIGGER refuse_devices BEFORE UPDATE ON resources FOR EACH ROW \
             WHEN (NEW.kind = 'device') EXECUTE FUNCTION refuse_devices();",
            "DROP TRIGGER refuse_devices ON resources; DROP FUNCTION refuse_devices();",
        ),
    }
}

/// The agent sends its inventory only when it changes: an update whose
/// write fails is kept and written once the store takes writes again.
#[tokio::test]
async fn an_inventory_update_whose_write_fails_is_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let s = serve_with(backend::store_at(&path), session_cfg()).await;
    let mut a = open(s.addr, hello(vec![rshim("rshim0", "SN-D1", "0000:04:00.2")]))
        .await
        .unwrap();
    a.next().await.unwrap();
    assert!(presence(&s.store, "d1").await.0);
    assert!(!presence(&s.store, "d2").await.0);

    let (refuse, allow) = refuse_device_writes();
    backend::execute_at(&path, refuse);
    a.send(update(vec![
        rshim("rshim0", "SN-D1", "0000:04:00.2"),
        rshim("rshim9", "SN-D2", "0000:0d:00.2"),
    ]))
    .await;
    // Several 20 ms flushes fail meanwhile; nothing of the update is written.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(!presence(&s.store, "d2").await.0, "the store refused it");
    assert_eq!(node_rshims(&s.store).await, ["rshim0"]);

    // The store takes writes again; the agent sends nothing more.
    backend::execute_at(&path, allow);
    let store = s.store.clone();
    eventually("d2 present after the retry", || {
        let store = store.clone();
        async move { presence(&store, "d2").await.0 }
    })
    .await;
    assert_eq!(node_rshims(&s.store).await, ["rshim0", "rshim9"]);
    assert!(presence(&s.store, "d1").await.0);
}

/// An update pending in a session that a reconnect replaces is not written
/// over the newer Hello's inventory (the old session flushes as it ends).
#[tokio::test]
async fn a_replaced_session_does_not_overwrite_the_newer_hellos_inventory() {
    // Long flushes: the old session's update is still pending when it is replaced.
    let cfg = StreamConfig {
        status_flush: Duration::from_secs(3),
        last_seen_interval: Duration::from_secs(60),
        ..session_cfg()
    };
    let s = serve_with(backend::store(), cfg).await;
    let mut a = open(s.addr, hello(vec![rshim("rshim0", "SN-D1", "0000:04:00.2")]))
        .await
        .unwrap();
    a.next().await.unwrap();
    let first = get_node(&s.store, "n1").await.unwrap().status.unwrap();
    a.send(update(vec![
        rshim("rshim0", "SN-D1", "0000:04:00.2"),
        rshim("rshim9", "SN-D2", "0000:0d:00.2"),
    ]))
    .await;
    // The old session has read the update (coalesced, not yet written).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!presence(&s.store, "d2").await.0);

    // The agent reconnects: rshim9 is gone again by its new Hello.
    let mut b = open(s.addr, hello(vec![rshim("rshim0", "SN-D1", "0000:04:00.2")]))
        .await
        .unwrap();
    b.next().await.unwrap();
    // The old session's end comes after its last flush.
    let end = loop {
        match a.next().await {
            Ok(_) => continue,
            Err(e) => break e,
        }
    };
    assert_eq!(end.code(), tonic::Code::Aborted, "{end:?}");
    assert_eq!(
        node_rshims(&s.store).await,
        ["rshim0"],
        "the newer Hello's inventory stays"
    );
    let (present, reason, _) = presence(&s.store, "d2").await;
    assert!(!present);
    assert_eq!(reason, "NotInInventory", "never marked present, nor Removed");
    let st = get_node(&s.store, "n1").await.unwrap().status.unwrap();
    assert_eq!(st.agent_session, first.agent_session + 1);

    // The current session's own update is written.
    b.send(update(vec![
        rshim("rshim0", "SN-D1", "0000:04:00.2"),
        rshim("rshim9", "SN-D2", "0000:0d:00.2"),
    ]))
    .await;
    let store = s.store.clone();
    eventually("d2 present from the current session", || {
        let store = store.clone();
        async move { presence(&store, "d2").await.0 }
    })
    .await;
    assert_eq!(node_rshims(&s.store).await, ["rshim0", "rshim9"]);
}

fn many(n: usize) -> Vec<RshimInfo> {
    (0..n)
        .map(|i| rshim(&format!("rshim{i}"), &format!("SN-M{i}"), ""))
        .collect()
}

/// A Hello over the inventory limits is refused, naming the limit, and
/// records nothing; an update over them is ignored and the session goes on.
#[tokio::test]
async fn inventory_over_the_limits_is_refused_in_hello_and_ignored_in_updates() {
    let s = serve(true).await;
    let before = devices(&s.store).await;
    let e = open(s.addr, hello(many(65))).await.err().expect("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "hello.inventory.rshims: 65 rshims, more than the maximum of 64"
    );
    let long = RshimInfo {
        serial: "S".repeat(129),
        ..rshim("rshim1", "", "")
    };
    let e = open(s.addr, hello(vec![rshim("rshim0", "SN-D1", ""), long]))
        .await
        .err()
        .expect("refused");
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "hello.inventory.rshims[1].serial: 129 bytes, more than the maximum of 128"
    );
    let e = open(
        s.addr,
        hello(vec![RshimInfo {
            dev_info: "x".repeat(257),
            ..rshim("rshim0", "SN-D1", "")
        }]),
    )
    .await
    .err()
    .expect("refused");
    assert!(e.message().contains("rshims[0].dev_info: 257 bytes"), "{e:?}");
    // Nothing recorded by the refused Hellos.
    let st = get_node(&s.store, "n1").await.unwrap().status.unwrap_or_default();
    assert_eq!((st.agent_session, st.inventory.is_none()), (0, true));
    assert_eq!(devices(&s.store).await, before);

    // Exactly at the limit is accepted (and auto-registered).
    let mut a = open(s.addr, hello(many(64))).await.unwrap();
    a.next().await.unwrap();
    assert_eq!(node_rshims(&s.store).await.len(), 64);
    let registered = devices(&s.store).await.len();
    assert!(registered > before.len() + 60, "{registered}");

    // Over the limit in an update: ignored, the session goes on.
    a.send(update(many(65))).await;
    a.send(update(vec![RshimInfo {
        error: "e".repeat(1025),
        ..rshim("rshim0", "SN-D1", "")
    }]))
    .await;
    a.send(agent_message::Msg::Heartbeat(Default::default())).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(node_rshims(&s.store).await.len(), 64);
    assert_eq!(devices(&s.store).await.len(), registered);
    // A valid update after them is recorded.
    a.send(update(vec![rshim("rshim0", "SN-D1", "")])).await;
    let store = s.store.clone();
    eventually("the valid update recorded", || {
        let store = store.clone();
        async move { node_rshims(&store).await == ["rshim0"] }
    })
    .await;
}
