#!/usr/bin/env bash
# Create the operator's keys for deploy/compose.yaml and deploy/kubernetes/, one folder per role,
# so that each container mounts only its own private key:
#   keys/coordinator/coordinator.key   the coordinator's (signs leases)
#   keys/trainer/operator.key          the operator's (signs policy versions; only the trainer holds it)
#   keys/verifier/verifier.key         the verifier's (signs verdicts)
#   keys/tls/tls.crt, tls.key          a self-signed certificate for the TLS proxies, for trying the
#                                      deployment out; replace it with one for your host name
# write deploy/.env with the public halves (the coordinator and relays get only these), and print
# the [pins] block for the run's workers.
#   bash deploy/make-keys.sh            (needs `swarmrl` on PATH: make install && . .venv/bin/activate)
#   SWARMRL_HOST=swarm.example.org bash deploy/make-keys.sh    (the certificate's name)
set -euo pipefail
cd "$(dirname "$0")"
key() {  # role folder, key name; a key from the old flat layout (keys/<name>.key) is moved, not replaced
  mkdir -p "keys/$1"
  chmod 700 "keys/$1"
  if [ ! -f "keys/$1/$2.key" ]; then
    if [ -f "keys/$2.key" ]; then mv "keys/$2.key" "keys/$1/$2.key"; else swarmrl keys new "keys/$1/$2.key" >/dev/null; fi
  fi
}
key coordinator coordinator
key trainer operator
key verifier verifier
if [ ! -f keys/tls/tls.crt ]; then
  mkdir -p keys/tls
  host="${SWARMRL_HOST:-localhost}"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 90 -subj "/CN=$host" \
    -addext "subjectAltName=DNS:$host" -keyout keys/tls/tls.key -out keys/tls/tls.crt 2>/dev/null
  chmod 600 keys/tls/tls.key
fi
hex() { swarmrl keys show "keys/$1" | awk '/public_key/ {print $2}'; }
{
  echo "OPERATOR_KEY=$(hex trainer/operator.key)"
  echo "VERIFIER_KEY=$(hex verifier/verifier.key)"
  echo "COORDINATOR_KEY=$(hex coordinator/coordinator.key)"
  echo "POSTGRES_PASSWORD=${POSTGRES_PASSWORD:-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')}"
} > .env
chmod 600 .env
echo "keys in deploy/keys/<role>/, a self-signed TLS certificate in deploy/keys/tls/, public keys and the database password in deploy/.env"
# The pins every worker (and any independent verifier or relay) should carry: publish this block
# where contributors get the coordinator's URL, over a channel they trust.
echo
echo "# the run's keys: paste into worker.toml (and the other roles' configs)"
echo "[pins]"
echo "operator = \"$(hex trainer/operator.key)\""
echo "coordinator = \"$(hex coordinator/coordinator.key)\""
echo "verifiers = [\"$(hex verifier/verifier.key)\"]"
