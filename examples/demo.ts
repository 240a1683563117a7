/**
 * keelson's demo: a small gateway service that uses all five modules, and a scripted tour that puts it
 * through the failures they exist for (a second copy, `kill -9`, an external log rotation, a vanished
 * peer, SIGTERM), printing what happened at each step.
 *
 *   deno run -A examples/demo.ts [--keep]          the tour, in a fresh temp folder (kept with --keep)
 *   bun examples/demo.ts / node examples/demo.ts   the same on Bun and Node
 *   deno run -A examples/demo.ts --serve DIR [--replace]   the gateway itself
 *
 * The gateway holds `DIR/gateway.pid` (pidfile.ts; `--replace` stops a live holder), logs JSON lines to
 * `DIR/gateway.log` rotated at 16 KiB (logging.ts), counts its requests in `DIR/gateway.db` in WAL mode
 * (sqlite_wal.ts), and answers JSON-lines requests on stdin with replies on stdout (transport.ts):
 *
 *   {"id":1,"method":"ping"}                      → {"id":1,"result":"pong","served":N}
 *   {"id":2,"method":"log","count":K,"tag":"x"}   → K log records, then {"id":2,"result":"logged",…}
 *   {"id":3,"method":"slow","ms":M}               → the reply after M ms (in flight during a drain)
 *   {"id":4,"method":"status"}                    → pid, served, starts, journal mode on disk
 *
 * It announces itself with `{"event":"ready",…}`, checks systemd's stop timeout at start, and stops
 * through an orderly shutdown (shutdown.ts: drain, close-db, release-pidfile) on SIGTERM, at the end of
 * stdin, or when its stdout reader is gone. stdout carries the protocol only; its own diagnostics go to
 * the log file and stderr.
 *
 * @module
 */

import { type ChildProcess, spawn } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { fileURLToPath } from "node:url";
import {
  acquirePidFile,
  applyWal,
  checkSystemdStopTimeout,
  createLogger,
  createStdioTransport,
  installShutdown,
  type LogFields,
  type Logger,
  openRotatingFile,
  type PidFile,
  PidFileLockedError,
  readFrames,
  readJournalModeOnDisk,
  readPidFile,
  type StopTimeoutCheck,
} from "../mod.ts";
import { exit, runtime, runtimeVersion, scriptCommand, writeAll } from "../platform.ts";

// ---------------------------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------------------------

/** The gateway's log rolls over at this size: small, so the tour sees size rollovers too. */
const LOG_MAX_BYTES = 16 * 1024;
/** Enough backups that nothing the tour writes is ever dropped (it writes well under 100 KiB). */
const LOG_BACKUPS = 16;
/** How long the shutdown may take before it is forced; also the drain asked of systemd's stop timeout. */
const FORCE_EXIT_MS = 5_000;
/** Time limit of each shutdown phase. */
const PHASE_TIMEOUT_MS = 3_000;
/** Upper bound of `count` in a `log` request and of `ms` in a `slow` request. */
const MAX_LOG_COUNT = 100_000;
const MAX_SLOW_MS = 60_000;

/** Exit status of a gateway that refused to start because another instance holds the PID file. */
const EXIT_REFUSED = 3;
/** Exit status for bad command-line arguments. */
const EXIT_USAGE = 2;

/** Every bounded wait of the tour: generous, the machine may be busy; a timeout names what it waited for. */
const WAIT_MS = 20_000;

const USAGE = "usage: demo.ts [--keep] | demo.ts --serve DIR [--replace]";

const encoder = new TextEncoder();

// ---------------------------------------------------------------------------------------------------
// The gateway
// ---------------------------------------------------------------------------------------------------

/** A request as it arrives; everything is checked before use. */
interface Request {
  id?: unknown;
  method?: unknown;
  count?: unknown;
  tag?: unknown;
  ms?: unknown;
}

/** The gateway's logger once it is open, for the last word on an unexpected failure. */
let gatewayLog: Logger | null = null;

