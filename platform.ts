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
 * @module
 */

import * as fs from "node:fs";
import * as os from "node:os";
import process from "node:process";
import { AsyncLocalStorage } from "node:async_hooks";
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
// Errors
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

const ERRNO_NAMES: Map<number, string> = new Map(
  Object.entries((os.constants as { errno?: Record<string, number> }).errno ?? {})
    .filter(([name]) => name !== "EWOULDBLOCK" && name !== "EDEADLOCK")
    .map(([name, number]) => [number, name]),
);

// ---------------------------------------------------------------------------------------------------
// Files
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
  mode?: number;
  /**
   * Create the file when it is missing ({@linkcode openAppend} only; `false` throws `ENOENT` instead).
   * @default true
   */
  create?: boolean;
  /**
   * Fail with `EEXIST` when the file exists (`O_EXCL`, {@linkcode openAppend} only): the caller then
   * knows it created the file.
   * @default false
   */
  exclusive?: boolean;
  /**
   * Refuse a symbolic link at the path (`O_NOFOLLOW`): the open fails with `ELOOP`.
   * @default false
   */
  noFollow?: boolean;
  /**
   * Open with `O_NONBLOCK`, so a FIFO without a reader fails at once (`ENXIO`) instead of hanging.
   * Regular files ignore the flag.
   * @default false
   */
  nonBlocking?: boolean;
}

const { O_WRONLY, O_RDONLY, O_APPEND, O_CREAT, O_EXCL } = fs.constants;
const O_NOFOLLOW = fs.constants.O_NOFOLLOW ?? 0;
const O_NONBLOCK = fs.constants.O_NONBLOCK ?? 0;

function openFlags(base: number, options: OpenOptions): number {
  return base | (options.noFollow ? O_NOFOLLOW : 0) | (options.nonBlocking ? O_NONBLOCK : 0);
}

