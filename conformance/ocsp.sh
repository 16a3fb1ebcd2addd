#!/usr/bin/env bash
# openssl ocsp and curl against one tenant's OCSP responder on a live acme-mt
# server (RFC 6960 appendix A.1, RFC 5019): a certificate obtained with lego is
# good by POST and by GET (with RFC 5019 caching headers and a 304), a revoked
# one is revoked with its reason, a made-up serial is unknown, the other
# tenant's responder refuses the certificate (unauthorized), an unknown tenant
# answers the same, the response never verifies against the other tenant's
# CA, and garbage is a malformedRequest.
#
# Settings as for lego.sh (conformance/README.md): CONFORMANCE_SERVER_URL,
# CONFORMANCE_HTTP_URL, CONFORMANCE_TENANT, CONFORMANCE_OTHER_TENANT,
# CONFORMANCE_HTTP01_PORT, and an EAB source (CONFORMANCE_EAB_COMMAND, or
# CONFORMANCE_EAB_KID with CONFORMANCE_EAB_HMAC_KEY) when the tenant wants one.
set -euo pipefail
LOG_TAG="ocsp ${CONFORMANCE_TENANT:-?}"
# shellcheck source=conformance/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_settings CONFORMANCE_SERVER_URL CONFORMANCE_HTTP_URL CONFORMANCE_TENANT \
    CONFORMANCE_OTHER_TENANT CONFORMANCE_HTTP01_PORT
init_work_dir
tenant=$CONFORMANCE_TENANT
other=$CONFORMANCE_OTHER_TENANT
fetch_cas "$tenant" "$other"
RUN_ID=$(random_label)
dir=$CONFORMANCE_WORK_DIR/$tenant-ocsp-$RUN_ID
mkdir -p "$dir"
responder=$CONFORMANCE_HTTP_URL/$tenant/ocsp
ca=$CA_DIR/$tenant-ca.pem
trust=$CA_DIR/$tenant-chain.pem

eab=()
if [[ -n ${CONFORMANCE_EAB_COMMAND:-}${CONFORMANCE_EAB_KID:-} ]]; then
    new_eab "$tenant"
    eab=(--eab --kid "$EAB_KID" --hmac "$EAB_HMAC")
fi
lego=(env "LEGO_CA_CERTIFICATES=$TLS_CA" "$LEGO" --path "$dir"
    --server "$(directory_url "$tenant")" --accept-tos --email "ocsp@$tenant.test" "${eab[@]}")
http=(--http --http.port "127.0.0.1:$CONFORMANCE_HTTP01_PORT")

# leaf NAME: obtains a certificate for NAME and prints the path of its leaf.
leaf() {
    run "obtain $1 over http-01" "${lego[@]}" -d "$1" "${http[@]}" run
    first_certificate "$dir/certificates/$1.crt" >"$dir/$1.leaf.pem"
}

# expect NAME PATTERN CMD...: the command's output (either stream) must match PATTERN.
expect() {
    local name=$1 pattern=$2
    shift 2
    _step "$name" "$@"
    if ! grep -Eq -- "$pattern" "$STEP_LOG"; then
        _show_log
        fail "$name: the output does not say /$pattern/"
    fi
    say "  ok (${STEP_SECONDS} s)"
}

good_name=ocsp-good-$RUN_ID.$tenant.test
leaf "$good_name"
good=$dir/$good_name.leaf.pem

expect "POST: $good_name is good" "^$good: good\$" \
    openssl ocsp -issuer "$ca" -cert "$good" -url "$responder" -CAfile "$trust"
grep -q "Response verify OK" "$STEP_LOG" || fail "the POST response did not verify"
expect "POST with SHA-256 CertIDs: good" "^$good: good\$" \
    openssl ocsp -sha256 -issuer "$ca" -cert "$good" -url "$responder" -CAfile "$trust"
passed "ocsp $tenant POST good"

run "write a request without a nonce" \
    openssl ocsp -issuer "$ca" -cert "$good" -no_nonce -reqout "$dir/good.req"
encoded=$("$PYTHON" -c 'import base64, sys, urllib.parse
print(urllib.parse.quote(base64.b64encode(open(sys.argv[1], "rb").read()).decode(), safe=""))' \
    "$dir/good.req")
run "GET the response through curl" \
    curl -fsS --max-time 30 -D "$dir/get.headers" -o "$dir/get.der" "$responder/$encoded"
grep -Eqi '^cache-control: max-age=[0-9]+, public, no-transform, must-revalidate' \
    "$dir/get.headers" || fail "no RFC 5019 Cache-Control on the GET response"
for header in etag last-modified expires; do
    grep -qi "^$header: " "$dir/get.headers" || fail "no $header on the GET response"
done
expect "the GET response verifies and says good" "^$good: good\$" \
    openssl ocsp -respin "$dir/get.der" -issuer "$ca" -cert "$good" -CAfile "$trust" -no_nonce
etag=$(grep -i '^etag: ' "$dir/get.headers" | cut -d' ' -f2 | tr -d '\r')
expect "If-None-Match with its ETag is 304" "^304\$" \
    curl -sS --max-time 30 -o /dev/null -w '%{http_code}\n' -H "If-None-Match: $etag" \
    "$responder/$encoded"
passed "ocsp $tenant GET good"

expect "the response does not verify against the $other CA" "Response Verify Failure" \
    openssl ocsp -respin "$dir/get.der" -CAfile "$CA_DIR/$other-chain.pem" -no_nonce
expect "the $other responder refuses $tenant's certificate" "unauthorized" \
    openssl ocsp -issuer "$ca" -cert "$good" -url "$CONFORMANCE_HTTP_URL/$other/ocsp" \
    -CAfile "$trust"
expect "an unknown tenant answers unauthorized" "unauthorized" \
    openssl ocsp -issuer "$ca" -cert "$good" -url "$CONFORMANCE_HTTP_URL/no-such-$RUN_ID/ocsp" \
    -CAfile "$trust"
passed "ocsp $tenant isolation"

serial=0x$(od -An -N15 -tx1 /dev/urandom | tr -d ' \n')
expect "a made-up serial is unknown" "^$serial: unknown\$" \
    openssl ocsp -issuer "$ca" -serial "$serial" -url "$responder" -CAfile "$trust"
head -c 300 /dev/urandom >"$dir/garbage.req"
run "POST random bytes" \
    curl -fsS --max-time 30 -H 'Content-Type: application/ocsp-request' \
    --data-binary "@$dir/garbage.req" -o "$dir/garbage.der" "$responder"
expect "random bytes are a malformedRequest" "malformedrequest" \
    openssl ocsp -respin "$dir/garbage.der" -noverify
passed "ocsp $tenant unknown and malformed"

revoked_name=ocsp-revoked-$RUN_ID.$tenant.test
leaf "$revoked_name"
revoked=$dir/$revoked_name.leaf.pem
run "revoke $revoked_name (keyCompromise)" "${lego[@]}" -d "$revoked_name" revoke --reason 1 --keep
# The pre-signed response is re-signed within seconds of the revocation.
for _ in $(seq 1 20); do
    openssl ocsp -issuer "$ca" -cert "$revoked" -url "$responder" -CAfile "$trust" \
        >"$dir/revoked.out" 2>&1 || true
    grep -q "^$revoked: revoked\$" "$dir/revoked.out" && break
    sleep 0.5
done
expect "the revoked certificate is revoked, keyCompromise" "Reason: keyCompromise" \
    cat "$dir/revoked.out"
grep -q "^$revoked: revoked\$" "$dir/revoked.out" || fail "$revoked_name is not revoked"
passed "ocsp $tenant revoked"
