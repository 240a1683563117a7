/// <reference lib="esnext.disposable" preserve="true" />
/**
 * PID files that never crash-loop a supervisor and never let two instances run. Without this module a
 * service killed by SIGKILL, the OOM killer or a power cut leaves a PID file naming a dead or reused PID,
 * every restart fails its exclusive create and systemd or launchd respawns it for hours; or two racing
 * starters both judge a record stale, one deletes the file the other just wrote, and two instances run.
 *
 * Judging. A record carries its writer's identity (pid, start ticks, boot id, PID namespace, host name)
 * and is judged by the one judge of `platform.ts`, the same on every runtime. A record of this boot and
 * PID namespace is judged by PID and start time, whatever its host name says (a container recreated
 * with another host name, `hostnamectl`): it is stale when its PID is gone or a zombie, when the process
 * now behind the PID started at another time than recorded (PID reuse; without a recorded start time,
 * as in a plain decimal file, when that process started after the file was written), or when it names
 * our own PID but this process did not write it (an earlier incarnation, typical for PID 1 in a
 * container). A record of an earlier boot of this host is stale. A record of another PID namespace
 * (containers sharing a volume) or another host cannot be judged by PID: its holder refreshes the file's
 * mtime every `heartbeatMs`, and it is stale once not refreshed for 3 × that period; it is never
 * signalled. A file that is no record (empty, garbage, truncated, a negative or fractional PID,
 * unreadable) is invalid.
 *
 * Protocol (no `flock`; the same on every runtime):
 * 1. A record is written to a temporary file beside the PID file and published with `link(tmp, path)`,
 *    which fails with `EEXIST` when anything is there: nobody ever sees half a record, and of many
 *    starters on an absent path exactly one wins.
 * 2. To replace a stale or invalid file `X`, a starter first claims exactly that file. `X` is named by
 *    an `id` hashed from its inode, size, mtime (in whole milliseconds: Deno reports no fraction, Node
 *    and Bun do, and every runtime must derive the same name) and content; the claim is `<path>.replace-<id>.<n>`,
 *    created with `link` at the lowest level `n` whose lower levels all hold records of dead claimants.
 *    A claimant killed midway therefore blocks nobody, and a live one is the only live claimant of `X`
 *    (the others wait for it, then report it as the holder).
 * 3. Under the claim it reads the PID file again and only if it is still `X`, and still stale, swaps in
 *    its own record with `rename(tmp, path)`. The path is never empty in between, so nobody slips in
 *    through step 1; `X` once replaced never comes back, so a slow starter that judged `X` long ago
 *    fails this check. Nobody ever deletes or overwrites a record another process just wrote.
 * 4. The winner removes the claims of `X`; every acquire sweeps temporary files and claims of dead
 *    processes (starters killed midway, on an absent path too).
 * The protocol assumes the other writers of the path follow it (or, like most daemons, write their own
 * PID file in one go while alive); a foreign writer that truncates and rewrites in place can be caught
 * between the two and judged "empty".
 *
 * Release. `release()` removes the file only while it holds our exact record (it reads, compares, then
 * unlinks: only a writer outside the protocol can slip into that gap). By default it also runs at normal
 * exit (`exit()`, `process.exit()`, `Deno.exit()`, an empty event loop, hence after every signal handler
 * that ends in an exit), and on SIGTERM / SIGINT when nobody else listens to them: then it releases and
 * re-raises the signal, so the process still ends by that signal as it would have without us. When
 * someone else listens (a graceful shutdown), the signal is theirs and the file stays until they exit,
 * so a new instance cannot start while the old one drains. A process ended by a signal's default action
 * or by SIGKILL leaves its record behind, stale by construction.
 *
 * Replacing a live holder (`replace: true`). The holder's identity is pinned before the first signal
 * and judged again before each one: a process that took its PID meanwhile is never signalled. A replace
 * that fails (the holder belongs to another user, or survives SIGKILL) removes its takeover marker, so
 * the holder's next unplanned stop is not mistaken for a takeover.
 *
 * The record holds the command line redacted (values of `--token`, `--password=…`, URL user-info
 * become `***`), so nothing secret is in it and the default mode 0644 lets status tools of other users
 * read it. Deno: judging needs `/proc`, which Deno opens only with `--allow-all` (`-A`); without it
 * {@linkcode readPidFile} and {@linkcode acquirePidFile} throw a {@linkcode PidFileError} that names the
 * missing permission, rather than judge by PID alone.
 *
 * @module
 */

import {
  checkMode,
  checkNumber,
  createBackoff,
  describeValue,
  errorCode,
  errorMessage,
  getPid,
  HANDLED_SIGNALS,
  identityPermissionProblem,
  isAlive,
  judgeIdentity,
  kill,
  link,
  mustBe,
  onExit,
  onSignal,
  processArgv,
  readDir,
  readHead,
  readProcCmdline,
  readTextFileOrNull,
  redactArgv,
  rename,
  selfIdentity,
  setUnrefInterval,
  signalListenerCount,
  sleepSync,
  statOrNull,
  stderrReporter,
  tempPathBeside,
  touch,
  unlinkIfExists,
  writeFileAtomic,
  writeTextFile,
} from "./platform.ts";
import type { FileStat, IdentityRecord } from "./platform.ts";

// ---------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------

/**
 * What a PID file says about the process that holds it. A plain decimal file (`"1234\n"`) reads as a
 * record with `startTime`, `startTicks`, `bootId`, `hostname`, `pidNamespace` and `heartbeatMs` all
 * `null`, `argv` empty and `createdAt` the file's modification time.
 *
 * @example Show the holder of a PID file
 * ```ts
 * import { readPidFile } from "./pidfile.ts";
 * const status = readPidFile("/tmp/example.pid");
 * if (status.state === "running" || status.state === "stale") {
 *   const { pid, argv, createdAt } = status.record;
 *   console.log(`pid ${pid} (${argv.join(" ")}) since ${createdAt}`);
 * }
 * ```
 */
export interface PidRecord {
  /** The holder's process id. */
  pid: number;
  /** When the holder started, in milliseconds since the epoch (from `/proc`), or `null` when unknown. */
  startTime: number | null;
  /** The holder's command line, redacted (secret values are `***`), or `[]` when unknown. */
  argv: string[];
  /** When the record was written, ISO-8601. */
  createdAt: string;
  /**
   * The host name of the writer, or `null` when unknown. Compared only when the boot id differs or is
   * unknown: a record of this kernel is judged by PID whatever its host name says.
   */
  hostname: string | null;
  /**
   * The holder's start time in clock ticks since boot (`/proc/<pid>/stat` field 22), or `null`. Exact,
   * unlike `startTime`, which moves when the wall clock is stepped: compared instead of it when known.
   */
  startTicks: number | null;
  /** The kernel boot id when the record was written, or `null`: a record of an earlier boot is stale. */
  bootId: string | null;
  /**
   * The writer's PID namespace (`"pid:[4026531836]"`), or `null`. A record of another namespace (a
   * container sharing the folder) cannot be judged by PID and is judged by its heartbeat.
   */
  pidNamespace: string | null;
  /** How often the holder refreshes the file's mtime, in milliseconds, or `null` when it does not. */
  heartbeatMs: number | null;
}