async function serve(dir: string, replace: boolean): Promise<void> {
  const pidPath = path.join(dir, "gateway.pid");
  const logPath = path.join(dir, "gateway.log");
  const dbPath = path.join(dir, "gateway.db");
  const pid = process.pid;
  fs.mkdirSync(dir, { recursive: true });

  const logFile = openRotatingFile(logPath, {
    maxBytes: LOG_MAX_BYTES,
    backups: LOG_BACKUPS,
    onError: (error) => stderrLine(`gateway[${pid}] log file failure: ${describe(error)}`),
  });
  const log = createLogger({ sink: logFile, fields: { pid } });
  gatewayLog = log;
  /** A diagnostic for both the log file and stderr. */
  const say = (msg: string, fields: LogFields = {}) => {
    log.info(msg, fields);
    stderrLine(`gateway[${pid}] ${msg}${formatFields(fields)}`);
  };

  // 1. Is the unit's stop timeout long enough for our drain? (null: not a systemd service.)
  const systemd: StopTimeoutCheck | null = await checkSystemdStopTimeout(FORCE_EXIT_MS / 1000);
  if (systemd === null) say("not under systemd: no stop timeout to check");
  else if (systemd.mismatch) {
    log.warn("systemd stop timeout too short", { ...systemd });
    stderrLine(
      `gateway[${pid}] warning: ${systemd.unit} TimeoutStopSec=${systemd.timeoutStopSec}s is below the ` +
        `${systemd.expectedMinSec}s the drain needs`,
    );
  } else say("systemd stop timeout ok", { unit: systemd.unit, timeoutStopSec: systemd.timeoutStopSec });

  // 2. One instance per folder.
  const before = readPidFile(pidPath);
  let pidFile: PidFile;
  try {
    pidFile = await acquirePidFile(pidPath, { replace });
  } catch (error) {
    if (!(error instanceof PidFileLockedError)) throw error;
    log.error("refused to start", { holder: error.holder, err: error });
    stderrLine(
      `gateway[${pid}] refused to start: ${error.name} holder_pid=${error.holder.pid}: ${error.message}`,
    );
    exit(EXIT_REFUSED);
  }
  const previous = before.state === "stale" || before.state === "invalid"
    ? { state: before.state, reason: before.reason }
    : before.state === "running"
    ? { state: before.state, holder: before.record.pid }
    : { state: before.state };
  say("pid file acquired", { path: pidPath, previous, replace });

  // 3. State in SQLite, in WAL mode without a silent downgrade.
  const { DatabaseSync } = await import("node:sqlite");
  const db = new DatabaseSync(dbPath);
  db.exec("PRAGMA busy_timeout = 5000");
  const journal = applyWal(db, dbPath, {
    onFallback: (error) => log.warn("WAL unavailable here, using a rollback journal", { err: error }),
  });
  db.exec(
    "CREATE TABLE IF NOT EXISTS requests (n INTEGER PRIMARY KEY, pid INTEGER, method TEXT, at TEXT);" +
      "CREATE TABLE IF NOT EXISTS starts (n INTEGER PRIMARY KEY, pid INTEGER, at TEXT);",
  );
  const insertRequest = db.prepare("INSERT INTO requests (pid, method, at) VALUES (?, ?, ?)");
  const countRequests = db.prepare("SELECT count(*) AS n FROM requests");
  db.prepare("INSERT INTO starts (pid, at) VALUES (?, ?)").run(pid, new Date().toISOString());
  const starts = Number((db.prepare("SELECT count(*) AS n FROM starts").get() as { n: number }).n);
  const served = () => Number((countRequests.get() as { n: number }).n);

  // 4. The protocol, and an orderly shutdown around it.
  const out = createStdioTransport();
  let accepting = true;
  let stopping = false;
  const pending = new Set<Promise<void>>();

  const shutdown = installShutdown({
    forceExitMs: FORCE_EXIT_MS,
    pidFile: pidPath,
    log: (line) => {
      log.info("shutdown", { line });
      stderrLine(line);
    },
    phases: [
      {
        name: "drain",
        timeoutMs: PHASE_TIMEOUT_MS,
        run: async () => {
          accepting = false;
          stopping = true; // whatever started the shutdown, the end of stdin is no news now
          const inFlight = pending.size;
          await Promise.all(pending);
          log.info("drained", { inFlight, served: served() });
        },
      },
      { name: "close-db", timeoutMs: PHASE_TIMEOUT_MS, run: () => db.close() },
      { name: "release-pidfile", timeoutMs: PHASE_TIMEOUT_MS, run: () => pidFile.release() },
    ],
  });

  /** Sends one frame; a gone reader starts the shutdown (once). */
  const send = (frame: unknown): boolean => {
    if (out.write(frame)) return true;
    if (!stopping) {
      stopping = true;
      say("peer gone: the stdout reader closed; shutting down");
      void shutdown.shutdown("peer gone");
    }
    return false;
  };

  const handle = (request: Request): unknown => {
    const id = request.id ?? null;
    if (!accepting) return { id, error: "shutting down" };
    const method = typeof request.method === "string" ? request.method : "";
    insertRequest.run(pid, method, new Date().toISOString());
    switch (method) {
      case "ping":
        return { id, result: "pong", served: served() };
      case "status":
        return {
          id,
          result: { pid, starts, journal, onDisk: readJournalModeOnDisk(dbPath) },
          served: served(),
        };
      case "log": {
        const count = request.count;
        if (!Number.isInteger(count) || (count as number) < 0 || (count as number) > MAX_LOG_COUNT) {
          return { id, error: `count must be an integer from 0 to ${MAX_LOG_COUNT}` };
        }
        const tag = typeof request.tag === "string" ? request.tag : "";
        for (let i = 0; i < (count as number); i++) {
          log.info("filler", { tag, i, of: count, pad: "the quick brown fox jumps over the lazy dog" });
        }
        return { id, result: "logged", count, served: served() };
      }
      default:
        return { id, error: `unknown method ${JSON.stringify(method)}` };
    }
  };

  say("ready", { journal, starts, served: served() });
  send({
    event: "ready",
    pid,
    runtime: `${runtime} ${runtimeVersion}`,
    starts,
    served: served(),
    journal,
    onDisk: readJournalModeOnDisk(dbPath),
    previous,
    systemd,
  });

  const frames = readFrames(undefined, {
    onInvalid: (error) => {
      log.warn("invalid frame", { line: error.line, reason: error.reason });
      send({ error: "invalid frame", line: error.line, reason: error.reason });
    },
  });
  for await (const frame of frames) {
    if (stopping) break;
    if (typeof frame !== "object" || frame === null || Array.isArray(frame)) {
      if (!send({ id: null, error: "a request must be a JSON object" })) break;
      continue;
    }
    const request = frame as Request;
    if (request.method === "slow" && accepting) {
      const ms = request.ms;
      if (!Number.isInteger(ms) || (ms as number) < 0 || (ms as number) > MAX_SLOW_MS) {
        if (!send({ id: request.id ?? null, error: `ms must be an integer from 0 to ${MAX_SLOW_MS}` })) break;
        continue;
      }
      insertRequest.run(pid, "slow", new Date().toISOString());
      const id = request.id ?? null;
      const answered = served();
      say("slow request started", { id, ms });
      const work: Promise<void> = new Promise<void>((resolve) => setTimeout(resolve, ms as number)).then(
        () => {
          pending.delete(work);
          send({ id, result: "slept", ms, served: answered });
        },
      );
      pending.add(work);
      continue;
    }
    if (!send(handle(request))) break;
  }
  if (!stopping) {
    stopping = true;
    say("stdin ended: the peer closed its end; shutting down");
    await shutdown.shutdown("stdin closed");
  }
}