function toFileStat(s: fs.Stats): FileStat {
  const ino = typeof s.ino === "number" && s.ino > 0 ? s.ino : null;
  return {
    dev: s.dev,
    ino,
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
  applyMode(fd, options.mode);
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
  applyMode(fd, options.mode);
  return fd;
}

/**
 * Opens an existing file read-only.
 *
 * @param path The file.
 * @returns The descriptor.
 *
 * @example
 * ```ts
 * import { closeFd, fstat, openRead } from "./platform.ts";
 * const fd = openRead("/etc/hostname");
 * console.log(fstat(fd).size);
 * closeFd(fd);
 * ```
 */
export function openRead(path: string): number {
  return fs.openSync(path, O_RDONLY);
}

/**
 * Closes a descriptor.
 *
 * @param fd The descriptor.
 *
 * @example
 * ```ts
 * import { closeFd, openRead } from "./platform.ts";
 * closeFd(openRead("/etc/hostname"));
 * ```
 */
export function closeFd(fd: number): void {
  fs.closeSync(fd);
}

/**
 * One `write(2)` of `bytes` to `fd`; returns how many bytes the kernel took (possibly fewer).
 * On Deno a partial write to a pipe is continued inside the call (see {@linkcode writeAll}); for
 * regular files, which the kernel writes whole, it is one `write(2)` on every runtime.
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
  return fs.writeSync(fd, bytes, 0, bytes.length);
}

/** How long {@linkcode writeAll} sleeps on `EAGAIN`: doubles from the first to the last value. */
const EAGAIN_SLEEP_MIN_MS = 1;
const EAGAIN_SLEEP_MAX_MS = 50;

/**
 * `PIPE_BUF` on Linux: a write of at most this many bytes to a pipe is all-or-nothing, even when the
 * pipe is non-blocking (it fails with `EAGAIN` having written nothing).
 */
const PIPE_BUF = 4096;

/**
 * Trap: Deno's `node:fs` `writeSync` loops over partial writes itself and, when a non-blocking pipe
 * then answers `EAGAIN`, throws without saying how much it already wrote, so a retry would send those
 * bytes twice. On Deno, writes of more than `PIPE_BUF` to anything but a regular file therefore go out
 * in `PIPE_BUF` pieces, each of which the kernel takes whole or not at all.
 */
const WRITE_LOOPS_INTERNALLY = runtime === "deno";

/**
 * Writes all of `bytes` to `fd` synchronously: loops over partial writes and, on a non-blocking
 * descriptor (`EAGAIN`), sleeps with backoff until the reader drains it. Other errors are thrown as
 * they are, with the bytes already written in `error.bytesWritten`.
 *
 * A regular file gets one `write(2)` for the whole buffer. On Deno, a buffer of more than 4096 bytes
 * to a pipe or socket goes out in 4096-byte writes (see the trap above).
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
  const piece = WRITE_LOOPS_INTERNALLY && bytes.length > PIPE_BUF && !fs.fstatSync(fd).isFile()
    ? PIPE_BUF
    : bytes.length;
  let offset = 0;
  let sleepMs = EAGAIN_SLEEP_MIN_MS;
  while (offset < bytes.length) {
    try {
      offset += fs.writeSync(fd, bytes, offset, Math.min(piece, bytes.length - offset));
      sleepMs = EAGAIN_SLEEP_MIN_MS;
    } catch (error) {
      const code = errorCode(error);
      if (code === "EAGAIN" || code === "EWOULDBLOCK") {
        sleepSync(sleepMs);
        sleepMs = Math.min(sleepMs * 2, EAGAIN_SLEEP_MAX_MS);
        continue;
      }
      if (code === "EINTR") continue;
      if (typeof error === "object" && error !== null) {
        (error as { bytesWritten?: number }).bytesWritten = offset;
      }
      throw error;
    }
  }
}

/**
 * `fstat` of an open descriptor.
 *
 * @param fd The descriptor.
 * @returns The file's facts; `ino` is `null` when unknown.
 *
 * @example
 * ```ts
 * import { closeFd, fstat, openAppend } from "./platform.ts";
 * const fd = openAppend("/tmp/example.log");
 * console.log(fstat(fd).size);
 * closeFd(fd);
 * ```
 */
export function fstat(fd: number): FileStat {
  return toFileStat(fs.fstatSync(fd));
}

/**
 * `stat` of a path (following symlinks). Throws `ENOENT` when nothing is there.
 *
 * @param path The path.
 * @returns The file's facts; `ino` is `null` when unknown.
 *
 * @example
 * ```ts
 * import { stat } from "./platform.ts";
 * console.log(stat("/etc/hostname").isFile);
 * ```
 */
export function stat(path: string): FileStat {
  return toFileStat(fs.statSync(path));
}

/**
 * `stat` of a path, or `null` when nothing is there (`ENOENT`, `ENOTDIR`). Other errors are thrown.
 *
 * @param path The path.
 * @returns The file's facts, or `null`.
 *
 * @example
 * ```ts
 * import { statOrNull } from "./platform.ts";
 * console.log(statOrNull("/no/such/file")); // null
 * ```
 */
export function statOrNull(path: string): FileStat | null {
  try {
    return toFileStat(fs.statSync(path));
  } catch (error) {
    const code = errorCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") return null;
    throw error;
  }
}

/**
 * `lstat` of a path (a symbolic link is reported as itself, not followed), or `null` when nothing is
 * there (`ENOENT`, `ENOTDIR`). Other errors are thrown.
 *
 * @param path The path.
 * @returns The facts of the name itself, or `null`.
 *
 * @example Is the path a symbolic link?
 * ```ts
 * import { lstatOrNull } from "./platform.ts";
 * console.log(lstatOrNull("/proc/self")?.isSymbolicLink); // true on Linux
 * ```
 */
export function lstatOrNull(path: string): FileStat | null {
  try {
    return toFileStat(fs.lstatSync(path));
  } catch (error) {
    const code = errorCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") return null;
    throw error;
  }
}

/**
 * Reads up to `length` bytes of an open descriptor at `position` (`pread(2)`: the file offset is not
 * moved). Fewer bytes come back at the end of the file.
 *
 * @param fd The descriptor (opened for reading).
 * @param length How many bytes at most.
 * @param position Where to read from.
 * @returns The bytes read.
 *
 * @example Does a file end with a newline?
 * ```ts
 * import { closeFd, fstat, openRead, readAt, writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example-last.log", "one\ntwo");
 * const fd = openRead("/tmp/example-last.log");
 * console.log(readAt(fd, 1, fstat(fd).size - 1)[0] === 0x0a); // false
 * closeFd(fd);
 * ```
 */
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

/**
 * `link(2)`: makes `newPath` a second name of `existingPath`. Fails with `EEXIST` when anything is at
 * `newPath`, which makes it an atomic "publish if absent" of a fully written temporary file.
 *
 * @param existingPath The file to link.
 * @param newPath The new name.
 *
 * @example Publish a file only if nobody else did
 * ```ts
 * import { link, unlink, writeTextFile } from "./platform.ts";
 * const tmp = `/tmp/example.${Date.now()}.tmp`;
 * writeTextFile(tmp, "1234\n");
 * try {
 *   link(tmp, "/tmp/example.pid");
 * } finally {
 *   unlink(tmp);
 * }
 * ```
 */
export function link(existingPath: string, newPath: string): void {
  fs.linkSync(existingPath, newPath);
}

/**
 * `rename(2)`: atomically replaces whatever is at `newPath`.
 *
 * @param oldPath The current name.
 * @param newPath The new name.
 *
 * @example
 * ```ts
 * import { rename, writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example.new", "data\n");
 * rename("/tmp/example.new", "/tmp/example.txt");
 * ```
 */
export function rename(oldPath: string, newPath: string): void {
  fs.renameSync(oldPath, newPath);
}

/**
 * `unlink(2)`: removes a name. Throws `ENOENT` when it is absent.
 *
 * @param path The name to remove.
 *
 * @example
 * ```ts
 * import { unlink, writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example.gone", "");
 * unlink("/tmp/example.gone");
 * ```
 */
export function unlink(path: string): void {
  fs.unlinkSync(path);
}

/**
 * `unlink(2)` that treats an absent path as done. Returns whether it removed something.
 *
 * @param path The name to remove.
 * @returns `true` when a file was removed, `false` when nothing was there.
 *
 * @example
 * ```ts
 * import { unlinkIfExists } from "./platform.ts";
 * console.log(unlinkIfExists("/tmp/never-there")); // false
 * ```
 */
export function unlinkIfExists(path: string): boolean {
  try {
    fs.unlinkSync(path);
    return true;
  } catch (error) {
    if (errorCode(error) === "ENOENT") return false;
    throw error;
  }
}

/**
 * Sets a file's modification (and access) time, by default to now: a heartbeat that a file's readers
 * can judge without reading it.
 *
 * @param path The file.
 * @param timeMs The new time, in milliseconds since the epoch.
 * @default timeMs Date.now()
 *
 * @example
 * ```ts
 * import { touch, writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example.heartbeat", "alive\n");
 * touch("/tmp/example.heartbeat");
 * ```
 */
export function touch(path: string, timeMs: number = Date.now()): void {
  const time = new Date(timeMs);
  fs.utimesSync(path, time, time);
}

/**
 * `chmod(2)` of a path.
 *
 * @param path The file.
 * @param mode The permission bits.
 *
 * @example
 * ```ts
 * import { chmod, writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example.secret", "s3cret\n");
 * chmod("/tmp/example.secret", 0o600);
 * ```
 */
export function chmod(path: string, mode: number): void {
  fs.chmodSync(path, mode);
}

/**
 * `fchmod(2)` of an open descriptor: immune to the path being renamed meanwhile.
 *
 * @param fd The descriptor.
 * @param mode The permission bits.
 *
 * @example
 * ```ts
 * import { closeFd, fchmod, openAppend } from "./platform.ts";
 * const fd = openAppend("/tmp/example.log");
 * fchmod(fd, 0o640);
 * closeFd(fd);
 * ```
 */
export function fchmod(fd: number, mode: number): void {
  fs.fchmodSync(fd, mode);
}

/**
 * `fchown(2)` of an open descriptor (root only, to give a file another owner).
 *
 * @param fd The descriptor.
 * @param uid The new owner's user id.
 * @param gid The new group id.
 *
 * @example Hand a file created by root back to the owner of the one it replaces
 * ```ts ignore
 * import { closeFd, fchown, openAppend, stat } from "./platform.ts";
 * const previous = stat("/var/log/app/app.log.1");
 * const fd = openAppend("/var/log/app/app.log", { mode: previous.mode & 0o7777 });
 * fchown(fd, previous.uid, previous.gid);
 * closeFd(fd);
 * ```
 */
export function fchown(fd: number, uid: number, gid: number): void {
  fs.fchownSync(fd, uid, gid);
}

/**
 * `ftruncate(2)` of an open descriptor.
 *
 * @param fd The descriptor (opened for writing).
 * @param length The new size.
 * @default length 0
 *
 * @example
 * ```ts
 * import { closeFd, ftruncate, openAppend } from "./platform.ts";
 * const fd = openAppend("/tmp/example.log");
 * ftruncate(fd, 0);
 * closeFd(fd);
 * ```
 */
export function ftruncate(fd: number, length = 0): void {
  fs.ftruncateSync(fd, length);
}

/**
 * `fsync(2)`: flushes the file's data and metadata to the device.
 *
 * @param fd The descriptor.
 *
 * @example
 * ```ts
 * import { closeFd, fsync, openAppend } from "./platform.ts";
 * const fd = openAppend("/tmp/example.log");
 * fsync(fd);
 * closeFd(fd);
 * ```
 */
export function fsync(fd: number): void {
  fs.fsyncSync(fd);
}

/**
 * Creates a directory and its missing parents; an existing directory is fine.
 *
 * @param path The directory.
 * @param mode Permission bits of the directories created (narrowed by the umask).
 * @default mode 0o777
 *
 * @example
 * ```ts
 * import { mkdirp } from "./platform.ts";
 * mkdirp("/tmp/example/a/b");
 * ```
 */
export function mkdirp(path: string, mode = 0o777): void {
  fs.mkdirSync(path, { recursive: true, mode });
}

/**
 * The names in a directory (no `.` or `..`).
 *
 * @param path The directory.
 * @returns The entry names.
 *
 * @example
 * ```ts
 * import { readDir } from "./platform.ts";
 * console.log(readDir("/tmp").length);
 * ```
 */
export function readDir(path: string): string[] {
  return fs.readdirSync(path);
}

/**
 * Reads a whole file.
 *
 * @param path The file.
 * @returns Its bytes.
 *
 * @example
 * ```ts
 * import { readFile } from "./platform.ts";
 * console.log(readFile("/etc/hostname").length);
 * ```
 */
export function readFile(path: string): Uint8Array {
  return fs.readFileSync(path);
}

/**
 * Reads a whole file as UTF-8 text.
 *
 * @param path The file.
 * @returns Its text.
 *
 * @example
 * ```ts
 * import { readTextFile } from "./platform.ts";
 * console.log(readTextFile("/etc/hostname").trim());
 * ```
 */
export function readTextFile(path: string): string {
  return fs.readFileSync(path, "utf8");
}

/**
 * Reads a whole file as UTF-8 text, or returns `null` when it is absent (`ENOENT`, `ENOTDIR`).
 *
 * @param path The file.
 * @returns Its text, or `null`.
 *
 * @example
 * ```ts
 * import { readTextFileOrNull } from "./platform.ts";
 * console.log(readTextFileOrNull("/no/such/file")); // null
 * ```
 */
export function readTextFileOrNull(path: string): string | null {
  try {
    return fs.readFileSync(path, "utf8");
  } catch (error) {
    const code = errorCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") return null;
    throw error;
  }
}

/**
 * Reads at most the first `length` bytes of a file (fewer when the file is shorter).
 *
 * @param path The file.
 * @param length How many bytes at most.
 * @returns The bytes read.
 *
 * @example Read an SQLite header
 * ```ts
 * import { readHead, writeTextFile } from "./platform.ts";
 * writeTextFile("/tmp/example.bin", "SQLite format 3\0");
 * console.log(readHead("/tmp/example.bin", 100).length); // 16
 * ```
 */
export function readHead(path: string, length: number): Uint8Array {
  const fd = fs.openSync(path, O_RDONLY);
  try {
    const buffer = new Uint8Array(length);
    let filled = 0;
    while (filled < length) {
      const n = fs.readSync(fd, buffer, filled, length - filled, filled);
      if (n === 0) break;
      filled += n;
    }
    return buffer.subarray(0, filled);
  } finally {
    fs.closeSync(fd);
  }
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
  mode?: number;
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
 * A unique name for a temporary file next to `path` (same directory, so `rename`/`link` stay atomic).
 *
 * @param path The file the temporary stands in for.
 * @returns A path that nobody else will pick.
 *
 * @example
 * ```ts
 * import { tempPathBeside } from "./platform.ts";
 * console.log(tempPathBeside("/run/app.pid")); // /run/app.pid.<pid>.<n>.<random>.tmp
 * ```
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
// Sleeping
// ---------------------------------------------------------------------------------------------------

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

/**
 * Sleeps synchronously without burning a core (`Atomics.wait`, allowed on the main thread of all three
 * runtimes). For lock waits and `EAGAIN` backoff in synchronous code paths.
 *
 * @param ms Milliseconds to sleep.
 *
 * @example
 * ```ts
 * import { sleepSync } from "./platform.ts";
 * sleepSync(5);
 * ```
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
  const handle: unknown = setInterval(fn, ms);
  if (typeof handle === "number") {
    (deno as { unrefTimer?: (id: number) => void } | undefined)?.unrefTimer?.(handle);
  } else {
    (handle as { unref?: () => void } | null)?.unref?.();
  }
  return () => clearInterval(handle as Parameters<typeof clearInterval>[0]);
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
  const id = setTimeout(callback, ms);
  const unrefTimer = (deno as { unrefTimer?: (id: number) => void } | undefined)?.unrefTimer;
  if (unrefTimer) unrefTimer(id as unknown as number);
  else (id as unknown as { unref?: () => void }).unref?.();
  return () => clearTimeout(id);
}

// ---------------------------------------------------------------------------------------------------
// Processes
// ---------------------------------------------------------------------------------------------------

/**
 * This process's id.
 *
 * @example
 * ```ts
 * import { getPid } from "./platform.ts";
 * console.log(getPid());
 * ```
 */
export function getPid(): number {
  return deno ? deno.pid : process.pid;
}

/**
 * The parent's process id, read fresh each time (it changes when the parent dies and we are
 * re-parented).
 *
 * @example
 * ```ts
 * import { getPpid } from "./platform.ts";
 * console.log(getPpid());
 * ```
 */
export function getPpid(): number {
  if (isLinux) {
    const stat = readProcStat(getPid());
    if (stat) return stat.ppid;
  }
  return deno ? deno.ppid : process.ppid;
}

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
  return table && typeof table.SIGTERM === "number" ? { ...table } : { ...FALLBACK_SIGNALS };
})();

