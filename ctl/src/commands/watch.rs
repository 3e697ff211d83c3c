//! `watch`, `get --watch`, `list --watch`: the current objects, then every change.
use hostplane_proto::v1::{self, EventType, Kind, Resource, WatchEvent, WatchRequest, resource};

use super::{Ctx, Out, emit};
use crate::client::Client;
use crate::error::Error;
use crate::output;

/// Which objects a watch shows. The server filters by kind and name; labels
/// and node are checked here, on each event.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub name: Option<String>,
    pub selector: Vec<(String, String)>,
    pub node: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &Resource) -> bool {
        if self.name.as_deref().is_some_and(|n| n != r.name()) {
            return false;
        }
        let labels = r.metadata().map(|m| &m.labels);
        let labels_ok = self
            .selector
            .iter()
            .all(|(k, v)| labels.and_then(|l| l.get(k)).is_some_and(|have| have == v));
        let node_ok = match self.node.as_deref() {
            None => true,
            Some(want) => node_of(r) == Some(want),
        };
        labels_ok && node_ok
    }

    fn describe(&self, kind: Kind) -> String {
        match &self.name {
            Some(n) => format!("{}/{n}", kind.noun()),
            None => format!("{} objects", kind.noun()),
        }
    }
}

fn node_of(r: &Resource) -> Option<&str> {
    match r.kind.as_ref()? {
        resource::Kind::Device(d) => d.spec.as_ref().map(|s| s.node.as_str()),
        resource::Kind::Dpu(d) => d.spec.as_ref().map(|s| s.node.as_str()),
        resource::Kind::Node(n) => n.metadata.as_ref().map(|m| m.name.as_str()),
        resource::Kind::Bfb(_)
        | resource::Kind::Flavor(_)
        | resource::Kind::Deployment(_)
        | resource::Kind::Topology(_)
        | resource::Kind::PowerPolicy(_) => None,
    }
}

/// Print the current objects (as ADDED) and then each change, until the stream
/// fails or the server closes it ([`Error::WatchClosed`]).
///
/// Without `from_version` it lists first and watches from the list's store
/// version, so nothing is missed between the two; with it, it only watches
/// (`0` = the server sends the current state as ADDED events).
pub async fn run(
    client: &mut Client,
    ctx: &Ctx,
    kind: Kind,
    filter: &Filter,
    from_version: Option<u64>,
    out: &mut Out,
) -> Result<u8, Error> {
    let mut table = output::event_table(kind);
    let from = match from_version {
        Some(v) => v,
        None => {
            let listed = super::resource::list_all(client, filter.list_request(kind)).await?;
            for r in listed.items.into_iter().filter(|r| filter.matches(r)) {
                let ev = WatchEvent {
                    r#type: EventType::Added as i32,
                    resource_version: r.resource_version(),
                    resource: Some(r),
                };
                emit(out, &output::event(&ev, ctx.format, &mut table, (ctx.now)())?).await?;
            }
            listed.resource_version
        }
    };
    let req = WatchRequest {
        kinds: vec![kind as i32],
        from_version: from,
        name: filter.name.clone().unwrap_or_default(),
    };
    let mut stream = client.watch(req).await?.into_inner();
    while let Some(ev) = stream.message().await? {
        if ev.resource.as_ref().is_some_and(|r| filter.matches(r)) {
            emit(out, &output::event(&ev, ctx.format, &mut table, (ctx.now)())?).await?;
        }
    }
    Err(Error::WatchClosed {
        what: filter.describe(kind),
    })
}

/// Follow one object's events until `done` returns a value for one of them.
/// Events for a deleted object are passed on too (reprovisioning deletes and re-creates a Dpu).
pub async fn until<T>(
    client: &mut Client,
    kind: Kind,
    name: &str,
    mut done: impl FnMut(&v1::WatchEvent) -> Option<T>,
) -> Result<T, Error> {
    let req = WatchRequest {
        kinds: vec![kind as i32],
        from_version: 0,
        name: name.to_string(),
    };
    let mut stream = client.watch(req).await?.into_inner();
    while let Some(ev) = stream.message().await? {
        if ev.resource.as_ref().is_some_and(|r| r.name() == name)
            && let Some(t) = done(&ev)
        {
            return Ok(t);
        }
    }
    Err(Error::WatchClosed {
        what: format!("{}/{name}", kind.noun()),
    })
}

#[cfg(test)]
mod tests {
    use hostplane_proto::v1::{Device, DeviceSpec, ObjectMeta};

    use super::*;

    fn device(name: &str, node: &str, labels: &[(&str, &str)]) -> Resource {
        Device {
            metadata: Some(ObjectMeta {
                name: name.into(),
                labels: labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
                ..Default::default()
            }),
            spec: Some(DeviceSpec {
                node: node.into(),
                ..Default::default()
            }),
            status: None,
        }
        .into()
    }

    #[test]
    fn filter_matches_name_labels_and_node() {
        let d = device("a", "n1", &[("model", "bf3"), ("rack", "r1")]);
        assert!(Filter::default().matches(&d));
        let by_name = Filter {
            name: Some("a".into()),
            ..Default::default()
        };
        assert!(by_name.matches(&d));
        assert!(!by_name.matches(&device("b", "n1", &[])));
        let by_label = Filter {
            selector: vec![("model".into(), "bf3".into())],
            ..Default::default()
        };
        assert!(by_label.matches(&d));
        assert!(!by_label.matches(&device("a", "n1", &[("model", "bf2")])));
        assert!(!by_label.matches(&device("a", "n1", &[])));
        let by_node = Filter {
            node: Some("n2".into()),
            ..Default::default()
        };
        assert!(!by_node.matches(&d));
        assert!(by_node.matches(&device("a", "n2", &[])));
    }
}
