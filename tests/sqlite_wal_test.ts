import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as path from "node:path";
import { constants as sqliteConstants, DatabaseSync } from "node:sqlite";
import { runtime } from "../platform.ts";
import {
  fixture,
  freshDir,
  freshPath as freshPathIn,
  type Outcome,
  startFixture,
  tempRoot,
} from "./_helpers.ts";
import {
  applyWal,
  checkJournalMode,
  isWalIncompatibleError,
  readJournalModeOnDisk,
  type SqliteLike,
  WAL_INCOMPATIBLE_MARKERS,
  WalDowngradeRefusedError,
  WalUnsupportedError,
} from "../sqlite_wal.ts";

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

const WRITER = fixture("sqlite_wal_writer.ts");

const SQLITE3_CLI = spawnSync("sqlite3", ["-version"], { encoding: "utf8" }).status === 0;
const NO_CLI = "the sqlite3 command-line tool is not installed (CI installs it): skipped";
const NO_BUN = "bun:sqlite exists only on Bun";
const HAS_AUTHORIZER = typeof (DatabaseSync.prototype as { setAuthorizer?: unknown }).setAuthorizer ===
  "function";
const NO_AUTHORIZER = "this node:sqlite has no setAuthorizer(): a real SQLITE_AUTH cannot be provoked";

/** The drivers a test can open a real database with, beyond node:sqlite. */
interface RealConnection extends SqliteLike {
  exec(sql: string): void;
  close(): void;
}
type OpenDatabase = (name: string) => RealConnection;

/** bun:sqlite's Database, or `null` off Bun. */
async function bunSqlite(): Promise<OpenDatabase | null> {
  if (runtime !== "bun") return null;
  const specifier = "bun:sqlite"; // a variable: only Bun resolves it, and only Bun gets here
  const { Database } = await import(specifier);
  return (name) => new Database(name) as RealConnection;
}

/**
 * better-sqlite3 (a pinned devDependency: an N-API addon whose package carries prebuilt binaries, so it
 * installs without a compiler and loads on Deno, Bun and Node), or why it cannot be tested here.
 */
function betterSqlite3(): { open: OpenDatabase | null; reason: string } {
  try {
    const Database = createRequire(import.meta.url)("better-sqlite3");
    return { open: (name) => new Database(name) as RealConnection, reason: "" };
  } catch (error) {
    const why = String((error as Error).message ?? error).split("\n")[0];
    return { open: null, reason: `better-sqlite3 does not load on ${runtime} here: ${why}` };
  }
}
const BETTER = betterSqlite3();
/** The drivers other than node:sqlite: name, loader, and why they are skipped here (or false). */
const OTHER_DRIVERS: Array<[string, () => Promise<OpenDatabase | null>, string | false]> = [
  ["bun:sqlite", bunSqlite, runtime !== "bun" && NO_BUN],
  ["better-sqlite3", () => Promise.resolve(BETTER.open), BETTER.open === null && BETTER.reason],
];

const root = tempRoot();

/** A fresh path (no file yet) in this run's temp dir. */
function freshPath(name = "db"): string {
  return freshPathIn(root, `${name}.sqlite`);
}

/** Runs the real sqlite3 CLI on a file and returns its stdout. */
function cli(file: string, sql: string): string {
  const result = spawnSync("sqlite3", [file, sql], { encoding: "utf8" });
  assert.equal(result.status, 0, `sqlite3 failed: ${result.stderr}`);
  return result.stdout.trim();
}

/** A database in rollback (DELETE) mode with one table and one row, made by node:sqlite. */
function rollbackFile(): string {
  const file = freshPath("rollback");
  const db = new DatabaseSync(file);
  db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
  db.close();
  assert.equal(readJournalModeOnDisk(file), "rollback");
  return file;
}

/** A database in WAL mode with one table, closed cleanly (so no -wal file is left), made by node:sqlite. */
function walFile(): string {
  const file = freshPath("wal");
  const db = new DatabaseSync(file);
  db.exec("PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1)");
  db.close();
  assert.equal(fs.existsSync(`${file}-wal`), false);
  assert.equal(readJournalModeOnDisk(file), "wal");
  return file;
}

/** Wraps a real connection and records every SQL it is asked to prepare. */
function recording(db: SqliteLike): { db: SqliteLike; log: string[] } {
  const log: string[] = [];
  return {
    log,
    db: {
      prepare(sql: string) {
        log.push(sql);
        return db.prepare(sql);
      },
    },
  };
}

/** An error shaped like one a driver throws, with extra fields. */
function driverError(message: string, fields: Record<string, unknown> = {}): Error {
  return Object.assign(new Error(message), fields);
}

/** Every shape a permanent marker arrives in from the drivers we know. */
const PERMANENT_ERRORS: Array<[string, () => unknown]> = [
  ["message 'locking protocol'", () => new Error("locking protocol")],
  ["message 'not authorized'", () => new Error("not authorized")],
  ["message in upper case", () => new Error("LOCKING PROTOCOL")],
  ["message inside a longer text", () => new Error("SqliteError: not authorized to use WAL here")],
  [
    "node:sqlite SQLITE_AUTH (errcode 23, errstr)",
    () =>
      driverError("not authorized", {
        code: "ERR_SQLITE_ERROR",
        errcode: 23,
        errstr: "authorization denied",
      }),
  ],
  [
    "node:sqlite SQLITE_PROTOCOL by errcode only",
    () => driverError("something odd", { code: "ERR_SQLITE_ERROR", errcode: 15 }),
  ],
  ["node:sqlite extended SQLITE_AUTH_USER (279)", () => driverError("x", { errcode: 279 })],
  ["errstr 'locking protocol' only", () => driverError("x", { errstr: "locking protocol" })],
  [
    "bun:sqlite SQLiteError code SQLITE_PROTOCOL",
    () => Object.assign(driverError("x", { code: "SQLITE_PROTOCOL", errno: 15 }), { name: "SQLiteError" }),
  ],
  ["better-sqlite3 code SQLITE_AUTH", () => driverError("x", { code: "SQLITE_AUTH" })],
  ["@db/sqlite numeric code 15", () => driverError("x", { code: 15 })],
];

/** Errors that must never cause a downgrade. */
const OTHER_ERRORS: Array<[string, () => unknown]> = [
  ["disk I/O error", () => driverError("disk I/O error", { errcode: 10, errstr: "disk I/O error" })],
  ["extended SQLITE_IOERR_LOCK (3850)", () => driverError("disk I/O error", { errcode: 3850 })],
  ["database is locked", () => driverError("database is locked", { code: "SQLITE_BUSY", errno: 5 })],
  ["read-only", () => driverError("attempt to write a readonly database", { errcode: 8 })],
  ["a plain Error", () => new Error("boom")],
  ["a TypeError from the driver", () => new TypeError("statement has been finalized")],
  ["a thrown string", () => "not an Error object"],
  ["a system error whose errno happens to be 15", () => driverError("EIO", { code: "EIO", errno: 15 })],
];

/** Runs `fn` and returns what it threw (failing when it does not throw). */
function thrown(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  assert.fail("expected a throw");
}

// ---------------------------------------------------------------------------------------------------
// WAL_INCOMPATIBLE_MARKERS and isWalIncompatibleError
// ---------------------------------------------------------------------------------------------------

describe("WAL_INCOMPATIBLE_MARKERS", () => {
  it("WAL_INCOMPATIBLE_MARKERS is exactly the two permanent markers, frozen", () => {
    assert.deepEqual([...WAL_INCOMPATIBLE_MARKERS], ["locking protocol", "not authorized"]);
    assert.equal(Object.isFrozen(WAL_INCOMPATIBLE_MARKERS), true);
    assert.throws(() => (WAL_INCOMPATIBLE_MARKERS as string[]).push("disk i/o error"), TypeError);
    assert.equal(WAL_INCOMPATIBLE_MARKERS.length, 2);
  });
});

describe("isWalIncompatibleError()", () => {
  for (const [name, make] of PERMANENT_ERRORS) {
    it(`isWalIncompatibleError() is true for ${name}`, () => {
      assert.equal(isWalIncompatibleError(make()), true);
    });
  }
  for (const [name, make] of OTHER_ERRORS) {
    it(`isWalIncompatibleError() is false for ${name}`, () => {
      assert.equal(isWalIncompatibleError(make()), false);
    });
  }
  it("isWalIncompatibleError() is false for null, undefined and numbers", () => {
    assert.equal(isWalIncompatibleError(null), false);
    assert.equal(isWalIncompatibleError(undefined), false);
    assert.equal(isWalIncompatibleError(15), false);
  });
});

