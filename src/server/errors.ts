import { Code, ConnectError } from "@connectrpc/connect";
import { isDatabaseUnavailable } from "../store/db.js";

export const invalidArgument = (message: string) => new ConnectError(message, Code.InvalidArgument);
export const notFound = (kind: string, id: string) => new ConnectError(`${kind} ${id} not found`, Code.NotFound);
export const unauthenticated = (message: string) => new ConnectError(message, Code.Unauthenticated);
export const permissionDenied = (message: string) => new ConnectError(message, Code.PermissionDenied);
export const alreadyExists = (message: string) => new ConnectError(message, Code.AlreadyExists);
/** resource_exhausted / 429, with the wait in a retry-after header (whole seconds, rounded up). */
export function rateLimited(message: string, waitMs: number): ConnectError {
  const seconds = Math.max(1, Math.ceil(waitMs / 1000));
  return new ConnectError(`${message}; retry after ${seconds} s`, Code.ResourceExhausted, { "retry-after": String(seconds) });
}
/**
 * invalid_argument over RPC (the contract's code), 413 over REST. Told apart by a field, because
 * ConnectError's own `instanceof` answers true for every ConnectError, subclasses included.
 */
export class PayloadTooLargeError extends ConnectError {
  readonly payloadTooLarge = true;
  constructor(message: string) {
    super(message, Code.InvalidArgument);
  }
}

function isPayloadTooLarge(err: ConnectError): boolean {
  return (err as Partial<PayloadTooLargeError>).payloadTooLarge === true;
}

export const failedPrecondition = (message: string) => new ConnectError(message, Code.FailedPrecondition);
/** A write that lost a race it could not win by waiting; the caller may try again as it is. */
export const aborted = (message: string) => new ConnectError(message, Code.Aborted);

/**
 * Postgres ended the transaction to break a deadlock (SQLSTATE 40P01) or a serialization conflict
 * (40001) with another one: nothing it did was kept, and the same request may well succeed again.
 */
export function isTransactionConflict(err: unknown): boolean {
  const code = (err as { code?: unknown } | null)?.code;
  return code === "40P01" || code === "40001";
}

/**
 * Runs a transaction again (up to `attempts` times in all) when Postgres ended it to break a deadlock or
 * a serialization conflict: a retry by hand takes the webhook's row, then the delivery's, and a replay
 * its deliveries', then the webhook's, so the two meeting on one delivery deadlock.
 */
export async function againOnConflict<T>(run: () => Promise<T>, attempts = 3): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await run();
    } catch (err) {
      if (!isTransactionConflict(err) || attempt >= attempts) throw err;
    }
  }
}

/** The one mapping from Connect codes to REST statuses and error codes. */
const REST: Partial<Record<Code, { status: number; code: string }>> = {
  [Code.InvalidArgument]: { status: 400, code: "invalid_argument" },
  [Code.OutOfRange]: { status: 400, code: "out_of_range" },
  [Code.Unauthenticated]: { status: 401, code: "unauthenticated" },
  [Code.PermissionDenied]: { status: 403, code: "permission_denied" },
  [Code.NotFound]: { status: 404, code: "not_found" },
  [Code.AlreadyExists]: { status: 409, code: "already_exists" },
  [Code.Aborted]: { status: 409, code: "aborted" },
  [Code.FailedPrecondition]: { status: 409, code: "failed_precondition" },
  [Code.ResourceExhausted]: { status: 429, code: "resource_exhausted" },
  [Code.Unimplemented]: { status: 501, code: "unimplemented" },
  [Code.Unavailable]: { status: 503, code: "unavailable" },
  [Code.DeadlineExceeded]: { status: 504, code: "deadline_exceeded" },
};

/**
 * Errors as the API reports them. Postgres data exceptions (SQLSTATE class 22: text it cannot store, a
 * number out of range) mean the input was bad, whatever check missed it: invalid_argument, not internal.
 */
export function toConnectError(err: unknown): ConnectError {
  if (err instanceof ConnectError) return err;
  if (isDatabaseUnavailable(err)) {
    // A publish that ends here may still have committed (the connection can go between the commit and
    // its reply): sent again with its idempotency keys, it returns the events it made, never a second.
    return new ConnectError("the database is unavailable; try again shortly", Code.Unavailable, { "retry-after": "1" });
  }
  if (isTransactionConflict(err)) {
    return aborted("the request collided with a concurrent one and was rolled back; nothing was written, try again");
  }
  const code = (err as { code?: unknown })?.code;
  if (typeof code === "string" && code.startsWith("22")) {
    return new ConnectError(`the request holds a value the database cannot store (${(err as Error).message})`, Code.InvalidArgument);
  }
  return ConnectError.from(err);
}

export function restError(err: unknown): {
  status: number;
  body: { error: { code: string; message: string } };
  headers: Record<string, string>;
} {
  const connectErr = toConnectError(err);
  const mapped =
    isPayloadTooLarge(connectErr) ? { status: 413, code: "payload_too_large" } : (REST[connectErr.code] ?? { status: 500, code: "internal" });
  const message = mapped.status === 500 ? "internal error" : connectErr.rawMessage;
  const retryAfter = connectErr.metadata.get("retry-after");
  return { status: mapped.status, body: { error: { code: mapped.code, message } }, headers: retryAfter ? { "retry-after": retryAfter } : {} };
}
