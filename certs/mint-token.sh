#!/usr/bin/env bash
# Mints an RS256 JWT for an agent with the key from make-dev-certs.sh, using only openssl:
# an implementation independent of ccgate's own. Usage: certs/mint-token.sh AGENT [TTL_SECS]
set -euo pipefail
cd "$(dirname "$0")"
agent=${1:?usage: mint-token.sh AGENT [TTL_SECS]}
ttl=${2:-3600}
iss=${CCGATE_TOKEN_ISSUER:-https://idp.example.com}
aud=${CCGATE_TOKEN_AUDIENCE:-ccgate}
b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"dev-rs256"}' | b64url)
payload=$(printf '{"iss":"%s","aud":"%s","agent_id":"%s","iat":%d,"nbf":%d,"exp":%d}' \
  "$iss" "$aud" "$agent" "$now" "$now" "$((now + ttl))" | b64url)
sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign jwt-key.pem -binary | b64url)
printf '%s.%s.%s\n' "$header" "$payload" "$sig"
