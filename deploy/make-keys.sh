#!/usr/bin/env bash
# Create the operator's keys for deploy/compose.yaml and write deploy/.env with their public halves.
#   bash deploy/make-keys.sh            (needs `swarmrl` on PATH: make install && . .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p keys
for k in operator verifier coordinator; do
  [ -f "keys/$k.key" ] || swarmrl keys new "keys/$k.key" >/dev/null
done
hex() { swarmrl keys show "keys/$1.key" | awk '/public_key/ {print $2}'; }
{
  echo "OPERATOR_KEY=$(hex operator)"
  echo "VERIFIER_KEY=$(hex verifier)"
  echo "POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
} > .env
chmod 600 .env
echo "keys in deploy/keys/, public keys and the database password in deploy/.env"
