//! `hostplanectl dpu ...`: provisioned DPUs, reprovisioning and readiness.
use hostplane_proto::v1::{DpuPhase, DpuReadiness, DpuRef, Kind, resource};

use super::resource as common;
use super::{Conn, Ctx, Out, emit, watch};
use crate::cli::{DpuCmd, ReadyArgs};
use crate::client::Client;
use crate::error::{Error, exit};
use crate::output::{self, Format, TableWriter};

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: DpuCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        DpuCmd::Common(c) => common::common(conn, ctx, Kind::Dpu, c, out).await,
        DpuCmd::Reprovision(a) => reprovision(&mut conn.client().await?, ctx, &a.name, out).await,
        DpuCmd::Ready(a) => ready(&mut conn.client().await?, ctx, &a, out).await,
    }
}

pub async fn reprovision(client: &mut Client, ctx: &Ctx, name: &str, out: &mut Out) -> Result<u8, Error> {
    let dpu = client
        .reprovision(DpuRef { name: name.into() })
        .await?
        .into_inner();
    emit(out, &output::action(&dpu.into(), "reprovisioning", ctx.format)?).await?;
    Ok(0)
}

/// Print the dpu's readiness. `--check`: exit 0 if ready, 3 if not. `--wait`:
/// follow the dpu until it is Ready (exit 0) or in Error ([`Error::DpuFailed`],
/// exit 1); the caller's `--timeout` bounds the wait (exit 124).
pub async fn ready(client: &mut Client, ctx: &Ctx, args: &ReadyArgs, out: &mut Out) -> Result<u8, Error> {
    let mut r = client
        .get_dpu_readiness(DpuRef {
            name: args.name.clone(),
        })
        .await?
        .into_inner();
    if args.wait && !is_settled(&r) {
        r = watch::until(client, Kind::Dpu, &args.name, |ev| {
            let Some(resource::Kind::Dpu(dpu)) = ev.resource.as_ref().and_then(|x| x.kind.as_ref()) else {
                return None;
            };
            let st = dpu.status.clone().unwrap_or_default();
            let r = DpuReadiness {
                ready: st.phase() == DpuPhase::Ready,
                phase: st.phase,
                message: st.message,
            };
            is_settled(&r).then_some(r)
        })
        .await?;
    }
    emit(out, &render(&args.name, &r, ctx.format)?).await?;
    if args.wait && r.phase() == DpuPhase::Error {
        return Err(Error::DpuFailed {
            dpu: args.name.clone(),
            message: r.message,
        });
    }
    Ok(if args.check && !r.ready {
        exit::CHECK_FAILED
    } else {
        exit::OK
    })
}

fn is_settled(r: &DpuReadiness) -> bool {
    r.ready || r.phase() == DpuPhase::Error
}

fn render(name: &str, r: &DpuReadiness, format: Format) -> Result<String, Error> {
    Ok(match format {
        Format::Table => {
            let mut t = TableWriter::new(["NAME", "READY", "PHASE", "MESSAGE"].map(String::from).to_vec());
            let message = if r.message.is_empty() {
                "-".to_string()
            } else {
                r.message.clone()
            };
            t.render(&[vec![
                name.to_string(),
                r.ready.to_string(),
                r.phase().display_name().into(),
                message,
            ]])
        }
        Format::Name => format!("dpu/{name}\n"),
        Format::Json | Format::Yaml => output::serialized(r, format)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_table_and_json() {
        let r = DpuReadiness {
            ready: false,
            phase: DpuPhase::OsInstalling as i32,
            message: "pushing BFB".into(),
        };
        assert_eq!(
            render("d1", &r, Format::Table).unwrap(),
            "NAME   READY   PHASE          MESSAGE\nd1     false   OSInstalling   pushing BFB\n"
        );
        let json: serde_json::Value = serde_json::from_str(&render("d1", &r, Format::Json).unwrap()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"phase": "DPU_PHASE_OS_INSTALLING", "message": "pushing BFB"})
        );
        assert_eq!(render("d1", &r, Format::Name).unwrap(), "dpu/d1\n");
        assert!(!is_settled(&r));
        assert!(is_settled(&DpuReadiness {
            phase: DpuPhase::Error as i32,
            ..r.clone()
        }));
        assert!(is_settled(&DpuReadiness { ready: true, ..r }));
    }
}
