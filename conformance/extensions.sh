#!/usr/bin/env bash
# Real clients against the ACME extensions of a live acme-mt server: certificate
# profiles (draft-ietf-acme-profiles) with certbot's --preferred-profile and an
# EAB key limited to one profile; renewal information (RFC 9773) driving
# `certbot renew` early once the server moves the window; IP identifiers
# (RFC 8738) with lego and certbot's --ip-address. The script makes its own two
# tenants through the admin command, so it needs a server it may administer.
# Settings: conformance/README.md, "ACME extensions".
set -euo pipefail
LOG_TAG=extensions
# shellcheck source=conformance/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

: "${CONFORMANCE_EXTENSIONS:=profiles ari ip}"

lifetime_seconds() {
    local start end
    start=$(date -d "$(openssl x509 -in "$1" -noout -startdate | cut -d= -f2)" +%s)
    end=$(date -d "$(openssl x509 -in "$1" -noout -enddate | cut -d= -f2)" +%s)
    echo $((end - start))
}

# The RFC 9773 §4.1 certificate id, computed here rather than asked of the
# server: base64url(AKI keyIdentifier) "." base64url(serial as DER INTEGER content).
ari_cert_id() {
    "$PYTHON" - "$1" <<'EOF'
import base64, sys
from cryptography import x509

cert = x509.load_pem_x509_certificate(open(sys.argv[1], "rb").read())
aki = cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
serial = cert.serial_number.to_bytes((cert.serial_number.bit_length() + 8) // 8, "big")
b64 = lambda raw: base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
print(f"{b64(aki.key_identifier)}.{b64(serial)}")
EOF
}

# window_closed URL: exit 0 when the suggested window of URL ended in the past.
window_closed() {
    curl -fsS --max-time 10 --cacert "$TLS_CA" "$1" | "$PYTHON" -c '
import json, sys
from datetime import datetime, timezone
end = json.load(sys.stdin)["suggestedWindow"]["end"].replace("Z", "+00:00")
sys.exit(datetime.fromisoformat(end) >= datetime.now(timezone.utc))'
}

# asked_ari LOG URL: certbot's latest run fetched URL, got 200 and kept no error.
asked_ari() {
    local path=/${2#*://*/}
    grep -qF "\"GET $path HTTP/1.1\" 200" "$1" || fail "certbot did not fetch $2 (200) in $1"
    if grep -q "An error occurred requesting ACME Renewal Information" "$1"; then
        fail "certbot reports an ARI error in $1"
    fi
}

# certbot_for DIR TENANT: sets CERTBOT_CMD, certbot with its own state in DIR.
certbot_for() {
    CERTBOT_CMD=(env "REQUESTS_CA_BUNDLE=$TLS_CA" "$CERTBOT" --config-dir "$1/config"
        --work-dir "$1/work" --logs-dir "$1/logs" --non-interactive --agree-tos
        --register-unsafely-without-email --server "$(directory_url "$2")")
}

# Two tenants with EAB required: PROFILES_TENANT offers "standard" (30 days,
# the default) and "short" (2 days); IP_TENANT's default profile allows IP
# identifiers. Each is the other's "other tenant" in the chain checks.
make_tenants() {
    local policy=$CONFORMANCE_WORK_DIR/policies
    mkdir -p "$policy"
    PROFILES_TENANT=ext-$RUN_ID
    IP_TENANT=extip-$RUN_ID
    cat >"$policy/$PROFILES_TENANT.toml" <<'EOF'
default_profile = "standard"

[profiles.standard]
description = "30-day server certificates"
validity_days = 30

[profiles.short]
description = "2-day server certificates"
validity_days = 2
EOF
    cat >"$policy/$IP_TENANT.toml" <<'EOF'
default_profile = "ip"

[profiles.ip]
description = "DNS names and IP addresses, 7 days"
validity_days = 7
allow_ip = true
EOF
    run "create tenant $PROFILES_TENANT (profiles standard, short)" "${ACME_MT[@]}" \
        tenant create "$PROFILES_TENANT" --policy "$policy/$PROFILES_TENANT.toml" --json
    run "create tenant $IP_TENANT (default profile allows IP identifiers)" "${ACME_MT[@]}" \
        tenant create "$IP_TENANT" --policy "$policy/$IP_TENANT.toml" --json
    fetch_cas "$PROFILES_TENANT" "$IP_TENANT"
    check_eab_required "$PROFILES_TENANT"
    check_eab_required "$IP_TENANT"
    "$PYTHON" -c '
import json, sys
sys.exit(set(json.load(open(sys.argv[1]))["meta"]["profiles"]) != {"standard", "short"})' \
        "$LOG_DIR/$PROFILES_TENANT-directory.json" \
        || fail "the directory of $PROFILES_TENANT does not list exactly standard and short"
    say "  $PROFILES_TENANT lists the profiles standard and short in meta.profiles"
}

# Profiles: certbot asks for "short" only when meta.profiles lists it (4.0+)
# and keeps the choice for renewal (4.1+); without it the tenant's default
# applies. An EAB key limited to "standard" makes every other profile refused.
check_profiles() {
    local tenant=$PROFILES_TENANT other=$IP_TENANT dir life
    dir=$CONFORMANCE_WORK_DIR/$tenant-certbot-profiles
    certbot_for "$dir" "$tenant"
    new_eab "$tenant"

    local short=certbot-short-$RUN_ID.$tenant.test
    run "obtain $short with --preferred-profile short" "${CERTBOT_CMD[@]}" certonly \
        --eab-kid "$EAB_KID" --eab-hmac-key "$EAB_HMAC" "${standalone[@]}" -d "$short" \
        --preferred-profile short
    check_certificate "$tenant" "$other" "$dir/config/live/$short/cert.pem" \
        "$dir/config/live/$short/chain.pem" "$short"
    life=$(lifetime_seconds "$dir/config/live/$short/cert.pem")
    ((life > 0 && life <= 2 * 86400)) \
        || fail "the short-profile leaf lives $life s, not at most 2 days"
    grep -qx 'preferred_profile = short' "$dir/config/renewal/$short.conf" \
        || fail "certbot did not keep preferred_profile = short for renewal"
    say "  leaf lives $life s (at most 2 days); the renewal config keeps preferred_profile = short"
    passed "certbot $tenant profile-short"

    local plain=certbot-default-$RUN_ID.$tenant.test
    run "obtain $plain with no profile named" "${CERTBOT_CMD[@]}" certonly "${standalone[@]}" \
        -d "$plain"
    check_certificate "$tenant" "$other" "$dir/config/live/$plain/cert.pem" \
        "$dir/config/live/$plain/chain.pem" "$plain"
    life=$(lifetime_seconds "$dir/config/live/$plain/cert.pem")
    ((life >= 30 * 86400 && life < 31 * 86400)) \
        || fail "the default-profile leaf lives $life s, not 30 days"
    say "  leaf lives $life s (30 days, the default profile)"
    passed "certbot $tenant profile-default"

    # A second account, bound by a key that allows "standard" only.
    local limited=$CONFORMANCE_WORK_DIR/$tenant-certbot-limited json
    say "step: EAB key for $tenant limited to profile standard"
    json=$(timeout --foreground 120 "${ACME_MT[@]}" eab create "$tenant" \
        --profile standard --json) || fail "acme-mt eab create --profile standard failed"
    certbot_for "$limited" "$tenant"
    refuse "certbot --required-profile short with a standard-only EAB key" \
        "EAB key allows profiles standard" \
        "${CERTBOT_CMD[@]}" certonly --eab-kid "$(json_field kid <<<"$json")" \
        --eab-hmac-key "$(json_field hmac_key <<<"$json")" "${standalone[@]}" \
        -d "certbot-limited-$RUN_ID.$tenant.test" --required-profile short
    grep -q 'urn:ietf:params:acme:error:invalidProfile' "$limited/logs/letsencrypt.log" \
        || fail "the refusal was not of type invalidProfile"
    say "  refused with urn:ietf:params:acme:error:invalidProfile"
    passed "certbot $tenant profile-eab-limit"
}

# ARI: certbot 4.1+ asks renewalInfo on every `certbot renew` and renews once
# a time it picks inside the suggested window has passed. It stores the
# answer's Retry-After (5.0+) as [acme_renewal_info] ari_retry_after in the
# lineage's renewal config and asks no more until then: the script deletes that
# line where the real waiting time would have passed.
check_ari() {
    local tenant=$PROFILES_TENANT other=$IP_TENANT dir name conf log id url before i
    dir=$CONFORMANCE_WORK_DIR/$tenant-certbot-ari
    name=certbot-ari-$RUN_ID.$tenant.test
    conf=$dir/config/renewal/$name.conf
    log=$dir/logs/letsencrypt.log
    certbot_for "$dir" "$tenant"
    new_eab "$tenant"
    local renew=("${CERTBOT_CMD[@]}" renew --cert-name "$name" --no-random-sleep-on-renew)

    run "obtain $name (default profile, 30 days)" "${CERTBOT_CMD[@]}" certonly \
        --eab-kid "$EAB_KID" --eab-hmac-key "$EAB_HMAC" "${standalone[@]}" -d "$name"
    check_certificate "$tenant" "$other" "$dir/config/live/$name/cert.pem" \
        "$dir/config/live/$name/chain.pem" "$name"
    before=$(serial_of "$dir/config/live/$name/cert.pem")
    id=$(ari_cert_id "$dir/config/live/$name/cert.pem")
    url=$(directory_url "$tenant")
    url=${url%/directory}/renewal-info/$id
    say "  ARI id $id"

    run "certbot renew while the window is in the future" "${renew[@]}"
    [[ $(serial_of "$dir/config/live/$name/cert.pem") == "$before" ]] \
        || fail "certbot renewed a certificate whose window has not opened"
    asked_ari "$log" "$url"
    grep -q '^ari_retry_after = ' "$conf" || fail "certbot stored no ari_retry_after in $conf"
    say "  not renewed; certbot asked $url and stored $(grep '^ari_retry_after' "$conf")"
    passed "certbot $tenant ari-not-due"

    run "move the ARI windows of $tenant into the past" "${ACME_MT[@]}" ari advance "$tenant"
    say "step: wait until the server's window for $id has ended (at most 30 s)"
    for ((i = 0; i < 60; i++)); do
        window_closed "$url" && break
        sleep 0.5
    done
    window_closed "$url" || fail "the window of $id did not move within 30 s"
    say "  the suggested window now ends in the past"

    run "certbot renew before its ari_retry_after" "${renew[@]}"
    [[ $(serial_of "$dir/config/live/$name/cert.pem") == "$before" ]] \
        || fail "certbot asked ARI again before its stored Retry-After"
    grep -q "Skipped ACME Renewal Info check because ari_retry_after" "$log" \
        || fail "certbot did not say that it skipped ARI for ari_retry_after"
    say "  not renewed: certbot keeps to the Retry-After it stored"
    passed "certbot $tenant ari-retry-after"

    sed -i '/^ari_retry_after = /d' "$conf"
    say "step: deleted ari_retry_after from the renewal config (as if Retry-After had passed)"
    run "certbot renew once the window is open" "${renew[@]}"
    asked_ari "$log" "$url"
    [[ $(serial_of "$dir/config/live/$name/cert.pem") != "$before" ]] \
        || fail "certbot did not renew after the window moved into the past"
    check_certificate "$tenant" "$other" "$dir/config/live/$name/cert.pem" \
        "$dir/config/live/$name/chain.pem" "$name"
    say "  renewed early: serial $before became $(serial_of "$dir/config/live/$name/cert.pem")"
    passed "certbot $tenant ari-renew-early"

    # The new certificate was issued after the cut-off, so its window is ahead again.
    sed -i '/^ari_retry_after = /d' "$conf"
    before=$(serial_of "$dir/config/live/$name/cert.pem")
    run "certbot renew the new certificate" "${renew[@]}"
    id=$(ari_cert_id "$dir/config/live/$name/cert.pem")
    asked_ari "$log" "${url%/*}/$id"
    [[ $(serial_of "$dir/config/live/$name/cert.pem") == "$before" ]] \
        || fail "certbot renewed the new certificate too: its window is not in the future"
    say "  not renewed: the new certificate's window lies ahead"
    passed "certbot $tenant ari-new-window"
}

# IP identifiers: lego 4.9.1 orders every --domains value as a "dns"
# identifier (IP identifiers came in lego 4.11), which the server refuses;
# certbot 5.3+ orders "ip" identifiers with --ip-address (standalone, manual).
check_ip() {
    local tenant=$IP_TENANT other=$PROFILES_TENANT dir certs ip=127.0.0.1
    dir=$CONFORMANCE_WORK_DIR/$tenant-lego-ip
    certs=$dir/certificates
    new_eab "$tenant"
    _step "lego obtains a certificate for $ip over http-01" \
        env "LEGO_CA_CERTIFICATES=$TLS_CA" "$LEGO" --path "$dir" \
        --server "$(directory_url "$tenant")" --accept-tos --email "conformance@$tenant.test" \
        --eab --kid "$EAB_KID" --hmac "$EAB_HMAC" --domains "$ip" \
        --http --http.port "127.0.0.1:$CONFORMANCE_HTTP01_PORT" run
    if ((STEP_RC == 0)); then
        say "  ok (${STEP_SECONDS} s)"
        check_certificate "$tenant" "$other" "$certs/$ip.crt" "$certs/$ip.issuer.crt" "$ip"
        passed "lego $tenant ip"
    elif grep -q 'rejectedIdentifier.*an IP address is not a dns identifier' "$STEP_LOG"; then
        say "  lego sent $ip as a dns identifier and the server refused it (${STEP_SECONDS} s):"
        grep -o 'urn:ietf:params:acme:error:rejectedIdentifier :: .*' "$STEP_LOG" | head -n 1 \
            | sed 's/^/  | /'
        say "LIMIT lego $tenant ip: this lego orders IP addresses as dns identifiers"
        printf 'LIMIT lego %s ip\n' "$tenant" >>"$CONFORMANCE_WORK_DIR/results.txt"
    else
        _show_log
        fail "lego for $ip: exit status $STEP_RC, and neither a certificate nor the refusal" \
            "of a dns identifier"
    fi

    dir=$CONFORMANCE_WORK_DIR/$tenant-certbot-ip
    certbot_for "$dir" "$tenant"
    new_eab "$tenant"
    run "certbot obtains a certificate for $ip with --ip-address" "${CERTBOT_CMD[@]}" certonly \
        --eab-kid "$EAB_KID" --eab-hmac-key "$EAB_HMAC" "${standalone[@]}" --ip-address "$ip"
    check_certificate "$tenant" "$other" "$dir/config/live/$ip/cert.pem" \
        "$dir/config/live/$ip/chain.pem" "$ip"
    passed "certbot $tenant ip"
}

started=$EPOCHREALTIME
require_settings CONFORMANCE_SERVER_URL CONFORMANCE_HTTP_URL CONFORMANCE_HTTP01_PORT \
    CONFORMANCE_ACME_MT
if [[ -n ${CONFORMANCE_EAB_KID:-} ]]; then
    fail "the extension checks bind several accounts: set CONFORMANCE_EAB_COMMAND or" \
        "nothing, not CONFORMANCE_EAB_KID"
fi
for extension in $CONFORMANCE_EXTENSIONS; do
    [[ $extension =~ ^(profiles|ari|ip)$ ]] || fail "unknown extension '$extension'"
done
: "${CONFORMANCE_EAB_COMMAND:=$CONFORMANCE_ACME_MT eab create --json}"
# acme-mt on the server's data, split as the shell would split it.
eval "ACME_MT=($CONFORMANCE_ACME_MT)"
standalone=(--standalone --http-01-address 127.0.0.1 --http-01-port "$CONFORMANCE_HTTP01_PORT")
init_work_dir
: >"$CONFORMANCE_WORK_DIR/results.txt"
RUN_ID=$(random_label)
make_tenants

for extension in $CONFORMANCE_EXTENSIONS; do
    section_started=$EPOCHREALTIME
    say "== $extension"
    "check_$extension"
    say "== $extension passed in $(elapsed_since "$section_started") s"
done

say "== results"
cat "$CONFORMANCE_WORK_DIR/results.txt"
say "all passed in $(elapsed_since "$started") s"
