//! `hostplanectl bfb ...`: BFB images.
use hostplane_proto::v1::{self, BfbSpec, Kind, Resource};

use super::resource::{self, new_meta};
use super::{Conn, Ctx, Out};
use crate::cli::{BfbCmd, BfbCreate};
use crate::error::Error;

pub async fn run(conn: &Conn, ctx: &Ctx, cmd: BfbCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        BfbCmd::Common(c) => resource::common(conn, ctx, Kind::Bfb, c, out).await,
        BfbCmd::Create(args) => {
            let items = match &args.source.file {
                Some(f) => resource::load(f, Some(Kind::Bfb)).await?,
                None => vec![from_flags(&args)],
            };
            resource::create(&mut conn.client().await?, ctx, items, out).await
        }
    }
}

pub fn from_flags(args: &BfbCreate) -> Resource {
    let s = |o: &Option<String>| o.clone().unwrap_or_default();
    v1::Bfb {
        metadata: new_meta(
            args.source.name.as_deref().unwrap_or_default(),
            &args.source.labels,
        ),
        spec: Some(BfbSpec {
            url: s(&args.url),
            sha256: s(&args.sha256),
            version: s(&args.image_version),
            size_bytes: args.size.unwrap_or(0),
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
    fn bfb_from_flags() {
        let cli = Cli::try_parse_from([
            "hostplanectl",
            "bfb",
            "create",
            "bf-4.9",
            "--url",
            "http://x/bf.bfb",
            "--sha256",
            "ab12",
            "--version",
            "4.9.0",
            "--size",
            "1024",
        ])
        .unwrap();
        let Command::Bfb {
            cmd: BfbCmd::Create(args),
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(
            serde_json::to_value(from_flags(&args)).unwrap(),
            serde_json::json!({"bfb": {"metadata": {"name": "bf-4.9"},
                "spec": {"url": "http://x/bf.bfb", "sha256": "ab12", "version": "4.9.0", "sizeBytes": "1024"}}})
        );
    }
}
