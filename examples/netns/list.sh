#!/usr/bin/env bash
# list_cmd for the netns harness: one JSON line per live host {"name", "ip", "created_at"}.
set -euo pipefail
source "$(dirname "$0")/common.sh"

ip netns list | awk '{print $1}' | while read -r name; do
  slot=$(slot_of "$name")
  [[ -n $slot ]] || continue
  slot_vars "$slot" "$name"
  created=$(cat "$host_dir/created_at" 2>/dev/null || echo "")
  if [[ -n $created ]]; then
    printf '{"name":"%s","ip":"%s","created_at":%s}\n' "$ns" "$ip_ns" "$created"
  else
    printf '{"name":"%s","ip":"%s"}\n' "$ns" "$ip_ns"
  fi
done