/**
 * Nothing is at the path.
 *
 * @example Tell a first start from a restart
 * ```ts
 * import { type PidFileAbsent, type PidFileStatus, readPidFile } from "./pidfile.ts";
 * const isAbsent = (status: PidFileStatus): status is PidFileAbsent => status.state === "absent";
 * const status = readPidFile("/tmp/example.pid");
 * console.log(isAbsent(status) ? "first start: no PID file" : `found a ${status.state} PID file`);
 * ```
 */
export interface PidFileAbsent {
  /** No file. */
  state: "absent";
}

/**
 * A live process holds the PID file (or its record comes from another host or PID namespace and its
 * heartbeat is fresh).
 *
 * @example Describe the holder
 * ```ts
 * import { type PidFileRunning, readPidFile } from "./pidfile.ts";
 * function describeHolder(running: PidFileRunning): string {
 *   const where = running.foreignHost ? "on another host" : running.foreignNamespace ? "in a container" : "here";
 *   return `pid ${running.record.pid} ${where} (${running.reason})`;
 * }
 * const status = readPidFile("/tmp/example.pid");
 * if (status.state === "running") console.log(`already running: ${describeHolder(status)}`);
 * ```
 */
export interface PidFileRunning {
  /** The holder is alive and the same process that wrote the record. */
  state: "running";
  /** The holder's record. */
  record: PidRecord;
  /** Why it counts as running: alive with the same start time, held by this process, a fresh heartbeat. */
  reason: string;
  /** `true` when the record comes from another host: judged by its heartbeat, never signalled. */
  foreignHost: boolean;
  /** `true` when the record comes from another PID namespace of this host: judged by heartbeat, never signalled. */
  foreignNamespace: boolean;
}

/**
 * The record names a process that is gone (or a PID that now belongs to another process).
 *
 * @example Report a crash left behind
 * ```ts
 * import { type PidFileStale, readPidFile } from "./pidfile.ts";
 * const status = readPidFile("/tmp/example.pid");
 * if (status.state === "stale") {
 *   const stale: PidFileStale = status;
 *   console.warn(`pid ${stale.record.pid} did not clean up: ${stale.reason}`); // e.g. "process 1234 is gone"
 * }
 * ```
 */
export interface PidFileStale {
  /** Provably not running: {@linkcode acquirePidFile} replaces it. */
  state: "stale";
  /** The record as read. */
  record: PidRecord;
  /** Why it is stale, e.g. `"process 1234 is gone"`. */
  reason: string;
}

/**
 * A PID file that nobody can read as a record.
 *
 * @example Warn about a garbled file
 * ```ts
 * import { type PidFileInvalid, readPidFile } from "./pidfile.ts";
 * const status = readPidFile("/tmp/example.pid");
 * if (status.state === "invalid") {
 *   const invalid: PidFileInvalid = status;
 *   console.warn(`not a PID record (${invalid.reason}): the next start replaces it`);
 * }
 * ```
 */
export interface PidFileInvalid {
  /** The file exists but is no record: empty, garbage, truncated, unreadable, a bad PID. */
  state: "invalid";
  /** Why it is not a record. */
  reason: string;
}

/**
 * What {@linkcode readPidFile} found.
 *
 * @example A status line for each state
 * ```ts
 * import { type PidFileStatus, readPidFile } from "./pidfile.ts";
 * const status: PidFileStatus = readPidFile("/tmp/example.pid");
 * switch (status.state) {
 *   case "absent":
 *     console.log("stopped");
 *     break;
 *   case "running":
 *     console.log(`running as pid ${status.record.pid}${status.foreignHost ? " (another host)" : ""}`);
 *     break;
 *   default:
 *     console.log(`stopped (${status.state}: ${status.reason})`);
 * }
 * ```
 */
export type PidFileStatus = PidFileAbsent | PidFileRunning | PidFileStale | PidFileInvalid;

/**
 * A PID file this process holds. Disposable: `using pidFile = await acquirePidFile(path)`.
 *
 * @example Hold it for the life of a function
 * ```ts
 * import { acquirePidFile } from "./pidfile.ts";
 * const pidFile = await acquirePidFile("/tmp/example.pid");
 * try {
 *   console.log(`holding ${pidFile.path} as pid ${pidFile.record.pid}`);
 * } finally {
 *   pidFile.release();
 * }
 * ```
 */
export interface PidFile {
  /** The PID file's path, as given. */
  readonly path: string;
  /** The record this process wrote. */
  readonly record: PidRecord;
  /** `true` once {@linkcode PidFile.release} ran (directly, at exit or on a signal). */
  readonly released: boolean;
  /**
   * Removes the PID file if it still holds our record; leaves whatever else is there. Idempotent.
   * Throws {@linkcode PidFileError} when the file cannot be read or removed.
   */
  release(): void;
  /** Same as {@linkcode PidFile.release}. */
  [Symbol.dispose](): void;
}

/** Default of {@linkcode AcquirePidFileOptions.replace}. */
const DEFAULT_REPLACE = false;
/** Default of {@linkcode AcquirePidFileOptions.replaceTimeoutMs}. */
const DEFAULT_REPLACE_TIMEOUT_MS = 5000;
/** Default of {@linkcode AcquirePidFileOptions.mode}. */
const DEFAULT_PID_FILE_MODE = 0o644;
/** Default of {@linkcode AcquirePidFileOptions.releaseOnExit}. */
const DEFAULT_RELEASE_ON_EXIT = true;
/** Default of {@linkcode AcquirePidFileOptions.releaseOnSignals}. */
const DEFAULT_RELEASE_SIGNALS: readonly string[] = Object.freeze(["SIGTERM", "SIGINT"]);
/** Default of {@linkcode AcquirePidFileOptions.contentionTimeoutMs}. */
const DEFAULT_CONTENTION_TIMEOUT_MS = 3000;

/**
 * Options for {@linkcode acquirePidFile}.
 *
 * @example Private PID file, released only by hand
 * ```ts
 * import { type AcquirePidFileOptions, acquirePidFile } from "./pidfile.ts";
 * const options: AcquirePidFileOptions = { mode: 0o600, releaseOnExit: false, releaseOnSignals: [] };
 * const pidFile = await acquirePidFile("/tmp/example.pid", options);
 * pidFile.release();
 * ```
 */
