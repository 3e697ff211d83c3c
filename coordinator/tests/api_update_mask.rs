//! Update with a field mask (issue 10): a labels-only Update keeps the spec
//! and the generation; only named fields change; a mask that changes nothing
//! writes nothing; bad paths are INVALID_ARGUMENT naming the path and change
//! nothing; immutable kinds, moved devices, references and validation hold
//! as for a full replacement, which a mask-less Update still is. Over gRPC
//! against the real server.
mod api_common;

use api_common::*;
use hostplane_proto::pbjson_types::FieldMask;
use hostplane_proto::v1::{
    DeploymentSpec, GetRequest, Kind, NodeEffect, NodeSpec, RebootMethod, Resource, UpdateRequest, resource,
};
use proptest::prelude::*;
use tonic::Code;

fn mask(paths: &[&str]) -> Option<FieldMask> {
    Some(FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

async fn update(
    c: &mut Client,
    r: impl Into<Resource>,
    m: Option<FieldMask>,
) -> Result<Resource, tonic::Status> {
    c.update(UpdateRequest {
        resource: Some(r.into()),
        update_mask: m,
    })
    .await
    .map(|r| r.into_inner())
}

async fn get(c: &mut Client, kind: Kind, name: &str) -> Resource {
    c.get(GetRequest {
        kind: kind as i32,
        name: name.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

fn labelled(name: &str, labels: &[(&str, &str)]) -> hostplane_proto::v1::Node {
    let mut n = node(name);
    n.metadata.as_mut().unwrap().labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    n.spec = None;
    n
}

fn reboot_method(r: &Resource) -> i32 {
    match &r.kind {
        Some(resource::Kind::Node(n)) => n.spec.unwrap_or_default().reboot_method,
        _ => panic!("not a node"),
    }
}

fn generation(r: &Resource) -> u64 {
    r.metadata().unwrap().generation
}

#[tokio::test]
async fn a_labels_only_update_keeps_reboot_method_and_generation() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("store.db")).await;
    let mut c = srv.client().await;
    let mut n = node("n1");
    n.spec = Some(NodeSpec {
        reboot_method: RebootMethod::Agent as i32,
    });
    let created = create(&mut c, n).await;

    // What a client that only knows the labels sends: no spec at all.
    let sent = labelled("n1", &[("rack", "r7")]);
    let out = update(&mut c, sent.clone(), mask(&["metadata.labels"]))
        .await
        .unwrap();
    assert_eq!(
        reboot_method(&out),
        RebootMethod::Agent as i32,
        "the spec is kept"
    );
    assert_eq!(
        generation(&out),
        generation(&created),
        "no spec change, no new generation"
    );
    assert!(out.resource_version() > created.resource_version());
    assert_eq!(out.metadata().unwrap().labels["rack"], "r7");
    assert_eq!(get(&mut c, Kind::Node, "n1").await, out, "as stored");

    // The same again changes nothing: same version back.
    let again = update(&mut c, sent.clone(), mask(&["metadata.labels"]))
        .await
        .unwrap();
    assert_eq!(again, out);

    // Without a mask the request is the whole object: the missing spec is the default.
    let replaced = update(&mut c, sent, None).await.unwrap();
    assert_eq!(reboot_method(&replaced), 0, "full replacement, as documented");
    assert_eq!(generation(&replaced), generation(&created) + 1);
    srv.stop().await;
}

#[tokio::test]
async fn a_spec_field_mask_bumps_generation_and_keeps_labels() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("store.db")).await;
    let mut c = srv.client().await;
    let mut n = labelled("n1", &[("rack", "r1")]);
    n.spec = Some(NodeSpec {
        reboot_method: RebootMethod::External as i32,
    });
    let created = create(&mut c, n).await;
    let mut sent = node("n1");
    sent.spec = Some(NodeSpec {
        reboot_method: RebootMethod::Agent as i32,
    });
    let out = update(&mut c, sent, mask(&["spec.reboot_method"])).await.unwrap();
    assert_eq!(reboot_method(&out), RebootMethod::Agent as i32);
    assert_eq!(
        out.metadata().unwrap().labels["rack"],
        "r1",
        "labels not named: kept"
    );
    assert_eq!(generation(&out), generation(&created) + 1);
    // "*" is a full replacement, as no mask is.
    let out = update(&mut c, labelled("n1", &[]), mask(&["*"])).await.unwrap();
    assert!(out.metadata().unwrap().labels.is_empty());
    assert_eq!(reboot_method(&out), 0);
    srv.stop().await;
}

#[tokio::test]
async fn bad_masks_are_invalid_argument_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("store.db")).await;
    let mut c = srv.client().await;
    seed(&mut c).await;
    let before = snapshot(&mut c).await;
    let n = node("n1");
    let cases: Vec<(Resource, Option<FieldMask>, Code, &str)> = vec![
        (
            n.clone().into(),
            mask(&[]),
            Code::InvalidArgument,
            "update_mask: names no field",
        ),
        (
            n.clone().into(),
            mask(&["metadata.labels", "spec.reboot"]),
            Code::InvalidArgument,
            "update_mask.paths[1]: unknown field \"spec.reboot\" in NodeSpec",
        ),
        (
            n.clone().into(),
            mask(&["spec.rebootMethod"]),
            Code::InvalidArgument,
            "(paths use proto field names: \"reboot_method\")",
        ),
        (
            n.clone().into(),
            mask(&["status.reachable"]),
            Code::InvalidArgument,
            "update_mask.paths[0]: \"status.reachable\" cannot be updated",
        ),
        (
            n.clone().into(),
            mask(&["metadata.generation"]),
            Code::InvalidArgument,
            "\"metadata.generation\" cannot be updated",
        ),
        (
            deployment("dep1", "b1", "f1").into(),
            mask(&["spec.device_selector.pool"]),
            Code::InvalidArgument,
            "\"spec.device_selector\" is a map",
        ),
        (
            n.clone().into(),
            mask(&["x".repeat(100_000).as_str()]),
            Code::InvalidArgument,
            "update_mask.paths[0]: \"xxxxx",
        ),
        // The object the mask makes is validated like any other.
        (
            device("d1", "n1", "rshim0").into(),
            mask(&["spec.serial"]),
            Code::Ok,
            "",
        ),
        (bfb("b1").into(), mask(&["spec.sha256"]), Code::Ok, ""),
    ];
    for (r, m, code, want) in cases {
        let got = update(&mut c, r, m).await;
        match (code, got) {
            (Code::Ok, Ok(_)) => {}
            (_, Err(e)) => {
                assert_eq!(e.code(), code, "{}", e.message());
                assert!(
                    e.message().contains(want),
                    "{:?} does not contain {want:?}",
                    e.message()
                );
                assert!(e.message().len() < 400, "{}", e.message());
            }
            (code, Ok(r)) => panic!("expected {code:?} ({want}), got {r:?}"),
        }
    }
    // Unchanged values under a mask were no-ops: nothing at all was written.
    assert_eq!(snapshot(&mut c).await, before);

    let cases: Vec<(Resource, &[&str], Code, &str)> = vec![
        (
            {
                let mut d = device("d1", "n1", "rshim0");
                d.spec.as_mut().unwrap().serial = String::new();
                d.into()
            },
            &["spec.serial"],
            Code::InvalidArgument,
            "device.spec.serial: required",
        ),
        (
            {
                let mut d = device("d1", "n1", "rshim0");
                d.spec.as_mut().unwrap().rshim = "rshim1".into();
                d.into()
            },
            &["spec.rshim"],
            Code::InvalidArgument,
            "device.spec.rshim: rshim1 on node \"n1\" is already used by device \"d2\"",
        ),
        (
            device("d1", "n9", "rshim0").into(),
            &["spec.node"],
            Code::FailedPrecondition,
            "spec.node cannot change",
        ),
        (
            {
                let mut b = bfb("b1");
                b.spec.as_mut().unwrap().version = "3.0.0".into();
                b.into()
            },
            &["spec.version"],
            Code::FailedPrecondition,
            "bfb specs are immutable",
        ),
        (
            {
                let mut f = flavor("f1");
                f.spec.as_mut().unwrap().bf_cfg.clear();
                f.into()
            },
            &["spec.bf_cfg"],
            Code::FailedPrecondition,
            "flavor specs are immutable",
        ),
        (
            deployment("dep1", "b9", "f1").into(),
            &["spec.bfb"],
            Code::InvalidArgument,
            "deployment.spec.bfb: bfb \"b9\" does not exist",
        ),
        (
            {
                let mut n = node("n1");
                n.metadata.as_mut().unwrap().resource_version = 999;
                n.into()
            },
            &["metadata.labels"],
            Code::Aborted,
            "was modified",
        ),
    ];
    for (r, paths, code, want) in cases {
        let e = update(&mut c, r, mask(paths)).await.unwrap_err();
        assert_eq!(e.code(), code, "{}", e.message());
        assert!(
            e.message().contains(want),
            "{:?} does not contain {want:?}",
            e.message()
        );
    }
    assert_eq!(snapshot(&mut c).await, before, "refusals change nothing");

    // Labels of immutable kinds may change under a mask, as without one.
    let mut b = bfb("b1");
    b.spec = None;
    b.metadata
        .as_mut()
        .unwrap()
        .labels
        .insert("tier".into(), "gold".into());
    let out = update(&mut c, b, mask(&["metadata.labels"])).await.unwrap();
    assert_eq!(out.metadata().unwrap().labels["tier"], "gold");
    srv.stop().await;
}

