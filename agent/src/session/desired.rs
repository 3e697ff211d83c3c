//! Checks that decide between applying a desired state and NACKing it. Only
//! structural problems are NACKed (the whole state is then refused and the
//! agent keeps running what it had); problems that only show when a command
//! runs (an rshim that is absent, an unreachable URL) end that command FAILED.
use std::collections::HashSet;

use hostplane_proto::v1::{BfbRef, DesiredState, command::Action};

use crate::bfb_cache::normalize_digest;
use crate::exec::{AGENT_VERSION, action_name};
use crate::rshim::is_rshim_name;

/// Why `ds` cannot be applied by this agent (the NACK's error text), if it cannot.
pub fn check(ds: &DesiredState, node_name: &str) -> Result<(), String> {
    if !ds.node.is_empty() && ds.node != node_name {
        return Err(format!(
            "desired state version {} is for node {:?}, but this agent is node {node_name:?}",
            ds.version, ds.node
        ));
    }
    let mut seen = HashSet::new();
    for (i, c) in ds.commands.iter().enumerate() {
        if c.id.is_empty() {
            return Err(format!("command #{i} (dpu {:?}) has no id", c.dpu));
        }
        if !seen.insert(c.id.as_str()) {
            return Err(format!("command id {} is listed twice", c.id));
        }
        let kind = action_name(c.action.as_ref());
        let bfb = match &c.action {
            None => {
                return Err(format!(
                    "command {} (dpu {}) has an action this agent does not understand \
                     (hostplane-agent {AGENT_VERSION}); upgrade the agent",
                    c.id, c.dpu
                ));
            }
            Some(Action::PrepareBfb(p)) => Some(&p.bfb),
            Some(Action::FlashBfb(f)) => {
                if !is_rshim_name(&c.rshim) {
                    return Err(format!(
                        "command {} ({kind}, dpu {}): rshim {:?} is not an rshim device name (rshim<N>)",
                        c.id, c.dpu, c.rshim
                    ));
                }
                Some(&f.bfb)
            }
            Some(_) => None,
        };
        if let Some(bfb) = bfb {
            check_bfb(bfb.as_ref())
                .map_err(|why| format!("command {} ({kind}, dpu {}): {why}", c.id, c.dpu))?;
        }
    }
    Ok(())
}

fn check_bfb(bfb: Option<&BfbRef>) -> Result<(), String> {
    let Some(b) = bfb else {
        return Err("names no bfb".into());
    };
    if b.url.is_empty() {
        return Err(format!("bfb {:?} has no url", b.name));
    }
    if normalize_digest(&b.sha256).is_none() {
        return Err(format!(
            "bfb {:?} has sha256 {:?}, expected 64 hex digits",
            b.name, b.sha256
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{Command, FlashBfb, PrepareBfb, RebootHost};

    use super::*;

    fn bfb() -> Option<BfbRef> {
        Some(BfbRef {
            name: "img".into(),
            url: "http://x/img.bfb".into(),
            sha256: "ab".repeat(32),
            ..Default::default()
        })
    }

    fn cmd(id: &str, rshim: &str, action: Option<Action>) -> Command {
        Command {
            id: id.into(),
            dpu: "d1".into(),
            rshim: rshim.into(),
            action,
        }
    }

    fn state(commands: Vec<Command>) -> DesiredState {
        DesiredState {
            version: 3,
            node: "n1".into(),
            commands,
            lease_seconds: 15,
            networks: Vec::new(),
            power: None,
        }
    }

    #[test]
    fn well_formed_states_pass() {
        let ds = state(vec![
            cmd("a", "rshim0", Some(Action::PrepareBfb(PrepareBfb { bfb: bfb() }))),
            cmd(
                "b",
                "rshim0",
                Some(Action::FlashBfb(FlashBfb {
                    bfb: bfb(),
                    ..Default::default()
                })),
            ),
            cmd("c", "", Some(Action::RebootHost(RebootHost::default()))),
        ]);
        check(&ds, "n1").unwrap();
        check(&DesiredState::default(), "n1").unwrap();
    }

    #[test]
    fn malformed_states_are_refused_naming_the_problem() {
        let no_url = BfbRef {
            url: String::new(),
            ..bfb().unwrap()
        };
        let bad_sha = BfbRef {
            sha256: "xyz".into(),
            ..bfb().unwrap()
        };
        let flash = |rshim: &str, bfb| {
            cmd(
                "f",
                rshim,
                Some(Action::FlashBfb(FlashBfb {
                    bfb,
                    ..Default::default()
                })),
            )
        };
        let prepare = |bfb| cmd("p", "", Some(Action::PrepareBfb(PrepareBfb { bfb })));
        let reboot = |id: &str| cmd(id, "", Some(Action::RebootHost(RebootHost::default())));
        let cases = [
            (state(vec![reboot("")]), "has no id"),
            (state(vec![reboot("x"), reboot("x")]), "x is listed twice"),
            (state(vec![cmd("u", "rshim0", None)]), "does not understand"),
            (
                state(vec![flash("../boot", bfb())]),
                "\"../boot\" is not an rshim",
            ),
            (state(vec![flash("rshim1", None)]), "names no bfb"),
            (state(vec![prepare(Some(no_url))]), "has no url"),
            (state(vec![prepare(Some(bad_sha))]), "expected 64 hex digits"),
        ];
        for (ds, want) in cases {
            let err = check(&ds, "n1").unwrap_err();
            assert!(err.contains(want), "{err:?} lacks {want:?}");
        }
        let err = check(&state(vec![]), "n2").unwrap_err();
        assert!(err.contains("\"n1\"") && err.contains("\"n2\""), "{err}");
    }
}
