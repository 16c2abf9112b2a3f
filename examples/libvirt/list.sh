#!/usr/bin/env bash
# list_cmd for libvirt (NOT run in CI): one line `name ip` per vmpool domain of this group.
set -euo pipefail
uri=${LIBVIRT_URI:-qemu:///system}
prefix="vmpool-${VMPOOL_GROUP_NAME//[^A-Za-z0-9]/-}-"
virsh --connect "$uri" list --all --name | while read -r name; do
  [[ $name == "$prefix"* ]] || continue
  ip=$(virsh --connect "$uri" domifaddr "$name" --source lease 2>/dev/null | awk '/ipv4/ {split($4, a, "/"); print a[1]; exit}')
  echo "$name${ip:+ $ip}"
done
