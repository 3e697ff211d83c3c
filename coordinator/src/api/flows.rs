//! The upstream flows: one call each for what a bare-metal manager or a
//! scheduler needs (DESIGN.md, "The upstream flows").
use hostplane_proto::v1::{
    CreateNodeWithDevicesRequest, CreateNodeWithDevicesResponse, Deployment, Device, Dpu, DpuPhase,
    DpuReadiness, DpuRef, Kind, MarkRebootedRequest, Node, NodeRebootStatus, NodeRef, RebootKind,
    RebootMethod, Resource, SetDeploymentImageRequest, resource,
};

use super::crud::{self, prepare_create};
use super::delete::mark;
use super::error::ApiError;
use super::typed::{self, Typed};
use super::{AdminApi, audit, validate};
use crate::fsm::nicfw;
use crate::fsm::util::{mid_install, phase_of};
use crate::store::{Txn, now_ms};

impl AdminApi {
    /// A Node and its Devices in one transaction: all of them or none.
    pub(super) async fn create_node_and_devices(
        &self,
        req: CreateNodeWithDevicesRequest,
    ) -> Result<CreateNodeWithDevicesResponse, ApiError> {
        let node_name = req
            .node
            .as_ref()
            .and_then(|n| n.metadata.as_ref())
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let res = match prepare_node_with_devices(req) {
            Ok((node, devices)) => {
                self.store
                    .write(move |t| insert_node_with_devices(t, node, devices))
                    .await
            }
            Err(e) => Err(e),
        };
        audit(
            "create_node_with_devices",
            "node",
            &node_name,
            res.as_ref().map(|_| "created"),
        );
        res
    }

    pub(super) async fn approve_node(&self, req: NodeRef) -> Result<Node, ApiError> {
        let name = req.name;
        validate::name("name", &name)?;
        let n = name.clone();
        let res = self
            .store
            .write(move |t| {
                let mut node = typed::fetch::<Node>(t, &n)?;
                let status = node.status.get_or_insert_default();
                if status.maintenance_approved {
                    return Ok((node, false));
                }
                status.maintenance_approved = true;
                status.maintenance_approved_at_ms = now_ms();
                Ok((store_typed(t, node)?, true))
            })
            .await;
        audit(
            "approve_maintenance",
            "node",
            &name,
            outcome(&res, "approved", "already approved"),
        );
        res.map(|(n, _)| n)
    }

    pub(super) async fn mark_node_rebooted(&self, req: MarkRebootedRequest) -> Result<Node, ApiError> {
        let (name, power_cycled) = (req.name, req.power_cycled);
        validate::name("name", &name)?;
        let n = name.clone();
        let res = self
            .store
            .write(move |t| {
                let mut node = typed::fetch::<Node>(t, &n)?;
                let waiting = waiting_dpus(t, &node)?;
                if waiting.is_empty() {
                    // An agent-rebooted node is the upstream's to mark only after its agent could not
                    // power-cycle it.
                    if reboot_method(&node) == RebootMethod::Agent && !any_external_power_cycle(t, &n)? {
                        return Err(ApiError::AgentReboots { node: n });
                    }
                    return Err(ApiError::NotWaitingForReboot { node: n });
                }
                let need = power_cycle_needed(&waiting);
                if !power_cycled && !need.is_empty() {
                    return Err(ApiError::PowerCycleRequired {
                        node: n,
                        dpus: need.join(", "),
                    });
                }
                let st = node.status.get_or_insert_default();
                st.rebooted_at_ms = now_ms();
                st.last_reboot_kind = if power_cycled {
                    RebootKind::PowerCycle
                } else {
                    RebootKind::Reboot
                } as i32;
                store_typed(t, node)
            })
            .await;
        let done = if power_cycled {
            "marked power-cycled"
        } else {
            "marked rebooted"
        };
        audit("mark_rebooted", "node", &name, res.as_ref().map(|_| done));
        res
    }

    /// Graceful delete of the Dpu; the Deployment controller recreates it.
    pub(super) async fn reprovision_dpu(&self, req: DpuRef) -> Result<Dpu, ApiError> {
        let name = req.name;
        validate::name("name", &name)?;
        let n = name.clone();
        let res = self
            .store
            .write(move |t| {
                let dpu = typed::fetch::<Dpu>(t, &n)?;
                let already = dpu.being_deleted();
                let r = mark(t, dpu, now_ms())?;
                Ok((Dpu::from_resource(r).unwrap_or_default(), !already))
            })
            .await;
        audit(
            "reprovision",
            "dpu",
            &name,
            outcome(&res, "deletion requested", "already being deleted"),
        );
        res.map(|(d, _)| d)
    }

