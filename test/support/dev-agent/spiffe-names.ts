/** Selectors, SPIFFE IDs and trust domain names as the development agent parses and orders them. */
import type { Selector } from '../../../src/spire/messages.js';

/** `api.SelectorsFromProto` rules (F3). */
export function isValidSelector(selector: Selector): boolean {
  return selector.type !== '' && !selector.type.includes(':') && selector.value !== '';
}

export function selectorKey(selector: Selector): string {
  // Unambiguous because a valid type never contains ':'.
  return `${selector.type}:${selector.value}`;
}

export function parseSelectorString(text: string): Selector {
  const colon = text.indexOf(':');
  const selector = { type: colon < 0 ? '' : text.slice(0, colon), value: colon < 0 ? '' : text.slice(colon + 1) };
  if (!isValidSelector(selector)) throw new Error(`selector "${text}" is not "type:value"`);
  return selector;
}

export function parseSpiffeId(id: string): { trustDomain: string; path: string } {
  const match = /^spiffe:\/\/([a-z0-9._-]+)(\/[^?#]+)$/.exec(id);
  if (!match?.[1] || !match[2]) throw new Error(`"${id}" is not a SPIFFE ID with a path`);
  return { trustDomain: match[1], path: match[2] };
}

/** `td` or `spiffe://td` → `spiffe://td`, the form the API uses (F7). */
export function trustDomainId(text: string): string {
  const name = text.startsWith('spiffe://') ? text.slice('spiffe://'.length) : text;
  if (!/^[a-z0-9._-]+$/.test(name)) throw new Error(`"${text}" is not a trust domain`);
  return `spiffe://${name}`;
}

/** Byte order like Go's sort.Strings, not locale order. */
export function compareStrings(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}
