/**
 * A log file that many processes can share and rotate without losing, splitting or clobbering it.
 * A plain rotating handler keeps its descriptor on the old inode: after a sibling or `logrotate` renames
 * `app.log`, it writes into `app.log.1` forever, and its later size-based rollover renames the fresh file
 * a sibling just created.
 *
 * The protocol: every record is one `write(2)` on an `O_APPEND` descriptor (records never tear). Before
 * a write (every record by default) the `(dev, ino)` of the open file is compared with one `stat` of the
 * path, which also gives the live size; a different or missing file is reopened. A rollover takes the
 * lock file `<path>.lock` (published with `link(2)`, holding pid and start time, recovered when its
 * holder is dead or it is stale) and checks again under it: a file someone else already rotated is
 * reopened, never renamed.
 *
 * @module
 */

import {
  chmod,
  closeFd,
  createExclusive,
  errorCode,
  fchmod,
  fstat,
  getPid,
  gzipFile,
  isAlive,
  link,
  onExit,
  openAppend,
  processStartTime,
  readDir,
  readProcStat,
  readTextFileOrNull,
  rename,
  setUnrefTimeout,
  sleepSync,
  stat,
  statIdentity,
  statOrNull,
  tempPathBeside,
  unlinkIfExists,
  writeAll,
  writeFileAtomic,
  writeOnce,
  writeTextFile,
} from "./platform.ts";
import type { FileIdentity } from "./platform.ts";

// ---------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------

/**
 * Default of {@linkcode RotatingFileOptions.maxBytes}: 10 MiB.
 *
 * @example Twice the default size
 * ```ts
 * import { DEFAULT_MAX_BYTES, openRotatingFile } from "./logging.ts";
 * openRotatingFile("/tmp/example-app.log", { maxBytes: 2 * DEFAULT_MAX_BYTES }).close();
 * ```
 */
export const DEFAULT_MAX_BYTES: number = 10 * 1024 * 1024;

/**
 * Default of {@linkcode RotatingFileOptions.backups}.
 *
 * @example Keep more backups than the default
 * ```ts
 * import { DEFAULT_BACKUPS, openRotatingFile } from "./logging.ts";
 * openRotatingFile("/tmp/example-app.log", { backups: DEFAULT_BACKUPS + 5 }).close();
 * ```
 */
export const DEFAULT_BACKUPS: number = 5;

/**
 * Default of {@linkcode RotatingFileOptions.checkEvery}: check before every record.
 *
 * @example Check less often for speed
 * ```ts
 * import { DEFAULT_CHECK_EVERY, openRotatingFile } from "./logging.ts";
 * openRotatingFile("/tmp/example-app.log", { checkEvery: DEFAULT_CHECK_EVERY * 16 }).close();
 * ```
 */
export const DEFAULT_CHECK_EVERY: number = 1;

/**
 * Default of {@linkcode RotatingFileOptions.lockTimeoutMs}.
 *
 * @example Wait longer for a slow sibling's rollover
 * ```ts
 * import { DEFAULT_LOCK_TIMEOUT_MS, openRotatingFile } from "./logging.ts";
 * openRotatingFile("/tmp/example-app.log", { lockTimeoutMs: DEFAULT_LOCK_TIMEOUT_MS * 2 }).close();
 * ```
 */
export const DEFAULT_LOCK_TIMEOUT_MS: number = 5_000;

/**
 * Default of {@linkcode RotatingFileOptions.lockStaleMs}.
 *
 * @example
 * ```ts
 * import { DEFAULT_LOCK_STALE_MS } from "./logging.ts";
 * console.log(`a rollover lock older than ${DEFAULT_LOCK_STALE_MS} ms is taken over`);
 * ```
 */
export const DEFAULT_LOCK_STALE_MS: number = 10_000;

/**
 * Options for {@linkcode openRotatingFile}.
 *
 * @example A private log rotated at 1 MiB, checked every 16 records
 * ```ts
 * import { openRotatingFile, type RotatingFileOptions } from "./logging.ts";
 * const options: RotatingFileOptions = { maxBytes: 1 << 20, backups: 3, mode: 0o600, checkEvery: 16 };
 * openRotatingFile("/tmp/example-app.log", options).close();
 * ```
 */
export interface RotatingFileOptions {
  /**
   * Roll over before the live file would grow past this many bytes, judged from the file's real size
   * (shared by every process writing it). A record larger than this still goes, alone, into a fresh
   * file. `0` never rolls over.
   * @default 10485760 (10 MiB, {@linkcode DEFAULT_MAX_BYTES})
   */
  maxBytes?: number;
  /**
   * Keep `path.1` (newest) … `path.N` (oldest); a rollover removes the oldest. `0` keeps no backup: a
   * rollover discards the full file.
   * @default 5 ({@linkcode DEFAULT_BACKUPS})
   */
  backups?: number;
  /**
   * Permission bits (e.g. `0o640`) for every file the handle creates, rolls over to or reopens, applied
   * with `fchmod` so the umask cannot change them.
   * @default undefined (new files get 0o666 narrowed by the umask; existing bits are kept)
   */
  mode?: number;
  /**
   * Records between two external-rotation checks. With 1 no record written after a rename lands in
   * the backup; with N up to N-1 may, for fewer `stat` calls. The first write of a handle always checks.
   * @default 1 ({@linkcode DEFAULT_CHECK_EVERY})
   */
  checkEvery?: number;
  /**
   * Receives every failure: `write`, `rotate`, `reopen` and `close` never throw. Usually a
   * {@linkcode RotatingFileError}. It may write to the same file; a failure while it runs is not
   * reported again (no loop).
   * @default one line on stderr, at most one every 5 seconds (with a count of the lines held back)
   */
  onError?: (error: unknown) => void;
  /**
   * How long a rollover waits for the lock held by a live sibling before it gives up (reported to
   * `onError`; the record still goes into the current file, and the rollover is tried again later).
   * @default 5000 ({@linkcode DEFAULT_LOCK_TIMEOUT_MS})
   */
  lockTimeoutMs?: number;
  /**
   * A lock file older than this is taken over even when its holder seems alive (a holder stopped or
   * frozen mid-rollover, a pid reused in another namespace). A rollover takes milliseconds.
   * @default 10000 ({@linkcode DEFAULT_LOCK_STALE_MS})
   */
  lockStaleMs?: number;
  /**
   * Also roll over at each period boundary: `"hourly"`, `"daily"`, `"weekly"` (weeks start on Monday),
   * or a period in milliseconds (at least 1000, aligned to the Unix epoch). Every process computes the
   * same boundaries and exactly one of them rolls the file over per boundary. Backups are then named
   * after the period they cover and sort chronologically: `app.log.2026-12-03` (daily, weekly: the
   * first day), `app.log.2026-12-03T14` (hourly), `app.log.2026-12-03T14-05-07` (milliseconds). Size
   * rollovers inside one period add `.1`, `.2`, … in order (`app.log.2026-12-03`, then
   * `app.log.2026-12-03.1`). The live file's period is kept in `<path>.period`. An empty file is never
   * rolled over.
   * @default undefined (no time rollover)
   */
  interval?: "hourly" | "daily" | "weekly" | number;
  /**
   * Compute `interval` boundaries and backup names in UTC instead of local time.
   * @default false
   */
  utc?: boolean;
  /**
   * At each rollover, also remove backups last modified more than this many milliseconds ago
   * (`backups` still bounds their count).
   * @default undefined (no age limit)
   */
  maxAgeMs?: number;
  /**
   * Compress backups with gzip into `<backup>.gz`, after the rollover and off the write path (never
   * inside `write()`). The `.gz` is written under a temporary name and renamed into place once
   * complete; the plain backup is removed only after that. Exactly one process compresses a given
   * backup; a backup left plain by a process killed mid-compression is compressed by a later rollover.
   * @default undefined (backups stay plain)
   */
  compress?: "gzip";
  /**
   * Gather records in memory and write them with one `write(2)` per batch of at most this many bytes
   * (whole records; a record larger than this goes alone). The path is checked before every batch, so
   * no record lands in a backup after an external rename. Buffered records are written by `flush()`,
   * `close()`, after `flushMs`, when the batch is full, and at process exit (normal end or `exit()`).
   * A `SIGKILL`, a crash, or a signal whose default action ends the process (no handler) loses what is
   * buffered: at most `bufferBytes` bytes, written in the last `flushMs` milliseconds.
   * @default 0 (one `write(2)` per record, nothing held in memory)
   */
  bufferBytes?: number;
  /**
   * With `bufferBytes`: the longest a record waits in memory before it is written.
   * @default 100
   */
  flushMs?: number;
}

/**
 * What a {@linkcode RotatingFile} was doing when it failed.
 *
 * @example Tell failed rollovers from lost writes
 * ```ts
 * import { openRotatingFile, RotatingFileError, type RotatingFileOperation } from "./logging.ts";
 * const failures: RotatingFileOperation[] = [];
 * const log = openRotatingFile("/dev/full", {
 *   onError: (error) => error instanceof RotatingFileError && failures.push(error.operation),
 * });
 * log.write("x");
 * console.log(failures); // ["write"]
 * ```
 */
export type RotatingFileOperation = "open" | "check" | "write" | "rollover" | "close";

