//! Update masks (`UpdateRequest.update_mask`, a `google.protobuf.FieldMask`;
//! conventions of Google's AIP-134 and AIP-161).
//!
//! Paths use the resource's proto field names (`spec.reboot_method`,
//! `spec.host_network.mtu`, `metadata.labels`) and are checked against the
//! compiled descriptors, so every field the contract has can be named and
//! nothing else. A path may name `spec`, any field under it (not inside a
//! list or map), or `metadata.labels` (the whole map). The masked fields are
//! copied from the request onto the stored object through their proto3 JSON
//! form: a named field the request leaves unset is reset to its default,
//! and fields that are not named keep their stored values.
use std::collections::HashMap;
use std::sync::LazyLock;

use hostplane_proto::limits::quote;
use hostplane_proto::pbjson_types::field_descriptor_proto::{Label, Type};
use hostplane_proto::pbjson_types::{DescriptorProto, FieldDescriptorProto, FieldMask, FileDescriptorSet};
use hostplane_proto::v1::{FILE_DESCRIPTOR_SET, Resource};
use prost::Message;
use serde_json::{Map, Value};

use super::error::ApiError;

/// At most this many paths in one mask, of at most this many bytes.
pub use hostplane_proto::limits::{MAX_MASK_PATH as MAX_PATH_LEN, MAX_MASK_PATHS as MAX_PATHS};

/// What an Update changes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Mask {
    /// No mask (or `*`): spec and labels as the request has them.
    Replace,
    /// Only these fields.
    Fields(Vec<MaskPath>),
}

/// One checked path, as the proto3 JSON keys to follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MaskPath {
    /// The JSON keys down to the named field's parent.
    parent: Vec<String>,
    /// The named field's JSON key, with the other members of its oneof (a
    /// oneof is copied whole, so at most one member is ever set).
    fields: Vec<String>,
}

/// Every message of the contract by full name (`.hostplane.v1.Node`).
static MESSAGES: LazyLock<HashMap<String, DescriptorProto>> = LazyLock::new(|| {
    let mut out = HashMap::new();
    let Ok(set) = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET) else {
        return out;
    };
    fn add(out: &mut HashMap<String, DescriptorProto>, scope: &str, m: &DescriptorProto) {
        let name = format!("{scope}.{}", m.name());
        for nested in &m.nested_type {
            add(out, &name, nested);
        }
        out.insert(name, m.clone());
    }
    for f in &set.file {
        let scope = match f.package() {
            "" => String::new(),
            p => format!(".{p}"),
        };
        for m in &f.message_type {
            add(&mut out, &scope, m);
        }
    }
    out
});

fn json_name(f: &FieldDescriptorProto) -> String {
    if let Some(j) = f.json_name.as_ref().filter(|j| !j.is_empty()) {
        return j.clone();
    }
    let mut out = String::new();
    let mut upper = false;
    for c in f.name().chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn is_message(f: &FieldDescriptorProto) -> bool {
    f.r#type() == Type::Message
}

fn is_map(f: &FieldDescriptorProto) -> bool {
    is_message(f)
        && MESSAGES
            .get(f.type_name())
            .is_some_and(|m| m.options.as_ref().is_some_and(|o| o.map_entry()))
}

/// The JSON key of a resource's kind (`node`, `powerPolicy`) and its message.
fn kind_message(r: &Resource) -> Option<(String, &'static DescriptorProto)> {
    let resource = MESSAGES.get(".hostplane.v1.Resource")?;
    let kind = r.kind.as_ref()?;
    // The oneof member that is set: the one field of the JSON object.
    let value = serde_json::to_value(Resource {
        kind: Some(kind.clone()),
    })
    .ok()?;
    let key = value.as_object()?.keys().next()?.clone();
    let field = resource.field.iter().find(|f| json_name(f) == key)?;
    Some((key, MESSAGES.get(field.type_name())?))
}

/// Check `mask` against the kind of `r`.
pub(super) fn parse(mask: Option<&FieldMask>, r: &Resource) -> Result<Mask, ApiError> {
    let Some(mask) = mask else {
        return Ok(Mask::Replace);
    };
    match mask.paths.as_slice() {
        [] => {
            return Err(ApiError::invalid(
                "update_mask",
                "names no field; leave update_mask out to replace spec and labels, or name the fields to change",
            ));
        }
        [only] if only == "*" => return Ok(Mask::Replace),
        _ => {}
    }
    if mask.paths.len() > MAX_PATHS {
        return Err(ApiError::invalid(
            "update_mask.paths",
            format!("{} paths, more than {MAX_PATHS}", mask.paths.len()),
        ));
    }
    let (_, msg) = kind_message(r).ok_or_else(|| ApiError::invalid("resource", "required"))?;
    let paths = mask
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| resolve(&format!("update_mask.paths[{i}]"), msg, p))
        .collect::<Result<_, _>>()?;
    Ok(Mask::Fields(paths))
}

