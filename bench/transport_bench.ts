/**
 * Bench of transport.ts against its physical baselines.
 *
 * 1. Writes: frames/s of 200-byte frames into a pipe drained by `cat > /dev/null`, through
 *    `createStdioTransport().write` versus `JSON.stringify` + one raw `write(2)` per frame on the same
 *    kind of pipe. Each measurement runs in a child whose stdout is that pipe
 *    (`sh -c 'exec <runtime> bench --child MODE | cat > /dev/null'`); the child reports on stderr.
 * 2. Reads: MB/s of `readFrames` over 200-byte frames in 64 KiB chunks versus a raw line split of the
 *    same chunks (cut on `0x0A`, decode, `JSON.parse`, no async iteration).
 *
 * Prints `ratio transport/raw-write X` and `ratio readFrames/raw-split X` (medians of per-round ratios)
 * plus the median absolute rates.
 */

import * as fs from "node:fs";
import process from "node:process";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { scriptCommand } from "../platform.ts";
import { createStdioTransport, readFrames } from "../transport.ts";

const WRITE_FRAMES = 200_000;
const ROUNDS = 7;
const READ_BYTES = 32 * 1024 * 1024;
const CHUNK_BYTES = 64 * 1024;

/** A frame whose JSON line is 200 bytes, newline included. */
function makeFrame(i: number): Record<string, unknown> {
  const frame = { jsonrpc: "2.0", method: "notifications/progress", params: { token: "t", i, pad: "" } };
  const base = JSON.stringify(frame).length + 1;
  frame.params.pad = "x".repeat(200 - base - String(i).length + 1);
  return frame;
}

function frameWithId(template: Record<string, unknown>, i: number): Record<string, unknown> {
  const params = template.params as Record<string, unknown>;
  return { ...template, params: { ...params, i } };
}

function child(mode: string): void {
  const template = makeFrame(100_000);
  const frames: Record<string, unknown>[] = [];
  for (let i = 0; i < 1000; i++) frames.push(frameWithId(template, 100_000 + i));
  const transport = createStdioTransport();
  const started = performance.now();
  if (mode === "raw") {
    // One write(2) per frame of the UTF-8 bytes, encoded into one reused buffer (the fastest raw form on
    // all three runtimes; a string write re-encodes inside the runtime). A 200-byte write to a pipe is
    // all-or-nothing (under PIPE_BUF), and on a non-blocking pipe (Node's stdout) EAGAIN is retried at
    // once: the cheapest correct loop there is.
    const encoder = new TextEncoder();
    const buffer = new Uint8Array(64 * 1024);
    for (let i = 0; i < WRITE_FRAMES; i++) {
      const { written } = encoder.encodeInto(JSON.stringify(frames[i % 1000]) + "\n", buffer);
      while (true) {
        try {
          fs.writeSync(1, buffer, 0, written);
          break;
        } catch (error) {
          if ((error as { code?: string }).code !== "EAGAIN") throw error;
        }
      }
    }
  } else {
    for (let i = 0; i < WRITE_FRAMES; i++) {
      if (!transport.write(frames[i % 1000])) throw new Error("peer gone during the bench");
    }
  }
  const seconds = (performance.now() - started) / 1000;
  fs.writeSync(2, `rate ${WRITE_FRAMES / seconds}\n`);
}

