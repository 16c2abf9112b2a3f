#!/usr/bin/env bash
# spawn_cmd for OpenStack with the `openstack` CLI (NOT run in CI: needs a cloud account).
# Credentials come from the usual OS_* variables or OS_CLOUD (clouds.yaml), set in the provider `env`.
# Settings: OS_VMPOOL_IMAGE, OS_VMPOOL_FLAVOR, OS_VMPOOL_NETWORK, OS_VMPOOL_KEY (key pair name).
# The server's vmpool_pool property is the pool's tag (VMPOOL_POOL_ID), which list.sh reports.
set -euo pipefail
name="vmpool-${VMPOOL_GROUP_NAME//[^A-Za-z0-9]/-}-${VMPOOL_SPAWN_ID: -12}"
name=${name:0:63}

# A failure says its class as JSON on the last line (examples/README.md, "Typed errors"), so that
# the group's circuit breaker backs off on quota and capacity, and stops for an operator on auth.
fail_typed() {
  printf '{"error":"%s","message":"%s"}\n' "$1" "$(printf '%s' "$2" | tr -d '"\\' | tr '\n' ' ' | cut -c1-200)"
  exit 1
}
classify() {
  case "$1" in
    *[Qq]uota*) echo quota ;;
    *"No valid host"* | *"Insufficient"* | *"capacity"*) echo capacity ;;
    *"Rate limit"* | *"HTTP 429"* | *"Too Many Requests"*) echo rate_limit ;;
    *"HTTP 401"* | *"HTTP 403"* | *[Aa]uthenticat* | *"Unauthorized"*) echo auth ;;
    *"HTTP 400"* | *"BadRequest"* | *"No Image found"* | *"No Flavor found"* | *"No Network found"*) echo invalid_request ;;
    *) echo transient ;;
  esac
}

printf '{"name":"%s"}\n' "$name"
if ! out=$(openstack server create --wait \
  --image "${OS_VMPOOL_IMAGE:?}" --flavor "${OS_VMPOOL_FLAVOR:?}" --network "${OS_VMPOOL_NETWORK:?}" \
  --key-name "${OS_VMPOOL_KEY:?}" --property vmpool_group="$VMPOOL_GROUP_NAME" --property vmpool_pool="${VMPOOL_POOL_ID:-}" \
  -f value -c id "$name" 2>&1); then
  echo "$out" >&2
  fail_typed "$(classify "$out")" "$out"
fi
# An instance that ended in ERROR (for example no valid host) is a failure too.
status=$(openstack server show "$name" -f value -c status)
if [[ $status != ACTIVE ]]; then
  fault=$(openstack server show "$name" -f value -c fault 2>/dev/null || true)
  fail_typed "$(classify "$fault")" "server $name is $status: $fault"
fi

# addresses looks like {'net': ['10.0.0.5']}; take the first IPv4 address.
ip=$(openstack server show "$name" -f json -c addresses | python3 -c '
import json, sys, ipaddress
for addrs in json.load(sys.stdin)["addresses"].values():
    for a in addrs:
        if ipaddress.ip_address(a).version == 4:
            print(a); sys.exit(0)
sys.exit("no IPv4 address")')
printf '{"name":"%s","ip":"%s"}\n' "$name" "$ip"
