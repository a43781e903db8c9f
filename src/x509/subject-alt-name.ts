/**
 * Parses Node's `X509Certificate.subjectAltName` text ("URI:spiffe://a/b, DNS:x").
 * Since the 2021 SAN-escaping fix (CVE-2021-44532) Node prints a value that
 * contains a comma, quote or other special character as a JSON string
 * (`URI:"spiffe://a/b,c"`), so a naive split on ", " could be fooled into
 * seeing two SANs where there is one. This parser honours those quotes.
 */
export interface SubjectAltNameEntry {
  type: string;
  value: string;
}

export function parseSubjectAltName(text: string | undefined): SubjectAltNameEntry[] {
  if (!text) return [];
  const entries: SubjectAltNameEntry[] = [];
  let index = 0;
  while (index < text.length) {
    const colon = text.indexOf(':', index);
    if (colon < 0) throw new Error(`unparseable subjectAltName near "${text.slice(index)}"`);
    const type = text.slice(index, colon);
    let value: string;
    let next: number;
    if (text[colon + 1] === '"') {
      // JSON string: find the closing quote that is not escaped.
      let end = colon + 2;
      while (end < text.length && text[end] !== '"') end += text[end] === '\\' ? 2 : 1;
      value = JSON.parse(text.slice(colon + 1, end + 1)) as string;
      next = end + 1;
    } else {
      const comma = text.indexOf(', ', colon + 1);
      next = comma < 0 ? text.length : comma;
      value = text.slice(colon + 1, next);
    }
    entries.push({ type, value });
    if (next < text.length) {
      if (text.slice(next, next + 2) !== ', ') throw new Error(`unparseable subjectAltName near "${text.slice(next)}"`);
      next += 2;
    }
    index = next;
  }
  return entries;
}
