#!/usr/bin/env bash
# Graceful binary upgrade of dify-gateway: the new process takes the listening sockets over from the
# running one (Pingora's -u / SIGQUIT hand-over), so no connection is refused and requests in
# flight on the old process finish there.
#
#   upgrade.sh run      [options]   no systemd: the steps below, by hand, on a process you started
#   upgrade.sh systemd  [options]   install a new binary and let the unit hand over (systemctl reload)
#   upgrade.sh reload   MAINPID     what the unit's ExecReload runs (not for people)
#
# The hand-over, as `run` and `reload` do it:
#   1. `NEW -t -c CONFIG`: the new binary accepts the config (else nothing changes);
#   2. start `NEW -u -c CONFIG`; it waits on server.upgrade_sock for the sockets;
#   3. SIGQUIT the old process: it sends its listening sockets over, keeps accepting for 5 s
#      (Pingora's CLOSE_TIMEOUT), then stops accepting and drains for server.grace_period +
#      server.graceful_shutdown_timeout at most, and exits;
#   4. wait until the new process holds every listening socket of the old one;
#   5. (`run`) wait until the old process has exited, then check /healthz (now answered by the new
#      process alone).
#
# Options (run, systemd):
#   -b, --binary PATH       the new binary              (run: /usr/local/bin/dify-gateway;
#                                                         systemd: required, it is installed)
#   -c, --config PATH       the config                  (/etc/dify-gateway/config.yaml)
#   -p, --pid PID           the running process         (run: read from --pid-file)
#       --pid-file PATH     its pid file (-d mode)      (server.pid_file of the config)
#       --upgrade-sock PATH                             (server.upgrade_sock of the config)
#       --admin ADDR        where /healthz is           (server.admin_listen of the config)
#       --daemon            start the new process with -d (when the old one runs with -d)
#       --log FILE          the new process's stdout/stderr (run; default: the old process's
#                           stderr if that is a file, else this script's)
#       --unit NAME         the systemd unit            (systemd: dify-gateway)
#       --timeout SECONDS   longest wait for the old process to exit (60)
#
# The config values are read from the file with a plain pattern (`  upgrade_sock: /path`); when
# they are written with ${VAR} or in flow style, pass them as options.
set -euo pipefail
[ -n "${DIFY_GATEWAY_UPGRADE_TRACE:-}" ] && set -x

DEFAULT_BIN=/usr/local/bin/dify-gateway
DEFAULT_CONFIG=/etc/dify-gateway/config.yaml

