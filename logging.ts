/// <reference lib="esnext.disposable" preserve="true" />
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
 * holder is dead or it has looked unchanged for `lockStaleMs`) and checks again under it: a file
 * someone else already rotated is reopened, never renamed. The live file is then renamed to a private
 * name and checked to be ours before it joins the backups, so a file created by someone else after the
 * re-check is never moved; every step leaves each file under one name, so a process killed at any
 * step never makes a record appear twice, and the next rollover finishes what it left.
 *
 * Deno permissions: `--allow-read --allow-write`. With `-A` a dead rollover-lock holder is recognised at
 * once by its process identity (`/proc`); without it, its lock is taken over after `lockStaleMs`.
 *
 * @module
 */

import {
  checkMode,
  chmod,
  closeFd,
  createBackoff,
  createExclusive,
  errorCode,
  errorMessage,
  fchmod,
  fchown,
  fstat,
  getUid,
  gzipFile,
  handleFileSizeSignal,
  isError,
  judgeIdentity,
  link,
  lstatOrNull,
  mkdirp,
  monotonicMs,
  mustBe,
  onExit,
  openAppend,
  openRead,
  readAt,
  readDir,
  readTextFileOrNull,
  rename,
  selfIdentity,
  setUnrefTimeout,
  sleepSync,
  stat,
  statIdentity,
  statOrNull,
  stderrReporter,
  tempPathBeside,
  touch,
  unlinkIfExists,
  writeAll,
  writeFileAtomic,
  writeOnce,
  writeTextFile,
} from "./platform.ts";
import type { FileIdentity, FileStat, IdentityRecord, ProcessIdentity } from "./platform.ts";

// ---------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------

/** Default of {@linkcode RotatingFileOptions.maxBytes}: 10 MiB. */
const DEFAULT_MAX_BYTES: number = 10 * 1024 * 1024;

/** Default of {@linkcode RotatingFileOptions.backups}. */
const DEFAULT_BACKUPS: number = 5;

/** Default of {@linkcode RotatingFileOptions.checkEvery}: check before every record. */
const DEFAULT_CHECK_EVERY: number = 1;

/** Default of {@linkcode RotatingFileOptions.lockTimeoutMs}. */
const DEFAULT_LOCK_TIMEOUT_MS: number = 5_000;

