import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { spawn, spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as path from "node:path";
import * as zlib from "node:zlib";
import {
  getUid,
  processStartTime,
  readProcStat,
  runtime,
  scriptCommand,
  selfIdentity,
  sleepSync,
  statIdentity,
} from "../platform.ts";
import { createLogger, LOG_LEVELS, openRotatingFile, RotatingFileError } from "../logging.ts";
import type { RotatingFile, RotatingFileOptions } from "../logging.ts";
import {
  AS_NOBODY,
  fixture,
  freshDir,
  type Outcome,
  runFixture,
  runToEnd,
  sleep,
  startFixture,
  tempRoot,
  waitUntil,
} from "./_helpers.ts";
import { fixtureRecord } from "./fixtures/_logging_records.ts";

const WRITER = fixture("logging_writer.ts");
const MODE_FIXTURE = fixture("logging_mode.ts");

const HAS_STRACE = spawnSync("strace", ["-V"], { encoding: "utf8" }).status === 0;
const NO_STRACE = "strace is not installed: the write(2) count cannot be observed, skipped";
const SLOW = { timeout: 60_000 };

const root = tempRoot();

/** A path for a log file (not created) in a fresh directory. */
function freshLog(): string {
  return path.join(freshDir(root), "app.log");
}

function read(file: string): string {
  return fs.readFileSync(file, "utf8");
}

/** Opens a rotating file that collects its errors instead of printing them. */
function open(
  file: string,
  options: RotatingFileOptions = {},
): { log: RotatingFile; errors: RotatingFileError[] } {
  const errors: RotatingFileError[] = [];
  const log = openRotatingFile(file, {
    ...options,
    onError: (error) => errors.push(error as RotatingFileError),
  });
  return { log, errors };
}

/**
 * The log file and its backups, oldest first, with their lines: `path.N` … `path.1`, then any
 * `path-YYYYMMDDHH.backup` (where logrotate's `create` puts a file it found recreated), then `path`.
 */
function chain(file: string): { name: string; size: number; lines: string[] }[] {
  const dir = path.dirname(file);
  const base = path.basename(file);
  const rank = (name: string): number => {
    if (name === base) return 0;
    if (!name.startsWith(base)) return NaN;
    const rest = name.slice(base.length);
    if (/^-\d{10}\.backup$/.test(rest)) return 0.5;
    return Number(/^\.(\d+)$/.exec(rest)?.[1]);
  };
  const named = fs.readdirSync(dir)
    .map((name) => ({ name, n: rank(name) }))
    .filter(({ n }) => !Number.isNaN(n))
    .sort((a, b) => b.n - a.n);
  return named.map(({ name }) => {
    const text = read(path.join(dir, name));
    return {
      name,
      size: fs.statSync(path.join(dir, name)).size,
      lines: text === "" ? [] : text.replace(/\n$/, "").split("\n"),
    };
  });
}

// ---------------------------------------------------------------------------------------------------
// openRotatingFile(): records
// ---------------------------------------------------------------------------------------------------

describe("openRotatingFile() records", () => {
  it("openRotatingFile() appends one line per record and adds the missing newline", () => {
    const file = freshLog();
    const { log, errors } = open(file);
    log.write("first");
    log.write("second\n");
    log.write("");
    log.write(new TextEncoder().encode("bytes"));
    log.write(new TextEncoder().encode("bytes with newline\n"));
    log.write("é ünïcødé ✓");
    log.close();
    assert.equal(read(file), "first\nsecond\n\nbytes\nbytes with newline\né ünïcødé ✓\n");
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() appends to an existing file without truncating it", () => {
    const file = freshLog();
    fs.writeFileSync(file, "old line\n");
    const { log } = open(file);
    log.write("new line");
    log.close();
    assert.equal(read(file), "old line\nnew line\n");
  });

  it("openRotatingFile() writes a record larger than its buffer in one piece", () => {
    const file = freshLog();
    const big = "b".repeat(200_000);
    const { log, errors } = open(file, { maxBytes: 0 });
    log.write(big);
    log.write("after");
    log.close();
    assert.equal(read(file), `${big}\nafter\n`);
    assert.deepEqual(errors, []);
  });

  it(
    "openRotatingFile() issues exactly one write(2) per record",
    { ...SLOW, skip: !HAS_STRACE && NO_STRACE },
    async () => {
      const file = freshLog();
      const trace = path.join(path.dirname(file), "trace.txt");
      const result = await runFixture(WRITER, [
        "--path",
        file,
        "--id",
        "w7",
        "--count",
        "50",
        "--size",
        "100",
      ], {
        wrap: [
          "strace",
          "-f",
          "-qq",
          "-e",
          "trace=write",
          "-e",
          "signal=none",
          "-o",
          trace,
        ],
      });
      if (result.code !== 0 && /ptrace|Operation not permitted/.test(result.stderr)) {
        console.log(`strace cannot trace here (${result.stderr.trim()}): nothing to count`);
        return;
      }
      assert.equal(result.code, 0, result.stderr);
      const writes = read(trace).split("\n").filter((line) =>
        line.includes("write(") && line.includes('"w7 ')
      );
      assert.equal(writes.length, 50, `expected 50 write(2) calls carrying records:\n${writes.join("\n")}`);
      // Each call carries the whole 100-byte record (threads may split a line as "<unfinished ...>").
      for (const line of writes) assert.match(line, /"\.\.\., 100(\) += 100$| <unfinished)/);
      assert.equal(chain(file)[0].lines.length, 50);
    },
  );
});

// ---------------------------------------------------------------------------------------------------
// openRotatingFile(): external rotation
// ---------------------------------------------------------------------------------------------------

describe("openRotatingFile() external rotation", () => {
  it("openRotatingFile() reopens after an external rename and writes into the recreated file", () => {
    const file = freshLog();
    const { log, errors } = open(file);
    log.write("a");
    fs.renameSync(file, `${file}.1`);
    fs.writeFileSync(file, "recreated by someone else\n");
    log.write("b");
    log.write("c");
    log.close();
    assert.equal(read(`${file}.1`), "a\n");
    assert.equal(read(file), "recreated by someone else\nb\nc\n");
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() recreates the path after a rename without recreate", () => {
    const file = freshLog();
    const { log, errors } = open(file);
    log.write("a");
    fs.renameSync(file, `${file}.1`);
    log.write("b");
    log.close();
    assert.equal(read(`${file}.1`), "a\n");
    assert.equal(read(file), "b\n");
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() recreates the path after an unlink", () => {
    const file = freshLog();
    const { log, errors } = open(file);
    log.write("a");
    fs.unlinkSync(file);
    log.write("b");
    log.close();
    assert.equal(read(file), "b\n");
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() follows a file renamed over the path (replacement)", () => {
    const file = freshLog();
    const { log } = open(file);
    log.write("a");
    fs.writeFileSync(`${file}.new`, "replacement\n");
    fs.renameSync(`${file}.new`, file);
    log.write("b");
    log.close();
    assert.equal(read(file), "replacement\nb\n");
  });

  it("openRotatingFile() continues at the new end after copytruncate, with no NUL hole", () => {
    const file = freshLog();
    const { log, errors } = open(file);
    log.write("a".repeat(500));
    log.write("b".repeat(500));
    fs.copyFileSync(file, `${file}.1`);
    fs.truncateSync(file, 0);
    log.write("c");
    log.close();
    assert.equal(read(file), "c\n");
    assert.equal(fs.statSync(file).size, 2);
    assert.equal(read(`${file}.1`), `${"a".repeat(500)}\n${"b".repeat(500)}\n`);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() checks on the first write of a new handle", () => {
    const file = freshLog();
    const { log } = open(file, { checkEvery: 1_000 });
    fs.renameSync(file, `${file}.1`);
    log.write("first record");
    log.close();
    assert.equal(read(`${file}.1`), "");
    assert.equal(read(file), "first record\n");
  });

  it("openRotatingFile() with checkEvery N lands at most N-1 records in the backup", () => {
    const file = freshLog();
    const { log } = open(file, { checkEvery: 4 });
    log.write("r0"); // checks
    log.write("r1");
    fs.renameSync(file, `${file}.1`);
    log.write("r2");
    log.write("r3");
    log.write("r4"); // checks: reopens
    log.write("r5");
    log.close();
    assert.equal(read(`${file}.1`), "r0\nr1\nr2\nr3\n");
    assert.equal(read(file), "r4\nr5\n");
  });

  it("openRotatingFile() with the default checkEvery puts no record written after a rename in the backup", () => {
    const file = freshLog();
    const { log } = open(file);
    for (let round = 1; round <= 5; round++) {
      log.write(`before ${round}`);
      fs.renameSync(file, `${file}.r${round}`);
    }
    log.write("last");
    log.close();
    for (let round = 1; round <= 5; round++) assert.equal(read(`${file}.r${round}`), `before ${round}\n`);
    assert.equal(read(file), "last\n");
  });

  it("reopen() follows a rename at once, whatever checkEvery", () => {
    const file = freshLog();
    const { log, errors } = open(file, { checkEvery: 1_000 });
    log.write("a");
    fs.renameSync(file, `${file}.1`);
    log.reopen();
    log.write("b");
    log.close();
    assert.equal(read(`${file}.1`), "a\n");
    assert.equal(read(file), "b\n");
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() treats an unknown inode as no change (no reopen loop)", () => {
    // A filesystem that reports no inode cannot be mounted here; what can be checked for real is that
    // the identity stat the check relies on reports unknown inodes as null, and that a stable file is
    // never reopened: the descriptor stays the same across many checked writes.
    const file = freshLog();
    const { log } = open(file);
    log.write("a");
    const before = statIdentity(file);
    assert.ok(before !== null && before.ino !== null && before.ino > 0);
    const fds = fs.readdirSync("/proc/self/fd").length;
    for (let i = 0; i < 100; i++) log.write(`r${i}`);
    assert.equal(fs.readdirSync("/proc/self/fd").length, fds);
    log.close();
    assert.equal(statIdentity(file)!.ino, before.ino);
    assert.equal(read(file).split("\n").length, 102);
  });
});

// ---------------------------------------------------------------------------------------------------
// openRotatingFile(): size rollover
// ---------------------------------------------------------------------------------------------------

describe("openRotatingFile() rollover", () => {
  it("openRotatingFile() rolls over before the live file would exceed maxBytes", () => {
    const file = freshLog();
    const { log, errors } = open(file, { maxBytes: 100, backups: 3 });
    for (let i = 0; i < 5; i++) log.write(`${i}`.padEnd(39, "-")); // 40 bytes each
    log.close();
    assert.equal(read(`${file}.2`), `${"0".padEnd(39, "-")}\n${"1".padEnd(39, "-")}\n`);
    assert.equal(read(`${file}.1`), `${"2".padEnd(39, "-")}\n${"3".padEnd(39, "-")}\n`);
    assert.equal(read(file), `${"4".padEnd(39, "-")}\n`);
    assert.deepEqual(errors, []);
    assert.equal(fs.existsSync(`${file}.lock`), false);
  });

  it("openRotatingFile() keeps at most N backups, the oldest removed, the newest in order", () => {
    const file = freshLog();
    const { log, errors } = open(file, { maxBytes: 10, backups: 3 });
    for (let i = 0; i < 20; i++) log.write(`rec${String(i).padStart(2, "0")}`); // 6 bytes: one per file
    log.close();
    const names = fs.readdirSync(path.dirname(file)).sort();
    assert.deepEqual(names, ["app.log", "app.log.1", "app.log.2", "app.log.3"]);
    assert.equal(read(`${file}.3`), "rec16\n");
    assert.equal(read(`${file}.2`), "rec17\n");
    assert.equal(read(`${file}.1`), "rec18\n");
    assert.equal(read(file), "rec19\n");
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() writes a record larger than maxBytes alone into a fresh file", () => {
    const file = freshLog();
    const { log } = open(file, { maxBytes: 10, backups: 2 });
    log.write("ab");
    log.write("x".repeat(50));
    log.write("cd");
    log.close();
    assert.equal(read(`${file}.2`), "ab\n");
    assert.equal(read(`${file}.1`), `${"x".repeat(50)}\n`);
    assert.equal(read(file), "cd\n");
  });

  it("openRotatingFile() with backups 0 discards the full file on rollover", () => {
    const file = freshLog();
    const { log } = open(file, { maxBytes: 10, backups: 0 });
    log.write("12345678");
    log.write("abcdefgh");
    log.close();
    assert.equal(read(file), "abcdefgh\n");
    assert.deepEqual(fs.readdirSync(path.dirname(file)), ["app.log"]);
  });

  it("openRotatingFile() with maxBytes 0 never rolls over", () => {
    const file = freshLog();
    const { log } = open(file, { maxBytes: 0 });
    for (let i = 0; i < 1000; i++) log.write("x".repeat(99));
    log.close();
    assert.equal(fs.statSync(file).size, 100_000);
    assert.deepEqual(fs.readdirSync(path.dirname(file)), ["app.log"]);
  });

  it("openRotatingFile() decides rollover from the real size shared by several handles", () => {
    const file = freshLog();
    const a = open(file, { maxBytes: 1_000, backups: 50 });
    const b = open(file, { maxBytes: 1_000, backups: 50 });
    for (let i = 0; i < 100; i++) {
      a.log.write(`a${String(i).padStart(3, "0")}`.padEnd(49, "."));
      b.log.write(`b${String(i).padStart(3, "0")}`.padEnd(49, "."));
    }
    a.log.close();
    b.log.close();
    const files = chain(file);
    // 200 records × 50 bytes = 10 000 bytes: 10 full files, not 20 half-full ones.
    assert.equal(files.length, 10);
    for (const { name, size } of files) assert.equal(size, 1_000, `${name} has ${size} bytes`);
    assert.equal(files.flatMap((f) => f.lines).length, 200);
    assert.deepEqual([...a.errors, ...b.errors], []);
  });

  it("openRotatingFile() reopens instead of renaming when a sibling already rotated (no clobber)", () => {
    const file = freshLog();
    // The slow handle checks rarely, so its view of the file is stale when its rollover is due.
    const slow = open(file, { maxBytes: 100, backups: 5, checkEvery: 1_000 });
    const sibling = open(file, { maxBytes: 100, backups: 5 });
    slow.log.write("s1".padEnd(59, "."));
    sibling.log.rotate();
    sibling.log.write("fresh from the sibling");
    slow.log.write("s2".padEnd(59, ".")); // 60 + 60 > 100 by its own count: must re-check under the lock
    slow.log.close();
    sibling.log.close();
    assert.equal(read(`${file}.1`), `${"s1".padEnd(59, ".")}\n`);
    assert.equal(read(file), `fresh from the sibling\n${"s2".padEnd(59, ".")}\n`);
    assert.equal(fs.existsSync(`${file}.2`), false, "the sibling's fresh file was rotated again");
    assert.deepEqual([...slow.errors, ...sibling.errors], []);
  });

  it("rotate() rolls over on demand and adopts the new file when a sibling rotated", () => {
    const file = freshLog();
    const a = open(file, { checkEvery: 1_000 });
    const b = open(file);
    a.log.write("one");
    a.log.rotate();
    a.log.write("two");
    assert.equal(read(`${file}.1`), "one\n");
    b.log.write("three"); // b's first write checks: it follows a's new file
    b.log.rotate(); // b rotates the live file
    a.log.rotate(); // a's file was rotated by b: a adopts the new live file, no second rotation
    a.log.write("four");
    a.log.close();
    b.log.close();
    assert.equal(read(`${file}.2`), "one\n");
    assert.equal(read(`${file}.1`), "two\nthree\n");
    assert.equal(read(file), "four\n");
    assert.equal(fs.existsSync(`${file}.3`), false);
  });

  it("openRotatingFile() tolerates backups missing from the chain and keeps foreign ones", () => {
    const file = freshLog();
    fs.writeFileSync(`${file}.2`, "old two\n"); // no .1: a gap
    fs.writeFileSync(`${file}.4`, "old four\n");
    const { log, errors } = open(file, { maxBytes: 5, backups: 4 });
    log.write("live");
    log.rotate();
    log.write("new");
    log.close();
    // .4 was the oldest slot and leaves; .2 moves up past the gaps; nothing else is touched.
    assert.equal(read(`${file}.1`), "live\n");
    assert.equal(fs.existsSync(`${file}.2`), false);
    assert.equal(read(`${file}.3`), "old two\n");
    assert.equal(fs.existsSync(`${file}.4`), false);
    assert.equal(read(file), "new\n");
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() recovers the rollover lock of a holder killed mid-rollover", async () => {
    const file = freshLog();
    const holder = spawn("sleep", ["30"]);
    const exited = new Promise((resolve) => holder.on("close", resolve));
    const lock = { pid: holder.pid, startTime: processStartTime(holder.pid!), token: "dead", at: "" };
    fs.writeFileSync(`${file}.lock`, JSON.stringify(lock) + "\n");
    process.kill(holder.pid!, "SIGKILL");
    await exited;
    const { log, errors } = open(file, { lockTimeoutMs: 20_000 });
    log.write("a");
    log.rotate();
    log.write("b");
    log.close();
    assert.equal(read(`${file}.1`), "a\n");
    assert.equal(read(file), "b\n");
    assert.equal(fs.existsSync(`${file}.lock`), false);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() recovers a rollover lock whose pid was reused by another process", () => {
    const file = freshLog();
    const started = processStartTime(process.pid);
    assert.ok(started !== null, "no start time on this system");
    // Our own pid is alive, but the lock names an earlier process that had it (another start time).
    const lock = { pid: process.pid, startTime: started - 60_000, token: "earlier", at: "" };
    fs.writeFileSync(`${file}.lock`, JSON.stringify(lock) + "\n");
    const { log, errors } = open(file, { lockTimeoutMs: 20_000 });
    log.write("a");
    log.rotate();
    log.close();
    assert.equal(read(`${file}.1`), "a\n");
    assert.equal(fs.existsSync(`${file}.lock`), false);
    assert.deepEqual(errors, []);
  });

  it(
    "openRotatingFile() judges a lock holder by its start ticks, not a wall-clock start time",
    SLOW,
    async () => {
      const file = freshLog();
      const holder = spawn("sleep", ["30"]);
      const exited = new Promise((resolve) => holder.on("close", resolve));
      try {
        let ticks = readProcStat(holder.pid!)?.startTicks;
        for (let i = 0; i < 50 && ticks === undefined; i++) {
          await sleep(10);
          ticks = readProcStat(holder.pid!)?.startTicks;
        }
        assert.ok(ticks !== undefined, "no /proc start ticks on this system");
        // The same process, recorded while the wall clock was 30 s off: its ticks say it still holds the lock.
        const started = processStartTime(holder.pid!)! - 30_000;
        fs.writeFileSync(
          `${file}.lock`,
          JSON.stringify({ pid: holder.pid, startTime: started, startTicks: ticks, token: "held", at: "" }),
        );
        const { log, errors } = open(file, { maxBytes: 10, lockTimeoutMs: 100 });
        log.write("12345678");
        log.write("abcdefgh"); // rollover due, the lock is held: gives up after 100 ms
        assert.equal(errors.length, 1);
        assert.match(errors[0].message, /lock/);
        assert.equal(fs.existsSync(`${file}.1`), false);
        // Other ticks behind the same pid: a reused pid, so the lock is recovered.
        fs.writeFileSync(
          `${file}.lock`,
          JSON.stringify({
            pid: holder.pid,
            startTime: null,
            startTicks: ticks! - 1,
            token: "earlier",
            at: "",
          }),
        );
        log.rotate();
        log.close();
        assert.equal(read(`${file}.1`), "12345678\nabcdefgh\n");
        assert.equal(fs.existsSync(`${file}.lock`), false);
        assert.equal(errors.length, 1);
      } finally {
        process.kill(holder.pid!, "SIGKILL");
        await exited;
      }
    },
  );

  it("openRotatingFile() waits for a live lock holder, then reports and keeps writing", SLOW, async () => {
    const file = freshLog();
    const holder = spawn("sleep", ["30"]);
    const exited = new Promise((resolve) => holder.on("close", resolve));
    try {
      const lock = { pid: holder.pid, startTime: null, token: "held", at: "" };
      fs.writeFileSync(`${file}.lock`, JSON.stringify(lock) + "\n");
      const { log, errors } = open(file, { maxBytes: 10, lockTimeoutMs: 100 });
      log.write("12345678");
      log.write("abcdefgh"); // rollover due, lock held by a live process: gives up after 100 ms
      assert.equal(errors.length, 1);
      assert.equal(errors[0].operation, "rollover");
      assert.equal(errors[0].lost, false);
      assert.match(errors[0].message, /lock/);
      assert.equal(read(file), "12345678\nabcdefgh\n");
      assert.equal(fs.existsSync(`${file}.1`), false);
      // The holder dies: the next rollover takes the lock over.
      process.kill(holder.pid!, "SIGKILL");
      await exited;
      log.rotate();
      log.write("after");
      log.close();
      assert.equal(read(`${file}.1`), "12345678\nabcdefgh\n");
      assert.equal(read(file), "after\n");
      assert.equal(errors.length, 1);
    } finally {
      if (holder.exitCode === null && holder.signalCode === null) process.kill(holder.pid!, "SIGKILL");
      await exited;
    }
  });

  it("openRotatingFile() takes over a lock seen unchanged for lockStaleMs even if its holder lives", () => {
    const file = freshLog();
    fs.writeFileSync(
      `${file}.lock`,
      JSON.stringify({ pid: process.pid, startTime: null, token: "t", at: "" }),
    );
    const { log, errors } = open(file, { lockStaleMs: 300, lockTimeoutMs: 20_000 });
    log.write("a");
    log.rotate();
    log.close();
    assert.equal(read(`${file}.1`), "a\n");
    assert.equal(fs.existsSync(`${file}.lock`), false);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() with fewer backups than the chain still drops a second name a killed shift left", () => {
    // A sibling configured with more backups was killed between the link and the unlink of a move.
    const file = freshLog();
    for (let i = 1; i <= 7; i++) fs.writeFileSync(`${file}.${i}`, `b${i}\n`);
    fs.linkSync(`${file}.7`, `${file}.8`);
    const gone = spawnSync("true").pid!; // exited and reaped: its lock is a dead holder's
    fs.writeFileSync(`${file}.lock`, JSON.stringify({ pid: gone, startTime: null, token: "killed", at: "" }));
    const { log, errors } = open(file, { backups: 5 });
    log.close();
    assert.equal(fs.existsSync(`${file}.7`), false);
    assert.equal(read(`${file}.8`), "b7\n");
    assert.equal(fs.existsSync(`${file}.lock`), false);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() never takes over as stale a new lock on a reused inode with the same size and mtime", () => {
    // ext4 hands a freed inode to the next file, and a file's mtime has the kernel clock's coarse
    // granularity: a lock released and taken again can look like the one seen before by inode, size
    // and mtime. Only its record (a unique token) tells them apart.
    const file = freshLog();
    const lock = `${file}.lock`;
    const record = (token: string) => JSON.stringify({ ...selfIdentity(), token, at: "" }); // alive
    fs.writeFileSync(lock, record("first-holder"));
    fs.utimesSync(lock, 1_700_000_000, 1_700_000_000);
    const { log, errors } = open(file, { lockStaleMs: 300, lockTimeoutMs: 100 });
    log.write("a");
    log.rotate(); // waits 100 ms: busy, the lock is now seen
    assert.equal(errors.length, 1);
    const ino = fs.statSync(lock).ino;
    fs.writeFileSync(lock, record("other-holder")); // same inode, same size
    fs.utimesSync(lock, 1_700_000_000, 1_700_000_000);
    assert.equal(fs.statSync(lock).ino, ino);
    sleepSync(400);
    log.rotate(); // the lock seen 400 ms ago is gone: this one is young and its holder lives
    log.close();
    assert.equal(read(lock), record("other-holder"));
    assert.equal(fs.existsSync(`${file}.1`), false);
    assert.equal(read(file), "a\n");
    assert.equal(errors.length, 2);
    assert.match(errors[1]!.message, /cannot take the rollover lock/);
  });

  it(
    "openRotatingFile() with its holder stopped mid-rollover, taken over and resumed: every record once",
    { timeout: 180_000 },
    async () => {
      // A holder frozen (SIGSTOP, a starved machine) longer than lockStaleMs is taken over by design.
      // When it resumes it must notice before its next move: two shifts at once unlink names the other
      // one has just filled.
      const dir = freshDir(root);
      const file = path.join(dir, "app.log");
      const count = 4000; // a long shift: the holder is stopped in the middle of it
      for (let i = 1; i <= count; i++) fs.writeFileSync(`${file}.${i}`, `b${i} backup\n`);
      const writer = (id: string, records: number, extra: string[] = []) =>
        startFixture(WRITER, [
          "--path",
          file,
          "--id",
          id,
          "--count",
          String(records),
          "--rotate-every",
          "1",
          "--backups",
          "10000",
          ...extra,
        ]);
      const holder = writer("h", 2);
      let stopped = false;
      try {
        await waitUntil(
          () => {
            let text = "";
            try {
              text = fs.readFileSync(`${file}.lock`, "utf8");
            } catch {
              return false;
            }
            if (!text.includes(`"pid":${holder.pid},`)) return false;
            process.kill(holder.pid, "SIGSTOP");
            stopped = true;
            return true;
          },
          "the holder's rollover lock",
          60_000,
        );
        assert.match(fs.readFileSync(`${file}.lock`, "utf8"), new RegExp(`"pid":${holder.pid},`));
        const taker = await writer("t", 3, ["--lock-stale-ms", "500", "--lock-timeout-ms", "120000"]).done;
        assert.equal(taker.code, 0, taker.stderr);
      } finally {
        if (stopped) process.kill(holder.pid, "SIGCONT");
      }
      const resumed = await holder.done;
      assert.equal(resumed.code, 0, resumed.stderr);
      assert.match(resumed.stderr, /taken over while held/);
      const last = await runFixture(WRITER, [
        "--path",
        file,
        "--id",
        "z",
        "--count",
        "0",
        "--backups",
        "10000",
      ]);
      assert.equal(last.code, 0, last.stderr);
      const seen = new Map<string, number>();
      const byIno = new Map<number, string[]>();
      for (const name of fs.readdirSync(dir)) {
        const full = path.join(dir, name);
        const ino = fs.statSync(full).ino;
        byIno.set(ino, [...(byIno.get(ino) ?? []), name]);
        for (const line of read(full).split("\n")) {
          if (line === "") continue;
          const key = line.split(" ").slice(0, 2).join(" ");
          seen.set(key, (seen.get(key) ?? 0) + 1);
        }
      }
      assert.deepEqual(
        [...byIno.values()].filter((names) => names.length > 1),
        [],
        "one file under two names",
      );
      assert.deepEqual(fs.readdirSync(dir).filter((name) => name.endsWith(".tmp")), []);
      const expected = [
        ...Array.from({ length: count }, (_, i) => `b${i + 1} backup`),
        "h 000000",
        "h 000001",
        "t 000000",
        "t 000001",
        "t 000002",
      ];
      const wrong = expected.filter((key) => seen.get(key) !== 1).map((key) =>
        `${key}: ${seen.get(key) ?? 0}`
      );
      assert.deepEqual(wrong, [], "records lost or duplicated");
      assert.equal(seen.size, expected.length);
    },
  );
});

// ---------------------------------------------------------------------------------------------------
// openRotatingFile(): mode
// ---------------------------------------------------------------------------------------------------

describe("openRotatingFile() mode", () => {
  it("openRotatingFile() applies mode on create, reopen and rollover under umask 077", SLOW, async () => {
    const file = freshLog();
    const result = await runFixture(MODE_FIXTURE, ["--path", file, "--mode", "644"], {
      wrap: [
        "sh",
        "-c",
        'umask 077 && exec "$@"',
        "sh",
      ],
    });
    assert.equal(result.code, 0, result.stderr);
    const modes = JSON.parse(result.stdout.trim());
    assert.deepEqual(modes, {
      created: "644",
      reopened: "644",
      rolled: "644",
      reopenedByCall: "644",
      backup: "644",
      errors: [],
    });
    // Without mode the same umask would have given 600: the bits really come from the fchmod.
    const plain = path.join(path.dirname(file), "plain.log");
    const check = spawnSync("sh", ["-c", `umask 077 && : > "${plain}"`]);
    assert.equal(check.status, 0);
    assert.equal((fs.statSync(plain).mode & 0o777).toString(8), "600");
  });

  it("openRotatingFile() applies mode to an existing file it reopens", () => {
    const file = freshLog();
    const { log, errors } = open(file, { mode: 0o600 });
    log.write("a");
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    fs.renameSync(file, `${file}.1`);
    fs.writeFileSync(file, "");
    fs.chmodSync(file, 0o666); // someone else recreated it world-writable
    log.write("b");
    log.close();
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.equal(read(file), "b\n");
    assert.deepEqual(errors, []);
  });
});

// ---------------------------------------------------------------------------------------------------
// openRotatingFile(): fail-open
// ---------------------------------------------------------------------------------------------------

describe("openRotatingFile() failures", () => {
  it("openRotatingFile() never throws under a path whose parent is a file (ENOTDIR)", () => {
    const dir = freshDir(root);
    fs.writeFileSync(path.join(dir, "file"), "");
    const file = path.join(dir, "file", "app.log");
    const { log, errors } = open(file);
    log.write("a");
    log.rotate();
    log.reopen();
    log.close();
    assert.ok(errors.length >= 2);
    assert.ok(errors.every((e) => e instanceof RotatingFileError && e.path === file));
    assert.equal(errors[0].operation, "open");
    assert.equal(errors[0].code, "ENOTDIR");
    const lost = errors.filter((e) => e.lost);
    assert.equal(lost.length, 1, "the record must be reported lost exactly once");
  });

  it("openRotatingFile() recreates a deleted folder and reports the records that went to the deleted file", () => {
    const dir = freshDir(root);
    const file = path.join(dir, "logs", "app.log");
    fs.mkdirSync(path.dirname(file));
    const { log, errors } = open(file, { checkEvery: 3 });
    log.write("a"); // checked: the file is there
    fs.rmSync(path.dirname(file), { recursive: true });
    log.write("b"); // not checked (checkEvery 3): goes to the deleted file
    log.write("c");
    log.write("d"); // checked: the folder and the file are recreated, b and c reported lost
    assert.equal(read(file), "d\n");
    assert.equal(errors.length, 1, errors.join("; "));
    assert.equal(errors[0].lost, true);
    assert.match(errors[0].message, /up to 2 record/);
    fs.rmSync(path.dirname(file), { recursive: true });
    log.reopen(); // gone again: reopen() recreates it too
    log.write("e");
    log.close();
    assert.equal(read(file), "e\n");
    assert.equal(errors.length, 1);
  });

  it("openRotatingFile() with the default checkEvery writes into a recreated folder, losing nothing", () => {
    const dir = freshDir(root);
    const file = path.join(dir, "logs", "app.log");
    fs.mkdirSync(path.dirname(file));
    const { log, errors } = open(file);
    log.write("a");
    fs.rmSync(path.dirname(file), { recursive: true });
    log.write("b");
    log.close();
    assert.equal(read(file), "b\n");
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() creates a missing parent folder", () => {
    const dir = freshDir(root);
    const file = path.join(dir, "a", "b", "app.log");
    const { log, errors } = open(file, { mode: 0o600 });
    log.write("first");
    log.close();
    assert.equal(read(file), "first\n");
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() refuses a device at the path with a RotatingFileError, never renaming it", () => {
    assert.throws(
      () => openRotatingFile("/dev/full", { maxBytes: 10, onError: () => {} }),
      (e: Error) =>
        e instanceof RotatingFileError && e.operation === "open" && /regular file/.test(e.message),
    );
    assert.equal(fs.existsSync("/dev/full"), true);
    assert.equal(fs.existsSync("/dev/full.1"), false);
  });

  it("openRotatingFile() reports EACCES without throwing (unprivileged child)", SLOW, async (t) => {
    const dir = freshDir(root);
    const locked = path.join(dir, "locked");
    fs.mkdirSync(locked);
    fs.chmodSync(locked, 0o555);
    fs.chmodSync(dir, 0o755);
    fs.chmodSync(root, 0o755);
    const file = path.join(locked, "app.log");
    if (getUid() !== 0) {
      const { log, errors } = open(file);
      log.write("a");
      log.close();
      assert.equal(errors[0].code, "EACCES");
      assert.equal(errors.filter((e) => e.lost).length, 1);
      return;
    }
    // As root, permissions do not apply: run the writer as nobody.
    const home = path.join(dir, "nobody-home"); // caches of the runtimes (DENO_DIR, ~/.bun) go here
    fs.mkdirSync(home);
    fs.chmodSync(home, 0o777);
    const env = { ...process.env, DENO_DIR: path.join(home, "deno"), HOME: home };
    const child = startFixture(WRITER, ["--path", file, "--count", "3", "--count-errors"], {
      wrap: AS_NOBODY,
      env,
    });
    const result = await child.done;
    if (result.code !== 0 && !/errors/.test(result.stdout)) {
      t.skip(`cannot run the runtime as an unprivileged user here: ${result.stderr.trim().slice(0, 200)}`);
      return;
    }
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /wrote 3/);
    // One open error at construction, then each write retries (and reports its lost record).
    assert.match(result.stdout, /errors [1-9]\d* codes EACCES\n/);
    assert.equal(fs.existsSync(file), false);
  });

  it("openRotatingFile() prints one rate-limited line on stderr by default", SLOW, async () => {
    const dir = freshDir(root);
    fs.writeFileSync(path.join(dir, "file"), "");
    const file = path.join(dir, "file", "app.log");
    const result = await runFixture(WRITER, ["--path", file, "--count", "200"]);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /wrote 200/);
    const lines = result.stderr.trim().split("\n");
    assert.equal(lines.length, 1, `expected one line, got:\n${result.stderr}`);
    assert.match(lines[0], /app\.log/);
    assert.match(lines[0], /ENOTDIR|not a directory/i);
  });

  it("close() is idempotent and writes after close go to onError", () => {
    const file = freshLog();
    const { log, errors } = open(file);
    log.write("a");
    assert.equal(log.closed, false);
    log.close();
    log.close();
    assert.equal(log.closed, true);
    log.write("b");
    log.rotate();
    log.reopen();
    assert.equal(read(file), "a\n");
    assert.equal(errors.length, 3);
    assert.equal(errors[0].operation, "write");
    assert.equal(errors[0].lost, true);
    assert.match(errors[0].message, /closed/);
  });

  it("openRotatingFile() is disposable: using closes it", (t) => {
    const file = freshLog();
    const log = openRotatingFile(file, { onError: () => {} });
    log[Symbol.dispose]();
    assert.equal(log.closed, true);
    // The `using` syntax itself, compiled at run time so this file still parses where it is missing.
    let block: (open: typeof openRotatingFile, file: string) => RotatingFile;
    try {
      block = new Function(
        "open",
        "file",
        "{ using log = open(file); log.write('inside'); return log; }",
      ) as typeof block;
    } catch {
      t.skip("this runtime has no `using` declarations: only Symbol.dispose was checked");
      return;
    }
    const handle = block(openRotatingFile, file);
    assert.equal(handle.closed, true);
    assert.equal(read(file), "inside\n");
  });

  it("openRotatingFile() keeps the record whole when onError writes to the same file", async () => {
    const file = freshLog();
    const holder = spawn("sleep", ["30"]);
    const exited = new Promise((resolve) => holder.on("close", resolve));
    try {
      fs.writeFileSync(`${file}.lock`, JSON.stringify({ pid: holder.pid, startTime: null, token: "held" }));
      let reports = 0;
      const log: RotatingFile = openRotatingFile(file, {
        maxBytes: 10,
        lockTimeoutMs: 50,
        onError: (error) => {
          reports++;
          log.write(`onError: ${(error as RotatingFileError).operation}`); // over maxBytes too: no loop
        },
      });
      log.write("12345678");
      log.write("the record at stake, intact");
      log.close();
      assert.equal(reports, 1);
      assert.equal(read(file), "12345678\nonError: rollover\nthe record at stake, intact\n");
    } finally {
      process.kill(holder.pid!, "SIGKILL");
      await exited;
    }
  });

  it("openRotatingFile() reports a record whose toString() throws, without throwing", () => {
    const file = freshLog();
    const { log, errors } = open(file);
    const hostile = {
      toString() {
        throw new Error("no text");
      },
    };
    log.write(hostile as unknown as string);
    log.write("next");
    log.close();
    assert.equal(errors.length, 1);
    assert.equal(errors[0].lost, true);
    assert.equal(read(file), "next\n");
  });

  it("openRotatingFile() survives an onError that throws", () => {
    const log = openRotatingFile("/etc/hostname/app.log", {
      onError: () => {
        throw new Error("bad callback");
      },
    });
    log.write("a");
    log.close();
  });

  it("openRotatingFile() rejects bad options with a TypeError or RangeError naming them", () => {
    const file = freshLog();
    assert.throws(() => openRotatingFile(""), TypeError);
    assert.throws(() => openRotatingFile(42 as unknown as string), TypeError);
    assert.throws(
      () => openRotatingFile(file, { maxBytes: -1 }),
      (e: Error) => e instanceof RangeError && /maxBytes/.test(e.message),
    );
    assert.throws(
      () => openRotatingFile(file, { maxBytes: 1.5 }),
      (e: Error) => e instanceof TypeError && /maxBytes/.test(e.message),
    );
    assert.throws(
      () => openRotatingFile(file, { backups: -2 }),
      (e: Error) => e instanceof RangeError && /backups/.test(e.message),
    );
    assert.throws(
      () => openRotatingFile(file, { checkEvery: 0 }),
      (e: Error) => e instanceof RangeError && /checkEvery/.test(e.message),
    );
    assert.throws(
      () => openRotatingFile(file, { mode: 0o17777 }),
      (e: Error) =>
        e instanceof RangeError &&
        /^Cannot open rotating file: 'mode' must be permission bits/.test(e.message),
    );
    assert.throws(() => openRotatingFile(file, { mode: "644" as unknown as number }), {
      name: "TypeError",
      message: `Cannot open rotating file: 'mode' must be permission bits from 0 to 0o7777, got "644"`,
    });
    assert.throws(
      () => openRotatingFile(file, { onError: "x" as unknown as () => void }),
      (e: Error) =>
        e instanceof TypeError &&
        /^Cannot open rotating file: 'onError' must be a function, got "x"$/.test(e.message),
    );
    assert.throws(() => openRotatingFile(file, null as unknown as RotatingFileOptions), TypeError);
    assert.equal(fs.existsSync(file), false, "a rejected call must not create the file");
  });

  it("openRotatingFile() by default rolls over before 10 MiB and keeps 5 backups", () => {
    const file = freshLog();
    const { log, errors } = open(file);
    const record = "x".repeat(1024 * 1024 - 1); // 1 MiB with its newline
    for (let i = 0; i < 70; i++) log.write(record);
    log.close();
    assert.deepEqual(errors, []);
    const limit = 10 * 1024 * 1024;
    for (const name of [file, ...[1, 2, 3, 4, 5].map((n) => `${file}.${n}`)]) {
      const size = fs.statSync(name).size;
      assert.ok(size <= limit && size >= limit - 1024 * 1024, `${name}: ${size} bytes`);
    }
    assert.equal(fs.existsSync(`${file}.6`), false);
  });
});