    pub(super) async fn node_reboot_status(&self, req: NodeRef) -> Result<NodeRebootStatus, ApiError> {
        validate::name("name", &req.name)?;
        self.store
            .read_snapshot(move |t| {
                let node = typed::fetch::<Node>(t, &req.name)?;
                let waiting = waiting_dpus(t, &node)?;
                let power_cycle_required = !power_cycle_needed(&waiting).is_empty();
                Ok(NodeRebootStatus {
                    waiting_for_reboot: !waiting.is_empty(),
                    dpus: waiting.iter().map(|d| d.name().to_string()).collect(),
                    power_cycle_required,
                })
            })
            .await
    }

    pub(super) async fn dpu_readiness(&self, req: DpuRef) -> Result<DpuReadiness, ApiError> {
        validate::name("name", &req.name)?;
        self.store
            .read_snapshot(move |t| {
                let status = typed::fetch::<Dpu>(t, &req.name)?.status.unwrap_or_default();
                Ok(DpuReadiness {
                    ready: status.phase == DpuPhase::Ready as i32,
                    phase: status.phase,
                    message: status.message,
                })
            })
            .await
    }

    pub(super) async fn change_deployment_image(
        &self,
        req: SetDeploymentImageRequest,
    ) -> Result<Deployment, ApiError> {
        let name = req.deployment.clone();
        let res = match check_image_request(&req) {
            Ok(()) => {
                self.store
                    .write(move |t| crud::set_image(t, &req.deployment, &req.bfb, &req.flavor))
                    .await
            }
            Err(e) => Err(e),
        };
        audit(
            "set_deployment_image",
            "deployment",
            &name,
            outcome(&res, "updated", "unchanged"),
        );
        res.map(|(d, _)| d)
    }
}

fn outcome<'a, T>(
    res: &'a Result<(T, bool), ApiError>,
    changed: &'static str,
    same: &'static str,
) -> Result<&'static str, &'a ApiError> {
    match res {
        Ok((_, true)) => Ok(changed),
        Ok((_, false)) => Ok(same),
        Err(e) => Err(e),
    }
}

fn check_image_request(req: &SetDeploymentImageRequest) -> Result<(), ApiError> {
    validate::name("deployment", &req.deployment)?;
    if req.bfb.is_empty() && req.flavor.is_empty() {
        return Err(ApiError::invalid(
            "bfb",
            "set bfb, flavor or both (an empty field is left unchanged)",
        ));
    }
    if !req.bfb.is_empty() {
        validate::name("bfb", &req.bfb)?;
    }
    if !req.flavor.is_empty() {
        validate::name("flavor", &req.flavor)?;
    }
    Ok(())
}

/// Unspecified counts as external.
fn reboot_method(node: &Node) -> RebootMethod {
    let raw = node.spec.as_ref().map(|s| s.reboot_method).unwrap_or_default();
    match RebootMethod::try_from(raw) {
        Ok(RebootMethod::Agent) => RebootMethod::Agent,
        _ => RebootMethod::External,
    }
}

fn dpus_on(t: &Txn<'_>, node: &str) -> Result<Vec<Dpu>, ApiError> {
    Ok(t.list_on_node(Kind::Dpu, node)?
        .into_iter()
        .filter_map(Dpu::from_resource)
        .collect())
}

/// The node's Dpus that wait in Rebooting for the upstream system to reboot
/// (or power-cycle) the host: every one on an EXTERNAL node, and on an AGENT
/// node those whose agent could not power-cycle it. Empty while any Dpu of the
/// node is still mid-install (the host must not be rebooted under a DPU being
/// flashed). The same rule as the state machine's (docs/state-machine.md, Rebooting).
fn waiting_dpus(t: &Txn<'_>, node: &Node) -> Result<Vec<Dpu>, ApiError> {
    let on_node = dpus_on(t, node.name())?;
    let phase = |d: &Dpu| phase_of(d.status.as_ref().map(|s| s.phase).unwrap_or_default());
    if on_node.iter().any(|d| mid_install(phase(d))) {
        return Ok(Vec::new());
    }
    let external = reboot_method(node) != RebootMethod::Agent;
    Ok(on_node
        .into_iter()
        .filter(|d| phase(d) == DpuPhase::Rebooting && (external || nicfw::external_power_cycle(d)))
        .collect())
}