// ---------------------------------------------------------------------------------------------------
// The tour
// ---------------------------------------------------------------------------------------------------

/** One step's outcome, printed as it goes. */
class Step {
  failures = 0;

  /** Prints a ✓ or ✗ line and counts a failure. */
  check(ok: boolean, text: string): boolean {
    console.log(`   ${ok ? "✓" : "✗"} ${text}`);
    if (!ok) this.failures++;
    return ok;
  }

  /** Prints an indented detail line (evidence quoted from the gateway). */
  show(text: string): void {
    console.log(`       ${text}`);
  }
}

/** What the tour keeps between steps. */
interface TourState {
  dir: string;
  pidPath: string;
  logPath: string;
  dbPath: string;
  script: string;
  /** The gateway the next step talks to. */
  current: Gateway | null;
  /** Every gateway started, to make sure none outlives the tour. */
  started: Gateway[];
}

async function tour(options: { keep: boolean }): Promise<number> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keelson-demo-"));
  const state: TourState = {
    dir,
    pidPath: path.join(dir, "gateway.pid"),
    logPath: path.join(dir, "gateway.log"),
    dbPath: path.join(dir, "gateway.db"),
    script: import.meta.filename ?? fileURLToPath(import.meta.url),
    current: null,
    started: [],
  };
  console.log(`keelson tour on ${runtime} ${runtimeVersion}, folder ${dir}`);
  const steps: Array<[string, (step: Step, state: TourState) => Promise<void>]> = [
    ["start the gateway and send it requests", stepStart],
    ["start a second copy: refused", stepSecondCopy],
    ["kill -9 the gateway, then restart it: the stale PID file is recovered", stepKillAndRestart],
    ["rotate its log from outside: no line lost", stepExternalRotation],
    ["its peer goes away: clean exit", stepPeerGone],
    ["SIGTERM: snapshot line and phase timings", stepSigterm],
  ];
  let ok = 0;
  const failed: number[] = [];
  try {
    for (const [index, [title, run]] of steps.entries()) {
      console.log(`\n${index + 1}. ${title}`);
      const step = new Step();
      const started = performance.now();
      try {
        await run(step, state);
      } catch (error) {
        step.check(false, `step failed: ${describe(error)}`);
      }
      const seconds = ((performance.now() - started) / 1000).toFixed(2);
      if (step.failures === 0) {
        ok++;
        console.log(`   step ${index + 1} ok (${seconds}s)`);
      } else {
        failed.push(index + 1);
        console.log(`   step ${index + 1} FAILED (${seconds}s)`);
      }
    }
  } finally {
    // No gateway outlives the tour, whatever happened.
    for (const gateway of state.started) gateway.killIfRunning();
    await Promise.all(state.started.map((gateway) => gateway.waitExit(WAIT_MS).catch(() => undefined)));
    if (options.keep) console.log(`\nkept ${dir}`);
    else fs.rmSync(dir, { recursive: true, force: true });
  }
  const tail = failed.length === 0 ? "" : ` (failed: ${failed.join(", ")})`;
  console.log(`\ntour: ${ok}/${steps.length} steps ok${tail}`);
  return failed.length === 0 ? 0 : 1;
}

