/**
 * One volume's sync at a time per turn of the event loop.
 *
 * A trust-bundle change wakes every volume of the node at once, and a write
 * to a volume's tmpfs makes its system calls inline (fs/writer-fs.ts), so a
 * sync never waits on anything outside the event loop. Plain
 * `setImmediate` hops would not help: immediates queued in one tick all run
 * in the same check phase, each sync finishing in the microtasks after its
 * own, and I/O (a CSI call, an agent message) would wait for the last volume.
 * Here each turn's immediate is queued only when the previous turn begins,
 * so it runs in the next iteration of the loop, after the poll phase.
 */
let lastTurn: Promise<void> = Promise.resolve();

/** Resolves in a later event-loop iteration than the turn taken before it. */
export function nextEventLoopTurn(): Promise<void> {
  const turn = lastTurn.then(() => new Promise<void>((resolve) => setImmediate(resolve)));
  lastTurn = turn;
  return turn;
}
