# shellcheck shell=bash disable=SC2034  # sets variables for the scripts that source it
# Shared by the ACME conformance scripts (run_acme.sh, lego.sh, certbot.sh):
# settings, steps with time limits, EAB keys, CA downloads and the openssl
# checks that tie each issued certificate to its own tenant's CA (RFC 5280 §6)
# and to no other tenant's. Sourced, never run on its own.

CONFORMANCE_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(dirname "$CONFORMANCE_DIR")

# Decimal points in timings, whatever the caller's locale.
export LC_NUMERIC=C

: "${CONFORMANCE_TIMEOUT:=180}"
: "${CONFORMANCE_CLIENTS:=lego certbot}"
: "${LEGO:=lego}"
if [[ -z ${PYTHON:-} ]]; then
    PYTHON=python3
    [[ -x $REPO_DIR/.venv/bin/python ]] && PYTHON=$REPO_DIR/.venv/bin/python
fi
if [[ -z ${CERTBOT:-} ]]; then
    CERTBOT=certbot
    [[ -x $REPO_DIR/.venv/bin/certbot ]] && CERTBOT=$REPO_DIR/.venv/bin/certbot
fi
export PYTHON LEGO CERTBOT CONFORMANCE_TIMEOUT CONFORMANCE_CLIENTS

LOG_TAG=${LOG_TAG:-conformance}
STEP_NO=0
CLEANUPS=()
OWN_WORK_DIR=0
EXIT_STATUS=0

say() {
    printf '%s [%s] %s\n' "$(date +%H:%M:%S)" "$LOG_TAG" "$*"
}

fail() {
    say "FAIL: $*" >&2
    exit 1
}