/** Default of {@linkcode RotatingFileOptions.lockStaleMs}. */
const DEFAULT_LOCK_STALE_MS: number = 10_000;

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
   * Permission bits (e.g. `0o640`) for every file the handle creates, rolls over to or reopens. A new
   * file is created with these bits (never wider for an instant, whatever the umask), then `fchmod`
   * restores what the umask removed; an existing file it reopens gets them with `fchmod`.
   * @default undefined (a first file gets 0o666 narrowed by the umask; a file replacing another one
   *   gets that one's bits, and, when created by root, its owner; existing bits are kept)
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
   * {@linkcode RotatingFileError}. It may write to the same file: it never runs while the rollover
   * lock is held, a write from inside it never starts a rollover, and a failure while it runs is not
   * reported again (no loop).
   * @default one line on stderr, at most one every 5 seconds (with a count of the lines held back)
   */
  onError?: (error: unknown) => void;
  /**
   * How long a rollover waits for the lock held by a live sibling before it gives up (reported to
   * `onError`; the record still goes into the current file, and the rollover is tried again a second
   * later). A `write()` waits at most once for a given holder: while the same lock stays held, later
   * tries only look, so a frozen holder does not stall every write. Measured on a monotonic clock.
   * @default 5000 ({@linkcode DEFAULT_LOCK_TIMEOUT_MS})
   */
  lockTimeoutMs?: number;
  /**
   * A lock that this process has seen unchanged for this long (on a monotonic clock, across its tries)
   * is taken over even when its holder seems alive (a holder stopped or frozen mid-rollover, one in
   * another PID namespace). A rollover takes milliseconds. A wall-clock step neither steals a young
   * lock nor keeps an old one. A holder that was taken over and resumes checks the lock before each
   * file it moves and stops (reported to `onError`); what it left half-done is finished by the next.
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
   * backup (it claims it with `<path>.gz-claim.<inode>`); a backup left plain by a process killed
   * mid-compression is compressed by a later rollover (or the next open), which also removes the
   * killed one's `<backup>.<inode>.gz.tmp`. A process that calls `exit()` right after a rollover leaves
   * that backup plain for the next one.
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
 * @example Tell failed opens from lost writes
 * ```ts
 * import { openRotatingFile, RotatingFileError, type RotatingFileOperation } from "./logging.ts";
 * const failures: RotatingFileOperation[] = [];
 * const log = openRotatingFile("/etc/hostname/app.log", {
 *   onError: (error) => error instanceof RotatingFileError && failures.push(error.operation),
 * });
 * log.write("x");
 * console.log(failures); // ["open", "check"]
 * ```
 */
export type RotatingFileOperation = "open" | "check" | "write" | "rollover" | "close";

/**
 * A failure of a {@linkcode RotatingFile}, handed to `onError`. It tells whether the record at hand was
 * dropped (`lost`) or still written to the current descriptor. Also thrown by
 * {@linkcode openRotatingFile} for a path that is a symbolic link or not a regular file.
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
   * Describes one failure of a rotating file.
   *
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
 * A log file opened by {@linkcode openRotatingFile}. Also a destination for pino (its second argument,
 * `pino({}, file)`): anything with `write(string)`.
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

/** Default of {@linkcode LoggerOptions.level}. */
const DEFAULT_LOG_LEVEL: LogLevel = "info";

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
  /**
   * Writes a `debug` record. Fields whose value is `undefined`, a function or a symbol are left out
   * (at every depth); a field named like a record key (`msg`) is kept as `_msg` (`__msg` if taken).
   * Throws `TypeError` when `fields` is not an object (a string would spread into "0", "1", …).
   */
  debug(msg: string, fields?: LogFields): void;
  /** Writes an `info` record (fields as for {@linkcode Logger.debug}). */
  info(msg: string, fields?: LogFields): void;
  /** Writes a `warn` record (fields as for {@linkcode Logger.debug}). */
  warn(msg: string, fields?: LogFields): void;
  /** Writes an `error` record (fields as for {@linkcode Logger.debug}). */
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
 * it. A path that cannot be opened now (a full disk, no permission) is reported to `onError` and
 * retried on each write; a missing folder is created (also when it is deleted later: the records
 * that cannot be saved are reported `lost`).
 *
 * A short or failed write (a full disk, a file-size limit) reports its record `lost`; the torn rest
 * it may leave is then ended: this handle's next record starts on a fresh line, so a good record is
 * never glued to it (every writer that meets the full disk does the same).
 *
 * Symbolic links are refused, not followed: a rotation renames names, so rotating through a link would
 * rename the link and leave its target growing. Point `path` at the real file (a linked folder on the
 * way is fine). A FIFO, device or folder at the path is refused too, without ever blocking on it.
 *
 * Rotation: prefer keelson's own (`maxBytes`); every writer then agrees under one lock. With logrotate,
 * use `nocreate` and `maxBytes: 0`: logrotate only renames, and the writers recreate the path with
 * `mode` before their next record. Do not use `create`: a writer may recreate the path between
 * logrotate's rename and its create; logrotate then renames that file to `<path>-YYYYMMDDHH.backup`,
 * and a second such conflict within the hour renames over the first backup, losing its records.
 * `copytruncate` loses what is written between logrotate's copy and its truncate.
 *
 * @param path The live log file (a regular file or nothing yet; not a symbolic link).
 * @param options Size limit, backups, mode, check period, error callback.
 * @returns The open file.
 * @throws {TypeError} For bad options (also `RangeError` for numbers out of range).
 * @throws {RotatingFileError} When `path` is a symbolic link or not a regular file.
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
 * const logger = pino({}, openRotatingFile("/tmp/example-app.log")); // the destination is the second argument
 * logger.info("hello");
 * ```
 */
export function openRotatingFile(path: string, options: RotatingFileOptions = {}): RotatingFile {
  if (typeof path !== "string" || path === "") {
    throw new TypeError(mustBe(OPEN, "path", "a non-empty string", path));
  }
  if (typeof options !== "object" || options === null) {
    throw new TypeError(mustBe(OPEN, "options", "an object", options));
  }
  const settings: Settings = {
    maxBytes: checkInteger("maxBytes", options.maxBytes, DEFAULT_MAX_BYTES, 0),
    backups: checkInteger("backups", options.backups, DEFAULT_BACKUPS, 0),
    mode: options.mode === undefined ? undefined : checkMode(OPEN, options.mode),
    checkEvery: checkInteger("checkEvery", options.checkEvery, DEFAULT_CHECK_EVERY, 1),
    onError: checkCallback(OPEN, options.onError) ?? createStderrReporter(),
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
    throw new TypeError(mustBe("create logger", "options", "an object", options));
  }
  const { sink } = options;
  if (typeof sink !== "object" || sink === null || typeof sink.write !== "function") {
    throw new TypeError(mustBe("create logger", "sink", "an object with a write(line) method", sink));
  }
  const level = options.level ?? DEFAULT_LOG_LEVEL;
  if (!LOG_LEVELS.includes(level)) {
    throw new TypeError(mustBe("create logger", "level", `one of ${LOG_LEVELS.join(", ")}`, level));
  }
  const fields = options.fields ?? {};
  if (typeof fields !== "object" || fields === null || Array.isArray(fields)) {
    throw new TypeError(mustBe("create logger", "fields", "an object", fields));
  }
  const onError = checkCallback("create logger", options.onError) ?? createStderrReporter();
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

/** After a rollover could not take the lock, writes go on for this long before the next try. */
const ROLLOVER_RETRY_MS = 1_000;
/** Lock waits sleep from the first to the last value, doubling. */
const LOCK_SLEEP_MIN_MS = 1;
const LOCK_SLEEP_MAX_MS = 32;
/** How often a backup shift starts over when something keeps filling the slot it just freed. */
const SHIFT_ATTEMPTS = 3;
/** Errors of `link(2)` that mean "this filesystem has no hard links": fall back to `rename(2)`. */
const NO_LINK_CODES = new Set(["EPERM", "ENOTSUP", "EOPNOTSUPP", "ENOSYS", "EXDEV", "EMLINK"]);
/** Records up to this many UTF-16 units are encoded into one reused buffer (no allocation). */
const SCRATCH_BYTES = 64 * 1024;
const NEWLINE = 0x0a;
/** A shift through many backups refreshes the lock's mtime every this many slots. */
const HEARTBEAT_EVERY_SLOTS = 256;
/** How often an open retries when the path changes under it (created, removed) between two calls. */
const OPEN_ATTEMPTS = 4;

const encoder = new TextEncoder();

/** Owner and permission bits of the open file: a file created to replace it gets the same. */
interface Ownership {
  uid: number;
  gid: number;
  mode: number;
}

class RotatingFileHandle implements RotatingFile {
  readonly path: string;
  readonly #settings: Settings;
  readonly #lockPath: string;
  readonly #dir: string;
  readonly #base: string;
  /** The open descriptor, or -1 when none could be opened. */
  #fd = -1;
  /** Identity of the open file; `ino` null = unknown (never taken as a change). */
  #dev = 0;
  #ino: number | null = null;
  #ownership: Ownership | null = null;
  /** The live file's size as last seen by a stat, plus what this handle wrote since. */
  #size = 0;
  /** Writes left before the next external-rotation check; 0 = check before the next write. */
  #untilCheck = 0;
  /** Records written since the last check that found the file in place (lost if it was deleted). */
  #sinceCheck = 0;
  #closed = false;
  /** `monotonicMs()` before which no size rollover is tried again (after the lock was busy). */
  #rolloverRetryAt = 0;
  /** A lock seen busy: how long it has been seen unchanged, across tries (see judgeLock). */
  readonly #lockSeen: { current: LockObservation | null } = { current: null };
  /** `true` once a wait for the lock seen in `#lockSeen` timed out: later tries do not wait again. */
  #lockWaitedOut = false;
  /** A write failed: the file may end in a fragment, so the next record must start on a fresh line. */
  #mayBeTorn = false;
  #scratch = new Uint8Array(SCRATCH_BYTES);
  /** Nesting of write() calls: an onError that writes to this file must not reuse the scratch buffer. */
  #depth = 0;
  /** `true` while onError runs: a failure inside it is not reported again (no loop). */
  #reporting = false;
  /** The token of the rollover lock while this handle holds it (see #checkHeld). */
  #lockToken: string | null = null;
  /** Failures met while the rollover lock is held: reported after it is released (onError may log). */
  #held: RotatingFileError[] | null = null;
  /** Buffered mode: where a batch is encoded (`null` when unbuffered); see `#parts`. */
  #batch: Uint8Array | null = null;
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
    this.#dir = dirname(path);
    this.#base = path.slice(this.#dir.length + 1);
    refuseUnusablePath(path);
    handleFileSizeSignal();
    if (settings.bufferBytes > 0) {
      this.#batch = new Uint8Array(settings.bufferBytes);
      registerForExitFlush(this);
    }
    this.#open("open", false);
    this.#finishInterruptedRollovers();
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
      this.#bufferRecord(record);
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
      if (this.#nextBoundary !== Infinity && Date.now() >= this.#nextBoundary) {
        this.#rollover(bytes.length, false); // time rollover: only with `interval`
      }
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
    if (this.#closed || this.#batch === null || this.#units === 0 || this.#flushing) return;
    this.#flushParts(this.#batch);
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
   * different file is reopened; on failure the current descriptor is kept while it still has a name.
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
      this.#sinceCheck = 0;
      return;
    }
    if (seen === null) this.#reportDeletedRecords();
    if (!this.#open("check", incoming > 0) && this.#fd < 0) this.#untilCheck = 0;
  }

  /**
   * The path is gone. If the open file has no name left either (deleted, alone or with its folder),
   * the records written to it since the last check went with it: say so, and stop writing there.
   */
  #reportDeletedRecords(): void {
    if (this.#fd < 0) return;
    let nlink: number;
    try {
      nlink = fstat(this.#fd).nlink;
    } catch {
      return; // unknown: the reopen below decides
    }
    if (nlink > 0) return; // renamed away (a rotation), not deleted
    // The record written right after the last check found the file in place; the ones after it
    // (checkEvery > 1) may have gone to the file after it was deleted.
    const unseen = this.#sinceCheck - 1;
    if (unseen > 0) {
      this.#fail(
        "check",
        `up to ${unseen} record(s) written since the last check may have gone to the file after it was deleted`,
        undefined,
        true,
      );
    }
    this.#sinceCheck = 0;
    const fd = this.#fd;
    this.#fd = -1; // a deleted file is no place for the next record: it is reported lost instead
    try {
      closeFd(fd);
    } catch {
      // The descriptor of a deleted file: nothing in it can be saved.
    }
  }

  /** `true` when `seen` is known to be another file than the open one (unknown inodes never are). */
  #isOtherFile(seen: FileIdentity): boolean {
    if (seen.ino === null || this.#ino === null) return false;
    return seen.ino !== this.#ino || seen.dev !== this.#dev;
  }

  /**
   * Opens the path (creating it, and its folder, when missing) and swaps it in for the current
   * descriptor. On failure the current descriptor stays; `recordAtStake` says whether a write is
   * waiting for this open.
   */
  #open(operation: RotatingFileOperation, recordAtStake: boolean): boolean {
    let opened: OpenedFile;
    try {
      opened = openLiveFile(this.path, this.#settings.mode, this.#ownership);
    } catch (error) {
      const keeps = this.#fd >= 0;
      const lost = recordAtStake && !keeps;
      const what = keeps ? "open failed; writing to the current descriptor" : "open failed";
      this.#fail(operation, what, error, lost);
      return false;
    }
    for (const problem of opened.problems) this.#fail(operation, problem.what, problem.cause, false);
    const previous = this.#fd;
    this.#fd = opened.fd;
    this.#dev = opened.stat.dev;
    this.#ino = opened.stat.ino;
    this.#size = opened.stat.size;
    this.#ownership = { uid: opened.stat.uid, gid: opened.stat.gid, mode: opened.stat.mode & 0o7777 };
    this.#sinceCheck = 0;
    this.#lockWaitedOut = false; // a new file: its rollover is a new question
    this.#rolloverRetryAt = 0;
    if (this.#settings.interval !== null) this.#learnPeriod(opened.stat.size, opened.stat.mtimeMs);
    if (previous >= 0) {
      try {
        closeFd(previous);
      } catch (error) {
        this.#fail(operation, "closing the previous descriptor failed", error, false);
      }
    }
    return true;
  }

  /**
   * One `write(2)`. A short or failed write (full disk, file-size limit) leaves a fragment without a
   * newline: the record is reported lost, and the next record starts on a fresh line.
   */
  #append(bytes: Uint8Array): void {
    if (this.#mayBeTorn) bytes = this.#onFreshLine(bytes);
    let written = 0;
    try {
      written = writeOnce(this.#fd, bytes);
      if (written < bytes.length) writeAll(this.#fd, bytes.subarray(written));
      this.#size += bytes.length;
      this.#sinceCheck += 1;
      this.#mayBeTorn = false;
    } catch (error) {
      this.#mayBeTorn = true; // some bytes may have gone out (`error.bytesWritten` may be a lower bound)
      this.#fail("write", "write failed; the record was dropped (any torn part is cut off)", error, true);
    }
  }

  /** `bytes` preceded by a newline when the live file ends in the torn rest of a failed write. */
  #onFreshLine(bytes: Uint8Array): Uint8Array {
    if (endsWithNewline(this.path, this.#ino)) return bytes;
    const out = new Uint8Array(bytes.length + 1);
    out[0] = NEWLINE;
    out.set(bytes, 1);
    return out;
  }

  /**
   * Rolls the live file over, as a sequence of small steps under the lock: lock → finish what a
   * killed rollover left → re-check → shift backups → move the live file aside → publish it as
   * `path.1` → reopen. Never from inside `onError` or another rollover (the lock is not re-entrant).
   */
  #rollover(incoming: number, force: boolean): void {
    if (this.#held !== null || this.#reporting) return;
    if (!force && monotonicMs() < this.#rolloverRetryAt) return;
    this.#whileLocked("rollover", "rollover failed", () => this.#takeLock(force)?.token ?? null, () => {
      this.#finishLeftovers();
      if (!this.#recheck(incoming, force)) return;
      if (!this.#shiftBackups()) return;
      const aside = this.#moveAside();
      if (aside === null) return;
      this.#publish(aside);
      this.#open("rollover", false);
      this.#afterRollover();
    });
  }

  /**
   * Runs `steps` while holding the rollover lock that `take` acquires (`null`: not taken, nothing to
   * do), then releases it. Reports wait until the release: `onError` may write to this very file.
   */
  #whileLocked(
    operation: RotatingFileOperation,
    failure: string,
    take: () => string | null,
    steps: () => void,
  ): void {
    this.#held = [];
    let token: string | null = null;
    try {
      token = take();
      if (token === null) return;
      this.#lockToken = token;
      steps();
    } catch (error) {
      // A lost lock is reported by the release below; what this handle moved aside stays for the holder.
      if (!(error instanceof LockLost)) this.#fail(operation, failure, error, false);
    } finally {
      this.#lockToken = null;
      if (token !== null) {
        const released = releaseLock(this.#lockPath, token);
        if (released !== null) this.#fail(operation, released, undefined, false);
      }
      const held = this.#held;
      this.#held = null;
      for (const error of held) this.#report(error);
    }
  }

  /**
   * Step "lock". A rollover due to a write waits at most `lockTimeoutMs`, once: while the same lock
   * stays busy afterwards, later tries only look (a frozen holder must not stall every write).
   */
  #takeLock(force: boolean): { token: string } | null {
    const waitMs = force || !this.#lockWaitedOut ? this.#settings.lockTimeoutMs : 0;
    const before = this.#lockSeen.current;
    const lock = acquireLock(this.#lockPath, this.#settings, waitMs, this.#lockSeen);
    if ("token" in lock) {
      this.#lockWaitedOut = false;
      this.#lockSeen.current = null;
      return lock;
    }
    this.#rolloverRetryAt = monotonicMs() + ROLLOVER_RETRY_MS;
    const sameLock = before !== null && this.#lockSeen.current !== null &&
      sameObservation(before, this.#lockSeen.current);
    if (lock.busy && this.#lockWaitedOut && sameLock) return null; // already reported for this holder
    this.#lockWaitedOut = lock.busy;
    this.#fail("rollover", "cannot take the rollover lock; writing to the current file", lock.error, false);
    return null;
  }

  /**
   * Step "finish leftovers" (under the lock): a backup that a killed shift left under two names keeps
   * one; a live file it moved aside is published into the chain; the temporary files of dead lock
   * waiters are removed. Looked for on every take, not only after a takeover: the process that
   * removed a killed holder's lock may have given up or been killed before it took the lock, and the
   * holder after it cannot tell.
   */
  #finishLeftovers(): void {
    this.#keepOneNamePerBackup();
    let names: string[];
    try {
      names = readDir(this.#dir);
    } catch (error) {
      this.#fail("rollover", "cannot list the log folder to finish interrupted rollovers", error, false);
      return;
    }
    const asidePrefix = `${this.#base}${ASIDE_INFIX}`;
    const lockTmpPrefix = `${this.#base}.lock.`;
    const asides: { path: string; mtimeMs: number }[] = [];
    for (const name of names) {
      if (!name.endsWith(".tmp")) continue;
      const full = `${this.#dir}/${name}`;
      if (name.startsWith(asidePrefix)) {
        const seen = statOrNull(full);
        if (seen !== null) asides.push({ path: full, mtimeMs: seen.mtimeMs });
      } else if (name.startsWith(lockTmpPrefix)) {
        sweepDeadWaiter(full, this.#settings);
      }
    }
    // Oldest first: each is published as path.1, pushing the older ones down the chain.
    asides.sort((a, b) => a.mtimeMs - b.mtimeMs);
    for (const aside of asides) this.#finishAside(aside.path);
  }

  /**
   * A shift killed between `link(path.i, path.i+1)` and `unlink(path.i)` leaves one file under two
   * adjacent names: the lower name goes (the move was under way).
   */
  #keepOneNamePerBackup(): void {
    // Every slot, beyond our own `backups` too: a sibling configured with more may have been killed.
    const slots = this.#backupSlots(Infinity);
    for (const i of [...slots].sort((a, b) => b - a)) {
      if (!slots.has(i + 1)) continue;
      const lower = statOrNull(`${this.path}.${i}`);
      const upper = statOrNull(`${this.path}.${i + 1}`);
      if (lower === null || upper === null || lower.ino === null) continue;
      if (lower.ino !== upper.ino || lower.dev !== upper.dev) continue;
      this.#checkHeld();
      unlinkIfExists(`${this.path}.${i}`);
    }
  }

  /** Puts a live file that a killed rollover left aside into the chain, or drops a second name of it. */
  #finishAside(aside: string): void {
    this.#checkHeld();
    const seen = statOrNull(aside);
    if (seen === null) return;
    const live = statOrNull(this.path);
    const first = statOrNull(`${this.path}.1`);
    if (seen.ino !== null && (live?.ino === seen.ino || first?.ino === seen.ino)) {
      unlinkIfExists(aside); // killed after linking it back or publishing it: one name is enough
      return;
    }
    if (this.#settings.backups === 0) {
      unlinkIfExists(aside);
      return;
    }
    if (this.#shiftBackups()) this.#publish(aside);
  }

  /**
   * Step "re-check" (under the lock): a file someone else already rotated is adopted, never renamed;
   * a size rollover goes on only if the real size still calls for it.
   */
  #recheck(incoming: number, force: boolean): boolean {
    let seen: FileIdentity | null;
    try {
      seen = statIdentity(this.path);
    } catch (error) {
      this.#fail("rollover", "stat failed; rollover skipped", error, false);
      return false;
    }
    if (seen === null || this.#isOtherFile(seen)) {
      if (!this.#open("rollover", false) || force) return false;
    } else if (!seen.isFile) {
      this.#fail("rollover", "not a regular file; rollover skipped", undefined, false);
      return false;
    } else {
      this.#size = seen.size;
    }
    const timeDue = this.#timeRolloverDue(); // also learns the live file's period (its backup's name)
    const { maxBytes } = this.#settings;
    return force || timeDue || (maxBytes > 0 && this.#size > 0 && this.#size + incoming > maxBytes);
  }

  /**
   * Step "shift backups": `path.N` is removed and `path.i` becomes `path.i+1`, leaving `path.1` free.
   * Each move is `link` then `unlink` (never clobbers); a name that a killed shift left as a second
   * name of the next slot's file is removed instead of moved. Returns whether `path.1` is free.
   */
  #shiftBackups(): boolean {
    const { backups } = this.#settings;
    if (backups === 0 || this.#settings.interval !== null) return true; // dated backups never shift
    if (this.#settings.compress !== null) this.#shiftCompressed();
    try {
      for (let attempt = 1;; attempt++) {
        const clobber = attempt >= SHIFT_ATTEMPTS;
        // One listing instead of a stat per possible slot: only the backups that exist are visited.
        const slots = this.#backupSlots();
        this.#checkHeld();
        if (slots.has(backups)) unlinkIfExists(`${this.path}.${backups}`);
        let occupied = false;
        let above: number | null = null; // inode that was at slot i+1 before it moved to i+2
        let moved = 0;
        const order = [...slots].filter((i) => i < backups).sort((a, b) => b - a);
        for (const i of order) {
          if (occupied) break;
          if (!slots.has(i + 1)) above = null;
          const from = `${this.path}.${i}`;
          const seen = statOrNull(from);
          if (seen === null) {
            above = null;
            continue;
          }
          this.#checkHeld(); // before each move: a holder taken over while frozen stops here
          if (above !== null && seen.ino === above) {
            unlinkIfExists(from); // the same file as the one just moved: a shift killed mid-move
            above = null;
            continue;
          }
          const to = `${this.path}.${i + 1}`;
          occupied = moveNoClobber(from, to, clobber, () => this.#checkHeld()) === "occupied";
          above = seen.ino;
          if (++moved % HEARTBEAT_EVERY_SLOTS === 0) this.#heartbeat();
        }
        if (!occupied && statOrNull(`${this.path}.1`) === null) return true;
        if (clobber) {
          this.#fail(
            "rollover",
            `"${this.path}.1" keeps being recreated; rollover skipped`,
            undefined,
            false,
          );
          return false;
        }
        // Something filled a slot we had just freed (an external rotator): start over from the end.
      }
    } catch (error) {
      if (error instanceof LockLost) throw error;
      this.#fail("rollover", "shifting the backups failed; the live file stays", error, false);
      return false;
    }
  }

  /** The backup numbers (1 … `upTo`, by default `backups`) present in the folder now. */
  #backupSlots(upTo: number = this.#settings.backups): Set<number> {
    const prefix = `${this.#base}.`;
    const slots = new Set<number>();
    for (const name of readDir(this.#dir)) {
      if (!name.startsWith(prefix)) continue;
      const rest = name.slice(prefix.length);
      if (!/^[1-9]\d*$/.test(rest)) continue;
      const slot = Number(rest);
      if (slot <= upTo) slots.add(slot);
    }
    return slots;
  }

  /**
   * Before each step that moves or removes a file: throws {@linkcode LockLost} when the lock no longer
   * holds our token. A holder frozen (stopped, starved) for `lockStaleMs` is taken over by design; when
   * it resumes it must not move files under the new holder (a second, concurrent shift unlinks names
   * that the other one has just filled: records lost). A step is one `link`/`unlink`/`rename`, so a
   * holder resumed after a takeover does at most the one it was about to do.
   */
  #checkHeld(): void {
    const token = this.#lockToken;
    if (token === null) return;
    let text: string | null;
    try {
      text = readTextFileOrNull(this.#lockPath);
    } catch {
      text = null; // cannot tell: stopping is safe, going on is not
    }
    if (text === null || !text.includes(token)) throw new LockLost();
  }

  /** A long shift shows waiters that the lock's holder is alive: they judge it by an unchanged mtime. */
  #heartbeat(): void {
    try {
      touch(this.#lockPath);
    } catch {
      // Only a waiter's patience depends on it; the shift goes on.
    }
  }

  /**
   * Step "move aside": renames the live file to a private name, then verifies it is the file this
   * handle writes. A file someone else put at the path after the re-check is put back and adopted.
   * Returns the private name, or `null` when there is nothing of ours to publish.
   */
  #moveAside(): string | null {
    const aside = tempPathBeside(`${this.path}${ASIDE_INFIX.slice(0, -1)}`);
    this.#checkHeld();
    try {
      rename(this.path, aside);
    } catch (error) {
      if (errorCode(error) === "ENOENT") {
        this.#open("rollover", false); // gone since the re-check: someone rotated it
        return null;
      }
      throw error;
    }
    const moved = stat(aside);
    if (moved.ino === null || this.#ino === null || (moved.ino === this.#ino && moved.dev === this.#dev)) {
      return aside;
    }
    // Not ours: put it back without replacing anything, and write to it.
    try {
      link(aside, this.path);
      unlinkIfExists(aside);
    } catch (error) {
      if (errorCode(error) !== "EEXIST") throw error;
      this.#publish(aside); // a third file took the path meanwhile: keep this one as the newest backup
    }
    this.#open("rollover", false);
    return null;
  }

  /**
   * Step "publish": the file moved aside becomes `path.1` (`link` + `unlink`; a kill in between
   * leaves two names of one file, which the next rollover reduces to one). With no backups, it is
   * removed.
   */
  #publish(aside: string): void {
    const first = `${this.path}.1`;
    if (this.#settings.backups === 0) {
      unlinkIfExists(aside);
      return;
    }
    if (this.#settings.interval !== null) {
      this.#publishDated(aside);
      return;
    }
    for (let attempt = 1;; attempt++) {
      this.#checkHeld(); // a file left aside is published by whoever holds the lock next
      const result = moveNoClobber(aside, first, attempt >= SHIFT_ATTEMPTS, () => this.#checkHeld());
      if (result !== "occupied") return; // "vanished": a sibling that took our lock over finished it
      if (!this.#shiftBackups()) return; // the file stays aside; the next rollover publishes it
    }
  }

  /**
   * At open: when a killed rollover left its lock, a live file aside or litter of dead waiters, finish
   * it now unless a live process holds the lock, so its records are back in the chain, each under
   * one name, without waiting for the next rollover.
   */
  #finishInterruptedRollovers(): void {
    let names: string[];
    try {
      names = readDir(this.#dir);
    } catch {
      return; // no folder (yet): nothing was left in it
    }
    const leftovers = names.some((name) =>
      name === `${this.#base}.lock` ||
      (name.endsWith(".tmp") &&
        (name.startsWith(`${this.#base}${ASIDE_INFIX}`) || name.startsWith(`${this.#base}.lock.`)))
    );
    if (!leftovers) return;
    const take = () => {
      const lock = acquireLock(this.#lockPath, this.#settings, 0, this.#lockSeen);
      return "token" in lock ? lock.token : null; // a live holder finishes them
    };
    this.#whileLocked(
      "open",
      "finishing an interrupted rollover failed",
      take,
      () => this.#finishLeftovers(),
    );
  }

  // --- Second edition: buffered batches, time rollover, dated backups, retention, compression

  /**
   * Buffered `write`: the record joins the batch as it is (text is encoded once per batch, which costs
   * far less than once per record). The batch goes out first when the record would push the live file
   * past `maxBytes`, cross an `interval` boundary, or overfill the batch; a record larger than the
   * whole buffer goes alone, unbuffered. Sizes are counted in UTF-16 units here (bytes for ASCII) and
   * exactly when the batch is encoded.
   */
  #bufferRecord(record: string | Uint8Array): void {
    let part: string | Uint8Array;
    try {
      if (typeof record === "string") {
        part = record.length > 0 && record.charCodeAt(record.length - 1) === NEWLINE ? record : record + "\n";
      } else if (record instanceof Uint8Array) {
        part = record.slice(); // the caller may reuse its buffer before the batch goes out
        this.#binary = true;
      } else {
        const text = String(record);
        part = text.length > 0 && text.charCodeAt(text.length - 1) === NEWLINE ? text : text + "\n";
      }
    } catch (error) {
      this.#fail("write", "the record cannot be turned into text", error, true); // a throwing toString()
      return;
    }
    const length = part.length + (typeof part === "string" || part[part.length - 1] === NEWLINE ? 0 : 1);
    const { bufferBytes, maxBytes } = this.#settings;
    if (this.#units > 0) {
      const full = this.#units + length > bufferBytes;
      const pastMax = maxBytes > 0 && this.#size + this.#units + length > maxBytes;
      const pastBoundary = this.#nextBoundary !== Infinity && Date.now() >= this.#nextBoundary;
      if (full || pastMax || pastBoundary) this.flush();
    }
    if (length > bufferBytes) {
      this.#untilCheck = 0; // a batch of one: checked like any batch
      this.#flushing = true;
      try {
        this.write(record);
      } finally {
        this.#flushing = false;
      }
      return;
    }
    if (this.#units === 0 && this.#settings.interval !== null) this.#batchAt = Date.now();
    this.#parts.push(part);
    this.#units += length;
    if (this.#units >= bufferBytes) this.flush();
    else if (this.#cancelFlush === null) this.#armFlush();
  }

  /** Records gathered for the next batch, as given (`#binary`: some are bytes), and their size. */
  #parts: (string | Uint8Array)[] = [];
  #binary = false;
  #units = 0;
  /** `Date.now()` when the first record of the batch was taken (time rollover only). */
  #batchAt = 0;

  /**
   * Encodes the gathered records and writes them: one `write(2)` when they fit `bufferBytes` (and
   * `maxBytes`) as bytes, else (multi-byte text) in several batches of whole records.
   */
  #flushParts(batch: Uint8Array): void {
    const parts = this.#parts;
    const binary = this.#binary;
    this.#parts = [];
    this.#binary = false;
    this.#units = 0;
    const { bufferBytes, maxBytes } = this.#settings;
    const limit = maxBytes > 0 ? Math.min(bufferBytes, maxBytes) : bufferBytes;
    if (!binary) {
      const text = parts.length === 1 ? parts[0] as string : parts.join("");
      const { read, written } = encoder.encodeInto(text, batch);
      if (read === text.length && written <= limit) {
        this.#writeBatch(batch, written);
        return;
      }
    }
    // Multi-byte text or bytes: encode record by record, cutting batches between records.
    let used = 0;
    for (const part of parts) {
      let bytes = typeof part === "string" ? encoder.encode(part) : part;
      if (bytes.length === 0 || bytes[bytes.length - 1] !== NEWLINE) {
        const withNewline = new Uint8Array(bytes.length + 1);
        withNewline.set(bytes);
        withNewline[bytes.length] = NEWLINE;
        bytes = withNewline;
      }
      if (used > 0 && used + bytes.length > Math.min(limit, batch.length)) {
        this.#writeBatch(batch, used);
        used = 0;
      }
      if (bytes.length > batch.length) {
        this.#writeBatch(bytes, bytes.length); // grew past the buffer when encoded: alone
        continue;
      }
      batch.set(bytes, used);
      used += bytes.length;
    }
    if (used > 0) this.#writeBatch(batch, used);
  }

  /** Writes `batch[0, length)` with one `write(2)`, after the same check and rollover as a record. */
  #writeBatch(batch: Uint8Array, length: number): void {
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
   * an earlier period is only stamped with the current one (nothing to roll over).
   */
  #timeRolloverDue(): boolean {
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
    return false;
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

  /**
   * Step "publish" with `interval`: the file moved aside becomes `path.<period>` (or `.1`, `.2`, …
   * after the backups that period already has), named after the period of its records. A file that a
   * killed rollover had already published keeps that one name.
   */
  #publishDated(aside: string): void {
    const { interval, utc } = this.#settings;
    const seen = stat(aside);
    const current = periodStart(Date.now(), interval!, utc);
    let period = readPeriodStamp(this.path, seen.dev, seen.ino) ??
      (seen.size === 0 ? current : periodStart(seen.mtimeMs, interval!, utc));
    if (period > current) period = current;
    const stamp = formatPeriod(period, interval!, utc);
    for (let attempt = 1;; attempt++) {
      const existing = listDatedBackups(this.path);
      if (seen.ino !== null && existing.some((backup) => backup.ino === seen.ino)) {
        unlinkIfExists(aside); // killed after publishing it: one name is enough
        return;
      }
      const to = nextDatedName(this.path, stamp, existing);
      if (moveNoClobber(aside, to, attempt >= SHIFT_ATTEMPTS) !== "occupied") return;
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
    if (this.#settings.compress !== null) this.#scheduleCompression(); // runs once the lock is released
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
    const reason = cause === undefined ? "" : `: ${errorMessage(cause)}`;
    const message = `Log file "${this.path}" (${operation}): ${what}${reason}`;
    const error = new RotatingFileError(this.path, operation, message, { cause, lost });
    if (this.#held !== null) {
      this.#held.push(error); // the lock is held: onError runs once it is released
      return;
    }
    this.#report(error);
  }

  #report(error: RotatingFileError): void {
    if (this.#reporting) return;
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

/** Thrown inside a rollover whose lock was taken over: every later step is skipped. */
class LockLost extends Error {
  constructor() {
    super("the rollover lock was taken over");
  }
}

/** Private names of files a rollover moved aside: `<path>.aside.<pid>.<n>.<random>.tmp`. */
const ASIDE_INFIX = ".aside.";

/** The folder part of a path (`"."` for a bare name). */
function dirname(path: string): string {
  const slash = path.lastIndexOf("/");
  if (slash < 0) return ".";
  if (slash === 0) return "/";
  return path.slice(0, slash);
}

/**
 * Refuses, at open, a path that is a symbolic link (rotating it would rename the link away and leave
 * the target growing) or not a regular file (a FIFO would hang the writer, a device cannot rotate).
 */
function refuseUnusablePath(path: string): void {
  let seen: FileStat | null;
  try {
    seen = lstatOrNull(path);
  } catch {
    return; // cannot look (EACCES, …): the open reports it
  }
  if (seen === null || seen.isFile) return;
  const what = seen.isSymbolicLink
    ? "is a symbolic link; open its target instead (a rotation would rename the link, not the file)"
    : "is not a regular file (a FIFO, device or folder cannot be rotated)";
  throw new RotatingFileError(path, "open", `Cannot open log file "${path}": it ${what}`);
}

interface OpenedFile {
  fd: number;
  stat: FileStat;
  /** Things that went wrong without stopping the open (a mode or owner that could not be set). */
  problems: { what: string; cause: unknown }[];
}

/**
 * Opens the live file for appending, never through a symlink and never blocking on a FIFO. A file it
 * creates is created with `mode` (or the bits of the file it replaces), never wider for an instant,
 * and as root it gets the owner of the file it replaces. A missing folder is created.
 */
function openLiveFile(path: string, mode: number | undefined, previous: Ownership | null): OpenedFile {
  const flags = { noFollow: true, nonBlocking: true };
  let fd = -1;
  let created = false;
  let madeFolder = false;
  for (let attempt = 1; fd < 0; attempt++) {
    try {
      fd = openAppend(path, { ...flags, create: false });
      break;
    } catch (error) {
      if (errorCode(error) !== "ENOENT" || attempt >= OPEN_ATTEMPTS) throw error;
    }
    try {
      // The bits are made exact below, where a refusal is a reported problem, not a failed open.
      fd = openAppend(path, {
        ...flags,
        exclusive: true,
        mode: mode ?? previous?.mode ?? 0o666,
        exactMode: false,
      });
      created = true;
    } catch (error) {
      const code = errorCode(error);
      if (code === "EEXIST") continue; // a sibling created it first: open theirs
      if (code !== "ENOENT" || madeFolder) throw error;
      mkdirp(dirname(path)); // the folder is missing (never made, or deleted): make it
      madeFolder = true;
    }
  }
  const problems: OpenedFile["problems"] = [];
  let opened: FileStat;
  try {
    opened = fstat(fd);
    if (!opened.isFile) throw new Error("not a regular file (a FIFO, device or folder cannot be rotated)");
  } catch (error) {
    closeFd(fd);
    throw error;
  }
  const wanted = mode ?? (created ? previous?.mode : undefined);
  if (wanted !== undefined && (opened.mode & 0o7777) !== wanted) {
    try {
      fchmod(fd, wanted); // the umask narrowed a new file, or an existing one has other bits
      opened = { ...opened, mode: (opened.mode & ~0o7777) | wanted };
    } catch (error) {
      problems.push({ what: `cannot set mode ${wanted.toString(8)}; writing anyway`, cause: error });
    }
  }
  if (created && previous !== null && getUid() === 0 && (previous.uid !== 0 || previous.gid !== 0)) {
    // A root CLI rolled over a service's log: hand the new file to the service's user.
    try {
      fchown(fd, previous.uid, previous.gid);
      opened = { ...opened, uid: previous.uid, gid: previous.gid };
      if (wanted !== undefined) fchmod(fd, wanted); // chown may clear set-id bits
    } catch (error) {
      problems.push({ what: `cannot give the new file to uid ${previous.uid}`, cause: error });
    }
  }
  return { fd, stat: opened, problems };
}

/**
 * Whether the file at `path` (when it is still the inode `ino`) ends with a newline. An unreadable or
 * replaced file counts as "no": a stray empty line is better than a record glued to a fragment.
 */
function endsWithNewline(path: string, ino: number | null): boolean {
  let fd = -1;
  try {
    fd = openRead(path);
    const seen = fstat(fd);
    if (ino !== null && seen.ino !== null && seen.ino !== ino) return false;
    if (seen.size === 0) return true;
    return readAt(fd, 1, seen.size - 1)[0] === NEWLINE;
  } catch {
    return false;
  } finally {
    if (fd >= 0) {
      try {
        closeFd(fd);
      } catch {
        // A read-only descriptor: nothing was written through it.
      }
    }
  }
}

/**
 * Moves `from` to `to` without replacing anything at `to` (`link` then `unlink`). `"vanished"` when
 * `from` is gone (a sibling moved it), `"occupied"` when another file is at `to`; when `to` is already
 * the same file (a move killed between its two steps), `from` is just unlinked. `clobber` (the last
 * attempt) and filesystems without hard links use `rename(2)`. `beforeUnlink` runs between the
 * two steps (a rollover checks that it still holds the lock: the name may have been refilled since).
 */
function moveNoClobber(
  from: string,
  to: string,
  clobber: boolean,
  beforeUnlink: () => void = () => {},
): "moved" | "vanished" | "occupied" {
  if (!clobber) {
    try {
      link(from, to);
      beforeUnlink();
      unlinkIfExists(from);
      return "moved";
    } catch (error) {
      const code = errorCode(error);
      if (code === "ENOENT") return "vanished";
      if (code === "EEXIST") {
        const source = statOrNull(from);
        const target = statOrNull(to);
        if (source === null) return "vanished";
        if (
          target !== null && source.ino !== null && source.ino === target.ino && source.dev === target.dev
        ) {
          beforeUnlink();
          unlinkIfExists(from);
          return "moved";
        }
        return "occupied";
      }
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
  /** Inode of the plain file, when there is one. */
  ino: number | null;
  files: string[];
  mtimeMs: number;
}

const DATED_SUFFIX = /^(\d{4}-\d{2}-\d{2}(?:T\d{2}(?:-\d{2}-\d{2})?)?)(?:\.(\d+))?(\.gz)?$/;

function splitPath(path: string): { dir: string; base: string } {
  return { dir: dirname(path), base: path.slice(path.lastIndexOf("/") + 1) };
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
      groups.set(key, group = { stamp, seq, plain: null, ino: null, files: [], mtimeMs: seen.mtimeMs });
    }
    group.files.push(full);
    if (match[3] === undefined) {
      group.plain = full;
      group.ino = seen.ino;
    }
    group.mtimeMs = Math.max(group.mtimeMs, seen.mtimeMs);
  }
  return [...groups.values()].sort((a, b) => a.stamp < b.stamp ? -1 : a.stamp > b.stamp ? 1 : a.seq - b.seq);
}

/** The first free name for a backup of the period `stamp`, after every one it already has. */
function nextDatedName(path: string, stamp: string, existing: DatedBackup[]): string {
  let last = -1;
  for (const group of existing) if (group.stamp === stamp) last = Math.max(last, group.seq);
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
      // Lives for microseconds while a claim is published: an old one is a killed claimer's.
      const seen = statOrNull(`${dir}/${name}`);
      if (seen !== null && Date.now() - seen.mtimeMs > staleMs) unlinkIfExists(`${dir}/${name}`);
      continue;
    }
    const match = /\.(\d+)\.gz\.tmp$/.exec(name) ?? /^\.gz-claim\.(\d+)$/.exec(name.slice(base.length));
    if (match === null) continue;
    const claimPath = compressClaimPath(path, Number(match[1]));
    const claim = tryLock(claimPath, { lockStaleMs: staleMs, mode: undefined }, 0);
    if (typeof claim !== "string") continue; // its compressor is alive
    try {
      if (name.endsWith(".tmp")) unlinkIfExists(`${dir}/${name}`);
    } finally {
      releaseLock(claimPath, claim);
    }
  }
}

/** `acquireLock` for one-off takers (compression): the token, or the error (`busy`: a live holder). */
function tryLock(
  lockPath: string,
  settings: { lockStaleMs: number; mode: number | undefined },
  waitMs: number,
): string | { error: unknown; busy: boolean } {
  const lock = acquireLock(lockPath, settings, waitMs, { current: null });
  return "token" in lock ? lock.token : lock;
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
  const claim = tryLock(claimPath, { lockStaleMs: COMPRESS_CLAIM_STALE_MS, mode: undefined }, 0);
  if (typeof claim !== "string") return claim.busy ? null : claim.error; // busy: another process has it
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
    const lock = tryLock(lockPath, settings, settings.lockTimeoutMs);
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
        mustBe(OPEN, "interval", `"hourly", "daily", "weekly" or an integer of milliseconds`, wanted),
        typeof wanted === "string" ? "range" : "type",
      );
    } else if (wanted < 1000) {
      fail(mustBe(OPEN, "interval", "at least 1000 milliseconds", wanted), "range");
    } else interval = wanted;
  }
  const utc: unknown = options.utc ?? false;
  if (typeof utc !== "boolean") fail(mustBe(OPEN, "utc", "a boolean", utc), "type");
  const compress: unknown = options.compress;
  if (compress !== undefined && compress !== "gzip") {
    fail(mustBe(OPEN, "compress", `"gzip"`, compress), typeof compress === "string" ? "range" : "type");
  }
  const bufferBytes = checkInteger("bufferBytes", options.bufferBytes, 0, 0);
  if (bufferBytes > MAX_BUFFER_BYTES) {
    fail(mustBe(OPEN, "bufferBytes", `at most ${MAX_BUFFER_BYTES}`, bufferBytes), "range");
  }
  const flushMs = checkInteger("flushMs", options.flushMs, DEFAULT_FLUSH_MS, 0);
  if (flushMs > MAX_FLUSH_MS) {
    fail(mustBe(OPEN, "flushMs", `at most ${MAX_FLUSH_MS}`, flushMs), "range");
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

/**
 * The content of `<path>.lock`: the holder's identity (pid, start ticks, boot id, PID namespace, host)
 * so that any process, in any PID namespace, judges it the same way, plus the holder's token.
 */
interface LockRecord extends ProcessIdentity {
  token: string;
  at: string;
}

/** A busy lock as a waiter saw it, and since when (monotonic) it has looked exactly like this. */
interface LockObservation {
  dev: number;
  ino: number | null;
  mtimeMs: number;
  size: number;
  /** The record read: its token is unique, so a new lock that reuses the inode never looks the same. */
  text: string;
  since: number;
}

function sameObservation(a: LockObservation, b: LockObservation): boolean {
  return a.dev === b.dev && a.ino === b.ino && a.mtimeMs === b.mtimeMs && a.size === b.size &&
    a.text === b.text;
}

/**
 * Takes `<path>.lock`: a fully written temporary file is published with `link(2)` (atomic, fails when
 * a lock exists). A lock whose holder is dead is taken over at once; one whose holder cannot be
 * judged dead is taken over once it has looked unchanged for `lockStaleMs` of monotonic time, as seen
 * by this process across its tries (`seen`), so a stepped wall clock neither steals a young lock nor
 * keeps an old one. Waits at most `waitMs`. Returns the token, or the error (`busy`: a live holder).
 */
function acquireLock(
  lockPath: string,
  settings: { lockStaleMs: number; mode: number | undefined },
  waitMs: number,
  seen: { current: LockObservation | null },
): { token: string } | { error: unknown; busy: boolean } {
  const me = selfIdentity();
  const token = `${me.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
  const record: LockRecord = { ...me, token, at: new Date().toISOString() };
  const text = JSON.stringify(record) + "\n";
  const fileOptions = settings.mode === undefined ? {} : { mode: settings.mode };
  const backoff = createBackoff({ minMs: LOCK_SLEEP_MIN_MS, maxMs: LOCK_SLEEP_MAX_MS, timeoutMs: waitMs });
  let tmp: string | null = tempPathBeside(lockPath);
  try {
    writeTextFile(tmp, text, fileOptions);
  } catch (error) {
    unlinkQuietly(tmp);
    return { error, busy: false };
  }
  try {
    for (;;) {
      try {
        if (tmp !== null) link(tmp, lockPath);
        else closeFd(writeExclusive(lockPath, text, settings.mode));
        return { token };
      } catch (error) {
        const code = errorCode(error);
        if (tmp !== null && NO_LINK_CODES.has(code ?? "")) {
          unlinkIfExists(tmp); // no hard links here: exclusive create instead (see writeExclusive)
          tmp = null;
          continue;
        }
        if (tmp !== null && code === "ENOENT") {
          writeTextFile(tmp, text, fileOptions); // swept as litter by a sibling (clock step): again
          continue;
        }
        if (code !== "EEXIST") return { error, busy: false };
      }
      const verdict = judgeLock(lockPath, settings.lockStaleMs, seen);
      if (verdict === "gone") continue;
      if (verdict !== "live") {
        const outcome = takeOver(lockPath, seen.current, { tmp, text }, settings.lockStaleMs);
        if (outcome !== "busy") {
          seen.current = null;
          continue;
        }
        // Another process is taking it over right now: wait for its outcome like for a holder.
      }
      const pause = backoff.next();
      if (pause === null) {
        const holder = readTextFileOrNull(lockPath)?.trim() ?? "gone";
        return {
          error: new Error(`lock "${lockPath}" still held after ${waitMs} ms by ${holder}`),
          busy: true,
        };
      }
      sleepSync(pause);
    }
  } catch (error) {
    return { error, busy: false };
  } finally {
    if (tmp !== null) unlinkQuietly(tmp);
  }
}

/** Exclusive create then write: the fallback where `link(2)` is missing (an empty lock looks young). */
function writeExclusive(lockPath: string, text: string, mode: number | undefined): number {
  const fd = createExclusive(lockPath, mode === undefined ? {} : { mode });
  writeAll(fd, encoder.encode(text));
  return fd;
}

/**
 * What to make of the lock at `lockPath`: `"gone"` (released meanwhile), `"dead"` (its holder is
 * gone), `"stale"` (unchanged for `staleMs` of monotonic time as seen by this process), or `"live"`.
 */
function judgeLock(
  lockPath: string,
  staleMs: number,
  seen: { current: LockObservation | null },
): "gone" | "dead" | "stale" | "live" {
  const now = statOrNull(lockPath);
  if (now === null) return "gone";
  const text = readTextFileOrNull(lockPath);
  if (text === null) return "gone";
  const observed: LockObservation = {
    dev: now.dev,
    ino: now.ino,
    mtimeMs: now.mtimeMs,
    size: now.size,
    text,
    since: monotonicMs(),
  };
  if (holderIsGone(text, now.mtimeMs)) {
    seen.current = observed;
    return "dead";
  }
  const before = seen.current;
  if (before === null || !sameObservation(before, observed)) {
    seen.current = observed;
    return "live";
  }
  return monotonicMs() - before.since > staleMs ? "stale" : "live";
}

/**
 * Removes the lock judged dead or stale, and only that one: the record judged (`judged.text`, whose
 * token is unique) must still be the lock. Takeovers go one at a time, under `<path>.lock.takeover`
 * (published like the lock: our record's temporary file linked, or its text created exclusively where
 * there are no hard links). The lock is first given a second, private name and that is read: a lock
 * that is not the one judged (released and taken again since, maybe on the same inode) is never
 * touched, so the path is never empty under a live holder. Only then is the lock renamed aside; a
 * record found there that is not the judged one (its holder released it in between and a sibling took
 * the lock: only possible for a live holder judged stale) is put back. `"busy"` when another process
 * is taking over.
 */
function takeOver(
  lockPath: string,
  judged: LockObservation | null,
  ours: { tmp: string | null; text: string },
  staleMs: number,
): "removed" | "not-stale" | "busy" {
  if (judged === null) return "not-stale";
  const guard = `${lockPath}.takeover`;
  try {
    if (ours.tmp !== null) link(ours.tmp, guard);
    else closeFd(writeExclusive(guard, ours.text, undefined));
  } catch (error) {
    if (errorCode(error) !== "EEXIST") throw error;
    // A taker killed mid-takeover: try again at once (an open that does not wait must not give up
    // on a dead holder's rollover because of the guard its dead taker left).
    return clearDeadGuard(guard, staleMs) ? "not-stale" : "busy";
  }
  const probe = tempPathBeside(lockPath);
  const aside = tempPathBeside(lockPath);
  try {
    try {
      link(lockPath, probe);
    } catch (error) {
      const code = errorCode(error);
      if (code === "ENOENT") return "not-stale"; // released meanwhile
      if (!NO_LINK_CODES.has(code ?? "")) throw error;
    }
    // Without hard links there is no probe: the lock itself is read (the rename below checks again).
    if (readTextFileOrNull(statOrNull(probe) === null ? lockPath : probe) !== judged.text) {
      return "not-stale";
    }
    try {
      rename(lockPath, aside);
    } catch (error) {
      if (errorCode(error) === "ENOENT") return "not-stale"; // released meanwhile
      throw error;
    }
    if (readTextFileOrNull(aside) !== judged.text) {
      // Released and taken again between the two steps: put it back. Should yet another sibling hold
      // the lock already, theirs stands; the holder put aside finds out before its next step.
      try {
        link(aside, lockPath);
      } catch {
        // See above.
      }
      return "not-stale";
    }
    return "removed";
  } finally {
    unlinkQuietly(probe);
    unlinkQuietly(aside);
    unlinkQuietly(guard);
  }
}

/**
 * A takeover guard whose taker died (or that is older than a takeover could take) is removed. Returns
 * whether the guard is gone (try the takeover again now).
 */
function clearDeadGuard(guard: string, staleMs: number): boolean {
  try {
    const text = readTextFileOrNull(guard);
    const seen = statOrNull(guard);
    if (text === null || seen === null) return true;
    if (holderIsGone(text, seen.mtimeMs) || Date.now() - seen.mtimeMs > staleMs) {
      unlinkIfExists(guard);
      return true;
    }
    return false;
  } catch {
    return false; // judged again on the next try
  }
}

/**
 * Removes `<path>.lock.<pid>.….tmp` left by a waiter that died before cleaning up: its holder record
 * names a dead process, or it is older than any live waiter keeps one.
 */
function sweepDeadWaiter(file: string, settings: { lockTimeoutMs: number; lockStaleMs: number }): void {
  try {
    const text = readTextFileOrNull(file);
    const seen = statOrNull(file);
    if (text === null || seen === null) return;
    // A live waiter keeps its file for lockTimeoutMs at most; one swept by mistake is written again.
    const old = Date.now() - seen.mtimeMs > 2 * (settings.lockTimeoutMs + settings.lockStaleMs);
    if (old || holderIsGone(text, seen.mtimeMs)) unlinkIfExists(file);
  } catch {
    // Litter that cannot be judged or removed stays; it harms nothing.
  }
}

/**
 * Whether the writer of a lock record is provably gone: by pid and start ticks in this PID namespace
 * and boot, or by boot id. A holder in another PID namespace or host is never judged gone here: its
 * pid means nothing to us, and its mtime is on a wall clock that may be stepped; such a lock is taken
 * over only once it has looked unchanged for `lockStaleMs` on our monotonic clock (see judgeLock).
 * Text that is not a record (being written, garbage) is judged by that age alone too.
 */
function holderIsGone(text: string, mtimeMs: number): boolean {
  let holder: unknown;
  try {
    holder = JSON.parse(text);
  } catch {
    return false;
  }
  if (typeof holder !== "object" || holder === null) return false;
  const verdict = judgeIdentity(holder as IdentityRecord, { mtimeMs });
  return !verdict.alive && verdict.basis !== "heartbeat";
}

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
    return `cannot release the rollover lock "${lockPath}": ${errorMessage(error)}`;
  }
}

function unlinkQuietly(path: string): void {
  try {
    unlinkIfExists(path);
  } catch {
    // A leftover temporary beside the lock is swept by a later rollover; the lock outcome is what matters.
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
      throw new TypeError(mustBe("create child logger", "fields", "an object", fields));
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
    if (fields !== undefined && fields !== null && (typeof fields !== "object" || Array.isArray(fields))) {
      throw new TypeError(
        mustBe(
          `write ${level === "info" || level === "error" ? "an" : "a"} ${level} record`,
          "fields",
          "an object",
          fields,
        ),
      );
    }
    let line: string;
    try {
      let text: string;
      if (typeof msg === "string") {
        text = msg;
      } else if (isError(msg)) {
        text = String((msg as Error).message);
        fields = { err: msg, ...fields };
      } else {
        text = jsonText(msg) ?? String(msg);
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
      line = `{"ts":"${isoNow()}","level":"${level}","msg":${JSON.stringify(text)}${members}}\n`;
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

/**
 * Own enumerable fields with reserved keys renamed (`msg` → `_msg`, or `__msg` when `_msg` is taken
 * too): a field never replaces another one.
 */
function toPlainFields(fields: object): LogFields {
  const out: LogFields = {};
  const reserved: string[] = [];
  for (const key of Object.keys(fields)) {
    if (RESERVED_KEYS.has(key)) reserved.push(key);
    else out[key] = readField(fields, key);
  }
  for (const key of reserved) {
    let name = `_${key}`;
    while (Object.hasOwn(out, name)) name = `_${name}`;
    out[name] = readField(fields, key);
  }
  return out;
}

function readField(fields: object, key: string): unknown {
  try {
    return (fields as LogFields)[key];
  } catch (error) {
    return `[Unserializable: ${errorMessage(error)}]`;
  }
}

/** The members of an object as JSON without braces, each preceded by a comma (`,"a":1`). */
/** The last `Date.now()` turned into ISO text, and that text: records of one millisecond share it. */
let isoMs = NaN;
let isoText = "";

/** `new Date().toISOString()`, computed once per millisecond (it is the dearest step of a record). */
function isoNow(): string {
  const now = Date.now();
  if (now !== isoMs) {
    isoMs = now;
    isoText = new Date(now).toISOString();
  }
  return isoText;
}

function jsonMembers(fields: LogFields): string {
  let out = "";
  for (const key of Object.keys(fields)) {
    const value = jsonText(fields[key]);
    if (value !== undefined) out += `,${JSON.stringify(key)}:${value}`;
  }
  return out;
}

/**
 * JSON text of any value, or `undefined` for what JSON has no text for (`undefined`, a function, a
 * symbol): such a field is left out, at the top as at every depth. The fast path is `JSON.stringify`
 * with errors, BigInt, Map and Set replaced; a cycle (or a throwing getter / toJSON) falls back to a
 * walk that writes `"[Circular]"` instead.
 */
function jsonText(value: unknown): string | undefined {
  if (value === undefined || typeof value === "function" || typeof value === "symbol") return undefined;
  // Scalars, the usual field values, skip the replacer (a call per value inside JSON.stringify).
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") return Number.isFinite(value) ? String(value) : "null";
  if (typeof value === "boolean" || value === null) return String(value);
  try {
    const text = JSON.stringify(value, fastReplacer);
    if (text !== undefined) return text;
  } catch {
    // A cycle, a throwing toJSON or getter: the careful walk below handles all of them.
  }
  return JSON.stringify(toJsonValue(value, [], 0));
}

function fastReplacer(_key: string, value: unknown): unknown {
  if (typeof value === "bigint") return value.toString();
  if (typeof value !== "object" || value === null) return value;
  if (isError(value)) return toJsonValue(value, [], 0);
  if (value instanceof Map) return mapEntries(value);
  if (value instanceof Set) return [...value];
  return value;
}

/** A Map as an object of its entries (keys as text); the replacer then walks the values. */
function mapEntries(map: Map<unknown, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [key, item] of map) out[String(key)] = item;
  return out;
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
        out[key] = `[Unserializable: ${errorMessage(error)}]`;
      }
    }
    return out;
  } catch (error) {
    return `[Unserializable: ${errorMessage(error)}]`;
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
      out[key] = `[Unserializable: ${errorMessage(cause)}]`;
    }
  }
  if ("cause" in error && error.cause !== undefined) {
    out["cause"] = toJsonValue(error.cause, ancestors, depth + 1);
  }
  if (error instanceof AggregateError && Array.isArray(error.errors)) {
    out["errors"] = error.errors.map((item: unknown) => toJsonValue(item, ancestors, depth + 1) ?? null);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Private: small helpers
// ---------------------------------------------------------------------------------------------------

/** The default `onError`: one line on stderr, then at most one every 5 s, counting the rest. */
function createStderrReporter(): (error: unknown) => void {
  return stderrReporter("keelson logging", { holdBackMs: 5_000 });
}

function safeGet(read: () => unknown): unknown {
  try {
    const value = read();
    return typeof value === "string" ? value : value === undefined ? undefined : String(value);
  } catch (error) {
    return `[Unserializable: ${errorMessage(error)}]`;
  }
}

/** The action named in every argument error of {@linkcode openRotatingFile}. */
const OPEN = "open rotating file";

function checkInteger(name: string, value: unknown, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== "number" || !Number.isSafeInteger(value)) {
    throw new TypeError(mustBe(OPEN, name, "an integer", value));
  }
  if (value < min) throw new RangeError(mustBe(OPEN, name, `at least ${min}`, value));
  return value;
}

function checkCallback(action: string, value: unknown): ((error: unknown) => void) | undefined {
  if (value === undefined) return undefined;
  if (typeof value !== "function") throw new TypeError(mustBe(action, "onError", "a function", value));
  return value as (error: unknown) => void;
}
