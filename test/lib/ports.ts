// Free loopback ports for the services the tests start (several suites may share the machine).
import { createServer as createNetServer } from 'node:net';

/** True if nothing listens on 127.0.0.1:PORT and we could bind it. */
export function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createNetServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}

/** The first free port in [lo, hi]; with `taken`, skips and records the ports already handed out. */
export async function pickPortIn(lo: number, hi: number, taken?: Set<number>): Promise<number> {
  for (let p = lo; p <= hi; p++) {
    if (taken?.has(p)) continue;
    if (await portFree(p)) { taken?.add(p); return p; }
  }
  throw new Error(`no free port in ${lo}-${hi}`);
}
