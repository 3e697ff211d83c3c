//! The command line: `hostplanectl [global flags] <noun> <verb> ...`.
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use hostplane_proto::v1::{PowerBundle, PowerElement, PowerLimit, power_limit};

use crate::output::Format;

pub const DEFAULT_SERVER: &str = "http://127.0.0.1:50051";
const GLOBAL: &str = "Global options";

/// hostplanectl: manage a hostplane coordinator (nodes, devices, BFBs, flavors, deployments, DPUs, power topologies and policies).
#[derive(Debug, Parser)]
#[command(name = "hostplanectl", version)]
pub struct Cli {
    /// Coordinator admin API address.
    #[arg(long, global = true, help_heading = GLOBAL, env = "HOSTPLANE_SERVER", default_value = DEFAULT_SERVER)]
    pub server: String,
    /// Output format.
    #[arg(short = 'o', long = "output", global = true, help_heading = GLOBAL, value_enum, default_value_t = Format::Table)]
    pub output: Format,
    /// Limit for the whole command, e.g. 30s, 5m (default: 30s; none for watch and --wait).
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// Bearer token sent as `authorization` metadata, if set.
    #[arg(long, global = true, help_heading = GLOBAL, env = "HOSTPLANE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA certificate (PEM) the coordinator's certificate must be signed by (https:// servers).
    #[arg(long, global = true, help_heading = GLOBAL, env = "HOSTPLANE_CA_FILE", value_name = "FILE")]
    pub ca_file: Option<std::path::PathBuf>,
    /// Client certificate (PEM) for coordinators that require one (mTLS); with --key-file.
    #[arg(long, global = true, help_heading = GLOBAL, env = "HOSTPLANE_CERT_FILE", value_name = "FILE", requires = "key_file")]
    pub cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, global = true, help_heading = GLOBAL, env = "HOSTPLANE_KEY_FILE", value_name = "FILE", requires = "cert_file")]
    pub key_file: Option<std::path::PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hosts (a node's name is its agent's identity).
    Node {
        #[command(subcommand)]
        cmd: NodeCmd,
    },
    /// Physical DPUs, each on a node.
    Device {
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// BFB images (immutable).
    Bfb {
        #[command(subcommand)]
        cmd: BfbCmd,
    },
    /// DPU configurations (immutable).
    Flavor {
        #[command(subcommand)]
        cmd: FlavorCmd,
    },
    /// Groups of devices provisioned with one bfb and flavor.
    Deployment {
        #[command(subcommand)]
        cmd: DeploymentCmd,
    },
    /// Provisioned DPUs (generated, one per device matched by a deployment).
    Dpu {
        #[command(subcommand)]
        cmd: DpuCmd,
    },
    /// Power topologies: feeds, PDUs, racks and nodes, each with a budget in watts.
    Topology {
        #[command(subcommand)]
        cmd: TopologyCmd,
    },
    /// Power policies: limits per node, GPU, CPU and memory; named bundles.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Live power: draw against cap per node and GPU.
    Power {
        #[command(subcommand)]
        cmd: PowerCmd,
    },
    /// The coordinator cluster: the store backend and schema version, the leader and its epoch, every replica.
    #[command(visible_alias = "cluster")]
    Status,
    /// Create the resources in a file, of any kind (in dependency order).
    Create(FileArgs),
    /// Create or update the resources in a file, of any kind (in dependency order).
    Apply(FileArgs),
    /// Update the resources in a file, of any kind.
    Update(FileArgs),
    /// Make certificates for mTLS (a CA, the coordinator's, agents', admins'), for a demo or a lab.
    Certs {
        #[command(subcommand)]
        cmd: CertsCmd,
    },
    /// Admin API bearer tokens in the coordinator's auth.tokens_file (stored hashed; reload the coordinator (SIGHUP) to apply).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Print a shell completion script.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Commands that run until the server answers a condition, with no default time limit.
    pub fn is_streaming(&self) -> bool {
        let common = |c: &CommonCmd| match c {
            CommonCmd::Get(a) => a.watch,
            CommonCmd::List(a) => a.watch,
            CommonCmd::Watch(_) => true,
            CommonCmd::Apply(_) | CommonCmd::Update(_) | CommonCmd::Delete(_) => false,
        };
        match self {
            Command::Node {
                cmd: NodeCmd::Common(c),
            }
            | Command::Device {
                cmd: DeviceCmd::Common(c),
            }
            | Command::Bfb {
                cmd: BfbCmd::Common(c),
            }
            | Command::Flavor {
                cmd: FlavorCmd::Common(c),
            }
            | Command::Deployment {
                cmd: DeploymentCmd::Common(c),
            }
            | Command::Dpu {
                cmd: DpuCmd::Common(c),
            }
            | Command::Topology {
                cmd: TopologyCmd::Common(c),
            }
            | Command::Policy {
                cmd: PolicyCmd::Common(c),
            } => common(c),
            Command::Dpu {
                cmd: DpuCmd::Ready(a),
            } => a.wait,
            Command::Power {
                cmd: PowerCmd::Top(a),
            } => a.watch,
            _ => false,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TopologyCmd {
    #[command(flatten)]
    Common(CommonCmd),
    /// Create or update the topology in a file (YAML or JSON), checked here first.
    Import(TopologyFile),
    /// Check a topology file without a server (structure, levels, budgets, minimums).
    Validate(TopologyFile),
    /// The tree, indented, with budget, minimum, allocated and draw per element.
    Show(NameArg),
}

#[derive(Debug, Args)]
pub struct TopologyFile {
    /// File holding the Topology (or several) in YAML or JSON; `-` reads stdin.
    #[arg(value_name = "FILE")]
    pub file: String,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCmd {
    #[command(flatten)]
    Common(CommonCmd),
    /// Create a power policy.
    Create(PolicyCreate),
    /// Make BUNDLE the policy's active bundle (`--none`: back to its own limits).
    SetBundle(SetBundleArgs),
}

#[derive(Debug, Args)]
pub struct PolicyCreate {
    #[command(flatten)]
    pub source: CreateSource,
    /// Node the policy applies to (repeatable).
    #[arg(long = "node", value_name = "NODE", conflicts_with = "file")]
    pub nodes: Vec<String>,
    /// Deployment whose Dpus' nodes the policy applies to (repeatable).
    #[arg(long = "deployment", value_name = "DEPLOYMENT", conflicts_with = "file")]
    pub deployments: Vec<String>,
    /// A limit: `node=9000W`, `gpu=80%`, `cpu=300W`, `memory=50%` (repeatable, one per element).
    #[arg(long = "limit", value_name = "ELEMENT=VALUE", value_parser = parse_limit, conflicts_with = "file")]
    pub limits: Vec<PowerLimit>,
    /// A named bundle of limits: `MaxQ:node=7000W,gpu=70%` (repeatable).
    #[arg(long = "bundle", value_name = "NAME:LIMITS", value_parser = parse_bundle, conflicts_with = "file")]
    pub bundles: Vec<PowerBundle>,
    /// The bundle in force (its limits replace --limit).
    #[arg(long, value_name = "BUNDLE", conflicts_with = "file")]
    pub active_bundle: Option<String>,
    /// Where several policies reach a node, the highest priority wins.
    #[arg(long, allow_negative_numbers = true, conflicts_with = "file")]
    pub priority: Option<i32>,
    /// Node cap the agent applies on its own after losing the coordinator for the lease.
    #[arg(long, value_name = "WATTS", conflicts_with = "file")]
    pub safe_watts: Option<f64>,
    /// How long the agent keeps the coordinator's caps without hearing from it (default 60s).
    #[arg(long, value_name = "DURATION", value_parser = parse_lease, conflicts_with = "file")]
    pub lease: Option<u32>,
}

#[derive(Debug, Args)]
pub struct SetBundleArgs {
    /// Policy name.
    pub name: String,
    /// Name of one of the policy's bundles.
    #[arg(required_unless_present = "none")]
    pub bundle: Option<String>,
    /// No bundle: the policy's own limits apply.
    #[arg(long, conflicts_with = "bundle")]
    pub none: bool,
}

/// `node=9000W`, `node=9000`, `gpu=80%`.
pub fn parse_limit(s: &str) -> Result<PowerLimit, String> {
    let Some((el, v)) = s.split_once('=') else {
        return Err(format!(
            "expected ELEMENT=VALUE (e.g. node=9000W, gpu=80%), got {s:?}"
        ));
    };
    let element = match el.trim().to_ascii_lowercase().as_str() {
        "node" => PowerElement::Node,
        "gpu" => PowerElement::Gpu,
        "cpu" => PowerElement::Cpu,
        "memory" | "mem" | "dram" => PowerElement::Memory,
        other => return Err(format!("unknown element {other:?} (node, gpu, cpu or memory)")),
    };
    let v = v.trim();
    let (num, percent) = match v.strip_suffix('%') {
        Some(n) => (n, true),
        None => (v.strip_suffix(['W', 'w']).unwrap_or(v), false),
    };
    let x: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{v:?} is not a number of watts (9000W) or a percent (80%)"))?;
    Ok(PowerLimit {
        element: element as i32,
        value: Some(if percent {
            power_limit::Value::Percent(x)
        } else {
            power_limit::Value::Watts(x)
        }),
    })
}

/// `MaxQ:node=7000W,gpu=70%` (or `MaxP` alone, with no limits).
pub fn parse_bundle(s: &str) -> Result<PowerBundle, String> {
    let (name, rest) = s.split_once(':').unwrap_or((s, ""));
    if name.is_empty() {
        return Err(format!("expected NAME:ELEMENT=VALUE,..., got {s:?}"));
    }
    let limits = rest
        .split(',')
        .filter(|p| !p.trim().is_empty())
        .map(parse_limit)
        .collect::<Result<_, _>>()?;
    Ok(PowerBundle {
        name: name.to_string(),
        limits,
    })
}

/// Whole seconds, 1 to 24 hours.
fn parse_lease(s: &str) -> Result<u32, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 || d.as_secs() > 86_400 {
        return Err(format!("{s:?}: the lease is whole seconds from 1s to 24h"));
    }
    Ok(d.as_secs() as u32)
}

#[derive(Debug, Subcommand)]
pub enum PowerCmd {
    /// Per-node draw, the cap the policy engine gave and the cap the agent
    /// enforces, sorted; topology elements' budgets below.
    Top(PowerTopArgs),
}

#[derive(Debug, clap::Args)]
pub struct PowerTopArgs {
    /// Only these nodes (default: every node with telemetry or a cap).
    pub nodes: Vec<String>,
    #[arg(long, value_enum, default_value_t = TopSort::Draw)]
    pub sort: TopSort,
    /// One row per GPU under each node.
    #[arg(long)]
    pub gpus: bool,
    /// Refresh until interrupted.
    #[arg(short, long)]
    pub watch: bool,
    /// Refresh period with --watch.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "2s")]
    pub interval: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TopSort {
    /// Highest draw first.
    Draw,
    /// Highest cap first.
    Cap,
    /// Highest draw as a share of the cap first.
    Use,
    Name,
}

/// Verbs every noun has.
#[derive(Debug, Subcommand)]
pub enum CommonCmd {
    /// Show one object.
    Get(GetArgs),
    /// List objects.
    List(ListArgs),
    /// Stream changes: the current objects first, then each change as it happens.
    Watch(WatchArgs),
    /// Create or update from a file (updates carry the stored resource_version).
    Apply(FileArgs),
    /// Replace spec and labels from a file (its resourceVersion, if set, must match).
    Update(FileArgs),
    /// Delete an object (gracefully: dependents first, agent work cancelled).
    Delete(DeleteArgs),
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    #[command(flatten)]
    Common(CommonCmd),
    /// Create a node.
    Create(NodeCreate),
    /// Approve maintenance: Dpus held in NodeEffect on this node proceed.
    Approve(NameArg),
    /// Tell the coordinator the node was rebooted, or with --power-cycled power-cycled (reboot
    /// method `external`, or an `agent` node whose agent could not power-cycle it).
    #[command(alias = "rebooted")]
    MarkRebooted(MarkRebootedArgs),
    /// Is the node waiting for a reboot?
    RebootStatus(CheckArgs),
    /// Create a node and its devices in one call, from a file.
    CreateWithDevices(FileArgs),
}

#[derive(Debug, Subcommand)]
pub enum DeviceCmd {
    #[command(flatten)]
    Common(CommonCmd),
    /// Create a device.
    Create(DeviceCreate),
}

#[derive(Debug, Subcommand)]
pub enum BfbCmd {
    #[command(flatten)]
    Common(CommonCmd),
    /// Create a bfb.
    Create(BfbCreate),
}

#[derive(Debug, Subcommand)]
pub enum FlavorCmd {
    #[command(flatten)]
    Common(CommonCmd),
    /// Create a flavor.
    Create(FlavorCreate),
}

#[derive(Debug, Subcommand)]
pub enum DeploymentCmd {
    #[command(flatten)]
    Common(CommonCmd),
    /// Create a deployment.
    Create(DeploymentCreate),
    /// Point a deployment at another bfb and/or flavor (its Dpus are reprovisioned).
    SetImage(SetImageArgs),
}

#[derive(Debug, Subcommand)]
pub enum DpuCmd {
    #[command(flatten)]
    Common(CommonCmd),
    /// Reprovision a dpu (it walks the state machine again).
    Reprovision(NameArg),
    /// Is the dpu ready? With --wait, wait until it is Ready (exit 0) or in Error (exit 1).
    Ready(ReadyArgs),
}

#[derive(Debug, Args)]
pub struct NameArg {
    /// Object name.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Object name.
    pub name: String,
    /// Keep watching the object after printing it.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only objects with this label (repeatable; all must match).
    #[arg(short = 'l', long = "selector", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub selector: Vec<(String, String)>,
    /// Only devices / dpus on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Keep watching after printing the list.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Only this object.
    pub name: Option<String>,
    /// Only objects with this label (repeatable; all must match).
    #[arg(short = 'l', long = "selector", value_name = "KEY=VALUE", value_parser = parse_kv)]
    pub selector: Vec<(String, String)>,
    /// Only devices / dpus on this node.
    #[arg(long)]
    pub node: Option<String>,
    /// Stream the changes after this store version instead of listing first (0 = current state as ADDED).
    #[arg(long, value_name = "VERSION")]
    pub from_version: Option<u64>,
}

#[derive(Debug, Args)]
pub struct FileArgs {
    /// File holding a Resource (or a list of them) in JSON or YAML; `-` reads stdin.
    #[arg(short = 'f', long = "filename", value_name = "FILE")]
    pub file: String,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Object name.
    pub name: String,
    /// Remove at once with all dependents, without waiting for agents.
    #[arg(long)]
    pub force: bool,
    /// Only delete if the object is still at this version.
    #[arg(long, value_name = "VERSION")]
    pub resource_version: Option<u64>,
}

#[derive(Debug, Args)]
pub struct MarkRebootedArgs {
    /// Node name.
    pub name: String,
    /// The host was power-cycled (its power went off and on), not only rebooted: required
    /// while `node reboot-status` says POWER-CYCLE true.
    #[arg(long)]
    pub power_cycled: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Node name.
    pub name: String,
    /// Exit 0 if waiting for reboot, 3 if not.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct ReadyArgs {
    /// Dpu name.
    pub name: String,
    /// Wait until the dpu is Ready (exit 0) or in Error (exit 1); see --timeout (exit 124).
    #[arg(long, conflicts_with = "check")]
    pub wait: bool,
    /// Exit 0 if ready, 3 if not.
    #[arg(long)]
    pub check: bool,
}

#[derive(Debug, Args)]
pub struct SetImageArgs {
    /// Deployment name.
    pub deployment: String,
    /// New bfb (name of a Bfb).
    #[arg(long, required_unless_present = "flavor")]
    pub bfb: Option<String>,
    /// New flavor (name of a Flavor).
    #[arg(long)]
    pub flavor: Option<String>,
}

/// `NAME` or `-f FILE`, shared by every `create`.
#[derive(Debug, Args)]
pub struct CreateSource {
    /// Name of the new object (omit with -f).
    #[arg(required_unless_present = "file")]
    pub name: Option<String>,
    /// Create from a file instead of flags (JSON or YAML Resource(s); `-` reads stdin).
    #[arg(short = 'f', long = "filename", value_name = "FILE", conflicts_with = "name")]
    pub file: Option<String>,
    /// Label to set (repeatable).
    #[arg(short = 'l', long = "label", value_name = "KEY=VALUE", value_parser = parse_kv, conflicts_with = "file")]
    pub labels: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootMethodArg {
    /// The upstream system reboots the host and calls `node rebooted`.
    External,
    /// The agent reboots the host itself.
    Agent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum NodeEffectArg {
    /// Wait for `node approve` before touching a node.
    Hold,
    /// Proceed without approval.
    Auto,
}

#[derive(Debug, Args)]
pub struct NodeCreate {
    #[command(flatten)]
    pub source: CreateSource,
    /// Who reboots the host after a flash (default: external).
    #[arg(long, value_enum, conflicts_with = "file")]
    pub reboot_method: Option<RebootMethodArg>,
}

#[derive(Debug, Args)]
pub struct DeviceCreate {
    #[command(flatten)]
    pub source: CreateSource,
    /// Node that holds the DPU.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub node: Option<String>,
    /// rshim device name on the host, e.g. rshim0.
    #[arg(long, conflicts_with = "file")]
    pub rshim: Option<String>,
    /// DPU serial number.
    #[arg(long, conflicts_with = "file")]
    pub serial: Option<String>,
    /// PCI address of the DPU's PF0, e.g. 0000:04:00.0.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "file")]
    pub pci: Option<String>,
    /// Address of the DPU's BMC.
    #[arg(long, value_name = "ADDRESS", conflicts_with = "file")]
    pub bmc: Option<String>,
}

#[derive(Debug, Args)]
pub struct BfbCreate {
    #[command(flatten)]
    pub source: CreateSource,
    /// http(s):// (or file:// in labs) URL of the image.
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub url: Option<String>,
    /// Lower-case hex SHA-256 of the whole file.
    #[arg(
        long,
        value_name = "HEX",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub sha256: Option<String>,
    /// Image version, e.g. 4.9.0.
    #[arg(long = "version", required_unless_present = "file", conflicts_with = "file")]
    pub image_version: Option<String>,
    /// Size in bytes, if known.
    #[arg(long, value_name = "BYTES", conflicts_with = "file")]
    pub size: Option<u64>,
}

#[derive(Debug, Args)]
pub struct FlavorCreate {
    #[command(flatten)]
    pub source: CreateSource,
    /// bf.cfg parameter (repeatable).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv, conflicts_with = "file")]
    pub bf_cfg: Vec<(String, String)>,
    /// NIC firmware (mlxconfig) parameter (repeatable).
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_kv, conflicts_with = "file")]
    pub nic_fw: Vec<(String, String)>,
    /// Number of SR-IOV VFs on PF0.
    #[arg(long, value_name = "N", conflicts_with = "file")]
    pub num_vfs: Option<u32>,
    /// MTU of the host network.
    #[arg(long, conflicts_with = "file")]
    pub mtu: Option<u32>,
    /// NIC firmware parameters for some DPUs (repeatable): DEVICE is `*` (every DPU), a Device
    /// name, serial, PCI address or model; `:power-cycle` when they need a host power cycle.
    #[arg(long, value_name = "DEVICE:NAME=V[,NAME=V...][:power-cycle]", value_parser = parse_nvconfig, conflicts_with = "file")]
    pub nvconfig: Vec<NvconfigFlag>,
    /// DPU OS kernel parameter, written to grub (repeatable).
    #[arg(long, value_name = "PARAM", conflicts_with = "file")]
    pub kernel_param: Vec<String>,
    /// DPU OS sysctl setting (repeatable).
    #[arg(long, value_name = "KEY=VALUE", conflicts_with = "file")]
    pub sysctl: Vec<String>,
    /// A file written on the DPU OS with LOCALFILE's content (repeatable); `PATH+=...` appends
    /// instead of replacing; mode (octal) and owner (user[:group]) default to 0644 and root:root.
    #[arg(long, value_name = "PATH=LOCALFILE[:MODE[:OWNER]]", value_parser = parse_config_file, conflicts_with = "file")]
    pub config_file: Vec<ConfigFileFlag>,
    /// A shell script (local file) the DPU OS runs once at first boot to configure OVS.
    #[arg(long, value_name = "LOCALFILE", conflicts_with = "file")]
    pub ovs_script: Option<String>,
    /// A registry mirror for the DPU's containerd (an http(s) URL).
    #[arg(long, value_name = "URL", conflicts_with = "file")]
    pub containerd_registry: Option<String>,
}

/// One `--nvconfig`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NvconfigFlag {
    pub device: String,
    pub parameters: Vec<String>,
    pub power_cycle: bool,
}

/// `DEVICE:NAME=V,NAME=V[:power-cycle]`; DEVICE may itself hold `:` (a PCI address).
pub fn parse_nvconfig(s: &str) -> Result<NvconfigFlag, String> {
    let (rest, power_cycle) = match s.strip_suffix(":power-cycle") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let Some((device, params)) = rest.rsplit_once(':') else {
        return Err(format!(
            "expected DEVICE:NAME=VALUE[,NAME=VALUE...][:power-cycle] (`*` for every DPU), got {s:?}"
        ));
    };
    let parameters: Vec<String> = params.split(',').map(str::to_string).collect();
    if let Some(p) = parameters
        .iter()
        .find(|p| !matches!(p.split_once('='), Some((n, v)) if !n.is_empty() && !v.is_empty()))
    {
        return Err(format!("parameter {p:?} in {s:?} is not NAME=VALUE"));
    }
    Ok(NvconfigFlag {
        device: device.to_string(),
        parameters,
        power_cycle,
    })
}

/// One `--config-file`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileFlag {
    pub path: String,
    pub append: bool,
    pub local: String,
    pub mode: String,
    pub owner: String,
}

/// `PATH=LOCALFILE[:MODE[:OWNER]]` or `PATH+=...` (append). LOCALFILE may not hold `:`.
pub fn parse_config_file(s: &str) -> Result<ConfigFileFlag, String> {
    let Some((path, rest)) = s.split_once('=') else {
        return Err(format!("expected PATH=LOCALFILE[:MODE[:OWNER]], got {s:?}"));
    };
    let (path, append) = match path.strip_suffix('+') {
        Some(p) => (p, true),
        None => (path, false),
    };
    if !path.starts_with('/') {
        return Err(format!("{path:?} is not an absolute path on the DPU"));
    }
    let mut parts = rest.splitn(3, ':');
    let local = parts.next().unwrap_or_default();
    if local.is_empty() {
        return Err(format!("no LOCALFILE in {s:?}"));
    }
    let mode = parts.next().unwrap_or_default();
    let octal = (3..=4).contains(&mode.len()) && mode.bytes().all(|b| (b'0'..=b'7').contains(&b));
    if !mode.is_empty() && !octal {
        return Err(format!("mode {mode:?} is not octal (e.g. 0644)"));
    }
    Ok(ConfigFileFlag {
        path: path.to_string(),
        append,
        local: local.to_string(),
        mode: mode.to_string(),
        owner: parts.next().unwrap_or_default().to_string(),
    })
}

#[derive(Debug, Args)]
pub struct DeploymentCreate {
    #[command(flatten)]
    pub source: CreateSource,
    /// Bfb to install (name of a Bfb).
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub bfb: Option<String>,
    /// Flavor to configure (name of a Flavor).
    #[arg(long, required_unless_present = "file", conflicts_with = "file")]
    pub flavor: Option<String>,
    /// Device label to match (repeatable; empty matches every device).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_kv, conflicts_with = "file")]
    pub selector: Vec<(String, String)>,
    /// At most this many Dpus (re)provisioned at once (default 1).
    #[arg(long, value_name = "N", conflicts_with = "file")]
    pub max_unavailable: Option<u32>,
    /// Whether nodes wait for `node approve` (default: hold).
    #[arg(long, value_enum, conflicts_with = "file")]
    pub node_effect: Option<NodeEffectArg>,
    /// PowerPolicy to apply.
    #[arg(long, value_name = "NAME", conflicts_with = "file")]
    pub power_policy: Option<String>,
}

/// `KEY=VALUE` with a non-empty key of letters, digits and `-_./`; the value may be empty.
pub fn parse_kv(s: &str) -> Result<(String, String), String> {
    let Some((k, v)) = s.split_once('=') else {
        return Err(format!("expected KEY=VALUE, got {s:?}"));
    };
    if k.is_empty() {
        return Err(format!("empty key in {s:?}"));
    }
    if let Some(c) = k
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "-_./".contains(*c)))
    {
        return Err(format!(
            "key {k:?} contains {c:?} (allowed: letters, digits, - _ . /)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (e.g. 30s, 5m, 1h)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("hostplanectl").chain(args.iter().copied()))
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn kv_parser_table() {
        let ok = [
            ("rack=r1", ("rack", "r1")),
            ("a=", ("a", "")),
            ("x.io/k=a=b", ("x.io/k", "a=b")),
        ];
        for (input, (k, v)) in ok {
            assert_eq!(parse_kv(input), Ok((k.to_string(), v.to_string())), "{input}");
        }
        for bad in ["k", "=v", "", "a b=c", "k!=v"] {
            assert!(parse_kv(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn node_create_from_flags() {
        let cli = parse(&[
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
            cmd: NodeCmd::Create(c),
        } = cli.command
        else {
            panic!("{cli:?}")
        };
        assert_eq!(c.source.name.as_deref(), Some("n1"));
        assert_eq!(c.reboot_method, Some(RebootMethodArg::Agent));
        assert_eq!(c.source.labels, vec![("rack".to_string(), "r1".to_string())]);
        assert_eq!(cli.output, Format::Table);
        assert_eq!(cli.server, DEFAULT_SERVER);
    }

    #[test]
    fn bad_label_is_a_usage_error() {
        let e = parse(&["node", "list", "-l", "k"]).unwrap_err();
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("expected KEY=VALUE"), "{e}");
    }

    #[test]
    fn create_needs_a_name_or_a_file_but_not_both() {
        assert!(parse(&["node", "create"]).is_err());
        assert!(parse(&["node", "create", "n1", "-f", "x.yaml"]).is_err());
        assert!(parse(&["node", "create", "-f", "x.yaml", "--reboot-method", "agent"]).is_err());
        assert!(parse(&["node", "create", "-f", "x.yaml"]).is_ok());
        assert!(
            parse(&["bfb", "create", "b1", "--url", "http://x"]).is_err(),
            "sha256 and version required"
        );
        let cli = parse(&[
            "bfb",
            "create",
            "b1",
            "--url",
            "u",
            "--sha256",
            "h",
            "--version",
            "4.9.0",
        ])
        .unwrap();
        let Command::Bfb {
            cmd: BfbCmd::Create(b),
        } = cli.command
        else {
            panic!()
        };
        assert_eq!(b.image_version.as_deref(), Some("4.9.0"));
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["dpu", "ready", "d1", "--wait", "--timeout", "2m", "-o", "json"]).unwrap();
        assert_eq!(cli.timeout, Some(Duration::from_secs(120)));
        assert_eq!(cli.output, Format::Json);
        assert!(cli.command.is_streaming());
        let cli = parse(&["--server", "http://h:1", "node", "get", "n1"]).unwrap();
        assert_eq!(cli.server, "http://h:1");
        assert!(!cli.command.is_streaming());
        assert!(parse(&["node", "get", "n1", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn set_image_needs_bfb_or_flavor() {
        assert!(parse(&["deployment", "set-image", "d1"]).is_err());
        assert!(parse(&["deployment", "set-image", "d1", "--flavor", "f2"]).is_ok());
        assert!(parse(&["deployment", "set-image", "d1", "--bfb", "b2"]).is_ok());
    }
}

/// `hostplanectl certs ...`: PEM files, keys 0600; existing files are kept unless --force.
#[derive(Debug, Subcommand)]
pub enum CertsCmd {
    /// A new CA: DIR/ca.crt and DIR/ca.key.
    Ca {
        #[arg(long, value_name = "DIR")]
        out: std::path::PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "hostplane CA")]
        name: String,
        #[arg(long, default_value_t = crate::certs::CA_DAYS)]
        days: u32,
        #[arg(long)]
        force: bool,
    },
    /// The coordinator's certificate: server.crt/.key (names and IPs agents connect to).
    Server {
        #[command(flatten)]
        common: CertArgs,
        /// DNS name of the coordinator (repeatable; the first is the CN).
        #[arg(long = "name", value_name = "HOST")]
        names: Vec<String>,
        /// IP address of the coordinator (repeatable).
        #[arg(long = "ip", value_name = "IP")]
        ips: Vec<std::net::IpAddr>,
    },
    /// An agent's client certificate: agent-NODE.crt/.key, CN = the node name.
    Agent {
        #[command(flatten)]
        common: CertArgs,
        /// The node this agent runs on (its Node name).
        #[arg(long)]
        node: String,
    },
    /// An admin client certificate (hostplanectl --cert-file): client-NAME.crt/.key.
    Client {
        #[command(flatten)]
        common: CertArgs,
        #[arg(long)]
        name: String,
    },
}

/// `hostplanectl token ...`: edits a tokens file (no coordinator needed).
#[derive(Debug, Subcommand)]
pub enum TokenCmd {
    /// A new random token, printed once on stdout; its SHA-256 is added to the file (created 0600 if missing).
    Create {
        /// Who the token is for (shown in the audit log).
        name: String,
        #[arg(long, value_enum)]
        role: TokenRole,
        /// The coordinator's auth.tokens_file.
        #[arg(long, value_name = "FILE")]
        tokens_file: std::path::PathBuf,
    },
    /// The names and roles in the file (never tokens: only their hashes are stored).
    List {
        #[arg(long, value_name = "FILE")]
        tokens_file: std::path::PathBuf,
    },
    /// Remove a token by name.
    Revoke {
        name: String,
        #[arg(long, value_name = "FILE")]
        tokens_file: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum TokenRole {
    /// Read and watch.
    Viewer,
    /// Viewer + approve maintenance, mark rebooted, reprovision.
    Operator,
    /// Everything.
    Admin,
}

#[derive(Debug, Args)]
pub struct CertArgs {
    /// Directory holding ca.crt and ca.key.
    #[arg(long = "ca", value_name = "DIR")]
    pub ca: std::path::PathBuf,
    /// Where to write the files [default: the CA directory].
    #[arg(long, value_name = "DIR")]
    pub out: Option<std::path::PathBuf>,
    #[arg(long, default_value_t = crate::certs::LEAF_DAYS)]
    pub days: u32,
    /// Replace existing files.
    #[arg(long)]
    pub force: bool,
}
