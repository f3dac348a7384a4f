#!/usr/bin/env bash
# One command to try mosaic-as locally: builds it, installs and starts a
# throw-away Synapse, wires the two together, checks that the echo agent
# answers, and keeps everything running until Ctrl-C.
#
#   scripts/quickstart.sh [--reset]
#
#   --reset   delete the state directory first (new tokens, users, rooms)
#
# Environment:
#   QUICKSTART_DIR      state directory (default: $REPO/.quickstart)
#   QUICKSTART_HS_PORT  Synapse port on 127.0.0.1 (default: 8008)
#   QUICKSTART_AS_PORT  mosaic-as port on 127.0.0.1 (default: 29330)
#
# Needs only the Rust toolchain, Python 3 (>= 3.10) and curl.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$SCRIPT_DIR/.." && pwd)"
SYNAPSE_SH="$SCRIPT_DIR/synapse.sh"

HS_PORT="${QUICKSTART_HS_PORT:-8008}"
AS_PORT="${QUICKSTART_AS_PORT:-29330}"
DIR="${QUICKSTART_DIR:-$REPO/.quickstart}"
SERVER_NAME="localhost"
HS_URL="http://127.0.0.1:$HS_PORT"
DEMO_USER="demo"
DEMO_PASSWORD="demo"
ECHO_AGENT="@mosaic_agent_echo:$SERVER_NAME"
BOT="@mosaic-bot:$SERVER_NAME"

say() { echo "==> $*"; }
warn() { echo "quickstart: $*" >&2; }
die() { echo "quickstart: error: $*" >&2; exit 1; }

usage() {
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit "${1:-0}"
}

# A shell started in the background by another script inherits SIGINT as
# ignored, and bash cannot trap an ignored signal; re-exec with SIGINT restored
# so that `kill -INT` stops the quickstart as Ctrl-C does.
if [[ "$(trap -p INT)" == "trap -- '' SIGINT" && -z "${QUICKSTART_SIGINT_RESTORED-}" ]] \
    && command -v python3 >/dev/null; then
    export QUICKSTART_SIGINT_RESTORED=1
    exec python3 -c 'import os, signal, sys
signal.signal(signal.SIGINT, signal.SIG_DFL)
os.execvp("bash", ["bash"] + sys.argv[1:])' "${BASH_SOURCE[0]}" "$@"
fi

RESET=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reset) RESET=1; shift ;;
        -h | --help) usage 0 ;;
        *) warn "unknown argument $1"; usage 2 >&2 ;;
    esac
done
[[ "$HS_PORT" =~ ^[0-9]+$ ]] || die "QUICKSTART_HS_PORT must be a port number, got $HS_PORT"
[[ "$AS_PORT" =~ ^[0-9]+$ ]] || die "QUICKSTART_AS_PORT must be a port number, got $AS_PORT"
for tool in cargo python3 curl flock; do
    command -v "$tool" >/dev/null || die "$tool not found; the quickstart needs the Rust toolchain, Python 3 and curl"
done

# Settings in the caller's environment must not override the quickstart config.
unset MOSAIC_AS_CONFIG MOSAIC_AS_AS_TOKEN MOSAIC_AS_HS_TOKEN MOSAIC_AS_DATABASE_URL \
    MOSAIC_AS_HOMESERVER_URL

# ------------------------------------------------------------- cleanup ---

AS_PID=""
SYNAPSE_STARTED=0

