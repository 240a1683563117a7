/**
 * WAL mode for an SQLite file shared by several processes, without the silent downgrade that corrupts
 * it. SQLite does not support connections in different journal modes on one file: a process that takes a
 * transient "disk I/O error" on `PRAGMA journal_mode=WAL` for "this filesystem cannot do WAL" and
 * switches to DELETE while its siblings run in WAL corrupts the database.
 *
 * {@linkcode applyWal} therefore falls back only on the two errors that are permanent properties of a
 * filesystem ({@linkcode WAL_INCOMPATIBLE_MARKERS}: "locking protocol" on NFS, "not authorized" on some
 * FUSE mounts) or on a pragma that silently answers another mode, and only after the file's header
 * (bytes 18-19: 1 = rollback journal, 2 = WAL) and the absence of a `-wal` file prove that nobody uses
 * WAL on it. Every other error is re-thrown untouched. It works on any driver with `prepare(sql).get()`
 * (node:sqlite, bun:sqlite, better-sqlite3, @db/sqlite) and imports none.
 *
 * @module
 */

import { readHead, sleepSync, statOrNull } from "./platform.ts";

// ---------------------------------------------------------------------------------------------------
// Public types and constants
// ---------------------------------------------------------------------------------------------------

/**
 * The error texts that are permanent properties of a filesystem, never transient: `"locking protocol"`
 * (`SQLITE_PROTOCOL`, NFS without working POSIX locks) and `"not authorized"` (`SQLITE_AUTH`, some FUSE
 * mounts). Only these, or a pragma that silently answers another mode, make {@linkcode applyWal} fall
 * back to DELETE. Frozen.
 *
 * @example Tell a permanent refusal from a transient error yourself
 * ```ts
 * import { WAL_INCOMPATIBLE_MARKERS } from "./sqlite_wal.ts";
 * const message = "locking protocol".toLowerCase();
 * console.log(WAL_INCOMPATIBLE_MARKERS.some((marker) => message.includes(marker))); // true
 * ```
 */
export const WAL_INCOMPATIBLE_MARKERS: readonly string[] = Object.freeze([
  "locking protocol",
  "not authorized",
]);

/**
 * What the bytes of a database file say about its journal mode, as {@linkcode readJournalModeOnDisk}
 * reports it: `"wal"` (header byte 18 or 19 is 2), `"rollback"` (both are 1), `"empty"` (a 0-byte file,
 * which SQLite treats as a new database), `"absent"` (nothing at the path) or `"not-sqlite"` (a short or
 * foreign file, an unknown format version, or something that is not a regular file).
 *
 * @example Refuse to open a file that is not SQLite
 * ```ts
 * import { type DiskJournalMode, readJournalModeOnDisk } from "./sqlite_wal.ts";
 * const mode: DiskJournalMode = readJournalModeOnDisk("/tmp/example-app.db");
 * if (mode === "not-sqlite") throw new Error("/tmp/example-app.db is not an SQLite database");
 * console.log(mode === "absent" || mode === "empty" ? "a new database" : `an existing ${mode} database`);
 * ```
 */
export type DiskJournalMode = "wal" | "rollback" | "empty" | "absent" | "not-sqlite";

/**
 * A prepared statement of any driver: only `get()` is used.
 *
 * @example A node:sqlite statement is one
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import type { SqliteStatementLike } from "./sqlite_wal.ts";
 * const db = new DatabaseSync(":memory:");
 * const statement: SqliteStatementLike = db.prepare("PRAGMA journal_mode");
 * console.log(statement.get()); // { journal_mode: "memory" }
 * db.close();
 * ```
 */
export interface SqliteStatementLike {
  /** Runs the statement and returns its first row (an object or an array of column values). */
  get(...params: unknown[]): unknown;
}

/**
 * The one method {@linkcode applyWal} needs from a connection: `prepare(sql).get()`. node:sqlite's
 * `DatabaseSync`, bun:sqlite's `Database`, better-sqlite3 and @db/sqlite all have it.
 *
 * @example A stand-in driver for a unit test
 * ```ts
 * import { applyWal, type SqliteLike } from "./sqlite_wal.ts";
 * // Every pragma answers "wal", as a connection already in WAL mode would.
 * const fake: SqliteLike = { prepare: () => ({ get: () => ({ journal_mode: "wal" }) }) };
 * console.log(applyWal(fake, "/tmp/example-fake.db")); // "wal"
 * ```
 */
export interface SqliteLike {
  /** Prepares one SQL statement. */
  prepare(sql: string): SqliteStatementLike;
}

/**
 * What {@linkcode applyWal} achieved: WAL, or a rollback journal after a documented fallback.
 *
 * @example Warn when a connection runs without WAL
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, type WalResult } from "./sqlite_wal.ts";
 * const db = new DatabaseSync(":memory:");
 * const result: WalResult = applyWal(db, ":memory:");
 * if (result === "delete") console.warn("no WAL: readers and the writer block each other"); // in-memory
 * db.close();
 * ```
 */
