#!/usr/bin/env bash
# terminate_cmd for OpenStack (NOT run in CI). Idempotent: a server that is already gone succeeds.
set -euo pipefail
name=${VMPOOL_VM_NAME:?VMPOOL_VM_NAME is not set}
if openstack server show "$name" -f value -c id >/dev/null 2>&1; then
  openstack server delete --wait "$name"
  echo "deleted server $name"
else
  echo "server $name is already gone"
fi
