/// <reference lib="esnext.disposable" preserve="true" />
/**
 * The only runtime shim of keelson. Deno, Bun and Node differ in how they expose descriptors, signals,
 * child processes and threads; every module above this file is written once against the small, honest
 * surface below, and this is the only file that looks at `globalThis.Deno` or `globalThis.Bun`.
 *
 * Files go through `node:fs` on all three runtimes, Deno included: Deno's own `FsFile` hides the
 * descriptor and has no `fchmod`, while `node:fs` on Deno hands out the real descriptor, so one
 * `O_APPEND` descriptor, its `fstat` and its `fchmod` are the same syscalls everywhere. Signals use
 * `Deno.addSignalListener` on Deno and `process.on` elsewhere.
 *
 * Errors keep their original object; {@linkcode errorCode} maps Node codes and Deno error class names
 * to one set of errno names (`EPIPE`, `EBADF`, …) so callers test one thing.
 *
 * What importing this file changes in the runtime: on Deno, `Deno.addSignalListener` and
 * `Deno.removeSignalListener` are replaced by wrappers that call the originals and also count the
 * listeners (Deno keeps no list; {@linkcode signalListenerCount} needs one). The count is kept on
 * `globalThis` under `Symbol.for("keelson.denoSignalListeners")`, so two copies of this file (a vendored
 * module beside the npm package) wrap once and count alike. Nothing else happens at import: the `SIGXFSZ` listener of {@linkcode handleFileSizeSignal}, exit and uncaught-error hooks,
 * signal listeners and the watchdog thread are installed only when a function asks for them.
 *
 * Contents, in file order, and the modules that use each section:
 * - Runtime detection: `runtime`, `isLinux` (no module: they ask the functions below instead; tests).
 * - Errors: `errorCode`, one errno name for every runtime's errors (logging, pidfile, transport).
 * - Messages and reporting: `describeValue`, `mustBe`, `checkNumber`, `checkMode`, `describeError`,
 *   `errorMessage`, `isError`, `stderrReporter` (optionally rate-limited): the one way to word a bad
 *   argument, quote an error and report on stderr (all modules).
 * - Time: `sleepSync`, `monotonicMs`, `createBackoff`, `setUnrefInterval`, `setUnrefTimeout` (logging,
 *   pidfile, sqlite_wal).
 * - Files: thin wrappers of `node:fs`, `isAbsent` (among the stats, `statIdentity`: the cheap check before
 *   every log write), then `writeFileAtomic`, `openOwnedAppend` and `gzipFile` (all modules).
 * - Writing to descriptors: `writeOnce`, `writeAll`, and `openDescriptorWriter` / `writeAllWithin`, exact
 *   and bounded writes to any descriptor number (logging, shutdown, transport).
 * - libc through FFI: `write(2)`, `send(2)` and `poll(2)` with their exact counts, behind the writers above.
 * - Processes: pids, `kill`, `/proc` readers, the environment (logging, pidfile, shutdown).
 * - Process identity: `selfIdentity`, `judgeIdentity`: who wrote a record and is it still alive (logging,
 *   pidfile, shutdown).
 * - Signals and exit hooks: `onSignal`, `signalListenerCount`, `ignoreSignalRepeats`,
 *   `handleFileSizeSignal`, `onExit`, `onUncaught` (logging, pidfile, shutdown).
 * - Watchdog: `startWatchdog`, a thread that ends the process while the main thread is blocked (shutdown).
 * - Child processes: `spawnDetached`, `runCommand` (shutdown); `scriptCommand` (tests, benches).
 * - Standard input: `stdinChunks` (transport).
 * - Context binding: `createContextStore` (transport).
 * - Redaction: `redactArgv`, what of an argv may be written down (pidfile, shutdown).
 *
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import process from "node:process";
import { AsyncLocalStorage } from "node:async_hooks";
import { createRequire } from "node:module";
import { spawn } from "node:child_process";
import { Worker } from "node:worker_threads";

// ---------------------------------------------------------------------------------------------------
// Runtime detection
// ---------------------------------------------------------------------------------------------------

/**
 * The runtimes keelson runs on.
 *
 * @example Pick the test command of the running runtime
 * ```ts
 * import { runtime, type RuntimeName } from "./platform.ts";
 * const test: Record<RuntimeName, string> = { deno: "deno test", bun: "bun test", node: "node --test" };
 * console.log(test[runtime]);
 * ```
 */
export type RuntimeName = "deno" | "bun" | "node";

interface DenoLike {
  version: { deno: string };
  pid: number;
  ppid: number;
  addSignalListener(signal: string, handler: () => void): void;
  removeSignalListener(signal: string, handler: () => void): void;
  exit(code?: number): never;
  stdin: { readable: ReadableStream<Uint8Array> };
}

interface BunLike {
  version: string;
  stdin: { stream(): ReadableStream<Uint8Array> };
}

const deno = (globalThis as { Deno?: DenoLike }).Deno;
const bun = (globalThis as { Bun?: BunLike }).Bun;

/**
 * The runtime executing this code.
 *
 * @example Branch on the runtime
 * ```ts
 * import { runtime } from "./platform.ts";
 * console.log(`running on ${runtime}`);
 * ```
 */
export const runtime: RuntimeName = deno ? "deno" : bun ? "bun" : "node";

/**
 * The version of the running runtime, e.g. `"2.9.6"`, `"1.4.4"` or `"24.21.0"`.
 *
 * @example
 * ```ts
 * import { runtime, runtimeVersion } from "./platform.ts";
 * console.log(`${runtime} ${runtimeVersion}`);
 * ```
 */
export const runtimeVersion: string = deno ? deno.version.deno : bun ? bun.version : process.versions.node;

/**
 * `true` on Linux, where `/proc` answers the process questions (start time, status, cmdline).
 *
 * @example
 * ```ts
 * import { isLinux } from "./platform.ts";
 * if (!isLinux) console.log("no /proc: start times are unknown");
 * ```
 */
export const isLinux: boolean = process.platform === "linux";

// ---------------------------------------------------------------------------------------------------
// Errors: one errno name for every runtime's errors
// ---------------------------------------------------------------------------------------------------

const DENO_ERROR_CODES: Record<string, string> = {
  BrokenPipe: "EPIPE",
  BadResource: "EBADF",
  ConnectionReset: "ECONNRESET",
  NotFound: "ENOENT",
  AlreadyExists: "EEXIST",
  PermissionDenied: "EACCES",
  NotADirectory: "ENOTDIR",
  IsADirectory: "EISDIR",
  WouldBlock: "EAGAIN",
  Interrupted: "EINTR",
};

/**
 * The errno name of an error from any runtime (`"EPIPE"`, `"ENOENT"`, …), or `undefined`.
 *
 * Node and Bun put it in `code`; Deno's own APIs throw classes named `BrokenPipe`, `BadResource`, …,
 * which are mapped to the errno they stand for.
 *
 * @param error Anything that was thrown.
 * @returns The errno name, or `undefined` when the error carries none.
 *
 * @example Tell a missing file from other failures
 * ```ts
 * import { errorCode, stat } from "./platform.ts";
 * try {
 *   stat("/no/such/file");
 * } catch (error) {
 *   console.log(errorCode(error)); // "ENOENT"
 * }
 * ```
 */
export function errorCode(error: unknown): string | undefined {
  if (typeof error !== "object" || error === null) return undefined;
  const code = (error as { code?: unknown }).code;
  if (typeof code === "string" && code !== "") return code;
  const name = (error as { name?: unknown }).name;
  if (typeof name === "string" && Object.hasOwn(DENO_ERROR_CODES, name)) return DENO_ERROR_CODES[name];
  // Deno reports errnos it has no class for (EFBIG, EIO, …) only in the message: "… (os error 27)".
  const message = (error as { message?: unknown }).message;
  const osError = typeof message === "string" ? /\(os error (\d+)\)/.exec(message) : null;
  return osError ? ERRNO_NAMES.get(Number(osError[1])) : undefined;
}

/** errno number → name; EWOULDBLOCK and EDEADLOCK are Linux's second names of EAGAIN and EDEADLK. */
const ERRNO_NAMES: Map<number, string> = new Map(
  Object.entries((os.constants as { errno?: Record<string, number> }).errno ?? {})
    .filter(([name]) => name !== "EWOULDBLOCK" && name !== "EDEADLOCK")
    .map(([name, number]) => [number, name]),
);

/** An error shaped like Node's errno errors (`code`, `errno`, `syscall`, `fd`). */
function errnoError(errno: number, syscall: string, fd: number, message?: string): Error {
  const code = ERRNO_NAMES.get(errno) ?? `E${errno}`;
  const error = new Error(`${code}: ${message ?? `${syscall} failed on fd ${fd}`} (os error ${errno})`);
  Object.assign(error, { code, errno: -errno, syscall, fd });
  return error;
}

// ---------------------------------------------------------------------------------------------------
// Messages and reporting: how every module quotes a value, words an argument error, reports on stderr
// ---------------------------------------------------------------------------------------------------

/**
 * How a received value is quoted in a message: strings as JSON (`"x"`, cut after 40 characters with
 * `…`), bigints as `1n`, other primitives as themselves (`42`, `null`, `undefined`), and functions,
 * arrays and objects by their kind only, so a message never dumps a caller's data nor throws on a
 * cyclic or hostile object (a revoked proxy is `an object`).
 *
 * @param value Anything a caller passed.
 * @returns A short, single-line description.
 *
 * @example
 * ```ts
 * import { describeValue } from "./platform.ts";
 * console.log(describeValue("yes"), describeValue(2n), describeValue([])); // "yes" 2n an array
 * ```
 */
export function describeValue(value: unknown): string {
  if (typeof value === "string") {
    return JSON.stringify(value.length > QUOTED_CHARS ? `${value.slice(0, QUOTED_CHARS)}…` : value);
  }
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "function") return "a function";
  if (typeof value === "symbol") return String(value);
  if (value === null || typeof value !== "object") return String(value);
  try {
    return Array.isArray(value) ? "an array" : "an object";
  } catch {
    return "an object"; // Array.isArray throws on a revoked proxy
  }
}

/** How much of a string {@linkcode describeValue} quotes. */
const QUOTED_CHARS = 40;

/**
 * The one wording of a bad-argument error: `Cannot <action>: '<name>' must be <expected>, got <value>`.
 * Throw it as a `TypeError` (wrong type) or a `RangeError` (right type, out of range).
 *
 * @param action What could not be done, e.g. `"apply WAL"`.
 * @param name The argument or option, e.g. `"retries"`.
 * @param expected What it must be, e.g. `"a non-negative integer"`.
 * @param value What was received; quoted with {@linkcode describeValue}.
 * @returns The message.
 *
 * @example
 * ```ts
 * import { mustBe } from "./platform.ts";
 * const error = new TypeError(mustBe("apply WAL", "uri", "a boolean", "yes"));
 * console.log(error.message); // Cannot apply WAL: 'uri' must be a boolean, got "yes"
 * ```
 */
export function mustBe(action: string, name: string, expected: string, value: unknown): string {
  return `Cannot ${action}: '${name}' must be ${expected}, got ${describeValue(value)}`;
}

/**
 * Checks a numeric argument the one way: a value that is not a number throws `TypeError`, a number that
 * `accept` refuses (NaN, out of range, not an integer, …) throws `RangeError`, both worded by
 * {@linkcode mustBe} with `expected`.
 *
 * @param action What could not be done, e.g. `"acquire PID file"`.
 * @param name The argument or option.
 * @param value What was received.
 * @param expected What it must be, e.g. `"a finite number >= 0"`.
 * @param accept Whether a number is acceptable.
 * @returns The value, as a number.
 *
 * @example
 * ```ts
 * import { checkNumber } from "./platform.ts";
 * const ms = checkNumber("wait", "timeoutMs", 250, "a finite number >= 0", (n) => Number.isFinite(n) && n >= 0);
 * console.log(ms); // 250
 * ```
 */
export function checkNumber(
  action: string,
  name: string,
  value: unknown,
  expected: string,
  accept: (value: number) => boolean,
): number {
  if (typeof value !== "number") throw new TypeError(mustBe(action, name, expected, value));
  if (!accept(value)) throw new RangeError(mustBe(action, name, expected, value));
  return value;
}

/**
 * Checks permission bits (an integer from 0 to 0o7777) the one way; see {@linkcode checkNumber}.
 *
 * @param action What could not be done.
 * @param value What was received as `mode`.
 * @returns The bits.
 *
 * @example
 * ```ts
 * import { checkMode } from "./platform.ts";
 * console.log(checkMode("open the log", 0o640).toString(8)); // 640
 * ```
 */
export function checkMode(action: string, value: unknown): number {
  const expected = "permission bits from 0 to 0o7777";
  return checkNumber(action, "mode", value, expected, (n) => Number.isInteger(n) && n >= 0 && n <= 0o7777);
}

/**
 * One line for a thrown value: `Name: message` for an `Error`, its string form otherwise; never throws
 * (a value whose `toString` throws is `unprintable error`).
 *
 * @param error Anything that was thrown.
 * @returns The line.
 *
 * @example
 * ```ts
 * import { describeError } from "./platform.ts";
 * console.log(describeError(new RangeError("too big"))); // RangeError: too big
 * ```
 */
export function describeError(error: unknown): string {
  try {
    return isError(error) ? `${(error as Error).name}: ${(error as Error).message}` : String(error);
  } catch {
    return "unprintable error";
  }
}

/**
 * The message of a thrown value: `message` for an `Error`, its string form otherwise; never throws (a
 * value that cannot be turned into text is `unprintable error`). For a cause quoted inside another
 * sentence, where {@linkcode describeError}'s class name would be noise.
 *
 * @param error Anything that was thrown.
 * @returns The message.
 *
 * @example
 * ```ts
 * import { errorMessage } from "./platform.ts";
 * console.log(`cannot parse the record (${errorMessage(new SyntaxError("bad JSON"))})`); // (bad JSON)
 * ```
 */
export function errorMessage(error: unknown): string {
  try {
    return isError(error) ? String((error as Error).message) : String(error);
  } catch {
    return "unprintable error";
  }
}

/**
 * Whether a value is an `Error`, also one made in another realm (a worker, a `vm` context), where
 * `instanceof Error` is false.
 *
 * @param value Anything.
 * @returns `true` for an error object.
 *
 * @example
 * ```ts
 * import { isError } from "./platform.ts";
 * console.log(isError(new TypeError("x")), isError({ message: "x" })); // true false
 * ```
 */
export function isError(value: unknown): boolean {
  return value instanceof Error || Object.prototype.toString.call(value) === "[object Error]";
}

const reportEncoder = new TextEncoder();

/**
 * Writes what `fd` takes now and drops the rest. A writer is opened per call, not kept: a daemon that
 * later points fd 2 elsewhere (`dup2` onto a log file) must get its reports there.
 */
function writeWithoutWaiting(fd: number, bytes: Uint8Array): void {
  const writer = openDescriptorWriter(fd);
  try {
    for (let offset = 0; offset < bytes.length;) {
      const taken = writer.writeSome(offset === 0 ? bytes : bytes.subarray(offset));
      if (taken <= 0) break;
      offset += taken;
    }
  } finally {
    writer.close();
  }
}

/** Options of {@linkcode stderrReporter}. */
export interface StderrReporterOptions {
  /**
   * After a report is written, hold back the next ones for this many milliseconds and count them; the
   * next report written says how many were held back. When the interval ends with reports held back and
   * none came after, the last of them is written then (an unref'd timer), so a burst that stops is still
   * counted. For a failure that repeats on every call (a full disk fails every log record), so stderr
   * gets one line every interval instead of a flood.
   * @default 0 (every report is written)
   */
  holdBackMs?: number | undefined;
}

/**
 * The default reporter of every fail-open path that has no `onError`: writes `<prefix>: <line>` to
 * stderr (fd 2, synchronously) and never throws nor waits: when stderr is gone (a closed pipe during a
 * shutdown) or full (a reader that stopped reading), there is nowhere to report to, and the line is
 * dropped rather than stall the program. Where a write cannot be bounded (see
 * {@linkcode DescriptorWriter.limitation}: a blocking pipe on Deno without `-A`, which may not reopen it
 * through `/proc`; a blocking socket on Node) a full stderr still blocks.
 *
 * @param prefix What names the reporter, e.g. `"keelson transport"`; `""` writes the line as it is.
 * @param options `holdBackMs` rate-limits a repeating failure.
 * @returns A reporter taking a line of text or a thrown value (worded by {@linkcode describeError}).
 *
 * @example
 * ```ts
 * import { stderrReporter } from "./platform.ts";
 * const report = stderrReporter("my module", { holdBackMs: 5_000 });
 * report(new Error("disk full")); // stderr: my module: Error: disk full
 * report(new Error("disk full")); // held back: the next line written ends "(1 more since the last report)"
 * ```
 */
export function stderrReporter(
  prefix: string,
  options: StderrReporterOptions = {},
): (report: unknown) => void {
  const holdBackMs = options.holdBackMs ?? 0;
  let lastAt = -Infinity;
  let heldBack = 0;
  let lastHeld: unknown;
  let flushPending = false;
  const write = (report: unknown): void => {
    const more = heldBack > 0 ? ` (${heldBack} more since the last report)` : "";
    heldBack = 0;
    const text = (typeof report === "string" ? report : describeError(report)).replace(/\n$/, "");
    writeWithoutWaiting(2, reportEncoder.encode(`${prefix === "" ? "" : `${prefix}: `}${text}${more}\n`));
  };
  // At the end of the interval: the last report held back stands for the others (if none came since).
  const flush = (): void => {
    flushPending = false;
    if (heldBack === 0) return;
    heldBack -= 1;
    lastAt = monotonicMs();
    try {
      write(lastHeld);
    } catch {
      // stderr is gone: nowhere left to report to.
    }
  };
  return (report) => {
    try {
      if (holdBackMs > 0) {
        const now = monotonicMs();
        if (now - lastAt < holdBackMs) {
          heldBack += 1;
          lastHeld = report;
          if (!flushPending) {
            flushPending = true;
            setUnrefTimeout(flush, lastAt + holdBackMs - now);
          }
          return;
        }
        lastAt = now;
      }
      write(report);
    } catch {
      // stderr is the last resort: when it is gone or full there is nowhere left to report to.
    }
  };
}

// ---------------------------------------------------------------------------------------------------
// Time: sleeping, the monotonic clock, retry backoff, timers that never hold the process
// ---------------------------------------------------------------------------------------------------

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Sleeps synchronously without burning a core: `Atomics.wait`, which all three runtimes allow on the
 * main thread. For lock waits and `EAGAIN` backoff on synchronous paths.
 */
export function sleepSync(ms: number): void {
  if (ms > 0) Atomics.wait(sleepCell, 0, 0, ms);
}

/**
 * Milliseconds on a monotonic clock (`performance.now()`): never stepped by NTP or an operator, so
 * deadlines, retry timers and "how long has this lock been held" survive a wall-clock step. Only
 * differences between two readings in one process mean anything.
 *
 * @returns The current reading.
 *
 * @example A deadline that a clock step cannot move
 * ```ts
 * import { monotonicMs, sleepSync } from "./platform.ts";
 * const deadline = monotonicMs() + 20;
 * while (monotonicMs() < deadline) sleepSync(5);
 * ```
 */
export function monotonicMs(): number {
  return performance.now();
}

/** Options of {@linkcode createBackoff}. */
export interface BackoffOptions {
  /** The first pause, in milliseconds. */
  minMs: number;
  /** The longest pause, in milliseconds; each pause doubles until it reaches this. */
  maxMs: number;
  /**
   * Draw each pause between half and all of its nominal length, so that processes started together do
   * not retry in lockstep.
   * @default false
   */
  jitter?: boolean | undefined;
  /**
   * Give up this many milliseconds (on {@linkcode monotonicMs}) after the backoff was created.
   * @default Infinity
   */
  timeoutMs?: number | undefined;
}

/** A doubling pause between retries; see {@linkcode createBackoff}. */
export interface Backoff {
  /**
   * The next pause in milliseconds, never longer than the time left, or `null` once the deadline has
   * passed (the caller gives up).
   */
  next(): number | null;
}

/**
 * The one retry backoff: pauses start at `minMs` and double up to `maxMs`, optionally jittered, and
 * stop at a deadline measured on the monotonic clock (a wall-clock step cannot stretch or cut it).
 *
 * @param options `minMs`, `maxMs`, `jitter`, `timeoutMs`.
 * @returns A backoff whose `next()` gives each pause.
 *
 * @example Retry for at most 100 ms
 * ```ts
 * import { createBackoff, sleepSync } from "./platform.ts";
 * const backoff = createBackoff({ minMs: 1, maxMs: 50, jitter: true, timeoutMs: 100 });
 * for (let pause = backoff.next(); pause !== null; pause = backoff.next()) sleepSync(pause);
 * ```
 */
export function createBackoff(options: BackoffOptions): Backoff {
  const { minMs, maxMs, jitter = false, timeoutMs = Infinity } = options;
  const deadline = monotonicMs() + timeoutMs;
  let nominal = minMs;
  return {
    next() {
      const left = deadline - monotonicMs();
      if (left <= 0) return null;
      const pause = jitter ? nominal * (0.5 + Math.random() / 2) : nominal;
      nominal = Math.min(nominal * 2, maxMs);
      return Math.min(left, pause);
    },
  };
}

