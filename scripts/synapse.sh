#!/usr/bin/env bash
# Install and run a throw-away Synapse homeserver on loopback, for the
# integration tests and the quickstart.
#
#   scripts/synapse.sh install
#   scripts/synapse.sh start --dir DIR --port PORT --server-name NAME \
#                            --registration FILE [--registration FILE2 ...]
#   scripts/synapse.sh stop --dir DIR
#   scripts/synapse.sh status --dir DIR --port PORT
#   scripts/synapse.sh register-user --dir DIR --port PORT --user NAME \
#                            --password PW [--admin]
#
# Environment:
#   SYNAPSE_VENV     virtualenv location (default: $REPO/.synapse/venv)
#   SYNAPSE_VERSION  matrix-synapse version to install (default: pinned below)
#   SYNAPSE_PYTHON   python used to create the venv (default: python3)
#   SYNAPSE_START_TIMEOUT  seconds to wait for health on start (default: 60)
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
SYNAPSE_VENV="${SYNAPSE_VENV:-$REPO/.synapse/venv}"
SYNAPSE_PYTHON="${SYNAPSE_PYTHON:-python3}"
START_TIMEOUT="${SYNAPSE_START_TIMEOUT:-60}"
VPY="$SYNAPSE_VENV/bin/python"

log() { echo "synapse.sh: $*" >&2; }
die() { echo "synapse.sh: error: $*" >&2; exit 1; }

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

# ---------------------------------------------------------------- install ---

synapse_installed() {
    [[ -x "$VPY" ]] || return 1
    "$VPY" - "$SYNAPSE_VERSION" >/dev/null 2>&1 <<'EOF'
import sys
import synapse
import synapse.app.homeserver  # noqa: F401  (checks the Rust extension loads too)
# synapse.__version__ carries git details when run inside a git checkout.
from importlib.metadata import version
sys.exit(0 if version("matrix-synapse") == sys.argv[1] else 1)
EOF
}

