//! Size limits that both sides of the contract rely on, in one place so they
//! cannot drift: the coordinator checks them at the admin API (a request over
//! one is refused with INVALID_ARGUMENT before anything else is looked at)
//! and when it composes a node's desired state; the agent enforces the same
//! numbers on what it receives. docs/api.md ("Limits") lists them.
//!
//! Lengths are in bytes of UTF-8.

/// Object names and every reference to one (`spec.node`, `spec.bfb`, ...): a DNS label.
pub const MAX_NAME: usize = 63;
/// A label (or selector) key.
pub const MAX_LABEL_KEY: usize = 253;
/// A label (or selector) value.
pub const MAX_LABEL_VALUE: usize = 253;
/// Labels on one object, or entries in one selector.
pub const MAX_LABELS: usize = 64;

/// `device.spec.serial`.
pub const MAX_SERIAL: usize = 128;
/// `device.spec.rshim` (`rshim<N>`).
pub const MAX_RSHIM: usize = 16;
/// A PCI address, `DDDD:BB:DD.F`.
pub const PCI_ADDRESS_LEN: usize = 12;
/// `device.spec.bmc_address` (a host name or address, optionally with a port).
pub const MAX_BMC_ADDRESS: usize = 253;

/// `bfb.spec.url`.
pub const MAX_URL: usize = 2048;
/// `bfb.spec.sha256`: exactly 64 hex characters.
pub const SHA256_HEX_LEN: usize = 64;
/// `bfb.spec.version`.
pub const MAX_VERSION: usize = 128;

/// The rendered bf.cfg (`KEY='value'` lines, see [`bf_cfg_rendered_len`], and the
/// `bfb_modify_os` of the Flavor's `dpu_os`, see [`crate::dpu_os::rendered_len`]):
/// the agent refuses a larger one, as DPF does.
pub const MAX_BF_CFG_BYTES: usize = 128 * 1024;
/// A bf.cfg or NIC firmware parameter name.
pub const MAX_PARAM_KEY: usize = 128;
/// A NIC firmware parameter value.
pub const MAX_NIC_FW_VALUE: usize = 128;
/// NIC firmware parameters in one Flavor (the `nic_firmware` map, or all
/// `nvconfig` entries together).
pub const MAX_NIC_FW_PARAMS: usize = 256;
/// Entries in a Flavor's `nvconfig`.
pub const MAX_NVCONFIG_ENTRIES: usize = 64;
/// An `nvconfig` entry's device selector.
pub const MAX_NVCONFIG_DEVICE: usize = 128;
/// One `nvconfig` parameter, `NAME=VALUE` (NAME at most [`MAX_PARAM_KEY`]
/// plus an array index, VALUE at most [`MAX_NIC_FW_VALUE`]).
pub const MAX_NVCONFIG_PARAMETER: usize = MAX_PARAM_KEY + 16 + MAX_NIC_FW_VALUE;
/// A Flavor's `host_network`, encoded (bounds the number of bridges, ports,
/// addresses, PFs, VFs and routes together).
pub const MAX_HOST_NETWORK_BYTES: usize = 64 * 1024;
/// A string inside `host_network` (interface names are at most 15 bytes;
/// ports, addresses, routes and MACs are shorter than this).
pub const MAX_NETWORK_STRING: usize = 64;

/// `dpu_os.grub.kernel_parameters`: entries, and bytes in one.
pub const MAX_KERNEL_PARAMS: usize = 64;
pub const MAX_KERNEL_PARAM: usize = 256;
/// `dpu_os.sysctl.parameters`: entries, and bytes in one `key=value`.
pub const MAX_SYSCTL_PARAMS: usize = 128;
pub const MAX_SYSCTL_PARAM: usize = 1024;
/// `dpu_os.config_files`: entries.
pub const MAX_CONFIG_FILES: usize = 64;
/// `dpu_os.config_files[].path` (Linux's PATH_MAX).
pub const MAX_CONFIG_PATH: usize = 4096;
/// `dpu_os.config_files[].raw` (the whole bf.cfg is bounded too, and base64 adds a third).
pub const MAX_CONFIG_FILE_BYTES: usize = 64 * 1024;
/// `dpu_os.config_files[].owner`: `user[:group]`, each name at most 32 bytes.
pub const MAX_OWNER: usize = 65;
/// `dpu_os.ovs.raw_config_script`.
pub const MAX_OVS_SCRIPT: usize = 64 * 1024;
/// `dpu_os.containerd_config.registry_endpoint` (a URL).
pub const MAX_REGISTRY_ENDPOINT: usize = MAX_URL;

