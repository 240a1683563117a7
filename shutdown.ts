/// <reference lib="esnext.disposable" preserve="true" />
/**
 * Shutdown forensics and an orderly shutdown that always ends. Without it "the service keeps dying" leaves
 * a log that says "Stopping..." and then nothing: nobody knows who sent the signal, which shutdown phase
 * wedged when systemd finally sent SIGKILL, that the unit's `TimeoutStopSec` is shorter than the drain,
 * or why a process whose main thread is stuck in a blocking write never exits at all.
 *
 * {@linkcode snapshotShutdownContext} answers "who and why" from `/proc` in well under a millisecond, so it
 * can run inside the signal handler; {@linkcode spawnShutdownDiagnostic} hands the slow questions (`ps`,
 * `pstree`, OOM lines) to a detached child that outlives us; {@linkcode installShutdown} logs the snapshot
 * at once, runs the phases in order with their own time limits, and relies on a watchdog outside the main
 * thread so that a second signal or the force-exit deadline ends the process whatever the main thread does.
 *
 * Deno permissions: `--allow-read --allow-write` to install; `-A` for a snapshot that names the sender
 * (Deno reads `/proc` only with all permissions; without it `installShutdown` says so once on stderr);
 * `--allow-run` for {@linkcode checkSystemdStopTimeout} and {@linkcode spawnShutdownDiagnostic}.
 *
 * @module
 */

import {
  checkNumber,
  closeFd,
  describeError,
  exit as platformExit,
  fstat,
  ftruncate,
  getEnv,
  getPid,
  getPpid,
  HANDLED_SIGNALS,
  ignoreSignalRepeats,
  judgeIdentity,
  loadAverage,
  MAX_WATCHDOG_MS,
  mkdirp,
  monotonicMs,
  mustBe,
  onSignal,
  onUncaught,
  openOwnedAppend,
  readAt,
  readProcCmdline,
  readProcStatus,
  readTextFileOrNull,
  redactArgv,
  runCommand,
  signalName,
  signalNumber,
  spawnDetached,
  startWatchdog,
  statOrNull,
  stderrReporter,
  warnIfProcRefused,
  type Watchdog,
  type WatchdogCapabilities,
  writeAll,
} from "./platform.ts";

// The one argv redaction (also used for PID records) is public API of this module, and so is the type
// of `ShutdownHandle.watchdog`.
export { redactArgv } from "./platform.ts";
export type { WatchdogCapabilities } from "./platform.ts";

// ---------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------

/**
 * What `/proc` says about one process. Off Linux only `pid` is known.
 *
 * @example Describe the parent that most likely sent the signal
 * ```ts
 * import { type ProcessSummary, snapshotShutdownContext } from "./shutdown.ts";
 * const parent: ProcessSummary = snapshotShutdownContext("SIGTERM").parent;
 * console.log(`pid=${parent.pid} name=${parent.name ?? "?"} state=${parent.state ?? "?"}`);
 * ```
 */
export interface ProcessSummary {
  /** The process id. */
  pid: number;
  /** The command name (`Name:` of `/proc/<pid>/status`, at most 15 characters). */
  name?: string;
  /** One letter: `R` running, `S` sleeping, `D` disk wait, `Z` zombie, `T` stopped, `t` traced, … */
  state?: string;
  /** Its parent's pid. */
  ppid?: number;
  /** Its real user id. */
  uid?: number;
  /** Its argv joined with spaces, redacted unless `cmdline: "full"`, cut to 300 characters. */
  cmdline?: string;
}

/**
 * `<pidFile>.takeover.json`: a newer instance announced that it is replacing `targetPid`.
 *
 * @example Tell a takeover from an ordinary stop
 * ```ts
 * import { snapshotShutdownContext, type TakeoverMarker } from "./shutdown.ts";
 * const ctx = snapshotShutdownContext("SIGTERM", { pidFile: "/tmp/example.pid" });
 * const marker: TakeoverMarker | undefined = ctx.takeoverMarker;
 * if (marker && ctx.takeoverMarkerForSelf) console.log(`replaced by pid ${marker.byPid} at ${marker.at}`);
 * ```
 */
export interface TakeoverMarker {
  /** The pid being replaced. */
  targetPid: number;
  /** The pid of the instance taking over. */
  byPid: number;
  /** When the marker was written (ISO-8601). */
  at: string;
}

/**
 * `<pidFile>.planned-stop.json`: somebody announced that stopping `pid` is intended.
 *
 * @example Log why a planned stop happened
 * ```ts
 * import { type PlannedStopMarker, snapshotShutdownContext } from "./shutdown.ts";
 * const ctx = snapshotShutdownContext("SIGTERM", { pidFile: "/tmp/example.pid" });
 * const marker: PlannedStopMarker | undefined = ctx.plannedStopMarker;
 * if (marker && ctx.plannedStopMarkerForSelf) {
 *   console.log(`intended stop of ${marker.pid}: ${String(marker.reason ?? "no reason given")}`);
 * }
 * ```
 */
export interface PlannedStopMarker {
  /** The pid whose stop is planned. */
  pid: number;
  /** When the marker was written (ISO-8601). */
  at: string;
  /** Whatever else the writer recorded (reason, operator, …). */
  [key: string]: unknown;
}

/**
 * The facts of a shutdown, gathered synchronously from `/proc` at the moment the signal is handled.
 * Every field is plain data: `JSON.stringify(ctx)` is safe (see {@linkcode shutdownContextToJSON}).
 *
 * @example Name the likely sender of the signal
 * ```ts
 * import { type ShutdownContext, snapshotShutdownContext } from "./shutdown.ts";
 * const ctx: ShutdownContext = snapshotShutdownContext("SIGTERM");
 * const sender = ctx.underSystemd ? `systemd ${ctx.systemdInvocationId ?? ""}` : `pid ${ctx.ppid}`;
 * console.log(`${ctx.signal} at ${ctx.ts}, probably from ${sender}`);
 * ```
 */
export interface ShutdownContext {
  /** Wall-clock time of the snapshot (ISO-8601, UTC). */
  ts: string;
  /** Monotonic time of the snapshot in milliseconds (`performance.now()`, counted from process start). */
  tsMonotonic: number;
  /** The signal name (`"SIGTERM"`, …), or `"UNKNOWN"` when none was given or it has no name here. */
  signal: string;
  /** The signal number, or `null` when none was given or the name is unknown. */
  signalNumber: number | null;
  /** Why the shutdown started when it did not come from a signal (`shutdown(reason)`). */
  reason?: string;
  /** Our pid. */
  pid: number;
  /** Our parent's pid, read fresh (it is 1 or a subreaper once the original parent died). */
  ppid: number;
  /** Our own summary. */
  self: ProcessSummary;
  /** Our parent's summary: the usual suspect for who sent the signal. */
  parent: ProcessSummary;
  /** `true` when `INVOCATION_ID` is set or our parent is pid 1. */
  underSystemd: boolean;
  /** `INVOCATION_ID`: systemd's id of this run of the unit (`journalctl _SYSTEMD_INVOCATION_ID=`). */
  systemdInvocationId?: string;
  /** `JOURNAL_STREAM` (`device:inode`): stderr is connected to the journal. */
  systemdJournalStream?: string;
  /** The 1-minute load average. */
  loadavg1m?: number;
  /** `TracerPid` of `/proc/self/status`: the pid of a debugger or `strace` attached to us (0: none). */
  tracerPid?: number;
  /** The tracer's summary when `tracerPid` is not 0. */
  tracer?: ProcessSummary;
  /** The takeover marker beside `options.pidFile`, when present and well-formed. */
  takeoverMarker?: TakeoverMarker;
  /** `true` when the takeover marker names our pid as its target. */
  takeoverMarkerForSelf?: boolean;
  /** The planned-stop marker beside `options.pidFile`, when present and well-formed. */
  plannedStopMarker?: PlannedStopMarker;
  /** `true` when the planned-stop marker names our pid. */
  plannedStopMarkerForSelf?: boolean;
}

/**
 * How command lines appear in a {@linkcode ShutdownContext}.
 *
 * @example Compare the three modes on our own command line
 * ```ts
 * import { type CmdlineMode, snapshotShutdownContext } from "./shutdown.ts";
 * const modes: CmdlineMode[] = ["redacted", "full", "none"];
 * for (const cmdline of modes) console.log(cmdline, snapshotShutdownContext(15, { cmdline }).self.cmdline);
 * ```
 */
export type CmdlineMode = "redacted" | "full" | "none";

/** Default of `SnapshotOptions.cmdline`. */
const DEFAULT_CMDLINE_MODE: CmdlineMode = "redacted";

/** Command lines in a snapshot are cut to this many characters (documented on `ProcessSummary.cmdline`). */
const CMDLINE_MAX_CHARS = 300;

/**
 * Options for {@linkcode snapshotShutdownContext}.
 *
 * @example Read the markers beside the PID file, leave command lines out
 * ```ts
 * import { snapshotShutdownContext, type SnapshotOptions } from "./shutdown.ts";
 * const options: SnapshotOptions = { pidFile: "/tmp/example.pid", cmdline: "none" };
 * const ctx = snapshotShutdownContext("SIGTERM", options);
 * console.log(ctx.parent.cmdline, ctx.plannedStopMarker); // undefined, and the marker if there is one
 * ```
 */
