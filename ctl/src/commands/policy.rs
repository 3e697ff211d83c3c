//! `hostplanectl policy ...`: power policies. `create` checks the policy's
//! structure here first (the coordinator's own checks, without the ones
//! against stored objects); `set-bundle` switches the active bundle with the
//! stored version as precondition, re-reading on a conflict.
use hostplane_proto::power::{check_policy, is_dns_label};
use hostplane_proto::v1::{self, Kind, PowerPolicySpec, Resource, UpdateRequest, resource};

use super::resource::{self as res, new_meta};
use super::{Conn, Ctx, Out, emit};
use crate::cli::{PolicyCmd, PolicyCreate, SetBundleArgs};
use crate::client::Client;
use crate::error::Error;
use crate::output;

/// Conflicting writers: re-read and retry this many times.
const SET_BUNDLE_TRIES: usize = 3;

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: PolicyCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        PolicyCmd::Common(c) => res::common(conn, ctx, Kind::PowerPolicy, c, out).await,
        PolicyCmd::Create(args) => {
            let (path, items) = match &args.source.file {
                Some(f) => (f.as_str(), res::load(f, Some(Kind::PowerPolicy)).await?),
                None => ("command line", vec![from_flags(&args)]),
            };
            for r in &items {
                check(path, r)?;
            }
            res::create(&mut conn.client().await?, ctx, items, out).await
        }
        PolicyCmd::SetBundle(args) => set_bundle(&mut conn.client().await?, ctx, &args, out).await,
    }
}

pub fn from_flags(args: &PolicyCreate) -> Resource {
    v1::PowerPolicy {
        metadata: new_meta(
            args.source.name.as_deref().unwrap_or_default(),
            &args.source.labels,
        ),
        spec: Some(PowerPolicySpec {
            nodes: args.nodes.clone(),
            deployments: args.deployments.clone(),
            limits: args.limits.clone(),
            bundles: args.bundles.clone(),
            active_bundle: args.active_bundle.clone().unwrap_or_default(),
            priority: args.priority.unwrap_or(0),
            safe_node_watts: args.safe_watts.unwrap_or(0.0),
            cap_lease_seconds: args.lease.unwrap_or(0),
        }),
        status: None,
    }
    .into()
}

/// The structural checks of the coordinator (not: that the targets exist).
pub fn check(path: &str, r: &Resource) -> Result<(), Error> {
    let fail = |reason: String| Error::InvalidInput {
        path: path.into(),
        reason,
    };
    let Some(resource::Kind::PowerPolicy(p)) = &r.kind else {
        return Ok(());
    };
    if !is_dns_label(r.name()) {
        return Err(fail(format!(
            "powerpolicy.metadata.name {:?}: must be a DNS label: lower-case letters, digits, '-' and '.', \
             starting and ending with a letter or digit, at most 63 characters",
            r.name()
        )));
    }
    check_policy("powerpolicy", &p.spec.clone().unwrap_or_default()).map_err(|e| fail(e.to_string()))
}

