#!/usr/bin/env bash
# certbot against one tenant of a live acme-mt server (RFC 8555): obtain over
# http-01 (§8.3, standalone) and dns-01 (§8.4, manual hooks, with a wildcard),
# renew both, revoke (§7.6), and check every certificate against the tenant's
# CA and against the other tenant's. certbot has no tls-alpn-01 authenticator.
# Settings: conformance/README.md.
set -euo pipefail
LOG_TAG="certbot ${CONFORMANCE_TENANT:-?}"
# shellcheck source=conformance/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

client_setup
tenant=$CONFORMANCE_TENANT
other=$CONFORMANCE_OTHER_TENANT
dir=$CONFORMANCE_WORK_DIR/$tenant-certbot-$RUN_ID
live=$dir/config/live
new_eab "$tenant"

# requests ignores the system store: REQUESTS_CA_BUNDLE is the only trust.
certbot=(env "REQUESTS_CA_BUNDLE=$TLS_CA" "$CERTBOT" --config-dir "$dir/config"
    --work-dir "$dir/work" --logs-dir "$dir/logs" --non-interactive --agree-tos
    --register-unsafely-without-email --server "$(directory_url "$tenant")")
eab=(--eab-kid "$EAB_KID" --eab-hmac-key "$EAB_HMAC")

http_name=certbot-http-$RUN_ID.$tenant.test
run "obtain $http_name over http-01" "${certbot[@]}" certonly "${eab[@]}" --standalone \
    --http-01-address 127.0.0.1 --http-01-port "$CONFORMANCE_HTTP01_PORT" -d "$http_name"
check_certificate "$tenant" "$other" "$live/$http_name/cert.pem" "$live/$http_name/chain.pem" \
    "$http_name"
passed "certbot $tenant http-01"

# certbot runs hooks through a shell, with CERTBOT_DOMAIN and CERTBOT_VALIDATION set.
dns_name=certbot-dns-$RUN_ID.$tenant.test
run "obtain $dns_name and *.$dns_name over dns-01" "${certbot[@]}" certonly "${eab[@]}" \
    --manual --preferred-challenges dns \
    --manual-auth-hook "$(printf '%q present' "$DNS_HOOK")" \
    --manual-cleanup-hook "$(printf '%q cleanup' "$DNS_HOOK")" \
    -d "$dns_name" -d "*.$dns_name"
check_certificate "$tenant" "$other" "$live/$dns_name/cert.pem" "$live/$dns_name/chain.pem" \
    "$dns_name" "*.$dns_name"
passed "certbot $tenant dns-01"

# Renewal replays each lineage's saved settings: standalone and manual hooks.
http_before=$(serial_of "$live/$http_name/cert.pem")
dns_before=$(serial_of "$live/$dns_name/cert.pem")
run "renew both certificates" "${certbot[@]}" renew --force-renewal --no-random-sleep-on-renew
[[ $(serial_of "$live/$http_name/cert.pem") != "$http_before" ]] \
    || fail "renewal kept serial $http_before of $http_name"
[[ $(serial_of "$live/$dns_name/cert.pem") != "$dns_before" ]] \
    || fail "renewal kept serial $dns_before of $dns_name"
check_certificate "$tenant" "$other" "$live/$http_name/cert.pem" "$live/$http_name/chain.pem" \
    "$http_name"
check_certificate "$tenant" "$other" "$live/$dns_name/cert.pem" "$live/$dns_name/chain.pem" \
    "$dns_name" "*.$dns_name"
passed "certbot $tenant renew"

# Signed with the account key; a second revocation must meet alreadyRevoked.
revoke=(revoke --cert-path "$live/$http_name/cert.pem" --reason keycompromise
    --no-delete-after-revoke)
run "revoke $http_name (keyCompromise)" "${certbot[@]}" "${revoke[@]}"
refuse "revoke $http_name again" "already revoked" "${certbot[@]}" "${revoke[@]}"
passed "certbot $tenant revoke"