export interface SnapshotOptions {
  /**
   * The PID file of this service: the markers `<pidFile>.takeover.json` and `<pidFile>.planned-stop.json`
   * are read beside it.
   * @default undefined (no markers are read)
   */
  pidFile?: string | undefined;
  /**
   * `"redacted"` replaces credentials in command lines with `***` (see {@linkcode redactArgv}); `"full"`
   * keeps them as they are; `"none"` leaves command lines out.
   * @default "redacted"
   */
  cmdline?: CmdlineMode | undefined;
}

/**
 * The stop timeout of the systemd unit we run in, next to what the drain needs.
 *
 * @example Turn a mismatch into advice
 * ```ts
 * import { checkSystemdStopTimeout, type StopTimeoutCheck } from "./shutdown.ts";
 * function advice(check: StopTimeoutCheck): string {
 *   return check.mismatch ? `set TimeoutStopSec=${Math.ceil(check.expectedMinSec)} in ${check.unit}` : "ok";
 * }
 * const check = await checkSystemdStopTimeout(45);
 * console.log(check ? advice(check) : "not a systemd service");
 * ```
 */
export interface StopTimeoutCheck {
  /** The unit, e.g. `"app.service"`. */
  unit: string;
  /** Its `TimeoutStopSec` in seconds (`Infinity` for `infinity`). */
  timeoutStopSec: number;
  /** The drain time the caller asked about, in seconds. */
  drainSeconds: number;
  /** `drainSeconds + headroomSeconds`: the least stop timeout that lets the drain and forensics finish. */
  expectedMinSec: number;
  /** `true` when `timeoutStopSec < expectedMinSec`: systemd's SIGKILL would cut the drain short. */
  mismatch: boolean;
}

/** Default of `CheckStopTimeoutOptions.headroomSeconds`. */
const DEFAULT_STOP_HEADROOM_SECONDS = 30;
/** Default of `CheckStopTimeoutOptions.timeoutMs`. */
const DEFAULT_SYSTEMCTL_TIMEOUT_MS = 2000;
/** Default of `CheckStopTimeoutOptions.cgroupPath`. */
const DEFAULT_CGROUP_PATH = "/proc/self/cgroup";
/** Default of `CheckStopTimeoutOptions.systemctl`. */
const DEFAULT_SYSTEMCTL = "systemctl";

/**
 * Options for {@linkcode checkSystemdStopTimeout}.
 *
 * @example Less headroom, and a shorter wait for systemctl
 * ```ts
 * import { type CheckStopTimeoutOptions, checkSystemdStopTimeout } from "./shutdown.ts";
 * const options: CheckStopTimeoutOptions = { headroomSeconds: 10, timeoutMs: 1000 };
 * const check = await checkSystemdStopTimeout(20, options);
 * console.log(check?.expectedMinSec); // 30 inside a systemd service, undefined elsewhere
 * ```
 */
export interface CheckStopTimeoutOptions {
  /**
   * Seconds on top of the drain that the stop timeout must leave (forensics, flushing, slow disks).
   * @default 30
   */
  headroomSeconds?: number | undefined;
  /**
   * The cgroup file that names our unit.
   * @default "/proc/self/cgroup"
   */
  cgroupPath?: string | undefined;
  /**
   * The `systemctl` program to ask.
   * @default "systemctl"
   */
  systemctl?: string | undefined;
  /**
   * Environment of the `systemctl` call (`PATH`, and `XDG_RUNTIME_DIR` / `DBUS_SESSION_BUS_ADDRESS` for a
   * user unit).
   * @default this process's environment
   */
  env?: Record<string, string | undefined>;
  /**
   * Kill `systemctl` and answer `null` after this many milliseconds (at most 2^31−1 − 250).
   * @default 2000
   */
  timeoutMs?: number | undefined;
}

/** Default of `DiagnosticOptions.timeoutSeconds`. */
const DEFAULT_DIAGNOSTIC_TIMEOUT_SECONDS = 10;
/** Default of `DiagnosticOptions.maxLogBytes`: 1 MiB. */
const DEFAULT_DIAGNOSTIC_MAX_BYTES = 1024 * 1024;
/** The most one diagnostic run appends to its log: 256 KiB (the child caps itself with `head -c`). */
const DIAGNOSTIC_RUN_MAX_BYTES = 256 * 1024;

/**
 * Options for {@linkcode spawnShutdownDiagnostic}.
 *
 * @example A quick diagnostic with a fixed PATH and a 2 MiB log
 * ```ts
 * import { type DiagnosticOptions, spawnShutdownDiagnostic } from "./shutdown.ts";
 * const options: DiagnosticOptions = { timeoutSeconds: 5, maxLogBytes: 2 * 1024 * 1024 };
 * options.env = { PATH: "/usr/bin:/bin" }; // where sh, ps and pstree are looked up
 * spawnShutdownDiagnostic("/tmp/example-shutdown-diag.log", "SIGTERM", options);
 * ```
 */
export interface DiagnosticOptions {
  /**
   * The child kills itself (and everything it started) after this many seconds.
   * @default 10
   */
  timeoutSeconds?: number | undefined;
  /**
   * The log never grows past this many bytes: the oldest part is dropped (counted in bytes, whatever
   * they hold) before each run. At least 524288: twice the most one run appends (256 KiB).
   * @default 1048576 (1 MiB)
   */
  maxLogBytes?: number | undefined;
  /**
   * Environment of the child; its `PATH` is also where `sh`, `ps` and the optional tools are looked up.
   * @default this process's environment
   */
  env?: Record<string, string | undefined>;
}

/**
 * One step of an orderly shutdown (stop accepting, drain, flush, close).
 *
 * @example Close the open connections, then flush
 * ```ts
 * import { installShutdown, type ShutdownPhase } from "./shutdown.ts";
 * const connections = new Set<{ close(): void }>();
 * const phases: ShutdownPhase[] = [
 *   { name: "close-connections", run: () => connections.forEach((c) => c.close()), timeoutMs: 5000 },
 *   { name: "flush", run: () => new Promise((resolve) => setTimeout(resolve, 50)) },
 * ];
 * installShutdown({ phases }).dispose(); // a real service keeps the handle installed
 * ```
 */
export interface ShutdownPhase {
  /** A short name for the log line (`phase=NAME`). */
  name: string;
  /** The work; a returned promise is awaited. */
  run: () => unknown | Promise<unknown>;
  /**
   * Give up on this phase after this many milliseconds (logged as `timeout`) and go on with the next.
   * At most 2^31−1 (a RangeError at install above that).
   * @default 10000
   */
  timeoutMs?: number;
}

/** Default of `InstallShutdownOptions.signals`. */
const DEFAULT_SHUTDOWN_SIGNALS: readonly string[] = Object.freeze(["SIGTERM", "SIGINT"]);
/** Default of `InstallShutdownOptions.forceExitMs`. */
const DEFAULT_FORCE_EXIT_MS = 30_000;
/** Default of `ShutdownPhase.timeoutMs`. */
const DEFAULT_PHASE_TIMEOUT_MS = 10_000;
/** How long the main thread gets to exit by itself before the watchdog kills it: after `forceExitMs`, and after a second signal (a free main thread logs `second-signal` and exits its own way, a blocked one is killed this much later). */
const WATCHDOG_GRACE_MS = 200;

/**
 * Exit status after a clean run, or after a planned stop / takeover marker that names us.
 *
 * @example A supervisor restarts only after an unintended stop
 * ```ts
 * import { EXIT_CLEAN } from "./shutdown.ts";
 * function shouldRestart(status: number): boolean {
 *   return status !== EXIT_CLEAN; // 0: a clean run, or a planned stop / takeover that named us
 * }
 * console.log(shouldRestart(0), shouldRestart(143)); // false true
 * ```
 */
export const EXIT_CLEAN = 0;
/**
 * Exit status when a phase threw or timed out, or the force-exit deadline was reached.
 *
 * @example See a failing phase in the exit status, without exiting
 * ```ts
 * import { EXIT_PHASE_FAILED, installShutdown } from "./shutdown.ts";
 * const phases = [{ name: "flush", run: () => Promise.reject(new Error("disk full")) }];
 * const handle = installShutdown({ phases, exit: (code) => console.log(code === EXIT_PHASE_FAILED) });
 * void handle.shutdown("test"); // logs the snapshot, phase=flush error=…, then true
 * ```
 */
export const EXIT_PHASE_FAILED = 1;

/**
 * Options for {@linkcode installShutdown}.
 *
 * @example JSON log lines, the PID file's markers and a diagnostic child
 * ```ts
 * import { installShutdown, type InstallShutdownOptions } from "./shutdown.ts";
 * const options: InstallShutdownOptions = {
 *   pidFile: "/tmp/example.pid",
 *   diagnosticLog: "/tmp/example-shutdown-diag.log",
 *   log: (line) => console.log(JSON.stringify({ msg: line })),
 * };
 * installShutdown(options).dispose(); // a real service keeps it installed
 * ```
 */
