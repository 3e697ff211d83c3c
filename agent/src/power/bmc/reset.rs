//! Power-cycling the host through its BMC (issue 14): Redfish
//! `ComputerSystem.Reset` with `{"ResetType": "PowerCycle"}`, POSTed to the
//! target the ComputerSystem resource names, after checking that
//! `PowerCycle` is among the values it allows.
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use super::{BmcConfig, BmcLink, RedfishClient, RedfishError, parse};

/// What was done: the System reset and the action's URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerCycled {
    /// The ComputerSystem's `@odata.id`.
    pub system: String,
    /// The action target, as a URL.
    pub target: String,
}

/// How long the Reset POST may wait for the BMC's answer: at least this,
/// or `power.bmc.timeout` when that is longer. Some BMCs answer a
/// `PowerCycle` only after the power operation, well past the few seconds a
/// read is given.
pub const POWER_CYCLE_POST_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a power cycle was not confirmed.
#[derive(Debug, thiserror::Error)]
pub enum PowerCycleError {
    /// Nothing reached the BMC, or it refused the reset with a status: the
    /// host was not power-cycled.
    #[error(transparent)]
    NotIssued(RedfishError),
    /// The Reset POST was sent but no answer came back (timeout, connection
    /// closed): the BMC may be power-cycling the host.
    #[error("the power cycle may have been issued: {0}")]
    MaybeIssued(RedfishError),
}

impl From<RedfishError> for PowerCycleError {
    fn from(e: RedfishError) -> Self {
        PowerCycleError::NotIssued(e)
    }
}

impl RedfishClient {
    /// POST `{"ResetType": "PowerCycle"}` to the node's ComputerSystem's
    /// `#ComputerSystem.Reset` target. The System is the one whose
    /// `Links.Chassis` holds the node chassis, else the first. Refused
    /// (nothing sent) when the action's `ResetType@Redfish.AllowableValues`
    /// (or its `@Redfish.ActionInfo`) lists values without `PowerCycle`.
    /// `sent` is set just before the POST goes out (from then on the caller
    /// must not drop this future: the BMC may have the reset); the POST
    /// waits [`POWER_CYCLE_POST_TIMEOUT`] (or `power.bmc.timeout` if longer)
    /// for the answer, and no answer is [`PowerCycleError::MaybeIssued`].
    pub async fn power_cycle(&self, sent: &AtomicBool) -> Result<PowerCycled, PowerCycleError> {
        let root = self.t.get_anonymous("/redfish/v1").await?;
        let systems = parse::link(&root, "/Systems").ok_or_else(|| RedfishError::Resource {
            url: self.t.url("/redfish/v1"),
            what: "has no Systems link: the BMC exposes no ComputerSystem to power-cycle".into(),
        })?;
        let coll = self.t.call(Method::GET, systems, None).await?;
        let members = parse::links(&coll, "/Members");
        if members.is_empty() {
            return Err(RedfishError::Resource {
                url: self.t.url(systems),
                what: "has no Members: the BMC lists no ComputerSystem".into(),
            }
            .into());
        }
        let mut chosen: Option<(String, Value)> = None;
        for m in &members {
            let v = self.t.call(Method::GET, m, None).await?;
            let ours = parse::links(&v, "/Links/Chassis")
                .iter()
                .any(|c| c.trim_end_matches('/') == self.node.path.trim_end_matches('/'));
            if ours || members.len() == 1 {
                chosen = Some((m.clone(), v));
                break;
            }
            if chosen.is_none() {
                chosen = Some((m.clone(), v));
            }
        }
        let (path, system) = chosen.expect("members is not empty");
        let system_id = parse::odata_id(&system).unwrap_or(&path).to_string();
        let action =
            system
                .pointer("/Actions/#ComputerSystem.Reset")
                .ok_or_else(|| RedfishError::Resource {
                    url: self.t.url(&system_id),
                    what: "has no #ComputerSystem.Reset action".into(),
                })?;
        let target = action
            .get("target")
            .and_then(Value::as_str)
            .ok_or_else(|| RedfishError::Resource {
                url: self.t.url(&system_id),
                what: "has a #ComputerSystem.Reset action without a target".into(),
            })?
            .to_string();
        let allowed = match allowable_values(action) {
            Some(v) => Some(v),
            None => match action.get("@Redfish.ActionInfo").and_then(Value::as_str) {
                Some(info) => {
                    let v = self.t.call(Method::GET, info, None).await?;
                    action_info_values(&v)
                }
                None => None,
            },
        };
        if let Some(allowed) = &allowed
            && !allowed.iter().any(|v| v == "PowerCycle")
        {
            return Err(RedfishError::Resource {
                url: self.t.url(&system_id),
                what: format!(
                    "does not allow ResetType PowerCycle (it allows: {}); power-cycle the host another way",
                    allowed.join(", ")
                ),
            }
            .into());
        }
        tracing::warn!(system = %system_id, target = %target, "power-cycling the host through its BMC");
        // A link that is not on the BMC is refused before anything is sent.
        self.t.resolve(&target)?;
        sent.store(true, Ordering::SeqCst);
        let within = POWER_CYCLE_POST_TIMEOUT.max(self.t.timeout());
        match self
            .t
            .call_within(
                Method::POST,
                &target,
                Some(&json!({"ResetType": "PowerCycle"})),
                within,
            )
            .await
        {
            Ok(_) => {}
            // No answer to a request that was sent: the BMC may have it.
            Err(e @ RedfishError::Unreachable { .. }) => return Err(PowerCycleError::MaybeIssued(e)),
            // An answer refusing it (or a re-login that failed after a 401):
            // the reset was not done.
            Err(e) => return Err(PowerCycleError::NotIssued(e)),
        }
        Ok(PowerCycled {
            system: system_id,
            target: self.t.url(&target),
        })
    }

