//! Hot-plug compares whole inventory entries, not names: a DPU swapped for
//! another that gets the same rshim<N> name (inside the debounce, or with no
//! inotify event at all, as on a FUSE dev root) is reported, and an rshim
//! whose misc could not be read is read again until it reads.
mod session_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hostplane_agent::exec::{BoxFuture, Executor, result};
use hostplane_proto::v1::agent_message::Msg;
use hostplane_proto::v1::{Command, CommandOutcome, CommandResult, FlashProgress, Inventory};
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

fn misc(dir: &Path, dev_name: &str) {
    std::fs::write(
        dir.join("misc"),
        format!("DEV_NAME        {dev_name}\nDEV_INFO        BlueField-3(Rev 1)\n"),
    )
    .unwrap();
}

/// An rshim device directory; without `dev_name` it has no misc.
fn device(dev_root: &Path, name: &str, dev_name: Option<&str>) {
    let dir = dev_root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("boot"), "").unwrap();
    if let Some(d) = dev_name {
        misc(&dir, d);
    }
}

async fn next_inventory(coord: &mut FakeCoordinator, within: Duration) -> Option<Inventory> {
    match tokio::time::timeout(within, coord.recv()).await {
        Err(_) => None,
        Ok((_, Msg::Inventory(inv))) => Some(inv),
        Ok(other) => panic!("expected an inventory update, got {other:?}"),
    }
}

async fn start(
    dir: &Path,
    rescan: Duration,
    debounce: Duration,
) -> (FakeCoordinator, CancellationToken, tokio::task::JoinHandle<()>) {
    let coord = FakeCoordinator::start().await;
    let mut cfg = config(dir, &coord.url());
    cfg.rshim_watch.rescan_interval = rescan;
    cfg.rshim_watch.debounce = debounce;
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
async fn a_dpu_swapped_within_the_debounce_under_the_same_name_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    device(&dev, "rshim0", Some("pcie-0000:04:00.2"));
    // A long rescan: only inotify can tell of the swap.
    let (mut coord, shutdown, handle) =
        start(dir.path(), Duration::from_secs(3600), Duration::from_millis(300)).await;
    let (_, hello) = coord.expect_hello().await;
    assert_eq!(hello.inventory.unwrap().rshims[0].pci_address, "0000:04:00.2");

    std::fs::remove_dir_all(dev.join("rshim0")).unwrap();
    device(&dev, "rshim0", Some("pcie-0000:05:00.2"));
    let inv = next_inventory(&mut coord, Duration::from_secs(5))
        .await
        .expect("the swap is reported");
    assert_eq!(inv.rshims.len(), 1);
    assert_eq!(inv.rshims[0].name, "rshim0");
    assert_eq!(inv.rshims[0].pci_address, "0000:05:00.2");
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn a_change_no_inotify_event_told_of_is_found_by_the_rescan() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    device(&dev, "rshim0", Some("pcie-0000:04:00.2"));
    let (mut coord, shutdown, handle) =
        start(dir.path(), Duration::from_millis(200), Duration::from_millis(50)).await;
    let (_, hello) = coord.expect_hello().await;
    assert_eq!(hello.inventory.unwrap().rshims[0].pci_address, "0000:04:00.2");
    // Nothing changed: several rescans, nothing sent.
    assert_eq!(next_inventory(&mut coord, Duration::from_millis(900)).await, None);

    // Rewritten in place: no event on the dev root (as a FUSE server's change raises none).
    misc(&dev.join("rshim0"), "usb-1-1.4");
    let inv = next_inventory(&mut coord, Duration::from_secs(5))
        .await
        .expect("the rescan reports it");
    assert_eq!(inv.rshims[0].name, "rshim0");
    assert_eq!(inv.rshims[0].pci_address, "");
    assert_eq!(inv.rshims[0].usb_path, "1-1.4");
    assert_eq!(
        next_inventory(&mut coord, Duration::from_millis(900)).await,
        None,
        "sent once"
    );
    shutdown.cancel();
    handle.await.unwrap();
}

#[tokio::test]
async fn an_rshim_whose_misc_could_not_be_read_is_read_again() {
    let dir = tempfile::tempdir().unwrap();
    let dev = dir.path().join("dev");
    device(&dev, "rshim0", None);
    let (mut coord, shutdown, handle) =
        start(dir.path(), Duration::from_millis(200), Duration::from_millis(50)).await;
    let (_, hello) = coord.expect_hello().await;
    let first = &hello.inventory.unwrap().rshims[0];
    assert!(!first.error.is_empty(), "{first:?}");
    assert_eq!(first.pci_address, "");

    misc(&dev.join("rshim0"), "pcie-0000:04:00.2");
    let inv = next_inventory(&mut coord, Duration::from_secs(5))
        .await
        .expect("read again once the misc reads");
    assert_eq!(inv.rshims[0].error, "", "{:?}", inv.rshims[0]);
    assert_eq!(inv.rshims[0].pci_address, "0000:04:00.2");
    assert_eq!(inv.rshims[0].dev_info, "BlueField-3(Rev 1)");
    shutdown.cancel();
    handle.await.unwrap();
}
