//! What the .deb relies on, through the real binary: `generate` makes completions and man
//! pages from the clap definitions (`cargo xtask dist` packages them).
use std::process::Command;

use btm_agent::cmd::exit::Code;
use btm_tests::{agent_bin, workdir};

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
        for verb in ["run", "rollback", "replay", "generate"] {
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