// ---------------------------------------------------------------------------------------------------
// readJournalModeOnDisk
// ---------------------------------------------------------------------------------------------------

describe("readJournalModeOnDisk()", () => {
  it("readJournalModeOnDisk() says wal for a file the sqlite3 CLI made in WAL mode", {
    skip: !SQLITE3_CLI && NO_CLI,
  }, () => {
    const file = freshPath("cli-wal");
    cli(file, "PRAGMA journal_mode=WAL; CREATE TABLE t(x);");
    assert.equal(readJournalModeOnDisk(file), "wal");
    assert.equal(cli(file, "PRAGMA journal_mode;"), "wal");
  });

  it("readJournalModeOnDisk() says rollback for a file the sqlite3 CLI made in DELETE mode", {
    skip: !SQLITE3_CLI && NO_CLI,
  }, () => {
    const file = freshPath("cli-delete");
    cli(file, "PRAGMA journal_mode=DELETE; CREATE TABLE t(x);");
    assert.equal(readJournalModeOnDisk(file), "rollback");
    assert.equal(cli(file, "PRAGMA journal_mode;"), "delete");
  });

  it("readJournalModeOnDisk() follows the sqlite3 CLI converting WAL to DELETE and back", {
    skip: !SQLITE3_CLI && NO_CLI,
  }, () => {
    const file = freshPath("cli-convert");
    cli(file, "PRAGMA journal_mode=WAL; CREATE TABLE t(x);");
    assert.equal(cli(file, "PRAGMA journal_mode=DELETE;"), "delete");
    assert.equal(readJournalModeOnDisk(file), "rollback");
    assert.equal(cli(file, "PRAGMA journal_mode=WAL;"), "wal");
    assert.equal(readJournalModeOnDisk(file), "wal");
  });

  it("readJournalModeOnDisk() says empty for a 0-byte file", () => {
    const file = freshPath("empty");
    fs.writeFileSync(file, "");
    assert.equal(readJournalModeOnDisk(file), "empty");
  });

  it("readJournalModeOnDisk() says absent for a missing file and a missing directory, without throwing", () => {
    assert.equal(readJournalModeOnDisk(freshPath("missing")), "absent");
    assert.equal(readJournalModeOnDisk(path.join(root, "no-such-dir", "x.db")), "absent");
  });

  it("readJournalModeOnDisk() says absent below a regular file (ENOTDIR)", () => {
    const file = freshPath("plain");
    fs.writeFileSync(file, "x");
    assert.equal(readJournalModeOnDisk(path.join(file, "x.db")), "absent");
  });

  it("readJournalModeOnDisk() says not-sqlite for a text file of 200 bytes", () => {
    const file = freshPath("text");
    fs.writeFileSync(file, "x".repeat(200));
    assert.equal(readJournalModeOnDisk(file), "not-sqlite");
  });

  it("readJournalModeOnDisk() says not-sqlite for a short file cut from a real WAL database", () => {
    const source = fs.readFileSync(walFile());
    for (const length of [1, 16, 20, 99]) {
      const file = freshPath(`short-${length}`);
      fs.writeFileSync(file, source.subarray(0, length));
      assert.equal(readJournalModeOnDisk(file), "not-sqlite", `length ${length}`);
    }
    const exact = freshPath("header-only");
    fs.writeFileSync(exact, source.subarray(0, 100));
    assert.equal(readJournalModeOnDisk(exact), "wal");
  });

  it("readJournalModeOnDisk() says not-sqlite for an unknown format version and wal if either byte is 2", () => {
    const source = fs.readFileSync(rollbackFile());
    const patched = (write: number, read: number): string => {
      const bytes = Uint8Array.from(source);
      bytes[18] = write;
      bytes[19] = read;
      const file = freshPath(`v${write}${read}`);
      fs.writeFileSync(file, bytes);
      return file;
    };
    assert.equal(readJournalModeOnDisk(patched(1, 1)), "rollback");
    assert.equal(readJournalModeOnDisk(patched(2, 2)), "wal");
    assert.equal(readJournalModeOnDisk(patched(2, 1)), "wal");
    assert.equal(readJournalModeOnDisk(patched(1, 2)), "wal");
    assert.equal(readJournalModeOnDisk(patched(3, 1)), "not-sqlite");
    assert.equal(readJournalModeOnDisk(patched(0, 0)), "not-sqlite");
  });

  it("readJournalModeOnDisk() says not-sqlite for a directory", () => {
    const dir = freshPath("dir");
    fs.mkdirSync(dir);
    assert.equal(readJournalModeOnDisk(dir), "not-sqlite");
  });

  it("readJournalModeOnDisk() says not-sqlite for a FIFO without blocking on it", () => {
    const fifo = freshPath("fifo");
    const made = spawnSync("mkfifo", [fifo]);
    assert.equal(made.status, 0, "mkfifo failed");
    assert.equal(readJournalModeOnDisk(fifo), "not-sqlite");
  });

  it("readJournalModeOnDisk() reads files made by node:sqlite in both modes", () => {
    assert.equal(readJournalModeOnDisk(rollbackFile()), "rollback");
    assert.equal(readJournalModeOnDisk(walFile()), "wal");
  });

  it("readJournalModeOnDisk() rejects a non-string path with a TypeError", () => {
    assert.throws(() => readJournalModeOnDisk(42 as unknown as string), {
      name: "TypeError",
      message: /^Cannot read the journal mode on disk: 'path' must be a string, got 42$/,
    });
  });
});

// ---------------------------------------------------------------------------------------------------
// applyWal with real SQLite
// ---------------------------------------------------------------------------------------------------