export interface AcquirePidFileOptions {
  /**
   * Stop a live holder on this host: write `<path>.takeover.json` naming it, send SIGTERM, wait up to
   * `replaceTimeoutMs`, send SIGKILL if it is still alive, then acquire. Never signals a record of
   * another host or PID namespace, this process, or a process that took the holder's PID meanwhile.
   * @default false
   */
  replace?: boolean | undefined;
  /**
   * How long `replace` waits after SIGTERM before it sends SIGKILL, in milliseconds.
   * @default 5000
   */
  replaceTimeoutMs?: number | undefined;
  /**
   * Permission bits of the PID file, whatever the umask. The record holds nothing secret (its command
   * line is redacted), so it is readable by all by default, for status tools and supervisors.
   * @default 0o644
   */
  mode?: number | undefined;
  /**
   * Release at normal exit (event loop done, `exit()`, `process.exit()`, `Deno.exit()`).
   * @default true
   */
  releaseOnExit?: boolean | undefined;
  /**
   * Signals on which the file is released and the signal re-raised, when nobody else listens to them
   * (when someone does, the file is released at their exit instead). `[]` opts out.
   * @default ["SIGTERM", "SIGINT"]
   */
  releaseOnSignals?: readonly string[] | undefined;
  /**
   * How long to wait for another live starter that is replacing the same stale file before reporting
   * it as the holder ({@linkcode PidFileLockedError} with `acquiring: true`), in milliseconds.
   * @default 3000
   */
  contentionTimeoutMs?: number | undefined;
  /**
   * How often the held file's mtime is refreshed, in milliseconds (an unref'd timer, stopped by
   * `release()`). Starters in another PID namespace or on another host judge the file by it: stale once
   * not refreshed for 3 × this period (the period is stored in the record, so they use ours).
   * @default 10000
   */
  heartbeatMs?: number | undefined;
  /**
   * Receives failures that cannot be thrown: a release at exit or on a signal, the sweep of litter, a
   * failed heartbeat.
   * @default one line on stderr (`keelson pidfile: <error>`), dropped if stderr itself is gone
   */
  onError?: ((error: unknown) => void) | undefined;
}

// ---------------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------------

/**
 * Thrown by {@linkcode acquirePidFile} when a live process holds the PID file.
 *
 * @example Report who holds the file
 * ```ts
 * import { acquirePidFile, PidFileLockedError } from "./pidfile.ts";
 * try {
 *   await acquirePidFile("/tmp/example.pid");
 * } catch (error) {
 *   if (error instanceof PidFileLockedError) console.error(`already running as pid ${error.holder.pid}`);
 *   else throw error;
 * }
 * ```
 */
export class PidFileLockedError extends Error {
  /** The PID file. */
  readonly path: string;
  /** The record of the process that holds it (or that is replacing it, when `acquiring`). */
  readonly holder: PidRecord;
  /** `true` when the holder's record comes from another host (judged by heartbeat, never signalled). */
  readonly foreignHost: boolean;
  /** `true` when the holder's record comes from another PID namespace (judged by heartbeat, never signalled). */
  readonly foreignNamespace: boolean;
  /** `true` when the holder is another starter in the middle of replacing a stale file. */
  readonly acquiring: boolean;

  /**
   * Creates the error for a PID file held by `holder`.
   *
   * @param path The PID file.
   * @param holder The holder's record.
   * @param reason Why the holder counts as running.
   * @param options `foreignHost`, `foreignNamespace`, `acquiring`, `cause`.
   *
   * @example
   * ```ts
   * import { PidFileLockedError } from "./pidfile.ts";
   * const holder = {
   *   pid: 1234,
   *   startTime: null,
   *   argv: [],
   *   createdAt: "",
   *   hostname: null,
   *   startTicks: null,
   *   bootId: null,
   *   pidNamespace: null,
   *   heartbeatMs: null,
   * };
   * console.log(new PidFileLockedError("/tmp/example.pid", holder, "alive").message);
   * ```
   */
  constructor(
    path: string,
    holder: PidRecord,
    reason: string,
    options: { foreignHost?: boolean; foreignNamespace?: boolean; acquiring?: boolean; cause?: unknown } = {},
  ) {
    super(`PID file ${JSON.stringify(path)} is held by pid ${holder.pid}: ${reason}`, {
      cause: options.cause,
    });
    this.name = "PidFileLockedError";
    this.path = path;
    this.holder = holder;
    this.foreignHost = options.foreignHost ?? false;
    this.foreignNamespace = options.foreignNamespace ?? false;
    this.acquiring = options.acquiring ?? false;
  }
}

/**
 * Thrown when a PID file or a marker cannot be used: a directory or other non-file at the path, a
 * folder that is missing or not writable, an I/O error, a holder that cannot be signalled. Nothing was
 * deleted.
 *
 * @example Tell a bad path from a held one
 * ```ts
 * import { acquirePidFile, PidFileError } from "./pidfile.ts";
 * try {
 *   await acquirePidFile("/tmp");
 * } catch (error) {
 *   if (error instanceof PidFileError) console.error(error.code, error.path); // "EISDIR" "/tmp"
 * }
 * ```
 */
export class PidFileError extends Error {
  /** The file that could not be used. */
  readonly path: string;
  /** The errno name (`"EACCES"`, `"EISDIR"`, …), or `undefined`. */
  readonly code: string | undefined;