/**
 * The number of a signal on this OS (`"SIGTERM"` → 15 on Linux), or `undefined` for an unknown name.
 *
 * @param name A signal name such as `"SIGTERM"`.
 * @returns Its number, or `undefined`.
 *
 * @example
 * ```ts
 * import { signalNumber } from "./platform.ts";
 * console.log(signalNumber("SIGTERM")); // 15 on Linux
 * ```
 */
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
  for (const [name, number] of Object.entries(SIGNAL_NUMBERS)) {
    if (number === signal && name !== "SIGIOT" && name !== "SIGPOLL") return name;
  }
  return undefined;
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
  if (!Number.isInteger(pid) || pid <= 0) {
    throw new RangeError(`Cannot signal pid ${JSON.stringify(pid)}: not a positive integer`);
  }
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

/**
 * Clock ticks per second of `/proc` times (`sysconf(_SC_CLK_TCK)`: 100 on Linux x86_64 and arm64).
 *
 * @example How long after boot this process started
 * ```ts
 * import { CLOCK_TICKS_PER_SECOND, getPid, readProcStat } from "./platform.ts";
 * const stat = readProcStat(getPid());
 * if (stat !== null) console.log(`started ${stat.startTicks / CLOCK_TICKS_PER_SECOND} s after boot`);
 * ```
 */
export const CLOCK_TICKS_PER_SECOND = 100;

let bootTimeCache: number | null | undefined;

/**
 * The boot time in milliseconds since the epoch (`btime` of `/proc/stat`), or `null` off Linux.
 *
 * @example
 * ```ts
 * import { bootTimeMs } from "./platform.ts";
 * console.log(bootTimeMs() === null ? "unknown" : new Date(bootTimeMs()!).toISOString());
 * ```
 */
export function bootTimeMs(): number | null {
  if (bootTimeCache !== undefined) return bootTimeCache;
  bootTimeCache = null;
  if (isLinux) {
    try {
      const match = /^btime (\d+)$/m.exec(fs.readFileSync("/proc/stat", "utf8"));
      if (match) bootTimeCache = Number(match[1]) * 1000;
    } catch {
      // No /proc/stat (a restricted container): the boot time stays unknown.
    }
  }
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
  if (!stat || boot === null) return null;
  return boot + Math.round((stat.startTicks * 1000) / CLOCK_TICKS_PER_SECOND);
}

/**
 * `/proc/<pid>/status` as a map of field → value (`Name`, `State`, `PPid`, `Uid`, `TracerPid`, …),
 * or `null` off Linux or when the process is gone.
 *
 * @param pid The pid.
 * @returns The fields, values trimmed.
 *
 * @example
 * ```ts
 * import { getPid, readProcStatus } from "./platform.ts";
 * console.log(readProcStatus(getPid())?.TracerPid); // "0" unless traced
 * ```
 */
export function readProcStatus(pid: number): Record<string, string> | null {
  if (!isLinux || !Number.isInteger(pid) || pid <= 0) return null;
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  } catch {
    return null;
  }
  const fields: Record<string, string> = {};
  for (const line of text.split("\n")) {
    const colon = line.indexOf(":");
    if (colon > 0) fields[line.slice(0, colon)] = line.slice(colon + 1).trim();
  }
  return fields;
}

/**
 * `/proc/<pid>/cmdline` as argv, or `null` off Linux, when the process is gone, or for a kernel
 * thread / zombie (empty cmdline).
 *
 * @param pid The pid.
 * @returns The arguments.
 *
 * @example
 * ```ts
 * import { getPid, readProcCmdline } from "./platform.ts";
 * console.log(readProcCmdline(getPid())?.[0]);
 * ```
 */
