//! `hostplanectl deployment ...`: groups of devices and their image.
use hostplane_proto::v1::{self, DeploymentSpec, Kind, NodeEffect, Resource, SetDeploymentImageRequest};

use super::resource::{self, label_map, new_meta};
use super::{Conn, Ctx, Out, emit};
use crate::cli::{DeploymentCmd, DeploymentCreate, NodeEffectArg, SetImageArgs};
use crate::client::Client;
use crate::error::Error;
use crate::output;

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: DeploymentCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        DeploymentCmd::Common(c) => resource::common(conn, ctx, Kind::Deployment, c, out).await,
        DeploymentCmd::Create(args) => {
            let items = match &args.source.file {
                Some(f) => resource::load(f, Some(Kind::Deployment)).await?,
                None => vec![from_flags(&args)],
            };
            resource::create(&mut conn.client().await?, ctx, items, out).await
        }
        DeploymentCmd::SetImage(args) => set_image(&mut conn.client().await?, ctx, args, out).await,
    }
}

pub fn from_flags(args: &DeploymentCreate) -> Resource {
    let node_effect = match args.node_effect {
        None => NodeEffect::Unspecified,
        Some(NodeEffectArg::Hold) => NodeEffect::Hold,
        Some(NodeEffectArg::Auto) => NodeEffect::Auto,
    };
    v1::Deployment {
        metadata: new_meta(
            args.source.name.as_deref().unwrap_or_default(),
            &args.source.labels,
        ),
        spec: Some(DeploymentSpec {
            device_selector: label_map(&args.selector),
            bfb: args.bfb.clone().unwrap_or_default(),
            flavor: args.flavor.clone().unwrap_or_default(),
            power_policy: args.power_policy.clone().unwrap_or_default(),
            max_unavailable: args.max_unavailable.unwrap_or(0),
            node_effect: node_effect as i32,
        }),
        status: None,
    }
    .into()
}

/// Point the deployment at a new bfb and/or flavor; prints `deployment/d1 image set (bfb B, flavor F)`.
pub async fn set_image(
    client: &mut Client,
    ctx: &Ctx,
    args: SetImageArgs,
    out: &mut Out,
) -> Result<u8, Error> {
    let req = SetDeploymentImageRequest {
        deployment: args.deployment,
        bfb: args.bfb.unwrap_or_default(),
        flavor: args.flavor.unwrap_or_default(),
    };
    let d = client.set_deployment_image(req).await?.into_inner();
    let spec = d.spec.clone().unwrap_or_default();
    let what = format!("image set (bfb {}, flavor {})", spec.bfb, spec.flavor);
    emit(out, &output::action(&d.into(), &what, ctx.format)?).await?;
    Ok(0)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn deployment_from_flags() {
        let cli = Cli::try_parse_from([
            "hostplanectl",
            "deployment",
            "create",
            "d1",
            "--bfb",
            "bf-4.9",
            "--flavor",
            "f1",
            "--selector",
            "model=bf3",
            "--max-unavailable",
            "2",
            "--node-effect",
            "auto",
        ])
        .unwrap();
        let Command::Deployment {
            cmd: DeploymentCmd::Create(args),
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(from_flags(&args)).unwrap(),
            serde_json::json!({"deployment": {"metadata": {"name": "d1"}, "spec": {
                "deviceSelector": {"model": "bf3"}, "bfb": "bf-4.9", "flavor": "f1",
                "maxUnavailable": 2, "nodeEffect": "NODE_EFFECT_AUTO"}}})
        );
    }
}
