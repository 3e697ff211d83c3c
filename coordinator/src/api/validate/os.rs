//! A Flavor's `dpu_os` (the DPU OS settings rendered into bf.cfg, DPF's
//! DPUFlavor grub, sysctl, configFiles, ovs and containerdConfig): its size
//! bounds (called from `bounds`, before any other rule), the size of the
//! whole rendered bf.cfg (with the same renderer as the agent,
//! `hostplane_proto::dpu_os`), and its rules (called from `flavor`). Pure:
//! one Flavor at a time.
use std::collections::HashSet;

use hostplane_proto::dpu_os;
use hostplane_proto::limits::{self as lim, quote};
use hostplane_proto::v1::{ConfigFileOperation, DpuOsConfig, FlavorSpec};

use super::{Result, bounds, invalid};

fn count(field: String, n: usize, max: usize, what: &str) -> Result {
    if n > max {
        return Err(invalid(
            field,
            format!("{n} {what}, more than the maximum of {max}"),
        ));
    }
    Ok(())
}

/// Every size in `dpu_os`, then the size of the bf.cfg it renders to with `bf_cfg`.
pub fn bounds(p: &str, s: &FlavorSpec) -> Result {
    let Some(os) = &s.dpu_os else { return Ok(()) };
    let p = format!("{p}.spec.dpu_os");
    if let Some(g) = &os.grub {
        let f = format!("{p}.grub.kernel_parameters");
        count(
            f.clone(),
            g.kernel_parameters.len(),
            lim::MAX_KERNEL_PARAMS,
            "parameters",
        )?;
        for (i, k) in g.kernel_parameters.iter().enumerate() {
            bounds::len(|| format!("{f}[{i}]"), k, lim::MAX_KERNEL_PARAM)?;
        }
    }
    if let Some(x) = &os.sysctl {
        let f = format!("{p}.sysctl.parameters");
        count(
            f.clone(),
            x.parameters.len(),
            lim::MAX_SYSCTL_PARAMS,
            "parameters",
        )?;
        for (i, k) in x.parameters.iter().enumerate() {
            bounds::len(|| format!("{f}[{i}]"), k, lim::MAX_SYSCTL_PARAM)?;
        }
    }
    count(
        format!("{p}.config_files"),
        os.config_files.len(),
        lim::MAX_CONFIG_FILES,
        "files",
    )?;
    for (i, c) in os.config_files.iter().enumerate() {
        let f = format!("{p}.config_files[{i}]");
        bounds::len(|| format!("{f}.path"), &c.path, lim::MAX_CONFIG_PATH)?;
        bounds::len(|| format!("{f}.raw"), &c.raw, lim::MAX_CONFIG_FILE_BYTES)?;
        bounds::len(|| format!("{f}.permissions"), &c.permissions, 4)?;
        bounds::len(|| format!("{f}.owner"), &c.owner, lim::MAX_OWNER)?;
    }
    if let Some(o) = &os.ovs {
        bounds::len(
            || format!("{p}.ovs.raw_config_script"),
            &o.raw_config_script,
            lim::MAX_OVS_SCRIPT,
        )?;
    }
    if let Some(c) = &os.containerd_config {
        bounds::len(
            || format!("{p}.containerd_config.registry_endpoint"),
            &c.registry_endpoint,
            lim::MAX_REGISTRY_ENDPOINT,
        )?;
    }
    let rendered = dpu_os::rendered_len(&s.bf_cfg, Some(os));
    if rendered > lim::MAX_BF_CFG_BYTES {
        return Err(invalid(
            p,
            format!(
                "renders with spec.bf_cfg to a bf.cfg of {rendered} bytes (contents base64-encoded), more \
                 than the {}-byte maximum the agent accepts",
                lim::MAX_BF_CFG_BYTES
            ),
        ));
    }
    Ok(())
}

/// The rules of `dpu_os` (sizes are checked by [`bounds`] first).
pub fn check(p: &str, s: &FlavorSpec) -> Result {
    let Some(os) = &s.dpu_os else { return Ok(()) };
    let p = format!("{p}.spec.dpu_os");
    if let Some(g) = &os.grub {
        for (i, k) in g.kernel_parameters.iter().enumerate() {
            kernel_parameter(format!("{p}.grub.kernel_parameters[{i}]"), k)?;
        }
    }
    if let Some(x) = &os.sysctl {
        for (i, k) in x.parameters.iter().enumerate() {
            sysctl(format!("{p}.sysctl.parameters[{i}]"), k)?;
        }
    }
    config_files(&p, os)?;
    if let Some(o) = &os.ovs
        && let Some(at) = o.raw_config_script.find('\0')
    {
        return Err(invalid(
            format!("{p}.ovs.raw_config_script"),
            format!("contains a NUL byte at offset {at}"),
        ));
    }
    if let Some(c) = &os.containerd_config
        && !c.registry_endpoint.is_empty()
    {
        registry_endpoint(
            format!("{p}.containerd_config.registry_endpoint"),
            &c.registry_endpoint,
        )?;
    }
    Ok(())
}

/// One kernel parameter: a word the grub drop-in's double-quoted line keeps
/// as it is (grub-mkconfig sources it as shell).
fn kernel_parameter(f: String, k: &str) -> Result {
    if k.is_empty() {
        return Err(invalid(f, "empty (leave it out)"));
    }
    if let Some(c) = k.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            f,
            format!(
                "{} contains {c:?}: one parameter per entry, no spaces or control characters",
                quote(k)
            ),
        ));
    }
    if let Some(c) = k.chars().find(|c| matches!(c, '"' | '\'' | '\\' | '$' | '`')) {
        return Err(invalid(
            f,
            format!(
                "{} contains {c:?}, which the grub configuration (a shell file) would not keep as it is",
                quote(k)
            ),
        ));
    }
    Ok(())
}

