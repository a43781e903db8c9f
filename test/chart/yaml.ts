/**
 * YAML reading for the chart tests, through the `yaml` package (the
 * maintained YAML 1.2/1.1 parser for JavaScript). Helm renders with go-yaml,
 * so documents are read with the YAML 1.1 schema; empty documents (a template
 * that rendered nothing) are dropped.
 */
import { parseAllDocuments as parseAll, parse } from 'yaml';

export type YamlValue = null | boolean | number | string | YamlValue[] | { [key: string]: YamlValue };

export function parseAllDocuments(source: string): YamlValue[] {
  return parseAll(source, { version: '1.1' })
    .map((document) => {
      if (document.errors.length > 0) throw new Error(`invalid YAML: ${document.errors[0]?.message ?? ''}`);
      return document.toJS() as YamlValue;
    })
    .filter((value) => value !== null && value !== undefined);
}

export function parseDocument(source: string): YamlValue {
  return parse(source, { version: '1.1' }) as YamlValue;
}