export type WalResult = "wal" | "delete";

/**
 * Default of {@linkcode ApplyWalOptions.requireWal}.
 *
 * @example Log the effective setting
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, DEFAULT_REQUIRE_WAL } from "./sqlite_wal.ts";
 * const config: { requireWal?: boolean } = {}; // the service's settings, nothing set
 * console.log(`requireWal=${config.requireWal ?? DEFAULT_REQUIRE_WAL}`); // "requireWal=false"
 * const db = new DatabaseSync("/tmp/example-config.db");
 * applyWal(db, "/tmp/example-config.db", config);
 * db.close();
 * ```
 */
export const DEFAULT_REQUIRE_WAL = false;
/**
 * Default of {@linkcode ApplyWalOptions.retries}.
 *
 * @example Retry only when the configuration asks for it
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, DEFAULT_WAL_RETRIES } from "./sqlite_wal.ts";
 * const config: { retries?: number } = JSON.parse('{"retries": 3}'); // the service's settings
 * const db = new DatabaseSync("/tmp/example-retries.db");
 * applyWal(db, "/tmp/example-retries.db", { retries: config.retries ?? DEFAULT_WAL_RETRIES });
 * db.close();
 * ```
 */
export const DEFAULT_WAL_RETRIES = 0;
/**
 * Default of {@linkcode ApplyWalOptions.retryDelayMs}.
 *
 * @example Bound the time spent retrying
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, DEFAULT_WAL_RETRY_DELAY_MS } from "./sqlite_wal.ts";
 * const retries = 4;
 * console.log(`applyWal sleeps at most ${retries * DEFAULT_WAL_RETRY_DELAY_MS} ms`); // 200 ms
 * const db = new DatabaseSync("/tmp/example-delay.db");
 * applyWal(db, "/tmp/example-delay.db", { retries });
 * db.close();
 * ```
 */
export const DEFAULT_WAL_RETRY_DELAY_MS = 50;

/**
 * Options for {@linkcode applyWal}.
 *
 * @example Retry busy errors and insist on WAL
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, type ApplyWalOptions } from "./sqlite_wal.ts";
 * const options: ApplyWalOptions = { retries: 3, retryDelayMs: 100, requireWal: true };
 * const db = new DatabaseSync("/tmp/example-options.db");
 * applyWal(db, "/tmp/example-options.db", options); // WalUnsupportedError rather than DELETE
 * db.close();
 * ```
 */
export interface ApplyWalOptions {
  /**
   * Called with the reason once the connection has fallen back to `journal_mode=DELETE`: the driver's
   * error carrying a permanent marker, or an `Error` saying which mode the WAL pragma answered instead.
   * It runs after the switch; an exception it throws propagates to the caller of `applyWal`.
   * @default undefined (the `"delete"` result is the only report)
   */
  onFallback?: (error: unknown) => void;
  /**
   * Throw {@linkcode WalUnsupportedError} instead of falling back when only DELETE is possible. Nothing
   * is sent to the database then.
   * @default false ({@linkcode DEFAULT_REQUIRE_WAL})
   */
  requireWal?: boolean;
  /**
   * How many times to retry the pragmas after a transient error (busy, locked, I/O error) before
   * re-throwing the last one. Permanent markers and other errors are never retried.
   * @default 0 ({@linkcode DEFAULT_WAL_RETRIES})
   */
  retries?: number;
  /**
   * Milliseconds to sleep (synchronously, without burning a core) between two attempts.
   * @default 50 ({@linkcode DEFAULT_WAL_RETRY_DELAY_MS})
   */
  retryDelayMs?: number;
}

/**
 * What the filesystem says about a database, as gathered before any downgrade.
 *
 * @example Build the error an alert handler is tested with
 * ```ts
 * import { WalDowngradeRefusedError, type WalEvidence } from "./sqlite_wal.ts";
 * const evidence: WalEvidence = { file: "/tmp/example.db", onDisk: "wal", walFilePresent: true };
 * const cause = new Error("locking protocol");
 * const error = new WalDowngradeRefusedError("/tmp/example.db", evidence, cause, null);
 * console.log(error.message); // Refusing to downgrade "/tmp/example.db" from WAL to DELETE: …
 * ```
 */
export interface WalEvidence {
  /** The file that was inspected (the path part of a `file:` URI), or `null` for an in-memory or temp database. */
  file: string | null;
  /** Its header, from {@linkcode readJournalModeOnDisk}; `"absent"` when `file` is `null`. */
  onDisk: DiskJournalMode;
  /** `true` when `<file>-wal` exists. */
  walFilePresent: boolean;
}

