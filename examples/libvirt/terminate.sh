#!/usr/bin/env bash
# terminate_cmd for libvirt (NOT run in CI). Idempotent: a domain that is already gone succeeds.
set -euo pipefail
name=${VMPOOL_VM_NAME:?VMPOOL_VM_NAME is not set}
pool_dir=${LIBVIRT_POOL_DIR:?LIBVIRT_POOL_DIR is not set}
uri=${LIBVIRT_URI:-qemu:///system}

if virsh --connect "$uri" dominfo "$name" >/dev/null 2>&1; then
  virsh --connect "$uri" destroy "$name" >/dev/null 2>&1 || true   # fails when already shut off
  virsh --connect "$uri" undefine "$name" --nvram >/dev/null 2>&1 || virsh --connect "$uri" undefine "$name"
  echo "removed domain $name"
else
  echo "domain $name is already gone"
fi
rm -f "$pool_dir/$name.qcow2"
