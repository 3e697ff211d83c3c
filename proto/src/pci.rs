//! PCI addresses as both sides spell them (`DDDD:BB:DD.F`): the agent derives
//! a DPU's PF0 from its rshim's function to run mstconfig/devlink on it, and
//! the coordinator does the same when it registers a Device for a reported
//! rshim. One grammar, so the two always agree.

/// `0000:04:00.2` (or `04:00.2`) -> `0000:04:00.2`, lower case; None when it
/// is not a PCI address.
pub fn normalize(addr: &str) -> Option<String> {
    let addr = addr.trim().to_ascii_lowercase();
    let parts: Vec<&str> = addr.split(':').collect();
    let (domain, bus, devfn) = match parts.as_slice() {
        [d, b, df] => (d.to_string(), *b, *df),
        [b, df] => ("0000".to_string(), *b, *df),
        _ => return None,
    };
    let (dev, func) = devfn.split_once('.')?;
    let hex = |s: &str, n: usize| s.len() == n && s.chars().all(|c| c.is_ascii_hexdigit());
    let func_ok = func.len() == 1 && func.chars().all(|c| c.is_digit(8));
    (hex(&domain, 4) && hex(bus, 2) && hex(dev, 2) && func_ok).then(|| format!("{domain}:{bus}:{dev}.{func}"))
}

/// PF0 of the device a PCI function belongs to (`0000:04:00.2`, a
/// BlueField's rshim function, -> `0000:04:00.0`): same domain, bus and
/// device, function 0, normalized; None when it is not a PCI address.
pub fn pf0(function: &str) -> Option<String> {
    let pci = normalize(function)?;
    let (bus_dev, _func) = pci.rsplit_once('.')?;
    Some(format!("{bus_dev}.0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pf0_is_function_zero_of_the_same_device() {
        assert_eq!(pf0("0000:04:00.2").as_deref(), Some("0000:04:00.0"));
        assert_eq!(pf0("0000:A3:00.1").as_deref(), Some("0000:a3:00.0"));
        assert_eq!(pf0("04:00.2").as_deref(), Some("0000:04:00.0"));
        assert_eq!(pf0(""), None);
        assert_eq!(pf0("usb-1-1.4"), None);
    }
}