/**
 * A failure of a {@linkcode RotatingFile}, handed to `onError`. It tells whether the record at hand was
 * dropped (`lost`) or still written to the current descriptor.
 *
 * @example Count dropped records
 * ```ts
 * import { openRotatingFile, RotatingFileError } from "./logging.ts";
 * let dropped = 0;
 * const log = openRotatingFile("/nonexistent-dir/app.log", {
 *   onError: (error) => {
 *     if (error instanceof RotatingFileError && error.lost) dropped++;
 *   },
 * });
 * log.write("hello");
 * console.log(dropped); // 1
 * ```
 */
export class RotatingFileError extends Error {
  /** The log file's path. */
  readonly path: string;
  /** What failed. */
  readonly operation: RotatingFileOperation;
  /** The errno name of the cause (`"ENOSPC"`, `"EACCES"`, …), when it has one. */
  readonly code: string | undefined;
  /** `true` when the record being written was dropped; `false` when it still reached a descriptor. */
  readonly lost: boolean;

  /**
   * @param path The log file's path.
   * @param operation What failed.
   * @param message What could not be done.
   * @param options `cause`: the original error; `lost`: whether a record was dropped.
   */
  constructor(
    path: string,
    operation: RotatingFileOperation,
    message: string,
    options: { cause?: unknown; lost?: boolean } = {},
  ) {
    super(message, { cause: options.cause });
    this.name = "RotatingFileError";
    this.path = path;
    this.operation = operation;
    this.code = errorCode(options.cause);
    this.lost = options.lost ?? false;
  }
}

/**
 * A log file opened by {@linkcode openRotatingFile}. Also a valid pino-style destination: anything
 * with `write(string)`.
 *
 * @example Roll over at midnight, reopen on SIGHUP
 * ```ts ignore
 * import { openRotatingFile, type RotatingFile } from "./logging.ts";
 * import { onSignal } from "./platform.ts";
 * const log: RotatingFile = openRotatingFile("/var/log/app/app.log", { maxBytes: 0 });
 * onSignal("SIGHUP", () => log.reopen());
 * setInterval(() => new Date().getHours() === 0 && log.rotate(), 3_600_000);
 * ```
 */
export interface RotatingFile {
  /** The live file's path. */
  readonly path: string;
  /** `true` once {@linkcode RotatingFile.close} was called. */
  readonly closed: boolean;
  /**
   * Appends one record with one `write(2)` on an `O_APPEND` descriptor, adding `"\n"` when missing.
   * Synchronous; never throws (failures go to `onError`).
   */
  write(record: string | Uint8Array): void;
  /**
   * Rolls over now under the lock. If the file this handle writes was already rotated by someone else,
   * adopts the new live file instead of rotating again.
   */
  rotate(): void;
  /** Reopens the path now (SIGHUP-style), creating it when gone. */
  reopen(): void;
  /** Writes what `bufferBytes` holds now (one `write(2)`); nothing to do without a buffer. */
  flush(): void;
  /** Closes the descriptor. Idempotent; later writes go to `onError`. */
  close(): void;
  /** Same as {@linkcode RotatingFile.close}, so `using log = openRotatingFile(…)` works. */
  [Symbol.dispose](): void;
}

/**
 * The levels of a {@linkcode Logger}, lowest first.
 *
 * @example Pick the level from the environment
 * ```ts
 * import { createLogger, LOG_LEVELS, type LogLevel } from "./logging.ts";
 * import { getEnv } from "./platform.ts";
 * const wanted = getEnv("LOG_LEVEL") ?? "info";
 * const level: LogLevel = (LOG_LEVELS as readonly string[]).includes(wanted) ? wanted as LogLevel : "info";
 * createLogger({ sink: { write: (line) => console.log(line.trimEnd()) }, level });
 * ```
 */
export type LogLevel = "debug" | "info" | "warn" | "error";

/**
 * The levels in order, lowest first.
 *
 * @example
 * ```ts
 * import { LOG_LEVELS } from "./logging.ts";
 * console.log(LOG_LEVELS.indexOf("warn") > LOG_LEVELS.indexOf("info")); // true
 * ```
 */
export const LOG_LEVELS: readonly LogLevel[] = Object.freeze(["debug", "info", "warn", "error"]);

/**
 * Default of {@linkcode LoggerOptions.level}.
 *
 * @example
 * ```ts
 * import { createLogger, DEFAULT_LOG_LEVEL } from "./logging.ts";
 * console.log(createLogger({ sink: { write() {} } }).level === DEFAULT_LOG_LEVEL); // true
 * ```
 */
export const DEFAULT_LOG_LEVEL: LogLevel = "info";

/**
 * Where a {@linkcode Logger} writes its lines: a {@linkcode RotatingFile}, a stream, anything.
 *
 * @example Collect lines in memory
 * ```ts
 * import { createLogger, type LogSink } from "./logging.ts";
 * const lines: string[] = [];
 * const sink: LogSink = { write: (line) => lines.push(line) };
 * createLogger({ sink }).info("hello");
 * console.log(JSON.parse(lines[0]).msg); // "hello"
 * ```
 */
export interface LogSink {
  /** Receives one complete JSON line, ending in `"\n"`. */
  write(line: string): unknown;
}

/**
 * Options for {@linkcode createLogger}.
 *
 * @example
 * ```ts
 * import { createLogger, type LoggerOptions, openRotatingFile } from "./logging.ts";
 * const options: LoggerOptions = { sink: openRotatingFile("/tmp/example-app.log"), level: "debug" };
 * createLogger(options).debug("verbose");
 * ```
 */
export interface LoggerOptions {
  /** Receives one JSON line per record. */
  sink: LogSink;
  /**
   * Records below this level are dropped.
   * @default "info" ({@linkcode DEFAULT_LOG_LEVEL})
   */
  level?: LogLevel;
  /**
   * Fields added to every record (copied now: later changes to the object are not seen).
   * @default {} (none)
   */
  fields?: Record<string, unknown>;
  /**
   * Receives a failure of the sink; a log call never throws. It may log again; a failure while it
   * runs is not reported again (no loop).
   * @default one line on stderr, at most one every 5 seconds
   */
  onError?: (error: unknown) => void;
}

/**
 * Fields of one record: any values; errors, cycles and BigInt are made JSON-safe.
 *
 * @example
 * ```ts
 * import { createLogger, type LogFields } from "./logging.ts";
 * const fields: LogFields = { userId: 42n, err: new Error("denied") };
 * createLogger({ sink: { write: (line) => console.log(line.trimEnd()) } }).warn("login failed", fields);
 * ```
 */
export type LogFields = Record<string, unknown>;

/**
 * A structured logger writing one JSON line per record: `{"ts","level","msg",...fields}`.
 * Errors become `{name, message, stack, cause}`; circular references and BigInt never throw.
 *
 * @example A child logger per request
 * ```ts
 * import { createLogger, type Logger } from "./logging.ts";
 * const root: Logger = createLogger({ sink: { write: (line) => console.log(line.trimEnd()) } });
 * const request = root.child({ requestId: "r-7" });
 * request.info("handled", { ms: 12 }); // {"ts":"…","level":"info","msg":"handled","requestId":"r-7","ms":12}
 * ```
 */
export interface Logger {
  /** The lowest level written. */
  readonly level: LogLevel;
  /** Writes a `debug` record. */
  debug(msg: string, fields?: LogFields): void;
  /** Writes an `info` record. */
  info(msg: string, fields?: LogFields): void;
  /** Writes a `warn` record. */
  warn(msg: string, fields?: LogFields): void;
  /** Writes an `error` record. */
  error(msg: string, fields?: LogFields): void;
  /** A logger writing to the same sink with these fields added to (and overriding) this one's. */
  child(fields: LogFields): Logger;
  /** Whether records of `level` are written. */
  isLevelEnabled(level: LogLevel): boolean;
}

// ---------------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------------

/**
 * Opens a log file that survives external rotation and rolls over safely with many processes writing
 * it. Only bad options throw (`TypeError`, `RangeError`); a path that cannot be opened now is reported
 * to `onError` and retried on each write.
 *
 * With logrotate, `nocreate` fits best: the writers recreate the file at once, with `mode`. `create`
 * works too, but a writer may recreate the path between logrotate's rename and its create; logrotate
 * then renames that file to `<path>-YYYYMMDDHH.backup` (nothing is lost) and exits non-zero.
 * `copytruncate` also works (no NUL hole here), but logrotate itself loses what is written between its
 * copy and its truncate.
 *
 * @param path The live log file.
 * @param options Size limit, backups, mode, check period, error callback.
 * @returns The open file.
 *
 * @example Append records, rotated at 1 MiB with 3 backups
 * ```ts
 * import { openRotatingFile } from "./logging.ts";
 * using log = openRotatingFile("/tmp/example-app.log", { maxBytes: 1 << 20, backups: 3, mode: 0o640 });
 * log.write("service started");
 * log.write(JSON.stringify({ event: "ready", port: 8080 }) + "\n");
 * ```
 *
 * @example Reopen on SIGHUP, for a logrotate `postrotate` that signals
 * ```ts ignore
 * import { openRotatingFile } from "./logging.ts";
 * import { onSignal } from "./platform.ts";
 * const log = openRotatingFile("/var/log/app/app.log");
 * onSignal("SIGHUP", () => log.reopen());
 * ```
 *
 * @example As a pino destination (anything with `write(string)`)
 * ```ts ignore
 * import pino from "pino";
 * import { openRotatingFile } from "./logging.ts";
 * const logger = pino(openRotatingFile("/tmp/example-app.log"));
 * logger.info("hello");
 * ```
 */
