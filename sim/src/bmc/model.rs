//! The systems the BMC simulator models and their power figures.
//!
//! The figures are approximations taken from NVIDIA's public spec sheets
//! (DGX H100/B200/B300 datasheets, the GB200 NVL72 product page) and public
//! reviews. They are good enough to exercise power policies, not to plan a
//! data centre: idle figures in particular vary with firmware, fans and
//! inlet temperature. The node's maximum is the datasheet's "max system power"
//! and is split into the GPUs' TDP and a rest-of-node part (CPUs, memory,
//! NVSwitches, NICs, fans, storage) that power capping cannot throttle.

use std::fmt;
use std::str::FromStr;

/// A modelled system.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Model {
    DgxH100,
    DgxB200,
    DgxB300,
    Gb200,
}

/// Power figures of a [`Model`], in watts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ModelSpec {
    /// What the BMC reports as `Model` ("DGX H100").
    pub display_name: &'static str,
    /// What a GPU's chassis reports as `Model`.
    pub gpu_name: &'static str,
    pub gpus: usize,
    /// Draw of one GPU with nothing running.
    pub gpu_idle_watts: f64,
    /// Draw of one GPU at full load: its TDP, also the top of its cap range.
    pub gpu_max_watts: f64,
    /// The lowest power limit a GPU accepts.
    pub gpu_min_cap_watts: f64,
    /// Everything but the GPUs, idle.
    pub rest_idle_watts: f64,
    /// Everything but the GPUs, at full load (the GPUs' load drives it: CPUs
    /// feeding them, fans cooling them).
    pub rest_max_watts: f64,
}

impl ModelSpec {
    /// The node's maximum draw (`PowerCapacityWatts`, `AllowableMax` of the node limit).
    pub fn node_max_watts(&self) -> f64 {
        self.rest_max_watts + self.gpus as f64 * self.gpu_max_watts
    }

    /// The node's draw with nothing running.
    pub fn node_idle_watts(&self) -> f64 {
        self.rest_idle_watts + self.gpus as f64 * self.gpu_idle_watts
    }

    /// The lowest node limit accepted (`AllowableMin`): the rest of the node
    /// at full load plus every GPU at its lowest cap, so any accepted limit
    /// can be met by throttling the GPUs alone.
    pub fn node_min_cap_watts(&self) -> f64 {
        self.rest_max_watts + self.gpus as f64 * self.gpu_min_cap_watts
    }
}

// DGX H100: 8x H100 SXM5 at 700 W, 2x Xeon Platinum 8480C; datasheet max
// system power ~10.2 kW. An idle H100 SXM draws ~70-90 W; its power limit
// goes down to 200 W (nvidia-smi -q "Min Power Limit").
const DGX_H100: ModelSpec = ModelSpec {
    display_name: "DGX H100",
    gpu_name: "NVIDIA H100 80GB HBM3",
    gpus: 8,
    gpu_idle_watts: 75.0,
    gpu_max_watts: 700.0,
    gpu_min_cap_watts: 200.0,
    rest_idle_watts: 1_800.0,
    rest_max_watts: 4_600.0,
};

// DGX B200: 8x B200 at 1000 W, 2x Xeon Platinum 8570; datasheet ~14.3 kW max.
const DGX_B200: ModelSpec = ModelSpec {
    display_name: "DGX B200",
    gpu_name: "NVIDIA B200",
    gpus: 8,
    gpu_idle_watts: 120.0,
    gpu_max_watts: 1_000.0,
    gpu_min_cap_watts: 200.0,
    rest_idle_watts: 2_000.0,
    rest_max_watts: 6_300.0,
};

// DGX B300: 8x B300 (Blackwell Ultra) at ~1100 W; ~14 kW max.
const DGX_B300: ModelSpec = ModelSpec {
    display_name: "DGX B300",
    gpu_name: "NVIDIA B300",
    gpus: 8,
    gpu_idle_watts: 130.0,
    gpu_max_watts: 1_100.0,
    gpu_min_cap_watts: 200.0,
    rest_idle_watts: 2_000.0,
    rest_max_watts: 5_200.0,
};

// GB200 NVL72 compute tray: 2 GB200 superchips = 4 Blackwell GPUs at up to
// 1200 W and 2 Grace CPUs (~300 W each with their LPDDR5X), liquid cooled;
// ~5.8 kW per tray (the rack is ~120-132 kW for 18 trays plus NVLink switch
// trays).
const GB200: ModelSpec = ModelSpec {
    display_name: "GB200 NVL72 Compute Tray",
    gpu_name: "NVIDIA GB200",
    gpus: 4,
    gpu_idle_watts: 150.0,
    gpu_max_watts: 1_200.0,
    gpu_min_cap_watts: 200.0,
    rest_idle_watts: 400.0,
    rest_max_watts: 1_000.0,
};

impl Model {
    pub const ALL: [Model; 4] = [Model::DgxH100, Model::DgxB200, Model::DgxB300, Model::Gb200];

    /// The name on the command line (`dgx-h100`).
    pub fn name(self) -> &'static str {
        match self {
            Model::DgxH100 => "dgx-h100",
            Model::DgxB200 => "dgx-b200",
            Model::DgxB300 => "dgx-b300",
            Model::Gb200 => "gb200",
        }
    }

    pub fn spec(self) -> &'static ModelSpec {
        match self {
            Model::DgxH100 => &DGX_H100,
            Model::DgxB200 => &DGX_B200,
            Model::DgxB300 => &DGX_B300,
            Model::Gb200 => &GB200,
        }
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown BMC model {given:?}: expected one of dgx-h100, dgx-b200, dgx-b300, gb200")]
pub struct UnknownModel {
    pub given: String,
}

impl FromStr for Model {
    type Err = UnknownModel;

    fn from_str(s: &str) -> Result<Model, UnknownModel> {
        let lower = s.trim().to_ascii_lowercase();
        Model::ALL
            .into_iter()
            .find(|m| m.name() == lower)
            .ok_or_else(|| UnknownModel { given: s.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_round_trip() {
        for m in Model::ALL {
            assert_eq!(m.name().parse::<Model>(), Ok(m));
            assert_eq!(m.to_string(), m.name());
        }
        assert_eq!("DGX-H100".parse::<Model>(), Ok(Model::DgxH100));
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let err = "dgx-a100".parse::<Model>().unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("\"dgx-a100\""), "{msg}");
        for m in Model::ALL {
            assert!(msg.contains(m.name()), "{msg}");
        }
    }

    #[test]
    fn node_figures_match_the_spec_sheets() {
        let near = |a: f64, b: f64| (a - b).abs() <= 0.03 * b;
        assert!(near(Model::DgxH100.spec().node_max_watts(), 10_200.0));
        assert!(near(Model::DgxB200.spec().node_max_watts(), 14_300.0));
        assert!(near(Model::DgxB300.spec().node_max_watts(), 14_000.0));
        assert!(near(Model::Gb200.spec().node_max_watts(), 5_800.0));
        assert_eq!(Model::Gb200.spec().gpus, 4);
        for m in Model::ALL {
            let s = m.spec();
            assert!(s.gpu_idle_watts < s.gpu_min_cap_watts && s.gpu_min_cap_watts < s.gpu_max_watts);
            assert!(s.rest_idle_watts < s.rest_max_watts);
            assert!(s.node_idle_watts() < s.node_min_cap_watts());
            assert!(s.node_min_cap_watts() < s.node_max_watts());
        }
    }
}
