#!/usr/bin/env bash
# EST (RFC 7030, RFC 8951) against one tenant of a live acme-mt server, with
# nothing but curl and openssl as the client: cacerts (§4.1), csrattrs (§4.5),
# simpleenroll with HTTP Basic credentials (§4.2.1, §3.2.3), simplereenroll
# with the client certificate over TLS (§4.2.2, §3.3.2) and serverkeygen
# (§4.4). Every answer is decoded and checked with openssl: the PKCS#7 holds
# the certificate, which verifies to the root through this tenant's CA and not
# through the other tenant's. Then the other tenant's label must refuse this
# tenant's credentials and certificate, and an unknown label must answer 404.
#
# Settings: CONFORMANCE_SERVER_URL (https base), CONFORMANCE_HTTP_URL,
# CONFORMANCE_TENANT, CONFORMANCE_OTHER_TENANT, CONFORMANCE_TLS_CA (optional;
# default the provider root) and CONFORMANCE_EST_CREDENTIAL_COMMAND, a command
# that, given a tenant slug, prints a JSON object with "username" and "password".
set -euo pipefail
LOG_TAG="est ${CONFORMANCE_TENANT:-?}"
# shellcheck source=conformance/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

require_settings CONFORMANCE_SERVER_URL CONFORMANCE_HTTP_URL CONFORMANCE_TENANT \
    CONFORMANCE_OTHER_TENANT CONFORMANCE_EST_CREDENTIAL_COMMAND
tenant=$CONFORMANCE_TENANT
other=$CONFORMANCE_OTHER_TENANT
init_work_dir
fetch_cas "$tenant" "$other"
RUN_ID=$(random_label)
dir=$CONFORMANCE_WORK_DIR/est-$tenant-$RUN_ID
mkdir -p "$dir"
est=$CONFORMANCE_SERVER_URL/.well-known/est/$tenant
curl_est=(curl -sS --max-time 30 --cacert "$TLS_CA")

# new_credential SLUG FILE: a fresh enrollment credential, kept as a curl
# config file (mode 0600) so that the password never shows in a command line.
new_credential() {
    local json user password
    json=$(timeout 60 bash -c "$CONFORMANCE_EST_CREDENTIAL_COMMAND \"\$1\"" est-credential "$1") \
        || fail "the credential command failed for $1"
    user=$(json_field username <<<"$json") || fail "the credential command printed no username"
    password=$(json_field password <<<"$json") || fail "the credential command printed no password"
    (umask 077 && printf 'user = "%s:%s"\n' "$user" "$password" >"$2")
    say "  EST credential $user for $1"
}

# expect_status CODE NAME CURL_ARGS...: the request must answer CODE.
expect_status() {
    local code=$1 name=$2 got
    shift 2
    say "step: $name"
    got=$("${curl_est[@]}" -o "$dir/answer.txt" -w '%{http_code}' "$@") \
        || fail "$name: curl failed"
    [[ $got == "$code" ]] || fail "$name: HTTP $got, expected $code: $(head -c 300 "$dir/answer.txt")"
    say "  HTTP $code: $(head -c 200 "$dir/answer.txt" | tr -d '\r\n')"
}

# est_post OPERATION CSR PREFIX CURL_ARGS...: POST a CSR; answer in PREFIX.headers
# and PREFIX.body.
est_post() {
    local operation=$1 csr=$2 prefix=$3
    shift 3
    run "POST $operation ($(basename "$csr"))" "${curl_est[@]}" --fail-with-body \
        -D "$prefix.headers" -o "$prefix.body" -H "Content-Type: application/pkcs10" \
        --data-binary "@$csr" "$@" "$est/$operation"
}

# header_has FILE PATTERN: the response headers match PATTERN (any case).
header_has() {
    tr -d '\r' <"$1" | grep -Eqi -- "$2" || fail "$1 has no header matching /$2/"
}

# certs_from BASE64_FILE PEM_OUT: decode a certs-only PKCS#7 sent as one line.
certs_from() {
    (($(wc -l <"$1") <= 1)) || fail "$1: the base64 is not one unbroken line"
    run "decode the base64 of $(basename "$1")" openssl base64 -d -A -in "$1" -out "$1.der"
    run "read the certs-only PKCS#7" \
        openssl pkcs7 -inform DER -in "$1.der" -print_certs -out "$2"
}

# check_leaf LEAF NAME: names NAME and chains to the root through this
# tenant's CA only.
check_leaf() {
    local leaf=$1 name=$2
    openssl x509 -in "$leaf" -noout -ext subjectAltName | grep -qF "DNS:$name" \
        || fail "$leaf does not name $name"
    run "verify $(basename "$leaf") through the $tenant CA" \
        openssl verify -CAfile "$CA_DIR/root.pem" -untrusted "$CA_DIR/$tenant-ca.pem" "$leaf"
    refuse "verify $(basename "$leaf") through the $other CA" "unable to get local issuer" \
        openssl verify -CAfile "$CA_DIR/root.pem" -untrusted "$CA_DIR/$other-ca.pem" "$leaf"
}

