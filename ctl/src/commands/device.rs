//! `hostplanectl device ...`: physical DPUs.
use hostplane_proto::v1::{self, DeviceSpec, Kind, Resource};

use super::resource::{self, new_meta};
use super::{Conn, Ctx, Out};
use crate::cli::{DeviceCmd, DeviceCreate};
use crate::error::Error;

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: DeviceCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        DeviceCmd::Common(c) => resource::common(conn, ctx, Kind::Device, c, out).await,
        DeviceCmd::Create(args) => {
            let items = match &args.source.file {
                Some(f) => resource::load(f, Some(Kind::Device)).await?,
                None => vec![from_flags(&args)],
            };
            resource::create(&mut conn.client().await?, ctx, items, out).await
        }
    }
}

pub fn from_flags(args: &DeviceCreate) -> Resource {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    v1::Device {
        metadata: new_meta(
            args.source.name.as_deref().unwrap_or_default(),
            &args.source.labels,
        ),
        spec: Some(DeviceSpec {
            node: s(&args.node),
            serial: s(&args.serial),
            pci_address: s(&args.pci),
            rshim: s(&args.rshim),
            bmc_address: s(&args.bmc),
        }),
        status: None,
    }
    .into()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn device_from_flags() {
        let cli = Cli::try_parse_from([
            "hostplanectl",
            "device",
            "create",
            "dpu-a",
            "--node",
            "n1",
            "--rshim",
            "rshim0",
            "--serial",
            "S",
            "--pci",
            "0000:04:00.0",
            "-l",
            "model=bf3",
        ])
        .unwrap();
        let Command::Device {
            cmd: DeviceCmd::Create(args),
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(from_flags(&args)).unwrap(),
            serde_json::json!({"device": {
                "metadata": {"name": "dpu-a", "labels": {"model": "bf3"}},
                "spec": {"node": "n1", "serial": "S", "pciAddress": "0000:04:00.0", "rshim": "rshim0"}}})
        );
    }
}