/**
 * Calls `fn` every `ms` milliseconds without keeping the process alive for it (an unref'd timer on
 * every runtime: `Deno.unrefTimer` on Deno, `Timeout.unref()` elsewhere). For heartbeats.
 *
 * @param fn What to run; it must not throw.
 * @param ms The period.
 * @returns A function that stops the timer.
 *
 * @example
 * ```ts
 * import { setUnrefInterval } from "./platform.ts";
 * const stop = setUnrefInterval(() => console.log("tick"), 1000);
 * stop();
 * ```
 */
export function setUnrefInterval(fn: () => void, ms: number): () => void {
  const handle = setInterval(fn, ms);
  unrefTimer(handle);
  return () => clearInterval(handle);
}

/**
 * Calls `callback` once after `ms` milliseconds without keeping the process alive for it (an unref'd
 * timer: Deno's `unrefTimer`, Node's and Bun's `Timeout.unref`).
 *
 * @param callback Called once.
 * @param ms The delay in milliseconds.
 * @returns A function that cancels the timer (idempotent).
 *
 * @example Flush a buffer within 100 ms, unless the process ends first
 * ```ts
 * import { setUnrefTimeout } from "./platform.ts";
 * const cancel = setUnrefTimeout(() => console.log("flushed"), 100);
 * cancel();
 * ```
 */
export function setUnrefTimeout(callback: () => void, ms: number): () => void {
  const handle = setTimeout(callback, ms);
  unrefTimer(handle);
  return () => clearTimeout(handle);
}

/** Deno's timers are numbers (`Deno.unrefTimer` lets them go); Node's and Bun's have `unref()`. */
function unrefTimer(handle: unknown): void {
  if (typeof handle === "number") {
    (deno as { unrefTimer?: (id: number) => void } | undefined)?.unrefTimer?.(handle);
  } else {
    (handle as { unref?: () => void } | null)?.unref?.();
  }
}

// ---------------------------------------------------------------------------------------------------
// Files: node:fs on every runtime (thin wrappers first, then atomic writes, owned appends, gzip)
// ---------------------------------------------------------------------------------------------------

/**
 * What keelson needs to know about a file.
 *
 * @example Print the size and permission bits of a file
 * ```ts
 * import { type FileStat, stat } from "./platform.ts";
 * const info: FileStat = stat("/etc/hostname");
 * console.log(info.isFile, info.size, (info.mode & 0o777).toString(8)); // e.g. true 12 "644"
 * ```
 */
export interface FileStat {
  /** Device id. */
  dev: number;
  /** Inode number, or `null` when the filesystem or platform does not report one (0 or missing). */
  ino: number | null;
  /** Size in bytes. */
  size: number;
  /** Permission bits and file type, as `st_mode`. */
  mode: number;
  /** Number of hard links: 0 once the file was unlinked while still open. */
  nlink: number;
  /** Owner's user id. */
  uid: number;
  /** Owner's group id. */
  gid: number;
  /** Last modification, in milliseconds since the epoch. */
  mtimeMs: number;
  /** `true` for a regular file. */
  isFile: boolean;
  /** `true` for a directory. */
  isDirectory: boolean;
  /** `true` for a symbolic link (only {@linkcode lstatOrNull} reports links; the others follow them). */
  isSymbolicLink: boolean;
}

/**
 * Options for {@linkcode openAppend} and {@linkcode createExclusive}.
 *
 * @example Keep a log readable by its owner only
 * ```ts
 * import { closeFd, type OpenOptions, openAppend } from "./platform.ts";
 * const ownerOnly: OpenOptions = { mode: 0o600 };
 * closeFd(openAppend("/tmp/example-private.log", ownerOnly));
 * ```
 */
export interface OpenOptions {
  /**
   * Permission bits for the file. A new file is created with them (the umask can only narrow them,
   * so the file is never wider for an instant), then `fchmod` restores any bit the umask removed; an
   * existing file gets them with `fchmod` too.
   * @default undefined (0o666 narrowed by the umask on create, existing bits kept)
   */
  mode?: number | undefined;
  /**
   * `false`: `mode` is only the creation mode (narrowed by the umask) and no `fchmod` follows, for a
   * caller that sets the bits itself and goes on when that fails (a filesystem without permission
   * bits refuses `fchmod`); `true`: a failed `fchmod` closes the file and throws.
   * @default true
   */
  exactMode?: boolean | undefined;
  /**
   * Create the file when it is missing ({@linkcode openAppend} only; `false` throws `ENOENT` instead).
   * @default true
   */
  create?: boolean | undefined;
  /**
   * Fail with `EEXIST` when the file exists (`O_EXCL`, {@linkcode openAppend} only): the caller then
   * knows it created the file.
   * @default false
   */
  exclusive?: boolean | undefined;
  /**
   * Refuse a symbolic link at the path (`O_NOFOLLOW`): the open fails with `ELOOP`.
   * @default false
   */
  noFollow?: boolean | undefined;
  /**
   * Open with `O_NONBLOCK`, so a FIFO without a reader fails at once (`ENXIO`) instead of hanging.
   * Regular files ignore the flag.
   * @default false
   */
  nonBlocking?: boolean | undefined;
}

const { O_WRONLY, O_RDONLY, O_APPEND, O_CREAT, O_EXCL } = fs.constants;
const O_NOFOLLOW = fs.constants.O_NOFOLLOW ?? 0;
const O_NONBLOCK = fs.constants.O_NONBLOCK ?? 0o4000;

function openFlags(base: number, options: OpenOptions): number {
  return base | (options.noFollow ? O_NOFOLLOW : 0) | (options.nonBlocking ? O_NONBLOCK : 0);
}

/** An inode number, or `null` where the filesystem or runtime reports none (0, or missing). */
function inodeOrNull(ino: unknown): number | null {
  return typeof ino === "number" && ino > 0 ? ino : null;
}

function toFileStat(s: fs.Stats): FileStat {
  return {
    dev: s.dev,
    ino: inodeOrNull(s.ino),
    size: s.size,
    mode: s.mode,
    nlink: s.nlink,
    uid: s.uid,
    gid: s.gid,
    mtimeMs: s.mtimeMs,
    isFile: s.isFile(),
    isDirectory: s.isDirectory(),
    isSymbolicLink: s.isSymbolicLink(),
  };
}

/** `fchmod` only when the bits differ: the file was created with `mode`, the umask may have narrowed it. */
function applyMode(fd: number, mode: number | undefined): void {
  if (mode === undefined) return;
  try {
    if ((fs.fstatSync(fd).mode & 0o7777) !== mode) fs.fchmodSync(fd, mode);
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
}

/**
 * Opens (creating if absent) a file for appending: `O_WRONLY | O_APPEND | O_CREAT`.
 *
 * Every `write(2)` on the returned descriptor lands at the current end of the file, even after
 * another process appended or truncated it.
 *
 * @param path The file.
 * @param options `mode` is the creation mode and is restored with `fchmod` whatever the umask;
 *   `create`, `exclusive`, `noFollow` and `nonBlocking` add or drop open flags.
 * @returns The descriptor.
 *
 * @example Append one line with mode 0640
 * ```ts
 * import { closeFd, openAppend, writeAll } from "./platform.ts";
 * const fd = openAppend("/tmp/example.log", { mode: 0o640 });
 * writeAll(fd, new TextEncoder().encode("started\n"));
 * closeFd(fd);
 * ```
 */
export function openAppend(path: string, options: OpenOptions = {}): number {
  const create = options.create === false ? 0 : O_CREAT | (options.exclusive ? O_EXCL : 0);
  const fd = fs.openSync(path, openFlags(O_WRONLY | O_APPEND | create, options), options.mode ?? 0o666);
  if (options.exactMode !== false) applyMode(fd, options.mode);
  return fd;
}

/**
 * Creates a file that must not exist yet (`O_WRONLY | O_CREAT | O_EXCL`); throws `EEXIST` otherwise.
 *
 * Trap: between this create and the first write, a racer can see the empty file. To publish a fully
 * written file atomically, write a temporary file and {@linkcode link} it into place.
 *
 * @param path The file.
 * @param options `mode` is the creation mode and is restored with `fchmod` whatever the umask;
 *   `noFollow` and `nonBlocking` add their open flags.
 * @returns The descriptor.
 *
 * @example
 * ```ts
 * import { closeFd, createExclusive, unlink } from "./platform.ts";
 * const path = `/tmp/example-${Date.now()}.tmp`;
 * closeFd(createExclusive(path, { mode: 0o600 }));
 * unlink(path);
 * ```
 */
export function createExclusive(path: string, options: OpenOptions = {}): number {
  const fd = fs.openSync(path, openFlags(O_WRONLY | O_CREAT | O_EXCL, options), options.mode ?? 0o666);
  if (options.exactMode !== false) applyMode(fd, options.mode);
  return fd;
}

/** Opens an existing file read-only; returns the descriptor. */
export function openRead(path: string): number {
  return fs.openSync(path, O_RDONLY);
}

/** `close(2)`. */
export function closeFd(fd: number): void {
  fs.closeSync(fd);
}

/** `fstat(2)` of an open descriptor. */
export function fstat(fd: number): FileStat {
  return toFileStat(fs.fstatSync(fd));
}

/**
 * Whether a path error means nothing is there: `ENOENT`, or `ENOTDIR` (a file where a folder was named).
 *
 * @param error What a file operation threw.
 * @returns `true` when the path names nothing.
 *
 * @example
 * ```ts
 * import { isAbsent, readHead } from "./platform.ts";
 * try {
 *   readHead("/no/such/file", 16);
 * } catch (error) {
 *   console.log(isAbsent(error)); // true
 * }
 * ```
 */
export function isAbsent(error: unknown): boolean {
  const code = errorCode(error);
  return code === "ENOENT" || code === "ENOTDIR";
}

/** `stat(2)` of a path, symlinks followed; throws `ENOENT` when nothing is there. */
export function stat(path: string): FileStat {
  return toFileStat(fs.statSync(path));
}

/** `stat(2)` of a path, or `null` when nothing is there (`ENOENT`, `ENOTDIR`); other errors are thrown. */
export function statOrNull(path: string): FileStat | null {
  try {
    return toFileStat(fs.statSync(path));
  } catch (error) {
    if (isAbsent(error)) return null;
    throw error;
  }
}

/** `lstat(2)` of a path (a symlink is reported as itself), or `null` when nothing is there. */
export function lstatOrNull(path: string): FileStat | null {
  try {
    return toFileStat(fs.lstatSync(path));
  } catch (error) {
    if (isAbsent(error)) return null;
    throw error;
  }
}

/**
 * A file's identity and size, from {@linkcode statIdentity}.
 *
 * @example Notice that a log file was rotated
 * ```ts
 * import { type FileIdentity, rename, statIdentity, writeTextFile } from "./platform.ts";
 * const same = (a: FileIdentity | null, b: FileIdentity | null) =>
 *   a !== null && b !== null && a.ino !== null && a.dev === b.dev && a.ino === b.ino;
 * writeTextFile("/tmp/example.log", "old\n");
 * const opened = statIdentity("/tmp/example.log");
 * rename("/tmp/example.log", "/tmp/example.log.1"); // what logrotate does
 * writeTextFile("/tmp/example.log", "");
 * console.log(same(opened, statIdentity("/tmp/example.log"))); // false
 * ```
 */
export interface FileIdentity {
  /** Device id. */
  dev: number;
  /** Inode number, or `null` when the filesystem or platform does not report one (0 or missing). */
  ino: number | null;
  /** Size in bytes: for the same inode as an open descriptor, that file's current size. */
  size: number;
  /** `true` for a regular file. */
  isFile: boolean;
}

type DenoStatSync = (path: string) => { dev: number; ino: number | null; size: number; isFile: boolean };
const denoStatSync = (deno as unknown as { statSync?: DenoStatSync } | undefined)?.statSync;

/**
 * `stat` of a path reduced to its identity and size, or `null` when nothing is there (`ENOENT`,
 * `ENOTDIR`); other errors are thrown. It takes the runtime's cheapest route (`Deno.statSync` on Deno
 * is about three times faster than `node:fs` there), for a check before every write: comparing
 * `(dev, ino)` with an open descriptor's tells a rename or replacement, and `size` is the live size.
 *
 * @param path The path (symlinks followed).
 * @returns Its identity and size, or `null`.
 *
 * @example Has the log file been replaced since it was opened?
 * ```ts
 * import { closeFd, fstat, openAppend, statIdentity } from "./platform.ts";
 * const fd = openAppend("/tmp/example.log");
 * const opened = fstat(fd);
 * const now = statIdentity("/tmp/example.log");
 * console.log(now === null || now.ino !== opened.ino || now.dev !== opened.dev ? "replaced" : "same");
 * closeFd(fd);
 * ```
 */
export function statIdentity(path: string): FileIdentity | null {
  try {
    if (denoStatSync) {
      const s = denoStatSync(path);
      return {
        dev: s.dev,
        ino: inodeOrNull(s.ino),
        size: s.size,
        isFile: s.isFile,
      };
    }
    const s = fs.statSync(path, { throwIfNoEntry: false });
    if (s === undefined) return null;
    return {
      dev: s.dev,
      ino: inodeOrNull(s.ino),
      size: s.size,
      isFile: s.isFile(),
    };
  } catch (error) {
    if (isAbsent(error)) return null;
    throw error;
  }
}

/** `pread(2)` of up to `length` bytes at `position` (the file offset stays); fewer at the end of the file. */
export function readAt(fd: number, length: number, position: number): Uint8Array {
  const buffer = new Uint8Array(length);
  let filled = 0;
  while (filled < length) {
    const n = fs.readSync(fd, buffer, filled, length - filled, position + filled);
    if (n === 0) break;
    filled += n;
  }
  return buffer.subarray(0, filled);
}

/** At most the first `length` bytes of a file. */
export function readHead(path: string, length: number): Uint8Array {
  const fd = fs.openSync(path, O_RDONLY);
  try {
    return readAt(fd, length, 0);
  } finally {
    fs.closeSync(fd);
  }
}

/** A whole file as UTF-8 text, or `null` when it is absent (`ENOENT`, `ENOTDIR`). */
export function readTextFileOrNull(path: string): string | null {
  try {
    return fs.readFileSync(path, "utf8");
  } catch (error) {
    if (isAbsent(error)) return null;
    throw error;
  }
}

/** The names in a folder, without `.` and `..`. */
export function readDir(path: string): string[] {
  return fs.readdirSync(path);
}

/**
 * `link(2)`: fails with `EEXIST` when anything is at `newPath`, so linking a fully written temporary
 * file into place is an atomic "publish if absent".
 */
export function link(existingPath: string, newPath: string): void {
  fs.linkSync(existingPath, newPath);
}

/** `rename(2)`: atomically replaces whatever is at `newPath`. */
export function rename(oldPath: string, newPath: string): void {
  fs.renameSync(oldPath, newPath);
}

/** `unlink(2)`; throws `ENOENT` when the name is absent. */
export function unlink(path: string): void {
  fs.unlinkSync(path);
}

/** `unlink(2)` that counts an absent name as done; returns whether it removed something. */
export function unlinkIfExists(path: string): boolean {
  try {
    fs.unlinkSync(path);
    return true;
  } catch (error) {
    if (errorCode(error) === "ENOENT") return false;
    throw error;
  }
}

/** Sets a file's access and modification times (default: now): a heartbeat that readers judge by `stat`. */
export function touch(path: string, timeMs: number = Date.now()): void {
  const time = new Date(timeMs);
  fs.utimesSync(path, time, time);
}

/** `chmod(2)`. */
export function chmod(path: string, mode: number): void {
  fs.chmodSync(path, mode);
}

/** `fchmod(2)`: immune to the path being renamed meanwhile. */
export function fchmod(fd: number, mode: number): void {
  fs.fchmodSync(fd, mode);
}

/** `fchown(2)` (root only: gives a file another owner). */
export function fchown(fd: number, uid: number, gid: number): void {
  fs.fchownSync(fd, uid, gid);
}

/** `ftruncate(2)`, to 0 bytes by default. */
export function ftruncate(fd: number, length = 0): void {
  fs.ftruncateSync(fd, length);
}

/** `fsync(2)`: the file's data and metadata reach the device. */
export function fsync(fd: number): void {
  fs.fsyncSync(fd);
}

/** `mkdir -p`: a folder and its missing parents (`mode` narrowed by the umask); one that exists is fine. */
export function mkdirp(path: string, mode = 0o777): void {
  fs.mkdirSync(path, { recursive: true, mode });
}

/**
 * Options for {@linkcode writeTextFile}.
 *
 * @example Write a secret that only its owner can read
 * ```ts
 * import { writeFileAtomic, type WriteFileOptions } from "./platform.ts";
 * const ownerOnly: WriteFileOptions = { mode: 0o600 };
 * writeFileAtomic("/tmp/example-token", "s3cret\n", ownerOnly);
 * ```
 */
export interface WriteFileOptions {
  /**
   * Permission bits: a new file is created with them (never wider for an instant), then `fchmod`
   * makes them exact whatever the umask.
   * @default undefined (0o666 narrowed by the umask)
   */
  mode?: number | undefined;
}

/**
 * Writes (creating or replacing) a whole file. Not atomic: use {@linkcode writeFileAtomic} when a
 * reader must never see it half-written.
 *
 * @param path The file.
 * @param text Its new content.
 * @param options `mode` applied whatever the umask.
 *
 * @example
 * ```ts
 * import { writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example.txt", "hello\n", { mode: 0o600 });
 * ```
 */
export function writeTextFile(path: string, text: string, options: WriteFileOptions = {}): void {
  const fd = fs.openSync(path, O_WRONLY | O_CREAT | fs.constants.O_TRUNC, options.mode ?? 0o666);
  try {
    if (options.mode !== undefined) fs.fchmodSync(fd, options.mode);
    writeAll(fd, new TextEncoder().encode(text));
  } finally {
    fs.closeSync(fd);
  }
}

let tempCounter = 0;

/**
 * A name for a temporary file beside `path` (same folder, so `rename` and `link` stay atomic) that
 * no other process or call picks.
 */
export function tempPathBeside(path: string): string {
  tempCounter += 1;
  const random = Math.floor(Math.random() * 0x100000000).toString(36);
  return `${path}.${process.pid}.${tempCounter}.${random}.tmp`;
}

/**
 * Writes a whole file atomically: a temporary file beside it, then `rename` over `path`. Readers see
 * the old content or the new, never a part.
 *
 * @param path The file.
 * @param text Its new content.
 * @param options `mode` applied whatever the umask.
 *
 * @example
 * ```ts
 * import { writeFileAtomic } from "./platform.ts";
 * writeFileAtomic("/tmp/example.json", JSON.stringify({ ok: true }) + "\n");
 * ```
 */
export function writeFileAtomic(path: string, text: string, options: WriteFileOptions = {}): void {
  const tmp = tempPathBeside(path);
  try {
    writeTextFile(tmp, text, options);
    fs.renameSync(tmp, path);
  } catch (error) {
    try {
      fs.unlinkSync(tmp);
    } catch {
      // The temporary may not exist (the open failed); the original error is what matters.
    }
    throw error;
  }
}

/**
 * Opens a private file for appending (and reading back) that a planted link cannot redirect:
 * `O_NOFOLLOW` (a symlink at `path` fails with `ELOOP`, its target untouched), `O_NONBLOCK` for the open
 * only (a FIFO fails with `ENXIO` instead of hanging), created with `mode` itself so it is never wider for
 * an instant. What was opened must be a regular file with one link, owned by this process's user;
 * otherwise the descriptor is closed and a {@linkcode NotOwnedFileError} is thrown. An existing file
 * wider than `mode` is narrowed.
 *
 * @param path The file (created when absent; its folder must exist).
 * @param mode Permission bits, e.g. `0o600`.
 * @returns The descriptor.
 * @throws {NotOwnedFileError} When `path` is not a regular file of ours; the file system's error
 *   (`ELOOP` for a symlink, `ENXIO` for a FIFO without reader, `EACCES`, …) when it cannot be opened.
 *
 * @example Append to a log that root writes into a shared folder
 * ```ts
 * import { closeFd, openOwnedAppend, writeAll } from "./platform.ts";
 * const fd = openOwnedAppend("/tmp/example-private.log", 0o600);
 * writeAll(fd, new TextEncoder().encode("diagnostic\n"));
 * closeFd(fd);
 * ```
 */
export function openOwnedAppend(path: string, mode: number): number {
  const { O_NOFOLLOW, O_NONBLOCK, O_RDWR } = fs.constants;
  // Read-write, so a caller can also read back what it caps (readAt) through the same checked descriptor.
  const fd = fs.openSync(path, O_RDWR | O_APPEND | O_CREAT | O_NOFOLLOW | O_NONBLOCK, mode);
  try {
    const info = fs.fstatSync(fd);
    const uid = getUid();
    if (!info.isFile() || info.nlink !== 1 || (uid !== null && info.uid !== uid)) {
      throw new NotOwnedFileError(path, info.isFile() ? "file" : "not-a-file", info.uid, info.nlink);
    }
    if ((info.mode & 0o777 & ~mode) !== 0) fs.fchmodSync(fd, mode);
    return fd;
  } catch (error) {
    fs.closeSync(fd);
    throw error;
  }
}

/**
 * Thrown by {@linkcode openOwnedAppend} when `path` is not a regular file with one link that we own.
 *
 * @example Tell a refused log from a missing permission
 * ```ts
 * import { NotOwnedFileError, openOwnedAppend } from "./platform.ts";
 * try {
 *   openOwnedAppend("/dev/null", 0o600);
 * } catch (error) {
 *   if (error instanceof NotOwnedFileError) console.log(error.path, error.kind, error.uid);
 * }
 * ```
 */
export class NotOwnedFileError extends Error {
  /** The path that was refused. */
  readonly path: string;
  /** `"not-a-file"` (a device, FIFO, socket or folder), or `"file"` (another user's, or hard-linked). */
  readonly kind: "file" | "not-a-file";
  /** The owner's user id. */
  readonly uid: number;
  /** The number of hard links. */
  readonly nlink: number;

  /**
   * Records what was found at a refused path.
   *
   * @param path The path that was refused.
   * @param kind What was found there.
   * @param uid Its owner.
   * @param nlink Its number of hard links.
   */
  constructor(path: string, kind: "file" | "not-a-file", uid: number, nlink: number) {
    super(
      `Cannot open ${JSON.stringify(path)}: expected a regular file with one link owned by us, found ${
        kind === "file" ? `a file of uid ${uid} with ${nlink} links` : "something that is not a regular file"
      }`,
    );
    this.name = "NotOwnedFileError";
    this.path = path;
    this.kind = kind;
    this.uid = uid;
    this.nlink = nlink;
  }
}

/**
 * Compresses `source` into a new file `dest` with gzip, asynchronously (off the caller's synchronous
 * path: `node:zlib` streams on every runtime). `dest` is created exclusively and fsynced before the
 * promise resolves; on failure it is removed. Write to a temporary name and rename it into place to
 * publish only complete files.
 *
 * @param source The file to compress (left as is).
 * @param dest The new file; fails with `EEXIST` when something is already there.
 * @returns Resolves once `dest` is complete and synced.
 *
 * @example Compress a backup beside itself
 * ```ts
 * import { gzipFile, writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example.log.1", "old records\n");
 * await gzipFile("/tmp/example.log.1", `/tmp/example.log.1.${Date.now()}.gz`);
 * ```
 */
export function gzipFile(source: string, dest: string): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    let fd = -1;
    const fail = (error: unknown) => {
      try {
        if (fd >= 0) fs.closeSync(fd);
      } catch {
        // The descriptor is being discarded with the partial file; the first error is what matters.
      }
      fd = -1;
      try {
        fs.unlinkSync(dest);
      } catch {
        // Nothing was created, or someone removed it: either way no partial file is left.
      }
      reject(error);
    };
    try {
      fd = fs.openSync(dest, O_WRONLY | O_CREAT | O_EXCL, 0o600);
    } catch (error) {
      reject(error);
      return;
    }
    // Loaded on first use: most programs never compress, and node:zlib adds to every startup.
    const zlib = process.getBuiltinModule("node:zlib") as typeof import("node:zlib");
    const input = fs.createReadStream(source);
    const gzip = zlib.createGzip();
    input.on("error", fail);
    gzip.on("error", fail);
    gzip.on("data", (chunk: Uint8Array) => {
      try {
        let offset = 0;
        while (offset < chunk.length) offset += fs.writeSync(fd, chunk, offset, chunk.length - offset);
      } catch (error) {
        input.destroy();
        gzip.destroy();
        fail(error);
      }
    });
    gzip.on("end", () => {
      if (fd < 0) return;
      try {
        fs.fsyncSync(fd);
        fs.closeSync(fd);
        fd = -1;
        resolve();
      } catch (error) {
        fail(error);
      }
    });
    input.pipe(gzip);
  });
}