/**
 * Thrown by {@linkcode applyWal} when WAL failed permanently on a file that WAL is (or may be) in use on:
 * its header says WAL, a `-wal` file is beside it, or the header cannot be read as SQLite. Nothing was
 * changed: no DELETE pragma was sent, because switching this connection to DELETE while others run in
 * WAL corrupts the database.
 *
 * @example Stop instead of corrupting a shared database
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, WalDowngradeRefusedError } from "./sqlite_wal.ts";
 * const path = "/tmp/example-refused.db";
 * const db = new DatabaseSync(path);
 * try {
 *   applyWal(db, path);
 * } catch (error) {
 *   if (!(error instanceof WalDowngradeRefusedError)) throw error;
 *   console.error(`${error.path}: on disk ${error.onDisk}, -wal file ${error.walFilePresent}`);
 *   throw error;
 * } finally {
 *   db.close();
 * }
 * ```
 */
export class WalDowngradeRefusedError extends Error {
  /** The driver's error with the permanent marker, or an `Error` naming the mode the pragma answered. */
  override readonly cause: unknown;
  /** The path `applyWal` was given. */
  readonly path: string;
  /** The header of the file, from {@linkcode readJournalModeOnDisk}. */
  readonly onDisk: DiskJournalMode;
  /** `true` when a `-wal` file was beside it. */
  readonly walFilePresent: boolean;
  /** The mode `PRAGMA journal_mode=WAL` answered without an error, or `null` when it threw. */
  readonly answeredMode: string | null;

  /**
   * Creates the error from the evidence gathered before any change.
   *
   * @param path The path `applyWal` was given.
   * @param evidence What the filesystem said.
   * @param cause Why WAL could not be set.
   * @param answeredMode The mode the pragma answered, or `null` when it threw.
   */
  constructor(path: string, evidence: WalEvidence, cause: unknown, answeredMode: string | null) {
    super(
      `Refusing to downgrade ${JSON.stringify(path)} from WAL to DELETE: ${walEvidenceText(evidence)}, ` +
        `so other connections may be using WAL (WAL failed: ${reasonText(cause)})`,
      { cause },
    );
    this.name = "WalDowngradeRefusedError";
    this.cause = cause;
    this.path = path;
    this.onDisk = evidence.onDisk;
    this.walFilePresent = evidence.walFilePresent;
    this.answeredMode = answeredMode;
  }
}

/**
 * Thrown by {@linkcode applyWal} with `requireWal: true` when WAL failed permanently and only DELETE
 * would be possible. Nothing was changed.
 *
 * @example Refuse to run without WAL
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, WalUnsupportedError } from "./sqlite_wal.ts";
 * const db = new DatabaseSync(":memory:");
 * try {
 *   applyWal(db, ":memory:", { requireWal: true });
 * } catch (error) {
 *   if (!(error instanceof WalUnsupportedError)) throw error;
 *   console.log(error.message); // an in-memory database has no WAL
 * } finally {
 *   db.close();
 * }
 * ```
 */
export class WalUnsupportedError extends Error {
  /** The driver's error with the permanent marker, or an `Error` naming the mode the pragma answered. */
  override readonly cause: unknown;
  /** The path `applyWal` was given. */
  readonly path: string;
  /** The header of the file, from {@linkcode readJournalModeOnDisk}. */
  readonly onDisk: DiskJournalMode;
  /** `true` when a `-wal` file was beside it (always `false`: that would have been a refusal). */
  readonly walFilePresent: boolean;
  /** The mode `PRAGMA journal_mode=WAL` answered without an error, or `null` when it threw. */
  readonly answeredMode: string | null;

  /**
   * Creates the error from the evidence gathered before any change.
   *
   * @param path The path `applyWal` was given.
   * @param evidence What the filesystem said.
   * @param cause Why WAL could not be set.
   * @param answeredMode The mode the pragma answered, or `null` when it threw.
   */
  constructor(path: string, evidence: WalEvidence, cause: unknown, answeredMode: string | null) {
    super(
      `WAL is required but not supported for ${JSON.stringify(path)}: ${reasonText(cause)}`,
      { cause },
    );
    this.name = "WalUnsupportedError";
    this.cause = cause;
    this.path = path;
    this.onDisk = evidence.onDisk;
    this.walFilePresent = evidence.walFilePresent;
    this.answeredMode = answeredMode;
  }
}

/**
 * What {@linkcode checkJournalMode} found.
 *
 * @example Expose the health check as JSON
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { checkJournalMode, type JournalModeReport } from "./sqlite_wal.ts";
 * const db = new DatabaseSync("/tmp/example-report.db");
 * const report: JournalModeReport = checkJournalMode(db, "/tmp/example-report.db");
 * console.log(JSON.stringify(report)); // {"connection":"delete","onDisk":"empty",…,"agree":true,…}
 * db.close();
 * ```
 */