async function stepStart(step: Step, state: TourState): Promise<void> {
  const gateway = await startGateway(state, step);
  state.current = gateway;
  const ready = gateway.ready;
  const systemdLine = gateway.stderrLines.find((line) => /systemd|TimeoutStopSec/.test(line)) ?? "";
  step.check(
    "systemd" in ready && systemdLine !== "",
    ready.systemd === null
      ? "systemd stop timeout checked at start: not under systemd, nothing to compare"
      : `systemd stop timeout checked at start: ${JSON.stringify(ready.systemd)}`,
  );
  step.show(systemdLine);
  for (let i = 0; i < 2; i++) {
    const reply = await gateway.request({ method: "ping" });
    step.check(reply.result === "pong", `ping → ${JSON.stringify(reply)}`);
  }
  const status = await gateway.request({ method: "status" });
  const result = status.result as { journal?: string; onDisk?: string } | undefined;
  step.check(
    typeof status.served === "number" && status.served >= 3,
    `status → served ${status.served} (counted in SQLite)`,
  );
  const onDisk = readJournalModeOnDisk(state.dbPath);
  step.check(
    result?.journal === "wal" && onDisk === "wal",
    `applyWal → ${result?.journal}; the header of gateway.db on disk says ${onDisk}`,
  );
}

async function stepSecondCopy(step: Step, state: TourState): Promise<void> {
  const first = await ensureRunning(state, step);
  const second = Gateway.start(state.script, state.dir, [], state.started);
  const { code } = await second.waitExit(WAIT_MS);
  const refusal = second.stderrLines.find((line) => line.includes("refused to start")) ?? "";
  step.check(code === EXIT_REFUSED, `the second copy (pid ${second.pid}) exited with status ${code}`);
  step.check(
    refusal.includes("PidFileLockedError") && refusal.includes(`holder_pid=${first.pid}`),
    `it reported PidFileLockedError naming the holder, pid ${first.pid}:`,
  );
  step.show(refusal.replace(/^gateway\[\d+\] /, "") || "(no refusal line on its stderr)");
  const reply = await first.request({ method: "ping" });
  const status = readPidFile(state.pidPath);
  step.check(
    reply.result === "pong" && status.state === "running" && status.record.pid === first.pid,
    `the first copy still serves (served ${reply.served}) and still holds gateway.pid`,
  );
}

