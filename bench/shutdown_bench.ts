/**
 * Bench of shutdown.ts against its physical baseline.
 *
 * 1. Snapshot cost: p50 and p99 in microseconds of `snapshotShutdownContext("SIGTERM", { pidFile })` (goal:
 *    p99 under 1 ms, so it can run inside a signal handler), versus raw `readFileSync` of the very files it
 *    reads (`/proc/self/status`, `/proc/<ppid>/status`, both `cmdline`s, `/proc/loadavg`, the two absent
 *    markers) with no parsing, redaction or formatting.
 * 2. Signal to log line: milliseconds from `kill -TERM` of a child that called `installShutdown()` to the
 *    arrival of its snapshot line on our end of its stderr pipe (the child is this file with `--child`).
 *
 * 3. Wedged before the signal: a child that is stuck in a busy loop before SIGTERM (forceExitMs 500) must
 *    be gone 500 ms + the 200 ms grace after it; the overshoot past that is the watchdog's own latency.
 * 4. Redaction: `redactArgv` of a 12-argument command line versus a plain `join(" ")` of it.
 *
 * Prints `p50 shutdown/snapshot X us`, `p99 shutdown/snapshot X us`, `ratio shutdown/raw-proc-reads X`
 * (median of per-round p50 ratios), `p50 shutdown/kill-to-snapshot X ms`,
 * `max shutdown/wedged-overshoot X ms` and `ratio redactArgv/join X`.
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { runtime, runtimeVersion, scriptCommand } from "../platform.ts";
import { installShutdown, redactArgv, snapshotShutdownContext } from "../shutdown.ts";

const ROUNDS = 7;
const ITERATIONS = 1500;
const WARMUP = 300;
const KILL_RUNS = 8;
const WEDGED_RUNS = 4;
const WEDGED_FORCE_EXIT_MS = 500;
/** The watchdog's grace after forceExitMs (documented on installShutdown). */
const WEDGED_GRACE_MS = 200;
const SAMPLE_ARGV = [
  "curl",
  "-sS",
  "-u",
  "ops:hunter2",
  "-H",
  "Authorization: Bearer abc.def",
  "--retry",
  "3",
  "--config",
  '{"timeout": 5, "password": "x"}',
  "https://api.example/v1/items?limit=10&token=t",
  "--output=/tmp/out.json",
];

function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
}

function median(values: number[]): number {
  return percentile([...values].sort((a, b) => a - b), 50);
}

/** Microseconds per call of `fn`, one sample per call, sorted. */
function sample(fn: () => void, iterations: number): number[] {
  const samples: number[] = [];
  for (let i = 0; i < iterations; i++) {
    const start = performance.now();
    fn();
    samples.push((performance.now() - start) * 1000);
  }
  return samples.sort((a, b) => a - b);
}

function rawReads(pidFile: string): () => void {
  const ppid = process.ppid;
  const files = [
    "/proc/self/status",
    `/proc/${ppid}/status`,
    "/proc/self/cmdline",
    `/proc/${ppid}/cmdline`,
    "/proc/loadavg",
  ];
  const markers = [`${pidFile}.takeover.json`, `${pidFile}.planned-stop.json`];
  return () => {
    for (const file of files) fs.readFileSync(file);
    for (const marker of markers) {
      try {
        fs.readFileSync(marker);
      } catch {
        // absent, as in the snapshot run
      }
    }
  };
}

function child(): void {
  installShutdown({
    forceExitMs: 5000,
    systemd: false,
    log: (line) => {
      try {
        fs.writeSync(2, line + "\n");
      } catch {
        // the bench parent went away
      }
    },
  });
  fs.writeSync(2, "ready\n");
  setInterval(() => {}, 1000);
}