export interface JournalModeReport {
  /** The connection's mode, as `PRAGMA journal_mode` answers it: `"wal"`, `"delete"`, `"memory"`, … */
  connection: string;
  /** The file's header, from {@linkcode readJournalModeOnDisk} (`"absent"` for in-memory and temp databases). */
  onDisk: DiskJournalMode;
  /** `true` when `<file>-wal` exists. */
  walFilePresent: boolean;
  /** `true` when the connection and the filesystem tell the same story. */
  agree: boolean;
  /** Why they do not agree, in one sentence; `null` when they do. */
  reason: string | null;
}

// ---------------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------------

/**
 * Reads the journal mode a database file declares in its 100-byte header (bytes 18 and 19, the file
 * format write and read versions: 1 = rollback journal, 2 = WAL), without opening it with SQLite.
 *
 * Never throws for a missing, empty or short file. A directory, FIFO or anything else that is not a
 * regular file is `"not-sqlite"` (and is not opened, so a FIFO cannot block the call). A version byte
 * other than 1 or 2 is `"not-sqlite"`; if either byte is 2 the answer is `"wal"`, the safe side for a
 * downgrade decision. Errors other than "nothing there" (e.g. `EACCES`) are thrown.
 *
 * @param path The database file (a plain path, not a `file:` URI).
 * @returns `"wal"`, `"rollback"`, `"empty"`, `"absent"` or `"not-sqlite"`.
 *
 * @example Check a file before trusting it
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, readJournalModeOnDisk } from "./sqlite_wal.ts";
 * const path = `/tmp/example-${Date.now()}.db`;
 * console.log(readJournalModeOnDisk(path)); // "absent"
 * const db = new DatabaseSync(path);
 * applyWal(db, path);
 * db.close();
 * console.log(readJournalModeOnDisk(path)); // "wal"
 * ```
 */
export function readJournalModeOnDisk(path: string): DiskJournalMode {
  if (typeof path !== "string") {
    throw new TypeError(`Cannot read the journal mode on disk: path must be a string, got ${describe(path)}`);
  }
  const stat = statOrNull(path);
  if (stat === null) return "absent";
  if (!stat.isFile) return "not-sqlite";
  if (stat.size === 0) return "empty";
  let header: Uint8Array;
  try {
    header = readHead(path, SQLITE_HEADER_BYTES);
  } catch (error) {
    if (isNotThere(error)) return "absent"; // removed between the stat and the open
    throw error;
  }
  if (header.length === 0) return "empty"; // truncated between the stat and the read
  if (header.length < SQLITE_HEADER_BYTES) return "not-sqlite";
  for (let i = 0; i < SQLITE_MAGIC.length; i++) {
    if (header[i] !== SQLITE_MAGIC[i]) return "not-sqlite";
  }
  const writeVersion = header[HEADER_WRITE_VERSION_OFFSET];
  const readVersion = header[HEADER_READ_VERSION_OFFSET];
  if (!isKnownVersion(writeVersion) || !isKnownVersion(readVersion)) return "not-sqlite";
  if (writeVersion === FORMAT_WAL || readVersion === FORMAT_WAL) return "wal";
  return "rollback";
}

/**
 * `true` when an error carries one of the {@linkcode WAL_INCOMPATIBLE_MARKERS}: in its message
 * (case-insensitive), in the SQLite error text a driver exposes (`errstr`), or as the SQLite result code
 * `SQLITE_PROTOCOL` (15) or `SQLITE_AUTH` (23), extended codes included, in `code`, `errcode` or
 * `errno`, the fields node:sqlite, bun:sqlite, better-sqlite3 and @db/sqlite use.
 *
 * @param error Anything that was thrown.
 * @returns `true` for a permanent "this filesystem cannot do WAL" error.
 *
 * @example
 * ```ts
 * import { isWalIncompatibleError } from "./sqlite_wal.ts";
 * console.log(isWalIncompatibleError(new Error("locking protocol"))); // true
 * console.log(isWalIncompatibleError(new Error("disk I/O error"))); // false
 * ```
 */
export function isWalIncompatibleError(error: unknown): boolean {
  const code = sqliteResultCode(error);
  if (code !== undefined && PERMANENT_RESULT_CODES.includes(code & PRIMARY_CODE_MASK)) return true;
  const codeName = sqliteCodeName(error);
  if (codeName !== undefined && PERMANENT_CODE_NAMES.some((name) => isCodeName(codeName, name))) return true;
  const texts = [errorField(error, "message"), errorField(error, "errstr")];
  for (const text of texts) {
    if (typeof text !== "string") continue;
    const lower = text.toLowerCase();
    if (WAL_INCOMPATIBLE_MARKERS.some((marker) => lower.includes(marker))) return true;
    if (PERMANENT_ERRSTRS.some((errstr) => lower.includes(errstr))) return true;
  }
  return false;
}