// ---------------------------------------------------------------------------------------------------
// openRotatingFile(): several processes
// ---------------------------------------------------------------------------------------------------

const LOGROTATE = ["/usr/sbin/logrotate", "/usr/bin/logrotate"].find((file) => fs.existsSync(file));
const NO_LOGROTATE = "logrotate is not installed (CI installs it): skipped";
const HAS_TAIL = spawnSync("tail", ["--version"], { encoding: "utf8" }).status === 0;
const NO_TAIL = "tail is not installed: skipped";

const RECORD = /^(w\d+) (\d{6}) (\d+) x*$/;

interface Seen {
  writer: string;
  seq: number;
  ts: number;
  file: string;
}

/**
 * Parses every line of the chain as a fixture record. Fails on a torn or foreign line and on a record
 * seen twice; checks each writer's records are in order from the oldest file to the live one.
 */
function collect(file: string, recordBytes = 100): Map<string, Seen> {
  const seen = new Map<string, Seen>();
  const lastSeq = new Map<string, number>();
  for (const { name, lines } of chain(file)) {
    for (const line of lines) {
      const match = RECORD.exec(line);
      assert.ok(match, `torn or foreign line in ${name}: ${JSON.stringify(line.slice(0, 120))}`);
      assert.equal(line.length, recordBytes - 1, `line of the wrong length in ${name}: ${line.slice(0, 40)}`);
      const key = `${match[1]} ${match[2]}`;
      assert.ok(!seen.has(key), `record ${key} written twice (again in ${name})`);
      const seq = Number(match[2]);
      assert.ok(seq > (lastSeq.get(match[1]) ?? -1), `record ${key} out of order in ${name}`);
      lastSeq.set(match[1], seq);
      seen.set(key, { writer: match[1], seq, ts: Number(match[3]), file: name });
    }
  }
  return seen;
}

