#!/usr/bin/env bash
# lego against one tenant of a live acme-mt server (RFC 8555): obtain over
# http-01 (§8.3), tls-alpn-01 (RFC 8737) and dns-01 (§8.4, with a wildcard),
# renew, revoke (§7.6), and check every certificate against the tenant's CA
# and against the other tenant's. Settings: conformance/README.md.
set -euo pipefail
LOG_TAG="lego ${CONFORMANCE_TENANT:-?}"
# shellcheck source=conformance/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

client_setup
require_settings CONFORMANCE_TLSALPN01_PORT
tenant=$CONFORMANCE_TENANT
other=$CONFORMANCE_OTHER_TENANT
dir=$CONFORMANCE_WORK_DIR/$tenant-lego-$RUN_ID
certs=$dir/certificates
new_eab "$tenant"

# lego keeps accounts by server host and port, so each tenant gets its own
# --path; with externalAccountRequired it wants the EAB flags on every run.
lego=(env "LEGO_CA_CERTIFICATES=$TLS_CA" "$LEGO" --path "$dir"
    --server "$(directory_url "$tenant")" --accept-tos --email "conformance@$tenant.test"
    --eab --kid "$EAB_KID" --hmac "$EAB_HMAC")
http=(--http --http.port "127.0.0.1:$CONFORMANCE_HTTP01_PORT")

http_name=lego-http-$RUN_ID.$tenant.test
run "obtain $http_name over http-01" "${lego[@]}" -d "$http_name" "${http[@]}" run
check_certificate "$tenant" "$other" "$certs/$http_name.crt" "$certs/$http_name.issuer.crt" \
    "$http_name"
passed "lego $tenant http-01"

tls_name=lego-tls-$RUN_ID.$tenant.test
run "obtain $tls_name over tls-alpn-01" "${lego[@]}" -d "$tls_name" \
    --tls --tls.port "127.0.0.1:$CONFORMANCE_TLSALPN01_PORT" run
check_certificate "$tenant" "$other" "$certs/$tls_name.crt" "$certs/$tls_name.issuer.crt" \
    "$tls_name"
passed "lego $tenant tls-alpn-01"

# The exec provider waits EXEC_SEQUENCE_INTERVAL (60 s by default) between
# names; the test DNS server answers at once, so its checks can be short.
dns_name=lego-dns-$RUN_ID.$tenant.test
run "obtain $dns_name and *.$dns_name over dns-01" \
    env "EXEC_PATH=$DNS_HOOK" EXEC_POLLING_INTERVAL=1 EXEC_PROPAGATION_TIMEOUT=30 \
    EXEC_SEQUENCE_INTERVAL=1 "${lego[@]}" -d "$dns_name" -d "*.$dns_name" \
    --dns exec --dns.resolvers "$CONFORMANCE_DNS_RESOLVER" --dns.disable-cp run
check_certificate "$tenant" "$other" "$certs/$dns_name.crt" "$certs/$dns_name.issuer.crt" \
    "$dns_name" "*.$dns_name"
passed "lego $tenant dns-01"

# --days 999 is past any certificate's lifetime, so the renewal always happens.
before=$(serial_of "$certs/$http_name.crt")
run "renew $http_name" "${lego[@]}" -d "$http_name" "${http[@]}" renew --days 999 \
    --no-random-sleep
after=$(serial_of "$certs/$http_name.crt")
[[ $after != "$before" ]] || fail "renewal kept serial $before"
check_certificate "$tenant" "$other" "$certs/$http_name.crt" "$certs/$http_name.issuer.crt" \
    "$http_name"
passed "lego $tenant renew"

# A second revocation must meet alreadyRevoked: the first one took effect.
run "revoke $http_name (keyCompromise)" "${lego[@]}" -d "$http_name" revoke --reason 1 --keep
refuse "revoke $http_name again" "alreadyRevoked" \
    "${lego[@]}" -d "$http_name" revoke --reason 1 --keep
passed "lego $tenant revoke"
