//! The BMC's limiting half: the node's power limit over Redfish, through the
//! poller's session.
use futures::future::BoxFuture;
use hostplane_proto::v1::PowerElement;

use crate::power::caps::{LimitError, Limiter};

/// The node's power limit through its BMC over Redfish (`Controls/PowerLimit`,
/// else `Power.PowerControl[0].PowerLimit`), via the sampler's BMC link.
pub struct BmcNodeLimiter {
    link: super::BmcLink,
}

impl BmcNodeLimiter {
    pub fn new(link: super::BmcLink) -> BmcNodeLimiter {
        BmcNodeLimiter { link }
    }

    fn client(&self) -> Result<std::sync::Arc<super::RedfishClient>, LimitError> {
        self.link.client().ok_or_else(|| LimitError::BmcNotReached {
            url: self.link.url().to_string(),
        })
    }
}

impl Limiter for BmcNodeLimiter {
    fn element(&self) -> PowerElement {
        PowerElement::Node
    }

    fn device(&self) -> &str {
        "node"
    }

    fn method(&self) -> &'static str {
        "redfish"
    }

    fn range(&self) -> BoxFuture<'_, Option<(f64, f64)>> {
        Box::pin(async move { self.client().ok()?.node_limit_range().await.ok() })
    }

    fn apply(&self, watts: Option<f64>) -> BoxFuture<'_, Result<Option<f64>, LimitError>> {
        Box::pin(async move {
            let c = self.client()?;
            Ok(c.set_node_limit(watts).await?)
        })
    }
}