export interface InstallShutdownOptions {
  /**
   * The signals that start the shutdown (each one of `HANDLED_SIGNALS` of platform.ts). A second one (any
   * of them) ends the process at once; a repeat of the same signal within 100 ms (one Ctrl-C that
   * `deno task` or `timeout` delivers twice) counts once.
   * @default ["SIGTERM", "SIGINT"]
   */
  signals?: string[] | undefined;
  /**
   * Milliseconds from the start of the shutdown (the first signal, as heard by the watchdog thread) until
   * the process is ended whatever it is doing: by the main thread when it is free, otherwise 200 ms later
   * by the watchdog outside the main thread. `0` disables the deadline; above 2^31−1 is a RangeError.
   * @default 30000
   */
  forceExitMs?: number | undefined;
  /**
   * Where the lines go. Exceptions it throws are swallowed (logging must never stop a shutdown).
   * @default a synchronous write of the line to stderr (fd 2) that ignores every error
   */
  log?: ((line: string) => void) | undefined;
  /**
   * The steps, run in order, each with its own time limit.
   * @default []
   */
  phases?: ShutdownPhase[] | undefined;
  /**
   * The PID file: planned-stop / takeover markers beside it are reported, and when they name us the
   * exit status is 0.
   * @default undefined
   */
  pidFile?: string | undefined;
  /**
   * How command lines appear in the snapshot line.
   * @default "redacted"
   */
  cmdline?: CmdlineMode | undefined;
  /**
   * A log file for {@linkcode spawnShutdownDiagnostic}, started on the first signal.
   * @default undefined (no diagnostic child)
   */
  diagnosticLog?: string | undefined;
  /**
   * Ends the process with the status. Replace it to embed the sequence (the returned promise of
   * `shutdown()` then never settles).
   * @default the runtime's exit
   */
  exit?: ((code: number) => void) | undefined;
  /**
   * Where the install-time check of the unit's `TimeoutStopSec` looks (see
   * {@linkcode checkSystemdStopTimeout}); `false` skips the check.
   * @default {} (our own cgroup, `systemctl` on `PATH`)
   */
  systemd?: CheckStopTimeoutOptions | false | undefined;
  /**
   * Treat an uncaught exception or an unhandled promise rejection as a shutdown: the error is logged
   * (`shutdown uncaught-exception error="…"`), the phases run, and the process exits 1. During a
   * shutdown already under way such an error is logged and counts as a failed phase.
   * @default false (the runtime's own handling: print and exit 1 at once, phases skipped)
   */
  catchUncaught?: boolean | undefined;
}

/**
 * What {@linkcode installShutdown} returns. Disposable: `using` unhooks it at the end of the scope.
 *
 * @example Readiness for a load balancer, and shutting down from code after a fatal error
 * ```ts ignore
 * import { installShutdown, type ShutdownHandle } from "./shutdown.ts";
 * const handle: ShutdownHandle = installShutdown({ forceExitMs: 10_000 });
 * const ready = () => (handle.shuttingDown ? 503 : 200); // a /ready endpoint stops answering 200
 * if (!handle.watchdog.deadline) console.error("no watchdog: a blocked main thread outlives forceExitMs");
 * console.log(ready(), handle.reason); // 200 null
 * await handle.shutdown("database connection lost"); // never settles: the process exits
 * ```
 */
export interface ShutdownHandle {
  /** Starts the shutdown sequence from code (same as the first signal); later calls return the same promise. */
  shutdown(reason?: string): Promise<never>;
  /** Unhooks everything: the signal listeners, the watchdog, the timers. Idempotent. */
  dispose(): void;
  /** The same as `dispose()`, so `using handle = installShutdown(…)` works. */
  [Symbol.dispose](): void;
  /** `true` from the first signal (or `shutdown()`, or a caught uncaught error) on: stop reporting ready. */
  readonly shuttingDown: boolean;
  /**
   * Why the shutdown started: the signal name (`"SIGTERM"`), the `shutdown(reason)` text,
   * `"uncaught exception"` or `"unhandled rejection"`; `null` before.
   */
  readonly reason: string | null;
  /**
   * What the watchdog can do on this runtime (`deadline: false` when it could not start, then only a
   * main thread that still runs its timers and handlers can end the shutdown).
   */
  readonly watchdog: WatchdogCapabilities;
}

// ---------------------------------------------------------------------------------------------------
// Snapshot
// ---------------------------------------------------------------------------------------------------

/**
 * Gathers who and what is around this shutdown: signal, our and our parent's identity and command line,
 * systemd, load, a tracer, the takeover / planned-stop markers. Synchronous, never throws, well under a
 * millisecond: it reads a handful of `/proc` files and nothing else. Off Linux the `/proc` fields are
 * simply absent.
 *
 * @param signal A signal name (`"SIGTERM"`, `"TERM"`, `"sigterm"`) or number (`15`); anything else gives
 *   `signal: "UNKNOWN"` (a number is kept in `signalNumber`).
 * @param options The PID file whose markers to read, and how command lines appear.
 * @returns The context; see {@linkcode formatShutdownContext} for the log line.
 *
 * @example Log who sent SIGTERM
 * ```ts
 * import { formatShutdownContext, snapshotShutdownContext } from "./shutdown.ts";
 * const ctx = snapshotShutdownContext("SIGTERM", { pidFile: "/tmp/example.pid" });
 * console.error(formatShutdownContext(ctx));
 * console.log(ctx.parent.cmdline, ctx.underSystemd);
 * ```
 */
export function snapshotShutdownContext(
  signal?: string | number,
  options: SnapshotOptions = {},
): ShutdownContext {
  try {
    return gatherContext(signal, options ?? {});
  } catch {
    // Every read in gatherContext is guarded already; this is the last line of "never throws".
    const { name, number } = resolveSignal(signal);
    const pid = safely(getPid, 0);
    const ppid = safely(getPpid, 0);
    return {
      ts: new Date().toISOString(),
      tsMonotonic: monotonicMs(),
      signal: name,
      signalNumber: number,
      pid,
      ppid,
      self: { pid },
      parent: { pid: ppid },
      underSystemd: ppid === 1,
    };
  }
}

/**
 * Formats a context as one scannable line of `key=value` pairs, with the key names of the tool this
 * replaces (`signal=`, `signal_number=`, `pid=`, `parent_pid=`, `parent_name=`, …): `signal=` first,
 * `parent_cmdline=` last and always quoted. Values with spaces, quotes or control characters are quoted with JSON escaping, so a
 * newline or a quote inside a command line cannot break the line.
 *
 * @param ctx A context from {@linkcode snapshotShutdownContext}.
 * @returns The line, without a trailing newline.
 *
 * @example
 * ```ts
 * import { formatShutdownContext, snapshotShutdownContext } from "./shutdown.ts";
 * console.log(formatShutdownContext(snapshotShutdownContext(15)));
 * // signal=SIGTERM signal_number=15 pid=… parent_pid=… parent_name=… … parent_cmdline="bash"
 * ```
 */
export function formatShutdownContext(ctx: ShutdownContext): string {
  const pairs: string[] = [];
  const add = (key: string, value: unknown) => {
    if (value === undefined || value === null) return;
    pairs.push(`${key}=${formatValue(value)}`);
  };
  add("signal", ctx.signal);
  add("signal_number", ctx.signalNumber);
  add("reason", ctx.reason);
  add("pid", ctx.pid);
  add("parent_pid", ctx.ppid);
  add("parent_name", ctx.parent?.name);
  add("parent_state", ctx.parent?.state);
  add("parent_ppid", ctx.parent?.ppid);
  add("parent_uid", ctx.parent?.uid);
  add("self_name", ctx.self?.name);
  add("self_state", ctx.self?.state);
  add("self_uid", ctx.self?.uid);
  add("under_systemd", ctx.underSystemd);
  add("invocation_id", ctx.systemdInvocationId);
  add("journal_stream", ctx.systemdJournalStream);
  add("loadavg_1m", ctx.loadavg1m === undefined ? undefined : Number(ctx.loadavg1m.toFixed(2)));
  add("tracer_pid", ctx.tracerPid);
  add("tracer_name", ctx.tracer?.name);
  add("tracer_cmdline", ctx.tracer?.cmdline);
  if (ctx.takeoverMarker) {
    add("takeover_target_pid", ctx.takeoverMarker.targetPid);
    add("takeover_by_pid", ctx.takeoverMarker.byPid);
    add("takeover_at", ctx.takeoverMarker.at);
    add("takeover_for_self", ctx.takeoverMarkerForSelf);
  }
  if (ctx.plannedStopMarker) {
    add("planned_stop_pid", ctx.plannedStopMarker.pid);
    add("planned_stop_at", ctx.plannedStopMarker.at);
    add("planned_stop_for_self", ctx.plannedStopMarkerForSelf);
  }
  add("ts", ctx.ts);
  add("mono_ms", Number.isFinite(ctx.tsMonotonic) ? Math.round(ctx.tsMonotonic) : undefined);
  add("self_cmdline", ctx.self?.cmdline);
  pairs.push(`parent_cmdline=${quote(ctx.parent?.cmdline ?? "")}`);
  return pairs.join(" ");
}

/**
 * The context as one line of JSON, for structured logs (a context is plain data; this only makes the
 * choice of escaping explicit: U+2028 and U+2029 are escaped too so no viewer splits the line).
 *
 * @param ctx A context from {@linkcode snapshotShutdownContext}.
 * @returns One JSON object, without a trailing newline.
 *
 * @example
 * ```ts
 * import { shutdownContextToJSON, snapshotShutdownContext } from "./shutdown.ts";
 * const record = JSON.parse(shutdownContextToJSON(snapshotShutdownContext("SIGINT")));
 * console.log(record.signal, record.pid);
 * ```
 */
