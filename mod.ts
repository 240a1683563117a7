/**
 * keelson: keeps long-running services alive and honest on Deno, Bun and Node.
 *
 * - `logging.ts`: a rotating log file that follows external rotation and never clobbers a sibling's.
 * - `pidfile.ts`: PID files that recover from stale records and never let two instances run.
 * - `shutdown.ts`: shutdown forensics and an orderly shutdown that always ends.
 * - `transport.ts`: a JSON-lines stdio transport that tells a gone peer from a real bug.
 * - `sqlite_wal.ts`: WAL that never silently downgrades a shared SQLite database.
 *
 * Each module imports only `platform.ts`, so any one of them can be vendored with it alone.
 *
 * @example Everything from one import
 * ```ts
 * import { acquirePidFile, createLogger, openRotatingFile } from "./mod.ts";
 * const pid = await acquirePidFile("/tmp/example.pid");
 * const log = createLogger({ sink: openRotatingFile("/tmp/example.log") });
 * log.info("started", { pid: pid.record.pid });
 * pid.release();
 * ```
 *
 * @module
 */
export * from "./logging.ts";
export * from "./pidfile.ts";
export * from "./shutdown.ts";
export * from "./transport.ts";
export * from "./sqlite_wal.ts";
