// Cost of a race-safe PID file: acquire + release per second against the physical baseline, a raw
// exclusive create + unlink of the same file (what a naive PID file costs), and the cost of judging a
// stale record with readPidFile (a status command, or the first look of every restart after a crash).
//
//   deno run -A bench/pidfile_bench.ts  |  bun bench/pidfile_bench.ts  |  node bench/pidfile_bench.ts
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { acquirePidFile, readPidFile } from "../pidfile.ts";
import { closeFd, createExclusive, hostname, runtime, unlink, writeOnce } from "../platform.ts";

/** Slices per measured case; the cases alternate slice by slice so that noise on a shared machine hits all. */
const SLICES = 8;
const SLICE_MS = 250;
const WARMUP_MS = 200;

type Case = () => unknown | Promise<unknown>;

/** Operations per second of each case, measured in alternating slices. */
async function rates(cases: Case[]): Promise<number[]> {
  for (const run of cases) {
    const warmupEnd = performance.now() + WARMUP_MS;
    while (performance.now() < warmupEnd) await run();
  }
  const counts = cases.map(() => 0);
  const times = cases.map(() => 0);
  for (let slice = 0; slice < SLICES; slice += 1) {
    for (const [index, run] of cases.entries()) {
      const start = performance.now();
      const end = start + SLICE_MS;
      while (performance.now() < end) {
        for (let i = 0; i < 20; i += 1) await run();
        counts[index] += 20;
      }
      times[index] += performance.now() - start;
    }
  }
  return counts.map((count, index) => count / (times[index] / 1000));
}

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keelson-bench-"));
try {
  const pidPath = path.join(dir, "service.pid");
  const line = new TextEncoder().encode(`${process.pid}\n`);

  const [raw, pidfile, bare] = await rates([
    () => {
      const fd = createExclusive(pidPath);
      writeOnce(fd, line);
      closeFd(fd);
      unlink(pidPath);
    },
    async () => {
      const pidFile = await acquirePidFile(pidPath);
      pidFile.release();
    },
    async () => {
      const pidFile = await acquirePidFile(pidPath, { releaseOnExit: false, releaseOnSignals: [] });
      pidFile.release();
    },
  ]);

  // A stale record: a pid that is gone, as after a crash.
  const gone = 2 ** 22 + 12345; // above Linux's largest pid_max: never a live process
  fs.writeFileSync(
    pidPath,
    JSON.stringify({ pid: gone, startTime: 1, argv: [], createdAt: "", hostname: hostname() }),
  );
  if (readPidFile(pidPath).state !== "stale") throw new Error("bench setup: the record should read as stale");
  const reused = path.join(dir, "reused.pid");
  fs.writeFileSync(
    reused,
    JSON.stringify({ pid: process.pid === 1 ? 2 : 1, startTime: 1, hostname: hostname() }),
  );
  if (readPidFile(reused).state !== "stale") {
    throw new Error("bench setup: the reused record should be stale");
  }
  const [reads, reuseReads] = await rates([() => readPidFile(pidPath), () => readPidFile(reused)]);

  console.log(`runtime ${runtime}`);
  console.log(`rate pidfile/acquire-release ${Math.round(pidfile)} ops/s`);
  console.log(`rate pidfile/acquire-release-no-hooks ${Math.round(bare)} ops/s`);
  console.log(`rate raw-create-unlink ${Math.round(raw)} ops/s`);
  console.log(`ratio pidfile/raw-create-unlink ${(pidfile / raw).toFixed(3)}`);
  console.log(`cost readPidFile/stale-dead-pid ${(1e6 / reads).toFixed(1)} µs/call`);
  console.log(`cost readPidFile/stale-reused-pid ${(1e6 / reuseReads).toFixed(1)} µs/call`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}
