//! Finding what to read on a BMC: the HTTP client (TLS settings), the
//! node chassis and the GPU chassis, all through links.
use reqwest::Method;
use serde_json::Value;

use super::{BmcConfig, Chassis, RedfishError, http, parse};

/// `scheme://host[:port]` of the configured URL, which may end in `/redfish/v1`.
pub(super) fn origin(url: &str) -> Result<String, RedfishError> {
    let bad = |reason: String| RedfishError::Config {
        field: "power.bmc.url",
        reason,
    };
    let u = reqwest::Url::parse(url).map_err(|e| bad(format!("{url:?} is not a URL: {e}")))?;
    if u.scheme() != "https" && u.scheme() != "http" {
        return Err(bad(format!("{url:?}: the scheme must be https or http")));
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err(bad(
            "must not carry credentials (use power.bmc.username and power.bmc.password_file)".into(),
        ));
    }
    let path = u.path().trim_end_matches('/');
    if !(path.is_empty() || path == "/redfish/v1") || u.query().is_some() {
        return Err(bad(format!(
            "{url:?}: give the BMC's address (https://bmc.example), not a path in it"
        )));
    }
    let host = u.host_str().ok_or_else(|| bad(format!("{url:?} has no host")))?;
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    Ok(match u.port() {
        Some(p) => format!("{}://{host}:{p}", u.scheme()),
        None => format!("{}://{host}", u.scheme()),
    })
}

/// True the first time `origin` is seen in this process (a reconnecting
/// poller warns once, not at every try).
pub(super) fn first_time_plaintext(origin: &str) -> bool {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<String>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    WARNED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .insert(origin.to_string())
}

