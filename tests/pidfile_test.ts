import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { spawn, spawnSync } from "node:child_process";
import {
  acquirePidFile,
  markPlannedStop,
  PidFileError,
  PidFileLockedError,
  readPidFile,
} from "../pidfile.ts";
import {
  getPid,
  getUid,
  hostname,
  isAlive,
  processStartTime,
  readProcStat,
  scriptCommand,
} from "../platform.ts";
import {
  AS_NOBODY,
  fixture,
  freshDir,
  killChild,
  ROOT,
  type Running,
  sleep,
  start,
  startFixture,
  tempRoot,
} from "./_helpers.ts";

const SERVICE = fixture("pidfile_service.ts");
const PROBE = fixture("pidfile_probe.ts");
const MUTEX = fixture("pidfile_mutex.ts");
const SLOW = { timeout: 120_000 };
const IS_ROOT = getUid() === 0;

const root = tempRoot();
fs.chmodSync(root, 0o711); // the unprivileged probe must reach its own folders below

function freshPidPath(): string {
  return path.join(freshDir(root), "service.pid");
}

function writeRecord(pidPath: string, fields: Record<string, unknown>): string {
  const text = JSON.stringify({ argv: ["test"], createdAt: new Date().toISOString(), ...fields }) + "\n";
  fs.writeFileSync(pidPath, text);
  return text;
}

function readJson(file: string): Record<string, unknown> {
  return JSON.parse(fs.readFileSync(file, "utf8"));
}

// ---------------------------------------------------------------------------------------------------
// Running processes
// ---------------------------------------------------------------------------------------------------

function startService(pidPath: string, options: Record<string, unknown> = {}): Running {
  return startFixture(SERVICE, [pidPath, JSON.stringify(options)]);
}

