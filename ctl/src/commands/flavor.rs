//! `hostplanectl flavor ...`: DPU configurations.
use hostplane_proto::v1::{self, FlavorSpec, HostNetwork, Kind, Resource};

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
                None => vec![from_flags(&args)],
            };
            resource::create(&mut conn.client().await?, ctx, items, out).await
        }
    }
}

/// Bridges are not flags: write them in a file (`flavor create -f`).
pub fn from_flags(args: &FlavorCreate) -> Resource {
    let host_network = (args.num_vfs.is_some() || args.mtu.is_some()).then(|| HostNetwork {
        num_vfs: args.num_vfs.unwrap_or(0),
        mtu: args.mtu.unwrap_or(0),
        ..Default::default()
    });
    v1::Flavor {
        metadata: new_meta(
            args.source.name.as_deref().unwrap_or_default(),
            &args.source.labels,
        ),
        spec: Some(FlavorSpec {
            bf_cfg: label_map(&args.bf_cfg),
            nic_firmware: label_map(&args.nic_fw),
            host_network,
            ..Default::default()
        }),
    }
    .into()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn flavor_from_flags() {
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
            serde_json::to_value(from_flags(&args)).unwrap(),
            serde_json::json!({"flavor": {"metadata": {"name": "f1"}, "spec": {
                "bfCfg": {"ENABLE_SFC_HBN": "yes"}, "nicFirmware": {"LINK_TYPE_P1": "ETH"},
                "hostNetwork": {"numVfs": 8, "mtu": 9000}}}})
        );
    }
}
