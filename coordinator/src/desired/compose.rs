//! Composing a node's desired state from what the store holds for it.
use hostplane_proto::v1::{Command, DesiredState, Device, Dpu, Flavor, Kind, PowerCaps, Resource, resource};

use crate::store::{StoreError, Txn, View};

use super::networks::networks;

/// What composing one node's desired state reads: the node's own rows only,
/// each found by key or through a per-node index. The store's [`View`] is
/// what sessions compose from (no SQL); a [`Txn`] composes what a
/// transaction sees, its own writes included (node-local too, through the
/// store's node index).
pub trait Source {
    /// The node's desired-state version (0 when it never had one).
    fn desired_version(&self, node: &str) -> Result<u64, StoreError>;
    /// The node's open commands, oldest first.
    fn open_commands(&self, node: &str) -> Result<Vec<Command>, StoreError>;
    /// The Dpus whose `spec.node` is `node`, by name.
    fn dpus_on_node(&self, node: &str) -> Result<Vec<Dpu>, StoreError>;
    fn flavor(&self, name: &str) -> Result<Option<Flavor>, StoreError>;
    fn device(&self, name: &str) -> Result<Option<Device>, StoreError>;
}

/// `node`'s whole desired state: version, open commands, host networks, and
/// `caps` (the power engine's, from the hub). `lease_seconds` is the
/// session's to fill.
pub fn compose(src: &impl Source, node: &str, caps: Option<PowerCaps>) -> Result<DesiredState, StoreError> {
    Ok(DesiredState {
        version: src.desired_version(node)?,
        node: node.to_string(),
        commands: src.open_commands(node)?,
        lease_seconds: 0,
        networks: networks(src, node)?,
        power: caps,
    })
}

impl Source for View {
    fn desired_version(&self, node: &str) -> Result<u64, StoreError> {
        Ok(View::desired_version(self, node))
    }

    fn open_commands(&self, node: &str) -> Result<Vec<Command>, StoreError> {
        Ok(View::open_commands(self, node).into_iter().cloned().collect())
    }

    fn dpus_on_node(&self, node: &str) -> Result<Vec<Dpu>, StoreError> {
        Ok(View::dpus_on_node(self, node).cloned().collect())
    }

    fn flavor(&self, name: &str) -> Result<Option<Flavor>, StoreError> {
        Ok(self.flavors.get(name).cloned())
    }

    fn device(&self, name: &str) -> Result<Option<Device>, StoreError> {
        Ok(self.devices.get(name).cloned())
    }
}

impl Source for Txn<'_> {
    fn desired_version(&self, node: &str) -> Result<u64, StoreError> {
        Txn::desired_version(self, node)
    }

    fn open_commands(&self, node: &str) -> Result<Vec<Command>, StoreError> {
        Txn::open_commands(self, node)
    }

    fn dpus_on_node(&self, node: &str) -> Result<Vec<Dpu>, StoreError> {
        Ok(self
            .list_on_node(Kind::Dpu, node)?
            .into_iter()
            .filter_map(|r| match r.kind {
                Some(resource::Kind::Dpu(d)) => Some(d),
                _ => None,
            })
            .collect())
    }

    fn flavor(&self, name: &str) -> Result<Option<Flavor>, StoreError> {
        Ok(match self.get(Kind::Flavor, name)? {
            Some(Resource {
                kind: Some(resource::Kind::Flavor(f)),
            }) => Some(f),
            _ => None,
        })
    }

    fn device(&self, name: &str) -> Result<Option<Device>, StoreError> {
        Ok(match self.get(Kind::Device, name)? {
            Some(Resource {
                kind: Some(resource::Kind::Device(d)),
            }) => Some(d),
            _ => None,
        })
    }
}