    /// The BMC's address as configured (`scheme://host[:port]`).
    pub fn bmc_url(&self) -> String {
        self.t.url("")
    }
}

/// `ResetType@Redfish.AllowableValues` of a Reset action, when it has one.
fn allowable_values(action: &Value) -> Option<Vec<String>> {
    let list = action.get("ResetType@Redfish.AllowableValues")?.as_array()?;
    Some(list.iter().filter_map(Value::as_str).map(String::from).collect())
}

/// The `ResetType` parameter's `AllowableValues` in an ActionInfo resource.
fn action_info_values(info: &Value) -> Option<Vec<String>> {
    let p = info
        .get("Parameters")?
        .as_array()?
        .iter()
        .find(|p| p.get("Name").and_then(Value::as_str) == Some("ResetType"))?;
    let list = p.get("AllowableValues")?.as_array()?;
    Some(list.iter().filter_map(Value::as_str).map(String::from).collect())
}

/// The host's BMC as the command path uses it: through the power poller's
/// connected client when there is one (its session and rate limit), else a
/// client connected for the one request and logged out again.
#[derive(Clone)]
pub struct BmcPowerCycle {
    cfg: BmcConfig,
    link: Option<BmcLink>,
}

impl BmcPowerCycle {
    /// `cfg.url` must be set (see [`BmcConfig::enabled`]).
    pub fn new(cfg: BmcConfig, link: Option<BmcLink>) -> BmcPowerCycle {
        BmcPowerCycle { cfg, link }
    }

    /// The BMC's URL as configured.
    pub fn url(&self) -> &str {
        &self.cfg.url
    }

    /// See [`RedfishClient::power_cycle`].
    pub async fn power_cycle(&self, sent: &AtomicBool) -> Result<PowerCycled, PowerCycleError> {
        if let Some(client) = self.link.as_ref().and_then(BmcLink::client) {
            return client.power_cycle(sent).await;
        }
        let client = RedfishClient::connect(&self.cfg).await?;
        let r = client.power_cycle(sent).await;
        client.logout().await;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allowed_reset_types_are_read_inline_or_from_action_info() {
        let a = json!({"target": "/x", "ResetType@Redfish.AllowableValues": ["On", "PowerCycle"]});
        assert_eq!(allowable_values(&a).unwrap(), ["On", "PowerCycle"]);
        assert_eq!(allowable_values(&json!({"target": "/x"})), None);
        let info = json!({"Parameters": [
            {"Name": "Other", "AllowableValues": ["x"]},
            {"Name": "ResetType", "AllowableValues": ["ForceOff", "On"]}
        ]});
        assert_eq!(action_info_values(&info).unwrap(), ["ForceOff", "On"]);
        assert_eq!(action_info_values(&json!({})), None);
    }
}