/// `key=value`, the key `[a-z0-9_.\-/]+` (sysctl's names, dotted or slashed),
/// the value one line.
fn sysctl(f: String, s: &str) -> Result {
    let Some((key, value)) = s.split_once('=') else {
        return Err(invalid(f, format!("{} is not key=value", quote(s))));
    };
    let key = key.trim();
    let key_ok = !key.is_empty()
        && key
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-' | b'/'));
    if !key_ok {
        return Err(invalid(
            f,
            format!(
                "key {} must be lower-case letters, digits, '_', '.', '-' and '/'",
                quote(key)
            ),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(invalid(
            f,
            "the value must be one line, without control characters",
        ));
    }
    Ok(())
}

fn config_files(p: &str, os: &DpuOsConfig) -> Result {
    let mut seen = HashSet::new();
    for (i, c) in os.config_files.iter().enumerate() {
        let f = format!("{p}.config_files[{i}]");
        path(format!("{f}.path"), &c.path)?;
        if !seen.insert(c.path.as_str()) {
            return Err(invalid(
                format!("{f}.path"),
                format!(
                    "{} is named by an earlier config file; each path at most once",
                    quote(&c.path)
                ),
            ));
        }
        if ConfigFileOperation::try_from(c.operation).is_err() {
            return Err(invalid(
                format!("{f}.operation"),
                format!("unknown value {} (OVERRIDE or APPEND)", c.operation),
            ));
        }
        if let Some(at) = c.raw.find('\0') {
            return Err(invalid(
                format!("{f}.raw"),
                format!("contains a NUL byte at offset {at}"),
            ));
        }
        if !c.permissions.is_empty() && !permissions_ok(&c.permissions) {
            return Err(invalid(
                format!("{f}.permissions"),
                format!(
                    "{} is not an octal mode (e.g. 0644, 644, 1777)",
                    quote(&c.permissions)
                ),
            ));
        }
        if !c.owner.is_empty() && !owner_ok(&c.owner) {
            return Err(invalid(
                format!("{f}.owner"),
                format!(
                    "{} is not user or user:group (POSIX names: [a-z_][a-z0-9_-]*, at most 32 characters)",
                    quote(&c.owner)
                ),
            ));
        }
    }
    Ok(())
}

/// An absolute, normalized path of a file (not a directory).
fn path(f: String, path: &str) -> Result {
    if path.is_empty() {
        return Err(invalid(f, "required"));
    }
    if !path.starts_with('/') {
        return Err(invalid(f, format!("{} is not an absolute path", quote(path))));
    }
    if path.contains('\0') || path.chars().any(char::is_control) {
        return Err(invalid(
            f,
            format!("{} contains a NUL or control character", quote(path)),
        ));
    }
    if path.ends_with('/') {
        return Err(invalid(
            f,
            format!("{} names a directory; name a file", quote(path)),
        ));
    }
    if path[1..]
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(invalid(
            f,
            format!(
                "{} is not normalized (no empty, '.' or '..' components)",
                quote(path)
            ),
        ));
    }
    if let Some(r) = dpu_os::reserved(path) {
        return Err(invalid(
            f,
            format!(
                "{} would clash with {r}, which hostplane writes itself (grub, sysctl, OVS, containerd or \
                 first boot; /opt/hostplane and /var/lib/hostplane are hostplane's)",
                quote(path)
            ),
        ));
    }
    Ok(())
}

/// `0[0-7]{3}` or `[0-7]{3,4}`.
fn permissions_ok(m: &str) -> bool {
    (3..=4).contains(&m.len()) && m.bytes().all(|b| (b'0'..=b'7').contains(&b))
}

fn posix_name(n: &str) -> bool {
    let b = n.as_bytes();
    let body = b.strip_suffix(b"$").unwrap_or(b);
    !body.is_empty()
        && n.len() <= 32
        && (body[0].is_ascii_lowercase() || body[0] == b'_')
        && body
            .iter()
            .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'_' || c == b'-')
}

fn owner_ok(o: &str) -> bool {
    match o.split_once(':') {
        Some((u, g)) => posix_name(u) && posix_name(g),
        None => posix_name(o),
    }
}

/// An http(s) URL with a host, one word, nothing TOML's quoted string would change.
fn registry_endpoint(f: String, url: &str) -> Result {
    if let Some(c) = url
        .chars()
        .find(|c| c.is_whitespace() || c.is_control() || matches!(c, '"' | '\\'))
    {
        return Err(invalid(f, format!("{} contains {c:?}", quote(url))));
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(
            f,
            format!("{} is not a URL (https://host[:port])", quote(url)),
        ));
    };
    if scheme != "http" && scheme != "https" {
        return Err(invalid(
            f,
            format!("scheme must be http or https, not {}", quote(scheme)),
        ));
    }
    if rest.split(['/', '?', '#']).next().unwrap_or("").is_empty() {
        return Err(invalid(f, format!("{} has no host", quote(url))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_and_owners() {
        for m in ["0644", "644", "1777", "0000", "755"] {
            assert!(permissions_ok(m), "{m}");
        }
        for m in ["", "64", "08", "0o644", "rw-r--r--", "00644", "999"] {
            assert!(!permissions_ok(m), "{m}");
        }
        for o in ["root", "root:root", "ubuntu:adm", "_apt", "svc-x:grp_1", "mach$"] {
            assert!(owner_ok(o), "{o}");
        }
        for o in [
            ":root",
            "root:",
            "Root",
            "1user",
            "a b",
            "a:b:c",
            "a;b",
            &"x".repeat(33),
        ] {
            assert!(!owner_ok(o), "{o}");
        }
    }
}
