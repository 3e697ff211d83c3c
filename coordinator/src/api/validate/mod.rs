//! Per-kind validation of what users write (metadata and spec). Pure
//! functions: they look at one object, never at the store, and name the
//! field that is wrong (`device.spec.rshim: ...`). `p` is the path prefix of
//! the object in the request (`device`, `devices[2]`).
use std::collections::HashMap;

use hostplane_proto::limits::{self as lim, quote};
use hostplane_proto::v1::{
    Bfb, Deployment, Device, Flavor, Kind, Node, NodeEffect, ObjectMeta, RebootMethod, Resource, resource,
};

use super::error::ApiError;

pub const MAX_NAME: usize = lim::MAX_NAME;
pub const MAX_LABEL_KEY: usize = lim::MAX_LABEL_KEY;
pub const MAX_LABEL_VALUE: usize = lim::MAX_LABEL_VALUE;
pub const MAX_MAX_UNAVAILABLE: u32 = 10_000;
pub use net::{MAX_MTU, MAX_VFS, MIN_MTU};

pub(crate) type Result<T = ()> = std::result::Result<T, ApiError>;

fn invalid(field: String, reason: impl Into<String>) -> ApiError {
    ApiError::invalid(field, reason)
}

/// A concrete kind (not KIND_UNSPECIFIED), for `kind` request fields.
pub fn kind(field: &str, raw: i32) -> Result<Kind> {
    match Kind::try_from(raw) {
        Ok(Kind::Unspecified) => Err(invalid(
            field.into(),
            "required (node, device, bfb, flavor, deployment or dpu)",
        )),
        Ok(k) => Ok(k),
        Err(_) => Err(invalid(field.into(), format!("unknown kind {raw}"))),
    }
}

/// An object name: a DNS label, `[a-z0-9]([-a-z0-9.]*[a-z0-9])?`, at most 63 characters.
pub fn name(field: &str, value: &str) -> Result {
    if value.is_empty() {
        return Err(invalid(field.into(), "required"));
    }
    bounds::len(|| field.into(), value, MAX_NAME)?;
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    let ends = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if value.len() > MAX_NAME
        || !ok_chars
        || !ends(value.as_bytes().first())
        || !ends(value.as_bytes().last())
    {
        return Err(invalid(
            format!("{field} {}", quote(value)),
            "must be a DNS label: lower-case letters, digits, '-' and '.', starting and ending with a letter \
             or digit, at most 63 characters",
        ));
    }
    Ok(())
}

/// Label (and selector) maps: keys `[A-Za-z0-9._/-]+`, values without control characters.
pub fn labels(field: &str, map: &HashMap<String, String>) -> Result {
    bounds::labels(field, map)?;
    let mut keys: Vec<&String> = map.keys().collect();
    keys.sort();
    for k in keys {
        let key_ok = !k.is_empty()
            && k.len() <= MAX_LABEL_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b'-'));
        if !key_ok {
            return Err(invalid(
                format!("{field} key {}", quote(k)),
                "must be 1-253 characters of letters, digits, '.', '_', '/' and '-'",
            ));
        }
        let v = &map[k];
        if v.len() > MAX_LABEL_VALUE || v.chars().any(char::is_control) {
            return Err(invalid(
                format!("{field}[{k:?}]"),
                "must be at most 253 characters, without control characters",
            ));
        }
    }
    Ok(())
}

fn metadata<'m>(p: &str, m: Option<&'m ObjectMeta>) -> Result<&'m ObjectMeta> {
    let m = m.ok_or_else(|| invalid(format!("{p}.metadata"), "required"))?;
    name(&format!("{p}.metadata.name"), &m.name)?;
    labels(&format!("{p}.metadata.labels"), &m.labels)?;
    Ok(m)
}

fn no_space(field: String, value: &str, max: usize) -> Result {
    if value.len() > max || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            format!("must be at most {max} characters, without spaces"),
        ));
    }
    Ok(())
}