/** Runs the probe fixture, unprivileged (as nobody) when the tests run as root, so permissions bite. */
async function probe(
  op: "read" | "acquire",
  pidPath: string,
  home: string,
): Promise<Record<string, unknown>> {
  const env = { ...process.env, HOME: home, DENO_DIR: path.join(home, ".deno") };
  const run = startFixture(PROBE, [op, pidPath], { env, wrap: IS_ROOT ? AS_NOBODY : [] });
  const line = await run.waitFor("stdout", /^\{/);
  await run.exited;
  return JSON.parse(line);
}

let unprivilegedCheck: Promise<string | null> | undefined;

/**
 * Why the probe cannot run as nobody here, or `null`: a checkout (and the runtime inside it) in a
 * folder only root may enter cannot be reached by an unprivileged user, whatever the test does.
 */
function unprivilegedBlocker(): Promise<string | null> {
  if (!IS_ROOT) return Promise.resolve(null);
  const { command } = scriptCommand(PROBE);
  unprivilegedCheck ??= new Promise((resolve) => {
    const [setpriv, ...asNobody] = AS_NOBODY;
    const check = spawn(setpriv!, [
      ...asNobody,
      "sh",
      "-c",
      'test -x "$0" && test -r "$1"',
      command,
      PROBE,
    ], { stdio: "ignore" });
    check.on("error", () => resolve("setpriv is not available to drop root privileges"));
    check.on(
      "close",
      (code) =>
        resolve(
          code === 0 ? null : `an unprivileged user cannot run ${command} on ${PROBE} from this checkout`,
        ),
    );
  });
  return unprivilegedCheck;
}

/** A live `sleep`: a real process whose pid and start time the records can name. */
function startSleep(): Running {
  return start("sleep", ["120"]);
}

async function stop(child: Running): Promise<{ code: number | null; signal: string | null }> {
  killChild(child.child);
  return await child.exited;
}

/** The pid of a process that ran and was reaped. */
async function deadPid(): Promise<number> {
  const child = start("true", []);
  await child.exited;
  return child.pid;
}

function liveRecordFields(pid: number): Record<string, unknown> {
  return { pid, startTime: processStartTime(pid), hostname: hostname() };
}

// ---------------------------------------------------------------------------------------------------
// readPidFile
// ---------------------------------------------------------------------------------------------------

describe("readPidFile()", () => {
  it("readPidFile() reports a missing file as absent", () => {
    assert.deepEqual(readPidFile(freshPidPath()), { state: "absent" });
  });

  it("readPidFile() reports a live process with the recorded start time as running", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      writeRecord(pidPath, liveRecordFields(sleeper.pid));
      const status = readPidFile(pidPath);
      assert.equal(status.state, "running");
      assert.equal(status.state === "running" && status.record.pid, sleeper.pid);
      assert.equal(status.state === "running" && status.foreignHost, false);
    } finally {
      await stop(sleeper);
    }
  });

  it("readPidFile() reads a plain decimal file as a record with startTime null", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      fs.writeFileSync(pidPath, `${sleeper.pid}\n`);
      const status = readPidFile(pidPath);
      assert.equal(status.state, "running");
      if (status.state !== "running") return;
      assert.equal(status.record.pid, sleeper.pid);
      assert.equal(status.record.startTime, null);
      assert.deepEqual(status.record.argv, []);
      assert.equal(status.record.hostname, null);
      assert.ok(!Number.isNaN(Date.parse(status.record.createdAt)));
      fs.writeFileSync(pidPath, `${await deadPid()}`);
      assert.equal(readPidFile(pidPath).state, "stale");
    } finally {
      await stop(sleeper);
    }
  });

  it("readPidFile() reports a plain decimal file older than the live process behind its pid as stale", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      fs.writeFileSync(pidPath, `${sleeper.pid}\n`);
      const hourAgo = new Date(Date.now() - 3_600_000);
      fs.utimesSync(pidPath, hourAgo, hourAgo); // written before that process started: its pid was reused
      const status = readPidFile(pidPath);
      assert.equal(status.state, "stale");
      assert.match(status.state === "stale" ? status.reason : "", /reused.*after the record was written/);
    } finally {
      await stop(sleeper);
    }
  });

  it("readPidFile() reports a dead pid as stale", async () => {
    const pidPath = freshPidPath();
    const pid = await deadPid();
    writeRecord(pidPath, { pid, startTime: Date.now() - 1000, hostname: hostname() });
    const status = readPidFile(pidPath);
    assert.equal(status.state, "stale");
    assert.match(status.state === "stale" ? status.reason : "", new RegExp(`process ${pid} is gone`));
  });

  it("readPidFile() reports a reused pid (live process, other start time) as stale", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      const actual = processStartTime(sleeper.pid);
      assert.notEqual(actual, null);
      writeRecord(pidPath, { pid: sleeper.pid, startTime: actual! - 60_000, hostname: hostname() });
      const byTime = readPidFile(pidPath);
      assert.equal(byTime.state, "stale");
      assert.match(byTime.state === "stale" ? byTime.reason : "", /reused/);
      const ticks = readProcStat(sleeper.pid)!.startTicks;
      writeRecord(pidPath, {
        pid: sleeper.pid,
        startTime: actual,
        startTicks: ticks + 7,
        hostname: hostname(),
      });
      const byTicks = readPidFile(pidPath);
      assert.equal(byTicks.state, "stale");
      assert.match(byTicks.state === "stale" ? byTicks.reason : "", /reused/);
      writeRecord(pidPath, { pid: sleeper.pid, startTime: actual, startTicks: ticks, hostname: hostname() });
      assert.equal(readPidFile(pidPath).state, "running");
    } finally {
      await stop(sleeper);
    }
  });

  it("readPidFile() reports a zombie (exited, not reaped) as stale", async () => {
    const script =
      "import os,time\npid=os.fork()\nif pid==0:\n    os._exit(0)\nprint(pid,flush=True)\ntime.sleep(120)\n";
    const parent = start("python3", ["-c", script]);
    try {
      const zombie = Number(await parent.waitFor("stdout", /^\d+$/));
      for (let i = 0; i < 200 && readProcStat(zombie)?.state !== "Z"; i += 1) {
        await sleep(10);
      }
      assert.equal(readProcStat(zombie)?.state, "Z");
      assert.equal(isAlive(zombie), true, "a zombie still answers kill(pid, 0)");
      const pidPath = freshPidPath();
      writeRecord(pidPath, liveRecordFields(zombie));
      const status = readPidFile(pidPath);
      assert.equal(status.state, "stale");
      assert.match(status.state === "stale" ? status.reason : "", /zombie/);
    } finally {
      await stop(parent);
    }
  });

  it("readPidFile() reports our own pid from an earlier incarnation as stale", () => {
    const pidPath = freshPidPath();
    const self = getPid();
    writeRecord(pidPath, {
      pid: self,
      startTime: processStartTime(self),
      startTicks: readProcStat(self)?.startTicks ?? null,
      hostname: hostname(),
    });
    const status = readPidFile(pidPath);
    assert.equal(status.state, "stale");
    assert.match(status.state === "stale" ? status.reason : "", /earlier incarnation/);
  });

  it("readPidFile() reports a record of an earlier boot as stale", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      writeRecord(pidPath, {
        ...liveRecordFields(sleeper.pid),
        bootId: "00000000-0000-0000-0000-000000000000",
      });
      const status = readPidFile(pidPath);
      assert.equal(status.state, "stale");
      assert.match(status.state === "stale" ? status.reason : "", /earlier boot/);
    } finally {
      await stop(sleeper);
    }
  });

  it("readPidFile() reports a record of another host as running with foreignHost, whatever its pid", async () => {
    const pidPath = freshPidPath();
    const pid = await deadPid();
    writeRecord(pidPath, { pid, startTime: 1, hostname: `not-${hostname()}` });
    const status = readPidFile(pidPath);
    assert.equal(status.state, "running");
    if (status.state !== "running") return;
    assert.equal(status.foreignHost, true);
    assert.equal(status.record.hostname, `not-${hostname()}`);
    assert.match(status.reason, /host/);
  });

  const invalid: Array<[string, string | Uint8Array]> = [
    ["an empty file", ""],
    ["whitespace only", "  \n\t\n"],
    ["garbage text", "hello world\n"],
    ["binary bytes", new Uint8Array([0, 1, 2, 255, 254, 10])],
    ["a truncated JSON record", '{"pid": 12, "startTime": 17'],
    ["a negative pid", "-5\n"],
    ["a fractional pid", "12.5\n"],
    ["pid zero", "0\n"],
    ["a pid beyond any kernel's", "99999999999\n"],
    ["a JSON record without pid", '{"argv": [], "createdAt": "2024-01-01T00:00:00.000Z"}\n'],
    ["a JSON record with a string pid", '{"pid": "12"}\n'],
    ["a JSON record with a negative pid", '{"pid": -3}\n'],
    ["a JSON record with a fractional pid", '{"pid": 1.5}\n'],
    ["a JSON record with a bad startTime", '{"pid": 12, "startTime": "yesterday"}\n'],
    ["a JSON record with a bad argv", '{"pid": 12, "argv": "sleep 5"}\n'],
    ["a JSON array", "[1, 2]\n"],
    ["a huge file", "1".repeat(70_000)],
  ];
  for (const [name, content] of invalid) {
    it(`readPidFile() reports ${name} as invalid`, () => {
      const pidPath = freshPidPath();
      fs.writeFileSync(pidPath, content);
      const status = readPidFile(pidPath);
      assert.equal(status.state, "invalid");
      assert.ok(status.state === "invalid" && status.reason.length > 0);
    });
  }

  it("readPidFile() only reads: stale, invalid and live files are left byte for byte, nothing added", async () => {
    const sleeper = startSleep();
    try {
      const dir = freshDir(root);
      const files = {
        stale: `{"pid": ${await deadPid()}, "startTime": 5}\n`,
        invalid: "garbage",
        live: JSON.stringify(liveRecordFields(sleeper.pid)),
        self: JSON.stringify({ pid: getPid(), startTime: processStartTime(getPid()) }),
      };
      for (const [name, text] of Object.entries(files)) fs.writeFileSync(path.join(dir, name), text);
      const before = fs.readdirSync(dir).sort();
      const mtimes = before.map((name) => fs.statSync(path.join(dir, name)).mtimeMs);
      for (const name of Object.keys(files)) readPidFile(path.join(dir, name));
      assert.deepEqual(fs.readdirSync(dir).sort(), before);
      for (const [name, text] of Object.entries(files)) {
        assert.equal(fs.readFileSync(path.join(dir, name), "utf8"), text);
      }
      assert.deepEqual(before.map((name) => fs.statSync(path.join(dir, name)).mtimeMs), mtimes);
    } finally {
      await stop(sleeper);
    }
  });

  it("readPidFile() throws PidFileError naming the path for a directory", () => {
    const dir = freshDir(root);
    assert.throws(() => readPidFile(dir), (error: unknown) => {
      assert.ok(error instanceof PidFileError);
      assert.equal(error.path, dir);
      assert.equal(error.code, "EISDIR");
      assert.ok(error.message.includes(dir));
      return true;
    });
  });

  it("readPidFile() throws PidFileError for a FIFO instead of blocking on it", () => {
    const fifo = path.join(freshDir(root), "fifo.pid");
    const made = spawnSync("mkfifo", [fifo]);
    assert.equal(made.status, 0);
    assert.throws(() => readPidFile(fifo), PidFileError);
  });

  it("readPidFile() reports an unreadable file as invalid (permissions enforced, unprivileged probe)", async (t) => {
    const blocker = await unprivilegedBlocker();
    if (blocker) return t.skip(blocker);
    const dir = freshDir(root);
    fs.chmodSync(dir, 0o777);
    const pidPath = path.join(dir, "secret.pid");
    fs.writeFileSync(pidPath, `{"pid": ${getPid()}}\n`);
    fs.chmodSync(pidPath, 0o000);
    const result = await probe("read", pidPath, dir);
    const status = result.status as { state: string; reason: string };
    assert.equal(status.state, "invalid");
    assert.match(status.reason, /EACCES|EPERM/);
  });

  it("readPidFile() rejects a bad path with a TypeError", () => {
    assert.throws(() => readPidFile(""), TypeError);
    assert.throws(() => readPidFile(42 as unknown as string), /path/);
  });
});

// ---------------------------------------------------------------------------------------------------
// acquirePidFile and release
// ---------------------------------------------------------------------------------------------------

