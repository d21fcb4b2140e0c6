#!/usr/bin/env bash
# Create the operator's keys for deploy/compose.yaml, write deploy/.env with their public halves,
# and print the [pins] block for the run's workers.
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
  echo "COORDINATOR_KEY=$(hex coordinator)"
  echo "POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
} > .env
chmod 600 .env
echo "keys in deploy/keys/, public keys and the database password in deploy/.env"
# The pins every worker (and any independent verifier or relay) should carry: publish this block
# where contributors get the coordinator's URL, over a channel they trust.
echo
echo "# the run's keys: paste into worker.toml (and the other roles' configs)"
echo "[pins]"
echo "operator = \"$(hex operator)\""
echo "coordinator = \"$(hex coordinator)\""
echo "verifiers = [\"$(hex verifier)\"]"
