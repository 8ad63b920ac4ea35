#!/bin/sh
# The official postgres image's first start, reduced to what docker-compose.yml uses: an empty
# PGDATA gets a cluster whose superuser POSTGRES_USER has POSTGRES_PASSWORD, a POSTGRES_DB
# database, and password (scram) logins over the network.
set -eu
: "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required, as in the official image}"
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256
  rm -f "$pwfile"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  echo "listen_addresses = '*'" >>"$PGDATA/postgresql.conf"
  pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait start
  if [ "$db" != postgres ]; then createdb --username="$user" "$db"; fi
  pg_ctl --pgdata="$PGDATA" --mode=fast --wait stop
fi
exec "$@"
