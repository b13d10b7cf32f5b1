//! The cost of each eBPF program per event: `run_cnt` / `run_time_ns` of every program, which the
//! agent reads from its program fds' fdinfo and reports in its status as
//! `"programs": [{"name", "run_cnt", "run_time_ns"}]`. The kernel counts them only while the
//! sysctl `kernel.bpf_stats_enabled` is 1 ([`BpfStats`] turns it on for a while).
use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde_json::Value;

const SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// `kernel.bpf_stats_enabled` set to 1 until dropped, then back to what it was (also when the
/// measurement in between fails).
pub struct BpfStats {
    old: String,
}

impl BpfStats {
    pub fn enable() -> Result<BpfStats> {
        let old = std::fs::read_to_string(SYSCTL).with_context(|| format!("reading {SYSCTL}"))?;
        std::fs::write(SYSCTL, "1").with_context(|| format!("writing 1 to {SYSCTL}"))?;
        Ok(BpfStats {
            old: old.trim().to_string(),
        })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(SYSCTL, &self.old) {
            eprintln!("bench: could not restore {SYSCTL} to {}: {e}", self.old);
        }
    }
}

/// Per program name: (run_cnt, run_time_ns).
pub type Programs = BTreeMap<String, (u64, u64)>;

/// The `programs` of a status answer (at its top level, or inside `tracker`); `None` when the
/// agent does not report them.
pub fn programs(status: &Value) -> Option<Programs> {
    let list = status
        .get("programs")
        .or_else(|| status.get("tracker")?.get("programs"))?
        .as_array()?;
    let mut m = Programs::new();
    for p in list {
        let name = p["name"].as_str()?.to_string();
        let e = m.entry(name).or_default();
        e.0 += p["run_cnt"].as_u64()?;
        e.1 += p["run_time_ns"].as_u64()?;
    }
    Some(m)
}

/// What ran between two readings: per program, (runs, ns), only programs that ran.
pub fn delta(before: &Programs, after: &Programs) -> Programs {
    after
        .iter()
        .filter_map(|(name, &(cnt, ns))| {
            let (c0, n0) = before.get(name).copied().unwrap_or_default();
            let d = (cnt.saturating_sub(c0), ns.saturating_sub(n0));
            (d.0 > 0).then(|| (name.clone(), d))
        })
        .collect()
}

/// Adds `d` into `sum`, program by program.
pub fn add(sum: &mut Programs, d: &Programs) {
    for (name, &(c, n)) in d {
        let e = sum.entry(name.clone()).or_default();
        e.0 += c;
        e.1 += n;
    }
}

/// One fio engine's probe cost over its runs with the agent.
#[derive(Clone, Debug, Default)]
pub struct ProbeCost {
    pub engine: String,
    /// fio's write I/Os over those runs.
    pub ios: u64,
    /// Per program that ran: (runs, ns); `None` when the agent does not report programs.
    pub programs: Option<Programs>,
}

/// One program's cost: (name, runs per fio write, ns per run).
pub type ProgramCost = (String, f64, f64);

impl ProbeCost {
    /// Per program: (name, runs per fio write, ns per run); and the ns per fio write of all of
    /// them.
    pub fn per_write(&self) -> Option<(Vec<ProgramCost>, f64)> {
        let ios = self.ios.max(1) as f64;
        let p = self.programs.as_ref()?;
        let rows = p
            .iter()
            .map(|(name, &(c, n))| (name.clone(), c as f64 / ios, n as f64 / c.max(1) as f64))
            .collect();
        let total = p.values().map(|&(_, n)| n as f64).sum::<f64>() / ios;
        Some((rows, total))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_subtracts_programs() {
        let before: Value = serde_json::from_str(
            r#"{"mode":"ebpf","tracker":{"events":3},"programs":[
                {"name":"btm_iomap_iter","run_cnt":100,"run_time_ns":20000},
                {"name":"btm_dirty_folio","run_cnt":7,"run_time_ns":700},
                {"name":"btm_truncate","run_cnt":0,"run_time_ns":0}]}"#,
        )
        .unwrap();
        let after: Value = serde_json::from_str(
            r#"{"mode":"ebpf","programs":[
                {"name":"btm_iomap_iter","run_cnt":1100,"run_time_ns":270000},
                {"name":"btm_dirty_folio","run_cnt":7,"run_time_ns":700},
                {"name":"btm_truncate","run_cnt":0,"run_time_ns":0},
                {"name":"btm_fault","run_cnt":50,"run_time_ns":5000}]}"#,
        )
        .unwrap();
        let d = delta(&programs(&before).unwrap(), &programs(&after).unwrap());
        assert_eq!(d.len(), 2, "only programs that ran: {d:?}");
        assert_eq!(d["btm_iomap_iter"], (1000, 250_000));
        assert_eq!(d["btm_fault"], (50, 5000));
        let cost = ProbeCost {
            engine: "buffered".into(),
            ios: 500,
            programs: Some(d),
        };
        let (rows, total) = cost.per_write().unwrap();
        let iomap = rows.iter().find(|r| r.0 == "btm_iomap_iter").unwrap();
        assert_eq!((iomap.1, iomap.2), (2.0, 250.0));
        assert_eq!(total, (250_000.0 + 5000.0) / 500.0);
    }

    #[test]
    fn older_agent_reports_no_programs() {
        let v: Value = serde_json::from_str(r#"{"mode":"ebpf","tracker":{"events":3}}"#).unwrap();
        assert!(programs(&v).is_none());
        let nested: Value = serde_json::from_str(
            r#"{"tracker":{"programs":[{"name":"p","run_cnt":1,"run_time_ns":2}]}}"#,
        )
        .unwrap();
        assert_eq!(programs(&nested).unwrap()["p"], (1, 2));
        assert!(
            ProbeCost::default().per_write().is_none(),
            "nothing measured: not reported"
        );
    }
}
