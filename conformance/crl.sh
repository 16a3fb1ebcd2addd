#!/usr/bin/env bash
# openssl against acme-mt's CRLs (RFC 5280 §5). Every shard and delta of a tenant
# and the root CRL must be served as application/pkix-crl with caching headers,
# verify against their CA with `openssl crl -verify`, carry the extensions their
# kind needs (CRL number, critical IDP, Freshest CRL, critical Delta CRL
# Indicator), and answer 304 to their own ETag; a shard the tenant lacks is 404.
#
#   conformance/crl.sh                              start a server on loopback and check it
#   conformance/crl.sh http://127.0.0.1:8080 SLUG N  check tenant SLUG (N shards) of a running server
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
work=$(mktemp -d)
server_pid=""

cleanup() {
  if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

fail() { echo "FAIL: $*" >&2; exit 1; }
free_port() { "$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

if [ $# -ge 1 ]; then
  base=${1%/}; slug=${2:-default}; shards=${3:-1}
  case "$base" in http://127.*|http://localhost*|http://\[::1\]*) ;; *) fail "loopback URLs only: $base" ;; esac
else
  http_port=$(free_port); https_port=$(free_port)
  base="http://localhost:$http_port"; slug=crl-conformance; shards=4
  export ACME_MT_SERVER_HTTP_LISTEN="127.0.0.1:$http_port" ACME_MT_SERVER_HTTP_URL="$base"
  export ACME_MT_SERVER_HTTPS_LISTEN="127.0.0.1:$https_port" ACME_MT_SERVER_HTTPS_URL="https://localhost:$https_port"
  "$PYTHON" -m acme_mt serve --data-dir "$work/data" >"$work/server.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1 150); do
    curl -sf -o /dev/null "$base/root.pem" && break
    kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log" >&2; fail "server exited"; }
    sleep 0.2
  done
  printf 'require_eab = false\ncrl_shards = %d\n' "$shards" >"$work/policy.toml"
  "$PYTHON" -m acme_mt tenant create "$slug" --policy "$work/policy.toml" --data-dir "$work/data" --json >/dev/null
fi

curl -sf -o "$work/root.pem" "$base/root.pem" || fail "no root certificate at $base/root.pem"
curl -sf -o "$work/chain.pem" "$base/$slug/ca.pem" || fail "no CA chain for tenant $slug"

# fetch URL NAME: the body to $work/NAME.crl, headers to $work/NAME.headers; checks status and type.
fetch() {
  local status
  status=$(curl -s -D "$work/$2.headers" -o "$work/$2.crl" -w '%{http_code}' "$1")
  [ "$status" = 200 ] || fail "$1 answered $status"
  grep -qi '^content-type: application/pkix-crl' "$work/$2.headers" || fail "$1 is not application/pkix-crl"
  grep -qi '^cache-control: .*max-age=' "$work/$2.headers" || fail "$1 has no max-age"
  grep -qi '^last-modified: ' "$work/$2.headers" || fail "$1 has no Last-Modified"
}

# check NAME CAFILE PATTERN...: openssl verifies the CRL and its text shows each pattern.
check() {
  local name=$1 cafile=$2 verdict
  shift 2
  verdict=$(openssl crl -inform DER -in "$work/$name.crl" -noout -verify -CAfile "$cafile" 2>&1) || true
  [ "$verdict" = "verify OK" ] || fail "$name: $verdict"
  openssl crl -inform DER -in "$work/$name.crl" -noout -text >"$work/$name.txt"
  for pattern in "X509v3 CRL Number" "X509v3 Authority Key Identifier" "$@"; do
    grep -q "$pattern" "$work/$name.txt" || fail "$name lacks '$pattern'"
  done
}

# revalidate URL NAME: the ETag it gave must bring a 304.
revalidate() {
  local etag status
  etag=$(grep -i '^etag: ' "$work/$2.headers" | cut -d' ' -f2- | tr -d '\r')
  [ -n "$etag" ] || fail "$1 has no ETag"
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $etag" "$1")
  [ "$status" = 304 ] || [ "$status" = 200 ] || fail "$1 with its ETag answered $status"
  [ "$status" = 304 ] || echo "note: $1 was re-signed between two requests"
}

for shard in $(seq 0 $((shards - 1))); do
  url="$base/$slug/crl/$shard.crl"
  fetch "$url" "full-$shard"
  check "full-$shard" "$work/chain.pem" "Issuing Distribution Point: critical" \
    "URI:$url" "Only User Certificates" "Freshest CRL" "URI:$base/$slug/crl/$shard-delta.crl"
  revalidate "$url" "full-$shard"
  fetch "$base/$slug/crl/$shard-delta.crl" "delta-$shard"
  check "delta-$shard" "$work/chain.pem" "Issuing Distribution Point: critical" \
    "URI:$url" "Delta CRL Indicator: critical"
  echo "ok: shard $shard and its delta"
done

fetch "$base/root.crl" root
check root "$work/root.pem"
revalidate "$base/root.crl" root
echo "ok: root CRL"

for path in "$slug/crl/$shards.crl" "$slug/crl/x.crl" "no-such-tenant/crl/0.crl"; do
  status=$(curl -s -o /dev/null -w '%{http_code}' "$base/$path")
  [ "$status" = 404 ] || fail "/$path answered $status, not 404"
done
echo "ok: missing CRLs are 404"
echo "CRL conformance passed"
