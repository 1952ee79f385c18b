import { test } from "node:test";
import assert from "node:assert/strict";
import { againOnConflict, restError } from "../../src/server/errors.js";

// A retry by hand and a replay meeting on one delivery deadlock (they take the webhook's row and the
// delivery's in opposite orders); Postgres rolls one back, and the service runs it again.

const conflict = (code: string) => Object.assign(new Error(`conflict ${code}`), { code });

test("a transaction Postgres rolled back for a deadlock or a serialization conflict runs again, up to three times in all", async () => {
  let runs = 0;
  assert.equal(await againOnConflict(async () => (++runs < 3 ? Promise.reject(conflict(runs === 1 ? "40P01" : "40001")) : "done")), "done");
  assert.equal(runs, 3);

  runs = 0;
  const err = await againOnConflict(async () => {
    runs++;
    throw conflict("40P01");
  }).catch((e: unknown) => e);
  assert.equal(runs, 3);
  // Still a conflict after three runs: answered 409 aborted, saying nothing was written.
  const answer = restError(err);
  assert.equal(answer.status, 409);
  assert.equal(answer.body.error.code, "aborted");
  assert.match(answer.body.error.message, /nothing was written, try again/);
});

test("any other failure is not run again", async () => {
  let runs = 0;
  await assert.rejects(
    againOnConflict(async () => {
      runs++;
      throw conflict("23505");
    }),
    /conflict 23505/,
  );
  assert.equal(runs, 1);
});