/// The Deployment spec's fields a mask may name, with how to read and write each.
const DEPLOYMENT_FIELDS: [&str; 6] = [
    "spec.bfb",
    "spec.flavor",
    "spec.device_selector",
    "spec.max_unavailable",
    "spec.node_effect",
    "metadata.labels",
];

fn dep_state(
    bfb: u8,
    flavor: u8,
    pool: Option<u8>,
    max_unavailable: u32,
    hold: bool,
    team: Option<u8>,
) -> hostplane_proto::v1::Deployment {
    let mut d = deployment("dep", &format!("b{bfb}"), &format!("f{flavor}"));
    d.spec = Some(DeploymentSpec {
        device_selector: pool
            .map(|p| ("pool".to_string(), format!("p{p}")))
            .into_iter()
            .collect(),
        bfb: format!("b{bfb}"),
        flavor: format!("f{flavor}"),
        power_policy: String::new(),
        max_unavailable,
        node_effect: if hold { NodeEffect::Hold } else { NodeEffect::Auto } as i32,
    });
    d.metadata.as_mut().unwrap().labels = team
        .map(|t| ("team".to_string(), format!("t{t}")))
        .into_iter()
        .collect();
    d
}

/// `stored` with the fields of `named` taken from `sent`.
fn expected(
    stored: &hostplane_proto::v1::Deployment,
    sent: &hostplane_proto::v1::Deployment,
    named: &[bool; 6],
) -> hostplane_proto::v1::Deployment {
    let mut out = stored.clone();
    let (o, s) = (out.spec.as_mut().unwrap(), sent.spec.as_ref().unwrap());
    if named[0] {
        o.bfb = s.bfb.clone();
    }
    if named[1] {
        o.flavor = s.flavor.clone();
    }
    if named[2] {
        o.device_selector = s.device_selector.clone();
    }
    if named[3] {
        o.max_unavailable = s.max_unavailable;
    }
    if named[4] {
        o.node_effect = s.node_effect;
    }
    if named[5] {
        out.metadata.as_mut().unwrap().labels = sent.metadata.as_ref().unwrap().labels.clone();
    }
    out
}