/// The client for one BMC. It follows no redirect: a 3xx is an error, so
/// the session token or the password never reaches a host the BMC names.
pub(super) fn http_client(cfg: &BmcConfig) -> Result<reqwest::Client, RedfishError> {
    if let Ok(o) = origin(&cfg.url)
        && o.starts_with("http://")
        && first_time_plaintext(&o)
    {
        tracing::warn!(url = %cfg.url,
            "power.bmc.url is plain http://: the BMC password and session token cross the network in clear; \
             use https://");
    }
    let mut b = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(cfg.timeout)
        .connect_timeout(cfg.timeout)
        .pool_max_idle_per_host(1)
        .user_agent(concat!("hostplane-agent/", env!("CARGO_PKG_VERSION")));
    if cfg.insecure_tls {
        tracing::warn!(url = %cfg.url, "power.bmc.insecure_tls: the BMC's certificate is not checked");
        b = b.danger_accept_invalid_certs(true);
    }
    if let Some(ca) = &cfg.ca_file {
        let pem = std::fs::read(ca).map_err(|e| RedfishError::Config {
            field: "power.bmc.ca_file",
            reason: format!("cannot read {}: {e}", ca.display()),
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| RedfishError::Config {
            field: "power.bmc.ca_file",
            reason: format!("{} is not a PEM certificate bundle: {e}", ca.display()),
        })?;
        if certs.is_empty() {
            return Err(RedfishError::Config {
                field: "power.bmc.ca_file",
                reason: format!("{} holds no certificate", ca.display()),
            });
        }
        for c in certs {
            b = b.add_root_certificate(c);
        }
    }
    b.build().map_err(|e| RedfishError::Config {
        field: "power.bmc.url",
        reason: format!("cannot set up the HTTP client: {e}"),
    })
}

pub(super) fn warn_if_readable_by_others(path: &std::path::Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(m) = std::fs::metadata(path)
        && m.permissions().mode() & 0o077 != 0
    {
        tracing::warn!(file = %path.display(), mode = format!("{:o}", m.permissions().mode() & 0o777),
            "the BMC password file is readable by other users; chmod 600 it");
    }
}

/// The node chassis: `power.bmc.chassis` among the Chassis members; else
/// the only member; else the chassis of the first ComputerSystem; else the
/// first member that is contained by no other and has power readings.
pub(super) async fn find_node(
    t: &http::Transport,
    cfg: &BmcConfig,
    root: &Value,
    chassis_coll: &str,
) -> Result<(Chassis, Value), RedfishError> {
    let coll = t.call(Method::GET, chassis_coll, None).await?;
    let members = parse::links(&coll, "/Members");
    if members.is_empty() {
        return Err(RedfishError::Resource {
            url: t.url(chassis_coll),
            what: "has no Members: the BMC lists no chassis".into(),
        });
    }
    let candidate = if let Some(id) = &cfg.chassis {
        Some(
            members
                .iter()
                .find(|m| parse::last_segment(m) == id)
                .cloned()
                .ok_or_else(|| RedfishError::Resource {
                    url: t.url(chassis_coll),
                    what: format!(
                        "has no chassis {id:?} (power.bmc.chassis); its members: {}",
                        members
                            .iter()
                            .map(|m| parse::last_segment(m))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                })?,
        )
    } else if members.len() == 1 {
        Some(members[0].clone())
    } else {
        system_chassis(t, root).await?
    };
    let (node, resource) = match candidate {
        Some(path) => {
            let v = t.call(Method::GET, &path, None).await?;
            (Chassis::from_resource(&path, &v), v)
        }
        None => {
            let mut found = None;
            for m in &members {
                let v = t.call(Method::GET, m, None).await?;
                let c = Chassis::from_resource(m, &v);
                if parse::links(&v, "/Links/ContainedBy").is_empty()
                    && parse::link(&v, "/Links/ContainedBy").is_none()
                    && (c.environment.is_some() || c.power.is_some())
                {
                    found = Some((c, v));
                    break;
                }
            }
            found.ok_or_else(|| RedfishError::Resource {
                url: t.url(chassis_coll),
                what: "has no chassis that is contained by no other and has EnvironmentMetrics or Power; \
                       set power.bmc.chassis"
                    .into(),
            })?
        }
    };
    if node.environment.is_none() && node.power.is_none() {
        return Err(RedfishError::Resource {
            url: t.url(&node.path),
            what: "has neither EnvironmentMetrics nor Power".into(),
        });
    }
    Ok((node, resource))
}

/// The chassis of the first ComputerSystem (`Links.Chassis[0]`), if the BMC says.
async fn system_chassis(t: &http::Transport, root: &Value) -> Result<Option<String>, RedfishError> {
    let Some(systems) = parse::link(root, "/Systems") else {
        return Ok(None);
    };
    let coll = t.call(Method::GET, systems, None).await?;
    let Some(first) = parse::links(&coll, "/Members").into_iter().next() else {
        return Ok(None);
    };
    let sys = t.call(Method::GET, &first, None).await?;
    Ok(parse::links(&sys, "/Links/Chassis").into_iter().next())
}

/// The GPUs: the chassis the node (`v`) `Contains` whose Id or Name says GPU.
pub(super) async fn find_gpus(t: &http::Transport, v: &Value) -> Result<Vec<Chassis>, RedfishError> {
    let mut gpus = Vec::new();
    for path in parse::links(v, "/Links/Contains") {
        let c = t.call(Method::GET, &path, None).await?;
        let named_gpu = ["/Id", "/Name"]
            .iter()
            .any(|p| parse::text(&c, p).is_some_and(|s| s.to_ascii_uppercase().contains("GPU")));
        if named_gpu {
            gpus.push(Chassis::from_resource(&path, &c));
        } else {
            tracing::debug!(chassis = %path, "contained chassis is not a GPU; not read");
        }
    }
    Ok(gpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plaintext_warning_is_given_once_per_bmc() {
        assert!(first_time_plaintext("http://bmc-a.test"));
        assert!(
            !first_time_plaintext("http://bmc-a.test"),
            "not again at a reconnect"
        );
        assert!(first_time_plaintext("http://bmc-b.test"));
    }
}