/// A Dpu of the node waits for an external power cycle its agent could not do
/// (it may be held for a sibling still installing).
fn any_external_power_cycle(t: &Txn<'_>, node: &str) -> Result<bool, ApiError> {
    Ok(dpus_on(t, node)?.iter().any(nicfw::external_power_cycle))
}

/// "d1 (flavor f1)" for each of `waiting` whose reboot must be a power cycle:
/// its agent reported NIC firmware values pending one when it applied them
/// (the state machine's rule, `fsm::nicfw::needs_power_cycle_now`), or its
/// agent could not power-cycle the host.
fn power_cycle_needed(waiting: &[Dpu]) -> Vec<String> {
    waiting
        .iter()
        .filter(|d| nicfw::needs_power_cycle_now(d))
        .map(|d| {
            let flavor = d.spec.as_ref().map(|s| s.flavor.as_str()).unwrap_or("");
            format!("{} (flavor {flavor})", d.name())
        })
        .collect()
}

fn store_typed<T: Typed>(t: &mut Txn<'_>, x: T) -> Result<T, ApiError> {
    let r = t.update(x.into())?;
    T::from_resource(r).ok_or_else(|| ApiError::invalid("resource", "stored object changed kind"))
}

/// Validate the node and the devices (spec.node defaulted to the node), and
/// the request's own uniqueness (names, serials, rshims).
fn prepare_node_with_devices(
    req: CreateNodeWithDevicesRequest,
) -> Result<(Resource, Vec<Resource>), ApiError> {
    let node = req.node.ok_or_else(|| ApiError::invalid("node", "required"))?;
    let node = prepare_create("node", node.into())?;
    let node_name = node.name().to_string();
    let mut devices = Vec::new();
    for (i, mut d) in req.devices.into_iter().enumerate() {
        let p = format!("devices[{i}]");
        let spec = d.spec.get_or_insert_default();
        if spec.node.is_empty() {
            spec.node = node_name.clone();
        } else if spec.node != node_name {
            // Its length first: the message below quotes it.
            validate::name(&format!("{p}.spec.node"), &spec.node)?;
            return Err(ApiError::invalid(
                format!("{p}.spec.node"),
                format!(
                    "must be empty or {node_name:?} (the node being created), not {}",
                    hostplane_proto::limits::quote(&spec.node)
                ),
            ));
        }
        let d = prepare_create(&p, d.into())?;
        for (j, earlier) in devices.iter().enumerate() {
            duplicate_in_request(&p, j, earlier, &d)?;
        }
        devices.push(d);
    }
    Ok((node, devices))
}

fn duplicate_in_request(p: &str, j: usize, earlier: &Resource, d: &Resource) -> Result<(), ApiError> {
    let spec = |r: &Resource| match &r.kind {
        Some(resource::Kind::Device(Device { spec: Some(s), .. })) => s.clone(),
        _ => Default::default(),
    };
    let (a, b) = (spec(earlier), spec(d));
    let clash = if earlier.name() == d.name() {
        Some(("metadata.name", d.name().to_string()))
    } else if a.serial == b.serial {
        Some(("spec.serial", b.serial))
    } else if a.rshim == b.rshim {
        Some(("spec.rshim", b.rshim))
    } else {
        None
    };
    match clash {
        Some((field, value)) => Err(ApiError::invalid(
            format!("{p}.{field}"),
            format!("{value:?} is also in devices[{j}]"),
        )),
        None => Ok(()),
    }
}

fn insert_node_with_devices(
    t: &mut Txn<'_>,
    node: Resource,
    devices: Vec<Resource>,
) -> Result<CreateNodeWithDevicesResponse, ApiError> {
    let node = crud::create(t, node, "node")?;
    let mut out = Vec::new();
    for (i, d) in devices.into_iter().enumerate() {
        let r = crud::create(t, d, &format!("devices[{i}]"))?;
        out.extend(Device::from_resource(r));
    }
    Ok(CreateNodeWithDevicesResponse {
        node: Node::from_resource(node),
        devices: out,
    })
}