  /**
   * Creates the error for a file that could not be used.
   *
   * @param path The file.
   * @param message What could not be done.
   * @param options `code` and `cause`.
   *
   * @example
   * ```ts
   * import { PidFileError } from "./pidfile.ts";
   * console.log(new PidFileError("/tmp/example.pid", "Cannot use it", { code: "EACCES" }).code);
   * ```
   */
  constructor(path: string, message: string, options: { code?: string | undefined; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = "PidFileError";
    this.path = path;
    this.code = options.code;
  }
}

// ---------------------------------------------------------------------------------------------------
// Public functions
// ---------------------------------------------------------------------------------------------------

/** Suffix of the takeover marker written beside the PID file by `replace: true`. */
const TAKEOVER_MARKER_SUFFIX = ".takeover.json";
/** Suffix of the planned-stop marker written beside the PID file by {@linkcode markPlannedStop}. */
const PLANNED_STOP_MARKER_SUFFIX = ".planned-stop.json";

/**
 * Reads a PID file and judges it: absent, running, stale (with the reason) or invalid. Only reads:
 * it never deletes, renames or rewrites anything, whatever it finds.
 *
 * @param path The PID file.
 * @returns What is there. A record of another host or PID namespace with a fresh heartbeat is
 * `running` with `foreignHost` or `foreignNamespace`.
 * @throws {PidFileError} when something that is not a regular file is at `path`, on an I/O error, or
 * (Deno without `-A`) when process identities cannot be read: the message names the permission.
 *
 * @example A status command
 * ```ts
 * import { readPidFile } from "./pidfile.ts";
 * const status = readPidFile("/tmp/example.pid");
 * if (status.state === "running") console.log(`running as pid ${status.record.pid}`);
 * else if (status.state === "absent") console.log("not running");
 * else console.log(`not running (${status.state}: ${status.reason})`);
 * ```
 */
export function readPidFile(path: string): PidFileStatus {
  checkPath(path, "read the PID file", "path");
  checkPermissions(path);
  return statusOf(takeSnapshot(path), DEFAULT_HEARTBEAT_MS);
}

/**
 * Acquires a PID file: creates it when absent, replaces it when stale or invalid (whoever wrote it),
 * and throws {@linkcode PidFileLockedError} when a live process holds it. Race-safe: when many
 * processes acquire one path at once, exactly one wins (see the module comment for the protocol).
 *
 * @param path The PID file.
 * @param options `replace` a live holder, file `mode`, automatic release, error reporting.
 * @returns The held PID file.
 * @throws {PidFileLockedError} when a live process holds the file (or, with `replace`, survived SIGKILL).
 * @throws {PidFileError} for a directory at the path, a missing or unwritable folder, an I/O error, a
 * holder that cannot be signalled (`replace`), or (Deno without `-A`) when process identities cannot
 * be read: the message names the missing permission.
 *
 * @example Run as a single instance
 * ```ts
 * import { acquirePidFile } from "./pidfile.ts";
 * using pidFile = await acquirePidFile("/tmp/example.pid");
 * console.log(`running as pid ${pidFile.record.pid}`);
 * ```
 *
 * @example Take over from a running instance
 * ```ts
 * import { acquirePidFile } from "./pidfile.ts";
 * const pidFile = await acquirePidFile("/tmp/example.pid", { replace: true, replaceTimeoutMs: 2000 });
 * pidFile.release();
 * ```
 */
export async function acquirePidFile(path: string, options: AcquirePidFileOptions = {}): Promise<PidFile> {
  const settings = checkOptions(path, options);
  checkPermissions(path);
  if (!settings.replace) return acquireNow(path, settings);
  try {
    return acquireNow(path, settings);
  } catch (error) {
    if (!(error instanceof PidFileLockedError) || error.acquiring) throw error;
    if (error.foreignHost || error.foreignNamespace || error.holder.pid === getPid()) throw error;
    const target = await stopHolder(path, error.holder, settings);
    return acquireNow(path, settings, target === null ? null : { record: error.holder, target });
  }
}

/**
 * Announces that stopping this process is intended: writes `<pidPath>.planned-stop.json` =
 * `{"pid": <our pid>, "at": <ISO-8601>, ...info}` atomically, for `shutdown.ts` (and operators) to
 * tell a planned stop from an unexpected one.
 *
 * @param pidPath The PID file the marker belongs beside.
 * @param info Extra JSON fields (e.g. `{ reason: "upgrade" }`); they may override `pid` and `at`.
 * @throws {TypeError} when `info` is not a plain object or cannot be serialised.
 * @throws {PidFileError} when the marker cannot be written.
 *
 * @example Before a planned restart
 * ```ts
 * import { markPlannedStop } from "./pidfile.ts";
 * markPlannedStop("/tmp/example.pid", { reason: "upgrade", by: "deploy" });
 * ```
 */
export function markPlannedStop(pidPath: string, info: Record<string, unknown> = {}): void {
  checkPath(pidPath, MARK_STOP, "pidPath");
  if (typeof info !== "object" || info === null || Array.isArray(info)) {
    throw new TypeError(mustBe(MARK_STOP, "info", "a plain object", info));
  }
  let json: string;
  try {
    json = JSON.stringify({ pid: getPid(), at: new Date().toISOString(), ...info });
  } catch (error) {
    const why = `a JSON-serialisable object (${errorMessage(error)})`;
    throw new TypeError(mustBe(MARK_STOP, "info", why, info), { cause: error });
  }
  writeMarker(pidPath + PLANNED_STOP_MARKER_SUFFIX, json + "\n");
}

// ---------------------------------------------------------------------------------------------------
// Private: settings
// ---------------------------------------------------------------------------------------------------

interface Settings {
  replace: boolean;
  replaceTimeoutMs: number;
  mode: number;
  releaseOnExit: boolean;
  releaseOnSignals: readonly string[];
  contentionTimeoutMs: number;
  heartbeatMs: number;
  onError: (error: unknown) => void;
}

/** Default of {@linkcode AcquirePidFileOptions.heartbeatMs}. */
const DEFAULT_HEARTBEAT_MS = 10_000;

/** Deno without -A cannot read /proc: judging by PID alone would call a reused PID alive. Say so. */
function checkPermissions(path: string): void {
  const problem = identityPermissionProblem();
  if (problem === null) return;
  throw new PidFileError(
    path,
    `Cannot judge PID file ${JSON.stringify(path)}: process identities cannot be read here, ` +
      `and by PID alone a reused PID would pass for its holder: ${problem}`,
    { code: "EACCES" },
  );
}

/** The actions argument errors name. */
const ACQUIRE = "acquire the PID file";
const MARK_STOP = "mark a planned stop";

function checkPath(path: unknown, action: string, name: string): void {
  if (typeof path !== "string" || path === "") {
    throw new TypeError(mustBe(action, name, "a non-empty string", path));
  }
  if (path.includes("\0")) throw new TypeError(mustBe(action, name, "a path without NUL bytes", path));
}

function checkOptions(path: string, options: AcquirePidFileOptions): Settings {
  checkPath(path, ACQUIRE, "path");
  if (typeof options !== "object" || options === null) {
    throw new TypeError(mustBe(ACQUIRE, "options", "an object", options));
  }
  const replace = options.replace ?? DEFAULT_REPLACE;
  if (typeof replace !== "boolean") {
    throw new TypeError(mustBe(ACQUIRE, "replace", "a boolean", replace));
  }
  const replaceTimeoutMs = checkMs(options.replaceTimeoutMs, DEFAULT_REPLACE_TIMEOUT_MS, "replaceTimeoutMs");
  const contentionTimeoutMs = checkMs(
    options.contentionTimeoutMs,
    DEFAULT_CONTENTION_TIMEOUT_MS,
    "contentionTimeoutMs",
  );
  const mode = checkMode(ACQUIRE, options.mode ?? DEFAULT_PID_FILE_MODE);
  const releaseOnExit = options.releaseOnExit ?? DEFAULT_RELEASE_ON_EXIT;
  if (typeof releaseOnExit !== "boolean") {
    throw new TypeError(mustBe(ACQUIRE, "releaseOnExit", "a boolean", releaseOnExit));
  }
  const releaseOnSignals = options.releaseOnSignals ?? DEFAULT_RELEASE_SIGNALS;
  if (!Array.isArray(releaseOnSignals) || releaseOnSignals.some((s) => !HANDLED_SIGNALS.includes(s))) {
    throw new TypeError(
      mustBe(ACQUIRE, "releaseOnSignals", `a list of ${HANDLED_SIGNALS.join(", ")}`, releaseOnSignals),
    );
  }
  const heartbeatMs = checkNumber(
    ACQUIRE,
    "heartbeatMs",
    options.heartbeatMs ?? DEFAULT_HEARTBEAT_MS,
    "a finite number >= 1",
    (n) => Number.isFinite(n) && n >= 1,
  );
  const onError = options.onError ?? reportOnStderr;
  if (typeof onError !== "function") {
    throw new TypeError(mustBe(ACQUIRE, "onError", "a function", onError));
  }
  return {
    replace,
    replaceTimeoutMs,
    mode,
    releaseOnExit,
    releaseOnSignals: [...releaseOnSignals],
    contentionTimeoutMs,
    heartbeatMs,
    onError,
  };
}

function checkMs(value: unknown, fallback: number, name: string): number {
  return checkNumber(
    ACQUIRE,
    name,
    value ?? fallback,
    "a finite number >= 0",
    (n) => Number.isFinite(n) && n >= 0,
  );
}

/** Without `onError`: one line on stderr per failure, lost only if stderr is gone too. */
const reportOnStderr = stderrReporter("keelson pidfile");

// ---------------------------------------------------------------------------------------------------
// Private: reading and judging
// ---------------------------------------------------------------------------------------------------

/** A record larger than this is no PID file (someone pointed us at a log). */
const MAX_RECORD_BYTES = 64 * 1024;
/** The largest PID any kernel hands out (Linux `pid_max` is at most 2^22). */
const MAX_PID = 2 ** 31 - 1;

/** One consistent look at a file: `id` names exactly this file, content and all. */
type Snapshot =
  | { kind: "absent" }
  | { kind: "file"; id: string; stat: FileStat; bytes: Uint8Array | null; readError: string | null };

const decoder = new TextDecoder();

function takeSnapshot(path: string): Snapshot {
  for (let attempt = 0;; attempt += 1) {
    const before = statPath(path);
    if (before === null) return { kind: "absent" };
    if (before.isDirectory) {
      throw new PidFileError(path, `Cannot use ${JSON.stringify(path)} as a PID file: it is a directory`, {
        code: "EISDIR",
      });
    }
    if (!before.isFile) {
      throw new PidFileError(path, `Cannot use ${JSON.stringify(path)} as a PID file: not a regular file`, {
        code: "EINVAL",
      });
    }
    let bytes: Uint8Array | null = null;
    let readError: string | null = null;
    try {
      bytes = readHead(path, Math.min(before.size, MAX_RECORD_BYTES) + 1); // one byte more tells "too big"
    } catch (error) {
      const code = errorCode(error);
      if (code === "ENOENT" && attempt < 5) continue; // removed between stat and read: look again
      if (code === "EACCES" || code === "EPERM") readError = code;
      else throw ioError(path, "read the PID file", error);
    }
    const after = statPath(path);
    if (after === null && attempt < 5) continue;
    const stat = after ?? before;
    if (after !== null && !sameFile(before, after) && attempt < 5) continue; // changed while read
    const content = bytes === null ? `<${readError}>` : decoder.decode(bytes);
    return { kind: "file", id: fileId(stat, content), stat, bytes, readError };
  }
}

function statPath(path: string): FileStat | null {
  try {
    return statOrNull(path);
  } catch (error) {
    throw ioError(path, "inspect the PID file", error);
  }
}

function sameFile(a: FileStat, b: FileStat): boolean {
  return a.ino === b.ino && a.dev === b.dev && a.size === b.size && a.mtimeMs === b.mtimeMs;
}

/**
 * A 64-bit hash over the file's identity and content (FNV-1a in one half, a Murmur-style mix in the
 * other): two versions of the file almost surely get two claim names, and every runtime names one
 * version alike (the mtime in whole milliseconds: Deno reports no fraction).
 */
function fileId(stat: FileStat, content: string): string {
  const text = `${stat.dev}:${stat.ino ?? "?"}:${stat.size}:${Math.floor(stat.mtimeMs)}:${content}`;
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ text.length;
  for (let i = 0; i < text.length; i += 1) {
    const c = text.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193);
    b = Math.imul(b ^ c, 0x5bd1e995) ^ (b >>> 15);
  }
  return (a >>> 0).toString(16).padStart(8, "0") + (b >>> 0).toString(16).padStart(8, "0");
}

