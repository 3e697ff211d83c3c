//! A Flavor's nvconfig (NIC firmware parameters per device selector) at the
//! admin API: accepted as DPF writes it, every rule refused with the field
//! named and nothing stored.
mod api_common;

use api_common::*;
use hostplane_proto::limits;
use hostplane_proto::v1::{CreateRequest, Flavor, FlavorSpec, GetRequest, Kind, NicFirmwareConfig, resource};
use tonic::Code;

fn entry(device: &str, params: &[&str], power_cycle: bool) -> NicFirmwareConfig {
    NicFirmwareConfig {
        device: device.into(),
        parameters: params.iter().map(|s| s.to_string()).collect(),
        host_power_cycle_required: power_cycle,
    }
}

fn with(name: &str, spec: FlavorSpec) -> Flavor {
    Flavor {
        metadata: meta(name),
        spec: Some(spec),
    }
}

fn nv(entries: Vec<NicFirmwareConfig>) -> FlavorSpec {
    FlavorSpec {
        nvconfig: entries,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_dpf_shaped_nvconfig_is_stored_as_sent() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    let spec = nv(vec![
        entry(
            "*",
            &["PF_BAR2_ENABLE=0", "PER_PF_NUM_SF=1", "PF_TOTAL_SF=20"],
            true,
        ),
        entry("BlueField-3", &["LINK_TYPE_P1=ETH", "PF_BAR2_ENABLE=0"], false),
        entry("0000:04:00.0", &["MODULE_SPLIT_M0[1]=1"], false),
    ]);
    create(&mut c, with("f1", spec.clone())).await;
    let got = c
        .get(GetRequest {
            kind: Kind::Flavor as i32,
            name: "f1".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let Some(resource::Kind::Flavor(f)) = got.kind else {
        panic!("{got:?}")
    };
    assert_eq!(f.spec.unwrap().nvconfig, spec.nvconfig);
    srv.stop().await;
}

#[tokio::test]
async fn each_nvconfig_rule_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    let long_value = format!("A={}", "v".repeat(limits::MAX_NIC_FW_VALUE + 1));
    let cases: Vec<(FlavorSpec, &str)> = vec![
        (
            nv(vec![
                entry("*", &["A=1"], false),
                entry("d1", &["PF_BAR2_ENABLE"], false),
            ]),
            "flavor.spec.nvconfig[1].parameters[0]: \"PF_BAR2_ENABLE\" is not NAME=VALUE",
        ),
        (
            nv(vec![entry("*", &["9A=1"], false)]),
            "flavor.spec.nvconfig[0].parameters[0]: name \"9A\" must be [A-Za-z_][A-Za-z0-9_]*",
        ),
        (
            nv(vec![entry("*", &["A=two words"], false)]),
            "flavor.spec.nvconfig[0].parameters[0]: A: value must be at most 128 characters, without spaces",
        ),
        (
            nv(vec![entry("*", &[&long_value], false)]),
            "flavor.spec.nvconfig[0].parameters[0]: A: value must be at most 128",
        ),
        (
            nv(vec![entry("*", &["A=1", "A=1"], false)]),
            "flavor.spec.nvconfig[0].parameters[1]: A is already set in parameters[0] of this entry",
        ),
        (
            nv(vec![
                entry("BlueField-3", &["A=1"], false),
                entry("*", &["A=2"], false),
            ]),
            "flavor.spec.nvconfig[1].parameters[0]: A=2 contradicts A=1 in nvconfig[0].parameters[0], whose \
             device selector \"BlueField-3\" can match the same device as \"*\"",
        ),
        (
            nv(vec![entry("bad device", &["A=1"], false)]),
            "flavor.spec.nvconfig[0].device \"bad device\": must be \"*\"",
        ),
        (
            nv(vec![entry(
                &"d".repeat(limits::MAX_NVCONFIG_DEVICE + 1),
                &["A=1"],
                false,
            )]),
            "flavor.spec.nvconfig[0].device: 129 bytes, more than the maximum of 128",
        ),
        (
            nv((0..=limits::MAX_NVCONFIG_ENTRIES)
                .map(|i| entry(&format!("d{i}"), &["A=1"], false))
                .collect()),
            "flavor.spec.nvconfig: 65 entries, more than the maximum of 64",
        ),
        (
            nv(vec![
                entry("d1", &vec!["A=1"; 200], false),
                entry("d2", &vec!["A=1"; 57], false),
            ]),
            "flavor.spec.nvconfig: 257 parameters in all entries, more than the maximum of 256",
        ),
        (
            FlavorSpec {
                nic_firmware: [("NUM_OF_VFS".to_string(), "8".to_string())].into(),
                nvconfig: vec![entry("*", &["PF_BAR2_ENABLE=0"], false)],
                ..Default::default()
            },
            "flavor.spec.nic_firmware: set either nic_firmware (deprecated) or nvconfig, not both; use nvconfig",
        ),
    ];
    let before = snapshot(&mut c).await;
    for (spec, want) in cases {
        let e = c
            .create(CreateRequest {
                resource: Some(with("f1", spec).into()),
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{}", e.message());
        assert!(
            e.message().starts_with(want),
            "{:?} does not start with {want:?}",
            e.message()
        );
    }
    assert_eq!(snapshot(&mut c).await, before, "nothing was stored");
    srv.stop().await;
}
