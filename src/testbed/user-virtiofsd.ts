import { parseArgs } from 'node:util';
import { childLogger } from '../log.js';
import { requireProgram } from '../deps.js';
import { VirtiofsdSupervisor } from '../host/virtiofsd.js';

/**
 * Start one virtiofsd the way the host daemon does (src/host/virtiofsd.ts,
 * the same supervisor), for any folder, and leave it running: virtiofsd
 * outlives its starter on purpose. Run as the user whose virtiofsd it is.
 * Prints one JSON line: { pid, state, detail, unprivileged }, and exits 0
 * whenever it could say that much, a virtiofsd that failed to start included.
 *
 *   node user-virtiofsd.js --source DIR --socket PATH --log FILE [--cache none|auto|always] [--name NAME]
 */
async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      source: { type: 'string' },
      socket: { type: 'string' },
      log: { type: 'string' },
      cache: { type: 'string', default: 'auto' },
      name: { type: 'string', default: 'folder' },
    },
  });
  if (!values.source || !values.socket || !values.log) throw new Error('usage: user-virtiofsd --source DIR --socket PATH --log FILE [--cache MODE] [--name NAME]');
  const supervisor = new VirtiofsdSupervisor({
    vm: values.name!,
    binary: requireProgram('virtiofsd'),
    source: values.source,
    socket: values.socket,
    cache: values.cache as 'none' | 'auto' | 'always',
    logFile: values.log,
    log: childLogger({ component: 'user-virtiofsd' }),
  });
  try {
    await supervisor.start();
  } catch (err) {
    supervisor.failedToStart((err as Error).message);
  }
  console.log(JSON.stringify({ pid: supervisor.pid, state: supervisor.state, detail: supervisor.detail, unprivileged: supervisor.unprivileged }));
  supervisor.release();
  return 0;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    console.log(JSON.stringify({ state: 'failed', detail: (err as Error).message }));
    process.exit(1);
  },
);