describe("applyWal() on real SQLite", () => {
  it("applyWal() puts a fresh node:sqlite database in WAL, on disk too after a write", () => {
    const file = freshPath("fresh");
    const db = new DatabaseSync(file);
    try {
      let fallbacks = 0;
      assert.equal(applyWal(db, file, { onFallback: () => fallbacks++ }), "wal");
      db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
      assert.equal(readJournalModeOnDisk(file), "wal");
      assert.equal(fallbacks, 0);
      assert.deepEqual(
        { ...(db.prepare("PRAGMA journal_mode").get() as object) },
        { journal_mode: "wal" },
      );
    } finally {
      db.close();
    }
  });

  it("applyWal() sends nothing but the mode query to a database already in WAL", () => {
    const file = walFile();
    const real = new DatabaseSync(file);
    try {
      const { db, log } = recording(real);
      assert.equal(applyWal(db, file), "wal");
      assert.deepEqual(log, ["PRAGMA journal_mode"]);
    } finally {
      real.close();
    }
  });

  it("applyWal() converts a rollback database made by the sqlite3 CLI to WAL", {
    skip: !SQLITE3_CLI && NO_CLI,
  }, () => {
    const file = freshPath("cli-rollback");
    cli(file, "PRAGMA journal_mode=DELETE; CREATE TABLE t(x); INSERT INTO t VALUES (7);");
    const db = new DatabaseSync(file);
    try {
      assert.equal(applyWal(db, file), "wal");
    } finally {
      db.close();
    }
    assert.equal(readJournalModeOnDisk(file), "wal");
    assert.equal(cli(file, "PRAGMA journal_mode;"), "wal");
    assert.equal(cli(file, "SELECT x FROM t;"), "7");
  });

  it(
    "applyWal() puts a fresh bun:sqlite database in WAL",
    { skip: runtime !== "bun" && NO_BUN },
    async () => {
      const specifier = "bun:sqlite";
      const { Database } = await import(specifier);
      const file = freshPath("bun-fresh");
      const db = new Database(file);
      try {
        assert.equal(applyWal(db, file), "wal");
        db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
        assert.equal(readJournalModeOnDisk(file), "wal");
        assert.equal(checkJournalMode(db, file).agree, true);
      } finally {
        db.close();
      }
    },
  );

  it("applyWal() on bun:sqlite sends only the mode query to a WAL database", {
    skip: runtime !== "bun" && NO_BUN,
  }, async () => {
    const specifier = "bun:sqlite";
    const { Database } = await import(specifier);
    const file = walFile();
    const real = new Database(file);
    try {
      const { db, log } = recording(real);
      assert.equal(applyWal(db, file), "wal");
      assert.deepEqual(log, ["PRAGMA journal_mode"]);
    } finally {
      real.close();
    }
  });

  it("applyWal() falls back to DELETE when the unix-dotfile VFS silently refuses WAL on a fresh file", () => {
    const file = freshPath("dotfile");
    const uri = `file:${file}?vfs=unix-dotfile`;
    const real = new DatabaseSync(uri);
    try {
      // The VFS answers "delete" without an error: a real silent refusal.
      const probe = new DatabaseSync(`file:${freshPath("dotfile-probe")}?vfs=unix-dotfile`);
      assert.deepEqual({ ...(probe.prepare("PRAGMA journal_mode=WAL").get() as object) }, {
        journal_mode: "delete",
      });
      probe.close();

      const { db, log } = recording(real);
      const reasons: unknown[] = [];
      assert.equal(applyWal(db, file, { onFallback: (error) => reasons.push(error) }), "delete");
      assert.equal(reasons.length, 1);
      assert.match(String((reasons[0] as Error).message), /answered "delete".*refuses WAL/);
      assert.deepEqual(log, [
        "PRAGMA journal_mode",
        "PRAGMA database_list",
        "PRAGMA journal_mode=WAL",
        "PRAGMA busy_timeout",
        "PRAGMA busy_timeout=0",
        "PRAGMA journal_mode=DELETE",
        "PRAGMA busy_timeout=0",
      ]);
      real.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
      assert.equal(readJournalModeOnDisk(file), "rollback");
      assert.equal(checkJournalMode(real, uri).agree, true);
    } finally {
      real.close();
    }
  });

  it("applyWal() restores a non-zero busy_timeout after the DELETE fallback (unix-dotfile VFS)", () => {
    const file = freshPath("dotfile-busy");
    const real = new DatabaseSync(`file:${file}?vfs=unix-dotfile`);
    try {
      real.exec("PRAGMA busy_timeout = 4321");
      const { db, log } = recording(real);
      assert.equal(applyWal(db, file), "delete");
      assert.equal(log.at(-1), "PRAGMA busy_timeout=4321");
      assert.deepEqual({ ...(real.prepare("PRAGMA busy_timeout").get() as object) }, { timeout: 4321 });
    } finally {
      real.close();
    }
  });

  it("applyWal() with requireWal throws WalUnsupportedError on the unix-dotfile VFS and changes nothing", () => {
    const file = freshPath("dotfile-require");
    const real = new DatabaseSync(`file:${file}?vfs=unix-dotfile`);
    try {
      const { db, log } = recording(real);
      const error = thrown(() => applyWal(db, file, { requireWal: true }));
      assert.ok(error instanceof WalUnsupportedError);
      assert.equal(error.name, "WalUnsupportedError");
      assert.equal(error.path, file);
      assert.equal(error.answeredMode, "delete");
      assert.ok(error.cause instanceof Error);
      assert.deepEqual(log, ["PRAGMA journal_mode", "PRAGMA database_list", "PRAGMA journal_mode=WAL"]);
    } finally {
      real.close();
    }
  });

  it("applyWal() refuses to downgrade when the unix-dotfile VFS refuses WAL but a -wal file is beside the file", () => {
    const file = rollbackFile();
    fs.writeFileSync(`${file}-wal`, ""); // a sibling's WAL (or its leftover): evidence enough
    const uri = `file:${file}?vfs=unix-dotfile`;
    const real = new DatabaseSync(uri);
    try {
      const { db, log } = recording(real);
      let fallbacks = 0;
      const error = thrown(() => applyWal(db, uri, { onFallback: () => fallbacks++ }));
      assert.ok(error instanceof WalDowngradeRefusedError, String(error));
      assert.equal(error.name, "WalDowngradeRefusedError");
      assert.equal(error.path, uri);
      assert.equal(error.onDisk, "rollback");
      assert.equal(error.walFilePresent, true);
      assert.equal(error.answeredMode, "delete");
      assert.match(
        error.message,
        /^Cannot switch ".*" from WAL to DELETE: a -wal file is beside it, so other/,
      );
      assert.equal(fallbacks, 0);
      assert.deepEqual(log, ["PRAGMA journal_mode", "PRAGMA database_list", "PRAGMA journal_mode=WAL"]);
    } finally {
      real.close();
    }
  });

  it("applyWal() falls back on a real SQLITE_AUTH 'not authorized' on a fresh file", {
    skip: !HAS_AUTHORIZER && NO_AUTHORIZER,
  }, () => {
    const file = freshPath("auth-fresh");
    const real = new DatabaseSync(file);
    try {
      denyWal(real);
      const { db, log } = recording(real);
      const reasons: unknown[] = [];
      assert.equal(applyWal(db, file, { onFallback: (error) => reasons.push(error) }), "delete");
      assert.equal(reasons.length, 1);
      assert.equal((reasons[0] as { errcode?: unknown }).errcode, 23);
      assert.match((reasons[0] as Error).message, /not authorized/);
      assert.ok(log.includes("PRAGMA journal_mode=DELETE"));
      real.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
      assert.equal(readJournalModeOnDisk(file), "rollback");
    } finally {
      real.close();
    }
  });

  it("applyWal() refuses on a real SQLITE_AUTH when a -wal file is beside a rollback file", {
    skip: !HAS_AUTHORIZER && NO_AUTHORIZER,
  }, () => {
    const file = rollbackFile();
    fs.writeFileSync(`${file}-wal`, "");
    const real = new DatabaseSync(file);
    try {
      denyWal(real);
      const { db, log } = recording(real);
      const error = thrown(() => applyWal(db, file));
      assert.ok(error instanceof WalDowngradeRefusedError, String(error));
      assert.equal((error.cause as { errcode?: unknown }).errcode, 23);
      assert.equal(error.answeredMode, null);
      assert.equal(log.includes("PRAGMA journal_mode=DELETE"), false);
    } finally {
      real.close();
    }
  });

  it("applyWal() re-throws a real read-only error untouched and sends no DELETE", () => {
    const file = rollbackFile();
    const real = new DatabaseSync(file, { readOnly: true });
    try {
      const { db, log } = recording(real);
      const error = thrown(() => applyWal(db, file, { retries: 2, retryDelayMs: 1 }));
      assert.match(String((error as Error).message), /readonly/);
      // read-only is not retried
      assert.deepEqual(log, ["PRAGMA journal_mode", "PRAGMA database_list", "PRAGMA journal_mode=WAL"]);
    } finally {
      real.close();
    }
  });

  it("applyWal() re-throws a real 'database is locked' after its retries and sends no DELETE", () => {
    const file = rollbackFile();
    const holder = new DatabaseSync(file);
    const real = new DatabaseSync(file);
    try {
      holder.exec("BEGIN IMMEDIATE; INSERT INTO t VALUES (2)"); // a writer holds the RESERVED lock
      const { db, log } = recording(real);
      const error = thrown(() => applyWal(db, file, { lockTimeoutMs: 0, retries: 1, retryDelayMs: 1 }));
      assert.match(String((error as Error).message), /database is locked/);
      assert.equal(log.filter((sql) => sql === "PRAGMA journal_mode=WAL").length, 2);
      assert.equal(log.includes("PRAGMA journal_mode=DELETE"), false);
      holder.exec("COMMIT");
      assert.equal(applyWal(real, file), "wal"); // the caller retried later: it works
    } finally {
      real.close();
      holder.close();
    }
  });

  it("applyWal() returns delete for an in-memory database after onFallback, never wal", () => {
    const real = new DatabaseSync(":memory:");
    try {
      const reasons: unknown[] = [];
      assert.equal(applyWal(real, ":memory:", { onFallback: (error) => reasons.push(error) }), "delete");
      assert.equal(reasons.length, 1);
      assert.match((reasons[0] as Error).message, /in-memory or temporary database; it has no file/);
      assert.doesNotMatch((reasons[0] as Error).message, /VFS/);
      assert.deepEqual({ ...(real.prepare("PRAGMA journal_mode").get() as object) }, {
        journal_mode: "memory",
      });
    } finally {
      real.close();
    }
  });

  it("applyWal() with requireWal throws WalUnsupportedError for an in-memory database", () => {
    const real = new DatabaseSync(":memory:");
    try {
      const error = thrown(() => applyWal(real, ":memory:", { requireWal: true }));
      assert.ok(error instanceof WalUnsupportedError);
      assert.equal(error.answeredMode, null, "no WAL pragma is sent to a database without a file");
      assert.equal(error.onDisk, "absent");
      assert.match(error.message, /in-memory or temporary database/);
    } finally {
      real.close();
    }
  });

  it("applyWal() returns delete for a temp database (empty path), which answers delete", () => {
    const real = new DatabaseSync("");
    try {
      assert.equal(applyWal(real, ""), "delete");
    } finally {
      real.close();
    }
  });
});