log() { printf 'upgrade: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }

# A scalar key of the config's `server:` section, as written (quotes removed); empty when absent or
# when it uses ${...} expansion.
config_value() {
    local key=$1 file=$2 v
    [ -r "$file" ] || return 0
    v=$(sed -n "s/^[[:space:]]\{1,\}$key:[[:space:]]*//p" "$file" | head -n1)
    v=${v%%#*}
    v=$(printf '%s' "$v" | sed -e 's/[[:space:]]*$//' -e 's/^"\(.*\)"$/\1/' -e "s/^'\(.*\)'\$/\1/")
    case $v in *"\${"*) v= ;; esac
    printf '%s' "$v"
}

# The inodes of the TCP listening sockets process $1 holds, sorted.
listen_inodes() {
    local pid=$1 f l held
    held=$(for f in /proc/"$pid"/fd/*; do
               l=$(readlink "$f" 2>/dev/null) || continue
               case $l in socket:\[*\]) l=${l#socket:[}; printf '%s\n' "${l%]}" ;; esac
           done | LC_ALL=C sort -u)
    [ -n "$held" ] || return 0
    local t
    for t in /proc/"$pid"/net/tcp /proc/"$pid"/net/tcp6; do
        [ -e "$t" ] || continue
        # Field 4 (st) 0A = LISTEN; field 10 is the socket's inode. (sed, not a shell loop: under
        # load these tables hold thousands of TIME_WAIT lines.)
        sed -nE 's/^ *[0-9]+: +[^ ]+ +[^ ]+ +0A +[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ +[^ ]+ +([0-9]+) .*/\1/p' "$t"
    done | LC_ALL=C sort -u | LC_ALL=C comm -12 - <(printf '%s\n' "$held")
}

# Start NEW -u, SIGQUIT OLD, wait until NEW holds OLD's listeners. Prints NEW's pid.
# Globals: BIN CONFIG SOCK PIDFILE DAEMON LOGFILE OLD
handover() {
    local before new="" i inodes missing
    alive "$OLD" || die "no running process with pid $OLD"
    before=$(listen_inodes "$OLD")
    [ -n "$before" ] || die "pid $OLD holds no listening TCP socket (is it dify-gateway? can this user read /proc/$OLD/fd?)"
    [ -n "$SOCK" ] || die "no upgrade socket path: pass --upgrade-sock"

    # A socket file left by an earlier upgrade would look like the new process is ready.
    rm -f -- "$SOCK"
    local args=(-u -c "$CONFIG")
    [ "$DAEMON" = 1 ] && args+=(-d)
    log "starting $BIN ${args[*]}"
    if [ -n "$LOGFILE" ]; then
        setsid "$BIN" "${args[@]}" </dev/null >>"$LOGFILE" 2>&1 3>&- &
    else
        # fd 3 is this script's stdout (handover's own is captured for the pid).
        setsid "$BIN" "${args[@]}" </dev/null >&3 3>&- &
    fi
    new=$!

    # The new process loads its config, builds the server, then listens on the upgrade socket and
    # waits about 6 s for the old one to send the sockets.
    for ((i = 0; i < 100; i++)); do
        [ -S "$SOCK" ] && break
        alive "$new" || die "the new process exited before listening on $SOCK (see its log); the old one (pid $OLD) goes on serving"
        sleep 0.1
    done
    [ -S "$SOCK" ] || { kill -INT "$new" 2>/dev/null || true; die "the new process did not create $SOCK within 10 s; stopped it, the old one (pid $OLD) goes on serving"; }

    log "sending SIGQUIT to the old process $OLD"
    kill -QUIT "$OLD"

    if [ "$DAEMON" = 1 ]; then
        # The foreground process exits once it has daemonized; the daemon writes the pid file
        # (Pingora first renames the old one to *.old).
        wait "$new" || die "the new process failed to take the sockets over (exit $?)"
        new=""
        for ((i = 0; i < 100; i++)); do
            new=$(cat -- "$PIDFILE" 2>/dev/null || true)
            [ -n "$new" ] && [ "$new" != "$OLD" ] && alive "$new" && break
            new=""
            sleep 0.1
        done
        [ -n "$new" ] || die "no new pid in $PIDFILE"
    fi

    for ((i = 0; i < 150; i++)); do
        alive "$new" || die "the new process $new exited during the hand-over (see its log)"
        inodes=$(listen_inodes "$new")
        missing=$(LC_ALL=C comm -23 <(printf '%s\n' "$before") <(printf '%s\n' "$inodes"))
        if [ -n "$inodes" ] && [ -z "$missing" ]; then
            log "pid $new holds the listening sockets; pid $OLD drains and exits"
            printf '%s\n' "$new"
            return 0
        fi
        sleep 0.1
    done
    die "the new process $new did not receive the listening sockets within 15 s"
}

wait_exit() {
    local pid=$1 timeout=$2 i
    for ((i = 0; i < timeout * 10; i++)); do
        alive "$pid" || return 0
        sleep 0.1
    done
    return 1
}

healthz() {
    local addr=$1 i
    [ -n "$addr" ] || { log "admin listener off: /healthz not checked"; return 0; }
    case $addr in
        0.0.0.0:*) addr="127.0.0.1:${addr#0.0.0.0:}" ;;
        '[::]:'*) addr="[::1]:${addr#'[::]:'}" ;;
    esac
    for ((i = 0; i < 50; i++)); do
        if curl -fsS --max-time 2 -o /dev/null "http://$addr/healthz"; then
            log "http://$addr/healthz ok"
            return 0
        fi
        sleep 0.1
    done
    die "http://$addr/healthz failed"
}

BIN="" CONFIG=$DEFAULT_CONFIG OLD="" PIDFILE="" SOCK="" ADMIN="" ADMIN_SET=0 DAEMON=0 LOGFILE=""
UNIT=dify-gateway TIMEOUT=60

parse_options() {
    while [ $# -gt 0 ]; do
        case $1 in
            -b|--binary) BIN=$2; shift ;;
            -c|--config) CONFIG=$2; shift ;;
            -p|--pid) OLD=$2; shift ;;
            --pid-file) PIDFILE=$2; shift ;;
            --upgrade-sock) SOCK=$2; shift ;;
            --admin) ADMIN=$2; ADMIN_SET=1; shift ;;
            --daemon) DAEMON=1 ;;
            --log) LOGFILE=$2; shift ;;
            --unit) UNIT=$2; shift ;;
            --timeout) TIMEOUT=$2; shift ;;
            -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d'; exit 0 ;;
            *) die "unknown option $1 (see --help)" ;;
        esac
        shift
    done
    [ -n "$SOCK" ] || SOCK=$(config_value upgrade_sock "$CONFIG")
    [ -n "$SOCK" ] || SOCK=/tmp/dify-gateway-upgrade.sock
    [ -n "$PIDFILE" ] || PIDFILE=$(config_value pid_file "$CONFIG")
    [ -n "$PIDFILE" ] || PIDFILE=/tmp/dify-gateway.pid
    if [ "$ADMIN_SET" = 0 ]; then
        if grep -Eq '^[[:space:]]+admin_listen:' "$CONFIG" 2>/dev/null; then
            ADMIN=$(config_value admin_listen "$CONFIG")
        else
            ADMIN=127.0.0.1:9901
        fi
    fi
}

