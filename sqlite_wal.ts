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
 * WAL on it. Every other error is re-thrown untouched, after a bounded wait when another connection holds
 * the lock (several processes starting on one fresh file at once). It works on any driver with
 * `prepare(sql).get()` (node:sqlite, bun:sqlite, better-sqlite3, @db/sqlite) and imports none.
 *
 * Which file is inspected is asked of the connection itself (`PRAGMA database_list`), because drivers
 * read a `file:` name differently: node:sqlite opens with URI rules (`file:x.db` is `x.db`), bun:sqlite
 * and better-sqlite3 open `file:x.db` as a literal file name.
 *
 * Deno permissions: `--allow-read --allow-write` (and what the SQLite driver itself needs).
 *
 * @module
 */

import {
  type Backoff,
  checkNumber,
  createBackoff,
  errorMessage,
  isAbsent,
  mustBe,
  readHead,
  sleepSync,
  statOrNull,
} from "./platform.ts";

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
 * A prepared statement of any driver: `get()` is used, and `finalize()` where the driver has it.
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
  /**
   * Releases the statement (bun:sqlite, @db/sqlite). {@linkcode applyWal} calls it on every statement it
   * prepared, when the driver has it: bun:sqlite defers `close()` while a statement is alive, which keeps
   * the lock and the `-wal`/`-shm` files until garbage collection.
   */
  finalize?(): void;
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
 * Options for {@linkcode applyWal}.
 *
 * @example Retry I/O errors and insist on WAL
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
   * error carrying a permanent marker, or an `Error` saying which mode the WAL pragma answered instead,
   * or that the database is in memory (no file, so no WAL). It runs after the switch; an exception it
   * throws propagates to the caller of `applyWal`.
   * @default undefined (the `"delete"` result is the only report)
   */
  onFallback?: ((error: unknown) => void) | undefined;
  /**
   * Throw {@linkcode WalUnsupportedError} instead of falling back when only DELETE is possible. Nothing
   * is sent to the database then.
   * @default false
   */
  requireWal?: boolean | undefined;
  /**
   * Milliseconds to wait out another connection's lock ("database is locked", `SQLITE_BUSY`,
   * `SQLITE_LOCKED`) on the journal pragmas, counted on the monotonic clock from the first lock error,
   * retrying with a growing pause (1 ms doubling up to 50 ms, jittered), before re-throwing the last
   * error untouched. This is what lets several processes open one fresh database at the same moment:
   * one converts it to WAL, the others wait for it. A `busy_timeout` set on the connection applies
   * inside each attempt too. `0` re-throws the first lock error at once.
   * @default 5000
   */
  lockTimeoutMs?: number | undefined;
  /**
   * How many times to retry the pragmas after a transient error (busy, locked, I/O error) once the lock
   * wait is over, before re-throwing the last one. Permanent markers and other errors are never retried.
   * @default 0
   */
  retries?: number | undefined;
  /**
   * Milliseconds to sleep (synchronously, without burning a core) between two of those `retries`.
   * @default 50
   */
  retryDelayMs?: number | undefined;
  /**
   * How `path` names the file, when you know better than the connection: `true` reads it with SQLite's
   * URI rules (`file:x.db?mode=ro` is `x.db`; `file::memory:`, `mode=memory` and `vfs=memdb` are in
   * memory), `false` as a literal file name (only `:memory:` and `""` are special), as bun:sqlite and
   * better-sqlite3 open it. Nothing is asked of the connection then.
   * @default undefined: the connection says which file it opened (`PRAGMA database_list`, which every
   *   real driver answers: node:sqlite with URI rules, bun:sqlite and better-sqlite3 literally); a
   *   stand-in that cannot answer it gets `path` read literally, as `sqlite3_open_v2` reads a name
   *   without `SQLITE_OPEN_URI`.
   */
  uri?: boolean | undefined;
}

/**
 * Options for {@linkcode checkJournalMode}.
 *
 * @example Check a connection that opened a `file:` name literally
 * ```ts
 * import { checkJournalMode, type CheckJournalModeOptions, type SqliteLike } from "./sqlite_wal.ts";
 * const options: CheckJournalModeOptions = { uri: false };
 * const fake: SqliteLike = { prepare: () => ({ get: () => ({ journal_mode: "delete" }) }) };
 * console.log(checkJournalMode(fake, "file:example-literal.db", options).onDisk); // "absent"
 * ```
 */
