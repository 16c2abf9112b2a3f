#!/usr/bin/env bash
# Runs a command (default: npm test) as on a machine without the test suite's optional tools: in a
# mount namespace where sshd, chromium, promtool, foreman and redis-sentinel cannot be executed.
# Needs root (unshare -m, overlay mounts). /usr/bin/redis-sentinel is a link to redis-server's binary,
# so the tools are removed from overlays of /usr/bin and /usr/sbin instead of bind-mounting over them.
set -euo pipefail
[ "$#" -gt 0 ] || set -- npm test
d=$(mktemp -d /tmp/vmpool-without-tools.XXXX)
trap 'rm -rf "$d"' EXIT
mkdir -p "$d/bu" "$d/bw" "$d/su" "$d/sw"
unshare -m bash -c '
mount -t overlay overlay -o "lowerdir=/usr/bin,upperdir=$1/bu,workdir=$1/bw" /usr/bin
mount -t overlay overlay -o "lowerdir=/usr/sbin,upperdir=$1/su,workdir=$1/sw" /usr/sbin
rm -f /usr/bin/chromium /usr/bin/promtool /usr/bin/foreman /usr/bin/redis-sentinel /usr/sbin/sshd
shift
exec "$@"' bash "$d" "$@"
