/**
 * The cost of applyWal() against a bare `PRAGMA journal_mode=WAL` on an existing WAL database, the
 * case every service start hits. Measured two ways, the two variants interleaved so that drift hits both:
 *
 * - on open: the first call on a connection just opened (only the call is timed, not the open);
 * - warm: repeated calls on one open connection.
 *
 * Runs with `deno run -A`, `bun` or `node`; on Bun, bun:sqlite is measured too, and better-sqlite3 wherever
 * it loads (bun:sqlite finalises the statements applyWal prepares, a cost the ratio includes). Prints
 * `ratio applyWal/bare-pragma X` (on open) and the microseconds per call of each variant.
 */

import * as fs from "node:fs";
import { createRequire } from "node:module";
import * as os from "node:os";
import * as path from "node:path";
import { DatabaseSync } from "node:sqlite";
import { runtime } from "../platform.ts";
import { applyWal, type SqliteLike } from "../sqlite_wal.ts";

const OPEN_ROUNDS = 20_000;
const WARM_ROUNDS = 300_000;
const WARMUP_ROUNDS = 200;
/** better-sqlite3 through Deno's N-API costs about 300 µs a call: a tenth of the rounds keeps the run short. */
const BETTER_SQLITE3_ROUNDS = 0.1;

interface Connection extends SqliteLike {
  exec(sql: string): void;
  close(): void;
}

type Open = (file: string) => Connection;

function bare(db: SqliteLike): void {
  db.prepare("PRAGMA journal_mode=WAL").get();
}

function viaApplyWal(file: string): (db: SqliteLike) => void {
  return (db) => {
    if (applyWal(db, file) !== "wal") throw new Error("applyWal() did not answer wal on a WAL database");
  };
}

/** Microseconds per first call on a fresh connection, for [applyWal, bare], interleaved. */
function measureOnOpen(open: Open, file: string, rounds: number): [number, number] {
  const variants = [viaApplyWal(file), bare];
  const totals = [0, 0];
  for (let round = 0; round < rounds + WARMUP_ROUNDS; round++) {
    for (let k = 0; k < 2; k++) {
      const which = (round + k) % 2; // alternate which variant goes first
      const db = open(file);
      const start = performance.now();
      variants[which](db);
      const elapsed = performance.now() - start;
      db.close();
      if (round >= WARMUP_ROUNDS) totals[which] += elapsed;
    }
  }
  return [(totals[0] * 1000) / rounds, (totals[1] * 1000) / rounds];
}

/** Microseconds per call on one open connection, for [applyWal, bare], in alternating blocks. */
function measureWarm(open: Open, file: string, rounds: number): [number, number] {
  const db = open(file);
  const variants = [viaApplyWal(file), bare];
  const totals = [0, 0];
  const block = 1000;
  try {
    for (let done = 0; done < rounds; done += block) {
      for (let k = 0; k < 2; k++) {
        const which = ((done / block) + k) % 2;
        const start = performance.now();
        for (let i = 0; i < block; i++) variants[which](db);
        totals[which] += performance.now() - start;
      }
    }
  } finally {
    db.close();
  }
  return [(totals[0] * 1000) / rounds, (totals[1] * 1000) / rounds];
}

/** `rounds` scales the round counts down for a driver whose calls cost far more (better-sqlite3 on Deno). */
function report(label: string, open: Open, file: string, rounds = 1): void {
  const [applyOpen, bareOpen] = measureOnOpen(open, file, Math.round(OPEN_ROUNDS * rounds));
  const [applyWarm, bareWarm] = measureWarm(open, file, Math.round(WARM_ROUNDS * rounds));
  const suffix = label === "" ? "" : `-${label}`;
  console.log(`ratio applyWal${suffix}/bare-pragma${suffix} ${(applyOpen / bareOpen).toFixed(2)}`);
  console.log(`time applyWal${suffix}/on-open ${applyOpen.toFixed(2)} us/call`);
  console.log(`time bare-pragma${suffix}/on-open ${bareOpen.toFixed(2)} us/call`);
  console.log(`ratio applyWal-warm${suffix}/bare-pragma-warm${suffix} ${(applyWarm / bareWarm).toFixed(2)}`);
  console.log(`time applyWal${suffix}/warm ${applyWarm.toFixed(2)} us/call`);
  console.log(`time bare-pragma${suffix}/warm ${bareWarm.toFixed(2)} us/call`);
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keelson-"));
try {
  const file = path.join(dir, "bench.sqlite");
  const setup = new DatabaseSync(file);
  setup.exec("PRAGMA journal_mode = WAL; CREATE TABLE t (x); INSERT INTO t VALUES (1)");
  // Kept open for the whole run, like a sibling service: the -wal file stays, as in production.
  try {
    report("", (f) => new DatabaseSync(f) as unknown as Connection, file);
    if (runtime === "bun") {
      const specifier = "bun:sqlite";
      const { Database } = await import(specifier);
      report("bun-sqlite", (f) => new Database(f) as Connection, file);
    }
    let Better: (new (file: string) => Connection) | null = null;
    try {
      Better = createRequire(import.meta.url)("better-sqlite3");
    } catch (error) {
      console.log(`# better-sqlite3 skipped: it does not load here (${String(error).split("\n")[0]})`);
    }
    if (Better !== null) {
      const Database = Better;
      report("better-sqlite3", (f) => new Database(f), file, BETTER_SQLITE3_ROUNDS);
    }
  } finally {
    setup.close();
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
