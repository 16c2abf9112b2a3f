#!/usr/bin/env bash
# list_cmd for the netns harness: one JSON line per live host {"name", "ip", "created_at", "pool"}.
# Hosts tagged with another pool's id (VMPOOL_POOL_ID at their spawn) are not listed; untagged ones
# are listed without "pool" (vmpool reports them once and leaves them alone).
set -euo pipefail
source "$(dirname "$0")/common.sh"

ip netns list | awk '{print $1}' | while read -r name; do
  slot=$(slot_of "$name")
  [[ -n $slot ]] || continue
  slot_vars "$slot" "$name"
  pool=$(cat "$host_dir/pool" 2>/dev/null || echo "")
  [[ -z $pool || $pool == "${VMPOOL_POOL_ID:-}" ]] || continue
  created=$(cat "$host_dir/created_at" 2>/dev/null || echo "")
  line=$(printf '"name":"%s","ip":"%s"' "$ns" "$ip_ns")
  [[ -z $created ]] || line+=$(printf ',"created_at":%s' "$created")
  [[ -z $pool ]] || line+=$(printf ',"pool":"%s"' "$pool")
  printf '{%s}\n' "$line"
done
