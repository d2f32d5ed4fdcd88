#!/usr/bin/env bash
# Live test of deploy/upgrade.sh on 127.0.0.1: a gateway in front of `python3 -m http.server`,
# bounded curl loops (new connections and keep-alive) running throughout, two graceful binary
# upgrades in a row (A -> B -> A, so a process started by the script is itself upgraded), a SIGHUP,
# then SIGTERM. Fails if any request fails or any step does.
#
#   deploy/test-upgrade.sh BINARY [BINARY_B]        (BINARY_B defaults to a copy of BINARY)
#
# Needs bash, curl, python3. Takes about a minute: each old process keeps accepting for 5 s after
# SIGQUIT, then drains for grace_period (1 s here) before it exits.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
bin_a=$(realpath "${1:?usage: test-upgrade.sh BINARY [BINARY_B]}")
bin_b=$(realpath "${2:-$1}")

work=$(mktemp -d /tmp/dify-gateway-upgrade-test.XXXXXX)
pids=()
keep=${KEEP:-0}   # KEEP=1 keeps the work directory (logs, config)
cleanup() {
    touch "$work/stop" 2>/dev/null || true
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -n "${gw:-}" ] && kill -INT "$gw" 2>/dev/null || true
    wait 2>/dev/null || true
    if [ "${keep:-0}" = 1 ]; then echo "test-upgrade: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port=$(free_port) gw_port=$(free_port) admin_port=$(free_port)

# Distinct paths and inodes, as after installing a new build.
cp "$bin_a" "$work/dify-gateway-a"
cp "$bin_b" "$work/dify-gateway-b"
mkdir -p "$work/www"
echo probe > "$work/www/probe"

python3 -m http.server --bind 127.0.0.1 --directory "$work/www" "$up_port" >"$work/upstream.log" 2>&1 &
pids+=($!)

cat >"$work/config.yaml" <<EOF
server:
  listen: ["127.0.0.1:$gw_port"]
  threads: 2
  admin_listen: "127.0.0.1:$admin_port"
  pid_file: $work/dify-gateway.pid
  upgrade_sock: $work/upgrade.sock
  grace_period: 1s
  graceful_shutdown_timeout: 5s
upstreams:
  api: ["127.0.0.1:$up_port"]
  web: ["127.0.0.1:$up_port"]
  plugin_daemon: ["127.0.0.1:$up_port"]
  websocket: ["127.0.0.1:$up_port"]
EOF

"$work/dify-gateway-a" -t -c "$work/config.yaml"
"$work/dify-gateway-a" -c "$work/config.yaml" >>"$work/gateway.log" 2>&1 &
gw=$!
for _ in $(seq 100); do
    curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/readyz" 2>/dev/null && break
    sleep 0.1
done
curl -fsS -o /dev/null "http://127.0.0.1:$admin_port/readyz"
curl -fsS "http://127.0.0.1:$gw_port/probe" | grep -q probe
echo "test-upgrade: gateway pid $gw on 127.0.0.1:$gw_port, upstream 127.0.0.1:$up_port"

# Bounded load: 3 loops of one request per connection, 1 loop of 20 keep-alive requests per
# connection; each stops at the stop file, after 60 s, or after 20000 requests.
url="http://127.0.0.1:$gw_port/probe"
load() {
    local n=$1 out=$2 i=0 start=$SECONDS args=()
    for _ in $(seq "$n"); do args+=(-o /dev/null "$url"); done
    while [ ! -e "$work/stop" ] && (( SECONDS - start < 60 && i < 20000 )); do
        curl -sS --max-time 10 -w '%{http_code}\n' "${args[@]}" >>"$out" 2>>"$out.err" \
            || echo "curl-exit-$?" >>"$out"
        i=$((i + n))
    done
}
for w in 1 2 3; do load 1 "$work/load-$w" & pids+=($!); done
load 20 "$work/load-ka" & pids+=($!)
sleep 2

cur=$gw
for next in b a; do
    echo "test-upgrade: upgrading pid $cur to dify-gateway-$next"
    cur=$("$here/upgrade.sh" run -b "$work/dify-gateway-$next" -c "$work/config.yaml" -p "$cur" \
          --log "$work/gateway.log" --timeout 30)
    gw=$cur
    [ "$(readlink "/proc/$cur/exe")" = "$work/dify-gateway-$next" ] || { echo "test-upgrade: pid $cur runs $(readlink "/proc/$cur/exe")"; exit 1; }
    sleep 1
done

echo "test-upgrade: SIGHUP to $cur (configuration reload)"
kill -HUP "$cur"
sleep 2
kill -0 "$cur"

touch "$work/stop"
for p in "${pids[@]:1}"; do wait "$p"; done
pids=("${pids[0]}")

echo "test-upgrade: SIGTERM to $cur"
t0=$SECONDS
kill -TERM "$cur"
for _ in $(seq 150); do kill -0 "$cur" 2>/dev/null || break; sleep 0.1; done
if kill -0 "$cur" 2>/dev/null; then echo "test-upgrade: still running 15 s after SIGTERM"; exit 1; fi
gw=""
echo "test-upgrade: exited $((SECONDS - t0)) s after SIGTERM"

total=$(cat "$work"/load-? "$work"/load-ka | wc -l)
ok=$(cat "$work"/load-? "$work"/load-ka | grep -c '^200$' || true)
failed=$((total - ok))
echo "test-upgrade: $total requests, $ok answered 200, $failed failed"
if [ "$failed" -ne 0 ] || [ "$total" -lt 200 ]; then
    cat "$work"/load-* | grep -v '^200$' | sort | uniq -c | head
    keep=1
    exit 1
fi
echo "test-upgrade: ok"
