//! What the .deb and the systemd unit rely on, through the real binary: `generate` makes
//! completions and man pages from the clap definitions (`cargo xtask dist` packages them),
//! `run` tells systemd it is ready once its socket listens (`Type=notify`), and `thaw` (the
//! unit's ExecStopPost) thaws a volume left frozen but never one a running agent holds.
use std::{os::unix::net::UnixDatagram, path::Path, process::Command, time::Duration};

use btm_agent::cmd::exit::Code;
use btm_tests::{LoopFs, agent_bin, can_run, start_agent_env, workdir};

/// The agent with a clean environment: the runner's BTM_* variables must not leak in.
fn agent() -> Command {
    let mut c = Command::new(agent_bin());
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default());
    c
}

fn stdout_of(c: &mut Command) -> String {
    let out = c.output().unwrap();
    assert!(
        out.status.success(),
        "{c:?}: {}; stderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn completions_name_every_verb_and_flag() {
    // Fish spells a long flag `-l NAME`. `config` is added at parse time (btm_agent::config):
    // the completions must know it too.
    for (shell, long) in [("bash", "--"), ("zsh", "--"), ("fish", "-l ")] {
        let s = stdout_of(agent().args(["generate", "completions", shell]));
        for verb in ["run", "rollback", "replay", "thaw", "generate"] {
            assert!(s.contains(verb), "{shell} completions lack {verb}");
        }
        for flag in ["volume", "socket-group", "config"] {
            assert!(
                s.contains(&format!("{long}{flag}")),
                "{shell} completions lack {long}{flag}"
            );
        }
    }
    let bash = stdout_of(agent().args(["generate", "completions", "bash"]));
    assert!(bash.contains("complete -F _btm__agent"), "{bash}");
    let out = agent()
        .args(["generate", "completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(Code::Usage.status()));
}

#[test]
fn man_pages_have_the_sections_man_shows() {
    let dir = workdir("btm-man-");
    let man = dir.path().join("man1");
    stdout_of(agent().args(["generate", "man"]).arg(&man));
    let top = std::fs::read_to_string(man.join("btm-agent.1")).unwrap();
    for section in [
        ".TH btm-agent 1",
        ".SH NAME",
        ".SH SYNOPSIS",
        ".SH SUBCOMMANDS",
    ] {
        assert!(top.contains(section), "btm-agent.1 lacks {section}:\n{top}");
    }
    assert!(
        top.contains(env!("CARGO_PKG_VERSION")),
        "btm-agent.1 names no version"
    );
    let run = std::fs::read_to_string(man.join("btm-agent-run.1")).unwrap();
    assert!(
        run.contains(".SH NAME") && run.contains("socket\\-group"),
        "{run}"
    );
    assert!(man.join("btm-agent-config-check.1").exists());
}

#[test]
fn run_notifies_readiness_and_thaw_respects_the_running_agent() {
    if !can_run("run_notifies_readiness_and_thaw_respects_the_running_agent") {
        return;
    }
    let fs = LoopFs::new("ext4", 64).unwrap();
    std::fs::write(fs.path("a"), b"chain data").unwrap();
    let work = workdir("btm-notify-");
    let notify = work.path().join("notify.sock");
    let listen = UnixDatagram::bind(&notify).unwrap();
    listen
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let sock = work.path().join("btm.sock");
    let mut running = start_agent_env(
        &fs.mnt,
        &work.path().join("log"),
        &sock,
        &[],
        &[("NOTIFY_SOCKET", notify.to_str().unwrap())],
    );
    let mut buf = [0u8; 256];
    let n = listen.recv(&mut buf).expect("no READY=1 from the agent");
    assert_eq!(&buf[..n], b"READY=1");

    // The agent holds the volume: its freezes are its own to end.
    let out = agent()
        .args(["thaw", "--volume"])
        .arg(&fs.mnt)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(Code::Locked.status()),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert!(running.terminate().success());
    let n = listen.recv(&mut buf).expect("no STOPPING=1 from the agent");
    assert_eq!(&buf[..n], b"STOPPING=1");

    // A volume left frozen (the agent and its guard killed together) is thawed, found
    // through the configuration file as the unit's ExecStopPost does.
    let conf = work.path().join("btm.toml");
    std::fs::write(&conf, format!("volume = {:?}\n", fs.mnt.to_str().unwrap())).unwrap();
    freeze(&fs.mnt);
    let s = stdout_of(agent().args(["thaw", "--config"]).arg(&conf));
    assert!(s.contains("was frozen; thawed it"), "{s}");
    std::fs::write(fs.path("b"), b"writable again").unwrap();
    let s = stdout_of(agent().arg("thaw").env("BTM_CONFIG", &conf));
    assert!(s.contains("is not frozen"), "{s}");
}

fn freeze(mnt: &Path) {
    let st = Command::new("fsfreeze")
        .arg("-f")
        .arg(mnt)
        .status()
        .unwrap();
    assert!(st.success(), "fsfreeze -f {}", mnt.display());
}
