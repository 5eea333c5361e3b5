#!/usr/bin/env bash
# System services some tests need (as root, in CI): PostgreSQL up at 127.0.0.1:5432.
# On a user's machine without them, those tests skip with the reason; with CI=true they fail.
set -uo pipefail
if [ "$(id -u)" = "0" ] && command -v pg_ctlcluster >/dev/null 2>&1; then
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
exit 0
