#!/bin/sh
# The official postgres image's contract, for an image built offline by build-postgres-image:
# POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust), POSTGRES_USER (default postgres),
# POSTGRES_DB (default: the user), POSTGRES_INITDB_ARGS, PGDATA, and `postgres -c name=value`.
set -eu
PGDATA=${PGDATA:-/var/lib/postgresql/data}
export PGDATA
bin=$(echo /usr/lib/postgresql/*/bin)

case "${1:-postgres}" in
  -*) set -- postgres "$@" ;;
esac
[ "$#" -gt 0 ] || set -- postgres
if [ "$1" != postgres ]; then
  exec "$@"  # any other command, as the official image allows
fi
shift

as_postgres() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  auth=${POSTGRES_HOST_AUTH_METHOD:-scram-sha-256}
  if [ -z "${POSTGRES_PASSWORD:-}" ] && [ "$auth" != trust ]; then
    echo "error: set POSTGRES_PASSWORD (or POSTGRES_HOST_AUTH_METHOD=trust)" >&2
    exit 1
  fi
  mkdir -p "$PGDATA" /var/run/postgresql
  chown postgres:postgres "$PGDATA" /var/run/postgresql
  chmod 0700 "$PGDATA"
  pwfile=$(mktemp)
  printf '%s\n' "${POSTGRES_PASSWORD:-}" >"$pwfile"
  chown postgres "$pwfile"
  chmod 0600 "$pwfile"
  # shellcheck disable=SC2086  # POSTGRES_INITDB_ARGS is a word list, as upstream reads it
  as_postgres "$bin/initdb" --username="$user" --pwfile="$pwfile" --auth-local=trust \
    --auth-host="$auth" --encoding=UTF8 --locale=en_US.UTF-8 ${POSTGRES_INITDB_ARGS:-} \
    >/dev/null
  rm -f "$pwfile"
  echo "host all all all $auth" >>"$PGDATA/pg_hba.conf"
  if [ "$db" != postgres ]; then
    quoted=$(printf '%s' "$db" | sed 's/"/""/g')
    printf 'CREATE DATABASE "%s"\n' "$quoted" |  # printf: dash's echo reads backslashes
      as_postgres "$bin/postgres" --single -D "$PGDATA" -j template1 >/dev/null
  fi
  echo "PostgreSQL init process complete; ready for start up."
fi

exec setpriv --reuid=postgres --regid=postgres --init-groups \
  "$bin/postgres" -D "$PGDATA" -c listen_addresses='*' "$@"