/** Makes SQLite itself deny `PRAGMA journal_mode=WAL` with SQLITE_AUTH ("not authorized"). */
function denyWal(db: DatabaseSync): void {
  const c = sqliteConstants as unknown as Record<string, number>;
  (db as unknown as { setAuthorizer(fn: (action: number, a: unknown, b: unknown) => number): void })
    .setAuthorizer((action, name, arg) =>
      action === c.SQLITE_PRAGMA && name === "journal_mode" && String(arg).toUpperCase() === "WAL"
        ? c.SQLITE_DENY
        : c.SQLITE_OK
    );
}

/** The script of a {@linkcode FakeDriver}: what its journal-mode pragmas answer and throw. */
interface FakeOptions {
  /** The connection's mode before anything. @default "delete" */
  mode?: string;
  /** Thrown by PRAGMA journal_mode=WAL, one per call in order. */
  walErrors?: unknown[];
  /** Thrown by every PRAGMA journal_mode=WAL after those of walErrors (a lock that is never released). */
  walErrorForever?: unknown;
  /** What PRAGMA journal_mode=WAL answers once it no longer throws. @default "wal" */
  walAnswer?: string;
  /** Thrown by PRAGMA journal_mode=DELETE. */
  deleteError?: unknown;
  /** What PRAGMA journal_mode=DELETE answers. @default "delete" */
  deleteAnswer?: string;
  /** Rows as arrays of column values instead of objects. */
  arrayRows?: boolean;
  /** The starting busy_timeout. @default 5000 */
  busyTimeout?: number;
}

/**
 * A driver that records every SQL it gets and plays journal-mode pragmas from a script, for the errors
 * that cannot be provoked for real (NFS "locking protocol", EIO).
 */
class FakeDriver implements SqliteLike {
  readonly log: string[] = [];
  /** busy_timeout in force each time PRAGMA journal_mode=DELETE ran. */
  readonly busyAtDelete: number[] = [];
  mode: string;
  busyTimeout: number;
  walCalls = 0;
  readonly #options: FakeOptions;

  constructor(options: FakeOptions = {}) {
    this.#options = options;
    this.mode = options.mode ?? "delete";
    this.busyTimeout = options.busyTimeout ?? 5000;
  }

  prepare(sql: string): { get(...params: unknown[]): unknown } {
    this.log.push(sql);
    return { get: () => this.#run(sql) };
  }

  /** The SQL statements that would change the journal mode to DELETE. */
  deletes(): string[] {
    return this.log.filter((sql) => /journal_mode\s*=\s*delete/i.test(sql));
  }

  #row(column: string, value: unknown): unknown {
    return this.#options.arrayRows ? [value] : { [column]: value };
  }