fn dep_strategy() -> impl Strategy<Value = hostplane_proto::v1::Deployment> {
    (
        1u8..3,
        1u8..3,
        proptest::option::of(0u8..2),
        0u32..3,
        any::<bool>(),
        proptest::option::of(0u8..2),
    )
        .prop_map(|(b, f, p, m, h, t)| dep_state(b, f, p, m, h, t))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Any subset of a Deployment's fields: exactly the named ones change;
    /// generation grows iff the spec changed; the version moves iff anything did.
    #[test]
    fn only_named_fields_change(
        stored in dep_strategy(),
        steps in proptest::collection::vec((dep_strategy(), any::<[bool; 6]>()), 1..6),
    ) {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let dir = tempfile::tempdir().unwrap();
            let srv = start(&dir.path().join("store.db")).await;
            let mut c = srv.client().await;
            for i in 1..3 {
                create(&mut c, bfb(&format!("b{i}"))).await;
                create(&mut c, flavor(&format!("f{i}"))).await;
            }
            let mut cur = match create(&mut c, stored).await.kind {
                Some(resource::Kind::Deployment(d)) => d,
                _ => unreachable!(),
            };
            for (sent, named) in steps {
                let paths: Vec<&str> = DEPLOYMENT_FIELDS
                    .iter()
                    .zip(named)
                    .filter(|(_, n)| *n)
                    .map(|(p, _)| *p)
                    .collect();
                if paths.is_empty() {
                    continue;
                }
                let want = expected(&cur, &sent, &named);
                let out = update(&mut c, sent, mask(&paths)).await.unwrap();
                let Some(resource::Kind::Deployment(out)) = out.kind else { unreachable!() };
                let (wm, om, cm) = (want.metadata.as_ref().unwrap(), out.metadata.as_ref().unwrap(), cur.metadata.as_ref().unwrap());
                prop_assert_eq!(&out.spec, &want.spec, "paths {:?}", paths);
                prop_assert_eq!(&om.labels, &wm.labels);
                let spec_changed = want.spec != cur.spec;
                prop_assert_eq!(om.generation, cm.generation + u64::from(spec_changed));
                let changed = spec_changed || wm.labels != cm.labels;
                prop_assert_eq!(om.resource_version != cm.resource_version, changed);
                prop_assert_eq!(&out.status, &cur.status, "status is the system's");
                prop_assert_eq!(get(&mut c, Kind::Deployment, "dep").await, Resource::from(out.clone()));
                cur = out;
            }
            srv.stop().await;
            Ok(())
        })?;
    }
}
