//! A Flavor's `nvconfig` (NIC firmware parameters per device selector, DPF's
//! DPUFlavor spec.nvconfig): its size bounds (called from `bounds`, before any
//! other rule) and its rules (called from `flavor`). Pure: one Flavor at a time.
use std::collections::HashMap;

use hostplane_proto::limits::{self as lim, quote};
use hostplane_proto::v1::{FlavorSpec, NicFirmwareConfig};

use super::{Result, bounds, invalid};

/// The selector that matches every DPU the Flavor is used for ("" means the same).
pub fn is_wildcard(device: &str) -> bool {
    device.is_empty() || device == "*"
}

/// Every size in `nvconfig`: entries, selectors, parameters, and the
/// parameters of all entries together.
pub fn bounds(p: &str, entries: &[NicFirmwareConfig]) -> Result {
    let f = format!("{p}.spec.nvconfig");
    if entries.len() > lim::MAX_NVCONFIG_ENTRIES {
        return Err(invalid(
            f,
            format!(
                "{} entries, more than the maximum of {}",
                entries.len(),
                lim::MAX_NVCONFIG_ENTRIES
            ),
        ));
    }
    let total: usize = entries.iter().map(|e| e.parameters.len()).sum();
    if total > lim::MAX_NIC_FW_PARAMS {
        return Err(invalid(
            f,
            format!(
                "{total} parameters in all entries, more than the maximum of {}",
                lim::MAX_NIC_FW_PARAMS
            ),
        ));
    }
    for (i, e) in entries.iter().enumerate() {
        bounds::len(|| format!("{f}[{i}].device"), &e.device, lim::MAX_NVCONFIG_DEVICE)?;
        for (j, x) in e.parameters.iter().enumerate() {
            bounds::len(
                || format!("{f}[{i}].parameters[{j}]"),
                x,
                lim::MAX_NVCONFIG_PARAMETER,
            )?;
        }
    }
    Ok(())
}

/// A parameter's NAME (with its array index normalised: `NAME[03]` is
/// `NAME[3]`) and VALUE, or why it is not `NAME=VALUE`.
pub fn parse_parameter(s: &str) -> std::result::Result<(String, &str), String> {
    let Some((name, value)) = s.split_once('=') else {
        return Err(format!("{} is not NAME=VALUE (e.g. PF_BAR2_ENABLE=0)", quote(s)));
    };
    let (base, index) = match name.strip_suffix(']').and_then(|n| n.split_once('[')) {
        Some((base, idx)) => (base, Some(idx)),
        None => (name, None),
    };
    if !super::is_shell_identifier(base) {
        return Err(format!(
            "name {} must be [A-Za-z_][A-Za-z0-9_]*, optionally with an array index (NAME[3])",
            quote(name)
        ));
    }
    if base.len() > lim::MAX_PARAM_KEY {
        return Err(format!(
            "name of {} bytes, more than the maximum of {}",
            base.len(),
            lim::MAX_PARAM_KEY
        ));
    }
    let key = match index {
        None => base.to_string(),
        Some(idx) => {
            let n: u32 = idx
                .bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| idx.parse().ok())
                .flatten()
                .ok_or_else(|| {
                    format!(
                        "array index in {} must be a decimal number (NAME[3])",
                        quote(name)
                    )
                })?;
            format!("{base}[{n}]")
        }
    };
    if value.is_empty() {
        return Err(format!("{key}: value required (NAME=VALUE)"));
    }
    if value.len() > lim::MAX_NIC_FW_VALUE || value.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "{key}: value must be at most {} characters, without spaces",
            lim::MAX_NIC_FW_VALUE
        ));
    }
    Ok((key, value))
}

/// Two selectors could match one device: "*" (or "") overlaps every selector; others only an
/// equal one.
fn overlap(a: &str, b: &str) -> bool {
    is_wildcard(a) || is_wildcard(b) || a == b
}

