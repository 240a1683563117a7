/**
 * What the test files share: running fixtures with this runtime, waiting for a child or a condition,
 * and temporary folders. One copy, so a fix to a wait or a runner lands in every test file at once.
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { scriptCommand } from "../platform.ts";

/** The folder of the fixture programs. */
export const FIXTURES: string = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures");

/** The path of a fixture program by its file name (`"transport_peer.ts"`). */
export function fixture(name: string): string {
  return path.join(FIXTURES, name);
}

// ---------------------------------------------------------------------------------------------------
// Running a child to its end
// ---------------------------------------------------------------------------------------------------

/** How a child ended and what it wrote. */
export interface Outcome {
  code: number | null;
  signal: string | null;
  stdout: string;
  stderr: string;
}

/** Runs a command to completion, feeding `input` to its stdin (closed at once without it). */
export function runToEnd(command: string, args: string[], input?: string | Uint8Array): Promise<Outcome> {
  return new Promise((resolve, reject) => {
    const child = spawn(command, args, { stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"] });
    const stdout: Uint8Array[] = [];
    const stderr: Uint8Array[] = [];
    child.on("error", reject);
    child.on("close", (code, signal) => {
      resolve({
        code,
        signal,
        stdout: Buffer.concat(stdout).toString(),
        stderr: Buffer.concat(stderr).toString(),
      });
    });
    child.stdout!.on("data", (chunk: Uint8Array) => stdout.push(chunk));
    child.stderr!.on("data", (chunk: Uint8Array) => stderr.push(chunk));
    if (input !== undefined) child.stdin!.end(input);
  });
}

/** Runs a fixture script with this runtime to completion; see {@linkcode runToEnd}. */
export function runFixture(
  script: string,
  args: string[] = [],
  input?: string | Uint8Array,
): Promise<Outcome> {
  const { command, args: full } = scriptCommand(script, args);
  return runToEnd(command, full, input);
}

/** The argv that runs a fixture with this runtime, for a python3 or sh parent to start. */
export function fixtureArgv(script: string, args: string[]): string[] {
  const { command, args: full } = scriptCommand(script, args);
  return [command, ...full];
}

// ---------------------------------------------------------------------------------------------------
// Running a child alongside the test
// ---------------------------------------------------------------------------------------------------

/** A child the test talks to while it runs: its lines so far, its end, and a wait for a line. */
export interface Running {
  child: ChildProcess;
  stdout: string[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: string | null }>;
  /** Resolves with the first line of `stream` matching `pattern` (already seen or yet to come). */
  waitFor(stream: "stdout" | "stderr", pattern: RegExp): Promise<string>;
}

/** Options of {@linkcode start}. */
export interface StartOptions {
  env?: Record<string, string | undefined>;
  /** `"ignore-reading"` leaves the pipe unread, so the child can fill it and block. */
  stdoutMode?: "read" | "ignore-reading";
  stderrMode?: "read" | "ignore-reading";
}

/** Starts a command and collects its output line by line. */
export function start(command: string, args: string[], options: StartOptions = {}): Running {
  const child = spawn(command, args, {
    stdio: ["ignore", "pipe", "pipe"],
    env: options.env as NodeJS.ProcessEnv | undefined,
  });
  const lines = { stdout: [] as string[], stderr: [] as string[] };
  const waiters: Array<{ stream: "stdout" | "stderr"; pattern: RegExp; resolve: (line: string) => void }> =
    [];
  // Listener first: a child that ends at once must still settle the promise.
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    child.on("close", (code, signal) => resolve({ code, signal }));
  });
  const collect = (stream: "stdout" | "stderr") => {
    let partial = "";
    child[stream]!.setEncoding("utf8");
    child[stream]!.on("data", (chunk: string) => {
      partial += chunk;
      const parts = partial.split("\n");
      partial = parts.pop()!;
      for (const line of parts) {
        lines[stream].push(line);
        for (const waiter of [...waiters]) {
          if (waiter.stream === stream && waiter.pattern.test(line)) {
            waiters.splice(waiters.indexOf(waiter), 1);
            waiter.resolve(line);
          }
        }
      }
    });
  };
  if (options.stdoutMode !== "ignore-reading") collect("stdout");
  if (options.stderrMode !== "ignore-reading") collect("stderr");
  return {
    child,
    stdout: lines.stdout,
    stderr: lines.stderr,
    exited,
    waitFor(stream, pattern) {
      const seen = lines[stream].find((line) => pattern.test(line));
      if (seen !== undefined) return Promise.resolve(seen);
      return new Promise<string>((resolve, reject) => {
        waiters.push({ stream, pattern, resolve });
        void exited.then(() => {
          setTimeout(() => {
            const index = waiters.findIndex((w) => w.pattern === pattern && w.stream === stream);
            if (index >= 0) {
              waiters.splice(index, 1);
              reject(
                new Error(`child ended before ${pattern} on ${stream}:\n${lines[stream].join("\n")}`),
              );
            }
          }, 200);
        });
      });
    },
  };
}

/** Starts a fixture script with this runtime; see {@linkcode start}. */
export function startFixture(script: string, args: string[], options: StartOptions = {}): Running {
  const { command, args: full } = scriptCommand(script, args);
  return start(command, full, options);
}

/** SIGKILLs a child a test gave up on, so nothing outlives the suite. */
export function killChild(child: ChildProcess): void {
  if (typeof child.pid === "number" && child.exitCode === null && child.signalCode === null) {
    try {
      process.kill(child.pid, "SIGKILL");
    } catch {
      // already gone
    }
  }
}

/** Sends `name` twice, `gapMs` apart, spinning in between (a timer could take far longer). */
export function signalTwice(pid: number, name: NodeJS.Signals, gapMs: number): void {
  process.kill(pid, name);
  const until = performance.now() + gapMs;
  while (performance.now() < until) {
    // spin
  }
  process.kill(pid, name);
}

// ---------------------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------------------

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `check` every 25 ms until it is true; rejects naming `what` after `timeoutMs`. */
export async function waitUntil(check: () => boolean, what: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(25);
  }
}

// ---------------------------------------------------------------------------------------------------
// Temporary folders
// ---------------------------------------------------------------------------------------------------

/** A new empty folder under the system's temp folder; the caller removes it. */
export function tempDir(prefix = "keelson-"): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

let freshCounter = 0;

/** A path that does not exist yet inside `parent`, ending in `name`. */
export function freshPath(parent: string, name: string): string {
  freshCounter += 1;
  return path.join(parent, `${freshCounter}-${name}`);
}

/** A new empty folder inside `parent`, for one test. */
export function freshDir(parent: string, name = "t"): string {
  const dir = freshPath(parent, name);
  fs.mkdirSync(dir);
  return dir;
}