describe("acquirePidFile()", () => {
  it("acquirePidFile() creates a complete record with mode 0644, and release() removes it", async () => {
    const pidPath = freshPidPath();
    const pidFile = await acquirePidFile(pidPath);
    try {
      assert.equal(pidFile.path, pidPath);
      const onDisk = readJson(pidPath);
      assert.equal(onDisk.pid, getPid());
      assert.equal(onDisk.startTime, processStartTime(getPid()));
      assert.deepEqual(onDisk.argv, process.argv);
      assert.equal(onDisk.hostname, hostname());
      assert.ok(!Number.isNaN(Date.parse(onDisk.createdAt as string)));
      assert.deepEqual(onDisk, { ...pidFile.record });
      assert.equal(fs.statSync(pidPath).mode & 0o777, 0o644); // the documented default mode
      const status = readPidFile(pidPath);
      assert.equal(status.state, "running");
      assert.equal(status.state === "running" && status.reason, "held by this process");
      assert.deepEqual(fs.readdirSync(path.dirname(pidPath)), ["service.pid"], "no temporary file left");
    } finally {
      pidFile.release();
    }
    assert.equal(fs.existsSync(pidPath), false);
    assert.equal(pidFile.released, true);
    pidFile.release(); // idempotent
  });

  it("acquirePidFile() applies mode whatever the umask, and the PidFile is disposable", async () => {
    const pidPath = freshPidPath();
    const pidFile = await acquirePidFile(pidPath, { mode: 0o600 });
    assert.equal(fs.statSync(pidPath).mode & 0o777, 0o600);
    pidFile[Symbol.dispose]();
    assert.equal(fs.existsSync(pidPath), false);
  });

  it("acquirePidFile() throws PidFileLockedError with the holder when held by this process", async () => {
    const pidPath = freshPidPath();
    const first = await acquirePidFile(pidPath);
    try {
      await assert.rejects(acquirePidFile(pidPath), (error: unknown) => {
        assert.ok(error instanceof PidFileLockedError);
        assert.equal(error.holder.pid, getPid());
        return true;
      });
      await assert.rejects(acquirePidFile(pidPath, { replace: true }), PidFileLockedError);
      assert.equal(fs.readFileSync(pidPath, "utf8"), JSON.stringify(first.record) + "\n");
    } finally {
      first.release();
    }
  });

  const staleCases: Array<[string, () => Promise<string | Uint8Array>]> = [
    [
      "a dead foreign pid",
      async () => JSON.stringify({ pid: await deadPid(), startTime: 1, hostname: hostname() }),
    ],
    ["a dead pid in a plain decimal file", async () => `${await deadPid()}\n`],
    [
      "our own pid from an earlier incarnation",
      () => Promise.resolve(JSON.stringify({ pid: getPid(), startTime: processStartTime(getPid()) })),
    ],
    ["an empty file", () => Promise.resolve("")],
    ["garbage", () => Promise.resolve("not a pid\n")],
    ["a truncated record", () => Promise.resolve('{"pid": 4')],
    ["a negative pid", () => Promise.resolve("-1\n")],
    ["a fractional pid", () => Promise.resolve("3.25\n")],
  ];
  for (const [name, make] of staleCases) {
    it(`acquirePidFile() replaces ${name}`, async () => {
      const pidPath = freshPidPath();
      fs.writeFileSync(pidPath, await make());
      const before = readPidFile(pidPath).state;
      assert.ok(before === "stale" || before === "invalid", before);
      const pidFile = await acquirePidFile(pidPath);
      try {
        assert.equal(readJson(pidPath).pid, getPid());
        assert.deepEqual(fs.readdirSync(path.dirname(pidPath)), ["service.pid"], "no claim or temp left");
      } finally {
        pidFile.release();
      }
    });
  }

  it("acquirePidFile() replaces a record whose pid was reused by a live process, and leaves that process alone", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      writeRecord(pidPath, { pid: sleeper.pid, startTime: processStartTime(sleeper.pid)! - 3_600_000 });
      const pidFile = await acquirePidFile(pidPath, { replace: true });
      try {
        assert.equal(readJson(pidPath).pid, getPid());
        assert.equal(isAlive(sleeper.pid), true);
        assert.equal(fs.existsSync(pidPath + ".takeover.json"), false, "no takeover of a stale record");
      } finally {
        pidFile.release();
      }
    } finally {
      await stop(sleeper);
    }
  });

  it("acquirePidFile() replaces an unreadable file (unprivileged probe)", async (t) => {
    const blocker = await unprivilegedBlocker();
    if (blocker) return t.skip(blocker);
    const dir = freshDir(root);
    fs.chmodSync(dir, 0o777);
    const pidPath = path.join(dir, "secret.pid");
    fs.writeFileSync(pidPath, "1\n");
    fs.chmodSync(pidPath, 0o000);
    const result = await probe("acquire", pidPath, dir);
    assert.ok(result.acquired, JSON.stringify(result));
    assert.equal(fs.existsSync(pidPath), false, "the probe released its record");
  });

  it("acquirePidFile() throws PidFileLockedError with the holder for a live holder and changes nothing", async () => {
    const pidPath = freshPidPath();
    const service = startService(pidPath);
    try {
      await service.waitFor("stdout", /^acquired/);
      const text = fs.readFileSync(pidPath, "utf8");
      await assert.rejects(acquirePidFile(pidPath), (error: unknown) => {
        assert.ok(error instanceof PidFileLockedError);
        assert.equal(error.path, pidPath);
        assert.equal(error.holder.pid, service.pid);
        assert.equal(error.foreignHost, false);
        assert.ok(error.message.includes(pidPath));
        return true;
      });
      assert.equal(fs.readFileSync(pidPath, "utf8"), text);
      assert.equal(isAlive(service.pid), true);
    } finally {
      await stop(service);
    }
  });

  it("acquirePidFile() treats a record of another host as locked and never kills across hosts", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      const text = writeRecord(pidPath, { ...liveRecordFields(sleeper.pid), hostname: `not-${hostname()}` });
      for (const replace of [false, true]) {
        await assert.rejects(acquirePidFile(pidPath, { replace }), (error: unknown) => {
          assert.ok(error instanceof PidFileLockedError);
          assert.equal(error.foreignHost, true);
          assert.equal(error.holder.hostname, `not-${hostname()}`);
          return true;
        });
      }
      assert.equal(fs.readFileSync(pidPath, "utf8"), text);
      assert.equal(isAlive(sleeper.pid), true);
      assert.equal(fs.existsSync(pidPath + ".takeover.json"), false);
    } finally {
      await stop(sleeper);
    }
  });

  it("acquirePidFile() throws PidFileError naming the path for a directory and deletes nothing", async () => {
    const dir = freshDir(root);
    const target = path.join(dir, "service.pid");
    fs.mkdirSync(target);
    fs.writeFileSync(path.join(target, "keep"), "x");
    await assert.rejects(acquirePidFile(target), (error: unknown) => {
      assert.ok(error instanceof PidFileError);
      assert.equal(error.path, target);
      assert.equal(error.code, "EISDIR");
      return true;
    });
    assert.equal(fs.readFileSync(path.join(target, "keep"), "utf8"), "x");
    assert.deepEqual(fs.readdirSync(dir), ["service.pid"]);
  });

  it("acquirePidFile() throws PidFileError for a dangling symbolic link and leaves it", async () => {
    const pidPath = freshPidPath();
    fs.symlinkSync(path.join(path.dirname(pidPath), "nowhere"), pidPath);
    await assert.rejects(acquirePidFile(pidPath), (error: unknown) => {
      assert.ok(error instanceof PidFileError);
      assert.equal(error.path, pidPath);
      assert.match(error.message, /symbolic link/);
      return true;
    });
    assert.equal(fs.lstatSync(pidPath).isSymbolicLink(), true);
    assert.deepEqual(fs.readdirSync(path.dirname(pidPath)), ["service.pid"]);
  });

  it("acquirePidFile() throws PidFileError naming the path for a missing folder", async () => {
    const pidPath = path.join(freshDir(root), "missing", "service.pid");
    await assert.rejects(acquirePidFile(pidPath), (error: unknown) => {
      assert.ok(error instanceof PidFileError);
      assert.equal(error.path, pidPath);
      assert.equal(error.code, "ENOENT");
      return true;
    });
  });

  it("acquirePidFile() throws PidFileError naming the path for an unwritable folder (unprivileged probe)", async (t) => {
    const blocker = await unprivilegedBlocker();
    if (blocker) return t.skip(blocker);
    const home = freshDir(root);
    fs.chmodSync(home, 0o777);
    const locked = path.join(home, "ro");
    fs.mkdirSync(locked);
    fs.chmodSync(locked, 0o555);
    const pidPath = path.join(locked, "service.pid");
    const result = await probe("acquire", pidPath, home);
    const error = result.error as { name: string; code: string; path: string; message: string };
    assert.equal(error.name, "PidFileError");
    assert.equal(error.code, "EACCES");
    assert.equal(error.path, pidPath);
    assert.ok(error.message.includes(pidPath));
    assert.deepEqual(fs.readdirSync(locked), []);
  });

  it("acquirePidFile() rejects bad options with TypeError / RangeError naming the option", async () => {
    const pidPath = freshPidPath();
    await assert.rejects(acquirePidFile(""), TypeError);
    await assert.rejects(acquirePidFile(pidPath, { replaceTimeoutMs: -1 }), /replaceTimeoutMs.*-1/);
    await assert.rejects(acquirePidFile(pidPath, { replaceTimeoutMs: -1 }), RangeError);
    await assert.rejects(acquirePidFile(pidPath, { mode: 0o10000 }), {
      name: "RangeError",
      message: /^Cannot acquire the PID file: 'mode' must be permission bits from 0 to 0o7777, got 4096$/,
    });
    await assert.rejects(acquirePidFile(pidPath, { mode: "644" as unknown as number }), {
      name: "TypeError",
      message: /^Cannot acquire the PID file: 'mode' must be permission bits from 0 to 0o7777, got "644"$/,
    });
    await assert.rejects(acquirePidFile(pidPath, { heartbeatMs: "5" as unknown as number }), {
      name: "TypeError",
      message: /^Cannot acquire the PID file: 'heartbeatMs' must be a finite number >= 1, got "5"$/,
    });
    await assert.rejects(acquirePidFile(pidPath, { heartbeatMs: 0 }), {
      name: "RangeError",
      message: /heartbeatMs/,
    });
    await assert.rejects(acquirePidFile(pidPath, { contentionTimeoutMs: "1" as unknown as number }), {
      name: "TypeError",
      message: /^Cannot acquire the PID file: 'contentionTimeoutMs' must be a finite number >= 0, got "1"$/,
    });
    await assert.rejects(acquirePidFile(pidPath, { releaseOnSignals: ["SIGKILL"] }), /releaseOnSignals/);
    await assert.rejects(acquirePidFile(pidPath, { replace: "yes" as unknown as boolean }), TypeError);
    await assert.rejects(acquirePidFile(pidPath, { onError: 1 as unknown as () => void }), /onError/);
    assert.equal(fs.existsSync(pidPath), false);
  });
});

