#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for the test suite: the one way stepflow starts one
# (CI calls it, and so does the `postgres_dsn` fixture in tests/conftest.py).
#
#   bash .ci/postgres.sh start DIR   # start a cluster in DIR; print its DSN on stdout
#   bash .ci/postgres.sh stop DIR    # stop it (a no-op if it is not running)
#   bash .ci/postgres.sh bindir      # print the server binaries' directory, or fail
#
# `start` installs the server with apt-get when no `initdb` can be found, unless
# STEPFLOW_PG_NO_INSTALL is set. The cluster listens on a Unix socket in DIR only
# (no TCP), runs without fsync, and trusts local connections: for tests only.
# Run as root, the server runs as an unprivileged user (initdb refuses root):
# `postgres` if it exists, else `nobody`. Everything but the DSN goes to stderr.
set -euo pipefail

usage() { echo "usage: $0 start DIR | stop DIR | bindir" >&2; exit 2; }

# The directory holding initdb and pg_ctl: PATH first, then the newest Debian layout.
find_bindir() {
    local initdb dir
    if initdb="$(command -v initdb)" && command -v pg_ctl >/dev/null; then
        dirname "$(readlink -f "$initdb")"
        return
    fi
    for dir in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$dir/initdb" ] && [ -x "$dir/pg_ctl" ]; then
            echo "$dir"
            return
        fi
    done
    return 1
}

install_server() {
    if [ -n "${STEPFLOW_PG_NO_INSTALL:-}" ]; then
        echo "no PostgreSQL server binaries (initdb) found, and STEPFLOW_PG_NO_INSTALL is set" >&2
        return 1
    fi
    if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
        echo "no PostgreSQL server binaries (initdb) found; install PostgreSQL" \
            "(e.g. apt-get install postgresql) or set STEPFLOW_TEST_POSTGRES_DSN" >&2
        return 1
    fi
    echo "installing PostgreSQL with apt-get" >&2
    # Only the binaries are wanted: no 'main' cluster started as a system service.
    if [ ! -e /etc/postgresql-common/createcluster.conf ]; then
        mkdir -p /etc/postgresql-common
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends postgresql >&2
}

# The user the server runs as: ourselves, or an unprivileged one when we are root.
server_user() {
    if [ "$(id -u)" -ne 0 ]; then
        id -un
    elif id postgres >/dev/null 2>&1; then
        echo postgres
    else
        echo nobody
    fi
}

# Run a command as the server's user.
as_server_user() {
    local user
    user="$(server_user)"
    if [ "$user" = "$(id -un)" ]; then
        "$@"
    elif command -v runuser >/dev/null; then
        runuser -u "$user" -- "$@"
    else
        su -s /bin/sh "$user" -c "$(printf '%q ' "$@")"
    fi
}

start() {
    local dir="$1" bindir user
    bindir="$(find_bindir)" || { install_server && bindir="$(find_bindir)"; } || exit 1
    mkdir -p "$dir"
    dir="$(cd "$dir" && pwd)"
    cd "$dir"  # the server's user may not be able to enter the caller's directory
    user="$(server_user)"
    mkdir -p "$dir/data" "$dir/socket"
    if [ "$(id -u)" -eq 0 ]; then
        chown -R "$user" "$dir"
    fi
    if ! as_server_user test -w "$dir/data"; then
        echo "user '$user' cannot write to $dir/data: put DIR where it can (e.g. under /tmp)" >&2
        exit 1
    fi
    as_server_user "$bindir/initdb" --pgdata="$dir/data" --username=postgres --auth=trust \
        --encoding=UTF8 --locale=C --no-sync >&2
    as_server_user "$bindir/pg_ctl" --pgdata="$dir/data" --log="$dir/server.log" --wait \
        --options="-c listen_addresses='' -k '$dir/socket' -c fsync=off \
            -c synchronous_commit=off -c full_page_writes=off" start >&2 || {
        cat "$dir/server.log" >&2
        exit 1
    }
    # pg_ctl --wait already waits; pg_isready confirms the socket accepts connections.
    local tries=0
    until "$bindir/pg_isready" -q -h "$dir/socket" -U postgres; do
        tries=$((tries + 1))
        if [ "$tries" -ge 60 ]; then
            echo "PostgreSQL in $dir did not become ready; its log:" >&2
            cat "$dir/server.log" >&2
            exit 1
        fi
        sleep 0.5
    done
    echo "postgresql:///postgres?host=$dir/socket&user=postgres"
}

stop() {
    local dir="$1" bindir
    [ -f "$dir/data/postmaster.pid" ] || return 0
    cd "$dir"
    bindir="$(find_bindir)"
    as_server_user "$bindir/pg_ctl" --pgdata="$dir/data" --mode=immediate --wait stop >&2
}

case "${1:-}" in
    start) [ $# -eq 2 ] || usage; start "$2" ;;
    stop) [ $# -eq 2 ] || usage; stop "$2" ;;
    bindir) [ $# -eq 1 ] || usage; find_bindir ;;
    *) usage ;;
esac
