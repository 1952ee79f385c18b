/** Page tokens are the last id of the previous page, opaque to clients. */
export function encodePageToken(lastId: string): string {
  return Buffer.from(lastId, "utf8").toString("base64url");
}

export function decodePageToken(token: string): string | null {
  if (token === "") return "";
  if (!/^[A-Za-z0-9_-]{1,200}$/.test(token)) return null;
  const id = Buffer.from(token, "base64url").toString("utf8");
  // Ids are `<kind>_<body>`, except the built-in tenant's, which can end a page of tenants.
  return /^(?:[a-z]{2,4}_[0-9A-Za-z]{10,40}|default)$/.test(id) ? id : null;
}

export const DEFAULT_PAGE_SIZE = 50;
export const MAX_PAGE_SIZE = 100;
