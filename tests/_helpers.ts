/**
 * What the test files share: running fixtures with this runtime, waiting for a child or a condition,
 * and temporary folders. One copy, so a fix to a wait or a runner lands in every test file at once.
 *
 * @module
 */

import { after } from "node:test";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import process from "node:process";
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { scriptCommand } from "../platform.ts";

/** The folder of the fixture programs. */
export const FIXTURES: string = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures");

/** The checkout's root folder (where mod.ts and node_modules are). */
export const ROOT: string = path.dirname(path.dirname(FIXTURES));

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

/** Options of {@linkcode runToEnd} and {@linkcode runFixture}. */
export interface RunOptions {
  /** Fed to the child's stdin, which is then closed; without it stdin is closed at once. */
  input?: string | Uint8Array;
  /** A program put in front of the command (`["strace", "-f", …]`, `["setpriv", …]`, `["unshare", …]`). */
  wrap?: readonly string[];
  /** The child's environment; this process's without it. */
  env?: Record<string, string | undefined>;
  /** SIGKILLs the child after this long, noting it on its stderr; without it the child runs to its end. */
  timeoutMs?: number;
}

/** A `wrap` that runs the command as nobody (uid and gid 65534, no groups): root ignores permissions. */
export const AS_NOBODY: readonly string[] = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];

/** Runs a command to completion and collects what it wrote. */
export function runToEnd(command: string, args: string[], options: RunOptions = {}): Promise<Outcome> {
  const { input } = options;
  const [program, ...rest] = [...(options.wrap ?? []), command, ...args];
  return new Promise((resolve, reject) => {
    const child = spawn(program!, rest, {
      stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      env: options.env as NodeJS.ProcessEnv | undefined,
    });
    const stdout: Uint8Array[] = [];
    const stderr: Uint8Array[] = [];
    let killed = "";
    const timer = options.timeoutMs === undefined ? undefined : setTimeout(() => {
      killed = `\n[test] killed after ${options.timeoutMs} ms\n`;
      killChild(child);
    }, options.timeoutMs);
    child.on("error", reject);
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      resolve({
        code,
        signal,
        stdout: Buffer.concat(stdout).toString(),
        stderr: Buffer.concat(stderr).toString() + killed,
      });
    });
    child.stdout!.on("data", (chunk: Uint8Array) => stdout.push(chunk));
    child.stderr!.on("data", (chunk: Uint8Array) => stderr.push(chunk));
    if (input !== undefined) {
      // A child that ends without reading its input breaks the pipe: its outcome says why, not EPIPE.
      child.stdin!.on("error", () => {});
      child.stdin!.end(input);
    }
  });
}

/** Runs a fixture script with this runtime to completion; see {@linkcode runToEnd}. */
export function runFixture(script: string, args: string[] = [], options: RunOptions = {}): Promise<Outcome> {
  const { command, args: full } = scriptCommand(script, args);
  return runToEnd(command, full, options);
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
  pid: number;
  /** Its complete lines so far. */
  stdout: string[];
  stderr: string[];
  exited: Promise<{ code: number | null; signal: string | null }>;
  /** How it ended and all it wrote (empty for a stream left unread); rejects if it could not start. */
  done: Promise<Outcome>;
  /** Resolves with the first line of `stream` matching `pattern` (already seen or yet to come). */
  waitFor(stream: "stdout" | "stderr", pattern: RegExp): Promise<string>;
}

/** Options of {@linkcode start}. */
export interface StartOptions {
  env?: Record<string, string | undefined>;
  /** A program put in front of the command, as in {@linkcode RunOptions}. */
  wrap?: readonly string[];
  /** `"ignore-reading"` leaves the pipe unread, so the child can fill it and block. */
  stdoutMode?: "read" | "ignore-reading";
  stderrMode?: "read" | "ignore-reading";
}

/** Starts a command and collects its output line by line. */
export function start(command: string, args: string[], options: StartOptions = {}): Running {
  const [program, ...rest] = [...(options.wrap ?? []), command, ...args];
  const child = spawn(program!, rest, {
    stdio: ["ignore", "pipe", "pipe"],
    env: options.env as NodeJS.ProcessEnv | undefined,
  });
  const lines = { stdout: [] as string[], stderr: [] as string[] };
  const text = { stdout: "", stderr: "" };
  const waiters: Array<{ stream: "stdout" | "stderr"; pattern: RegExp; resolve: (line: string) => void }> =
    [];
  // Listener first: a child that ends at once must still settle the promise.
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    child.on("close", (code, signal) => resolve({ code, signal }));
  });
  const done = new Promise<Outcome>((resolve, reject) => {
    child.on("error", reject);
    void exited.then(({ code, signal }) =>
      resolve({ code, signal, stdout: text.stdout, stderr: text.stderr })
    );
  });
  // Handled here so a test that never looks at `done` is not failed by it; one that awaits it still sees
  // the rejection, and a child that could not start still fails that test through `exited`'s code.
  done.catch(() => {});
  const collect = (stream: "stdout" | "stderr") => {
    let partial = "";
    child[stream]!.setEncoding("utf8");
    child[stream]!.on("data", (chunk: string) => {
      text[stream] += chunk;
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
    pid: child.pid!,
    stdout: lines.stdout,
    stderr: lines.stderr,
    exited,
    done,
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
                new Error(
                  `child ${child.pid} ended before ${pattern} on ${stream}; stdout:\n${text.stdout}\nstderr:\n${text.stderr}`,
                ),
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

/**
 * A new empty folder for a whole test file, removed after its tests and, failing that, when the process
 * exits: a filtered `deno test --filter` run skips after() hooks (and emits "unload" only).
 */
export function tempRoot(prefix = "keelson-"): string {
  const dir = tempDir(prefix);
  const cleanup = () => fs.rmSync(dir, { recursive: true, force: true });
  after(cleanup);
  process.once("exit", cleanup);
  (globalThis as { addEventListener?: (type: string, listener: () => void) => void }).addEventListener?.(
    "unload",
    cleanup,
  );
  return dir;
}
