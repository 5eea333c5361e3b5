#!/usr/bin/env bash
# System services and packages some tests need (as root, in CI): PostgreSQL up at 127.0.0.1:5432,
# iproute2 and util-linux for the VM hosts (network namespaces), openssh for SSH, and Debian's
# chromium for the browser tests (Playwright drives it; `playwright install` cannot download here).
# On a user's machine without them, those tests skip with the reason; with CI=true they fail.
set -uo pipefail
if [ "$(id -u)" = "0" ]; then
  missing=""
  command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
  command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
  command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
  command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
  if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
      || echo "ci-setup: could not install$missing"
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
exit 0
