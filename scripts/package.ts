// `npm run package`: build the Debian packages into dist/deb/ (staging in
// build/deb/, both ignored by git), then check them with lintian when it is
// installed (scripts/setup.sh tests installs it). Exits non-zero on a
// lintian error.
//
//   node dist/scripts/package.js [--out DIR] [--no-lintian]
import path from 'node:path';
import { parseArgs } from 'node:util';
import { whichProgram } from '../src/deps.js';
import { buildDebianPackages } from '../src/package/debian.js';
import { lintian } from '../src/package/lintian.js';
import { packageRoot } from '../src/paths.js';

const { values } = parseArgs({ options: { out: { type: 'string' }, 'no-lintian': { type: 'boolean' } } });
const root = packageRoot();
const outDir = path.resolve(values.out ?? path.join(root, 'dist', 'deb'));
const built = await buildDebianPackages({ outDir, workDir: path.join(root, 'build', 'deb') });

if (values['no-lintian']) process.exit(0);
if (!whichProgram(['lintian'])) {
  console.log('lintian is not installed (apt-get install lintian, or scripts/setup.sh tests): packages not checked');
  process.exit(0);
}
const report = await lintian(built.map((b) => b.file));
for (const line of report.lines) console.log(`  ${line}`);
const counts = Object.entries(report.counts)
  .map(([k, v]) => `${v} ${k}${v === 1 ? '' : 's'}`)
  .join(', ');
console.log(`lintian: ${counts || 'no tags'}${report.overridden ? ` (${report.overridden} overridden)` : ''}`);
process.exit(report.counts.error ? 1 : 0);