fn resolve(field: &str, top: &DescriptorProto, path: &str) -> Result<MaskPath, ApiError> {
    let bad = |reason: String| ApiError::invalid(field, reason);
    if path.len() > MAX_PATH_LEN {
        return Err(bad(format!(
            "{} is longer than {MAX_PATH_LEN} bytes",
            quote(path)
        )));
    }
    if path == "*" {
        return Err(bad("\"*\" replaces everything and must be the only path".into()));
    }
    let segments: Vec<&str> = path.split('.').collect();
    let allowed = matches!(segments.as_slice(), ["spec", ..] | ["metadata", "labels"]);
    let mut msg = top;
    let mut parent = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        let so_far = segments[..=i].join(".");
        if seg.is_empty() {
            return Err(bad(format!("{} has an empty field name", quote(path))));
        }
        let Some(f) = msg.field.iter().find(|f| f.name() == *seg) else {
            let hint = msg
                .field
                .iter()
                .find(|f| json_name(f) == *seg)
                .map(|f| format!(" (paths use proto field names: {:?})", f.name()))
                .unwrap_or_default();
            return Err(bad(format!(
                "unknown field {} in {}{hint}",
                quote(&so_far),
                msg.name()
            )));
        };
        if i + 1 == segments.len() {
            if !allowed {
                return Err(bad(format!(
                    "{} cannot be updated: a mask names spec, fields under spec, or metadata.labels \
                     (status and the other metadata are the system's)",
                    quote(path)
                )));
            }
            let fields = match f.oneof_index {
                Some(o) if !f.proto3_optional() => msg
                    .field
                    .iter()
                    .filter(|g| g.oneof_index == Some(o) && !g.proto3_optional())
                    .map(json_name)
                    .collect(),
                _ => vec![json_name(f)],
            };
            return Ok(MaskPath { parent, fields });
        }
        if f.label() == Label::Repeated || !is_message(f) {
            let what = if is_map(f) {
                "a map"
            } else if f.label() == Label::Repeated {
                "a list"
            } else {
                "not a message"
            };
            return Err(bad(format!(
                "{} is {what}: a mask names it whole, not fields inside it",
                quote(&so_far)
            )));
        }
        parent.push(json_name(f));
        msg = MESSAGES
            .get(f.type_name())
            .ok_or_else(|| bad(format!("{} has no known type", quote(&so_far))))?;
    }
    // `split` yields at least one segment, so the loop returned.
    Err(bad(format!("{} names no field", quote(path))))
}

fn to_json(r: &Resource) -> Result<Value, ApiError> {
    serde_json::to_value(r).map_err(|e| ApiError::invalid("resource", format!("cannot be encoded: {e}")))
}

/// The object a client's JSON is about: `{"node": {...}}` → `{...}`.
fn body(v: &mut Value) -> Option<&mut Map<String, Value>> {
    v.as_object_mut()?.values_mut().next()?.as_object_mut()
}

