import { pino, type Logger } from "pino";

export type { Logger };

/** pino's levels, most severe first; pino throws a bare stack on any other name. */
export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function createLogger(level: LogLevel, name: string): Logger {
  return pino({ level, name, base: { pid: process.pid } });
}
