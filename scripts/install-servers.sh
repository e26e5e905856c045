#!/usr/bin/env bash
# Install the servers the test-suite starts by itself (Redis, etcd, ZooKeeper,
# PostgreSQL, PgBouncer, a Java runtime for ZooKeeper) from Debian's packages.
#
# Idempotent: only packages whose binaries are missing are installed, and
# `apt-get update` runs only when something is missing.  Services that the
# packages would start on install are suppressed with a temporary
# /usr/sbin/policy-rc.d; the tests never use system services anyway.
#
# Exit status: 0 when everything is present afterwards, 1 when something is
# missing and cannot be installed here (not root, or no apt-get): the missing
# packages are then printed.
set -euo pipefail

missing=()

have_cmd() { command -v "$1" >/dev/null 2>&1; }

# redis-server
have_cmd redis-server || [[ -x /usr/bin/redis-server ]] || missing+=(redis-server)

# etcd (server) and etcdctl (client); Debian 12 splits them.
have_cmd etcd || [[ -x /usr/bin/etcd ]] || missing+=(etcd-server)
have_cmd etcdctl || [[ -x /usr/bin/etcdctl ]] || missing+=(etcd-client)
# openssl makes the throw-away CA and certificates of the etcds:// (TLS) test.
have_cmd openssl || missing+=(openssl)

# ZooKeeper: Debian's package ships the jar in /usr/share/java and
# /usr/share/zookeeper (no binary on PATH).
zk_found=0
for jar in /usr/share/java/zookeeper.jar /usr/share/java/zookeeper-*.jar \
    /usr/share/zookeeper/zookeeper*.jar /usr/share/zookeeper/lib/zookeeper*.jar; do
    if [[ -f "$jar" ]]; then
        zk_found=1
        break
    fi
done
((zk_found)) || missing+=(zookeeper)

# Java runtime for ZooKeeper.
have_cmd java || missing+=(default-jre-headless)

# PostgreSQL server binaries (initdb, postgres, pg_isready).
pg_found=0
for bindir in /usr/lib/postgresql/*/bin; do
    if [[ -x "$bindir/initdb" && -x "$bindir/postgres" && -x "$bindir/pg_isready" ]]; then
        pg_found=1
        break
    fi
done
((pg_found)) || missing+=(postgresql)

# PgBouncer: the tests prove a transaction-pooling proxy is refused.
have_cmd pgbouncer || [[ -x /usr/sbin/pgbouncer ]] || missing+=(pgbouncer)

if ((${#missing[@]} == 0)); then
    echo "install-servers: all servers present (redis-server, etcd, etcdctl, zookeeper, java, postgresql, pgbouncer)"
    exit 0
fi

echo "install-servers: missing packages: ${missing[*]}"

if [[ "$(id -u)" != 0 ]]; then
    echo "install-servers: not root; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
    exit 1
fi
if ! have_cmd apt-get; then
    echo "install-servers: apt-get not found; install these Debian packages (or equivalents): ${missing[*]}" >&2
    exit 1
fi

# Keep the packages' maintainer scripts from starting services.  Only remove
# the policy file if we created it (Docker images often ship one already).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e "$policy" ]]; then
    printf '#!/bin/sh\n# temporary: written by tenure scripts/install-servers.sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    created_policy=1
fi
cleanup() {
    if ((created_policy)); then
        rm -f "$policy"
    fi
}
trap cleanup EXIT

export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"

echo "install-servers: installed ${missing[*]}"