async function stepKillAndRestart(step: Step, state: TourState): Promise<void> {
  const victim = await ensureRunning(state, step);
  const servedBefore = (await victim.request({ method: "ping" })).served as number;
  process.kill(victim.pid, "SIGKILL");
  const ended = await victim.waitExit(WAIT_MS);
  state.current = null;
  step.check(ended.signal === "SIGKILL", `kill -9 ${victim.pid}: it died by ${ended.signal ?? ended.code}`);
  const stale = readPidFile(state.pidPath);
  step.check(
    stale.state === "stale",
    `readPidFile before the restart: ${stale.state}${"reason" in stale ? ` (${stale.reason})` : ""}`,
  );
  const started = performance.now();
  const next = await startGateway(state, step);
  state.current = next;
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const previous = next.ready.previous as { state?: string; reason?: string } | undefined;
  step.check(
    previous?.state === "stale",
    `the restart (pid ${next.pid}) found it ${previous?.state} and replaced it at once (ready in ${seconds}s)`,
  );
  const running = readPidFile(state.pidPath);
  step.check(
    running.state === "running" && running.record.pid === next.pid,
    `readPidFile after the restart: ${running.state}${
      running.state === "running" ? `, pid ${running.record.pid}` : ""
    }`,
  );
  const reply = await next.request({ method: "ping" });
  step.check(
    typeof reply.served === "number" && reply.served > servedBefore,
    `ping → served ${reply.served}: the count survived the kill -9 in gateway.db`,
  );
}

async function stepExternalRotation(step: Step, state: TourState): Promise<void> {
  const gateway = await ensureRunning(state, step);
  const BEFORE = 300;
  const AFTER = 20;
  const tagBefore = `before-${gateway.pid}`;
  const tagAfter = `after-${gateway.pid}`;
  const first = await gateway.request({ method: "log", count: BEFORE, tag: tagBefore });
  step.check(first.result === "logged", `asked it to log ${BEFORE} lines → ${JSON.stringify(first)}`);
  const rotated = `${state.logPath}.ext-1`;
  fs.renameSync(state.logPath, rotated);
  step.check(
    !fs.existsSync(state.logPath),
    "renamed gateway.log → gateway.log.ext-1 behind its back (as logrotate does)",
  );
  const second = await gateway.request({ method: "log", count: AFTER, tag: tagAfter });
  step.check(second.result === "logged", `asked it to log ${AFTER} more lines → ${JSON.stringify(second)}`);

  const files = fs.readdirSync(state.dir).filter((name) => /^gateway\.log(\.\d+|\.ext-1)?$/.test(name))
    .sort();
  const seen = new Map<string, Set<number>>([[tagBefore, new Set()], [tagAfter, new Set()]]);
  const afterIn = new Map<string, number>();
  let lines = 0;
  let duplicates = 0;
  for (const name of files) {
    for (const text of fs.readFileSync(path.join(state.dir, name), "utf8").split("\n")) {
      if (text === "") continue;
      let record: { msg?: unknown; tag?: unknown; i?: unknown };
      try {
        record = JSON.parse(text);
      } catch {
        step.check(false, `a torn line in ${name}: ${JSON.stringify(text.slice(0, 80))}`);
        continue;
      }
      if (record.msg !== "filler" || typeof record.tag !== "string" || !seen.has(record.tag)) continue;
      const set = seen.get(record.tag)!;
      if (set.has(record.i as number)) duplicates++;
      set.add(record.i as number);
      lines++;
      if (record.tag === tagAfter) afterIn.set(name, (afterIn.get(name) ?? 0) + 1);
    }
  }
  const numbered = files.filter((name) => /\.\d+$/.test(name));
  step.check(
    numbered.length > 0,
    `its own size rollovers (16 KiB) made ${numbered.length} numbered backup(s): ${numbered.join(", ")}`,
  );
  step.check(
    lines === BEFORE + AFTER && duplicates === 0 && seen.get(tagBefore)!.size === BEFORE &&
      seen.get(tagAfter)!.size === AFTER,
    `${lines}/${
      BEFORE + AFTER
    } lines found across ${files.length} files, ${duplicates} duplicated: none lost`,
  );
  const live = afterIn.get("gateway.log") ?? 0;
  const misplaced = AFTER - live;
  step.check(
    live === AFTER,
    `the ${AFTER} lines written after the rename: ${live} in the live gateway.log, ${
      afterIn.get("gateway.log.ext-1") ?? 0
    } in gateway.log.ext-1${misplaced > 0 && live > 0 ? `, ${misplaced} elsewhere` : ""}`,
  );
}

