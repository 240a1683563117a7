import { describe, it } from "node:test";
import assert from "node:assert/strict";
import { Buffer } from "node:buffer";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import process from "node:process";
import { readProcCmdline, scriptCommand, signalListenerCount } from "../platform.ts";
import {
  fixture,
  killChild,
  type Running,
  signalTwice,
  sleep,
  start,
  startFixture,
  type StartOptions,
  tempDir,
  waitUntil,
} from "./_helpers.ts";
import {
  checkSystemdStopTimeout,
  formatShutdownContext,
  installShutdown,
  parseSystemdTimespan,
  redactArgv,
  type ShutdownContext,
  shutdownContextToJSON,
  snapshotShutdownContext,
  spawnShutdownDiagnostic,
} from "../shutdown.ts";

const SNAPSHOT_FIXTURE = fixture("shutdown_snapshot.ts");
const INSTALL_FIXTURE = fixture("shutdown_install.ts");
const ORPHAN_FIXTURE = fixture("shutdown_diag_orphan.ts");
const SLOW = { timeout: 60_000 };
const MIB = 1024 * 1024;
/** The most one diagnostic run appends to its log (documented on DiagnosticOptions.maxLogBytes). */
const DIAGNOSTIC_RUN_MAX_BYTES = 256 * 1024;

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

function signal(pid: number, name: NodeJS.Signals): void {
  process.kill(pid, name);
}

function snapshotArgs(pidFile: string | undefined, mode = "redacted"): string[] {
  return [pidFile ?? "-", mode];
}