# Runs the registered clean-ups in reverse order, then drops our own work
# directory when the run succeeded (a failed run keeps it for its logs).
on_exit() {
    local rc=$? i
    trap - EXIT
    EXIT_STATUS=$rc
    for ((i = ${#CLEANUPS[@]} - 1; i >= 0; i--)); do
        "${CLEANUPS[i]}" || true
    done
    if ((OWN_WORK_DIR)); then
        if ((rc == 0)) && [[ ${CONFORMANCE_KEEP:-0} != 1 ]]; then
            rm -rf "$CONFORMANCE_WORK_DIR"
        else
            say "logs and certificates kept in $CONFORMANCE_WORK_DIR" >&2
        fi
    fi
    exit "$rc"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

require_settings() {
    local name missing=()
    for name; do
        [[ -n ${!name:-} ]] || missing+=("$name")
    done
    ((${#missing[@]} == 0)) || fail "missing settings: ${missing[*]} (see conformance/README.md)"
}

random_label() {
    od -An -N4 -tx1 /dev/urandom | tr -d ' \n'
}

elapsed_since() {
    awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.1f", b - a }'
}

# Uses CONFORMANCE_WORK_DIR when given; otherwise makes a temporary one.
init_work_dir() {
    if [[ -n ${CONFORMANCE_WORK_DIR:-} ]]; then
        mkdir -p "$CONFORMANCE_WORK_DIR"
    else
        CONFORMANCE_WORK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/acme-conformance.XXXXXX")
        OWN_WORK_DIR=1
    fi
    export CONFORMANCE_WORK_DIR
    say "WORK=$CONFORMANCE_WORK_DIR"
    CA_DIR=$CONFORMANCE_WORK_DIR/ca
    LOG_DIR=$CONFORMANCE_WORK_DIR/logs
    mkdir -p "$CA_DIR" "$LOG_DIR"
}

# The command as the log shows it: EAB MAC keys are secrets and never printed.
shown_command() {
    local out=() hide=0 arg
    for arg; do
        if ((hide)); then
            out+=("<redacted>")
            hide=0
            continue
        fi
        case $arg in
            --hmac | --eab-hmac-key) hide=1 ;;
        esac
        out+=("$arg")
    done
    local line="${out[*]}"
    printf '%s' "${line//"$CONFORMANCE_WORK_DIR"/\$WORK}"
}

# _step NAME CMD...: runs CMD under the time limit with its output in a log
# file; sets STEP_RC and STEP_LOG.
_step() {
    local name=$1 start
    shift
    STEP_NO=$((STEP_NO + 1))
    STEP_LOG=$LOG_DIR/$(printf '%03d' "$STEP_NO")-${LOG_TAG//[^A-Za-z0-9]/_}.log
    say "step $STEP_NO: $name"
    say "  \$ $(shown_command "$@")"
    start=$EPOCHREALTIME
    STEP_RC=0
    if [[ ${CONFORMANCE_VERBOSE:-0} == 1 ]]; then
        timeout --foreground --kill-after=10 "$CONFORMANCE_TIMEOUT" "$@" 2>&1 \
            | tee "$STEP_LOG" || STEP_RC=${PIPESTATUS[0]}
    else
        timeout --foreground --kill-after=10 "$CONFORMANCE_TIMEOUT" "$@" >"$STEP_LOG" 2>&1 \
            || STEP_RC=$?
    fi
    STEP_SECONDS=$(elapsed_since "$start")
}

_show_log() {
    say "  last lines of $STEP_LOG:" >&2
    tail -n 40 "$STEP_LOG" | sed 's/^/  | /' >&2
}

# run NAME CMD...: the command must succeed.
run() {
    _step "$@"
    if ((STEP_RC == 124 || STEP_RC == 137)); then
        _show_log
        fail "$1: no answer within $CONFORMANCE_TIMEOUT s"
    elif ((STEP_RC != 0)); then
        _show_log
        fail "$1: exit status $STEP_RC"
    fi
    say "  ok (${STEP_SECONDS} s)"
}

# refuse NAME PATTERN CMD...: the command must fail and print PATTERN (an
# extended regular expression, any case), so that it fails for that reason.
refuse() {
    local name=$1 pattern=$2
    shift 2
    _step "$name" "$@"
    if ((STEP_RC == 0)); then
        _show_log
        fail "$name: succeeded, but it must not"
    elif ((STEP_RC == 124 || STEP_RC == 137)); then
        _show_log
        fail "$name: no answer within $CONFORMANCE_TIMEOUT s"
    elif ! grep -Eqi -- "$pattern" "$STEP_LOG"; then
        _show_log
        fail "$name: failed, but without saying /$pattern/"
    fi
    say "  refused as expected (${STEP_SECONDS} s)"
}

# Records one client/tenant/challenge combination that passed every check.
passed() {
    say "PASS $*"
    printf 'PASS %s\n' "$*" >>"$CONFORMANCE_WORK_DIR/results.txt"
}

first_certificate() {
    awk '/-----BEGIN CERTIFICATE-----/ { n++ } n == 1 { print } /-----END CERTIFICATE-----/ && n == 1 { exit }' "$1"
}

# fetch_cas SLUG...: the provider root and each tenant's CA certificate (the
# first one in /{slug}/ca.pem) into CA_DIR, once per work directory.
fetch_cas() {
    local slug
    if [[ ! -s $CA_DIR/root.pem ]]; then
        run "download the provider root" \
            curl -fsS --max-time 30 -o "$CA_DIR/root.pem" "$CONFORMANCE_HTTP_URL/root.pem"
    fi
    for slug; do
        [[ -s $CA_DIR/$slug-ca.pem ]] && continue
        run "download the CA chain of tenant $slug" \
            curl -fsS --max-time 30 -o "$CA_DIR/$slug-chain.pem" \
            "$CONFORMANCE_HTTP_URL/$slug/ca.pem"
        first_certificate "$CA_DIR/$slug-chain.pem" >"$CA_DIR/$slug-ca.pem"
        grep -q 'END CERTIFICATE' "$CA_DIR/$slug-ca.pem" \
            || fail "$CONFORMANCE_HTTP_URL/$slug/ca.pem holds no PEM certificate"
    done
    TLS_CA=${CONFORMANCE_TLS_CA:-$CA_DIR/root.pem}
}

directory_url() {
    printf '%s/%s/acme/directory' "$CONFORMANCE_SERVER_URL" "$1"
}

# The tenant must ask for external account binding (RFC 8555 §7.3.4).
check_eab_required() {
    local slug=$1 file=$LOG_DIR/$1-directory.json
    run "fetch the ACME directory of $slug" \
        curl -fsS --max-time 30 --cacert "$TLS_CA" -o "$file" "$(directory_url "$slug")"
    "$PYTHON" -c 'import json, sys; sys.exit(json.load(open(sys.argv[1]))["meta"]["externalAccountRequired"] is not True)' "$file" \
        || fail "the directory of $slug does not set meta.externalAccountRequired"
    say "  $slug requires external account binding"
}

json_field() {
    "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}

# new_eab SLUG: sets EAB_KID and EAB_HMAC, a fresh binding for one account.
new_eab() {
    local slug=$1 json
    if [[ -n ${CONFORMANCE_EAB_KID:-} ]]; then
        require_settings CONFORMANCE_EAB_HMAC_KEY
        EAB_KID=$CONFORMANCE_EAB_KID
        EAB_HMAC=$CONFORMANCE_EAB_HMAC_KEY
        return
    fi
    require_settings CONFORMANCE_EAB_COMMAND
    say "step: new EAB key for $slug: $CONFORMANCE_EAB_COMMAND $slug"
    json=$(timeout --foreground 60 bash -c "$CONFORMANCE_EAB_COMMAND \"\$1\"" eab-command "$slug") \
        || fail "the EAB command failed for $slug"
    EAB_KID=$(json_field kid <<<"$json") || fail "the EAB command printed no kid"
    EAB_HMAC=$(json_field hmac_key <<<"$json") || fail "the EAB command printed no hmac_key"
    say "  kid $EAB_KID"
}

serial_of() {
    openssl x509 -in "$1" -noout -serial | cut -d= -f2
}

# The subjectAltName entry as openssl prints it: an IPv4 address (RFC 8738)
# is "IP Address:", anything else "DNS:". openssl writes IPv6 addresses
# uncompressed, so they would need normalising first; no script asks for one.
san_entry() {
    if [[ $1 =~ ^[0-9]{1,3}(\.[0-9]{1,3}){3}$ ]]; then
        printf 'IP Address:%s' "$1"
    else
        printf 'DNS:%s' "$1"
    fi
}

# check_certificate TENANT OTHER CERT CHAIN NAME...: the leaf in CERT names
# every NAME; it verifies to the root through CHAIN (what the client was
# served) and through TENANT's CA; and it fails against OTHER's CA, both with
# the root as anchor and with OTHER's CA as the only trusted certificate.
check_certificate() {
    local tenant=$1 other=$2 cert=$3 chain=$4 name leaf names
    shift 4
    [[ -s $cert ]] || fail "the client saved no certificate at $cert"
    [[ -s $chain ]] || fail "the client saved no chain at $chain"
    leaf=$LOG_DIR/leaf-$(serial_of "$cert").pem
    first_certificate "$cert" >"$leaf"

    names=$(openssl x509 -in "$leaf" -noout -ext subjectAltName | tail -n +2 | tr ',' '\n' \
        | sed 's/^ *//')
    for name; do
        grep -qxF "$(san_entry "$name")" <<<"$names" || fail "$leaf does not name $name (has: $names)"
    done
    say "  leaf $(serial_of "$leaf") names $*"

    local root=$CA_DIR/root.pem
    run "verify against the root with the served chain" \
        openssl verify -CAfile "$root" -untrusted "$chain" "$leaf"
    run "verify against the root through the $tenant CA" \
        openssl verify -CAfile "$root" -untrusted "$CA_DIR/$tenant-ca.pem" "$leaf"
    refuse "verify against the root through the $other CA" "unable to get local issuer" \
        openssl verify -CAfile "$root" -untrusted "$CA_DIR/$other-ca.pem" "$leaf"
    refuse "verify with the $other CA as the only anchor" "unable to get local issuer" \
        openssl verify -partial_chain -CAfile "$CA_DIR/$other-ca.pem" "$leaf"
}

# The dns-01 hook as one executable file, run by the chosen Python: lego's
# exec provider runs EXEC_PATH directly, and certbot runs it through a shell.
write_dns_hook() {
    local hook=$CONFORMANCE_WORK_DIR/dns-hook
    if [[ ! -x $hook ]]; then
        printf '#!/bin/sh\nexec %q %q "$@"\n' "$PYTHON" "$CONFORMANCE_DIR/dns_hook.py" >"$hook"
        chmod +x "$hook"
    fi
    DNS_HOOK=$hook
}

# Settings every client script needs, then the work directory and the CAs.
client_setup() {
    require_settings CONFORMANCE_SERVER_URL CONFORMANCE_HTTP_URL CONFORMANCE_TENANT \
        CONFORMANCE_OTHER_TENANT CONFORMANCE_HTTP01_PORT CONFORMANCE_DNS_RESOLVER \
        ACME_MT_TEST_DNS_RECORDS
    [[ $CONFORMANCE_TENANT != "$CONFORMANCE_OTHER_TENANT" ]] \
        || fail "CONFORMANCE_TENANT and CONFORMANCE_OTHER_TENANT must differ"
    export ACME_MT_TEST_DNS_RECORDS
    init_work_dir
    fetch_cas "$CONFORMANCE_TENANT" "$CONFORMANCE_OTHER_TENANT"
    check_eab_required "$CONFORMANCE_TENANT"
    write_dns_hook
    RUN_ID=$(random_label)
}
