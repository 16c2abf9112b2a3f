#!/usr/bin/env bash
# list_cmd for OpenStack (NOT run in CI): one JSON line {"name", "pool"} per server of this group,
# with its vmpool_pool property. Servers of another pool are not listed; untagged ones are listed
# without a pool (vmpool leaves them alone). Without created_at, vmpool measures a leak's age from
# when it first saw it.
set -euo pipefail
openstack server list --name "^vmpool-${VMPOOL_GROUP_NAME//[^A-Za-z0-9]/-}-" --long -f json -c Name -c Properties | python3 -c '
import ast, json, os, sys
mine = os.environ.get("VMPOOL_POOL_ID", "")
for server in json.load(sys.stdin):
    props = server.get("Properties") or {}
    if isinstance(props, str):  # older clients print key=value, key=value
        props = dict(p.split("=", 1) for p in props.replace("\x27", "").split(", ") if "=" in p)
    pool = props.get("vmpool_pool", "")
    if pool and pool != mine:
        continue
    print(json.dumps({"name": server["Name"], **({"pool": pool} if pool else {})}))
'