export function readProcCmdline(pid: number): string[] | null {
  if (!isLinux || !Number.isInteger(pid) || pid <= 0) return null;
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/cmdline`, "utf8");
  } catch {
    return null;
  }
  if (text === "") return null;
  const args = text.split("\0");
  if (args[args.length - 1] === "") args.pop();
  return args;
}

/**
 * The 1, 5 and 15 minute load averages, or `null` where the OS does not report them.
 *
 * @example
 * ```ts
 * import { loadAverage } from "./platform.ts";
 * console.log(loadAverage()?.[0]);
 * ```
 */
export function loadAverage(): [number, number, number] | null {
  const [one, five, fifteen] = os.loadavg();
  if (process.platform === "win32") return null;
  return [one, five, fifteen];
}

/**
 * The host name.
 *
 * @example
 * ```ts
 * import { hostname } from "./platform.ts";
 * console.log(hostname());
 * ```
 */
export function hostname(): string {
  return os.hostname();
}

/**
 * The real user id, or `null` where the OS has none (Windows).
 *
 * @example
 * ```ts
 * import { getUid } from "./platform.ts";
 * console.log(getUid());
 * ```
 */
export function getUid(): number | null {
  return typeof process.getuid === "function" ? process.getuid() : null;
}

/**
 * This process's argv as the user typed it: the runtime executable, then the script and its
 * arguments (the same on all three runtimes).
 *
 * @example
 * ```ts
 * import { processArgv } from "./platform.ts";
 * console.log(processArgv().length > 0);
 * ```
 */
export function processArgv(): string[] {
  return [...process.argv];
}

/**
 * Reads an environment variable; `undefined` when unset.
 *
 * @param name The variable.
 * @returns Its value.
 *
 * @example
 * ```ts
 * import { getEnv } from "./platform.ts";
 * console.log(getEnv("INVOCATION_ID") ?? "not under systemd");
 * ```
 */
export function getEnv(name: string): string | undefined {
  return process.env[name];
}

/**
 * Sets an environment variable for this process and the children it spawns later.
 *
 * @param name The variable.
 * @param value Its value.
 *
 * @example
 * ```ts
 * import { setEnv } from "./platform.ts";
 * setEnv("LANG", "C");
 * ```
 */
export function setEnv(name: string, value: string): void {
  process.env[name] = value;
}

/**
 * Removes an environment variable.
 *
 * @param name The variable.
 *
 * @example
 * ```ts
 * import { deleteEnv } from "./platform.ts";
 * deleteEnv("INVOCATION_ID");
 * ```
 */
export function deleteEnv(name: string): void {
  delete process.env[name];
}

/**
 * Ends the process at once with `code`.
 *
 * @param code The exit status.
 * @default code 0
 *
 * @example
 * ```ts ignore
 * import { exit } from "./platform.ts";
 * exit(1);
 * ```
 */
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
/** What the runtime refused us (Deno's own "NotCapable" messages name the missing flag). */
const identityRefusals: string[] = [];
let identityProbed = false;
let identityWarned = false;

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

function noteNotCapable(error: unknown): void {
  if ((error as { name?: unknown } | null)?.name !== "NotCapable") return;
  const text = error instanceof Error ? error.message : String(error);
  // "Requires all access to "/proc/42/stat", …": one entry per kind of refusal, not per path.
  const kind = text.replace(/"[^"]*"/g, "").replace(/,.*$/, "").trim();
  if (!identityRefusals.some((seen) => seen.startsWith(kind))) identityRefusals.push(text);
}

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
    const read = identityOf(pid);
    selfIdentityCache = {
      pid,
      startTicks: read?.startTicks ?? null,
      startTime: read?.startTime ?? null,
      bootId: currentBootId(),
      pidNamespace: read?.pidNamespace ?? null,
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
  if (!Number.isInteger(pid) || pid <= 0) return null;
  if (!isLinux) return existsOrUnknown(pid) ? emptyIdentity(pid) : null;
  const text = readProcText(`/proc/${pid}/stat`);
  if (text === null) {
    // No /proc entry: gone, or /proc is refused us (then only kill(pid, 0) can tell).
    return identityRefusals.length > 0 && existsOrUnknown(pid) ? emptyIdentity(pid) : null;
  }
  const stat = parseProcStat(text);
  if (stat === null || stat.state === "Z") return null;
  const boot = bootTimeMs();
  return {
    pid,
    startTicks: stat.startTicks,
    startTime: boot === null ? null : boot + Math.round((stat.startTicks * 1000) / CLOCK_TICKS_PER_SECOND),
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
    selfIdentity(); // reading our own identity notes every refusal
    if (isLinux) readProcText("/proc/stat"); // bootTimeMs() swallows its errors: probe it here
  }
  if (identityRefusals.length === 0) return null;
  return `run Deno with --allow-all (-A); it refuses /proc reads without it, whatever --allow-read says (${
    identityRefusals.join("; ")
  })`;
}

function warnIdentityDegraded(): void {
  if (identityWarned) return;
  const problem = identityPermissionProblem();
  if (problem === null) return;
  identityWarned = true;
  try {
    fs.writeSync(
      2,
      `keelson: process identities cannot be read, so a reused PID may be judged alive: ${problem}\n`,
    );
  } catch {
    // stderr is gone: there is nowhere left to report to.
  }
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
  if (otherNs || otherHost) {
    const where = otherHost
      ? `written on host ${JSON.stringify(host)} (this is ${JSON.stringify(me.hostname)})`
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
    return verdict(false, "pid", `pid ${JSON.stringify(pid)} is not a process id`);
  }
  const live = identityOf(pid);
  if (live === null) {
    const zombie = readProcStat(pid)?.state === "Z";
    return verdict(
      false,
      "pid",
      zombie ? `process ${pid} has exited (a zombie not yet reaped)` : `process ${pid} is gone`,
    );
  }
  const ticks = record.startTicks ?? null;
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

function positiveOr(value: number | null | undefined, fallback: number): number {
  return typeof value === "number" && Number.isFinite(value) && value > 0 ? value : fallback;
}

function isoTime(ms: number): string {
  const date = new Date(ms);
  return Number.isNaN(date.getTime()) ? String(ms) : date.toISOString();
}

// ---------------------------------------------------------------------------------------------------
// Signals
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
      `Cannot subscribe to signal ${JSON.stringify(signal)}: expected one of ${HANDLED_SIGNALS.join(", ")}`,
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
  stdoutFd?: number;
  /** Descriptor for the child's stderr. @default the same as `stdoutFd` */
  stderrFd?: number;
  /** Environment of the child. @default this process's environment */
  env?: Record<string, string | undefined>;
  /** Working directory. @default this process's */
  cwd?: string;
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
  timeoutMs?: number;
  /** Bytes or text for its stdin. @default undefined (stdin is /dev/null) */
  input?: string | Uint8Array;
  /** Environment of the command. @default this process's environment */
  env?: Record<string, string | undefined>;
  /** Working directory. @default this process's */
  cwd?: string;
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

/**
 * Default of {@linkcode RunCommandOptions.timeoutMs}.
 *
 * @example Give a slow command more time than the default
 * ```ts
 * import { DEFAULT_COMMAND_TIMEOUT_MS, runCommand } from "./platform.ts";
 * const timeoutMs = 3 * DEFAULT_COMMAND_TIMEOUT_MS; // 30 s instead of 10 s
 * const result = await runCommand("sh", ["-c", "sync; uptime"], { timeoutMs });
 * console.log(result.code, result.timedOut);
 * ```
 */
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

// ---------------------------------------------------------------------------------------------------
// Standard input
// ---------------------------------------------------------------------------------------------------

/**
 * This process's stdin as a stream of byte chunks, from the runtime's fastest source
 * (`Deno.stdin.readable`, `Bun.stdin.stream()`, `process.stdin`).
 *
 * @example Count the bytes on stdin
 * ```ts
 * import { stdinChunks } from "./platform.ts";
 * let total = 0;
 * for await (const chunk of stdinChunks()) total += chunk.length;
 * console.log(total);
 * ```
 */
export function stdinChunks(): AsyncIterable<Uint8Array> {
  const denoStdin = (globalThis as { Deno?: { stdin: { readable: ReadableStream<Uint8Array> } } })
    .Deno?.stdin;
  if (denoStdin) return denoStdin.readable;
  if (bun) return bun.stdin.stream();
  return process.stdin as AsyncIterable<Uint8Array>;
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

/**
 * Creates a store that binds a value to an async call tree (`AsyncLocalStorage`, available on all
 * three runtimes).
 *
 * @example
 * ```ts
 * import { createContextStore } from "./platform.ts";
 * const requestId = createContextStore<string>();
 * await requestId.run("req-1", async () => {
 *   await Promise.resolve();
 *   console.log(requestId.get()); // "req-1"
 * });
 * ```
 */
export function createContextStore<T>(): ContextStore<T> {
  const storage = new AsyncLocalStorage<T>();
  return {
    run: (value, fn) => storage.run(value, fn),
    get: () => storage.getStore(),
  };
}

// ---------------------------------------------------------------------------------------------------
// Running scripts with this runtime
// ---------------------------------------------------------------------------------------------------

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

// --- Watchdog: ends the process from outside the main thread

// A JavaScript signal handler or timer never runs while the main thread is blocked in a synchronous
// syscall (a `write` to a full pipe resumes after every signal), so "force exit after N ms" and "a second
// signal exits at once" need a thread of their own. The watchdog is one `node:worker_threads` Worker
// (on all three runtimes, unref'd so it never keeps the process alive) that shares a SharedArrayBuffer
// with the main thread: `arm()` writes the deadline there and wakes the worker with `Atomics.notify`, so
// a main thread that never yields again after arming is still ended on time. The worker ends the
// process with SIGKILL of its own pid: the exit status a parent sees is "killed by SIGKILL" (137 in a
// shell), the only ending that no handler, blocked syscall or stuck finaliser can delay.
//
// Counting signals outside the main thread takes a different route per runtime: Deno runs
// `Deno.addSignalListener` in the worker; Node's `process.on` is main-thread only, so the worker (started
// with `--expose-internals`) opens its own libuv signal handle through the internal `signal_wrap`
// binding, and libuv wakes every loop that has one; Bun's workers get no signals, so the worker uses
// `bun:ffi` and `sigaction(2)` to add SA_RESETHAND to Bun's own handler and lets the kernel count.
// Where none works (a Node without the internal binding, Bun off Linux), only the main thread counts.

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
   * @default ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"] ({@linkcode DEFAULT_WATCHDOG_SIGNALS})
   */
  signals?: string[];
  /**
   * When a second delivery of any of `signals` arrives (counted from the first, whether or not the main
   * thread handled the first), end the process at once, even while the main thread is blocked in a
   * synchronous syscall where the runtime allows it (see {@linkcode Watchdog.capabilities}).
   *
   * The first delivery is your handlers' business. When the program has no handler of its own for it,
   * the watchdog stops and re-raises it, so the default action still ends the process; but if that
   * first delivery comes while the main thread is blocked, the program survives it until the second.
   * @default true ({@linkcode DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT})
   */
  secondSignalExit?: boolean;
  /**
   * After a second signal, how long the main thread gets to end the process by itself (a handler that
   * logs and exits) before the watchdog kills it. While the main thread is free its own exit then
   * decides the exit status; while it is blocked the watchdog acts once the grace is over. Bun's
   * mechanism is the kernel's default action, which no grace can delay.
   * @default 0 ({@linkcode DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS}: at once)
   */
  secondSignalGraceMs?: number;
  /**
   * Called when the worker fails (it could not start, or died). The watchdog then does nothing more;
   * `capabilities.deadline` turns `false`.
   * @default writes one line to stderr
   */
  onError?: (error: unknown) => void;
}

/**
 * Default of {@linkcode WatchdogOptions.signals}.
 *
 * @example The default signals without SIGHUP
 * ```ts
 * import { DEFAULT_WATCHDOG_SIGNALS, startWatchdog } from "./platform.ts";
 * const signals = DEFAULT_WATCHDOG_SIGNALS.filter((signal) => signal !== "SIGHUP"); // SIGHUP reloads
 * const watchdog = startWatchdog({ signals });
 * watchdog.stop();
 * ```
 */
export const DEFAULT_WATCHDOG_SIGNALS: readonly string[] = Object.freeze([
  "SIGTERM",
  "SIGINT",
  "SIGHUP",
  "SIGQUIT",
]);

/**
 * Default of {@linkcode WatchdogOptions.secondSignalGraceMs}: the watchdog acts at once.
 *
 * @example Give a second-signal handler 250 ms to log and exit
 * ```ts
 * import { DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS, startWatchdog } from "./platform.ts";
 * const watchdog = startWatchdog({ secondSignalGraceMs: DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS + 250 });
 * watchdog.stop();
 * ```
 */
export const DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS = 0;

/**
 * Default of {@linkcode WatchdogOptions.secondSignalExit}.
 *
 * @example Let the environment override the default
 * ```ts
 * import { DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT, getEnv, startWatchdog } from "./platform.ts";
 * const setting = getEnv("SECOND_SIGNAL_EXIT"); // "0" or "1", usually unset
 * const secondSignalExit = setting === undefined ? DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT : setting === "1";
 * const watchdog = startWatchdog({ secondSignalExit });
 * watchdog.stop();
 * ```
 */
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
   * `true` when a second signal ends the process even while the main thread is blocked; `false` when
   * only a main thread that still runs its handlers can count (then the second signal works only when
   * the main thread is not stuck).
   */
  secondSignalWhileBlocked: boolean;
  /**
   * How signals are seen outside the main thread: `"deno-worker-signal-listener"` (Deno),
   * `"node-internal-signal-wrap"` (Node: its internal `signal_wrap` binding in a Worker started with
   * `--expose-internals`), `"bun-ffi-sigaction"` (Bun on Linux x86_64/arm64: SA_RESETHAND on Bun's
   * handler through `bun:ffi`), `"main-thread-only"` (none of these works here), or `"off"` when
   * `secondSignalExit` is `false`.
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
   * Re-arming replaces the deadline.
   *
   * @param ms Milliseconds from now, 0 to {@linkcode MAX_WATCHDOG_MS}.
   */
  arm(ms: number): void;
  /** Cancels the deadline, if any. Signal counting goes on. */
  disarm(): void;
  /**
   * Counts one delivery of a counted signal that the watchdog could not see itself (for example a
   * shutdown your code started for a reason it treats like a first signal). Deliveries of
   * `options.signals` are counted without it.
   */
  noteSignal(): void;
  /** How many deliveries of the counted signals were seen so far (by either thread, not double-counted). */
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
 * set with `arm()`, and (by default) at the second delivery of a termination signal.
 *
 * Waits synchronously (a few tens of milliseconds) until the worker is up, so `arm()` works even if the
 * main thread never yields afterwards and `capabilities` is final on return. The worker never keeps the
 * process alive, with or without `stop()`.
 *
 * How the process ends: a deadline, `noteSignal()`, or a second signal on Deno and Node end it with
 * SIGKILL (exit status 137 in a shell; `signal === "SIGKILL"` for `node:child_process`). On Bun a
 * second signal ends it by that signal's default action ("killed by SIGTERM", 143), because the kernel
 * had reset the action after the first one. A first signal with no handler of the program's own keeps
 * its default action (the watchdog re-raises it).
 *
 * Runtime support, as measured on Deno 2.9, Bun 1.4 and Node 24 (Linux): the deadline works everywhere;
 * a second signal ends a blocked main thread on all three (see {@linkcode WatchdogCapabilities}
 * `mechanism`). On Node this relies on an internal binding: where it is missing,
 * `capabilities.secondSignalWhileBlocked` is `false` and only a main thread that still runs its
 * handlers counts.
 *
 * @param options Which signals count, whether a second one exits, where worker failures go.
 * @returns The watchdog; call `stop()` when done.
 *
 * @example Bound a shutdown to 5 s even if a write blocks forever
 * ```ts
 * import { onSignal, startWatchdog } from "./platform.ts";
 * const watchdog = startWatchdog();
 * const off = onSignal("SIGTERM", () => {
 *   watchdog.arm(5_000); // from here on, the process ends in 5 s whatever happens
 *   // ... flush, close, then exit
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
    throw new TypeError(`Invalid secondSignalExit ${String(secondSignalExit)}: expected a boolean`);
  }
  const graceMs = options.secondSignalGraceMs ?? DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS;
  if (typeof graceMs !== "number") {
    throw new TypeError(`Invalid secondSignalGraceMs ${String(graceMs)}: expected a number of milliseconds`);
  }
  if (!Number.isFinite(graceMs) || graceMs < 0 || graceMs > MAX_WATCHDOG_MS) {
    throw new RangeError(`Invalid secondSignalGraceMs ${graceMs}: expected 0 to ${MAX_WATCHDOG_MS}`);
  }
  const onError = options.onError ?? reportWatchdogError;
  if (typeof onError !== "function") {
    throw new TypeError(`Invalid onError ${String(onError)}: expected a function`);
  }
  const counted = secondSignalExit ? signals : [];
  const shared = new SharedArrayBuffer(WD_BYTES);
  const cells = new Int32Array(shared, 0, WD_CELLS);
  const floats = new Float64Array(shared, WD_FLOATS_OFFSET, 2);
  let stopped = false;
  let reported = false;

  const wake = () => {
    Atomics.add(cells, WD_WAKE, 1);
    Atomics.notify(cells, WD_WAKE);
  };
  // The main thread counts what its own handlers see; the worker counts what it sees; the total is the
  // larger of the two (a delivery both see is counted once). Subscribing first also makes Bun install
  // its handler, which the Bun worker then arms (see WATCHDOG_WORKER_SOURCE). When our listener is the
  // only one, nobody handles the signal: stop and re-raise it, so its default action happens as if
  // there were no watchdog.
  let unsubscribe = counted.map((signal) =>
    onSignal(signal, () => {
      Atomics.add(cells, WD_MAIN_SEEN, 1);
      wake();
      if (!stopped && signalListenerCount(signal) === 1) {
        stop();
        kill(getPid(), signal);
      }
    })
  );
  const release = () => {
    for (const off of unsubscribe) off();
    unsubscribe = [];
  };
  const fail = (error: unknown) => {
    Atomics.store(cells, WD_READY, WD_READY_FAILED);
    release(); // without a worker, absorbing the first signal would only take its default action away
    if (reported || stopped) return;
    reported = true;
    onError(error);
  };
  let worker: Worker;
  try {
    worker = createWatchdogWorker(shared, counted, secondSignalExit, graceMs);
  } catch (error) {
    release();
    throw error;
  }
  worker.on("error", fail);
  worker.on("exit", (code) => {
    if (!stopped) fail(new Error(`The watchdog worker exited unexpectedly with code ${code}`));
  });
  worker.unref();

  // The worker boots on its own thread: waiting here does not need our event loop.
  const bootDeadline = performance.now() + WD_BOOT_TIMEOUT_MS;
  while (Atomics.load(cells, WD_READY) === WD_READY_BOOTING) {
    const left = bootDeadline - performance.now();
    if (left <= 0) break;
    Atomics.wait(cells, WD_READY, WD_READY_BOOTING, left);
  }
  // A worker that threw while booting marked itself failed; its "error" event brings the cause later.
  if (Atomics.compareExchange(cells, WD_READY, WD_READY_BOOTING, WD_READY_FAILED) === WD_READY_BOOTING) {
    fail(new Error(`The watchdog worker did not start within ${WD_BOOT_TIMEOUT_MS} ms`));
  }

  const mechanism = !secondSignalExit ? "off" : WD_MECHANISMS[Atomics.load(cells, WD_SIGNALS)] ??
    "main-thread-only";
  const blockedToo = secondSignalExit && Atomics.load(cells, WD_SIGNALS) !== WD_SIGNALS_MAIN_ONLY;

  const stop = () => {
    if (stopped) return;
    stopped = true;
    Atomics.store(cells, WD_STATE, WD_STATE_STOPPED);
    wake();
    // The worker puts back what it changed (Bun: the signal actions) and lets its signal handles go; wait
    // for that before unsubscribing, so no signal is left with a handler and no listener.
    const until = performance.now() + WD_STOP_TIMEOUT_MS;
    while (Atomics.load(cells, WD_READY) === WD_READY_UP) {
      const left = until - performance.now();
      if (left <= 0) break;
      Atomics.wait(cells, WD_READY, WD_READY_UP, left);
    }
    release();
    Promise.resolve(worker.terminate()).catch(() => {});
  };

  return {
    arm(ms: number): void {
      if (typeof ms !== "number") {
        throw new TypeError(`Invalid watchdog deadline ${String(ms)}: expected a number of milliseconds`);
      }
      if (!Number.isFinite(ms) || ms < 0 || ms > MAX_WATCHDOG_MS) {
        throw new RangeError(`Invalid watchdog deadline ${String(ms)}: expected 0 to ${MAX_WATCHDOG_MS} ms`);
      }
      if (stopped) throw new Error("Cannot arm a watchdog that was stopped");
      floats[WD_ARM_MS] = ms;
      floats[WD_ARMED_AT] = Date.now();
      Atomics.add(cells, WD_ARM_GEN, 1);
      Atomics.store(cells, WD_STATE, WD_STATE_ARMED);
      wake();
    },
    disarm(): void {
      if (stopped) return;
      Atomics.store(cells, WD_STATE, WD_STATE_IDLE);
      Atomics.add(cells, WD_ARM_GEN, 1);
      wake();
    },
    noteSignal(): void {
      if (stopped) return;
      Atomics.add(cells, WD_MAIN_SEEN, 1);
      wake();
    },
    get signalsSeen(): number {
      return Math.max(Atomics.load(cells, WD_MAIN_SEEN), Atomics.load(cells, WD_WORKER_SEEN));
    },
    get capabilities(): WatchdogCapabilities {
      const up = !stopped && Atomics.load(cells, WD_READY) === WD_READY_UP;
      return { deadline: up, secondSignalWhileBlocked: up && blockedToo, mechanism };
    },
    stop,
    [Symbol.dispose]: stop,
  };
}

// Layout of the shared cells (Int32) and floats (Float64) of a watchdog.
const WD_WAKE = 0; // bumped on every change; the worker waits on it
const WD_STATE = 1; // idle, armed, stopped
const WD_ARM_GEN = 2; // bumped by arm() and disarm(): the worker recomputes its deadline
const WD_READY = 3; // booting, up, failed
const WD_SIGNALS = 4; // which mechanism the worker got working (index into WD_MECHANISMS)
const WD_MAIN_SEEN = 5; // deliveries the main thread saw
const WD_WORKER_SEEN = 6; // deliveries the worker saw
const WD_CELLS = 7;
const WD_FLOATS_OFFSET = Math.ceil(WD_CELLS / 2) * 8; // Float64Array needs 8-byte alignment
const WD_ARM_MS = 0;
const WD_ARMED_AT = 1; // Date.now() at arm(): the worker subtracts its wake-up latency
const WD_BYTES = WD_FLOATS_OFFSET + 2 * 8;
const WD_STATE_IDLE = 0;
const WD_STATE_ARMED = 1;
const WD_STATE_STOPPED = 2;
const WD_READY_BOOTING = 0;
const WD_READY_UP = 1;
const WD_READY_FAILED = -1;
const WD_READY_STOPPED = 2;
const WD_SIGNALS_MAIN_ONLY = 0;
const WD_MECHANISMS = [
  "main-thread-only",
  "deno-worker-signal-listener",
  "node-internal-signal-wrap",
  "bun-ffi-sigaction",
];
/** How long startWatchdog waits for the worker to come up (generous: a loaded 2-core machine). */
const WD_BOOT_TIMEOUT_MS = 10_000;
/** How often the Bun worker looks at the signal actions. */
const WD_BUN_POLL_MS = 20;
/** How long stop() waits for the worker to put things back. */
const WD_STOP_TIMEOUT_MS = 1_000;

function validateWatchdogSignals(signals: unknown): string[] {
  if (!Array.isArray(signals)) {
    throw new TypeError(`Invalid signals ${String(signals)}: expected an array of signal names`);
  }
  for (const signal of signals) {
    if (typeof signal !== "string" || !HANDLED_SIGNALS.includes(signal)) {
      throw new TypeError(
        `Invalid signal ${JSON.stringify(signal)} in signals: expected one of ${HANDLED_SIGNALS.join(", ")}`,
      );
    }
  }
  return [...new Set(signals as string[])];
}

function reportWatchdogError(error: unknown): void {
  const text = error instanceof Error ? error.message : String(error);
  try {
    fs.writeSync(2, `keelson watchdog: ${text}\n`);
  } catch {
    // stderr is gone: there is nowhere left to report to.
  }
}

function createWatchdogWorker(
  shared: SharedArrayBuffer,
  signals: string[],
  exitOnSecond: boolean,
  graceMs: number,
): Worker {
  const options = {
    eval: true,
    workerData: { shared, signals, exitOnSecond, graceMs, runtime },
    // Trap: piping a worker's stdio into ours makes Node set O_NONBLOCK on fds 1 and 2.
    stdout: true,
    stderr: true,
  };
  if (runtime === "node" && signals.length > 0) {
    // Trap: the warning that loading the internals prints, left unread in the worker's stderr stream,
    // makes Node hang at exit; --no-warnings keeps that stream empty.
    try {
      return new Worker(WATCHDOG_WORKER_SOURCE, {
        ...options,
        execArgv: ["--expose-internals", "--no-warnings"],
      });
    } catch {
      // A Node that refuses the flag in a Worker: count signals on the main thread only.
    }
  }
  return new Worker(WATCHDOG_WORKER_SOURCE, options);
}

// The worker, as plain JavaScript (CommonJS: `eval: true` workers get `require` on all three runtimes).
// It waits on the shared cells with Atomics.waitAsync so its own event loop keeps running signal
// listeners; an interval keeps that loop alive (the Worker itself is unref'd by the main thread).
const WATCHDOG_WORKER_SOURCE = `"use strict";
const { workerData } = require("node:worker_threads");
const { shared, signals, exitOnSecond, graceMs, runtime } = workerData;
const cells = new Int32Array(shared, 0, ${WD_CELLS});
const floats = new Float64Array(shared, ${WD_FLOATS_OFFSET}, 2);
const keepAlive = setInterval(() => {}, 1 << 30);
const cleanups = [];

function die() {
  if (typeof Deno !== "undefined") Deno.kill(Deno.pid, "SIGKILL");
  else process.kill(process.pid, "SIGKILL");
}

function seen() {
  return Math.max(Atomics.load(cells, ${WD_MAIN_SEEN}), Atomics.load(cells, ${WD_WORKER_SEEN}));
}

// A second signal ends the process: at once, or after the grace the main thread gets to exit by itself.
let secondTimer = null;
function secondSignal() {
  if (graceMs <= 0) die();
  else secondTimer ??= setTimeout(die, graceMs);
}

function delivered() {
  Atomics.add(cells, ${WD_WORKER_SEEN}, 1);
  if (exitOnSecond && seen() >= 2) secondSignal();
}

function listen() {
  if (signals.length === 0) return ${WD_SIGNALS_MAIN_ONLY};
  if (runtime === "deno") {
    for (const signal of signals) {
      Deno.addSignalListener(signal, delivered);
      cleanups.push(() => Deno.removeSignalListener(signal, delivered));
    }
    return 1;
  }
  if (runtime === "node") {
    let binding;
    try {
      binding = require("internal/test/binding").internalBinding("signal_wrap");
    } catch {
      return ${WD_SIGNALS_MAIN_ONLY};
    }
    const numbers = require("node:os").constants.signals;
    const handles = [];
    for (const signal of signals) {
      const handle = new binding.Signal();
      handle.onsignal = delivered;
      if (handle.start(numbers[signal]) !== 0) {
        for (const h of handles) h.close();
        handle.close();
        return ${WD_SIGNALS_MAIN_ONLY};
      }
      handle.unref();
      handles.push(handle);
    }
    cleanups.push(() => { for (const h of handles) h.close(); });
    return 2;
  }
  if (runtime === "bun") return listenBun();
  return ${WD_SIGNALS_MAIN_ONLY};
}

// Bun's workers receive no signals, but the kernel can count for us. The main thread listens (so Bun
// installed its C handler); here we re-install that same handler with SA_RESETHAND added: the first
// delivery runs Bun's handler (queued for the main thread's listeners) and the kernel resets the action
// to SIG_DFL, so a second delivery ends the process by the default action, even while the main thread
// is blocked. A poll sees the reset (counts it) and then sets every other counted signal to SIG_DFL
// too. Only the flag changes: Bun's handler, mask and restorer are kept, and put back on stop.
// struct sigaction of glibc and musl on Linux x86_64 and arm64: handler at 0, sa_flags at 136, 152 bytes.
function listenBun() {
  if (process.platform !== "linux" || (process.arch !== "x64" && process.arch !== "arm64")) {
    return ${WD_SIGNALS_MAIN_ONLY};
  }
  let ffi;
  let sigaction;
  try {
    ffi = require("bun:ffi");
    const spec = { sigaction: { args: ["i32", "ptr", "ptr"], returns: "i32" } };
    let lib;
    for (const name of ["libc.so.6", "libc.musl-" + (process.arch === "x64" ? "x86_64" : "aarch64") + ".so.1"]) {
      try {
        lib = ffi.dlopen(name, spec);
        break;
      } catch {
        // try the next libc
      }
    }
    if (!lib) return ${WD_SIGNALS_MAIN_ONLY};
    sigaction = lib.symbols.sigaction;
  } catch {
    return ${WD_SIGNALS_MAIN_ONLY};
  }
  const SIZE = 152;
  const FLAGS = 136;
  const SA_RESETHAND = 0x80000000;
  const numbers = require("node:os").constants.signals;
  const read = (n) => {
    const action = new Uint8Array(SIZE);
    if (sigaction(n, null, ffi.ptr(action)) !== 0) throw new Error("sigaction(" + n + ") failed");
    return action;
  };
  const write = (n, action) => {
    if (sigaction(n, ffi.ptr(action), null) !== 0) throw new Error("sigaction(" + n + ") failed");
  };
  const handlerOf = (action) => new DataView(action.buffer).getBigUint64(0, true);
  const flagsOf = (action) => new DataView(action.buffer).getUint32(FLAGS, true);
  const withFlags = (action, flags) => {
    const copy = action.slice();
    new DataView(copy.buffer).setUint32(FLAGS, flags >>> 0, true);
    return copy;
  };
  const SIG_DFL = new Uint8Array(SIZE);
  // Per signal: Bun's own action (to put back), and "armed" (RESETHAND set by us), "fired" (the kernel
  // reset it: one delivery) or "forced" (we set SIG_DFL after a delivery elsewhere).
  const tracked = signals.map((name) => ({ n: numbers[name], saved: null, state: "none" }));
  const poll = () => {
    if (Atomics.load(cells, ${WD_STATE}) === ${WD_STATE_STOPPED}) return;
    const current = tracked.map((t) => read(t.n));
    // First the deliveries: an armed action the kernel reset to SIG_DFL.
    tracked.forEach((t, i) => {
      if (t.state === "armed" && handlerOf(current[i]) === 0n) {
        t.state = "fired";
        delivered();
      }
    });
    // Then every action that is Bun's handler again (installed, or re-installed by Bun): after a
    // delivery anywhere, the next one must end the process, so SIG_DFL; before, arm it.
    const after = seen() >= 1;
    tracked.forEach((t, i) => {
      const handler = handlerOf(current[i]);
      if (handler === 0n || handler === 1n) return; // SIG_DFL, or SIG_IGN: someone wants it ignored
      const flags = flagsOf(current[i]);
      if ((flags & SA_RESETHAND) === 0) t.saved = current[i];
      if (after) {
        write(t.n, SIG_DFL);
        t.state = "forced";
      } else if ((flags & SA_RESETHAND) === 0) {
        write(t.n, withFlags(current[i], flags | SA_RESETHAND));
        t.state = "armed";
      }
    });
  };
  poll();
  const timer = setInterval(poll, ${WD_BUN_POLL_MS});
  cleanups.push(() => {
    clearInterval(timer);
    for (const t of tracked) {
      if (t.saved && t.state !== "none") write(t.n, t.saved);
    }
  });
  return 3;
}

let armGen = -1;
let deadline = Infinity;

function step() {
  for (;;) {
    const wake = Atomics.load(cells, ${WD_WAKE});
    const state = Atomics.load(cells, ${WD_STATE});
    if (state === ${WD_STATE_STOPPED}) {
      clearInterval(keepAlive);
      if (secondTimer !== null) clearTimeout(secondTimer);
      try {
        for (const cleanup of cleanups) cleanup();
      } finally {
        Atomics.store(cells, ${WD_READY}, ${WD_READY_STOPPED});
        Atomics.notify(cells, ${WD_READY});
      }
      return;
    }
    if (exitOnSecond && seen() >= 2) secondSignal();
    const gen = Atomics.load(cells, ${WD_ARM_GEN});
    if (gen !== armGen) {
      armGen = gen;
      if (state === ${WD_STATE_ARMED}) {
        const ms = floats[${WD_ARM_MS}];
        const latency = Math.min(Math.max(Date.now() - floats[${WD_ARMED_AT}], 0), ms);
        deadline = performance.now() + ms - latency;
      } else {
        deadline = Infinity;
      }
    }
    const left = deadline - performance.now();
    if (left <= 0) die();
    const result = Atomics.waitAsync(cells, ${WD_WAKE}, wake, left);
    if (result.async) {
      result.value.then(step);
      return;
    }
  }
}

try {
  Atomics.store(cells, ${WD_SIGNALS}, listen());
} catch (error) {
  Atomics.store(cells, ${WD_READY}, ${WD_READY_FAILED});
  Atomics.notify(cells, ${WD_READY});
  throw error;
}
// Too late if the main thread already gave up waiting (it then reported the failure).
Atomics.compareExchange(cells, ${WD_READY}, ${WD_READY_BOOTING}, ${WD_READY_UP});
Atomics.notify(cells, ${WD_READY});
step();
`;

// --- Exit hook and signal listener count

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

/** Deno keeps no visible listener list: count what goes through `Deno.addSignalListener` from here on. */
const denoSignalListeners = new Map<string, Set<() => void>>();
let denoSignalCounting = false;
if (deno) {
  try {
    const add = deno.addSignalListener.bind(deno);
    const remove = deno.removeSignalListener.bind(deno);
    deno.addSignalListener = (signal: string, handler: () => void) => {
      add(signal, handler);
      let set = denoSignalListeners.get(signal);
      if (!set) denoSignalListeners.set(signal, set = new Set());
      set.add(handler);
    };
    deno.removeSignalListener = (signal: string, handler: () => void) => {
      remove(signal, handler);
      denoSignalListeners.get(signal)?.delete(handler);
    };
    denoSignalCounting = true;
  } catch {
    // A frozen Deno namespace: the count stays unknown (see signalListenerCount).
  }
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
  if (!denoSignalCounting) return null;
  return denoSignalListeners.get(signal)?.size ?? 0;
}

// --- Identity stat: the cheapest stat of a path, for checks made before every write

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
        ino: typeof s.ino === "number" && s.ino > 0 ? s.ino : null,
        size: s.size,
        isFile: s.isFile,
      };
    }
    const s = fs.statSync(path, { throwIfNoEntry: false });
    if (s === undefined) return null;
    return {
      dev: s.dev,
      ino: typeof s.ino === "number" && s.ino > 0 ? s.ino : null,
      size: s.size,
      isFile: s.isFile(),
    };
  } catch (error) {
    const code = errorCode(error);
    if (code === "ENOENT" || code === "ENOTDIR") return null;
    throw error;
  }
}

