#!/usr/bin/env bash
# spawn_cmd for libvirt (NOT run in CI: needs a KVM host with libvirt and a base image).
# Creates a VM from a copy-on-write overlay of a base image and prints its name and address.
# The domain's description carries the pool's tag (vmpool_pool=$VMPOOL_POOL_ID), which list.sh reports.
# Settings (provider `env`): LIBVIRT_BASE_IMAGE (qcow2 with cloud-init or your SSH key baked in),
# LIBVIRT_POOL_DIR (where overlays go), optional LIBVIRT_NETWORK (default "default"),
# LIBVIRT_MEMORY (MiB, default 4096), LIBVIRT_VCPUS (default 2), LIBVIRT_URI (default qemu:///system).
set -euo pipefail
# Typed errors by exit code (examples/README.md): 64 invalid_request (a setting an operator must
# fix), 81 capacity (the host is out of memory or disk), 75 transient (try again).
[[ -n ${LIBVIRT_BASE_IMAGE:-} && -f $LIBVIRT_BASE_IMAGE ]] || { echo "LIBVIRT_BASE_IMAGE is not set or missing" >&2; exit 64; }
[[ -n ${LIBVIRT_POOL_DIR:-} && -d $LIBVIRT_POOL_DIR ]] || { echo "LIBVIRT_POOL_DIR is not set or missing" >&2; exit 64; }
base=$LIBVIRT_BASE_IMAGE
pool_dir=$LIBVIRT_POOL_DIR
network=${LIBVIRT_NETWORK:-default}
uri=${LIBVIRT_URI:-qemu:///system}

# The name is derived from the spawn id, so it is unique and matches vmpool's name pattern.
name="vmpool-${VMPOOL_GROUP_NAME//[^A-Za-z0-9]/-}-${VMPOOL_SPAWN_ID: -12}"
name=${name:0:63}
disk="$pool_dir/$name.qcow2"

# Say the name before creating anything, so a failure below gets terminate_cmd for it.
printf '{"name":"%s"}\n' "$name"

qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$disk" || exit 81
if ! out=$(virt-install --connect "$uri" --name "$name" --memory "${LIBVIRT_MEMORY:-4096}" --vcpus "${LIBVIRT_VCPUS:-2}" \
  --disk "path=$disk,format=qcow2" --import --os-variant detect=on,require=off \
  --network "network=$network" --graphics none --noautoconsole \
  --metadata description="vmpool_pool=${VMPOOL_POOL_ID:-}" 2>&1); then
  echo "$out" >&2
  case "$out" in
    *"Cannot allocate memory"* | *"No space left"* | *"insufficient"*) exit 81 ;;
    *) exit 75 ;;
  esac
fi

# Wait for a DHCP lease (up to 3 minutes; spawn_timeout should be longer).
for _ in $(seq 180); do
  ip=$(virsh --connect "$uri" domifaddr "$name" --source lease 2>/dev/null | awk '/ipv4/ {split($4, a, "/"); print a[1]; exit}')
  if [[ -n $ip ]]; then
    printf '{"name":"%s","ip":"%s"}\n' "$name" "$ip"
    exit 0
  fi
  sleep 1
done
echo "no address for $name after 180 s" >&2
exit 75
