//! Unit tests of the metrics: rendering, readiness, and the names the shipped alert rules and
//! dashboard use (deploy/monitoring).
use super::*;

/// The offsite counters are process-wide: tests that set them take turns.
static OFFSITE: Mutex<()> = Mutex::new(());

#[test]
fn addr_without_host_is_loopback() {
    assert_eq!(
        parse_addr(":9100").unwrap(),
        "127.0.0.1:9100".parse().unwrap()
    );
    assert_eq!(
        parse_addr("9100").unwrap(),
        "127.0.0.1:9100".parse().unwrap()
    );
    assert_eq!(
        parse_addr("0.0.0.0:1").unwrap(),
        "0.0.0.0:1".parse().unwrap()
    );
    assert!(parse_addr("nonsense").is_err());
}

#[test]
fn histogram_buckets_are_cumulative() {
    let m = Metrics::new(Some(Path::new("/nonexistent")), None);
    let rep = |h, ms| CutReport {
        height: h,
        freeze_ms: ms,
        read_unfrozen: 1,
        read_frozen: 2,
        ..Default::default()
    };
    m.record_cut(&rep(5, 3.0), 10, None);
    m.record_cut(&rep(6, 300.0), 10, None);
    let t = m.render();
    assert!(
        t.contains("btm_freeze_seconds_bucket{le=\"0.005\"} 1\n"),
        "{t}"
    );
    assert!(
        t.contains("btm_freeze_seconds_bucket{le=\"0.5\"} 2\n"),
        "{t}"
    );
    assert!(t.contains("btm_freeze_seconds_count 2\n"), "{t}");
    assert!(t.contains("btm_heights_total 2\n"), "{t}");
    assert!(t.contains("btm_last_height 6\n"), "{t}");
    assert!(t.contains("btm_cut_read_bytes_total 6\n"), "{t}");
    assert!(t.contains("btm_cut_stored_bytes_total 20\n"), "{t}");
    // The old names, deprecated, still carry the values.
    assert!(t.contains("btm_cut_bytes_read_total 6\n"), "{t}");
    assert!(
        t.contains(
            "# HELP btm_cut_bytes_stored_total Deprecated, use btm_cut_stored_bytes_total.\n"
        ),
        "{t}"
    );
    assert!(t.contains("btm_last_cut_timestamp_seconds "), "{t}");
    assert!(
        t.contains(&format!(
            "btm_build_info{{version=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        )),
        "{t}"
    );
}

#[test]
fn readiness_follows_start_and_busy_tasks() {
    let m = Metrics::new(None, None);
    assert_eq!(m.readiness(), Err("agent loop not running".into()));
    m.set_alive(true);
    assert_eq!(m.readiness(), Ok(()));
    m.set_busy_limit(Duration::from_millis(20));
    let cut = m.busy("cut");
    assert_eq!(m.readiness(), Ok(()), "not yet over the limit");
    std::thread::sleep(Duration::from_millis(40));
    let why = m.readiness().unwrap_err();
    assert!(why.starts_with("cut running for"), "{why}");
    let t = m.render();
    assert!(t.contains("btm_ready 0\n"), "{t}");
    assert!(t.contains("btm_busy_seconds{task=\"cut\"} 0.0"), "{t}");
    drop(cut);
    assert_eq!(m.readiness(), Ok(()));
    let t = m.render();
    assert!(t.contains("btm_ready 1\n"), "{t}");
    assert!(t.contains("btm_busy_seconds{task=\"cut\"} 0.000\n"), "{t}");
}

#[test]
fn offsite_lag_only_when_shipping() {
    let _serial = OFFSITE.lock().unwrap_or_else(|e| e.into_inner());
    OFFSITE_ENABLED.store(false, Ordering::Relaxed);
    let m = Metrics::new(None, Some(40));
    offsite_shipped(Some(35), 0);
    assert!(!m.render().contains("btm_offsite_lag_heights"));
    offsite_enabled();
    assert!(m.render().contains("btm_offsite_lag_heights 5\n"));
}

/// Every `btm_*` name in deploy/monitoring (alert rules, their tests' inputs aside, and the
/// dashboard) is one the agent exports, so no panel or alert watches a metric that never comes.
#[test]
fn monitoring_files_use_only_exported_metrics() {
    let _serial = OFFSITE.lock().unwrap_or_else(|e| e.into_inner());
    let m = Metrics::new(Some(Path::new("/nonexistent")), Some(7));
    m.set_alive(true);
    let rep = CutReport {
        height: 8,
        ..Default::default()
    };
    m.record_cut(&rep, 1, Some(&Stats::default()));
    let _busy = m.busy("cut");
    offsite_enabled();
    offsite_shipped(Some(7), 1);
    let text = m.render();
    let exported: std::collections::BTreeSet<&str> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split([' ', '{']).next())
        .collect();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/monitoring");
    let mut checked = 0;
    for file in ["btm-alerts.yml", "btm-dashboard.json"] {
        let src = std::fs::read_to_string(dir.join(file)).unwrap();
        let mut rest = src.as_str();
        while let Some(i) = rest.find("btm_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            assert!(
                exported.contains(name.as_str()),
                "{file} uses {name}, which the agent does not export:\n{text}"
            );
            checked += 1;
        }
    }
    assert!(checked > 20, "only {checked} metric names found");
}
