//! The container images, end to end: `scripts/images` builds both images from
//! the debug binaries (no base image), then the coordinator and two agents run
//! as containers on a private Docker network and provision a simulated DPU on
//! each node through the spine's flow: node + device, bfb, flavor, deployment,
//! the flash, the external reboot, Ready. The DPU simulators (FUSE) run on
//! this host and their mounts are bind-mounted into the agent containers; the
//! BFB is served over HTTP on the Docker network's gateway. The admin API is
//! reached through the coordinator's published port.
//!
//! Skips with a reason without a Docker engine, without FUSE, or when not root. Containers,
//! network and images are removed at the end, failed or not.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hostplane_proto::v1::{self, DpuPhase, NodeEffect, RebootMethod};
use hostplane_tests::{
    Admin, Proc, bin, connect_admin, fuse_unavailable, meta, wait_for, wait_phase, write_bfb,
};

const T: Duration = Duration::from_secs(60);

/// Run docker; Ok(stdout) or Err(the command and its stderr).
fn docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("docker {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn docker_unavailable() -> Option<String> {
    match docker(&["version", "--format", "{{.Server.Version}}"]) {
        Ok(_) => None,
        Err(e) => Some(format!("no usable Docker engine ({e})")),
    }
}

/// Everything the test made in Docker, removed on drop (also after a panic).
#[derive(Default)]
struct Cleanup {
    containers: Vec<String>,
    network: Option<String>,
    images: Vec<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            if std::thread::panicking() {
                // The containers' logs explain most failures.
                if let Ok(o) = Command::new("docker").args(["logs", "--tail", "40", c]).output() {
                    eprintln!(
                        "--- docker logs {c} ---\n{}{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o.stderr)
                    );
                }
            }
            let _ = docker(&["rm", "-f", "-v", c]);
        }
        if let Some(n) = &self.network {
            let _ = docker(&["network", "rm", n]);
        }
        for i in &self.images {
            let _ = docker(&["rmi", "-f", i]);
        }
    }
}

fn inspect(what: &str, format: &str) -> String {
    docker(&["inspect", "-f", format, what]).unwrap()
}

/// Serve `dir` over HTTP on `ip` (the Docker network's gateway, reachable from the containers).
async fn serve_on(ip: IpAddr, dir: PathBuf) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .unwrap_or_else(|e| panic!("binding the BFB server on the Docker gateway {ip}: {e}"));
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback_service(tower_http::services::ServeDir::new(dir));
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}"), task)
}

async fn start_sim(root: &Path, logs: &Path, name: &str) -> Proc {
    let sim = Proc::spawn(
        name,
        &bin("hostplane-sim").unwrap(),
        &[
            "rshim",
            "--root",
            root.to_str().unwrap(),
            "--dpus",
            "1",
            "--stage-delay",
            "30ms",
        ],
        &logs.join(format!("{name}.log")),
    )
    .unwrap();
    let misc = root.join("rshim0/misc");
    wait_for("the simulator's rshim0", Duration::from_secs(20), || {
        let misc = misc.clone();
        async move { misc.exists().then_some(()) }
    })
    .await
    .unwrap();
    sim
}

async fn create(admin: &mut Admin, r: impl Into<v1::Resource>) {
    admin
        .create(v1::CreateRequest {
            resource: Some(r.into()),
        })
        .await
        .unwrap();
}

