// qemu guests for the end-to-end tests: TCG (KVM here only runs PVM kernels, see
// ../shared/notes/vm.md), serial console captured to a log with host timestamps, user-mode
// networking with restrict=on — the guest reaches only the host's 127.0.0.1 services it is given
// through guestfwd (one `busybox nc` per connection) and nothing else.
import { execa, type ResultPromise } from 'execa';
import { createWriteStream, type WriteStream } from 'node:fs';
import { sleep } from './ironic-stack.js';

/** Where the guest sees the host's forwarded services. */
export const GUEST_HOST_IP = '10.0.2.100';

export interface VmOptions {
  name: string;
  serialLog: string;
  memoryMiB?: number;
  /** Direct kernel boot; without it the VM boots from its first disk (SeaBIOS). */
  kernel?: string;
  initrd?: string;
  append?: string;
  disks: { file: string; format: 'raw' | 'qcow2'; readOnly?: boolean; snapshot?: boolean }[];
  /** Host 127.0.0.1 ports the guest may reach at GUEST_HOST_IP:<same port>. */
  guestForwards?: number[];
  /** Host 127.0.0.1:port -> guest :port (Ironic calling the agent back). */
  hostForwards?: number[];
  /** No NIC at all. */
  noNetwork?: boolean;
}

interface Line { at: number; text: string }

export class Vm {
  readonly lines: Line[] = [];
  readonly started = Date.now();
  exited = false;
  private readonly proc: ResultPromise;
  private readonly log: WriteStream;
  private partial = '';

  constructor(readonly opts: VmOptions) {
    const args = ['-accel', 'tcg', '-cpu', 'max', '-m', String(opts.memoryMiB ?? 1024), '-smp', '1',
      '-nographic', '-no-reboot', '-name', opts.name, '-monitor', 'none', '-serial', 'stdio'];
    if (opts.kernel) args.push('-kernel', opts.kernel);
    if (opts.initrd) args.push('-initrd', opts.initrd);
    if (opts.append) args.push('-append', opts.append);
    for (const d of opts.disks) {
      args.push('-drive', [`file=${d.file}`, `format=${d.format}`, 'if=virtio',
        ...(d.readOnly ? ['readonly=on'] : []), ...(d.snapshot ? ['snapshot=on'] : [])].join(','));
    }
    if (opts.noNetwork) {
      args.push('-nic', 'none');
    } else {
      const fwd = [
        ...(opts.guestForwards ?? []).map((p) => `guestfwd=tcp:${GUEST_HOST_IP}:${p}-cmd:busybox nc 127.0.0.1 ${p}`),
        ...(opts.hostForwards ?? []).map((p) => `hostfwd=tcp:127.0.0.1:${p}-:${p}`),
      ];
      args.push('-netdev', ['user', 'id=n0', 'restrict=on', ...fwd].join(','), '-device', 'virtio-net-pci,netdev=n0,romfile=');
    }
    args.push('-object', 'rng-random,id=rng0,filename=/dev/urandom', '-device', 'virtio-rng-pci,rng=rng0');
    this.log = createWriteStream(opts.serialLog);
    // (secrets on the kernel command line, such as ipa-agent-token, stay out of the log)
    const shown = args.map((a) => a.replace(/((?:token|password)[^=\s]*=)\S+/gi, '$1***'));
    this.log.write(`# qemu-system-x86_64 ${shown.map((a) => (/\s/.test(a) ? JSON.stringify(a) : a)).join(' ')}\n`);
    this.proc = execa('qemu-system-x86_64', args, { reject: false, stdin: 'ignore', all: true, buffer: false, env: { NODE_OPTIONS: '' } });
    this.proc.all?.on('data', (chunk: Buffer) => this.onData(chunk));
    void this.proc.then(() => { this.exited = true; this.log.end(); });
  }

  get done(): Promise<unknown> { return this.proc; }

  private onData(chunk: Buffer): void {
    // The console carries terminal escapes (SeaBIOS, the kernel): strip them and CRs.
    const text = this.partial + chunk.toString('latin1').replace(/\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|\x1bc|\r/g, '');
    const parts = text.split('\n');
    this.partial = parts.pop()!;
    const at = Date.now();
    for (const p of parts) {
      this.lines.push({ at, text: p });
      this.log.write(`[${((at - this.started) / 1000).toFixed(1).padStart(6)}] ${p}\n`);
    }
  }

  /** The first console line matching RE (seen so far or within timeoutS), with seconds since start. */
  async waitLine(re: RegExp, timeoutS: number): Promise<{ text: string; seconds: number; match: RegExpExecArray }> {
    const deadline = Date.now() + timeoutS * 1000;
    for (let from = 0; ;) {
      for (; from < this.lines.length; from++) {
        const l = this.lines[from]!;
        const m = re.exec(l.text);
        if (m) return { text: l.text, seconds: (l.at - this.started) / 1000, match: m };
      }
      if (this.exited) throw new Error(`${this.opts.name} exited before printing ${re} (see ${this.opts.serialLog})`);
      if (Date.now() > deadline) throw new Error(`${this.opts.name}: no ${re} on the console after ${timeoutS}s (see ${this.opts.serialLog})`);
      await sleep(200);
    }
  }

  kill(signal: NodeJS.Signals = 'SIGTERM'): void { if (!this.exited) this.proc.kill(signal); }

  async stop(): Promise<void> {
    this.kill('SIGTERM');
    await this.proc.catch(() => undefined);
  }
}