cmd_install() {
    [[ $# -eq 0 ]] || die "install takes no arguments"
    if synapse_installed; then
        log "Synapse $SYNAPSE_VERSION already installed in $SYNAPSE_VENV"
        return 0
    fi
    # Serialise concurrent installs into the same venv (e.g. parallel tests).
    mkdir -p "$(dirname "$SYNAPSE_VENV")"
    exec 9>"$SYNAPSE_VENV.lock"
    flock 9
    if synapse_installed; then
        log "Synapse $SYNAPSE_VERSION already installed in $SYNAPSE_VENV"
        return 0
    fi
    command -v "$SYNAPSE_PYTHON" >/dev/null || die "$SYNAPSE_PYTHON not found"
    "$SYNAPSE_PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
        || die "Synapse $SYNAPSE_VERSION needs Python >= 3.10 ($SYNAPSE_PYTHON is $("$SYNAPSE_PYTHON" -V 2>&1))"
    log "installing Synapse $SYNAPSE_VERSION into $SYNAPSE_VENV"
    if [[ ! -x "$VPY" ]]; then
        "$SYNAPSE_PYTHON" -m venv "$SYNAPSE_VENV"
    fi
    "$VPY" -m pip install --quiet --disable-pip-version-check --upgrade pip
    "$VPY" -m pip install --quiet --disable-pip-version-check \
        --prefer-binary "matrix-synapse==$SYNAPSE_VERSION"
    synapse_installed || die "Synapse $SYNAPSE_VERSION does not import after install"
    log "installed Synapse $SYNAPSE_VERSION into $SYNAPSE_VENV"
}

require_installed() {
    [[ -x "$VPY" ]] || die "no Synapse venv at $SYNAPSE_VENV; run: $0 install"
}

# ----------------------------------------------------------------- config ---

# write_config DIR PORT SERVER_NAME REG...
write_config() {
    local dir="$1" port="$2" name="$3"
    shift 3
    "$VPY" - "$dir" "$port" "$name" "$@" <<'EOF'
import os
import secrets
import sys

import yaml

dir_, port, server_name = sys.argv[1], int(sys.argv[2]), sys.argv[3]
registrations = [os.path.abspath(p) for p in sys.argv[4:]]


def secret_file(name):
    """Read DIR/name, creating it with a fresh random secret if absent."""
    path = os.path.join(dir_, name)
    if not os.path.exists(path):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
    with open(path) as f:
        return f.read().strip()


# Effectively unlimited: tests must never hit a rate limit.
BIG = {"per_second": 100000, "burst_count": 100000}

# Unbuffered file handler, so the log is complete when a test reads it.
log_config = {
    "version": 1,
    "formatters": {
        "precise": {
            "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s"
            " - %(request)s - %(message)s"
        }
    },
    "handlers": {
        "file": {
            "class": "logging.FileHandler",
            "formatter": "precise",
            "filename": os.path.join(dir_, "homeserver.log"),
            "encoding": "utf8",
        }
    },
    "loggers": {"synapse.storage.SQL": {"level": "INFO"}},
    "root": {"level": "INFO", "handlers": ["file"]},
    "disable_existing_loggers": False,
}

config = {
    "server_name": server_name,
    "public_baseurl": f"http://127.0.0.1:{port}/",
    "pid_file": os.path.join(dir_, "synapse.pid"),
    "listeners": [
        {
            "port": port,
            "bind_addresses": ["127.0.0.1"],
            "type": "http",
            "tls": False,
            "x_forwarded": False,
            "resources": [{"names": ["client"], "compress": False}],
        }
    ],
    "database": {
        "name": "sqlite3",
        "args": {"database": os.path.join(dir_, "homeserver.db")},
    },
    "log_config": os.path.join(dir_, "log.config"),
    "media_store_path": os.path.join(dir_, "media_store"),
    "signing_key_path": os.path.join(dir_, "signing.key"),
    "report_stats": False,
    "enable_registration": False,
    "registration_shared_secret": secret_file("shared_secret"),
    "macaroon_secret_key": secret_file("macaroon_secret"),
    "form_secret": secret_file("form_secret"),
    "app_service_config_files": registrations,
    "trusted_key_servers": [],
    "suppress_key_server_warning": True,
    "serve_server_wellknown": False,
    "url_preview_enabled": False,
    "presence": {"enabled": False},
    # Encrypted rooms: to-device messages, device lists and one-time key counts pushed
    # to the appservice (MSC2409, MSC3202); devices come from the registration (MSC4190).
    "experimental_features": {
        "msc2409_to_device_messages_enabled": True,
        "msc3202_transaction_extensions": True,
    },
    "enable_metrics": False,
    # Rate limits, raised far beyond anything a test does.
    "rc_message": BIG,
    "rc_registration": BIG,
    "rc_registration_token_validity": BIG,
    "rc_login": {"address": BIG, "account": BIG, "failed_attempts": BIG},
    "rc_joins": {"local": BIG, "remote": BIG},
    "rc_joins_per_room": BIG,
    "rc_invites": {"per_room": BIG, "per_user": BIG, "per_issuer": BIG},
    "rc_3pid_validation": BIG,
    "rc_admin_redaction": BIG,
    "rc_third_party_invite": BIG,
    "rc_media_create": BIG,
    "rc_presence": {"per_user": BIG},
    "rc_delayed_event_mgmt": BIG,
    "rc_reports": BIG,
    "rc_room_creation": BIG,
    "rc_user_directory": BIG,
    "rc_profile": BIG,
    "rc_key_requests": BIG,
}

class Dumper(yaml.SafeDumper):
    def ignore_aliases(self, data):
        return True


with open(os.path.join(dir_, "log.config"), "w") as f:
    yaml.dump(log_config, f, Dumper=Dumper, sort_keys=False)
tmp = os.path.join(dir_, "homeserver.yaml.tmp")
with open(tmp, "w") as f:
    f.write("# Generated by scripts/synapse.sh; rewritten on every start.\n")
    yaml.dump(config, f, Dumper=Dumper, sort_keys=False)
os.replace(tmp, os.path.join(dir_, "homeserver.yaml"))
EOF
}

# ------------------------------------------------------------ run / stop ---

pid_alive() {
    local pidfile="$1/synapse.pid" pid
    [[ -f "$pidfile" ]] || return 1
    pid="$(cat "$pidfile" 2>/dev/null || true)"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    kill -0 "$pid" 2>/dev/null || return 1
    # Guard against a recycled pid: it must be a Synapse homeserver.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q 'synapse.app.homeserver'
}

healthy() {
    curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$1/_matrix/client/versions" 2>/dev/null
}

show_log_tail() {
    local dir="$1"
    for f in "$dir/homeserver.log" "$dir/synapse.out"; do
        if [[ -s "$f" ]]; then
            echo "----- tail of $f -----" >&2
            tail -n 60 "$f" >&2
        fi
    done
}

# wait_healthy DIR PORT [PID]: PID is the process this call just started. It is checked
# with kill -0 only: until its subshell has exec'd, its command line is still this
# script's, so the recycled-pid guard in pid_alive would call a starting Synapse dead.
wait_healthy() {
    local dir="$1" port="$2" started="${3:-}" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if healthy "$port"; then
            log "Synapse is up on http://127.0.0.1:$port (dir $dir)"
            return 0
        fi
        local alive
        if [[ -n "$started" ]]; then
            kill -0 "$started" 2>/dev/null && alive=1 || alive=0
        else
            pid_alive "$dir" && alive=1 || alive=0
        fi
        if ((alive == 0)); then
            log "Synapse process exited before becoming healthy"
            show_log_tail "$dir"
            rm -f "$dir/synapse.pid"
            exit 1
        fi
        sleep 0.25
    done
    log "Synapse did not answer on port $port within ${START_TIMEOUT}s"
    show_log_tail "$dir"
    exit 1
}

cmd_start() {
    local dir="" port="" name=""
    local -a regs=()
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --server-name) name="$2"; shift 2 ;;
            --registration) regs+=("$2"); shift 2 ;;
            *) die "start: unknown argument $1" ;;
        esac
    done
    [[ -n "$dir" && -n "$port" && -n "$name" ]] || die "start needs --dir, --port and --server-name"
    [[ "$port" =~ ^[0-9]+$ ]] || die "bad --port $port"
    ((${#regs[@]} > 0)) || die "start needs at least one --registration FILE"
    require_installed
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    local -a absregs=()
    for r in "${regs[@]}"; do
        [[ -f "$r" ]] || die "registration file $r not found"
        absregs+=("$(cd "$(dirname "$r")" && pwd)/$(basename "$r")")
    done

    if pid_alive "$dir"; then
        log "Synapse already running (pid $(cat "$dir/synapse.pid")); waiting for health"
        wait_healthy "$dir" "$port"
        return 0
    fi
    rm -f "$dir/synapse.pid"

    write_config "$dir" "$port" "$name" "${absregs[@]}"
    mkdir -p "$dir/media_store"
    if [[ ! -s "$dir/signing.key" ]]; then
        "$VPY" -m synapse.app.homeserver -c "$dir/homeserver.yaml" --generate-keys \
            >"$dir/generate-keys.out" 2>&1 || { cat "$dir/generate-keys.out" >&2; die "key generation failed"; }
    fi

    if healthy "$port"; then
        die "something else already answers on http://127.0.0.1:$port"
    fi

    log "starting Synapse $SYNAPSE_VERSION for $name on http://127.0.0.1:$port (dir $dir)"
    # Detach into its own session; every fd goes to a file so callers that
    # capture our output do not wait for Synapse to exit.
    (
        cd "$dir"
        exec setsid "$VPY" -m synapse.app.homeserver -c "$dir/homeserver.yaml" \
            </dev/null >"$dir/synapse.out" 2>&1
    ) &
    local started=$!
    echo "$started" >"$dir/synapse.pid"
    wait_healthy "$dir" "$port" "$started"
}

cmd_stop() {
    local dir=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            *) die "stop: unknown argument $1" ;;
        esac
    done
    [[ -n "$dir" ]] || die "stop needs --dir"
    if ! pid_alive "$dir"; then
        log "Synapse not running (dir $dir)"
        rm -f "$dir/synapse.pid"
        return 0
    fi
    local pid
    pid="$(cat "$dir/synapse.pid")"
    log "stopping Synapse (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    local i
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "Synapse did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 20; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$dir/synapse.pid"
    log "stopped"
}

cmd_status() {
    local dir="" port=""
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            *) die "status: unknown argument $1" ;;
        esac
    done
    [[ -n "$dir" ]] || die "status needs --dir"
    if pid_alive "$dir" && { [[ -z "$port" ]] || healthy "$port"; }; then
        echo "running (pid $(cat "$dir/synapse.pid"))"
    else
        echo "stopped"
        return 1
    fi
}