// ---------------------------------------------------------------------------------------------------
// Writing to descriptors: whole writes, and exact, bounded writes to any descriptor number
// ---------------------------------------------------------------------------------------------------

/**
 * One `write(2)` of `bytes` to `fd`; returns how many bytes the kernel took (possibly fewer).
 * On Deno it goes through libc `write(2)` when FFI is permitted (an exact count); without FFI, Deno's
 * `node:fs` continues a partial write inside the call. For regular files, which the kernel writes
 * whole, it is one `write(2)` on every runtime.
 *
 * @param fd The descriptor.
 * @param bytes What to write.
 * @returns The number of bytes written.
 *
 * @example
 * ```ts
 * import { writeOnce } from "./platform.ts";
 * const n = writeOnce(1, new TextEncoder().encode("hi\n"));
 * console.log(n);
 * ```
 */
export function writeOnce(fd: number, bytes: Uint8Array): number {
  const lib = WRITE_LOOPS_INTERNALLY ? loadLibc() : null;
  if (lib === null) return fs.writeSync(fd, bytes, 0, bytes.length);
  while (true) {
    const n = lib.write(fd, bytes, bytes.length);
    if (n >= 0) return n;
    const errno = lib.errno();
    if (errno !== EINTR) throw errnoError(errno, "write", fd);
  }
}

/** How long {@linkcode writeAll} sleeps on `EAGAIN`: doubles from `minMs` to `maxMs` until a write moves. */
const EAGAIN_BACKOFF: BackoffOptions = { minMs: 1, maxMs: 50 };

/**
 * `PIPE_BUF` on Linux: a write of at most this many bytes to a pipe is all-or-nothing, even when the
 * pipe is non-blocking (it fails with `EAGAIN` having written nothing).
 */
const PIPE_BUF = 4096;

/**
 * Trap: Deno's `node:fs` `writeSync` loops over partial writes itself and, when a non-blocking pipe
 * or socket then answers `EAGAIN`, throws without saying how much it already wrote, so a retry would
 * send those bytes twice. `Deno.stdout.writeSync` hides partial writes too. On Deno every write
 * therefore goes through libc `write(2)` / `send(2)` (FFI) when permitted, and otherwise only in pieces
 * the kernel provably takes whole or not at all (see {@linkcode openDescriptorWriter}).
 */
const WRITE_LOOPS_INTERNALLY = runtime === "deno";

/**
 * Writes all of `bytes` to `fd` synchronously: loops over partial writes and, on a non-blocking
 * descriptor (`EAGAIN`), sleeps with backoff until the reader drains it. Other errors are thrown as
 * they are, with the bytes already written in `error.bytesWritten`, and `error.bytesWrittenExact`
 * saying whether that count is exact (`false` only on Deno without FFI, where a failed write can hide
 * how much it wrote: the count is then a lower bound).
 *
 * A regular file gets one `write(2)` for the whole buffer. On Deno without FFI, a buffer of more than
 * 4096 bytes to a pipe or socket goes out in 4096-byte writes (see the trap above).
 *
 * @param fd The descriptor.
 * @param bytes What to write.
 *
 * @example Write a large buffer to stdout whatever its mode
 * ```ts
 * import { writeAll } from "./platform.ts";
 * writeAll(1, new TextEncoder().encode("x".repeat(1 << 20) + "\n"));
 * ```
 */
export function writeAll(fd: number, bytes: Uint8Array): void {
  const lib = WRITE_LOOPS_INTERNALLY ? loadLibc() : null;
  const exact = !WRITE_LOOPS_INTERNALLY || lib !== null;
  const piece = !exact && bytes.length > PIPE_BUF && !fs.fstatSync(fd).isFile() ? PIPE_BUF : bytes.length;
  let offset = 0;
  let backoff: Backoff | null = null; // while the reader is behind
  while (offset < bytes.length) {
    try {
      const length = Math.min(piece, bytes.length - offset);
      const n = lib === null
        ? fs.writeSync(fd, bytes, offset, length)
        : libcWrite(lib, fd, bytes.subarray(offset, offset + length), false);
      if (n > 0) {
        offset += n;
        backoff = null;
        continue;
      }
      // 0: libc's EAGAIN (a write(2) of a non-empty buffer returns 0 for nothing else)
    } catch (error) {
      const code = errorCode(error);
      if (code === "EINTR") continue;
      if (code !== "EAGAIN" && code !== "EWOULDBLOCK") {
        throw withBytesWritten(error, offset, exact);
      }
    }
    backoff ??= createBackoff(EAGAIN_BACKOFF);
    sleepSync(backoff.next() ?? EAGAIN_BACKOFF.maxMs);
  }
}

/** Puts how much was written before a write failed on the error: `bytesWritten`, `bytesWrittenExact`. */
function withBytesWritten(error: unknown, offset: number, exact: boolean): unknown {
  if (typeof error === "object" && error !== null) {
    Object.assign(error, { bytesWritten: offset, bytesWrittenExact: exact });
  }
  return error;
}

/**
 * What a descriptor is, as far as writing to it goes: `"tty"` is any character device.
 *
 * @example
 * ```ts
 * import { type DescriptorKind, openDescriptorWriter } from "./platform.ts";
 * const writer = openDescriptorWriter(2);
 * const kind: DescriptorKind = writer.kind;
 * console.error(kind); // "pipe", "tty", "file", …
 * writer.close();
 * ```
 */
export type DescriptorKind = "file" | "pipe" | "socket" | "tty" | "other";

/**
 * A way to write to one descriptor that never resends bytes: made by {@linkcode openDescriptorWriter}.
 *
 * @example Write what the kernel takes now, without blocking
 * ```ts
 * import { openDescriptorWriter } from "./platform.ts";
 * const writer = openDescriptorWriter(2);
 * const bytes = new TextEncoder().encode("hello\n");
 * const taken = writer.writeSome(bytes); // 0 when the reader is behind
 * console.error(taken, writer.exact, writer.bounded);
 * writer.close();
 * ```
 */
export interface DescriptorWriter {
  /** The descriptor number the caller named. */
  readonly fd: number;
  /** What the descriptor is. */
  readonly kind: DescriptorKind;
  /** `true` when every write reports exactly what it wrote, failed writes included. */
  readonly exact: boolean;
  /** `true` when {@linkcode DescriptorWriter.writeSome} never blocks, so a wait can be bounded. */
  readonly bounded: boolean;
  /** One line saying what is not guaranteed here (not exact, not bounded), or `null`. */
  readonly limitation: string | null;
  /**
   * One write attempt: the number of bytes the kernel took (a prefix of `bytes`), or 0 when the
   * descriptor would block. Any other failure throws the runtime's error (`EPIPE`, `ENOSPC`, …).
   */
  writeSome(bytes: Uint8Array): number;
  /**
   * Waits until the descriptor may take bytes again, at most `timeoutMs` (sooner is fine): `poll(2)`
   * where FFI is available, else a short sleep.
   */
  waitWritable(timeoutMs: number): void;
  /** Releases what the writer opened itself; the caller's descriptor stays open. */
  close(): void;
}

/**
 * Opens an exact writer for any descriptor number, on every runtime: an inherited descriptor Deno's
 * `node:fs` does not know is reached through libc (FFI) or by opening `/proc/self/fd/N`.
 *
 * Routes, per descriptor kind: a blocking pipe or tty is reopened through `/proc/self/fd/N` with
 * `O_NONBLOCK` (a new open file description: the flags the process shares with others stay as they
 * are), so a write can be bounded; a socket gets `send(2)` with `MSG_DONTWAIT` through FFI (Deno, Bun)
 * or plain writes when it is already non-blocking (Node); a regular file is written whole. On Deno
 * without FFI, pipes get writes of at most `PIPE_BUF` bytes (all-or-nothing) and a non-blocking socket
 * cannot be written exactly: {@linkcode DescriptorWriter.limitation} says so.
 *
 * @param fd The descriptor number.
 * @returns The writer; `close()` it when done.
 * @throws {Error} with code `EBADF` when `fd` is not an open descriptor, or is open only for reading.
 *
 * @example
 * ```ts
 * import { openDescriptorWriter } from "./platform.ts";
 * const writer = openDescriptorWriter(1);
 * if (writer.limitation !== null) console.error(writer.limitation);
 * writer.writeSome(new TextEncoder().encode('{"ok":true}\n'));
 * writer.close();
 * ```
 */
export function openDescriptorWriter(fd: number): DescriptorWriter {
  checkNumber(
    "open a descriptor writer",
    "fd",
    fd,
    "a non-negative integer",
    (n) => Number.isSafeInteger(n) && n >= 0,
  );
  const lib = runtime === "node" ? null : loadLibc();
  let known = true; // node:fs can write to this number (on Deno: one it opened itself, or 0-2)
  let stats: fs.Stats;
  try {
    stats = fs.fstatSync(fd);
  } catch (error) {
    if (errorCode(error) !== "EBADF" || !isLinux) throw error;
    try {
      stats = fs.statSync(`/proc/self/fd/${fd}`); // Deno: a real descriptor node:fs does not know
    } catch {
      throw errnoError(EBADF, "fstat", fd, `fd ${fd} is not an open descriptor`);
    }
    known = false;
  }
  const kind: DescriptorKind = stats.isFile()
    ? "file"
    : stats.isFIFO()
    ? "pipe"
    : stats.isSocket()
    ? "socket"
    : stats.isCharacterDevice()
    ? "tty"
    : "other";
  const flags = descriptorFlags(fd);
  if (flags !== null && (flags & O_ACCMODE) === O_RDONLY) {
    throw errnoError(EBADF, "open", fd, `fd ${fd} is open for reading only`);
  }
  if (runtime === "node" && kind === "socket" && (fd === 1 || fd === 2)) {
    // Node makes its stdout/stderr socket non-blocking when the stream is first touched: do it now, so
    // the writer below knows it is bounded.
    void (fd === 1 ? process.stdout : process.stderr).writable;
  }
  let nonBlocking = flags === null ? null : (flags & O_NONBLOCK) !== 0;
  if (runtime === "node" && kind === "socket" && (fd === 1 || fd === 2)) {
    nonBlocking = descriptorNonBlocking(fd);
  }

  // Pipes and ttys: a private non-blocking description of the same pipe, so a wait can be bounded
  // without changing flags the process shares (and, on Deno, a number node:fs knows).
  let target = fd;
  let owned: number | null = null;
  const terminal = kind === "tty" && isLinux && isTerminalPath(fd);
  if ((kind === "pipe" || terminal) && (nonBlocking !== true || !known) && isLinux) {
    try {
      owned = fs.openSync(`/proc/self/fd/${fd}`, O_WRONLY | O_NONBLOCK | O_NOCTTY);
      target = owned;
      nonBlocking = true;
      known = true;
    } catch (error) {
      // ENXIO: the reader is already gone (the write will say EPIPE); EIO: a hung-up tty (the write will
      // say EIO). Either way nothing will block. Anything else: keep the original descriptor.
      const code = errorCode(error);
      if (code === "ENXIO" || code === "EIO") nonBlocking = true;
    }
  } else if (kind === "file" && !known && lib === null && isLinux) {
    owned = fs.openSync(`/proc/self/fd/${fd}`, O_WRONLY | O_APPEND);
    target = owned;
    known = true;
  }
  if (!known && lib === null) {
    throw errnoError(
      EBADF,
      "open",
      fd,
      `fd ${fd} (a ${kind}) is not reachable on ${runtime} without FFI: run with --allow-ffi`,
    );
  }

  const useSend = lib !== null && kind === "socket";
  let exact = true;
  let piece = MAX_WRITE_BYTES;
  // A character device that is not a terminal (/dev/null, /dev/full) never waits for a reader.
  const bounded = kind === "file" || (kind === "tty" && !terminal) || useSend || nonBlocking === true;
  let limitation: string | null = null;
  if (lib === null && WRITE_LOOPS_INTERNALLY && kind !== "file") {
    if (kind === "pipe") {
      piece = PIPE_BUF; // all-or-nothing, blocking or not
    } else if (nonBlocking !== false) {
      piece = PIPE_BUF;
      exact = false;
      limitation = `fd ${fd} is a non-blocking ${kind} and Deno writes to it without reporting partial ` +
        `writes; run with --allow-ffi for exact writes (a stalled write may resend bytes)`;
    }
  }
  if (!bounded && limitation === null) {
    limitation = nonBlocking === null
      ? `fd ${fd} is a ${kind} whose flags ${runtime} cannot read here (on Deno: without --allow-all): ` +
        `if it is blocking, a reader that stops reading blocks the write`
      : `fd ${fd} is a blocking ${kind} that ${runtime} cannot write without blocking: ` +
        `a reader that stops reading blocks the write`;
  }
  return {
    fd,
    kind,
    exact,
    bounded,
    limitation,
    writeSome(bytes: Uint8Array): number {
      const length = Math.min(bytes.length, piece);
      if (lib !== null) {
        return libcWrite(lib, target, length === bytes.length ? bytes : bytes.subarray(0, length), useSend);
      }
      while (true) {
        try {
          return fs.writeSync(target, bytes, 0, length);
        } catch (error) {
          const code = errorCode(error);
          if (code === "EAGAIN" || code === "EWOULDBLOCK") return 0;
          if (code !== "EINTR") throw error;
        }
      }
    },
    waitWritable(timeoutMs: number): void {
      if (lib !== null) {
        pollFd.setInt32(0, target, true);
        pollFd.setInt16(4, POLLOUT, true);
        pollFd.setInt16(6, 0, true);
        if (lib.poll(pollBytes, Math.max(1, Math.ceil(timeoutMs))) >= 0) return;
      }
      sleepSync(timeoutMs);
    },
    close(): void {
      if (owned === null) return;
      const closing = owned;
      owned = null;
      fs.closeSync(closing);
    },
  };
}

/**
 * Writes all of `bytes` through `writer`, sleeping out `EAGAIN` with backoff, and gives up once no
 * byte went out for `timeoutMs` (a wedged reader). Errors are thrown as the runtime made them, with
 * `bytesWritten` (exact when `writer.exact`, else a lower bound) and `bytesWrittenExact` set.
 *
 * @param writer The descriptor writer.
 * @param bytes What to write.
 * @param timeoutMs The longest wait without progress; `Infinity` waits for ever.
 * @returns The number of bytes written: `bytes.length`, or fewer when the wait timed out.
 *
 * @example
 * ```ts
 * import { openDescriptorWriter, writeAllWithin } from "./platform.ts";
 * const writer = openDescriptorWriter(1);
 * const bytes = new TextEncoder().encode("line\n");
 * if (writeAllWithin(writer, bytes, 10_000) < bytes.length) console.error("the reader is wedged");
 * writer.close();
 * ```
 */
export function writeAllWithin(writer: DescriptorWriter, bytes: Uint8Array, timeoutMs: number): number {
  let offset = 0;
  let stalled: Backoff | null = null; // from the first write that made no progress
  while (offset < bytes.length) {
    let n: number;
    try {
      n = writer.writeSome(offset === 0 ? bytes : bytes.subarray(offset));
    } catch (error) {
      throw withBytesWritten(error, offset, writer.exact);
    }
    if (n > 0) {
      offset += n;
      stalled = null;
      continue;
    }
    // poll(2) wakes as soon as the reader drains; the sleep it falls back to starts short (a reader
    // such as `cat` drains a full pipe in microseconds) and backs off. The deadline is monotonic.
    stalled ??= createBackoff({ ...WAIT_WRITABLE_BACKOFF, timeoutMs });
    const pause = stalled.next();
    if (pause === null) return offset;
    writer.waitWritable(pause);
  }
  return offset;
}

/** The largest single write: keeps FFI counts within 32 bits and the kernel's own cap. */
const MAX_WRITE_BYTES = 1 << 30;
/** The waits of {@linkcode writeAllWithin} while a descriptor takes nothing. */
const WAIT_WRITABLE_BACKOFF: BackoffOptions = { minMs: 0.05, maxMs: 50 };
// Linux values (x86_64 and arm64 alike), used only where libc was loaded, which is only on Linux.
const POLLOUT = 4;
const pollBytes = new Uint8Array(8);
const pollFd = new DataView(pollBytes.buffer);
const O_NOCTTY = (fs.constants as { O_NOCTTY?: number }).O_NOCTTY ?? 0o400;
const O_ACCMODE = 3;
const EBADF = 9;
const EINTR = 4;
const EAGAIN = 11;
/** Linux `send(2)` flags: never block, never raise SIGPIPE. */
const MSG_DONTWAIT = 0x40;
const MSG_NOSIGNAL = 0x4000;

