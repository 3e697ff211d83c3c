//! A Flavor's DPU OS settings (`spec.dpu_os`, rendered into bf.cfg) at the
//! admin API: a Flavor with every section is stored and read back whole;
//! each broken field is refused with INVALID_ARGUMENT naming it and changes
//! nothing; the rendered bf.cfg's size (the agent's renderer) is enforced at
//! the byte. Runs on PostgreSQL too (`HOSTPLANE_TEST_STORE=postgres`).
mod api_common;

use api_common::*;
use hostplane_proto::dpu_os;
use hostplane_proto::limits as lim;
use hostplane_proto::v1::{
    ConfigFile, ConfigFileOperation, ContainerdConfig, CreateRequest, DpuOsConfig, Flavor, FlavorSpec,
    GetRequest, GrubConfig, Kind, OvsConfig, Resource, SysctlConfig, UpdateRequest, resource,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tonic::Code;

fn every_section() -> DpuOsConfig {
    DpuOsConfig {
        grub: Some(GrubConfig {
            kernel_parameters: vec!["hugepages=3072".into(), "iommu=pt".into()],
        }),
        sysctl: Some(SysctlConfig {
            parameters: vec!["net.ipv4.ip_forward=1".into(), "net/core/somaxconn=4096".into()],
        }),
        config_files: vec![
            ConfigFile {
                path: "/etc/app/it's.conf".into(),
                operation: ConfigFileOperation::Override as i32,
                raw: "k = '$(v)'\n".into(),
                permissions: "0600".into(),
                owner: "ubuntu:adm".into(),
            },
            ConfigFile {
                path: "/etc/motd".into(),
                operation: ConfigFileOperation::Append as i32,
                raw: "hello\n".into(),
                permissions: String::new(),
                owner: String::new(),
            },
        ],
        ovs: Some(OvsConfig {
            raw_config_script: "ovs-vsctl set Open_vSwitch . other_config:hw-offload=true\n".into(),
        }),
        containerd_config: Some(ContainerdConfig {
            registry_endpoint: "https://registry.lab:5000".into(),
        }),
    }
}

fn with_os(name: &str, os: DpuOsConfig) -> Flavor {
    Flavor {
        metadata: meta(name),
        spec: Some(FlavorSpec {
            bf_cfg: [("UPDATE_DPU_OS".to_string(), "yes".to_string())].into(),
            dpu_os: Some(os),
            ..Default::default()
        }),
    }
}

async fn get_flavor(c: &mut Client, name: &str) -> Option<Flavor> {
    match c
        .get(GetRequest {
            kind: Kind::Flavor as i32,
            name: name.into(),
        })
        .await
    {
        Ok(r) => match r.into_inner().kind {
            Some(resource::Kind::Flavor(f)) => Some(f),
            other => panic!("not a flavor: {other:?}"),
        },
        Err(s) if s.code() == Code::NotFound => None,
        Err(s) => panic!("get {name}: {s}"),
    }
}

async fn refused(c: &mut Client, f: Flavor) -> String {
    let name = f.metadata.as_ref().unwrap().name.clone();
    let s = c
        .create(CreateRequest {
            resource: Some(Resource::from(f)),
        })
        .await
        .expect_err("refused");
    assert_eq!(s.code(), Code::InvalidArgument, "{s}");
    assert!(get_flavor(c, &name).await.is_none(), "{name} was stored");
    s.message().to_string()
}

#[tokio::test]
async fn a_flavor_with_every_section_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    create(&mut c, with_os("full", every_section())).await;
    let got = get_flavor(&mut c, "full").await.unwrap();
    assert_eq!(got.spec.unwrap().dpu_os, Some(every_section()));

    // Flavor specs are immutable: another dpu_os is refused and the stored one stays.
    let mut os = every_section();
    os.config_files.pop();
    let mut f = with_os("full", os);
    f.metadata.as_mut().unwrap().resource_version = got.metadata.as_ref().unwrap().resource_version;
    let s = c
        .update(UpdateRequest {
            resource: Some(f.into()),
            update_mask: None,
        })
        .await
        .expect_err("refused");
    assert_eq!(s.code(), Code::FailedPrecondition, "{s}");
    assert_eq!(
        get_flavor(&mut c, "full").await.unwrap().spec.unwrap().dpu_os,
        Some(every_section())
    );
    srv.stop().await;
}

