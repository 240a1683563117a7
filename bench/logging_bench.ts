/**
 * Throughput of `openRotatingFile` and `createLogger` against the physical baselines and against the
 * peers users pick instead (pino's destinations and logger, LogTape's rotating file sink,
 * rotating-file-stream), on the same 100-byte records. Runs on Deno, Bun and Node; prints `rate …`,
 * `ratio …` and, for a peer that does not load on this runtime, `skip …` lines.
 *
 * Baselines: one raw `write(2)` per record (`raw-append`), a raw `stat` of the path before each raw
 * write (`raw-stat-append`, the floor of a per-record rotation check; also every 16th), and records
 * gathered into 64 KiB and written with one raw `write(2)` each (`raw-batch64k`, the floor of any
 * buffered logger). Rounds alternate so machine noise hits every variant alike; the best round counts.
 * Asynchronous variants are timed until their stream has closed (every record handed to the kernel).
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { createLogger, openRotatingFile } from "../logging.ts";

const RECORDS = 100_000;
const ROUNDS = 5;
const RECORD_BYTES = 100;
const BATCH_BYTES = 64 * 1024;

const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keelson-bench-"));
const records: string[] = [];
for (let i = 0; i < 1024; i++) records.push(`record ${i} `.padEnd(RECORD_BYTES - 1, "x") + "\n");
// A logger line is {"ts":"<24>","level":"info","msg":"…"} + "\n": size the message to make it 100 bytes.
const LOGGER_OVERHEAD = `{"ts":"${new Date().toISOString()}","level":"info","msg":""}\n`.length;
const messages = records.map((r) => r.slice(0, RECORD_BYTES - LOGGER_OVERHEAD));

/** A variant writes `count` records to `file`, and is done when its promise (if any) settles. */
type Variant = { name: string; count: number; run: (file: string, count: number) => void | Promise<void> };

const APPEND = fs.constants.O_WRONLY | fs.constants.O_APPEND | fs.constants.O_CREAT;

/** Resolves when a Node-style stream has closed (or finished, for streams that never emit close). */
function ended(
  stream: { once(event: string, listener: (...args: unknown[]) => void): unknown },
): Promise<void> {
  return new Promise((resolve, reject) => {
    let settled = false;
    const done = () => {
      if (!settled) resolve(settled = true as never);
    };
    stream.once("close", done);
    stream.once("finish", () => setTimeout(done, 0));
    stream.once("error", reject);
  });
}

const variants: Variant[] = [
  {
    name: "raw-append",
    count: RECORDS,
    run: (file, count) => {
      const fd = fs.openSync(file, APPEND, 0o644);
      for (let i = 0; i < count; i++) fs.writeSync(fd, records[i & 1023]!);
      fs.closeSync(fd);
    },
  },
  {
    // The physical floor of a per-record rotation check: one raw stat(path) before each raw write.
    name: "raw-stat-append",
    count: RECORDS,
    run: (file, count) => {
      const fd = fs.openSync(file, APPEND, 0o644);
      for (let i = 0; i < count; i++) {
        fs.statSync(file);
        fs.writeSync(fd, records[i & 1023]!);
      }
      fs.closeSync(fd);
    },
  },
  {
    name: "raw-stat16-append",
    count: RECORDS,
    run: (file, count) => {
      const fd = fs.openSync(file, APPEND, 0o644);
      for (let i = 0; i < count; i++) {
        if ((i & 15) === 0) fs.statSync(file);
        fs.writeSync(fd, records[i & 1023]!);
      }
      fs.closeSync(fd);
    },
  },
  {
    // The floor of a buffered logger: records gathered as text, joined and encoded once per 64 KiB, one
    // write(2) per batch (the cheapest way found: encoding record by record, or `+=`, costs 2-5x more).
    name: "raw-batch64k",
    count: RECORDS,
    run: (file, count) => {
      const fd = fs.openSync(file, APPEND, 0o644);
      const batch = new Uint8Array(BATCH_BYTES);
      const encoder = new TextEncoder();
      let parts: string[] = [];
      let units = 0;
      for (let i = 0; i < count; i++) {
        const record = records[i & 1023]!;
        if (units + record.length > BATCH_BYTES) {
          fs.writeSync(fd, batch, 0, encoder.encodeInto(parts.join(""), batch).written);
          parts = [];
          units = 0;
        }
        parts.push(record);
        units += record.length;
      }
      if (units > 0) fs.writeSync(fd, batch, 0, encoder.encodeInto(parts.join(""), batch).written);
      fs.closeSync(fd);
    },
  },
  {
    name: "keelson-default",
    count: RECORDS,
    run: (file, count) => {
      const log = openRotatingFile(file);
      for (let i = 0; i < count; i++) log.write(records[i & 1023]!);
      log.close();
    },
  },
  {
    name: "keelson-check16",
    count: RECORDS,
    run: (file, count) => {
      const log = openRotatingFile(file, { checkEvery: 16 });
      for (let i = 0; i < count; i++) log.write(records[i & 1023]!);
      log.close();
    },
  },
  {
    name: "keelson-buffered",
    count: RECORDS,
    run: (file, count) => {
      const log = openRotatingFile(file, { bufferBytes: BATCH_BYTES });
      for (let i = 0; i < count; i++) log.write(records[i & 1023]!);
      log.close();
    },
  },
  {
    name: "keelson-logger-default",
    count: RECORDS,
    run: (file, count) => {
      const sink = openRotatingFile(file);
      const logger = createLogger({ sink });
      for (let i = 0; i < count; i++) logger.info(messages[i & 1023]!);
      sink.close();
    },
  },
  {
    name: "keelson-logger-buffered",
    count: RECORDS,
    run: (file, count) => {
      const sink = openRotatingFile(file, { bufferBytes: BATCH_BYTES });
      const logger = createLogger({ sink });
      for (let i = 0; i < count; i++) logger.info(messages[i & 1023]!);
      sink.close();
    },
  },
];