/**
 * The claim id of the file at `file`, as pidfile.ts computes it (FNV-1a over dev, inode, size, mtime and
 * content). A copy on purpose: if the two drift apart, the live-claimant test below fails.
 */
function claimId(file: string): string {
  const stat = fs.statSync(file);
  const content = fs.readFileSync(file, "utf8");
  const text = `${stat.dev}:${stat.ino > 0 ? stat.ino : "?"}:${stat.size}:${
    Math.floor(stat.mtimeMs)
  }:${content}`;
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ text.length;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995) ^ (b >>> 15);
  }
  return (a >>> 0).toString(16).padStart(8, "0") + (b >>> 0).toString(16).padStart(8, "0");
}

describe("acquirePidFile() replacement claims", () => {
  it("acquirePidFile() waits for a live claimant of the same stale file, then reports it (acquiring)", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      const stale = writeRecord(pidPath, { pid: await deadPid(), startTime: 1, hostname: hostname() });
      const claim = `${pidPath}.replace-${claimId(pidPath)}.0`;
      fs.writeFileSync(claim, JSON.stringify(liveRecordFields(sleeper.pid)));
      await assert.rejects(acquirePidFile(pidPath, { contentionTimeoutMs: 200 }), (error: unknown) => {
        assert.ok(error instanceof PidFileLockedError);
        assert.equal(error.acquiring, true);
        assert.equal(error.holder.pid, sleeper.pid);
        return true;
      });
      assert.equal(fs.readFileSync(pidPath, "utf8"), stale, "the claimant's file is left to the claimant");
      assert.ok(fs.existsSync(claim));
    } finally {
      await stop(sleeper);
    }
  });

  it("acquirePidFile() is not blocked by claims of dead claimants, and removes them", async () => {
    const pidPath = freshPidPath();
    writeRecord(pidPath, { pid: await deadPid(), startTime: 1, hostname: hostname() });
    const id = claimId(pidPath);
    const dead = JSON.stringify({ pid: await deadPid(), startTime: 1, hostname: hostname() });
    fs.writeFileSync(`${pidPath}.replace-${id}.0`, dead);
    fs.writeFileSync(`${pidPath}.replace-${id}.1`, dead);
    const pidFile = await acquirePidFile(pidPath);
    try {
      assert.equal(readJson(pidPath).pid, getPid());
      assert.deepEqual(fs.readdirSync(path.dirname(pidPath)), ["service.pid"]);
    } finally {
      pidFile.release();
    }
  });

  it("acquirePidFile() sweeps temporary files and claims of dead processes after a replacement, not live ones", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      const dir = path.dirname(pidPath);
      fs.writeFileSync(pidPath, "garbage");
      const gone = await deadPid();
      const deadTmp = `service.pid.${gone}.3.k2j4h.tmp`;
      const liveTmp = `service.pid.${sleeper.pid}.1.abc.tmp`;
      const deadClaim = "service.pid.replace-0123456789abcdef.0";
      const liveClaim = "service.pid.replace-fedcba9876543210.0";
      const other = "service.pid.takeover.json";
      fs.writeFileSync(path.join(dir, deadTmp), "x");
      fs.writeFileSync(path.join(dir, liveTmp), "x");
      fs.writeFileSync(
        path.join(dir, deadClaim),
        JSON.stringify({ pid: gone, startTime: 1, hostname: hostname() }),
      );
      fs.writeFileSync(path.join(dir, liveClaim), JSON.stringify(liveRecordFields(sleeper.pid)));
      fs.writeFileSync(path.join(dir, other), "{}");
      const pidFile = await acquirePidFile(pidPath);
      pidFile.release();
      assert.deepEqual(fs.readdirSync(dir).sort(), [liveClaim, liveTmp, other].sort());
    } finally {
      await stop(sleeper);
    }
  });
});