/** The `flags:` of `/proc/self/fdinfo/N` (octal), or `null` where it cannot be read. */
function descriptorFlags(fd: number): number | null {
  if (!isLinux) return null;
  try {
    const match = /flags:\s*([0-7]+)/.exec(fs.readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"));
    return match === null ? null : parseInt(match[1] ?? "", 8);
  } catch {
    return null;
  }
}

/** Whether `/proc/self/fd/N` names a terminal (a pty, a virtual console, the console). */
function isTerminalPath(fd: number): boolean {
  try {
    return /^\/dev\/(pts\/|tty|console)/.test(fs.readlinkSync(`/proc/self/fd/${fd}`));
  } catch {
    return false;
  }
}

function descriptorNonBlocking(fd: number): boolean | null {
  const flags = descriptorFlags(fd);
  return flags === null ? null : (flags & O_NONBLOCK) !== 0;
}

// ---------------------------------------------------------------------------------------------------
// libc through FFI (Deno, Bun): the writes whose byte counts node:fs hides
// ---------------------------------------------------------------------------------------------------

/** libc `write(2)`, `send(2)` and `poll(2)` through FFI, with `errno`. */
interface Libc {
  write(fd: number, bytes: Uint8Array, length: number): number;
  send(fd: number, bytes: Uint8Array, length: number, flags: number): number;
  /** `poll(2)` of one `struct pollfd` (8 bytes: fd, events, revents). */
  poll(fds: Uint8Array, timeoutMs: number): number;
  errno(): number;
}

interface DenoFfi {
  permissions?: { querySync?(descriptor: { name: string }): { state: string } };
  dlopen?(
    name: string,
    symbols: Record<string, unknown>,
  ): { symbols: LibcSymbols };
  UnsafePointerView?: new (pointer: unknown) => { getInt32(offset?: number): number };
}

/** The libc functions both FFIs hand back for the spec in {@linkcode loadLibc}. */
interface LibcSymbols {
  write(...args: unknown[]): unknown;
  send(...args: unknown[]): unknown;
  poll(...args: unknown[]): unknown;
  __errno_location(): unknown;
}

let libcCache: Libc | null | undefined;

/** The first of `names` that `open` can load, as a {@linkcode Libc}; `null` when none loads. */
function bindLibc(
  names: string[],
  open: (name: string) => LibcSymbols,
  readErrno: (location: unknown) => number,
): Libc | null {
  for (const name of names) {
    try {
      const { write, send, poll, __errno_location: errnoLocation } = open(name);
      return {
        write: (fd, bytes, length) => write(fd, bytes, length) as number,
        send: (fd, bytes, length, flags) => send(fd, bytes, length, flags) as number,
        poll: (fds, timeoutMs) => poll(fds, 1, timeoutMs) as number,
        errno: () => readErrno(errnoLocation()),
      };
    } catch {
      // try the next libc
    }
  }
  return null;
}

/**
 * libc through FFI on Deno (when `--allow-ffi` is granted: never prompts) and Bun, on Linux; `null`
 * elsewhere and on Node, which has no FFI.
 */
function loadLibc(): Libc | null {
  if (libcCache !== undefined) return libcCache;
  libcCache = null;
  if (process.platform !== "linux" || (process.arch !== "x64" && process.arch !== "arm64")) return null;
  const names = ["libc.so.6", `libc.musl-${process.arch === "x64" ? "x86_64" : "aarch64"}.so.1`];
  if (deno) {
    const ffi = deno as unknown as DenoFfi;
    try {
      if (ffi.permissions?.querySync?.({ name: "ffi" }).state !== "granted") return null;
    } catch {
      return null;
    }
    const View = ffi.UnsafePointerView;
    if (typeof ffi.dlopen !== "function" || View === undefined) return null;
    const spec = {
      // 32-bit counts and results keep these on Deno's fast call path (a write is capped at 1 GiB).
      write: { parameters: ["i32", "buffer", "u32"], result: "i32" },
      send: { parameters: ["i32", "buffer", "u32", "i32"], result: "i32" },
      poll: { parameters: ["buffer", "u32", "i32"], result: "i32" },
      __errno_location: { parameters: [], result: "pointer" },
    };
    const open = ffi.dlopen.bind(ffi);
    libcCache = bindLibc(names, (name) => open(name, spec).symbols, (at) => new View(at).getInt32(0));
  } else if (bun) {
    try {
      const ffi = createRequire(import.meta.url)("bun:ffi") as {
        dlopen(name: string, spec: Record<string, unknown>): { symbols: LibcSymbols };
        read: { i32(pointer: unknown, offset: number): number };
      };
      const spec = {
        write: { args: ["i32", "ptr", "u32"], returns: "i32" },
        send: { args: ["i32", "ptr", "u32", "i32"], returns: "i32" },
        poll: { args: ["ptr", "u32", "i32"], returns: "i32" },
        __errno_location: { args: [], returns: "ptr" },
      };
      libcCache = bindLibc(names, (name) => ffi.dlopen(name, spec).symbols, (at) => ffi.read.i32(at, 0));
    } catch {
      return null;
    }
  }
  return libcCache;
}

/** One libc write (or `send` with `MSG_DONTWAIT`): bytes taken, 0 for `EAGAIN`; retries `EINTR`. */
function libcWrite(lib: Libc, fd: number, bytes: Uint8Array, send: boolean): number {
  while (true) {
    const n = send
      ? lib.send(fd, bytes, bytes.length, MSG_DONTWAIT | MSG_NOSIGNAL)
      : lib.write(fd, bytes, bytes.length);
    if (n >= 0) return n;
    const errno = lib.errno();
    if (errno === EINTR) continue;
    if (errno === EAGAIN) return 0;
    throw errnoError(errno, send ? "send" : "write", fd);
  }
}

// ---------------------------------------------------------------------------------------------------
// Processes: pids, /proc, the environment
// ---------------------------------------------------------------------------------------------------

/** This process's id. */
export function getPid(): number {
  return deno ? deno.pid : process.pid;
}

/** The parent's pid, read fresh each time: it changes when the parent dies and we are re-parented. */
export function getPpid(): number {
  if (isLinux) {
    const stat = readProcStat(getPid());
    if (stat) return stat.ppid;
  }
  return deno ? deno.ppid : process.ppid;
}

/**
 * Sends `signal` to `pid` (`kill(2)`). Signal 0 only checks that the pid exists. Throws `ESRCH` when
 * no such process exists and `EPERM` when it belongs to someone else.
 *
 * @param pid The target.
 * @param signal A name such as `"SIGTERM"` or a number.
 *
 * @example
 * ```ts
 * import { getPid, kill } from "./platform.ts";
 * kill(getPid(), 0); // we exist
 * ```
 */
export function kill(pid: number, signal: string | number): void {
  checkNumber("send a signal", "pid", pid, "a positive integer", (n) => Number.isInteger(n) && n > 0);
  process.kill(pid, signal);
}

/**
 * Whether a process with this pid exists: `kill(pid, 0)` with ESRCH → `false`, EPERM → `true` (alive,
 * but someone else's). A zombie still counts as alive here; see {@linkcode readProcStat} for its state.
 *
 * @param pid The pid.
 * @returns `true` when the process exists.
 *
 * @example
 * ```ts
 * import { getPid, isAlive } from "./platform.ts";
 * console.log(isAlive(getPid())); // true
 * ```
 */
export function isAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    const code = errorCode(error);
    if (code === "EPERM") return true;
    if (code === "ESRCH") return false;
    throw error;
  }
}

/**
 * The fields of `/proc/<pid>/stat` that keelson uses.
 *
 * @example Describe this process
 * ```ts
 * import { getPid, type ProcStat, readProcStat } from "./platform.ts";
 * const stat: ProcStat | null = readProcStat(getPid());
 * if (stat !== null) console.log(`${stat.comm} (state ${stat.state}), parent ${stat.ppid}`);
 * ```
 */
export interface ProcStat {
  /** The command name (field 2), without the parentheses. */
  comm: string;
  /** One letter: R running, S sleeping, D disk wait, Z zombie, T stopped, t traced, … */
  state: string;
  /** Parent pid. */
  ppid: number;
  /** Start time in clock ticks since boot (field 22): with the pid, an identity that survives reuse. */
  startTicks: number;
}

/**
 * Parses `/proc/<pid>/stat`; `null` off Linux or when the process is gone. The command name may hold
 * spaces and parentheses, so the fields are split after the last `)`.
 *
 * @param pid The pid.
 * @returns The fields, or `null`.
 *
 * @example
 * ```ts
 * import { getPid, readProcStat } from "./platform.ts";
 * console.log(readProcStat(getPid())?.state); // "R"
 * ```
 */
export function readProcStat(pid: number): ProcStat | null {
  if (!isLinux || !Number.isInteger(pid) || pid <= 0) return null;
  const text = readProcText(`/proc/${pid}/stat`);
  return text === null ? null : parseProcStat(text);
}

/** Clock ticks per second of `/proc` times (`sysconf(_SC_CLK_TCK)`: 100 on Linux x86_64 and arm64). */
export const CLOCK_TICKS_PER_SECOND = 100;

/** What the runtime refused us when reading `/proc` (Deno's own "NotCapable" messages name the missing flag). */
const identityRefusals: string[] = [];

/** Reads a `/proc` file; `null` when absent; notes (and swallows) a sandbox refusal (Deno without -A). */
function readProcText(path: string, link = false): string | null {
  if (!isLinux) return null;
  try {
    return link ? fs.readlinkSync(path) : fs.readFileSync(path, "utf8");
  } catch (error) {
    noteNotCapable(error);
    return null;
  }
}

/** Keeps one line per kind of sandbox refusal, for {@linkcode identityPermissionProblem}. */
function noteNotCapable(error: unknown): void {
  if ((error as { name?: unknown } | null)?.name !== "NotCapable") return;
  const text = errorMessage(error);
  // "Requires all access to "/proc/42/stat", …": one entry per kind of refusal, not per path.
  const kind = text.replace(/"[^"]*"/g, "").replace(/,.*$/, "").trim();
  if (!identityRefusals.some((seen) => seen.startsWith(kind))) identityRefusals.push(text);
}

let bootTimeCache: number | null | undefined;

/** The boot time in milliseconds since the epoch (`btime` of `/proc/stat`), or `null` off Linux. */
export function bootTimeMs(): number | null {
  if (bootTimeCache !== undefined) return bootTimeCache;
  // No /proc/stat (off Linux, a restricted container, Deno without -A): the boot time stays unknown.
  const match = /^btime (\d+)$/m.exec(readProcText("/proc/stat") ?? "");
  bootTimeCache = match ? Number(match[1]) * 1000 : null;
  return bootTimeCache;
}

/**
 * The start time of a process in milliseconds since the epoch: `/proc/<pid>/stat` field 22 plus the
 * boot time. `null` off Linux or when the process is gone. Two reads of one process give the same
 * value, so `(pid, start time)` tells a process from a later one that reused its pid.
 *
 * @param pid The pid.
 * @returns Milliseconds since the epoch, or `null`.
 *
 * @example
 * ```ts
 * import { getPid, processStartTime } from "./platform.ts";
 * console.log(processStartTime(getPid()));
 * ```
 */
export function processStartTime(pid: number): number | null {
  const stat = readProcStat(pid);
  const boot = bootTimeMs();
  return stat === null || boot === null ? null : startTimeOf(stat.startTicks, boot);
}

/** Boot time plus start ticks, in milliseconds since the epoch. */
function startTimeOf(startTicks: number, bootMs: number): number {
  return bootMs + Math.round((startTicks * 1000) / CLOCK_TICKS_PER_SECOND);
}

/**
 * `/proc/<pid>/status` as field → trimmed value (`State`, `PPid`, `TracerPid`, …), or `null` off Linux
 * or when the process is gone.
 */
export function readProcStatus(pid: number): Record<string, string> | null {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  const text = readProcText(`/proc/${pid}/status`);
  if (text === null) return null;
  const fields: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1).trim();
  }
  return fields;
}

/**
 * `/proc/<pid>/cmdline` as argv, or `null` off Linux, when the process is gone, or for a kernel thread or
 * a zombie (their cmdline is empty).
 */
export function readProcCmdline(pid: number): string[] | null {
  if (!Number.isInteger(pid) || pid <= 0) return null;
  const text = readProcText(`/proc/${pid}/cmdline`);
  if (text === null || text === "") return null;
  const args = text.split("\0");
  if (args[args.length - 1] === "") args.pop();
  return args;
}

/** The 1, 5 and 15 minute load averages, or `null` where the OS keeps none. */
export function loadAverage(): [number, number, number] | null {
  const [one, five, fifteen] = os.loadavg();
  if (process.platform === "win32" || one === undefined || five === undefined || fifteen === undefined) {
    return null;
  }
  return [one, five, fifteen];
}

/** The host name (of this process's UTS namespace). */
export function hostname(): string {
  return os.hostname();
}

/** The real user id, or `null` where it cannot be known (Windows; Deno without `--allow-sys`). */
export function getUid(): number | null {
  try {
    return typeof process.getuid === "function" ? process.getuid() : null;
  } catch {
    return null; // Deno without --allow-sys: unknown, like on a platform without uids
  }
}

/**
 * This process's argv as typed: the runtime executable, the script, its arguments (one shape on all
 * three runtimes).
 */
export function processArgv(): string[] {
  return [...process.argv];
}

/** An environment variable, or `undefined` when unset. */
export function getEnv(name: string): string | undefined {
  return process.env[name];
}

/** Ends the process at once with `code` (default 0). */
export function exit(code = 0): never {
  if (deno) deno.exit(code);
  process.exit(code);
}

// ---------------------------------------------------------------------------------------------------
// Process identity: who wrote a record, and is that process still alive
// ---------------------------------------------------------------------------------------------------

/**
 * Who a process is, in terms that survive PID reuse, containers, hostname changes and reboots. A pid
 * alone names a process only inside one PID namespace of one boot; with the start ticks it names one
 * process for good. Fields that cannot be read (off Linux, a restricted `/proc`) are `null`.
 *
 * @example Record who we are
 * ```ts
 * import { type ProcessIdentity, selfIdentity } from "./platform.ts";
 * const me: ProcessIdentity = selfIdentity();
 * console.log(`pid ${me.pid} started at tick ${me.startTicks} in ${me.pidNamespace} on ${me.hostname}`);
 * ```
 */
export interface ProcessIdentity {
  /** The process id, as seen in the process's own PID namespace. */
  pid: number;
  /** Start in clock ticks since boot (`/proc/<pid>/stat` field 22): exact, immune to clock steps. */
  startTicks: number | null;
  /** Start in milliseconds since the epoch (boot time + ticks): moves when the wall clock is stepped. */
  startTime: number | null;
  /** The kernel's boot id (`/proc/sys/kernel/random/boot_id`): another value means another boot or host. */
  bootId: string | null;
  /** The PID namespace (`/proc/<pid>/ns/pid`, e.g. `"pid:[4026531836]"`): pids compare only inside one. */
  pidNamespace: string | null;
  /** The host name (of the process's UTS namespace when it is our own identity). */
  hostname: string | null;
}

/**
 * A written claim of identity, as found in a record on disk: a pid and whatever else its writer knew.
 * Missing fields are unknown. `heartbeatMs` is the writer's promise to refresh the file's mtime that
 * often; a record that another PID namespace or host wrote is judged by it.
 *
 * @example A record from an older writer that knew only its pid
 * ```ts
 * import { type IdentityRecord, judgeIdentity } from "./platform.ts";
 * const record: IdentityRecord = { pid: 1234 };
 * console.log(judgeIdentity(record).alive);
 * ```
 */
export interface IdentityRecord {
  /** The writer's pid, in the writer's PID namespace. */
  pid: number;
  /** See {@linkcode ProcessIdentity.startTicks}. */
  startTicks?: number | null | undefined;
  /** See {@linkcode ProcessIdentity.startTime}. */
  startTime?: number | null | undefined;
  /** See {@linkcode ProcessIdentity.bootId}. */
  bootId?: string | null | undefined;
  /** See {@linkcode ProcessIdentity.pidNamespace}. */
  pidNamespace?: string | null | undefined;
  /** See {@linkcode ProcessIdentity.hostname}. */
  hostname?: string | null | undefined;
  /** How often the writer refreshes the record's mtime, in milliseconds; `null` when it does not. */
  heartbeatMs?: number | null | undefined;
}

/**
 * How {@linkcode judgeIdentity} judged a record: `"pid"` by pid and start time on this machine and PID
 * namespace (the only basis on which the process may be signalled), `"heartbeat"` by the age of the
 * record's mtime (another PID namespace or host), `"boot"` by its boot id (written before a reboot).
 *
 * @example Only signal what was judged by pid
 * ```ts
 * import { type IdentityBasis, judgeIdentity } from "./platform.ts";
 * const basis: IdentityBasis = judgeIdentity({ pid: 1234 }).basis;
 * console.log(basis === "pid" ? "may be signalled" : "never signal it");
 * ```
 */
export type IdentityBasis = "pid" | "heartbeat" | "boot";

/**
 * The verdict of {@linkcode judgeIdentity} on a record.
 *
 * @example Explain a verdict
 * ```ts
 * import { type IdentityVerdict, judgeIdentity } from "./platform.ts";
 * const verdict: IdentityVerdict = judgeIdentity({ pid: 1234, startTicks: 5 });
 * console.log(`${verdict.alive ? "alive" : "gone"} (${verdict.basis}): ${verdict.reason}`);
 * ```
 */
export interface IdentityVerdict {
  /** `true` when the writer of the record may still be running; `false` only when provably not. */
  alive: boolean;
  /** What the verdict rests on. */
  basis: IdentityBasis;
  /** `true` when the record names this very process (same pid, namespace and start). */
  self: boolean;
  /**
   * The identity of the live process the record names, read now, when `basis` is `"pid"` and `alive`:
   * pin it and judge it again right before signalling, so a process that reused the pid is never hit.
   */
  live: ProcessIdentity | null;
  /** Why, in words (`"process 1234 is gone"`, `"pid 1234 was reused: …"`, …). */
  reason: string;
}

/**
 * Options of {@linkcode judgeIdentity}.
 *
 * @example Judge a lock file by its mtime when it comes from a container
 * ```ts
 * import * as fs from "node:fs";
 * import { judgeIdentity, type JudgeIdentityOptions } from "./platform.ts";
 * fs.writeFileSync("/tmp/example.lock", JSON.stringify({ pid: 1, pidNamespace: "pid:[1]" }));
 * const options: JudgeIdentityOptions = { mtimeMs: fs.statSync("/tmp/example.lock").mtimeMs, heartbeatMs: 1000 };
 * console.log(judgeIdentity({ pid: 1, pidNamespace: "pid:[1]" }, options).basis); // "heartbeat"
 * ```
 */
export interface JudgeIdentityOptions {
  /**
   * The record file's mtime in milliseconds (its heartbeat); `null` when unknown, and a record that
   * must be judged by heartbeat then counts as alive.
   * @default null
   */
  mtimeMs?: number | null | undefined;
  /**
   * The heartbeat period assumed for a record that states none, in milliseconds. A record judged by
   * heartbeat is stale once its mtime is 3 × this (or 3 × its own `heartbeatMs`) old.
   * @default 10000
   */
  heartbeatMs?: number | undefined;
  /**
   * "Now" for the heartbeat, in milliseconds since the epoch.
   * @default Date.now()
   */
  nowMs?: number | undefined;
  /**
   * When the record was written, in milliseconds since the epoch, for records without start time: a
   * process that started after its record was written cannot be its writer (its pid was reused).
   * @default the mtimeMs option
   */
  writtenAtMs?: number | null | undefined;
}

/** Two readings of one process's wall-clock start (boot time + ticks) differ by up to a second. */
const START_TIME_TOLERANCE_MS = 1000;
/** A record judged by heartbeat is stale after this many missed refreshes. */
const HEARTBEAT_MISSES = 3;
const DEFAULT_JUDGE_HEARTBEAT_MS = 10_000;
const BOOT_ID_PATH = "/proc/sys/kernel/random/boot_id";

let selfIdentityCache: Omit<ProcessIdentity, "hostname"> | null = null;
let bootIdCache: string | null | undefined;
let identityProbed = false;
let identityWarned = false;

function currentBootId(): string | null {
  if (bootIdCache === undefined) bootIdCache = readProcText(BOOT_ID_PATH)?.trim() || null;
  return bootIdCache;
}

function currentHostname(): string | null {
  try {
    return os.hostname();
  } catch (error) {
    noteNotCapable(error);
    if (identityRefusals.length > 0) return null;
    throw error;
  }
}

/**
 * This process's identity. Everything but the host name is read once and cached (it never changes);
 * the host name is read on every call (`hostnamectl` may change it).
 *
 * @returns Our identity; fields that cannot be read are `null`.
 *
 * @example
 * ```ts
 * import { selfIdentity } from "./platform.ts";
 * console.log(selfIdentity().startTicks);
 * ```
 */
export function selfIdentity(): ProcessIdentity {
  const pid = getPid();
  if (selfIdentityCache === null || selfIdentityCache.pid !== pid) {
    // /proc/self, not /proc/<pid>: in a PID namespace whose /proc was not remounted, our pid names
    // another process there, while /proc/self is always us (start ticks count from the one boot).
    const text = readProcText("/proc/self/stat");
    const stat = text === null ? null : parseProcStat(text);
    const boot = bootTimeMs();
    selfIdentityCache = {
      pid,
      startTicks: stat?.startTicks ?? null,
      startTime: stat === null || boot === null ? null : startTimeOf(stat.startTicks, boot),
      bootId: currentBootId(),
      pidNamespace: readProcText("/proc/self/ns/pid", true),
    };
  }
  return { ...selfIdentityCache, hostname: currentHostname() };
}

