//! Small conveniences over the generated types, shared by every crate.
use crate::v1::{self, DpuPhase, Kind, ObjectMeta, resource};

impl Kind {
    /// Lower-case singular name used by the CLI and in messages ("node", "dpu", ...).
    pub fn noun(self) -> &'static str {
        match self {
            Kind::Unspecified => "unspecified",
            Kind::Node => "node",
            Kind::Device => "device",
            Kind::Bfb => "bfb",
            Kind::Flavor => "flavor",
            Kind::Deployment => "deployment",
            Kind::Dpu => "dpu",
            Kind::Topology => "topology",
            Kind::PowerPolicy => "powerpolicy",
        }
    }

    /// Every concrete kind, in dependency order (a kind only refers to kinds before it).
    pub const ALL: [Kind; 8] = [
        Kind::Node,
        Kind::Device,
        Kind::Bfb,
        Kind::Flavor,
        Kind::Deployment,
        Kind::Dpu,
        Kind::Topology,
        Kind::PowerPolicy,
    ];

    pub fn from_noun(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.noun() == s)
    }
}

impl DpuPhase {
    /// The phase name as DESIGN.md spells it (`OSInstalling`, `NodeEffect`, ...).
    pub fn display_name(self) -> &'static str {
        match self {
            DpuPhase::Unspecified => "Unspecified",
            DpuPhase::Initializing => "Initializing",
            DpuPhase::Pending => "Pending",
            DpuPhase::NodeEffect => "NodeEffect",
            DpuPhase::InitializeInterface => "InitializeInterface",
            DpuPhase::ConfigFwParameters => "ConfigFWParameters",
            DpuPhase::PrepareBfb => "PrepareBFB",
            DpuPhase::OsInstalling => "OSInstalling",
            DpuPhase::Rebooting => "Rebooting",
            DpuPhase::DpuClusterConfig => "DPUClusterConfig",
            DpuPhase::NodeEffectRemoval => "NodeEffectRemoval",
            DpuPhase::Ready => "Ready",
            DpuPhase::Deleting => "Deleting",
            DpuPhase::Error => "Error",
        }
    }
}

impl v1::Resource {
    pub fn kind(&self) -> Kind {
        match &self.kind {
            None => Kind::Unspecified,
            Some(resource::Kind::Node(_)) => Kind::Node,
            Some(resource::Kind::Device(_)) => Kind::Device,
            Some(resource::Kind::Bfb(_)) => Kind::Bfb,
            Some(resource::Kind::Flavor(_)) => Kind::Flavor,
            Some(resource::Kind::Deployment(_)) => Kind::Deployment,
            Some(resource::Kind::Dpu(_)) => Kind::Dpu,
            Some(resource::Kind::Topology(_)) => Kind::Topology,
            Some(resource::Kind::PowerPolicy(_)) => Kind::PowerPolicy,
        }
    }

    pub fn metadata(&self) -> Option<&ObjectMeta> {
        match &self.kind {
            None => None,
            Some(resource::Kind::Node(x)) => x.metadata.as_ref(),
            Some(resource::Kind::Device(x)) => x.metadata.as_ref(),
            Some(resource::Kind::Bfb(x)) => x.metadata.as_ref(),
            Some(resource::Kind::Flavor(x)) => x.metadata.as_ref(),
            Some(resource::Kind::Deployment(x)) => x.metadata.as_ref(),
            Some(resource::Kind::Dpu(x)) => x.metadata.as_ref(),
            Some(resource::Kind::Topology(x)) => x.metadata.as_ref(),
            Some(resource::Kind::PowerPolicy(x)) => x.metadata.as_ref(),
        }
    }

    pub fn metadata_mut(&mut self) -> Option<&mut ObjectMeta> {
        match &mut self.kind {
            None => None,
            Some(resource::Kind::Node(x)) => Some(x.metadata.get_or_insert_default()),
            Some(resource::Kind::Device(x)) => Some(x.metadata.get_or_insert_default()),
            Some(resource::Kind::Bfb(x)) => Some(x.metadata.get_or_insert_default()),
            Some(resource::Kind::Flavor(x)) => Some(x.metadata.get_or_insert_default()),
            Some(resource::Kind::Deployment(x)) => Some(x.metadata.get_or_insert_default()),
            Some(resource::Kind::Dpu(x)) => Some(x.metadata.get_or_insert_default()),
            Some(resource::Kind::Topology(x)) => Some(x.metadata.get_or_insert_default()),
            Some(resource::Kind::PowerPolicy(x)) => Some(x.metadata.get_or_insert_default()),
        }
    }

    /// The object's name, or "" when it has no metadata.
    pub fn name(&self) -> &str {
        self.metadata().map(|m| m.name.as_str()).unwrap_or("")
    }

    pub fn resource_version(&self) -> u64 {
        self.metadata().map(|m| m.resource_version).unwrap_or(0)
    }
}

macro_rules! into_resource {
    ($($t:ident),*) => {$(
        impl From<v1::$t> for v1::Resource {
            fn from(x: v1::$t) -> Self {
                v1::Resource { kind: Some(resource::Kind::$t(x)) }
            }
        }
    )*};
}
into_resource!(Node, Device, Bfb, Flavor, Deployment, Dpu, Topology, PowerPolicy);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_nouns_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::from_noun(k.noun()), Some(k));
        }
        assert_eq!(Kind::from_noun("gadget"), None);
    }

    #[test]
    fn resource_json_uses_proto3_mapping() {
        let dpu = v1::Dpu {
            metadata: Some(ObjectMeta {
                name: "d1".into(),
                ..Default::default()
            }),
            status: Some(v1::DpuStatus {
                phase: DpuPhase::OsInstalling as i32,
                ..Default::default()
            }),
            ..Default::default()
        };
        let r: v1::Resource = dpu.into();
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains("\"DPU_PHASE_OS_INSTALLING\""), "{json}");
        let back: v1::Resource = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
        assert_eq!(back.kind(), Kind::Dpu);
        assert_eq!(back.name(), "d1");
    }
}