/**
 * Puts a connection in WAL mode, falling back to DELETE only when that cannot corrupt a shared file.
 *
 * 1. `PRAGMA journal_mode`: already `wal`, return `"wal"` and send nothing else.
 * 2. `PRAGMA journal_mode=WAL`, trusting its answer: `wal` returns `"wal"`; any other answer without an
 *    error (a VFS or filesystem that silently refuses WAL, a temp database) is treated like a permanent
 *    marker below, never reported as WAL.
 * 3. An error with a permanent marker ({@linkcode isWalIncompatibleError}): read the header of the file
 *    and look for `<file>-wal`. If the header says WAL (or is not SQLite) or the `-wal` file exists,
 *    throw {@linkcode WalDowngradeRefusedError} and send nothing more. Else, with `requireWal`, throw
 *    {@linkcode WalUnsupportedError}. Else send `PRAGMA journal_mode=DELETE` with `busy_timeout` 0 for
 *    that statement (so it fails, rather than waits, while another connection is open; the previous
 *    `busy_timeout` is restored after), call `onFallback(error)` and return `"delete"`.
 * 4. Any other error ("disk I/O error", "database is locked", read-only, …) is re-thrown untouched, the
 *    same object, with no DELETE sent; transient ones (busy, locked, I/O) are first retried `retries`
 *    times, `retryDelayMs` apart.
 *
 * An in-memory database (`:memory:`) answers `memory`: it has no file and no other connection, so WAL
 * is impossible and harmless to go without. It is treated as step 3 on an absent file: `"delete"` is
 * returned (the journal stays in memory) after `onFallback`, or `WalUnsupportedError` with `requireWal`.
 * `path` may be the `file:` URI the database was opened with; its path part is inspected. An error while
 * reading the header (e.g. `EACCES`) is thrown as is, and nothing is changed.
 *
 * @param db An open connection of any driver with `prepare(sql).get()`.
 * @param path The file the connection was opened on (a plain path or a `file:` URI).
 * @param options `onFallback`, `requireWal`, `retries`, `retryDelayMs`.
 * @returns `"wal"`, or `"delete"` after a fallback.
 * @throws {WalDowngradeRefusedError} WAL failed permanently on a file that WAL is in use on.
 * @throws {WalUnsupportedError} `requireWal` and only DELETE is possible.
 * @throws {TypeError} `db` has no `prepare`, `path` is not a string, an option has the wrong type, or the
 *   driver answers a journal mode that is not a string.
 * @throws {RangeError} `retries` or `retryDelayMs` is negative, fractional or not finite.
 *
 * @example Open a shared database in WAL mode
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal } from "./sqlite_wal.ts";
 * const path = "/tmp/example-shared.db";
 * const db = new DatabaseSync(path);
 * db.exec("PRAGMA busy_timeout = 5000");
 * const mode = applyWal(db, path, {
 *   retries: 3,
 *   onFallback: (error) => console.warn(`WAL unavailable, using DELETE: ${error}`),
 * });
 * console.log(mode); // "wal"
 * db.close();
 * ```
 */
export function applyWal(db: SqliteLike, path: string, options: ApplyWalOptions = {}): WalResult {
  checkDb(db, "applyWal");
  checkPath(path, "applyWal");
  const settings = checkOptions(options);
  let attempt = 0;
  let answer: string;
  for (;;) {
    try {
      if (journalMode(db, PRAGMA_READ_MODE) === "wal") return "wal";
      answer = journalMode(db, PRAGMA_SET_WAL);
      break;
    } catch (error) {
      if (isWalIncompatibleError(error)) return fallBack(db, path, error, null, settings);
      if (attempt >= settings.retries || !isTransientError(error)) throw error;
      attempt++;
      sleepSync(settings.retryDelayMs);
    }
  }
  if (answer === "wal") return "wal";
  const refusal = new Error(
    `PRAGMA journal_mode=WAL answered ${JSON.stringify(answer)} without an error: ` +
      (databaseFile(path) === null
        ? "an in-memory or temp database has no WAL"
        : "the VFS or filesystem refuses WAL"),
  );
  return fallBack(db, path, refusal, answer, settings);
}

/**
 * Compares a connection's journal mode with what the filesystem says, for a startup health check. It
 * only reads: `PRAGMA journal_mode` (no argument), the file's header and the presence of `<file>-wal`.
 *
 * They agree when the connection is `wal` and the header says WAL (or the file is still empty), when the
 * connection uses a rollback journal (`delete`, `truncate`, `persist`, `off`) on a rollback or empty file
 * without a `-wal` file, or when an in-memory or temp database has no file. Anything else (a rollback
 * connection on a WAL file, a `-wal` file beside a rollback connection, a file gone from under an open
 * connection) is worth an alarm: `agree` is `false` and `reason` says why.
 *
 * @param db An open connection of any driver with `prepare(sql).get()`.
 * @param path The file the connection was opened on (a plain path or a `file:` URI).
 * @returns The connection's mode, the on-disk mode, whether a `-wal` file exists, and whether they agree.
 * @throws {TypeError} `db` has no `prepare` or `path` is not a string.
 *
 * @example Log a warning when a sibling disagrees
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal, checkJournalMode } from "./sqlite_wal.ts";
 * const path = "/tmp/example-health.db";
 * const db = new DatabaseSync(path);
 * applyWal(db, path);
 * const report = checkJournalMode(db, path);
 * if (!report.agree) console.warn(`journal mode mismatch: ${report.reason}`);
 * console.log(report.connection, report.onDisk); // "wal" "wal"
 * db.close();
 * ```
 */
