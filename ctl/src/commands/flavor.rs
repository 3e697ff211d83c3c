//! `hostplanectl flavor ...`: DPU configurations.
use hostplane_proto::v1::{
    self, ConfigFile, ConfigFileOperation, ContainerdConfig, DpuOsConfig, FlavorSpec, GrubConfig,
    HostNetwork, Kind, NicFirmwareConfig, OvsConfig, Resource, SysctlConfig,
};

use super::resource::{self, label_map, new_meta};
use super::{Conn, Ctx, Out};
use crate::cli::{FlavorCmd, FlavorCreate};
use crate::error::Error;

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: FlavorCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        FlavorCmd::Common(c) => resource::common(conn, ctx, Kind::Flavor, c, out).await,
        FlavorCmd::Create(args) => {
            let items = match &args.source.file {
                Some(f) => resource::load(f, Some(Kind::Flavor)).await?,
                None => vec![from_flags(&args).await?],
            };
            resource::create(&mut conn.client().await?, ctx, items, out).await
        }
    }
}

/// A local file's text (`--config-file`, `--ovs-script`).
async fn local_text(path: &str) -> Result<String, Error> {
    tokio::fs::read_to_string(path)
        .await
        .map_err(|source| Error::ReadInput {
            path: path.into(),
            source,
        })
}

/// The DPU OS settings of the flags; `None` when no flag sets one.
async fn dpu_os_from_flags(args: &FlavorCreate) -> Result<Option<DpuOsConfig>, Error> {
    let mut config_files = Vec::new();
    for f in &args.config_file {
        config_files.push(ConfigFile {
            path: f.path.clone(),
            operation: if f.append {
                ConfigFileOperation::Append
            } else {
                ConfigFileOperation::Override
            } as i32,
            raw: local_text(&f.local).await?,
            permissions: f.mode.clone(),
            owner: f.owner.clone(),
        });
    }
    let ovs = match &args.ovs_script {
        Some(p) => Some(OvsConfig {
            raw_config_script: local_text(p).await?,
        }),
        None => None,
    };
    let os = DpuOsConfig {
        grub: (!args.kernel_param.is_empty()).then(|| GrubConfig {
            kernel_parameters: args.kernel_param.clone(),
        }),
        sysctl: (!args.sysctl.is_empty()).then(|| SysctlConfig {
            parameters: args.sysctl.clone(),
        }),
        config_files,
        ovs,
        containerd_config: args.containerd_registry.as_ref().map(|r| ContainerdConfig {
            registry_endpoint: r.clone(),
        }),
    };
    Ok((os != DpuOsConfig::default()).then_some(os))
}

