//! Each node's desired state has one owner: this module. It says what the
//! state is ([`compose`]), gives it a new version when it changes
//! ([`touch`]), and wakes only that node's agent session when it does
//! ([`Delivery`]).
//!
//! **What a node's desired state is.** Its open commands (oldest first), the
//! host networks of its Dpus that are past `InitializeInterface` and not
//! being deleted, and the power caps the policy engine computed for it. The
//! agent converges to the whole of it; see docs/agent-protocol.md.
//!
//! **What its version means.** A store revision, strictly greater than the
//! version of every earlier desired state of the node: it is the revision of
//! the transaction that last changed anything in it. An agent ACKs a
//! version; a session sends a state only when its version is newer than the
//! one it sent last. So every change must bump it, and every bump goes
//! through one path in the store (`Txn`'s private `bump_desired`): opening
//! a command (`Txn::insert_command`), finishing or withdrawing one
//! (`Txn::finish_command`, `Txn::cancel_commands_for_dpu`), and [`touch`] for
//! what is not a command row (a host network joining or leaving the state, a
//! Dpu deleted, new power caps). A bump announces `(node, version)` on the
//! store's desired-change channel after the commit; [`Delivery`] routes it to
//! the node's session.
//!
//! Composition reads only the node's own rows through indexes, so its cost
//! does not grow with the fleet.
mod compose;
mod deliver;
pub mod networks;

pub use compose::{Source, compose};
pub use deliver::{Delivery, Subscription};

use crate::store::{StoreError, Txn};

/// Why a node's desired state gets a new version without a command row
/// changing (recorded at debug, for whoever reads the logs of a resend).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// A Dpu's host network joins or leaves the node's desired state.
    Network,
    /// A Dpu whose host network was in the state is deleted.
    DpuRemoved,
    /// The reconciler asked for a resend (e.g. a Device's PCI address changed).
    Reconciler,
    /// The power engine published new caps for the node.
    PowerCaps,
}

impl Why {
    pub fn as_str(self) -> &'static str {
        match self {
            Why::Network => "host network joins or leaves",
            Why::DpuRemoved => "dpu with a host network removed",
            Why::Reconciler => "reconciler",
            Why::PowerCaps => "power caps changed",
        }
    }
}

/// Give `node`'s desired state a new version in this transaction, for a
/// change that is not a command row (commands bump it themselves, through
/// the same path). The node's session resends after the commit. Returns the
/// new version.
pub fn touch(t: &mut Txn<'_>, node: &str, why: Why) -> Result<u64, StoreError> {
    let version = t.touch_desired(node)?;
    tracing::debug!(node, version, why = why.as_str(), "desired state touched");
    Ok(version)
}

#[cfg(test)]
pub(crate) mod tests;