/**
 * The identity of the process behind `pid` in our PID namespace, read now, or `null` when no such
 * process exists or it has exited (a zombie). Off Linux only `pid` and `hostname` are known.
 *
 * @param pid The pid.
 * @returns Its identity, or `null`.
 *
 * @example Pin a process before signalling it
 * ```ts
 * import { getPid, identityOf } from "./platform.ts";
 * const pinned = identityOf(getPid());
 * console.log(pinned?.startTicks === identityOf(getPid())?.startTicks); // true: same process
 * ```
 */
export function identityOf(pid: number): ProcessIdentity | null {
  const read = readIdentity(pid);
  return typeof read === "string" ? null : read;
}

/** {@linkcode identityOf}, telling a zombie from a gone process. */
function readIdentity(pid: number): ProcessIdentity | "gone" | "zombie" {
  if (!Number.isInteger(pid) || pid <= 0) return "gone";
  // kill(pid, 0) first: a gone pid costs one cheap syscall instead of a failed /proc read.
  if (!existsOrUnknown(pid)) return "gone";
  if (!isLinux) return emptyIdentity(pid);
  const text = readProcText(`/proc/${pid}/stat`);
  if (text === null) {
    // No /proc entry: gone meanwhile, or /proc is refused us (then kill(pid, 0) said all there is).
    return identityRefusals.length > 0 ? emptyIdentity(pid) : "gone";
  }
  const stat = parseProcStat(text);
  if (stat === null) return "gone";
  if (stat.state === "Z") return "zombie";
  const boot = bootTimeMs();
  return {
    pid,
    startTicks: stat.startTicks,
    startTime: boot === null ? null : startTimeOf(stat.startTicks, boot),
    bootId: currentBootId(),
    pidNamespace: readProcText(`/proc/${pid}/ns/pid`, true),
    hostname: currentHostname(),
  };
}

/** `kill(pid, 0)`, where a sandbox refusal (Deno without --allow-run) counts as "may exist". */
function existsOrUnknown(pid: number): boolean {
  try {
    return isAlive(pid);
  } catch (error) {
    noteNotCapable(error);
    if (identityRefusals.length > 0) return true;
    throw error;
  }
}

function emptyIdentity(pid: number): ProcessIdentity {
  return {
    pid,
    startTicks: null,
    startTime: null,
    bootId: null,
    pidNamespace: null,
    hostname: currentHostname(),
  };
}

function parseProcStat(text: string): ProcStat | null {
  const open = text.indexOf("(");
  const close = text.lastIndexOf(")");
  if (open < 0 || close < open) return null;
  // After ") ": field 3 (state) is index 0, field 4 (ppid) index 1, field 22 (starttime) index 19.
  const rest = text.slice(close + 2).split(" ");
  const ppid = Number(rest[1]);
  const startTicks = Number(rest[19]);
  if (!Number.isFinite(ppid) || !Number.isFinite(startTicks)) return null;
  return { comm: text.slice(open + 1, close), state: rest[0] ?? "", ppid, startTicks };
}

/**
 * Why this process cannot read the identities that judging needs, naming the missing permission, or
 * `null` when nothing is missing. Today only Deno without `--allow-all` has a reason: it refuses every
 * `/proc` read ("Requires all access"), whatever `--allow-read` says, and the host name without
 * `--allow-sys`. A module that cannot keep its guarantee without them throws a typed error with this
 * text; one that degrades says so once on stderr (see {@linkcode judgeIdentity}).
 *
 * @returns The missing permission in words, or `null`.
 *
 * @example Refuse to start half-blind
 * ```ts
 * import { identityPermissionProblem } from "./platform.ts";
 * const problem = identityPermissionProblem();
 * if (problem !== null) console.error(`cannot judge PID files: ${problem}`);
 * ```
 */
export function identityPermissionProblem(): string | null {
  if (!identityProbed) {
    identityProbed = true;
    selfIdentityCache = null;
    selfIdentity(); // reading our own identity (boot time included) notes every refusal
  }
  if (identityRefusals.length === 0) return null;
  return `run Deno with --allow-all (-A); it refuses /proc reads without it, whatever --allow-read says (${
    identityRefusals.join("; ")
  })`;
}

function warnIdentityDegraded(): void {
  if (identityWarned) return;
  identityWarned = true;
  warnIfProcRefused("process identities cannot be read, so a reused PID may be judged alive");
}

const procRefusalWarnings = new Set<string>();
const reportProcRefusal = stderrReporter("keelson");

/**
 * Says once per `consequence`, on stderr, what a module loses where `/proc` is refused (Deno without
 * `-A`), so a weaker guarantee is never silent. Does nothing where `/proc` reads work.
 *
 * @param consequence What the caller cannot do, e.g. "the shutdown snapshot lacks the parent's name".
 *
 * @example Warn once at start-up
 * ```ts
 * import { warnIfProcRefused } from "./platform.ts";
 * warnIfProcRefused("the snapshot lacks the parent's name and command line");
 * ```
 */
export function warnIfProcRefused(consequence: string): void {
  if (procRefusalWarnings.has(consequence)) return;
  const problem = identityPermissionProblem();
  if (problem === null) return;
  procRefusalWarnings.add(consequence);
  reportProcRefusal(`${consequence}: ${problem}`);
}

/**
 * Judges a written record against the live system: is the process that wrote it still running? The one
 * answer to this question for every module (PID files, the rollover lock, shutdown markers). Rules:
 * - another boot id with the same (or an unknown) host name: the machine rebooted, so `alive: false`;
 * - another host, or another PID namespace of this boot: pids cannot be compared, so judged by
 *   heartbeat: alive while the file's mtime is younger than 3 × `heartbeatMs` (the record's own
 *   period first, then the option's);
 * - otherwise (this boot and PID namespace, whatever the host name says, or fields unknown): by pid and
 *   start ticks (start time with a 1 s tolerance when no ticks were recorded; without either, a process
 *   that started after the record was written is not its writer). A gone pid or a zombie is dead.
 * Verdicts never depend on a runtime's timestamp precision (mtimes are compared in whole milliseconds).
 * Where the runtime refuses `/proc` (Deno without `-A`) it says so once on stderr.
 *
 * @param record The identity found in the record.
 * @param options The record file's mtime, the heartbeat period, "now".
 * @returns The verdict, with the reason.
 *
 * @example Is the holder of a lock file alive?
 * ```ts
 * import * as fs from "node:fs";
 * import { judgeIdentity, selfIdentity } from "./platform.ts";
 * fs.writeFileSync("/tmp/example.lock", JSON.stringify(selfIdentity()));
 * const record = JSON.parse(fs.readFileSync("/tmp/example.lock", "utf8"));
 * const verdict = judgeIdentity(record, { mtimeMs: fs.statSync("/tmp/example.lock").mtimeMs });
 * console.log(verdict.alive, verdict.self); // true true
 * ```
 */
export function judgeIdentity(record: IdentityRecord, options: JudgeIdentityOptions = {}): IdentityVerdict {
  const me = selfIdentity();
  if (me.startTicks === null && isLinux) warnIdentityDegraded();
  const pid = record.pid;
  const host = record.hostname ?? null;
  const sameHost = host === null || me.hostname === null || host === me.hostname;
  const bootId = record.bootId ?? null;
  const otherBoot = bootId !== null && me.bootId !== null && bootId !== me.bootId;
  const verdict = (alive: boolean, basis: IdentityBasis, reason: string): IdentityVerdict => ({
    alive,
    basis,
    self: false,
    live: null,
    reason,
  });
  if (otherBoot && sameHost) {
    return verdict(false, "boot", `written during an earlier boot (boot id ${bootId}, now ${me.bootId})`);
  }
  const ns = record.pidNamespace ?? null;
  const otherNs = ns !== null && me.pidNamespace !== null && ns !== me.pidNamespace;
  // A host name alone proves nothing when the boot id says "this kernel" (a UTS namespace, a rename).
  const otherHost = otherBoot || (!sameHost && (bootId === null || me.bootId === null));
  const ticks = record.startTicks ?? null;
  if (!otherNs && !otherHost && pid === me.pid && ticks !== null && ticks === me.startTicks) {
    return {
      alive: true,
      basis: "pid",
      self: true,
      live: me,
      reason: `pid ${pid} is this process (same start)`,
    };
  }
  // A /proc mounted for another PID namespace (a container that did not remount it) shows other
  // processes behind our pids: nothing can be judged by pid through it.
  const foreignProc = !procIsOurs();
  if (otherNs || otherHost || foreignProc) {
    const where = otherHost
      ? `written on host ${JSON.stringify(host)} (this is ${JSON.stringify(me.hostname)})`
      : foreignProc
      ? `/proc shows another PID namespace than ours (pid ${me.pid})`
      : `written in PID namespace ${ns} (this is ${me.pidNamespace})`;
    const period = positiveOr(
      record.heartbeatMs,
      positiveOr(options.heartbeatMs, DEFAULT_JUDGE_HEARTBEAT_MS),
    );
    const mtime = options.mtimeMs ?? null;
    if (mtime === null || !Number.isFinite(mtime)) {
      return verdict(true, "heartbeat", `${where}, and its heartbeat is unknown`);
    }
    const age = Math.floor(options.nowMs ?? Date.now()) - Math.floor(mtime);
    const limit = HEARTBEAT_MISSES * period;
    if (age >= limit) {
      return verdict(
        false,
        "heartbeat",
        `${where}, and its heartbeat stopped ${age} ms ago (limit ${limit} ms)`,
      );
    }
    return verdict(true, "heartbeat", `${where}, and its heartbeat is ${Math.max(age, 0)} ms old`);
  }
  if (!Number.isInteger(pid) || pid <= 0) {
    return verdict(false, "pid", `pid ${describeValue(pid)} is not a process id`);
  }
  const live = readIdentity(pid);
  if (live === "zombie") return verdict(false, "pid", `process ${pid} has exited (a zombie not yet reaped)`);
  if (live === "gone") return verdict(false, "pid", `process ${pid} is gone`);
  const start = record.startTime ?? null;
  const writtenAt = options.writtenAtMs ?? options.mtimeMs ?? null;
  // Alive by pid means "this is the writer, or we cannot tell": with our own pid, that is us.
  const alive = (how: string): IdentityVerdict => ({
    alive: true,
    basis: "pid",
    self: pid === me.pid,
    live,
    reason: pid === me.pid ? `pid ${pid} is this process (${how})` : `process ${pid} is alive (${how})`,
  });
  if (ticks !== null && live.startTicks !== null) {
    if (ticks !== live.startTicks) {
      return verdict(
        false,
        "pid",
        `pid ${pid} was reused: the process started at tick ${live.startTicks}, the record says ${ticks}`,
      );
    }
    return alive("same start");
  }
  if (start !== null && live.startTime !== null) {
    if (Math.abs(live.startTime - start) > START_TIME_TOLERANCE_MS) {
      return verdict(
        false,
        "pid",
        `pid ${pid} was reused: the process started at ${isoTime(live.startTime)}, the record says ${
          isoTime(start)
        }`,
      );
    }
    return alive("same start");
  }
  if (ticks === null && start === null && writtenAt !== null && live.startTime !== null) {
    if (live.startTime > writtenAt + START_TIME_TOLERANCE_MS) {
      return verdict(
        false,
        "pid",
        `pid ${pid} was reused: the process started at ${
          isoTime(live.startTime)
        }, after the record was written (${isoTime(writtenAt)})`,
      );
    }
    return alive("started before the record was written");
  }
  return alive("its start time cannot be compared");
}

let procIsOursCache: boolean | undefined;

/** Whether /proc numbers processes as our PID namespace does (its "self" entry has our pid). */
function procIsOurs(): boolean {
  if (procIsOursCache !== undefined) return procIsOursCache;
  const text = isLinux ? readProcText("/proc/self/stat") : null;
  // Unknown (off Linux, /proc refused) counts as ours: kill(pid, 0) then numbers as we do.
  procIsOursCache = text === null || Number.parseInt(text, 10) === getPid();
  return procIsOursCache;
}

function positiveOr(value: number | null | undefined, fallback: number): number {
  return typeof value === "number" && Number.isFinite(value) && value > 0 ? value : fallback;
}

function isoTime(ms: number): string {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? String(ms) : date.toISOString();
}

// ---------------------------------------------------------------------------------------------------
// Signals and exit hooks
// ---------------------------------------------------------------------------------------------------

/**
 * The signals a service handles; the ones {@linkcode onSignal} accepts.
 *
 * @example Log every signal a service handles
 * ```ts
 * import { HANDLED_SIGNALS, onSignal } from "./platform.ts";
 * const offs = HANDLED_SIGNALS.map((signal) => onSignal(signal, (name) => console.log(`got ${name}`)));
 * // ... later, on shutdown:
 * for (const off of offs) off();
 * ```
 */
export const HANDLED_SIGNALS: readonly string[] = Object.freeze([
  "SIGTERM",
  "SIGINT",
  "SIGHUP",
  "SIGQUIT",
  "SIGUSR1",
  "SIGUSR2",
]);

/** Signals keelson handles, with their Linux numbers (used where the OS table is unavailable). */
const FALLBACK_SIGNALS: Record<string, number> = {
  SIGHUP: 1,
  SIGINT: 2,
  SIGQUIT: 3,
  SIGILL: 4,
  SIGTRAP: 5,
  SIGABRT: 6,
  SIGBUS: 7,
  SIGFPE: 8,
  SIGKILL: 9,
  SIGUSR1: 10,
  SIGSEGV: 11,
  SIGUSR2: 12,
  SIGPIPE: 13,
  SIGALRM: 14,
  SIGTERM: 15,
  SIGCHLD: 17,
  SIGCONT: 18,
  SIGSTOP: 19,
  SIGTSTP: 20,
  SIGTTIN: 21,
  SIGTTOU: 22,
  SIGWINCH: 28,
};

const SIGNAL_NUMBERS: Record<string, number> = (() => {
  const table = (os.constants as { signals?: Record<string, number> }).signals;
  return table && typeof table["SIGTERM"] === "number" ? { ...table } : { ...FALLBACK_SIGNALS };
})();

/** The number of a signal on this OS (`"SIGTERM"` → 15 on Linux), or `undefined` for an unknown name. */
export function signalNumber(name: string): number | undefined {
  return Object.hasOwn(SIGNAL_NUMBERS, name) ? SIGNAL_NUMBERS[name] : undefined;
}

/**
 * The name of a signal number on this OS (15 → `"SIGTERM"` on Linux), or `undefined`.
 *
 * @param signal A signal number.
 * @returns Its name, or `undefined`.
 *
 * @example
 * ```ts
 * import { signalName } from "./platform.ts";
 * console.log(signalName(2)); // "SIGINT"
 * ```
 */
export function signalName(signal: number): string | undefined {
  // SIGIOT and SIGPOLL are Linux's second names of SIGABRT and SIGIO: report the usual ones.
  for (const [name, number] of Object.entries(SIGNAL_NUMBERS)) {
    if (number === signal && name !== "SIGIOT" && name !== "SIGPOLL") return name;
  }
  return undefined;
}

/**
 * Subscribes to a signal with a uniform callback that receives the signal name. While at least one
 * listener is subscribed, the runtime's default action (usually ending the process) does not happen.
 *
 * @param signal One of {@linkcode HANDLED_SIGNALS}.
 * @param handler Called with the signal name on every delivery.
 * @returns A function that unsubscribes (idempotent).
 *
 * @example Log SIGHUP until told otherwise
 * ```ts
 * import { onSignal } from "./platform.ts";
 * const off = onSignal("SIGHUP", (name) => console.log(`got ${name}`));
 * off();
 * ```
 */
export function onSignal(signal: string, handler: (signal: string) => void): () => void {
  if (!HANDLED_SIGNALS.includes(signal)) {
    throw new TypeError(
      mustBe("subscribe to a signal", "signal", `one of ${HANDLED_SIGNALS.join(", ")}`, signal),
    );
  }
  const listener = () => handler(signal);
  if (deno) deno.addSignalListener(signal, listener);
  else process.on(signal as NodeJS.Signals, listener);
  let subscribed = true;
  return () => {
    if (!subscribed) return;
    subscribed = false;
    if (deno) deno.removeSignalListener(signal, listener);
    else process.off(signal as NodeJS.Signals, listener);
  };
}

/**
 * Deno keeps no visible listener list, so `Deno.addSignalListener` is wrapped once per process to count
 * what goes through it from then on. The count lives on `globalThis` under a registered symbol: a second
 * copy of this file (a vendored module beside the npm package) must see what the first one counted, and
 * must not wrap the wrapper. `null`: not Deno, or a frozen Deno namespace (the count is unknown).
 */
const denoSignalListeners: Map<string, Set<() => void>> | null = deno ? sharedDenoSignalCount(deno) : null;

function sharedDenoSignalCount(api: DenoLike): Map<string, Set<() => void>> | null {
  const key = Symbol.for("keelson.denoSignalListeners");
  const store = globalThis as unknown as Record<symbol, Map<string, Set<() => void>> | null | undefined>;
  const shared = store[key];
  if (shared !== undefined) return shared;
  let listeners: Map<string, Set<() => void>> | null = new Map();
  try {
    const add = api.addSignalListener.bind(api);
    const remove = api.removeSignalListener.bind(api);
    const counted = listeners;
    api.addSignalListener = (signal: string, handler: () => void) => {
      add(signal, handler);
      let set = counted.get(signal);
      if (!set) counted.set(signal, set = new Set());
      set.add(handler);
    };
    api.removeSignalListener = (signal: string, handler: () => void) => {
      remove(signal, handler);
      counted.get(signal)?.delete(handler);
    };
  } catch {
    listeners = null; // a frozen Deno namespace
  }
  store[key] = listeners;
  return listeners;
}

/**
 * How many listeners the process has for `signal`, or `null` when that cannot be known. A library that
 * subscribes to a signal only to clean up (and then re-raise it) acts only when it is the sole listener:
 * when anyone else listens, they own the shutdown.
 *
 * Node and Bun count every `process.on(signal)` listener ({@linkcode onSignal} included). Deno has no
 * listener list, so this module counts what goes through `Deno.addSignalListener` (which `onSignal` and
 * Deno's `process.on` both use) from the moment it was loaded; listeners added before that are missed.
 *
 * @param signal A signal name such as `"SIGTERM"`.
 * @returns The number of listeners, or `null` when unknown.
 *
 * @example Re-raise only when nobody else handles the signal
 * ```ts
 * import { getPid, kill, onSignal, signalListenerCount } from "./platform.ts";
 * const off = onSignal("SIGTERM", (name) => {
 *   if (signalListenerCount(name) !== 1) return; // someone else handles it
 *   off();
 *   kill(getPid(), name); // the default action now ends the process
 * });
 * ```
 */
export function signalListenerCount(signal: string): number | null {
  if (!deno) return process.listenerCount(signal as NodeJS.Signals);
  if (denoSignalListeners === null) return null;
  return denoSignalListeners.get(signal)?.size ?? 0;
}

/**
 * Two deliveries of one signal closer than this are one event: one Ctrl-C that `deno task` or GNU
 * `timeout` forwards to a child the terminal already signalled arrives twice, a few milliseconds apart.
 */
const SIGNAL_REPEAT_WINDOW_MS = 100;

/**
 * Wraps a signal handler so that a repeat of the same signal within 100 ms of its last counted delivery
 * is dropped (one Ctrl-C delivered twice by `deno task` or `timeout`). A different signal, or the same
 * one 100 ms or more later, goes through.
 *
 * @param handler Called with the signal name for every delivery that is not a repeat.
 * @returns The filtering handler, for {@linkcode onSignal}.
 *
 * @example Count one Ctrl-C once, even under `deno task`
 * ```ts
 * import { ignoreSignalRepeats, onSignal } from "./platform.ts";
 * let count = 0;
 * const off = onSignal("SIGINT", ignoreSignalRepeats(() => console.log(`interrupt ${++count}`)));
 * off();
 * ```
 */
export function ignoreSignalRepeats(handler: (signal: string) => void): (signal: string) => void {
  let last: string | null = null;
  let lastAt = -Infinity;
  return (signal: string) => {
    const now = performance.now();
    if (signal === last && now - lastAt < SIGNAL_REPEAT_WINDOW_MS) return;
    last = signal;
    lastAt = now;
    handler(signal);
  };
}

let fileSizeSignalHandled = false;

/**
 * Makes a write past the file-size limit (`ulimit -f`, systemd `LimitFSIZE=`) fail with `EFBIG`
 * instead of killing the process. Node and Bun ignore `SIGXFSZ` already; Deno keeps its default
 * action (the process dies with status 153), so on Deno this installs a listener that does nothing
 * and does not keep the process alive. Idempotent.
 *
 * @example A log writer that must survive a file-size limit
 * ```ts
 * import { handleFileSizeSignal } from "./platform.ts";
 * handleFileSizeSignal(); // a too-large write now throws EFBIG on every runtime
 * ```
 */
export function handleFileSizeSignal(): void {
  if (fileSizeSignalHandled || !deno || !isLinux) return;
  fileSizeSignalHandled = true;
  try {
    deno.addSignalListener("SIGXFSZ", () => {});
  } catch {
    // A Deno that cannot listen for SIGXFSZ keeps the default action: nothing better to do here.
  }
}

