#!/usr/bin/env bash
# Makes a development CA, a server certificate for localhost/127.0.0.1 (used by both
# `ccgate serve` and `ccgate sim`), and an RS256 JWT signing key with its JWK Set.
# Everything is written next to this script; nothing here is for production, and no private
# key is ever committed (see .gitignore).
set -euo pipefail
cd "$(dirname "$0")"
umask 077

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
hex2bin() { local h; h=$(cat); printf '%b' "$(printf '%s' "$h" | sed 's/../\\x&/g')"; }

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 825 \
  -subj "/CN=ccgate dev CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
  -keyout server-key.pem -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 825 -out server.pem \
  -extfile <(printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n') 2>/dev/null
rm -f server.csr ca.srl

openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out jwt-key.pem 2>/dev/null
n=$(openssl rsa -in jwt-key.pem -noout -modulus | cut -d= -f2 | hex2bin | b64url)
printf '{"keys":[{"kty":"RSA","use":"sig","alg":"RS256","kid":"dev-rs256","n":"%s","e":"AQAB"}]}\n' "$n" > jwks.json
chmod 644 ca.pem server.pem jwks.json

echo "wrote $(pwd)/{ca.pem, server.pem, server-key.pem, jwt-key.pem, jwks.json}"
