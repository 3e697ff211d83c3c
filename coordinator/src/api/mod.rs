//! The admin API (`hostplane.v1.AdminService`): what operators, hostplanectl
//! and upstream systems call. See docs/api.md.
//!
//! Each handler validates what it can from the request alone, then does its
//! reads, checks and writes in ONE store transaction, so a refused call
//! changes nothing. Every mutating call is logged with its kind, name and
//! result.

pub mod auth;
pub mod cluster;
mod crud;
mod delete;
pub mod error;
mod flows;
pub mod health;
mod list;
mod mask;
mod typed;
pub mod validate;
mod watch;

use hostplane_proto::v1::admin_service_server::{AdminService, AdminServiceServer};
use hostplane_proto::v1::{
    ClusterStatus, ClusterStatusRequest, CreateNodeWithDevicesRequest, CreateNodeWithDevicesResponse,
    CreateRequest, DeleteRequest, DeleteResponse, Deployment, Dpu, DpuReadiness, DpuRef, GetRequest,
    ListRequest, ListResponse, MarkRebootedRequest, Node, NodeRebootStatus, NodeRef, PowerSummary,
    PowerSummaryRequest, Resource, SetDeploymentImageRequest, UpdateRequest, WatchRequest,
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

pub use cluster::ClusterSource;
pub use error::ApiError;
pub use list::{DEFAULT_PAGE_SIZE, MAX_PAGE_BYTES, MAX_PAGE_SIZE, PageSizes};
pub use mask::{MAX_PATH_LEN as MAX_MASK_PATH_LEN, MAX_PATHS as MAX_MASK_PATHS};
/// Store-side checks of Topology and PowerPolicy (create and update use them).
use validate::power as validate_power;
pub use watch::WatchStream;

use crate::power::PowerHub;
use crate::store::Store;

/// The AdminService implementation.
#[derive(Clone)]
pub struct AdminApi {
    store: Store,
    power: PowerHub,
    /// Ends open Watch streams when the coordinator shuts down.
    shutdown: CancellationToken,
    /// List page sizes.
    pages: PageSizes,
    /// What GetClusterStatus reports (a lone SQLite coordinator unless `with_cluster`).
    cluster: ClusterSource,
    /// GetPowerSummary from the leader's engine (replicas on PostgreSQL).
    leader_power: Option<crate::peer::LeaderPower>,
}

impl AdminApi {
    pub fn new(store: Store, shutdown: CancellationToken) -> AdminApi {
        AdminApi {
            store,
            power: PowerHub::new(),
            shutdown,
            pages: PageSizes::default(),
            cluster: ClusterSource::sqlite(cluster::host_name(), ""),
            leader_power: None,
        }
    }

    /// Answer GetPowerSummary with what the leader's engine knows (a
    /// follower asks the leader; the leader answers from its own hub).
    pub fn with_leader_power(mut self, lp: crate::peer::LeaderPower) -> AdminApi {
        self.leader_power = Some(lp);
        self
    }

    /// List pages of these sizes instead of the defaults (tests use small pages).
    pub fn with_page_sizes(mut self, pages: PageSizes) -> AdminApi {
        self.pages = pages;
        self
    }

    /// Answer GetPowerSummary from `hub` (shared with the agent stream and the policy engine).
    pub fn with_power(mut self, hub: PowerHub) -> AdminApi {
        self.power = hub;
        self
    }

    /// Answer GetClusterStatus from `source` (the backend, this replica and its role).
    pub fn with_cluster(mut self, source: ClusterSource) -> AdminApi {
        self.cluster = source;
        self
    }

    pub fn into_server(self) -> AdminServiceServer<AdminApi> {
        AdminServiceServer::new(self)
    }
}

/// Log a mutating call (the audit file is written by `auth::GuardedAdmin`).
/// The name and the error are bounded as audit fields are: a refused call's
/// input can be of any size.
fn audit(op: &'static str, kind: &str, name: &str, outcome: Result<&str, &ApiError>) {
    let name = &*crate::audit::bounded(name);
    match outcome {
        Ok(result) => tracing::info!(op, kind, name, result, "admin call"),
        Err(e) => {
            let error = error::bounded_message(e.to_string());
            tracing::info!(op, kind, name, result = "refused", code = ?e.code(), error, "admin call")
        }
    }
}

type Reply<T> = Result<Response<T>, Status>;

fn reply<T>(r: Result<T, ApiError>) -> Reply<T> {
    r.map(Response::new).map_err(Status::from)
}

#[tonic::async_trait]
impl AdminService for AdminApi {
    type WatchStream = WatchStream;

    async fn create(&self, req: Request<CreateRequest>) -> Reply<Resource> {
        reply(self.create_resource(req.into_inner()).await)
    }

    async fn get(&self, req: Request<GetRequest>) -> Reply<Resource> {
        reply(self.get_resource(req.into_inner()).await)
    }

    async fn list(&self, req: Request<ListRequest>) -> Reply<ListResponse> {
        reply(self.list_resources(req.into_inner()).await)
    }

    async fn update(&self, req: Request<UpdateRequest>) -> Reply<Resource> {
        reply(self.update_resource(req.into_inner()).await)
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Reply<DeleteResponse> {
        reply(self.delete_resource(req.into_inner()).await)
    }

    async fn watch(&self, req: Request<WatchRequest>) -> Reply<WatchStream> {
        reply(self.watch_resources(req.into_inner()).await)
    }

    async fn create_node_with_devices(
        &self,
        req: Request<CreateNodeWithDevicesRequest>,
    ) -> Reply<CreateNodeWithDevicesResponse> {
        reply(self.create_node_and_devices(req.into_inner()).await)
    }

    async fn approve_maintenance(&self, req: Request<NodeRef>) -> Reply<Node> {
        reply(self.approve_node(req.into_inner()).await)
    }

    async fn mark_rebooted(&self, req: Request<MarkRebootedRequest>) -> Reply<Node> {
        reply(self.mark_node_rebooted(req.into_inner()).await)
    }

    async fn reprovision(&self, req: Request<DpuRef>) -> Reply<Dpu> {
        reply(self.reprovision_dpu(req.into_inner()).await)
    }

    async fn get_node_reboot_status(&self, req: Request<NodeRef>) -> Reply<NodeRebootStatus> {
        reply(self.node_reboot_status(req.into_inner()).await)
    }

    async fn get_dpu_readiness(&self, req: Request<DpuRef>) -> Reply<DpuReadiness> {
        reply(self.dpu_readiness(req.into_inner()).await)
    }

    async fn set_deployment_image(&self, req: Request<SetDeploymentImageRequest>) -> Reply<Deployment> {
        reply(self.change_deployment_image(req.into_inner()).await)
    }

    async fn get_power_summary(&self, req: Request<PowerSummaryRequest>) -> Reply<PowerSummary> {
        let req = req.into_inner();
        for (i, n) in req.nodes.iter().enumerate() {
            validate::name(&format!("nodes[{i}]"), n).map_err(Status::from)?;
        }
        if let Some(lp) = &self.leader_power {
            return lp.summary(req).await.map(Response::new);
        }
        Ok(Response::new(self.power.summary(&req)))
    }

    async fn get_cluster_status(&self, _req: Request<ClusterStatusRequest>) -> Reply<ClusterStatus> {
        self.cluster.status(&self.store).await.map(Response::new)
    }
}
