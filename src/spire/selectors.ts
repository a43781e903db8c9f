/**
 * DESIGN.md invariant 1: selectors come only from kubelet's pod info and the
 * driver's own node name. k8s:pod-uid is what spire-controller-manager's
 * ClusterSPIFFEID entries carry, k8s:ns + k8s:sa what hand-made entries use;
 * an entry matches when all of its selectors are among these
 * (reference/delegated-clients.md §0).
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
