//! `hostplane-agent network apply|diff|show`: the streamed code path, by hand,
//! with no coordinator. The file holds a Flavor's `host_network` (proto3
//! JSON/YAML mapping, e.g. `bridges: [{name: br-dpu, ports: [veth1]}]`), or a
//! list of `{dpu, pfPciAddress, network}` (read by [`super::file`]). See
//! docs/network.md.
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::model;
use super::netlink::{Netlink, RTPROT_HOSTPLANE};
use super::owned::Owned;
use super::reconcile;
use super::sysfs::Sysfs;
use super::{NetError, OWNER_TAG};

#[derive(clap::Args, Debug)]
pub struct NetworkArgs {
    #[command(subcommand)]
    pub cmd: NetworkCmd,
    /// sysfs root (SR-IOV and PCI lookups).
    #[arg(long, default_value = "/sys", global = true)]
    pub sysfs_root: PathBuf,
    /// Manage this named network namespace instead of the current one.
    #[arg(long, global = true)]
    pub netns: Option<String>,
    /// The record of addresses this tool added (so a later apply can remove them).
    #[arg(
        long,
        default_value = "/var/lib/hostplane-agent/network-standalone.json",
        global = true
    )]
    pub state: PathBuf,
}

#[derive(clap::Subcommand, Debug)]
pub enum NetworkCmd {
    /// Make the host match the file; print each change.
    Apply(FileArgs),
    /// Print what apply would change, changing nothing.
    Diff(FileArgs),
    /// Print what hostplane owns on this host, as YAML.
    Show,
}

#[derive(clap::Args, Debug)]
pub struct FileArgs {
    /// The desired network (YAML or JSON).
    #[arg(long, short)]
    pub file: PathBuf,
    /// The Dpu name the objects are owned for, when the file holds a single network.
    #[arg(long, default_value = "standalone")]
    pub dpu: String,
}

/// Read a desired-network file: a `HostNetwork`, or a list of `DpuNetwork`s
/// (see [`file`](super::file)).
pub use super::file::{FileError, load};

#[derive(Debug, Serialize)]
struct ShownBridge {
    name: String,
    owner: String,
    mtu: u32,
    up: bool,
    ports: Vec<String>,
    addresses: Vec<String>,
}

#[derive(Debug, Serialize)]
struct Shown {
    bridges: Vec<ShownBridge>,
    routes: Vec<String>,
}

async fn show(nl: &Netlink) -> Result<Shown, NetError> {
    let snap = nl.snapshot().await?;
    let mut bridges = Vec::new();
    for l in snap.links.iter().filter(|l| l.is_bridge) {
        let Some(owner) = l.alias.as_deref().and_then(|a| a.strip_prefix(OWNER_TAG)) else {
            continue;
        };
        bridges.push(ShownBridge {
            name: l.name.clone(),
            owner: owner.to_string(),
            mtu: l.mtu,
            up: l.up,
            ports: snap
                .links
                .iter()
                .filter(|p| p.controller == Some(l.index))
                .map(|p| p.name.clone())
                .collect(),
            addresses: snap
                .addrs
                .get(&l.index)
                .into_iter()
                .flatten()
                .map(|a| a.to_string())
                .collect(),
        });
    }
    let routes = snap
        .routes
        .iter()
        .map(|r| {
            let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
            let dev = r
                .oif
                .and_then(|i| snap.by_index(i))
                .map(|l| format!(" dev {}", l.name))
                .unwrap_or_default();
            format!(
                "{}{via}{dev} metric {} proto {RTPROT_HOSTPLANE}",
                r.destination, r.metric
            )
        })
        .collect();
    Ok(Shown { bridges, routes })
}

/// Exit status for a file that is unreadable, invalid, or refused by the
/// checks against the host (`EX_DATAERR`).
pub const EXIT_INVALID: u8 = 65;

/// Run the command; exit 0 on success, 1 on a failure, 65 for a bad file or
/// a desired state refused before anything was changed.
pub async fn run_network_cli(args: NetworkArgs) -> ExitCode {
    match run(args).await {
        Ok(code) => code,
        Err(e @ NetError::Invalid { .. }) => {
            let e = e.to_string();
            if e.contains(reconcile::NOTHING_ELSE) {
                eprintln!("hostplane-agent network: {e}");
            } else {
                eprintln!("hostplane-agent network: {e} (nothing was changed)");
            }
            ExitCode::from(EXIT_INVALID)
        }
        Err(e) => {
            eprintln!("hostplane-agent network: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: NetworkArgs) -> Result<ExitCode, NetError> {
    let nl = Netlink::open(args.netns.as_deref())?;
    let sysfs = Sysfs::new(&args.sysfs_root);
    let (file, dry_run) = match &args.cmd {
        NetworkCmd::Show => {
            let shown = show(&nl).await?;
            print!(
                "{}",
                serde_norway::to_string(&shown).expect("plain data serializes")
            );
            return Ok(ExitCode::SUCCESS);
        }
        NetworkCmd::Apply(f) => (f, false),
        NetworkCmd::Diff(f) => (f, true),
    };
    let nets = match load(&file.file, &file.dpu) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("hostplane-agent network: {e}");
            return Ok(ExitCode::from(EXIT_INVALID));
        }
    };
    let desired = model::build(&nets)?;
    reconcile::preflight(&sysfs, &desired).await?;
    let mut owned = Owned::load(&args.state)?;
    let before = owned.clone();
    let pass = reconcile::reconcile(&nl, &sysfs, &desired, &mut owned, dry_run).await;
    // What was added before a failure is recorded too.
    if !dry_run && owned != before {
        owned.save(&args.state)?;
    }
    let out = pass?;
    for l in &out.log {
        println!("{}{l}", if dry_run { "would " } else { "" });
    }
    if out.log.is_empty() {
        println!("no changes");
    }
    let failed: Vec<_> = out.objects.iter().filter(|o| o.error.is_some()).collect();
    for o in &failed {
        eprintln!("not applied: {}: {}", o.object, o.error.as_deref().unwrap_or(""));
    }
    Ok(if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}