function runChild(mode: string): Promise<number> {
  const script = fileURLToPath(import.meta.url);
  const { command, args } = scriptCommand(script, ["--child", mode]);
  const quoted = [command, ...args].map((part) => `'${part.replaceAll("'", `'\\''`)}'`).join(" ");
  return new Promise((resolve, reject) => {
    const sh = spawn("sh", ["-c", `exec ${quoted} | cat > /dev/null`], {
      stdio: ["ignore", "ignore", "pipe"],
    });
    let stderr = "";
    sh.on("error", reject);
    sh.on("close", (code) => {
      const match = /rate ([\d.]+)/.exec(stderr);
      if (code !== 0 || !match) reject(new Error(`bench child ${mode} failed (${code}): ${stderr}`));
      else resolve(Number(match[1]));
    });
    sh.stderr!.on("data", (chunk: Uint8Array) => (stderr += new TextDecoder().decode(chunk)));
  });
}

function makeChunks(): Uint8Array[] {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < READ_BYTES; i++) {
    const line = JSON.stringify(makeFrame(100_000 + (i % 100_000))) + "\n";
    lines.push(line);
    size += line.length;
  }
  const bytes = new TextEncoder().encode(lines.join(""));
  const chunks: Uint8Array[] = [];
  for (let offset = 0; offset < bytes.length; offset += CHUNK_BYTES) {
    chunks.push(bytes.subarray(offset, offset + CHUNK_BYTES));
  }
  return chunks;
}

async function* chunkSource(chunks: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const chunk of chunks) yield chunk;
}

async function readWithReadFrames(chunks: Uint8Array[]): Promise<number> {
  let count = 0;
  for await (const _frame of readFrames(chunkSource(chunks))) count++;
  return count;
}

async function readWithRawSplit(chunks: Uint8Array[]): Promise<number> {
  const decoder = new TextDecoder();
  let count = 0;
  let carry = new Uint8Array(0);
  for await (const chunk of chunkSource(chunks)) {
    let start = 0;
    while (true) {
      const end = chunk.indexOf(0x0a, start);
      if (end === -1) break;
      let line = chunk.subarray(start, end);
      if (carry.length > 0) {
        const joined = new Uint8Array(carry.length + line.length);
        joined.set(carry);
        joined.set(line, carry.length);
        line = joined;
        carry = new Uint8Array(0);
      }
      JSON.parse(decoder.decode(line));
      count++;
      start = end + 1;
    }
    if (start < chunk.length) carry = chunk.slice(start);
  }
  return count;
}

async function timeRead(
  read: (chunks: Uint8Array[]) => Promise<number>,
  chunks: Uint8Array[],
): Promise<number> {
  const started = performance.now();
  const count = await read(chunks);
  const seconds = (performance.now() - started) / 1000;
  if (count === 0) throw new Error("no frames read");
  return READ_BYTES / (1024 * 1024) / seconds;
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
}

/**
 * Runs both sides once per round, alternating which goes first, and reports medians: a burst of load
 * from other processes then spoils one round rather than the result.
 */
async function compare(
  rounds: number,
  baseline: () => Promise<number>,
  measured: () => Promise<number>,
): Promise<{ baseline: number; measured: number; ratio: number }> {
  const baselines: number[] = [];
  const measures: number[] = [];
  const ratios: number[] = [];
  for (let round = 0; round < rounds; round++) {
    let base: number;
    let value: number;
    if (round % 2 === 0) {
      base = await baseline();
      value = await measured();
    } else {
      value = await measured();
      base = await baseline();
    }
    baselines.push(base);
    measures.push(value);
    ratios.push(value / base);
  }
  return { baseline: median(baselines), measured: median(measures), ratio: median(ratios) };
}

async function main(): Promise<void> {
  const writes = await compare(ROUNDS, () => runChild("raw"), () => runChild("transport"));
  console.log(`rate transport/raw-write ${Math.round(writes.baseline)} frames/s`);
  console.log(`rate transport/transport ${Math.round(writes.measured)} frames/s`);
  console.log(`ratio transport/raw-write ${writes.ratio.toFixed(2)}`);

  const chunks = makeChunks();
  await timeRead(readWithReadFrames, chunks); // warm-up
  await timeRead(readWithRawSplit, chunks);
  const reads = await compare(
    ROUNDS,
    () => timeRead(readWithRawSplit, chunks),
    () => timeRead(readWithReadFrames, chunks),
  );
  console.log(`rate readFrames/raw-split ${reads.baseline.toFixed(1)} MB/s`);
  console.log(`rate readFrames/readFrames ${reads.measured.toFixed(1)} MB/s`);
  console.log(`ratio readFrames/raw-split ${reads.ratio.toFixed(2)}`);
}

const childAt = process.argv.indexOf("--child");
if (childAt !== -1) child(process.argv[childAt + 1]);
else await main();
