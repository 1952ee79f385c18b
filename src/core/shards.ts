/** FNV-1a over the id: stable across processes and versions, so a webhook never changes shard. */
export function shardOf(webhookId: string, shardCount: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < webhookId.length; i++) {
    hash ^= webhookId.charCodeAt(i);
    hash = Math.imul(hash, 0x01000193) >>> 0;
  }
  return hash % shardCount;
}