function killToSnapshotMs(): Promise<number> {
  const { command, args } = scriptCommand(fileURLToPath(import.meta.url), ["--child"]);
  const childProcess = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve, reject) => {
    let sentAt = 0;
    let buffered = "";
    childProcess.on("close", (code, signal) => {
      if (sentAt === 0) reject(new Error(`bench child ended early (${code ?? signal})`));
    });
    childProcess.stderr!.setEncoding("utf8");
    childProcess.stderr!.on("data", (chunk: string) => {
      buffered += chunk;
      if (sentAt === 0 && buffered.includes("ready\n")) {
        sentAt = performance.now();
        process.kill(childProcess.pid!, "SIGTERM");
      } else if (sentAt !== 0 && /\nsignal=SIGTERM /.test(buffered)) {
        resolve(performance.now() - sentAt);
        buffered = "";
        sentAt = -1;
      }
    });
  });
}

async function main(): Promise<void> {
  console.log(`runtime ${runtime} ${runtimeVersion}`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keelson-"));
  try {
    const pidFile = path.join(dir, "bench.pid");
    const snapshot = () => void snapshotShutdownContext("SIGTERM", { pidFile });
    const raw = rawReads(pidFile);
    sample(snapshot, WARMUP);
    sample(raw, WARMUP);
    const p50s: number[] = [];
    const p99s: number[] = [];
    const ratios: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      const ours = sample(snapshot, ITERATIONS);
      const base = sample(raw, ITERATIONS);
      p50s.push(percentile(ours, 50));
      p99s.push(percentile(ours, 99));
      ratios.push(percentile(ours, 50) / percentile(base, 50));
    }
    console.log(`p50 shutdown/snapshot ${median(p50s).toFixed(1)} us`);
    console.log(`p99 shutdown/snapshot ${median(p99s).toFixed(1)} us`);
    console.log(`ratio shutdown/raw-proc-reads ${median(ratios).toFixed(2)}`);
    const delays: number[] = [];
    for (let run = 0; run < KILL_RUNS; run++) delays.push(await killToSnapshotMs());
    console.log(`p50 shutdown/kill-to-snapshot ${median(delays).toFixed(2)} ms`);
    console.log(`max shutdown/kill-to-snapshot ${Math.max(...delays).toFixed(2)} ms`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function wedgedChild(): void {
  installShutdown({ forceExitMs: WEDGED_FORCE_EXIT_MS, systemd: false, log: () => {} });
  fs.writeSync(2, "ready\n");
  for (;;) Math.sqrt(Math.random()); // stuck before any signal: no handler of ours can ever run
}

/** Milliseconds past forceExitMs + grace at which a child wedged before SIGTERM was gone. */
function wedgedOvershootMs(): Promise<number> {
  const { command, args } = scriptCommand(fileURLToPath(import.meta.url), ["--wedged"]);
  const childProcess = spawn(command, args, { stdio: ["ignore", "ignore", "pipe"] });
  return new Promise((resolve) => {
    let sentAt = 0;
    childProcess.on(
      "close",
      () => resolve(performance.now() - sentAt - WEDGED_FORCE_EXIT_MS - WEDGED_GRACE_MS),
    );
    childProcess.stderr!.setEncoding("utf8");
    childProcess.stderr!.on("data", (chunk: string) => {
      if (sentAt !== 0 || !chunk.includes("ready")) return;
      setTimeout(() => {
        sentAt = performance.now();
        process.kill(childProcess.pid!, "SIGTERM");
      }, 100);
    });
  });
}

function redactionRatio(): number {
  const ratios: number[] = [];
  let sink = 0;
  for (let round = 0; round < ROUNDS; round++) {
    const ours = sample(() => void (sink += redactArgv(SAMPLE_ARGV).length), ITERATIONS);
    const base = sample(() => void (sink += SAMPLE_ARGV.join(" ").length), ITERATIONS);
    ratios.push(percentile(ours, 50) / Math.max(percentile(base, 50), 0.001));
  }
  if (sink < 0) console.log(sink);
  return median(ratios);
}

async function extra(): Promise<void> {
  const overshoots: number[] = [];
  for (let run = 0; run < WEDGED_RUNS; run++) overshoots.push(await wedgedOvershootMs());
  console.log(`max shutdown/wedged-overshoot ${Math.max(...overshoots).toFixed(1)} ms`);
  console.log(`ratio redactArgv/join ${redactionRatio().toFixed(2)}`);
}

if (process.argv.includes("--child")) child();
else if (process.argv.includes("--wedged")) wedgedChild();
else {
  await main();
  await extra();
}