same_key() {
    local cert_key key_key
    cert_key=$(openssl x509 -in "$1" -noout -pubkey)
    key_key=$(openssl pkey -in "$2" -pubout)
    [[ $cert_key == "$key_key" ]] || fail "$1 does not certify the key in $2"
}

# mime_part FILE BOUNDARY N: the body of part N of a multipart answer.
mime_part() {
    tr -d '\r' <"$1" | awk -v b="--$2" -v n="$3" '
        $0 == b || $0 == b "--" { part++; body = 0; next }
        part == n && body { print }
        part == n && !body && $0 == "" { body = 1 }'
}

# cacerts: anonymous; the tenant CA and the root, under both URL forms.
run "GET cacerts" "${curl_est[@]}" --fail-with-body -D "$dir/cacerts.headers" \
    -o "$dir/cacerts.body" "$est/cacerts"
header_has "$dir/cacerts.headers" '^content-type: application/pkcs7-mime; *smime-type=certs-only'
certs_from "$dir/cacerts.body" "$dir/cacerts.pem"
count=$(grep -c 'BEGIN CERTIFICATE' "$dir/cacerts.pem")
((count == 2)) || fail "cacerts holds $count certificates, expected the tenant CA and the root"
want=$(openssl x509 -in "$CA_DIR/$tenant-ca.pem" -noout -fingerprint -sha256)
awk -v out="$dir/cacert-" '/BEGIN CERTIFICATE/ { n++ } n { print > (out n ".pem") }' \
    "$dir/cacerts.pem"
found=0
for pem in "$dir"/cacert-1.pem "$dir"/cacert-2.pem; do
    [[ $(openssl x509 -in "$pem" -noout -fingerprint -sha256) == "$want" ]] && found=1
done
((found)) || fail "cacerts does not hold the CA served at $CONFORMANCE_HTTP_URL/$tenant/ca.pem"
run "GET cacerts at /$tenant/.well-known/est" "${curl_est[@]}" --fail-with-body \
    -o "$dir/cacerts-alt.body" "$CONFORMANCE_SERVER_URL/$tenant/.well-known/est/cacerts"
cmp -s "$dir/cacerts.body" "$dir/cacerts-alt.body" || fail "the two cacerts URLs differ"
passed "est $tenant cacerts"

# csrattrs: anonymous; a DER CsrAttrs naming the key types the tenant takes.
run "GET csrattrs" "${curl_est[@]}" --fail-with-body -D "$dir/csrattrs.headers" \
    -o "$dir/csrattrs.body" "$est/csrattrs"
header_has "$dir/csrattrs.headers" '^content-type: application/csrattrs'
run "decode csrattrs" openssl base64 -d -A -in "$dir/csrattrs.body" -out "$dir/csrattrs.der"
run "parse csrattrs" openssl asn1parse -inform DER -in "$dir/csrattrs.der"
grep -Eq 'id-ecPublicKey|rsaEncryption' "$STEP_LOG" || fail "csrattrs names no key type"
passed "est $tenant csrattrs"

# simpleenroll with Basic credentials: a P-256 CSR as wrapped base64 of DER,
# then an RSA-2048 one as PEM.
new_credential "$tenant" "$dir/credential.curlrc"
name=est-$RUN_ID.$tenant.test
run "make a P-256 key and CSR for $name" openssl req -new -newkey ec \
    -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/device.key" -subj "/CN=$name" \
    -addext "subjectAltName=DNS:$name" -outform DER -out "$dir/device.csr.der"
run "base64 the CSR, wrapped at 64 columns" \
    openssl base64 -in "$dir/device.csr.der" -out "$dir/device.csr.b64"
est_post simpleenroll "$dir/device.csr.b64" "$dir/enroll" --config "$dir/credential.curlrc"
header_has "$dir/enroll.headers" '^content-type: application/pkcs7-mime; *smime-type=certs-only'
certs_from "$dir/enroll.body" "$dir/device.pem"
check_leaf "$dir/device.pem" "$name"
same_key "$dir/device.pem" "$dir/device.key"
rsa_name=est-rsa-$RUN_ID.$tenant.test
run "make an RSA-2048 key and CSR for $rsa_name" openssl req -new -newkey rsa:2048 -nodes \
    -keyout "$dir/rsa.key" -subj "/CN=$rsa_name" -addext "subjectAltName=DNS:$rsa_name" \
    -out "$dir/rsa.csr.pem"
