import { DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, decodePageToken, encodePageToken } from "../core/page-token.js";
import { invalidArgument } from "./errors.js";

export interface Page {
  afterId: string;
  /** One more than the page size: the extra row tells whether another page exists. */
  limit: number;
  size: number;
}

export function readPage(req: { pageSize: number; pageToken: string }): Page {
  if (req.pageSize < 0 || req.pageSize > MAX_PAGE_SIZE) {
    throw invalidArgument(`page_size must be between 1 and ${MAX_PAGE_SIZE} (got ${req.pageSize})`);
  }
  const afterId = decodePageToken(req.pageToken);
  if (afterId === null) throw invalidArgument("page_token is not a token this server issued");
  const size = req.pageSize || DEFAULT_PAGE_SIZE;
  return { afterId, limit: size + 1, size };
}

export function pageOf<T extends { id: string }>(rows: T[], page: Page): { items: T[]; nextPageToken: string } {
  const items = rows.slice(0, page.size);
  const last = items.at(-1);
  return { items, nextPageToken: rows.length > page.size && last ? encodePageToken(last.id) : "" };
}