/// An agent's rshim inventory (in Hello and in hot-plug updates): rshims in
/// one inventory. Each one's `name` is at most [`MAX_RSHIM`], `serial`
/// [`MAX_SERIAL`], `pci_address` [`PCI_ADDRESS_LEN`]. A Hello over any of
/// these is refused; an update over them is ignored (logged).
pub const MAX_INVENTORY_RSHIMS: usize = 64;
/// An inventory rshim's `dev_info` (DEV_INFO, e.g. `BlueField-3(Rev 1)`).
pub const MAX_RSHIM_DEV_INFO: usize = 256;
/// An inventory rshim's `usb_path` (`1-1.4`).
pub const MAX_RSHIM_USB_PATH: usize = 256;
/// An inventory rshim's `error` (why the agent could not read the device).
pub const MAX_RSHIM_ERROR: usize = 1024;

/// The largest message the agent accepts from the coordinator (its gRPC
/// max decoding size). No desired state the coordinator composes is larger.
pub const MAX_AGENT_MESSAGE_BYTES: usize = 4 * 1024 * 1024;
/// One command in a desired state. Commands made from objects within the
/// limits above are well under it; the coordinator fails a Dpu whose command
/// would be larger (an object stored before these limits existed).
pub const MAX_COMMAND_BYTES: usize = 512 * 1024;
/// The largest admin API request the coordinator accepts; a larger one gets
/// RESOURCE_EXHAUSTED.
pub const MAX_ADMIN_REQUEST_BYTES: usize = 4 * 1024 * 1024;

/// How many bytes of a value an error message quotes.
pub const MAX_QUOTED: usize = 64;

/// List: items in a page when `page_size` is 0.
pub const DEFAULT_PAGE_SIZE: usize = 500;
/// List: the most items in a page; a larger `page_size` is read as this.
pub const MAX_PAGE_SIZE: usize = 1000;
/// List: a page ends before its items (encoded) pass this, so a page of
/// large objects stays well under gRPC's default 4 MiB message limit.
pub const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// List: a `page_token` (the server's are under 200 characters).
pub const MAX_PAGE_TOKEN: usize = 512;
/// Update: paths in one `update_mask`, and bytes in one path.
pub const MAX_MASK_PATHS: usize = 64;
pub const MAX_MASK_PATH: usize = 256;

/// The length of the bf.cfg the agent renders from these parameters: one
/// `KEY='value'` line per key, each `'` in a value written as `'\''`.
pub fn bf_cfg_rendered_len<'a>(params: impl IntoIterator<Item = (&'a String, &'a String)>) -> usize {
    params
        .into_iter()
        .map(|(k, v)| k.len() + "=''\n".len() + v.len() + 3 * v.matches('\'').count())
        .sum()
}

/// `value` as a Rust-style quoted string, cut to its first [`MAX_QUOTED`]
/// bytes (on a character boundary) with the full length said when cut; for
/// error messages, which must stay small whatever was sent.
pub fn quote(value: &str) -> String {
    if value.len() <= MAX_QUOTED {
        return format!("{value:?}");
    }
    let mut end = MAX_QUOTED;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}… ({} bytes)", &value[..end], value.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_cuts_long_values_on_a_character_boundary() {
        assert_eq!(quote("abc"), "\"abc\"");
        let long = "é".repeat(100);
        let q = quote(&long);
        assert!(q.len() < MAX_QUOTED + 32, "{q}");
        assert!(q.ends_with("… (200 bytes)"), "{q}");
    }

    #[test]
    fn rendered_length_counts_quotes_and_escapes() {
        let m: std::collections::BTreeMap<String, String> = [
            ("A".to_string(), "it's".to_string()),
            ("B".to_string(), String::new()),
        ]
        .into();
        // A='it'\''s'\n B=''\n
        assert_eq!(bf_cfg_rendered_len(&m), "A='it'\\''s'\n".len() + "B=''\n".len());
    }
}
