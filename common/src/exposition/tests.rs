use proptest::prelude::*;

use super::*;

#[test]
fn prometheus_and_curl_accept_headers_are_negotiated() {
    let cases: &[(Option<&str>, Format)] = &[
        (None, Format::Text004),
        (Some("*/*"), Format::Text004),
        (Some(""), Format::Text004),
        // Prometheus 2.x (2.42 included).
        (
            Some(
                "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,\
                 text/plain;version=0.0.4;q=0.5,*/*;q=0.1",
            ),
            Format::OpenMetrics,
        ),
        // Prometheus 3.x.
        (
            Some(
                "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,\
                 application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=0.0.4;q=0.3,*/*;q=0.2",
            ),
            Format::OpenMetrics,
        ),
        // Prometheus with scrape_protocols: [PrometheusText0.0.4].
        (Some("text/plain;version=0.0.4;q=0.5,*/*;q=0.1"), Format::Text004),
        (Some("application/openmetrics-text"), Format::OpenMetrics),
        (
            Some("Application/OpenMetrics-Text; Version=1.0.0"),
            Format::OpenMetrics,
        ),
        (Some("application/openmetrics-text;q=0"), Format::Text004),
        (Some("application/openmetrics-text;q=junk"), Format::Text004),
        (
            Some("application/openmetrics-text;version=2.0.0"),
            Format::Text004,
        ),
        (
            Some("text/plain;version=0.0.4, application/openmetrics-text;q=0.9"),
            Format::Text004,
        ),
        (
            Some("text/plain;version=0.0.4;q=0.9, application/openmetrics-text"),
            Format::OpenMetrics,
        ),
        (Some("application/json"), Format::Text004),
    ];
    for (accept, want) in cases {
        assert_eq!(negotiate(*accept), *want, "Accept: {accept:?}");
    }
}

#[test]
fn openmetrics_families_are_renamed_and_trimmed_for_0_0_4() {
    let om = "# HELP hostplane_energy_joules Energy used, per source.\n\
              # TYPE hostplane_energy_joules counter\n\
              # UNIT hostplane_energy_joules joules\n\
              hostplane_energy_joules_total{source=\"rapl\",scope=\"package-0\"} 12.5\n\
              hostplane_energy_joules_created{source=\"rapl\",scope=\"package-0\"} 1700000000.5\n\
              hostplane_energy_joules_total{source=\"a } # {b\\\"\"} 1 # {trace_id=\"x\"} 1.0 1700000000.25\n\
              # HELP up_seconds A \\\"quoted\\\" \\\\ help\n\
              # TYPE up_seconds gauge\n\
              up_seconds 3 1700000000.5\n\
              # HELP build Build.\n\
              # TYPE build info\n\
              build_info{version=\"1\"} 1\n\
              # HELP lat Latency.\n\
              # TYPE lat histogram\n\
              lat_sum 1.5\n\
              lat_count 2\n\
              lat_bucket{le=\"1.0\"} 1\n\
              lat_bucket{le=\"+Inf\"} 2\n\
              lat_created 1700000000.0\n\
              # HELP empty No samples yet.\n\
              # TYPE empty counter\n\
              # TYPE odd unknown\n\
              odd +Inf\n\
              # EOF\n";
    let want = "# HELP hostplane_energy_joules_total Energy used, per source.\n\
                # TYPE hostplane_energy_joules_total counter\n\
                hostplane_energy_joules_total{source=\"rapl\",scope=\"package-0\"} 12.5\n\
                hostplane_energy_joules_total{source=\"a } # {b\\\"\"} 1\n\
                # HELP up_seconds A \"quoted\" \\\\ help\n\
                # TYPE up_seconds gauge\n\
                up_seconds 3 1700000000500\n\
                # HELP build_info Build.\n\
                # TYPE build_info gauge\n\
                build_info{version=\"1\"} 1\n\
                # HELP lat Latency.\n\
                # TYPE lat histogram\n\
                lat_sum 1.5\n\
                lat_count 2\n\
                lat_bucket{le=\"1.0\"} 1\n\
                lat_bucket{le=\"+Inf\"} 2\n\
                # HELP empty_total No samples yet.\n\
                # TYPE empty_total counter\n\
                # TYPE odd untyped\n\
                odd +Inf\n";
    assert_eq!(to_text_004(om).unwrap(), want);
    assert_eq!(
        encode(Format::OpenMetrics, om.into()).unwrap(),
        om,
        "OpenMetrics is served as written"
    );
}