export function checkJournalMode(db: SqliteLike, path: string): JournalModeReport {
  checkDb(db, "checkJournalMode");
  checkPath(path, "checkJournalMode");
  const connection = journalMode(db, PRAGMA_READ_MODE);
  const evidence = gatherEvidence(path);
  const reason = disagreement(connection, evidence);
  return {
    connection,
    onDisk: evidence.onDisk,
    walFilePresent: evidence.walFilePresent,
    agree: reason === null,
    reason,
  };
}

// ---------------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------------

const PRAGMA_READ_MODE = "PRAGMA journal_mode";
const PRAGMA_SET_WAL = "PRAGMA journal_mode=WAL";
const PRAGMA_SET_DELETE = "PRAGMA journal_mode=DELETE";
const PRAGMA_READ_BUSY_TIMEOUT = "PRAGMA busy_timeout";

const SQLITE_HEADER_BYTES = 100;
/** "SQLite format 3\0" */
const SQLITE_MAGIC = [
  0x53,
  0x51,
  0x4c,
  0x69,
  0x74,
  0x65,
  0x20,
  0x66,
  0x6f,
  0x72,
  0x6d,
  0x61,
  0x74,
  0x20,
  0x33,
  0x00,
];
const HEADER_WRITE_VERSION_OFFSET = 18;
const HEADER_READ_VERSION_OFFSET = 19;
const FORMAT_ROLLBACK = 1;
const FORMAT_WAL = 2;

/** Extended result codes keep the primary code in the low byte. */
const PRIMARY_CODE_MASK = 0xff;
const SQLITE_BUSY = 5;
const SQLITE_LOCKED = 6;
const SQLITE_IOERR = 10;
const SQLITE_PROTOCOL = 15;
const SQLITE_AUTH = 23;
const PERMANENT_RESULT_CODES: readonly number[] = [SQLITE_PROTOCOL, SQLITE_AUTH];
const PERMANENT_CODE_NAMES: readonly string[] = ["SQLITE_PROTOCOL", "SQLITE_AUTH"];
/** `sqlite3_errstr()` of SQLITE_PROTOCOL and SQLITE_AUTH, as node:sqlite puts it in `errstr`. */
const PERMANENT_ERRSTRS: readonly string[] = ["locking protocol", "authorization denied"];
const TRANSIENT_RESULT_CODES: readonly number[] = [SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR];
const TRANSIENT_CODE_NAMES: readonly string[] = ["SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_IOERR"];
/** `sqlite3_errstr()` of the transient codes and the messages SQLite builds from them. */
const TRANSIENT_MESSAGES: readonly string[] = [
  "database is locked",
  "database table is locked",
  "database schema is locked",
  "disk i/o error",
];

/** The connection modes that use a rollback journal (or none) in the database file itself. */
const ROLLBACK_MODES: readonly string[] = ["delete", "truncate", "persist", "off"];

interface WalSettings {
  onFallback: ((error: unknown) => void) | undefined;
  requireWal: boolean;
  retries: number;
  retryDelayMs: number;
}

/** Step 3 of {@linkcode applyWal}: refuse, throw for `requireWal`, or switch to DELETE. */
function fallBack(
  db: SqliteLike,
  path: string,
  cause: unknown,
  answeredMode: string | null,
  settings: WalSettings,
): WalResult {
  const evidence = gatherEvidence(path);
  if (evidence.onDisk === "wal" || evidence.onDisk === "not-sqlite" || evidence.walFilePresent) {
    throw new WalDowngradeRefusedError(path, evidence, cause, answeredMode);
  }
  if (settings.requireWal) throw new WalUnsupportedError(path, evidence, cause, answeredMode);

  const previousTimeout = busyTimeout(db);
  setBusyTimeout(db, 0);
  let mode: string;
  try {
    mode = journalMode(db, PRAGMA_SET_DELETE);
  } catch (error) {
    // The DELETE error is the one the caller must see (e.g. "database is locked": another connection
    // is open); a failure to restore the timeout on top of it says nothing more about the database.
    try {
      setBusyTimeout(db, previousTimeout);
    } catch {
      // Reported through the DELETE error thrown below.
    }
    throw error;
  }
  setBusyTimeout(db, previousTimeout);
  // An in-memory database keeps answering "memory": no file, no rollback journal on disk, no risk.
  if (mode !== "delete" && mode !== "memory") {
    throw new Error(
      `Cannot fall back to DELETE on ${JSON.stringify(path)}: PRAGMA journal_mode=DELETE answered ` +
        `${JSON.stringify(mode)} (WAL failed: ${reasonText(cause)})`,
      { cause },
    );
  }
  settings.onFallback?.(cause);
  return "delete";
}

