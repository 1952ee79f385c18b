/**
 * Collects the uncaught exceptions of this process until `stop()`: a test that kills connections under
 * a running process asserts the list stays empty, as the process itself would have died of any of them.
 */
export function collectUncaught(): { errors: Error[]; stop(): Promise<void> } {
  const errors: Error[] = [];
  const onUncaught = (err: Error) => errors.push(err);
  process.on("uncaughtException", onUncaught);
  return {
    errors,
    stop: async () => {
      process.off("uncaughtException", onUncaught);
    },
  };
}
