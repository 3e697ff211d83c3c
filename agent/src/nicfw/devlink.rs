//! NV config parameters the kernel exposes as devlink parameters, set
//! through iproute2's `devlink` instead of `mstconfig`.
//!
//! mlx5 exposes a few of the firmware's non-volatile configuration items as
//! generic devlink parameters in cmode `permanent` (stored in the NIC's
//! flash, loaded at its next boot: the same effect as `mstconfig set`).
//! [`DEVLINK_NAMES`] is the whole mapping; a parameter is set through
//! devlink only when `devlink dev param show pci/<addr>` lists its devlink
//! name with a `permanent` value on that device, else through mstconfig.
//!
//! `devlink -j dev param show <handle>` prints
//!
//! ```text
//! {"param":{"pci/0000:03:00.0":[
//!   {"name":"enable_sriov","type":"generic","values":[{"cmode":"permanent","value":true}]},
//!   {"name":"total_vfs","type":"generic","values":[{"cmode":"permanent","value":16}]}]}}
//! ```
//!
//! and `devlink dev param set <handle> name N value V cmode permanent` sets
//! one; errors go to stderr (`Error: devlink: ...`, `kernel answers: ...`)
//! with a non-zero exit.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use futures::future::BoxFuture;
use serde_json::Value;

use super::{NicConfigTool, NicFwError, NvParam};

/// The cmode NV config parameters are set in.
pub const PERMANENT: &str = "permanent";

/// The cmodes whose value is the one the device runs with now, in the order
/// they are looked for (a parameter listed only in `permanent` has no known
/// running value).
pub const RUNNING: &[&str] = &["runtime", "driverinit"];

/// How a devlink parameter's value is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevlinkKind {
    Bool,
    Number,
}

/// mstconfig name -> (devlink name, kind), all cmode `permanent`. Kept
/// small: only parameters mlx5 documents as the devlink form of an NV
/// config item (Documentation/networking/devlink/mlx5.rst).
pub const DEVLINK_NAMES: &[(&str, &str, DevlinkKind)] = &[
    ("SRIOV_EN", "enable_sriov", DevlinkKind::Bool),
    ("NUM_OF_VFS", "total_vfs", DevlinkKind::Number),
];

/// The devlink form of the NV config parameter `nv_name`, if it has one.
pub fn devlink_name(nv_name: &str) -> Option<(&'static str, DevlinkKind)> {
    DEVLINK_NAMES
        .iter()
        .find(|(n, _, _)| *n == nv_name)
        .map(|(_, d, k)| (*d, *k))
}

/// One devlink parameter of a device: its values per cmode, each as
/// mstconfig would show it (`True(1)`, `False(0)`, `16`, text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevlinkParam {
    pub name: String,
    pub values: Vec<(String, String)>,
}

impl DevlinkParam {
    /// The value in `cmode`, if the device has the parameter in that cmode.
    pub fn value(&self, cmode: &str) -> Option<&str> {
        self.values
            .iter()
            .find(|(c, _)| c == cmode)
            .map(|(_, v)| v.as_str())
    }
}

/// Reading and setting a device's devlink parameters.
pub trait DevlinkParams: Send + Sync {
    /// Every parameter of the devlink device `handle` (`pci/0000:03:00.0`).
    fn show<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<Vec<DevlinkParam>, NicFwError>>;
    /// Set `name` to `value` (as devlink takes it: `true`, `16`) in `cmode`.
    fn set<'a>(
        &'a self,
        handle: &'a str,
        name: &'a str,
        value: &'a str,
        cmode: &'a str,
    ) -> BoxFuture<'a, Result<(), NicFwError>>;
}

/// [`DevlinkParams`] over iproute2's `devlink` binary.
#[derive(Debug, Clone)]
pub struct Devlink {
    program: PathBuf,
    timeout: Duration,
}

impl Default for Devlink {
    fn default() -> Self {
        Devlink::new("devlink")
    }
}

impl Devlink {
    pub fn new(program: impl Into<PathBuf>) -> Devlink {
        Devlink {
            program: program.into(),
            timeout: Duration::from_secs(30),
        }
    }

    pub fn with_timeout(mut self, timeout: Duration) -> Devlink {
        self.timeout = timeout;
        self
    }

    fn name(&self) -> String {
        self.program.display().to_string()
    }

    async fn run(&self, args: &[&str]) -> Result<Output, NicFwError> {
        super::run_tool(&self.program, args, self.timeout, |program, source| {
            NicFwError::DevlinkMissing { program, source }
        })
        .await
    }

    fn failure(&self, action: &'static str, handle: &str, out: &Output) -> NicFwError {
        let text = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        let message = if lines.is_empty() {
            format!("no error text ({})", out.status)
        } else {
            lines.join("; ")
        };
        NicFwError::Tool {
            program: self.name(),
            action,
            device: handle.to_string(),
            message,
        }
    }
}