/** Reads the header of the file behind `path` and looks for its `-wal` file. */
function gatherEvidence(path: string): WalEvidence {
  const file = databaseFile(path);
  if (file === null) return { file: null, onDisk: "absent", walFilePresent: false };
  return {
    file,
    onDisk: readJournalModeOnDisk(file),
    walFilePresent: statOrNull(`${file}-wal`) !== null,
  };
}

/**
 * The filesystem path behind what a database was opened with: `null` for `""` (a temp database) and
 * `:memory:`; the decoded path part of a `file:` URI (`file:/a/b.db?vfs=x`, `file:///a/b.db`,
 * `file://localhost/a/b.db`), `null` for a URI with `mode=memory` or the path `:memory:`.
 */
function databaseFile(path: string): string | null {
  if (path === "" || path === ":memory:") return null;
  if (!path.startsWith("file:")) return path;
  let rest = path.slice("file:".length);
  const hash = rest.indexOf("#");
  if (hash >= 0) rest = rest.slice(0, hash);
  const question = rest.indexOf("?");
  const query = question >= 0 ? rest.slice(question + 1) : "";
  if (question >= 0) rest = rest.slice(0, question);
  if (query.split("&").some((pair) => pair === "mode=memory")) return null;
  if (rest.startsWith("//")) {
    const slash = rest.indexOf("/", 2);
    rest = slash >= 0 ? rest.slice(slash) : "";
  }
  let decoded: string;
  try {
    decoded = decodeURIComponent(rest);
  } catch {
    decoded = rest; // not percent-encoded after all: SQLite takes such bytes literally too
  }
  if (decoded === "" || decoded === ":memory:") return null;
  return decoded;
}

/** Why a connection's mode and the filesystem disagree, or `null` when they agree. */
function disagreement(connection: string, evidence: WalEvidence): string | null {
  const { file, onDisk, walFilePresent } = evidence;
  if (file === null) {
    return connection === "wal" ? "the connection reports WAL on a database without a file" : null;
  }
  if (connection === "memory") {
    return `the connection keeps its journal in memory on a file whose header says ${onDisk}`;
  }
  if (connection === "wal") {
    if (onDisk === "wal" || onDisk === "empty") return null;
    return `the connection uses WAL but the file's header says ${onDisk}`;
  }
  if (ROLLBACK_MODES.includes(connection)) {
    if (onDisk === "wal") return `the connection uses a rollback journal (${connection}) on a WAL file`;
    if (walFilePresent) {
      return `the connection uses a rollback journal (${connection}) but a -wal file is beside the database`;
    }
    if (onDisk === "rollback" || onDisk === "empty") return null;
    return `the connection uses a rollback journal (${connection}) but the file's header says ${onDisk}`;
  }
  return `the connection reports an unknown journal mode ${JSON.stringify(connection)}`;
}

/** Runs a `journal_mode` pragma and returns the mode it answers, lower-cased. */
function journalMode(db: SqliteLike, sql: string): string {
  const value = firstColumn(db.prepare(sql).get());
  if (typeof value !== "string") {
    throw new TypeError(`Expected ${sql} to answer a journal mode string, got ${describe(value)}`);
  }
  return value.toLowerCase();
}

function busyTimeout(db: SqliteLike): number {
  const value = firstColumn(db.prepare(PRAGMA_READ_BUSY_TIMEOUT).get());
  const timeout = typeof value === "bigint" ? Number(value) : value;
  if (typeof timeout !== "number" || !Number.isSafeInteger(timeout) || timeout < 0) {
    throw new TypeError(`Expected ${PRAGMA_READ_BUSY_TIMEOUT} to answer a number, got ${describe(value)}`);
  }
  return timeout;
}

function setBusyTimeout(db: SqliteLike, ms: number): void {
  db.prepare(`PRAGMA busy_timeout=${ms}`).get();
}

/** The first column of a row, whether the driver returns rows as objects or as arrays. */
function firstColumn(row: unknown): unknown {
  if (Array.isArray(row)) return row[0];
  if (typeof row === "object" && row !== null) {
    for (const key in row) return (row as Record<string, unknown>)[key];
  }
  return undefined;
}

function isTransientError(error: unknown): boolean {
  const code = sqliteResultCode(error);
  if (code !== undefined && TRANSIENT_RESULT_CODES.includes(code & PRIMARY_CODE_MASK)) return true;
  const codeName = sqliteCodeName(error);
  if (codeName !== undefined && TRANSIENT_CODE_NAMES.some((name) => isCodeName(codeName, name))) return true;
  for (const text of [errorField(error, "message"), errorField(error, "errstr")]) {
    if (typeof text !== "string") continue;
    const lower = text.toLowerCase();
    if (TRANSIENT_MESSAGES.some((message) => lower.includes(message))) return true;
  }
  return false;
}