/// Bridges are not flags: write them in a file (`flavor create -f`).
pub async fn from_flags(args: &FlavorCreate) -> Result<Resource, Error> {
    let host_network = (args.num_vfs.is_some() || args.mtu.is_some()).then(|| HostNetwork {
        num_vfs: args.num_vfs.unwrap_or(0),
        mtu: args.mtu.unwrap_or(0),
        ..Default::default()
    });
    Ok(v1::Flavor {
        metadata: new_meta(
            args.source.name.as_deref().unwrap_or_default(),
            &args.source.labels,
        ),
        spec: Some(FlavorSpec {
            bf_cfg: label_map(&args.bf_cfg),
            nic_firmware: label_map(&args.nic_fw),
            host_network,
            nvconfig: args
                .nvconfig
                .iter()
                .map(|n| NicFirmwareConfig {
                    device: n.device.clone(),
                    parameters: n.parameters.clone(),
                    host_power_cycle_required: n.power_cycle,
                })
                .collect(),
            dpu_os: dpu_os_from_flags(args).await?,
        }),
    }
    .into())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[tokio::test]
    async fn flavor_from_flags() {
        let cli = Cli::try_parse_from([
            "hostplanectl",
            "flavor",
            "create",
            "f1",
            "--bf-cfg",
            "ENABLE_SFC_HBN=yes",
            "--nic-fw",
            "LINK_TYPE_P1=ETH",
            "--num-vfs",
            "8",
            "--mtu",
            "9000",
        ])
        .unwrap();
        let Command::Flavor {
            cmd: FlavorCmd::Create(args),
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(from_flags(&args).await.unwrap()).unwrap(),
            serde_json::json!({"flavor": {"metadata": {"name": "f1"}, "spec": {
                "bfCfg": {"ENABLE_SFC_HBN": "yes"}, "nicFirmware": {"LINK_TYPE_P1": "ETH"},
                "hostNetwork": {"numVfs": 8, "mtu": 9000}}}})
        );
    }

    fn create_args(extra: &[&str]) -> FlavorCreate {
        let mut argv = vec!["hostplanectl", "flavor", "create", "f1"];
        argv.extend_from_slice(extra);
        let cli = Cli::try_parse_from(argv).unwrap();
        let Command::Flavor {
            cmd: FlavorCmd::Create(args),
        } = cli.command
        else {
            panic!()
        };
        args
    }

    #[tokio::test]
    async fn dpu_os_and_nvconfig_from_flags() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("app.conf");
        std::fs::write(&conf, "k = 'v'\n").unwrap();
        let ovs = dir.path().join("ovs.sh");
        std::fs::write(&ovs, "ovs-vsctl show\n").unwrap();
        let cf1 = format!("/etc/app.conf={}:0600:ubuntu:adm", conf.display());
        let cf2 = format!("/etc/motd+={}", conf.display());
        let args = create_args(&[
            "--kernel-param",
            "hugepages=3072",
            "--kernel-param",
            "iommu=pt",
            "--sysctl",
            "net.ipv4.ip_forward=1",
            "--config-file",
            &cf1,
            "--config-file",
            &cf2,
            "--ovs-script",
            ovs.to_str().unwrap(),
            "--containerd-registry",
            "https://registry.lab:5000",
            "--nvconfig",
            "*:PF_BAR2_ENABLE=0,PER_PF_NUM_SF=1",
            "--nvconfig",
            "0000:04:00.0:PF_TOTAL_SF=20:power-cycle",
        ]);
        assert_eq!(
            serde_json::to_value(from_flags(&args).await.unwrap()).unwrap(),
            serde_json::json!({"flavor": {"metadata": {"name": "f1"}, "spec": {
            "nvconfig": [
                {"device": "*", "parameters": ["PF_BAR2_ENABLE=0", "PER_PF_NUM_SF=1"]},
                {"device": "0000:04:00.0", "parameters": ["PF_TOTAL_SF=20"], "hostPowerCycleRequired": true}
            ],
            "dpuOs": {
                "grub": {"kernelParameters": ["hugepages=3072", "iommu=pt"]},
                "sysctl": {"parameters": ["net.ipv4.ip_forward=1"]},
                "configFiles": [
                    {"path": "/etc/app.conf", "operation": "CONFIG_FILE_OPERATION_OVERRIDE",
                     "raw": "k = 'v'\n", "permissions": "0600", "owner": "ubuntu:adm"},
                    {"path": "/etc/motd", "operation": "CONFIG_FILE_OPERATION_APPEND", "raw": "k = 'v'\n"}
                ],
                "ovs": {"rawConfigScript": "ovs-vsctl show\n"},
                "containerdConfig": {"registryEndpoint": "https://registry.lab:5000"}
            }}}})
        );
        // No DPU OS flag: no dpu_os at all.
        let plain = from_flags(&create_args(&[])).await.unwrap();
        assert_eq!(
            serde_json::to_value(plain).unwrap()["flavor"]["spec"],
            serde_json::json!({})
        );
        // A missing local file names it.
        let e = from_flags(&create_args(&["--config-file", "/etc/x=/nonexistent/f"]))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("/nonexistent/f"), "{e}");
    }

    #[test]
    fn bad_flag_values_are_refused_by_the_parser() {
        for (flag, value, want) in [
            ("--nvconfig", "PF_BAR2_ENABLE=0", "expected DEVICE:"),
            ("--nvconfig", "*:PF_BAR2_ENABLE", "is not NAME=VALUE"),
            ("--config-file", "etc/x=/tmp/f", "not an absolute path"),
            ("--config-file", "/etc/x=/tmp/f:rw", "is not octal"),
            ("--config-file", "/etc/x", "expected PATH=LOCALFILE"),
            ("--config-file", "/etc/x=", "no LOCALFILE"),
        ] {
            let e = Cli::try_parse_from(["hostplanectl", "flavor", "create", "f1", flag, value]).unwrap_err();
            assert!(e.to_string().contains(want), "{flag} {value}: {e}");
        }
    }

    #[test]
    fn a_flavor_file_carries_dpu_os_and_nvconfig() {
        let text = "flavor:\n  metadata: {name: f-os}\n  spec:\n    nvconfig:\n      - {device: '*', parameters: [PF_BAR2_ENABLE=0], hostPowerCycleRequired: true}\n    dpuOs:\n      grub: {kernelParameters: [iommu=pt]}\n      configFiles:\n        - path: /etc/a\n          operation: CONFIG_FILE_OPERATION_APPEND\n          raw: |\n            line: 'x'\n          permissions: '0600'\n";
        let rs = crate::input::parse_resources("f.yaml", text).unwrap();
        let Some(v1::resource::Kind::Flavor(f)) = &rs[0].kind else {
            panic!("{rs:?}")
        };
        let spec = f.spec.as_ref().unwrap();
        assert!(spec.nvconfig[0].host_power_cycle_required);
        let os = spec.dpu_os.as_ref().unwrap();
        assert_eq!(os.grub.as_ref().unwrap().kernel_parameters, ["iommu=pt"]);
        let file = &os.config_files[0];
        assert_eq!(file.operation(), ConfigFileOperation::Append);
        assert_eq!(
            (file.raw.as_str(), file.permissions.as_str()),
            ("line: 'x'\n", "0600")
        );
    }
}