impl DevlinkParams for Devlink {
    fn show<'a>(&'a self, handle: &'a str) -> BoxFuture<'a, Result<Vec<DevlinkParam>, NicFwError>> {
        Box::pin(async move {
            let out = self.run(&["-j", "dev", "param", "show", handle]).await?;
            if !out.status.success() {
                return Err(self.failure("param show", handle, &out));
            }
            parse_show(&String::from_utf8_lossy(&out.stdout), handle).map_err(|reason| NicFwError::Parse {
                program: self.name(),
                device: handle.to_string(),
                reason,
            })
        })
    }

    fn set<'a>(
        &'a self,
        handle: &'a str,
        name: &'a str,
        value: &'a str,
        cmode: &'a str,
    ) -> BoxFuture<'a, Result<(), NicFwError>> {
        Box::pin(async move {
            let args = [
                "dev", "param", "set", handle, "name", name, "value", value, "cmode", cmode,
            ];
            let out = self.run(&args).await?;
            if out.status.success() {
                Ok(())
            } else {
                Err(self.failure("param set", handle, &out))
            }
        })
    }
}

/// A devlink JSON value as mstconfig shows values: `true` -> `True(1)`.
fn shown(v: &Value) -> String {
    match v {
        Value::Bool(true) => "True(1)".into(),
        Value::Bool(false) => "False(0)".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The `"param"` object of `devlink -j dev param show`, every entry kept:
/// older iproute2 opens a new `"<handle>": [...]` per parameter, so one
/// handle may be a key several times (a plain JSON map keeps only the last).
struct Devices(Vec<(String, Value)>);

impl<'de> serde::Deserialize<'de> for Devices {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Devices, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Devices;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an object of devlink handles")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Devices, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = m.next_entry::<String, Value>()? {
                    out.push((k, v));
                }
                Ok(Devices(out))
            }
        }
        d.deserialize_map(V)
    }
}

#[derive(serde::Deserialize)]
struct Show {
    param: Devices,
}

/// Parses `devlink -j dev param show <handle>`: the parameters of `handle`.
pub fn parse_show(text: &str, handle: &str) -> Result<Vec<DevlinkParam>, String> {
    let show: Show = serde_json::from_str(text).map_err(|e| format!("not the JSON of param show: {e}"))?;
    let mut out = Vec::new();
    // A device with no parameters is listed as nothing at all.
    for (_, list) in show.param.0.iter().filter(|(h, _)| h == handle) {
        let list = list
            .as_array()
            .ok_or_else(|| format!("param.{handle:?} is not a list"))?;
        for p in list {
            let name = p
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("a parameter of {handle} without a name: {p}"))?;
            let values = p
                .get("values")
                .and_then(Value::as_array)
                .ok_or_else(|| format!("parameter {name} has no \"values\" list"))?
                .iter()
                .filter_map(|cv| {
                    let cmode = cv.get("cmode")?.as_str()?;
                    Some((cmode.to_string(), shown(cv.get("value")?)))
                })
                .collect();
            out.push(DevlinkParam {
                name: name.to_string(),
                values,
            });
        }
    }
    Ok(out)
}

/// A value as devlink takes it for a parameter of `kind`: booleans as
/// `true`/`false`, numbers in decimal. A value that is neither is passed
/// as given, for devlink to refuse in its own words.
pub fn devlink_value(kind: DevlinkKind, desired: &str) -> String {
    match kind {
        DevlinkKind::Bool if super::value_matches("True(1)", desired) => "true".into(),
        DevlinkKind::Bool if super::value_matches("False(0)", desired) => "false".into(),
        DevlinkKind::Number => match super::split_value(desired).1 {
            Some(n) => n.to_string(),
            None => desired.to_string(),
        },
        DevlinkKind::Bool => desired.to_string(),
    }
}

/// The mapped parameters of one devlink device seen as a [`NicConfigTool`]:
/// names are mstconfig's, values the `permanent` ones.
pub(super) struct DevlinkTool<'a> {
    pub devlink: &'a dyn DevlinkParams,
}

impl DevlinkTool<'_> {
    /// The mapped parameters that `params` (a `show`) has in cmode permanent.
    pub fn nv_params(params: &[DevlinkParam]) -> Vec<NvParam> {
        DEVLINK_NAMES
            .iter()
            .filter_map(|(nv, dl, _)| {
                let p = params.iter().find(|p| p.name == *dl)?;
                Some(NvParam {
                    name: nv.to_string(),
                    current: RUNNING.iter().find_map(|c| p.value(c)).map(str::to_string),
                    next_boot: p.value(PERMANENT)?.to_string(),
                })
            })
            .collect()
    }
}

