// What "scrub" removes from a captured Linux root so an image can be shared and booted as a new
// machine (the per-machine state virt-sysprep removes for CC-Snapshot). Applied to a mounted
// filesystem tree — in practice a copy-on-write overlay of the node's disk (scrub/overlay.ts),
// never the disk itself. Paths are resolved inside the tree without following symlinks, so an
// absolute link such as /home -> /data/home can never lead outside it.
import { lstat, readdir, rm, truncate } from 'node:fs/promises';
import { join } from 'node:path';
import { UsageError } from '../errors.js';

export interface ScrubOperation {
  name: string;
  description: string;
  /** In the default set (`--scrub` with no list). */
  byDefault: boolean;
  apply(root: string, report: Removal): Promise<void>;
}

/** What an operation did: paths relative to the filesystem root. */
export interface Removal { removed: string[]; emptied: string[] }

const HISTORIES = ['.bash_history', '.zsh_history', '.sh_history', '.ash_history', '.python_history', '.lesshst',
  '.mysql_history', '.psql_history', '.sqlite_history', '.node_repl_history', '.wget-hsts', '.viminfo'];

export const OPERATIONS: ScrubOperation[] = [
  {
    name: 'ssh-hostkeys', byDefault: true, description: 'SSH host keys (/etc/ssh/ssh_host_*), regenerated on first boot by cloud-init or sshd-keygen',
    apply: (root, r) => removeMatching(root, 'etc/ssh', /^ssh_host_.*_key(\.pub)?$/, r),
  },
  {
    name: 'machine-id', byDefault: true, description: 'machine id: /etc/machine-id emptied (systemd makes a new one at boot), /var/lib/dbus/machine-id removed',
    apply: async (root, r) => { await emptyFile(root, 'etc/machine-id', r); await removePath(root, 'var/lib/dbus/machine-id', r); },
  },
  {
    name: 'cloud-init', byDefault: true, description: 'cloud-init instance state (/var/lib/cloud/{instance,instances,data,sem}), so it runs as on a new instance',
    apply: async (root, r) => {
      await removePath(root, 'var/lib/cloud/instance', r);
      for (const d of ['instances', 'data', 'sem']) await removeChildren(root, `var/lib/cloud/${d}`, r);
    },
  },
  {
    name: 'logs', byDefault: true, description: 'logs under /var/log: files emptied, rotated copies and journal files removed',
    apply: (root, r) => scrubLogs(root, 'var/log', r),
  },
  {
    name: 'shell-history', byDefault: true, description: 'shell and REPL histories of root and of every /home user',
    apply: async (root, r) => {
      for (const home of ['root', ...(await childNames(root, 'home')).map((u) => `home/${u}`)]) {
        for (const h of HISTORIES) await removePath(root, `${home}/${h}`, r);
      }
    },
  },
  {
    name: 'dhcp-leases', byDefault: true, description: 'DHCP leases (dhclient, dhcpcd, NetworkManager, systemd-networkd)',
    apply: async (root, r) => {
      for (const d of ['var/lib/dhcp', 'var/lib/dhclient', 'var/lib/dhcpcd', 'var/lib/NetworkManager', 'var/lib/systemd/netif/leases']) {
        await removeMatching(root, d, /(\.leases?|^dhclient.*|^internal-.*|^\d+)$/, r);
      }
    },
  },
  {
    name: 'tmp', byDefault: true, description: 'contents of /tmp and /var/tmp',
    apply: async (root, r) => { await removeChildren(root, 'tmp', r); await removeChildren(root, 'var/tmp', r); },
  },
  {
    name: 'ssh-userdir', byDefault: false, description: 'every user\'s ~/.ssh (authorized keys included: nobody can log in with the old keys)',
    apply: async (root, r) => {
      for (const home of ['root', ...(await childNames(root, 'home')).map((u) => `home/${u}`)]) await removePath(root, `${home}/.ssh`, r);
    },
  },
];

/** "default", or a comma list of operation names (with "default" meaning the default set). */
export function parseOperations(list: string | undefined): ScrubOperation[] {
  const names = (list ?? 'default').split(',').map((s) => s.trim()).filter(Boolean);
  const out = new Set<ScrubOperation>();
  for (const n of names) {
    if (n === 'default') { for (const o of OPERATIONS) if (o.byDefault) out.add(o); continue; }
    const op = OPERATIONS.find((o) => o.name === n);
    if (!op) throw new UsageError(`unknown scrub operation "${n}" (known: default, ${OPERATIONS.map((o) => o.name).join(', ')})`);
    out.add(op);
  }
  return [...out];
}