exec 3>&1
cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
    run)
        parse_options "$@"
        [ -n "$BIN" ] || BIN=$DEFAULT_BIN
        [ -x "$BIN" ] || die "$BIN is not an executable"
        if [ -z "$OLD" ]; then
            OLD=$(cat -- "$PIDFILE" 2>/dev/null) || die "no --pid given and no pid file $PIDFILE"
        fi
        if [ -z "$LOGFILE" ]; then
            err=$(readlink "/proc/$OLD/fd/2" 2>/dev/null || true)
            [ -n "$err" ] && [ -f "$err" ] && LOGFILE=$err
        fi
        "$BIN" -t -c "$CONFIG" >&2 || die "the new binary refuses $CONFIG; nothing changed"
        NEW=$(handover)
        log "waiting up to ${TIMEOUT}s for the old process $OLD to drain and exit"
        wait_exit "$OLD" "$TIMEOUT" || die "the old process $OLD is still running after ${TIMEOUT}s"
        healthz "$ADMIN"
        log "done: pid $NEW serves (binary $BIN)"
        printf '%s\n' "$NEW"
        ;;

    reload)
        # Run by systemd as ExecReload, after `dify-gateway -t`, inside the unit (same user,
        # sandbox and cgroup), with $MAINPID as the argument.
        OLD=${1:?usage: upgrade.sh reload MAINPID}
        shift
        parse_options "$@"
        [ -n "$BIN" ] || BIN=$DEFAULT_BIN
        if ! readlink "/proc/$OLD/exe" >/dev/null 2>&1 || [ "/proc/$OLD/exe" -ef "$BIN" ]; then
            # Same binary: a configuration reload (re-read, validate, swap; a bad file changes nothing).
            kill -HUP "$OLD"
            log "configuration reload requested (SIGHUP to $OLD)"
            exit 0
        fi
        log "$BIN was replaced since pid $OLD started: graceful upgrade"
        NEW=$(handover)
        # The new process is in the unit's cgroup (started from ExecReload); make it the main one.
        # systemd-notify waits until systemd has processed the message.
        systemd-notify "MAINPID=$NEW" || die "systemd-notify MAINPID=$NEW failed (NotifyAccess=all missing?)"
        log "pid $NEW is the unit's main process now"
        ;;

    systemd)
        parse_options "$@"
        [ -n "$BIN" ] || die "--binary NEW is required (the binary to install)"
        [ -x "$BIN" ] || die "$BIN is not an executable"
        command -v systemctl >/dev/null || die "no systemctl"
        user=$(systemctl show -p User --value "$UNIT")
        old=$(systemctl show -p MainPID --value "$UNIT")
        [ "${old:-0}" != 0 ] || die "$UNIT is not running; install the binary and start it instead"
        # Check the config as the service user, as ExecReload will (it reads 0640 root:dify-gateway).
        if [ -n "$user" ] && [ "$(id -u)" = 0 ]; then
            setpriv --reuid="$user" --regid="$user" --init-groups -- "$BIN" -t -c "$CONFIG" >&2 \
                || die "the new binary refuses $CONFIG (as user $user); nothing changed"
        else
            "$BIN" -t -c "$CONFIG" >&2 || die "the new binary refuses $CONFIG; nothing changed"
        fi
        # Install next to the old one and rename over it (atomic; the running process keeps its
        # inode). The previous binary stays as *.prev for a rollback.
        # (Copy the new one first: it may be the *.prev being rolled back to.)
        install -m 0755 -- "$BIN" "$DEFAULT_BIN.new"
        [ -e "$DEFAULT_BIN" ] && cp -p -- "$DEFAULT_BIN" "$DEFAULT_BIN.prev"
        mv -f -- "$DEFAULT_BIN.new" "$DEFAULT_BIN"
        log "installed $BIN as $DEFAULT_BIN (previous: $DEFAULT_BIN.prev); systemctl reload $UNIT"
        systemctl reload "$UNIT" || die "systemctl reload $UNIT failed; see journalctl -u $UNIT (roll back: $0 systemd -b $DEFAULT_BIN.prev)"
        new=$(systemctl show -p MainPID --value "$UNIT")
        [ "$new" != "$old" ] && [ "$new" != 0 ] || die "the main PID did not change ($old -> $new)"
        log "main PID $old -> $new; waiting up to ${TIMEOUT}s for $old to drain"
        wait_exit "$old" "$TIMEOUT" || die "the old process $old is still running after ${TIMEOUT}s"
        healthz "$ADMIN"
        log "done: $UNIT runs $DEFAULT_BIN as pid $new"
        ;;

    *)
        sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2
        exit 2
        ;;
esac