function statusOf(snapshot: Snapshot, heartbeatMs: number): PidFileStatus {
  if (snapshot.kind === "absent") return { state: "absent" };
  if (snapshot.bytes === null) {
    return { state: "invalid", reason: `the file cannot be read (${snapshot.readError})` };
  }
  if (snapshot.bytes.length > MAX_RECORD_BYTES) {
    return { state: "invalid", reason: `the file is larger than ${MAX_RECORD_BYTES} bytes: not a PID file` };
  }
  const text = decoder.decode(snapshot.bytes);
  const parsed = parseRecord(text, snapshot.stat.mtimeMs);
  if ("state" in parsed) return parsed;
  return judge(parsed, text, snapshot.stat.mtimeMs, heartbeatMs);
}

function parseRecord(text: string, mtimeMs: number): PidRecord | PidFileInvalid {
  if (text.trim() === "") return { state: "invalid", reason: "the file is empty" };
  const plain = /^\s*(\d+)\s*$/.exec(text);
  if (plain) {
    const pid = Number(plain[1]);
    if (!validPid(pid)) return { state: "invalid", reason: `${plain[1]} is not a process id` };
    return {
      pid,
      startTime: null,
      argv: [],
      createdAt: new Date(mtimeMs).toISOString(),
      hostname: null,
      startTicks: null,
      bootId: null,
      pidNamespace: null,
      heartbeatMs: null,
    };
  }
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return {
      state: "invalid",
      reason: `not a PID file (neither a decimal pid nor a JSON record): ${describeValue(text)}`,
    };
  }
  if (typeof value === "number") return { state: "invalid", reason: `${value} is not a process id` };
  if (typeof value !== "object" || value === null || Array.isArray(value)) {
    return { state: "invalid", reason: `not a PID record: ${describeValue(text)}` };
  }
  const fields = value as Partial<Record<keyof PidRecord, unknown>>;
  if (!validPid(fields.pid)) {
    return { state: "invalid", reason: `pid ${describeValue(fields.pid)} is not a process id` };
  }
  const startTime = fields.startTime ?? null;
  if (startTime !== null && (typeof startTime !== "number" || !Number.isFinite(startTime))) {
    return { state: "invalid", reason: `startTime ${describeValue(startTime)} is not a number` };
  }
  const startTicks = fields.startTicks ?? null;
  if (startTicks !== null && (!Number.isSafeInteger(startTicks) || (startTicks as number) < 0)) {
    return { state: "invalid", reason: `startTicks ${describeValue(startTicks)} is not a tick count` };
  }
  const argv = fields.argv ?? [];
  if (!Array.isArray(argv) || argv.some((arg) => typeof arg !== "string")) {
    return { state: "invalid", reason: `argv ${describeValue(argv)} is not a list of strings` };
  }
  const createdAt = fields.createdAt ?? new Date(mtimeMs).toISOString();
  const host = fields.hostname ?? null;
  const bootId = fields.bootId ?? null;
  const pidNamespace = fields.pidNamespace ?? null;
  const strings = [
    ["createdAt", createdAt],
    ["hostname", host],
    ["bootId", bootId],
    ["pidNamespace", pidNamespace],
  ] as const;
  for (const [name, field] of strings) {
    if (field !== null && typeof field !== "string") {
      return { state: "invalid", reason: `${name} ${describeValue(field)} is not a string` };
    }
  }
  const heartbeatMs = fields.heartbeatMs ?? null;
  if (
    heartbeatMs !== null &&
    (typeof heartbeatMs !== "number" || !Number.isFinite(heartbeatMs) || heartbeatMs <= 0)
  ) {
    return { state: "invalid", reason: `heartbeatMs ${describeValue(heartbeatMs)} is not a period` };
  }
  return {
    pid: fields.pid as number,
    startTime: startTime as number | null,
    argv: argv as string[],
    createdAt: createdAt as string,
    hostname: host as string | null,
    startTicks: startTicks as number | null,
    bootId: bootId as string | null,
    pidNamespace: pidNamespace as string | null,
    heartbeatMs: heartbeatMs as number | null,
  };
}

