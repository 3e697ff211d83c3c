//! Property test on the real kernel: random sequences of desired networks —
//! bridges coming and going, ports moving between bridges, MTU changes,
//! IPv4/IPv6 addresses (some added by "someone else" in between), IPv4/IPv6
//! routes with and without a metric, gateway changes, default routes — are
//! applied through the daemon's network manager in a throwaway namespace.
//! After every apply the namespace, read back with pyroute2 (an independent
//! netlink client, `net_support/read_netns.py`), must equal the desired
//! state with the kernel's defaults filled in; a second apply must report
//! zero changes; the foreign objects must be untouched.
mod net_support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use hostplane_agent::net;
use hostplane_proto::v1::{Bridge, HostNetwork, Route};
use net_support::{Netns, Pyroute2, dpu, pyroute2_missing};
use proptest::prelude::*;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const BRIDGES: [&str; 3] = ["br-a", "br-b", "br-c"];
const PORTS: [&str; 4] = ["veth1", "veth2", "veth3", "veth4"];
const MTUS: [u32; 3] = [1500, 4000, 9000];

/// An address as the kernel (and pyroute2) print it.
fn canon(ip: &str) -> String {
    ip.parse::<IpAddr>().unwrap().to_string()
}

/// Bridge `b`'s candidate addresses: two IPv4, two IPv6 subnets.
fn addr(b: usize, k: usize) -> String {
    match k {
        0 | 1 => format!("10.{b}.{k}.1/24"),
        _ => format!("{}/64", canon(&format!("fd0{b}:{}::1", k - 2))),
    }
}

/// A gateway in the subnet of `addr(b, k)`, choice `g`.
fn gateway(b: usize, k: usize, g: usize) -> String {
    let host = 254 - g;
    match k {
        0 | 1 => format!("10.{b}.{k}.{host}"),
        _ => canon(&format!("fd0{b}:{}::{host:x}", k - 2)),
    }
}

#[derive(Debug, Clone)]
struct RouteGen {
    /// Which of the bridge's addresses the gateway is in (filtered to present ones).
    subnet: usize,
    /// 0, 1: a gateway (two choices); 2: none, a route out of the bridge (`dev` only).
    gw: usize,
    metric: Option<u32>,
    dev: bool,
}

#[derive(Debug, Clone)]
struct BridgeGen {
    present: bool,
    mtu: u32,
    addrs: [bool; 4],
    route4: Option<RouteGen>,
    route6: Option<RouteGen>,
}

#[derive(Debug, Clone)]
struct Step {
    bridges: Vec<BridgeGen>,
    /// Per port: 0 none, else the bridge index + 1.
    ports: Vec<usize>,
    /// A default route (IPv4, IPv6) via bridge index's subnet.
    default4: Option<(usize, RouteGen)>,
    default6: Option<(usize, RouteGen)>,
    /// Someone else adds address (bridge, k) to an existing owned bridge before the apply.
    foreign_addr: Option<(usize, usize)>,
}

fn route_gen() -> impl Strategy<Value = RouteGen> {
    (
        0usize..2,
        0usize..3,
        prop_oneof![Just(None), Just(Some(100u32)), Just(Some(50u32))],
        any::<bool>(),
    )
        .prop_map(|(subnet, gw, metric, dev)| RouteGen {
            subnet,
            gw,
            metric,
            dev,
        })
}

fn bridge_gen() -> impl Strategy<Value = BridgeGen> {
    (
        prop::bool::weighted(0.75),
        prop::sample::select(MTUS.to_vec()),
        prop::array::uniform4(any::<bool>()),
        prop::option::of(route_gen()),
        prop::option::of(route_gen()),
    )
        .prop_map(|(present, mtu, addrs, route4, route6)| BridgeGen {
            present,
            mtu,
            addrs,
            route4,
            route6,
        })
}

fn step() -> impl Strategy<Value = Step> {
    (
        prop::collection::vec(bridge_gen(), 3),
        prop::collection::vec(0usize..4, 4),
        prop::option::of((0usize..3, route_gen())),
        prop::option::of((0usize..3, route_gen())),
        prop::option::of((0usize..3, 0usize..4)),
    )
        .prop_map(|(bridges, ports, default4, default6, foreign_addr)| Step {
            bridges,
            ports,
            default4,
            default6,
            foreign_addr,
        })
}

/// One expected route: (family, destination, gateway, metric, dev, scope).
type Expected = BTreeSet<(u8, String, String, u32, String, u64)>;

