#!/usr/bin/env bash
# Installs btm-agent as a systemd service from a source build: the binary in /usr/local/bin,
# the units, /etc/btm/btm.toml written from BTM's flags, /etc/btm/btm.env, and a drop-in
# that lets the sandboxed unit write the volume and the log. Validates the configuration
# with the installed binary (`btm-agent config check`) before enabling anything.
#
#   deploy/systemd/install.sh --snapshot-volume /chain --log /backup/btm \
#       [--snapshot-itv 1] [--snapshot-cap 4096] [--snapshot-mode auto|ebpf|zfs|btrfs] \
#       [--snapshot-algo fair|fade] [--socket PATH] [--metrics-addr ADDR] \
#       [--node-unit UNIT] [--instance NAME] [--binary PATH] [--root DIR] [--no-start]
#
# --node-unit UNIT orders the agent before the node's unit. --instance NAME configures
# btm-agent@NAME.service (/etc/btm/NAME.toml, NAME.env) instead of btm-agent.service.
# --root DIR installs under DIR (packaging, tests) and never touches systemctl.
set -euo pipefail

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}
die() {
    echo "install.sh: $*" >&2
    exit 1
}

here="$(cd "$(dirname "$0")" && pwd)"
root=/ binary="" start=1
volume="" log="" itv="" cap="" mode="" algo="" socket="" metrics="" node_unit="" instance=""

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
    --node-unit) need "$@"; node_unit="$2"; shift 2 ;;
    --instance) need "$@"; instance="$2"; shift 2 ;;
    --binary) need "$@"; binary="$2"; shift 2 ;;
    --root) need "$@"; root="$2"; shift 2 ;;
    --no-start) start=0; shift ;;
    -h | --help) usage 0 ;;
    *) echo "install.sh: unknown option $arg" >&2; usage 2 ;;
    esac
done

[ -n "$volume" ] || die "--snapshot-volume PATH is required (the chain data volume's mount point)"
log="${log:-/var/lib/btm/log}"
if [ -n "$instance" ]; then
    [[ "$instance" =~ ^[A-Za-z0-9_.-]+$ ]] || die "--instance $instance: use letters, digits, _ . -"
    name="$instance" unit="btm-agent@$instance.service"
else
    name=btm unit=btm-agent.service
fi
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

# A path in a unit file: quoted, with systemd's specifier character escaped.
unit_path() {
    local s="${1//\\/\\\\}"
    s="${s//%/%%}"
    printf '"%s"' "${s//\"/\\\"}"
}

etc="$root/etc/btm"
units="$root/etc/systemd/system"
install -d -m 0755 "$etc" "$units" "$root/usr/local/bin"
install -m 0755 "$binary" "$root/usr/local/bin/btm-agent"
# The units name the packaged binary (/usr/bin, the .deb's); this install's is in /usr/local.
for u in btm-agent.service btm-agent@.service; do
    sed 's#/usr/bin/btm-agent#/usr/local/bin/btm-agent#g' "$here/$u" >"$units/$u"
    chmod 0644 "$units/$u"
done

conf="$(mktemp)"
trap 'rm -f "$conf"' EXIT
{
    echo "# btm-agent configuration (keys = \`btm-agent run\` flags); written by install.sh."
    echo "# BTM_* variables (see /etc/btm/$name.env) and flags win. Check: btm-agent config check"
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
if [ -f "$etc/$name.toml" ] && ! cmp -s "$conf" "$etc/$name.toml"; then
    cp -p "$etc/$name.toml" "$etc/$name.toml.bak"
    echo "kept the previous configuration as $etc/$name.toml.bak"
fi
install -m 0644 "$conf" "$etc/$name.toml"
# The env file is where offsite credentials go (AWS_*, AZURE_*, ...): root only, also when an
# older install left it readable by others.
if [ ! -f "$etc/$name.env" ]; then
    (umask 077 && : >"$etc/$name.env")
    cat >"$etc/$name.env" <<EOF
# Environment of $unit. BTM_* variables override /etc/btm/$name.toml, e.g.
# BTM_ITV=10
# BTM_METRICS_ADDR=127.0.0.1:9846
# BTM_LOG_LEVEL=info    (log filter)   BTM_LOG_FORMAT=json   (structured logs)
BTM_CONFIG=/etc/btm/$name.toml
EOF
fi
chmod 0600 "$etc/$name.env"

# The unit sees the file system read-only (ProtectSystem=strict) except /var/lib/btm and
# /run/btm: the volume (rollbacks, btrfs snapshots) and the log must be made writable, and
# mounted before the agent starts. A volume given as a dataset name (zfs) is no path.
paths=""
for p in "$volume" "$log"; do
    if [[ "$p" == /* ]]; then paths="$paths $(unit_path "$p")"; fi
done
paths="${paths# }"
install -d -m 0700 "$root$log"
dropin="$units/$unit.d"
install -d -m 0755 "$dropin"
{
    echo "# Written by deploy/systemd/install.sh: where this agent's volume and log are."
    echo "[Unit]"
    [ -z "$paths" ] || echo "RequiresMountsFor=$paths"
    [ -z "$node_unit" ] || echo "Before=$node_unit"
    echo "[Service]"
    [ -z "$paths" ] || echo "ReadWritePaths=$paths"
} >"$dropin/btm-paths.conf"
chmod 0644 "$dropin/btm-paths.conf"
echo "installed btm-agent into ${root%/}/ (unit $unit, configuration $etc/$name.toml)"

if [ "$root" = / ] && [ "$start" = 1 ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --now "$unit"
    systemctl --no-pager --lines=5 status "$unit" || true
else
    echo "start it with: systemctl daemon-reload && systemctl enable --now $unit"
fi
