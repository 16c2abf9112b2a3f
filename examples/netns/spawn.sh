#!/usr/bin/env bash
# spawn_cmd for the netns harness: makes a real host, a network namespace with its own IP on a veth
# pair, running a real OpenSSH sshd that accepts $VMPOOL_NETNS_DIR/authorized_keys.
# Prints {"name": ..., "ip": ...} as its last line. Needs root (ip netns), as in CI.
set -euo pipefail
source "$(dirname "$0")/common.sh"

# Typed errors (examples/README.md): a missing key or no root is for an operator to fix, a full
# subnet is capacity; the group's circuit breaker then stops spawning instead of churning.
[[ -f $dir/authorized_keys ]] || fail_typed invalid_request "$dir/authorized_keys is missing"
[[ $(id -u) = 0 ]] || fail_typed auth "network namespaces need root"
mkdir -p "$dir/slots" "$dir/hosts" /run/sshd

# Claim the lowest free slot: mkdir is atomic, so concurrent spawns never share one.
slot=""
for n in $(seq 1 63); do
  if mkdir "$dir/slots/$n" 2>/dev/null; then slot=$n; break; fi
done
[[ -n $slot ]] || fail_typed capacity "no free slot (63 hosts max in $net.0/24)"
slot_vars "$slot" "$prefix-$slot-$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
# terminate.sh frees the slot only for its owner: a stale name must not free a newer host's slot.
echo "$ns" >"$dir/slots/$slot/owner"
echo "spawn $VMPOOL_SPAWN_ID for group ${VMPOOL_GROUP_NAME:-?}: slot $slot, namespace $ns"

# From here on a failure leaves a named host behind: say its name first, so the provider can clean up.
printf '{"name":"%s"}\n' "$ns"

ip netns add "$ns"
ip link add "$veth_root" type veth peer name "$veth_ns"
ip link set "$veth_ns" netns "$ns"
ip addr add "$ip_root/30" dev "$veth_root"
ip link set "$veth_root" up
ip -n "$ns" addr add "$ip_ns/30" dev "$veth_ns"
ip -n "$ns" link set "$veth_ns" up
ip -n "$ns" link set lo up

rm -rf "$host_dir"
mkdir -p "$host_dir"
date +%s >"$host_dir/created_at"
# The pool's tag: list.sh reports it, and never lists another pool's hosts.
printf '%s\n' "${VMPOOL_POOL_ID:-}" >"$host_dir/pool"
ssh-keygen -q -t ed25519 -N '' -C "$ns" -f "$host_dir/ssh_host_ed25519_key"
cat >"$host_dir/sshd_config" <<CONF
ListenAddress $ip_ns
Port 22
HostKey $host_dir/ssh_host_ed25519_key
PidFile $host_dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
StrictModes no
LogLevel VERBOSE
CONF
# sshd daemonizes (its own session), so it outlives this hook's process group.
ip netns exec "$ns" "$SSHD" -f "$host_dir/sshd_config" -E "$host_dir/sshd.log"

# Wait until sshd answers inside the namespace (up to 5 s).
for _ in $(seq 50); do
  if timeout 1 bash -c "exec 3<>/dev/tcp/$ip_ns/22" 2>/dev/null; then
    printf '{"name":"%s","ip":"%s"}\n' "$ns" "$ip_ns"
    exit 0
  fi
  sleep 0.1
done
die "sshd in $ns did not answer on $ip_ns:22; log: $(tail -n 3 "$host_dir/sshd.log" 2>/dev/null | tr '\n' ' ')"