#[test]
fn bodies_that_0_0_4_cannot_express_are_refused_with_the_line() {
    let cases = [
        ("# TYPE g gaugehistogram\n", 1, "gaugehistogram"),
        ("# TYPE a gauge\n# TYPE a counter\n", 2, "a second # TYPE for a"),
        ("# HELP a x\n# HELP a y\n", 2, "a second # HELP for a"),
        ("# TYPE a gauge\na 1\n# HELP a late\n", 3, "after its samples"),
        ("a{x=\"1\" 1\n", 1, "closing brace"),
        ("a one\n", 1, "not a number"),
        ("a 1 2 3\n", 1, "after a sample's timestamp"),
        ("a 1 soon\n", 1, "timestamp"),
        ("9a 1\n", 1, "invalid metric name"),
        ("# EOF\na 1\n", 2, "after # EOF"),
    ];
    for (body, line, needle) in cases {
        let e = to_text_004(body).unwrap_err();
        assert_eq!(e.line, line, "{body:?}: {e}");
        assert!(e.to_string().contains(needle), "{body:?}: {e}");
    }
}

/// A label value with everything that needs escaping or could confuse a
/// line splitter.
fn label_value() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            Just("\"".to_string()),
            Just("\\".to_string()),
            Just("\n".to_string()),
            Just(" # {".to_string()),
            Just("}".to_string()),
            "[a-zA-Zé水 _.:-]{1,4}",
        ],
        0..5,
    )
    .prop_map(|v| v.concat())
}

proptest! {
    /// Whatever prometheus-client writes converts, and the 0.0.4 body keeps
    /// every sample but `_created`, each under a `# TYPE` naming it.
    #[test]
    fn every_registry_converts_with_its_samples_under_their_type(
        counters in proptest::collection::vec((label_value(), 0u64..1_000_000), 0..4),
        gauges in proptest::collection::vec((label_value(), -1e9f64..1e9), 0..4),
        observations in proptest::collection::vec(0f64..10.0, 0..6),
    ) {
        use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
        use std::sync::atomic::AtomicU64;
        let mut registry = prometheus_client::registry::Registry::default();
        let sub = registry.sub_registry_with_prefix("hostplane");
        let c = Family::<Vec<(String, String)>, Counter>::default();
        let g = Family::<Vec<(String, String)>, Gauge<f64, AtomicU64>>::default();
        let h = Histogram::new([0.5, 1.0, 5.0]);
        sub.register("things", "Things counted", c.clone());
        sub.register("level", "A \"level\"", g.clone());
        sub.register("latency_seconds", "Latency", h.clone());
        for (v, n) in &counters {
            c.get_or_create(&vec![("source".into(), v.clone())]).inc_by(*n);
        }
        for (v, x) in &gauges {
            g.get_or_create(&vec![("scope".into(), v.clone())]).set(*x);
        }
        for o in &observations {
            h.observe(*o);
        }
        let mut om = String::new();
        prometheus_client::encoding::text::encode(&mut om, &registry).unwrap();
        let text = to_text_004(&om).unwrap();
        let om_samples: Vec<&str> = om.lines().filter(|l| !l.starts_with('#')).collect();
        let text_samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        prop_assert_eq!(text_samples, om_samples, "no _created or exemplars from these types");
        prop_assert!(!text.contains("# EOF") && !text.contains("# UNIT"));
        let mut typed = "";
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                typed = t.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                let name = &line[..line.find(['{', ' ']).unwrap()];
                let family = name == typed
                    || ["_bucket", "_sum", "_count"].iter().any(|s| name.strip_suffix(s) == Some(typed));
                prop_assert!(family, "{name} is not under # TYPE {typed}:\n{text}");
            }
        }
        // prometheus-client writes nothing for a family without samples.
        let families = [
            ("hostplane_things_total counter", !counters.is_empty()),
            ("hostplane_level gauge", !gauges.is_empty()),
            ("hostplane_latency_seconds histogram", true),
        ];
        for (family, present) in families {
            let type_line = format!("# TYPE {family}\n");
            prop_assert_eq!(text.contains(&type_line), present, "{}", text);
        }
    }
}
