#!/usr/bin/env bash
# Make sure a PostgreSQL server is reachable on loopback for the tests.
#
#   scripts/postgres.sh ensure
#
# Starts the local cluster (installing PostgreSQL from Debian's packages if
# there is none), creates the test role and database if missing, and prints
# the database URL as the last line on stdout. Progress goes to stderr.
#
# Environment:
#   MOSAIC_PG_HOST      default 127.0.0.1
#   MOSAIC_PG_PORT      default 5432
#   MOSAIC_PG_USER      test role, default mosaic (LOGIN CREATEDB)
#   MOSAIC_PG_PASSWORD  its password, default mosaic (works with trust and
#                       with scram-sha-256, Debian's default for host lines)
#   MOSAIC_PG_DB        test database, default mosaic_test
#   MOSAIC_PG_CLUSTER   Debian cluster name to start, default main
set -euo pipefail

PGHOST_="${MOSAIC_PG_HOST:-127.0.0.1}"
PGPORT_="${MOSAIC_PG_PORT:-5432}"
PGUSER_="${MOSAIC_PG_USER:-mosaic}"
PGPASS_="${MOSAIC_PG_PASSWORD:-mosaic}"
PGDB_="${MOSAIC_PG_DB:-mosaic_test}"
PGCLUSTER_="${MOSAIC_PG_CLUSTER:-main}"

log() { echo "postgres.sh: $*" >&2; }
die() { echo "postgres.sh: error: $*" >&2; exit 1; }

usage() {
    sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

ready() {
    command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$PGHOST_" -p "$PGPORT_"
}

wait_ready() {
    local i
    for ((i = 0; i < 120; i++)); do
        ready && return 0
        sleep 0.25
    done
    return 1
}

cluster_version() {
    # Highest installed major version that has the cluster.
    local v
    [[ -d /etc/postgresql ]] || return 1
    v="$(ls /etc/postgresql 2>/dev/null | sort -V | while read -r x; do
        [[ -d "/etc/postgresql/$x/$PGCLUSTER_" ]] && echo "$x"
    done | tail -n 1)"
    [[ -n "$v" ]] && echo "$v"
}

start_cluster() {
    local v
    v="$(cluster_version)" || return 1
    log "starting PostgreSQL $v cluster $PGCLUSTER_"
    pg_ctlcluster --skip-systemctl-redirect "$v" "$PGCLUSTER_" start >&2 || true
    wait_ready
}

install_postgres() {
    [[ "$(id -u)" -eq 0 ]] || die "PostgreSQL is not installed and we are not root"
    log "installing PostgreSQL from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
}

# psql as a superuser: trust over TCP if allowed, else peer auth as the
# postgres OS user over the Unix socket.
ADMIN_MODE=""
admin_psql() {
    if [[ -z "$ADMIN_MODE" ]]; then
        if psql -w -h "$PGHOST_" -p "$PGPORT_" -U postgres -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
            ADMIN_MODE=tcp
        elif [[ "$(id -u)" -eq 0 ]] && runuser -u postgres -- psql -p "$PGPORT_" -d postgres -Atqc 'select 1' >/dev/null 2>&1; then
            ADMIN_MODE=peer
        else
            die "cannot connect to PostgreSQL as superuser postgres (neither trust on $PGHOST_:$PGPORT_ nor peer auth)"
        fi
    fi
    if [[ "$ADMIN_MODE" == tcp ]]; then
        psql -w -h "$PGHOST_" -p "$PGPORT_" -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
    else
        runuser -u postgres -- psql -p "$PGPORT_" -d postgres -v ON_ERROR_STOP=1 -Atq "$@"
    fi
}

sql_literal() { printf "'%s'" "${1//\'/\'\'}"; }
sql_ident() { printf '"%s"' "${1//\"/\"\"}"; }

cmd_ensure() {
    if ready; then
        log "PostgreSQL is accepting connections on $PGHOST_:$PGPORT_"
    elif start_cluster; then
        :
    else
        command -v pg_ctlcluster >/dev/null 2>&1 && cluster_version >/dev/null \
            && die "PostgreSQL cluster did not come up on $PGHOST_:$PGPORT_"
        install_postgres
        start_cluster || die "PostgreSQL did not come up on $PGHOST_:$PGPORT_ after install"
    fi

    local role_exists db_exists
    role_exists="$(admin_psql -c "select 1 from pg_roles where rolname = $(sql_literal "$PGUSER_")")"
    if [[ "$role_exists" != 1 ]]; then
        log "creating role $PGUSER_"
        admin_psql -c "create role $(sql_ident "$PGUSER_") login createdb password $(sql_literal "$PGPASS_")" >/dev/null
    else
        # Keep the password in step with the URL we print.
        admin_psql -c "alter role $(sql_ident "$PGUSER_") login createdb password $(sql_literal "$PGPASS_")" >/dev/null
    fi
    db_exists="$(admin_psql -c "select 1 from pg_database where datname = $(sql_literal "$PGDB_")")"
    if [[ "$db_exists" != 1 ]]; then
        log "creating database $PGDB_"
        admin_psql -c "create database $(sql_ident "$PGDB_") owner $(sql_ident "$PGUSER_")" >/dev/null
    fi

    local url="postgres://$PGUSER_:$PGPASS_@$PGHOST_:$PGPORT_/$PGDB_"
    # Check the URL really works for the test role.
    psql -w "$url" -Atqc 'select 1' >/dev/null \
        || die "cannot connect with $url"
    echo "$url"
}

[[ $# -ge 1 ]] || usage
case "$1" in
    ensure) shift; [[ $# -eq 0 ]] || die "ensure takes no arguments"; cmd_ensure ;;
    -h | --help | help) usage ;;
    *) die "unknown subcommand $1 (ensure)" ;;
esac