/// `DDDD:BB:DD.F` (hexadecimal), e.g. `0000:04:00.0`.
pub fn pci_address(field: String, value: &str) -> Result {
    let b = value.as_bytes();
    let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
    let ok = b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && hex(0..4)
        && hex(5..7)
        && hex(8..10)
        && hex(11..12);
    if !ok {
        return Err(invalid(
            format!("{field} {}", quote(value)),
            "must be a PCI address like 0000:04:00.0",
        ));
    }
    Ok(())
}

/// A Linux interface name: 1-15 characters, no '/', ':' or whitespace.
pub fn ifname(field: String, value: &str) -> Result {
    let ok = !value.is_empty()
        && value.len() <= 15
        && value != "."
        && value != ".."
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '/' && c != ':');
    if !ok {
        return Err(invalid(
            format!("{field} {}", quote(value)),
            "must be an interface name: 1-15 characters, no '/', ':' or spaces",
        ));
    }
    Ok(())
}

/// A shell identifier: `[A-Za-z_][A-Za-z0-9_]*`.
pub fn is_shell_identifier(s: &str) -> bool {
    let mut b = s.bytes();
    b.next().is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// Any user-written resource, with `p` as its path prefix (the kind's noun
/// when empty). Dpus are refused: they are generated.
pub fn resource(p: &str, r: &Resource) -> Result {
    let noun = r.kind().noun();
    let p = if p.is_empty() { noun } else { p };
    bounds::resource(p, r)?;
    match &r.kind {
        None => Err(invalid(
            "resource".into(),
            "required: one of node, device, bfb, flavor, deployment",
        )),
        Some(resource::Kind::Node(x)) => node(p, x),
        Some(resource::Kind::Device(x)) => device(p, x),
        Some(resource::Kind::Bfb(x)) => bfb(p, x),
        Some(resource::Kind::Flavor(x)) => flavor(p, x),
        Some(resource::Kind::Deployment(x)) => deployment(p, x),
        Some(resource::Kind::Topology(x)) => power::topology(p, x),
        Some(resource::Kind::PowerPolicy(x)) => power::power_policy(p, x),
        Some(resource::Kind::Dpu(_)) => Err(invalid(
            "resource.dpu".into(),
            "dpus are generated from deployments; create a Deployment whose device_selector matches the device",
        )),
    }
}

pub fn node(p: &str, n: &Node) -> Result {
    metadata(p, n.metadata.as_ref())?;
    let spec = n.spec.unwrap_or_default();
    if RebootMethod::try_from(spec.reboot_method).is_err() {
        return Err(invalid(
            format!("{p}.spec.reboot_method"),
            format!("unknown value {}", spec.reboot_method),
        ));
    }
    Ok(())
}

pub fn device(p: &str, d: &Device) -> Result {
    metadata(p, d.metadata.as_ref())?;
    let spec = d.spec.clone().unwrap_or_default();
    name(&format!("{p}.spec.node"), &spec.node)?;
    if spec.serial.is_empty() {
        return Err(invalid(format!("{p}.spec.serial"), "required"));
    }
    no_space(format!("{p}.spec.serial"), &spec.serial, lim::MAX_SERIAL)?;
    let rshim_ok = spec
        .rshim
        .strip_prefix("rshim")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
    if spec.rshim.is_empty() {
        return Err(invalid(format!("{p}.spec.rshim"), "required (e.g. rshim0)"));
    }
    if !rshim_ok || spec.rshim.len() > lim::MAX_RSHIM {
        return Err(invalid(
            format!("{p}.spec.rshim {}", quote(&spec.rshim)),
            "must be rshim<N>, e.g. rshim0",
        ));
    }
    if !spec.pci_address.is_empty() {
        pci_address(format!("{p}.spec.pci_address"), &spec.pci_address)?;
    }
    no_space(
        format!("{p}.spec.bmc_address"),
        &spec.bmc_address,
        lim::MAX_BMC_ADDRESS,
    )?;
    Ok(())
}

pub fn bfb(p: &str, b: &Bfb) -> Result {
    metadata(p, b.metadata.as_ref())?;
    let spec = b.spec.clone().unwrap_or_default();
    let f = format!("{p}.spec.url");
    if spec.url.is_empty() {
        return Err(invalid(f, "required"));
    }
    no_space(f.clone(), &spec.url, lim::MAX_URL)?;
    let Some((scheme, rest)) = spec.url.split_once("://") else {
        return Err(invalid(
            f,
            format!("{} is not a URL (scheme://...)", quote(&spec.url)),
        ));
    };
    match scheme {
        "http" | "https" => {
            let host = rest.split(['/', '?', '#']).next().unwrap_or("");
            if host.is_empty() {
                return Err(invalid(f, format!("{} has no host", quote(&spec.url))));
            }
        }
        "file" => {
            if !rest.starts_with('/') {
                return Err(invalid(
                    f,
                    format!(
                        "{}: a file URL needs an absolute path (file:///...)",
                        quote(&spec.url)
                    ),
                ));
            }
        }
        other => {
            return Err(invalid(
                f,
                format!("scheme must be http, https or file, not {}", quote(other)),
            ));
        }
    }
    let sha_ok = spec.sha256.len() == 64
        && spec
            .sha256
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c));
    if !sha_ok {
        return Err(invalid(
            format!("{p}.spec.sha256"),
            "must be 64 lower-case hex characters",
        ));
    }
    no_space(format!("{p}.spec.version"), &spec.version, lim::MAX_VERSION)?;
    Ok(())
}