#[tokio::test]
async fn each_broken_field_is_refused_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(&dir.path().join("c.db")).await;
    let mut c = srv.client().await;
    type Edit = fn(&mut DpuOsConfig);
    let cases: Vec<(&str, Edit, &str)> = vec![
        (
            "space in a kernel parameter",
            |o| o.grub.as_mut().unwrap().kernel_parameters[0] = "a b".into(),
            "flavor.spec.dpu_os.grub.kernel_parameters[0]: \"a b\" contains ' '",
        ),
        (
            "quote in a kernel parameter",
            |o| o.grub.as_mut().unwrap().kernel_parameters[1] = "x=\"y\"".into(),
            "flavor.spec.dpu_os.grub.kernel_parameters[1]",
        ),
        (
            "empty kernel parameter",
            |o| o.grub.as_mut().unwrap().kernel_parameters[0] = String::new(),
            "kernel_parameters[0]: empty",
        ),
        (
            "too many kernel parameters",
            |o| o.grub.as_mut().unwrap().kernel_parameters = vec!["a".into(); lim::MAX_KERNEL_PARAMS + 1],
            "flavor.spec.dpu_os.grub.kernel_parameters: 65 parameters, more than the maximum of 64",
        ),
        (
            "long kernel parameter",
            |o| o.grub.as_mut().unwrap().kernel_parameters[0] = "k".repeat(lim::MAX_KERNEL_PARAM + 1),
            "kernel_parameters[0]: 257 bytes, more than the maximum of 256",
        ),
        (
            "sysctl without =",
            |o| o.sysctl.as_mut().unwrap().parameters[0] = "net.ipv4.ip_forward".into(),
            "flavor.spec.dpu_os.sysctl.parameters[0]: \"net.ipv4.ip_forward\" is not key=value",
        ),
        (
            "sysctl key upper case",
            |o| o.sysctl.as_mut().unwrap().parameters[0] = "Net.X=1".into(),
            "sysctl.parameters[0]: key \"Net.X\"",
        ),
        (
            "sysctl value two lines",
            |o| o.sysctl.as_mut().unwrap().parameters[1] = "a.b=1\nc.d=2".into(),
            "sysctl.parameters[1]: the value must be one line",
        ),
        (
            "too many sysctls",
            |o| o.sysctl.as_mut().unwrap().parameters = vec!["a=1".into(); lim::MAX_SYSCTL_PARAMS + 1],
            "sysctl.parameters: 129 parameters",
        ),
        (
            "relative path",
            |o| o.config_files[0].path = "etc/x".into(),
            "config_files[0].path: \"etc/x\" is not an absolute path",
        ),
        (
            "dot-dot path",
            |o| o.config_files[1].path = "/etc/../x".into(),
            "config_files[1].path: \"/etc/../x\" is not normalized",
        ),
        (
            "double slash",
            |o| o.config_files[1].path = "/etc//x".into(),
            "is not normalized",
        ),
        (
            "directory path",
            |o| o.config_files[0].path = "/etc/app/".into(),
            "config_files[0].path: \"/etc/app/\" names a directory",
        ),
        (
            "NUL in path",
            |o| o.config_files[0].path = "/etc/a\0b".into(),
            "contains a NUL or control character",
        ),
        (
            "same path twice",
            |o| o.config_files[1].path = o.config_files[0].path.clone(),
            "config_files[1].path: \"/etc/app/it's.conf\" is named by an earlier config file",
        ),
        (
            "hostplane's own path",
            |o| o.config_files[0].path = dpu_os::SYSCTL_FILE.into(),
            "which hostplane writes itself",
        ),
        (
            "the first-boot marker",
            |o| o.config_files[0].path = dpu_os::FIRST_BOOT_MARKER.into(),
            "config_files[0].path: \"/var/lib/hostplane/dpu-os.done\" would clash with /var/lib/hostplane/dpu-os.done",
        ),
        (
            "a file where hostplane needs a directory",
            |o| o.config_files[0].path = "/etc/default/grub.d".into(),
            "would clash with /etc/default/grub.d/99-hostplane.cfg",
        ),
        (
            "inside hostplane's directory",
            |o| o.config_files[1].path = "/opt/hostplane/mine.sh".into(),
            "config_files[1].path: \"/opt/hostplane/mine.sh\" would clash with /opt/hostplane,",
        ),
        (
            "long path",
            |o| o.config_files[0].path = format!("/{}", "p".repeat(lim::MAX_CONFIG_PATH)),
            "config_files[0].path: 4097 bytes, more than the maximum of 4096",
        ),
        (
            "bad mode",
            |o| o.config_files[0].permissions = "0999".into(),
            "config_files[0].permissions: \"0999\" is not an octal mode",
        ),
        (
            "bad owner",
            |o| o.config_files[0].owner = "root:Wheel".into(),
            "config_files[0].owner: \"root:Wheel\" is not user or user:group",
        ),
        (
            "NUL in content",
            |o| o.config_files[1].raw = "a\0b".into(),
            "config_files[1].raw: contains a NUL byte at offset 1",
        ),
        (
            "big content",
            |o| o.config_files[1].raw = "r".repeat(lim::MAX_CONFIG_FILE_BYTES + 1),
            "config_files[1].raw: 65537 bytes, more than the maximum of 65536",
        ),
        (
            "unknown operation",
            |o| o.config_files[0].operation = 7,
            "config_files[0].operation: unknown value 7",
        ),
        (
            "too many files",
            |o| {
                o.config_files = (0..=lim::MAX_CONFIG_FILES)
                    .map(|i| ConfigFile {
                        path: format!("/etc/f{i}"),
                        ..Default::default()
                    })
                    .collect()
            },
            "config_files: 65 files, more than the maximum of 64",
        ),
        (
            "NUL in OVS script",
            |o| o.ovs.as_mut().unwrap().raw_config_script = "x\0".into(),
            "ovs.raw_config_script: contains a NUL byte at offset 1",
        ),
        (
            "big OVS script",
            |o| o.ovs.as_mut().unwrap().raw_config_script = "o".repeat(lim::MAX_OVS_SCRIPT + 1),
            "ovs.raw_config_script: 65537 bytes",
        ),
        (
            "long sysctl",
            |o| o.sysctl.as_mut().unwrap().parameters[0] = format!("a={}", "v".repeat(lim::MAX_SYSCTL_PARAM)),
            "sysctl.parameters[0]: 1026 bytes, more than the maximum of 1024",
        ),
        (
            "long mode",
            |o| o.config_files[0].permissions = "00644".into(),
            "config_files[0].permissions: 5 bytes, more than the maximum of 4",
        ),
        (
            "long owner",
            |o| o.config_files[0].owner = "u".repeat(lim::MAX_OWNER + 1),
            "config_files[0].owner: 66 bytes, more than the maximum of 65",
        ),
        (
            "long registry",
            |o| {
                o.containerd_config.as_mut().unwrap().registry_endpoint =
                    format!("https://{}", "r".repeat(lim::MAX_REGISTRY_ENDPOINT))
            },
            "containerd_config.registry_endpoint: 2056 bytes, more than the maximum of 2048",
        ),
        (
            "registry not a URL",
            |o| o.containerd_config.as_mut().unwrap().registry_endpoint = "registry.lab:5000".into(),
            "containerd_config.registry_endpoint: \"registry.lab:5000\" is not a URL",
        ),
        (
            "registry ftp",
            |o| o.containerd_config.as_mut().unwrap().registry_endpoint = "ftp://r".into(),
            "scheme must be http or https",
        ),
        (
            "registry with a quote",
            |o| o.containerd_config.as_mut().unwrap().registry_endpoint = "https://r\"x".into(),
            "registry_endpoint: \"https://r\\\"x\" contains '\"'",
        ),
    ];
    for (i, (what, edit, want)) in cases.into_iter().enumerate() {
        let mut os = every_section();
        edit(&mut os);
        let msg = refused(&mut c, with_os(&format!("bad{i}"), os)).await;
        assert!(msg.contains(want), "{what}: {msg}");
        assert!(msg.len() < 512, "{what}: message of {} bytes", msg.len());
    }
    srv.stop().await;
}

