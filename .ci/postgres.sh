#!/usr/bin/env bash
# Start the machine's PostgreSQL 15 and make a throw-away login role for the test suite.
# Prints the admin URL the tests use (they create and drop a fresh database per test).
# Usage: export ETCHACELL_TEST_POSTGRES_URL="$(bash .ci/postgres.sh)"
set -euo pipefail

ROLE=etchacell_test
PASSWORD=etchacell_test
PORT=5432

log() { echo "postgres: $*" >&2; }

if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  log "installing postgresql (Debian package)"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >&2
fi
if ! pg_lsclusters -h 2>/dev/null | grep -q '^15 *main'; then
  version=$(pg_lsclusters -h | awk 'NR==1{print $1}')
  cluster=$(pg_lsclusters -h | awk 'NR==1{print $2}')
else
  version=15; cluster=main
fi
[ -n "${version:-}" ] || { log "no PostgreSQL cluster found"; exit 1; }
status=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $4}')
if [ "$status" != "online" ]; then
  log "starting cluster $version $cluster"
  pg_ctlcluster "$version" "$cluster" start >&2
fi
PORT=$(pg_lsclusters -h | awk -v v="$version" -v c="$cluster" '$1==v && $2==c {print $3}')
for _ in $(seq 1 30); do
  su postgres -c "psql -p $PORT -qAtc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -p $PORT -v ON_ERROR_STOP=1 -qAt" >&2 <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  ELSE
    ALTER ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD';
  END IF;
END \$\$;
SQL
echo "postgresql://$ROLE:$PASSWORD@127.0.0.1:$PORT/postgres"
