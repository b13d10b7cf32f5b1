#!/usr/bin/env bash
# Installs btm-agent as a systemd service: the binary, the unit, /etc/btm/btm.toml written from
# BTM's flags, and /etc/btm/btm.env. Validates the configuration with the installed binary
# (`btm-agent config check`) before enabling anything.
#
#   deploy/systemd/install.sh --snapshot-volume /chain --log /backup/btm \
#       [--snapshot-itv 1] [--snapshot-cap 4096] [--snapshot-mode auto|ebpf|zfs|btrfs] \
#       [--snapshot-algo fair|fade] [--socket PATH] [--metrics-addr ADDR] \
#       [--binary PATH] [--root DIR] [--no-start]
#
# --root DIR installs under DIR (packaging, tests) and never touches systemctl.
set -euo pipefail

usage() {
    sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}
die() {
    echo "install.sh: $*" >&2
    exit 1
}

here="$(cd "$(dirname "$0")" && pwd)"
root=/ binary="" start=1
volume="" log="" itv="" cap="" mode="" algo="" socket="" metrics=""

while [ $# -gt 0 ]; do
    arg="$1"
    # Accept both `--flag value` and `--flag=value`.
    if [[ "$arg" == --*=* ]]; then
        set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
        arg="$1"
    fi
    need() { [ $# -ge 2 ] || die "$1 needs a value"; }
    case "$arg" in
    --snapshot-volume) need "$@"; volume="$2"; shift 2 ;;
    --snapshot-itv) need "$@"; itv="$2"; shift 2 ;;
    --snapshot-cap) need "$@"; cap="$2"; shift 2 ;;
    --snapshot-mode) need "$@"; mode="$2"; shift 2 ;;
    --snapshot-algo) need "$@"; algo="$2"; shift 2 ;;
    --log) need "$@"; log="$2"; shift 2 ;;
    --socket) need "$@"; socket="$2"; shift 2 ;;
    --metrics-addr) need "$@"; metrics="$2"; shift 2 ;;
    --binary) need "$@"; binary="$2"; shift 2 ;;
    --root) need "$@"; root="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; usage 2 ;;
    esac
done

[ -n "$volume" ] || die "--snapshot-volume PATH is required (the chain data volume's mount point)"
log="${log:-/var/lib/btm/log}"
for n in "itv:$itv" "cap:$cap"; do
    v="${n#*:}"
    [ -z "$v" ] || [[ "$v" =~ ^[0-9]+$ ]] || die "--snapshot-${n%%:*} $v: not a number"
done

if [ -z "$binary" ]; then
    for c in "$here/../../target/release/btm-agent" "$here/../../target/debug/btm-agent" \
        "$(command -v btm-agent || true)"; do
        if [ -n "$c" ] && [ -x "$c" ]; then binary="$c"; break; fi
    done
fi
if [ -z "$binary" ] || [ ! -x "$binary" ]; then
    die "no btm-agent binary found; build it (cargo build --release -p btm-agent) or pass --binary PATH"
fi

# A TOML basic string: backslashes and quotes escaped.
toml_str() {
    local s="${1//\\/\\\\}"
    printf '"%s"' "${s//\"/\\\"}"
}

etc="$root/etc/btm"
install -d -m 0755 "$etc" "$root/etc/systemd/system" "$root/usr/local/bin"
install -m 0755 "$binary" "$root/usr/local/bin/btm-agent"
install -m 0644 "$here/btm-agent.service" "$root/etc/systemd/system/btm-agent.service"

conf="$(mktemp)"
trap 'rm -f "$conf"' EXIT
{
    echo "# btm-agent configuration (keys = \`btm-agent run\` flags); written by install.sh."
    echo "# BTM_* variables (see /etc/btm/btm.env) and flags win. Check: btm-agent config check"
    echo "volume = $(toml_str "$volume")"
    echo "log = $(toml_str "$log")"
    [ -z "$itv" ] || echo "itv = $itv"
    [ -z "$cap" ] || echo "cap = $cap"
    [ -z "$mode" ] || echo "mode = $(toml_str "$mode")"
    [ -z "$algo" ] || echo "algo = $(toml_str "$algo")"
    [ -z "$socket" ] || echo "socket = $(toml_str "$socket")"
    [ -z "$metrics" ] || echo "metrics_addr = $(toml_str "$metrics")"
} >"$conf"

# Validate with the installed binary before anything points at the new file. A clean
# environment keeps the installer's own BTM_* variables out of the check.
if ! env -i PATH="$PATH" "$root/usr/local/bin/btm-agent" config check --config "$conf" >/dev/null; then
    die "the configuration above is not valid; nothing was changed in $etc"
fi
if [ -f "$etc/btm.toml" ] && ! cmp -s "$conf" "$etc/btm.toml"; then
    cp -p "$etc/btm.toml" "$etc/btm.toml.bak"
    echo "kept the previous configuration as $etc/btm.toml.bak"
fi
install -m 0644 "$conf" "$etc/btm.toml"
# btm.env is where offsite credentials go (AWS_*, AZURE_*, ...): root only, also when an
# older install left it readable by others.
if [ ! -f "$etc/btm.env" ]; then
    (umask 077 && : >"$etc/btm.env")
    cat >"$etc/btm.env" <<'EOF'
# Environment of btm-agent.service. BTM_* variables override /etc/btm/btm.toml, e.g.
# BTM_ITV=10
# BTM_METRICS_ADDR=127.0.0.1:9100
# BTM_LOG_LEVEL=info    (log filter)   BTM_LOG_FORMAT=json   (structured logs)
BTM_CONFIG=/etc/btm/btm.toml
EOF
fi
chmod 0600 "$etc/btm.env"
echo "installed btm-agent into ${root%/}/ (unit btm-agent.service, configuration $etc/btm.toml)"

if [ "$root" = / ] && [ "$start" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now btm-agent.service
    systemctl --no-pager --lines=5 status btm-agent.service || true
else
    echo "start it with: systemctl daemon-reload && systemctl enable --now btm-agent.service"
fi
