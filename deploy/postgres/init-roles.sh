#!/bin/sh
# Run once by the postgres image when its data volume is first created (as the superuser, which
# is used for nothing else): the schema owner that migrates and the application role that the
# services log in as. `cxr-triage db upgrade` (as the owner) creates the tables and grants the
# application role only what the services need: INSERT and SELECT on audit_events, no UPDATE,
# DELETE, TRUNCATE, ALTER or trigger changes (docs/deploy.md, "Database roles").
set -eu
: "${POSTGRES_OWNER_PASSWORD:?}" "${POSTGRES_APP_PASSWORD:?}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
  -v owner_password="$POSTGRES_OWNER_PASSWORD" -v app_password="$POSTGRES_APP_PASSWORD" <<'SQL'
CREATE ROLE cxr_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD :'owner_password';
CREATE ROLE cxr_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD :'app_password';
SELECT format('ALTER DATABASE %I OWNER TO cxr_owner', current_database()) \gexec
ALTER SCHEMA public OWNER TO cxr_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
SELECT format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database()) \gexec
SELECT format('GRANT CONNECT ON DATABASE %I TO cxr_owner, cxr_app', current_database()) \gexec
SQL
