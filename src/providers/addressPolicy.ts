import { BlockList, isIP } from 'node:net';

/**
 * Where a spawned VM's address may be. A group's `allowed_networks` (CIDRs) says it outright.
 * Without it, addresses no build VM can have are refused: unspecified, broadcast, multicast,
 * link-local (which holds the clouds' metadata service, 169.254.169.254) and loopback; the local
 * provider, whose VMs live on 127.x addresses, may use loopback.
 */

/** `a.b.c.d/n` or `v6::/n`; the error names what is wrong. */
export function parseCidr(cidr: string): { address: string; prefix: number; family: 'ipv4' | 'ipv6' } {
  const m = /^([^/]+)\/(\d{1,3})$/.exec(cidr);
  const version = m ? isIP(m[1]!) : 0;
  if (!m || version === 0 || m[1]!.includes('%')) throw new Error(`not a CIDR (address/prefix): ${JSON.stringify(cidr)}`);
  const prefix = Number(m[2]);
  if (prefix > (version === 4 ? 32 : 128)) throw new Error(`prefix /${prefix} is too long for ${m[1]}`);
  return { address: m[1]!, prefix, family: version === 4 ? 'ipv4' : 'ipv6' };
}

function blockList(cidrs: readonly string[]): BlockList {
  const list = new BlockList();
  for (const c of cidrs) {
    const { address, prefix, family } = parseCidr(c);
    list.addSubnet(address, prefix, family);
  }
  return list;
}

const NEVER = blockList(['0.0.0.0/32', '::/128', '255.255.255.255/32', '224.0.0.0/4', 'ff00::/8', '169.254.0.0/16', 'fe80::/10']);
const LOOPBACK = blockList(['127.0.0.0/8', '::1/128']);

/** IPv4-mapped IPv6 (`::ffff:1.2.3.4`) is checked as the IPv4 address it carries. */
function normalized(ip: string): { address: string; family: 'ipv4' | 'ipv6' } | null {
  if (ip.includes('%')) return null;
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(ip);
  const address = mapped ? mapped[1]! : ip;
  const version = isIP(address);
  if (version === 0) return null;
  return { address, family: version === 4 ? 'ipv4' : 'ipv6' };
}

export interface AddressPolicy {
  /** Why the address may not be a VM's, or null when it may. */
  refusal(ip: string): string | null;
}

export function addressPolicy(options: { allowedNetworks?: readonly string[]; allowLoopback: boolean }): AddressPolicy {
  const allowed = options.allowedNetworks ? blockList(options.allowedNetworks) : null;
  return {
    refusal(ip) {
      const a = normalized(ip);
      if (!a) return `${JSON.stringify(ip)} is not a plain IP address (no zone ids)`;
      if (allowed) {
        return allowed.check(a.address, a.family) ? null : `${ip} is outside the group's allowed_networks (${options.allowedNetworks!.join(', ')})`;
      }
      if (NEVER.check(a.address, a.family)) return `${ip} is an unspecified, broadcast, multicast or link-local address, which no VM can have`;
      if (!options.allowLoopback && LOOPBACK.check(a.address, a.family)) return `${ip} is a loopback address; set allowed_networks if the group's VMs really live there`;
      return null;
    },
  };
}