  #run(sql: string): unknown {
    if (sql === "PRAGMA journal_mode") return this.#row("journal_mode", this.mode);
    if (sql === "PRAGMA journal_mode=WAL") {
      const errors = this.#options.walErrors ?? [];
      const index = this.walCalls++;
      if (index < errors.length) throw errors[index];
      if (this.#options.walErrorForever !== undefined) throw this.#options.walErrorForever;
      this.mode = this.#options.walAnswer ?? "wal";
      return this.#row("journal_mode", this.mode);
    }
    if (sql === "PRAGMA journal_mode=DELETE") {
      this.busyAtDelete.push(this.busyTimeout);
      if (this.#options.deleteError !== undefined) throw this.#options.deleteError;
      this.mode = this.#options.deleteAnswer ?? "delete";
      return this.#row("journal_mode", this.mode);
    }
    if (sql === "PRAGMA busy_timeout") return this.#row("timeout", this.busyTimeout);
    const set = /^PRAGMA busy_timeout=(\d+)$/.exec(sql);
    if (set) {
      this.busyTimeout = Number(set[1]);
      return this.#row("timeout", this.busyTimeout);
    }
    throw new Error(`FakeDriver: unexpected SQL ${sql}`);
  }
}

// ---------------------------------------------------------------------------------------------------
// applyWal on every driver: statements finalised, file names as the driver reads them, no file at all
// ---------------------------------------------------------------------------------------------------

/** Shaped like each driver's error for SQLITE_PROTOCOL, the NFS "locking protocol" no test can provoke. */
const LOCKING_PROTOCOL: Record<string, () => unknown> = {
  "bun:sqlite": () =>
    Object.assign(new Error("locking protocol"), { name: "SQLiteError", code: "SQLITE_PROTOCOL", errno: 15 }),
  "better-sqlite3": () =>
    Object.assign(new Error("locking protocol"), { name: "SqliteError", code: "SQLITE_PROTOCOL" }),
  "node:sqlite": () =>
    driverError("locking protocol", { code: "ERR_SQLITE_ERROR", errcode: 15, errstr: "locking protocol" }),
};

/**
 * A real connection whose journal-mode pragmas (read and WAL) fail with `error`, as on NFS; everything
 * else (database_list, busy_timeout, DELETE) reaches the real driver. Records every SQL.
 */
function failingJournal(real: SqliteLike, error: () => unknown): { db: SqliteLike; log: string[] } {
  const log: string[] = [];
  return {
    log,
    db: {
      prepare(sql: string) {
        log.push(sql);
        if (sql === "PRAGMA journal_mode" || /^PRAGMA journal_mode\s*=\s*WAL$/i.test(sql)) {
          return {
            get: () => {
              throw error();
            },
          };
        }
        return real.prepare(sql);
      },
    },
  };
}

/** Wraps a connection and counts the statements prepared and finalised through it. */
function counting(real: SqliteLike): { db: SqliteLike; prepared: number; finalized: number } {
  const counts = { prepared: 0, finalized: 0 };
  const db: SqliteLike = {
    prepare(sql: string) {
      const statement = real.prepare(sql);
      counts.prepared++;
      return {
        get: (...params: unknown[]) => statement.get(...params),
        finalize: () => {
          counts.finalized++;
          statement.finalize?.();
        },
      };
    },
  };
  return Object.assign(counts, { db });
}

/** Runs `fn` with `dir` as the working directory (for relative, literal `file:` names). */
function inDir<T>(dir: string, fn: () => T): T {
  const cwd = process.cwd();
  process.chdir(dir);
  try {
    return fn();
  } finally {
    process.chdir(cwd);
  }
}

describe("applyWal() on every driver", () => {
  it("applyWal() finalises every statement it prepares: WAL, fallback, refusal, error and no file", () => {
    const cases: Array<[string, () => SqliteLike, string]> = [
      ["wal", () => new DatabaseSync(freshPath("fin-wal")), "fresh"],
      ["fallback", () => new FakeDriver({ walErrors: [new Error("locking protocol")] }), "fresh"],
      ["refusal", () => new FakeDriver({ walErrors: [new Error("locking protocol")] }), "wal"],
      ["error", () => new FakeDriver({ walErrors: [new Error("disk I/O error")] }), "fresh"],
      ["no file", () => new DatabaseSync(":memory:"), ":memory:"],
    ];
    for (const [label, open, kind] of cases) {
      const real = open();
      const file = kind === "wal" ? walFile() : kind === ":memory:" ? ":memory:" : freshPath("fin");
      const counts = counting(real);
      try {
        applyWal(counts.db, file, { lockTimeoutMs: 0 });
      } catch {
        // refusal and error: what matters here is what was finalised
      }
      assert.ok(counts.prepared > 0, label);
      assert.equal(counts.finalized, counts.prepared, `${label}: every statement finalised`);
      if (real instanceof DatabaseSync) real.close();
    }
  });

  it("applyWal() on bun:sqlite: after close() another connection switches to DELETE at once", {
    skip: runtime !== "bun" && NO_BUN,
  }, async () => {
    const open = await bunSqlite();
    assert.ok(open);
    // The WAL path, and the DELETE fallback path (its busy_timeout and DELETE statements too).
    for (const fallback of [false, true]) {
      const file = freshPath(fallback ? "bun-close-fallback" : "bun-close");
      const real: RealConnection = open(file);
      const db: SqliteLike = fallback ? failingJournal(real, LOCKING_PROTOCOL["bun:sqlite"]!).db : real;
      assert.equal(applyWal(db, file), fallback ? "delete" : "wal");
      real.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
      real.close();
      assert.equal(fs.existsSync(`${file}-wal`), false, "close() released the file: no -wal left");
      const other = new DatabaseSync(file);
      try {
        other.exec("PRAGMA busy_timeout = 0"); // no waiting: a lingering lock would fail at once
        const target = fallback ? "WAL" : "DELETE";
        assert.deepEqual({ ...(other.prepare(`PRAGMA journal_mode=${target}`).get() as object) }, {
          journal_mode: target.toLowerCase(),
        });
      } finally {
        other.close();
      }
    }
  });

  for (const [driver, load, skip] of OTHER_DRIVERS) {
    it(
      `applyWal() on ${driver}: a literal file:-named WAL file failing 'locking protocol' is refused, still WAL`,
      {
        skip,
      },
      async () => {
        const open = await load();
        assert.ok(open);
        const dir = freshDir(root, `literal-${driver.replace(/\W/g, "")}`);
        const literal = path.join(dir, "file:shared.db");
        inDir(dir, () => {
          const setup = open("file:shared.db"); // the driver creates a file of that very name
          setup.exec("PRAGMA journal_mode=WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1)");
          setup.close();
          assert.equal(readJournalModeOnDisk(literal), "wal");
          assert.equal(fs.existsSync(path.join(dir, "shared.db")), false, "what a URI reading would inspect");

          const real = open("file:shared.db");
          try {
            const { db, log } = failingJournal(real, LOCKING_PROTOCOL[driver]!);
            let fallbacks = 0;
            const refused = thrown(() => applyWal(db, "file:shared.db", { onFallback: () => fallbacks++ }));
            assert.ok(refused instanceof WalDowngradeRefusedError, String(refused));
            assert.equal(refused.onDisk, "wal");
            assert.equal(refused.path, "file:shared.db");
            assert.equal(fallbacks, 0);
            assert.equal(log.some((sql) => /journal_mode\s*=\s*delete/i.test(sql)), false, "no DELETE sent");
          } finally {
            real.close();
          }
        });
        assert.equal(readJournalModeOnDisk(literal), "wal", "the real file's header still says WAL");
        const check = new DatabaseSync(literal);
        try {
          assert.deepEqual({ ...(check.prepare("PRAGMA journal_mode").get() as object) }, {
            journal_mode: "wal",
          });
          assert.deepEqual({ ...(check.prepare("SELECT count(*) AS n FROM t").get() as object) }, { n: 1 });
        } finally {
          check.close();
        }
      },
    );
  }

  it("applyWal() on node:sqlite reads a file: name with URI rules, as the driver opened it", () => {
    const dir = freshDir(root, "uri-node");
    const file = path.join(dir, "shared.db");
    const setup = new DatabaseSync(file);
    setup.exec("PRAGMA journal_mode=WAL; CREATE TABLE t (x)");
    setup.close();
    const real = new DatabaseSync(`file:${file}?cache=private`);
    try {
      const { db, log } = failingJournal(real, LOCKING_PROTOCOL["node:sqlite"]!);
      const refused = thrown(() => applyWal(db, `file:${file}?cache=private`));
      assert.ok(refused instanceof WalDowngradeRefusedError, String(refused));
      assert.equal(refused.onDisk, "wal");
      assert.ok(log.includes("PRAGMA database_list"), "the connection said which file it opened");
    } finally {
      real.close();
    }
    assert.equal(readJournalModeOnDisk(file), "wal");
  });

  const noFileNames = [
    "",
    ":memory:",
    "file::memory:",
    "file:/keelson-mem.db?vfs=memdb",
    "file:mem?mode=memory",
  ];
  for (const name of noFileNames) {
    it(`applyWal() on node:sqlite ${JSON.stringify(name)}: delete, said plainly, no WAL pragma sent`, () => {
      const real = new DatabaseSync(name);
      try {
        const { db, log } = recording(real);
        const reasons: unknown[] = [];
        assert.equal(applyWal(db, name, { onFallback: (error) => reasons.push(error) }), "delete");
        assert.deepEqual(log, ["PRAGMA journal_mode", "PRAGMA database_list"]);
        assert.equal(reasons.length, 1);
        const message = String((reasons[0] as Error).message);
        assert.match(message, /in-memory or temporary database; it has no file/);
        assert.doesNotMatch(message, /VFS|refuses/);
        const unsupported = thrown(() => applyWal(real, name, { requireWal: true }));
        assert.ok(unsupported instanceof WalUnsupportedError);
        assert.doesNotMatch(unsupported.message, /VFS|refuses/);
        assert.equal(checkJournalMode(real, name).agree, true);
      } finally {
        real.close();
      }
    });
  }

  for (const [driver, load, skip] of OTHER_DRIVERS) {
    it(
      `applyWal() on ${driver} ":memory:" and "": delete, said plainly; a fresh file: wal`,
      { skip },
      async () => {
        const open = await load();
        assert.ok(open);
        for (const name of [":memory:", ""]) {
          const real = open(name);
          try {
            const reasons: unknown[] = [];
            assert.equal(applyWal(real, name, { onFallback: (error) => reasons.push(error) }), "delete");
            assert.match(String((reasons[0] as Error).message), /in-memory or temporary database/);
          } finally {
            real.close();
          }
        }
        const file = freshPath("other-fresh");
        const real = open(file);
        try {
          assert.equal(applyWal(real, file), "wal");
          real.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
          assert.equal(checkJournalMode(real, file).agree, true);
        } finally {
          real.close();
        }
        assert.equal(readJournalModeOnDisk(file), "wal");
      },
    );
  }
});

// ---------------------------------------------------------------------------------------------------
// applyWal with a fake driver (errors that cannot be provoked for real)
// ---------------------------------------------------------------------------------------------------

describe("applyWal() on a fake driver", () => {
  for (const [name, make] of PERMANENT_ERRORS) {
    it(`applyWal() falls back to DELETE with busy_timeout 0 on a fresh file for ${name}`, () => {
      const error = make();
      const db = new FakeDriver({ walErrors: [error], busyTimeout: 2500 });
      const file = freshPath("fake-fresh");
      const reasons: unknown[] = [];
      assert.equal(applyWal(db, file, { onFallback: (reason) => reasons.push(reason) }), "delete");
      assert.equal(reasons.length, 1);
      assert.equal(reasons[0], error, "onFallback gets the driver's own error object");
      assert.deepEqual(db.log, [
        "PRAGMA journal_mode",
        "PRAGMA database_list", // a stand-in cannot answer it: the path is read literally
        "PRAGMA journal_mode=WAL",
        "PRAGMA busy_timeout",
        "PRAGMA busy_timeout=0",
        "PRAGMA journal_mode=DELETE",
        "PRAGMA busy_timeout=2500",
      ]);
      assert.deepEqual(db.busyAtDelete, [0]);
      assert.equal(db.busyTimeout, 2500);
      assert.equal(db.mode, "delete");
    });

    it(`applyWal() refuses a downgrade of a WAL file, sending no DELETE, for ${name}`, () => {
      const error = make();
      const db = new FakeDriver({ walErrors: [error] });
      const file = walFile();
      let fallbacks = 0;
      const refused = thrown(() => applyWal(db, file, { onFallback: () => fallbacks++ }));
      assert.ok(refused instanceof WalDowngradeRefusedError);
      assert.equal(refused.cause, error);
      assert.equal(refused.path, file);
      assert.equal(refused.onDisk, "wal");
      assert.equal(refused.walFilePresent, false);
      assert.equal(refused.answeredMode, null);
      assert.deepEqual(db.log, ["PRAGMA journal_mode", "PRAGMA database_list", "PRAGMA journal_mode=WAL"]);
      assert.equal(fallbacks, 0);
    });
  }

  it("applyWal() falls back on an empty file and on a rollback file (permanent marker)", () => {
    const empty = freshPath("fake-empty");
    fs.writeFileSync(empty, "");
    for (const file of [empty, rollbackFile()]) {
      const db = new FakeDriver({ walErrors: [new Error("locking protocol")] });
      assert.equal(applyWal(db, file), "delete");
      assert.equal(db.deletes().length, 1);
    }
  });

  it("applyWal() refuses when a -wal file is beside a rollback file (permanent marker)", () => {
    const file = rollbackFile();
    fs.writeFileSync(`${file}-wal`, "");
    const db = new FakeDriver({ walErrors: [new Error("locking protocol")] });
    const refused = thrown(() => applyWal(db, file));
    assert.ok(refused instanceof WalDowngradeRefusedError);
    assert.equal(refused.onDisk, "rollback");
    assert.equal(refused.walFilePresent, true);
    assert.deepEqual(db.deletes(), []);
  });

  it("applyWal() refuses when a -wal file exists but the database file does not (permanent marker)", () => {
    const file = freshPath("only-wal");
    fs.writeFileSync(`${file}-wal`, "");
    const db = new FakeDriver({ walErrors: [new Error("not authorized")] });
    const refused = thrown(() => applyWal(db, file));
    assert.ok(refused instanceof WalDowngradeRefusedError);
    assert.equal(refused.onDisk, "absent");
    assert.deepEqual(db.deletes(), []);
  });

  it("applyWal() refuses when the header cannot be read as SQLite (it cannot rule WAL out)", () => {
    const file = freshPath("garbage");
    fs.writeFileSync(file, "y".repeat(4096));
    const db = new FakeDriver({ walErrors: [new Error("locking protocol")] });
    const refused = thrown(() => applyWal(db, file));
    assert.ok(refused instanceof WalDowngradeRefusedError);
    assert.equal(refused.onDisk, "not-sqlite");
    assert.match(refused.message, /cannot be read as SQLite/);
    assert.deepEqual(db.deletes(), []);
  });

  it("applyWal() with uri: true inspects the path part of a file: URI", () => {
    const file = walFile();
    for (const uri of [`file:${file}?vfs=unix-dotfile`, `file://${file}`, `file://localhost${file}#x`]) {
      const db = new FakeDriver({ walErrors: [new Error("locking protocol")] });
      const refused = thrown(() => applyWal(db, uri, { uri: true }));
      assert.ok(refused instanceof WalDowngradeRefusedError, uri);
      assert.equal(refused.path, uri);
      assert.equal(refused.onDisk, "wal");
      assert.equal(db.log.includes("PRAGMA database_list"), false, "an explicit uri asks nothing");
    }
    const spaced = path.join(root, "with space.sqlite");
    fs.copyFileSync(file, spaced);
    const db = new FakeDriver({ walErrors: [new Error("locking protocol")] });
    assert.throws(
      () => applyWal(db, `file:${spaced.replaceAll(" ", "%20")}`, { uri: true }),
      WalDowngradeRefusedError,
    );
  });

  it("applyWal() reads a file: name literally for a stand-in that cannot say which file it opened", () => {
    const dir = freshDir(root, "literal-stand-in");
    fs.copyFileSync(walFile(), path.join(dir, "file:lit.sqlite"));
    // Read literally, "file:lit.sqlite" is that WAL file; read as a URI it would be lit.sqlite (absent),
    // which would let a DELETE through.
    inDir(dir, () => {
      const db = new FakeDriver({ walErrors: [new Error("locking protocol")] });
      const refused = thrown(() => applyWal(db, "file:lit.sqlite"));
      assert.ok(refused instanceof WalDowngradeRefusedError, String(refused));
      assert.equal(refused.onDisk, "wal");
      assert.deepEqual(db.deletes(), []);
      const asUri = new FakeDriver({ walErrors: [new Error("locking protocol")] });
      assert.equal(applyWal(asUri, "file:lit.sqlite", { uri: true }), "delete", "lit.sqlite is absent");
    });
  });

  for (const name of ["file:shared?mode=memory&cache=shared", "file:/x.db?vfs=memdb", "file::memory:"]) {
    it(`applyWal() with uri: true treats ${name} as a database without a file and sends no WAL pragma`, () => {
      const db = new FakeDriver({ mode: "memory" });
      const reasons: unknown[] = [];
      assert.equal(applyWal(db, name, { uri: true, onFallback: (e) => reasons.push(e) }), "delete");
      assert.deepEqual(db.log, ["PRAGMA journal_mode"]);
      assert.match(String((reasons[0] as Error).message), /in-memory or temporary database/);
    });
  }

  it("applyWal() with requireWal throws WalUnsupportedError on a fresh file and sends no DELETE", () => {
    const error = new Error("locking protocol");
    const db = new FakeDriver({ walErrors: [error] });
    let fallbacks = 0;
    const unsupported = thrown(() =>
      applyWal(db, freshPath("require"), { requireWal: true, onFallback: () => fallbacks++ })
    );
    assert.ok(unsupported instanceof WalUnsupportedError);
    assert.equal(unsupported.cause, error);
    assert.equal(unsupported.onDisk, "absent");
    assert.match(unsupported.message, /^Cannot use WAL on ".*" as 'requireWal' demands: locking protocol$/);
    assert.deepEqual(db.log, ["PRAGMA journal_mode", "PRAGMA database_list", "PRAGMA journal_mode=WAL"]);
    assert.equal(fallbacks, 0);
  });

  it("applyWal() with requireWal still refuses (WalDowngradeRefusedError) on a WAL file", () => {
    const db = new FakeDriver({ walErrors: [new Error("locking protocol")] });
    assert.throws(() => applyWal(db, walFile(), { requireWal: true }), WalDowngradeRefusedError);
    assert.deepEqual(db.deletes(), []);
  });

  for (const [name, make] of OTHER_ERRORS) {
    it(`applyWal() re-throws ${name} as the same object and sends no DELETE`, () => {
      let fallbacks = 0;
      for (const file of [freshPath("other"), walFile()]) {
        const error = make();
        const db = new FakeDriver({ walErrorForever: error });
        const caught = thrown(() => applyWal(db, file, { lockTimeoutMs: 20, onFallback: () => fallbacks++ }));
        assert.equal(caught, error);
        assert.deepEqual(db.deletes(), []);
        assert.equal(db.log.some((sql) => sql.startsWith("PRAGMA busy_timeout")), false);
      }
      assert.equal(fallbacks, 0);
    });
  }

  it("applyWal() re-throws an error of the mode query itself untouched", () => {
    const error = driverError("disk I/O error", { errcode: 10 });
    const db: SqliteLike = {
      prepare: () => ({
        get: () => {
          throw error;
        },
      }),
    };
    assert.equal(thrown(() => applyWal(db, freshPath("query"))), error);
  });

  it("applyWal() retries a transient error: fails twice, then succeeds", () => {
    const db = new FakeDriver({
      walErrors: [
        driverError("database is locked", { errcode: 5 }),
        driverError("disk I/O error", { errcode: 10 }),
      ],
    });
    assert.equal(applyWal(db, freshPath("retry"), { retries: 2, retryDelayMs: 1 }), "wal");
    assert.equal(db.walCalls, 3);
    assert.deepEqual(db.deletes(), []);
  });

  it("applyWal() re-throws the last transient error once the retries are spent", () => {
    const first = new Error("database is locked");
    const second = new Error("database is locked");
    const third = new Error("database is locked");
    const db = new FakeDriver({ walErrors: [first, second, third] });
    assert.equal(
      thrown(() => applyWal(db, freshPath("spent"), { lockTimeoutMs: 0, retries: 1, retryDelayMs: 0 })),
      second,
    );
    assert.equal(db.walCalls, 2);
    assert.deepEqual(db.deletes(), []);
  });

  it("applyWal() does not retry an I/O error by default", () => {
    const error = driverError("disk I/O error", { errcode: 10 });
    const db = new FakeDriver({ walErrors: [error, error] });
    assert.equal(thrown(() => applyWal(db, freshPath("no-retry"))), error);
    assert.equal(db.walCalls, 1);
  });

  it("applyWal() waits out 'database is locked' by default, then succeeds without using retries", () => {
    const locked = () => driverError("database is locked", { code: "SQLITE_BUSY", errno: 5 });
    const db = new FakeDriver({ walErrors: [locked(), locked(), locked(), locked(), locked()] });
    assert.equal(applyWal(db, freshPath("lock-wait")), "wal");
    assert.equal(db.walCalls, 6);
    assert.deepEqual(db.deletes(), []);
  });

  it("applyWal() waits out a lock for at most lockTimeoutMs, then re-throws the same error", () => {
    const error = driverError("database is locked", { errcode: 5 });
    const db = new FakeDriver({ walErrorForever: error });
    const started = performance.now();
    assert.equal(thrown(() => applyWal(db, freshPath("lock-bound"), { lockTimeoutMs: 100 })), error);
    const elapsed = performance.now() - started;
    assert.ok(db.walCalls > 1, `retried while locked (${db.walCalls} calls)`);
    assert.ok(elapsed >= 100 && elapsed < 10_000, `gave up after ${elapsed.toFixed(0)} ms`);
    assert.deepEqual(db.deletes(), []);
  });

  it("applyWal() does not retry an error that is not transient", () => {
    const error = new Error("attempt to write a readonly database");
    const db = new FakeDriver({ walErrors: [error, error] });
    assert.equal(
      thrown(() => applyWal(db, freshPath("not-transient"), { retries: 5, retryDelayMs: 0 })),
      error,
    );
    assert.equal(db.walCalls, 1);
  });

  it("applyWal() never retries a permanent marker: it falls back at once", () => {
    const db = new FakeDriver({ walErrors: [new Error("not authorized"), new Error("not authorized")] });
    assert.equal(applyWal(db, freshPath("marker-no-retry"), { retries: 3, retryDelayMs: 0 }), "delete");
    assert.equal(db.walCalls, 1);
  });

  it("applyWal() falls back after a transient error followed by a permanent marker", () => {
    const marker = new Error("locking protocol");
    const db = new FakeDriver({ walErrors: [new Error("disk I/O error"), marker] });
    const reasons: unknown[] = [];
    assert.equal(
      applyWal(db, freshPath("then-marker"), {
        retries: 2,
        retryDelayMs: 0,
        onFallback: (e) => reasons.push(e),
      }),
      "delete",
    );
    assert.deepEqual(reasons, [marker]);
  });

  for (const answer of ["delete", "truncate", "persist", "off"]) {
    it(`applyWal() treats a silent "${answer}" answer like a permanent marker, never as WAL`, () => {
      const db = new FakeDriver({ walAnswer: answer });
      const reasons: unknown[] = [];
      assert.equal(applyWal(db, freshPath("silent"), { onFallback: (e) => reasons.push(e) }), "delete");
      assert.equal(reasons.length, 1);
      assert.match((reasons[0] as Error).message, new RegExp(`answered "${answer}"`));
      assert.deepEqual(db.busyAtDelete, [0]);
      assert.equal(db.mode, "delete");
    });
  }

  it("applyWal() refuses a silent refusal on a WAL file and reports the answered mode", () => {
    const db = new FakeDriver({ walAnswer: "delete" });
    const refused = thrown(() => applyWal(db, walFile()));
    assert.ok(refused instanceof WalDowngradeRefusedError);
    assert.equal(refused.answeredMode, "delete");
    assert.match(refused.message, /answered "delete"/);
    assert.deepEqual(db.deletes(), []);
  });

  it("applyWal() accepts an answer in upper case (WAL)", () => {
    const db = new FakeDriver({ walAnswer: "WAL" });
    assert.equal(applyWal(db, freshPath("upper")), "wal");
  });

  it("applyWal() reads rows returned as arrays of values", () => {
    const db = new FakeDriver({
      walErrors: [new Error("locking protocol")],
      arrayRows: true,
      busyTimeout: 77,
    });
    assert.equal(applyWal(db, freshPath("arrays")), "delete");
    assert.equal(db.log.at(-1), "PRAGMA busy_timeout=77");
    assert.equal(applyWal(new FakeDriver({ arrayRows: true }), freshPath("arrays-wal")), "wal");
  });

  it("applyWal() re-throws a failing DELETE (another connection is open) untouched and restores busy_timeout", () => {
    const busy = driverError("database is locked", { code: "SQLITE_BUSY", errno: 5 });
    const db = new FakeDriver({
      walErrors: [new Error("locking protocol")],
      deleteError: busy,
      busyTimeout: 900,
    });
    let fallbacks = 0;
    assert.equal(
      thrown(() => applyWal(db, freshPath("delete-busy"), { onFallback: () => fallbacks++ })),
      busy,
    );
    assert.deepEqual(db.busyAtDelete, [0]);
    assert.equal(db.busyTimeout, 900);
    assert.equal(fallbacks, 0);
  });

  it("applyWal() throws when PRAGMA journal_mode=DELETE does not answer delete", () => {
    const marker = new Error("locking protocol");
    const db = new FakeDriver({ walErrors: [marker], deleteAnswer: "wal" });
    let fallbacks = 0;
    const error = thrown(() => applyWal(db, freshPath("delete-wal"), { onFallback: () => fallbacks++ }));
    assert.ok(error instanceof Error);
    assert.match(error.message, /'PRAGMA journal_mode=DELETE' must answer "delete", got "wal"/);
    assert.equal(error.cause, marker);
    assert.equal(fallbacks, 0);
  });

  it("applyWal() lets an exception from onFallback propagate after the switch", () => {
    const db = new FakeDriver({ walErrors: [new Error("locking protocol")] });
    const oops = new Error("callback failed");
    const caught = thrown(() =>
      applyWal(db, freshPath("callback"), {
        onFallback: () => {
          throw oops;
        },
      })
    );
    assert.equal(caught, oops);
    assert.equal(db.mode, "delete");
  });

  it("applyWal() rejects a driver whose journal_mode answer is not a string with a TypeError", () => {
    const db: SqliteLike = { prepare: () => ({ get: () => undefined }) };
    assert.throws(() => applyWal(db, freshPath("no-row")), {
      name: "TypeError",
      message:
        /^Cannot read the journal mode: 'PRAGMA journal_mode' must be answered with a string, got undefined$/,
    });
  });

  it("applyWal() rejects bad arguments with TypeError and RangeError naming the option", () => {
    const db = new FakeDriver();
    const file = freshPath("args");
    assert.throws(() => applyWal(null as unknown as SqliteLike, file), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'db' must be a connection with prepare\(sql\), got null$/,
    });
    assert.throws(() => applyWal({} as SqliteLike, file), { name: "TypeError", message: /got an object/ });
    assert.throws(() => applyWal(db, 7 as unknown as string), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'path' must be a string, got 7$/,
    });
    assert.throws(() => applyWal(db, file, null as never), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'options' must be an object, got null$/,
    });
    assert.throws(() => applyWal(db, file, { onFallback: "x" as unknown as () => void }), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'onFallback' must be a function, got "x"$/,
    });
    assert.throws(() => applyWal(db, file, { requireWal: "yes" as unknown as boolean }), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'requireWal' must be a boolean, got "yes"$/,
    });
    assert.throws(() => applyWal(db, file, { retries: "2" as unknown as number }), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'retries' must be a non-negative integer, got "2"$/,
    });
    for (const retries of [-1, 1.5, Number.NaN, Infinity]) {
      assert.throws(() => applyWal(db, file, { retries }), {
        name: "RangeError",
        message: /^Cannot apply WAL: 'retries' must be a non-negative integer, got /,
      });
    }
    for (const retryDelayMs of [-1, Infinity, Number.NaN]) {
      assert.throws(() => applyWal(db, file, { retryDelayMs }), {
        name: "RangeError",
        message: /^Cannot apply WAL: 'retryDelayMs' must be a finite number >= 0, got /,
      });
    }
    assert.throws(() => applyWal(db, file, { retryDelayMs: "1" as unknown as number }), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'retryDelayMs' must be a finite number >= 0, got "1"$/,
    });
    for (const lockTimeoutMs of [-1, Infinity, Number.NaN]) {
      assert.throws(() => applyWal(db, file, { lockTimeoutMs }), {
        name: "RangeError",
        message: /^Cannot apply WAL: 'lockTimeoutMs' must be a finite number >= 0, got /,
      });
    }
    assert.throws(() => applyWal(db, file, { lockTimeoutMs: "5" as unknown as number }), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'lockTimeoutMs' must be a finite number >= 0, got "5"$/,
    });
    assert.throws(() => applyWal(db, file, { uri: "yes" as unknown as boolean }), {
      name: "TypeError",
      message: /^Cannot apply WAL: 'uri' must be a boolean, got "yes"$/,
    });
    assert.deepEqual(db.log, [], "nothing is sent before the arguments are checked");
  });
});

