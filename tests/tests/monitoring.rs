//! What an operator's monitoring sees of a real agent: the metric names (the Prometheus
//! convention's, and the deprecated ones for one release), build info, the time of the last cut,
//! offsite lag, and the probes: /livez, /readyz (503 while a cut runs past the limit), /healthz.
use std::{
    fs,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use btm_tests::{
    LoopFs, Rng, can_run, free_port, http_get, prom_samples, snapshot_via, start_agent_env, workdir,
};

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Polls `path` until it answers `want` (or panics after `secs`); returns the body.
fn wait_status(port: u16, path: &str, want: u16, secs: u64) -> String {
    let t0 = Instant::now();
    loop {
        match http_get(port, path) {
            Ok((s, body)) if s == want => return body,
            other => assert!(
                t0.elapsed() < Duration::from_secs(secs),
                "{path} did not answer {want} within {secs} s: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn probes_names_and_lag_of_a_real_agent() {
    if !can_run("monitoring endpoints of a real agent") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = workdir("btm-monitoring-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    let store = work.path().join("offsite");
    fs::create_dir(&store).unwrap();
    let remote = format!("file://{}", store.display());
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    // Each cut holds the volume frozen 2.5 s, past a readiness limit of 1 s.
    let _agent = start_agent_env(
        &vol.mnt,
        &log,
        &sock,
        &[
            "--metrics-addr",
            &addr,
            "--ready-busy-secs",
            "1",
            "--remote",
            &remote,
        ],
        &[("BTM_TEST_HOLD_FROZEN_MS", "2500")],
    );
    assert_eq!(wait_status(port, "/livez", 200, 30), "ok\n");
    assert_eq!(http_get(port, "/healthz").unwrap(), (200, "ok\n".into()));
    assert_eq!(http_get(port, "/readyz").unwrap(), (200, "ready\n".into()));

    let text = http_get(port, "/metrics").unwrap().1;
    let m = prom_samples(&text);
    let version = format!(
        "btm_build_info{{version=\"{}\"}}",
        env!("CARGO_PKG_VERSION")
    );
    assert_eq!(m.get(&version), Some(&1.0), "{text}");
    assert_eq!(m["btm_ready"], 1.0, "{text}");
    let started = m["btm_start_time_seconds"];
    assert!(
        started <= now_secs() && started > now_secs() - 300.0,
        "{text}"
    );
    assert!(!m.contains_key("btm_last_cut_timestamp_seconds"), "{text}");
    // Nothing in the log yet: no lag to speak of.
    assert!(!m.contains_key("btm_offsite_lag_heights"), "{text}");

    let mut rng = Rng(0x6d6f_6e69);
    fs::write(vol.path("block-10"), rng.bytes(200_000)).unwrap();
    let before_cut = now_secs();
    let cut = std::thread::spawn({
        let sock = sock.clone();
        move || snapshot_via(&sock, 10)
    });
    // While the cut holds the volume frozen past the limit: not ready, and saying why;
    // still alive.
    let why = wait_status(port, "/readyz", 503, 30);
    assert!(why.contains("cut running for"), "{why}");
    assert_eq!(http_get(port, "/livez").unwrap().0, 200);
    let busy = prom_samples(&http_get(port, "/metrics").unwrap().1);
    assert_eq!(busy["btm_ready"], 0.0);
    assert!(busy["btm_busy_seconds{task=\"cut\"}"] > 1.0, "{busy:?}");
    cut.join().unwrap();
    assert_eq!(http_get(port, "/readyz").unwrap(), (200, "ready\n".into()));

    fs::write(vol.path("block-11"), rng.bytes(200_000)).unwrap();
    snapshot_via(&sock, 11);
    // The shipper catches up in the background: wait for height 11 offsite.
    let t0 = Instant::now();
    let m = loop {
        let m = prom_samples(&http_get(port, "/metrics").unwrap().1);
        if m.get("btm_offsite_last_height") == Some(&11.0) {
            break m;
        }
        assert!(t0.elapsed() < Duration::from_secs(60), "not shipped: {m:?}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(m["btm_offsite_lag_heights"], 0.0, "{m:?}");
    let cut_at = m["btm_last_cut_timestamp_seconds"];
    assert!(
        cut_at >= before_cut.floor() && cut_at <= now_secs(),
        "{m:?}"
    );
    assert_eq!(m["btm_busy_seconds{task=\"cut\"}"], 0.0, "{m:?}");
    // New names and the deprecated ones carry the same values.
    for (new, old) in [
        ("btm_cut_read_bytes_total", "btm_cut_bytes_read_total"),
        ("btm_cut_stored_bytes_total", "btm_cut_bytes_stored_total"),
    ] {
        assert!(m[new] >= 400_000.0, "{new}: {m:?}");
        assert_eq!(m[new], m[old], "{new} vs {old}");
    }
    let text = http_get(port, "/metrics").unwrap().1;
    assert!(
        text.contains(
            "# HELP btm_cut_bytes_read_total Deprecated, use btm_cut_read_bytes_total.\n"
        ),
        "{text}"
    );
}