/** Does this tree look like a Linux root filesystem (the only kind scrub touches)? */
export async function looksLikeLinuxRoot(root: string): Promise<boolean> {
  return (await kindOf(root, 'etc')) === 'dir' && ((await kindOf(root, 'usr')) === 'dir' || (await kindOf(root, 'bin')) !== undefined);
}

/**
 * Applies OPS, then removes each of EXTRA (paths relative to the root, "/" allowed at the start;
 * must not climb out with ".."). Returns what was done per operation.
 */
export async function scrubTree(root: string, ops: ScrubOperation[], extra: string[] = []): Promise<Record<string, Removal>> {
  const report: Record<string, Removal> = {};
  for (const op of ops) {
    const r: Removal = { removed: [], emptied: [] };
    await op.apply(root, r);
    report[op.name] = r;
  }
  if (extra.length) {
    const r: Removal = { removed: [], emptied: [] };
    for (const p of extra) await removePath(root, checkedRelative(p), r);
    report.paths = r;
  }
  return report;
}

export function checkedRelative(p: string): string {
  const rel = p.replace(/^\/+/, '').replace(/\/+$/, '');
  if (!rel || rel.split('/').some((c) => c === '..' || c === '.')) throw new UsageError(`scrub path "${p}" must name something inside the filesystem (no "..", not "/")`);
  return rel;
}

// ------------------------------------------------------------------------------------------------
// Tree helpers: every path is relative to `root` and resolved component by component with lstat;
// a symlink anywhere on the way ends the walk (nothing is followed out of the tree).

type Kind = 'dir' | 'file' | 'link' | 'other';

async function kindOf(root: string, rel: string): Promise<Kind | undefined> {
  let path = root;
  const parts = rel.split('/').filter(Boolean);
  for (let i = 0; i < parts.length; i++) {
    path = join(path, parts[i]!);
    const st = await lstat(path).catch(() => undefined);
    if (!st) return undefined;
    if (st.isSymbolicLink()) return i === parts.length - 1 ? 'link' : undefined;
    if (i < parts.length - 1 && !st.isDirectory()) return undefined;
    if (i === parts.length - 1) return st.isDirectory() ? 'dir' : st.isFile() ? 'file' : 'other';
  }
  return 'dir';
}

async function childNames(root: string, rel: string): Promise<string[]> {
  if ((await kindOf(root, rel)) !== 'dir') return [];
  return (await readdir(join(root, rel))).sort();
}

/** Removes a file, a symlink (not its target) or a directory tree. */
async function removePath(root: string, rel: string, r: Removal): Promise<void> {
  const k = await kindOf(root, rel);
  if (!k) return;
  await rm(join(root, rel), { recursive: true, force: true });
  r.removed.push(rel);
}

async function removeChildren(root: string, rel: string, r: Removal): Promise<void> {
  for (const n of await childNames(root, rel)) await removePath(root, `${rel}/${n}`, r);
}

async function removeMatching(root: string, rel: string, re: RegExp, r: Removal): Promise<void> {
  for (const n of await childNames(root, rel)) if (re.test(n)) await removePath(root, `${rel}/${n}`, r);
}

async function emptyFile(root: string, rel: string, r: Removal): Promise<void> {
  if ((await kindOf(root, rel)) !== 'file') return;
  await truncate(join(root, rel), 0);
  r.emptied.push(rel);
}

/** Logs: regular files emptied (daemons expect them to exist), rotated copies and journals removed. */
async function scrubLogs(root: string, rel: string, r: Removal): Promise<void> {
  for (const n of await childNames(root, rel)) {
    const p = `${rel}/${n}`;
    const k = await kindOf(root, p);
    if (k === 'dir') await scrubLogs(root, p, r);
    else if (k === 'file') {
      if (/\.(\d+|gz|xz|bz2|zst|old)$|-\d{8}$|\.journal~?$/.test(n)) await removePath(root, p, r);
      else await emptyFile(root, p, r);
    }
  }
}
