//! The verbs every kind has: get, list, create, apply, update, delete.
use std::collections::HashMap;

use hostplane_proto::v1::{
    self, CreateRequest, DeleteRequest, GetRequest, Kind, ListRequest, ListResponse, ObjectMeta, Resource,
    UpdateRequest, resource,
};

use super::watch::{self, Filter};
use super::{Conn, Ctx, Out, emit};
use crate::cli::CommonCmd;
use crate::client::Client;
use crate::error::Error;
use crate::input;
use crate::output::{self, Format};

/// `<noun> get|list|watch|apply|update|delete` for `kind`.
pub async fn common(conn: &Conn, ctx: &Ctx, kind: Kind, cmd: CommonCmd, out: &mut Out) -> Result<u8, Error> {
    match cmd {
        CommonCmd::Get(a) => {
            let mut client = conn.client().await?;
            if !a.watch {
                return get(&mut client, ctx, kind, &a.name, out).await;
            }
            // Fail on a missing object, as a plain get would, then follow it.
            fetch(&mut client, kind, &a.name).await?;
            let filter = Filter {
                name: Some(a.name),
                ..Filter::default()
            };
            watch::run(&mut client, ctx, kind, &filter, None, out).await
        }
        CommonCmd::List(a) => {
            check_node_filter(kind, a.node.as_deref())?;
            let filter = Filter {
                name: None,
                selector: a.selector,
                node: a.node,
            };
            let mut client = conn.client().await?;
            if a.watch {
                watch::run(&mut client, ctx, kind, &filter, None, out).await
            } else {
                list(&mut client, ctx, kind, &filter, out).await
            }
        }
        CommonCmd::Watch(a) => {
            check_node_filter(kind, a.node.as_deref())?;
            let filter = Filter {
                name: a.name,
                selector: a.selector,
                node: a.node,
            };
            watch::run(&mut conn.client().await?, ctx, kind, &filter, a.from_version, out).await
        }
        CommonCmd::Apply(f) => {
            let items = load(&f.file, Some(kind)).await?;
            apply(&mut conn.client().await?, ctx, items, out).await
        }
        CommonCmd::Update(f) => {
            let items = load(&f.file, Some(kind)).await?;
            update(&mut conn.client().await?, ctx, items, out).await
        }
        CommonCmd::Delete(a) => {
            let req = DeleteRequest {
                kind: kind as i32,
                name: a.name,
                force: a.force,
                resource_version: a.resource_version.unwrap_or(0),
            };
            delete(&mut conn.client().await?, ctx, req, out).await
        }
    }
}

fn check_node_filter(kind: Kind, node: Option<&str>) -> Result<(), Error> {
    match (kind, node) {
        (Kind::Device | Kind::Dpu, _) | (_, None) => Ok(()),
        (other, Some(_)) => Err(Error::Usage {
            reason: format!("--node applies to device and dpu, not {}", other.noun()),
        }),
    }
}

/// The resources in `path` (`-` = stdin); with `kind`, all must be of that kind.
pub async fn load(path: &str, kind: Option<Kind>) -> Result<Vec<Resource>, Error> {
    let text = input::read(path).await?;
    let items = input::parse_resources(path, &text)?;
    if let Some(kind) = kind {
        input::expect_kind(path, kind, &items)?;
    }
    Ok(items)
}

pub async fn fetch(client: &mut Client, kind: Kind, name: &str) -> Result<Resource, Error> {
    let req = GetRequest {
        kind: kind as i32,
        name: name.to_string(),
    };
    Ok(client.get(req).await?.into_inner())
}

pub async fn get(client: &mut Client, ctx: &Ctx, kind: Kind, name: &str, out: &mut Out) -> Result<u8, Error> {
    let r = fetch(client, kind, name).await?;
    emit(out, &output::one(&r, ctx.format, (ctx.now)())?).await?;
    Ok(0)
}

pub async fn list(
    client: &mut Client,
    ctx: &Ctx,
    kind: Kind,
    filter: &Filter,
    out: &mut Out,
) -> Result<u8, Error> {
    let resp = list_all(client, filter.list_request(kind)).await?;
    let items: Vec<Resource> = resp.items.into_iter().filter(|r| filter.matches(r)).collect();
    if items.is_empty() && ctx.format == Format::Table {
        // An empty table would be only a header; say it in words instead.
        emit(out, &format!("no {}s found\n", kind.noun())).await?;
        return Ok(0);
    }
    emit(out, &output::list(&items, ctx.format, (ctx.now)())?).await?;
    Ok(0)
}

/// Times a listing starts again when the server no longer holds its snapshot.
const LIST_RESTARTS: u32 = 3;