est_post simpleenroll "$dir/rsa.csr.pem" "$dir/enroll-rsa" --config "$dir/credential.curlrc"
certs_from "$dir/enroll-rsa.body" "$dir/rsa.pem"
check_leaf "$dir/rsa.pem" "$rsa_name"
same_key "$dir/rsa.pem" "$dir/rsa.key"
passed "est $tenant simpleenroll"

# simplereenroll with the client certificate alone (no Basic), same subject and SAN.
run "make the renewal CSR" openssl req -new -key "$dir/device.key" -subj "/CN=$name" \
    -addext "subjectAltName=DNS:$name" -out "$dir/renew.csr.pem"
est_post simplereenroll "$dir/renew.csr.pem" "$dir/reenroll" \
    --cert "$dir/device.pem" --key "$dir/device.key"
certs_from "$dir/reenroll.body" "$dir/renewed.pem"
check_leaf "$dir/renewed.pem" "$name"
[[ $(serial_of "$dir/renewed.pem") != "$(serial_of "$dir/device.pem")" ]] \
    || fail "simplereenroll returned the same certificate"
passed "est $tenant simplereenroll"

# serverkeygen: the server makes the key; multipart/mixed with PKCS#8, then PKCS#7.
keygen_name=est-keygen-$RUN_ID.$tenant.test
run "make a CSR for $keygen_name" openssl req -new -newkey ec \
    -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$dir/throwaway.key" \
    -subj "/CN=$keygen_name" -addext "subjectAltName=DNS:$keygen_name" -out "$dir/keygen.csr.pem"
est_post serverkeygen "$dir/keygen.csr.pem" "$dir/keygen" --config "$dir/credential.curlrc"
header_has "$dir/keygen.headers" '^content-type: multipart/mixed; *boundary='
boundary=$(tr -d '\r' <"$dir/keygen.headers" \
    | sed -n 's/^[Cc]ontent-[Tt]ype: multipart\/mixed; *boundary="\{0,1\}\([^";]*\)"\{0,1\}.*/\1/p')
[[ -n $boundary ]] || fail "serverkeygen sent no multipart boundary"
types=$(tr -d '\r' <"$dir/keygen.body" | grep -i '^content-type:' | tr '[:upper:]' '[:lower:]')
[[ $types == $'content-type: application/pkcs8\ncontent-type: application/pkcs7-mime; smime-type=certs-only' ]] \
    || fail "serverkeygen parts are not PKCS#8 then certs-only PKCS#7: $types"
mime_part "$dir/keygen.body" "$boundary" 1 >"$dir/keygen-key.b64"
mime_part "$dir/keygen.body" "$boundary" 2 >"$dir/keygen-cert.b64"
run "decode the PKCS#8 key" openssl base64 -d -A -in "$dir/keygen-key.b64" -out "$dir/keygen.der"
run "read the PKCS#8 key" openssl pkey -inform DER -in "$dir/keygen.der" -out "$dir/keygen.key"
certs_from "$dir/keygen-cert.b64" "$dir/keygen.pem"
check_leaf "$dir/keygen.pem" "$keygen_name"
same_key "$dir/keygen.pem" "$dir/keygen.key"
passed "est $tenant serverkeygen"

# Isolation: the other tenant's label refuses this tenant's credential and
# certificate; an unknown label is a plain 404.
other_est=$CONFORMANCE_SERVER_URL/.well-known/est/$other
expect_status 401 "$tenant's credential at $other's simpleenroll" \
    --config "$dir/credential.curlrc" -H "Content-Type: application/pkcs10" \
    --data-binary "@$dir/device.csr.b64" "$other_est/simpleenroll"
expect_status 401 "$tenant's certificate at $other's simpleenroll" \
    --cert "$dir/device.pem" --key "$dir/device.key" -H "Content-Type: application/pkcs10" \
    --data-binary "@$dir/device.csr.b64" "$other_est/simpleenroll"
expect_status 403 "$tenant's certificate at $other's simplereenroll" \
    --cert "$dir/device.pem" --key "$dir/device.key" -H "Content-Type: application/pkcs10" \
    --data-binary "@$dir/renew.csr.pem" "$other_est/simplereenroll"
expect_status 404 "an unknown label" \
    "$CONFORMANCE_SERVER_URL/.well-known/est/no-such-$RUN_ID/cacerts"
expect_status 400 "a body that is not base64" --config "$dir/credential.curlrc" \
    -H "Content-Type: application/pkcs10" --data-binary 'not base64 at all!' "$est/simpleenroll"
expect_status 400 "a CSR sent as text/plain" --config "$dir/credential.curlrc" \
    -H "Content-Type: text/plain" --data-binary "@$dir/device.csr.b64" "$est/simpleenroll"
passed "est $tenant isolation"