export function openRotatingFile(path: string, options: RotatingFileOptions = {}): RotatingFile {
  if (typeof path !== "string" || path === "") {
    throw new TypeError(`Cannot open log file ${safeQuote(path)}: path must be a non-empty string`);
  }
  if (typeof options !== "object" || options === null) {
    throw new TypeError(
      `Cannot open log file "${path}": options must be an object, got ${safeQuote(options)}`,
    );
  }
  const settings: Settings = {
    maxBytes: checkInteger("maxBytes", options.maxBytes, DEFAULT_MAX_BYTES, 0),
    backups: checkInteger("backups", options.backups, DEFAULT_BACKUPS, 0),
    mode: checkMode(options.mode),
    checkEvery: checkInteger("checkEvery", options.checkEvery, DEFAULT_CHECK_EVERY, 1),
    onError: checkCallback(options.onError) ?? createStderrReporter(),
    lockTimeoutMs: checkInteger("lockTimeoutMs", options.lockTimeoutMs, DEFAULT_LOCK_TIMEOUT_MS, 0),
    lockStaleMs: checkInteger("lockStaleMs", options.lockStaleMs, DEFAULT_LOCK_STALE_MS, 1),
    ...checkSecondEdition(options),
  };
  return new RotatingFileHandle(path, settings);
}

/**
 * Creates a structured logger that writes one JSON line per record to `sink`.
 *
 * @param options The sink, the lowest level written, base fields, error callback.
 * @returns The logger.
 *
 * @example Log to a rotating file
 * ```ts
 * import { createLogger, openRotatingFile } from "./logging.ts";
 * const log = createLogger({ sink: openRotatingFile("/tmp/example-app.log"), fields: { app: "gateway" } });
 * log.info("listening", { port: 8080 });
 * const request = log.child({ requestId: "r-1" });
 * request.error("failed", { err: new Error("boom", { cause: new Error("disk") }) });
 * ```
 */
export function createLogger(options: LoggerOptions): Logger {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`Cannot create logger: options must be an object, got ${safeQuote(options)}`);
  }
  const { sink } = options;
  if (typeof sink !== "object" || sink === null || typeof sink.write !== "function") {
    throw new TypeError(`Cannot create logger: option "sink" must have a write(line) method`);
  }
  const level = options.level ?? DEFAULT_LOG_LEVEL;
  if (!LOG_LEVELS.includes(level)) {
    throw new TypeError(
      `Cannot create logger: option "level" must be one of ${LOG_LEVELS.join(", ")}, got ${safeQuote(level)}`,
    );
  }
  const fields = options.fields ?? {};
  if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
    throw new TypeError(`Cannot create logger: option "fields" must be an object, got ${safeQuote(fields)}`);
  }
  const onError = checkCallback(options.onError) ?? createStderrReporter();
  return new JsonLogger(sink, level, toPlainFields(fields), { onError, reporting: false });
}

// ---------------------------------------------------------------------------------------------------
// Private: the rotating file
// ---------------------------------------------------------------------------------------------------

interface Settings {
  maxBytes: number;
  backups: number;
  mode: number | undefined;
  checkEvery: number;
  onError: (error: unknown) => void;
  lockTimeoutMs: number;
  lockStaleMs: number;
  /** `null`: no time rollover. */
  interval: Interval | null;
  utc: boolean;
  /** 0: no age limit. */
  maxAgeMs: number;
  compress: "gzip" | null;
  /** 0: unbuffered. */
  bufferBytes: number;
  flushMs: number;
}

/** After a rollover gave up waiting for the lock, writes go on for this long before the next try. */
const ROLLOVER_RETRY_MS = 1_000;
/** Lock waits sleep from the first to the last value, doubling. */
const LOCK_SLEEP_MIN_MS = 1;
const LOCK_SLEEP_MAX_MS = 32;
/** How often a backup shift starts over when siblings keep filling the slot it just freed. */
const SHIFT_ATTEMPTS = 3;
/** Errors of `link(2)` that mean "this filesystem has no hard links": fall back to `rename(2)`. */
const NO_LINK_CODES = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EXDEV", "EMLINK"]);
/** Records up to this many UTF-16 units are encoded into one reused buffer (no allocation). */
const SCRATCH_BYTES = 64 * 1024;
const NEWLINE = 0x0a;

const encoder = new TextEncoder();

class RotatingFileHandle implements RotatingFile {
  readonly path: string;
  readonly #settings: Settings;
  readonly #lockPath: string;
  /** The open descriptor, or -1 when none could be opened. */
  #fd = -1;
  /** Identity of the open file; `ino` null = unknown (never taken as a change). */
  #dev = 0;
  #ino: number | null = null;
  /** The live file's size as last seen by a stat, plus what this handle wrote since. */
  #size = 0;
  /** Writes left before the next external-rotation check; 0 = check before the next write. */
  #untilCheck = 0;
  #closed = false;
  /** `Date.now()` before which no size rollover is tried again (after a lock timeout). */
  #rolloverRetryAt = 0;
  #scratch = new Uint8Array(SCRATCH_BYTES);
  /** Nesting of write() calls: an onError that writes to this file must not reuse the scratch buffer. */
  #depth = 0;
  /** `true` while onError runs: a failure inside it is not reported again (no loop). */
  #reporting = false;
  /** Buffered mode: the batch being gathered (`null` when unbuffered) and its used length. */
  #batch: Uint8Array | null = null;
  #used = 0;
  /** `true` while a batch is written: a nested write (from onError) goes out unbuffered. */
  #flushing = false;
  /** Cancels the pending `flushMs` timer; `null` when none is armed. */
  #cancelFlush: (() => void) | null = null;
  /** Time rollover: start of the period of the open file's records, and the next boundary after it. */
  #period = 0;
  #nextBoundary = Infinity;

  constructor(path: string, settings: Settings) {
    this.path = path;
    this.#settings = settings;
    this.#lockPath = `${path}.lock`;
    if (settings.bufferBytes > 0) {
      this.#batch = new Uint8Array(settings.bufferBytes);
      registerForExitFlush(this);
    }
    this.#open("open", false);
    if (settings.compress !== null) this.#scheduleCompression();
  }

  get closed(): boolean {
    return this.#closed;
  }

