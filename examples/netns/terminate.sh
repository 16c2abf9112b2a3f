#!/usr/bin/env bash
# terminate_cmd for the netns harness: kills everything in the namespace and deletes it (its veth
# pair goes with it). Idempotent: a host that is already gone, or a name that is not ours, succeeds.
set -euo pipefail
source "$(dirname "$0")/common.sh"

name=${VMPOOL_VM_NAME:?VMPOOL_VM_NAME is not set}
slot=$(slot_of "$name")
if [[ -z $slot ]]; then
  echo "$name is not a $prefix host; nothing to do"
  exit 0
fi
slot_vars "$slot" "$name"

if ip netns list | awk '{print $1}' | grep -qxF "$ns"; then
  pids=$(ip netns pids "$ns" || true)
  if [[ -n $pids ]]; then
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  ip netns del "$ns"
  echo "deleted namespace $ns"
else
  echo "namespace $ns is already gone"
fi
rm -rf "$host_dir"
# The slot (and its root-side interface) may belong to a newer host by now: free it only if ours.
owner=$(cat "$dir/slots/$slot/owner" 2>/dev/null || true)
if [[ $owner == "$ns" ]]; then
  # The root side of the pair normally goes with the namespace; remove it if it lingers.
  ip link del "$veth_root" 2>/dev/null || true
  rm -f "$dir/slots/$slot/owner"
  rmdir "$dir/slots/$slot" 2>/dev/null || true
fi