function validPid(pid: unknown): boolean {
  return typeof pid === "number" && Number.isInteger(pid) && pid > 0 && pid <= MAX_PID;
}

function judge(record: PidRecord, text: string, mtimeMs: number, heartbeatMs: number): PidFileStatus {
  const created = Date.parse(record.createdAt);
  const verdict = judgeIdentity(record, {
    mtimeMs,
    heartbeatMs,
    // Without a start time, a process that started after its record was written is not its writer.
    writtenAtMs: Number.isFinite(created) ? created : mtimeMs,
  });
  if (verdict.self) {
    if (isHeldHere(text)) {
      return {
        state: "running",
        record,
        reason: "held by this process",
        foreignHost: false,
        foreignNamespace: false,
      };
    }
    return {
      state: "stale",
      record,
      reason: `names this process (pid ${record.pid}) but was not written by it: an earlier incarnation`,
    };
  }
  if (!verdict.alive) return { state: "stale", record, reason: verdict.reason };
  const foreignHost = verdict.basis === "heartbeat" && isOtherHost(record);
  return {
    state: "running",
    record,
    reason: verdict.reason,
    foreignHost,
    foreignNamespace: verdict.basis === "heartbeat" && !foreignHost,
  };
}

/** Another kernel (boot id) under another name: another host, not a container of this one. */
function isOtherHost(record: PidRecord): boolean {
  const me = selfIdentity();
  if (record.bootId !== null && me.bootId !== null && record.bootId === me.bootId) return false;
  return record.hostname !== null && me.hostname !== null && record.hostname !== me.hostname;
}

function ownRecord(heartbeatMs: number): PidRecord {
  const me = selfIdentity();
  return {
    pid: me.pid,
    startTime: me.startTime,
    argv: redactArgv(processArgv()),
    createdAt: new Date().toISOString(),
    hostname: me.hostname,
    startTicks: me.startTicks,
    bootId: me.bootId,
    pidNamespace: me.pidNamespace,
    heartbeatMs,
  };
}

// ---------------------------------------------------------------------------------------------------
// Private: acquiring
// ---------------------------------------------------------------------------------------------------

/** Claim levels tried before giving up: each one costs a claimant killed inside a sub-millisecond window. */
const MAX_CLAIM_LEVELS = 1000;
/** Rounds of "look, then act" before the path is declared unusable (it keeps changing under us). */
const MAX_ROUNDS = 10_000;
/** Times "absent" and then `EEXIST` in a row before the path counts as a dangling symbolic link. */
const MAX_PHANTOMS = 100;
const WAIT_MIN_MS = 1;
const WAIT_MAX_MS = 50;

const held = new Set<HeldPidFile>();

function isHeldHere(text: string): boolean {
  for (const file of held) if (file.text === text) return true;
  return false;
}

/** A holder that `replace` stopped: its record is stale once the pinned process is gone. */
interface Stopped {
  record: PidRecord;
  target: IdentityRecord;
}

function acquireNow(path: string, settings: Settings, stopped: Stopped | null = null): HeldPidFile {
  const record = ownRecord(settings.heartbeatMs);
  const text = JSON.stringify(record) + "\n";
  const backoff = createBackoff({
    minMs: WAIT_MIN_MS,
    maxMs: WAIT_MAX_MS,
    timeoutMs: settings.contentionTimeoutMs,
  });
  let tmp: string | null = null;
  let phantoms = 0;
  try {
    for (let round = 0; round < MAX_ROUNDS; round += 1) {
      const found = takeSnapshot(path);
      if (found.kind === "absent") {
        tmp ??= writeTemp(path, text, settings.mode);
        try {
          link(tmp, path); // publish if absent: EEXIST when anyone else got there first
        } catch (error) {
          if (errorCode(error) !== "EEXIST") throw ioError(path, "create the PID file", error);
          phantoms += 1;
          if (phantoms < MAX_PHANTOMS) continue;
          throw new PidFileError(
            path,
            `Cannot create the PID file ${
              JSON.stringify(path)
            }: a name that stat cannot follow is there (a dangling symbolic link?)`,
            { code: "EEXIST" },
          );
        }
        return holdNew(path, record, text, settings);
      }
      const status = judgeFound(found, settings, stopped);
      if (status.state === "absent") continue; // cannot happen for a file; keeps the types exact
      if (status.state === "running") {
        throw new PidFileLockedError(path, status.record, status.reason, {
          foreignHost: status.foreignHost,
          foreignNamespace: status.foreignNamespace,
        });
      }
      tmp ??= writeTemp(path, text, settings.mode);
      const claim = claimReplacement(path, found.id, tmp, settings.heartbeatMs);
      if (claim.kind === "retry") continue;
      if (claim.kind === "busy") {
        const pause = backoff.next();
        if (pause === null) {
          throw new PidFileLockedError(
            path,
            claim.holder,
            `it is replacing the ${status.state} PID file (${status.reason})`,
            { acquiring: true },
          );
        }
        sleepSync(pause);
        continue;
      }
      let replaced = false;
      try {
        // Under the claim nobody else may replace this file: check it is still the one judged, still dead.
        const again = takeSnapshot(path);
        if (again.kind === "file" && again.id === found.id) {
          const state = judgeFound(again, settings, stopped).state;
          if (state === "stale" || state === "invalid") {
            try {
              rename(tmp, path);
            } catch (error) {
              throw ioError(path, "replace the PID file", error);
            }
            tmp = null;
            replaced = true;
          }
        }
      } finally {
        dropClaims(path, found.id, replaced ? claim.level : -1, claim.level, settings.onError);
      }
      if (replaced) return holdNew(path, record, text, settings);
    }
    throw new PidFileError(path, `Cannot acquire PID file ${JSON.stringify(path)}: it kept changing`, {
      code: "EAGAIN",
    });
  } finally {
    if (tmp !== null) {
      try {
        unlinkIfExists(tmp);
      } catch (error) {
        settings.onError(ioError(tmp, "remove the temporary file", error));
      }
    }
  }
}

/**
 * The status of a file found at the path. The record of a holder that we stopped counts as stale once
 * the pinned process is gone, even if its pid was taken again within the start-time tolerance (a record
 * without start ticks could not tell that process from the holder).
 */
function judgeFound(found: Snapshot, settings: Settings, stopped: Stopped | null): PidFileStatus {
  const status = statusOf(found, settings.heartbeatMs);
  if (stopped === null || status.state !== "running") return status;
  if (
    JSON.stringify(status.record) !== JSON.stringify(stopped.record) || judgeIdentity(stopped.target).alive
  ) {
    return status;
  }
  return {
    state: "stale",
    record: status.record,
    reason: `its holder was stopped; pid ${status.record.pid} now belongs to another process`,
  };
}