async function stepPeerGone(step: Step, state: TourState): Promise<void> {
  // a) The stdout reader goes away: the next reply finds the peer gone.
  const reader = await ensureRunning(state, step);
  await reader.closeStdoutReader(WAIT_MS);
  reader.send({ id: nextId(), method: "ping" });
  const first = await reader.waitExit(WAIT_MS);
  state.current = null;
  const gone = reader.stderrLines.find((line) => line.includes("peer gone")) ?? "";
  step.check(
    first.code === 0 && gone !== "",
    `closed its stdout reader, sent a ping: the reply found the peer gone, exit status ${first.code}`,
  );
  step.show(gone || "(no peer-gone line on its stderr)");
  step.check(!hasStackTrace(reader.stderrLines), "no stack trace on its stderr");

  // b) The peer closes the gateway's stdin.
  const writer = await startGateway(state, step);
  writer.endStdin();
  const second = await writer.waitExit(WAIT_MS);
  const ended = writer.stderrLines.find((line) => line.includes("stdin ended")) ?? "";
  step.check(
    second.code === 0 && ended !== "",
    `closed the stdin of a new gateway (pid ${writer.pid}): exit status ${second.code}`,
  );
  step.show(ended || "(no stdin-ended line on its stderr)");
  step.check(!hasStackTrace(writer.stderrLines), "no stack trace on its stderr");
  const after = readPidFile(state.pidPath);
  step.check(after.state === "absent", `both released gateway.pid on the way out (${after.state})`);
}

async function stepSigterm(step: Step, state: TourState): Promise<void> {
  const gateway = await ensureRunning(state, step);
  const slowId = nextId();
  gateway.send({ id: slowId, method: "slow", ms: 500 });
  await gateway.waitStderr(/slow request started/, WAIT_MS);
  process.kill(gateway.pid, "SIGTERM");
  const ended = await gateway.waitExit(WAIT_MS);
  state.current = null;
  const snapshot = gateway.stderrLines.find((line) => line.startsWith("signal=")) ?? "";
  step.check(
    snapshot.startsWith("signal=SIGTERM") && snapshot.includes(" parent_cmdline="),
    "SIGTERM with a request in flight: the snapshot line, logged at once:",
  );
  step.show(snapshot || "(no snapshot line on its stderr)");
  const phases = gateway.stderrLines.filter((line) => /^\+\d+\.\d\ds (phase=|shutdown )/.test(line));
  const want = ["drain", "close-db", "release-pidfile"];
  step.check(
    want.every((name) => phases.some((line) => new RegExp(`phase=${name} ok$`).test(line))),
    "the phases, each timed:",
  );
  for (const line of phases) step.show(line);
  const late = gateway.frames.find((frame) => frame.id === slowId);
  step.check(late?.result === "slept", `the drain let the in-flight request answer: ${JSON.stringify(late)}`);
  const logged = fs.readFileSync(state.logPath, "utf8");
  step.check(
    logged.includes('"line":"signal=SIGTERM') && logged.includes("phase=release-pidfile ok"),
    "the same lines are in gateway.log",
  );
  step.check(ended.code === 0, `exit status ${ended.code ?? ended.signal}`);

  // With --replace a new instance stops the holder; the holder's snapshot names the takeover.
  const holder = await startGateway(state, step);
  const replacer = await startGateway(state, step, ["--replace"]);
  state.current = replacer;
  const holderEnd = await holder.waitExit(WAIT_MS);
  const takeover = holder.stderrLines.find((line) => line.startsWith("signal=")) ?? "";
  step.check(
    holderEnd.code === 0 && takeover.includes(`takeover_target_pid=${holder.pid}`) &&
      takeover.includes(`takeover_by_pid=${replacer.pid}`) && takeover.includes("takeover_for_self=true"),
    `--replace: pid ${replacer.pid} stopped pid ${holder.pid}, whose snapshot names the takeover ` +
      `(exit status ${holderEnd.code}):`,
  );
  step.show(takeover.replace(/ ts=.*$/, " …") || "(no snapshot line on its stderr)");
  const status = readPidFile(state.pidPath);
  step.check(
    status.state === "running" && status.record.pid === replacer.pid,
    `gateway.pid now names pid ${status.state === "running" ? status.record.pid : status.state}`,
  );
  replacer.endStdin();
  const last = await replacer.waitExit(WAIT_MS);
  state.current = null;
  step.check(last.code === 0, `stdin closed on pid ${replacer.pid}: exit status ${last.code}`);
}

