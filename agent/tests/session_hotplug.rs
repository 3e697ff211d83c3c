//! Hot-plug: the agent watches its dev root (real inotify on a temp dir
//! standing for /dev) and sends `AgentMessage.inventory` on the open session
//! when rshim devices come or go, without a restart.
mod session_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hostplane_agent::exec::{BoxFuture, Executor, result};
use hostplane_proto::v1::agent_message::Msg;
use hostplane_proto::v1::{Command, CommandOutcome, CommandResult, FlashProgress, Inventory, RshimInfo};
use session_support::*;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Reports what is under the dev root, as the production executor does.
struct DevRootExecutor {
    dev_root: PathBuf,
}

impl Executor for DevRootExecutor {
    fn inventory(&self) -> BoxFuture<'_, Inventory> {
        Box::pin(async move {
            Inventory {
                rshims: hostplane_agent::rshim::discover(&self.dev_root).await,
            }
        })
    }

    fn execute(
        &self,
        cmd: Command,
        _progress: mpsc::Sender<FlashProgress>,
        _cancel: CancellationToken,
    ) -> BoxFuture<'_, CommandResult> {
        Box::pin(async move { result(CommandOutcome::Succeeded, format!("done {}", cmd.id)) })
    }
}

fn device(dev_root: &Path, name: &str, dev_name: &str) {
    let dir = dev_root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("boot"), "").unwrap();
    std::fs::write(
        dir.join("misc"),
        format!("DEV_NAME        {dev_name}\nDEV_INFO        BlueField-3(Rev 1)\n"),
    )
    .unwrap();
}

fn names(rshims: &[RshimInfo]) -> Vec<&str> {
    rshims.iter().map(|r| r.name.as_str()).collect()
}

/// The next inventory update, skipping nothing else but heartbeats and progress.
async fn next_inventory(coord: &mut FakeCoordinator) -> Inventory {
    match coord.recv().await {
        (_, Msg::Inventory(inv)) => inv,
        other => panic!("expected an inventory update, got {other:?}"),
    }
}

async fn start(
    dir: &Path,
    tweak: impl FnOnce(&mut hostplane_agent::config::Config),
) -> (FakeCoordinator, CancellationToken, tokio::task::JoinHandle<()>) {
    let coord = FakeCoordinator::start().await;
    let mut cfg = config(dir, &coord.url());
    // A long rescan: what the agent sees here it sees through inotify.
    cfg.rshim_watch.rescan_interval = Duration::from_secs(3600);
    cfg.rshim_watch.debounce = Duration::from_millis(100);
    tweak(&mut cfg);
    cfg.validate().unwrap();
    let ex = Arc::new(DevRootExecutor {
        dev_root: cfg.dev_root.clone(),
    });
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    let handle = tokio::spawn(async move {
        hostplane_agent::run(cfg, ex, None, Default::default(), s)
            .await
            .unwrap();
    });
    (coord, shutdown, handle)
}

#[tokio::test]
async fn devices_that_come_and_go_are_reported_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    device(&dev, "rshim0", "pcie-0000:04:00.2");
    let (mut coord, shutdown, handle) = start(dir.path(), |_| {}).await;
    let (conn, hello) = coord.expect_hello().await;
    assert_eq!(names(&hello.inventory.unwrap().rshims), ["rshim0"]);

    // A USB rshim is plugged in.
    device(&dev, "rshim1", "usb-1-1.4");
    let inv = next_inventory(&mut coord).await;
    assert_eq!(names(&inv.rshims), ["rshim0", "rshim1"]);
    assert_eq!(inv.rshims[1].usb_path, "1-1.4");
    assert_eq!(inv.rshims[1].pci_address, "");
    assert_eq!(inv.rshims[0].pci_address, "0000:04:00.2");

    // The PCIe one goes away.
    std::fs::remove_dir_all(dev.join("rshim0")).unwrap();
    let inv = next_inventory(&mut coord).await;
    assert_eq!(names(&inv.rshims), ["rshim1"]);
    // Still the first session: no reconnect was needed.
    assert_eq!(coord.connections(), conn + 1);

    // A reconnect sends Hello with the current inventory, and no update after it.
    coord.drop_conn(conn);
    let (_, hello) = coord.expect_hello().await;
    assert_eq!(names(&hello.inventory.unwrap().rshims), ["rshim1"]);
    let more = tokio::time::timeout(Duration::from_millis(800), coord.recv()).await;
    assert!(more.is_err(), "nothing changed, nothing sent: {more:?}");

    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn with_the_watch_off_only_hello_carries_the_inventory() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    device(&dev, "rshim0", "pcie-0000:04:00.2");
    let (mut coord, shutdown, handle) = start(dir.path(), |c| {
        c.rshim_watch.enabled = false;
        c.rshim_watch.rescan_interval = Duration::from_millis(20);
    })
    .await;
    let (conn, _) = coord.expect_hello().await;
    device(&dev, "rshim1", "pcie-0000:05:00.2");
    let more = tokio::time::timeout(Duration::from_millis(1000), coord.recv()).await;
    assert!(more.is_err(), "no update with the watch off: {more:?}");
    coord.drop_conn(conn);
    let (_, hello) = coord.expect_hello().await;
    assert_eq!(names(&hello.inventory.unwrap().rshims), ["rshim0", "rshim1"]);
    shutdown.cancel();
    handle.await.unwrap();
}