function writeTemp(path: string, text: string, mode: number): string {
  const tmp = tempPathBeside(path);
  try {
    writeTextFile(tmp, text, { mode });
  } catch (error) {
    try {
      unlinkIfExists(tmp);
    } catch {
      // The create itself failed; the error below says why.
    }
    throw ioError(path, "create the PID file", error);
  }
  return tmp;
}

type Claim = { kind: "won"; level: number } | { kind: "busy"; holder: PidRecord } | { kind: "retry" };

function claimName(path: string, id: string, level: number): string {
  return `${path}.replace-${id}.${level}`;
}

/** Takes the lowest claim level on file `id` whose lower levels all belong to dead claimants. */
function claimReplacement(path: string, id: string, tmp: string, heartbeatMs: number): Claim {
  let vanished = 0;
  for (let level = 0; level < MAX_CLAIM_LEVELS;) {
    const name = claimName(path, id, level);
    try {
      link(tmp, name);
      return { kind: "won", level };
    } catch (error) {
      if (errorCode(error) !== "EEXIST") throw ioError(path, "claim the stale PID file", error);
    }
    const other = takeSnapshot(name);
    if (other.kind === "absent") {
      // Its winner cleaned up: the file was replaced meanwhile, which the next look will show.
      vanished += 1;
      if (vanished > 3) return { kind: "retry" };
      continue;
    }
    const status = statusOf(other, heartbeatMs);
    if (status.state === "running") return { kind: "busy", holder: status.record };
    level += 1; // a dead claimant: its level blocks nobody
  }
  throw new PidFileError(path, `Cannot acquire PID file ${JSON.stringify(path)}: too many abandoned claims`, {
    code: "EAGAIN",
  });
}

/** After a win, removes every claim of the replaced file; after a failed check, only our own level. */
function dropClaims(
  path: string,
  id: string,
  upTo: number,
  own: number,
  onError: (e: unknown) => void,
): void {
  const from = upTo >= 0 ? 0 : own;
  const to = upTo >= 0 ? upTo : own;
  for (let level = from; level <= to; level += 1) {
    const name = claimName(path, id, level);
    try {
      unlinkIfExists(name);
    } catch (error) {
      onError(ioError(name, "remove the claim file", error));
    }
  }
}

function holdNew(
  path: string,
  record: PidRecord,
  text: string,
  settings: Settings,
): HeldPidFile {
  const file = new HeldPidFile(path, record, text, settings);
  held.add(file);
  syncHooks();
  // Every acquire sweeps, not only a replacement: starters killed on an absent path leave temp files.
  sweepLitter(path, settings);
  return file;
}

/**
 * Removes temporary files and claims left beside `path` by processes that are gone. Both hold their
 * writer's record, so they are judged like a PID file (by heartbeat when they come from another PID
 * namespace: the pid in a temporary file's name is the writer's, not ours to look up). A temporary file
 * that is no record yet (its writer was killed between create and write) goes when that pid is gone.
 */