stop_mosaic() {
    local pid="$1" i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 100; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "mosaic-as did not exit after SIGTERM; sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    # A second Ctrl-C while stopping must not leave things half-stopped.
    trap '' INT TERM
    if [[ -n "$AS_PID" || "$SYNAPSE_STARTED" == 1 ]]; then
        echo
        say "stopping…"
    fi
    if [[ -n "$AS_PID" ]]; then
        stop_mosaic "$AS_PID"
        rm -f "$DIR/mosaic-as.pid"
    fi
    if [[ "$SYNAPSE_STARTED" == 1 ]]; then
        "$SYNAPSE_SH" stop --dir "$DIR/synapse" >/dev/null 2>&1 \
            || warn "stopping Synapse failed; see $DIR/synapse/homeserver.log"
    fi
    if [[ -n "$AS_PID" || "$SYNAPSE_STARTED" == 1 ]]; then
        echo "stopped"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

show_log_tail() {
    if [[ -s "$DIR/mosaic-as.log" ]]; then
        echo "----- last lines of $DIR/mosaic-as.log -----" >&2
        # Only this run's lines: from the last marker on.
        tac "$DIR/mosaic-as.log" | sed '/^===== quickstart /q' | tac | tail -n 30 >&2
        echo "-----" >&2
    fi
}

# --------------------------------------------------------------- build ---

say "Building mosaic-as (cargo build; the first time this takes a few minutes)…"
(cd "$REPO" && cargo build --bin mosaic-as) || die "cargo build failed (see above)"
MOSAIC="${CARGO_TARGET_DIR:-$REPO/target}/debug/mosaic-as"
[[ "$MOSAIC" == /* ]] || MOSAIC="$REPO/$MOSAIC"
[[ -x "$MOSAIC" ]] || die "build finished but $MOSAIC is missing"

say "Installing Synapse if needed (into .synapse/venv; a minute or two the first time)…"
"$SYNAPSE_SH" install

# ---------------------------------------------------------- state dir ---

mkdir -p "$DIR"
DIR="$(cd "$DIR" && pwd)"
CONFIG="$DIR/mosaic-as.toml"
REGISTRATION="$DIR/registration.yaml"

# One quickstart per state dir at a time.
exec 8>"$DIR/quickstart.lock"
flock -n 8 || die "another quickstart is already running with $DIR"

# A mosaic-as left behind by a quickstart that was killed hard (kill -9).
if [[ -f "$DIR/mosaic-as.pid" ]]; then
    old="$(cat "$DIR/mosaic-as.pid" 2>/dev/null || true)"
    if [[ "$old" =~ ^[0-9]+$ ]] && tr '\0' ' ' <"/proc/$old/cmdline" 2>/dev/null \
        | grep -qF -- "--config $CONFIG serve"; then
        say "Stopping mosaic-as left over from an earlier run (pid $old)…"
        kill -TERM "$old" 2>/dev/null || true
        for ((i = 0; i < 100; i++)); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
    fi
    rm -f "$DIR/mosaic-as.pid"
fi

if ((RESET)); then
    say "Resetting $DIR…"
    "$SYNAPSE_SH" stop --dir "$DIR/synapse" >/dev/null 2>&1 || true
    find "$DIR" -mindepth 1 -maxdepth 1 ! -name quickstart.lock -exec rm -rf {} +
fi

if [[ ! -f "$CONFIG" ]]; then
    say "Writing a new config to $DIR…"
    out="$("$MOSAIC" init --homeserver-url "$HS_URL" --server-name "$SERVER_NAME" \
        --listen "127.0.0.1:$AS_PORT" --dir "$DIR" --force 2>&1)" || { echo "$out" >&2; die "mosaic-as init failed"; }
else
    say "Reusing the config in $DIR (run with --reset to start over)"
    if ! grep -qxF "url = \"$HS_URL\"" "$CONFIG" || ! grep -qxF "listen = \"127.0.0.1:$AS_PORT\"" "$CONFIG"; then
        die "$CONFIG was made for other ports than Synapse $HS_PORT / mosaic-as $AS_PORT.
  Set QUICKSTART_HS_PORT / QUICKSTART_AS_PORT to the ports of the earlier run, or pass --reset."
    fi
    if [[ ! -s "$REGISTRATION" ]]; then
        "$MOSAIC" --config "$CONFIG" registration >"$REGISTRATION.tmp"
        mv "$REGISTRATION.tmp" "$REGISTRATION"
    fi
fi

# ------------------------------------------------------------- Synapse ---

say "Starting Synapse on $HS_URL…"
SYNAPSE_STARTED=1
# 8>&-: long-running children must not inherit (and keep holding) the lock.
out="$("$SYNAPSE_SH" start --dir "$DIR/synapse" --port "$HS_PORT" --server-name "$SERVER_NAME" \
    --registration "$REGISTRATION" 2>&1 8>&-)" || { echo "$out" >&2; die "Synapse did not start"; }

# An existing user is fine: register-user then just prints its id.
out="$("$SYNAPSE_SH" register-user --dir "$DIR/synapse" --port "$HS_PORT" \
    --user "$DEMO_USER" --password "$DEMO_PASSWORD" 2>&1)" || { echo "$out" >&2; die "could not create the demo user"; }

# ----------------------------------------------------------- mosaic-as ---

say "Starting mosaic-as on 127.0.0.1:$AS_PORT (log: $DIR/mosaic-as.log)…"
echo "===== quickstart $(date '+%F %T') =====" >>"$DIR/mosaic-as.log"
NO_COLOR=1 "$MOSAIC" --config "$CONFIG" serve </dev/null >>"$DIR/mosaic-as.log" 2>&1 8>&- &
AS_PID=$!
echo "$AS_PID" >"$DIR/mosaic-as.pid"

doctor_ok=0
for ((i = 0; i < 40; i++)); do
    if ! kill -0 "$AS_PID" 2>/dev/null; then
        status=0
        wait "$AS_PID" || status=$?
        AS_PID=""
        rm -f "$DIR/mosaic-as.pid"
        show_log_tail
        die "mosaic-as exited during startup (status $status); is port $AS_PORT already in use?"
    fi
    if doctor_out="$("$MOSAIC" --config "$CONFIG" doctor 2>&1)"; then
        doctor_ok=1
        break
    fi
    sleep 0.5
done
if ((!doctor_ok)); then
    echo "$doctor_out" >&2
    show_log_tail
    die "mosaic-as doctor still fails after 20 s"
fi

out="$("$MOSAIC" --config "$CONFIG" link-token "$DEMO_USER" --create 2>&1)" \
    || { echo "$out" >&2; die "could not create the Mosaic account $DEMO_USER"; }
LINK_TOKEN="$(tail -n 1 <<<"$out")"
TOKEN_VALID="$(grep -o 'valid [0-9]* minutes' <<<"$out" || echo "valid for a while")"

# --------------------------------------------------------- smoke check ---

ACCESS_TOKEN=""

# api METHOD PATH [JSON]: prints the response body; fails on a non-2xx status.
api() {
    local method="$1" path="$2" data="${3-}" out code
    local -a args=(-sS --max-time 10 -X "$method" -w '\n%{http_code}')
    [[ -n "$ACCESS_TOKEN" ]] && args+=(-H "Authorization: Bearer $ACCESS_TOKEN")
    [[ -n "$data" ]] && args+=(-H "Content-Type: application/json" --data "$data")
    out="$(curl "${args[@]}" "$HS_URL$path")" || return 1
    code="${out##*$'\n'}"
    out="${out%$'\n'*}"
    if [[ "$code" != 2* ]]; then
        warn "$method $path answered HTTP $code: $out"
        return 1
    fi
    printf '%s\n' "$out"
}

# json_get KEY: reads a JSON object on stdin, prints one top-level field.
json_get() {
    python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

urlencode() {
    python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$1"
}

smoke_fail() {
    show_log_tail
    die "$*"
}

say "Checking that the echo agent answers…"
ACCESS_TOKEN="$(api POST /_matrix/client/v3/login \
    "{\"type\":\"m.login.password\",\"identifier\":{\"type\":\"m.id.user\",\"user\":\"$DEMO_USER\"},\"password\":\"$DEMO_PASSWORD\",\"initial_device_display_name\":\"quickstart smoke check\"}" \
    | json_get access_token)" || smoke_fail "could not log in as $DEMO_USER"

# Reuse the room of an earlier run, so re-runs do not pile up rooms.
ROOM_ID=""
if [[ -s "$DIR/quickstart-room" ]]; then
    ROOM_ID="$(cat "$DIR/quickstart-room")"
    api GET /_matrix/client/v3/joined_rooms | python3 -c \
        'import json, sys; sys.exit(0 if sys.argv[1] in json.load(sys.stdin)["joined_rooms"] else 1)' \
        "$ROOM_ID" || ROOM_ID=""
fi
if [[ -z "$ROOM_ID" ]]; then
    ROOM_ID="$(api POST /_matrix/client/v3/createRoom \
        "{\"is_direct\":true,\"preset\":\"trusted_private_chat\",\"name\":\"Quickstart\",\"invite\":[\"$ECHO_AGENT\"]}" \
        | json_get room_id)" || smoke_fail "could not create a room"
    echo "$ROOM_ID" >"$DIR/quickstart-room"
fi
ROOM_PATH="/_matrix/client/v3/rooms/$(urlencode "$ROOM_ID")"

agent_joined() {
    api GET "$ROOM_PATH/joined_members" | python3 -c \
        'import json, sys; sys.exit(0 if sys.argv[1] in json.load(sys.stdin)["joined"] else 1)' \
        "$ECHO_AGENT" 2>/dev/null
}
if ! agent_joined; then
    # A reused room the agent has left: invite it again (fails harmlessly if pending).
    api POST "$ROOM_PATH/invite" "{\"user_id\":\"$ECHO_AGENT\"}" >/dev/null 2>&1 || true
fi

# Wait for the agent to accept the invite, as a person would before typing.
joined=0
for ((i = 0; i < 60; i++)); do
    if agent_joined; then
        joined=1
        break
    fi
    sleep 0.25
done
((joined)) || smoke_fail "$ECHO_AGENT did not join room $ROOM_ID within 15 s"

EVENT_ID="$(api PUT "$ROOM_PATH/send/m.room.message/quickstart-$(date +%s%N)" \
    '{"msgtype":"m.text","body":"Hello from the quickstart"}' | json_get event_id)" \
    || smoke_fail "could not send a message"

answer=""
for ((i = 0; i < 30; i++)); do
    # Newest first; look only at events after our own message.
    if answer="$(api GET "$ROOM_PATH/messages?dir=b&limit=50" | python3 -c '
import json, sys
mine, agent = sys.argv[1], sys.argv[2]
for event in json.load(sys.stdin)["chunk"]:
    if event["event_id"] == mine:
        break
    if event["type"] == "m.room.message" and event["sender"] == agent:
        print(event["content"].get("body", ""))
        sys.exit(0)
sys.exit(1)' "$EVENT_ID" "$ECHO_AGENT")"; then
        break
    fi
    answer=""
    sleep 0.5
done
[[ -n "$answer" ]] || smoke_fail "no answer from $ECHO_AGENT in room $ROOM_ID within 15 s"
echo "echo agent answered: $answer"
api POST /_matrix/client/v3/logout '{}' >/dev/null || true
ACCESS_TOKEN=""

# ---------------------------------------------------------------- done ---

cat <<EOF

mosaic-as is running. Connect any Matrix client:
  homeserver  $HS_URL
  user        $DEMO_USER   password $DEMO_PASSWORD
e.g. Element (desktop, or Element web with the homeserver set to $HS_URL),
or a terminal client such as gomuks or iamb.

Try it:
  - Invite $ECHO_AGENT to a room and talk; it echoes you.
    (The room "Quickstart" already has it.)
  - DM $BOT and send:
      !link $LINK_TOKEN
    then  !whoami,  !help,  !new Title
    (the token is single use, $TOKEN_VALID; for a new one:
     $MOSAIC --config $CONFIG link-token $DEMO_USER)

Logs: $DIR/mosaic-as.log and $DIR/synapse/homeserver.log
Press Ctrl-C to stop.
EOF

status=0
wait "$AS_PID" || status=$?
AS_PID=""
rm -f "$DIR/mosaic-as.pid"
show_log_tail
die "mosaic-as exited unexpectedly (status $status)"