describe("PidFile.release()", () => {
  it("release() leaves a record that someone else wrote over ours", async () => {
    const pidPath = freshPidPath();
    const pidFile = await acquirePidFile(pidPath);
    const theirs = writeRecord(pidPath, { pid: 1, startTime: null, hostname: hostname() });
    pidFile.release();
    assert.equal(fs.readFileSync(pidPath, "utf8"), theirs);
  });

  it("release() is quiet when the file is already gone", async () => {
    const pidPath = freshPidPath();
    const pidFile = await acquirePidFile(pidPath);
    fs.unlinkSync(pidPath);
    pidFile.release();
    assert.equal(fs.existsSync(pidPath), false);
  });

  it("release() runs at natural exit and at exit()", SLOW, async () => {
    for (const exitCall of [false, true]) {
      const pidPath = freshPidPath();
      const service = startService(pidPath, { holdMs: 50, exitCall });
      await service.waitFor("stdout", /^acquired/);
      const exit = await service.exited;
      assert.deepEqual(exit, { code: 0, signal: null });
      assert.equal(fs.existsSync(pidPath), false, `exitCall ${exitCall}: ${service.stderr.join("\n")}`);
    }
  });

  it(
    "release() runs on SIGTERM and SIGINT when nobody else listens, and the signal still ends the process",
    SLOW,
    async () => {
      for (const signal of ["SIGTERM", "SIGINT"] as const) {
        const pidPath = freshPidPath();
        const service = startService(pidPath);
        await service.waitFor("stdout", /^acquired/);
        process.kill(service.pid, signal);
        const exit = await service.exited;
        assert.equal(exit.signal, signal);
        assert.equal(fs.existsSync(pidPath), false, `${signal}: ${service.stderr.join("\n")}`);
      }
    },
  );

  it(
    "release() waits for the exit of a process that handles SIGTERM itself (graceful drain)",
    SLOW,
    async () => {
      const pidPath = freshPidPath();
      const service = startService(pidPath, { onTerm: "drain" });
      await service.waitFor("stdout", /^acquired/);
      process.kill(service.pid, "SIGTERM");
      assert.equal(await service.waitFor("stdout", /^draining/), "draining running");
      assert.deepEqual(await service.exited, { code: 0, signal: null });
      assert.equal(fs.existsSync(pidPath), false);
    },
  );

  it("release() does not run when opted out: the record stays and reads as stale", SLOW, async () => {
    const pidPath = freshPidPath();
    const service = startService(pidPath, {
      holdMs: 20,
      acquire: { releaseOnExit: false, releaseOnSignals: [] },
    });
    await service.waitFor("stdout", /^acquired/);
    await service.exited;
    assert.equal(readPidFile(pidPath).state, "stale");
    const after = startService(pidPath, { acquire: { releaseOnSignals: [] } });
    try {
      await after.waitFor("stdout", /^acquired/);
      process.kill(after.pid, "SIGTERM");
      assert.equal((await after.exited).signal, "SIGTERM");
      assert.equal(readPidFile(pidPath).state, "stale", "SIGTERM's default action, no release");
    } finally {
      await stop(after);
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// replace
// ---------------------------------------------------------------------------------------------------

describe("acquirePidFile() with replace: true", () => {
  it("replace stops a holder that exits on SIGTERM, after writing the takeover marker", SLOW, async () => {
    const pidPath = freshPidPath();
    const service = startService(pidPath);
    try {
      await service.waitFor("stdout", /^acquired/);
      const pidFile = await acquirePidFile(pidPath, { replace: true, replaceTimeoutMs: 30_000 });
      try {
        assert.equal(readJson(pidPath).pid, getPid());
        const exit = await service.exited;
        assert.equal(exit.signal, "SIGTERM");
        const marker = readJson(pidPath + ".takeover.json");
        assert.deepEqual(Object.keys(marker).sort(), ["at", "byPid", "targetPid"]);
        assert.equal(marker.targetPid, service.pid);
        assert.equal(marker.byPid, getPid());
        assert.ok(!Number.isNaN(Date.parse(marker.at as string)));
      } finally {
        pidFile.release();
      }
    } finally {
      await stop(service);
    }
  });

  it("replace sends SIGKILL to a holder that ignores SIGTERM, after replaceTimeoutMs", SLOW, async () => {
    const pidPath = freshPidPath();
    const service = startService(pidPath, { onTerm: "ignore" });
    try {
      await service.waitFor("stdout", /^acquired/);
      const pidFile = await acquirePidFile(pidPath, { replace: true, replaceTimeoutMs: 300 });
      try {
        assert.equal(readJson(pidPath).pid, getPid());
        assert.equal(await service.waitFor("stdout", /SIGTERM/), "ignored SIGTERM");
        assert.equal((await service.exited).signal, "SIGKILL");
        assert.equal(readJson(pidPath + ".takeover.json").targetPid, service.pid);
      } finally {
        pidFile.release();
      }
    } finally {
      await stop(service);
    }
  });
});

describe("markPlannedStop()", () => {
  it("markPlannedStop() writes <pidPath>.planned-stop.json with pid, at and the info", () => {
    const pidPath = freshPidPath();
    markPlannedStop(pidPath, { reason: "upgrade", by: "deploy" });
    const marker = readJson(pidPath + ".planned-stop.json");
    assert.equal(marker.pid, getPid());
    assert.ok(!Number.isNaN(Date.parse(marker.at as string)));
    assert.equal(marker.reason, "upgrade");
    assert.equal(marker.by, "deploy");
    assert.deepEqual(fs.readdirSync(path.dirname(pidPath)), ["service.pid.planned-stop.json"]);
    markPlannedStop(pidPath);
    assert.deepEqual(Object.keys(readJson(pidPath + ".planned-stop.json")).sort(), ["at", "pid"]);
  });

  it("markPlannedStop() rejects bad info with a TypeError and an unwritable place with PidFileError", () => {
    const pidPath = freshPidPath();
    assert.throws(() => markPlannedStop(pidPath, [] as unknown as Record<string, unknown>), {
      name: "TypeError",
      message: "Cannot mark a planned stop: 'info' must be a plain object, got an array",
    });
    assert.throws(() => markPlannedStop(pidPath, { big: 1n }), {
      name: "TypeError",
      message:
        /^Cannot mark a planned stop: 'info' must be a JSON-serialisable object \(.*BigInt.*\), got an object$/,
    });
    assert.throws(() => markPlannedStop(""), TypeError);
    const missing = path.join(freshDir(root), "missing", "service.pid");
    assert.throws(() => markPlannedStop(missing), (error: unknown) => {
      assert.ok(error instanceof PidFileError);
      assert.equal(error.path, missing + ".planned-stop.json");
      return true;
    });
  });
});

// ---------------------------------------------------------------------------------------------------
// Crash loop and race
// ---------------------------------------------------------------------------------------------------

describe("acquirePidFile() under a supervisor", () => {
  it("acquirePidFile() acquires at once on every restart of a crash loop (20 SIGKILLs)", SLOW, async () => {
    const pidPath = freshPidPath();
    for (let round = 0; round < 20; round += 1) {
      const service = startService(pidPath);
      try {
        const line = await service.waitFor("stdout", /^(acquired|locked|error)/);
        assert.equal(line, `acquired ${service.pid}`, `start ${round}: ${service.stderr.join("\n")}`);
        assert.equal(readJson(pidPath).pid, service.pid);
      } finally {
        process.kill(service.pid, "SIGKILL");
        await service.exited;
      }
      const left = readPidFile(pidPath);
      assert.equal(left.state, "stale", `start ${round}: SIGKILL leaves a stale record`);
    }
    assert.deepEqual(fs.readdirSync(path.dirname(pidPath)), ["service.pid"]);
  });

  it(
    "acquirePidFile() lets exactly one of 8 racers win, 20 rounds on absent, stale and invalid files",
    SLOW,
    async () => {
      const racers = 8;
      for (let round = 0; round < 20; round += 1) {
        const dir = freshDir(root);
        const pidPath = path.join(dir, "service.pid");
        const go = path.join(dir, "go");
        const kind = round % 3;
        if (kind === 1) writeRecord(pidPath, { pid: await deadPid(), startTime: 1, hostname: hostname() });
        if (kind === 2) fs.writeFileSync(pidPath, "{garbage");
        const children = Array.from({ length: racers }, () => startService(pidPath, { go }));
        try {
          await Promise.all(children.map((c) => c.waitFor("stdout", /^ready$/)));
          fs.writeFileSync(go, "");
          const outcomes = await Promise.all(
            children.map((c) => c.waitFor("stdout", /^(acquired|locked|error)/)),
          );
          const winners = children.filter((_, i) => outcomes[i].startsWith("acquired"));
          assert.equal(winners.length, 1, `round ${round} (kind ${kind}): ${JSON.stringify(outcomes)}`);
          assert.ok(outcomes.every((o) => /^(acquired|locked)/.test(o)), JSON.stringify(outcomes));
          assert.equal(readJson(pidPath).pid, winners[0].pid);
          await Promise.all(children.filter((c) => c !== winners[0]).map((c) => c.exited));
          assert.deepEqual(fs.readdirSync(dir).sort(), ["go", "service.pid"], `round ${round}: litter`);
        } finally {
          await Promise.all(children.map(stop));
        }
      }
    },
  );
});

describe("acquirePidFile() mutual exclusion", () => {
  it(
    "acquirePidFile() never lets two processes hold at once while holders crash (SIGKILL) and restart",
    SLOW,
    async () => {
      const dir = freshDir(root);
      const pidPath = path.join(dir, "service.pid");
      const marker = path.join(dir, "critical-section");
      const spawnsPerWorker = 4;
      let holds = 0;
      const worker = async () => {
        for (let spawned = 0; spawned < spawnsPerWorker; spawned += 1) {
          const child = startFixture(MUTEX, [pidPath, marker, "25"]);
          const exit = await child.exited;
          const out = child.stdout.join("\n");
          assert.ok(!/overlap|lost record/.test(out), `${out} ${child.stderr.join("\n")}`);
          assert.ok(
            exit.code === 0 || exit.signal === "SIGKILL",
            `${JSON.stringify(exit)} ${child.stderr.join("\n")}`,
          );
          holds += Number(/holds (\d+)/.exec(out)?.[1] ?? 0);
        }
      };
      await Promise.all([worker(), worker(), worker(), worker()]);
      assert.ok(holds > 0);
      assert.ok(fs.readdirSync(dir).every((name) => name === "service.pid"), String(fs.readdirSync(dir)));
    },
  );
});

// ---------------------------------------------------------------------------------------------------
// One identity across runtimes, PID namespaces, host names and PID reuse
// ---------------------------------------------------------------------------------------------------

const RUNTIME_BIN = (name: string) => path.join(ROOT, "node_modules", ".bin", name);
const RUNTIMES = ["deno", "bun", "node"] as const;

/** The command that runs `script` with a pinned runtime, whichever runtime runs this test. */
function runtimeCommand(name: (typeof RUNTIMES)[number], script: string, args: string[]): string[] {
  const prefix = name === "deno" ? ["run", "-A", "--quiet"] : [];
  return [RUNTIME_BIN(name), ...prefix, script, ...args];
}

function missingRuntimes(): string | null {
  const missing = RUNTIMES.filter((name) => !fs.existsSync(RUNTIME_BIN(name)));
  return missing.length === 0 ? null : `the pinned runtimes ${missing.join(", ")} are not installed`;
}

let unshareCheck: string | null | undefined;

/** Why `unshare` cannot make PID and UTS namespaces here, or `null`. */
function unshareBlocker(): string | null {
  if (unshareCheck !== undefined) return unshareCheck;
  if (!IS_ROOT) return (unshareCheck = "needs root for unshare");
  const run = spawnSync("unshare", ["-p", "-f", "--mount-proc", "-u", "true"], { stdio: "ignore" });
  unshareCheck = run.status === 0 ? null : "unshare -p -f --mount-proc -u does not work here";
  return unshareCheck;
}

/** The children of `pid` (`/proc/<pid>/task/<pid>/children`). */
function childrenOf(pid: number): number[] {
  try {
    return fs.readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean)
      .map(Number);
  } catch {
    return [];
  }
}

describe("acquirePidFile() across runtimes, PID namespaces and host names", () => {
  it(
    "acquirePidFile() lets exactly one of Deno, Bun and Node racers win, 16 rounds on absent and stale files",
    SLOW,
    async (t) => {
      const blocker = missingRuntimes();
      if (blocker) return t.skip(blocker);
      const perRuntime = 3;
      for (let round = 0; round < 16; round += 1) {
        const dir = freshDir(root);
        const pidPath = path.join(dir, "service.pid");
        const go = path.join(dir, "go");
        const stale = round % 2 === 1;
        // Written by this runtime: an mtime with a fraction of a millisecond that Deno reports without it.
        if (stale) writeRecord(pidPath, { pid: await deadPid(), startTime: 1, hostname: hostname() });
        const children = RUNTIMES.flatMap((name) =>
          Array.from({ length: perRuntime }, () => {
            const [command, ...args] = runtimeCommand(name, SERVICE, [pidPath, JSON.stringify({ go })]);
            return start(command!, args);
          })
        );
        try {
          await Promise.all(children.map((c) => c.waitFor("stdout", /^ready$/)));
          fs.writeFileSync(go, "");
          const outcomes = await Promise.all(
            children.map((c) => c.waitFor("stdout", /^(acquired|locked|error)/)),
          );
          const winners = children.filter((_, i) => outcomes[i]!.startsWith("acquired"));
          const label = `round ${round} (${stale ? "stale" : "absent"})`;
          assert.equal(winners.length, 1, `${label}: ${JSON.stringify(outcomes)}`);
          assert.ok(outcomes.every((o) => /^(acquired|locked)/.test(o)), JSON.stringify(outcomes));
          assert.equal(readJson(pidPath).pid, winners[0]!.pid);
          await Promise.all(children.filter((c) => c !== winners[0]).map((c) => c.exited));
          assert.deepEqual(fs.readdirSync(dir).sort(), ["go", "service.pid"], `${label}: litter`);
        } finally {
          await Promise.all(children.map(stop));
        }
      }
    },
  );

  it(
    "acquirePidFile() on Deno, Bun and Node names the claim of one stale file alike (mtime precision)",
    SLOW,
    async (t) => {
      const blocker = missingRuntimes();
      if (blocker) return t.skip(blocker);
      const sleeper = startSleep();
      try {
        const pidPath = freshPidPath();
        writeRecord(pidPath, { pid: await deadPid(), startTime: 1, hostname: hostname() });
        // An mtime with a fraction of a millisecond, whichever runtime runs this test.
        assert.equal(spawnSync("touch", ["-d", "@1796000000.123456789", pidPath]).status, 0);
        const claim = `${pidPath}.replace-${claimId(pidPath)}.0`;
        fs.writeFileSync(claim, JSON.stringify(liveRecordFields(sleeper.pid)));
        for (const name of RUNTIMES) {
          const options = JSON.stringify({ acquire: { contentionTimeoutMs: 300 } });
          const [command, ...args] = runtimeCommand(name, SERVICE, [pidPath, options]);
          const starter = start(command!, args);
          const outcome = await starter.waitFor("stdout", /^(acquired|locked|error)/);
          await stop(starter);
          assert.equal(
            outcome,
            `locked ${sleeper.pid} acquiring`,
            `${name} saw the live claim: ${starter.stderr.join("\n")}`,
          );
        }
      } finally {
        await stop(sleeper);
      }
    },
  );

  it(
    "acquirePidFile() is blocked by a live holder in another PID namespace, and acquires within 3 heartbeats once it is killed",
    SLOW,
    async (t) => {
      const blocker = unshareBlocker();
      if (blocker) return t.skip(blocker);
      const pidPath = freshPidPath();
      const heartbeatMs = 200;
      const inside = startFixture(SERVICE, [pidPath, JSON.stringify({ acquire: { heartbeatMs } })], {
        wrap: ["unshare", "-p", "-f", "--mount-proc"],
      });
      try {
        assert.equal(
          await inside.waitFor("stdout", /^acquired/),
          "acquired 1",
          "the holder is pid 1 of its namespace",
        );
        const record = readJson(pidPath);
        assert.equal(record.pid, 1);
        assert.equal(record.heartbeatMs, heartbeatMs);
        // Longer than 3 heartbeats: only a refreshed record can still block us now.
        await sleep(4 * heartbeatMs);
        const status = readPidFile(pidPath);
        assert.equal(status.state, "running", JSON.stringify(status));
        assert.equal(status.state === "running" && status.foreignNamespace, true);
        await assert.rejects(acquirePidFile(pidPath, { heartbeatMs, replace: true }), (error: unknown) => {
          assert.ok(error instanceof PidFileLockedError, String(error));
          assert.equal(error.foreignNamespace, true);
          return true;
        });
        assert.ok(isAlive(inside.pid), "replace never signals across PID namespaces");
        assert.ok(!fs.existsSync(pidPath + ".takeover.json"));
        const holders = childrenOf(inside.pid);
        assert.equal(holders.length, 1, `the namespace's pid 1 seen from outside: ${holders}`);
        process.kill(holders[0]!, "SIGKILL");
        const killedAt = Date.now();
        await inside.exited;
        let pidFile = null;
        while (pidFile === null) {
          try {
            pidFile = await acquirePidFile(pidPath, { heartbeatMs });
          } catch (error) {
            if (!(error instanceof PidFileLockedError) || Date.now() - killedAt > 30_000) throw error;
            await sleep(20);
          }
        }
        const waited = Date.now() - killedAt;
        pidFile.release();
        // The guarantee is a bound: 3 heartbeats after the last refresh, plus generous slack for a busy machine.
        assert.ok(waited <= 3 * heartbeatMs + 5000, `acquired ${waited} ms after the kill`);
      } finally {
        for (const pid of childrenOf(inside.pid)) process.kill(pid, "SIGKILL");
        await stop(inside);
      }
    },
  );

  it(
    "acquirePidFile() replaces at once a dead holder's record written under another host name (same boot)",
    SLOW,
    async (t) => {
      const blocker = unshareBlocker();
      if (blocker) return t.skip(blocker);
      const pidPath = freshPidPath();
      const { command, args } = scriptCommand(SERVICE, [pidPath]);
      const quoted = [command, ...args].map((a) => `'${a.replaceAll("'", `'\\''`)}'`).join(" ");
      const holder = start("unshare", ["-u", "sh", "-c", `hostname renamed-host && exec ${quoted}`]);
      try {
        await holder.waitFor("stdout", /^acquired/);
        assert.equal(readJson(pidPath).hostname, "renamed-host");
        assert.notEqual(hostname(), "renamed-host");
        const alive = readPidFile(pidPath);
        assert.equal(alive.state, "running", "judged by pid, whatever the host name says");
        assert.equal(alive.state === "running" && alive.foreignHost, false);
      } finally {
        await stop(holder);
      }
      const status = readPidFile(pidPath);
      assert.equal(status.state, "stale", JSON.stringify(status));
      const pidFile = await acquirePidFile(pidPath, { contentionTimeoutMs: 0 });
      try {
        assert.equal(readJson(pidPath).pid, getPid());
      } finally {
        pidFile.release();
      }
    },
  );

  it(
    "acquirePidFile({ replace: true }) never signals a process that took the holder's pid (ns_last_pid)",
    SLOW,
    async (t) => {
      if (!IS_ROOT || !fs.existsSync("/proc/sys/kernel/ns_last_pid")) {
        return t.skip("needs root and /proc/sys/kernel/ns_last_pid to force PID reuse");
      }
      const pidPath = freshPidPath();
      // A holder that ignores SIGTERM (ignored dispositions survive exec), named by a plain decimal file:
      // nothing in the record pins it but its pid.
      const holder = start("sh", ["-c", "trap '' TERM; exec sleep 120"]);
      let reused: Running | null = null;
      try {
        await sleep(100); // the exec happened
        fs.writeFileSync(pidPath, `${holder.pid}\n`);
        const marker = pidPath + ".takeover.json";
        const replacing = acquirePidFile(pidPath, { replace: true, replaceTimeoutMs: 3000 });
        replacing.catch(() => {});
        while (!fs.existsSync(marker)) await sleep(5);
        await sleep(300); // SIGTERM sent and ignored; replace waits
        const target = holder.pid;
        const exited = new Promise<void>((resolve) => holder.child.once("exit", () => resolve()));
        process.kill(target, "SIGKILL");
        await exited;
        // The pid comes back at once, long before replaceTimeoutMs ends and SIGKILL would be due.
        for (let attempt = 0; attempt < 50 && reused === null; attempt += 1) {
          fs.writeFileSync("/proc/sys/kernel/ns_last_pid", String(target - 1));
          const candidate = startSleep();
          if (candidate.pid === target) reused = candidate;
          else await stop(candidate);
        }
        if (reused === null) {
          await replacing.catch(() => {});
          return t.skip(`pid ${target} could not be taken again (other processes took it first)`);
        }
        const pidFile = await replacing;
        pidFile.release();
        assert.ok(isAlive(reused.pid), "the process that reused the pid is alive");
        await sleep(100);
        assert.ok(isAlive(reused.pid), "and was not signalled");
        assert.equal(readProcStat(reused.pid)?.state === "Z", false);
      } finally {
        if (reused) await stop(reused);
        await stop(holder);
      }
    },
  );

  it(
    "acquirePidFile({ replace: true }) that fails (EPERM) leaves no takeover marker (unprivileged replacer)",
    SLOW,
    async (t) => {
      const blocker = await unprivilegedBlocker();
      if (blocker) return t.skip(blocker);
      if (!IS_ROOT) return t.skip("needs root to run the holder as another user than the replacer");
      const dir = freshDir(root);
      fs.chmodSync(dir, 0o777);
      const pidPath = path.join(dir, "service.pid");
      const holder = startService(pidPath);
      try {
        await holder.waitFor("stdout", /^acquired/);
        const held = fs.readFileSync(pidPath, "utf8");
        const env = { ...process.env, HOME: dir, DENO_DIR: path.join(dir, ".deno") };
        const replacer = startFixture(SERVICE, [pidPath, JSON.stringify({ acquire: { replace: true } })], {
          wrap: AS_NOBODY,
          env,
        });
        const outcome = await replacer.waitFor("stdout", /^(acquired|locked|error)/);
        await replacer.exited;
        assert.equal(outcome, "error PidFileError EPERM", replacer.stderr.join("\n"));
        assert.ok(!fs.existsSync(pidPath + ".takeover.json"), "the failed replace removed its marker");
        assert.ok(isAlive(holder.pid));
        assert.equal(fs.readFileSync(pidPath, "utf8"), held);
      } finally {
        await stop(holder);
      }
    },
  );

  it("acquirePidFile({ replace: true }) never signals a live pid whose command differs from a record without start ticks", async () => {
    const sleeper = startSleep();
    try {
      const pidPath = freshPidPath();
      writeRecord(pidPath, { pid: sleeper.pid, argv: ["/usr/bin/node", "/srv/gateway.ts", "--serve"] });
      await assert.rejects(
        acquirePidFile(pidPath, { replace: true, replaceTimeoutMs: 100 }),
        (error: unknown) => {
          assert.ok(error instanceof PidFileLockedError, String(error));
          assert.match(error.message, /another command/);
          return true;
        },
      );
      assert.ok(isAlive(sleeper.pid));
      assert.ok(!fs.existsSync(pidPath + ".takeover.json"));
    } finally {
      await stop(sleeper);
    }
  });

  it("acquirePidFile() writes no secret from argv into the record", SLOW, async () => {
    const pidPath = freshPidPath();
    const service = startFixture(SERVICE, [
      pidPath,
      "{}",
      "--token",
      "s3cr3t-token-value",
      "--api-key=k3y-value",
      "https://admin:pa55w0rd@db.example/app",
      "--region",
      "eu-west-1",
    ]);
    try {
      await service.waitFor("stdout", /^acquired/);
      const text = fs.readFileSync(pidPath, "utf8");
      for (const secret of ["s3cr3t-token-value", "k3y-value", "pa55w0rd"]) {
        assert.ok(!text.includes(secret), `${secret} is in the record: ${text}`);
      }
      const argv = readJson(pidPath).argv as string[];
      assert.ok(argv.includes("--token") && argv.includes("eu-west-1"), JSON.stringify(argv));
      assert.equal(fs.statSync(pidPath).mode & 0o777, 0o644); // the documented default mode
    } finally {
      await stop(service);
    }
  });

  it("acquirePidFile() refreshes the record's mtime every heartbeatMs, and release() stops it", async () => {
    const pidPath = freshPidPath();
    const pidFile = await acquirePidFile(pidPath, { heartbeatMs: 20 });
    const first = fs.statSync(pidPath).mtimeMs;
    const text = fs.readFileSync(pidPath, "utf8");
    let later = first;
    for (let i = 0; i < 100 && later === first; i += 1) {
      await sleep(20);
      later = fs.statSync(pidPath).mtimeMs;
    }
    assert.ok(later > first, "the mtime moved");
    assert.equal(fs.readFileSync(pidPath, "utf8"), text, "the record itself is unchanged");
    assert.equal(readJson(pidPath).heartbeatMs, 20);
    pidFile.release();
    fs.writeFileSync(pidPath, text); // someone else's file now: no heartbeat may touch it
    const after = fs.statSync(pidPath).mtimeMs;
    await sleep(100);
    assert.equal(fs.statSync(pidPath).mtimeMs, after);
  });

  it("acquirePidFile() judges a record of another PID namespace by its heartbeat: fresh blocks, stale is replaced", async () => {
    const pidPath = freshPidPath();
    const foreign = { pid: 1, startTicks: 5, bootId: null, pidNamespace: "pid:[1]", heartbeatMs: 1000 };
    writeRecord(pidPath, foreign);
    await assert.rejects(acquirePidFile(pidPath), (error: unknown) => {
      assert.ok(error instanceof PidFileLockedError);
      assert.equal(error.foreignNamespace, true);
      assert.equal(error.foreignHost, false);
      return true;
    });
    const old = new Date(Date.now() - 3 * 1000 - 100);
    fs.utimesSync(pidPath, old, old);
    const status = readPidFile(pidPath);
    assert.equal(status.state, "stale");
    assert.match(status.state === "stale" ? status.reason : "", /heartbeat stopped/);
    const pidFile = await acquirePidFile(pidPath);
    pidFile.release();
  });

  it("acquirePidFile() sweeps a killed starter's temporary file on an absent path too", async () => {
    const pidPath = freshPidPath();
    const dir = path.dirname(pidPath);
    const gone = await deadPid();
    const litter = `service.pid.${gone}.1.x1y2.tmp`;
    fs.writeFileSync(
      path.join(dir, litter),
      JSON.stringify({ pid: gone, startTime: 1, hostname: hostname() }),
    );
    const pidFile = await acquirePidFile(pidPath);
    pidFile.release();
    assert.deepEqual(fs.readdirSync(dir), []);
  });

  it(
    "acquirePidFile() and readPidFile() on Deno without -A throw a PidFileError naming the permission",
    SLOW,
    async (t) => {
      if (!fs.existsSync(RUNTIME_BIN("deno"))) return t.skip("the pinned Deno is not installed");
      const pidPath = freshPidPath();
      for (const op of ["acquire", "read"]) {
        const run = start(RUNTIME_BIN("deno"), [
          "run",
          "--allow-read",
          "--allow-write",
          "--allow-env",
          "--quiet",
          PROBE,
          op,
          pidPath,
        ]);
        const line = await run.waitFor("stdout", /^\{/);
        await run.exited;
        const { error } = JSON.parse(line) as { error?: Record<string, unknown> };
        assert.ok(error, `${op}: ${line}`);
        assert.equal(error.name, "PidFileError", line);
        assert.equal(error.path, pidPath);
        assert.match(String(error.message), /--allow-all/);
        assert.ok(!fs.existsSync(pidPath), `${op}: nothing written`);
      }
    },
  );
});

// ---------------------------------------------------------------------------------------------------
// platform additions used here
// ---------------------------------------------------------------------------------------------------
