import ssh2 from 'ssh2';
import { describe, expect, it } from 'vitest';
import { generateSshKeyPair, isUsableSshKey } from '../../src/providers/sshKeyPair.js';

describe('generateSshKeyPair', () => {
  it('gives only pairs that ssh2 parses, where its own generator fails about once in 256', () => {
    // 1,500 pairs: with one malformed raw pair in 256 the loop is exercised about six times.
    for (let i = 0; i < 1_500; i++) {
      const pair = generateSshKeyPair();
      const priv = ssh2.utils.parseKey(pair.private);
      const pub = ssh2.utils.parseKey(pair.public);
      expect(priv).not.toBeInstanceOf(Error);
      expect(pub).not.toBeInstanceOf(Error);
      // The public half is the private key's.
      expect((pub as ssh2.ParsedKey).getPublicSSH().equals((priv as ssh2.ParsedKey).getPublicSSH())).toBe(true);
    }
  });

  it('tells a malformed key from a usable one', () => {
    expect(isUsableSshKey(generateSshKeyPair().private)).toBe(true);
    expect(isUsableSshKey('-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n')).toBe(false);
    expect(isUsableSshKey('ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAH/ short')).toBe(false);
  });
});