# ---------------------------------------------------------- register-user ---

cmd_register_user() {
    local dir="" port="" user="" password="" admin=0
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dir) dir="$2"; shift 2 ;;
            --port) port="$2"; shift 2 ;;
            --user) user="$2"; shift 2 ;;
            --password) password="$2"; shift 2 ;;
            --admin) admin=1; shift ;;
            *) die "register-user: unknown argument $1" ;;
        esac
    done
    [[ -n "$dir" && -n "$port" && -n "$user" && -n "$password" ]] \
        || die "register-user needs --dir, --port, --user and --password"
    [[ -s "$dir/shared_secret" ]] || die "$dir/shared_secret missing; start Synapse first"
    local py="$VPY"
    [[ -x "$py" ]] || py="$SYNAPSE_PYTHON"
    # Only the standard library is needed here.
    "$py" - "$dir" "$port" "$user" "$password" "$admin" <<'EOF'
import hashlib
import hmac
import json
import os
import sys
import urllib.error
import urllib.request

dir_, port, user, password, admin = sys.argv[1:6]
admin = admin == "1"
with open(os.path.join(dir_, "shared_secret")) as f:
    secret = f.read().strip()
url = f"http://127.0.0.1:{port}/_synapse/admin/v1/register"


def call(method, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, {"error": raw.decode(errors="replace")}


status, body = call("GET")
if status != 200 or "nonce" not in body:
    sys.exit(f"register-user: could not get nonce: {status} {body}")
nonce = body["nonce"]

mac = hmac.new(secret.encode("utf8"), digestmod=hashlib.sha1)
mac.update(nonce.encode("utf8"))
mac.update(b"\x00")
mac.update(user.encode("utf8"))
mac.update(b"\x00")
mac.update(password.encode("utf8"))
mac.update(b"\x00")
mac.update(b"admin" if admin else b"notadmin")

status, body = call("POST", {
    "nonce": nonce,
    "username": user,
    "password": password,
    "admin": admin,
    "mac": mac.hexdigest(),
})
if status == 200:
    print(body["user_id"])
elif status == 400 and body.get("errcode") == "M_USER_IN_USE":
    # Already registered: derive the user id from the configured server name.
    server_name = None
    with open(os.path.join(dir_, "homeserver.yaml")) as f:
        for line in f:
            if line.startswith("server_name:"):
                server_name = line.split(":", 1)[1].strip().strip("'\"")
                break
    if not server_name:
        sys.exit("register-user: user exists but server_name not found in homeserver.yaml")
    print(f"@{user}:{server_name}")
else:
    sys.exit(f"register-user: registration failed: {status} {body}")
EOF
}

# ------------------------------------------------------------------- main ---

[[ $# -ge 1 ]] || usage
sub="$1"
shift
case "$sub" in
    install) cmd_install "$@" ;;
    start) cmd_start "$@" ;;
    stop) cmd_stop "$@" ;;
    status) cmd_status "$@" ;;
    register-user) cmd_register_user "$@" ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand $sub (install|start|stop|status|register-user)" ;;
esac