/**
 * Calls `handler` when the process ends normally: the event loop ran dry, or `exit()` /
 * `process.exit()` / `Deno.exit()` was called (this includes a signal handler that ends in an exit). It
 * does not run when a signal's default action or `SIGKILL` ends the process, nor (on Deno) after an
 * uncaught error. The handler must be synchronous: nothing asynchronous runs after it.
 *
 * Deno runs it from the `unload` event (the only hook `Deno.exit()` fires), Node and Bun from
 * `process.on("exit")`.
 *
 * @param handler Called once at exit.
 * @returns A function that unsubscribes (idempotent).
 *
 * @example Remove a scratch file when the process ends
 * ```ts
 * import { onExit, unlinkIfExists, writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example.scratch", "x\n");
 * onExit(() => unlinkIfExists("/tmp/example.scratch"));
 * ```
 */
export function onExit(handler: () => void): () => void {
  const listener = () => handler();
  const target = globalThis as unknown as {
    addEventListener(type: string, listener: () => void): void;
    removeEventListener(type: string, listener: () => void): void;
  };
  if (deno) target.addEventListener("unload", listener);
  else process.on("exit", listener);
  let subscribed = true;
  return () => {
    if (!subscribed) return;
    subscribed = false;
    if (deno) target.removeEventListener("unload", listener);
    else process.off("exit", listener);
  };
}

/**
 * Calls `handler` for an uncaught exception or an unhandled promise rejection instead of the runtime's
 * default (printing it and ending the process with status 1). While subscribed, the process keeps
 * running after such an error: the handler decides how it ends. Deno reports them as the `error` and
 * `unhandledrejection` events of `globalThis` (cancelled here), Node and Bun as the `process` events
 * `uncaughtException` and `unhandledRejection`.
 *
 * @param handler Called with the thrown value or the rejection reason, and which of the two it was.
 * @returns A function that unsubscribes (idempotent).
 *
 * @example Log a stray rejection, then end the process the usual way
 * ```ts
 * import { exit, onUncaught } from "./platform.ts";
 * const off = onUncaught((error, kind) => {
 *   console.error(`uncaught ${kind}:`, error);
 *   exit(1);
 * });
 * off();
 * ```
 */
export function onUncaught(handler: (error: unknown, kind: "exception" | "rejection") => void): () => void {
  let unsubscribe: () => void;
  if (deno) {
    const target = globalThis as unknown as {
      addEventListener(type: string, listener: (event: Event) => void): void;
      removeEventListener(type: string, listener: (event: Event) => void): void;
    };
    const onError = (event: Event) => {
      event.preventDefault();
      handler((event as ErrorEvent).error, "exception");
    };
    const onRejection = (event: Event) => {
      event.preventDefault();
      handler((event as PromiseRejectionEvent).reason, "rejection");
    };
    target.addEventListener("error", onError);
    target.addEventListener("unhandledrejection", onRejection);
    unsubscribe = () => {
      target.removeEventListener("error", onError);
      target.removeEventListener("unhandledrejection", onRejection);
    };
  } else {
    const onException = (error: unknown) => handler(error, "exception");
    const onRejection = (reason: unknown) => handler(reason, "rejection");
    process.on("uncaughtException", onException);
    process.on("unhandledRejection", onRejection);
    unsubscribe = () => {
      process.off("uncaughtException", onException);
      process.off("unhandledRejection", onRejection);
    };
  }
  let subscribed = true;
  return () => {
    if (!subscribed) return;
    subscribed = false;
    unsubscribe();
  };
}

// ---------------------------------------------------------------------------------------------------
// Watchdog: ends the process from outside the main thread
// ---------------------------------------------------------------------------------------------------

// A JavaScript signal handler or timer never runs while the main thread is blocked in a synchronous
// syscall (a `write` to a full pipe resumes after every signal), so "force exit N ms after the first
// signal" and "a second signal exits at once" need a thread of their own. The watchdog is one
// `node:worker_threads` Worker (on all three runtimes, unref'd so it never keeps the process alive) that
// shares a SharedArrayBuffer with the main thread: `arm()` writes the deadline there and wakes the worker
// with `Atomics.notify`, so a main thread that never yields again after arming is still ended on time.
// The worker ends the process with SIGKILL of its own pid: the exit status a parent sees is "killed by
// SIGKILL" (137 in a shell), the only ending that no handler, blocked syscall or stuck finaliser can delay.
//
// The worker hears the signals itself, so a main thread that was already wedged when the FIRST signal
// came is still ended (`armOnFirstSignalMs`). The route differs per runtime: Deno runs
// `Deno.addSignalListener` in the worker; Node's `process.on` is main-thread only, so the worker (started
// with `--expose-internals`) opens its own libuv signal handle through the internal `signal_wrap`
// binding, and libuv wakes every loop that has one; Bun's workers get no signals, so the worker compiles
// a small C handler with `bun:ffi`'s `cc`, puts it in front of Bun's own handler with `sigaction(2)`, and
// polls the count it keeps. Where none works (a Node without the internal binding, a Bun without `cc`),
// only the main thread counts. The worker is `watchdogWorker` below: real TypeScript, checked and linted
// with the rest, whose source (`Function.prototype.toString`) is what the worker evaluates.

/**
 * Options for {@linkcode startWatchdog}.
 *
 * @example Leave SIGHUP to a reload handler
 * ```ts
 * import { startWatchdog, type WatchdogOptions } from "./platform.ts";
 * const options: WatchdogOptions = {
 *   signals: ["SIGTERM", "SIGINT"], // SIGHUP means "reload" in this service
 *   onError: (error) => console.error("watchdog failed:", error),
 * };
 * const watchdog = startWatchdog(options);
 * watchdog.stop();
 * ```
 */
export interface WatchdogOptions {
  /**
   * The signals that count towards "a second signal ends the process". Each must be one of
   * {@linkcode HANDLED_SIGNALS}. Leave out a signal that means "reload" in your service (often SIGHUP).
   * A repeat of the same signal within 100 ms counts once (one Ctrl-C that `deno task` or `timeout`
   * delivers twice); a different signal, or the same one later, is a second signal.
   * @default ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"] ({@linkcode DEFAULT_WATCHDOG_SIGNALS})
   */
  signals?: string[] | undefined;
  /**
   * When a second delivery of any of `signals` arrives (counted from the first, whether or not the main
   * thread handled the first), end the process, even while the main thread is blocked in a synchronous
   * syscall where the runtime allows it (see {@linkcode Watchdog.capabilities}).
   *
   * The first delivery is your handlers' business. When the program has no handler of its own for it,
   * the watchdog stops and re-raises it, so the default action still ends the process; but if that
   * first delivery comes while the main thread is blocked, the program survives it until the second.
   * @default true ({@linkcode DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT})
   */
  secondSignalExit?: boolean | undefined;
  /**
   * After a second signal, how long the main thread gets to end the process by itself (a handler that
   * logs and exits) before the watchdog kills it. While the main thread is free its own exit then
   * decides the exit status; while it is blocked the watchdog acts once the grace is over.
   * @default 0 ({@linkcode DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS}: at once)
   */
  secondSignalGraceMs?: number | undefined;
  /**
   * Arm the deadline this many milliseconds after the first delivery of any of `signals` (or the first
   * `noteSignal()`), as heard by the worker itself: a main thread that was already wedged in a blocking
   * write or a busy loop when the signal came is still ended then. `0` leaves arming to `arm()`. An
   * explicit `arm()` or `disarm()` before the first signal takes precedence.
   * @default 0
   */
  armOnFirstSignalMs?: number | undefined;
  /**
   * Called when the worker fails (it could not start, or died). The watchdog then does nothing more;
   * `capabilities.deadline` turns `false`.
   * @default writes one line to stderr
   */
  onError?: ((error: unknown) => void) | undefined;
}

/** Default of {@linkcode WatchdogOptions.signals}. */
export const DEFAULT_WATCHDOG_SIGNALS: readonly string[] = Object.freeze([
  "SIGTERM",
  "SIGINT",
  "SIGHUP",
  "SIGQUIT",
]);

/** Default of {@linkcode WatchdogOptions.secondSignalGraceMs}: the watchdog acts at once. */
export const DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS = 0;

/** Default of {@linkcode WatchdogOptions.secondSignalExit}. */
export const DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT = true;

/**
 * The largest deadline {@linkcode Watchdog.arm} accepts, in milliseconds (about 24.8 days).
 *
 * @example Clamp a configured deadline
 * ```ts
 * import { MAX_WATCHDOG_MS, startWatchdog } from "./platform.ts";
 * const configuredMs = 30 * 24 * 60 * 60 * 1000; // 30 days, from a config file
 * const watchdog = startWatchdog();
 * watchdog.arm(Math.min(configuredMs, MAX_WATCHDOG_MS)); // arm() throws a RangeError above the limit
 * watchdog.disarm();
 * watchdog.stop();
 * ```
 */
export const MAX_WATCHDOG_MS = 2 ** 31 - 1;

/**
 * What a {@linkcode Watchdog} can do on this runtime.
 *
 * @example Warn when a second signal cannot end a blocked process
 * ```ts
 * import { startWatchdog, type WatchdogCapabilities } from "./platform.ts";
 * const watchdog = startWatchdog();
 * const capabilities: WatchdogCapabilities = watchdog.capabilities;
 * if (!capabilities.secondSignalWhileBlocked) {
 *   console.warn(`only a running main thread counts signals here (${capabilities.mechanism})`);
 * }
 * watchdog.stop();
 * ```
 */
export interface WatchdogCapabilities {
  /** `true` while the worker runs: `arm()` ends the process at the deadline whatever the main thread does. */
  deadline: boolean;
  /**
   * `true` when the worker hears the signals itself: a second signal ends the process, and
   * `armOnFirstSignalMs` arms the deadline, even while the main thread is blocked; `false` when only a
   * main thread that still runs its handlers can count.
   */
  secondSignalWhileBlocked: boolean;
  /**
   * How signals are heard outside the main thread: `"deno-worker-signal-listener"` (Deno),
   * `"node-internal-signal-wrap"` (Node: its internal `signal_wrap` binding in a Worker started with
   * `--expose-internals`), `"bun-ffi-sigaction"` (Bun on Linux x86_64/arm64: a C handler compiled with
   * `bun:ffi`'s `cc` in front of Bun's own), `"main-thread-only"` (none of these works here), or `"off"`
   * when `secondSignalExit` is `false` and `armOnFirstSignalMs` is 0.
   */
  mechanism: string;
}

/**
 * A running watchdog thread; see {@linkcode startWatchdog}.
 *
 * @example Bound a flush to 10 s, stopping the watchdog at the end of the scope
 * ```ts
 * import { startWatchdog, type Watchdog } from "./platform.ts";
 * using watchdog: Watchdog = startWatchdog(); // `using` calls stop() when the scope ends
 * watchdog.arm(10_000); // a flush that takes longer than 10 s ends the process
 * // ... flush buffers, close files
 * watchdog.disarm();
 * console.log(watchdog.signalsSeen); // 0
 * ```
 */
export interface Watchdog {
  /**
   * Ends the process (SIGKILL of ourselves) `ms` from now, whatever the main thread is doing then.
   * Re-arming replaces the deadline (also one set by `armOnFirstSignalMs`).
   *
   * @param ms Milliseconds from now, 0 to {@linkcode MAX_WATCHDOG_MS}.
   */
  arm(ms: number): void;
  /** Cancels the deadline, if any, and any arming still due on the first signal. Signal counting goes on. */
  disarm(): void;
  /**
   * Counts one event that the watchdog treats like a delivery of a counted signal (for example a
   * shutdown your code started for a reason it treats like a first signal); it also arms
   * `armOnFirstSignalMs`. Deliveries of `options.signals` are counted without it.
   */
  noteSignal(): void;
  /**
   * How many deliveries of the counted signals were seen so far (by the worker where it hears them, else
   * by the main thread), plus the `noteSignal()` calls. Repeats within 100 ms are not counted.
   */
  readonly signalsSeen: number;
  /** What this runtime can do; final once {@linkcode startWatchdog} returned. */
  readonly capabilities: WatchdogCapabilities;
  /** Stops the worker and lets the signals go; idempotent. `arm()` throws afterwards. */
  stop(): void;
  /** The same as {@linkcode Watchdog.stop}, so `using` works. */
  [Symbol.dispose](): void;
}

/**
 * Starts a watchdog thread that can end the process while the main thread is blocked: at a deadline
 * set with `arm()` (or `armOnFirstSignalMs` after the first signal), and (by default) at the second
 * delivery of a termination signal.
 *
 * Waits synchronously (a few tens of milliseconds) until the worker is up, so `arm()` works even if the
 * main thread never yields afterwards and `capabilities` is final on return. The worker never keeps the
 * process alive, with or without `stop()`.
 *
 * How the process ends: a deadline, or a second signal (after `secondSignalGraceMs`) end it with
 * SIGKILL (exit status 137 in a shell; `signal === "SIGKILL"` for `node:child_process`). A first signal
 * with no handler of the program's own keeps its default action (the watchdog re-raises it). A repeat
 * of the same signal within 100 ms counts once.
 *
 * Runtime support, as measured on Deno 2.9, Bun 1.4 and Node 24 (Linux): the deadline works everywhere;
 * the worker hears signals itself on all three (see {@linkcode WatchdogCapabilities} `mechanism`). On
 * Node this relies on an internal binding, on Bun on `bun:ffi`'s `cc`: where either is missing,
 * `capabilities.secondSignalWhileBlocked` is `false` and only a main thread that still runs its
 * handlers counts.
 *
 * @param options Which signals count, whether a second one exits, arming on the first, failures.
 * @returns The watchdog; call `stop()` when done.
 *
 * @example Bound a shutdown to 5 s even if the main thread is already stuck when SIGTERM comes
 * ```ts
 * import { onSignal, startWatchdog } from "./platform.ts";
 * const watchdog = startWatchdog({ armOnFirstSignalMs: 5_000 }); // armed by the worker itself
 * const off = onSignal("SIGTERM", () => {
 *   // ... flush, close, then exit; the process ends 5 s after SIGTERM whatever happens
 * });
 * // on a clean stop without a signal:
 * off();
 * watchdog.stop();
 * ```
 */
export function startWatchdog(options: WatchdogOptions = {}): Watchdog {
  const signals = validateWatchdogSignals(options.signals ?? [...DEFAULT_WATCHDOG_SIGNALS]);
  const secondSignalExit = options.secondSignalExit ?? DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT;
  if (typeof secondSignalExit !== "boolean") {
    throw new TypeError(mustBe(START_WATCHDOG, "secondSignalExit", "a boolean", secondSignalExit));
  }
  const graceMs = validateWatchdogMs(START_WATCHDOG, "secondSignalGraceMs", options.secondSignalGraceMs ?? 0);
  const armOnFirstSignalMs = validateWatchdogMs(
    START_WATCHDOG,
    "armOnFirstSignalMs",
    options.armOnFirstSignalMs ?? 0,
  );
  const onError = options.onError ?? reportWatchdogError;
  if (typeof onError !== "function") {
    throw new TypeError(mustBe(START_WATCHDOG, "onError", "a function", onError));
  }
  const heard = secondSignalExit || armOnFirstSignalMs > 0 ? signals : [];
  return new WatchdogThread({ signals: heard, secondSignalExit, graceMs, armOnFirstSignalMs, onError })
    .start();
}

/** Layout of a watchdog's shared memory: Int32 cells, then two Float64s, and the values they take. */
const WD = {
  WAKE: 0, // bumped on every change; the worker waits on it
  STATE: 1, // idle, armed, stopped
  ARM_GEN: 2, // bumped by every arm and disarm: the worker recomputes its deadline
  READY: 3, // booting, up, failed, stopped
  SIGNALS: 4, // which mechanism the worker got working (index into WD_MECHANISMS)
  MAIN_SEEN: 5, // deliveries the main thread's listener saw
  WORKER_SEEN: 6, // deliveries the worker saw
  NOTED: 7, // noteSignal() calls: events no thread could hear
  AUTO_ARM: 8, // 1 while arming on the first signal is still due; whoever takes it to 0 arms
  CELLS: 9,
  FLOATS_OFFSET: 40, // 9 cells rounded up to Float64Array's 8-byte alignment
  ARM_MS: 0,
  ARMED_AT: 1, // Date.now() at arm: the worker subtracts its wake-up latency
  BYTES: 56,
  STATE_IDLE: 0,
  STATE_ARMED: 1,
  STATE_STOPPED: 2,
  READY_BOOTING: 0,
  READY_UP: 1,
  READY_FAILED: -1,
  READY_STOPPED: 2,
  MECHANISM_MAIN_ONLY: 0,
  MECHANISM_DENO: 1,
  MECHANISM_NODE: 2,
  MECHANISM_BUN: 3,
} as const;
const WD_MECHANISMS = [
  "main-thread-only",
  "deno-worker-signal-listener",
  "node-internal-signal-wrap",
  "bun-ffi-sigaction",
];
/** How long startWatchdog waits for the worker to come up (generous: a loaded 2-core machine). */
const WD_BOOT_TIMEOUT_MS = 10_000;
/** How often the Bun worker reads the count of its C handler (and re-hooks a re-installed Bun handler). */
const WD_BUN_POLL_MS = 10;
/** How long stop() waits for the worker to put things back. */
const WD_STOP_TIMEOUT_MS = 1_000;

interface WatchdogSettings {
  signals: string[];
  secondSignalExit: boolean;
  graceMs: number;
  armOnFirstSignalMs: number;
  onError: (error: unknown) => void;
}

/** The main thread's side of a watchdog: the shared memory, the worker, and the listeners. */
class WatchdogThread implements Watchdog {
  readonly #settings: WatchdogSettings;
  readonly #shared = new SharedArrayBuffer(WD.BYTES);
  readonly #cells = new Int32Array(this.#shared, 0, WD.CELLS);
  readonly #floats = new Float64Array(this.#shared, WD.FLOATS_OFFSET, 2);
  #unsubscribe: Array<() => void> = [];
  #worker: Worker | null = null;
  #stopped = false;
  #reported = false;
  #mechanism = "off";
  #heardByWorker = false;

  constructor(settings: WatchdogSettings) {
    this.#settings = settings;
    if (settings.armOnFirstSignalMs > 0) this.#cells[WD.AUTO_ARM] = 1;
  }

