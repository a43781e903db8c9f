// ESLint with typescript-eslint's type-aware rules over everything tsconfig.json compiles. Formatting is
// Prettier's job (`npm run format`), so there are no stylistic rules here.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'e2e/cluster/spire/', 'e2e/envoy-check/'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // node:test's describe/it/test return promises that the runner itself awaits; its documented usage
      // never awaits them, so they are the one known-safe exception.
      '@typescript-eslint/no-floating-promises': [
        'error',
        {
          allowForKnownSafeCalls: [
            { from: 'package', package: 'node:test', name: ['describe', 'it', 'test', 'suite', 'before', 'after', 'beforeEach', 'afterEach'] },
          ],
        },
      ],
      '@typescript-eslint/no-misused-promises': 'error',
      '@typescript-eslint/switch-exhaustiveness-check': 'error',
      // Off: gRPC handlers and the in-memory fakes of async interfaces are `async` without awaiting
      // anything on purpose — it is the plainest way to honour a Promise-returning contract, and it turns a
      // synchronous throw into a rejection the caller handles.
      '@typescript-eslint/require-await': 'off',
    },
  },
  {
    // Plain JavaScript outside the TypeScript project (this file, the workload image's script): no type information.
    files: ['**/*.js', '**/*.mjs'],
    extends: [tseslint.configs.disableTypeChecked],
    languageOptions: { globals: { process: 'readonly', console: 'readonly', Buffer: 'readonly', setTimeout: 'readonly' } },
  },
);
