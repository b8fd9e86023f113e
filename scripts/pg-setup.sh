#!/usr/bin/env bash
# Make PostgreSQL with the hll extension available on 127.0.0.1:5432, where the
# machine can have it (Debian with postgresql-15 and root). Idempotent.
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "pg-setup: no PostgreSQL cluster tools here; PostgreSQL tests will skip (or fail with HOMELOC_REQUIRE_PG=1)"
  exit 0
fi
PGVER="$(ls /etc/postgresql | sort -n | tail -1)"
if [ ! -f "/usr/share/postgresql/${PGVER}/extension/hll.control" ]; then
  if [ "$(id -u)" = "0" ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "postgresql-${PGVER}-hll"
  else
    echo "pg-setup: postgresql-${PGVER}-hll is not installed and this is not root"; exit 0
  fi
fi
if ! pg_lsclusters -h | awk '{print $4}' | grep -q online; then
  pg_ctlcluster --skip-systemctl-redirect "${PGVER}" main start
fi
for i in $(seq 1 30); do
  pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 1
done
psql -h 127.0.0.1 -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname='test'" | grep -q 1 \
  || psql -h 127.0.0.1 -U postgres -d postgres -c "CREATE DATABASE test"
psql -h 127.0.0.1 -U postgres -d test -qc "CREATE EXTENSION IF NOT EXISTS hll"
echo "pg-setup: PostgreSQL ${PGVER} with hll ready on 127.0.0.1:5432"