async fn add_node(admin: &mut Admin, node: &str, device: &str) {
    admin
        .create_node_with_devices(v1::CreateNodeWithDevicesRequest {
            node: Some(v1::Node {
                metadata: meta(node),
                spec: Some(v1::NodeSpec {
                    reboot_method: RebootMethod::External as i32,
                }),
                status: None,
            }),
            devices: vec![v1::Device {
                metadata: Some(v1::ObjectMeta {
                    name: device.into(),
                    labels: [("model".to_string(), "bf3".to_string())].into(),
                    ..Default::default()
                }),
                spec: Some(v1::DeviceSpec {
                    node: node.into(),
                    rshim: "rshim0".into(),
                    serial: format!("SN-{device}"),
                    // The simulator puts rshim0 at PCI bus 0x04.
                    pci_address: "0000:04:00.0".into(),
                    ..Default::default()
                }),
                status: None,
            }],
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn images_run_the_flow_on_a_private_network() {
    if !nix::unistd::geteuid().is_root() {
        // The simulator mounts with allow_other only as root; the agents run as root in their containers.
        eprintln!("SKIPPED: not root: the simulator's FUSE mounts would not be readable from the containers");
        return;
    }
    if let Some(why) = docker_unavailable().or_else(fuse_unavailable) {
        eprintln!("SKIPPED: {why}");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let bin_dir = bin("hostplane-agent").unwrap().parent().unwrap().to_path_buf();
    let tmp = tempfile::Builder::new()
        .prefix("hostplane-images-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let id = format!("t{}", std::process::id());

    // The simulators first: their mounts must exist before the containers bind them.
    let sim_roots = [dir.join("dev-n1"), dir.join("dev-n2")];
    let _sims = [
        start_sim(&sim_roots[0], &logs, "sim-n1").await,
        start_sim(&sim_roots[1], &logs, "sim-n2").await,
    ];
    // Declared after the simulators: dropped (containers removed) before they unmount.
    let mut cleanup = Cleanup::default();

    // Build both images from the debug binaries.
    let agent_image = format!("hostplane-agent:{id}");
    let coord_image = format!("hostplane-coordinator:{id}");
    cleanup.images = vec![agent_image.clone(), coord_image.clone()];
    let out = Command::new(repo.join("scripts/images"))
        .current_dir(&repo)
        .args(["--debug", "--no-build", "--tag", &id, "--bin-dir"])
        .arg(&bin_dir)
        .arg("--out")
        .arg(dir.join("images"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "scripts/images failed:\n{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // `NAME:TAG BYTES` per image; stripped debug builds stay well under 64 MiB.
    for image in [&agent_image, &coord_image] {
        let size: u64 = stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{image} ")))
            .unwrap_or_else(|| panic!("no size for {image} in {stdout}"))
            .parse()
            .unwrap();
        eprintln!("{image}: {:.1} MiB", size as f64 / (1 << 20) as f64);
        assert!(size > 1 << 20 && size < 64 << 20, "{image} is {size} bytes");
        assert!(
            inspect(image, "{{json .Config.Healthcheck.Test}}").contains("health"),
            "{image} has a health check"
        );
    }
    assert_eq!(inspect(&coord_image, "{{.Config.User}}"), "65532:65532");
    assert_eq!(inspect(&agent_image, "{{.Config.User}}"), "0:0");
    // Nothing but what the rootfs holds: one layer per COPY.
    let layers = inspect(&coord_image, "{{len .RootFS.Layers}}");
    assert_eq!(layers, "2", "coordinator layers");

    // A private network; the BFB server listens on its gateway.
    let net = format!("hostplane-{id}");
    docker(&["network", "create", "--driver", "bridge", &net]).unwrap();
    cleanup.network = Some(net.clone());
    let gateway: IpAddr = inspect(&net, "{{(index .IPAM.Config 0).Gateway}}")
        .parse()
        .expect("the network has an IPv4 gateway");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let (http_base, _http) = serve_on(gateway, www.clone()).await;

    // The coordinator: non-root, read-only root, plaintext on the private network.
    let coord = format!("hostplane-coordinator-{id}");
    cleanup.containers.push(coord.clone());
    docker(&[
        "run",
        "-d",
        "--name",
        &coord,
        "--network",
        &net,
        "--network-alias",
        "hostplane-coordinator",
        "-p",
        "127.0.0.1::50051",
        "--read-only",
        "--cap-drop",
        "ALL",
        "--security-opt",
        "no-new-privileges",
        "--health-interval",
        "1s",
        "--health-start-period",
        "30s",
        "-e",
        "HOSTPLANE_INSECURE=1",
        "-e",
        "HOSTPLANE_LOG_FORMAT=plain",
        &coord_image,
    ])
    .unwrap();
    let port = docker(&["port", &coord, "50051/tcp"]).unwrap();
    let admin_addr: SocketAddr = port
        .lines()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("published port: {port:?}"));
    let mut admin = connect_admin(admin_addr, Duration::from_secs(30)).await.unwrap();
    let top = docker(&["top", &coord, "-o", "pid,uid,args"]).unwrap();
    assert!(top.contains("65532"), "the coordinator runs as 65532:\n{top}");

    // Two agents, each with its own simulated DPU, the capabilities of the
    // chart's agent.privileged: false (not privileged), a read-only root. The
    // simulator's rshim is files on a FUSE mount, not device nodes, so the
    // device cgroup that makes real hosts need --privileged does not apply.
    let agent_yaml = dir.join("agent.yaml");
    std::fs::write(
        &agent_yaml,
        "coordinator: http://hostplane-coordinator:50051\n\
         state_dir: /var/lib/hostplane-agent\n\
         dev_root: /sim\n\
         cache:\n  dir: /var/lib/hostplane-agent/cache\n\
         metrics:\n  listen: 127.0.0.1:9464\n\
         flash:\n  poll_interval: 50ms\n\
         session:\n  backoff_initial: 100ms\n  backoff_max: 1s\n",
    )
    .unwrap();
    for (node, root) in ["n1", "n2"].into_iter().zip(&sim_roots) {
        let name = format!("hostplane-agent-{node}-{id}");
        cleanup.containers.push(name.clone());
        let env_node = format!("HOSTPLANE_NODE_NAME={node}");
        let sim_mount = format!("{}:/sim", root.display());
        let cfg_mount = format!("{}:/etc/hostplane/agent.yaml:ro", agent_yaml.display());
        docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            &net,
            "--read-only",
            "--tmpfs",
            "/tmp",
            // The flash locks (the chart mounts the host's /run/hostplane).
            "--tmpfs",
            "/run/hostplane",
            "--cap-drop",
            "ALL",
            "--cap-add",
            "NET_ADMIN",
            "--cap-add",
            "SYS_ADMIN",
            "--cap-add",
            "SYS_RAWIO",
            "--security-opt",
            "no-new-privileges",
            "--health-interval",
            "1s",
            "--health-start-period",
            "30s",
            "-e",
            &env_node,
            "-e",
            "HOSTPLANE_INSECURE=1",
            "-e",
            "HOSTPLANE_LOG_FORMAT=plain",
            "-v",
            &sim_mount,
            "-v",
            &cfg_mount,
            &agent_image,
        ])
        .unwrap();
    }

    // The spine's flow through the published port.
    add_node(&mut admin, "n1", "dpu-a").await;
    add_node(&mut admin, "n2", "dpu-b").await;
    let sha = write_bfb(&www.join("bfb-1.bfb"), 2 << 20, "4.9.0", 7).unwrap();
    create(
        &mut admin,
        v1::Bfb {
            metadata: meta("bfb-1"),
            spec: Some(v1::BfbSpec {
                url: format!("{http_base}/bfb-1.bfb"),
                sha256: sha,
                version: "4.9.0".into(),
                size_bytes: 2 << 20,
            }),
        },
    )
    .await;
    create(
        &mut admin,
        v1::Flavor {
            metadata: meta("f1"),
            spec: Some(v1::FlavorSpec {
                bf_cfg: [("HOSTNAME".to_string(), "dpu".to_string())].into(),
                ..Default::default()
            }),
        },
    )
    .await;
    create(
        &mut admin,
        v1::Deployment {
            metadata: meta("d1"),
            spec: Some(v1::DeploymentSpec {
                device_selector: [("model".to_string(), "bf3".to_string())].into(),
                bfb: "bfb-1".into(),
                flavor: "f1".into(),
                max_unavailable: 2,
                node_effect: NodeEffect::Auto as i32,
                ..Default::default()
            }),
            status: None,
        },
    )
    .await;

    for dpu in ["dpu-a", "dpu-b"] {
        wait_phase(&mut admin, dpu, DpuPhase::Rebooting, T).await.unwrap();
    }
    for node in ["n1", "n2"] {
        let mut a = admin.clone();
        wait_for(&format!("{node} waiting for its reboot"), T, || {
            let mut a = a.clone();
            async move {
                let s = a
                    .get_node_reboot_status(v1::NodeRef { name: node.into() })
                    .await
                    .ok()?
                    .into_inner();
                s.waiting_for_reboot.then_some(())
            }
        })
        .await
        .unwrap();
        a.mark_rebooted(v1::MarkRebootedRequest {
            name: node.into(),
            power_cycled: false,
        })
        .await
        .unwrap();
    }
    // Each DPU walked the whole machine: flashed (OSInstalling) by the agent in its container.
    for dpu in ["dpu-a", "dpu-b"] {
        let d = wait_phase(&mut admin, dpu, DpuPhase::Ready, T).await.unwrap();
        let walked: Vec<DpuPhase> = d
            .status
            .as_ref()
            .map(|s| s.history.iter().map(|h| h.to()).collect())
            .unwrap_or_default();
        for phase in [DpuPhase::PrepareBfb, DpuPhase::OsInstalling, DpuPhase::Rebooting] {
            assert!(walked.contains(&phase), "{dpu} skipped {phase:?}: {walked:?}");
        }
    }

    // Every container's own health check passes.
    for c in cleanup.containers.clone() {
        wait_for(&format!("{c} to be healthy"), Duration::from_secs(30), || {
            let c = c.clone();
            async move { (inspect(&c, "{{.State.Health.Status}}") == "healthy").then_some(()) }
        })
        .await
        .unwrap();
    }
}
