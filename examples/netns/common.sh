# Shared by the netns hooks. Sourced, not run.
# Settings come from the environment (the provider's `env` config):
#   VMPOOL_NETNS_DIR     harness dir: authorized_keys (required), and per-host state in hosts/ and slots/
#   VMPOOL_NETNS_PREFIX  short tag for namespace and interface names, [a-z0-9]{1,8} (default vmp)
#   VMPOOL_NETNS_NET     three octets of a /24 for the hosts (default 198.18.0; 198.18.0.0/15 is
#                        reserved for network tests). Host slot n (1..63) gets a /30:
#                        .4n+1 on the root side, .4n+2 inside the namespace.

die() { echo "error: $*" >&2; exit 1; }
# A typed spawn failure (examples/README.md): the class as JSON on the last line of stdout.
fail_typed() {
  echo "error: $2" >&2
  printf '{"error":"%s","message":"%s"}\n' "$1" "$(printf '%s' "$2" | tr -d '"\\')"
  exit 1
}

dir=${VMPOOL_NETNS_DIR:?VMPOOL_NETNS_DIR is not set}
prefix=${VMPOOL_NETNS_PREFIX:-vmp}
net=${VMPOOL_NETNS_NET:-198.18.0}
[[ $prefix =~ ^[a-z0-9]{1,8}$ ]] || die "VMPOOL_NETNS_PREFIX must match [a-z0-9]{1,8}, got '$prefix'"
[[ $net =~ ^([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})$ ]] || die "VMPOOL_NETNS_NET must be three octets such as 198.18.7, got '$net'"
[[ -d $dir ]] || die "VMPOOL_NETNS_DIR $dir is not a directory"

SSHD=${SSHD:-/usr/sbin/sshd}

# Names of one host: its namespace is its VM name, `<prefix>-<slot>-<6 hex>`, unique per spawn
# (a new host in a reused slot has a new host key, so it must not share its name with the old one);
# interfaces and addresses come from the slot.
slot_vars() {
  local n=$1
  ns=$2
  veth_root="${prefix}r$n"
  veth_ns="${prefix}n$n"
  ip_root="$net.$((4 * n + 1))"
  ip_ns="$net.$((4 * n + 2))"
  host_dir="$dir/hosts/$ns"
}

# Slot number of a VM name made by spawn.sh, or nothing when the name is not ours.
slot_of() {
  local name=$1
  if [[ $name =~ ^$prefix-([0-9]{1,2})-[0-9a-f]{6}$ ]] && ((BASH_REMATCH[1] >= 1 && BASH_REMATCH[1] <= 63)); then
    echo "${BASH_REMATCH[1]}"
  fi
}
