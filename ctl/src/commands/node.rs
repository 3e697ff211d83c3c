//! `hostplanectl node ...`: nodes and the upstream flows on them.
use hostplane_proto::v1::{
    self, CreateNodeWithDevicesRequest, Kind, MarkRebootedRequest, NodeRef, NodeSpec, RebootMethod, Resource,
};

use super::resource::{self, new_meta};
use super::{Conn, Ctx, Out, emit};
use crate::cli::{CheckArgs, MarkRebootedArgs, NodeCmd, NodeCreate, RebootMethodArg};
use crate::client::Client;
use crate::error::{Error, exit};
use crate::input;
use crate::output::{self, Format, TableWriter};

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: NodeCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        NodeCmd::Common(c) => resource::common(conn, ctx, Kind::Node, c, out).await,
        NodeCmd::Create(args) => {
            let items = match &args.source.file {
                Some(f) => resource::load(f, Some(Kind::Node)).await?,
                None => vec![from_flags(&args)],
            };
            resource::create(&mut conn.client().await?, ctx, items, out).await
        }
        NodeCmd::Approve(a) => approve(&mut conn.client().await?, ctx, &a.name, out).await,
        NodeCmd::MarkRebooted(a) => rebooted(&mut conn.client().await?, ctx, &a, out).await,
        NodeCmd::RebootStatus(a) => reboot_status(&mut conn.client().await?, ctx, &a, out).await,
        NodeCmd::CreateWithDevices(f) => {
            let text = input::read(&f.file).await?;
            let req: CreateNodeWithDevicesRequest = input::parse_message(&f.file, &text)?;
            create_with_devices(&mut conn.client().await?, ctx, req, out).await
        }
    }
}

pub fn from_flags(args: &NodeCreate) -> Resource {
    let reboot_method = match args.reboot_method {
        None => RebootMethod::Unspecified,
        Some(RebootMethodArg::External) => RebootMethod::External,
        Some(RebootMethodArg::Agent) => RebootMethod::Agent,
    };
    v1::Node {
        metadata: new_meta(
            args.source.name.as_deref().unwrap_or_default(),
            &args.source.labels,
        ),
        spec: Some(NodeSpec {
            reboot_method: reboot_method as i32,
        }),
        status: None,
    }
    .into()
}

pub async fn approve(client: &mut Client, ctx: &Ctx, name: &str, out: &mut Out) -> Result<u8, Error> {
    let node = client
        .approve_maintenance(NodeRef { name: name.into() })
        .await?
        .into_inner();
    emit(
        out,
        &output::action(&node.into(), "maintenance approved", ctx.format)?,
    )
    .await?;
    Ok(0)
}

pub async fn rebooted(
    client: &mut Client,
    ctx: &Ctx,
    args: &MarkRebootedArgs,
    out: &mut Out,
) -> Result<u8, Error> {
    let node = client
        .mark_rebooted(MarkRebootedRequest {
            name: args.name.clone(),
            power_cycled: args.power_cycled,
        })
        .await?
        .into_inner();
    let done = if args.power_cycled {
        "marked power-cycled"
    } else {
        "marked rebooted"
    };
    emit(out, &output::action(&node.into(), done, ctx.format)?).await?;
    Ok(0)
}

/// Prints whether the node waits for a reboot; with `--check` the answer is the exit code (0 yes, 3 no).
pub async fn reboot_status(
    client: &mut Client,
    ctx: &Ctx,
    args: &CheckArgs,
    out: &mut Out,
) -> Result<u8, Error> {
    let st = client
        .get_node_reboot_status(NodeRef {
            name: args.name.clone(),
        })
        .await?
        .into_inner();
    let text = match ctx.format {
        Format::Table => {
            let mut t = TableWriter::new(vec![
                "NODE".into(),
                "WAITING-REBOOT".into(),
                "POWER-CYCLE".into(),
                "DPUS".into(),
            ]);
            let dpus = if st.dpus.is_empty() {
                "-".to_string()
            } else {
                st.dpus.join(",")
            };
            t.render(&[vec![
                args.name.clone(),
                st.waiting_for_reboot.to_string(),
                st.power_cycle_required.to_string(),
                dpus,
            ]])
        }
        Format::Name => format!("node/{}\n", args.name),
        Format::Json | Format::Yaml => output::serialized(&st, ctx.format)?,
    };
    emit(out, &text).await?;
    Ok(if args.check && !st.waiting_for_reboot {
        exit::CHECK_FAILED
    } else {
        exit::OK
    })
}

pub async fn create_with_devices(
    client: &mut Client,
    ctx: &Ctx,
    req: CreateNodeWithDevicesRequest,
    out: &mut Out,
) -> Result<u8, Error> {
    let resp = client.create_node_with_devices(req).await?.into_inner();
    let text = match ctx.format {
        Format::Json | Format::Yaml => output::serialized(&resp, ctx.format)?,
        Format::Table | Format::Name => {
            let mut text = String::new();
            let node = resp.node.into_iter().map(Resource::from);
            for r in node.chain(resp.devices.into_iter().map(Resource::from)) {
                text.push_str(&output::action(&r, "created", ctx.format)?);
            }
            text
        }
    };
    emit(out, &text).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn mark_rebooted_takes_power_cycled_and_keeps_the_old_name() {
        for (argv, cycled) in [
            (vec!["node", "mark-rebooted", "n1", "--power-cycled"], true),
            (vec!["node", "mark-rebooted", "n1"], false),
            (vec!["node", "rebooted", "n1"], false),
        ] {
            let cli =
                Cli::try_parse_from(std::iter::once("hostplanectl").chain(argv.iter().copied())).unwrap();
            let Command::Node {
                cmd: NodeCmd::MarkRebooted(a),
            } = cli.command
            else {
                panic!("{argv:?}")
            };
            assert_eq!((a.name.as_str(), a.power_cycled), ("n1", cycled), "{argv:?}");
        }
    }

    #[test]
    fn node_from_flags() {
        let cli = Cli::try_parse_from([
            "hostplanectl",
            "node",
            "create",
            "n1",
            "--reboot-method",
            "agent",
            "-l",
            "rack=r1",
        ])
        .unwrap();
        let Command::Node {
            cmd: NodeCmd::Create(args),
        } = cli.command
        else {
            panic!()
        };
        let r = from_flags(&args);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"node": {"metadata": {"name": "n1", "labels": {"rack": "r1"}},
                                        "spec": {"rebootMethod": "REBOOT_METHOD_AGENT"}}})
        );
    }
}
