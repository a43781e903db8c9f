/**
 * Zod Mini (zod/mini, the same package's functional API), with zod's English
 * messages: every module with a schema imports this file first.
 *
 * Why Mini: memory. Importing `zod` builds every one of its ~180 schema
 * classes with their methods at load, whatever the driver uses; Mini builds
 * only the schemas used. Measured on a minified bundle of a five-field schema:
 * +1.8 MiB of JavaScript heap and ~4.5 MiB of RSS with `zod`, +0.2 and ~0.5
 * MiB with `zod/mini` (README "Benchmarks"). Mini loads no locale by itself
 * ("Invalid input" for everything); the English one keeps zod's usual
 * messages for the checks that have no message of their own.
 *
 * Modules import `* as z from 'zod/mini'` themselves rather than a `z`
 * re-exported from here: re-exported, the namespace would be one object the
 * bundler must build whole, every locale of zod's included.
 */
import * as z from 'zod/mini';
// The English locale alone: z.locales would bring every language.
import en from 'zod/v4/locales/en.js';

z.config(en());

/**
 * A string schema whose value `convert` turns into the output, or refuses:
 * `return fail(message)`.
 */
export function convertedString<T>(convert: (value: string, fail: (message: string) => never) => T) {
  return z.pipe(
    z.string(),
    z.transform((value: string, payload) =>
      convert(value, (message) => {
        payload.issues.push({ code: 'custom', message, input: value });
        return z.NEVER;
      }),
    ),
  );
}