/// The desired network of a step, and the routes the kernel must then show.
fn desired(s: &Step) -> (HostNetwork, Expected) {
    let mut net = HostNetwork::default();
    let mut routes = Expected::new();
    // A route of family v6 via bridge b; None when the bridge lacks the address.
    let mut route = |b: usize, v6: bool, dest: String, r: &RouteGen, net: &mut HostNetwork| {
        let g = &s.bridges[b];
        if !g.present {
            return;
        }
        let present: Vec<usize> = (0..4).filter(|k| g.addrs[*k] && (*k >= 2) == v6).collect();
        if present.is_empty() {
            return;
        }
        let k = present[r.subnet % present.len()];
        let gw = if r.gw < 2 {
            gateway(b, k, r.gw)
        } else {
            String::new()
        };
        net.routes.push(Route {
            destination: dest.clone(),
            gateway: gw.clone(),
            dev: if r.dev || gw.is_empty() {
                BRIDGES[b].into()
            } else {
                String::new()
            },
            metric: r.metric.unwrap_or(0),
        });
        // The kernel's scope: link for an IPv4 route with no gateway.
        let scope = if !v6 && gw.is_empty() { 253 } else { 0 };
        let metric = r.metric.unwrap_or(if v6 { 1024 } else { 0 });
        let dest = match dest.as_str() {
            "default" => "0.0.0.0/0".into(),
            "default6" => "::/0".into(),
            d => {
                let (ip, len) = d.split_once('/').unwrap();
                format!("{}/{len}", canon(ip))
            }
        };
        routes.insert((u8::from(v6), dest, gw, metric, BRIDGES[b].into(), scope));
    };
    for (b, g) in s.bridges.iter().enumerate() {
        if !g.present {
            continue;
        }
        net.bridges.push(Bridge {
            name: BRIDGES[b].into(),
            ports: PORTS
                .iter()
                .zip(&s.ports)
                .filter(|(_, home)| **home == b + 1)
                .map(|(p, _)| p.to_string())
                .collect(),
            mtu: g.mtu,
            addresses: (0..4).filter(|k| g.addrs[*k]).map(|k| addr(b, k)).collect(),
        });
        if let Some(r) = &g.route4 {
            route(b, false, format!("198.18.{b}.0/24"), r, &mut net);
        }
        if let Some(r) = &g.route6 {
            route(b, true, format!("2001:db8:{b}::/48"), r, &mut net);
        }
    }
    if let Some((b, r)) = &s.default4 {
        route(*b, false, "default".into(), r, &mut net);
    }
    if let Some((b, r)) = &s.default6 {
        route(*b, true, "default6".into(), r, &mut net);
    }
    (net, routes)
}

/// Objects made by someone else before the sequence; they must never change.
fn make_foreign(ns: &Netns) {
    ns.ip(&["link", "add", "br-f", "type", "bridge"]);
    ns.ip(&["link", "set", "veth5", "master", "br-f"]);
    ns.ip(&["link", "set", "br-f", "up"]);
    ns.ip(&["addr", "add", "192.0.2.1/24", "dev", "br-f"]);
    ns.ip(&["addr", "add", "fd0f::1/64", "dev", "br-f"]);
    ns.ip(&[
        "route",
        "add",
        "203.0.113.0/24",
        "via",
        "192.0.2.254",
        "proto",
        "static",
    ]);
    ns.ip(&[
        "-6",
        "route",
        "add",
        "2001:db8:f::/48",
        "dev",
        "br-f",
        "metric",
        "1024",
    ]);
    ns.ip(&[
        "link", "add", "other-f", "mtu", "1400", "type", "veth", "peer", "name", "other-g",
    ]);
}

fn foreign_view(v: &Value) -> Value {
    const FOREIGN: [&str; 5] = ["br-f", "veth5", "other-f", "other-g", "peer1"];
    let ours = |x: &Value| FOREIGN.contains(&x.as_str().unwrap_or(""));
    let links: Vec<&Value> = v["links"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| ours(&l["name"]))
        .collect();
    let addrs: Vec<&Value> = v["addrs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| ours(&a["dev"]))
        .collect();
    let routes: Vec<&Value> = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| ours(&r["dev"]))
        .collect();
    assert!(routes.len() >= 4, "the foreign routes are seen: {routes:?}");
    serde_json::json!({"links": links, "addrs": addrs, "routes": routes})
}

fn link<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    v["links"].as_array().unwrap().iter().find(|l| l["name"] == name)
}

