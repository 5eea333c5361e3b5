#!/usr/bin/env bash
# System services and packages some tests need (as root, in CI): PostgreSQL up at 127.0.0.1:5432,
# iproute2 and util-linux for the VM hosts (network namespaces), openssh for SSH, bubblewrap for the
# local backend's job sandbox, podman, a registry and busybox for `image` jobs, debootstrap for the VM
# hosts' stock OS tree (tests/stock_tree.py), and Debian's chromium for the browser tests (Playwright drives it;
# `playwright install` cannot download here). On a user's machine without them, those tests skip
# with the reason; with CI=true they fail. When an install fails, apt's own error is shown.
set -uo pipefail

wait_for_dpkg_lock() {
  # Another apt (unattended upgrades, a previous job) may hold the lock: wait up to 5 minutes.
  for _ in $(seq 1 150); do
    if ! fuser /var/lib/dpkg/lock-frontend /var/lib/dpkg/lock /var/lib/apt/lists/lock >/dev/null 2>&1; then
      return 0
    fi
    sleep 2
  done
  echo "ci-setup: the dpkg lock is still held after 5 minutes" >&2
}

if [ "$(id -u)" = "0" ]; then
  missing=""
  command -v ip >/dev/null 2>&1 || missing="$missing iproute2"
  command -v unshare >/dev/null 2>&1 || missing="$missing util-linux"
  command -v fuser >/dev/null 2>&1 || missing="$missing psmisc"
  command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || missing="$missing openssh-server"
  command -v ssh >/dev/null 2>&1 || missing="$missing openssh-client"
  command -v bwrap >/dev/null 2>&1 || missing="$missing bubblewrap"
  command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
  command -v podman >/dev/null 2>&1 || missing="$missing podman runc"
  command -v docker-registry >/dev/null 2>&1 || missing="$missing docker-registry"
  [ -x /bin/busybox ] || missing="$missing busybox-static"
  command -v htpasswd >/dev/null 2>&1 || missing="$missing apache2-utils"
  command -v debootstrap >/dev/null 2>&1 || missing="$missing debootstrap"
  if [ -n "$missing" ] && command -v apt-get >/dev/null 2>&1; then
    log=$(mktemp)
    wait_for_dpkg_lock
    if ! { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >"$log" 2>&1; then
      echo "ci-setup: could not install$missing; apt said:" >&2
      tail -n 30 "$log" >&2
    fi
    rm -f "$log"
  fi
  if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
exit 0
