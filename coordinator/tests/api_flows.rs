//! The upstream flows, one call each.
mod api_common;

use api_common::*;
use hostplane_proto::v1::{
    CreateNodeWithDevicesRequest, DpuPhase, DpuRef, GetRequest, Kind, MarkRebootedRequest, NodeRef, NodeSpec,
    RebootMethod, Resource, SetDeploymentImageRequest, resource,
};
use tonic::Code;

fn node_ref(name: &str) -> NodeRef {
    NodeRef { name: name.into() }
}

fn dpu_ref(name: &str) -> DpuRef {
    DpuRef { name: name.into() }
}

async fn get(c: &mut Client, kind: Kind, name: &str) -> Option<Resource> {
    match c
        .get(GetRequest {
            kind: kind as i32,
            name: name.into(),
        })
        .await
    {
        Ok(r) => Some(r.into_inner()),
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => panic!("get {name}: {s}"),
    }
}

#[tokio::test]
async fn create_node_with_devices_is_all_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    create(&mut c, node("n0")).await;
    create(&mut c, device("taken", "n0", "rshim0")).await;

    // devices[1] reuses a serial that is already in the store: nothing is created.
    let mut clash = device("b", "", "rshim1");
    clash.spec.as_mut().unwrap().serial = "SN-taken".into();
    let before = snapshot(&mut c).await;
    let req = CreateNodeWithDevicesRequest {
        node: Some(node("n1")),
        devices: vec![device("a", "", "rshim0"), clash],
    };
    let e = c.create_node_with_devices(req).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert_eq!(
        e.message(),
        "devices[1].spec.serial: serial \"SN-taken\" is already used by device \"taken\""
    );
    assert_eq!(snapshot(&mut c).await, before);

    // Checks within the request, before the store is touched.
    let cases: Vec<(CreateNodeWithDevicesRequest, &str)> = vec![
        (
            CreateNodeWithDevicesRequest {
                node: None,
                devices: vec![],
            },
            "node: required",
        ),
        (
            CreateNodeWithDevicesRequest {
                node: Some(node("n1")),
                devices: vec![device("a", "n0", "rshim0")],
            },
            "devices[0].spec.node: must be empty or \"n1\"",
        ),
        (
            CreateNodeWithDevicesRequest {
                node: Some(node("n1")),
                devices: vec![device("a", "", "rshim0"), device("b", "", "rshim0")],
            },
            "devices[1].spec.rshim: \"rshim0\" is also in devices[0]",
        ),
        (
            CreateNodeWithDevicesRequest {
                node: Some(node("n1")),
                devices: vec![device("A", "", "rshim0")],
            },
            "devices[0].metadata.name \"A\": must be a DNS label",
        ),
    ];
    for (req, want) in cases {
        let e = c.create_node_with_devices(req).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().starts_with(want),
            "{:?} does not start with {want:?}",
            e.message()
        );
    }
    assert_eq!(snapshot(&mut c).await, before);

    let req = CreateNodeWithDevicesRequest {
        node: Some(node("n1")),
        devices: vec![device("a", "", "rshim0"), device("b", "n1", "rshim1")],
    };
    let out = c
        .create_node_with_devices(req.clone())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(out.node.unwrap().metadata.unwrap().name, "n1");
    let nodes: Vec<String> = out.devices.iter().map(|d| d.spec.clone().unwrap().node).collect();
    assert_eq!(nodes, ["n1", "n1"], "spec.node defaults to the node");
    assert!(get(&mut c, Kind::Device, "a").await.is_some());
    let e = c.create_node_with_devices(req).await.unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::AlreadyExists, "node \"n1\" already exists")
    );
    srv.stop().await;
}

#[tokio::test]
async fn approve_maintenance_is_idempotent() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    create(&mut c, node("n1")).await;

    let n = c.approve_maintenance(node_ref("n1")).await.unwrap().into_inner();
    let status = n.status.clone().unwrap();
    assert!(status.maintenance_approved && status.maintenance_approved_at_ms > 0);
    let again = c.approve_maintenance(node_ref("n1")).await.unwrap().into_inner();
    assert_eq!(again, n, "a second approval changes nothing");
    let e = c.approve_maintenance(node_ref("n9")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "node \"n9\" not found"));
    srv.stop().await;
}

