#!/bin/sh
# Entry point of the drg-ledger image: `docker-entrypoint drg-ledger ARGS...`.
#
# Compose and Kubernetes hand secrets to containers as files (/run/secrets/...), while the
# CLI reads its database from DRG_LEDGER_DATABASE_URL. So the URL is configured without a
# password (it is not secret: postgresql://ledger@postgres:5432/ledger) and, when
# DRG_LEDGER_DATABASE_PASSWORD_FILE names a file, its content is put into the URL here,
# percent-encoded, just before the command starts. The password never appears in a
# manifest, in `docker inspect` or in `kubectl describe`.
set -eu

if [ -n "${DRG_LEDGER_DATABASE_PASSWORD_FILE:-}" ]; then
    : "${DRG_LEDGER_DATABASE_URL:?DRG_LEDGER_DATABASE_PASSWORD_FILE is set but DRG_LEDGER_DATABASE_URL is not}"
    DRG_LEDGER_DATABASE_URL="$(python -c '
import os, sys, urllib.parse

url = urllib.parse.urlsplit(os.environ["DRG_LEDGER_DATABASE_URL"])
if url.password is not None:
    sys.exit("docker-entrypoint: DRG_LEDGER_DATABASE_URL already carries a password; "
             "remove it or unset DRG_LEDGER_DATABASE_PASSWORD_FILE")
if not url.username:
    sys.exit("docker-entrypoint: DRG_LEDGER_DATABASE_URL names no user")
with open(os.environ["DRG_LEDGER_DATABASE_PASSWORD_FILE"], encoding="utf-8") as f:
    password = f.read().rstrip("\r\n")  # as the postgres image reads POSTGRES_PASSWORD_FILE
if not password:
    sys.exit("docker-entrypoint: the password file is empty")
host = url.hostname or ""
if ":" in host:
    host = "[" + host + "]"  # IPv6 literal
netloc = url.username + ":" + urllib.parse.quote(password, safe="") + "@" + host
if url.port:
    netloc += ":" + str(url.port)
print(urllib.parse.urlunsplit(url._replace(netloc=netloc)))
')"
    export DRG_LEDGER_DATABASE_URL
    unset DRG_LEDGER_DATABASE_PASSWORD_FILE
fi

exec "$@"
