//! The host networks of a node's desired state: one per Dpu on the node that
//! is [`wanted`] and whose Flavor has a non-empty host network.
use hostplane_proto::v1::{Dpu, DpuNetwork, HostNetwork};

use crate::fsm::util::{being_deleted, network_phase};
use crate::store::StoreError;

use super::Source;

/// True when the host network has nothing in it (no VFs, bridges, SR-IOV or routes).
pub fn is_empty(h: &HostNetwork) -> bool {
    h.num_vfs == 0 && h.bridges.is_empty() && h.sriov.is_empty() && h.routes.is_empty()
}

/// True when the Dpu's host network belongs in its node's desired state now.
pub fn wanted(d: &Dpu) -> bool {
    network_phase(d) && !being_deleted(&d.metadata)
}

/// The host networks of `node`'s desired state, by Dpu name: one per Dpu on
/// the node that is [`wanted`] and whose Flavor has a non-empty host network,
/// with the PCI address of its Device's PF0.
pub fn networks(src: &impl Source, node: &str) -> Result<Vec<DpuNetwork>, StoreError> {
    let mut out = Vec::new();
    for d in src.dpus_on_node(node)? {
        if !wanted(&d) {
            continue;
        }
        let spec = d.spec.clone().unwrap_or_default();
        // A Flavor in use cannot be deleted; if it is gone there is nothing to send.
        let Some(flavor) = src.flavor(&spec.flavor)? else {
            continue;
        };
        let network = flavor.spec.and_then(|s| s.host_network).unwrap_or_default();
        if is_empty(&network) {
            continue;
        }
        let pf_pci_address = src
            .device(&spec.device)?
            .and_then(|dev| dev.spec)
            .map(|s| s.pci_address)
            .unwrap_or_default();
        out.push(DpuNetwork {
            dpu: d.metadata.as_ref().map(|m| m.name.clone()).unwrap_or_default(),
            pf_pci_address,
            network: Some(network),
        });
    }
    Ok(out)
}
