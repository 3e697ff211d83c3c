//! The simulator's own Prometheus metrics (`GET /metrics`, no auth): what it
//! models, so tests and dashboards can compare what a client reads and
//! enforces with the truth. Served as OpenMetrics to a scraper that asks for
//! it (`Accept`), as the Prometheus text format 0.0.4 otherwise.

use std::sync::atomic::AtomicU64;

use axum::http::{HeaderValue, StatusCode};
use hostplane_common::exposition;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::power::PowerModel;
use super::reset::{ResetType, SystemPower};

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct BmcLabels {
    bmc: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct GpuLabels {
    bmc: String,
    /// 1-based, as in the GPU's chassis id `HGX_GPU_SXM_<gpu>`.
    gpu: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ResetLabels {
    bmc: String,
    reset_type: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RequestLabels {
    bmc: String,
    method: String,
    code: u16,
}

type GaugeF = Gauge<f64, AtomicU64>;

pub(crate) struct Telemetry {
    bmc: String,
    registry: Registry,
    power: Family<BmcLabels, GaugeF>,
    limit: Family<BmcLabels, GaugeF>,
    gpu_power: Family<GpuLabels, GaugeF>,
    powered: Family<BmcLabels, Gauge>,
    resets: Family<ResetLabels, Counter>,
    requests: Family<RequestLabels, Counter>,
}

impl Telemetry {
    pub(crate) fn new(bmc: &str) -> Telemetry {
        let mut registry = Registry::default();
        let power = Family::<BmcLabels, GaugeF>::default();
        let limit = Family::<BmcLabels, GaugeF>::default();
        let gpu_power = Family::<GpuLabels, GaugeF>::default();
        let requests = Family::<RequestLabels, Counter>::default();
        let powered = Family::<BmcLabels, Gauge>::default();
        let resets = Family::<ResetLabels, Counter>::default();
        for t in ResetType::ALL {
            // Every type from the start, at 0, so a rate over the first one is right.
            let _ = resets.get_or_create(&ResetLabels {
                bmc: bmc.to_string(),
                reset_type: t.name().to_string(),
            });
        }
        registry.register(
            "hostplane_sim_bmc_power_watts",
            "Modelled draw of the node, in watts",
            power.clone(),
        );
        registry.register(
            "hostplane_sim_bmc_power_limit_watts",
            "Node power limit in force, in watts (absent when none)",
            limit.clone(),
        );
        registry.register(
            "hostplane_sim_bmc_gpu_power_watts",
            "Modelled draw of each GPU, in watts",
            gpu_power.clone(),
        );
        registry.register(
            "hostplane_sim_bmc_system_powered",
            "1 while the simulated system has power (PowerState other than Off), 0 while Off",
            powered.clone(),
        );
        registry.register(
            "hostplane_sim_bmc_system_resets",
            "ComputerSystem.Reset actions accepted, by ResetType",
            resets.clone(),
        );
        registry.register(
            "hostplane_sim_bmc_requests",
            "HTTP requests served, by method and status code",
            requests.clone(),
        );
        Telemetry {
            bmc: bmc.to_string(),
            registry,
            power,
            limit,
            gpu_power,
            powered,
            resets,
            requests,
        }
    }

    pub(crate) fn count_reset(&self, reset: ResetType) {
        self.resets
            .get_or_create(&ResetLabels {
                bmc: self.bmc.clone(),
                reset_type: reset.name().to_string(),
            })
            .inc();
    }

    pub(crate) fn count_request(&self, method: &str, code: u16) {
        self.requests
            .get_or_create(&RequestLabels {
                bmc: self.bmc.clone(),
                method: method.to_string(),
                code,
            })
            .inc();
    }

    /// The exposition of the model as it is now, in the format `accept`
    /// asks for: status, content type and body.
    pub(crate) fn render(
        &self,
        power: &PowerModel,
        system: &SystemPower,
        accept: Option<&HeaderValue>,
    ) -> (StatusCode, &'static str, String) {
        let node = BmcLabels {
            bmc: self.bmc.clone(),
        };
        self.power.get_or_create(&node).set(power.node_draw());
        match power.node_limit() {
            Some(l) => {
                self.limit.get_or_create(&node).set(l);
            }
            None => {
                self.limit.remove(&node);
            }
        }
        for (i, w) in power.gpu_draws().iter().enumerate() {
            let labels = GpuLabels {
                bmc: self.bmc.clone(),
                gpu: (i + 1).to_string(),
            };
            self.gpu_power.get_or_create(&labels).set(*w);
        }
        self.powered
            .get_or_create(&node)
            .set(i64::from(system.state().powered()));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        let format = exposition::negotiate(accept.and_then(|v| v.to_str().ok()));
        match exposition::encode(format, out) {
            Ok(body) => (StatusCode::OK, format.content_type(), body),
            Err(e) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain; charset=utf-8",
                format!("cannot encode the metrics: {e}\n"),
            ),
        }
    }
}