// ---------------------------------------------------------------------------------------------------
// Redaction: the one answer to "what of an argv may be written down" (shutdown forensics, PID records)
// ---------------------------------------------------------------------------------------------------

/**
 * Replaces credentials in an argv with `***`, argument by argument (before anything joins or cuts it): the
 * value of `--name VALUE`, `--name=VALUE` and `NAME=VALUE` when the name contains token, secret, password,
 * passwd, key, auth or credential (any case), the user-info of URLs (`https://user:pass@host` →
 * `https://***@host`) and such query parameters (`?token=…`). An argument with spaces (a `sh -c` script) is
 * redacted word by word. After a bare `--token`-like flag the next argument is taken as its value unless it
 * starts with `--`.
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
 * const argv = ["deploy", "AWS_SECRET_ACCESS_KEY=abc", "--auth-token", "xyz", "--region", "eu-west-1"];
 * console.log(redactArgv(argv).join(" "));
 * // deploy AWS_SECRET_ACCESS_KEY=*** --auth-token *** --region eu-west-1
 * ```
 */
export function redactArgv(argv: readonly string[]): string[] {
  const out: string[] = [];
  let valueNext = false;
  for (const arg of argv) {
    const text = String(arg);
    if (valueNext && !text.startsWith("--")) {
      out.push(REDACTED);
      valueNext = false;
      continue;
    }
    if (/\s/.test(text)) {
      out.push(redactWords(text));
      valueNext = false;
      continue;
    }
    const word = redactWord(text);
    out.push(word.text);
    valueNext = word.valueNext;
  }
  return out;
}