/// Make `bundle` active (or none); prints `powerpolicy/p1 bundle MaxQ active`.
pub async fn set_bundle(
    client: &mut Client,
    ctx: &Ctx,
    args: &SetBundleArgs,
    out: &mut Out,
) -> Result<u8, Error> {
    let want = if args.none {
        String::new()
    } else {
        args.bundle.clone().unwrap_or_default()
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let stored = res::fetch(client, Kind::PowerPolicy, &args.name).await?;
        let Some(resource::Kind::PowerPolicy(mut p)) = stored.kind.clone() else {
            return Err(Error::Usage {
                reason: format!(
                    "the server answered a {} for powerpolicy {}",
                    stored.kind().noun(),
                    args.name
                ),
            });
        };
        let spec = p.spec.get_or_insert_default();
        if !want.is_empty() && !spec.bundles.iter().any(|b| b.name == want) {
            let names: Vec<&str> = spec.bundles.iter().map(|b| b.name.as_str()).collect();
            return Err(Error::InvalidInput {
                path: format!("powerpolicy {}", args.name),
                reason: if names.is_empty() {
                    format!("no bundle {want:?}: the policy has no bundles")
                } else {
                    format!("no bundle {want:?} (bundles: {})", names.join(", "))
                },
            });
        }
        let what = if want.is_empty() {
            "bundle none: its own limits apply".to_string()
        } else {
            format!("bundle {want} active")
        };
        if spec.active_bundle == want {
            emit(
                out,
                &output::action(&stored, &format!("{what} (unchanged)"), ctx.format)?,
            )
            .await?;
            return Ok(0);
        }
        spec.active_bundle = want.clone();
        // The stored version is the precondition: a concurrent change is not overwritten.
        match client
            .update(UpdateRequest {
                resource: Some(p.into()),
                update_mask: None,
            })
            .await
        {
            Ok(updated) => {
                emit(out, &output::action(&updated.into_inner(), &what, ctx.format)?).await?;
                return Ok(0);
            }
            Err(status) if status.code() == tonic::Code::Aborted && tries < SET_BUNDLE_TRIES => continue,
            Err(status) => return Err(status.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use hostplane_proto::v1::{PowerElement, power_limit};

    use super::*;
    use crate::cli::{Cli, Command};

    #[test]
    fn policy_from_flags() {
        let cli = Cli::try_parse_from([
            "hostplanectl",
            "policy",
            "create",
            "p1",
            "--node",
            "n1",
            "--deployment",
            "d1",
            "--limit",
            "node=9000W",
            "--limit",
            "gpu=80%",
            "--bundle",
            "MaxQ:node=7000W,gpu=70%",
            "--bundle",
            "MaxP",
            "--active-bundle",
            "MaxQ",
            "--priority",
            "-3",
            "--safe-watts",
            "5000",
            "--lease",
            "2m",
        ])
        .unwrap();
        let Command::Policy {
            cmd: PolicyCmd::Create(args),
        } = cli.command
        else {
            panic!()
        };
        let r = from_flags(&args);
        check("command line", &r).unwrap();
        assert_eq!(
            serde_json::to_value(&r).unwrap(),
            serde_json::json!({"powerPolicy": {"metadata": {"name": "p1"}, "spec": {
                "nodes": ["n1"], "deployments": ["d1"],
                "limits": [{"element": "POWER_ELEMENT_NODE", "watts": 9000.0},
                           {"element": "POWER_ELEMENT_GPU", "percent": 80.0}],
                "bundles": [{"name": "MaxQ", "limits": [{"element": "POWER_ELEMENT_NODE", "watts": 7000.0},
                                                        {"element": "POWER_ELEMENT_GPU", "percent": 70.0}]},
                            {"name": "MaxP"}],
                "activeBundle": "MaxQ", "priority": -3, "safeNodeWatts": 5000.0, "capLeaseSeconds": 120}}})
        );
    }

    #[test]
    fn limit_and_bundle_syntax() {
        use crate::cli::{parse_bundle, parse_limit};
        let l = parse_limit("memory=250").unwrap();
        assert_eq!(l.element(), PowerElement::Memory);
        assert_eq!(l.value, Some(power_limit::Value::Watts(250.0)));
        assert_eq!(
            parse_limit("cpu=40 %").unwrap().value,
            Some(power_limit::Value::Percent(40.0))
        );
        for (bad, want) in [
            ("gpu", "expected ELEMENT=VALUE"),
            ("fan=3W", "unknown element \"fan\""),
            ("gpu=lots", "\"lots\" is not a number"),
        ] {
            let e = parse_limit(bad).unwrap_err();
            assert!(e.contains(want), "{bad}: {e}");
        }
        assert!(parse_bundle(":gpu=1W").is_err());
        assert!(parse_bundle("Eco:gpu=x").is_err());
    }

    #[test]
    fn a_bad_policy_is_refused_before_connecting() {
        let cli =
            Cli::try_parse_from(["hostplanectl", "policy", "create", "p1", "--limit", "gpu=120%"]).unwrap();
        let Command::Policy {
            cmd: PolicyCmd::Create(args),
        } = cli.command
        else {
            panic!()
        };
        let e = check("command line", &from_flags(&args)).unwrap_err();
        assert_eq!(e.exit_code(), 6);
        assert_eq!(
            e.to_string(),
            "command line: powerpolicy.spec: a policy needs at least one target: spec.nodes or spec.deployments"
        );
    }
}