/// `stored` with the fields `paths` name taken from `incoming`.
pub(super) fn apply(
    stored: &Resource,
    incoming: &Resource,
    paths: &[MaskPath],
) -> Result<Resource, ApiError> {
    let mut out = to_json(stored)?;
    let mut inc = to_json(incoming)?;
    let (Some(dst), Some(src)) = (body(&mut out), body(&mut inc)) else {
        return Err(ApiError::invalid(
            "resource",
            "kind does not match the stored object",
        ));
    };
    for p in paths {
        let from = p
            .parent
            .iter()
            .try_fold(&*src, |m, k| m.get(k).and_then(Value::as_object));
        for key in &p.fields {
            match from.and_then(|m| m.get(key)) {
                Some(v) => {
                    let mut at = &mut *dst;
                    for k in &p.parent {
                        let slot = at.entry(k.clone()).or_insert_with(|| Value::Object(Map::new()));
                        if !slot.is_object() {
                            *slot = Value::Object(Map::new());
                        }
                        at = slot.as_object_mut().expect("an object was put there");
                    }
                    at.insert(key.clone(), v.clone());
                }
                // Unset in the request: the default, which proto3 JSON leaves out.
                // Parents that do not exist are not created for it.
                None => {
                    let at = p
                        .parent
                        .iter()
                        .try_fold(&mut *dst, |m, k| m.get_mut(k).and_then(Value::as_object_mut));
                    if let Some(at) = at {
                        at.remove(key);
                    }
                }
            }
        }
    }
    serde_json::from_value(out)
        .map_err(|e| ApiError::invalid("resource", format!("after the update mask: {e}")))
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{self, Node, NodeSpec, ObjectMeta, RebootMethod};

    use super::*;

    fn node(labels: &[(&str, &str)], method: RebootMethod) -> Resource {
        Node {
            metadata: Some(ObjectMeta {
                name: "n1".into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            spec: Some(NodeSpec {
                reboot_method: method as i32,
            }),
            status: None,
        }
        .into()
    }

    fn mask(paths: &[&str]) -> Option<FieldMask> {
        Some(FieldMask {
            paths: paths.iter().map(|p| p.to_string()).collect(),
        })
    }

    fn fields(m: Mask) -> Vec<MaskPath> {
        match m {
            Mask::Fields(f) => f,
            Mask::Replace => panic!("not a field mask"),
        }
    }

    #[test]
    fn no_mask_and_star_replace() {
        let r = node(&[], RebootMethod::Agent);
        assert_eq!(parse(None, &r).unwrap(), Mask::Replace);
        assert_eq!(parse(mask(&["*"]).as_ref(), &r).unwrap(), Mask::Replace);
    }

    #[test]
    fn labels_only_keeps_the_spec() {
        let stored = node(&[("rack", "r1")], RebootMethod::Agent);
        let sent = node(&[("rack", "r2")], RebootMethod::Unspecified);
        let m = fields(parse(mask(&["metadata.labels"]).as_ref(), &sent).unwrap());
        let out = apply(&stored, &sent, &m).unwrap();
        assert_eq!(out, node(&[("rack", "r2")], RebootMethod::Agent));
    }

    #[test]
    fn a_named_field_left_unset_is_reset() {
        let stored = node(&[("rack", "r1")], RebootMethod::Agent);
        let sent = node(&[], RebootMethod::Unspecified);
        let m = fields(parse(mask(&["spec.reboot_method"]).as_ref(), &sent).unwrap());
        let out = apply(&stored, &sent, &m).unwrap();
        assert_eq!(out, node(&[("rack", "r1")], RebootMethod::Unspecified));
    }

    #[test]
    fn nested_fields_of_a_spec_can_be_named() {
        let flavor = |mtu: u32, vfs: u32| -> Resource {
            v1::Flavor {
                metadata: Some(ObjectMeta {
                    name: "f".into(),
                    ..Default::default()
                }),
                spec: Some(v1::FlavorSpec {
                    host_network: Some(v1::HostNetwork {
                        mtu,
                        num_vfs: vfs,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
            }
            .into()
        };
        let m = fields(parse(mask(&["spec.host_network.mtu"]).as_ref(), &flavor(0, 0)).unwrap());
        let out = apply(&flavor(1500, 4), &flavor(9000, 8), &m).unwrap();
        assert_eq!(out, flavor(9000, 4));
    }

    #[test]
    fn bad_paths_are_refused_naming_the_path() {
        let r = node(&[], RebootMethod::Agent);
        let cases: &[(&[&str], &str)] = &[
            (&[], "update_mask: names no field"),
            (
                &["spec.nope"],
                "update_mask.paths[0]: unknown field \"spec.nope\" in NodeSpec",
            ),
            (
                &["spec", "spec.rebootMethod"],
                "update_mask.paths[1]: unknown field \"spec.rebootMethod\" in NodeSpec (paths use proto field names: \"reboot_method\")",
            ),
            (&["status"], "update_mask.paths[0]: \"status\" cannot be updated"),
            (
                &["metadata.name"],
                "update_mask.paths[0]: \"metadata.name\" cannot be updated",
            ),
            (
                &["metadata"],
                "update_mask.paths[0]: \"metadata\" cannot be updated",
            ),
            (
                &["metadata.labels.rack"],
                "update_mask.paths[0]: \"metadata.labels\" is a map: a mask names it whole",
            ),
            (
                &["spec..x"],
                "update_mask.paths[0]: \"spec..x\" has an empty field name",
            ),
            (
                &["spec.reboot_method.x"],
                "\"spec.reboot_method\" is not a message",
            ),
            (&["spec", "*"], "update_mask.paths[1]: \"*\" replaces everything"),
        ];
        for (paths, want) in cases {
            let e = parse(mask(paths).as_ref(), &r).unwrap_err();
            assert!(
                e.to_string().starts_with(want) || e.to_string().contains(want),
                "{e} vs {want}"
            );
        }
        let long = format!("spec.{}", "x".repeat(10_000));
        let e = parse(mask(&[&long]).as_ref(), &r).unwrap_err().to_string();
        assert!(e.len() < 300, "{e}");
        let many: Vec<&str> = vec!["spec"; MAX_PATHS + 1];
        assert!(parse(mask(&many).as_ref(), &r).is_err());
    }
}