/** Spawns the snapshot fixture (optionally through a wrapper command), signals it, returns its snapshot. */
async function childSnapshot(
  options: {
    pidFile?: string;
    mode?: string;
    env?: Record<string, string | undefined>;
    wrap?: (command: string, args: string[]) => { command: string; args: string[] };
    beforeSignal?: (pid: number) => void;
  } = {},
): Promise<{ ctx: ShutdownContext; wrapperPid: number }> {
  const base = scriptCommand(SNAPSHOT_FIXTURE, snapshotArgs(options.pidFile, options.mode));
  const { command, args } = options.wrap ? options.wrap(base.command, base.args) : base;
  const running = start(command, args, { env: options.env });
  const ready = await running.waitFor("stdout", /^ready \d+$/);
  const pid = Number(ready.split(" ")[1]);
  options.beforeSignal?.(pid);
  signal(pid, "SIGUSR1");
  const json = await running.waitFor("stdout", /^\{/);
  const result = await running.exited;
  assert.equal(result.code, 0, running.stderr.join("\n"));
  return { ctx: JSON.parse(json) as ShutdownContext, wrapperPid: running.child.pid! };
}

// ---------------------------------------------------------------------------------------------------
// snapshotShutdownContext
// ---------------------------------------------------------------------------------------------------

describe("snapshotShutdownContext()", () => {
  it(
    "snapshotShutdownContext() reports pid, ppid and the redacted parent cmdline of a real child",
    SLOW,
    async () => {
      const wrap = (command: string, args: string[]) => ({
        command: "sh",
        args: ["-c", '"$@"; exit $?', "wrapper", command, ...args, "--token", "hunter2", "API_KEY=abc123"],
      });
      // The fixture ignores extra arguments; the wrapper shell (its parent) carries the credentials.
      const { ctx, wrapperPid } = await childSnapshot({ wrap });
      assert.equal(ctx.signal, "SIGUSR1");
      assert.equal(ctx.signalNumber, os.constants.signals.SIGUSR1);
      assert.equal(ctx.ppid, wrapperPid);
      assert.equal(ctx.parent.pid, wrapperPid);
      assert.equal(ctx.self.pid, ctx.pid);
      assert.equal(ctx.self.ppid, wrapperPid);
      assert.equal(ctx.parent.name, "sh");
      assert.equal(ctx.parent.ppid, process.pid);
      assert.equal(ctx.parent.uid, process.getuid!());
      assert.match(ctx.parent.state!, /^[RSDTtZXIWPK]$/);
      assert.match(ctx.parent.cmdline!, /^(\S*\/)?sh -c /);
      assert.match(ctx.parent.cmdline!, /--token \*\*\* API_KEY=\*\*\*/);
      assert.doesNotMatch(ctx.parent.cmdline!, /hunter2|abc123/);
      assert.match(ctx.self.cmdline!, /shutdown_snapshot\.ts/);
      assert.equal(typeof ctx.ts, "string");
      assert.ok(!Number.isNaN(Date.parse(ctx.ts)));
      assert.equal(typeof ctx.tsMonotonic, "number");
      assert.equal(typeof ctx.loadavg1m, "number");
      assert.equal(ctx.tracerPid, 0);
      assert.equal(ctx.tracer, undefined);
    },
  );

  it(
    'snapshotShutdownContext() keeps credentials with cmdline "full" and drops command lines with "none"',
    SLOW,
    async () => {
      const wrap = (command: string, args: string[]) => ({
        command: "sh",
        args: ["-c", '"$@"; exit $?', "wrapper", command, ...args, "--password", "hunter2"],
      });
      const full = await childSnapshot({ wrap, mode: "full" });
      assert.match(full.ctx.parent.cmdline!, /--password hunter2/);
      const none = await childSnapshot({ wrap, mode: "none" });
      assert.equal(none.ctx.parent.cmdline, undefined);
      assert.equal(none.ctx.self.cmdline, undefined);
      assert.equal(none.ctx.parent.name, "sh");
    },
  );

  it("snapshotShutdownContext() redacts before cutting the cmdline to 300 characters", SLOW, async () => {
    const padding = "p".repeat(250);
    const wrap = (command: string, args: string[]) => ({
      command: "sh",
      args: ["-c", `"$@"; exit $? # ${padding}`, "w", command, ...args, "--api-key=SECRETSECRETSECRETSECRET"],
    });
    const { ctx } = await childSnapshot({ wrap });
    assert.ok(ctx.parent.cmdline!.length <= 300, `length ${ctx.parent.cmdline!.length}`);
    assert.doesNotMatch(ctx.parent.cmdline!, /SECR|ECRE/);
    const full = await childSnapshot({ wrap, mode: "full" });
    assert.equal(full.ctx.parent.cmdline!.length, 300);
  });

  it(
    "snapshotShutdownContext() reports INVOCATION_ID and JOURNAL_STREAM from the environment",
    SLOW,
    async () => {
      const env = {
        ...process.env,
        INVOCATION_ID: "0123456789abcdef0123456789abcdef",
        JOURNAL_STREAM: "8:12345",
      };
      const { ctx } = await childSnapshot({ env });
      assert.equal(ctx.underSystemd, true);
      assert.equal(ctx.systemdInvocationId, "0123456789abcdef0123456789abcdef");
      assert.equal(ctx.systemdJournalStream, "8:12345");
      const plain = { ...process.env };
      delete plain.INVOCATION_ID;
      delete plain.JOURNAL_STREAM;
      const without = await childSnapshot({ env: plain });
      assert.equal(without.ctx.systemdInvocationId, undefined);
      assert.equal(without.ctx.systemdJournalStream, undefined);
      assert.equal(without.ctx.underSystemd, without.ctx.ppid === 1);
    },
  );

  it(
    "snapshotShutdownContext() reads takeover and planned-stop markers naming the child itself",
    SLOW,
    async () => {
      const dir = tempDir();
      try {
        const pidFile = path.join(dir, "app.pid");
        const takeoverAt = new Date().toISOString();
        const plannedAt = new Date(Date.now() + 1).toISOString();
        const { ctx } = await childSnapshot({
          pidFile,
          beforeSignal: (pid) => {
            fs.writeFileSync(
              `${pidFile}.takeover.json`,
              JSON.stringify({ targetPid: pid, byPid: 4242, at: takeoverAt }),
            );
            fs.writeFileSync(
              `${pidFile}.planned-stop.json`,
              JSON.stringify({ pid, at: plannedAt, reason: "deploy" }),
            );
          },
        });
        assert.deepEqual(ctx.takeoverMarker, {
          targetPid: ctx.pid,
          byPid: 4242,
          at: takeoverAt,
        });
        assert.equal(ctx.takeoverMarkerForSelf, true);
        assert.deepEqual(ctx.plannedStopMarker, {
          pid: ctx.pid,
          at: plannedAt,
          reason: "deploy",
        });
        assert.equal(ctx.plannedStopMarkerForSelf, true);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it(
    "snapshotShutdownContext() does not take markers naming our pid from before we started as ours",
    SLOW,
    async () => {
      const dir = tempDir();
      try {
        // An earlier process with the same pid (pid 1 in a container, pid reuse) left these behind.
        const pidFile = path.join(dir, "app.pid");
        const { ctx } = await childSnapshot({
          pidFile,
          beforeSignal: (pid) => {
            const before = new Date(Date.now() - 3_600_000).toISOString();
            fs.writeFileSync(
              `${pidFile}.takeover.json`,
              JSON.stringify({ targetPid: pid, byPid: 7, at: before }),
            );
            fs.writeFileSync(`${pidFile}.planned-stop.json`, JSON.stringify({ pid, at: before }));
          },
        });
        assert.equal(ctx.takeoverMarker?.targetPid, ctx.pid);
        assert.equal(ctx.takeoverMarkerForSelf, false);
        assert.equal(ctx.plannedStopMarker?.pid, ctx.pid);
        assert.equal(ctx.plannedStopMarkerForSelf, false);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it(
    "snapshotShutdownContext() reports a takeover marker naming another process as not for self",
    SLOW,
    async () => {
      const dir = tempDir();
      try {
        const pidFile = path.join(dir, "app.pid");
        fs.writeFileSync(
          `${pidFile}.takeover.json`,
          JSON.stringify({ targetPid: 999_999_9, byPid: 7, at: "x" }),
        );
        const { ctx } = await childSnapshot({ pidFile });
        assert.equal(ctx.takeoverMarker?.targetPid, 999_999_9);
        assert.equal(ctx.takeoverMarkerForSelf, false);
        assert.equal(ctx.plannedStopMarker, undefined);
        assert.equal(ctx.plannedStopMarkerForSelf, undefined);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("snapshotShutdownContext() reports TracerPid and the tracer under a real strace -f", SLOW, async (t) => {
    const probe = spawnSync("strace", ["-f", "-o", "/dev/null", "true"], { stdio: "ignore" });
    if (probe.error || probe.status !== 0) {
      t.skip(`strace is missing or ptrace is not permitted here (${probe.error?.message ?? probe.status})`);
      return;
    }
    const wrap = (command: string, args: string[]) => ({
      command: "strace",
      args: ["-f", "-o", "/dev/null", command, ...args],
    });
    const { ctx, wrapperPid } = await childSnapshot({ wrap });
    assert.equal(ctx.tracerPid, wrapperPid);
    assert.equal(ctx.tracer?.pid, wrapperPid);
    assert.equal(ctx.tracer?.name, "strace");
    assert.match(ctx.tracer?.cmdline ?? "", /^(\S*\/)?strace -f -o \/dev\/null /);
    assert.ok(formatShutdownContext(ctx).includes(` tracer_pid=${wrapperPid} tracer_name=strace `));
  });

  it("snapshotShutdownContext() names unknown signals UNKNOWN and keeps their number", () => {
    const unknownNumber = snapshotShutdownContext(99);
    assert.equal(unknownNumber.signal, "UNKNOWN");
    assert.equal(unknownNumber.signalNumber, 99);
    assert.deepEqual(
      [snapshotShutdownContext("SIGFOO").signal, snapshotShutdownContext("SIGFOO").signalNumber],
      ["UNKNOWN", null],
    );
    assert.equal(snapshotShutdownContext().signal, "UNKNOWN");
    assert.equal(snapshotShutdownContext().signalNumber, null);
    assert.equal(snapshotShutdownContext(-3).signal, "UNKNOWN");
    assert.equal(snapshotShutdownContext(1.5).signalNumber, null);
    assert.equal(snapshotShutdownContext("term").signal, "SIGTERM");
    assert.equal(snapshotShutdownContext("TERM").signalNumber, 15);
    assert.equal(snapshotShutdownContext(15).signal, "SIGTERM");
    assert.equal(snapshotShutdownContext("9").signal, "SIGKILL");
    assert.equal(snapshotShutdownContext("SIGINT").signalNumber, 2);
  });

  it("snapshotShutdownContext() never throws on absent, garbage or odd marker files", () => {
    const dir = tempDir();
    try {
      const pidFile = path.join(dir, "app.pid");
      assert.equal(snapshotShutdownContext("SIGTERM", { pidFile }).takeoverMarker, undefined);
      fs.writeFileSync(`${pidFile}.takeover.json`, "{not json");
      fs.writeFileSync(`${pidFile}.planned-stop.json`, JSON.stringify({ pid: "12" }));
      const garbage = snapshotShutdownContext("SIGTERM", { pidFile });
      assert.equal(garbage.takeoverMarker, undefined);
      assert.equal(garbage.plannedStopMarker, undefined);
      fs.rmSync(`${pidFile}.takeover.json`);
      fs.mkdirSync(`${pidFile}.takeover.json`); // a directory where the marker should be
      fs.writeFileSync(`${pidFile}.planned-stop.json`, "[1,2]");
      const odd = snapshotShutdownContext("SIGTERM", { pidFile });
      assert.equal(odd.takeoverMarker, undefined);
      assert.equal(odd.plannedStopMarker, undefined);
      const nested = snapshotShutdownContext("SIGTERM", { pidFile: path.join(dir, "no", "such", "x.pid") });
      assert.equal(nested.pid, process.pid);
      const bogus = snapshotShutdownContext("SIGTERM", { cmdline: "bogus" as "full" });
      assert.equal(bogus.self.cmdline, redactArgv(readProcCmdline(process.pid)!).join(" ").slice(0, 300));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("snapshotShutdownContext() of this process agrees with /proc and is JSON-safe", () => {
    const ctx = snapshotShutdownContext("SIGTERM");
    assert.equal(ctx.pid, process.pid);
    assert.equal(ctx.ppid, process.ppid);
    assert.equal(ctx.self.uid, process.getuid!());
    assert.deepEqual(JSON.parse(JSON.stringify(ctx)), ctx);
    assert.deepEqual(JSON.parse(shutdownContextToJSON(ctx)), ctx);
    const argv = readProcCmdline(process.pid)!;
    assert.equal(ctx.self.cmdline, redactArgv(argv).join(" ").slice(0, 300));
  });

  it('snapshotShutdownContext() names a process after its program, not Node\'s "MainThread"', () => {
    const ctx = snapshotShutdownContext("SIGTERM");
    const comm = fs.readFileSync(`/proc/${process.pid}/comm`, "utf8").trim();
    assert.notEqual(ctx.self.name, "MainThread");
    const program = readProcCmdline(process.pid)![0];
    assert.equal(ctx.self.name, comm === "MainThread" ? path.basename(program) : comm);
  });
});

// ---------------------------------------------------------------------------------------------------
// formatShutdownContext
// ---------------------------------------------------------------------------------------------------

/** Parses a formatShutdownContext() line back into pairs (quoted values are JSON strings). */
function parseLine(line: string): Array<[string, string]> {
  const pairs: Array<[string, string]> = [];
  const pattern = /([a-z_0-9]+)=("(?:[^"\\]|\\.)*"|[^ ]*)( |$)/gy;
  let match: RegExpExecArray | null;
  while ((match = pattern.exec(line)) !== null) {
    const raw = match[2];
    pairs.push([match[1], raw.startsWith('"') ? JSON.parse(raw) : raw]);
    if (pattern.lastIndex >= line.length) break;
  }
  assert.equal(pattern.lastIndex, line.length, `unparsed rest of line: ${line.slice(pattern.lastIndex)}`);
  return pairs;
}

function sampleContext(): ShutdownContext {
  return {
    ts: "2025-01-02T03:04:05.678Z",
    tsMonotonic: 1234.5,
    signal: "SIGTERM",
    signalNumber: 15,
    pid: 100,
    ppid: 1,
    self: { pid: 100, name: "app", state: "S", ppid: 1, uid: 1000, cmdline: "node app.js" },
    parent: { pid: 1, name: "systemd", state: "S", ppid: 0, uid: 0, cmdline: 'evil "quoted"\nname=x\ttab' },
    underSystemd: true,
    systemdInvocationId: "abc",
    systemdJournalStream: "8:9",
    loadavg1m: 0.123,
    tracerPid: 0,
    takeoverMarker: { targetPid: 100, byPid: 200, at: "2025-01-02T03:04:00Z" },
    takeoverMarkerForSelf: true,
  };
}

describe("formatShutdownContext()", () => {
  it("formatShutdownContext() writes one line, signal= first, parent_cmdline= last and quoted", () => {
    const ctx = sampleContext();
    const line = formatShutdownContext(ctx);
    assert.ok(!line.includes("\n") && !line.includes("\r"), line);
    assert.ok(line.startsWith("signal=SIGTERM "), line);
    const pairs = parseLine(line);
    assert.deepEqual(pairs[0], ["signal", "SIGTERM"]);
    assert.deepEqual(pairs[pairs.length - 1], ["parent_cmdline", ctx.parent.cmdline]);
    assert.match(line, / parent_cmdline="[^\n]*"$/);
    const map = new Map(pairs);
    assert.equal(map.get("signal_number"), "15");
    assert.equal(map.get("pid"), "100");
    assert.equal(map.get("parent_pid"), "1");
    assert.equal(map.has("ppid"), false);
    assert.equal(map.get("parent_name"), "systemd");
    assert.equal(map.get("under_systemd"), "true");
    assert.equal(map.get("invocation_id"), "abc");
    assert.equal(map.get("takeover_for_self"), "true");
    assert.equal(map.get("self_cmdline"), "node app.js");
    assert.equal(map.get("loadavg_1m"), "0.12");
  });

  it("formatShutdownContext() quotes values that hold spaces, quotes, separators or line breaks", () => {
    const ctx = sampleContext();
    ctx.self.name = "my app";
    ctx.parent.cmdline = "a\u2028b\u2029c";
    ctx.reason = 'said "stop"';
    const line = formatShutdownContext(ctx);
    assert.ok(!/[\n\r\u2028\u2029]/.test(line));
    const map = new Map(parseLine(line));
    assert.equal(map.get("self_name"), "my app");
    assert.equal(map.get("parent_cmdline"), "a\u2028b\u2029c");
    assert.equal(map.get("reason"), 'said "stop"');
  });

  it("formatShutdownContext() always ends with parent_cmdline, empty when unknown", () => {
    const ctx = sampleContext();
    delete ctx.parent.cmdline;
    assert.match(formatShutdownContext(ctx), / parent_cmdline=""$/);
    const live = formatShutdownContext(snapshotShutdownContext("SIGINT"));
    assert.ok(live.startsWith("signal=SIGINT signal_number=2 "), live);
    assert.equal(parseLine(live).at(-1)![0], "parent_cmdline");
  });

  it("shutdownContextToJSON() gives one parseable line that round-trips the context", () => {
    const ctx = sampleContext();
    ctx.parent.cmdline = "x\u2028y";
    const json = shutdownContextToJSON(ctx);
    assert.ok(!/[\n\u2028]/.test(json));
    assert.deepEqual(JSON.parse(json), ctx);
  });
});

// ---------------------------------------------------------------------------------------------------
// parseSystemdTimespan
// ---------------------------------------------------------------------------------------------------

const TIMESPAN_CORPUS: string[] = (() => {
  const corpus = [
    "0",
    "1",
    "5",
    "007",
    "+5",
    " +5",
    "-5",
    "-0",
    "+0",
    "5 -5",
    "--5",
    "+-5",
    "++5",
    "+",
    "-",
    "",
    " ",
    "\t",
    "\n",
    "  5  ",
    "\t5s\n",
    "\v5",
    "5\v",
    "\f5s",
    ".5",
    ".5s",
    "0.5",
    "1.5",
    "1.5.5",
    "1.5 .5",
    "1.5s.5",
    "5.",
    "5.s",
    ".",
    ".s",
    "3.hoge",
    "0.-0",
    "3. 1",
    "1.5us",
    "1.9usec",
    "0.123456789s",
    "1.0000001s",
    "2.999999999ms",
    "0.00000001h",
    "1h30m",
    "1h 30m",
    "1 h 30 m",
    "1h30",
    "30m1h",
    "1min 30s",
    "1min30s",
    "1.5h",
    "2.5d",
    "5s",
    "5sec",
    "5second",
    "5seconds",
    "5secs",
    "5 s",
    "5  seconds",
    "5m",
    "5min",
    "5minute",
    "5minutes",
    "5mins",
    "5M",
    "5Min",
    "5month",
    "5months",
    "5mo",
    "1.5M",
    "5ms",
    "5msec",
    "5 ms",
    "5MS",
    "5Ms",
    "5us",
    "5usec",
    "5μs",
    "5µs",
    "5 us",
    "5μ",
    "5u",
    "5h",
    "5hr",
    "5hour",
    "5hours",
    "5hrs",
    "5H",
    "5d",
    "5day",
    "5days",
    "5D",
    "5w",
    "5week",
    "5weeks",
    "5W",
    "1y",
    "1year",
    "1years",
    "1Y",
    "0.5y",
    "100y",
    "584542y",
    "584543y",
    "infinity",
    " infinity",
    "infinity ",
    "infinity\t",
    "Infinity",
    "INFINITY",
    "inf",
    "infinitys",
    "5 infinity",
    "infinity 5",
    "infinityinfinity",
    "1e3",
    "0x10",
    "1,5",
    "1_000",
    "abc",
    "5 abc",
    "s",
    "5ss",
    "5 5",
    "5 5 5",
    "1 2 3s",
    "9223372036854775807",
    "9223372036854775807us",
    "9223372036854775808us",
    "18446744073709551615us",
    "18446744073709551614us",
    "18446744073709551616",
    "99999999999999999999",
    "18446744073709s",
    "18446744073710s",
    "18446744073709.551614s",
    "18446744073709.551615s",
    "9007199254740993us",
    "213503982336d",
    "213503982335d 23h",
    "1s1s1s",
    "1ms1us",
    "1us1ms",
    "1d 1h 1m 1s 1ms 1us",
    "0.1s0.1s",
    "1h\n30m",
    "1h\r30m",
    "1h\t\t30m",
    "２s",
    "5 ",
    "5\u00a0s",
    "5s\u00a0",
  ];
  for (const unit of ["us", "ms", "s", "min", "h", "d", "w", "M", "y"]) {
    for (const number of ["3", "0.25", "12.5", "999999"]) {
      corpus.push(`${number}${unit}`, `${number} ${unit}`);
    }
  }
  return corpus;
})();

/** What `systemd-analyze timespan` says: microseconds as a BigInt, or null when it rejects the text. */
function systemdAnalyze(text: string, lang: string): bigint | null {
  const result = spawnSync("systemd-analyze", ["timespan", "--", text], {
    encoding: "utf8",
    env: { ...process.env, LANG: lang, LC_ALL: lang },
  });
  if (result.error) throw result.error;
  if (result.status !== 0) return null;
  const match = /^\s*(?:μs|µs|us):\s*(\d+)\s*$/m.exec(result.stdout);
  if (!match) {
    throw new Error(`unexpected systemd-analyze output for ${JSON.stringify(text)}: ${result.stdout}`);
  }
  return BigInt(match[1]);
}

describe("parseSystemdTimespan()", () => {
  it(
    `parseSystemdTimespan() agrees with systemd-analyze timespan on ${TIMESPAN_CORPUS.length} strings`,
    SLOW,
    (t) => {
      const probe = spawnSync("systemd-analyze", ["timespan", "1s"], { encoding: "utf8" });
      if (probe.error || probe.status !== 0) {
        t.skip(`systemd-analyze is not available here (${probe.error?.message ?? probe.stderr})`);
        return;
      }
      assert.ok(TIMESPAN_CORPUS.length >= 100);
      const disagreements: string[] = [];
      let valid = 0;
      for (const [index, text] of TIMESPAN_CORPUS.entries()) {
        // Alternate locales: systemd prints "μs:" under UTF-8 and "us:" under C.
        const expected = systemdAnalyze(text, index % 2 === 0 ? "C" : "C.UTF-8");
        const want = expected === null ? null : expected === (1n << 64n) - 1n ? Infinity : Number(expected);
        if (want !== null) valid += 1;
        const got = parseSystemdTimespan(text);
        if (got !== want) disagreements.push(`${JSON.stringify(text)}: systemd ${want}, ours ${got}`);
      }
      assert.deepEqual(disagreements, []);
      assert.ok(
        valid >= 40 && TIMESPAN_CORPUS.length - valid >= 40,
        `valid ${valid} of ${TIMESPAN_CORPUS.length}`,
      );
    },
  );

  it("parseSystemdTimespan() knows the unit lengths and the edge cases", () => {
    assert.equal(parseSystemdTimespan("1M"), 2_629_800_000_000);
    assert.equal(parseSystemdTimespan("1y"), 31_557_600_000_000);
    assert.equal(parseSystemdTimespan("1w"), 604_800_000_000);
    assert.equal(parseSystemdTimespan("90"), 90_000_000);
    assert.equal(parseSystemdTimespan("1min 30s"), 90_000_000);
    assert.equal(parseSystemdTimespan("0"), 0);
    assert.equal(parseSystemdTimespan("infinity"), Infinity);
    assert.equal(parseSystemdTimespan(""), null);
    assert.equal(parseSystemdTimespan("-1s"), null);
    assert.equal(parseSystemdTimespan("1.9us"), 1);
    assert.equal(parseSystemdTimespan("5\0s"), null);
    assert.equal(parseSystemdTimespan(42 as unknown as string), null);
  });
});

// ---------------------------------------------------------------------------------------------------
// checkSystemdStopTimeout
// ---------------------------------------------------------------------------------------------------

/** A temp dir with a fake `systemctl` that logs its arguments and prints `output` (exit `code`). */
function fakeSystemctl(dir: string, output: string, options: { code?: number; sleep?: number } = {}) {
  const bin = path.join(dir, "bin");
  fs.mkdirSync(bin, { recursive: true });
  const argsLog = path.join(dir, "systemctl.args");
  const script = [
    "#!/bin/sh",
    `printf '%s\\n' "$*" >> '${argsLog}'`,
    options.sleep ? `sleep ${options.sleep}` : "",
    `printf '%s\\n' '${output}'`,
    `exit ${options.code ?? 0}`,
  ].join("\n");
  fs.writeFileSync(path.join(bin, "systemctl"), script + "\n", { mode: 0o755 });
  const cgroup = (content: string) => {
    const file = path.join(dir, `cgroup-${Math.random().toString(36).slice(2)}`);
    fs.writeFileSync(file, content);
    return file;
  };
  return {
    env: { ...process.env, PATH: `${bin}:${process.env.PATH ?? ""}` },
    systemctl: path.join(bin, "systemctl"),
    calls: () => fs.existsSync(argsLog) ? fs.readFileSync(argsLog, "utf8").trim().split("\n") : [],
    cgroup,
  };
}

describe("checkSystemdStopTimeout()", () => {
  it(
    "checkSystemdStopTimeout() asks systemctl about our system unit and flags a short TimeoutStopSec",
    SLOW,
    async () => {
      const dir = tempDir();
      try {
        const fake = fakeSystemctl(dir, "TimeoutStopUSec=1min 30s");
        const cgroupPath = fake.cgroup("0::/system.slice/app.service\n");
        const short = await checkSystemdStopTimeout(70, { cgroupPath, env: fake.env });
        assert.deepEqual(short, {
          unit: "app.service",
          timeoutStopSec: 90,
          drainSeconds: 70,
          expectedMinSec: 100,
          mismatch: true,
        });
        const fine = await checkSystemdStopTimeout(30, { cgroupPath, env: fake.env, headroomSeconds: 10 });
        assert.equal(fine?.mismatch, false);
        assert.equal(fine?.expectedMinSec, 40);
        assert.deepEqual(fake.calls(), [
          "show app.service -p TimeoutStopUSec",
          "show app.service -p TimeoutStopUSec",
        ]);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("checkSystemdStopTimeout() uses --user for a unit under user@UID.service", SLOW, async () => {
    const dir = tempDir();
    try {
      const fake = fakeSystemctl(dir, "TimeoutStopUSec=45s");
      const cgroupPath = fake.cgroup(
        "0::/user.slice/user-1000.slice/user@1000.service/app.slice/worker.service\n",
      );
      const check = await checkSystemdStopTimeout(20, { cgroupPath, systemctl: fake.systemctl });
      assert.equal(check?.unit, "worker.service");
      assert.equal(check?.timeoutStopSec, 45);
      assert.equal(check?.mismatch, true); // 45 < 20 + 30
      assert.deepEqual(fake.calls(), ["--user show worker.service -p TimeoutStopUSec"]);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it(
    "checkSystemdStopTimeout() reads cgroup v1 name=systemd lines, numeric microseconds and infinity",
    SLOW,
    async () => {
      const dir = tempDir();
      try {
        const v1 = "12:pids:/system.slice/db.service\n1:name=systemd:/system.slice/db.service\n";
        const numeric = fakeSystemctl(path.join(dir, "n"), "TimeoutStopUSec=120000000");
        const check = await checkSystemdStopTimeout(60, { cgroupPath: numeric.cgroup(v1), env: numeric.env });
        assert.equal(check?.unit, "db.service");
        assert.equal(check?.timeoutStopSec, 120);
        assert.equal(check?.mismatch, false); // 120 >= 60 + 30
        const endless = fakeSystemctl(path.join(dir, "i"), "TimeoutStopUSec=infinity");
        const unbounded = await checkSystemdStopTimeout(3600, {
          cgroupPath: endless.cgroup("0::/system.slice/db.service/sub\n"),
          env: endless.env,
        });
        assert.equal(unbounded?.unit, "db.service");
        assert.equal(unbounded?.timeoutStopSec, Infinity);
        assert.equal(unbounded?.mismatch, false);
        const fractional = fakeSystemctl(path.join(dir, "f"), "TimeoutStopUSec=1min 500ms");
        const check2 = await checkSystemdStopTimeout(0, {
          cgroupPath: fractional.cgroup("0::/system.slice/x.service\n"),
          env: fractional.env,
          headroomSeconds: 60.5,
        });
        assert.equal(check2?.timeoutStopSec, 60.5);
        assert.equal(check2?.mismatch, false);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it(
    "checkSystemdStopTimeout() answers null outside a service or when systemctl cannot tell",
    SLOW,
    async () => {
      const dir = tempDir();
      try {
        const fake = fakeSystemctl(dir, "TimeoutStopUSec=90s");
        const opts = (content: string) => ({ cgroupPath: fake.cgroup(content), env: fake.env });
        assert.equal(
          await checkSystemdStopTimeout(1, opts("0::/user.slice/user-1000.slice/session-2.scope\n")),
          null,
        );
        assert.equal(await checkSystemdStopTimeout(1, opts("0::/\n")), null);
        assert.equal(
          await checkSystemdStopTimeout(
            1,
            opts("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n"),
          ),
          null,
        );
        assert.equal(await checkSystemdStopTimeout(1, opts("garbage")), null);
        assert.equal(
          await checkSystemdStopTimeout(1, { cgroupPath: path.join(dir, "absent"), env: fake.env }),
          null,
        );
        assert.deepEqual(fake.calls(), [], "systemctl must not be asked outside a service");

        const failing = fakeSystemctl(path.join(dir, "fail"), "Failed to connect to bus", { code: 1 });
        const unit = "0::/system.slice/app.service\n";
        assert.equal(
          await checkSystemdStopTimeout(1, { cgroupPath: failing.cgroup(unit), env: failing.env }),
          null,
        );
        const nonsense = fakeSystemctl(path.join(dir, "bad"), "TimeoutStopUSec=soon");
        assert.equal(
          await checkSystemdStopTimeout(1, { cgroupPath: nonsense.cgroup(unit), env: nonsense.env }),
          null,
        );
        const silent = fakeSystemctl(path.join(dir, "silent"), "Description=x");
        assert.equal(
          await checkSystemdStopTimeout(1, { cgroupPath: silent.cgroup(unit), env: silent.env }),
          null,
        );
        const slow = fakeSystemctl(path.join(dir, "slow"), "TimeoutStopUSec=90s", { sleep: 6 });
        const started = Date.now();
        assert.equal(
          await checkSystemdStopTimeout(1, { cgroupPath: slow.cgroup(unit), env: slow.env, timeoutMs: 300 }),
          null,
        );
        assert.ok(Date.now() - started < 5_000, "the slow systemctl was not cut short");
        assert.equal(
          await checkSystemdStopTimeout(1, {
            cgroupPath: fake.cgroup(unit),
            systemctl: path.join(dir, "nope"),
          }),
          null,
        );
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("checkSystemdStopTimeout() rejects a bad drain or headroom with a RangeError", async () => {
    await assert.rejects(checkSystemdStopTimeout(-1), RangeError);
    await assert.rejects(
      checkSystemdStopTimeout(Number.NaN),
      {
        name: "RangeError",
        message: /^Cannot check the stop timeout: 'drainSeconds' must be a finite number >= 0, got NaN$/,
      },
    );
    await assert.rejects(checkSystemdStopTimeout(1, { headroomSeconds: -5 }), {
      name: "RangeError",
      message: /^Cannot check the stop timeout: 'headroomSeconds' must be a finite number >= 0, got -5$/,
    });
    await assert.rejects(checkSystemdStopTimeout(1, { timeoutMs: 0 }), RangeError);
    await assert.rejects(checkSystemdStopTimeout(1, { timeoutMs: 2 ** 31 }), {
      name: "RangeError",
      message: /^Cannot check the stop timeout: 'timeoutMs' must be at most \d+, got 2147483648$/,
    });
  });

  it("checkSystemdStopTimeout() on this host matches what its own cgroup says", SLOW, async () => {
    const text = fs.existsSync("/proc/self/cgroup") ? fs.readFileSync("/proc/self/cgroup", "utf8") : "";
    const result = await checkSystemdStopTimeout(1);
    if (!/\.service(\/|$)/m.test(text)) assert.equal(result, null);
    else assert.ok(result === null || typeof result.timeoutStopSec === "number");
  });
});

// ---------------------------------------------------------------------------------------------------
// spawnShutdownDiagnostic
// ---------------------------------------------------------------------------------------------------

function hasTools(): boolean {
  return spawnSync("sh", ["-c", "command -v ps"], { stdio: "ignore" }).status === 0;
}

/** Waits until `logPath` holds `count` finished diagnostics of `ourPid` (or a timed-out one). */
async function waitForDiagnostic(logPath: string, ourPid = process.pid, count = 1): Promise<string> {
  const end = `=== end of diagnostic pid=${ourPid} ===`;
  await waitUntil(() => {
    const text = fs.existsSync(logPath) ? fs.readFileSync(logPath, "utf8") : "";
    return text.split(end).length - 1 >= count || /timed out after \d+s\]/.test(text);
  }, `a diagnostic of ${ourPid} in ${logPath}`);
  return fs.readFileSync(logPath, "utf8");
}

describe("spawnShutdownDiagnostic()", () => {
  it(
    "spawnShutdownDiagnostic() returns at once and a detached child appends ps, pstree and load to a 0600 log",
    SLOW,
    async (t) => {
      if (!hasTools()) return t.skip("no sh/ps on this host");
      const dir = tempDir();
      const oldMask = process.umask(0o022);
      try {
        const logPath = path.join(dir, "diag.log");
        const pid = spawnShutdownDiagnostic(logPath, "SIGTERM");
        assert.equal(typeof pid, "number");
        // Returned before the child did its work: the log exists (created by us) but holds no end marker yet,
        // or the child was very quick; either way it must be 0600 whatever the umask.
        assert.equal(fs.statSync(logPath).mode & 0o777, 0o600);
        const stat = fs.readFileSync(`/proc/${pid}/stat`, "utf8").slice(
          fs.readFileSync(`/proc/${pid}/stat`, "utf8").lastIndexOf(")") + 2,
        ).split(" ");
        assert.equal(Number(stat[3]), pid, "the child leads its own session"); // field 6: session id
        const text = await waitForDiagnostic(logPath);
        assert.match(
          text,
          new RegExp(`=== keelson shutdown diagnostic: pid=${process.pid} signal=SIGTERM at=`),
        );
        assert.match(text, /--- ps \(top 60 by cpu\)\n\s*PID\s+PPID\s+USER/);
        assert.match(text, /--- load\n\d+\.\d+ \d+\.\d+/);
        if (spawnSync("sh", ["-c", "command -v pstree"]).status === 0) {
          assert.match(text, new RegExp(`--- pstree ${process.pid}\n`));
        }
        assert.match(text, /--- recent oom\/kill lines/);
        const psLines = text.split("--- ps (top 60 by cpu)\n")[1].split("\n---")[0].trim().split("\n");
        assert.ok(psLines.length <= 61, `ps listed ${psLines.length} lines`);
        assert.equal(fs.statSync(logPath).mode & 0o777, 0o600);
      } finally {
        process.umask(oldMask);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("spawnShutdownDiagnostic() narrows an existing log to 0600", SLOW, async (t) => {
    if (!hasTools()) return t.skip("no sh/ps on this host");
    const dir = tempDir();
    try {
      const logPath = path.join(dir, "diag.log");
      fs.writeFileSync(logPath, "older\n", { mode: 0o644 });
      fs.chmodSync(logPath, 0o644);
      assert.equal(typeof spawnShutdownDiagnostic(logPath, "SIGINT"), "number");
      assert.equal(fs.statSync(logPath).mode & 0o777, 0o600);
      const text = await waitForDiagnostic(logPath);
      assert.ok(text.startsWith("older\n"));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it(
    "spawnShutdownDiagnostic() keeps the log under 1 MiB over many runs, dropping the oldest part",
    SLOW,
    async (t) => {
      if (!hasTools()) return t.skip("no sh/ps on this host");
      const dir = tempDir();
      try {
        const logPath = path.join(dir, "diag.log");
        fs.writeFileSync(logPath, "ancient line\n".repeat(Math.ceil((1.5 * MIB) / 13)));
        for (let run = 1; run <= 6; run += 1) {
          const pid = spawnShutdownDiagnostic(logPath, `SIGRUN${run}`, { timeoutSeconds: 20 });
          assert.ok(fs.statSync(logPath).size <= MIB - DIAGNOSTIC_RUN_MAX_BYTES, "trimmed before the run");
          await waitUntil(
            () =>
              fs.readFileSync(logPath, "utf8").includes(`signal=SIGRUN${run} `) &&
              fs.readFileSync(logPath, "utf8").trimEnd().endsWith(
                `=== end of diagnostic pid=${process.pid} ===`,
              ),
            `run ${run} (child ${pid})`,
          );
          assert.ok(fs.statSync(logPath).size <= MIB, `size ${fs.statSync(logPath).size} after run ${run}`);
        }
        const text = fs.readFileSync(logPath, "utf8");
        assert.match(text, /^\[keelson: older diagnostics dropped/);
        assert.match(text, /signal=SIGRUN6 /);
        assert.ok(text.split("ancient line").length - 1 < (1.5 * MIB) / 13, "the oldest part was dropped");
        assert.equal(fs.statSync(logPath).mode & 0o777, 0o600);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("spawnShutdownDiagnostic() outlives the process that started it", SLOW, async (t) => {
    if (!hasTools()) return t.skip("no sh/ps on this host");
    const dir = tempDir();
    try {
      const logPath = path.join(dir, "diag.log");
      const running = startFixture(ORPHAN_FIXTURE, [logPath]);
      const line = await running.waitFor("stdout", /^\d+$/);
      const result = await running.exited;
      assert.equal(result.code, 0);
      const text = await waitForDiagnostic(logPath, running.child.pid);
      assert.match(line, /^\d+$/);
      assert.match(text, new RegExp(`=== end of diagnostic pid=${running.child.pid} ===`));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("spawnShutdownDiagnostic() kills itself at its own time limit", SLOW, async (t) => {
    if (!hasTools()) return t.skip("no sh/ps on this host");
    const dir = tempDir();
    try {
      const bin = path.join(dir, "bin");
      fs.mkdirSync(bin);
      fs.writeFileSync(path.join(bin, "pstree"), "#!/bin/sh\nsleep 60\n", { mode: 0o755 });
      const logPath = path.join(dir, "diag.log");
      const pid = spawnShutdownDiagnostic(logPath, "SIGTERM", {
        timeoutSeconds: 1,
        env: { ...process.env, PATH: `${bin}:${process.env.PATH}` },
      });
      assert.equal(typeof pid, "number");
      await waitUntil(
        () => fs.readFileSync(logPath, "utf8").includes("timed out after 1s"),
        "the time limit",
      );
      await waitUntil(() => {
        try {
          process.kill(pid!, 0);
          return fs.readFileSync(`/proc/${pid}/stat`, "utf8").includes(") Z");
        } catch {
          return true;
        }
      }, "the diagnostic child to end");
      assert.doesNotMatch(fs.readFileSync(logPath, "utf8"), /=== end of diagnostic/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("spawnShutdownDiagnostic() answers null without touching the log where sh or ps is missing", () => {
    const dir = tempDir();
    try {
      const logPath = path.join(dir, "diag.log");
      const empty = path.join(dir, "empty");
      fs.mkdirSync(empty);
      assert.equal(spawnShutdownDiagnostic(logPath, "SIGTERM", { env: { PATH: empty } }), null);
      assert.equal(spawnShutdownDiagnostic(logPath, "SIGTERM", { env: {} }), null);
      assert.equal(fs.existsSync(logPath), false);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("spawnShutdownDiagnostic() throws the file system's error for a log it cannot create", (t) => {
    if (!hasTools()) return t.skip("no sh/ps on this host");
    const dir = tempDir();
    try {
      const file = path.join(dir, "a-file");
      fs.writeFileSync(file, "");
      assert.throws(
        () => spawnShutdownDiagnostic(path.join(file, "diag.log"), "SIGTERM"),
        (error: unknown) => (error as { code?: string }).code === "ENOTDIR",
      );
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("spawnShutdownDiagnostic() rejects bad arguments with typed errors", () => {
    const cannot = "Cannot start a shutdown diagnostic:";
    assert.throws(() => spawnShutdownDiagnostic("", "SIGTERM"), {
      name: "TypeError",
      message: `${cannot} 'logPath' must be a non-empty path, got ""`,
    });
    assert.throws(() => spawnShutdownDiagnostic("/tmp/x.log", 15 as unknown as string), {
      name: "TypeError",
      message: `${cannot} 'signal' must be a signal name, got 15`,
    });
    assert.throws(() => spawnShutdownDiagnostic("/tmp/x.log", "SIGTERM", { timeoutSeconds: 0 }), {
      name: "RangeError",
      message: `${cannot} 'timeoutSeconds' must be a finite number > 0, got 0`,
    });
    assert.throws(
      () => spawnShutdownDiagnostic("/tmp/x.log", "SIGTERM", { timeoutSeconds: "5" as unknown as number }),
      { name: "TypeError", message: `${cannot} 'timeoutSeconds' must be a finite number > 0, got "5"` },
    );
    assert.throws(() => spawnShutdownDiagnostic("/tmp/x.log", "SIGTERM", { maxLogBytes: 1000 }), {
      name: "RangeError",
      message:
        /^Cannot start a shutdown diagnostic: 'maxLogBytes' must be an integer of at least \d+, got 1000$/,
    });
  });
});

// ---------------------------------------------------------------------------------------------------
// installShutdown
// ---------------------------------------------------------------------------------------------------

async function startInstall(
  mode: string,
  pidFile = "-",
  extra?: string,
  options: StartOptions = {},
) {
  const running = startFixture(
    INSTALL_FIXTURE,
    extra === undefined ? [mode, pidFile] : [mode, pidFile, extra],
    options,
  );
  const ready = await running.waitFor("stderr", /^fixture ready /);
  const info = JSON.parse(ready.slice("fixture ready ".length)) as {
    pid: number;
    watchdog: { deadline: boolean; secondSignalWhileBlocked: boolean; mechanism: string };
  };
  return { running, info };
}

/** The shutdown log lines (everything on stderr that the fixture did not write itself). */
function logLines(running: Running): string[] {
  return running.stderr.filter((line) => !line.startsWith("fixture "));
}

describe("installShutdown()", () => {
  it(
    "installShutdown() logs the snapshot first, then the phases in order with timings, and exits 0",
    SLOW,
    async () => {
      const { running, info } = await startInstall("phases");
      signal(info.pid, "SIGTERM");
      const result = await running.exited;
      assert.equal(result.code, 0, running.stderr.join("\n"));
      const lines = logLines(running);
      assert.match(lines[0], new RegExp(`^signal=SIGTERM signal_number=15 pid=${info.pid} `));
      assert.match(lines[0], / parent_cmdline=".*"$/);
      assert.match(lines[1], /^\+\d+\.\d\ds phase=a ok$/);
      assert.match(lines[2], /^\+\d+\.\d\ds phase=b ok$/);
      assert.match(lines[3], /^\+\d+\.\d\ds phase=c ok$/);
      assert.match(lines[4], /^\+\d+\.\d\ds shutdown total=\d+\.\d\ds phases=3 failed=0 exit=0$/);
      const b = Number(lines[2].slice(1, lines[2].indexOf("s")));
      const a = Number(lines[1].slice(1, lines[1].indexOf("s")));
      assert.ok(b >= a, "timings are counted from the start of the shutdown");
      assert.deepEqual(running.stderr.filter((l) => l.startsWith("fixture ran")), [
        "fixture ran a",
        "fixture ran b",
        "fixture ran c",
      ]);
    },
  );

  it(
    "installShutdown() starts the diagnostic child on the first signal when diagnosticLog is set",
    SLOW,
    async (t) => {
      if (!hasTools()) return t.skip("no sh/ps on this host");
      const dir = tempDir();
      try {
        const logPath = path.join(dir, "diag.log");
        const { running, info } = await startInstall("diagnostic", "-", logPath);
        signal(info.pid, "SIGTERM");
        assert.equal((await running.exited).code, 0);
        const lines = logLines(running);
        assert.match(lines[0], /^signal=SIGTERM /);
        assert.match(lines[1], /^\+\d+\.\d\ds shutdown diagnostic=pid:\d+$/);
        assert.match(lines[2], /phase=a ok$/);
        const text = await waitForDiagnostic(logPath, info.pid);
        assert.match(text, new RegExp(`pid=${info.pid} signal=SIGTERM `));
        assert.equal(fs.statSync(logPath).mode & 0o777, 0o600);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("installShutdown() logs a diagnostic that cannot start and still runs the phases", SLOW, async () => {
    const dir = tempDir();
    try {
      const target = path.join(dir, "target.txt");
      fs.writeFileSync(target, "precious\n");
      const logPath = path.join(dir, "diag.log");
      fs.symlinkSync(target, logPath);
      const { running, info } = await startInstall("diagnostic", "-", logPath);
      signal(info.pid, "SIGTERM");
      assert.equal((await running.exited).code, 0);
      const lines = logLines(running);
      assert.match(
        lines[1],
        /^\+\d+\.\d\ds shutdown diagnostic=(failed error=".*(ELOOP|symbolic link|loop).*"|unavailable)$/i,
      );
      assert.equal(fs.readFileSync(target, "utf8"), "precious\n");
      assert.match(lines.at(-1)!, /phases=3 failed=0 exit=0$/);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("installShutdown() counts one delivery once when a signal is listed twice", SLOW, async () => {
    const { running, info } = await startInstall("dup");
    signal(info.pid, "SIGTERM");
    const result = await running.exited;
    assert.equal(result.code, 0, running.stderr.join("\n"));
    assert.match(logLines(running).at(-1)!, /phases=3 failed=0 exit=0$/);
  });

  it("installShutdown() moves on after a phase that hangs past its timeout and exits 1", SLOW, async () => {
    const { running, info } = await startInstall("hang");
    signal(info.pid, "SIGINT");
    const result = await running.exited;
    assert.equal(result.code, 1);
    const lines = logLines(running);
    assert.match(lines[0], /^signal=SIGINT /);
    assert.match(lines[1], /^\+\d+\.\d\ds phase=stuck timeout$/);
    assert.ok(Number(lines[1].slice(1, lines[1].indexOf("s"))) >= 0.29, lines[1]);
    assert.match(lines[2], /^\+\d+\.\d\ds phase=after ok$/);
    assert.match(lines[3], /failed=1 exit=1$/);
  });

  it("installShutdown() logs a phase that throws as error and exits 1", SLOW, async () => {
    const { running, info } = await startInstall("error");
    signal(info.pid, "SIGTERM");
    const result = await running.exited;
    assert.equal(result.code, 1);
    const lines = logLines(running);
    assert.match(lines[1], /^\+\d+\.\d\ds phase=boom error error="Error: boom failed"$/);
    assert.match(lines[2], /phase=after ok$/);
  });

  it(
    "installShutdown() exits 0 despite a failed phase when a planned-stop marker names us",
    SLOW,
    async () => {
      const dir = tempDir();
      try {
        const pidFile = path.join(dir, "app.pid");
        const { running, info } = await startInstall("error", pidFile);
        fs.writeFileSync(
          `${pidFile}.planned-stop.json`,
          JSON.stringify({ pid: info.pid, at: new Date().toISOString() }),
        );
        signal(info.pid, "SIGTERM");
        const result = await running.exited;
        assert.equal(result.code, 0, running.stderr.join("\n"));
        const lines = logLines(running);
        assert.match(lines[0], / planned_stop_for_self=true /);
        assert.match(lines.at(-1)!, /failed=1 intended=true exit=0$/);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it(
    "installShutdown() exits 0 for a takeover naming us and 1 for a takeover naming someone else",
    SLOW,
    async () => {
      const dir = tempDir();
      try {
        const pidFile = path.join(dir, "app.pid");
        const ours = await startInstall("error", pidFile);
        fs.writeFileSync(
          `${pidFile}.takeover.json`,
          JSON.stringify({ targetPid: ours.info.pid, byPid: 1, at: new Date().toISOString() }),
        );
        signal(ours.info.pid, "SIGTERM");
        assert.equal((await ours.running.exited).code, 0);
        const other = await startInstall("error", pidFile); // the marker still names the first pid
        signal(other.info.pid, "SIGTERM");
        assert.equal((await other.running.exited).code, 1);
        assert.match(logLines(other.running)[0], / takeover_for_self=false /);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("installShutdown() ends the process at once on a second signal", SLOW, async () => {
    const { running, info } = await startInstall("second");
    signal(info.pid, "SIGTERM");
    await running.waitFor("stderr", /^signal=SIGTERM /);
    await sleep(250); // past the 100 ms in which a repeat of the same signal counts once
    signal(info.pid, "SIGTERM");
    const result = await running.exited;
    // The main thread is free: its handler logs and exits 128+15 within the watchdog's grace.
    assert.equal(result.code, 143, JSON.stringify(result));
    assert.ok(running.stderr.some((line) => /shutdown second-signal=SIGTERM exit=143$/.test(line)));
    assert.ok(!running.stderr.some((line) => /phase=waits/.test(line)));
  });

  it(
    "installShutdown() watchdog ends a child blocked writing to a pipe nobody reads at forceExitMs",
    SLOW,
    async () => {
      const { running, info } = await startInstall("block", "-", "800", { stdoutMode: "ignore-reading" });
      assert.equal(info.watchdog.deadline, true, JSON.stringify(info.watchdog));
      signal(info.pid, "SIGTERM");
      await running.waitFor("stderr", /^fixture blocking$/);
      const result = await running.exited;
      assert.equal(result.signal, "SIGKILL", JSON.stringify(result));
      assert.match(logLines(running)[0], /^signal=SIGTERM /);
      assert.ok(!logLines(running).some((line) => /phase=blocks/.test(line)));
    },
  );

  it(
    "installShutdown() ends a blocked child on a second signal where the runtime lets the watchdog see signals",
    SLOW,
    async (t) => {
      const { running, info } = await startInstall("block-second", "-", undefined, {
        stdoutMode: "ignore-reading",
      });
      if (!info.watchdog.secondSignalWhileBlocked) {
        signal(info.pid, "SIGKILL");
        await running.exited;
        return t.skip(`a second signal cannot reach a blocked main thread here (${info.watchdog.mechanism})`);
      }
      signal(info.pid, "SIGTERM");
      await running.waitFor("stderr", /^fixture blocking$/);
      await new Promise((resolve) => setTimeout(resolve, 200)); // let it sit in the blocked write
      signal(info.pid, "SIGTERM");
      const result = await running.exited;
      // SIGKILL from the watchdog thread; on Bun the kernel's default action for the second SIGTERM.
      assert.ok(result.signal === "SIGKILL" || result.signal === "SIGTERM", JSON.stringify(result));
      assert.ok(!logLines(running).some((line) => /phase=blocks/.test(line)));
    },
  );

  it("installShutdown() keeps going and exits 0 while stderr is a closed pipe", SLOW, async () => {
    const { running, info } = await startInstall("closed-stderr");
    running.child.stderr!.destroy(); // close our read end: every write to fd 2 now fails with EPIPE
    await new Promise((resolve) => setTimeout(resolve, 100));
    signal(info.pid, "SIGTERM");
    const result = await running.exited;
    assert.equal(result.code, 0);
    assert.deepEqual(running.stdout, ["phase-ran"]);
  });

  it("installShutdown() shutdown(reason) runs the same sequence from code", SLOW, async () => {
    const running = startFixture(INSTALL_FIXTURE, ["code", "-"]);
    const result = await running.exited;
    assert.equal(result.code, 0, running.stderr.join("\n"));
    const lines = logLines(running);
    assert.match(lines[0], /^signal=UNKNOWN reason=maintenance pid=\d+ /);
    assert.deepEqual(lines.slice(1, 4).map((line) => line.replace(/^\+\d+\.\d\ds /, "")), [
      "phase=a ok",
      "phase=b ok",
      "phase=c ok",
    ]);
  });

  it(
    "installShutdown() dispose() unhooks the signals so SIGTERM takes its default action again",
    SLOW,
    async () => {
      const { running, info } = await startInstall("dispose");
      signal(info.pid, "SIGTERM");
      const result = await running.exited;
      assert.equal(result.signal, "SIGTERM", JSON.stringify(result));
      assert.deepEqual(logLines(running), []);
    },
  );

  it("installShutdown() does not keep an idle process alive", SLOW, async () => {
    const running = startFixture(INSTALL_FIXTURE, ["idle", "-"]);
    const result = await running.exited;
    assert.equal(result.code, 0);
  });

  it("installShutdown() warns under systemd when forceExitMs is not below TimeoutStopSec", SLOW, async () => {
    const dir = tempDir();
    try {
      const fake = fakeSystemctl(dir, "TimeoutStopUSec=1min 30s");
      const cgroupPath = fake.cgroup("0::/system.slice/app.service\n");
      const running = startFixture(INSTALL_FIXTURE, ["warn", "-", `${cgroupPath}:${path.join(dir, "bin")}`]);
      const warning = await running.waitFor("stderr", /^shutdown warning: forceExitMs=/);
      assert.match(warning, /forceExitMs=90000 is not below TimeoutStopSec=90s of app\.service/);
      assert.equal((await running.exited).code, 0);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("installShutdown() in-process: injected log and exit see the whole sequence", async () => {
    const lines: string[] = [];
    const codes: number[] = [];
    const order: string[] = [];
    const handle = installShutdown({
      signals: ["SIGUSR2"],
      forceExitMs: 0,
      log: (line) => {
        lines.push(line);
        throw new Error("a log that throws must not matter");
      },
      exit: (code) => void codes.push(code),
      systemd: false,
      phases: [
        { name: "one", run: () => void order.push("one") },
        { name: "two", run: () => Promise.resolve().then(() => void order.push("two")) },
      ],
    });
    try {
      assert.equal(handle.shuttingDown, false);
      assert.equal(handle.reason, null);
      void handle.shutdown("test");
      assert.equal(handle.shuttingDown, true);
      assert.equal(handle.reason, "test");
      await waitUntil(() => codes.length === 1, "exit");
      assert.deepEqual(codes, [0]);
      assert.deepEqual(order, ["one", "two"]);
      assert.match(lines[0], /^signal=UNKNOWN reason=test /);
      assert.equal(lines.length, 4);
      assert.strictEqual(handle.shutdown("again"), handle.shutdown("third"), "one sequence only");
    } finally {
      handle.dispose();
      handle.dispose();
    }
  });

  it("installShutdown() rejects bad options with typed errors and installs nothing", () => {
    assert.throws(() => installShutdown({ signals: ["SIGBOGUS"] }), TypeError);
    assert.throws(() => installShutdown({ signals: [] }), TypeError);
    assert.throws(
      () => installShutdown({ signals: "SIGTERM" as unknown as string[] }),
      {
        name: "TypeError",
        message: /^Cannot install the shutdown: 'signals' must be a non-empty array, got "SIGTERM"$/,
      },
    );
    assert.throws(() => installShutdown({ forceExitMs: -1 }), {
      name: "RangeError",
      message: /^Cannot install the shutdown: 'forceExitMs' must be a finite number >= 0, got -1$/,
    });
    assert.throws(() => installShutdown({ forceExitMs: "5" as unknown as number }), {
      name: "TypeError",
      message: /^Cannot install the shutdown: 'forceExitMs' must be a finite number >= 0, got "5"$/,
    });
    assert.throws(
      () => installShutdown({ phases: [{ name: "", run: () => {} }] }),
      {
        name: "TypeError",
        message: /^Cannot install the shutdown: 'phases\[0\]\.name' must be a non-empty string, got ""$/,
      },
    );
    assert.throws(
      () => installShutdown({ phases: [{ name: "x", run: undefined as unknown as () => void }] }),
      TypeError,
    );
    assert.throws(
      () => installShutdown({ phases: [{ name: "x", run: () => {}, timeoutMs: 0 }] }),
      RangeError,
    );
    assert.throws(() => installShutdown({ log: "stderr" as unknown as () => void }), TypeError);
  });
});

// ---------------------------------------------------------------------------------------------------
// Second edition: a shutdown that always ends and always runs its phases, forensics that leak nothing
// ---------------------------------------------------------------------------------------------------

/** The bound the issue asks for: gone within forceExitMs + 1 s of the first signal. */
const WEDGE_FORCE_EXIT_MS = 800;

/** The child's ending, or `null` when it is still running `ms` from now (the caller then kills it). */
function endedWithin(
  running: Running,
  ms: number,
): Promise<{ code: number | null; signal: string | null } | null> {
  return Promise.race([running.exited, sleep(ms).then(() => null)]);
}

describe("installShutdown() always ends", () => {
  for (const mode of ["wedge-write", "wedge-busy"]) {
    it(
      `installShutdown() ends a main thread wedged before the first SIGTERM within forceExitMs + 1 s (${mode})`,
      SLOW,
      async (t) => {
        const { running, info } = await startInstall(mode, "-", undefined, { stdoutMode: "ignore-reading" });
        try {
          if (!info.watchdog.secondSignalWhileBlocked) {
            return t.skip(`${info.watchdog.mechanism}: the worker cannot hear signals here`);
          }
          await running.waitFor("stderr", /^fixture wedged$/);
          await sleep(300); // let the write fill the pipe and block, or the loop spin
          const sentAt = performance.now();
          signal(info.pid, "SIGTERM");
          const result = await endedWithin(running, WEDGE_FORCE_EXIT_MS + 10_000);
          const took = performance.now() - sentAt;
          assert.deepEqual(result, { code: null, signal: "SIGKILL" });
          assert.ok(took < WEDGE_FORCE_EXIT_MS + 1000, `ended ${Math.round(took)} ms after SIGTERM`);
        } finally {
          killChild(running.child);
        }
      },
    );
  }

  it(
    "installShutdown() ends within forceExitMs + 1 s when stderr is a full pipe at SIGTERM",
    SLOW,
    async () => {
      // A real pipe (64 KiB), not the socket pair that child_process makes: the fixture fills it, the test
      // holds its read end and never reads.
      const dir = tempDir();
      const fifo = path.join(dir, "stderr.fifo");
      assert.equal(spawnSync("mkfifo", [fifo]).status, 0, "mkfifo");
      const readEnd = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
      const { command, args } = scriptCommand(INSTALL_FIXTURE, ["full-stderr", "-"]);
      const running = start("sh", ["-c", 'exec "$@" 2>"$0"', fifo, command, ...args], {
        stderrMode: "ignore-reading",
      });
      try {
        const ready = await running.waitFor("stdout", /^fixture ready /);
        const info = JSON.parse(ready.slice("fixture ready ".length)) as { pid: number };
        const sentAt = performance.now();
        signal(info.pid, "SIGTERM");
        const result = await endedWithin(running, WEDGE_FORCE_EXIT_MS + 10_000);
        const took = performance.now() - sentAt;
        assert.ok(result !== null, "still running 10 s after the deadline");
        assert.ok(took < WEDGE_FORCE_EXIT_MS + 1000, `ended ${Math.round(took)} ms after SIGTERM`);
      } finally {
        killChild(running.child);
        fs.closeSync(readEnd);
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );

  it("installShutdown() counts the same signal twice 3 ms apart once and runs the phases", SLOW, async () => {
    const { running, info } = await startInstall("phases");
    try {
      signalTwice(info.pid, "SIGTERM", 3);
      const result = await running.exited;
      assert.equal(result.code, 0, running.stderr.join("\n"));
      assert.deepEqual(running.stderr.filter((l) => l.startsWith("fixture ran")), [
        "fixture ran a",
        "fixture ran b",
        "fixture ran c",
      ]);
      assert.ok(!running.stderr.some((line) => /second-signal/.test(line)));
    } finally {
      killChild(running.child);
    }
  });

  it("installShutdown() still ends on SIGTERM then SIGINT 300 ms later", SLOW, async () => {
    const { running, info } = await startInstall("second");
    try {
      signal(info.pid, "SIGTERM");
      await running.waitFor("stderr", /^signal=SIGTERM /);
      await sleep(300);
      signal(info.pid, "SIGINT");
      const result = await running.exited;
      assert.equal(result.code, 130, JSON.stringify(result));
      assert.ok(running.stderr.some((line) => /shutdown second-signal=SIGINT exit=130$/.test(line)));
    } finally {
      killChild(running.child);
    }
  });

  it("installShutdown() refuses timeouts above 2^31-1 ms and honours 2^31-1", SLOW, async () => {
    const huge = 2 ** 31;
    const base = { systemd: false as const, exit: () => {}, log: () => {} };
    assert.throws(() => installShutdown({ ...base, forceExitMs: huge }), RangeError);
    assert.throws(
      () => installShutdown({ ...base, phases: [{ name: "x", run: () => {}, timeoutMs: huge }] }),
      (error: unknown) =>
        error instanceof RangeError &&
        /^Cannot install the shutdown: 'phases\[0\]\.timeoutMs' must be at most 2147483647, got 2147483648$/
          .test(error.message),
    );
    const { running, info } = await startInstall("huge");
    try {
      signal(info.pid, "SIGTERM");
      const result = await running.exited;
      assert.equal(result.code, 0, running.stderr.join("\n"));
      assert.ok(running.stderr.includes("fixture ran slow"), "the 300 ms phase was not cut short");
      assert.ok(!running.stderr.some((line) => /force-exit/.test(line)));
    } finally {
      killChild(running.child);
    }
  });

  it("installShutdown() exits 0 after a planned stop that ends by force exit", SLOW, async () => {
    const dir = tempDir();
    try {
      const pidFile = path.join(dir, "app.pid");
      const { running, info } = await startInstall("planned-hang", pidFile);
      try {
        fs.writeFileSync(
          `${pidFile}.planned-stop.json`,
          JSON.stringify({ pid: info.pid, at: new Date().toISOString(), reason: "deploy" }),
        );
        signal(info.pid, "SIGTERM");
        const result = await running.exited;
        assert.equal(result.code, 0, running.stderr.join("\n"));
        const lines = logLines(running);
        assert.match(lines[0], / planned_stop_for_self=true /);
        assert.ok(
          lines.some((line) =>
            /shutdown force-exit after=800ms phase=stuck intended=true exit=0$/.test(line)
          ),
        );
      } finally {
        killChild(running.child);
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  for (
    const [mode, kind, message] of [
      ["uncaught-throw", "uncaught-exception", "kaboom thrown"],
      ["uncaught-reject", "unhandled-rejection", "kaboom rejected"],
    ] as const
  ) {
    it(`installShutdown() catchUncaught logs ${kind}, runs the phases and exits 1`, SLOW, async () => {
      const { running } = await startInstall(mode);
      try {
        const result = await running.exited;
        assert.equal(result.code, 1, running.stderr.join("\n"));
        const lines = logLines(running);
        assert.match(lines[0], new RegExp(`^shutdown ${kind} error=".*${message}.*"$`));
        assert.match(lines[1], /^signal=UNKNOWN reason="(uncaught exception|unhandled rejection)" /);
        assert.deepEqual(running.stderr.filter((l) => l.startsWith("fixture ran")), [
          "fixture ran a",
          "fixture ran b",
          "fixture ran c",
        ]);
        assert.match(lines.at(-1)!, /phases=3 failed=1 exit=1$/);
      } finally {
        killChild(running.child);
      }
    });
  }

  it("installShutdown() handle works with `using`: disposed at the end of the scope", () => {
    const before = signalListenerCount("SIGUSR2");
    let seen: { shuttingDown: boolean; reason: string | null } | null = null;
    {
      using handle = installShutdown({
        signals: ["SIGUSR2"],
        forceExitMs: 0,
        systemd: false,
        exit: () => {},
      });
      seen = { shuttingDown: handle.shuttingDown, reason: handle.reason };
      assert.notEqual(signalListenerCount("SIGUSR2"), before);
    }
    assert.deepEqual(seen, { shuttingDown: false, reason: null });
    assert.equal(signalListenerCount("SIGUSR2"), before, "the listeners are gone");
  });
});

describe("spawnShutdownDiagnostic() keeps its log private", () => {
  it("spawnShutdownDiagnostic() creates a missing folder 0700", SLOW, async (t) => {
    if (!hasTools()) return t.skip("no sh/ps on this host");
    const dir = tempDir();
    const oldMask = process.umask(0o022);
    try {
      const folder = path.join(dir, "new", "sub");
      const logPath = path.join(folder, "diag.log");
      const pid = spawnShutdownDiagnostic(logPath, "SIGTERM", { timeoutSeconds: 10 });
      assert.equal(typeof pid, "number");
      assert.equal(fs.statSync(folder).mode & 0o777, 0o700);
      assert.equal(fs.statSync(logPath).mode & 0o777, 0o600);
      await waitForDiagnostic(logPath);
    } finally {
      process.umask(oldMask);
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("spawnShutdownDiagnostic() refuses a symlink at its path and leaves the target untouched", (t) => {
    if (!hasTools()) return t.skip("no sh/ps on this host");
    const dir = tempDir();
    try {
      const target = path.join(dir, "target.txt");
      fs.writeFileSync(target, "precious\n", { mode: 0o644 });
      fs.chmodSync(target, 0o644);
      const logPath = path.join(dir, "diag.log");
      fs.symlinkSync(target, logPath);
      assert.throws(() => spawnShutdownDiagnostic(logPath, "SIGTERM"));
      assert.equal(fs.readFileSync(target, "utf8"), "precious\n");
      assert.equal(fs.statSync(target).mode & 0o777, 0o644);
      // A hard link to someone's file is refused too.
      fs.rmSync(logPath);
      fs.linkSync(target, logPath);
      assert.throws(() => spawnShutdownDiagnostic(logPath, "SIGTERM"), /one link/);
      assert.equal(fs.readFileSync(target, "utf8"), "precious\n");
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it(
    "spawnShutdownDiagnostic() caps a log holding non-UTF-8 bytes in bytes, keeping them as they are",
    SLOW,
    async (t) => {
      if (!hasTools()) return t.skip("no sh/ps on this host");
      const dir = tempDir();
      try {
        const logPath = path.join(dir, "diag.log");
        // Latin-1 process names, as `ps` lists them: 0xE9 is not valid UTF-8 on its own.
        const line = Uint8Array.from([
          ...Buffer.from("ps: caf"),
          0xe9,
          ...Buffer.from(" r\xe9sum\xe9 line\n", "latin1"),
        ]);
        const lines = Math.ceil((MIB + 4096) / line.length);
        const original = new Uint8Array(lines * line.length);
        for (let i = 0; i < lines; i += 1) original.set(line, i * line.length);
        fs.writeFileSync(logPath, original, { mode: 0o600 });
        const pid = spawnShutdownDiagnostic(logPath, "SIGTERM", { maxLogBytes: MIB });
        assert.equal(typeof pid, "number");
        const text = await waitForDiagnostic(logPath);
        assert.ok(text.length > 0);
        const bytes = new Uint8Array(fs.readFileSync(logPath));
        const header = Buffer.from(bytes).indexOf("=== keelson shutdown diagnostic");
        const firstNewline = bytes.indexOf(0x0a);
        const kept = bytes.subarray(firstNewline + 1, header);
        assert.ok(header - 0 <= MIB - DIAGNOSTIC_RUN_MAX_BYTES, `trimmed to ${header} bytes before the run`);
        assert.ok(kept.length > 0 && kept.length % line.length === 0, "whole old lines are kept");
        assert.deepEqual(
          kept,
          original.subarray(original.length - kept.length),
          "old bytes kept byte for byte",
        );
        assert.equal(Buffer.from(bytes).indexOf(Buffer.from([0xef, 0xbf, 0xbd])), -1, "no U+FFFD anywhere");
        assert.ok(bytes.length <= MIB, `log of ${bytes.length} bytes is over the cap`);
      } finally {
        fs.rmSync(dir, { recursive: true, force: true });
      }
    },
  );
});