impl NicConfigTool for DevlinkTool<'_> {
    async fn query(&self, handle: &str) -> Result<Vec<NvParam>, NicFwError> {
        Ok(Self::nv_params(&self.devlink.show(handle).await?))
    }

    async fn set(&self, handle: &str, params: &[(String, String)]) -> Result<(), NicFwError> {
        for (name, value) in params {
            let (dl, kind) = devlink_name(name).ok_or_else(|| NicFwError::Tool {
                program: "devlink".into(),
                action: "param set",
                device: handle.to_string(),
                message: format!("{name} has no devlink form"),
            })?;
            self.devlink
                .set(handle, dl, &devlink_value(kind, value), PERMANENT)
                .await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_param_show() {
        let text = r#"{"param":{"pci/0000:03:00.0":[
            {"name":"enable_sriov","type":"generic","values":[{"cmode":"permanent","value":true}]},
            {"name":"total_vfs","type":"generic","values":[{"cmode":"permanent","value":16}]},
            {"name":"flow_steering_mode","type":"driver-specific","values":[{"cmode":"runtime","value":"dmfs"}]}]}}"#;
        let p = parse_show(text, "pci/0000:03:00.0").unwrap();
        assert_eq!(p.len(), 3);
        assert_eq!(p[0].value(PERMANENT), Some("True(1)"));
        assert_eq!(p[1].value(PERMANENT), Some("16"));
        assert_eq!(p[2].value(PERMANENT), None);
        assert_eq!(p[2].value("runtime"), Some("dmfs"));
        let nv = DevlinkTool::nv_params(&p);
        assert_eq!(nv.len(), 2);
        assert_eq!(
            (nv[0].name.as_str(), nv[0].next_boot.as_str()),
            ("SRIOV_EN", "True(1)")
        );
        assert_eq!(
            (nv[1].name.as_str(), nv[1].next_boot.as_str()),
            ("NUM_OF_VFS", "16")
        );
        // Only a permanent value is known: no running value.
        assert_eq!(nv[0].current, None);
        // A runtime (else driverinit) value is the running one.
        let with_running = r#"{"param":{"pci/0000:03:00.0":[
            {"name":"enable_sriov","type":"generic","values":[{"cmode":"runtime","value":false},{"cmode":"permanent","value":true}]},
            {"name":"total_vfs","type":"generic","values":[{"cmode":"permanent","value":16},{"cmode":"driverinit","value":8}]}]}}"#;
        let nv = DevlinkTool::nv_params(&parse_show(with_running, "pci/0000:03:00.0").unwrap());
        assert_eq!(nv[0].current.as_deref(), Some("False(0)"));
        assert_eq!(nv[0].next_boot, "True(1)");
        assert_eq!(nv[1].current.as_deref(), Some("8"));
        // Another device's parameters are not this one's.
        assert!(parse_show(text, "pci/0000:04:00.0").unwrap().is_empty());
        // Older iproute2: one "<handle>": [...] per parameter, the key repeated.
        let repeated = r#"{"param":{"pci/0000:03:00.0":[{"name":"enable_sriov","type":"generic","values":[{"cmode":"permanent","value":false}]}],
            "pci/0000:03:00.0":[{"name":"total_vfs","type":"generic","values":[{"cmode":"permanent","value":4}]}]}}"#;
        let p = parse_show(repeated, "pci/0000:03:00.0").unwrap();
        let nv = DevlinkTool::nv_params(&p);
        assert_eq!(nv.len(), 2, "{p:?}");
        assert_eq!(nv[0].next_boot, "False(0)");
        assert_eq!(nv[1].next_boot, "4");
        assert!(parse_show("[]", "x").is_err());
        assert!(parse_show(r#"{"param":{"x":{}}}"#, "x").is_err());
        assert!(parse_show("nope", "x").is_err());
    }

    #[test]
    fn values_are_written_as_devlink_takes_them() {
        use DevlinkKind::{Bool, Number};
        assert_eq!(devlink_value(Bool, "1"), "true");
        assert_eq!(devlink_value(Bool, "True(1)"), "true");
        assert_eq!(devlink_value(Bool, "false"), "false");
        assert_eq!(devlink_value(Bool, "maybe"), "maybe");
        assert_eq!(devlink_value(Number, "0x10"), "16");
        assert_eq!(devlink_value(Number, "8"), "8");
        assert_eq!(devlink_value(Number, "eight"), "eight");
        assert_eq!(devlink_name("SRIOV_EN"), Some(("enable_sriov", Bool)));
        assert_eq!(devlink_name("NUM_OF_VFS"), Some(("total_vfs", Number)));
        assert_eq!(devlink_name("PF_BAR2_ENABLE"), None);
    }
}