export function shutdownContextToJSON(ctx: ShutdownContext): string {
  return escapeLineSeparators(JSON.stringify(ctx));
}

// ---------------------------------------------------------------------------------------------------
// systemd time spans and stop timeout
// ---------------------------------------------------------------------------------------------------

/**
 * Parses a systemd time span (`TimeoutStopSec=`, `RestartSec=`, `systemctl show` output) into
 * microseconds, exactly as `systemd-analyze timespan` does: parts such as `1h 30min`, `1h30m`, `2.5s`,
 * `.5s`, a bare number as seconds, units us/usec/μs/µs, ms/msec, s/sec/second(s), m/min/minute(s),
 * h/hr/hour(s), d/day(s), w/week(s), M/month(s) (30.44 days), y/year(s) (365.25 days), `infinity`.
 * Fraction digits are truncated to whole microseconds, as systemd does; a leading `-` anywhere, an empty
 * text, an unknown unit, a NUL character or a total of 2^64-1 µs and over give `null`. Values above 2^53 µs
 * (285 years) are rounded to the nearest double.
 *
 * @param text The time span.
 * @returns Microseconds, `Infinity` for `infinity`, or `null` when systemd would reject it.
 *
 * @example
 * ```ts
 * import { parseSystemdTimespan } from "./shutdown.ts";
 * console.log(parseSystemdTimespan("1min 30s")); // 90000000
 * console.log(parseSystemdTimespan("infinity")); // Infinity
 * console.log(parseSystemdTimespan("5 parsecs")); // null
 * ```
 */
export function parseSystemdTimespan(text: string): number | null {
  if (typeof text !== "string") return null;
  const usec = parseTimespanBig(text);
  if (usec === null) return null;
  return usec === USEC_INFINITY ? Infinity : Number(usec);
}

/**
 * Compares the `TimeoutStopSec` of the systemd unit we run in with the drain time we need: the unit comes
 * from `/proc/self/cgroup` (`…/app.service`, or `…/user@1000.service/app.slice/app.service` for a user
 * unit, then asked with `--user`), the timeout from `systemctl show <unit> -p TimeoutStopUSec` with a 2 s
 * limit. A bare number in that output is microseconds (the property is `…USec`); anything else is parsed
 * with {@linkcode parseSystemdTimespan}.
 *
 * @param drainSeconds How long the drain may take, in seconds.
 * @param options Headroom on top of the drain, and what to ask (for tests and odd hosts).
 * @returns The comparison, or `null` outside a systemd service or when it cannot tell (no cgroup file,
 *   `systemctl` missing, failing, slow or answering nonsense).
 *
 * @example Warn about a unit that kills us mid-drain
 * ```ts
 * import { checkSystemdStopTimeout } from "./shutdown.ts";
 * const check = await checkSystemdStopTimeout(60);
 * if (check?.mismatch) {
 *   console.error(`${check.unit}: TimeoutStopSec=${check.timeoutStopSec}s < ${check.expectedMinSec}s`);
 * }
 * ```
 */
export async function checkSystemdStopTimeout(
  drainSeconds: number,
  options: CheckStopTimeoutOptions = {},
): Promise<StopTimeoutCheck | null> {
  const atLeastZero = (n: number) => Number.isFinite(n) && n >= 0;
  checkNumber(CHECK_STOP, "drainSeconds", drainSeconds, "a finite number >= 0", atLeastZero);
  const headroomSeconds = options.headroomSeconds ?? DEFAULT_STOP_HEADROOM_SECONDS;
  checkNumber(CHECK_STOP, "headroomSeconds", headroomSeconds, "a finite number >= 0", atLeastZero);
  const timeoutMs = options.timeoutMs ?? DEFAULT_SYSTEMCTL_TIMEOUT_MS;
  checkNumber(CHECK_STOP, "timeoutMs", timeoutMs, "a finite number > 0", (n) => Number.isFinite(n) && n > 0);
  if (timeoutMs > MAX_TIMER_MS - SYSTEMCTL_GRACE_MS) {
    throw new RangeError(
      mustBe(CHECK_STOP, "timeoutMs", `at most ${MAX_TIMER_MS - SYSTEMCTL_GRACE_MS}`, timeoutMs),
    );
  }
  const unit = systemdUnitFromCgroup(options.cgroupPath ?? DEFAULT_CGROUP_PATH);
  if (!unit) return null;
  const args = [...(unit.user ? ["--user"] : []), "show", unit.name, "-p", "TimeoutStopUSec"];
  // runCommand kills systemctl at timeoutMs but settles only once its pipes close, which a leftover
  // grandchild can delay: our own timer bounds the wait whatever happens.
  let timer: ReturnType<typeof setTimeout> | undefined;
  const result = await Promise.race([
    runCommand(options.systemctl ?? DEFAULT_SYSTEMCTL, args, { timeoutMs, env: options.env }),
    new Promise<null>((resolve) => {
      timer = setTimeout(() => resolve(null), timeoutMs + SYSTEMCTL_GRACE_MS);
    }),
  ]);
  clearTimeout(timer);
  if (result === null || result.code !== 0 || result.timedOut) return null;
  const match = /^TimeoutStopUSec=(.*)$/m.exec(result.stdout);
  if (!match) return null;
  const value = (match[1] ?? "").trim();
  const usec = /^\d+$/.test(value) ? Number(value) : parseSystemdTimespan(value);
  if (usec === null) return null;
  const timeoutStopSec = usec / 1e6;
  const expectedMinSec = drainSeconds + headroomSeconds;
  return {
    unit: unit.name,
    timeoutStopSec,
    drainSeconds,
    expectedMinSec,
    mismatch: timeoutStopSec < expectedMinSec,
  };
}

// ---------------------------------------------------------------------------------------------------
// Diagnostic child
// ---------------------------------------------------------------------------------------------------

/**
 * Starts a detached child (its own session, so it survives our death and our process group's signals)
 * that appends to `logPath`: a header, `ps` (top 60 by CPU), `pstree` of us, the load, and recent OOM /
 * kill lines from `dmesg` or the journal (best-effort: each tool only when present and permitted). Returns
 * at once. The child kills itself after `timeoutSeconds` and caps its output at 256 KiB with `head -c`.
 *
 * The log is private and cannot be redirected: a missing folder is created (`0700`); the file is opened
 * without following a symlink and must be a regular file with one link owned by us (anything else is
 * refused and left untouched); it is created `0600` (an existing one is narrowed to `0600`). Its oldest
 * part is dropped before each run, counted in bytes (whatever encoding the old lines have), so it stays
 * under `maxLogBytes` whatever the number of shutdowns. Several runs at the very same time may exceed
 * the limit by one run each until the next run trims it.
 *
 * @param logPath The log file (created when absent, with its folder).
 * @param signal The signal being handled, written in the header.
 * @param options The child's time limit, the log's size limit, the environment.
 * @returns The child's pid, or `null` when `sh` or `ps` is not on `PATH` or the child could not start.
 * @throws {TypeError | RangeError} For a bad argument; `NotOwnedFileError` (of platform.ts) when
 *   `logPath` is not a regular file of ours; the file system's error when the log cannot be created or
 *   opened (`ELOOP` for a symlink, `EACCES`, …).
 *
 * @example On SIGTERM, let a child record what the machine looked like
 * ```ts
 * import { spawnShutdownDiagnostic } from "./shutdown.ts";
 * const pid = spawnShutdownDiagnostic("/tmp/example-shutdown-diag.log", "SIGTERM", { timeoutSeconds: 5 });
 * console.log(pid === null ? "no sh/ps here" : `diagnostic child ${pid}`);
 * ```
 */
export function spawnShutdownDiagnostic(
  logPath: string,
  signal: string,
  options: DiagnosticOptions = {},
): number | null {
  if (typeof logPath !== "string" || logPath === "") {
    throw new TypeError(mustBe(DIAGNOSE, "logPath", "a non-empty path", logPath));
  }
  if (typeof signal !== "string") throw new TypeError(mustBe(DIAGNOSE, "signal", "a signal name", signal));
  const timeoutSeconds = options.timeoutSeconds ?? DEFAULT_DIAGNOSTIC_TIMEOUT_SECONDS;
  const positive = (n: number) => Number.isFinite(n) && n > 0;
  checkNumber(DIAGNOSE, "timeoutSeconds", timeoutSeconds, "a finite number > 0", positive);
  const maxLogBytes = options.maxLogBytes ?? DEFAULT_DIAGNOSTIC_MAX_BYTES;
  const leastLogBytes = 2 * DIAGNOSTIC_RUN_MAX_BYTES;
  const expectedLogBytes = `an integer of at least ${leastLogBytes}`;
  checkNumber(
    DIAGNOSE,
    "maxLogBytes",
    maxLogBytes,
    expectedLogBytes,
    (n) => Number.isInteger(n) && n >= leastLogBytes,
  );
  const env = options.env ?? undefined;
  const searchPath = env ? env["PATH"] : getEnv("PATH");
  const sh = findOnPath("sh", searchPath);
  if (!sh || !findOnPath("ps", searchPath)) return null;

  const fd = openDiagnosticLog(logPath);
  try {
    trimLogHead(fd, maxLogBytes - DIAGNOSTIC_RUN_MAX_BYTES);
    const seconds = String(Math.max(1, Math.ceil(timeoutSeconds)));
    return spawnDetached(
      sh,
      [
        "-c",
        DIAGNOSTIC_SCRIPT,
        "keelson-diagnostic",
        String(getPid()),
        signal,
        seconds,
        String(DIAGNOSTIC_RUN_MAX_BYTES - DIAGNOSTIC_TRAILER_BYTES),
      ],
      { stdoutFd: fd, stderrFd: fd, env },
    );
  } finally {
    closeFd(fd);
  }
}