const skipped: string[] = [];

/** Adds the peers that load on this runtime; one `skip` line for each that does not. */
async function addPeers(): Promise<void> {
  try {
    const pino = (await import("pino")).default;
    variants.push(
      {
        name: "pino-sync",
        count: RECORDS,
        run: (file, count) => {
          const dest = pino.destination({ dest: file, sync: true });
          for (let i = 0; i < count; i++) dest.write(records[i & 1023]!);
          const done = ended(dest);
          dest.end();
          return done;
        },
      },
      {
        name: "pino-async",
        count: RECORDS,
        run: (file, count) => {
          const dest = pino.destination({ dest: file, sync: false, minLength: 4096 });
          for (let i = 0; i < count; i++) dest.write(records[i & 1023]!);
          const done = ended(dest);
          dest.end();
          return done;
        },
      },
      {
        // pino's logger at its fastest: no pid/hostname (keelson writes neither), epoch-ms time.
        name: "pino-logger-async",
        count: RECORDS,
        run: (file, count) => {
          const dest = pino.destination({ dest: file, sync: false, minLength: 4096 });
          const logger = pino({ base: null }, dest);
          for (let i = 0; i < count; i++) logger.info(messages[i & 1023]!);
          const done = ended(dest);
          dest.end();
          return done;
        },
      },
    );
  } catch (error) {
    skipped.push(`pino: ${(error as Error).message}`);
  }
  try {
    const { getRotatingFileSink } = await import("@logtape/file");
    const base = { category: ["bench"], level: "info", rawMessage: "", timestamp: 0, properties: {} };
    const logRecords = records.map((r) => ({ ...base, message: [r] }));
    variants.push({
      name: "logtape-rotating-buffered",
      count: RECORDS,
      run: async (file, count) => {
        const sink = getRotatingFileSink(file, {
          maxSize: 1 << 30,
          formatter: (record) => record.message[0] as string,
        });
        for (let i = 0; i < count; i++) sink(logRecords[i & 1023] as never);
        await (sink as unknown as { [Symbol.dispose](): void | Promise<void> })[Symbol.dispose]();
      },
    });
  } catch (error) {
    skipped.push(`logtape-rotating-buffered: ${(error as Error).message}`);
  }
  try {
    const rfs = await import("rotating-file-stream");
    variants.push({
      name: "rotating-file-stream",
      count: RECORDS / 10, // about fifty times slower than a raw write: fewer records, same rate measured
      run: (file, count) => {
        const stream = rfs.createStream(path.basename(file), { path: path.dirname(file), size: "1G" });
        for (let i = 0; i < count; i++) stream.write(records[i & 1023]!);
        const done = ended(stream);
        stream.end();
        return done;
      },
    });
  } catch (error) {
    skipped.push(`rotating-file-stream: ${(error as Error).message}`);
  }
}

await addPeers();
const best = new Map<string, number>();
const failed = new Map<string, string>();
try {
  for (let round = 0; round < ROUNDS; round++) {
    for (const variant of variants) {
      if (failed.has(variant.name)) continue;
      const file = path.join(dir, `${variant.name}.log`);
      try {
        const start = performance.now();
        await variant.run(file, variant.count);
        const seconds = (performance.now() - start) / 1000;
        const size = fs.statSync(file).size;
        if (size !== variant.count * RECORD_BYTES && !variant.name.includes("logger")) {
          throw new Error(`wrote ${size} bytes, expected ${variant.count * RECORD_BYTES}`);
        }
        best.set(variant.name, Math.max(best.get(variant.name) ?? 0, variant.count / seconds));
      } catch (error) {
        failed.set(variant.name, (error as Error).message);
      }
      for (const name of fs.readdirSync(dir)) {
        fs.rmSync(path.join(dir, name), { recursive: true, force: true });
      }
    }
  }
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}

for (const reason of skipped) console.log(`skip ${reason.replace(/\s+/g, " ")}`);
for (const [name, reason] of failed) console.log(`skip ${name}: failed: ${reason.replace(/\s+/g, " ")}`);
for (const variant of variants) {
  const rate = best.get(variant.name);
  if (rate !== undefined) console.log(`rate logging/${variant.name} ${Math.round(rate)} records/s`);
}
const ratio = (name: string, baseline: string) => {
  const a = best.get(name);
  const b = best.get(baseline);
  if (a !== undefined && b !== undefined) console.log(`ratio ${name}/${baseline} ${(a / b).toFixed(2)}`);
};
// Everything against one raw write per record.
for (const variant of variants) if (variant.name !== "raw-append") ratio(variant.name, "raw-append");
// How close each keelson variant comes to the floor of its own design.
ratio("keelson-default", "raw-stat-append");
ratio("keelson-check16", "raw-stat16-append");
ratio("keelson-buffered", "raw-batch64k");
// The aims: buffered against pino's sync destination, the logger paths against each other.
ratio("keelson-buffered", "pino-sync");
ratio("keelson-buffered", "pino-async");
ratio("keelson-buffered", "logtape-rotating-buffered");
ratio("keelson-logger-buffered", "pino-logger-async");
