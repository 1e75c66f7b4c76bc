// Logging: pino JSON lines on stderr for machines (journal, CI, the ramdisk console), or short
// human lines when stderr is a terminal. Never log secrets: the redact list is a safety net for
// the places that carry them (tokens, passwords, auth headers).
import { Writable } from 'node:stream';
import pino, { type Logger } from 'pino';

export const REDACT_PATHS = [
  'token', '*.token', 'password', '*.password', 'auth_token', '*.auth_token', 'agent_token', '*.agent_token',
  'headers["x-auth-token"]', '*.headers["x-auth-token"]', 'headers.authorization', '*.headers.authorization',
];

export function createLogger(opts: { human: boolean; level?: string }): Logger {
  const options = { name: 'bmsnap', level: opts.level ?? 'info', redact: { paths: REDACT_PATHS, censor: '***' } };
  if (!opts.human) return pino(options, pino.destination({ fd: 2, sync: true }));
  return pino(options, humanLines());
}

/** Renders pino records as `bmsnap: warning: message` for a terminal; info stays quiet. */
function humanLines(): Writable {
  return new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n')) {
        if (!line) continue;
        try {
          const rec = JSON.parse(line) as { level: number; msg?: string };
          if (rec.level >= 40) process.stderr.write(`\r\x1b[Kbmsnap: ${rec.level >= 50 ? 'error' : 'warning'}: ${rec.msg ?? ''}\n`);
        } catch { /* not JSON: ignore */ }
      }
      done();
    },
  });
}