// ---------------------------------------------------------------------------------------------------
// Orderly shutdown
// ---------------------------------------------------------------------------------------------------

/**
 * Hooks an orderly shutdown to the signals. On the first signal (or `shutdown(reason)`, or with
 * `catchUncaught` an uncaught error): the deadline is armed, the formatted
 * {@linkcode snapshotShutdownContext} line is logged, the optional diagnostic child starts, the phases
 * run in order, each logged as `+X.XXs phase=NAME ok|timeout|error` (seconds since the start of the
 * shutdown), then `+X.XXs shutdown total=… exit=N` and the process exits. A repeat of the same signal
 * within 100 ms (one Ctrl-C that `deno task` or `timeout` delivers twice) counts once; a different
 * signal, or the same one later, is a second signal.
 *
 * Exit status: 0 ({@linkcode EXIT_CLEAN}) after a clean run, and whenever a planned-stop or takeover
 * marker beside `pidFile` names us, however the shutdown ends (phases failed, `forceExitMs`, a second
 * signal: the stop was intended, so a supervisor must not restart us); otherwise 1
 * ({@linkcode EXIT_PHASE_FAILED}) when a phase threw or timed out, `forceExitMs` was reached or an
 * uncaught error started it; 128 + the signal number (143 for SIGTERM) when a second signal ended it
 * while the main thread still ran.
 *
 * A watchdog outside the main thread (`startWatchdog` of platform.ts) hears the first signal itself and
 * ends the process `forceExitMs` + 200 ms after it, and 200 ms after a second signal, even while the
 * main thread is blocked in a synchronous write or a busy loop, also one that was stuck before the
 * signal came: then the status is "killed by SIGKILL" (137 in a shell), whatever the markers say. It is
 * armed before anything is written, so a full stderr pipe cannot hold the process past the deadline.
 * See `handle.watchdog` for what the runtime allows (`secondSignalWhileBlocked`). Under systemd it warns
 * once at install when `forceExitMs` is not below the unit's `TimeoutStopSec` (systemd's SIGKILL would
 * always come first and the forensics would never run). Install it once per process.
 *
 * @param options Signals, phases, deadline, log, PID file, uncaught errors.
 * @returns The handle: `shutdown(reason)`, `dispose()` / `using`, `shuttingDown`, `reason`, `watchdog`.
 * @throws {TypeError | RangeError} For a bad option (a timeout above 2^31−1 ms is a RangeError); nothing
 *   is installed then.
 *
 * @example Drain an HTTP server on SIGTERM
 * ```ts
 * import { installShutdown } from "./shutdown.ts";
 * using handle = installShutdown({
 *   forceExitMs: 20_000,
 *   catchUncaught: true,
 *   phases: [
 *     { name: "stop-accepting", run: () => {}, timeoutMs: 1000 },
 *     { name: "drain", run: () => new Promise((resolve) => setTimeout(resolve, 100)), timeoutMs: 15_000 },
 *   ],
 * });
 * console.log(handle.shuttingDown); // false; `using` unhooks it at the end of the scope
 * ```
 */
export function installShutdown(options: InstallShutdownOptions = {}): ShutdownHandle {
  const fail = (name: string, expected: string, value: unknown, error: "type" | "range" = "type"): never => {
    const message = mustBe(INSTALL, name, expected, value);
    throw error === "range" ? new RangeError(message) : new TypeError(message);
  };
  if (options.signals !== undefined && (!Array.isArray(options.signals) || options.signals.length === 0)) {
    fail("signals", "a non-empty array", options.signals);
  }
  // One listener per signal: a name listed twice must not make one delivery count as two.
  const signals = [...new Set(options.signals ?? DEFAULT_SHUTDOWN_SIGNALS)];
  for (const signal of signals) {
    if (typeof signal !== "string" || !HANDLED_SIGNALS.includes(signal)) {
      fail("signals", `a list of ${HANDLED_SIGNALS.join(", ")}`, signal);
    }
  }
  const forceExitMs = options.forceExitMs ?? DEFAULT_FORCE_EXIT_MS;
  checkNumber(
    INSTALL,
    "forceExitMs",
    forceExitMs,
    "a finite number >= 0",
    (n) => Number.isFinite(n) && n >= 0,
  );
  if (forceExitMs > MAX_TIMER_MS) fail("forceExitMs", `at most ${MAX_TIMER_MS}`, forceExitMs, "range");
  const phases = [...(options.phases ?? [])];
  for (const [index, phase] of phases.entries()) {
    if (typeof phase !== "object" || phase === null || typeof phase.name !== "string" || phase.name === "") {
      fail(`phases[${index}].name`, "a non-empty string", (phase as { name?: unknown } | null)?.name);
    }
    if (typeof phase.run !== "function") fail(`phases[${index}].run`, "a function", phase.run);
    const timeoutMs = phase.timeoutMs ?? DEFAULT_PHASE_TIMEOUT_MS;
    const positive = (n: number) => Number.isFinite(n) && n > 0;
    checkNumber(INSTALL, `phases[${index}].timeoutMs`, timeoutMs, "a finite number > 0", positive);
    if (timeoutMs > MAX_TIMER_MS) {
      fail(`phases[${index}].timeoutMs`, `at most ${MAX_TIMER_MS}`, timeoutMs, "range");
    }
  }
  for (const name of ["log", "exit"] as const) {
    if (options[name] !== undefined && typeof options[name] !== "function") {
      fail(name, "a function", options[name]);
    }
  }
  if (options.catchUncaught !== undefined && typeof options.catchUncaught !== "boolean") {
    fail("catchUncaught", "a boolean", options.catchUncaught);
  }
  // Said now, not in the signal path: a snapshot taken without /proc would silently lack the sender.
  warnIfProcRefused("the shutdown snapshot cannot name the sender (parent, tracer, start times)");
  return new ShutdownSequence({
    signals,
    forceExitMs,
    phases,
    log: options.log ?? writeStderrLine,
    exit: options.exit ?? ((code: number) => platformExit(code)),
    snapshot: { pidFile: options.pidFile, cmdline: cmdlineModeOf(options) },
    diagnosticLog: options.diagnosticLog,
    systemd: options.systemd ?? {},
    catchUncaught: options.catchUncaught ?? false,
  }).install();
}

/**
 * How long a main-thread handler of a later delivery waits for the watchdog worker to count it as a
 * second signal; if the worker counted none, the delivery was a repeat of the first.
 */
const SECOND_SIGNAL_CONFIRM_MS = 150;
/** How often that wait looks at the worker's count. */
const SECOND_SIGNAL_POLL_MS = 10;
/** Timers clamp a delay above this to 1 ms on every runtime: a larger timeout is refused. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface ShutdownSettings {
  signals: string[];
  forceExitMs: number;
  phases: ShutdownPhase[];
  log: (line: string) => void;
  exit: (code: number) => void;
  snapshot: SnapshotOptions;
  diagnosticLog: string | undefined;
  systemd: CheckStopTimeoutOptions | false;
  catchUncaught: boolean;
}

/** One installed shutdown: the listeners, the watchdog, and the sequence they start. */
class ShutdownSequence {
  readonly #settings: ShutdownSettings;
  #watchdog: Watchdog | null = null;
  #unsubscribe: Array<() => void> = [];
  #disposed = false;
  #started: Promise<never> | null = null;
  #reason: string | null = null;
  #startMs = 0;
  #currentPhase: string | null = null;
  #forceTimer: ReturnType<typeof setTimeout> | undefined;
  #exited = false;
  #intended = false;
  #failures = 0;

  constructor(settings: ShutdownSettings) {
    this.#settings = settings;
  }

  install(): ShutdownHandle {
    this.#startWatchdog();
    this.#subscribe();
    this.#warnAboutDeadline();
    return this.#handle();
  }