/**
 * The numeric SQLite result code of a driver error: `errcode` (node:sqlite), a numeric `code`
 * (@db/sqlite), `errno` (bun:sqlite; only on errors that name themselves SQLite, since Node's system
 * errors use `errno` for the negated OS errno).
 */
function sqliteResultCode(error: unknown): number | undefined {
  const errcode = errorField(error, "errcode");
  if (isResultCode(errcode)) return errcode;
  const code = errorField(error, "code");
  if (isResultCode(code)) return code;
  const errno = errorField(error, "errno");
  if (isResultCode(errno) && looksLikeSqliteError(error)) return errno;
  return undefined;
}

/** A `SQLITE_*` name in `code` (bun:sqlite, better-sqlite3), extended names included. */
function sqliteCodeName(error: unknown): string | undefined {
  const code = errorField(error, "code");
  return typeof code === "string" && code.startsWith("SQLITE_") ? code : undefined;
}

function isCodeName(code: string, name: string): boolean {
  return code === name || code.startsWith(`${name}_`);
}

function isResultCode(value: unknown): value is number {
  return typeof value === "number" && Number.isInteger(value) && value > 0;
}

function looksLikeSqliteError(error: unknown): boolean {
  const name = errorField(error, "name");
  return (typeof name === "string" && /sqlite/i.test(name)) || sqliteCodeName(error) !== undefined;
}

function errorField(error: unknown, field: string): unknown {
  if (typeof error !== "object" || error === null) return undefined;
  try {
    return (error as Record<string, unknown>)[field];
  } catch {
    return undefined; // a getter that throws: that field tells us nothing
  }
}

function isKnownVersion(byte: number): boolean {
  return byte === FORMAT_ROLLBACK || byte === FORMAT_WAL;
}

function isNotThere(error: unknown): boolean {
  const code = errorField(error, "code");
  return code === "ENOENT" || code === "ENOTDIR" || errorField(error, "name") === "NotFound";
}

function walEvidenceText(evidence: WalEvidence): string {
  const parts: string[] = [];
  if (evidence.onDisk === "wal") parts.push("its header says WAL");
  else if (evidence.onDisk === "not-sqlite") parts.push("its header cannot be read as SQLite");
  if (evidence.walFilePresent) parts.push("a -wal file is beside it");
  return parts.join(" and ");
}

function reasonText(cause: unknown): string {
  if (cause instanceof Error) return cause.message;
  return String(cause);
}

function checkDb(db: unknown, caller: string): void {
  if (typeof db !== "object" || db === null || typeof (db as { prepare?: unknown }).prepare !== "function") {
    throw new TypeError(`${caller}(): db must be a connection with prepare(sql), got ${describe(db)}`);
  }
}

function checkPath(path: unknown, caller: string): void {
  if (typeof path !== "string") {
    throw new TypeError(`${caller}(): path must be a string, got ${describe(path)}`);
  }
}

function checkOptions(options: ApplyWalOptions): WalSettings {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(`applyWal(): options must be an object, got ${describe(options)}`);
  }
  const { onFallback, requireWal = DEFAULT_REQUIRE_WAL } = options;
  const retries = options.retries ?? DEFAULT_WAL_RETRIES;
  const retryDelayMs = options.retryDelayMs ?? DEFAULT_WAL_RETRY_DELAY_MS;
  if (onFallback !== undefined && typeof onFallback !== "function") {
    throw new TypeError(`applyWal(): onFallback must be a function, got ${describe(onFallback)}`);
  }
  if (typeof requireWal !== "boolean") {
    throw new TypeError(`applyWal(): requireWal must be a boolean, got ${describe(requireWal)}`);
  }
  if (typeof retries !== "number") {
    throw new TypeError(`applyWal(): retries must be a number, got ${describe(retries)}`);
  }
  if (!Number.isSafeInteger(retries) || retries < 0) {
    throw new RangeError(`applyWal(): retries must be a non-negative integer, got ${describe(retries)}`);
  }
  if (typeof retryDelayMs !== "number") {
    throw new TypeError(`applyWal(): retryDelayMs must be a number, got ${describe(retryDelayMs)}`);
  }
  if (!Number.isFinite(retryDelayMs) || retryDelayMs < 0) {
    throw new RangeError(
      `applyWal(): retryDelayMs must be a finite number >= 0, got ${describe(retryDelayMs)}`,
    );
  }
  return { onFallback, requireWal, retries, retryDelayMs };
}

function describe(value: unknown): string {
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "function") return "a function";
  if (Array.isArray(value)) return "an array";
  if (value === null || typeof value !== "object") return String(value);
  return "an object";
}
