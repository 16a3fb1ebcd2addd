#!/usr/bin/env bash
# The ACME conformance run (RFC 8555): lego and certbot against two tenants of
# a live acme-mt server, each with external account binding, each tenant's
# certificates checked against its own CA and refused by the other's. With
# CONFORMANCE_SERVER_URL unset it starts its own server and test DNS server on
# free loopback ports and stops them at the end. Settings: conformance/README.md.
set -euo pipefail
LOG_TAG=run
# shellcheck source=conformance/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# wait_until SECONDS PID WHAT CMD...: CMD succeeds before the time is up, while PID lives.
wait_until() {
    local seconds=$1 pid=$2 what=$3 deadline
    shift 3
    deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        kill -0 "$pid" 2>/dev/null || fail "$what exited (logs in $LOCAL_DIR)"
        ((SECONDS < deadline)) || fail "$what not ready after $seconds s (logs in $LOCAL_DIR)"
        sleep 0.2
    done
}

# Whether our child PID has exited (gone, or a zombie not yet reaped).
exited() {
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 0
    stat=${stat##*) }
    [[ ${stat%% *} == Z ]]
}

# SIGTERM, then SIGKILL after 15 s; the process is our child, so wait reaps it.
stop_process() {
    local pid=$1 i
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 75; i++)); do
        exited "$pid" && break
        sleep 0.2
    done
    exited "$pid" || kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

stop_local_server() {
    if ((EXIT_STATUS != 0)) && [[ -s $LOCAL_DIR/server.log ]]; then
        say "last lines of the server log:" >&2
        tail -n 30 "$LOCAL_DIR/server.log" | sed 's/^/  | /' >&2
    fi
    say "stopping the local server and test DNS server"
    [[ -n ${SERVER_PID:-} ]] && stop_process "$SERVER_PID"
    [[ -n ${DNS_PID:-} ]] && stop_process "$DNS_PID"
}

four_free_ports() {
    "$PYTHON" -c '
import socket
socks = [socket.socket() for _ in range(4)]
for sock in socks:
    sock.bind(("127.0.0.1", 0))
print(*(sock.getsockname()[1] for sock in socks))
'
}

# A test DNS server (every name is 127.0.0.1, TXT from files), then acme-mt
# with its validation pointed at it, then two tenants; all on loopback.
start_local_server() {
    local data records https_port http_port http01_port tlsalpn01_port slug
    LOCAL_DIR=$CONFORMANCE_WORK_DIR/local-server
    data=$LOCAL_DIR/data
    records=$LOCAL_DIR/dns-records
    mkdir -p "$data" "$records"
    CLEANUPS+=(stop_local_server)

    say "starting the test DNS server"
    "$PYTHON" "$CONFORMANCE_DIR/dns_server.py" --port 0 --records "$records" \
        >"$LOCAL_DIR/dns.out" 2>"$LOCAL_DIR/dns.err" &
    DNS_PID=$!
    wait_until 30 "$DNS_PID" "the test DNS server" grep -qx ready "$LOCAL_DIR/dns.out"
    CONFORMANCE_DNS_RESOLVER=$(sed -n 's/^listening on //p' "$LOCAL_DIR/dns.err")
    ACME_MT_TEST_DNS_RECORDS=$records

    read -r https_port http_port http01_port tlsalpn01_port < <(four_free_ports)
    export ACME_MT_SERVER_HTTPS_LISTEN=127.0.0.1:$https_port
    export ACME_MT_SERVER_HTTP_LISTEN=127.0.0.1:$http_port
    export ACME_MT_SERVER_HTTPS_URL=https://localhost:$https_port
    export ACME_MT_SERVER_HTTP_URL=http://localhost:$http_port
    export ACME_MT_VALIDATION_DNS_RESOLVER=$CONFORMANCE_DNS_RESOLVER
    export ACME_MT_VALIDATION_HTTP01_PORT=$http01_port
    export ACME_MT_VALIDATION_TLSALPN01_PORT=$tlsalpn01_port
    CONFORMANCE_SERVER_URL=$ACME_MT_SERVER_HTTPS_URL
    CONFORMANCE_HTTP_URL=$ACME_MT_SERVER_HTTP_URL
    CONFORMANCE_HTTP01_PORT=$http01_port
    CONFORMANCE_TLSALPN01_PORT=$tlsalpn01_port

    say "starting acme-mt on $CONFORMANCE_SERVER_URL and $CONFORMANCE_HTTP_URL"
    "$PYTHON" -m acme_mt serve --data-dir "$data" >"$LOCAL_DIR/server.log" 2>&1 &
    SERVER_PID=$!
    wait_until 60 "$SERVER_PID" "acme-mt" \
        curl -fsS --max-time 2 -o /dev/null "$CONFORMANCE_HTTP_URL/root.pem"

    : "${CONFORMANCE_TENANTS:=alpha beta}"
    for slug in $CONFORMANCE_TENANTS; do
        run "create tenant $slug" "$PYTHON" -m acme_mt tenant create "$slug" --json \
            --data-dir "$data"
    done
    CONFORMANCE_EAB_COMMAND=$(printf '%q -m acme_mt eab create --json --data-dir %q' \
        "$PYTHON" "$data")
    export CONFORMANCE_SERVER_URL CONFORMANCE_HTTP_URL CONFORMANCE_HTTP01_PORT \
        CONFORMANCE_TLSALPN01_PORT CONFORMANCE_DNS_RESOLVER ACME_MT_TEST_DNS_RECORDS \
        CONFORMANCE_EAB_COMMAND CONFORMANCE_TENANTS
}

started=$EPOCHREALTIME
init_work_dir
[[ -n ${CONFORMANCE_SERVER_URL:-} ]] || start_local_server
require_settings CONFORMANCE_TENANTS CONFORMANCE_EAB_COMMAND
if [[ -n ${CONFORMANCE_EAB_KID:-} ]]; then
    fail "one EAB key cannot bind four accounts: set CONFORMANCE_EAB_COMMAND, not CONFORMANCE_EAB_KID"
fi
read -r tenant_a tenant_b extra <<<"$CONFORMANCE_TENANTS"
[[ -n ${tenant_b:-} && -z ${extra:-} && $tenant_a != "$tenant_b" ]] \
    || fail "CONFORMANCE_TENANTS must name two different tenants, not '$CONFORMANCE_TENANTS'"
for client in $CONFORMANCE_CLIENTS; do
    [[ $client == lego || $client == certbot ]] || fail "unknown client '$client'"
done

: >"$CONFORMANCE_WORK_DIR/results.txt"
for client in $CONFORMANCE_CLIENTS; do
    for pair in "$tenant_a $tenant_b" "$tenant_b $tenant_a"; do
        read -r tenant other <<<"$pair"
        say "== $client against $tenant (other tenant: $other)"
        CONFORMANCE_TENANT=$tenant CONFORMANCE_OTHER_TENANT=$other \
            "$CONFORMANCE_DIR/$client.sh" || fail "$client against $tenant failed"
    done
done

say "== results"
cat "$CONFORMANCE_WORK_DIR/results.txt"
say "all passed in $(elapsed_since "$started") s"