/// Check the namespace against step `s`; `addrs` is what each owned bridge must carry.
fn check(
    v: &Value,
    s: &Step,
    addrs: &BTreeMap<usize, BTreeSet<String>>,
    routes: &Expected,
) -> Result<(), String> {
    let fail = |what: String| Err(format!("{what}\nstate: {v}"));
    for (b, g) in s.bridges.iter().enumerate() {
        let l = link(v, BRIDGES[b]);
        if !g.present {
            if l.is_some() {
                return fail(format!("{} still exists", BRIDGES[b]));
            }
            continue;
        }
        let Some(l) = l else {
            return fail(format!("{} missing", BRIDGES[b]));
        };
        let want = serde_json::json!({"kind": "bridge", "alias": "hostplane:d1", "up": true, "mtu": g.mtu});
        let got = serde_json::json!({"kind": l["kind"], "alias": l["alias"], "up": l["up"], "mtu": l["mtu"]});
        if want != got {
            return fail(format!("{}: {got} != {want}", BRIDGES[b]));
        }
        let have: BTreeSet<String> = v["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["dev"] == BRIDGES[b])
            .map(|a| a["cidr"].as_str().unwrap().to_string())
            .collect();
        if have != addrs[&b] {
            return fail(format!("{} addresses {have:?} != {:?}", BRIDGES[b], addrs[&b]));
        }
    }
    for (p, home) in PORTS.iter().zip(&s.ports) {
        let l = link(v, p).ok_or_else(|| format!("{p} was deleted"))?;
        let want = (*home > 0 && s.bridges[home - 1].present).then(|| BRIDGES[home - 1]);
        if l["master"].as_str() != want {
            return fail(format!("{p}: master {} != {want:?}", l["master"]));
        }
        if let Some(b) = want.map(|_| home - 1)
            && l["mtu"] != s.bridges[b].mtu
        {
            return fail(format!("{p}: mtu {} != {}", l["mtu"], s.bridges[b].mtu));
        }
    }
    let got: Expected = v["routes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["protocol"] == 196)
        .map(|r| {
            let dst = r["destination"].as_str().unwrap().to_string();
            (
                u8::from(dst.contains(':')),
                dst,
                r["gateway"].as_str().unwrap_or("").to_string(),
                r["metric"].as_u64().unwrap() as u32,
                r["dev"].as_str().unwrap_or("").to_string(),
                r["scope"].as_u64().unwrap(),
            )
        })
        .collect();
    if &got != routes {
        return fail(format!("routes {got:?} != {routes:?}"));
    }
    Ok(())
}

fn run_sequence(ns: &Netns, py: &mut Pyroute2, steps: &[Step]) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let stop = CancellationToken::new();
        let _guard = stop.clone().drop_guard();
        let h = net::start(ns.cfg(), stop.clone()).map_err(|e| e.to_string())?;
        let foreign = foreign_view(&py.read(ns)?);
        // The reference model of addresses: per present bridge, what it
        // carries and which of those the agent added.
        let mut carried: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        let mut added: BTreeMap<usize, BTreeSet<String>> = BTreeMap::new();
        for (i, s) in steps.iter().enumerate() {
            if let Some((b, k)) = s.foreign_addr
                && let Some(have) = carried.get_mut(&b)
                && !have.contains(&addr(b, k))
            {
                ns.ip(&["addr", "add", &addr(b, k), "dev", BRIDGES[b]]);
                have.insert(addr(b, k));
            }
            let (net, routes) = desired(s);
            let r = h
                .set_desired(vec![dpu("d1", net.clone())])
                .await
                .map_err(|e| format!("step {i}: {e}\n{net:?}"))?;
            if !r[0].applied {
                return Err(format!("step {i}: not applied: {:?}\n{net:?}", r[0].objects));
            }
            for (b, g) in s.bridges.iter().enumerate() {
                if !g.present {
                    carried.remove(&b);
                    added.remove(&b);
                    continue;
                }
                let want: BTreeSet<String> = (0..4).filter(|k| g.addrs[*k]).map(|k| addr(b, k)).collect();
                let have = carried.entry(b).or_default();
                let mine = added.entry(b).or_default();
                for a in &want {
                    if have.insert(a.clone()) {
                        mine.insert(a.clone());
                    }
                }
                let gone: Vec<String> = mine.difference(&want).cloned().collect();
                for a in gone {
                    have.remove(&a);
                    mine.remove(&a);
                }
            }
            let v = py.read(ns)?;
            check(&v, s, &carried, &routes).map_err(|e| format!("step {i}: {e}\n{net:?}"))?;
            if foreign_view(&v) != foreign {
                return Err(format!(
                    "step {i}: foreign objects changed: {} != {foreign}",
                    foreign_view(&v)
                ));
            }
            let again = h
                .set_desired(vec![dpu("d1", net.clone())])
                .await
                .map_err(|e| e.to_string())?;
            if again[0].changes != 0 {
                return Err(format!(
                    "step {i}: the second apply changed {}\n{net:?}",
                    again[0].changes
                ));
            }
        }
        Ok(())
    })
}

#[test]
fn random_desired_networks_converge_in_one_apply() {
    if let Some(why) = pyroute2_missing() {
        eprintln!("SKIPPED: {why}");
        return;
    }
    if Netns::new(0).is_none() {
        return;
    }
    let py = std::cell::RefCell::new(Pyroute2::start());
    let config = ProptestConfig {
        cases: 32,
        max_shrink_iters: 64,
        ..ProptestConfig::default()
    };
    proptest!(config, |(steps in prop::collection::vec(step(), 2..5))| {
        let ns = Netns::new(5).expect("a namespace was made a moment ago");
        make_foreign(&ns);
        if let Err(e) = run_sequence(&ns, &mut py.borrow_mut(), &steps) {
            return Err(TestCaseError::fail(e));
        }
    });
}