/// Every object `req` selects, page by page (the server's default page
/// size), as one response: the items of all pages and the listing's store
/// revision. A listing whose snapshot the server no longer holds (ABORTED
/// on a later page) starts again from the first page, up to
/// [`LIST_RESTARTS`] times.
pub async fn list_all(client: &mut Client, req: ListRequest) -> Result<ListResponse, Error> {
    let mut restarts = 0;
    'listing: loop {
        let mut items = Vec::new();
        let mut token = String::new();
        loop {
            let page = ListRequest {
                page_token: token.clone(),
                ..req.clone()
            };
            let page = match client.list(page).await {
                Ok(page) => page.into_inner(),
                Err(status)
                    if status.code() == tonic::Code::Aborted
                        && !token.is_empty()
                        && restarts < LIST_RESTARTS =>
                {
                    restarts += 1;
                    continue 'listing;
                }
                Err(status) => return Err(status.into()),
            };
            items.extend(page.items);
            if page.next_page_token.is_empty() {
                return Ok(ListResponse {
                    items,
                    resource_version: page.resource_version,
                    next_page_token: String::new(),
                });
            }
            if page.next_page_token == token {
                return Err(Error::Rpc {
                    status: tonic::Status::internal("the server sent the same page token twice"),
                });
            }
            token = page.next_page_token;
        }
    }
}

/// Kinds first that others refer to (nodes before their devices, ...), file order otherwise.
fn dependency_order(mut items: Vec<Resource>) -> Vec<Resource> {
    items.sort_by_key(|r| Kind::ALL.iter().position(|k| *k == r.kind()));
    items
}

/// Create each resource; stops at the first failure (those before it stay created and are printed).
pub async fn create(
    client: &mut Client,
    ctx: &Ctx,
    items: Vec<Resource>,
    out: &mut Out,
) -> Result<u8, Error> {
    for mut r in dependency_order(items) {
        // The server requires 0; a file saved from `get -o yaml` carries the old version.
        if let Some(m) = r.metadata_mut() {
            m.resource_version = 0;
        }
        let created = client
            .create(CreateRequest { resource: Some(r) })
            .await?
            .into_inner();
        emit(out, &output::action(&created, "created", ctx.format)?).await?;
    }
    Ok(0)
}

/// Create what is missing, update what differs (with the stored resource_version
/// as precondition), leave the rest: `created`, `configured` or `unchanged`.
pub async fn apply(client: &mut Client, ctx: &Ctx, items: Vec<Resource>, out: &mut Out) -> Result<u8, Error> {
    for mut r in dependency_order(items) {
        let stored = match fetch(client, r.kind(), r.name()).await {
            Ok(stored) => stored,
            Err(Error::Rpc { status }) if status.code() == tonic::Code::NotFound => {
                create(client, ctx, vec![r], out).await?;
                continue;
            }
            Err(e) => return Err(e),
        };
        if desired(&stored) == desired(&r) {
            emit(out, &output::action(&stored, "unchanged", ctx.format)?).await?;
            continue;
        }
        if let Some(m) = r.metadata_mut() {
            m.resource_version = stored.resource_version();
        }
        let updated = client
            .update(UpdateRequest {
                resource: Some(r),
                update_mask: None,
            })
            .await?
            .into_inner();
        emit(out, &output::action(&updated, "configured", ctx.format)?).await?;
    }
    Ok(0)
}

/// Replace spec and labels of each resource as the file has them.
pub async fn update(
    client: &mut Client,
    ctx: &Ctx,
    items: Vec<Resource>,
    out: &mut Out,
) -> Result<u8, Error> {
    for r in items {
        let updated = client
            .update(UpdateRequest {
                resource: Some(r),
                update_mask: None,
            })
            .await?
            .into_inner();
        emit(out, &output::action(&updated, "updated", ctx.format)?).await?;
    }
    Ok(0)
}

pub async fn delete(client: &mut Client, ctx: &Ctx, req: DeleteRequest, out: &mut Out) -> Result<u8, Error> {
    let what = format!("{}/{}", req.kind().noun(), req.name);
    let resp = client.delete(req).await?.into_inner();
    let text = match ctx.format {
        Format::Table if resp.deleted => format!("{what} deleted\n"),
        Format::Table => format!("{what} deletion requested (dependents go first)\n"),
        Format::Name => format!("{what}\n"),
        Format::Json | Format::Yaml => output::serialized(&resp, ctx.format)?,
    };
    emit(out, &text).await?;
    Ok(0)
}