// ---------------------------------------------------------------------------------------------------
// checkJournalMode
// ---------------------------------------------------------------------------------------------------

describe("checkJournalMode()", () => {
  it("checkJournalMode() agrees on a WAL database opened through applyWal", () => {
    const file = freshPath("check-wal");
    const db = new DatabaseSync(file);
    try {
      applyWal(db, file);
      db.exec("CREATE TABLE t (x); INSERT INTO t VALUES (1)");
      const report = checkJournalMode(db, file);
      assert.deepEqual(report, {
        connection: "wal",
        onDisk: "wal",
        walFilePresent: true,
        agree: true,
        reason: null,
      });
    } finally {
      db.close();
    }
  });

  it("checkJournalMode() agrees on a rollback database and on an in-memory one", () => {
    const file = rollbackFile();
    const db = new DatabaseSync(file);
    const memory = new DatabaseSync(":memory:");
    try {
      assert.deepEqual(checkJournalMode(db, file), {
        connection: "delete",
        onDisk: "rollback",
        walFilePresent: false,
        agree: true,
        reason: null,
      });
      assert.equal(checkJournalMode(memory, ":memory:").agree, true);
      assert.equal(checkJournalMode(memory, ":memory:").connection, "memory");
    } finally {
      db.close();
      memory.close();
    }
  });

  it("checkJournalMode() flags a -wal file beside a rollback connection", () => {
    const file = rollbackFile();
    fs.writeFileSync(`${file}-wal`, "");
    const db = new DatabaseSync(file);
    try {
      const report = checkJournalMode(db, file);
      assert.equal(report.agree, false);
      assert.equal(report.walFilePresent, true);
      assert.match(String(report.reason), /-wal file/);
    } finally {
      db.close();
    }
  });

  it("checkJournalMode() flags a database file removed from under an open WAL connection", () => {
    const file = freshPath("check-gone");
    const db = new DatabaseSync(file);
    try {
      applyWal(db, file);
      db.exec("CREATE TABLE t (x)");
      fs.rmSync(file);
      const report = checkJournalMode(db, file);
      assert.equal(report.connection, "wal");
      assert.equal(report.onDisk, "absent");
      assert.equal(report.agree, false);
      assert.match(String(report.reason), /header says absent/);
    } finally {
      db.close();
    }
  });

  it("checkJournalMode() flags a rollback connection on a WAL file (a fake driver that downgraded)", () => {
    const report = checkJournalMode(new FakeDriver({ mode: "delete" }), walFile());
    assert.equal(report.agree, false);
    assert.match(String(report.reason), /rollback journal \(delete\) on a WAL file/);
  });

  it("checkJournalMode() flags an unknown mode and a memory journal on a file", () => {
    assert.match(
      String(checkJournalMode(new FakeDriver({ mode: "weird" }), rollbackFile()).reason),
      /unknown/,
    );
    assert.equal(checkJournalMode(new FakeDriver({ mode: "memory" }), rollbackFile()).agree, false);
  });

  it("checkJournalMode() only reads: the mode query and which file the connection opened", () => {
    const db = new FakeDriver();
    checkJournalMode(db, rollbackFile());
    assert.deepEqual(db.log, ["PRAGMA journal_mode", "PRAGMA database_list"]);
    const told = new FakeDriver();
    checkJournalMode(told, rollbackFile(), { uri: false });
    assert.deepEqual(told.log, ["PRAGMA journal_mode"]);
  });

  it("checkJournalMode() rejects bad arguments with a TypeError", () => {
    assert.throws(() => checkJournalMode(undefined as unknown as SqliteLike, "x"), {
      name: "TypeError",
      message:
        /^Cannot check the journal mode: 'db' must be a connection with prepare\(sql\), got undefined$/,
    });
    assert.throws(() => checkJournalMode(new FakeDriver(), null as unknown as string), {
      name: "TypeError",
      message: /^Cannot check the journal mode: 'path' must be a string, got null$/,
    });
    assert.throws(() => checkJournalMode(new FakeDriver(), "x", { uri: 1 as unknown as boolean }), {
      name: "TypeError",
      message: /^Cannot check the journal mode: 'uri' must be a boolean, got 1$/,
    });
  });
});