  start(): this {
    this.#listenOnMainThread();
    this.#spawnWorker();
    this.#waitUntilUp();
    const code = Atomics.load(this.#cells, WD.SIGNALS);
    if (this.#settings.signals.length > 0) this.#mechanism = WD_MECHANISMS[code] ?? "main-thread-only";
    this.#heardByWorker = this.#settings.signals.length > 0 && code !== WD.MECHANISM_MAIN_ONLY;
    return this;
  }

  arm(ms: number): void {
    validateWatchdogMs("arm the watchdog", "ms", ms);
    if (this.#stopped) throw new Error("Cannot arm the watchdog: it was stopped");
    Atomics.store(this.#cells, WD.AUTO_ARM, 0);
    this.#armShared(ms);
  }

  disarm(): void {
    if (this.#stopped) return;
    Atomics.store(this.#cells, WD.AUTO_ARM, 0);
    Atomics.store(this.#cells, WD.STATE, WD.STATE_IDLE);
    Atomics.add(this.#cells, WD.ARM_GEN, 1);
    this.#wake();
  }

  noteSignal(): void {
    if (this.#stopped) return;
    Atomics.add(this.#cells, WD.NOTED, 1);
    this.#armOnFirstSignal();
    this.#wake();
  }

  get signalsSeen(): number {
    // Where the worker hears the signals, its count decides: its idle loop stamps each delivery when it
    // comes, while a busy main thread may run two handlers of one repeated delivery far apart.
    const heard = Atomics.load(this.#cells, this.#heardByWorker ? WD.WORKER_SEEN : WD.MAIN_SEEN);
    return heard + Atomics.load(this.#cells, WD.NOTED);
  }

  get capabilities(): WatchdogCapabilities {
    const up = !this.#stopped && Atomics.load(this.#cells, WD.READY) === WD.READY_UP;
    return { deadline: up, secondSignalWhileBlocked: up && this.#heardByWorker, mechanism: this.#mechanism };
  }

  stop(): void {
    if (this.#stopped) return;
    this.#stopped = true;
    Atomics.store(this.#cells, WD.STATE, WD.STATE_STOPPED);
    this.#wake();
    // The worker puts back what it changed (Bun: the signal actions) and lets its signal handles go; wait
    // for that before unsubscribing, so no signal is left with a handler and no listener.
    const until = performance.now() + WD_STOP_TIMEOUT_MS;
    while (Atomics.load(this.#cells, WD.READY) === WD.READY_UP) {
      const left = until - performance.now();
      if (left <= 0) break;
      Atomics.wait(this.#cells, WD.READY, WD.READY_UP, left);
    }
    this.#release();
    const worker = this.#worker;
    if (worker) Promise.resolve(worker.terminate()).catch(() => {});
  }

  [Symbol.dispose](): void {
    this.stop();
  }

  /**
   * The main thread counts what its own listeners see (used where the worker cannot hear signals).
   * Subscribing first also makes Bun install its handler, which the Bun worker then hooks. When our listener is the only one, nobody handles the
   * signal: stop and re-raise it, so its default action happens as if there were no watchdog.
   */
  #listenOnMainThread(): void {
    this.#unsubscribe = this.#settings.signals.map((signal) =>
      onSignal(
        signal,
        ignoreSignalRepeats(() => {
          Atomics.add(this.#cells, WD.MAIN_SEEN, 1);
          this.#armOnFirstSignal();
          this.#wake();
          if (!this.#stopped && signalListenerCount(signal) === 1) {
            this.stop();
            kill(getPid(), signal);
          }
        }),
      )
    );
  }

  #spawnWorker(): void {
    const data: WatchdogWorkerData = {
      shared: this.#shared,
      signals: this.#settings.signals,
      exitOnSecond: this.#settings.secondSignalExit,
      graceMs: this.#settings.graceMs,
      armOnFirstSignalMs: this.#settings.armOnFirstSignalMs,
      repeatWindowMs: SIGNAL_REPEAT_WINDOW_MS,
      bunPollMs: WD_BUN_POLL_MS,
      runtime,
      layout: WD,
    };
    let worker: Worker;
    try {
      worker = createWatchdogWorker(data);
    } catch (error) {
      this.#release();
      throw error;
    }
    worker.on("error", (error: unknown) => this.#fail(error));
    worker.on("exit", (code: number) => {
      if (!this.#stopped) this.#fail(new Error(`The watchdog worker exited unexpectedly with code ${code}`));
    });
    worker.unref();
    this.#worker = worker;
  }

  /** The worker boots on its own thread: waiting here does not need our event loop. */
  #waitUntilUp(): void {
    const deadline = performance.now() + WD_BOOT_TIMEOUT_MS;
    while (Atomics.load(this.#cells, WD.READY) === WD.READY_BOOTING) {
      const left = deadline - performance.now();
      if (left <= 0) break;
      Atomics.wait(this.#cells, WD.READY, WD.READY_BOOTING, left);
    }
    // A worker that threw while booting marked itself failed; its "error" event brings the cause later.
    if (
      Atomics.compareExchange(this.#cells, WD.READY, WD.READY_BOOTING, WD.READY_FAILED) === WD.READY_BOOTING
    ) {
      this.#fail(new Error(`The watchdog worker did not start within ${WD_BOOT_TIMEOUT_MS} ms`));
    }
  }

  /** Arms `armOnFirstSignalMs` unless the worker (or an earlier arm/disarm) already took that turn. */
  #armOnFirstSignal(): void {
    const ms = this.#settings.armOnFirstSignalMs;
    if (ms > 0 && Atomics.compareExchange(this.#cells, WD.AUTO_ARM, 1, 0) === 1) this.#armShared(ms);
  }

  #armShared(ms: number): void {
    this.#floats[WD.ARM_MS] = ms;
    this.#floats[WD.ARMED_AT] = Date.now();
    Atomics.add(this.#cells, WD.ARM_GEN, 1);
    Atomics.store(this.#cells, WD.STATE, WD.STATE_ARMED);
    this.#wake();
  }

  #wake(): void {
    Atomics.add(this.#cells, WD.WAKE, 1);
    Atomics.notify(this.#cells, WD.WAKE);
  }

  #release(): void {
    for (const off of this.#unsubscribe) off();
    this.#unsubscribe = [];
  }

  #fail(error: unknown): void {
    Atomics.store(this.#cells, WD.READY, WD.READY_FAILED);
    this.#release(); // without a worker, absorbing the first signal would only take its default action away
    if (this.#reported || this.#stopped) return;
    this.#reported = true;
    this.#settings.onError(error);
  }
}

const START_WATCHDOG = "start the watchdog";

function validateWatchdogSignals(signals: unknown): string[] {
  if (!Array.isArray(signals)) {
    throw new TypeError(mustBe(START_WATCHDOG, "signals", "an array of signal names", signals));
  }
  for (const signal of signals) {
    if (typeof signal !== "string" || !HANDLED_SIGNALS.includes(signal)) {
      throw new TypeError(
        mustBe(START_WATCHDOG, "signals", `names among ${HANDLED_SIGNALS.join(", ")}`, signal),
      );
    }
  }
  return [...new Set(signals as string[])];
}

function validateWatchdogMs(action: string, name: string, value: unknown): number {
  const expected = `0 to ${MAX_WATCHDOG_MS} milliseconds`;
  return checkNumber(
    action,
    name,
    value,
    expected,
    (n) => Number.isFinite(n) && n >= 0 && n <= MAX_WATCHDOG_MS,
  );
}

const reportWatchdogError = stderrReporter("keelson watchdog");

function createWatchdogWorker(data: WatchdogWorkerData): Worker {
  // CommonJS on purpose: `eval: true` workers get `require` on all three runtimes.
  const source =
    `"use strict";\n(${watchdogWorker.toString()})(require, require("node:worker_threads").workerData);\n`;
  const options = {
    eval: true,
    workerData: data,
    // Trap: piping a worker's stdio into ours makes Node set O_NONBLOCK on fds 1 and 2.
    stdout: true,
    stderr: true,
  };
  if (runtime === "node" && data.signals.length > 0) {
    // Trap: the warning that loading the internals prints, left unread in the worker's stderr stream,
    // makes Node hang at exit; --no-warnings keeps that stream empty.
    try {
      return new Worker(source, { ...options, execArgv: ["--expose-internals", "--no-warnings"] });
    } catch {
      // A Node that refuses the flag in a Worker: count signals on the main thread only.
    }
  }
  return new Worker(source, options);
}

/** What the main thread hands to the watchdog worker (structured-cloned; `shared` is shared). */
interface WatchdogWorkerData {
  shared: SharedArrayBuffer;
  signals: string[];
  exitOnSecond: boolean;
  graceMs: number;
  armOnFirstSignalMs: number;
  repeatWindowMs: number;
  bunPollMs: number;
  runtime: RuntimeName;
  layout: typeof WD;
}

/** The few runtime surfaces the worker touches, typed for the worker's own use. */
interface WatchdogWorkerDeno {
  pid: number;
  kill(pid: number, signal: string): void;
  addSignalListener(signal: string, handler: () => void): void;
  removeSignalListener(signal: string, handler: () => void): void;
}
interface WatchdogWorkerSignalHandle {
  onsignal: ((signum: number) => void) | null;
  start(signum: number): number;
  close(): void;
  unref(): void;
}
interface WatchdogWorkerBunLibrary {
  symbols: {
    set_window(ms: number): void;
    deliveries(): number;
    hook(signum: number): number;
    unhook(signum: number): number;
  };
}
interface WatchdogWorkerBunFfi {
  cc(
    options: { source: string; symbols: Record<string, { args?: string[]; returns?: string }> },
  ): WatchdogWorkerBunLibrary;
}

/** `Atomics.waitAsync` (ES2024), typed here so the source also compiles under an ES2022/ES2023 lib. */
type AtomicsWithWaitAsync = {
  waitAsync(
    array: Int32Array,
    index: number,
    value: number,
    timeout?: number,
  ): { async: false; value: "not-equal" | "timed-out" } | { async: true; value: Promise<"ok" | "timed-out"> };
};

/**
 * The watchdog worker. Its source text is evaluated in the worker, so it must not use anything from
 * this module's scope: everything comes in through `require` and `data`. It waits on the shared cells
 * with Atomics.waitAsync so its own event loop keeps running signal listeners; an interval keeps that
 * loop alive (the Worker itself is unref'd by the main thread).
 */
function watchdogWorker(require: (id: string) => unknown, data: WatchdogWorkerData): void {
  const L = data.layout;
  const cells = new Int32Array(data.shared, 0, L.CELLS);
  const floats = new Float64Array(data.shared, L.FLOATS_OFFSET, 2);
  const proc = require("node:process") as {
    pid: number;
    platform: string;
    arch: string;
    kill(pid: number, signal: string): void;
  };
  const signalNumbers = (require("node:os") as { constants: { signals: Record<string, number> } }).constants
    .signals;
  const denoApi = (globalThis as { Deno?: WatchdogWorkerDeno }).Deno;
  const keepAlive = setInterval(() => {}, 1 << 30);
  const cleanups: Array<() => void> = [];
  let secondTimer: ReturnType<typeof setTimeout> | null = null;
  let lastSignal: string | null = null;
  let lastAt = -Infinity;
  let armGen = -1;
  let deadline = Infinity;

  const die = (): void => {
    if (denoApi) denoApi.kill(denoApi.pid, "SIGKILL");
    else proc.kill(proc.pid, "SIGKILL");
  };
  let heard = false; // the worker hears the signals itself: then its own count decides
  const seen = (): number =>
    Atomics.load(cells, heard ? L.WORKER_SEEN : L.MAIN_SEEN) + Atomics.load(cells, L.NOTED);
  const wake = (): void => {
    Atomics.add(cells, L.WAKE, 1);
    Atomics.notify(cells, L.WAKE);
  };
  // The main thread may have taken this turn already (its listener ran first): then it armed.
  const armOnFirstSignal = (): void => {
    if (data.armOnFirstSignalMs <= 0 || Atomics.compareExchange(cells, L.AUTO_ARM, 1, 0) !== 1) return;
    floats[L.ARM_MS] = data.armOnFirstSignalMs;
    floats[L.ARMED_AT] = Date.now();
    Atomics.add(cells, L.ARM_GEN, 1);
    Atomics.store(cells, L.STATE, L.STATE_ARMED);
  };
  // A second signal ends the process: at once, or after the grace the main thread gets to exit by itself.
  const secondSignal = (): void => {
    if (data.graceMs <= 0) die();
    else secondTimer ??= setTimeout(die, data.graceMs);
  };
  // `signal` is null for a delivery already filtered for repeats (Bun's C handler does that itself).
  const delivered = (signal: string | null): void => {
    if (signal !== null) {
      const now = performance.now();
      if (signal === lastSignal && now - lastAt < data.repeatWindowMs) return;
      lastSignal = signal;
      lastAt = now;
    }
    Atomics.add(cells, L.WORKER_SEEN, 1);
    wake(); // step() arms the first-signal deadline and acts on a second signal
  };

  const listenDeno = (api: WatchdogWorkerDeno): number => {
    for (const signal of data.signals) {
      const listener = () => delivered(signal);
      api.addSignalListener(signal, listener);
      cleanups.push(() => api.removeSignalListener(signal, listener));
    }
    return L.MECHANISM_DENO;
  };

  const listenNode = (): number => {
    let binding: { Signal: new () => WatchdogWorkerSignalHandle };
    try {
      const internals = require("internal/test/binding") as { internalBinding(name: string): unknown };
      binding = internals.internalBinding("signal_wrap") as typeof binding;
    } catch {
      return L.MECHANISM_MAIN_ONLY;
    }
    const handles: WatchdogWorkerSignalHandle[] = [];
    for (const signal of data.signals) {
      const handle = new binding.Signal();
      handle.onsignal = () => delivered(signal);
      if (handle.start(signalNumbers[signal] ?? 0) !== 0) {
        for (const h of handles) h.close();
        handle.close();
        return L.MECHANISM_MAIN_ONLY;
      }
      handle.unref();
      handles.push(handle);
    }
    cleanups.push(() => {
      for (const h of handles) h.close();
    });
    return L.MECHANISM_NODE;
  };

  // Bun's workers receive no signals. A C handler compiled here goes in front of Bun's own (the main
  // thread listens, so Bun installed one): it counts each delivery, drops a repeat of the same signal
  // within the window, and calls Bun's handler for the rest. Declarations are written out (glibc and
  // musl `struct sigaction` on Linux x86_64 and arm64), so no C headers need to be installed. A poll
  // reads the count and re-hooks a handler that Bun re-installed; stop puts Bun's handlers back.
  const listenBun = (): number => {
    if (proc.platform !== "linux" || (proc.arch !== "x64" && proc.arch !== "arm64")) {
      return L.MECHANISM_MAIN_ONLY;
    }
    const fs = require("node:fs") as {
      mkdtempSync(prefix: string): string;
      writeFileSync(path: string, text: string, options: { mode: number }): void;
      rmSync(path: string, options: { recursive: boolean; force: boolean }): void;
    };
    const os = require("node:os") as { tmpdir(): string };
    // In the C below: `struct ksa` is the `struct sigaction` layout of glibc and musl on Linux x86_64 and
    // arm64; `flags & 4` is SA_SIGINFO (a three-argument handler); `& 0x7fffffff` clears SA_RESETHAND, so
    // the hook stays after its first delivery; handler 0 and 1 are SIG_DFL and SIG_IGN (nothing to chain
    // to); clock 1 is CLOCK_MONOTONIC; 65 covers every Linux signal number.
    const source = [
      "struct ksa { void *handler; unsigned long mask[16]; int flags; void *restorer; };",
      "struct kts { long sec; long nsec; };",
      "int sigaction(int sig, const struct ksa *act, struct ksa *old);",
      "int clock_gettime(int clock, struct kts *ts);",
      "typedef void (*info_handler)(int, void *, void *);",
      "typedef void (*plain_handler)(int);",
      "static struct ksa saved[65];",
      "static volatile int hooked[65];",
      "static volatile int count;",
      "static volatile int last_sig;",
      "static volatile long long last_ms;",
      "static long long window_ms;",
      "static long long now_ms(void) { struct kts t; clock_gettime(1, &t); return t.sec * 1000LL + t.nsec / 1000000; }",
      "static void on_signal(int sig, void *info, void *uc) {",
      "  long long now = now_ms();",
      "  if (count > 0 && sig == last_sig && now - last_ms < window_ms) return;",
      "  last_sig = sig; last_ms = now; count++;",
      "  if (saved[sig].flags & 4) ((info_handler)saved[sig].handler)(sig, info, uc);",
      "  else if (saved[sig].handler != (void *)0 && saved[sig].handler != (void *)1)",
      "    ((plain_handler)saved[sig].handler)(sig);",
      "}",
      "void set_window(int ms) { window_ms = ms; }",
      "int deliveries(void) { return count; }",
      "int hook(int sig) {",
      "  struct ksa cur; struct ksa mine;",
      "  if (sig <= 0 || sig >= 65 || sigaction(sig, 0, &cur) != 0) return -1;",
      "  if (cur.handler == (void *)on_signal) return 0;",
      "  if (cur.handler == (void *)0 || cur.handler == (void *)1) { hooked[sig] = 0; return 0; }",
      "  saved[sig] = cur; mine = cur; mine.handler = (void *)on_signal;",
      "  mine.flags = (cur.flags | 4) & 0x7fffffff;",
      "  if (sigaction(sig, &mine, 0) != 0) return -1;",
      "  hooked[sig] = 1; return 1;",
      "}",
      "int unhook(int sig) {",
      "  struct ksa cur;",
      "  if (sig <= 0 || sig >= 65 || !hooked[sig]) return 0;",
      "  hooked[sig] = 0;",
      "  if (sigaction(sig, 0, &cur) != 0 || cur.handler != (void *)on_signal) return 0;",
      "  return sigaction(sig, &saved[sig], 0);",
      "}",
    ].join("\n");
    let library: WatchdogWorkerBunLibrary;
    let dir: string | null = null;
    try {
      dir = fs.mkdtempSync(`${os.tmpdir()}/keelson-watchdog-`);
      const file = `${dir}/signals.c`;
      fs.writeFileSync(file, source, { mode: 0o600 });
      const ffi = require("bun:ffi") as WatchdogWorkerBunFfi;
      library = ffi.cc({
        source: file,
        symbols: {
          set_window: { args: ["i32"], returns: "void" },
          deliveries: { returns: "i32" },
          hook: { args: ["i32"], returns: "i32" },
          unhook: { args: ["i32"], returns: "i32" },
        },
      });
    } catch {
      return L.MECHANISM_MAIN_ONLY;
    } finally {
      if (dir !== null) fs.rmSync(dir, { recursive: true, force: true });
    }
    const symbols = library.symbols;
    symbols.set_window(data.repeatWindowMs);
    const numbers = data.signals.map((signal) => signalNumbers[signal] ?? 0);
    let counted = 0;
    const poll = (): void => {
      if (Atomics.load(cells, L.STATE) === L.STATE_STOPPED) return;
      for (const n of numbers) symbols.hook(n);
      const total = symbols.deliveries();
      while (counted < total) {
        counted += 1;
        delivered(null);
      }
    };
    poll();
    const timer = setInterval(poll, data.bunPollMs);
    cleanups.push(() => {
      clearInterval(timer);
      for (const n of numbers) symbols.unhook(n);
      // `library` stays referenced by this closure: its code must outlive the hooks.
      void library;
    });
    return L.MECHANISM_BUN;
  };

  const listen = (): number => {
    if (data.signals.length === 0) return L.MECHANISM_MAIN_ONLY;
    if (denoApi) return listenDeno(denoApi);
    if (data.runtime === "node") return listenNode();
    if (data.runtime === "bun") return listenBun();
    return L.MECHANISM_MAIN_ONLY;
  };

  const shutDown = (): void => {
    clearInterval(keepAlive);
    if (secondTimer !== null) clearTimeout(secondTimer);
    try {
      for (const cleanup of cleanups) cleanup();
    } finally {
      Atomics.store(cells, L.READY, L.READY_STOPPED);
      Atomics.notify(cells, L.READY);
    }
  };

  // One pass per change of the WAKE cell. WAKE is read before the state, so a change the main thread makes
  // while this pass decides makes waitAsync return at once ("not-equal") and the loop looks again: no
  // arm, disarm or signal is ever missed between reading the cells and starting to wait.
  const step = (): void => {
    for (;;) {
      const wakeValue = Atomics.load(cells, L.WAKE);
      const state = Atomics.load(cells, L.STATE);
      if (state === L.STATE_STOPPED) {
        shutDown();
        return;
      }
      const count = seen();
      if (count >= 1) armOnFirstSignal();
      if (data.exitOnSecond && count >= 2) secondSignal();
      const gen = Atomics.load(cells, L.ARM_GEN);
      if (gen !== armGen) {
        armGen = gen;
        if (Atomics.load(cells, L.STATE) === L.STATE_ARMED) {
          const ms = floats[L.ARM_MS] ?? 0;
          // The deadline counts from arm(), not from this wake-up: subtract how late the worker woke.
          const latency = Math.min(Math.max(Date.now() - (floats[L.ARMED_AT] ?? 0), 0), ms);
          deadline = performance.now() + ms - latency;
        } else {
          deadline = Infinity;
        }
      }
      const left = deadline - performance.now();
      if (left <= 0) die();
      const result = (Atomics as unknown as AtomicsWithWaitAsync).waitAsync(cells, L.WAKE, wakeValue, left);
      if (result.async) {
        void result.value.then(step);
        return;
      }
    }
  };

  try {
    const mechanism = listen();
    heard = mechanism !== L.MECHANISM_MAIN_ONLY;
    Atomics.store(cells, L.SIGNALS, mechanism);
  } catch (error) {
    Atomics.store(cells, L.READY, L.READY_FAILED);
    Atomics.notify(cells, L.READY);
    throw error;
  }
  // Too late if the main thread already gave up waiting (it then reported the failure).
  Atomics.compareExchange(cells, L.READY, L.READY_BOOTING, L.READY_UP);
  Atomics.notify(cells, L.READY);
  step();
}

// ---------------------------------------------------------------------------------------------------
// Child processes
// ---------------------------------------------------------------------------------------------------

/**
 * Options for {@linkcode spawnDetached}.
 *
 * @example Start a helper in /tmp with a minimal environment
 * ```ts
 * import { spawnDetached, type SpawnDetachedOptions } from "./platform.ts";
 * const options: SpawnDetachedOptions = { cwd: "/tmp", env: { PATH: "/usr/bin:/bin", LANG: "C" } };
 * const pid = spawnDetached("sh", ["-c", "pwd > /tmp/example-cwd.txt"], options);
 * console.log(pid);
 * ```
 */
export interface SpawnDetachedOptions {
  /** Descriptor for the child's stdout. @default undefined (discarded) */
  stdoutFd?: number | undefined;
  /** Descriptor for the child's stderr. @default the same as `stdoutFd` */
  stderrFd?: number | undefined;
  /** Environment of the child. @default this process's environment */
  env?: Record<string, string | undefined> | undefined;
  /** Working directory. @default this process's */
  cwd?: string | undefined;
}

/**
 * Starts a detached child in a new session (`setsid`): it survives our death and receives none of the
 * signals sent to our process group. stdin is `/dev/null`; stdout/stderr go to the given descriptors.
 * Returns at once with the child's pid (the runtime reaps it if it ends before us).
 *
 * @param command The program.
 * @param args Its arguments.
 * @param options Descriptors, environment, working directory.
 * @returns The child's pid, or `null` when it could not be started (e.g. the program is missing).
 *
 * @example Run a command that outlives us, its output appended to a log
 * ```ts
 * import { closeFd, openAppend, spawnDetached } from "./platform.ts";
 * const fd = openAppend("/tmp/example-diag.log", { mode: 0o600 });
 * const pid = spawnDetached("sh", ["-c", "date; uptime"], { stdoutFd: fd });
 * closeFd(fd);
 * console.log(pid);
 * ```
 */
export function spawnDetached(
  command: string,
  args: readonly string[],
  options: SpawnDetachedOptions = {},
): number | null {
  const out = options.stdoutFd ?? "ignore";
  const err = options.stderrFd ?? out;
  try {
    const child = spawn(command, [...args], {
      detached: true,
      stdio: ["ignore", out, err],
      env: options.env as NodeJS.ProcessEnv | undefined,
      cwd: options.cwd,
    });
    // A missing program reports asynchronously; swallow it here, the null pid already told the caller.
    child.on("error", () => {});
    child.unref();
    return typeof child.pid === "number" ? child.pid : null;
  } catch {
    return null;
  }
}

/**
 * Options for {@linkcode runCommand}.
 *
 * @example Feed stdin to a command, with a time limit
 * ```ts
 * import { runCommand, type RunCommandOptions } from "./platform.ts";
 * const options: RunCommandOptions = { timeoutMs: 2000, input: "b\na\n", env: { LC_ALL: "C" } };
 * const result = await runCommand("sort", [], options);
 * console.log(result.stdout); // "a\nb\n"
 * ```
 */
export interface RunCommandOptions {
  /** Kill the command (SIGKILL) after this many milliseconds. @default 10000 */
  timeoutMs?: number | undefined;
  /** Bytes or text for its stdin. @default undefined (stdin is /dev/null) */
  input?: string | Uint8Array | undefined;
  /** Environment of the command. @default this process's environment */
  env?: Record<string, string | undefined> | undefined;
  /** Working directory. @default this process's */
  cwd?: string | undefined;
}

/**
 * What {@linkcode runCommand} observed.
 *
 * @example Tell a timeout from a failure to start
 * ```ts
 * import { type CommandResult, runCommand } from "./platform.ts";
 * const result: CommandResult = await runCommand("sleep", ["5"], { timeoutMs: 100 });
 * if (result.timedOut) console.log(`killed by ${result.signal}`); // "killed by SIGKILL"
 * else if (result.error !== null) console.log(`could not start: ${result.error.message}`);
 * else console.log(`exit status ${result.code}`);
 * ```
 */
export interface CommandResult {
  /** Exit status, or `null` when it died from a signal or could not start. */
  code: number | null;
  /** The signal that ended it, or `null`. */
  signal: string | null;
  /** Everything it wrote to stdout, as UTF-8. */
  stdout: string;
  /** Everything it wrote to stderr, as UTF-8. */
  stderr: string;
  /** `true` when it was killed for running past `timeoutMs`. */
  timedOut: boolean;
  /** The spawn error (e.g. `ENOENT` for a missing program), or `null`. */
  error: Error | null;
}

/** Default of {@linkcode RunCommandOptions.timeoutMs}. */
export const DEFAULT_COMMAND_TIMEOUT_MS = 10_000;

/**
 * Runs a command to completion with a time limit, capturing its output. Never rejects: a missing
 * program resolves with `error` set and `code: null`.
 *
 * @param command The program.
 * @param args Its arguments.
 * @param options Time limit, stdin, environment, working directory.
 * @returns Its exit status and output.
 *
 * @example
 * ```ts
 * import { runCommand } from "./platform.ts";
 * const result = await runCommand("uname", ["-s"], { timeoutMs: 2000 });
 * console.log(result.code, result.stdout.trim());
 * ```
 */
export function runCommand(
  command: string,
  args: readonly string[],
  options: RunCommandOptions = {},
): Promise<CommandResult> {
  const timeoutMs = options.timeoutMs ?? DEFAULT_COMMAND_TIMEOUT_MS;
  return new Promise((resolve) => {
    const stdout: Uint8Array[] = [];
    const stderr: Uint8Array[] = [];
    let timedOut = false;
    let spawnError: Error | null = null;
    let settled = false;
    const child = spawn(command, [...args], {
      stdio: [options.input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
      env: options.env as NodeJS.ProcessEnv | undefined,
      cwd: options.cwd,
    });
    const finish = (code: number | null, signal: string | null) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      const decoder = new TextDecoder();
      resolve({
        code,
        signal,
        stdout: decoder.decode(concatBytes(stdout)),
        stderr: decoder.decode(concatBytes(stderr)),
        timedOut,
        error: spawnError,
      });
    };
    // Listeners first: a child that fails or ends at once must still settle the promise.
    child.on("error", (error) => {
      spawnError = error;
      finish(null, null);
    });
    child.on("close", (code, signal) => finish(code, signal));
    child.stdout?.on("data", (chunk: Uint8Array) => stdout.push(chunk));
    child.stderr?.on("data", (chunk: Uint8Array) => stderr.push(chunk));
    const timer = setTimeout(() => {
      timedOut = true;
      if (typeof child.pid === "number") {
        try {
          process.kill(child.pid, "SIGKILL");
        } catch {
          // Already gone: "close" will settle.
        }
      }
    }, timeoutMs);
    if (options.input !== undefined && child.stdin) {
      child.stdin.on("error", () => {}); // a command that exits without reading stdin is not our error
      child.stdin.end(options.input);
    }
  });
}

function concatBytes(chunks: Uint8Array[]): Uint8Array {
  let total = 0;
  for (const chunk of chunks) total += chunk.length;
  const out = new Uint8Array(total);
  let offset = 0;
  for (const chunk of chunks) {
    out.set(chunk, offset);
    offset += chunk.length;
  }
  return out;
}

/**
 * The command line that runs a TypeScript `script` with the runtime executing this code: what a
 * supervisor, a test or a re-exec needs to start a sibling process like us.
 *
 * @param script Path of the `.ts` file.
 * @param args Arguments for the script.
 * @returns The executable and its arguments (Deno gets `run -A`).
 *
 * @example Start a sibling with the same runtime
 * ```ts
 * import { runCommand, scriptCommand } from "./platform.ts";
 * const { command, args } = scriptCommand("./examples/hello.ts", ["--name", "x"]);
 * const result = await runCommand(command, args);
 * console.log(result.code);
 * ```
 */
export function scriptCommand(
  script: string,
  args: readonly string[] = [],
): { command: string; args: string[] } {
  const prefix = runtime === "deno" ? ["run", "-A", "--quiet"] : [];
  return { command: process.execPath, args: [...prefix, script, ...args] };
}

// ---------------------------------------------------------------------------------------------------
// Standard input
// ---------------------------------------------------------------------------------------------------

/**
 * This process's stdin as byte chunks, read by the runtime's fastest source (`Deno.stdin.readable`,
 * `Bun.stdin.stream()`, `process.stdin`), as {@linkcode StdinChunks}.
 *
 * There is ONE reader per process: every call returns the same source, a loop that stops early does
 * not cancel stdin, and bytes handed back with {@linkcode StdinChunks.unread} come first for the next
 * loop. So a handshake loop can stop after one message and a second loop continue exactly where the
 * first stopped. On Node, stdin is paused between reads, so it never keeps the process alive by itself.
 *
 * @returns The process-wide stdin source.
 *
 * @example Count the bytes on stdin
 * ```ts
 * import { stdinChunks } from "./platform.ts";
 * let total = 0;
 * for await (const chunk of stdinChunks()) total += chunk.length;
 * console.log(total);
 * ```
 */
export function stdinChunks(): StdinChunks {
  stdinSource ??= new SharedStdin();
  return stdinSource;
}

/**
 * The process-wide stdin source of {@linkcode stdinChunks}: an async iterable of byte chunks whose
 * iterators share one reader, plus a way to hand bytes back.
 *
 * @example Peek at the first chunk, then read everything from the start
 * ```ts
 * import { stdinChunks } from "./platform.ts";
 * const stdin = stdinChunks();
 * for await (const chunk of stdin) {
 *   stdin.unread(chunk); // leaving the loop does not cancel stdin
 *   break;
 * }
 * for await (const chunk of stdin) console.log(chunk.length);
 * ```
 */
export interface StdinChunks extends AsyncIterable<Uint8Array> {
  /** Puts `bytes` (copied) in front of what the next read returns. */
  unread(bytes: Uint8Array): void;
}

let stdinSource: SharedStdin | undefined;

/** One reader of stdin for the whole process; iterators returned early leave it running. */
class SharedStdin implements StdinChunks {
  #pushedBack: Uint8Array[] = [];
  #read: (() => Promise<IteratorResult<Uint8Array>>) | undefined = undefined;
  #ended = false;

  [Symbol.asyncIterator](): AsyncIterator<Uint8Array> {
    return {
      next: () => this.#next(),
      return: () => Promise.resolve({ value: undefined, done: true }),
    };
  }

  unread(bytes: Uint8Array): void {
    if (bytes.length > 0) this.#pushedBack.unshift(bytes.slice());
  }

  async #next(): Promise<IteratorResult<Uint8Array>> {
    const pushed = this.#pushedBack.shift();
    if (pushed !== undefined) return { value: pushed, done: false };
    if (this.#ended) return { value: undefined, done: true };
    this.#read ??= openStdinReader();
    const result = await this.#read();
    if (result.done) this.#ended = true;
    return result;
  }
}

/** A `read()` of stdin for this runtime. Errors (a reset socket) are thrown from `read()`. */
function openStdinReader(): () => Promise<IteratorResult<Uint8Array>> {
  if (deno) {
    const reader = deno.stdin.readable.getReader();
    return () => reader.read() as Promise<IteratorResult<Uint8Array>>;
  }
  // Node and Bun: flowing mode, paused after each chunk, and the stream's handle referenced only while
  // a read waits: a loop that stopped reading never keeps the process alive (Node's pause() alone
  // does not stop a pipe's reads).
  const stdin = process.stdin as typeof process.stdin & { ref?(): void; unref?(): void };
  const chunks: Uint8Array[] = [];
  let ended = false;
  let failure: { error: unknown } | undefined;
  let wake: (() => void) | undefined;
  const notify = () => {
    const resume = wake;
    wake = undefined;
    resume?.();
  };
  stdin.on("data", (chunk: Uint8Array) => {
    chunks.push(chunk);
    stdin.pause();
    if (wake === undefined) stdin.unref?.();
    notify();
  });
  stdin.on("end", () => {
    ended = true;
    notify();
  });
  stdin.on("error", (error: unknown) => {
    failure = { error };
    notify();
  });
  stdin.pause();
  return async () => {
    while (true) {
      const chunk = chunks.shift();
      if (chunk !== undefined) return { value: chunk, done: false };
      if (failure !== undefined) throw failure.error;
      if (ended) return { value: undefined, done: true };
      await new Promise<void>((resolve) => {
        wake = resolve;
        stdin.ref?.();
        stdin.resume();
      });
      stdin.unref?.();
    }
  };
}

// ---------------------------------------------------------------------------------------------------
// Context binding
// ---------------------------------------------------------------------------------------------------

/**
 * A value bound to an async call tree.
 *
 * @example Prefix log lines with the current request id
 * ```ts
 * import { type ContextStore, createContextStore } from "./platform.ts";
 * const requestId: ContextStore<string> = createContextStore<string>();
 * function log(message: string): void {
 *   console.log(`[${requestId.get() ?? "-"}] ${message}`);
 * }
 * requestId.run("req-42", () => log("handling")); // "[req-42] handling"
 * ```
 */
export interface ContextStore<T> {
  /** Runs `fn` with `value` bound for it and everything it starts, sync or async. */
  run<R>(value: T, fn: () => R): R;
  /** The value bound to the current call tree, or `undefined`. */
  get(): T | undefined;
}

/** A {@linkcode ContextStore} on `AsyncLocalStorage`, which all three runtimes have. */
export function createContextStore<T>(): ContextStore<T> {
  const storage = new AsyncLocalStorage<T>();
  return {
    run: (value, fn) => storage.run(value, fn),
    get: () => storage.getStore(),
  };
}

// ---------------------------------------------------------------------------------------------------
// Redaction: the one answer to "what of an argv may be written down" (shutdown forensics, PID records)
// ---------------------------------------------------------------------------------------------------

/**
 * Replaces credentials in an argv with `***`, argument by argument (before anything joins or cuts it).
 *
 * Redacted: the value of `--name VALUE`, `--name=VALUE`, `-name VALUE` and `NAME=VALUE` when the name is
 * sensitive; header arguments (`Authorization: Bearer X` → `Authorization: ***`, also after `Bearer`/
 * `Basic` anywhere); sensitive members of JSON blobs (`{"password":"x"}` → `{"password":"***"}`); the
 * user-info of URLs (`https://user:pass@host` → `https://***@host`); sensitive query, fragment and
 * `;`-separated parameters (`?token=…`, `#access_token=…`, `Password=…;`); the password of `user:pass`
 * after `-u`, `--user`, `--proxy-user` (curl); openssl's `pass:…` / `env:…` forms. A name is sensitive
 * when it contains token, secret, passw(ord), passphrase, credential, apikey or authoriz, or when one of
 * its parts (split at `-`, `_`, `.` and case changes) is key, keys, keyfile, auth, pass, pw, pwd, cred,
 * creds, cookie, session, bearer, passin or passout. So `--monkey`, `--author` and `sort --key 2` (a
 * sort key, not a secret) stay as they are. An argument with spaces (a `sh -c` script) is redacted word
 * by word. After a bare sensitive flag the next argument is its value unless it starts with `--`.
 *
 * @param argv The arguments.
 * @returns A redacted copy.
 *
 * @example Redact an argv before it is logged
 * ```ts
 * import { redactArgv } from "./platform.ts";
 * console.log(redactArgv(["app", "--api-key=abc", "--token", "xyz", "https://u:p@db.example"]));
 * // ["app", "--api-key=***", "--token", "***", "https://***@db.example"]
 * ```
 *
 * @example Log a child's command line without its secrets
 * ```ts
 * import { redactArgv } from "./platform.ts";
 * const argv = ["curl", "-u", "ops:hunter2", "-H", "Authorization: Bearer abc", "https://x/?sig=1#access_token=t"];
 * console.log(redactArgv(argv).join(" "));
 * // curl -u ops:*** -H Authorization: *** https://x/?sig=1#access_token=***
 * ```
 */
export function redactArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  let pending: PendingValue = null;
  for (const arg of argv) {
    const text = String(arg);
    if (pending !== null && !text.startsWith("--")) {
      out.push(redactPendingValue(pending, text));
      pending = null;
      continue;
    }
    pending = null;
    const header = redactHeader(text);
    if (header !== null) {
      out.push(header);
      continue;
    }
    if (/\s/.test(text)) {
      out.push(redactWords(redactJsonMembers(text)));
      continue;
    }
    const word = redactWord(redactJsonMembers(text));
    out.push(word.text);
    pending = word.pending;
  }
  return out;
}

const REDACTED = "***";
/** Names that are sensitive wherever they appear inside a longer name (`X_API_TOKEN`, `clientsecret`). */
const SENSITIVE_INSIDE = /token|secret|passw|passphrase|credential|apikey|authoriz/i;
/** Names that are sensitive only as a whole part of a name (`--api-key`, not `--monkey` or `--author`). */
const SENSITIVE_PARTS = new Set([
  "key",
  "keys",
  "keyfile",
  "auth",
  "pass",
  "pw",
  "pwd",
  "cred",
  "creds",
  "cookie",
  "session",
  "bearer",
  "passin",
  "passout",
]);
/** curl's flags whose value is `user:password`: only the password is redacted. */
const USER_PASSWORD_FLAGS = new Set(["-u", "--user", "-U", "--proxy-user"]);
/** `sort -k`/`--key` KEYDEF (`2`, `2,3`, `1.3n,1.5`): a field spec, not a secret. */
const SORT_KEYDEF = /^\d+(\.\d+)?[bdfghiMnRrV]*(,\d+(\.\d+)?[bdfghiMnRrV]*)?$/;
const URL_USERINFO = /([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/?#\s@]*@/g;
/** `?name=value`, `&name=value`, `#name=value`, `;name=value`: query, fragment, connection strings. */
const URL_PARAM = /([?&#;])([^=&#;?\s]+)=([^&#;\s]*)/g;
/** A JSON member `"name": value` (string, number, literal). */
const JSON_MEMBER = /("((?:[^"\\]|\\.)*)"\s*:\s*)("(?:[^"\\]|\\.)*"|[-+.\w]+)/g;
/** `Name: value` as in an HTTP header argument (`-H "Authorization: Bearer x"`). */
const HEADER = /^([A-Za-z][A-Za-z0-9-]*)\s*:\s*(\S.*)$/s;
/** HTTP auth schemes: the word after one of them is the credential. */
const AUTH_SCHEMES = new Set(["bearer", "basic", "token", "digest", "negotiate", "apikey"]);

/** What the argument after a bare flag is: a secret, `user:password`, or a sort key or secret. */
type PendingValue = "secret" | "user-password" | "key" | null;

function isSensitiveName(name: string): boolean {
  if (SENSITIVE_INSIDE.test(name)) return true;
  const parts = name
    .replace(/([a-z0-9])([A-Z])/g, "$1 $2")
    .toLowerCase()
    .split(/[^a-z0-9]+/);
  return parts.some((part) => SENSITIVE_PARTS.has(part));
}

function redactPendingValue(pending: Exclude<PendingValue, null>, value: string): string {
  if (pending === "user-password") return redactUserPassword(value);
  if (pending === "key" && SORT_KEYDEF.test(value)) return value;
  return REDACTED;
}

function redactUserPassword(value: string): string {
  const colon = value.indexOf(":");
  return colon < 0 ? value : `${value.slice(0, colon)}:${REDACTED}`;
}

function redactHeader(text: string): string | null {
  const match = HEADER.exec(text);
  if (!match || match[1] === undefined || !isSensitiveName(match[1])) return null;
  return `${match[1]}: ${REDACTED}`;
}

function redactJsonMembers(text: string): string {
  if (!text.includes('"')) return text;
  return text.replace(
    JSON_MEMBER,
    (whole, head: string, name: string) => isSensitiveName(name) ? `${head}"${REDACTED}"` : whole,
  );
}

function redactUrlParts(text: string): string {
  return text
    .replace(URL_USERINFO, `$1${REDACTED}@`)
    .replace(
      URL_PARAM,
      (whole, separator: string, name: string) =>
        isSensitiveName(name) ? `${separator}${name}=${REDACTED}` : whole,
    );
}

function redactWords(text: string): string {
  const parts = text.split(/(\s+)/);
  let pending: PendingValue = null;
  let afterScheme = false;
  for (let i = 0; i < parts.length; i += 2) {
    const part = parts[i];
    if (part === undefined || part === "") continue;
    const bare = part.replace(/^["']+|["']+$/g, "");
    if (afterScheme) {
      parts[i] = part.replace(bare, REDACTED);
      afterScheme = false;
      continue;
    }
    if (pending !== null && !part.startsWith("--")) {
      parts[i] = part.replace(bare, redactPendingValue(pending, bare));
      pending = null;
      continue;
    }
    pending = null;
    // `Authorization: Bearer x` split into words: the header name, then (after a scheme) the credential.
    if (bare.endsWith(":") && !part.endsWith('":') && isSensitiveName(bare.slice(0, -1))) {
      const next = parts[i + 2];
      const nextBare = next?.replace(/^["']+|["']+$/g, "") ?? "";
      afterScheme = AUTH_SCHEMES.has(nextBare.toLowerCase());
      if (!afterScheme && next !== undefined) parts[i + 2] = next.replace(nextBare, REDACTED);
      if (afterScheme) i += 2; // keep the scheme word, redact the one after it
      continue;
    }
    if (AUTH_SCHEMES.has(bare.toLowerCase()) && bare.toLowerCase() !== "token") {
      afterScheme = true;
      continue;
    }
    const word = redactWord(part);
    parts[i] = word.text;
    pending = word.pending;
  }
  return parts.join("");
}

function redactWord(word: string): { text: string; pending: PendingValue } {
  let text = redactUrlParts(word);
  if (/^pass:/i.test(text)) return { text: `pass:${REDACTED}`, pending: null }; // openssl -passin pass:x
  const equals = text.indexOf("=");
  if (equals > 0) {
    const name = text.slice(0, equals);
    const value = text.slice(equals + 1);
    if (!name.includes("://") && !/[?#&]/.test(name)) {
      if (USER_PASSWORD_FLAGS.has(name)) {
        return { text: `${name}=${redactUserPassword(value)}`, pending: null };
      }
      const flagName = name.replace(/^-+/, "");
      if (flagName.toLowerCase() === "key" && SORT_KEYDEF.test(value)) return { text, pending: null };
      if (isSensitiveName(name.replace(/^["']+/, ""))) text = `${name}=${REDACTED}`;
    }
    return { text, pending: null };
  }
  if (USER_PASSWORD_FLAGS.has(text)) return { text, pending: "user-password" };
  if (!/^-{1,2}[^-]/.test(text)) return { text, pending: null };
  const flagName = text.replace(/^-+/, "");
  if (flagName.toLowerCase() === "key") return { text, pending: "key" }; // sort --key 2, or a real key
  return { text, pending: isSensitiveName(flagName) ? "secret" : null };
}
