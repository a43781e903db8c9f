#!/usr/bin/env node
// Replaces dist/src/main.js, which tsc has just emitted, with one minified file
// holding the driver and its dependencies (npm run build runs this after tsc).
//
// Why: memory. Node.js keeps the source text of every module it loads, and
// zod alone loads its 64 locale modules from whichever of its entry points is
// imported; the bundle leaves out what the driver never reaches (tree-shaking)
// and the comments and whitespace of the rest. An idle driver measured ~3.5 MiB
// less RSS (README "Benchmarks"). Everything that runs the driver as a process
// (the image's ENTRYPOINT, npm start, the test harness, the benchmarks) runs
// this file; the tests that import modules directly use tsc's other files.
//
// Not bundled: koffi, which loads a prebuilt native binary from its package
// directory (the image installs it with the production dependencies).
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const outfile = path.join(root, 'dist', 'src', 'main.js');

await build({
  entryPoints: [path.join(root, 'src', 'main.ts')],
  tsconfig: path.join(root, 'tsconfig.json'),
  outfile,
  allowOverwrite: true,
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  minify: true,
  // For reading a crash's stack trace: the map sits next to the bundle and is not loaded at run time.
  sourcemap: 'external',
  external: ['koffi'],
  // The CommonJS dependencies (pino, write-file-atomic, prom-client…) expect require, and some
  // __filename/__dirname, which an ES module does not have. src/package-root.ts finds the package root from
  // import.meta.url, which is dist/src/ as before.
  banner: {
    js: [
      "import { createRequire as __bundleCreateRequire } from 'node:module';",
      "import { fileURLToPath as __bundleFileURLToPath } from 'node:url';",
      'const require = __bundleCreateRequire(import.meta.url);',
      'const __filename = __bundleFileURLToPath(import.meta.url);',
      "const __dirname = __bundleFileURLToPath(new URL('.', import.meta.url));",
    ].join('\n'),
  },
  logLevel: 'warning',
});