// ---------------------------------------------------------------------------------------------------
// Several processes on one file
// ---------------------------------------------------------------------------------------------------

/** Starts the writers, releases them together once all are open, and collects what they printed. */
async function runWriters(
  file: string,
  drivers: string[],
  rows: number,
  start: "busy" | "defaults" = "busy",
): Promise<Outcome[]> {
  const goFile = `${file}.go`;
  const children = drivers.map((driver, index) =>
    startFixture(WRITER, [file, goFile, `w${index}`, String(rows), driver, start])
  );
  // A writer that ends before it is ready is released too: its outcome tells why.
  await Promise.all(children.map((child) => child.waitFor("stdout", /ready$/).catch(() => {})));
  fs.writeFileSync(goFile, "go");
  return await Promise.all(children.map((child) => child.done));
}

function assertSharedDatabase(file: string, drivers: string[], results: Outcome[], rows: number): void {
  for (const [index, result] of results.entries()) {
    assert.equal(result.code, 0, `writer failed: ${result.stderr}`);
    const last = JSON.parse(result.stdout.trim().split("\n").at(-1) ?? "{}");
    assert.equal(last.driver, drivers[index]);
    assert.equal(last.mode, "wal");
    assert.equal(last.inserted, rows);
  }
  const db = new DatabaseSync(file);
  try {
    const count = db.prepare("SELECT count(*) AS n FROM rows").get() as { n: number };
    assert.equal(count.n, rows * results.length);
    const distinct = db.prepare("SELECT count(DISTINCT writer || ':' || n) AS n FROM rows").get() as {
      n: number;
    };
    assert.equal(distinct.n, rows * results.length);
    const integrity = db.prepare("PRAGMA integrity_check").get() as { integrity_check: string };
    assert.equal(integrity.integrity_check, "ok");
    assert.equal(checkJournalMode(db, file).agree, true);
  } finally {
    db.close();
  }
  assert.equal(readJournalModeOnDisk(file), "wal");
}