function sweepLitter(path: string, settings: Settings): void {
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  const base = path.slice(slash + 1);
  const prefix = dir === "." && slash < 0 ? "" : dir.endsWith("/") ? dir : dir + "/";
  const current = takeSnapshot(path);
  const currentId = current.kind === "file" ? current.id : "";
  const self = getPid();
  let names: string[];
  try {
    names = readDir(dir);
  } catch (error) {
    settings.onError(ioError(dir, "list the folder", error));
    return;
  }
  for (const name of names) {
    if (!name.startsWith(base + ".")) continue;
    const rest = name.slice(base.length + 1);
    const tmp = /^(\d+)\.\d+\.[0-9a-z]+\.tmp$/.exec(rest);
    const claim = /^replace-([0-9a-f]{16})\.\d+$/.exec(rest);
    if (!(tmp && Number(tmp[1]) !== self) && !(claim && claim[1] !== currentId)) continue;
    const full = prefix + name;
    try {
      const found = takeSnapshot(full);
      if (found.kind === "absent") continue;
      const status = statusOf(found, settings.heartbeatMs);
      // No record yet: the pid in the name is all there is (a writer lives microseconds in that state).
      const unwritten = status.state === "invalid" && tmp !== null && !isAlive(Number(tmp[1]));
      if (status.state === "stale" || unwritten || (status.state === "invalid" && claim !== null)) {
        unlinkIfExists(full);
      }
    } catch (error) {
      settings.onError(ioError(full, "sweep the leftover", error));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Private: replacing a live holder
// ---------------------------------------------------------------------------------------------------

/** How long a holder may take to vanish after SIGKILL (a process in uninterruptible sleep lingers). */
const KILL_WAIT_MS = 5000;
const POLL_MIN_MS = 5;
const POLL_MAX_MS = 100;

/**
 * Stops the live holder of `path`: pins its identity, leaves the takeover marker, SIGTERM, SIGKILL
 * after `replaceTimeoutMs`. Each signal goes only to the pinned process (judged again right before
 * it), never to one that took its pid. When stopping fails, our marker is removed again: left behind,
 * it would make the holder's next unplanned stop look like an intended takeover.
 */
async function stopHolder(
  path: string,
  holder: PidRecord,
  settings: Settings,
): Promise<IdentityRecord | null> {
  const target = pinHolder(path, holder);
  if (target === null) return null; // gone meanwhile: the next look acquires
  const markerPath = path + TAKEOVER_MARKER_SUFFIX;
  // The contract's shape: the target tells it is meant by its pid and the time (written in its lifetime).
  const marker = { targetPid: holder.pid, byPid: getPid(), at: new Date().toISOString() };
  const markerText = JSON.stringify(marker) + "\n";
  writeMarker(markerPath, markerText);
  try {
    if (!signalPinned(path, target, "SIGTERM")) return target;
    if (await waitUntilGone(target, settings.replaceTimeoutMs)) return target;
    if (!signalPinned(path, target, "SIGKILL")) return target;
    if (await waitUntilGone(target, KILL_WAIT_MS)) return target;
    throw new PidFileLockedError(
      path,
      holder,
      `it survived SIGTERM and SIGKILL for ${settings.replaceTimeoutMs + KILL_WAIT_MS} ms`,
    );
  } catch (error) {
    removeOwnMarker(markerPath, markerText, settings.onError);
    throw error;
  }
}

/**
 * The identity of the process to stop, read now (its start ticks, even when the record had none), or
 * `null` when the holder is gone. A record without start ticks that names a live process running
 * another command is not signalled at all: the pid alone does not say it is the holder.
 */
function pinHolder(path: string, holder: PidRecord): IdentityRecord | null {
  const created = Date.parse(holder.createdAt);
  const verdict = judgeIdentity(holder, { writtenAtMs: Number.isFinite(created) ? created : null });
  if (!verdict.alive) return null;
  const live = verdict.live;
  if (verdict.basis !== "pid" || live === null) {
    throw new PidFileLockedError(path, holder, `${verdict.reason}: it cannot be signalled from here`);
  }
  if (holder.startTicks === null && !sameCommand(holder.argv, live.pid)) {
    throw new PidFileLockedError(
      path,
      holder,
      `pid ${holder.pid} runs another command than the record names, and the record has no start time to tell: not signalled`,
    );
  }
  return {
    pid: live.pid,
    startTicks: live.startTicks,
    startTime: live.startTime,
    bootId: live.bootId,
    pidNamespace: live.pidNamespace,
  };
}

/** Whether the live command line ends with the arguments the record names (runtimes spell argv[0..1] differently). */
function sameCommand(argv: readonly string[], pid: number): boolean {
  const args = argv.slice(2);
  if (args.length === 0) return true;
  const live = readProcCmdline(pid);
  if (live === null) return true;
  const tail = redactArgv(live).slice(-args.length);
  return tail.length === args.length && tail.every((arg, i) => arg === args[i]);
}

/** Sends `signal` if the pinned process still runs; returns `false` when it is gone (nothing sent). */
function signalPinned(path: string, target: IdentityRecord, signal: string): boolean {
  if (!judgeIdentity(target).alive) return false; // gone, or its pid now belongs to someone else
  try {
    kill(target.pid, signal);
    return true;
  } catch (error) {
    if (errorCode(error) === "ESRCH") return false;
    throw new PidFileError(
      path,
      `Cannot replace the holder of PID file ${
        JSON.stringify(path)
      }: ${signal} to pid ${target.pid} failed (${errorCode(error) ?? errorMessage(error)})`,
      { code: errorCode(error), cause: error },
    );
  }
}

async function waitUntilGone(target: IdentityRecord, timeoutMs: number): Promise<boolean> {
  const backoff = createBackoff({ minMs: POLL_MIN_MS, maxMs: POLL_MAX_MS, timeoutMs });
  for (;;) {
    if (!judgeIdentity(target).alive) return true;
    const pause = backoff.next();
    if (pause === null) return false;
    await new Promise((resolve) => setTimeout(resolve, pause));
  }
}

function writeMarker(markerPath: string, text: string): void {
  try {
    writeFileAtomic(markerPath, text, { mode: DEFAULT_PID_FILE_MODE });
  } catch (error) {
    throw ioError(markerPath, "write the marker", error);
  }
}

/** Removes the marker if it is still the one we wrote (a later replacer's marker stays). */
function removeOwnMarker(markerPath: string, text: string, onError: (error: unknown) => void): void {
  try {
    if (readTextFileOrNull(markerPath) === text) unlinkIfExists(markerPath);
  } catch (error) {
    onError(ioError(markerPath, "remove the takeover marker", error));
  }
}

// ---------------------------------------------------------------------------------------------------
// Private: the held file and its release hooks
// ---------------------------------------------------------------------------------------------------

class HeldPidFile implements PidFile {
  readonly path: string;
  readonly record: PidRecord;
  readonly text: string;
  readonly settings: Settings;
  #released = false;
  #stopHeartbeat: () => void;

  constructor(path: string, record: PidRecord, text: string, settings: Settings) {
    this.path = path;
    this.record = record;
    this.text = text;
    this.settings = settings;
    this.#stopHeartbeat = setUnrefInterval(() => this.#beat(), settings.heartbeatMs);
  }

  /** Refreshes the file's mtime while it holds our record: starters in other namespaces judge by it. */
  #beat(): void {
    try {
      if (this.#current() === this.text) touch(this.path);
    } catch (error) {
      if (errorCode(error) !== "ENOENT") {
        this.settings.onError(ioError(this.path, "refresh the PID file", error));
      }
    }
  }

  /** The file's content now, or `null` when it is gone or no regular file. */
  #current(): string | null {
    const stat = statOrNull(this.path);
    if (stat === null || !stat.isFile) return null;
    return decoder.decode(readHead(this.path, Math.min(stat.size, MAX_RECORD_BYTES) + 1));
  }

  get released(): boolean {
    return this.#released;
  }

  release(): void {
    if (this.#released) return;
    this.#released = true;
    this.#stopHeartbeat();
    held.delete(this);
    syncHooks();
    let current: string | null;
    try {
      current = this.#current();
    } catch (error) {
      if (errorCode(error) === "ENOENT") return;
      throw ioError(this.path, "read the PID file", error);
    }
    if (current !== this.text) return; // someone else's now: keep it
    try {
      unlinkIfExists(this.path);
    } catch (error) {
      throw ioError(this.path, "remove the PID file", error);
    }
  }

  /** Release from a hook, where nothing can be thrown. */
  releaseQuietly(): void {
    try {
      this.release();
    } catch (error) {
      this.settings.onError(error);
    }
  }

  [Symbol.dispose](): void {
    this.release();
  }
}

let exitHookOff: (() => void) | null = null;
const signalHooksOff = new Map<string, () => void>();

/** Subscribes the exit hook and the signal listeners the held files need, and nothing more. */
function syncHooks(): void {
  let wantExit = false;
  const wantSignals = new Set<string>();
  for (const file of held) {
    if (file.settings.releaseOnExit) wantExit = true;
    for (const signal of file.settings.releaseOnSignals) wantSignals.add(signal);
  }
  if (wantExit && exitHookOff === null) exitHookOff = onExit(releaseAtExit);
  if (!wantExit && exitHookOff !== null) {
    exitHookOff();
    exitHookOff = null;
  }
  for (const [signal, off] of signalHooksOff) {
    if (!wantSignals.has(signal)) {
      off();
      signalHooksOff.delete(signal);
    }
  }
  for (const signal of wantSignals) {
    // Unknown listener count: re-raising could not be done safely, so leave the signal alone.
    if (signalHooksOff.has(signal) || signalListenerCount(signal) === null) continue;
    signalHooksOff.set(signal, onSignal(signal, releaseOnSignal));
  }
}

function releaseAtExit(): void {
  for (const file of [...held]) if (file.settings.releaseOnExit) file.releaseQuietly();
}

function releaseOnSignal(signal: string): void {
  // Someone else listens: the signal is theirs, and the exit hook releases when they end the process.
  if (signalListenerCount(signal) !== 1) return;
  for (const file of [...held]) if (file.settings.releaseOnSignals.includes(signal)) file.releaseQuietly();
  signalHooksOff.get(signal)?.();
  signalHooksOff.delete(signal);
  // With no listener left the default action is back: the process ends by this signal, as without us.
  kill(getPid(), signal);
}

// ---------------------------------------------------------------------------------------------------
// Private: messages
// ---------------------------------------------------------------------------------------------------

function ioError(path: string, action: string, error: unknown): PidFileError {
  const code = errorCode(error);
  const why = code === "EACCES" || code === "EPERM"
    ? "permission denied"
    : code === "ENOENT"
    ? "its folder does not exist"
    : code === "ENOTDIR"
    ? "a part of its folder is not a directory"
    : code === "EISDIR"
    ? "it is a directory"
    : errorMessage(error);
  return new PidFileError(
    path,
    `Cannot ${action} ${JSON.stringify(path)}: ${why}${code ? ` (${code})` : ""}`,
    {
      code,
      cause: error,
    },
  );
}