/// The part of a resource a user writes: name, labels, spec (no status, no versions).
pub fn desired(r: &Resource) -> Resource {
    let meta = |m: &Option<ObjectMeta>| {
        let m = m.clone().unwrap_or_default();
        Some(ObjectMeta {
            name: m.name,
            labels: m.labels,
            ..ObjectMeta::default()
        })
    };
    let kind = r.kind.as_ref().map(|k| match k {
        resource::Kind::Node(x) => resource::Kind::Node(v1::Node {
            metadata: meta(&x.metadata),
            spec: x.spec,
            status: None,
        }),
        resource::Kind::Device(x) => resource::Kind::Device(v1::Device {
            metadata: meta(&x.metadata),
            spec: x.spec.clone(),
            status: None,
        }),
        resource::Kind::Bfb(x) => resource::Kind::Bfb(v1::Bfb {
            metadata: meta(&x.metadata),
            spec: x.spec.clone(),
        }),
        resource::Kind::Flavor(x) => resource::Kind::Flavor(v1::Flavor {
            metadata: meta(&x.metadata),
            spec: x.spec.clone(),
        }),
        resource::Kind::Deployment(x) => resource::Kind::Deployment(v1::Deployment {
            metadata: meta(&x.metadata),
            spec: x.spec.clone(),
            status: None,
        }),
        resource::Kind::Dpu(x) => resource::Kind::Dpu(v1::Dpu {
            metadata: meta(&x.metadata),
            spec: x.spec.clone(),
            status: None,
        }),
        resource::Kind::Topology(x) => resource::Kind::Topology(v1::Topology {
            metadata: meta(&x.metadata),
            spec: x.spec.clone(),
            status: None,
        }),
        resource::Kind::PowerPolicy(x) => resource::Kind::PowerPolicy(v1::PowerPolicy {
            metadata: meta(&x.metadata),
            spec: x.spec.clone(),
            status: None,
        }),
    });
    Resource { kind }
}

/// `-l k=v` pairs as a map.
pub fn label_map(pairs: &[(String, String)]) -> HashMap<String, String> {
    pairs.iter().cloned().collect()
}

/// Metadata for a new object from flags.
pub fn new_meta(name: &str, labels: &[(String, String)]) -> Option<ObjectMeta> {
    Some(ObjectMeta {
        name: name.to_string(),
        labels: label_map(labels),
        ..ObjectMeta::default()
    })
}

impl Filter {
    pub fn list_request(&self, kind: Kind) -> ListRequest {
        ListRequest {
            kind: kind as i32,
            label_selector: label_map(&self.selector),
            node: self.node.clone().unwrap_or_default(),
            ..ListRequest::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_ignores_status_and_versions() {
        let stored: Resource = v1::Node {
            metadata: Some(ObjectMeta {
                name: "n1".into(),
                resource_version: 9,
                created_at_ms: 5,
                labels: [("rack".to_string(), "r1".to_string())].into(),
                ..ObjectMeta::default()
            }),
            spec: Some(v1::NodeSpec {
                reboot_method: v1::RebootMethod::Agent as i32,
            }),
            status: Some(v1::NodeStatus {
                reachable: true,
                ..Default::default()
            }),
        }
        .into();
        let file: Resource = v1::Node {
            metadata: new_meta("n1", &[("rack".into(), "r1".into())]),
            spec: Some(v1::NodeSpec {
                reboot_method: v1::RebootMethod::Agent as i32,
            }),
            status: None,
        }
        .into();
        assert_eq!(desired(&stored), desired(&file));
        let relabelled: Resource = v1::Node {
            metadata: new_meta("n1", &[("rack".into(), "r2".into())]),
            ..Default::default()
        }
        .into();
        assert_ne!(desired(&stored), desired(&relabelled));
    }

    #[test]
    fn dependency_order_puts_nodes_first() {
        let items: Vec<Resource> = vec![
            v1::Deployment {
                metadata: new_meta("d", &[]),
                ..Default::default()
            }
            .into(),
            v1::Device {
                metadata: new_meta("a", &[]),
                ..Default::default()
            }
            .into(),
            v1::Node {
                metadata: new_meta("n", &[]),
                ..Default::default()
            }
            .into(),
            v1::Device {
                metadata: new_meta("b", &[]),
                ..Default::default()
            }
            .into(),
        ];
        let names: Vec<String> = dependency_order(items)
            .iter()
            .map(|r| r.name().to_string())
            .collect();
        assert_eq!(names, ["n", "a", "b", "d"]);
    }

    #[test]
    fn node_filter_only_for_devices_and_dpus() {
        assert!(check_node_filter(Kind::Device, Some("n1")).is_ok());
        assert!(check_node_filter(Kind::Dpu, Some("n1")).is_ok());
        assert!(check_node_filter(Kind::Bfb, None).is_ok());
        let e = check_node_filter(Kind::Bfb, Some("n1")).unwrap_err();
        assert_eq!(e.exit_code(), 2);
    }
}
