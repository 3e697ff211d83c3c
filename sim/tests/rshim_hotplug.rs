//! Hot-plug through a real FUSE mount: DPUs added and removed at run time,
//! through `SimHandle` and through `.control`, seen with plain file I/O as
//! the agent sees `/dev`. Skipped (with a message) where /dev/fuse is missing.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::time::{Duration, Instant};

use hostplane_sim::{Attach, Phase, SimConfig, SimHandle, Timings};

const STEP: Duration = Duration::from_millis(20);

/// Field order matters: unmount before the temp dir goes.
struct Mounted {
    sim: SimHandle,
    _dir: tempfile::TempDir,
}

fn mount() -> Option<Mounted> {
    let dir = tempfile::tempdir().unwrap();
    let cfg = SimConfig {
        dpus: 2,
        timings: Timings::uniform(STEP),
        ..SimConfig::default()
    };
    match hostplane_sim::mount(&dir.path().join("rshim"), cfg) {
        Ok(sim) => Some(Mounted { sim, _dir: dir }),
        Err(e) if e.is_fuse_unavailable() => {
            eprintln!("skipping: {e}");
            None
        }
        Err(e) => panic!("mount failed: {e}"),
    }
}

/// The `rshim<N>` names a directory listing shows.
fn listed(m: &Mounted) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(m.sim.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.starts_with("rshim"))
        .collect();
    v.sort();
    v
}

fn dev_name(m: &Mounted, dpu: usize) -> String {
    let misc = fs::read_to_string(m.sim.rshim_dir(dpu).join("misc")).unwrap();
    misc.lines()
        .find_map(|l| l.strip_prefix("DEV_NAME"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn dpus_appear_and_disappear_at_run_time() {
    let Some(m) = mount() else { return };
    assert_eq!(listed(&m), ["rshim0", "rshim1"]);

    let usb = m.sim.add_dpu(Attach::Usb).unwrap();
    assert_eq!(usb, 2);
    assert_eq!(listed(&m), ["rshim0", "rshim1", "rshim2"]);
    // The USB flavour says so in DEV_NAME, as the rshim driver's USB backend does.
    assert_eq!(dev_name(&m, 2), "usb-1-1.3");
    assert!(m.sim.rshim_dir(2).join("boot").exists());

    // rshim1 goes: gone from the listing and from a path lookup at once
    // (no cached entry outlives it), its neighbours untouched.
    let misc1 = m.sim.rshim_dir(1).join("misc");
    fs::read_to_string(&misc1).unwrap();
    m.sim.remove_dpu(1).unwrap();
    assert_eq!(listed(&m), ["rshim0", "rshim2"]);
    assert!(!m.sim.rshim_dir(1).exists(), "rshim1 still resolves");
    assert_eq!(
        fs::read_to_string(&misc1).unwrap_err().kind(),
        std::io::ErrorKind::NotFound
    );
    assert_eq!(m.sim.dpus(), 2);
    assert!(m.sim.remove_dpu(1).is_err(), "removed twice");

    // A never-used index comes first, as the rshim driver picks.
    assert_eq!(m.sim.add_dpu(Attach::Pcie).unwrap(), 3);
    assert_eq!(dev_name(&m, 3), "pcie-0000:07:00.2");
    assert_eq!(listed(&m), ["rshim0", "rshim2", "rshim3"]);
}

#[test]
fn a_push_to_a_removed_dpu_fails_with_enodev() {
    let Some(m) = mount() else { return };
    let mut boot = OpenOptions::new()
        .write(true)
        .open(m.sim.rshim_dir(0).join("boot"))
        .unwrap();
    boot.write_all(&[0u8; 4096]).unwrap();
    m.sim.remove_dpu(0).unwrap();
    let err = boot.write_all(&[0u8; 4096]).unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::ENODEV), "{err}");
    drop(boot);
    assert!(!m.sim.rshim_dir(0).exists());
    // The other DPU is untouched.
    assert_eq!(m.sim.state(1).phase, Phase::Up);
}

#[test]
fn the_control_file_plugs_dpus_in_and_out() {
    let Some(m) = mount() else { return };
    let control = m.sim.root().join(".control");
    fs::write(&control, "add usb serial-in-misc\nadd pcie\n").unwrap();
    assert_eq!(listed(&m), ["rshim0", "rshim1", "rshim2", "rshim3"]);
    assert_eq!(dev_name(&m, 2), "usb-1-1.3");
    // serial-in-misc: the serial shows at DISPLAY_LEVEL 1.
    fs::write(m.sim.rshim_dir(2).join("misc"), "DISPLAY_LEVEL 1").unwrap();
    let misc = fs::read_to_string(m.sim.rshim_dir(2).join("misc")).unwrap();
    assert!(
        misc.contains(&format!("SERIAL_NUM      {}", m.sim.state(2).serial)),
        "{misc}"
    );

    fs::write(&control, "rshim0 remove\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    // From the FUSE thread the kernel is told without waiting: allow a moment.
    while m.sim.rshim_dir(0).exists() {
        assert!(Instant::now() < deadline, "rshim0 still there");
        std::thread::sleep(STEP);
    }
    assert_eq!(listed(&m), ["rshim1", "rshim2", "rshim3"]);
    let status = fs::read_to_string(&control).unwrap();
    assert!(!status.contains("rshim0 "), "{status}");
    assert!(
        status.contains("rshim2 ") && status.contains("dev=usb-1-1.3"),
        "{status}"
    );

    // A bad line changes nothing, and says what is expected.
    let err = fs::write(&control, "rshim1 remove\nadd firewire\n").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EINVAL));
    assert_eq!(listed(&m), ["rshim1", "rshim2", "rshim3"]);
}