#[tokio::test]
async fn mark_rebooted_and_reboot_status() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    let mut agent_node = node("n2");
    agent_node.spec = Some(NodeSpec {
        reboot_method: RebootMethod::Agent as i32,
    });
    create(&mut c, agent_node).await;
    create(&mut c, device("d3", "n2", "rshim0")).await;
    insert_dpu(&srv.store, "d1", "n1", "dep1", DpuPhase::OsInstalling).await;
    insert_dpu(&srv.store, "d3", "n2", "dep1", DpuPhase::Rebooting).await;

    let st = c
        .get_node_reboot_status(node_ref("n1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.waiting_for_reboot && st.dpus.is_empty());
    let e = c
        .mark_rebooted(MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::FailedPrecondition, "node n1 is not waiting for a reboot")
    );

    // d2 waits for the reboot, but d1 is still being flashed on the same host:
    // the node is not to be rebooted yet.
    insert_dpu(&srv.store, "d2", "n1", "dep1", DpuPhase::Rebooting).await;
    let st = c
        .get_node_reboot_status(node_ref("n1"))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.waiting_for_reboot && st.dpus.is_empty(), "{st:?}");
    assert_eq!(
        c.mark_rebooted(MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false
        })
        .await
        .unwrap_err()
        .code(),
        Code::FailedPrecondition
    );

    srv.store
        .write(|t| {
            let mut r = t.get(Kind::Dpu, "d1")?.expect("d1");
            if let Some(resource::Kind::Dpu(d)) = &mut r.kind {
                d.status.get_or_insert_default().phase = DpuPhase::Rebooting as i32;
            }
            t.update(r)
        })
        .await
        .unwrap();
    let st = c
        .get_node_reboot_status(node_ref("n1"))
        .await
        .unwrap()
        .into_inner();
    assert!(st.waiting_for_reboot);
    assert_eq!(st.dpus, ["d1", "d2"]);
    let n = c
        .mark_rebooted(MarkRebootedRequest {
            name: "n1".into(),
            power_cycled: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(n.status.unwrap().rebooted_at_ms > 0);

    // An agent-rebooted node is not the upstream's to mark.
    let st = c
        .get_node_reboot_status(node_ref("n2"))
        .await
        .unwrap()
        .into_inner();
    assert!(!st.waiting_for_reboot && st.dpus.is_empty());
    let e = c
        .mark_rebooted(MarkRebootedRequest {
            name: "n2".into(),
            power_cycled: false,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains("reboot_method AGENT"), "{}", e.message());
    assert_eq!(
        c.mark_rebooted(MarkRebootedRequest {
            name: "n9".into(),
            power_cycled: false
        })
        .await
        .unwrap_err()
        .code(),
        Code::NotFound
    );
    srv.stop().await;
}

#[tokio::test]
async fn reprovision_and_readiness() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    insert_dpu(&srv.store, "d1", "n1", "dep1", DpuPhase::Ready).await;
    insert_dpu(&srv.store, "d2", "n1", "dep1", DpuPhase::PrepareBfb).await;

    let r = c.get_dpu_readiness(dpu_ref("d1")).await.unwrap().into_inner();
    assert!(r.ready);
    assert_eq!(r.phase, DpuPhase::Ready as i32);
    let r = c.get_dpu_readiness(dpu_ref("d2")).await.unwrap().into_inner();
    assert!(!r.ready);
    assert_eq!(
        (r.phase, r.message.as_str()),
        (DpuPhase::PrepareBfb as i32, "in PrepareBFB")
    );
    assert_eq!(
        c.get_dpu_readiness(dpu_ref("zz")).await.unwrap_err().code(),
        Code::NotFound
    );

    let d = c.reprovision(dpu_ref("d1")).await.unwrap().into_inner();
    let marked_at = d.metadata.as_ref().unwrap().deletion_requested_at_ms;
    assert!(marked_at > 0);
    let again = c.reprovision(dpu_ref("d1")).await.unwrap().into_inner();
    assert_eq!(again, d, "reprovisioning twice is one request");
    assert_eq!(
        c.reprovision(dpu_ref("zz")).await.unwrap_err().code(),
        Code::NotFound
    );
    srv.stop().await;
}

#[tokio::test]
async fn set_deployment_image() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    create(&mut c, bfb("b2")).await;
    let req = |bfb: &str, flavor: &str| SetDeploymentImageRequest {
        deployment: "dep1".into(),
        bfb: bfb.into(),
        flavor: flavor.into(),
    };

    let d = c.set_deployment_image(req("b2", "")).await.unwrap().into_inner();
    let spec = d.spec.clone().unwrap();
    assert_eq!(
        (spec.bfb.as_str(), spec.flavor.as_str()),
        ("b2", "f1"),
        "empty flavor = unchanged"
    );
    assert_eq!(d.metadata.as_ref().unwrap().generation, 2);
    let same = c
        .set_deployment_image(req("b2", "f1"))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same, d, "no change, no write");

    let before = snapshot(&mut c).await;
    let cases = [
        (req("", ""), Code::InvalidArgument, "bfb: set bfb, flavor or both"),
        (
            req("nope", ""),
            Code::InvalidArgument,
            "bfb: bfb \"nope\" does not exist",
        ),
        (
            req("", "nope"),
            Code::InvalidArgument,
            "flavor: flavor \"nope\" does not exist",
        ),
        (
            req("B2", ""),
            Code::InvalidArgument,
            "bfb \"B2\": must be a DNS label",
        ),
        (
            SetDeploymentImageRequest {
                deployment: "zz".into(),
                bfb: "b1".into(),
                flavor: String::new(),
            },
            Code::NotFound,
            "deployment \"zz\" not found",
        ),
    ];
    for (r, code, want) in cases {
        let e = c.set_deployment_image(r).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().starts_with(want),
            "{:?} does not start with {want:?}",
            e.message()
        );
    }
    assert_eq!(snapshot(&mut c).await, before);
    let Some(Resource {
        kind: Some(resource::Kind::Deployment(stored)),
    }) = get(&mut c, Kind::Deployment, "dep1").await
    else {
        panic!("dep1 missing")
    };
    assert_eq!(stored, d);
    srv.stop().await;
}