  /**
   * Started before our own listeners: its main-thread listener then runs first and arms the deadline
   * before our handler writes anything (and its worker arms it anyway when our main thread is stuck).
   */
  #startWatchdog(): void {
    const { signals, forceExitMs } = this.#settings;
    try {
      this.#watchdog = startWatchdog({
        signals,
        secondSignalExit: true,
        secondSignalGraceMs: WATCHDOG_GRACE_MS,
        armOnFirstSignalMs: forceExitMs > 0 ? Math.min(forceExitMs + WATCHDOG_GRACE_MS, MAX_WATCHDOG_MS) : 0,
        onError: (error) => this.#log(`shutdown warning: the watchdog failed: ${describeError(error)}`),
      });
    } catch (error) {
      // Fail-open: the shutdown still works on a free main thread; the reason is logged here.
      this.#log(`shutdown warning: the watchdog could not start: ${describeError(error)}`);
    }
  }

  #subscribe(): void {
    const onDelivery = ignoreSignalRepeats((name) => this.#onSignal(name));
    try {
      for (const signal of this.#settings.signals) this.#unsubscribe.push(onSignal(signal, onDelivery));
      if (this.#settings.catchUncaught) {
        this.#unsubscribe.push(onUncaught((error, kind) => this.#onUncaught(error, kind)));
      }
    } catch (error) {
      this.dispose();
      throw error;
    }
  }

  #warnAboutDeadline(): void {
    const { forceExitMs, systemd } = this.#settings;
    if (forceExitMs > 0 && !this.#watchdog?.capabilities.deadline) {
      this.#log("shutdown warning: no watchdog thread here; forceExitMs cannot end a blocked main thread");
    }
    if (forceExitMs > 0 && systemd !== false) {
      void warnAboutStopTimeout(forceExitMs, systemd, (line) => this.#log(line), () => this.#disposed);
    }
  }

  #handle(): ShutdownHandle {
    const shuttingDown = () => this.#started !== null;
    const reason = () => this.#reason;
    const capabilities = (): WatchdogCapabilities =>
      this.#watchdog?.capabilities ?? { deadline: false, secondSignalWhileBlocked: false, mechanism: "none" };
    return {
      shutdown: (text?: string) => this.#shutdownFromCode(text),
      dispose: () => this.dispose(),
      [Symbol.dispose]: () => this.dispose(),
      get shuttingDown(): boolean {
        return shuttingDown();
      },
      get reason(): string | null {
        return reason();
      },
      get watchdog(): WatchdogCapabilities {
        return capabilities();
      },
    };
  }

  dispose(): void {
    if (this.#disposed) return;
    this.#disposed = true;
    for (const off of this.#unsubscribe) off();
    this.#unsubscribe = [];
    clearTimeout(this.#forceTimer);
    safely(() => this.#watchdog?.stop(), undefined);
  }

  #log(line: string): void {
    try {
      this.#settings.log(line);
    } catch {
      // Documented: a failing log must never stop or break the shutdown.
    }
  }

  #onSignal(name: string): void {
    if (this.#disposed) return;
    if (this.#started === null) {
      // The watchdog's own listener ran first: the deadline is armed already.
      void this.#begin(name, name);
      return;
    }
    const watchdog = this.#watchdog;
    if (!watchdog?.capabilities.secondSignalWhileBlocked) {
      this.#secondSignal(name);
      return;
    }
    // The worker stamped each delivery as it came; this handler may run late on a busy main thread, far
    // from the first one even for one Ctrl-C delivered twice. Its count decides (it may lag a little).
    const since = monotonicMs();
    const confirm = () => {
      if (this.#exited || this.#disposed) return;
      if (watchdog.signalsSeen >= 2) this.#secondSignal(name);
      else if (monotonicMs() - since < SECOND_SIGNAL_CONFIRM_MS) setTimeout(confirm, SECOND_SIGNAL_POLL_MS);
      // else: the worker counted one delivery, this was its repeat.
    };
    confirm();
  }

  #secondSignal(name: string): void {
    const code = this.#intended ? EXIT_CLEAN : 128 + (signalNumber(name) ?? 0);
    this.#log(`${this.#elapsed()} shutdown second-signal=${name} exit=${code}`);
    this.#finish(code);
  }

  #shutdownFromCode(reason: string | undefined): Promise<never> {
    if (this.#started) return this.#started;
    if (this.#disposed) return new Promise<never>(() => {});
    // Counts as the first signal (a signal during this shutdown is a second one) and arms the deadline.
    safely(() => this.#watchdog?.noteSignal(), undefined);
    const text = reason ?? "shutdown() called";
    return this.#begin(undefined, text, text);
  }

  #onUncaught(error: unknown, kind: "exception" | "rejection"): void {
    if (this.#disposed) return;
    const started = this.#started !== null;
    if (!started) safely(() => this.#watchdog?.noteSignal(), undefined); // arm before writing
    const what = kind === "exception" ? "uncaught-exception" : "unhandled-rejection";
    this.#log(`${started ? this.#elapsed() + " " : ""}shutdown ${what} error=${quote(describeError(error))}`);
    this.#failures += 1;
    if (!started) {
      const reason = kind === "exception" ? "uncaught exception" : "unhandled rejection";
      void this.#begin(undefined, reason, reason);
    }
  }

  #begin(signal: string | undefined, reason: string, ctxReason?: string): Promise<never> {
    if (this.#started) return this.#started;
    this.#startMs = monotonicMs();
    this.#reason = reason;
    this.#armForceExit();
    const ctx = snapshotShutdownContext(signal, this.#settings.snapshot);
    if (ctxReason !== undefined) ctx.reason = ctxReason;
    this.#intended = ctx.plannedStopMarkerForSelf === true || ctx.takeoverMarkerForSelf === true;
    this.#log(formatShutdownContext(ctx));
    this.#startDiagnostic(ctx.signal);
    this.#started = new Promise<never>(() => {
      void this.#runPhases();
    });
    return this.#started;
  }

  /** The main thread's own deadline: while it runs, it logs the force exit and exits its own way. */
  #armForceExit(): void {
    const { forceExitMs } = this.#settings;
    if (forceExitMs <= 0) return;
    this.#forceTimer = setTimeout(() => {
      const code = this.#intended ? EXIT_CLEAN : EXIT_PHASE_FAILED;
      this.#log(
        `${this.#elapsed()} shutdown force-exit after=${forceExitMs}ms phase=${
          formatValue(this.#currentPhase ?? "-")
        }${this.#intended ? " intended=true" : ""} exit=${code}`,
      );
      this.#finish(code);
    }, forceExitMs);
  }

  #startDiagnostic(signal: string): void {
    const { diagnosticLog } = this.#settings;
    if (!diagnosticLog) return;
    try {
      const pid = spawnShutdownDiagnostic(diagnosticLog, signal);
      this.#log(`${this.#elapsed()} shutdown diagnostic=${pid === null ? "unavailable" : `pid:${pid}`}`);
    } catch (error) {
      this.#log(`${this.#elapsed()} shutdown diagnostic=failed error=${quote(describeError(error))}`);
    }
  }

  async #runPhases(): Promise<void> {
    const { phases } = this.#settings;
    for (const phase of phases) {
      if (this.#exited) return;
      this.#currentPhase = phase.name;
      const outcome = await runPhase(phase);
      const detail = outcome.error === undefined ? "" : ` error=${quote(describeError(outcome.error))}`;
      this.#log(`${this.#elapsed()} phase=${formatValue(phase.name)} ${outcome.status}${detail}`);
      if (outcome.status !== "ok") this.#failures += 1;
    }
    this.#currentPhase = null;
    const failed = this.#failures;
    const code = this.#intended || failed === 0 ? EXIT_CLEAN : EXIT_PHASE_FAILED;
    const total = ((monotonicMs() - this.#startMs) / 1000).toFixed(2);
    this.#log(
      `${this.#elapsed()} shutdown total=${total}s phases=${phases.length} failed=${failed}` +
        `${this.#intended ? " intended=true" : ""} exit=${code}`,
    );
    this.#finish(code);
  }

  #finish(code: number): void {
    if (this.#exited) return;
    this.#exited = true;
    clearTimeout(this.#forceTimer);
    this.#settings.exit(code);
    // Only an embedding `exit` returns: it wants to go on living, so the deadline must not kill it.
    safely(() => this.#watchdog?.disarm(), undefined);
  }

  #elapsed(): string {
    return `+${((monotonicMs() - this.#startMs) / 1000).toFixed(2)}s`;
  }
}

// ---------------------------------------------------------------------------------------------------
// Private helpers: snapshot
// ---------------------------------------------------------------------------------------------------

function safely<T>(fn: () => T, fallback: T): T {
  try {
    return fn();
  } catch {
    return fallback;
  }
}

function gatherContext(signal: string | number | undefined, options: SnapshotOptions): ShutdownContext {
  const tsMonotonic = monotonicMs();
  const ts = new Date().toISOString();
  const mode = cmdlineModeOf(options);
  const { name, number } = resolveSignal(signal);
  const pid = safely(getPid, 0);

  const selfStatus = safely(() => readProcStatus(pid), null); // null off Linux
  const statusPpid = selfStatus ? Number.parseInt(selfStatus["PPid"] ?? "", 10) : NaN;
  const ppid = Number.isInteger(statusPpid) ? statusPpid : safely(getPpid, 0);

  const ctx: ShutdownContext = {
    ts,
    tsMonotonic,
    signal: name,
    signalNumber: number,
    pid,
    ppid,
    self: summarize(pid, selfStatus, mode),
    parent: summarize(ppid, safely(() => readProcStatus(ppid), null), mode),
    underSystemd: false,
  };

  const invocationId = safely(() => getEnv("INVOCATION_ID"), undefined);
  const journalStream = safely(() => getEnv("JOURNAL_STREAM"), undefined);
  ctx.underSystemd = (invocationId !== undefined && invocationId !== "") || ppid === 1;
  if (invocationId) ctx.systemdInvocationId = invocationId;
  if (journalStream) ctx.systemdJournalStream = journalStream;

  const load = safely(loadAverage, null);
  if (load && Number.isFinite(load[0])) ctx.loadavg1m = load[0];

  if (selfStatus && selfStatus["TracerPid"] !== undefined) {
    const tracerPid = Number.parseInt(selfStatus["TracerPid"], 10);
    if (Number.isInteger(tracerPid)) {
      ctx.tracerPid = tracerPid;
      if (tracerPid > 0) {
        ctx.tracer = summarize(
          tracerPid,
          safely(() => readProcStatus(tracerPid), null),
          mode,
        );
      }
    }
  }

  if (typeof options.pidFile === "string" && options.pidFile !== "") {
    const takeover = readTakeoverMarker(`${options.pidFile}.takeover.json`);
    if (takeover) {
      ctx.takeoverMarker = takeover;
      ctx.takeoverMarkerForSelf = takeover.targetPid === pid && writtenInOurLifetime(takeover.at);
    }
    const planned = readPlannedStopMarker(`${options.pidFile}.planned-stop.json`);
    if (planned) {
      ctx.plannedStopMarker = planned;
      ctx.plannedStopMarkerForSelf = planned.pid === pid && writtenInOurLifetime(planned.at);
    }
  }
  return ctx;
}

/**
 * A marker names us only if it was written after we started: a marker left by an earlier process that
 * had our pid (pid 1 in a container, or pid reuse) must not turn an unexpected stop into an intended one.
 * The one identity judge of platform.ts decides (its tolerance, its rules); where our start time is
 * unknown (no /proc) the pid alone decides; an unreadable time counts as before our start.
 */
function writtenInOurLifetime(at: string): boolean {
  const written = Date.parse(at);
  const writtenAtMs = Number.isFinite(written) ? written : -Infinity;
  return safely(() => judgeIdentity({ pid: getPid() }, { writtenAtMs }).self, false);
}

function cmdlineModeOf(options: { cmdline?: CmdlineMode | undefined }): CmdlineMode {
  const mode = options.cmdline ?? DEFAULT_CMDLINE_MODE;
  return mode === "full" || mode === "none" ? mode : "redacted";
}

function resolveSignal(signal: string | number | undefined): { name: string; number: number | null } {
  if (typeof signal === "number") {
    if (!Number.isInteger(signal) || signal <= 0) return { name: "UNKNOWN", number: null };
    return { name: safely(() => signalName(signal), undefined) ?? "UNKNOWN", number: signal };
  }
  if (typeof signal !== "string") return { name: "UNKNOWN", number: null };
  const text = signal.trim();
  if (/^\d+$/.test(text)) return resolveSignal(Number(text));
  const upper = text.toUpperCase();
  const name = upper.startsWith("SIG") ? upper : `SIG${upper}`;
  const number = safely(() => signalNumber(name), undefined);
  return number === undefined ? { name: "UNKNOWN", number: null } : { name, number };
}

function summarize(pid: number, status: Record<string, string> | null, mode: CmdlineMode): ProcessSummary {
  const summary: ProcessSummary = { pid };
  if (!status) return summary;
  if (status["Name"] !== undefined) summary.name = status["Name"];
  // Node names its main thread "MainThread", which hides the program: name it after argv[0] instead.
  if (summary.name === "MainThread") {
    const program = safely(() => readProcCmdline(pid), null)?.[0];
    if (program) summary.name = program.slice(program.lastIndexOf("/") + 1);
  }
  if (status["State"] !== undefined) summary.state = status["State"].charAt(0);
  const ppid = Number.parseInt(status["PPid"] ?? "", 10);
  if (Number.isInteger(ppid)) summary.ppid = ppid;
  const uid = Number.parseInt(status["Uid"] ?? "", 10);
  if (Number.isInteger(uid)) summary.uid = uid;
  if (mode !== "none") {
    const argv = safely(() => readProcCmdline(pid), null);
    if (argv) {
      summary.cmdline = (mode === "full" ? argv : redactArgv(argv)).join(" ").slice(0, CMDLINE_MAX_CHARS);
    }
  }
  return summary;
}

function readTakeoverMarker(path: string): TakeoverMarker | undefined {
  const data = readJsonObject(path);
  if (!data) return undefined;
  const { targetPid, byPid, at } = data;
  if (!Number.isInteger(targetPid) || !Number.isInteger(byPid)) return undefined;
  return { targetPid: targetPid as number, byPid: byPid as number, at: typeof at === "string" ? at : "" };
}

function readPlannedStopMarker(path: string): PlannedStopMarker | undefined {
  const data = readJsonObject(path);
  if (!data || !Number.isInteger(data["pid"])) return undefined;
  return { ...data, pid: data["pid"] as number, at: typeof data["at"] === "string" ? data["at"] : "" };
}

function readJsonObject(path: string): Record<string, unknown> | null {
  try {
    const text = readTextFileOrNull(path);
    if (text === null) return null;
    const data: unknown = JSON.parse(text);
    return typeof data === "object" && data !== null && !Array.isArray(data)
      ? data as Record<string, unknown>
      : null;
  } catch {
    // Unreadable or garbage marker: a snapshot never throws; the marker is simply not reported.
    return null;
  }
}

// ---------------------------------------------------------------------------------------------------
// Private helpers: formatting
// ---------------------------------------------------------------------------------------------------

/** The actions argument errors name. */
const INSTALL = "install the shutdown";
const DIAGNOSE = "start a shutdown diagnostic";
const CHECK_STOP = "check the stop timeout";

function formatValue(value: unknown): string {
  const text = typeof value === "string" ? value : String(value);
  return /^[A-Za-z0-9_.:/@+,-]+$/.test(text) ? text : quote(text);
}

function quote(text: string): string {
  return escapeLineSeparators(JSON.stringify(text));
}

function escapeLineSeparators(json: string): string {
  return json.replace(/[\u2028\u2029\u0085]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

type PhaseOutcome = { status: "ok" | "timeout" | "error"; error?: unknown };

/** Runs one phase under its own time limit; never rejects. A phase that times out keeps running. */
function runPhase(phase: ShutdownPhase): Promise<PhaseOutcome> {
  const timeoutMs = phase.timeoutMs ?? DEFAULT_PHASE_TIMEOUT_MS;
  return new Promise<PhaseOutcome>((resolve) => {
    let settled = false;
    const settle = (outcome: PhaseOutcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(outcome);
    };
    const timer = setTimeout(() => settle({ status: "timeout" }), timeoutMs);
    try {
      Promise.resolve(phase.run()).then(
        () => settle({ status: "ok" }),
        (error: unknown) => settle({ status: "error", error }),
      );
    } catch (error) {
      settle({ status: "error", error });
    }
  });
}

// ---------------------------------------------------------------------------------------------------
// Private helpers: systemd
// ---------------------------------------------------------------------------------------------------

/** How long past its timeout a killed systemctl may take to hand back its output. */
const SYSTEMCTL_GRACE_MS = 250;
const USEC_INFINITY = (1n << 64n) - 1n;
const LLONG_MAX = (1n << 63n) - 1n;
/** systemd's WHITESPACE: what it skips between parts. */
const SYSTEMD_WHITESPACE = " \t\n\r";
/** C `isspace` in the C locale: what `strtoll` skips before a number. */
const C_SPACE = " \t\n\v\f\r";
const USEC_PER_SEC = 1_000_000n;
const USEC_PER_MINUTE = 60n * USEC_PER_SEC;
const USEC_PER_HOUR = 60n * USEC_PER_MINUTE;
const USEC_PER_DAY = 24n * USEC_PER_HOUR;
/** In the order systemd tries them: the first prefix that matches wins. */
const TIMESPAN_UNITS: ReadonlyArray<readonly [string, bigint]> = [
  ["seconds", USEC_PER_SEC],
  ["second", USEC_PER_SEC],
  ["sec", USEC_PER_SEC],
  ["s", USEC_PER_SEC],
  ["minutes", USEC_PER_MINUTE],
  ["minute", USEC_PER_MINUTE],
  ["min", USEC_PER_MINUTE],
  ["months", 2_629_800n * USEC_PER_SEC],
  ["month", 2_629_800n * USEC_PER_SEC],
  ["M", 2_629_800n * USEC_PER_SEC],
  ["msec", 1000n],
  ["ms", 1000n],
  ["m", USEC_PER_MINUTE],
  ["hours", USEC_PER_HOUR],
  ["hour", USEC_PER_HOUR],
  ["hr", USEC_PER_HOUR],
  ["h", USEC_PER_HOUR],
  ["days", USEC_PER_DAY],
  ["day", USEC_PER_DAY],
  ["d", USEC_PER_DAY],
  ["weeks", 7n * USEC_PER_DAY],
  ["week", 7n * USEC_PER_DAY],
  ["w", 7n * USEC_PER_DAY],
  ["years", 31_557_600n * USEC_PER_SEC],
  ["year", 31_557_600n * USEC_PER_SEC],
  ["y", 31_557_600n * USEC_PER_SEC],
  ["usec", 1n],
  ["us", 1n],
  ["\u03bcs", 1n], // GREEK SMALL LETTER MU
  ["\u00b5s", 1n], // MICRO SIGN
];

function isDigit(c: string | undefined): boolean {
  return c !== undefined && c >= "0" && c <= "9";
}

function skipChars(text: string, at: number, set: string): number {
  while (at < text.length && set.includes(text[at] ?? "")) at += 1;
  return at;
}

/** systemd's parse_time() with seconds as the default unit; `null` for every error it returns. */
function parseTimespanBig(text: string): bigint | null {
  if (text.includes("\0")) return null; // a C string would end there; no argv can carry one
  let p = skipChars(text, 0, SYSTEMD_WHITESPACE);
  if (text.startsWith("infinity", p)) {
    return skipChars(text, p + "infinity".length, SYSTEMD_WHITESPACE) === text.length ? USEC_INFINITY : null;
  }
  let usec = 0n;
  let something = false;
  for (;;) {
    p = skipChars(text, p, SYSTEMD_WHITESPACE);
    if (p === text.length) return something ? usec : null;
    if (text[p] === "-") return null; // "Don't allow -0"
    // strtoll(p, &e, 10): C spaces, an optional sign, decimal digits.
    let q = skipChars(text, p, C_SPACE);
    let negative = false;
    if (text[q] === "+" || text[q] === "-") {
      negative = text[q] === "-";
      q += 1;
    }
    const digitsStart = q;
    while (isDigit(text[q])) q += 1;
    let integer = 0n;
    let e = p; // no conversion: strtoll leaves the end pointer at its start
    if (q > digitsStart) {
      integer = BigInt(text.slice(digitsStart, q));
      if (integer > LLONG_MAX) return null; // ERANGE from strtoll
      if (negative && integer > 0n) return null; // l < 0
      e = q;
    }
    const hasFraction = text[e] === ".";
    if (hasFraction) {
      p = e + 1;
      while (isDigit(text[p])) p += 1;
    } else if (e === p) {
      return null;
    } else {
      p = e;
    }
    const unitAt = skipChars(text, p, SYSTEMD_WHITESPACE);
    let multiplier = USEC_PER_SEC;
    let s = unitAt;
    for (const [suffix, value] of TIMESPAN_UNITS) {
      if (text.startsWith(suffix, unitAt)) {
        multiplier = value;
        s = unitAt + suffix.length;
        break;
      }
    }
    if (s === p && s !== text.length) return null; // "12.34.56", "5x"
    p = s;
    if (integer >= USEC_INFINITY / multiplier) return null;
    const k = integer * multiplier;
    if (k >= USEC_INFINITY - usec) return null;
    usec += k;
    something = true;
    if (hasFraction) {
      let m = multiplier / 10n;
      let b = e + 1;
      for (; isDigit(text[b]); b += 1, m /= 10n) {
        const part = BigInt(text.charCodeAt(b) - 48) * m;
        if (part >= USEC_INFINITY - usec) return null;
        usec += part;
      }
      if (b === e + 1) return null; // "3.", "3.sec", "0.-0"
    }
  }
}

function systemdUnitFromCgroup(cgroupPath: string): { name: string; user: boolean } | null {
  let text: string | null;
  try {
    text = readTextFileOrNull(cgroupPath);
  } catch {
    return null;
  }
  if (text === null) return null;
  // Lines are "hierarchy-id:controllers:path"; the unified (0::) line wins, then name=systemd.
  let path: string | null = null;
  for (const line of text.split("\n")) {
    const first = line.indexOf(":");
    const second = line.indexOf(":", first + 1);
    if (first < 0 || second < 0) continue;
    const controllers = line.slice(first + 1, second);
    const value = line.slice(second + 1).trim();
    if (line.startsWith("0::")) {
      path = value;
      break;
    }
    if (controllers === "name=systemd") path = value;
  }
  if (!path) return null;
  const parts = path.split("/").filter((part) => part !== "");
  for (let i = parts.length - 1; i >= 0; i -= 1) {
    const part = parts[i] ?? "";
    if (!part.endsWith(".service")) continue;
    if (/^user@\d+\.service$/.test(part)) return null; // the user manager's own subtree, not a unit of ours
    const user = parts.slice(0, i).some((above) => /^user@\d+\.service$/.test(above));
    return { name: part, user };
  }
  return null;
}

async function warnAboutStopTimeout(
  forceExitMs: number,
  where: CheckStopTimeoutOptions,
  log: (line: string) => void,
  isDisposed: () => boolean,
): Promise<void> {
  let check: StopTimeoutCheck | null;
  try {
    check = await checkSystemdStopTimeout(forceExitMs / 1000, { ...where, headroomSeconds: 0 });
  } catch (error) {
    log(`shutdown warning: cannot read the unit's TimeoutStopSec: ${describeError(error)}`);
    return;
  }
  if (!check || isDisposed()) return;
  if (forceExitMs / 1000 >= check.timeoutStopSec) {
    log(
      `shutdown warning: forceExitMs=${forceExitMs} is not below TimeoutStopSec=${check.timeoutStopSec}s of ` +
        `${check.unit}: systemd's SIGKILL comes first and the shutdown forensics never run`,
    );
  }
}

// ---------------------------------------------------------------------------------------------------
// Private helpers: diagnostic and logging
// ---------------------------------------------------------------------------------------------------

const encoder = new TextEncoder();
/** Room left in a run's budget for the one line the child's timer writes outside `head -c`. */
const DIAGNOSTIC_TRAILER_BYTES = 1024;

/** Documented: stderr may be a closed pipe during a shutdown; the line is dropped, nothing throws. */
const writeStderrLine: (line: string) => void = stderrReporter("");

function findOnPath(name: string, searchPath: string | undefined): string | null {
  for (const dir of (searchPath ?? "").split(":")) {
    if (dir === "") continue;
    const candidate = `${dir}/${name}`;
    const info = safely(() => statOrNull(candidate), null);
    if (info && info.isFile && (info.mode & 0o111) !== 0) return candidate;
  }
  return null;
}

/** Creates the log's folder (0700) and opens the log through the checks of `openOwnedAppend`. */
function openDiagnosticLog(path: string): number {
  const slash = path.lastIndexOf("/");
  const folder = slash < 0 ? "." : slash === 0 ? "/" : path.slice(0, slash);
  if (statOrNull(folder) === null) mkdirp(folder, 0o700);
  return openOwnedAppend(path, 0o600);
}

/**
 * Drops the oldest part of the log (at a line boundary) so that at most `keepBytes` remain. Bytes only:
 * a log holding Latin-1 `ps` output must keep its bytes as they are, never round-trip through UTF-8.
 */
function trimLogHead(fd: number, keepBytes: number): void {
  const size = fstat(fd).size;
  if (size <= keepBytes) return;
  const notice = encoder.encode(`[keelson: older diagnostics dropped to keep this log under its limit]\n`);
  const room = keepBytes - notice.length;
  const tail = readAt(fd, room, size - room);
  const newline = tail.indexOf(0x0a);
  const kept = newline >= 0 ? tail.subarray(newline + 1) : tail.subarray(tail.length);
  const bytes = new Uint8Array(notice.length + kept.length);
  bytes.set(notice, 0);
  bytes.set(kept, notice.length);
  ftruncate(fd, 0);
  writeAll(fd, bytes); // O_APPEND: lands at the new end, 0
}

/**
 * The diagnostic child: `sh -c SCRIPT keelson-diagnostic OURPID SIGNAL SECONDS MAXBYTES`. It is a session
 * leader, so `kill -KILL -$$` ends it and everything it started when the time is up. Its own processes
 * (whose command line is this whole script) are left out of the `ps` and `pstree` listings by their `$0`.
 */
const DIAGNOSTIC_SCRIPT = `
ourpid=$1; sig=$2; secs=$3; cap=$4; self=$0
(
  sleep "$secs" &
  sleeper=$!
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  wait "$sleeper"
  echo "[keelson: diagnostic of pid $ourpid timed out after \${secs}s]"
  kill -KILL -$$
) 2>/dev/null &
killer=$!
{
  echo "=== keelson shutdown diagnostic: pid=$ourpid signal=$sig at=$(date -u +%Y-%m-%dT%H:%M:%SZ 2>/dev/null) ==="
  echo "--- load"
  cat /proc/loadavg 2>/dev/null || uptime 2>/dev/null
  echo "--- ps (top 60 by cpu)"
  listing=$(ps -eo pid,ppid,user,stat,pcpu,pmem,rss,etime,args --sort=-pcpu 2>/dev/null) || listing=$(ps 2>&1)
  printf '%s\\n' "$listing" | grep -v -e "$self" | head -n 61
  if command -v pstree >/dev/null 2>&1; then
    echo "--- pstree $ourpid"
    pstree -alp "$ourpid" 2>&1 | grep -v -e "$self" | head -n 200
  fi
  echo "--- recent oom/kill lines"
  if command -v dmesg >/dev/null 2>&1; then
    dmesg 2>/dev/null | grep -iE 'out of memory|oom|killed process' | tail -n 20
  fi
  if command -v journalctl >/dev/null 2>&1; then
    journalctl -k -q --no-pager --since=-1h 2>/dev/null | grep -iE 'out of memory|oom|killed process' | tail -n 20
  fi
  echo "=== end of diagnostic pid=$ourpid ==="
} 2>&1 | head -c "$cap"
kill "$killer" 2>/dev/null
exit 0
`;
