//! Create / Get / List / Update / Delete against a real server.
mod api_common;

use api_common::*;
use hostplane_proto::v1::{
    Command, CommandOutcome, CreateRequest, DeleteRequest, Dpu, DpuPhase, GetRequest, Kind, ListRequest,
    NodeStatus, Resource, UpdateRequest, resource,
};
use tonic::Code;

fn get_req(kind: Kind, name: &str) -> GetRequest {
    GetRequest {
        kind: kind as i32,
        name: name.into(),
    }
}

fn del(kind: Kind, name: &str, force: bool) -> DeleteRequest {
    DeleteRequest {
        kind: kind as i32,
        name: name.into(),
        force,
        resource_version: 0,
    }
}

async fn exists(c: &mut Client, kind: Kind, name: &str) -> bool {
    match c.get(get_req(kind, name)).await {
        Ok(_) => true,
        Err(s) if s.code() == Code::NotFound => false,
        Err(s) => panic!("get {name}: {s}"),
    }
}

fn deletion_requested(r: &Resource) -> bool {
    r.metadata().unwrap().deletion_requested_at_ms > 0
}

#[tokio::test]
async fn create_get_list_update_delete() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;

    // Status is the system's: a client-supplied one is replaced on create.
    let mut n2 = node("n2");
    n2.status = Some(NodeStatus {
        reachable: true,
        maintenance_approved: true,
        ..Default::default()
    });
    n2.metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("rack".into(), "r7".into());
    let created = create(&mut c, n2).await;
    let Some(resource::Kind::Node(n)) = &created.kind else {
        panic!("{created:?}")
    };
    let status = n.status.clone().unwrap();
    assert!(!status.reachable && !status.maintenance_approved, "{status:?}");
    let m = n.metadata.clone().unwrap();
    assert!(m.resource_version > 0 && m.created_at_ms > 0);
    assert_eq!(m.generation, 1);

    let got = c.get(get_req(Kind::Node, "n2")).await.unwrap().into_inner();
    assert_eq!(got, created);
    for (k, name) in [
        (Kind::Device, "d1"),
        (Kind::Bfb, "b1"),
        (Kind::Flavor, "f1"),
        (Kind::Deployment, "dep1"),
    ] {
        assert!(exists(&mut c, k, name).await, "{name}");
    }

    // List: by kind, by label, by node; the revision is the store's.
    let all = c
        .list(ListRequest {
            kind: Kind::Node as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(names(&all.items), ["n1", "n2"]);
    assert_eq!(all.resource_version, created.resource_version());
    let racked = ListRequest {
        kind: Kind::Node as i32,
        label_selector: [("rack".to_string(), "r7".to_string())].into(),
        ..Default::default()
    };
    assert_eq!(names(&c.list(racked).await.unwrap().into_inner().items), ["n2"]);
    create(&mut c, device("d9", "n2", "rshim0")).await;
    let on_n1 = ListRequest {
        kind: Kind::Device as i32,
        node: "n1".into(),
        ..Default::default()
    };
    assert_eq!(
        names(&c.list(on_n1).await.unwrap().into_inner().items),
        ["d1", "d2"]
    );

    // Update: labels change the version, not the generation; a spec change bumps both.
    let mut dep = c
        .get(get_req(Kind::Deployment, "dep1"))
        .await
        .unwrap()
        .into_inner();
    dep.metadata_mut()
        .unwrap()
        .labels
        .insert("team".into(), "a".into());
    let relabelled = c
        .update(UpdateRequest {
            resource: Some(dep.clone()),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(relabelled.resource_version() > dep.resource_version());
    assert_eq!(relabelled.metadata().unwrap().generation, 1);
    assert_eq!(relabelled.metadata().unwrap().labels["team"], "a");
    let mut respec = relabelled.clone();
    if let Some(resource::Kind::Deployment(d)) = &mut respec.kind {
        d.spec.as_mut().unwrap().max_unavailable = 3;
    }
    let respecced = c
        .update(UpdateRequest {
            resource: Some(respec),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(respecced.metadata().unwrap().generation, 2);
    // The same again changes nothing: no new version.
    let same = c
        .update(UpdateRequest {
            resource: Some(respecced.clone()),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same.resource_version(), respecced.resource_version());
    let (_, rev) = snapshot(&mut c).await;
    assert_eq!(rev, respecced.resource_version(), "a no-op update writes nothing");

    // Delete what nothing depends on: gone at once.
    let r = c
        .delete(del(Kind::Deployment, "dep1", false))
        .await
        .unwrap()
        .into_inner();
    assert!(r.deleted && r.resource.is_none());
    for (k, name) in [
        (Kind::Bfb, "b1"),
        (Kind::Flavor, "f1"),
        (Kind::Device, "d9"),
        (Kind::Node, "n2"),
    ] {
        let r = c.delete(del(k, name, false)).await.unwrap().into_inner();
        assert!(r.deleted, "{name}");
        assert!(!exists(&mut c, k, name).await, "{name}");
    }
    srv.stop().await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_right_code_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    insert_dpu(&srv.store, "d1", "n1", "dep1", DpuPhase::Ready).await;
    let before = snapshot(&mut c).await;

    let mut bad_name = node("Foo_1");
    bad_name.metadata.as_mut().unwrap().labels.clear();
    let mut with_version = node("n5");
    with_version.metadata.as_mut().unwrap().resource_version = 7;
    let mut moved = device("d1", "n2", "rshim0");
    moved.metadata.as_mut().unwrap().resource_version = 0;
    let mut new_url = bfb("b1");
    new_url.spec.as_mut().unwrap().url = "https://elsewhere.example/x.bfb".into();
    let mut bad_sha = bfb("b2");
    bad_sha.spec.as_mut().unwrap().sha256 = "XYZ".into();

    let creates: Vec<(Resource, Code, &str)> = vec![
        (
            bad_name.into(),
            Code::InvalidArgument,
            "node.metadata.name \"Foo_1\": must be a DNS label",
        ),
        (
            with_version.into(),
            Code::InvalidArgument,
            "node.metadata.resource_version: must be 0",
        ),
        (
            device("d5", "n9", "rshim5").into(),
            Code::InvalidArgument,
            "device.spec.node: node \"n9\" does not exist",
        ),
        (
            device("d5", "n1", "rshim0").into(),
            Code::InvalidArgument,
            "device.spec.rshim: rshim0 on node \"n1\" is already used by device \"d1\"",
        ),
        (
            {
                let mut d = device("d5", "n1", "rshim5");
                d.spec.as_mut().unwrap().serial = "SN-d2".into();
                d
            }
            .into(),
            Code::InvalidArgument,
            "device.spec.serial: serial \"SN-d2\" is already used by device \"d2\"",
        ),
        (
            deployment("dep2", "nope", "f1").into(),
            Code::InvalidArgument,
            "deployment.spec.bfb: bfb \"nope\" does not exist",
        ),
        (
            deployment("dep2", "b1", "nope").into(),
            Code::InvalidArgument,
            "deployment.spec.flavor: flavor \"nope\" does not exist",
        ),
        (
            bad_sha.into(),
            Code::InvalidArgument,
            "bfb.spec.sha256: must be 64 lower-case hex characters",
        ),
        (
            Dpu {
                metadata: meta("x"),
                ..Default::default()
            }
            .into(),
            Code::InvalidArgument,
            "dpus are generated from deployments",
        ),
        (
            Resource { kind: None },
            Code::InvalidArgument,
            "resource: required",
        ),
        (
            node("n1").into(),
            Code::AlreadyExists,
            "node \"n1\" already exists",
        ),
    ];
    for (r, code, want) in creates {
        let e = c.create(CreateRequest { resource: Some(r) }).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(want),
            "{:?} does not contain {want:?}",
            e.message()
        );
    }

    let dpu = c.get(get_req(Kind::Dpu, "d1")).await.unwrap().into_inner();
    let updates: Vec<(Resource, Code, &str)> = vec![
        (node("n7").into(), Code::NotFound, "node \"n7\" not found"),
        (
            moved.into(),
            Code::FailedPrecondition,
            "spec.node cannot change (\"n1\" -> \"n2\")",
        ),
        (
            new_url.into(),
            Code::FailedPrecondition,
            "bfb specs are immutable; create a new Bfb",
        ),
        (dpu, Code::FailedPrecondition, "dpu \"d1\" is owned by the system"),
        (
            deployment("dep1", "b1", "gone").into(),
            Code::InvalidArgument,
            "deployment.spec.flavor: flavor \"gone\" does not exist",
        ),
        (
            device("d1", "n1", "rshim1").into(),
            Code::InvalidArgument,
            "device.spec.rshim: rshim1 on node \"n1\" is already used by device \"d2\"",
        ),
    ];
    for (r, code, want) in updates {
        let e = c
            .update(UpdateRequest {
                resource: Some(r),
                update_mask: None,
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(want),
            "{:?} does not contain {want:?}",
            e.message()
        );
    }

    let deletes: Vec<(DeleteRequest, Code, &str)> = vec![
        (
            del(Kind::Bfb, "b1", false),
            Code::FailedPrecondition,
            "bfb \"b1\" is used by deployment \"dep1\"",
        ),
        (
            del(Kind::Flavor, "f1", true),
            Code::FailedPrecondition,
            "flavor \"f1\" is used by deployment \"dep1\"",
        ),
        (
            del(Kind::Node, "n7", false),
            Code::NotFound,
            "node \"n7\" not found",
        ),
        (
            del(Kind::Unspecified, "n1", false),
            Code::InvalidArgument,
            "kind: required",
        ),
        (
            del(Kind::Node, "", false),
            Code::InvalidArgument,
            "name: required",
        ),
    ];
    for (r, code, want) in deletes {
        let e = c.delete(r).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(want),
            "{:?} does not contain {want:?}",
            e.message()
        );
    }

    let e = c.get(get_req(Kind::Bfb, "zz")).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::NotFound, "bfb \"zz\" not found"));
    let e = c
        .list(ListRequest {
            kind: Kind::Bfb as i32,
            node: "n1".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(
        e.message().starts_with("node: only devices and dpus"),
        "{}",
        e.message()
    );

    assert_eq!(snapshot(&mut c).await, before, "refused calls changed the store");
    srv.stop().await;
}

#[tokio::test]
async fn stale_resource_version_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    let first = create(&mut c, node("n1")).await;
    let mut edit = first.clone();
    edit.metadata_mut().unwrap().labels.insert("a".into(), "1".into());
    let second = c
        .update(UpdateRequest {
            resource: Some(edit.clone()),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();

    // A writer that read `first` is refused: it would overwrite the change.
    edit.metadata_mut().unwrap().labels.insert("a".into(), "2".into());
    let e = c
        .update(UpdateRequest {
            resource: Some(edit),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
    let want = format!(
        "node n1 was modified (version {}, you sent {}); re-read and retry",
        second.resource_version(),
        first.resource_version()
    );
    assert_eq!(e.message(), want);
    let mut d = del(Kind::Node, "n1", false);
    d.resource_version = first.resource_version();
    assert_eq!(c.delete(d.clone()).await.unwrap_err().code(), Code::Aborted);
    assert!(exists(&mut c, Kind::Node, "n1").await);
    // With the current version both go through.
    d.resource_version = second.resource_version();
    assert!(c.delete(d).await.unwrap().into_inner().deleted);
    srv.stop().await;
}

#[tokio::test]
async fn bfb_and_flavor_specs_are_immutable_but_relabelling_is_fine() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    let stored = create(&mut c, bfb("b1")).await;
    let stored_flavor = create(&mut c, flavor("f1")).await;

    // Sending the same spec back is a no-op that returns the object.
    let same = c
        .update(UpdateRequest {
            resource: Some(bfb("b1").into()),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(same, stored);

    let mut changed = bfb("b1");
    changed.spec.as_mut().unwrap().version = "3.0".into();
    let e = c
        .update(UpdateRequest {
            resource: Some(changed.into()),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert_eq!(
        e.message(),
        "bfb specs are immutable; create a new Bfb and point the deployment at it"
    );
    let mut changed = flavor("f1");
    changed
        .spec
        .as_mut()
        .unwrap()
        .bf_cfg
        .insert("X".into(), "1".into());
    let e = c
        .update(UpdateRequest {
            resource: Some(changed.into()),
            update_mask: None,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(
        e.message().starts_with("flavor specs are immutable"),
        "{}",
        e.message()
    );
    let now = c.get(get_req(Kind::Flavor, "f1")).await.unwrap().into_inner();
    assert_eq!(now, stored_flavor);

    let mut labelled = bfb("b1");
    labelled
        .metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("channel".into(), "stable".into());
    let r = c
        .update(UpdateRequest {
            resource: Some(labelled.into()),
            update_mask: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.metadata().unwrap().labels["channel"], "stable");
    assert_eq!(r.metadata().unwrap().generation, 1);
    srv.stop().await;
}

#[tokio::test]
async fn graceful_then_forced_delete_of_a_node_with_devices() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    // d1 has a Dpu with an agent command in flight; d2 has none.
    insert_dpu(&srv.store, "d1", "n1", "dep1", DpuPhase::OsInstalling).await;
    let cmd = Command {
        id: "c-1".into(),
        dpu: "d1".into(),
        rshim: "rshim0".into(),
        action: None,
    };
    srv.store
        .write(move |t| t.insert_command("n1", &cmd))
        .await
        .unwrap();

    let r = c.delete(del(Kind::Node, "n1", false)).await.unwrap().into_inner();
    assert!(!r.deleted, "the Dpu holds the node");
    let node = r.resource.expect("the node as it stands");
    assert!(deletion_requested(&node));
    assert!(deletion_requested(
        &c.get(get_req(Kind::Device, "d1")).await.unwrap().into_inner()
    ));
    assert!(deletion_requested(
        &c.get(get_req(Kind::Dpu, "d1")).await.unwrap().into_inner()
    ));
    assert!(
        !exists(&mut c, Kind::Device, "d2").await,
        "a device without a Dpu goes at once"
    );
    let open = srv.store.read(|t| t.open_commands("n1")).await.unwrap();
    assert_eq!(
        open.len(),
        1,
        "graceful delete leaves the agent work to the reconciler"
    );

    // Asking again changes nothing.
    let again = c.delete(del(Kind::Node, "n1", false)).await.unwrap().into_inner();
    assert_eq!(
        again.resource.unwrap().resource_version(),
        node.resource_version()
    );
    // New devices cannot join a node that is going away.
    let e = c
        .create(CreateRequest {
            resource: Some(device("d3", "n1", "rshim3").into()),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::FailedPrecondition, "node \"n1\" is being deleted")
    );

    let r = c.delete(del(Kind::Node, "n1", true)).await.unwrap().into_inner();
    assert!(r.deleted);
    for (k, name) in [(Kind::Node, "n1"), (Kind::Device, "d1"), (Kind::Dpu, "d1")] {
        assert!(!exists(&mut c, k, name).await, "{name} survived a forced delete");
    }
    let row = srv.store.read(|t| t.command("c-1")).await.unwrap().unwrap();
    let result = row.result.expect("the command was closed");
    assert_eq!(result.outcome, CommandOutcome::Cancelled as i32);
    assert!(result.message.contains("force-deleted"), "{}", result.message);
    assert!(
        exists(&mut c, Kind::Deployment, "dep1").await,
        "a forced node delete leaves deployments alone"
    );
    srv.stop().await;
}

#[tokio::test]
async fn graceful_delete_of_device_deployment_and_dpu_marks_the_dpus() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    insert_dpu(&srv.store, "d1", "n1", "dep1", DpuPhase::Ready).await;

    let r = c.delete(del(Kind::Dpu, "d1", false)).await.unwrap().into_inner();
    assert!(
        !r.deleted && deletion_requested(&r.resource.unwrap()),
        "graceful Dpu delete = reprovision"
    );
    let r = c
        .delete(del(Kind::Deployment, "dep1", false))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.deleted && deletion_requested(&r.resource.unwrap()));
    let r = c
        .delete(del(Kind::Device, "d1", false))
        .await
        .unwrap()
        .into_inner();
    assert!(!r.deleted && deletion_requested(&r.resource.unwrap()));
    let r = c
        .delete(del(Kind::Device, "d2", false))
        .await
        .unwrap()
        .into_inner();
    assert!(r.deleted, "nothing depends on d2");

    // Forcing the deployment takes its Dpu with it; the device stays (marked).
    assert!(
        c.delete(del(Kind::Deployment, "dep1", true))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    assert!(!exists(&mut c, Kind::Dpu, "d1").await);
    assert!(exists(&mut c, Kind::Device, "d1").await);
    // With its Dpu gone, a graceful delete of the device completes at once.
    assert!(
        c.delete(del(Kind::Device, "d1", false))
            .await
            .unwrap()
            .into_inner()
            .deleted
    );
    srv.stop().await;
}