export interface CheckJournalModeOptions {
  /**
   * How `path` names the file, as for {@linkcode ApplyWalOptions.uri}.
   * @default undefined (the connection says which file it opened)
   */
  uri?: boolean | undefined;
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
 * console.log(error.message); // Cannot switch "/tmp/example.db" from WAL to DELETE: its header says WAL …
 * ```
 */
export interface WalEvidence {
  /**
   * The file that was inspected: the one the connection reports (`PRAGMA database_list`), or `path` read
   * as the `uri` option says; `null` for an in-memory or temporary database.
   */
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
  /** The mode `PRAGMA journal_mode=WAL` answered without an error; `null` when it threw or was not sent. */
  readonly answeredMode: string | null;

  /**
   * Creates the error from the evidence gathered before any change.
   *
   * @param path The path `applyWal` was given.
   * @param evidence What the filesystem said.
   * @param cause Why WAL could not be set.
   * @param answeredMode The mode the pragma answered; `null` when it threw or was not sent.
   */
  constructor(path: string, evidence: WalEvidence, cause: unknown, answeredMode: string | null) {
    super(
      `Cannot switch ${JSON.stringify(path)} from WAL to DELETE: ${walEvidenceText(evidence)}, so other ` +
        `connections may be using WAL (WAL failed: ${errorMessage(cause)})`,
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
  /** The mode `PRAGMA journal_mode=WAL` answered without an error; `null` when it threw or was not sent. */
  readonly answeredMode: string | null;

  /**
   * Creates the error from the evidence gathered before any change.
   *
   * @param path The path `applyWal` was given.
   * @param evidence What the filesystem said.
   * @param cause Why WAL could not be set.
   * @param answeredMode The mode the pragma answered; `null` when it threw or was not sent.
   */
  constructor(path: string, evidence: WalEvidence, cause: unknown, answeredMode: string | null) {
    super(
      `Cannot use WAL on ${JSON.stringify(path)} as 'requireWal' demands: ${errorMessage(cause)}`,
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
    throw new TypeError(mustBe("read the journal mode on disk", "path", "a string", path));
  }
  const stat = statOrNull(path);
  if (stat === null) return "absent";
  if (!stat.isFile) return "not-sqlite";
  if (stat.size === 0) return "empty";
  let header: Uint8Array;
  try {
    header = readHead(path, SQLITE_HEADER_BYTES);
  } catch (error) {
    if (isAbsent(error)) return "absent"; // removed between the stat and the open
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
 * 2. Which file is it? The connection says (`PRAGMA database_list`), unless the `uri` option says how to
 *    read `path`. An in-memory or temporary database (no file: `:memory:`, `""`, `file::memory:`,
 *    `mode=memory`, the `memdb` VFS) cannot use WAL and has nothing to share: nothing more is sent,
 *    `onFallback` gets an `Error` saying so and `"delete"` is returned (not WAL; the connection keeps
 *    the journal mode it has, `memory` or `delete`), or with `requireWal` {@linkcode WalUnsupportedError}
 *    is thrown.
 * 3. `PRAGMA journal_mode=WAL`, trusting its answer: `wal` returns `"wal"`; any other answer without an
 *    error (a VFS or filesystem that silently refuses WAL) is treated like a permanent marker below,
 *    never reported as WAL.
 * 4. An error with a permanent marker ({@linkcode isWalIncompatibleError}): read the header of the file
 *    and look for `<file>-wal`. If the header says WAL (or is not SQLite) or the `-wal` file exists,
 *    throw {@linkcode WalDowngradeRefusedError} and send nothing more. Else, with `requireWal`, throw
 *    {@linkcode WalUnsupportedError}. Else send `PRAGMA journal_mode=DELETE` with `busy_timeout` 0 for
 *    that statement (so it fails, rather than waits, while another connection is open; the previous
 *    `busy_timeout` is restored after), call `onFallback(error)` and return `"delete"`.
 * 5. Another connection's lock ("database is locked") on steps 1 and 3 is waited out for up to
 *    `lockTimeoutMs`; transient errors (busy, locked, I/O) are then retried `retries` times,
 *    `retryDelayMs` apart. Every other error, and the last one once those are spent, is re-thrown
 *    untouched, the same object, with no DELETE sent.
 *
 * Every statement it prepares is finalised where the driver can (`finalize()`), so `close()` releases
 * the file at once on every driver. An error while reading the header (e.g. `EACCES`) is thrown as is,
 * and nothing is changed.
 *
 * @param db An open connection of any driver with `prepare(sql).get()`.
 * @param path The name the connection was opened with (a path, a `file:` name, `:memory:`).
 * @param options `onFallback`, `requireWal`, `lockTimeoutMs`, `retries`, `retryDelayMs`, `uri`.
 * @returns `"wal"`, or `"delete"` after a fallback or for a database without a file.
 * @throws {WalDowngradeRefusedError} WAL failed permanently on a file that WAL is in use on.
 * @throws {WalUnsupportedError} `requireWal` and only DELETE is possible.
 * @throws {TypeError} `db` has no `prepare`, `path` is not a string, an option has the wrong type, or the
 *   driver answers a journal mode that is not a string.
 * @throws {RangeError} `lockTimeoutMs` or `retryDelayMs` is negative or not finite, or `retries` is not a
 *   non-negative integer.
 *
 * @example Open a shared database in WAL mode
 * ```ts
 * import { DatabaseSync } from "node:sqlite";
 * import { applyWal } from "./sqlite_wal.ts";
 * const path = "/tmp/example-shared.db";
 * const db = new DatabaseSync(path);
 * const mode = applyWal(db, path, {
 *   onFallback: (error) => console.warn(`WAL unavailable, using DELETE: ${error}`),
 * });
 * console.log(mode); // "wal"
 * db.exec("PRAGMA busy_timeout = 5000"); // for the application's own writes
 * db.close();
 * ```
 */
export function applyWal(db: SqliteLike, path: string, options: ApplyWalOptions = {}): WalResult {
  checkDb(db, APPLY_WAL);
  checkPath(path, APPLY_WAL);
  const settings = checkOptions(options);
  let lockBackoff: Backoff | undefined; // made at the first lock error: the common path reads no clock
  let attempt = 0;
  let file: string | null | undefined; // asked once, after the first answer that is not "wal"
  let answer: string;
  for (;;) {
    try {
      if (journalMode(db, PRAGMA_READ_MODE) === "wal") return "wal";
      if (file === undefined) file = databaseFile(db, path, settings.uri);
      if (file === null) return noFile(path, settings);
      answer = journalMode(db, PRAGMA_SET_WAL);
      break;
    } catch (error) {
      if (isWalIncompatibleError(error)) {
        return fallBack(db, path, file ?? databaseFile(db, path, settings.uri), error, null, settings);
      }
      if (isSqliteErrorOf(error, LOCK_ERRORS)) {
        // Jittered, so that processes started together do not retry in lockstep.
        lockBackoff ??= createBackoff({
          minMs: LOCK_PAUSE_FIRST_MS,
          maxMs: LOCK_PAUSE_MAX_MS,
          jitter: true,
          timeoutMs: settings.lockTimeoutMs,
        });
        const pause = lockBackoff.next();
        if (pause !== null) {
          sleepSync(pause);
          continue;
        }
      }
      if (attempt >= settings.retries || !isSqliteErrorOf(error, TRANSIENT_ERRORS)) throw error;
      attempt++;
      sleepSync(settings.retryDelayMs);
    }
  }
  if (answer === "wal") return "wal";
  const refusal = new Error(
    `'${PRAGMA_SET_WAL}' answered ${JSON.stringify(answer)} without an error: the VFS or filesystem ` +
      "refuses WAL",
  );
  return fallBack(db, path, file, refusal, answer, settings);
}

/**
 * Compares a connection's journal mode with what the filesystem says, for a startup health check. It
 * only reads: `PRAGMA journal_mode` (no argument), `PRAGMA database_list` (which file the connection
 * opened, unless the `uri` option says how to read `path`), the file's header and the presence of
 * `<file>-wal`.
 *
 * They agree when the connection is `wal` and the header says WAL (or the file is still empty), when the
 * connection uses a rollback journal (`delete`, `truncate`, `persist`, `off`) on a rollback or empty file
 * without a `-wal` file, or when an in-memory or temp database has no file. Anything else (a rollback
 * connection on a WAL file, a `-wal` file beside a rollback connection, a file gone from under an open
 * connection) is worth an alarm: `agree` is `false` and `reason` says why.
 *
 * @param db An open connection of any driver with `prepare(sql).get()`.
 * @param path The name the connection was opened with (a path, a `file:` name, `:memory:`).
 * @param options `uri`: how `path` names the file, as for {@linkcode applyWal}.
 * @returns The connection's mode, the on-disk mode, whether a `-wal` file exists, and whether they agree.
 * @throws {TypeError} `db` has no `prepare`, `path` is not a string or `options.uri` is not a boolean.
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
export function checkJournalMode(
  db: SqliteLike,
  path: string,
  options: CheckJournalModeOptions = {},
): JournalModeReport {
  checkDb(db, CHECK_JOURNAL_MODE);
  checkPath(path, CHECK_JOURNAL_MODE);
  const uri = checkUri(options, CHECK_JOURNAL_MODE);
  const connection = journalMode(db, PRAGMA_READ_MODE);
  const evidence = gatherEvidence(databaseFile(db, path, uri));
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
const PRAGMA_DATABASE_LIST = "PRAGMA database_list";

/** Defaults of {@linkcode ApplyWalOptions}. */
const DEFAULT_REQUIRE_WAL = false;
const DEFAULT_LOCK_TIMEOUT_MS = 5000;
const DEFAULT_RETRIES = 0;
const DEFAULT_RETRY_DELAY_MS = 50;
/** The pause between two attempts while another connection holds the lock: 1 ms, doubling up to 50 ms. */
const LOCK_PAUSE_FIRST_MS = 1;
const LOCK_PAUSE_MAX_MS = 50;

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
/** How an error of one kind shows itself across drivers: result code, code name, or message text. */
interface SqliteErrorKind {
  resultCodes: readonly number[];
  codeNames: readonly string[];
  /** `sqlite3_errstr()` and the messages SQLite builds from these codes, lower case. */
  messages: readonly string[];
}
/** Another connection holds a lock: `SQLITE_BUSY` or `SQLITE_LOCKED`, extended codes included. */
const LOCK_ERRORS: SqliteErrorKind = {
  resultCodes: [SQLITE_BUSY, SQLITE_LOCKED],
  codeNames: ["SQLITE_BUSY", "SQLITE_LOCKED"],
  messages: ["database is locked", "database table is locked", "database schema is locked"],
};
/** A lock, or an I/O error that a retry may get past. */
const TRANSIENT_ERRORS: SqliteErrorKind = {
  resultCodes: [...LOCK_ERRORS.resultCodes, SQLITE_IOERR],
  codeNames: [...LOCK_ERRORS.codeNames, "SQLITE_IOERR"],
  messages: [...LOCK_ERRORS.messages, "disk i/o error"],
};

/** The connection modes that use a rollback journal (or none) in the database file itself. */
const ROLLBACK_MODES: readonly string[] = ["delete", "truncate", "persist", "off"];

interface WalSettings {
  onFallback: ((error: unknown) => void) | undefined;
  requireWal: boolean;
  lockTimeoutMs: number;
  retries: number;
  retryDelayMs: number;
  uri: boolean | undefined;
}

/** Step 3 of {@linkcode applyWal}: refuse, throw for `requireWal`, or switch to DELETE. */
function fallBack(
  db: SqliteLike,
  path: string,
  file: string | null,
  cause: unknown,
  answeredMode: string | null,
  settings: WalSettings,
): WalResult {
  const evidence = gatherEvidence(file);
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
      `Cannot fall back to DELETE on ${JSON.stringify(path)}: '${PRAGMA_SET_DELETE}' must answer "delete", ` +
        `got ${JSON.stringify(mode)} (WAL failed: ${errorMessage(cause)})`,
      { cause },
    );
  }
  settings.onFallback?.(cause);
  return "delete";
}

/** Step 2 of {@linkcode applyWal} for a database without a file: nothing to switch, nothing to share. */
function noFile(path: string, settings: WalSettings): WalResult {
  const reason = new Error(
    `${JSON.stringify(path)} is an in-memory or temporary database; it has no file, so ` +
      "no WAL and no other connection to share it with",
  );
  const evidence: WalEvidence = { file: null, onDisk: "absent", walFilePresent: false };
  if (settings.requireWal) throw new WalUnsupportedError(path, evidence, reason, null);
  settings.onFallback?.(reason);
  return "delete";
}

/** Reads the header of `file` and looks for its `-wal` file (`null`: no file at all). */
function gatherEvidence(file: string | null): WalEvidence {
  if (file === null) return { file: null, onDisk: "absent", walFilePresent: false };
  return {
    file,
    onDisk: readJournalModeOnDisk(file),
    walFilePresent: statOrNull(`${file}-wal`) !== null,
  };
}

/**
 * The file behind a connection, or `null` when it has none (in memory, temporary). With `uri` unset the
 * connection says which file SQLite opened: that is the only reliable answer, because drivers read a
 * `file:` name differently (node:sqlite with `SQLITE_OPEN_URI` on Deno, Bun and Node; bun:sqlite and
 * better-sqlite3 without it, so `file:x.db` is a file of that name).
 */
function databaseFile(db: SqliteLike, path: string, uri: boolean | undefined): string | null {
  if (uri === true) return uriFile(path);
  if (uri === false) return literalFile(path);
  const reported = reportedFile(db);
  if (reported !== undefined) return reported === "" ? null : reported;
  return literalFile(path);
}

/**
 * The main database's file as the connection reports it (`""` for in-memory and temporary databases),
 * or `undefined` when it cannot answer: a stand-in that only plays journal pragmas. Such a failure is
 * not reported: the caller then reads `path` literally, the documented default, and a real driver that
 * failed here fails the journal pragmas too.
 */
function reportedFile(db: SqliteLike): string | undefined {
  let row: unknown;
  try {
    row = queryRow(db, PRAGMA_DATABASE_LIST); // seq 0 is "main"
  } catch {
    return undefined;
  }
  const file = Array.isArray(row)
    ? row[2]
    : typeof row === "object" && row !== null
    ? (row as Record<string, unknown>)["file"]
    : undefined;
  return typeof file === "string" ? file : undefined;
}

/** `path` as `sqlite3_open_v2` reads it without `SQLITE_OPEN_URI`: only `""` and `:memory:` are special. */
function literalFile(path: string): string | null {
  return path === "" || path === ":memory:" ? null : path;
}

/**
 * `path` as SQLite reads it with URI rules: the decoded path part of a `file:` URI (`file:/a/b.db?vfs=x`,
 * `file:///a/b.db`, `file://localhost/a/b.db`); `null` for `mode=memory`, the `memdb` VFS and the path
 * `:memory:`. A name without `file:` is literal.
 */
function uriFile(path: string): string | null {
  if (!path.startsWith("file:")) return literalFile(path);
  let rest = path.slice("file:".length);
  const hash = rest.indexOf("#");
  if (hash >= 0) rest = rest.slice(0, hash);
  const question = rest.indexOf("?");
  const query = question >= 0 ? rest.slice(question + 1).split("&") : [];
  if (question >= 0) rest = rest.slice(0, question);
  if (query.includes("mode=memory") || query.includes("vfs=memdb")) return null;
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
  return literalFile(decoded);
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

/**
 * Prepares `sql`, returns its first row and finalises the statement where the driver can: bun:sqlite
 * defers `close()` (and keeps its lock and `-wal` file) while a statement lives.
 */
function queryRow(db: SqliteLike, sql: string): unknown {
  const statement = db.prepare(sql);
  let row: unknown;
  try {
    row = statement.get();
  } catch (error) {
    try {
      statement.finalize?.();
    } catch {
      // The statement's own error is the one the caller must see, untouched.
    }
    throw error;
  }
  statement.finalize?.();
  return row;
}

/** Runs a `journal_mode` pragma and returns the mode it answers, lower-cased. */
function journalMode(db: SqliteLike, sql: string): string {
  const value = firstColumn(queryRow(db, sql));
  if (typeof value !== "string") {
    throw new TypeError(mustBe("read the journal mode", sql, "answered with a string", value));
  }
  return value.toLowerCase();
}

function busyTimeout(db: SqliteLike): number {
  const value = firstColumn(queryRow(db, PRAGMA_READ_BUSY_TIMEOUT));
  const timeout = typeof value === "bigint" ? Number(value) : value;
  if (typeof timeout !== "number" || !Number.isSafeInteger(timeout) || timeout < 0) {
    throw new TypeError(
      mustBe(
        "read the busy timeout",
        PRAGMA_READ_BUSY_TIMEOUT,
        "answered with a non-negative integer",
        value,
      ),
    );
  }
  return timeout;
}

function setBusyTimeout(db: SqliteLike, ms: number): void {
  queryRow(db, `PRAGMA busy_timeout=${ms}`);
}

/** The first column of a row, whether the driver returns rows as objects or as arrays. */
function firstColumn(row: unknown): unknown {
  if (Array.isArray(row)) return row[0];
  if (typeof row === "object" && row !== null) {
    for (const key in row) return (row as Record<string, unknown>)[key];
  }
  return undefined;
}

/** Whether `error` is of `kind`, by whichever of code, code name or message text its driver gives. */
function isSqliteErrorOf(error: unknown, kind: SqliteErrorKind): boolean {
  const code = sqliteResultCode(error);
  if (code !== undefined && kind.resultCodes.includes(code & PRIMARY_CODE_MASK)) return true;
  const codeName = sqliteCodeName(error);
  if (codeName !== undefined && kind.codeNames.some((name) => isCodeName(codeName, name))) return true;
  for (const text of [errorField(error, "message"), errorField(error, "errstr")]) {
    if (typeof text !== "string") continue;
    const lower = text.toLowerCase();
    if (kind.messages.some((message) => lower.includes(message))) return true;
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

function isKnownVersion(byte: number | undefined): boolean {
  return byte === FORMAT_ROLLBACK || byte === FORMAT_WAL;
}

function walEvidenceText(evidence: WalEvidence): string {
  const parts: string[] = [];
  if (evidence.onDisk === "wal") parts.push("its header says WAL");
  else if (evidence.onDisk === "not-sqlite") parts.push("its header cannot be read as SQLite");
  if (evidence.walFilePresent) parts.push("a -wal file is beside it");
  return parts.join(" and ");
}

function checkDb(db: unknown, action: string): void {
  if (typeof db !== "object" || db === null || typeof (db as { prepare?: unknown }).prepare !== "function") {
    throw new TypeError(mustBe(action, "db", "a connection with prepare(sql)", db));
  }
}

function checkPath(path: unknown, action: string): void {
  if (typeof path !== "string") throw new TypeError(mustBe(action, "path", "a string", path));
}

function checkOptions(options: ApplyWalOptions): WalSettings {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(mustBe(APPLY_WAL, "options", "an object", options));
  }
  const { onFallback, requireWal = DEFAULT_REQUIRE_WAL } = options;
  const lockTimeoutMs = options.lockTimeoutMs ?? DEFAULT_LOCK_TIMEOUT_MS;
  const retries = options.retries ?? DEFAULT_RETRIES;
  const retryDelayMs = options.retryDelayMs ?? DEFAULT_RETRY_DELAY_MS;
  if (onFallback !== undefined && typeof onFallback !== "function") {
    throw new TypeError(mustBe(APPLY_WAL, "onFallback", "a function", onFallback));
  }
  if (typeof requireWal !== "boolean") {
    throw new TypeError(mustBe(APPLY_WAL, "requireWal", "a boolean", requireWal));
  }
  checkMilliseconds("lockTimeoutMs", lockTimeoutMs);
  checkNumber(
    APPLY_WAL,
    "retries",
    retries,
    "a non-negative integer",
    (n) => Number.isSafeInteger(n) && n >= 0,
  );
  checkMilliseconds("retryDelayMs", retryDelayMs);
  const uri = checkUri(options, APPLY_WAL);
  return { onFallback, requireWal, lockTimeoutMs, retries, retryDelayMs, uri };
}

function checkMilliseconds(name: string, value: unknown): void {
  checkNumber(APPLY_WAL, name, value, "a finite number >= 0", (n) => Number.isFinite(n) && n >= 0);
}

function checkUri(options: { uri?: boolean | undefined }, action: string): boolean | undefined {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(mustBe(action, "options", "an object", options));
  }
  const { uri } = options;
  if (uri !== undefined && typeof uri !== "boolean") {
    throw new TypeError(mustBe(action, "uri", "a boolean", uri));
  }
  return uri;
}

/** The actions argument errors name. */
const APPLY_WAL = "apply WAL";
const CHECK_JOURNAL_MODE = "check the journal mode";
