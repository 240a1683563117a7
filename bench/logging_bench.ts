/**
 * Throughput of `openRotatingFile` and `createLogger` against the physical baseline: the same 100-byte
 * records appended to an `O_APPEND` descriptor with one raw `write` each. Runs on Deno, Bun and Node;
 * prints `rate …` and `ratio …` lines. Rounds alternate so machine noise hits every variant alike; the
 * best round of each counts. Two extra raw variants (a raw `stat` of the path before every raw write,
 * and before every 16th) show the physical floor of a check every record and every 16 records.
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createLogger, openRotatingFile } from "../logging.ts";

const RECORDS = 100_000;
const ROUNDS = 5;
const RECORD_BYTES = 100;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keelson-bench-"));
const records: string[] = [];
for (let i = 0; i < 1024; i++) records.push(`record ${i} `.padEnd(RECORD_BYTES - 1, "x") + "\n");
// A logger line is {"ts":"<24>","level":"info","msg":"…"} + "\n": size the message to make it 100 bytes.
const LOGGER_OVERHEAD = `{"ts":"${new Date().toISOString()}","level":"info","msg":""}\n`.length;
const messages = records.map((r) => r.slice(0, RECORD_BYTES - LOGGER_OVERHEAD));

type Variant = { name: string; run: (file: string) => void };

const variants: Variant[] = [
  {
    name: "raw-append",
    run: (file) => {
      const fd = fs.openSync(
        file,
        fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT,
        0o644,
      );
      for (let i = 0; i < RECORDS; i++) fs.writeSync(fd, records[i & 1023]);
      fs.closeSync(fd);
    },
  },
  {
    // The physical floor of a per-record rotation check: one raw stat(path) before each raw write.
    name: "raw-stat-append",
    run: (file) => {
      const fd = fs.openSync(
        file,
        fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT,
        0o644,
      );
      for (let i = 0; i < RECORDS; i++) {
        fs.statSync(file);
        fs.writeSync(fd, records[i & 1023]);
      }
      fs.closeSync(fd);
    },
  },
  {
    name: "raw-stat16-append",
    run: (file) => {
      const fd = fs.openSync(
        file,
        fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT,
        0o644,
      );
      for (let i = 0; i < RECORDS; i++) {
        if ((i & 15) === 0) fs.statSync(file);
        fs.writeSync(fd, records[i & 1023]);
      }
      fs.closeSync(fd);
    },
  },
  {
    name: "logging",
    run: (file) => {
      const log = openRotatingFile(file);
      for (let i = 0; i < RECORDS; i++) log.write(records[i & 1023]);
      log.close();
    },
  },
  {
    name: "logging-check16",
    run: (file) => {
      const log = openRotatingFile(file, { checkEvery: 16 });
      for (let i = 0; i < RECORDS; i++) log.write(records[i & 1023]);
      log.close();
    },
  },
  {
    name: "logger",
    run: (file) => {
      const sink = openRotatingFile(file);
      const logger = createLogger({ sink });
      for (let i = 0; i < RECORDS; i++) logger.info(messages[i & 1023]);
      sink.close();
    },
  },
];

const best = new Map<string, number>();
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const variant of variants) {
      const file = path.join(dir, `${variant.name}.log`);
      const start = performance.now();
      variant.run(file);
      const seconds = (performance.now() - start) / 1000;
      best.set(variant.name, Math.max(best.get(variant.name) ?? 0, RECORDS / seconds));
      for (const name of fs.readdirSync(dir)) fs.rmSync(path.join(dir, name), { force: true });
    }
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}

const ratio = (name: string, baseline: string) =>
  console.log(`ratio ${name}/${baseline} ${(best.get(name)! / best.get(baseline)!).toFixed(2)}`);
for (const variant of variants) {
  console.log(`rate logging/${variant.name} ${Math.round(best.get(variant.name)!)} records/s`);
}
ratio("logging", "raw-append");
ratio("logging-check16", "raw-append");
ratio("logger", "raw-append");
// How close each variant comes to the floor of its own check period (raw stat + raw write).
ratio("logging", "raw-stat-append");
ratio("logging-check16", "raw-stat16-append");
