import ssh2 from 'ssh2';

const { utils } = ssh2;

/**
 * An ed25519 key pair in OpenSSH format that ssh2 itself can parse again. ssh2's generator strips
 * leading zero bytes from the public key, so about 1 pair in 256 is malformed (mscdex/ssh2#1390,
 * #1513): such a pair is discarded and another generated.
 */
export function generateSshKeyPair(): { private: string; public: string } {
  for (;;) {
    const pair = utils.generateKeyPairSync('ed25519');
    if (isUsableSshKey(pair.private) && isUsableSshKey(pair.public)) return pair;
  }
}

/** Whether ssh2 parses key (a private or public key in OpenSSH format). */
export function isUsableSshKey(key: string | Buffer): boolean {
  return !(utils.parseKey(key) instanceof Error);
}
