#!/usr/bin/env bash
# list_cmd for libvirt (NOT run in CI): one line `name ip - pool` per vmpool domain of this group
# and this pool (the pool id is in the domain's description, vmpool_pool=...). Domains of another
# pool are not listed; untagged ones are listed without a pool (vmpool leaves them alone).
set -euo pipefail
uri=${LIBVIRT_URI:-qemu:///system}
prefix="vmpool-${VMPOOL_GROUP_NAME//[^A-Za-z0-9]/-}-"
virsh --connect "$uri" list --all --name | while read -r name; do
  [[ $name == "$prefix"* ]] || continue
  pool=$(virsh --connect "$uri" desc "$name" 2>/dev/null | sed -n 's/^vmpool_pool=//p' | head -n 1)
  [[ -z $pool || $pool == "${VMPOOL_POOL_ID:-}" ]] || continue
  ip=$(virsh --connect "$uri" domifaddr "$name" --source lease 2>/dev/null | awk '/ipv4/ {split($4, a, "/"); print a[1]; exit}')
  echo "$name ${ip:--} - ${pool:--}"
done