const REDACTED = "***";
const SENSITIVE_NAME = /token|secret|password|passwd|key|auth|credential/i;
const URL_USERINFO = /([A-Za-z][A-Za-z0-9+.-]*:\/\/)[^/?#\s]*@/g;
const SENSITIVE_QUERY =
  /([?&;][^=&#\s]*(?:token|secret|password|passwd|key|auth|credential)[^=&#\s]*=)[^&#\s]*/gi;

function redactWords(text: string): string {
  const parts = text.split(/(\s+)/);
  let valueNext = false;
  for (let i = 0; i < parts.length; i += 2) {
    const part = parts[i];
    if (part === "") continue;
    if (valueNext && !part.startsWith("--")) {
      parts[i] = REDACTED;
      valueNext = false;
      continue;
    }
    const word = redactWord(part);
    parts[i] = word.text;
    valueNext = word.valueNext;
  }
  return parts.join("");
}

function redactWord(word: string): { text: string; valueNext: boolean } {
  let text = word.replace(URL_USERINFO, `$1${REDACTED}@`).replace(SENSITIVE_QUERY, `$1${REDACTED}`);
  const equals = text.indexOf("=");
  if (equals > 0) {
    const name = text.slice(0, equals);
    if (!name.includes("://") && !name.includes("?") && SENSITIVE_NAME.test(name)) {
      text = `${name}=${REDACTED}`;
    }
    return { text, valueNext: false };
  }
  const valueNext = /^-{1,2}[^-]/.test(text) && SENSITIVE_NAME.test(text);
  return { text, valueNext };
}