/** Asserts that writer `id` wrote records 0 … count-1, each present. */
function assertComplete(seen: Map<string, Seen>, id: string, count: number): void {
  for (let seq = 0; seq < count; seq++) {
    const key = `${id} ${String(seq).padStart(6, "0")}`;
    assert.ok(seen.has(key), `record ${key} is missing`);
  }
}

function wrote(result: Outcome): number {
  assert.equal(result.code, 0, `writer failed: ${result.stderr}`);
  assert.equal(result.stderr, "", "the writer reported errors");
  const match = /wrote (\d+)/.exec(result.stdout);
  assert.ok(match, `no count from the writer: ${result.stdout}`);
  return Number(match[1]);
}

describe("openRotatingFile() across processes", () => {
  for (const checkEvery of [1, 16]) {
    it(
      `openRotatingFile() keeps every record of 4 processes exactly once, untorn, with no premature rollover (checkEvery ${checkEvery})`,
      SLOW,
      async () => {
        const file = freshLog();
        const maxBytes = 32 * 1024;
        const writers = 4;
        const count = 3_000;
        const children = Array.from({ length: writers }, (_, i) =>
          runFixture(WRITER, [
            "--path",
            file,
            "--id",
            `w${i}`,
            "--count",
            String(count),
            "--size",
            "100",
            "--max-bytes",
            String(maxBytes),
            "--backups",
            "500",
            "--check-every",
            String(checkEvery),
          ]));
        const results = await Promise.all(children);
        for (const result of results) assert.equal(wrote(result), count);
        const seen = collect(file);
        assert.equal(seen.size, writers * count);
        for (let i = 0; i < writers; i++) assertComplete(seen, `w${i}`, count);
        const files = chain(file);
        const backups = files.slice(0, -1);
        assert.ok(backups.length >= 20, `only ${backups.length} backups for 1.2 MB at 32 KiB`);
        // A record goes past maxBytes only when written between a sibling's check and its rollover: at
        // most one in flight per writer, or checkEvery of them when checks are that far apart.
        const slack = writers * checkEvery * 100;
        for (const { name, size } of backups) {
          assert.ok(size >= maxBytes / 2, `premature rollover: ${name} has ${size} bytes`);
          assert.ok(size <= maxBytes + slack, `${name} grew to ${size} bytes`);
        }
        assert.ok(files.at(-1)!.size <= maxBytes + slack);
        const leftovers = fs.readdirSync(path.dirname(file)).filter((name) => /lock|tmp/.test(name));
        assert.deepEqual(leftovers, []);
        const sizes = backups.map((f) => f.size);
        console.log(
          `4 writers, checkEvery ${checkEvery}: ${seen.size} records in ${files.length} files, ` +
            `backups ${Math.min(...sizes)}..${Math.max(...sizes)} bytes`,
        );
      },
    );
  }

  it(
    "openRotatingFile() loses nothing when 3 processes call rotate() concurrently while writing",
    SLOW,
    async () => {
      const file = freshLog();
      const children = ["w0", "w1", "w2"].map((id) =>
        runFixture(WRITER, [
          "--path",
          file,
          "--id",
          id,
          "--count",
          "2000",
          "--max-bytes",
          "0",
          "--backups",
          "1000",
          "--rotate-every",
          "25",
        ])
      );
      const counts = (await Promise.all(children)).map(wrote);
      const seen = collect(file);
      for (const [i, count] of counts.entries()) assertComplete(seen, `w${i}`, count);
      assert.equal(seen.size, 6_000);
      const files = chain(file);
      // 240 rotate() calls: some rotate, the others find the file already rotated and adopt it.
      assert.ok(files.length > 10 && files.length <= 241, `${files.length} files`);
      assert.deepEqual(fs.readdirSync(path.dirname(file)).filter((name) => /lock|tmp/.test(name)), []);
      console.log(`3 processes, 240 rotate() calls: ${files.length} files, all 6000 records once`);
    },
  );

  async function runWithLogrotate(directive: "create 0640" | "copytruncate") {
    const dir = freshDir(root);
    const file = path.join(dir, "app.log");
    const stop = path.join(dir, "stop");
    const conf = path.join(dir, "logrotate.conf");
    const state = path.join(dir, "logrotate.state");
    fs.writeFileSync(conf, `${file} {\n  rotate 5\n  ${directive}\n  missingok\n  nocompress\n}\n`);
    fs.chmodSync(conf, 0o644);
    fs.writeFileSync(file, "");
    const children = ["w0", "w1"].map((id) =>
      runFixture(WRITER, ["--path", file, "--id", id, "--until", stop, "--sleep-ms", "1"])
    );
    await waitUntil(() => fs.statSync(file).size >= 300 * 100, "records before the rotation");
    const rotationStart = Date.now();
    const rotation = spawnSync(LOGROTATE!, ["-f", "-s", state, conf], { encoding: "utf8" });
    const rotationEnd = Date.now();
    if (rotation.status !== 0) {
      // With `create`, a writer may recreate the path between logrotate's rename and its create:
      // logrotate then renames that file to app.log-YYYYMMDDHH.backup (nothing is lost) and says so.
      assert.match(
        rotation.stderr,
        /already exists, renaming to .*\.backup/,
        `logrotate failed: ${rotation.stderr}`,
      );
      console.log(`logrotate found the path recreated by a writer: ${rotation.stderr.trim()}`);
    }
    assert.ok(fs.existsSync(`${file}.1`), "logrotate made no backup");
    await waitUntil(() => fs.statSync(file).size >= 300 * 100, "records after the rotation");
    fs.writeFileSync(stop, "");
    const counts = (await Promise.all(children)).map(wrote);
    return { file, counts, rotationStart, rotationEnd };
  }

  it("openRotatingFile() with logrotate create 0640: every record kept, later ones in the live file", {
    ...SLOW,
    skip: !LOGROTATE && NO_LOGROTATE,
  }, async () => {
    const { file, counts, rotationStart, rotationEnd } = await runWithLogrotate("create 0640");
    const seen = collect(file);
    assertComplete(seen, "w0", counts[0]);
    assertComplete(seen, "w1", counts[1]);
    assert.equal(seen.size, counts[0] + counts[1]);
    let after = 0;
    for (const [key, record] of seen) {
      if (record.ts > rotationEnd) {
        after++;
        assert.equal(record.file, "app.log", `${key}, written after the rotation, is in ${record.file}`);
      }
      if (record.ts < rotationStart) assert.equal(record.file, "app.log.1", `${key} is in ${record.file}`);
    }
    assert.ok(after > 0, "no record written after the rotation");
    assert.equal(fs.statSync(file).mode & 0o777, 0o640);
    console.log(
      `logrotate create: ${seen.size} records kept, ${after} written after the rotation, all in app.log`,
    );
  });

  it("openRotatingFile() with logrotate copytruncate: no NUL hole, later records in the live file", {
    ...SLOW,
    skip: !LOGROTATE && NO_LOGROTATE,
  }, async () => {
    const { file, counts, rotationStart, rotationEnd } = await runWithLogrotate("copytruncate");
    assert.ok(!fs.readFileSync(file).includes(0), "NUL bytes in the live file");
    const seen = collect(file); // untorn, no duplicates, in order
    let after = 0;
    let lost = 0;
    for (const [index, id] of ["w0", "w1"].entries()) {
      let previous: Seen | undefined;
      const missing: number[] = [];
      for (let seq = 0; seq < counts[index]; seq++) {
        const record = seen.get(`${id} ${String(seq).padStart(6, "0")}`);
        if (record === undefined) {
          missing.push(seq);
          continue;
        }
        // copytruncate loses what is written between its copy and its truncate, and only that: a lost
        // record was written after its predecessor's timestamp and before its successor's.
        for (const seqLost of missing) {
          assert.ok(
            previous === undefined || previous.ts <= rotationEnd,
            `${id} ${seqLost} lost after logrotate ran`,
          );
          assert.ok(record.ts >= rotationStart, `${id} ${seqLost} lost before logrotate ran`);
        }
        lost += missing.length;
        missing.length = 0;
        if (record.ts > rotationEnd) {
          after++;
          assert.equal(
            record.file,
            "app.log",
            `${id} ${seq}, written after the rotation, is in ${record.file}`,
          );
        }
        if (record.ts < rotationStart) {
          assert.equal(record.file, "app.log.1", `${id} ${seq} is in ${record.file}`);
        }
        previous = record;
      }
      assert.deepEqual(missing, [], `the last records of ${id} are missing`);
    }
    assert.equal(seen.size + lost, counts[0] + counts[1]);
    assert.ok(after > 0, "no record written after the rotation");
    console.log(
      `logrotate copytruncate: ${seen.size} records kept, ${after} after the rotation in app.log, ` +
        `${lost} lost inside logrotate's own copy-to-truncate window`,
    );
  });

  it("openRotatingFile() keeps a real tail -F follower on the live file across a rotation", {
    ...SLOW,
    skip: !HAS_TAIL && NO_TAIL,
  }, async () => {
    const dir = freshDir(root);
    const file = path.join(dir, "app.log");
    const stop = path.join(dir, "stop");
    fs.writeFileSync(file, "");
    const tail = spawn("tail", ["-n", "+1", "-F", file], { stdio: ["ignore", "pipe", "pipe"] });
    let followed = "";
    const tailClosed = new Promise((resolve) => tail.on("close", resolve));
    tail.stdout.on("data", (chunk: Uint8Array) => followed += new TextDecoder().decode(chunk));
    tail.stderr.on("data", () => {});
    try {
      const children = ["w0", "w1"].map((id) =>
        runFixture(WRITER, ["--path", file, "--id", id, "--until", stop, "--sleep-ms", "1"])
      );
      await waitUntil(() => fs.statSync(file).size >= 200 * 100, "records before the rotation");
      const mv = spawnSync("mv", [file, `${file}.1`]);
      assert.equal(mv.status, 0);
      await waitUntil(
        () => fs.existsSync(file) && fs.statSync(file).size >= 200 * 100,
        "records after the rotation",
      );
      fs.writeFileSync(stop, "");
      const counts = (await Promise.all(children)).map(wrote);
      const written = counts[0] + counts[1];
      const seen = collect(file);
      assert.equal(seen.size, written);
      const live = chain(file).at(-1)!.lines;
      const last = live.at(-1)!;
      await waitUntil(() => followed.includes(last), "the follower to show the last record", 30_000);
      await sleep(200);
      const followedLines = new Set(followed.split("\n").filter((line) => RECORD.test(line)));
      const missedLive = live.filter((line) => !followedLines.has(line));
      console.log(
        `tail -F saw ${followedLines.size} of ${written} records written (${live.length} in the live file, ` +
          `${missedLive.length} of them missed)`,
      );
      assert.deepEqual(missedLive, [], "the follower missed records of the live file");
    } finally {
      tail.kill();
      await tailClosed;
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// openRotatingFile(): in the field (full disks, crashes, racing rotators, links, FIFOs, limits, root)
// ---------------------------------------------------------------------------------------------------

const IS_ROOT = getUid() === 0;
const NEEDS_ROOT = "needs root (tmpfs mounts, chown, unshare): skipped";
const FIFO_FIXTURE = fixture("logging_fifo.ts");
const HAS_PRLIMIT = spawnSync("prlimit", ["--version"], { encoding: "utf8" }).status === 0;
const CAN_UNSHARE = IS_ROOT &&
  spawnSync("unshare", ["-p", "-f", "--mount-proc", "true"], { encoding: "utf8" }).status === 0;

/** Mounts a tmpfs of `size` on `dir` for the duration of `body` (root only). */
async function withTmpfs(dir: string, size: string, body: () => Promise<void>): Promise<void> {
  const mount = spawnSync("mount", ["-t", "tmpfs", "-o", `size=${size}`, "tmpfs", dir], { encoding: "utf8" });
  assert.equal(mount.status, 0, `mount failed: ${mount.stderr}`);
  try {
    await body();
  } finally {
    let umount = spawnSync("umount", [dir], { encoding: "utf8" });
    if (umount.status !== 0) umount = spawnSync("umount", ["-l", dir], { encoding: "utf8" });
    assert.equal(umount.status, 0, `umount failed: ${umount.stderr}`);
  }
}

/** Every `app.log*` record file in a folder (chain, dated logrotate files, asides), with their lines. */
function allLogLines(dir: string): { name: string; lines: string[] }[] {
  return fs.readdirSync(dir)
    .filter((name) => name.startsWith("app.log") && !name.includes(".lock"))
    .map((name) => {
      const text = read(path.join(dir, name));
      return { name, lines: text === "" ? [] : text.replace(/\n$/, "").split("\n") };
    });
}

interface StormFigures {
  written: number;
  found: number;
  lost: number;
  duplicated: number;
  torn: number;
}

/**
 * Counts records by writer: `written` is, per writer, its highest sequence number found + 1 (a writer
 * killed in a write(2) either landed that record or never wrote it), `lost` the numbers below it that
 * are missing, `duplicated` the extra sightings, `torn` the lines that are not whole records.
 */
function stormFigures(files: { name: string; lines: string[] }[], recordBytes = 100): StormFigures {
  const seen = new Set<string>();
  const top = new Map<string, number>();
  let duplicated = 0;
  let torn = 0;
  for (const { lines } of files) {
    for (const line of lines) {
      const match = RECORD.exec(line);
      if (!match || line.length !== recordBytes - 1) {
        torn++;
        continue;
      }
      const key = `${match[1]} ${match[2]}`;
      if (seen.has(key)) duplicated++;
      seen.add(key);
      top.set(match[1], Math.max(top.get(match[1]) ?? -1, Number(match[2])));
    }
  }
  let written = 0;
  for (const max of top.values()) written += max + 1;
  return { written, found: seen.size, lost: written - seen.size, duplicated, torn };
}

describe("openRotatingFile() in the field", () => {
  it("openRotatingFile() never creates a file wider than mode, even for an instant (strace of the opens)", {
    ...SLOW,
    skip: !HAS_STRACE && NO_STRACE,
  }, async (t) => {
    const file = freshLog();
    const dir = path.dirname(file);
    const trace = `${dir}.strace`;
    const result = await runFixture(MODE_FIXTURE, ["--path", file, "--mode", "600"], {
      wrap: [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=open,openat,creat",
        "-o",
        trace,
        "sh",
        "-c",
        'umask 000 && exec "$@"',
        "sh",
      ],
    });
    if (result.code !== 0 && /ptrace|Operation not permitted/.test(result.stderr)) {
      t.skip(`strace cannot trace here: ${result.stderr.trim().slice(0, 200)}`);
      return;
    }
    assert.equal(result.code, 0, result.stderr);
    const creates = read(trace).split("\n").filter((line) => line.includes(dir) && /O_CREAT/.test(line));
    assert.ok(creates.length >= 4, `too few creating opens seen:\n${creates.join("\n")}`);
    for (const line of creates) {
      const mode = /O_CREAT[^,]*, (0[0-7]*)\)/.exec(line);
      assert.ok(mode, `no mode in ${line}`);
      const bits = parseInt(mode[1], 8);
      assert.equal(bits & ~0o600, 0, `created wider than 0600 under umask 000: ${line}`);
    }
    const modes = JSON.parse(result.stdout.trim());
    assert.deepEqual(modes.errors, []);
    console.log(`strace: ${creates.length} creating opens, none wider than 0600`);
  });

  it(
    "openRotatingFile() without onError reports a failure that repeats on every record once per 5 s, counting the rest (tmpfs)",
    { ...SLOW, skip: !IS_ROOT && NEEDS_ROOT },
    async () => {
      const dir = freshDir(root);
      await withTmpfs(dir, "256k", async () => {
        const result = await runFixture(fixture("logging_reporter.ts"), [path.join(dir, "app.log")]);
        assert.equal(result.code, 0, result.stderr);
        assert.equal(result.stdout, "done\n");
        const lines = result.stderr.replace(/\n$/, "").split("\n");
        assert.equal(lines.length, 2, result.stderr);
        const report =
          /^keelson logging: RotatingFileError: Log file ".*app\.log" \(write\): write failed; .*ENOSPC/;
        assert.match(lines[0]!, report);
        assert.doesNotMatch(lines[0]!, /more since the last report/);
        assert.match(lines[1]!, report);
        assert.match(lines[1]!, / \(4 more since the last report\)$/);
      });
    },
  );

  it(
    "openRotatingFile() on a full disk: a torn record is reported lost and never swallows the next (tmpfs)",
    {
      ...SLOW,
      skip: !IS_ROOT && NEEDS_ROOT,
    },
    async () => {
      const dir = freshDir(root);
      const stop = `${dir}.stop`; // outside the full disk
      await withTmpfs(dir, "256k", async () => {
        const file = path.join(dir, "app.log");
        const filler = path.join(dir, "filler");
        fs.writeFileSync(filler, new Uint8Array(96 * 1024));
        const writers = ["w0", "w1", "w2"].map((id) =>
          runFixture(WRITER, [
            "--path",
            file,
            "--id",
            id,
            "--until",
            stop,
            "--sleep-ms",
            "1",
            "--max-bytes",
            "0",
            "--count-errors",
          ])
        );
        const size = () => fs.statSync(file, { throwIfNoEntry: false })?.size ?? 0;
        let last = -1;
        let stableSince = Date.now();
        await waitUntil(
          () => {
            const now = size();
            if (now !== last) {
              last = now;
              stableSince = Date.now();
            }
            return now > 0 && Date.now() - stableSince > 700;
          },
          "the disk to fill",
          60_000,
        );
        const full = size();
        fs.unlinkSync(filler); // space comes back: the next records must start on a fresh line
        await waitUntil(() => size() > full + 50 * 100, "records after space was freed", 60_000);
        fs.writeFileSync(stop, "");
        const results = await Promise.all(writers);
        const lines = read(file).split("\n");
        if (lines.at(-1) === "") lines.pop();
        const found = new Map<string, number>();
        let fragments = 0;
        let empty = 0;
        for (const line of lines) {
          if (line === "") {
            empty++; // two writers both ended a torn line at once: harmless
            continue;
          }
          const match = RECORD.exec(line);
          if (match && line.length === 99) {
            found.set(match[1], (found.get(match[1]) ?? 0) + 1);
            continue;
          }
          // Not a whole record: it must be the torn rest of one, alone on its line, not glued to another.
          assert.ok(
            line.length < 99 && /^w\d*( \d*( \d*( x*)?)?)?$/.test(line),
            `a record glued to a torn one: ${JSON.stringify(line.slice(0, 200))}`,
          );
          fragments++;
        }
        let lostTotal = 0;
        for (const [index, result] of results.entries()) {
          assert.equal(result.code, 0, result.stderr);
          const count = Number(/wrote (\d+)/.exec(result.stdout)?.[1]);
          const lost = Number(/lost (\d+)/.exec(result.stdout)?.[1]);
          assert.match(result.stdout, /codes .*ENOSPC/);
          lostTotal += lost;
          assert.equal((found.get(`w${index}`) ?? 0) + lost, count, `w${index}: found + lost != written`);
        }
        assert.ok(fragments <= lostTotal);
        console.log(
          `full disk: ${lines.length - fragments - empty} records kept, ${lostTotal} reported lost, ` +
            `${fragments} torn fragments each alone on its line, ${empty} empty lines`,
        );
      });
    },
  );

  it("openRotatingFile() under a kill storm during rollovers: no record lost, duplicated or torn", {
    timeout: 240_000,
  }, async () => {
    const file = freshLog();
    const slots = 4;
    const stormMs = 12_000;
    let next = 0;
    let kills = 0;
    interface Victim {
      pid: number;
      /** When it printed "ready" (its file is open and it writes), or null before. */
      readyAt: number | null;
      done: Promise<unknown>;
    }
    const startWriter = (): Victim => {
      const { command, args } = scriptCommand(WRITER, [
        "--path",
        file,
        "--id",
        `w${next++}`,
        "--count",
        "1000000",
        "--max-bytes",
        "3000",
        "--backups",
        "2000",
        "--sleep-ms",
        "1",
        "--ready",
      ]);
      const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"] });
      const victim: Victim = {
        pid: child.pid!,
        readyAt: null,
        done: new Promise((resolve) => child.on("close", resolve)),
      };
      child.stdout.on("data", () => victim.readyAt ??= Date.now());
      return victim;
    };
    const running: Victim[] = [];
    for (let i = 0; i < slots; i++) running.push(startWriter());
    const until = Date.now() + stormMs;
    while (Date.now() < until) {
      await sleep(20 + Math.floor(Math.random() * 180));
      // Kill a writer that has been writing a while (the runtimes take a while to start under load).
      const ready = running.map((victim, slot) => ({ victim, slot }))
        .filter(({ victim }) => victim.readyAt !== null && Date.now() - victim.readyAt > 300);
      if (ready.length === 0) continue;
      const { victim, slot } = ready[Math.floor(Math.random() * ready.length)]!;
      process.kill(victim.pid, "SIGKILL");
      kills++;
      await victim.done;
      running[slot] = startWriter();
    }
    for (const victim of running) {
      process.kill(victim.pid, "SIGKILL");
      kills++;
      await victim.done;
    }
    // A later writer's open finishes whatever the last kills left half-done.
    const last = await runFixture(WRITER, ["--path", file, "--id", "w9999", "--count", "0"]);
    assert.equal(last.code, 0, last.stderr);
    const dir = path.dirname(file);
    const files = allLogLines(dir);
    const figures = stormFigures(files);
    const backups = files.filter(({ name }) => /^app\.log\.\d+$/.test(name)).length;
    console.log(
      `kill storm (${kills} SIGKILLs, ${next} writers, ${backups} backups): written ${figures.written}, ` +
        `found ${figures.found}, lost ${figures.lost}, duplicated ${figures.duplicated}, torn ${figures.torn}`,
    );
    const byIno = new Map<number, string[]>();
    for (const name of fs.readdirSync(dir)) {
      const ino = fs.statSync(path.join(dir, name)).ino;
      byIno.set(ino, [...(byIno.get(ino) ?? []), name]);
    }
    const shared = [...byIno.values()].filter((names) => names.length > 1);
    assert.ok(backups >= 5, `only ${backups} rollovers happened`);
    assert.deepEqual(shared, [], "one file under several names");
    assert.equal(figures.duplicated, 0);
    assert.equal(figures.torn, 0);
    assert.equal(figures.lost, 0);
    const asides = fs.readdirSync(dir).filter((name) => name.includes(".aside."));
    assert.deepEqual(asides, [], "a live file moved aside was never put back into the chain");
    collect(file); // every record once, in order along the chain
  });

  it(
    "openRotatingFile() with real logrotate (nocreate, dated names) racing its rollovers: every record once",
    {
      timeout: 120_000,
      skip: !LOGROTATE && NO_LOGROTATE,
    },
    async () => {
      const dir = freshDir(root);
      const file = path.join(dir, "app.log");
      const stop = `${dir}.stop`;
      const conf = `${dir}.conf`;
      const state = `${dir}.state`;
      fs.writeFileSync(
        conf,
        `${file} {\n  rotate 1000\n  nocreate\n  dateext\n  dateformat -%s\n  missingok\n  nocompress\n}\n`,
      );
      fs.chmodSync(conf, 0o644);
      fs.writeFileSync(file, "");
      const writers = ["w0", "w1", "w2"].map((id) =>
        runFixture(WRITER, [
          "--path",
          file,
          "--id",
          id,
          "--until",
          stop,
          "--sleep-ms",
          "1",
          "--max-bytes",
          "8000",
          "--backups",
          "1000",
        ])
      );
      let rotations = 0;
      for (let i = 0; i < 5; i++) {
        await sleep(1_100); // dated names are per second
        const run = spawnSync(LOGROTATE!, ["-f", "-s", state, conf], { encoding: "utf8" });
        assert.equal(run.status, 0, `logrotate failed: ${run.stderr}`);
        rotations++;
      }
      await sleep(300);
      fs.writeFileSync(stop, "");
      const counts = (await Promise.all(writers)).map(wrote);
      const files = allLogLines(dir);
      const figures = stormFigures(files);
      const dated = files.filter(({ name }) => /^app\.log-\d+$/.test(name)).length;
      console.log(
        `logrotate racing: ${rotations} logrotate runs (${dated} dated files), ` +
          `${files.length - dated} chain files, written ${
            counts.reduce((a, b) => a + b)
          }, found ${figures.found}, ` +
          `duplicated ${figures.duplicated}, torn ${figures.torn}`,
      );
      assert.equal(figures.torn, 0);
      assert.equal(figures.duplicated, 0);
      assert.equal(figures.found, counts.reduce((a, b) => a + b));
      assert.ok(dated >= 3, `logrotate made only ${dated} dated files`);
    },
  );

  it("openRotatingFile() with an external mover renaming the live file every few ms: every record once", {
    timeout: 120_000,
  }, async () => {
    const dir = freshDir(root);
    const file = path.join(dir, "app.log");
    const stop = `${dir}.stop`;
    // A crude rotator racing the rollovers: renames whatever is at the path to a fresh name, fast.
    const mover = spawn("sh", [
      "-c",
      'i=0; while [ ! -e "$1" ]; do i=$((i+1)); mv -f "$2" "$2-moved-$i" 2>/dev/null; sleep 0.003; done',
      "sh",
      stop,
      file,
    ], { stdio: "ignore" });
    const moverDone = new Promise((resolve) => mover.on("close", resolve));
    const writers = ["w0", "w1", "w2"].map((id) =>
      runFixture(WRITER, [
        "--path",
        file,
        "--id",
        id,
        "--count",
        "1500",
        "--sleep-ms",
        "1",
        "--max-bytes",
        "1500",
        "--backups",
        "2000",
      ])
    );
    const counts = (await Promise.all(writers)).map(wrote);
    fs.writeFileSync(stop, "");
    await moverDone;
    const files = allLogLines(dir);
    const figures = stormFigures(files);
    const moved = files.filter(({ name }) => name.includes("-moved-")).length;
    const chained = files.filter(({ name }) => /^app\.log\.\d+$/.test(name)).length;
    console.log(
      `external mover: ${moved} files moved away, ${chained} rollovers, written ${
        counts.reduce((a, b) => a + b)
      }, ` +
        `found ${figures.found}, duplicated ${figures.duplicated}, torn ${figures.torn}`,
    );
    assert.equal(figures.torn, 0);
    assert.equal(figures.duplicated, 0);
    assert.equal(figures.found, counts.reduce((a, b) => a + b));
    assert.deepEqual(fs.readdirSync(dir).filter((name) => name.endsWith(".tmp")), []);
  });

  it("openRotatingFile() refuses a symbolic link at the path and never rotates a link away", () => {
    const dir = freshDir(root);
    const target = path.join(dir, "real.log");
    const linked = path.join(dir, "app.log");
    fs.writeFileSync(target, "old\n");
    fs.symlinkSync(target, linked);
    assert.throws(
      () => openRotatingFile(linked, { onError: () => {} }),
      (e: Error) =>
        e instanceof RotatingFileError && e.operation === "open" && /symbolic link/.test(e.message),
    );
    // A link that replaces the live file later is not followed and not rotated either.
    const file = path.join(dir, "other.log");
    const { log, errors } = open(file, { maxBytes: 0 });
    log.write("a");
    fs.renameSync(file, `${file}.moved`);
    fs.symlinkSync(target, file);
    log.write("b");
    log.rotate();
    log.close();
    assert.equal(fs.lstatSync(linked).isSymbolicLink(), true);
    assert.equal(fs.lstatSync(file).isSymbolicLink(), true, "the link was rotated away");
    assert.equal(read(target), "old\n", "a record went through the link");
    assert.equal(read(`${file}.moved`), "a\nb\n");
    assert.ok(errors.some((e) => e.code === "ELOOP"), errors.join("; "));
    assert.ok(!fs.existsSync(`${file}.1`));
  });

  it("openRotatingFile() refuses a FIFO at the path and never hangs on one", SLOW, async () => {
    const dir = freshDir(root);
    const fifo = path.join(dir, "fifo.log");
    const later = path.join(dir, "app.log");
    assert.equal(spawnSync("mkfifo", [fifo]).status, 0);
    const child = startFixture(FIFO_FIXTURE, ["--fifo", fifo, "--later", later]);
    const guard = setTimeout(() => process.kill(child.pid, "SIGKILL"), 30_000);
    const result = await child.done;
    clearTimeout(guard);
    assert.equal(result.signal, null, "the writer hung on the FIFO and was killed after 30 s");
    assert.equal(result.code, 0, result.stderr);
    const report = JSON.parse(result.stdout.trim());
    assert.equal(report.refused, true);
    assert.match(report.refusal, /regular file/);
    assert.equal(report.made, true);
    assert.equal(report.written, "a\nb\nc\n");
    assert.ok(report.errors.length >= 1, "a FIFO at the path after open was not reported");
    assert.equal(fs.statSync(fifo).isFIFO(), true);
    assert.equal(fs.statSync(later).isFIFO(), true, "the FIFO was rotated away");
  });

  it("openRotatingFile() under a file-size limit reports EFBIG and the process survives (Deno too)", {
    ...SLOW,
    skip: !HAS_PRLIMIT && "prlimit is not installed: skipped",
  }, async () => {
    const file = freshLog();
    // Deno's own caches (its V8 code cache above all) grow past a small limit and would get it killed
    // before our code runs: a fresh cache folder, and no code cache.
    const env = { ...process.env, DENO_DIR: path.join(path.dirname(file), "deno-cache") };
    const args = ["--path", file, "--count", "30000", "--max-bytes", "0", "--count-errors"];
    const { command, args: runtimeArgs } = scriptCommand(WRITER, args);
    const argv = runtime === "deno"
      ? [command, "run", "-A", "--quiet", "--no-code-cache", WRITER, ...args]
      : [
        command,
        ...runtimeArgs,
      ];
    const result = await runToEnd("prlimit", ["--fsize=2000000", ...argv], { env });
    assert.equal(result.signal, null, `killed by ${result.signal}`);
    assert.equal(result.code, 0, `exit ${result.code}: ${result.stderr}`);
    assert.match(result.stdout, /wrote 30000/);
    assert.match(result.stdout, /codes EFBIG/);
    const lost = Number(/lost (\d+)/.exec(result.stdout)?.[1]);
    const kept = read(file).split("\n").filter((line) => RECORD.test(line) && line.length === 99).length;
    assert.ok(lost > 0);
    assert.equal(kept + lost, 30000);
  });

  it("openRotatingFile() rolled over by root keeps the previous file's owner and mode", {
    skip: !IS_ROOT && NEEDS_ROOT,
  }, () => {
    const file = freshLog();
    fs.writeFileSync(file, "");
    fs.chownSync(file, 65534, 65534);
    fs.chmodSync(file, 0o640);
    const { log, errors } = open(file, { maxBytes: 20 });
    log.write("x".repeat(15));
    log.write("y".repeat(15)); // rolls over: the new live file is created by root
    log.close();
    assert.deepEqual(errors, []);
    const live = fs.statSync(file);
    assert.equal(read(file), `${"y".repeat(15)}\n`);
    assert.equal(live.uid, 65534);
    assert.equal(live.gid, 65534);
    assert.equal(live.mode & 0o7777, 0o640);
  });

  it("openRotatingFile() with a frozen lock holder blocks a write at most once, not on every try", {
    ...SLOW,
  }, async () => {
    const file = freshLog();
    const holder = spawn("sleep", ["60"]);
    const exited = new Promise((resolve) => holder.on("close", resolve));
    try {
      let ticks = readProcStat(holder.pid!)?.startTicks;
      for (let i = 0; i < 50 && ticks === undefined; i++) {
        await sleep(10);
        ticks = readProcStat(holder.pid!)?.startTicks;
      }
      process.kill(holder.pid!, "SIGSTOP");
      fs.writeFileSync(
        `${file}.lock`,
        JSON.stringify({ pid: holder.pid, startTicks: ticks ?? null, startTime: null, token: "frozen" }),
      );
      const { log, errors } = open(file, { maxBytes: 100, lockTimeoutMs: 300, lockStaleMs: 60_000 });
      log.write("x".repeat(90));
      const slow: number[] = [];
      const started = performance.now();
      while (performance.now() - started < 3_000) {
        const before = performance.now();
        log.write("y".repeat(40));
        const took = performance.now() - before;
        if (took > 150) slow.push(Math.round(took));
        await sleep(25);
      }
      log.close();
      assert.equal(slow.length, 1, `writes that waited for the frozen holder: ${slow.join(", ")} ms`);
      assert.equal(errors.length, 1, errors.join("; "));
      assert.match(errors[0].message, /lock/);
      assert.equal(fs.existsSync(`${file}.1`), false);
    } finally {
      process.kill(holder.pid!, "SIGKILL");
      await exited;
    }
  });

  it("openRotatingFile() judges lock age on a monotonic clock: a wall-clock step does not steal a young lock", async () => {
    const file = freshLog();
    const holder = spawn("sleep", ["30"]);
    const exited = new Promise((resolve) => holder.on("close", resolve));
    const realNow = Date.now;
    try {
      let ticks = readProcStat(holder.pid!)?.startTicks;
      for (let i = 0; i < 50 && ticks === undefined; i++) {
        await sleep(10);
        ticks = readProcStat(holder.pid!)?.startTicks;
      }
      fs.writeFileSync(
        `${file}.lock`,
        JSON.stringify({ pid: holder.pid, startTicks: ticks ?? null, startTime: null, token: "young" }),
      );
      // The wall clock is stepped an hour ahead (NTP, an operator): the lock looks an hour old.
      Date.now = () => realNow() + 3_600_000;
      const { log, errors } = open(file, { maxBytes: 10, lockTimeoutMs: 200, lockStaleMs: 10_000 });
      log.write("12345678");
      log.write("abcdefgh");
      log.close();
      Date.now = realNow;
      assert.equal(fs.existsSync(`${file}.1`), false, "a young live lock was stolen");
      assert.equal(errors.length, 1);
      assert.match(errors[0].message, /lock/);
    } finally {
      Date.now = realNow;
      process.kill(holder.pid!, "SIGKILL");
      await exited;
    }
  });

  it("openRotatingFile() sweeps the litter of dead lock waiters; a waiter that gives up leaves nothing", async () => {
    const file = freshLog();
    const dead = spawn("true");
    await new Promise((resolve) => dead.on("close", resolve));
    const litter = `${file}.lock.${dead.pid}.1.abc.tmp`;
    fs.writeFileSync(litter, JSON.stringify({ pid: dead.pid, startTicks: 1, token: "dead" }) + "\n");
    const { log, errors } = open(file);
    assert.equal(fs.existsSync(litter), false, "the open did not sweep a dead waiter's file");
    // A waiter that gives up (the lock is held by a live process) leaves nothing behind.
    const holder = spawn("sleep", ["30"]);
    const exited = new Promise((resolve) => holder.on("close", resolve));
    try {
      fs.writeFileSync(`${file}.lock`, JSON.stringify({ pid: holder.pid, startTime: null, token: "held" }));
      log.write("a");
      const { log: other } = open(file, { lockTimeoutMs: 50 });
      other.rotate();
      other.close();
      fs.writeFileSync(litter, JSON.stringify({ pid: dead.pid, startTicks: 1, token: "dead" }) + "\n");
      fs.unlinkSync(`${file}.lock`);
      log.rotate(); // a rollover sweeps too
      log.close();
      const left = fs.readdirSync(path.dirname(file)).filter((name) => name.endsWith(".tmp"));
      assert.deepEqual(left, []);
      assert.equal(read(`${file}.1`), "a\n");
      assert.deepEqual(errors, []);
    } finally {
      process.kill(holder.pid!, "SIGKILL");
      await exited;
    }
  });

  it("openRotatingFile() finishes what a rollover killed at any step left: each record once, in order", () => {
    const file = freshLog();
    // Killed mid-shift (path.2 linked to path.3, not yet unlinked) and killed after moving the live
    // file aside (not yet published as path.1).
    fs.writeFileSync(`${file}.3`, "a\n");
    fs.writeFileSync(`${file}.2`, "b\n");
    fs.linkSync(`${file}.2`, `${file}.1`);
    fs.writeFileSync(`${file}.aside.999999.1.x.tmp`, "c\n");
    fs.writeFileSync(file, "d\n");
    const { log, errors } = open(file, { maxBytes: 0 });
    log.rotate();
    log.write("e");
    log.close();
    const lines = chain(file).flatMap(({ lines }) => lines);
    assert.deepEqual(lines, ["a", "b", "c", "d", "e"]);
    assert.deepEqual(fs.readdirSync(path.dirname(file)).filter((name) => name.endsWith(".tmp")), []);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() never waits for its own lock when onError writes during a rollover", () => {
    const file = freshLog();
    fs.mkdirSync(`${file}.2`); // the oldest backup cannot be removed: the rollover fails
    fs.writeFileSync(path.join(`${file}.2`, "keep"), "");
    const reports: string[] = [];
    const log: RotatingFile = openRotatingFile(file, {
      maxBytes: 20,
      backups: 2,
      lockTimeoutMs: 3_000,
      onError: (error) => {
        reports.push((error as RotatingFileError).message);
        log.write(`onError: ${(error as RotatingFileError).operation}`);
      },
    });
    log.write("x".repeat(15));
    const before = performance.now();
    log.write("y".repeat(15));
    const took = performance.now() - before;
    log.close();
    assert.ok(took < 1_500, `write() waited ${Math.round(took)} ms (for its own lock?)`);
    assert.equal(reports.length, 1, reports.join("; "));
    assert.match(reports[0], /shifting the backups failed/);
    assert.equal(read(file), `${"x".repeat(15)}\nonError: rollover\n${"y".repeat(15)}\n`);
    assert.equal(fs.existsSync(`${file}.lock`), false);
  });

  it("openRotatingFile() writers in two PID namespaces: every record once, no premature rollover", {
    timeout: 180_000,
    skip: !CAN_UNSHARE && "needs root and unshare -p to make PID namespaces: skipped",
  }, async () => {
    const file = freshLog();
    const maxBytes = 8_000;
    const count = 1_500;
    const args = (id: string) => [
      "--path",
      file,
      "--id",
      id,
      "--count",
      String(count),
      "--max-bytes",
      String(maxBytes),
      "--backups",
      "1000",
    ];
    // Each namespaced writer is pid 1 in its own namespace: a pid means nothing across them.
    const unshare = ["unshare", "-p", "-f", "--mount-proc"];
    const results = await Promise.all([
      runFixture(WRITER, args("w0"), { wrap: unshare }),
      runFixture(WRITER, args("w1"), { wrap: unshare }),
      runFixture(WRITER, args("w2")),
      runFixture(WRITER, args("w3")),
    ]);
    for (const result of results) assert.equal(wrote(result), count);
    const seen = collect(file);
    assert.equal(seen.size, 4 * count);
    const files = chain(file);
    const backups = files.slice(0, -1);
    const slack = 4 * 100;
    for (const { name, size } of backups) {
      assert.ok(size >= maxBytes / 2, `premature rollover: ${name} has ${size} bytes`);
      assert.ok(size <= maxBytes + slack, `${name} grew to ${size} bytes`);
    }
    console.log(`2 PID namespaces + host: ${seen.size} records once in ${files.length} files`);
  });
});

// ---------------------------------------------------------------------------------------------------
// createLogger()
// ---------------------------------------------------------------------------------------------------

describe("createLogger()", () => {
  function memorySink(): {
    lines: string[];
    write(line: string): void;
    records(): Record<string, unknown>[];
  } {
    const lines: string[] = [];
    return {
      lines,
      write(line: string) {
        lines.push(line);
      },
      records() {
        return lines.map((line) => JSON.parse(line));
      },
    };
  }

  it("createLogger() writes one JSON line {ts, level, msg, ...fields}", () => {
    const sink = memorySink();
    const log = createLogger({ sink, fields: { app: "gw" } });
    log.info("listening", { port: 8080 });
    assert.equal(sink.lines.length, 1);
    assert.ok(sink.lines[0].endsWith("}\n"));
    assert.equal(sink.lines[0].split("\n").length, 2);
    const [record] = sink.records();
    assert.deepEqual(Object.keys(record), ["ts", "level", "msg", "app", "port"]);
    assert.equal(record.level, "info");
    assert.equal(record.msg, "listening");
    assert.equal(record.app, "gw");
    assert.equal(record.port, 8080);
    assert.equal(new Date(record.ts as string).toISOString(), record.ts);
    assert.ok(Math.abs(Date.parse(record.ts as string) - Date.now()) < 60_000);
  });

  it("createLogger() drops records below its level", () => {
    const sink = memorySink();
    const log = createLogger({ sink, level: "warn" });
    log.debug("d");
    log.info("i");
    log.warn("w");
    log.error("e");
    assert.deepEqual(sink.records().map((r) => r.level), ["warn", "error"]);
    assert.equal(log.isLevelEnabled("info"), false);
    assert.equal(log.isLevelEnabled("error"), true);
    assert.deepEqual(LOG_LEVELS, ["debug", "info", "warn", "error"]);
    const all = memorySink();
    const debug = createLogger({ sink: all, level: "debug" });
    for (const level of LOG_LEVELS) debug[level](level);
    assert.deepEqual(all.records().map((r) => r.msg), ["debug", "info", "warn", "error"]);
    const byDefault = memorySink();
    createLogger({ sink: byDefault }).debug("hidden");
    assert.deepEqual(byDefault.lines, []);
  });

  it("createLogger() child() adds fields; call fields override; reserved keys are kept", () => {
    const sink = memorySink();
    const root = createLogger({ sink, fields: { app: "gw", region: "eu" } });
    const child = root.child({ requestId: "r1", region: "us" });
    child.info("hello", { region: "ap", level: "not a level", extra: true });
    root.info("root");
    const [fromChild, fromRoot] = sink.records();
    assert.equal(sink.lines[0].match(/"region"/g)!.length, 1, "duplicate key in the JSON line");
    assert.equal(fromChild.level, "info");
    assert.equal(fromChild._level, "not a level");
    assert.equal(fromChild.region, "ap");
    assert.equal(fromChild.requestId, "r1");
    assert.equal(fromChild.app, "gw");
    assert.equal(fromChild.extra, true);
    assert.equal(fromRoot.region, "eu");
    assert.equal(fromRoot.requestId, undefined);
  });

  it("createLogger() leaves out undefined, functions and symbols at every depth, the top included", () => {
    const sink = memorySink();
    const log = createLogger({ sink, fields: { base: undefined, keep: 0 } });
    log.info("m", {
      gone: undefined,
      fn() {},
      sym: Symbol("s"),
      nested: { gone: undefined, fn() {}, keep: 1, deeper: { gone: undefined, keep: 2 } },
      list: [1, undefined],
    });
    const line = sink.lines[0];
    assert.doesNotMatch(line, /"gone"|"fn"|"sym"|"base"/, line);
    const record = sink.records()[0];
    assert.equal(record.keep, 0);
    assert.deepEqual(record.nested, { keep: 1, deeper: { keep: 2 } });
    assert.deepEqual(record.list, [1, null]); // JSON arrays keep their positions
  });

  it("createLogger() keeps both fields when one is named like a record key (msg and _msg)", () => {
    const sink = memorySink();
    const log = createLogger({ sink });
    log.info("the message", { msg: "a field named msg", _msg: "a field named _msg" });
    log.info("again", { _msg: "first", msg: "second" });
    const [one, two] = sink.records();
    assert.equal(one.msg, "the message");
    assert.deepEqual(
      [one._msg, one.__msg].sort(),
      ["a field named _msg", "a field named msg"],
    );
    assert.equal(two.msg, "again");
    assert.deepEqual([two._msg, two.__msg].sort(), ["first", "second"]);
  });

  it("createLogger() writes a Map as an object of its entries and a Set as an array, at any depth", () => {
    const sink = memorySink();
    const log = createLogger({ sink });
    log.info("m", {
      map: new Map<unknown, unknown>([["a", 1], [2, { b: new Set(["x"]) }]]),
      set: new Set([1, 2]),
      deep: { inner: new Map([["k", "v"]]) },
    });
    const record = sink.records()[0];
    assert.deepEqual(record.map, { a: 1, "2": { b: ["x"] } });
    assert.deepEqual(record.set, [1, 2]);
    assert.deepEqual(record.deep, { inner: { k: "v" } });
  });

  it("createLogger() rejects fields that are not an object with a TypeError", () => {
    const sink = memorySink();
    const log = createLogger({ sink });
    for (const bad of ["str", 42, true, ["a"]]) {
      assert.throws(
        () => log.info("m", bad as unknown as Record<string, unknown>),
        (e: Error) =>
          e instanceof TypeError &&
          /^Cannot write an info record: 'fields' must be an object, got /.test(e.message),
      );
    }
    log.info("no fields");
    log.info("undefined fields", undefined);
    assert.equal(sink.lines.length, 2);
    assert.doesNotMatch(sink.lines.join(""), /"0":/);
  });

  it("createLogger() serialises errors as {name, message, stack, cause}", () => {
    const sink = memorySink();
    const log = createLogger({ sink });
    const inner = Object.assign(new Error("disk gone"), { code: "EIO" });
    const outer = new TypeError("request failed", { cause: inner });
    log.error("failed", { err: outer });
    log.error(outer as unknown as string);
    const [record, fromMsg] = sink.records();
    const err = record.err as Record<string, unknown>;
    assert.equal(err.name, "TypeError");
    assert.equal(err.message, "request failed");
    assert.match(err.stack as string, /request failed/);
    const cause = err.cause as Record<string, unknown>;
    assert.equal(cause.name, "Error");
    assert.equal(cause.message, "disk gone");
    assert.equal(cause.code, "EIO");
    assert.match(cause.stack as string, /disk gone/);
    assert.equal(fromMsg.msg, "request failed");
    assert.equal((fromMsg.err as Record<string, unknown>).name, "TypeError");
  });

  it("createLogger() never throws on circular references, BigInt or hostile values", () => {
    const sink = memorySink();
    const log = createLogger({ sink });
    const circular: Record<string, unknown> = { name: "loop" };
    circular.self = circular;
    const looping = new Error("cause loop");
    (looping as { cause?: unknown }).cause = looping;
    const hostile = {
      get boom() {
        throw new Error("getter");
      },
      toString() {
        return "hostile";
      },
    };
    log.info("values", { circular, big: 12345678901234567890n, looping, hostile, list: [1n, undefined] });
    log.info("bad toJSON", {
      x: {
        toJSON: () => {
          throw new Error("nope");
        },
      },
    });
    const [record, second] = sink.records();
    assert.deepEqual(record.circular, { name: "loop", self: "[Circular]" });
    assert.equal(record.big, "12345678901234567890");
    assert.equal((record.looping as Record<string, unknown>).cause, "[Circular]");
    assert.match(String((record.hostile as Record<string, unknown>).boom), /Unserializable/);
    assert.deepEqual(record.list, ["1", null]);
    assert.match(String(second.x), /Unserializable/);
  });

  it("createLogger() reports a failing sink to onError instead of throwing", () => {
    const errors: unknown[] = [];
    const log = createLogger({
      sink: {
        write() {
          throw new Error("sink down");
        },
      },
      onError: (error) => errors.push(error),
    });
    log.info("lost");
    assert.equal(errors.length, 1);
    assert.match(String((errors[0] as Error).cause), /sink down/);
    // An onError that logs through the same failing sink (from a child) does not loop.
    let calls = 0;
    const looping = createLogger({
      sink: {
        write() {
          throw new Error("still down");
        },
      },
      onError: () => {
        calls++;
        child.error("reporting the failure");
      },
    });
    const child = looping.child({ part: "x" });
    child.info("lost too");
    assert.equal(calls, 1);
  });

  it("createLogger() writes to a RotatingFile, a valid pino-style destination", () => {
    const file = freshLog();
    const { log: sink, errors } = open(file, { maxBytes: 400, backups: 2 });
    const log = createLogger({ sink, fields: { pid: 1 } });
    for (let i = 0; i < 10; i++) log.info(`record ${i}`);
    sink.close();
    const lines = chain(file).flatMap((f) => f.lines);
    assert.ok(fs.existsSync(`${file}.1`), "no rollover happened");
    assert.ok(lines.length <= 10 && lines.length >= 6);
    const records = lines.map((line) => JSON.parse(line));
    assert.equal(records.at(-1).msg, "record 9");
    assert.ok(records.every((r) => r.level === "info" && r.pid === 1));
    assert.deepEqual(errors, []);
  });

  it("createLogger() rejects bad options with a TypeError naming them", () => {
    const sink = memorySink();
    assert.throws(() => createLogger(undefined as unknown as { sink: typeof sink }), TypeError);
    assert.throws(() => createLogger({ sink: {} as typeof sink }), /sink/);
    assert.throws(
      () => createLogger({ sink, level: "trace" as "info" }),
      (e: Error) => e instanceof TypeError && /level/.test(e.message),
    );
    assert.throws(() => createLogger({ sink, fields: [] as unknown as Record<string, unknown> }), /fields/);
    assert.throws(() => createLogger({ sink }).child(null as unknown as Record<string, unknown>), TypeError);
  });
});

// ---------------------------------------------------------------------------------------------------
// openRotatingFile(): second edition (buffered batches, time rollover, age retention, gzip)
// ---------------------------------------------------------------------------------------------------

const FEATURES = fixture("logging_features.ts");
const DATED = /^(\d{4}-\d{2}-\d{2}(?:T\d{2}(?:-\d{2}-\d{2})?)?)(?:\.(\d+))?(\.gz)?$/;

/** The dated backups of `file` (plain or gunzipped), oldest first, then the live file. */
function datedChain(file: string): { name: string; stamp: string | null; lines: string[] }[] {
  const dir = path.dirname(file);
  const base = path.basename(file);
  const backups: { name: string; stamp: string; seq: number }[] = [];
  for (const name of fs.readdirSync(dir)) {
    if (!name.startsWith(`${base}.`)) continue;
    const match = DATED.exec(name.slice(base.length + 1));
    if (match) backups.push({ name, stamp: match[1]!, seq: Number(match[2] ?? 0) });
  }
  backups.sort((a, b) => a.stamp < b.stamp ? -1 : a.stamp > b.stamp ? 1 : a.seq - b.seq);
  const files = backups.map(({ name, stamp }) => ({ name, stamp: stamp as string | null }));
  if (fs.existsSync(file)) files.push({ name: base, stamp: null });
  return files.map(({ name, stamp }) => {
    const bytes = fs.readFileSync(path.join(dir, name));
    const text = new TextDecoder().decode(name.endsWith(".gz") ? zlib.gunzipSync(bytes) : bytes);
    return { name, stamp, lines: text === "" ? [] : text.replace(/\n$/, "").split("\n") };
  });
}

/** Every record line of `files` parsed, failing on a torn, foreign or repeated record. */
function collectLines(files: { name: string; lines: string[] }[], recordBytes = 100): Map<string, Seen> {
  const seen = new Map<string, Seen>();
  for (const { name, lines } of files) {
    for (const line of lines) {
      const match = RECORD.exec(line);
      assert.ok(match, `torn or foreign line in ${name}: ${JSON.stringify(line.slice(0, 120))}`);
      assert.equal(line.length, recordBytes - 1, `line of the wrong length in ${name}`);
      const key = `${match[1]} ${match[2]}`;
      assert.ok(!seen.has(key), `record ${key} written twice (again in ${name})`);
      seen.set(key, { writer: match[1]!, seq: Number(match[2]), ts: Number(match[3]), file: name });
    }
  }
  return seen;
}

function gzipTest(file: string): { ok: boolean; stderr: string } {
  const result = spawnSync("gzip", ["-t", file], { encoding: "utf8" });
  return { ok: result.status === 0, stderr: result.stderr };
}

const HAS_GZIP = spawnSync("gzip", ["--version"], { encoding: "utf8" }).status === 0;
const NO_GZIP = "gzip is not installed: `gzip -t` cannot judge the .gz files, skipped";

describe("openRotatingFile() buffered", () => {
  it("openRotatingFile() with bufferBytes holds records until flush(), then writes them in order", () => {
    const file = freshLog();
    const { log, errors } = open(file, { bufferBytes: 4096 });
    for (let i = 0; i < 10; i++) log.write(fixtureRecord("w0", i));
    assert.equal(fs.statSync(file).size, 0, "records were written before any flush");
    log.flush();
    assert.equal(fs.statSync(file).size, 1000);
    log.flush(); // nothing buffered: nothing written
    log.close();
    assertComplete(collectLines(datedChain(file)), "w0", 10);
    assert.deepEqual(errors, []);
  });

  it(
    "openRotatingFile() with bufferBytes writes one write(2) per batch of whole records",
    { ...SLOW, skip: !HAS_STRACE && NO_STRACE },
    async () => {
      const file = freshLog();
      const trace = path.join(path.dirname(file), "trace.txt");
      // 95 records of 100 bytes in batches of 1050 bytes: 10 records per batch, 10 batches.
      const result = await runFixture(
        FEATURES,
        ["--path", file, "--id", "w7", "--count", "95", "--buffer-bytes", "1050"],
        { wrap: ["strace", "-f", "-qq", "-e", "trace=write", "-e", "signal=none", "-o", trace] },
      );
      if (result.code !== 0 && /ptrace|Operation not permitted/.test(result.stderr)) {
        console.log(`strace cannot trace here (${result.stderr.trim()}): nothing to count`);
        return;
      }
      assert.equal(result.code, 0, result.stderr);
      const writes = read(trace).split("\n").filter((line) =>
        line.includes("write(") && line.includes('"w7 ')
      );
      assert.equal(writes.length, 10, `expected 10 batches:\n${writes.join("\n")}`);
      for (const line of writes) assert.match(line, /"\.\.\., (1000|500)(\) += \d+$| <unfinished)/);
      assertComplete(collectLines(datedChain(file)), "w7", 95);
    },
  );

  it("openRotatingFile() with bufferBytes writes a record larger than the buffer alone, in order", () => {
    const file = freshLog();
    const { log, errors } = open(file, { bufferBytes: 250 });
    log.write(fixtureRecord("w0", 0));
    log.write(fixtureRecord("w0", 1, 1000));
    log.write(fixtureRecord("w0", 2));
    log.close();
    const lines = read(file).split("\n").filter(Boolean);
    assert.deepEqual(lines.map((line) => line.slice(0, 9)), ["w0 000000", "w0 000001", "w0 000002"]);
    assert.equal(lines[1]!.length, 999);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() with bufferBytes puts no record written after an external rename in the backup", () => {
    const file = freshLog();
    const { log, errors } = open(file, { bufferBytes: 1000 });
    let renamedAfter = -1;
    for (let i = 0; i < 200; i++) {
      log.write(fixtureRecord("w0", i));
      if (i === 123) {
        fs.renameSync(file, `${file}.1`); // logrotate, mid-batch (records 120-123 are still buffered)
        renamedAfter = i;
      }
    }
    log.close();
    const backup = read(`${file}.1`).split("\n").filter(Boolean);
    for (const line of backup) {
      assert.ok(
        Number(line.slice(3, 9)) <= renamedAfter,
        `record written after the rename in the backup: ${line}`,
      );
    }
    const seen = collectLines([{ name: "app.log.1", lines: backup }, {
      name: "app.log",
      lines: read(file).split("\n").filter(Boolean),
    }]);
    assertComplete(seen, "w0", 200);
    assert.deepEqual(errors, []);
  });

  it(
    "openRotatingFile() with bufferBytes in 2 processes: no record written after an external rename in its backup",
    SLOW,
    async () => {
      const file = freshLog();
      const dir = path.dirname(file);
      const stop = path.join(dir, "stop");
      const children = ["w0", "w1"].map((id) =>
        runFixture(FEATURES, [
          "--path",
          file,
          "--id",
          id,
          "--until",
          stop,
          "--sleep-ms",
          "1",
          "--buffer-bytes",
          "4096",
          "--flush-ms",
          "20",
          "--max-bytes",
          "0",
        ])
      );
      await waitUntil(() => fs.existsSync(file) && fs.statSync(file).size > 0, "the first batch");
      const renamedAt: number[] = [];
      for (let k = 1; k <= 5; k++) {
        await sleep(300);
        fs.renameSync(file, `${file}.r${k}`); // logrotate with nocreate: the writers recreate the path
        renamedAt.push(Date.now());
      }
      await sleep(300);
      fs.writeFileSync(stop, "");
      const results = await Promise.all(children);
      const counts = results.map((result) => {
        assert.equal(result.code, 0, result.stderr);
        assert.match(result.stdout, /errors 0/);
        return Number(/wrote (\d+)/.exec(result.stdout)![1]);
      });
      const files = [1, 2, 3, 4, 5].map((k) => ({
        name: `app.log.r${k}`,
        lines: read(`${file}.r${k}`).split("\n").filter(Boolean),
      }));
      files.push({ name: "app.log", lines: read(file).split("\n").filter(Boolean) });
      const seen = collectLines(files);
      assertComplete(seen, "w0", counts[0]!);
      assertComplete(seen, "w1", counts[1]!);
      for (const [k, at] of renamedAt.entries()) {
        for (const line of files[k]!.lines) {
          const ts = Number(RECORD.exec(line)![3]);
          // Stamped before its write() call: a record stamped after the rename returned was written after it.
          assert.ok(ts <= at, `app.log.r${k + 1} holds a record written ${ts - at} ms after its rename`);
        }
      }
    },
  );

  it("openRotatingFile() with bufferBytes counts buffered bytes in size rollovers", () => {
    const file = freshLog();
    const { log, errors } = open(file, { bufferBytes: 4096, maxBytes: 1000, backups: 100 });
    for (let i = 0; i < 95; i++) log.write(fixtureRecord("w0", i));
    log.close();
    const files = chain(file);
    assert.equal(files.length, 10);
    for (const { name, size } of files) assert.ok(size <= 1000, `${name} grew to ${size} bytes`);
    assertComplete(collect(file), "w0", 95);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() with bufferBytes writes a record within flushMs", SLOW, async () => {
    const file = freshLog();
    const { log, errors } = open(file, { bufferBytes: 1 << 20, flushMs: 50 });
    log.write(fixtureRecord("w0", 0));
    assert.equal(fs.statSync(file).size, 0);
    // The guarantee is a bound (50 ms); the wait allows a loaded machine 10 s.
    await waitUntil(() => fs.statSync(file).size === 100, "the record on disk", 10_000);
    log.close();
    assert.deepEqual(errors, []);
  });

  for (const end of ["close", "exit", "return", "shutdown"]) {
    it(
      `openRotatingFile() with bufferBytes leaves every record on disk when the process ends by ${end}`,
      SLOW,
      async () => {
        const file = freshLog();
        const result = await runFixture(FEATURES, [
          "--path",
          file,
          "--count",
          "5000",
          "--buffer-bytes",
          "65536",
          "--flush-ms",
          "60000",
          "--end",
          end,
        ]);
        assert.equal(result.code, 0, result.stderr);
        assert.match(result.stdout, /errors 0/);
        assertComplete(collectLines(datedChain(file)), "w0", 5000);
      },
    );
  }

  it("openRotatingFile() rejects bad second-edition options with a TypeError or RangeError", () => {
    const file = freshLog();
    const bad: [RotatingFileOptions, ErrorConstructor, RegExp][] = [
      [{ interval: "monthly" as "daily" }, RangeError, /'interval'/],
      [
        { interval: 999 },
        RangeError,
        /^Cannot open rotating file: 'interval' must be at least 1000 milliseconds, got 999$/,
      ],
      [{ interval: 1.5 }, TypeError, /'interval'/],
      [{ interval: true as unknown as number }, TypeError, /'interval'/],
      [
        { utc: "yes" as unknown as boolean },
        TypeError,
        /^Cannot open rotating file: 'utc' must be a boolean, got "yes"$/,
      ],
      [{ maxAgeMs: 0 }, RangeError, /'maxAgeMs'/],
      [{ maxAgeMs: "1d" as unknown as number }, TypeError, /'maxAgeMs'/],
      [
        { compress: "zstd" as "gzip" },
        RangeError,
        /^Cannot open rotating file: 'compress' must be "gzip", got "zstd"$/,
      ],
      [{ compress: true as unknown as "gzip" }, TypeError, /'compress'/],
      [{ bufferBytes: -1 }, RangeError, /'bufferBytes'/],
      [{ bufferBytes: 2 ** 31 }, RangeError, /'bufferBytes'/],
      [{ bufferBytes: 10.5 }, TypeError, /'bufferBytes'/],
      [{ flushMs: -5 }, RangeError, /'flushMs'/],
      [{ flushMs: 2 ** 31 }, RangeError, /'flushMs'/],
    ];
    for (const [options, type, message] of bad) {
      assert.throws(() => openRotatingFile(file, options), (error: Error) => {
        assert.ok(error instanceof type, `${JSON.stringify(options)} threw ${error.name}`);
        assert.match(error.message, message);
        return true;
      });
    }
  });
});

describe("openRotatingFile() time rollover", () => {
  for (const maxBytes of [0, 30_000]) {
    it(
      `openRotatingFile() with a 1 s interval across 3 processes: every record once, one rollover per boundary${
        maxBytes > 0 ? ", size rollovers in order within each period" : ""
      }`,
      SLOW,
      async () => {
        const file = freshLog();
        const stop = path.join(path.dirname(file), "stop");
        const children = ["w0", "w1", "w2"].map((id) =>
          runFixture(FEATURES, [
            "--path",
            file,
            "--id",
            id,
            "--until",
            stop,
            "--sleep-ms",
            "2",
            "--interval",
            "1000",
            "--utc",
            "--backups",
            "1000",
            "--max-bytes",
            String(maxBytes),
          ])
        );
        // About 5 s of writing, counted from the first record (starting a runtime can take seconds here).
        await waitUntil(() => fs.existsSync(file) && fs.statSync(file).size > 0, "the first record");
        await sleep(5_000);
        fs.writeFileSync(stop, "");
        const results = await Promise.all(children);
        const counts = results.map((result) => {
          assert.equal(result.code, 0, result.stderr);
          assert.match(result.stdout, /errors 0/);
          return Number(/wrote (\d+)/.exec(result.stdout)![1]);
        });
        const files = datedChain(file);
        const seen = collectLines(files);
        ["w0", "w1", "w2"].forEach((id, i) => assertComplete(seen, id, counts[i]!));
        assert.equal(seen.size, counts[0]! + counts[1]! + counts[2]!);
        // Each writer's records run in order through the chain: period by period, size backups in order.
        const last = new Map<string, number>();
        for (const { name, lines } of files) {
          for (const line of lines) {
            const [, id, seq] = RECORD.exec(line)!;
            assert.ok(Number(seq) > (last.get(id!) ?? -1), `${id} ${seq} out of order in ${name}`);
            last.set(id!, Number(seq));
          }
        }
        const backups = files.filter((f) => f.stamp !== null);
        for (const { name, stamp, lines } of backups) {
          if (maxBytes === 0) assert.doesNotMatch(name, /\.\d+$/, `two rollovers for one period: ${name}`);
          const start = Date.parse(`${stamp!.replace(/T(\d\d)-(\d\d)-(\d\d)$/, "T$1:$2:$3")}Z`);
          for (const line of lines) {
            const ts = Number(RECORD.exec(line)![3]);
            // Stamped before its write(2): never after the period; before its start only by a stall.
            assert.ok(ts < start + 1000, `${name} holds a record stamped ${ts - start} ms into the period`);
            assert.ok(
              ts >= start - 1000,
              `${name} holds a record stamped ${start - ts} ms before the period`,
            );
          }
        }
        // Rollovers = boundaries crossed while writing: one period name per period before the live one.
        const periods = new Set([...seen.values()].map((record) => Math.floor(record.ts / 1000)));
        const stamps = new Set(backups.map((f) => f.stamp));
        assert.ok(stamps.size >= 3, `only ${stamps.size} periods rolled over in 5 s`);
        assert.ok(
          stamps.size <= periods.size, // a record stamped just before a boundary may be written after it
          `${stamps.size} periods rolled over for ${periods.size} seen: ${
            backups.map((f) => f.name).join(" ")
          }`,
        );
        if (maxBytes > 0) assert.ok(backups.length > stamps.size, "no size rollover inside a period");
        const leftovers = fs.readdirSync(path.dirname(file)).filter((name) => /lock|tmp/.test(name));
        assert.deepEqual(leftovers, []);
        console.log(
          `3 writers, 1 s interval, maxBytes ${maxBytes}: ${seen.size} records, ${backups.length} backups ` +
            `for ${stamps.size} periods`,
        );
      },
    );
  }

  it(
    "openRotatingFile() names the backup after its period in local time, or UTC with utc",
    SLOW,
    async () => {
      const env = { ...process.env, TZ: "Asia/Kolkata" }; // UTC+05:30
      for (
        const [interval, utc, expected] of [
          ["hourly", true, "app.log.2026-01-02T03"],
          ["hourly", false, "app.log.2026-01-02T08"],
          ["daily", true, "app.log.2026-01-01"],
          ["daily", false, "app.log.2026-01-02"],
          ["weekly", true, "app.log.2025-12-29"],
          ["5000", true, "app.log.2026-01-01T21-04-05"],
        ] as const
      ) {
        const file = freshLog();
        // Records last written at 2026-01-01T21:04:07Z = 2026-01-02T02:34:07+05:30 (hourly: 03:04Z).
        fs.writeFileSync(file, `${fixtureRecord("w0", 0)}\n`);
        const when = interval === "hourly" ? Date.UTC(2026, 0, 2, 3, 4, 5) : Date.UTC(2026, 0, 1, 21, 4, 7);
        fs.utimesSync(file, when / 1000, when / 1000);
        const args = ["--path", file, "--id", "w1", "--count", "1", "--interval", interval];
        const result = await startFixture(FEATURES, utc ? [...args, "--utc"] : args, { env }).done;
        assert.equal(result.code, 0, result.stderr);
        const names = fs.readdirSync(path.dirname(file)).filter((name) => name !== "app.log.period").sort();
        assert.deepEqual(names, ["app.log", expected], `${interval} utc=${utc}`);
        assert.match(read(path.join(path.dirname(file), expected)), /^w0 000000/);
        assert.match(read(file), /^w1 000000/);
      }
    },
  );

  it("openRotatingFile() combines time and size rollovers, size backups of one period in order", () => {
    const file = freshLog();
    fs.writeFileSync(file, `${fixtureRecord("old", 0)}\n`.replace(/^old/, "w9"));
    const old = Date.UTC(2026, 0, 1, 12);
    fs.utimesSync(file, old / 1000, old / 1000);
    const { log, errors } = open(file, { interval: "daily", utc: true, maxBytes: 1000, backups: 100 });
    for (let i = 0; i < 35; i++) log.write(fixtureRecord("w0", i));
    log.close();
    const files = datedChain(file);
    const today = new Date().toISOString().slice(0, 10);
    assert.deepEqual(files.map((f) => f.name), [
      "app.log.2026-01-01",
      `app.log.${today}`,
      `app.log.${today}.1`,
      `app.log.${today}.2`,
      "app.log",
    ]);
    assert.deepEqual(files[0]!.lines.map((line) => line.slice(0, 2)), ["w9"]);
    const seen = collectLines(files.slice(1));
    assertComplete(seen, "w0", 35);
    let last = -1;
    for (const { lines } of files.slice(1)) {
      for (const line of lines) {
        assert.ok(Number(line.slice(3, 9)) > last, "size backups out of order");
        last = Number(line.slice(3, 9));
      }
    }
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() reopens a file a sibling already rolled for this period, never rolls it again", () => {
    const file = freshLog();
    fs.writeFileSync(file, `${fixtureRecord("w9", 0)}\n`);
    const old = Date.UTC(2026, 0, 1, 12);
    fs.utimesSync(file, old / 1000, old / 1000);
    const a = open(file, { interval: "daily", utc: true });
    const b = open(file, { interval: "daily", utc: true });
    a.log.write(fixtureRecord("w0", 0)); // rolls the old file over
    b.log.write(fixtureRecord("w1", 0)); // its file was rolled: reopens the live one
    a.log.write(fixtureRecord("w0", 1));
    a.log.close();
    b.log.close();
    const names = datedChain(file).map((f) => f.name);
    assert.deepEqual(names, ["app.log.2026-01-01", "app.log"]);
    assert.equal(read(file).split("\n").filter(Boolean).length, 3);
    assert.deepEqual([...a.errors, ...b.errors], []);
  });
});

describe("openRotatingFile() retention", () => {
  it("openRotatingFile() with maxAgeMs removes dated backups older than that at rollover; backups bounds the count", () => {
    const file = freshLog();
    const dir = path.dirname(file);
    const now = Date.now();
    const ages: [string, number][] = [
      ["app.log.2026-01-01", 10 * 86_400_000],
      ["app.log.2026-01-02", 9 * 86_400_000],
      ["app.log.2026-01-03.gz", 8 * 86_400_000],
      ["app.log.2026-01-04", 1_000],
      ["app.log.2026-01-05", 1_000],
    ];
    for (const [name, age] of ages) {
      fs.writeFileSync(path.join(dir, name), "x\n");
      fs.utimesSync(path.join(dir, name), (now - age) / 1000, (now - age) / 1000);
    }
    const { log, errors } = open(file, { interval: "daily", utc: true, maxAgeMs: 86_400_000, backups: 2 });
    log.write(fixtureRecord("w0", 0));
    log.rotate();
    log.close();
    const today = new Date().toISOString().slice(0, 10);
    const names = fs.readdirSync(dir).filter((name) => name !== "app.log.period").sort();
    assert.deepEqual(names, ["app.log", "app.log.2026-01-05", `app.log.${today}`]);
    assert.deepEqual(errors, []);
  });

  it("openRotatingFile() with maxAgeMs removes old numbered backups at rollover", () => {
    const file = freshLog();
    const old = (Date.now() - 3_600_000) / 1000;
    for (const name of ["app.log.1", "app.log.2", "app.log.3.gz"]) {
      fs.writeFileSync(`${file}${name.slice(7)}`, "x\n");
    }
    fs.utimesSync(`${file}.2`, old, old);
    fs.utimesSync(`${file}.3.gz`, old, old);
    const { log, errors } = open(file, { maxAgeMs: 60_000, backups: 5 });
    log.write(fixtureRecord("w0", 0));
    log.rotate();
    log.close();
    const names = fs.readdirSync(path.dirname(file)).sort();
    assert.deepEqual(names, ["app.log", "app.log.1", "app.log.2"]); // the old .2 had become .3
    assert.deepEqual(errors, []);
  });
});

describe("openRotatingFile() compression", () => {
  for (const interval of [undefined, "daily"] as const) {
    it(
      `openRotatingFile() with compress gzips every backup completely (${interval ?? "numbered"} backups)`,
      { ...SLOW, skip: !HAS_GZIP && NO_GZIP },
      async () => {
        const file = freshLog();
        const args = [
          "--path",
          file,
          "--count",
          "3000",
          "--max-bytes",
          "50000",
          "--backups",
          "100",
          "--compress",
        ];
        const result = await runFixture(
          FEATURES,
          interval ? [...args, "--interval", interval, "--utc"] : args,
        );
        assert.equal(result.code, 0, result.stderr);
        assert.match(result.stdout, /errors 0/);
        const dir = path.dirname(file);
        const names = fs.readdirSync(dir);
        const gz = names.filter((name) => name.endsWith(".gz"));
        assert.ok(gz.length >= 5, `only ${gz.length} .gz files: ${names.join(" ")}`);
        for (const name of gz) assert.ok(gzipTest(path.join(dir, name)).ok, `${name} fails gzip -t`);
        assert.deepEqual(names.filter((name) => /tmp|claim|lock/.test(name)), []);
        let files;
        if (interval) files = datedChain(file);
        else {
          files = names.filter((name) => name !== "app.log").sort((a, b) =>
            Number(b.split(".")[2]) - Number(a.split(".")[2])
          ).map((name) => ({
            name,
            lines: new TextDecoder().decode(zlib.gunzipSync(fs.readFileSync(path.join(dir, name)))).trimEnd()
              .split("\n"),
          }));
          files.push({ name: "app.log", lines: read(file).trimEnd().split("\n") });
        }
        const seen = collectLines(files);
        assertComplete(seen, "w0", 3000);
        let last = -1;
        for (const { lines } of files) {
          for (const line of lines) {
            assert.ok(Number(line.slice(3, 9)) > last, "backups out of order");
            last = Number(line.slice(3, 9));
          }
        }
      },
    );
  }

  it(
    "openRotatingFile() with compress compresses after each rollover of a long-running handle",
    { ...SLOW, skip: !HAS_GZIP && NO_GZIP },
    async () => {
      const file = freshLog();
      const { log, errors } = open(file, { compress: "gzip", backups: 10 });
      await sleep(50); // the pass at open has run: from now on only rollovers start one
      for (let round = 1; round <= 3; round++) {
        log.write(fixtureRecord("w0", round));
        log.rotate();
        await waitUntil(
          () => fs.existsSync(`${file}.${round}.gz`) && !fs.existsSync(`${file}.1`),
          `${round} .gz backups`,
        );
      }
      log.close();
      for (let i = 1; i <= 3; i++) assert.ok(gzipTest(`${file}.${i}.gz`).ok);
      const oldest = zlib.gunzipSync(fs.readFileSync(`${file}.3.gz`)).toString();
      assert.match(oldest, /^w0 000001 /);
      assert.deepEqual(errors, []);
    },
  );

  it(
    "openRotatingFile() killed mid-compression never leaves a corrupt .gz; a later rollover finishes it",
    { timeout: 180_000, skip: !HAS_GZIP && NO_GZIP },
    async () => {
      const file = freshLog();
      const dir = path.dirname(file);
      // Big, poorly compressible backups (12 MB each) so that the kill lands while gzip runs.
      const big = () => {
        const lines: string[] = [];
        for (let i = 0; i < 120_000; i++) lines.push(Math.random().toString(36).repeat(9).slice(0, 99));
        return lines.join("\n") + "\n";
      };
      const originals: string[] = [];
      let cutShort = 0;
      for (const delay of [0, 30, 100]) {
        const content = big();
        originals.push(content);
        fs.writeFileSync(file, content);
        const before = fs.readdirSync(dir);
        const child = startFixture(FEATURES, [
          "--path",
          file,
          "--count",
          "0",
          "--interval",
          "daily",
          "--utc",
          "--backups",
          "100",
          "--compress",
          "--rotate",
          "--end",
          "hang",
        ]);
        await waitUntil(
          () => {
            // A new temporary, or (a compression faster than the polling) one more finished .gz.
            const names = fs.readdirSync(dir).filter((n) => !before.includes(n));
            return names.some((n) => n.endsWith(".gz.tmp") || n.endsWith(".gz"));
          },
          "a compression under way",
          60_000,
        );
        await sleep(delay);
        process.kill(child.pid, "SIGKILL");
        await child.done;
        if (fs.readdirSync(dir).some((n) => n.endsWith(".gz.tmp") && !before.includes(n))) cutShort++;
        for (const name of fs.readdirSync(dir).filter((n) => n.endsWith(".gz"))) {
          const verdict = gzipTest(path.join(dir, name));
          assert.ok(verdict.ok, `${name} is corrupt after SIGKILL at ${delay} ms: ${verdict.stderr}`);
        }
      }
      assert.ok(cutShort > 0, "no kill landed inside a compression");
      // A later process finishes every backup left plain, and clears the killed ones' temporaries.
      const result = await runFixture(FEATURES, [
        "--path",
        file,
        "--count",
        "0",
        "--interval",
        "daily",
        "--utc",
        "--compress",
        "--backups",
        "100",
      ]);
      assert.equal(result.code, 0, result.stderr);
      assert.match(result.stdout, /errors 0/);
      const names = fs.readdirSync(dir);
      // A rollover lock left by a holder killed while publishing is taken over by the next rollover
      // (tested with the lock); compression leftovers must be gone already.
      assert.deepEqual(
        names.filter((name) => /tmp|claim/.test(name) && !name.startsWith("app.log.lock")),
        [],
      );
      const backups = names.filter((name) => name !== "app.log" && DATED.test(name.slice("app.log.".length)));
      assert.equal(backups.length, originals.length, names.join(" "));
      const contents = backups.map((name) => {
        assert.ok(name.endsWith(".gz"), `${name} left plain`);
        assert.ok(gzipTest(path.join(dir, name)).ok, `${name} fails gzip -t`);
        return new TextDecoder().decode(zlib.gunzipSync(fs.readFileSync(path.join(dir, name))));
      });
      assert.deepEqual(contents.sort(), originals.sort());
    },
  );

  it(
    "openRotatingFile() with compress: two processes never compress the same backup",
    { timeout: 120_000, skip: (!HAS_GZIP && NO_GZIP) || (!HAS_STRACE && NO_STRACE) },
    async () => {
      const file = freshLog();
      const dir = path.dirname(file);
      const stamps = ["2026-01-01", "2026-01-02", "2026-01-03"];
      for (const [i, stamp] of stamps.entries()) {
        const lines = Array.from({ length: 20_000 }, (_, seq) => fixtureRecord(`w${i}`, seq));
        fs.writeFileSync(`${file}.${stamp}`, lines.join("\n") + "\n");
      }
      const trace = path.join(dir, "..", `trace-${path.basename(dir)}`);
      const start = () =>
        runFixture(FEATURES, ["--path", file, "--count", "0", "--interval", "daily", "--utc", "--compress"], {
          wrap: [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=openat,open",
            "-e",
            "signal=none",
            "-o",
            `${trace}-${Math.random()}`,
          ],
        });
      const results = await Promise.all([start(), start()]);
      if (results.some((r) => r.code !== 0 && /ptrace|Operation not permitted/.test(r.stderr))) {
        console.log("strace cannot trace here: nothing to count");
        return;
      }
      for (const result of results) {
        assert.equal(result.code, 0, result.stderr);
        assert.match(result.stdout, /errors 0/);
      }
      const traces = fs.readdirSync(path.dirname(dir)).filter((name) =>
        name.startsWith(`trace-${path.basename(dir)}`)
      );
      const creates = traces.flatMap((name) => read(path.join(path.dirname(dir), name)).split("\n"))
        .filter((line) => /\.gz\.tmp", O_WRONLY\|O_CREAT\|O_EXCL/.test(line));
      assert.equal(creates.length, stamps.length, `compressions started:\n${creates.join("\n")}`);
      for (const stamp of stamps) {
        assert.ok(!fs.existsSync(`${file}.${stamp}`), `${stamp} left plain`);
        assert.ok(gzipTest(`${file}.${stamp}.gz`).ok);
      }
      assert.deepEqual(fs.readdirSync(dir).filter((name) => /tmp|claim|lock/.test(name)), []);
      const seen = collectLines(datedChain(file));
      stamps.forEach((_, i) => assertComplete(seen, `w${i}`, 20_000));
    },
  );
});

describe("openRotatingFile() buffered text", () => {
  it("openRotatingFile() with bufferBytes keeps multi-byte and byte records whole, in order", () => {
    const file = freshLog();
    const { log, errors } = open(file, { bufferBytes: 500, maxBytes: 2000, backups: 50 });
    const expected: string[] = [];
    for (let i = 0; i < 120; i++) {
      const record = i % 3 === 0
        ? `${i} ${"é".repeat(60)}`
        : i % 3 === 1
        ? `${i} ${"日本".repeat(20)}`
        : `${i} ascii`;
      expected.push(record);
      if (i % 5 === 0) log.write(new TextEncoder().encode(record));
      else log.write(record);
    }
    log.close();
    const files = chain(file);
    for (const { name, size } of files) assert.ok(size <= 2000, `${name} grew to ${size} bytes`);
    assert.deepEqual(files.flatMap((f) => f.lines), expected);
    assert.deepEqual(errors, []);
  });
});

describe("openRotatingFile() buffered bytes", () => {
  it("openRotatingFile() with bufferBytes keeps a byte record as it was when written", () => {
    const file = freshLog();
    const { log, errors } = open(file, { bufferBytes: 4096 });
    const reused = new TextEncoder().encode("first\n");
    log.write(reused);
    reused.set(new TextEncoder().encode("XXXXX"));
    log.write(reused);
    log.close();
    assert.equal(read(file), "first\nXXXXX\n");
    assert.deepEqual(errors, []);
  });
});

describe("openRotatingFile() buffered time rollover", () => {
  it("openRotatingFile() with bufferBytes and interval writes a new period's batch after rolling the old file", () => {
    const file = freshLog();
    fs.writeFileSync(file, `${fixtureRecord("w9", 0)}\n`);
    const old = Date.UTC(2026, 0, 1, 12);
    fs.utimesSync(file, old / 1000, old / 1000);
    const { log, errors } = open(file, { interval: "daily", utc: true, bufferBytes: 4096 });
    for (let i = 0; i < 5; i++) log.write(fixtureRecord("w0", i));
    log.flush();
    log.close();
    const files = datedChain(file);
    assert.deepEqual(files.map((f) => f.name), ["app.log.2026-01-01", "app.log"]);
    assert.deepEqual(files[0]!.lines.map((line) => line.slice(0, 2)), ["w9"]);
    assertComplete(collectLines(files.slice(1)), "w0", 5);
    assert.deepEqual(errors, []);
  });
});