pub fn flavor(p: &str, f: &Flavor) -> Result {
    metadata(p, f.metadata.as_ref())?;
    let spec = f.spec.clone().unwrap_or_default();
    let mut keys: Vec<&String> = spec.bf_cfg.keys().collect();
    keys.sort();
    for k in keys {
        if !is_shell_identifier(k) {
            return Err(invalid(
                format!("{p}.spec.bf_cfg"),
                format!("key {} is not a shell identifier", quote(k)),
            ));
        }
        if spec.bf_cfg[k].contains(['\n', '\r', '\0']) {
            return Err(invalid(
                format!("{p}.spec.bf_cfg[{k:?}]"),
                "value must be one line",
            ));
        }
    }
    let mut keys: Vec<&String> = spec.nic_firmware.keys().collect();
    keys.sort();
    for k in keys {
        if !is_shell_identifier(k) {
            return Err(invalid(
                format!("{p}.spec.nic_firmware"),
                format!("key {} is not a parameter name ([A-Za-z0-9_])", quote(k)),
            ));
        }
        let v = &spec.nic_firmware[k];
        if v.is_empty() {
            return Err(invalid(format!("{p}.spec.nic_firmware[{k:?}]"), "value required"));
        }
        no_space(format!("{p}.spec.nic_firmware[{k:?}]"), v, lim::MAX_NIC_FW_VALUE)?;
    }
    nvconfig::check(p, &spec)?;
    os::check(p, &spec)?;
    net::host_network(
        &format!("{p}.spec.host_network"),
        &spec.host_network.unwrap_or_default(),
    )
}

pub fn deployment(p: &str, d: &Deployment) -> Result {
    metadata(p, d.metadata.as_ref())?;
    let spec = d.spec.clone().unwrap_or_default();
    labels(&format!("{p}.spec.device_selector"), &spec.device_selector)?;
    name(&format!("{p}.spec.bfb"), &spec.bfb)?;
    name(&format!("{p}.spec.flavor"), &spec.flavor)?;
    if !spec.power_policy.is_empty() {
        name(&format!("{p}.spec.power_policy"), &spec.power_policy)?;
    }
    if spec.max_unavailable > MAX_MAX_UNAVAILABLE {
        return Err(invalid(
            format!("{p}.spec.max_unavailable"),
            format!(
                "{} is more than {MAX_MAX_UNAVAILABLE} (0 means 1)",
                spec.max_unavailable
            ),
        ));
    }
    if NodeEffect::try_from(spec.node_effect).is_err() {
        return Err(invalid(
            format!("{p}.spec.node_effect"),
            format!("unknown value {}", spec.node_effect),
        ));
    }
    Ok(())
}

mod bounds;
mod net;
pub(crate) mod nvconfig;
mod os;
pub(super) mod power;

#[cfg(test)]
mod tests;