/// The rules of `spec.nvconfig` (after [`bounds`]).
pub fn check(p: &str, spec: &FlavorSpec) -> Result {
    let f = format!("{p}.spec.nvconfig");
    if spec.nvconfig.is_empty() {
        return Ok(());
    }
    if !spec.nic_firmware.is_empty() {
        return Err(invalid(
            format!("{p}.spec.nic_firmware"),
            "set either nic_firmware (deprecated) or nvconfig, not both; use nvconfig (a nic_firmware map is \
             one nvconfig entry with device \"*\")",
        ));
    }
    // Per entry: NAME -> (value, parameter index).
    let mut parsed: Vec<HashMap<String, (&str, usize)>> = Vec::new();
    for (i, e) in spec.nvconfig.iter().enumerate() {
        if e.device.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(
                format!("{f}[{i}].device {}", quote(&e.device)),
                "must be \"*\" (or empty) for every device, or a device name, serial, PCI address or model, \
                 without spaces",
            ));
        }
        if e.parameters.is_empty() {
            return Err(invalid(
                format!("{f}[{i}].parameters"),
                "at least one NAME=VALUE required",
            ));
        }
        let mut names: HashMap<String, (&str, usize)> = HashMap::new();
        for (j, x) in e.parameters.iter().enumerate() {
            let (name, value) =
                parse_parameter(x).map_err(|why| invalid(format!("{f}[{i}].parameters[{j}]"), why))?;
            if let Some((_, k)) = names.get(&name) {
                return Err(invalid(
                    format!("{f}[{i}].parameters[{j}]"),
                    format!("{name} is already set in parameters[{k}] of this entry"),
                ));
            }
            names.insert(name, (value, j));
        }
        // Against the earlier entries whose selector could match the same device.
        for (h, earlier) in parsed.iter().enumerate() {
            if !overlap(&spec.nvconfig[h].device, &e.device) {
                continue;
            }
            let mut clash: Vec<(&String, &(&str, usize))> = names
                .iter()
                .filter(|(n, (v, _))| earlier.get(*n).is_some_and(|(w, _)| w != v))
                .collect();
            clash.sort_by_key(|(_, (_, j))| *j);
            if let Some((name, (value, j))) = clash.first() {
                let (other, k) = earlier[*name];
                return Err(invalid(
                    format!("{f}[{i}].parameters[{j}]"),
                    format!(
                        "{name}={value} contradicts {name}={other} in nvconfig[{h}].parameters[{k}], whose device \
                         selector {} can match the same device as {}",
                        quote(&spec.nvconfig[h].device),
                        quote(&e.device)
                    ),
                ));
            }
        }
        parsed.push(names);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn entry(device: &str, params: &[&str]) -> NicFirmwareConfig {
        NicFirmwareConfig {
            device: device.into(),
            parameters: params.iter().map(|s| s.to_string()).collect(),
            host_power_cycle_required: false,
        }
    }

    fn spec(entries: Vec<NicFirmwareConfig>) -> FlavorSpec {
        FlavorSpec {
            nvconfig: entries,
            ..Default::default()
        }
    }

    fn err(s: &FlavorSpec) -> String {
        bounds("flavor", &s.nvconfig)
            .and_then(|()| check("flavor", s))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn dpf_shaped_entries_pass() {
        let s = spec(vec![
            entry("*", &["PF_BAR2_ENABLE=0", "PER_PF_NUM_SF=1", "PF_TOTAL_SF=20"]),
            entry("BlueField-3", &["LINK_TYPE_P1=ETH", "PF_BAR2_ENABLE=0"]),
            entry("0000:04:00.0", &["MODULE_SPLIT_M0[1]=1"]),
            entry("MT2233X0001", &["LINK_TYPE_P1=IB"]),
        ]);
        bounds("flavor", &s.nvconfig).unwrap();
        // BlueField-3 and MT2233X0001 are different selectors (only "*" and equal ones are
        // compared), so LINK_TYPE_P1 may differ between them.
        check("flavor", &s).unwrap();
    }

    #[test]
    fn parameters_are_name_equals_value() {
        assert_eq!(parse_parameter("A=1"), Ok(("A".into(), "1")));
        assert_eq!(parse_parameter("A[007]=x=y"), Ok(("A[7]".into(), "x=y")));
        for bad in [
            "A", "=1", "1A=1", "A-B=1", "A[]=1", "A[x]=1", "A[1=1", "A=", "A=1 2", "A=\0",
        ] {
            assert!(parse_parameter(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn each_rule_names_the_field() {
        let cases: Vec<(FlavorSpec, &str)> = vec![
            (
                spec(vec![entry("*", &["A=1"]), entry("x", &["B"])]),
                "flavor.spec.nvconfig[1].parameters[0]: \"B\" is not NAME=VALUE",
            ),
            (
                spec(vec![entry("*", &["A=1", "B=2", "A=1"])]),
                "flavor.spec.nvconfig[0].parameters[2]: A is already set in parameters[0] of this entry",
            ),
            (
                spec(vec![entry("*", &["A[1]=1", "A[01]=2"])]),
                "flavor.spec.nvconfig[0].parameters[1]: A[1] is already set",
            ),
            (
                spec(vec![entry("d1", &["A=1"]), entry("", &["B=2", "A=2"])]),
                "flavor.spec.nvconfig[1].parameters[1]: A=2 contradicts A=1 in nvconfig[0].parameters[0]",
            ),
            (
                spec(vec![entry("d1", &["A=1"]), entry("d1", &["A=2"])]),
                "flavor.spec.nvconfig[1].parameters[0]: A=2 contradicts",
            ),
            (
                spec(vec![entry("a b", &["A=1"])]),
                "flavor.spec.nvconfig[0].device \"a b\": must be",
            ),
            (
                spec(vec![entry("*", &[])]),
                "flavor.spec.nvconfig[0].parameters: at least one",
            ),
            (
                spec(vec![entry("*", &[&format!("A={}", "v".repeat(129))])]),
                "flavor.spec.nvconfig[0].parameters[0]: A: value must be at most 128",
            ),
            (
                spec(vec![entry(&"d".repeat(129), &["A=1"])]),
                "flavor.spec.nvconfig[0].device: 129 bytes, more than the maximum of 128",
            ),
            (
                spec((0..65).map(|_| entry("*", &["A=1"])).collect()),
                "flavor.spec.nvconfig: 65 entries, more than the maximum of 64",
            ),
            (
                spec(vec![entry("*", &["A=1"; 257])]),
                "flavor.spec.nvconfig: 257 parameters in all entries, more than the maximum of 256",
            ),
            (
                FlavorSpec {
                    nic_firmware: [("A".to_string(), "1".to_string())].into(),
                    nvconfig: vec![entry("*", &["B=1"])],
                    ..Default::default()
                },
                "flavor.spec.nic_firmware: set either nic_firmware (deprecated) or nvconfig, not both; use nvconfig",
            ),
        ];
        for (s, want) in cases {
            let e = err(&s);
            assert!(e.starts_with(want), "{e:?} does not start with {want:?}");
        }
    }

    #[test]
    fn the_same_value_twice_or_disjoint_selectors_are_no_contradiction() {
        let s = spec(vec![
            entry("*", &["A=1"]),
            entry("d1", &["A=1", "B=1"]),
            entry("d2", &["B=2"]),
        ]);
        check("flavor", &s).unwrap();
    }

    fn name() -> impl Strategy<Value = String> {
        "[A-Z_][A-Z0-9_]{0,6}"
    }

    proptest! {
        /// Contradictions are refused exactly when two overlapping entries set one NAME to two
        /// values; the answer does not depend on anything else.
        #[test]
        fn contradictions_are_found_exactly(
            entries in prop::collection::vec(
                (prop::sample::select(vec!["*", "", "d1", "d2", "BlueField-3"]),
                 prop::collection::btree_map(name(), 0u8..3, 1..4)),
                1..5,
            )
        ) {
            let s = spec(entries.iter().map(|(d, m)| NicFirmwareConfig {
                device: d.to_string(),
                parameters: m.iter().map(|(k, v)| format!("{k}={v}")).collect(),
                host_power_cycle_required: false,
            }).collect());
            let mut contradiction = false;
            for (i, (a, ma)) in entries.iter().enumerate() {
                for (b, mb) in &entries[..i] {
                    if overlap(a, b) && ma.iter().any(|(k, v)| mb.get(k).is_some_and(|w| w != v)) {
                        contradiction = true;
                    }
                }
            }
            let res = check("flavor", &s);
            prop_assert_eq!(res.is_err(), contradiction, "{:?}", res);
            if let Err(e) = res {
                prop_assert!(e.to_string().contains("contradicts"), "{}", e);
            }
        }
    }
}
