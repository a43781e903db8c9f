/**
 * docs/design.md invariant 1: selectors come only from kubelet's pod info and the
 * driver's own node name. k8s:pod-uid is what spire-controller-manager's
 * ClusterSPIFFEID entries carry, k8s:ns + k8s:sa what hand-made entries use;
 * an entry matches when all of its selectors are among these (renderPodEntry in
 * https://github.com/spiffe/spire-controller-manager/blob/main/pkg/spireentry/entries.go,
 * getRecordsForSelectors in
 * https://github.com/spiffe/spire/blob/v1.15.3/pkg/agent/manager/cache/lru_cache.go).
 */
import type { PodInfo } from '../volumes/pod-binding.js';
import type { Selector } from './messages.js';

export function selectorsForPod(pod: PodInfo, nodeName: string): Selector[] {
  return [
    { type: 'k8s', value: `ns:${pod.namespace}` },
    { type: 'k8s', value: `sa:${pod.serviceAccount}` },
    { type: 'k8s', value: `pod-uid:${pod.uid}` },
    { type: 'k8s', value: `pod-name:${pod.name}` },
    { type: 'k8s', value: `node-name:${nodeName}` },
  ];
}

export function formatSelectors(selectors: readonly Selector[]): string {
  return `[${selectors.map((s) => `${s.type}:${s.value}`).join(', ')}]`;
}
