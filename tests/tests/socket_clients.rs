//! Clients that misbehave on the agent's socket must not hold up anyone else's heights: one
//! that sends a byte every second and never finishes its line, one that sends a megabyte with
//! no newline, many that connect and say nothing.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use btm_tests::{LoopFs, agent_bin, can_run, log_heights, start_agent, workdir};

fn snapshot(sock: &std::path::Path, h: u64) -> std::process::Output {
    Command::new(agent_bin())
        .args(["snapshot", "--height", &h.to_string(), "--socket"])
        .arg(sock)
        .output()
        .unwrap()
}

/// One request line, its answer as JSON.
fn ask(sock: &std::path::Path, line: &str) -> serde_json::Value {
    let mut s = UnixStream::connect(sock).unwrap();
    writeln!(s, "{line}").unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    serde_json::from_str(&answer).unwrap_or_else(|e| panic!("{e}: {answer:?}"))
}

#[test]
fn slow_and_huge_clients_do_not_hold_up_heights() {
    if !can_run("socket clients") {
        return;
    }
    let vol = LoopFs::new("ext4", 256).unwrap();
    let work = workdir("btm-clients-");
    let (log, sock) = (work.path().join("log"), work.path().join("agent.sock"));
    let mut agent = start_agent(&vol.mnt, &log, &sock, &[]);

    // A slow client: one byte a second, for longer than the cuts below take.
    let slow_done = Arc::new(AtomicBool::new(false));
    let slow = {
        let (sock, done) = (sock.clone(), slow_done.clone());
        std::thread::spawn(move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            for b in br#"{"cmd":"status"#.iter().take(8) {
                if s.write_all(&[*b]).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            done.store(true, Ordering::SeqCst);
        })
    };
    // Silent clients.
    let silent: Vec<UnixStream> = (0..20)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for h in 1..=3 {
        let out = snapshot(&sock, h);
        assert!(
            out.status.success(),
            "height {h} behind slow clients: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        !slow_done.load(Ordering::SeqCst),
        "the heights were cut only after the slow client gave up"
    );

    // A huge request is answered with an error, and the agent goes on.
    let mut huge = UnixStream::connect(&sock).unwrap();
    let _ = huge.write_all(&vec![b'x'; 1 << 20]);
    let mut answer = String::new();
    let _ = huge.read_to_string(&mut answer);
    assert!(answer.contains("request too large"), "{answer:?}");
    assert!(answer.contains(r#""code":"too_large""#), "{answer:?}");
    assert!(snapshot(&sock, 4).status.success());

    // A height asked for again (a retried hook, a client that lost its answer) is answered as
    // done, without a new cut; the newest and an older kept one alike.
    for h in [4, 2] {
        let v = ask(&sock, &format!(r#"{{"cmd":"snapshot","height":{h}}}"#));
        assert_eq!(v["ok"], true, "{v}");
        assert_eq!(v["detail"]["already_durable"], true, "{v}");
        assert!(snapshot(&sock, h).status.success());
    }
    // Every answer carries the protocol version, and every refusal a stable code.
    for (line, code) in [
        (r#"{"cmd":"snapshot","height":0}"#, "not_above"),
        (r#"{"cmd":"reboot"}"#, "malformed"),
        (r#"{"cmd":"status","v":99}"#, "unsupported_version"),
    ] {
        let v = ask(&sock, line);
        assert_eq!(
            (v["v"].as_u64(), v["ok"].as_bool()),
            (Some(1), Some(false)),
            "{v}"
        );
        assert_eq!(v["code"], code, "{line}: {v}");
    }

    drop(silent);
    slow.join().unwrap();
    agent.terminate();
    assert_eq!(log_heights(&log), vec![1, 2, 3, 4]);
}
