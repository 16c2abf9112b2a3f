#!/usr/bin/env bash
# list_cmd for OpenStack (NOT run in CI): one line per server of this group, its name only.
# Without created_at, vmpool measures a leak's age from when it first saw it.
set -euo pipefail
openstack server list --name "^vmpool-${VMPOOL_GROUP_NAME//[^A-Za-z0-9]/-}-" -f value -c Name