describe("applyWal() from several processes", () => {
  it("applyWal() in 4 processes racing on one fresh file: 4000 rows, integrity ok, still WAL", {
    timeout: 120_000,
  }, async () => {
    const file = freshPath("shared");
    const drivers = ["node", "node", "node", "node"];
    assertSharedDatabase(file, drivers, await runWriters(file, drivers, 1000), 1000);
  });

  it("applyWal() in 2 node:sqlite and 2 bun:sqlite processes on one file: 4000 rows, still WAL", {
    timeout: 120_000,
    skip: runtime !== "bun" && NO_BUN,
  }, async () => {
    const file = freshPath("shared-mixed");
    const drivers = ["node", "bun", "node", "bun"];
    assertSharedDatabase(file, drivers, await runWriters(file, drivers, 1000), 1000);
  });

  // Every driver this runtime has, interleaved: node:sqlite, better-sqlite3 where it loads, bun:sqlite on Bun.
  const mixed = ["node", ...(BETTER.open ? ["better"] : []), ...(runtime === "bun" ? ["bun"] : [])];
  const starts: Array<[string, string[], string | false]> = [
    ["8 node:sqlite processes", Array(8).fill("node"), false],
    [
      `8 processes of ${mixed.length} drivers (${mixed.join(", ")})`,
      Array.from({ length: 8 }, (_, i) => mixed[i % mixed.length]!),
      mixed.length < 2 && `only node:sqlite here (${BETTER.reason})`,
    ],
  ];
  for (const [label, drivers, skip] of starts) {
    it(`applyWal() with default options in ${label} starting on one fresh file at once: all wal, all rows`, {
      timeout: 180_000,
      skip,
    }, async () => {
      const file = freshPath("fresh-start");
      assert.equal(fs.existsSync(file), false);
      assertSharedDatabase(file, drivers, await runWriters(file, drivers, 200, "defaults"), 200);
    });
  }
});