  write(record: string | Uint8Array): void {
    if (this.#closed) {
      this.#fail("write", "the handle is closed", undefined, true);
      return;
    }
    if (this.#batch !== null && !this.#flushing) {
      this.#bufferRecord(record, this.#batch);
      return;
    }
    this.#depth += 1;
    try {
      const bytes = this.#encode(record, this.#depth === 1);
      if (this.#untilCheck <= 0) {
        this.#untilCheck = this.#settings.checkEvery;
        this.#check(bytes.length);
      }
      this.#untilCheck -= 1;
      if (this.#fd < 0) return; // #check reported the record as lost
      if (Date.now() >= this.#nextBoundary) this.#rollover(bytes.length, false);
      const { maxBytes } = this.#settings;
      if (maxBytes > 0 && this.#size > 0 && this.#size + bytes.length > maxBytes) {
        this.#rollover(bytes.length, false);
      }
      this.#append(bytes);
    } catch (error) {
      this.#fail("write", "the record cannot be turned into text", error, true); // a throwing toString()
    } finally {
      this.#depth -= 1;
    }
  }

  rotate(): void {
    if (this.#closed) {
      this.#fail("rollover", "the handle is closed", undefined, false);
      return;
    }
    this.flush();
    this.#rollover(0, true);
  }

  reopen(): void {
    if (this.#closed) {
      this.#fail("open", "the handle is closed", undefined, false);
      return;
    }
    this.flush();
    if (this.#open("open", false)) this.#untilCheck = this.#settings.checkEvery;
  }

  flush(): void {
    if (this.#closed || this.#batch === null || this.#used === 0 || this.#flushing) return;
    this.#flushBatch(this.#batch, this.#used);
    this.#used = 0;
  }

  close(): void {
    if (this.#closed) return;
    if (this.#batch !== null) {
      this.flush();
      this.#cancelFlush?.();
      this.#cancelFlush = null;
      unregisterForExitFlush(this);
    }
    this.#closed = true;
    if (this.#fd < 0) return;
    const fd = this.#fd;
    this.#fd = -1;
    try {
      closeFd(fd);
    } catch (error) {
      this.#fail("close", "close failed", error, false);
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /** The record as bytes ending in a newline; short records reuse one buffer when `scratch` allows. */
  #encode(record: string | Uint8Array, scratch: boolean): Uint8Array {
    if (typeof record !== "string") {
      if (record instanceof Uint8Array) {
        if (record.length > 0 && record[record.length - 1] === NEWLINE) return record;
        const bytes = new Uint8Array(record.length + 1);
        bytes.set(record);
        bytes[record.length] = NEWLINE;
        return bytes;
      }
      record = String(record);
    }
    const newline = record.length === 0 || record.charCodeAt(record.length - 1) !== NEWLINE;
    if (scratch && record.length * 3 < SCRATCH_BYTES) {
      const { written } = encoder.encodeInto(record, this.#scratch);
      if (!newline) return this.#scratch.subarray(0, written);
      this.#scratch[written] = NEWLINE;
      return this.#scratch.subarray(0, written + 1);
    }
    return encoder.encode(newline ? record + "\n" : record);
  }

  /**
   * The external-rotation check: one stat of the path gives its identity and its size. A missing or
   * different file is reopened; on failure the current descriptor is kept.
   */
  #check(incoming: number): void {
    let seen: FileIdentity | null;
    try {
      seen = statIdentity(this.path);
    } catch (error) {
      if (this.#fd >= 0) {
        this.#fail("check", "stat failed; writing to the current descriptor", error, false);
        return;
      }
      seen = null;
    }
    if (seen !== null && this.#fd >= 0 && !this.#isOtherFile(seen)) {
      this.#size = seen.size;
      return;
    }
    if (!this.#open("check", incoming > 0) && this.#fd < 0) this.#untilCheck = 0;
  }

  /** `true` when `seen` is known to be another file than the open one (unknown inodes never are). */
  #isOtherFile(seen: FileIdentity): boolean {
    if (seen.ino === null || this.#ino === null) return false;
    return seen.ino !== this.#ino || seen.dev !== this.#dev;
  }

  /**
   * Opens (creating) the path, applies `mode`, and swaps it in for the current descriptor. On failure
   * the current descriptor stays; `recordAtStake` says whether a write is waiting for this open.
   */
  #open(operation: RotatingFileOperation, recordAtStake: boolean): boolean {
    let fd: number;
    try {
      fd = openAppend(this.path);
    } catch (error) {
      const keeps = this.#fd >= 0;
      const lost = recordAtStake && !keeps;
      const what = keeps ? "open failed; writing to the current descriptor" : "open failed";
      this.#fail(operation, what, error, lost);
      return false;
    }
    let opened;
    try {
      opened = fstat(fd);
    } catch (error) {
      try {
        closeFd(fd);
      } catch {
        // The fstat error below is the one that matters; this descriptor is unusable either way.
      }
      this.#fail(operation, "fstat failed", error, recordAtStake && this.#fd < 0);
      return false;
    }
    const { mode } = this.#settings;
    if (mode !== undefined && (opened.mode & 0o7777) !== mode) {
      try {
        fchmod(fd, mode);
      } catch (error) {
        this.#fail(operation, `cannot set mode ${mode.toString(8)}; writing anyway`, error, false);
      }
    }
    const previous = this.#fd;
    this.#fd = fd;
    this.#dev = opened.dev;
    this.#ino = opened.ino;
    this.#size = opened.size;
    if (this.#settings.interval !== null) this.#learnPeriod(opened.size, opened.mtimeMs);
    if (previous >= 0) {
      try {
        closeFd(previous);
      } catch (error) {
        this.#fail(operation, "closing the previous descriptor failed", error, false);
      }
    }
    return true;
  }

  /** One `write(2)`; a short write (full disk) is completed with `writeAll`, never dropped silently. */
  #append(bytes: Uint8Array): void {
    let written = 0;
    try {
      written = writeOnce(this.#fd, bytes);
      if (written < bytes.length) writeAll(this.#fd, bytes.subarray(written));
      this.#size += bytes.length;
    } catch (error) {
      this.#fail("write", "write failed; the record was dropped", error, true);
    }
  }

  /**
   * Rolls the live file over under the lock. Under the lock, the path is checked again: a file that is
   * no longer ours (rotated by someone else) is reopened, not renamed, and a size rollover happens only
   * if the real size still calls for it.
   */
  #rollover(incoming: number, force: boolean): void {
    if (!force && Date.now() < this.#rolloverRetryAt) return;
    const lock = acquireLock(this.#lockPath, this.#settings);
    if (typeof lock !== "string") {
      this.#rolloverRetryAt = Date.now() + ROLLOVER_RETRY_MS;
      this.#fail("rollover", "cannot take the rollover lock; writing to the current file", lock.error, false);
      return;
    }
    try {
      let seen: FileIdentity | null;
      try {
        seen = statIdentity(this.path);
      } catch (error) {
        this.#fail("rollover", "stat failed; rollover skipped", error, false);
        return;
      }
      if (seen === null || this.#isOtherFile(seen)) {
        // Someone else rotated (or removed) it: adopt the live file instead of renaming it.
        if (!this.#open("rollover", false) || force) return;
      } else if (!seen.isFile) {
        this.#fail("rollover", "not a regular file; rollover skipped", undefined, false);
        return;
      } else {
        this.#size = seen.size;
      }
      const { maxBytes } = this.#settings;
      const timeDue = this.#timeRolloverDue();
      if (timeDue === "restamp") return;
      if (!force && !timeDue && !(maxBytes > 0 && this.#size > 0 && this.#size + incoming > maxBytes)) return;
      if (this.#settings.interval !== null) this.#moveToDated();
      else {
        if (this.#settings.compress !== null) this.#shiftCompressed();
        this.#shiftBackups();
      }
      this.#open("rollover", false);
      this.#afterRollover();
    } finally {
      const released = releaseLock(this.#lockPath, lock);
      if (released !== null) this.#fail("rollover", released, undefined, false);
    }
    if (this.#settings.compress !== null) this.#scheduleCompression();
  }

  /** `path.N` is removed, `path.i` becomes `path.i+1`, the live file becomes `path.1`. */
  #shiftBackups(): void {
    const { backups } = this.#settings;
    try {
      if (backups === 0) {
        unlinkIfExists(this.path);
        return;
      }
      for (let attempt = 1;; attempt++) {
        unlinkIfExists(`${this.path}.${backups}`);
        let occupied = false;
        for (let i = backups - 1; i >= 1 && !occupied; i--) {
          occupied =
            moveNoClobber(`${this.path}.${i}`, `${this.path}.${i + 1}`, attempt >= SHIFT_ATTEMPTS) ===
              "occupied";
        }
        if (!occupied) {
          occupied = moveNoClobber(this.path, `${this.path}.1`, attempt >= SHIFT_ATTEMPTS) === "occupied";
        }
        if (!occupied) return;
        // A sibling filled a slot we had just freed: start over from the oldest end.
      }
    } catch (error) {
      this.#fail("rollover", "shifting the backups failed", error, false);
    }
  }

  // --- Second edition: buffered batches, time rollover, dated backups, retention, compression

  /**
   * Buffered `write`: the record is encoded straight into the batch. The batch goes out first when the
   * record would push the live file past `maxBytes` or cross an `interval` boundary, or when it is full;
   * a record larger than the whole buffer goes alone, unbuffered.
   */
  #bufferRecord(record: string | Uint8Array, batch: Uint8Array): void {
    let start = this.#used;
    let length: number;
    try {
      length = encodeRecordInto(record, batch, start);
      if (length < 0 && start > 0) {
        this.flush();
        start = 0;
        length = encodeRecordInto(record, batch, 0);
      }
    } catch (error) {
      this.#fail("write", "the record cannot be turned into text", error, true); // a throwing toString()
      return;
    }
    if (length < 0) {
      this.#untilCheck = 0; // a batch of one: checked like any batch
      this.#flushing = true;
      try {
        this.write(record);
      } finally {
        this.#flushing = false;
      }
      return;
    }
    if (start > 0 && this.#batchGoesFirst(start, length)) {
      this.#flushBatch(batch, start);
      batch.copyWithin(0, start, start + length);
      start = 0;
    }
    if (start === 0 && this.#settings.interval !== null) this.#batchAt = Date.now();
    this.#used = start + length;
    if (this.#used >= batch.length) this.flush();
    else if (this.#cancelFlush === null) this.#armFlush();
  }

  /** `Date.now()` when the first record of the batch was taken (time rollover only). */
  #batchAt = 0;

  /** Whether the gathered batch must be written before a record of `length` bytes joins it. */
  #batchGoesFirst(used: number, length: number): boolean {
    const { maxBytes } = this.#settings;
    if (maxBytes > 0 && this.#size + used + length > maxBytes) return true;
    return this.#nextBoundary !== Infinity && Date.now() >= this.#nextBoundary;
  }

  /** Writes `batch[0, length)` with one `write(2)`, after the same check and rollover as a record. */
  #flushBatch(batch: Uint8Array, length: number): void {
    this.#flushing = true;
    this.#depth += 1;
    try {
      this.#check(length);
      this.#untilCheck = this.#settings.checkEvery;
      if (this.#fd < 0) return; // #check reported the batch as lost
      // A batch gathered before the boundary belongs to the file of its period: written before the
      // rollover, which the next batch (or record) makes.
      if (this.#batchAt >= this.#nextBoundary) this.#rollover(length, false);
      const { maxBytes } = this.#settings;
      if (maxBytes > 0 && this.#size > 0 && this.#size + length > maxBytes) this.#rollover(length, false);
      this.#append(batch.subarray(0, length));
    } finally {
      this.#depth -= 1;
      this.#flushing = false;
    }
  }

  /** One unref'd timer: whatever is buffered when it fires is written (so no record waits longer). */
  #armFlush(): void {
    let delay = this.#settings.flushMs;
    if (this.#nextBoundary !== Infinity) {
      delay = Math.min(delay, Math.max(0, this.#nextBoundary - Date.now()));
    }
    this.#cancelFlush = setUnrefTimeout(() => {
      this.#cancelFlush = null;
      this.flush();
    }, delay);
  }

  /**
   * Sets the period of the open file's records: from `<path>.period` when it names this file, else
   * (a file no time rollover created) the current period for an empty file, the period of its last
   * modification otherwise.
   */
  #learnPeriod(size: number, mtimeMs: number): void {
    const { interval, utc } = this.#settings;
    if (interval === null) return;
    const current = periodStart(Date.now(), interval, utc);
    let period = readPeriodStamp(this.path, this.#dev, this.#ino);
    if (period === null) period = size === 0 ? current : periodStart(mtimeMs, interval, utc);
    if (period > current) period = current; // a stamp from a clock stepped back since
    this.#period = period;
    this.#nextBoundary = nextPeriodStart(period, interval, utc);
  }

  /**
   * Under the lock: whether the open (live) file holds records of an earlier period. An empty file of
   * an earlier period is only stamped with the current one (`"restamp"`: nothing to roll over).
   */
  #timeRolloverDue(): boolean | "restamp" {
    const { interval, utc, mode } = this.#settings;
    if (interval === null) return false;
    let opened;
    try {
      opened = fstat(this.#fd);
    } catch (error) {
      this.#fail("rollover", "fstat failed; time rollover skipped", error, false);
      return false;
    }
    this.#learnPeriod(opened.size, opened.mtimeMs); // a sibling may have stamped it meanwhile
    const current = periodStart(Date.now(), interval, utc);
    if (this.#period >= current) return false;
    if (opened.size > 0) return true;
    this.#stampPeriod(current, mode);
    return "restamp";
  }

  #stampPeriod(period: number, mode: number | undefined): void {
    const { interval, utc } = this.#settings;
    if (interval === null) return;
    this.#period = period;
    this.#nextBoundary = nextPeriodStart(period, interval, utc);
    try {
      writePeriodStamp(this.path, this.#dev, this.#ino, period, mode);
    } catch (error) {
      this.#fail("rollover", "cannot record the live file's period", error, false);
    }
  }

  /** Time-rollover naming: the live file becomes `path.<period>` (or `.1`, `.2`, … after it). */
  #moveToDated(): void {
    const { backups, interval, utc } = this.#settings;
    try {
      if (backups === 0) {
        unlinkIfExists(this.path);
        return;
      }
      const stamp = formatPeriod(this.#period, interval!, utc);
      for (let attempt = 1;; attempt++) {
        const to = nextDatedName(this.path, stamp);
        if (moveNoClobber(this.path, to, false) !== "occupied" || attempt >= SHIFT_ATTEMPTS) return;
      }
    } catch (error) {
      this.#fail("rollover", "moving the live file to its dated backup failed", error, false);
    }
  }

  /** Numbered backups with `compress`: `path.i.gz` shifts with `path.i` (under the lock). */
  #shiftCompressed(): void {
    const { backups } = this.#settings;
    try {
      if (backups === 0) return;
      unlinkIfExists(`${this.path}.${backups}.gz`);
      for (let i = backups - 1; i >= 1; i--) {
        moveNoClobber(`${this.path}.${i}.gz`, `${this.path}.${i + 1}.gz`, true);
      }
    } catch (error) {
      this.#fail("rollover", "shifting the compressed backups failed", error, false);
    }
  }

  /** Under the lock, after a rollover: stamp the new file's period, then apply count and age limits. */
  #afterRollover(): void {
    const { interval, utc, mode, backups, maxAgeMs } = this.#settings;
    if (interval !== null) this.#stampPeriod(periodStart(Date.now(), interval, utc), mode);
    const cutoff = maxAgeMs > 0 ? Date.now() - maxAgeMs : -Infinity;
    try {
      if (interval !== null) {
        const groups = listDatedBackups(this.path);
        groups.forEach((group, index) => {
          if (index < groups.length - backups || group.mtimeMs < cutoff) {
            for (const name of group.files) unlinkIfExists(name);
          }
        });
      } else if (maxAgeMs > 0) {
        for (let i = 1; i <= backups; i++) {
          for (const name of [`${this.path}.${i}`, `${this.path}.${i}.gz`]) {
            const seen = statOrNull(name);
            if (seen !== null && seen.mtimeMs < cutoff) unlinkIfExists(name);
          }
        }
      }
    } catch (error) {
      this.#fail("rollover", "removing old backups failed", error, false);
    }
  }

  /** `true` while this handle compresses; `#compressAgain` asks for one more pass when it ends. */
  #compressing = false;
  #compressAgain = false;

  /** Compresses plain backups soon, on the event loop: never inside `write()`, never blocking it. */
  #scheduleCompression(): void {
    if (this.#compressing) {
      this.#compressAgain = true;
      return;
    }
    this.#compressing = true;
    // A plain timer: a short-lived process still compresses before it ends (unless it calls exit()).
    setTimeout(() => {
      this.#compressBackups().finally(() => {
        this.#compressing = false;
        if (this.#compressAgain) {
          this.#compressAgain = false;
          this.#scheduleCompression();
        }
      });
    }, 0);
  }

  /** One pass over every plain backup (numbered or dated): each is claimed, compressed, published. */
  async #compressBackups(): Promise<void> {
    try {
      removeOrphanTemporaries(this.path, this.#settings.lockStaleMs);
      const plain = this.#settings.interval !== null
        ? listDatedBackups(this.path).flatMap((group) => group.plain === null ? [] : [group.plain])
        : Array.from({ length: this.#settings.backups }, (_, i) => `${this.path}.${i + 1}`);
      for (const name of plain) {
        const failure = await compressBackup(this.path, name, this.#lockPath, this.#settings);
        if (failure !== null) this.#fail("rollover", `compressing "${name}" failed`, failure, false);
      }
    } catch (error) {
      this.#fail("rollover", "compressing the backups failed", error, false);
    }
  }

  #fail(operation: RotatingFileOperation, what: string, cause: unknown, lost: boolean): void {
    if (this.#reporting) return; // failing inside onError (which wrote to this file): not reported again
    const reason = cause === undefined ? "" : `: ${describeCause(cause)}`;
    const message = `Log file "${this.path}" (${operation}): ${what}${reason}`;
    const error = new RotatingFileError(this.path, operation, message, { cause, lost });
    this.#reporting = true;
    try {
      this.#settings.onError(error);
    } catch {
      // onError itself threw: write() promised never to throw, and there is nobody left to tell.
    } finally {
      this.#reporting = false;
    }
  }
}

/**
 * Moves `from` to `to` without replacing anything at `to` (`link` then `unlink`). `"vanished"` when
 * `from` is gone (a sibling moved it), `"occupied"` when something appeared at `to`. `clobber` (the
 * last attempt) and filesystems without hard links use `rename(2)`.
 */
function moveNoClobber(from: string, to: string, clobber: boolean): "moved" | "vanished" | "occupied" {
  if (!clobber) {
    try {
      link(from, to);
      unlinkIfExists(from);
      return "moved";
    } catch (error) {
      const code = errorCode(error);
      if (code === "ENOENT") return "vanished";
      if (code === "EEXIST") return "occupied";
      if (!NO_LINK_CODES.has(code ?? "")) throw error;
    }
  }
  try {
    rename(from, to);
    return "moved";
  } catch (error) {
    if (errorCode(error) === "ENOENT") return "vanished";
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------------
// Private: buffered batches, periods, dated backups, compression
// ---------------------------------------------------------------------------------------------------

/** A validated `interval`: a named period or a length in milliseconds. */
type Interval = "hourly" | "daily" | "weekly" | number;

/** Default of `flushMs`. */
const DEFAULT_FLUSH_MS = 100;
/** Largest `bufferBytes`: one batch is one allocation and one `write(2)`. */
const MAX_BUFFER_BYTES = 1 << 30;
/** Largest `flushMs`: a longer `setTimeout` delay fires after 1 ms on every runtime. */
const MAX_FLUSH_MS = 2 ** 31 - 1;
/** A claim on a backup being compressed is taken over from a live holder only after this long. */
const COMPRESS_CLAIM_STALE_MS = 3_600_000;

/** Buffered handles still open: their batches are written when the process exits. */
const exitFlushed = new Set<{ flush(): void }>();
let exitHookInstalled = false;

function registerForExitFlush(handle: { flush(): void }): void {
  exitFlushed.add(handle);
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  onExit(() => {
    for (const open of exitFlushed) open.flush();
  });
}

function unregisterForExitFlush(handle: { flush(): void }): void {
  exitFlushed.delete(handle);
}

/**
 * Encodes `record` plus its missing newline into `batch` at `at`; returns its length, or -1 when it
 * does not fit (whatever was written past `at` is then garbage the caller ignores).
 */
function encodeRecordInto(record: string | Uint8Array, batch: Uint8Array, at: number): number {
  const free = batch.length - at;
  if (typeof record !== "string") {
    if (!(record instanceof Uint8Array)) return encodeRecordInto(String(record), batch, at);
    const newline = record.length === 0 || record[record.length - 1] !== NEWLINE ? 1 : 0;
    if (record.length + newline > free) return -1;
    batch.set(record, at);
    if (newline === 1) batch[at + record.length] = NEWLINE;
    return record.length + newline;
  }
  if (record.length > free) return -1; // every UTF-16 unit takes at least one byte
  const { read, written } = encoder.encodeInto(record, at === 0 ? batch : batch.subarray(at));
  if (read < record.length) return -1;
  if (written > 0 && batch[at + written - 1] === NEWLINE) return written;
  if (written >= free) return -1;
  batch[at + written] = NEWLINE;
  return written + 1;
}

/** Start of the period holding instant `t` (local or UTC calendar; numbers align to the epoch). */
function periodStart(t: number, interval: Interval, utc: boolean): number {
  if (typeof interval === "number") return Math.floor(t / interval) * interval;
  const d = new Date(t);
  if (utc) {
    const [y, m, day] = [d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate()];
    if (interval === "hourly") return Date.UTC(y, m, day, d.getUTCHours());
    if (interval === "daily") return Date.UTC(y, m, day);
    return Date.UTC(y, m, day - (d.getUTCDay() + 6) % 7);
  }
  const [y, m, day] = [d.getFullYear(), d.getMonth(), d.getDate()];
  if (interval === "hourly") return new Date(y, m, day, d.getHours()).getTime();
  if (interval === "daily") return new Date(y, m, day).getTime();
  return new Date(y, m, day - (d.getDay() + 6) % 7).getTime();
}

/** Start of the period after the one starting at `start`. */
function nextPeriodStart(start: number, interval: Interval, utc: boolean): number {
  if (typeof interval === "number") return start + interval;
  const d = new Date(start);
  const step = interval === "hourly" ? [0, 1] : interval === "daily" ? [1, 0] : [7, 0];
  const [days, hours] = [step[0]!, step[1]!];
  const next = utc
    ? Date.UTC(d.getUTCFullYear(), d.getUTCMonth(), d.getUTCDate() + days, d.getUTCHours() + hours)
    : new Date(d.getFullYear(), d.getMonth(), d.getDate() + days, d.getHours() + hours).getTime();
  // A local clock change can make the next wall-clock period start no later than this one.
  return next > start ? next : start + 3_600_000;
}

/** The period's name in backup names: fixed width, so names sort chronologically. */
function formatPeriod(start: number, interval: Interval, utc: boolean): string {
  const d = new Date(start);
  const pad = (n: number) => String(n).padStart(2, "0");
  const parts = utc
    ? [
      d.getUTCFullYear(),
      d.getUTCMonth() + 1,
      d.getUTCDate(),
      d.getUTCHours(),
      d.getUTCMinutes(),
      d.getUTCSeconds(),
    ]
    : [d.getFullYear(), d.getMonth() + 1, d.getDate(), d.getHours(), d.getMinutes(), d.getSeconds()];
  const [y, mo, day, h, mi, s] = parts as [number, number, number, number, number, number];
  const date = `${String(y).padStart(4, "0")}-${pad(mo)}-${pad(day)}`;
  if (interval === "hourly") return `${date}T${pad(h)}`;
  if (typeof interval === "number") return `${date}T${pad(h)}-${pad(mi)}-${pad(s)}`;
  return date;
}

/** `<path>.period` holds `dev ino periodStart` of the live file a rollover created. */
function readPeriodStamp(path: string, dev: number, ino: number | null): number | null {
  if (ino === null) return null;
  const text = readTextFileOrNull(`${path}.period`);
  if (text === null) return null;
  const [stampDev, stampIno, period] = text.trim().split(" ").map(Number);
  if (stampDev !== dev || stampIno !== ino || !Number.isFinite(period)) return null;
  return period!;
}

function writePeriodStamp(
  path: string,
  dev: number,
  ino: number | null,
  period: number,
  mode: number | undefined,
): void {
  if (ino === null) return; // cannot name the file: readers fall back to its size and mtime
  writeFileAtomic(`${path}.period`, `${dev} ${ino} ${period}\n`, mode === undefined ? {} : { mode });
}

/** A dated backup, plain and/or compressed. */
interface DatedBackup {
  stamp: string;
  seq: number;
  plain: string | null;
  files: string[];
  mtimeMs: number;
}

const DATED_SUFFIX = /^(\d{4}-\d{2}-\d{2}(?:T\d{2}(?:-\d{2}-\d{2})?)?)(?:\.(\d+))?(\.gz)?$/;

function splitPath(path: string): { dir: string; base: string } {
  const slash = path.lastIndexOf("/");
  return slash < 0
    ? { dir: ".", base: path }
    : { dir: path.slice(0, slash) || "/", base: path.slice(slash + 1) };
}

/** The dated backups beside `path`, oldest first. */
function listDatedBackups(path: string): DatedBackup[] {
  const { dir, base } = splitPath(path);
  const prefix = `${path}.`;
  const groups = new Map<string, DatedBackup>();
  for (const name of readDir(dir)) {
    if (!name.startsWith(`${base}.`)) continue;
    const match = DATED_SUFFIX.exec(name.slice(base.length + 1));
    if (match === null) continue;
    const full = prefix + name.slice(base.length + 1);
    const seen = statOrNull(full);
    if (seen === null) continue;
    const stamp = match[1]!;
    const seq = match[2] === undefined ? 0 : Number(match[2]);
    const key = `${stamp}.${seq}`;
    let group = groups.get(key);
    if (group === undefined) {
      groups.set(key, group = { stamp, seq, plain: null, files: [], mtimeMs: seen.mtimeMs });
    }
    group.files.push(full);
    if (match[3] === undefined) group.plain = full;
    group.mtimeMs = Math.max(group.mtimeMs, seen.mtimeMs);
  }
  return [...groups.values()].sort((a, b) => a.stamp < b.stamp ? -1 : a.stamp > b.stamp ? 1 : a.seq - b.seq);
}

/** The first free name for a backup of the period `stamp`, after every one it already has. */
function nextDatedName(path: string, stamp: string): string {
  let last = -1;
  for (const group of listDatedBackups(path)) if (group.stamp === stamp) last = Math.max(last, group.seq);
  return last < 0 ? `${path}.${stamp}` : `${path}.${stamp}.${last + 1}`;
}

/** The claim that makes one process the only compressor of the backup with inode `ino`. */
function compressClaimPath(path: string, ino: number): string {
  return `${path}.gz-claim.${ino}`;
}

/**
 * Clears what killed compressors left: `<backup>.<ino>.gz.tmp` files and `<path>.gz-claim.<ino>` claims
 * whose holder is gone (the claim can be taken), and the temporaries of claims being published by a
 * dead process.
 */
function removeOrphanTemporaries(path: string, lockStaleMs: number): void {
  const { dir, base } = splitPath(path);
  const staleMs = Math.max(lockStaleMs, COMPRESS_CLAIM_STALE_MS);
  for (const name of readDir(dir)) {
    if (!name.startsWith(`${base}.`)) continue;
    const claimTemp = /^\.gz-claim\.\d+\.(\d+)\.\d+\.\w+\.tmp$/.exec(name.slice(base.length));
    if (claimTemp !== null) {
      if (!isAlive(Number(claimTemp[1]))) unlinkIfExists(`${dir}/${name}`);
      continue;
    }
    const match = /\.(\d+)\.gz\.tmp$/.exec(name) ?? /^\.gz-claim\.(\d+)$/.exec(name.slice(base.length));
    if (match === null) continue;
    const claimPath = compressClaimPath(path, Number(match[1]));
    const claim = acquireLock(claimPath, { lockTimeoutMs: 0, lockStaleMs: staleMs });
    if (typeof claim !== "string") continue; // its compressor is alive
    try {
      if (name.endsWith(".tmp")) unlinkIfExists(`${dir}/${name}`);
    } finally {
      releaseLock(claimPath, claim);
    }
  }
}

/**
 * Compresses the backup at `name`: claim it (by inode), gzip it to `<name>.<ino>.gz.tmp`, then under
 * the rollover lock, if it is still at `name`, publish `<name>.gz` with `link(2)` and remove the plain
 * file. Returns the failure, or `null` (done, or someone else's job).
 */
async function compressBackup(
  path: string,
  name: string,
  lockPath: string,
  settings: Settings,
): Promise<unknown> {
  const seen = statOrNull(name);
  if (seen === null || !seen.isFile || seen.ino === null) return null;
  const claimPath = compressClaimPath(path, seen.ino);
  const claim = acquireLock(claimPath, { lockTimeoutMs: 0, lockStaleMs: COMPRESS_CLAIM_STALE_MS });
  if (typeof claim !== "string") return errorCode(claim.error) === undefined ? null : claim.error; // held: theirs
  const gz = `${name}.gz`;
  const tmp = `${name}.${seen.ino}.gz.tmp`;
  try {
    const still = statOrNull(name);
    if (still === null || still.ino !== seen.ino) return null; // moved by a rollover meanwhile
    unlinkIfExists(tmp); // left by a killed compressor of this very backup (its claim is ours now)
    if (statOrNull(gz) === null) {
      try {
        await gzipFile(name, tmp);
        chmod(tmp, seen.mode & 0o7777);
      } catch (error) {
        unlinkIfExists(tmp);
        return errorCode(error) === "ENOENT" ? null : error;
      }
    }
    const lock = acquireLock(lockPath, settings);
    if (typeof lock !== "string") {
      unlinkIfExists(tmp);
      return lock.error;
    }
    try {
      const at = statOrNull(name);
      if (at === null || at.ino !== seen.ino) return null; // shifted or removed: a later pass does it
      if (statOrNull(tmp) !== null) {
        try {
          link(tmp, gz);
        } catch (error) {
          const code = errorCode(error) ?? "";
          if (NO_LINK_CODES.has(code)) rename(tmp, gz);
          else if (code !== "EEXIST") throw error;
        }
      }
      unlinkIfExists(name); // only now: its .gz is complete
      return null;
    } catch (error) {
      return error;
    } finally {
      unlinkIfExists(tmp);
      releaseLock(lockPath, lock);
    }
  } finally {
    releaseLock(claimPath, claim);
  }
}

/** Validates the second-edition options of `openRotatingFile`. */
function checkSecondEdition(options: RotatingFileOptions): Pick<
  Settings,
  "interval" | "utc" | "maxAgeMs" | "compress" | "bufferBytes" | "flushMs"
> {
  const fail = (message: string, type: "type" | "range"): never => {
    throw type === "type" ? new TypeError(message) : new RangeError(message);
  };
  let interval: Interval | null = null;
  const wanted: unknown = options.interval;
  if (wanted !== undefined) {
    if (wanted === "hourly" || wanted === "daily" || wanted === "weekly") interval = wanted;
    else if (typeof wanted !== "number" || !Number.isSafeInteger(wanted)) {
      fail(
        `Option "interval" must be "hourly", "daily", "weekly" or an integer of milliseconds, got ${
          safeQuote(wanted)
        }`,
        typeof wanted === "string" ? "range" : "type",
      );
    } else if (wanted < 1000) {
      fail(`Option "interval" must be at least 1000 milliseconds, got ${wanted}`, "range");
    } else interval = wanted;
  }
  const utc: unknown = options.utc ?? false;
  if (typeof utc !== "boolean") fail(`Option "utc" must be a boolean, got ${safeQuote(utc)}`, "type");
  const compress: unknown = options.compress;
  if (compress !== undefined && compress !== "gzip") {
    fail(
      `Option "compress" must be "gzip", got ${safeQuote(compress)}`,
      typeof compress === "string" ? "range" : "type",
    );
  }
  const bufferBytes = checkInteger("bufferBytes", options.bufferBytes, 0, 0);
  if (bufferBytes > MAX_BUFFER_BYTES) {
    fail(`Option "bufferBytes" must be at most ${MAX_BUFFER_BYTES}, got ${bufferBytes}`, "range");
  }
  const flushMs = checkInteger("flushMs", options.flushMs, DEFAULT_FLUSH_MS, 0);
  if (flushMs > MAX_FLUSH_MS) {
    fail(`Option "flushMs" must be at most ${MAX_FLUSH_MS}, got ${flushMs}`, "range");
  }
  return {
    interval,
    utc: utc as boolean,
    maxAgeMs: options.maxAgeMs === undefined ? 0 : checkInteger("maxAgeMs", options.maxAgeMs, 0, 1),
    compress: compress === "gzip" ? "gzip" : null,
    bufferBytes,
    flushMs,
  };
}

// ---------------------------------------------------------------------------------------------------
// Private: the rollover lock
// ---------------------------------------------------------------------------------------------------

interface LockRecord {
  pid: number;
  startTime: number | null;
  /** Start in clock ticks since boot: exact, unlike `startTime`, which moves with the wall clock. */
  startTicks?: number | null;
  token: string;
  at: string;
}

/**
 * Takes `<path>.lock`: a fully written temporary file is published with `link(2)` (atomic, fails when
 * a lock exists). A lock whose holder is dead, a zombie, another process with the same pid, or older
 * than `lockStaleMs` is taken over. Returns the token, or the error after `lockTimeoutMs`.
 */
function acquireLock(
  lockPath: string,
  settings: { lockTimeoutMs: number; lockStaleMs: number },
): string | { error: unknown } {
  const pid = getPid();
  const token = `${pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const record: LockRecord = {
    pid,
    startTime: processStartTime(pid),
    startTicks: readProcStat(pid)?.startTicks ?? null,
    token,
    at: new Date().toISOString(),
  };
  const text = JSON.stringify(record) + "\n";
  const deadline = Date.now() + settings.lockTimeoutMs;
  let sleepMs = LOCK_SLEEP_MIN_MS;
  let tmp: string | null = tempPathBeside(lockPath);
  try {
    writeTextFile(tmp, text);
  } catch (error) {
    return { error };
  }
  try {
    for (;;) {
      try {
        if (tmp !== null) link(tmp, lockPath);
        else closeFd(writeExclusive(lockPath, text));
        return token;
      } catch (error) {
        const code = errorCode(error);
        if (tmp !== null && NO_LINK_CODES.has(code ?? "")) {
          unlinkIfExists(tmp); // no hard links here: exclusive create instead (see writeExclusive)
          tmp = null;
          continue;
        }
        if (code !== "EEXIST") return { error };
      }
      if (takeOverIfStale(lockPath, settings.lockStaleMs)) continue;
      if (Date.now() >= deadline) {
        const holder = readTextFileOrNull(lockPath)?.trim() ?? "gone";
        return {
          error: new Error(`lock "${lockPath}" still held after ${settings.lockTimeoutMs} ms by ${holder}`),
        };
      }
      sleepSync(sleepMs);
      sleepMs = Math.min(sleepMs * 2, LOCK_SLEEP_MAX_MS);
    }
  } catch (error) {
    return { error };
  } finally {
    if (tmp !== null) {
      try {
        unlinkIfExists(tmp);
      } catch {
        // A leftover temporary beside the lock is harmless; the lock outcome is what matters.
      }
    }
  }
}

/** Exclusive create then write: the fallback where `link(2)` is missing (an empty lock looks young). */
function writeExclusive(lockPath: string, text: string): number {
  const fd = createExclusive(lockPath);
  writeAll(fd, encoder.encode(text));
  return fd;
}

/**
 * Removes the lock at `lockPath` when it is stale; returns whether the caller should retry at once.
 * The stale file is first renamed aside and checked to be the one judged stale, so a lock that a
 * sibling recovered meanwhile is never removed.
 */
function takeOverIfStale(lockPath: string, staleMs: number): boolean {
  const seen = statOrNull(lockPath);
  if (seen === null) return true; // released meanwhile
  const text = readTextFileOrNull(lockPath);
  if (text === null) return true;
  let holder: Partial<LockRecord> | null = null;
  try {
    holder = JSON.parse(text) as Partial<LockRecord>;
  } catch {
    holder = null;
  }
  const old = Date.now() - seen.mtimeMs > staleMs;
  if (!old && !(holder !== null && isDeadHolder(holder))) return false;
  const aside = tempPathBeside(lockPath);
  try {
    rename(lockPath, aside);
  } catch (error) {
    if (errorCode(error) === "ENOENT") return true; // someone else took it over first
    throw error;
  }
  const taken = stat(aside);
  if (taken.ino !== null && seen.ino !== null && taken.ino !== seen.ino) {
    // Not the file we judged: a sibling's fresh lock. Put it back (unless a third one exists).
    try {
      link(aside, lockPath);
    } catch {
      // Someone holds the lock again; theirs stands.
    }
  }
  unlinkIfExists(aside);
  return true;
}

function isDeadHolder(holder: Partial<LockRecord>): boolean {
  const pid = holder.pid;
  if (typeof pid !== "number" || !Number.isInteger(pid) || pid <= 0) return true;
  if (!isAlive(pid)) return true;
  const stat = readProcStat(pid);
  if (stat?.state === "Z") return true;
  // The pid was reused when the process behind it started at another time: ticks compare exactly; a
  // wall-clock start time (from a holder that recorded no ticks) moves when the clock is stepped.
  if (stat && typeof holder.startTicks === "number") return stat.startTicks !== holder.startTicks;
  if (typeof holder.startTime === "number") {
    const started = processStartTime(pid);
    if (started !== null && Math.abs(started - holder.startTime) > START_TIME_TOLERANCE_MS) return true;
  }
  return false;
}

/** How far two readings of one process's wall-clock start time may differ (`btime` moves with the clock). */
const START_TIME_TOLERANCE_MS = 1000;

/** Removes the lock if it still holds our token; returns a complaint when it did not. */
function releaseLock(lockPath: string, token: string): string | null {
  try {
    const text = readTextFileOrNull(lockPath);
    if (text === null || !text.includes(token)) {
      return `the rollover lock "${lockPath}" was taken over while held (held longer than lockStaleMs?)`;
    }
    unlinkIfExists(lockPath);
    return null;
  } catch (error) {
    return `cannot release the rollover lock "${lockPath}": ${describeCause(error)}`;
  }
}

// ---------------------------------------------------------------------------------------------------
// Private: the logger
// ---------------------------------------------------------------------------------------------------

const LEVEL_RANK: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };
/** Keys every record starts with; a field of the same name is written as `_<key>`. */
const RESERVED_KEYS = new Set(["ts", "level", "msg"]);
/** Nesting below this depth is written as `"[Too deep]"`. */
const MAX_DEPTH = 32;

class JsonLogger implements Logger {
  readonly level: LogLevel;
  readonly #sink: LogSink;
  readonly #rank: number;
  readonly #fields: LogFields;
  /** `#fields` as JSON members (`,"a":1,"b":2`), serialised once. */
  readonly #fieldsJson: string;
  /** Shared with children: `reporting` stops an onError that logs through a failing sink from looping. */
  readonly #errors: { onError: (error: unknown) => void; reporting: boolean };

  constructor(
    sink: LogSink,
    level: LogLevel,
    fields: LogFields,
    errors: { onError: (error: unknown) => void; reporting: boolean },
  ) {
    this.level = level;
    this.#sink = sink;
    this.#rank = LEVEL_RANK[level];
    this.#fields = fields;
    this.#fieldsJson = jsonMembers(fields);
    this.#errors = errors;
  }

  debug(msg: string, fields?: LogFields): void {
    if (this.#rank <= LEVEL_RANK.debug) this.#write("debug", msg, fields);
  }

  info(msg: string, fields?: LogFields): void {
    if (this.#rank <= LEVEL_RANK.info) this.#write("info", msg, fields);
  }

  warn(msg: string, fields?: LogFields): void {
    if (this.#rank <= LEVEL_RANK.warn) this.#write("warn", msg, fields);
  }

  error(msg: string, fields?: LogFields): void {
    if (this.#rank <= LEVEL_RANK.error) this.#write("error", msg, fields);
  }

  child(fields: LogFields): Logger {
    if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
      throw new TypeError(`Cannot create child logger: fields must be an object, got ${safeQuote(fields)}`);
    }
    return new JsonLogger(
      this.#sink,
      this.level,
      { ...this.#fields, ...toPlainFields(fields) },
      this.#errors,
    );
  }

  isLevelEnabled(level: LogLevel): boolean {
    return LEVEL_RANK[level] !== undefined && this.#rank <= LEVEL_RANK[level];
  }

  #write(level: LogLevel, msg: unknown, fields: LogFields | undefined): void {
    let line: string;
    try {
      let text: string;
      if (typeof msg === "string") {
        text = msg;
      } else if (isError(msg)) {
        text = String((msg as Error).message);
        fields = { err: msg, ...fields };
      } else {
        text = jsonText(msg);
      }
      let members = this.#fieldsJson;
      if (fields !== undefined && fields !== null) {
        const own = toPlainFields(fields);
        let overlaps = false;
        for (const key in own) {
          if (Object.hasOwn(this.#fields, key)) {
            overlaps = true;
            break;
          }
        }
        members = overlaps ? jsonMembers({ ...this.#fields, ...own }) : members + jsonMembers(own);
      }
      line = `{"ts":"${new Date().toISOString()}","level":"${level}","msg":${
        JSON.stringify(text)
      }${members}}\n`;
    } catch (error) {
      this.#report(new Error(`Cannot serialise a ${level} record`, { cause: error }));
      return;
    }
    try {
      this.#sink.write(line);
    } catch (error) {
      this.#report(new Error(`The log sink failed to write a ${level} record`, { cause: error }));
    }
  }

  #report(error: Error): void {
    if (this.#errors.reporting) return; // failing inside onError (which logged again): not reported again
    this.#errors.reporting = true;
    try {
      this.#errors.onError(error);
    } catch {
      // onError itself threw: a log call promised never to throw.
    } finally {
      this.#errors.reporting = false;
    }
  }
}

/** Own enumerable fields with reserved keys renamed (`msg` → `_msg`). */
function toPlainFields(fields: object): LogFields {
  const out: LogFields = {};
  for (const key of Object.keys(fields)) {
    let value: unknown;
    try {
      value = (fields as LogFields)[key];
    } catch (error) {
      value = `[Unserializable: ${describeCause(error)}]`;
    }
    out[RESERVED_KEYS.has(key) ? `_${key}` : key] = value;
  }
  return out;
}

/** The members of an object as JSON without braces, each preceded by a comma (`,"a":1`). */
function jsonMembers(fields: LogFields): string {
  let out = "";
  for (const key of Object.keys(fields)) {
    const value = jsonText(fields[key]);
    if (value !== undefined) out += `,${JSON.stringify(key)}:${value}`;
  }
  return out;
}

/**
 * JSON text of any value. The fast path is `JSON.stringify` with errors and BigInt replaced; a cycle
 * (or a throwing getter / toJSON) falls back to a walk that writes `"[Circular]"` instead.
 */
function jsonText(value: unknown): string {
  try {
    const text = JSON.stringify(value, fastReplacer);
    if (text !== undefined) return text;
  } catch {
    // A cycle, a throwing toJSON or getter: the careful walk below handles all of them.
  }
  return JSON.stringify(toJsonValue(value, [], 0)) ?? "null";
}

function fastReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "object" && value !== null && isError(value)) return toJsonValue(value, [], 0);
  return value;
}

/** A JSON-safe copy: errors as `{name, message, stack, cause, ...}`, BigInt as text, cycles marked. */
function toJsonValue(value: unknown, ancestors: unknown[], depth: number): unknown {
  if (typeof value === "bigint") return value.toString();
  if (typeof value !== "object" || value === null) return value;
  if (ancestors.includes(value)) return "[Circular]";
  if (depth >= MAX_DEPTH) return "[Too deep]";
  ancestors.push(value);
  try {
    if (isError(value)) return errorToJson(value as Error, ancestors, depth);
    const toJSON = (value as { toJSON?: unknown }).toJSON;
    if (typeof toJSON === "function") return toJsonValue(toJSON.call(value), ancestors, depth + 1);
    if (Array.isArray(value)) return value.map((item) => toJsonValue(item, ancestors, depth + 1) ?? null);
    if (value instanceof Map) {
      const out: Record<string, unknown> = {};
      for (const [key, item] of value) out[String(key)] = toJsonValue(item, ancestors, depth + 1);
      return out;
    }
    if (value instanceof Set) {
      return [...value].map((item) => toJsonValue(item, ancestors, depth + 1) ?? null);
    }
    const out: Record<string, unknown> = {};
    for (const key of Object.keys(value)) {
      try {
        out[key] = toJsonValue((value as Record<string, unknown>)[key], ancestors, depth + 1);
      } catch (error) {
        out[key] = `[Unserializable: ${describeCause(error)}]`;
      }
    }
    return out;
  } catch (error) {
    return `[Unserializable: ${describeCause(error)}]`;
  } finally {
    ancestors.pop();
  }
}

function errorToJson(error: Error, ancestors: unknown[], depth: number): Record<string, unknown> {
  const out: Record<string, unknown> = {
    name: safeGet(() => error.name),
    message: safeGet(() => error.message),
    stack: safeGet(() => error.stack),
  };
  for (const key of Object.keys(error)) {
    if (key in out || key === "cause") continue;
    try {
      out[key] = toJsonValue((error as unknown as Record<string, unknown>)[key], ancestors, depth + 1);
    } catch (cause) {
      out[key] = `[Unserializable: ${describeCause(cause)}]`;
    }
  }
  if ("cause" in error && error.cause !== undefined) {
    out.cause = toJsonValue(error.cause, ancestors, depth + 1);
  }
  if (error instanceof AggregateError && Array.isArray(error.errors)) {
    out.errors = error.errors.map((item: unknown) => toJsonValue(item, ancestors, depth + 1) ?? null);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Private: small helpers
// ---------------------------------------------------------------------------------------------------

/** The default `onError`: one line on stderr, then at most one every interval, counting the rest. */
const STDERR_REPORT_INTERVAL_MS = 5_000;

function createStderrReporter(): (error: unknown) => void {
  let lastAt = -Infinity;
  let heldBack = 0;
  return (error: unknown) => {
    const now = Date.now();
    if (now - lastAt < STDERR_REPORT_INTERVAL_MS) {
      heldBack += 1;
      return;
    }
    lastAt = now;
    const more = heldBack > 0 ? ` (${heldBack} more since the last report)` : "";
    heldBack = 0;
    const text = `keelson logging: ${describeCause(error)}${more}\n`;
    try {
      writeOnce(2, encoder.encode(text));
    } catch {
      // stderr is closed or full: the report has nowhere to go, and logging must not throw.
    }
  };
}

function isError(value: unknown): boolean {
  return value instanceof Error || Object.prototype.toString.call(value) === "[object Error]";
}

function safeGet(read: () => unknown): unknown {
  try {
    const value = read();
    return typeof value === "string" ? value : value === undefined ? undefined : String(value);
  } catch (error) {
    return `[Unserializable: ${describeCause(error)}]`;
  }
}

function describeCause(cause: unknown): string {
  try {
    if (isError(cause)) return String((cause as Error).message);
    return String(cause);
  } catch {
    return "(an error that cannot be described)";
  }
}

function safeQuote(value: unknown): string {
  try {
    if (typeof value === "bigint") return `${value}n`;
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

function checkInteger(name: string, value: unknown, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw new TypeError(`Option "${name}" must be an integer, got ${safeQuote(value)}`);
  }
  if (value < min) throw new RangeError(`Option "${name}" must be at least ${min}, got ${value}`);
  return value;
}

function checkMode(value: unknown): number | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "number" || !Number.isInteger(value) || value < 0 || value > 0o7777) {
    throw new RangeError(
      `Option "mode" must be permission bits between 0 and 0o7777, got ${safeQuote(value)}`,
    );
  }
  return value;
}

function checkCallback(value: unknown): ((error: unknown) => void) | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "function") {
    throw new TypeError(`Option "onError" must be a function, got ${safeQuote(value)}`);
  }
  return value as (error: unknown) => void;
}