/** Starts a gateway and waits for its ready frame, printing one line about it. */
async function startGateway(state: TourState, step: Step, extra: string[] = []): Promise<Gateway> {
  const started = performance.now();
  const gateway = Gateway.start(state.script, state.dir, extra, state.started);
  await gateway.waitReady(WAIT_MS);
  const seconds = ((performance.now() - started) / 1000).toFixed(2);
  const r = gateway.ready;
  step.check(
    true,
    `gateway pid ${gateway.pid}${extra.length ? ` (${extra.join(" ")})` : ""} ready in ${seconds}s: ` +
      `start #${r.starts}, journal ${r.journal}, served so far ${r.served}`,
  );
  return gateway;
}

/** The gateway the previous step left running, or a fresh one when it failed to leave one. */
async function ensureRunning(state: TourState, step: Step): Promise<Gateway> {
  if (state.current && state.current.exit === null) return state.current;
  state.current = await startGateway(state, step);
  return state.current;
}

/** A line of a stack trace (`    at foo (file:1:2)`) or an uncaught error header. */
function hasStackTrace(lines: string[]): boolean {
  return lines.some((line) => /^\s+at\s/.test(line) || /^(error: )?Uncaught/i.test(line));
}

let lastId = 0;
function nextId(): number {
  return ++lastId;
}

/** A frame from the gateway. */
type Frame = Record<string, unknown>;

/** A gateway child process seen from the tour: its frames, its stderr, its exit. */
class Gateway {
  readonly child: ChildProcess;
  readonly pid: number;
  readonly frames: Frame[] = [];
  readonly stderrLines: string[] = [];
  /** `null` while running. */
  exit: { code: number | null; signal: string | null } | null = null;
  #waiters: Array<() => void> = [];
  #exited: Promise<{ code: number | null; signal: string | null }>;

