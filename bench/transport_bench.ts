/**
 * Bench of transport.ts against its physical baselines and the MCP SDK.
 *
 * 1. Writes: frames/s of 200-byte frames into a pipe drained by `cat > /dev/null`, through
 *    `createStdioTransport().write` versus `JSON.stringify` + one raw `write(2)` per frame on the same
 *    kind of pipe, and versus the MCP SDK's `StdioServerTransport.send` (awaited per frame, as its
 *    servers do). Each measurement runs in a child whose stdout is that pipe
 *    (`sh -c 'exec <runtime> bench --child MODE | cat > /dev/null'`); the child reports on stderr.
 * 2. Reads: MB/s of `readFrames` over 200-byte and small (about 40-byte) frames in 64 KiB chunks versus
 *    a reader that decodes each chunk whole (streaming `TextDecoder`), splits the text on `\n` and
 *    yields `JSON.parse` of each line (`chunk-split`: an async iterable of frames like `readFrames`),
 *    and versus the same decode and split as one loop with no async step per frame
 *    (`chunk-split-loop`: the floor no async iterable reaches on small lines).
 *
 * Prints `ratio transport/raw-write X`, `ratio transport/mcp-sdk-send X` (or `skip mcp-sdk-send: why`),
 * `ratio readFrames/chunk-split X`, `ratio readFrames/chunk-split-loop X` and their `-small` variants
 * (medians of per-round ratios) plus the median absolute rates.
 */

import * as fs from "node:fs";
import process from "node:process";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { scriptCommand } from "../platform.ts";
import { createStdioTransport, readFrames } from "../transport.ts";

const WRITE_FRAMES = 100_000;
const ROUNDS = 5;
const READ_BYTES = 16 * 1024 * 1024;
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

async function child(mode: string): Promise<void> {
  const template = makeFrame(100_000);
  const frames: Record<string, unknown>[] = [];
  for (let i = 0; i < 1000; i++) frames.push(frameWithId(template, 100_000 + i));
  if (mode === "sdk") {
    let send: (message: unknown) => Promise<void>;
    try {
      const sdk = await import("@modelcontextprotocol/sdk/server/stdio.js");
      const server = new sdk.StdioServerTransport();
      send = (message) => server.send(message as Parameters<typeof server.send>[0]);
    } catch (error) {
      fs.writeSync(2, `skip ${error instanceof Error ? error.message.split("\n")[0] : String(error)}\n`);
      return;
    }
    const started = performance.now();
    for (let i = 0; i < WRITE_FRAMES; i++) await send(frames[i % 1000]);
    const seconds = (performance.now() - started) / 1000;
    fs.writeSync(2, `rate ${WRITE_FRAMES / seconds}\n`);
    return;
  }
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

class Skip extends Error {}

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
      const skip = /^skip (.*)$/m.exec(stderr);
      if (skip) reject(new Skip(skip[1]));
      else if (code !== 0 || !match) reject(new Error(`bench child ${mode} failed (${code}): ${stderr}`));
      else resolve(Number(match[1]));
    });
    sh.stderr!.on("data", (chunk: Uint8Array) => (stderr += new TextDecoder().decode(chunk)));
  });
}

function makeChunks(small: boolean): Uint8Array[] {
  const lines: string[] = [];
  let size = 0;
  for (let i = 0; size < READ_BYTES; i++) {
    const frame = small
      ? { jsonrpc: "2.0", id: i % 100_000, result: {} }
      : makeFrame(100_000 + (i % 100_000));
    const line = JSON.stringify(frame) + "\n";
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

/**
 * The baseline reader: decodes each chunk whole (streaming), splits the text on `\n` and yields each
 * parsed line; the same shape as `readFrames` (an async iterable of frames), with none of its checks.
 */
async function* chunkSplitReader(source: AsyncIterable<Uint8Array>): AsyncGenerator<unknown> {
  const decoder = new TextDecoder();
  let carry = "";
  for await (const chunk of source) {
    const lines = (carry + decoder.decode(chunk, { stream: true })).split("\n");
    carry = lines.pop() ?? "";
    for (const line of lines) {
      if (line.length !== 0) yield JSON.parse(line);
    }
  }
}

async function readWithChunkSplitReader(chunks: Uint8Array[]): Promise<number> {
  let count = 0;
  for await (const _frame of chunkSplitReader(chunkSource(chunks))) count++;
  return count;
}

/** The floor: the same decode and split as one loop, with no async step per frame. */
async function readWithChunkSplitLoop(chunks: Uint8Array[]): Promise<number> {
  const decoder = new TextDecoder();
  let count = 0;
  let carry = "";
  for await (const chunk of chunkSource(chunks)) {
    const lines = (carry + decoder.decode(chunk, { stream: true })).split("\n");
    carry = lines.pop() ?? "";
    for (const line of lines) {
      if (line.length === 0) continue;
      JSON.parse(line);
      count++;
    }
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

  try {
    const sdk = await compare(ROUNDS, () => runChild("sdk"), () => runChild("transport"));
    console.log(`rate transport/mcp-sdk-send ${Math.round(sdk.baseline)} frames/s`);
    console.log(`ratio transport/mcp-sdk-send ${sdk.ratio.toFixed(2)}`);
  } catch (error) {
    if (!(error instanceof Skip)) throw error;
    console.log(`skip mcp-sdk-send: ${error.message}`);
  }

  const baselines = [["chunk-split", readWithChunkSplitReader], [
    "chunk-split-loop",
    readWithChunkSplitLoop,
  ]] as const;
  for (const small of [false, true]) {
    const chunks = makeChunks(small);
    await timeRead(readWithReadFrames, chunks); // warm-up
    for (const [label, baseline] of baselines) {
      await timeRead(baseline, chunks);
      const name = small ? `${label}-small` : label;
      const reads = await compare(
        ROUNDS,
        () => timeRead(baseline, chunks),
        () => timeRead(readWithReadFrames, chunks),
      );
      console.log(`rate readFrames/${name}-baseline ${reads.baseline.toFixed(1)} MB/s`);
      console.log(`rate readFrames/${name}-readFrames ${reads.measured.toFixed(1)} MB/s`);
      console.log(`ratio readFrames/${name} ${reads.ratio.toFixed(2)}`);
    }
  }
}

const childAt = process.argv.indexOf("--child");
if (childAt !== -1) await child(process.argv[childAt + 1] ?? "");
else await main();
