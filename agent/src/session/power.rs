//! The power half of the session: telemetry batches out (sequence-numbered,
//! replayed after a reconnect, freed by the coordinator's acks), the desired
//! state's caps to the caps task, the caps task's reports back to the
//! coordinator, and the coordinator's liveness to the caps task (which
//! applies the safe cap when the coordinator has been silent too long).
use std::time::Duration;

use hostplane_proto::v1::{AgentMessage, DesiredState, PowerCapReport, TelemetryAck, agent_message::Msg};
use tokio::time::{Interval, MissedTickBehavior};

use crate::power::caps::CapsHandle;
use crate::power::telemetry::Telemetry;

/// What the session loop must do next for power.
pub enum PowerEvent {
    /// Time to send the telemetry gathered since the last batch.
    BatchDue,
    /// The caps task enforced something new.
    Report(PowerCapReport),
}

/// The session's power state (empty when power is disabled).
#[derive(Default)]
pub struct PowerSession {
    telemetry: Option<Telemetry>,
    batch_timer: Option<Interval>,
    caps: Option<CapsHandle>,
    last_report: Option<PowerCapReport>,
}

impl PowerSession {
    pub fn new(telemetry: Option<(Telemetry, Duration)>, caps: Option<CapsHandle>) -> PowerSession {
        let (telemetry, batch_timer) = match telemetry {
            Some((t, every)) => {
                let every = every.max(Duration::from_millis(10));
                let mut timer = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
                timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
                (Some(t), Some(timer))
            }
            None => (None, None),
        };
        PowerSession {
            telemetry,
            batch_timer,
            caps,
            last_report: None,
        }
    }

    /// The caps of a desired state the agent applied (or restored at start).
    pub fn desired(&self, ds: &DesiredState) {
        if let Some(c) = &self.caps {
            c.set(ds.version, ds.power.clone());
        }
    }

    /// The coordinator is there: a message arrived, or the connection is up.
    pub fn heard(&self) {
        if let Some(c) = &self.caps {
            c.heard();
        }
    }

    pub fn acked(&self, ack: &TelemetryAck) {
        if let Some(t) = &self.telemetry {
            t.lock().ack(ack);
        }
    }

    /// A new connection: what to send first (the last cap report), and replay
    /// every sample not acknowledged yet from the next batch on.
    pub fn connected(&mut self) -> Option<AgentMessage> {
        if let Some(t) = &self.telemetry {
            t.lock().reconnected();
        }
        self.heard();
        self.last_report.clone().map(cap_report)
    }

    /// The batches to send now (a long replay goes out in several).
    pub fn batches(&self) -> Vec<AgentMessage> {
        let Some(t) = &self.telemetry else {
            return Vec::new();
        };
        let mut t = t.lock();
        let mut out = Vec::new();
        while let Some(b) = t.next_batch() {
            out.push(AgentMessage {
                msg: Some(Msg::Telemetry(b)),
            });
        }
        out
    }

    /// Wait for the next thing to do (forever when power is disabled). A
    /// report is also kept, to be sent again after a reconnect.
    pub async fn next(&mut self) -> PowerEvent {
        let (batch_timer, caps) = (&mut self.batch_timer, &mut self.caps);
        let timer = async {
            match batch_timer {
                Some(t) => {
                    t.tick().await;
                }
                None => std::future::pending().await,
            }
        };
        let report = async {
            match caps {
                Some(c) => match c.reports.recv().await {
                    Some(r) => r,
                    None => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = timer => PowerEvent::BatchDue,
            r = report => {
                self.last_report = Some(r.clone());
                PowerEvent::Report(r)
            }
        }
    }
}

pub fn cap_report(r: PowerCapReport) -> AgentMessage {
    AgentMessage {
        msg: Some(Msg::CapReport(r)),
    }
}