  private constructor(child: ChildProcess) {
    this.child = child;
    if (child.pid === undefined) throw new Error("the gateway could not be started");
    this.pid = child.pid;
    // Attached before anything can make it fire.
    this.#exited = new Promise((resolve) => {
      child.on("exit", (code, signal) => {
        this.exit = { code, signal };
        resolve(this.exit);
        this.#wake();
      });
    });
    let out = "";
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (chunk: string) => {
      out += chunk;
      let newline;
      while ((newline = out.indexOf("\n")) >= 0) {
        const line = out.slice(0, newline);
        out = out.slice(newline + 1);
        if (line.trim() === "") continue;
        try {
          this.frames.push(JSON.parse(line));
        } catch {
          this.frames.push({ unparsable: line });
        }
      }
      this.#wake();
    });
    let err = "";
    child.stderr!.setEncoding("utf8");
    child.stderr!.on("data", (chunk: string) => {
      err += chunk;
      const parts = err.split("\n");
      err = parts.pop()!;
      this.stderrLines.push(...parts);
      this.#wake();
    });
    // A reader closed on purpose, or a child gone, must not crash the tour.
    child.stdin!.on("error", () => {});
    child.stdout!.on("error", () => {});
  }

  /** Spawns `script --serve dir` with this runtime. */
  static start(script: string, dir: string, extra: string[], registry: Gateway[]): Gateway {
    const { command, args } = scriptCommand(script, ["--serve", dir, ...extra]);
    const child = spawn(command, args, { stdio: ["pipe", "pipe", "pipe"] });
    const gateway = new Gateway(child);
    registry.push(gateway);
    return gateway;
  }

  /** The ready frame (after {@linkcode Gateway.waitReady}). */
  get ready(): Frame {
    return this.frames.find((frame) => frame.event === "ready") ?? {};
  }

  send(frame: Frame): void {
    this.child.stdin!.write(JSON.stringify(frame) + "\n");
  }

  /** Sends a request with a fresh id and waits for the reply carrying it. */
  async request(frame: Frame): Promise<Frame> {
    const id = nextId();
    this.send({ id, ...frame });
    return await this.#until(
      () => this.frames.find((f) => f.id === id),
      WAIT_MS,
      `the reply to ${frame.method}`,
    );
  }

  async waitReady(timeoutMs: number): Promise<Frame> {
    return await this.#until(
      () => this.frames.find((f) => f.event === "ready"),
      timeoutMs,
      "its ready frame",
    );
  }

  async waitStderr(pattern: RegExp, timeoutMs: number): Promise<string> {
    return await this.#until(
      () => this.stderrLines.find((line) => pattern.test(line)),
      timeoutMs,
      `a stderr line matching ${pattern}`,
    );
  }

  async waitExit(timeoutMs: number): Promise<{ code: number | null; signal: string | null }> {
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`pid ${this.pid} did not exit within ${timeoutMs} ms${this.#tail()}`)),
        timeoutMs,
      );
    });
    try {
      return await Promise.race([this.#exited, timeout]);
    } finally {
      clearTimeout(timer);
    }
  }

  /**
   * Destroys our end of its stdout pipe and waits until the descriptor is closed: from then on its
   * next write finds the reader gone.
   */
  async closeStdoutReader(timeoutMs: number): Promise<void> {
    const stdout = this.child.stdout!;
    let closed = false;
    stdout.once("close", () => {
      closed = true;
      this.#wake();
    });
    stdout.destroy();
    await this.#until(() => closed || undefined, timeoutMs, "the close of our end of its stdout");
  }

  endStdin(): void {
    this.child.stdin!.end();
  }

  killIfRunning(): void {
    if (this.exit === null) {
      try {
        process.kill(this.pid, "SIGKILL");
      } catch {
        // Already gone between the check and the kill.
      }
    }
  }

  /** Resolves with the first truthy `probe()`; rejects when the child exits first or the time is up. */
  #until<T>(probe: () => T | undefined, timeoutMs: number, what: string): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      let timer: ReturnType<typeof setTimeout> | undefined = undefined;
      const check = () => {
        const found = probe();
        if (found !== undefined) {
          clearTimeout(timer);
          resolve(found);
          return true;
        }
        if (this.exit !== null) {
          clearTimeout(timer);
          reject(
            new Error(
              `pid ${this.pid} exited (${this.exit.code ?? this.exit.signal}) before ${what}${this.#tail()}`,
            ),
          );
          return true;
        }
        return false;
      };
      if (check()) return;
      const waiter = () => {
        if (check()) this.#waiters = this.#waiters.filter((w) => w !== waiter);
      };
      this.#waiters.push(waiter);
      timer = setTimeout(() => {
        this.#waiters = this.#waiters.filter((w) => w !== waiter);
        reject(new Error(`no ${what} from pid ${this.pid} within ${timeoutMs} ms${this.#tail()}`));
      }, timeoutMs);
    });
  }

  #wake(): void {
    for (const waiter of [...this.#waiters]) waiter();
  }

  #tail(): string {
    const lines = this.stderrLines.slice(-5);
    return lines.length ? `; its last stderr lines:\n         ${lines.join("\n         ")}` : "";
  }
}

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/** Writes one line to stderr synchronously; a closed stderr is ignored (there is nowhere else to say it). */
function stderrLine(text: string): void {
  try {
    writeAll(2, encoder.encode(text + "\n"));
  } catch {
    // stderr gone: the log file still has the record.
  }
}

function formatFields(fields: LogFields): string {
  const parts = Object.entries(fields).map(([key, value]) =>
    `${key}=${typeof value === "string" ? value : JSON.stringify(value)}`
  );
  return parts.length ? ` ${parts.join(" ")}` : "";
}

function describe(error: unknown): string {
  return error instanceof Error ? `${error.name}: ${error.message}` : String(error);
}

// ---------------------------------------------------------------------------------------------------
// Entry point (last, so every class and constant above is initialised)
// ---------------------------------------------------------------------------------------------------

const argv = process.argv.slice(2);
if (argv[0] === "--serve") {
  const dir = argv[1];
  const rest = argv.slice(2);
  if (!dir || dir.startsWith("--") || rest.some((arg) => arg !== "--replace")) usageError();
  await serve(dir, rest.includes("--replace")).catch((error) => {
    // A real bug (a full disk under the transport, a broken database) is loud: logged, then status 1.
    gatewayLog?.error("gateway failed", { err: error });
    stderrLine(`gateway[${process.pid}] failed: ${error instanceof Error ? error.stack : String(error)}`);
    exit(1);
  });
} else {
  if (argv.some((arg) => arg !== "--keep")) usageError();
  exit(await tour({ keep: argv.includes("--keep") }));
}

function usageError(): never {
  stderrLine(`demo.ts: unexpected arguments ${JSON.stringify(argv)}`);
  stderrLine(USAGE);
  exit(EXIT_USAGE);
}