/// The size rule is the agent's renderer's length, to the byte: the largest
/// Flavor whose bf.cfg fits the maximum is stored, three content bytes more
/// (four of base64) are refused naming the size. Contents are generated (any text but NUL, in
/// any split between files), so base64 padding and quoting vary.
#[test]
fn the_rendered_size_limit_is_exact() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (srv, c) = rt.block_on(async {
        let srv = start(&dir.path().join("c.db")).await;
        let c = srv.client().await;
        (srv, c)
    });
    let mut runner = TestRunner::new(Config {
        cases: 8,
        failure_persistence: None,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(
            &(
                "[^\\x00]{0,40}",
                "/[a-z' ]{1,12}",
                proptest::collection::vec("[a-z.]{1,8}=[a-z0-9]{0,6}", 0..4),
            ),
            |(head, path, sysctl)| {
                let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let mut c = c.clone();
                // Fill a file so the whole bf.cfg is exactly the maximum.
                let make = |filler: usize| {
                    let mut os = DpuOsConfig {
                        sysctl: Some(SysctlConfig {
                            parameters: sysctl.clone(),
                        }),
                        config_files: vec![ConfigFile {
                            path: path.clone(),
                            raw: format!("{head}{}", "f".repeat(filler)),
                            ..Default::default()
                        }],
                        ..Default::default()
                    };
                    os.config_files.push(ConfigFile {
                        path: "/etc/second".into(),
                        raw: "x".repeat(60_000),
                        ..Default::default()
                    });
                    os
                };
                let bf_cfg: std::collections::HashMap<String, String> =
                    [("UPDATE_DPU_OS".to_string(), "yes".to_string())].into();
                let len = |os: &DpuOsConfig| dpu_os::rendered_len(&bf_cfg, Some(os));
                // The largest filler that fits (the length only grows with it).
                let (mut lo, mut hi) = (0usize, lim::MAX_CONFIG_FILE_BYTES);
                while lo < hi {
                    let mid = (lo + hi).div_ceil(2);
                    if len(&make(mid)) <= lim::MAX_BF_CFG_BYTES {
                        lo = mid;
                    } else {
                        hi = mid - 1;
                    }
                }
                let filler = lo;
                let fits = make(filler);
                let over = make(filler + 3);
                prop_assert!(len(&fits) <= lim::MAX_BF_CFG_BYTES);
                prop_assert!(len(&over) > lim::MAX_BF_CFG_BYTES);
                rt.block_on(async {
                    let ok = with_os(&format!("fit{n}"), fits.clone());
                    c.create(CreateRequest {
                        resource: Some(ok.into()),
                    })
                    .await
                    .unwrap_or_else(|s| panic!("{} bytes refused: {s}", len(&fits)));
                    let msg = refused(&mut c, with_os(&format!("over{n}"), over.clone())).await;
                    let want = format!(
                        "flavor.spec.dpu_os: renders with spec.bf_cfg to a bf.cfg of {} bytes",
                        len(&over)
                    );
                    assert!(msg.contains(&want), "{msg}");
                });
                Ok(())
            },
        )
        .unwrap();
    rt.block_on(srv.stop());
}