/// With the reconciler running: Dpus come from the Deployment, and a graceful
/// Node delete is finished by the reconciler (Dpus, then Devices, then the Node).
#[tokio::test]
async fn graceful_node_delete_is_finished_by_the_reconciler() {
    use hostplane_proto::v1::{DeleteRequest, EventType, WatchRequest};
    const HANG: std::time::Duration = std::time::Duration::from_secs(60);

    let dir = tempfile::tempdir().unwrap();
    let srv = start_with(&dir.path().join("c.db"), true).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    let mut w = c
        .watch(WatchRequest {
            kinds: vec![Kind::Dpu as i32, Kind::Node as i32],
            from_version: 0,
            name: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let mut next = async || {
        tokio::time::timeout(HANG, w.message())
            .await
            .expect("hang")
            .unwrap()
            .unwrap()
    };

    // The reconciler generates one Dpu per Device, named like the Device.
    let mut dpus = std::collections::BTreeSet::new();
    while dpus.len() < 2 {
        let ev = next().await;
        let r = ev.resource.unwrap();
        if r.kind() == Kind::Dpu && ev.r#type == EventType::Added as i32 {
            dpus.insert(r.name().to_string());
        }
    }
    assert_eq!(dpus.into_iter().collect::<Vec<_>>(), ["d1", "d2"]);

    let r = c
        .delete(DeleteRequest {
            kind: Kind::Node as i32,
            name: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!r.deleted, "the Dpus hold the node");
    loop {
        let ev = next().await;
        let r = ev.resource.unwrap();
        if r.kind() == Kind::Node && ev.r#type == EventType::Deleted as i32 {
            assert_eq!(r.name(), "n1");
            break;
        }
    }
    for (k, name) in [
        (Kind::Dpu, "d1"),
        (Kind::Dpu, "d2"),
        (Kind::Device, "d1"),
        (Kind::Device, "d2"),
    ] {
        assert!(get(&mut c, k, name).await.is_none(), "{name} outlived its node");
    }
    srv.stop().await;
}
