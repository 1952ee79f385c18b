/**
 * Group commit: callers that arrive while a commit for the same key is running wait, and the next commit
 * takes all of them at once. Under load one transaction serves many calls; alone, a call commits at
 * once, with no timer in its way. Each caller gets back the results of its own items, in order.
 */
export class GroupCommit<I, O> {
  private readonly queues = new Map<string, { items: I[]; resolve: (out: O[]) => void; reject: (err: unknown) => void }[]>();
  private readonly running = new Set<string>();

  /**
   * A group takes whole calls while it stays within `maxItems` and, with `weigh`, within `maxWeight`
   * (e.g. bytes, so that one commit's statement stays a sane size); the first call always goes.
   */
  constructor(
    private readonly commit: (key: string, items: I[]) => Promise<O[]>,
    private readonly maxItems: number,
    private readonly weigh: (item: I) => number = () => 0,
    private readonly maxWeight = Infinity,
  ) {}

  submit(key: string, items: I[]): Promise<O[]> {
    return new Promise((resolve, reject) => {
      const queue = this.queues.get(key) ?? [];
      queue.push({ items, resolve, reject });
      this.queues.set(key, queue);
      if (!this.running.has(key)) void this.drain(key);
    });
  }

  private async drain(key: string): Promise<void> {
    this.running.add(key);
    try {
      for (;;) {
        const queue = this.queues.get(key);
        if (!queue || queue.length === 0) break;
        // Whole calls only, so a caller's batch commits together; the first always goes, however large.
        let count = 0;
        let weight = 0;
        let calls = 0;
        while (calls < queue.length) {
          const items = queue[calls]!.items;
          const callWeight = items.reduce((sum, item) => sum + this.weigh(item), 0);
          if (calls > 0 && (count + items.length > this.maxItems || weight + callWeight > this.maxWeight)) break;
          count += items.length;
          weight += callWeight;
          calls++;
        }
        const group = queue.splice(0, calls);
        try {
          const out = await this.commit(key, group.flatMap((c) => c.items));
          let offset = 0;
          for (const call of group) {
            call.resolve(out.slice(offset, offset + call.items.length));
            offset += call.items.length;
          }
        } catch (err) {
          for (const call of group) call.reject(err);
        }
      }
    } finally {
      this.queues.delete(key);
      this.running.delete(key);
    }
  }
}
