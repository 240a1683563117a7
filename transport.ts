/// <reference lib="esnext.disposable" preserve="true" />
/**
 * A JSON-lines transport over stdio (or any descriptor) that tells a vanished peer from a real bug.
 * Without it, a gateway whose parent (a TUI, an editor, an MCP client) quits either crashes with an
 * `EPIPE` stack, or treats every failure as "peer gone" and exits quietly on a full disk, a permission
 * error or a frame that cannot be serialised.
 *
 * The protocol: one JSON text per line, UTF-8, each line ended by `\n` (`0x0A`). A frame is written with
 * one synchronous loop of `write(2)` calls, so frames never interleave. Readers accept `\r\n`, ignore
 * blank lines, and report an invalid or oversized line without losing the lines around it.
 *
 * Deno permissions: `--allow-read --allow-write`; `-A` (or `--allow-ffi`) for exact writes to a
 * non-blocking socket and bounded waits on a blocking pipe (without it a one-line warning says what is lost).
 *
 * @module
 */

import {
  checkNumber,
  closeFd,
  createContextStore,
  describeError,
  describeValue,
  type DescriptorWriter,
  errorCode,
  errorMessage,
  fstat,
  fsync,
  mustBe,
  openDescriptorWriter,
  stderrReporter,
  type StdinChunks,
  stdinChunks,
  writeAllWithin,
} from "./platform.ts";

// ---------------------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------------------

/**
 * Something that delivers JSON frames to a peer: what {@linkcode createStdioTransport} returns and what
 * {@linkcode TeeTransport} and {@linkcode withTransport} accept.
 *
 * @example A transport that keeps frames in memory (for tests or replay)
 * ```ts
 * import type { Transport } from "./transport.ts";
 * class MemoryTransport implements Transport {
 *   frames: string[] = [];
 *   #closed = false;
 *   write(frame: unknown): boolean {
 *     const text = JSON.stringify(frame);
 *     if (text === undefined) throw new TypeError("Cannot serialise the frame");
 *     if (this.#closed) return false;
 *     this.frames.push(text);
 *     return true;
 *   }
 *   close(): void {
 *     this.#closed = true;
 *   }
 * }
 * new MemoryTransport().write({ hello: "memory" });
 * ```
 */
export interface Transport {
  /**
   * Sends one frame. Throws `TypeError` when the frame cannot be serialised (nothing is sent) and
   * throws for host errors (a full disk, an I/O error).
   *
   * @returns `true` when the frame was handed to the OS, `false` only when the peer is gone.
   */
  write(frame: unknown): boolean;
  /** Stops the transport; later writes return `false`. */
  close(): void;
}

/** Default of {@linkcode StdioTransportOptions.fd}: stdout. */
const DEFAULT_TRANSPORT_FD = 1;

/** Default of {@linkcode StdioTransportOptions.flush}. */
const DEFAULT_TRANSPORT_FLUSH = false;

/** Descriptors up to this one (stdin, stdout, stderr) stay open on `close()` unless `closeFd` says so. */
const LAST_STDIO_FD = 2;

/**
 * Options for {@linkcode createStdioTransport}.
 *
 * @example Durable frames to a file, closed with the transport
 * ```ts
 * import * as fs from "node:fs";
 * import { createStdioTransport, type StdioTransportOptions } from "./transport.ts";
 * const options: StdioTransportOptions = { fd: fs.openSync("/tmp/example.jsonl", "a"), flush: true };
 * using transport = createStdioTransport(options); // closeFd defaults to true: the fd is not 0, 1 or 2
 * transport.write({ event: "started" });
 * ```
 */
export interface StdioTransportOptions {
  /**
   * The descriptor frames are written to: stdout, or any descriptor open for writing (a pipe, a
   * socket, a file, a tty).
   * @default 1
   */
  fd?: number | undefined;
  /**
   * `fsync(2)` after every frame, so `write` returns only once the frame is on the device. Frames are
   * never buffered in this process (each one goes to the kernel before `write` returns), so `flush`
   * only matters when the descriptor is a regular file (stdout redirected to a file) and the frames
   * must survive a power loss. On a pipe, socket or tty there is nothing to sync and `flush` does
   * nothing. A failing `fsync` (e.g. `EIO`) throws like a failing write.
   * @default false
   */
  flush?: boolean | undefined;
  /**
   * Close the descriptor in {@linkcode Transport.close}, so the peer sees end-of-file. Off for 0, 1 and
   * 2 by default: the process's stdio stays open for the runtime and other code, and a closed fd 1 could
   * be reused by the next file opened, which stray `console.log` calls would then write into.
   * @default false for descriptors 0, 1 and 2, true for any other descriptor
   */
  closeFd?: boolean | undefined;
  /**
   * The longest a write may make no progress (the reader stopped reading but did not close) before
   * the peer counts as wedged: `write` then returns `false`, as for a gone peer, and so does every
   * later write. `Infinity` waits for ever, like a blocking write. Where the runtime has no
   * non-blocking route to the descriptor (a blocking socket on Node other than stdout; on Deno without
   * `--allow-ffi` or `-A`, a descriptor whose flags it may not read), the wait cannot be bounded and a
   * one-line warning on stderr says so (`Infinity` asks for no bound, and no warning).
   * @default 10000
   */
  writeTimeoutMs?: number | undefined;
  /**
   * While the transport is open, send `console.log`, `console.info`, `console.debug` and
   * `console.warn` to stderr, so a stray print cannot corrupt the protocol stream. `close()` puts them
   * back. Writes that bypass `console` (`process.stdout.write`) are not redirected.
   * @default true for fd 1, false for any other descriptor
   */
  redirectConsole?: boolean | undefined;
}

/**
 * The transport {@linkcode createStdioTransport} returns.
 *
 * @example Say why a frame was not sent
 * ```ts
 * import { createStdioTransport, type StdioTransport } from "./transport.ts";
 * function send(transport: StdioTransport, frame: unknown): void {
 *   if (transport.write(frame)) return;
 *   console.error(transport.peerGone ? `nobody reads fd ${transport.fd} any more` : "already closed");
 * }
 * using transport = createStdioTransport();
 * send(transport, { jsonrpc: "2.0", method: "ready" });
 * ```
 */
export interface StdioTransport extends Transport, Disposable {
  /** The descriptor frames are written to. */
  readonly fd: number;
  /**
   * `true` once a write found the peer gone (or wedged past `writeTimeoutMs`); later writes return
   * `false` without a syscall.
   */
  readonly peerGone: boolean;
  /** `true` when the peer counts as gone because a write made no progress for `writeTimeoutMs`. */
  readonly wedged: boolean;
  /** `true` once {@linkcode Transport.close} was called. */
  readonly closed: boolean;
}

/**
 * A write failed for a reason other than a gone peer (`ENOSPC`, `EIO`, `EACCES`, …): the peer may well
 * be there, the frame was not (entirely) delivered, and the host needs attention.
 *
 * @example Tell a full disk from a parent that quit
 * ```ts
 * import * as fs from "node:fs";
 * import { createStdioTransport, TransportWriteError } from "./transport.ts";
 * const transport = createStdioTransport({ fd: fs.openSync("/dev/full", "w") });
 * try {
 *   transport.write({ level: "info", msg: "hello" });
 * } catch (error) {
 *   if (!(error instanceof TransportWriteError)) throw error;
 *   console.error(`frame lost: ${error.code}`); // "frame lost: ENOSPC"
 * }
 * transport.close();
 * ```
 */
export class TransportWriteError extends Error {
  /** The errno name of the cause (`"ENOSPC"`, `"EIO"`, …), or `undefined` when it carries none. */
  readonly code: string | undefined;
  /** The descriptor that was written to. */
  readonly fd: number;
  /**
   * Bytes of the frame's line (newline included) the kernel took before the failure: exact, except on
   * Deno without FFI for a non-blocking socket, where it is a lower bound.
   */
  readonly bytesWritten: number;
  /** Size of the frame's line in bytes, newline included. */
  readonly frameBytes: number;
  /** The error the runtime threw. */
  override readonly cause: unknown;

  /**
   * Builds the error from what the failed write reported.
   *
   * @param fd The descriptor that was written to.
   * @param cause The error the runtime threw.
   * @param bytesWritten Bytes of the line the kernel took before the failure.
   * @param frameBytes Size of the line in bytes.
   */
  constructor(fd: number, cause: unknown, bytesWritten: number, frameBytes: number) {
    const code = errorCode(cause);
    const reason = errorMessage(cause);
    super(
      `Cannot write a frame to fd ${fd}: ${code ?? "error"} after ${bytesWritten} of ${frameBytes} bytes ` +
        `(${reason})`,
      { cause },
    );
    this.name = "TransportWriteError";
    this.code = code;
    this.fd = fd;
    this.bytesWritten = bytesWritten;
    this.frameBytes = frameBytes;
    this.cause = cause;
  }
}

/**
 * Why {@linkcode readFrames} could not turn a line into a frame.
 *
 * @example Count bad lines by reason
 * ```ts
 * import { type FrameError, type FrameErrorReason, readFrames } from "./transport.ts";
 * const counts: Record<FrameErrorReason, number> = { "invalid-json": 0, "too-large": 0 };
 * const onInvalid = (error: FrameError) => counts[error.reason]++;
 * for await (const frame of readFrames(undefined, { onInvalid })) console.log(frame);
 * console.error(counts); // e.g. { "invalid-json": 2, "too-large": 0 }
 * ```
 */
export type FrameErrorReason = "invalid-json" | "too-large";

/**
 * A line {@linkcode readFrames} could not turn into a frame; the lines around it are unaffected.
 *
 * @example Log bad lines and keep serving
 * ```ts
 * import { type FrameError, readFrames } from "./transport.ts";
 * const bytes = new TextEncoder().encode('{"ok":1}\nnot json\n{"ok":2}\n');
 * async function* source() {
 *   yield bytes;
 * }
 * const onInvalid = (error: FrameError) => console.error(`line ${error.line}: ${error.reason}`);
 * for await (const frame of readFrames(source(), { onInvalid })) console.log(frame); // line 2: invalid-json
 * ```
 */
export class FrameError extends Error {
  /** The 1-based number of the line in the stream (blank lines count). */
  readonly line: number;
  /** `"invalid-json"` (not UTF-8, or not JSON) or `"too-large"` (over `maxFrameBytes`, skipped). */
  readonly reason: FrameErrorReason;
  /** Length of the line in bytes, without its line ending. */
  readonly bytes: number;

  /**
   * Describes one line that is not a frame.
   *
   * @param line The 1-based line number.
   * @param reason Why the line is not a frame.
   * @param bytes Length of the line in bytes.
   * @param message What went wrong.
   * @param cause The decoding or parsing error, if any.
   */
  constructor(line: number, reason: FrameErrorReason, bytes: number, message: string, cause?: unknown) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "FrameError";
    this.line = line;
    this.reason = reason;
    this.bytes = bytes;
  }
}

/** Default of {@linkcode ReadFramesOptions.maxFrameBytes}: 16 MiB. */
const DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024;

/**
 * Options for {@linkcode readFrames}.
 *
 * @example A small limit and a log of skipped lines
 * ```ts
 * import { type ReadFramesOptions, readFrames } from "./transport.ts";
 * const options: ReadFramesOptions = {
 *   maxFrameBytes: 64 * 1024, // a control channel: 64 KiB is plenty
 *   onInvalid: (error) => console.error(`line ${error.line} skipped: ${error.reason}`),
 * };
 * for await (const frame of readFrames(undefined, options)) console.log(frame);
 * ```
 */
export interface ReadFramesOptions {
  /**
   * The longest line accepted, in bytes without its line ending. A longer line is skipped as it streams
   * past (it is never held in memory whole) and reported as a `too-large` {@linkcode FrameError}.
   * @default 16 MiB (16777216)
   */
  maxFrameBytes?: number | undefined;
  /**
   * Receives each line that is not a frame (invalid UTF-8, invalid JSON, too large); the iteration goes
   * on with the next line. Without it, each such line is reported as one line on stderr and skipped.
   * @default undefined (report on stderr)
   */
  onInvalid?: ((error: FrameError) => void) | undefined;
}

// ---------------------------------------------------------------------------------------------------
// Public functions and classes
// ---------------------------------------------------------------------------------------------------

/**
 * Creates a transport that writes each frame as one JSON line to a descriptor (stdout by default).
 *
 * `write` serialises first: a frame `JSON.stringify` rejects (a cycle, a BigInt) or cannot represent
 * (`undefined`, a function, a symbol) throws `TypeError` and nothing is written. Then the whole line is
 * written synchronously, looping over partial writes and sleeping out `EAGAIN` when the descriptor is
 * non-blocking (as Node makes a piped stdout), so a 10 MiB frame arrives whole and no other frame can
 * start in between: frames never interleave, whatever mix of sync and async code calls `write`. While
 * the reader does not read, `write` waits, up to `writeTimeoutMs` without progress (then the peer counts
 * as wedged and `write` returns `false`).
 *
 * Bytes are never sent twice: every write learns exactly how much the kernel took, on pipes, sockets,
 * ttys and files, blocking or not (on Deno through libc when FFI is permitted; without it, a
 * descriptor that has no exact route gets a one-line warning on stderr). Any descriptor number works,
 * an inherited fd 3 included; one that is not open for writing throws `TypeError` at once.
 *
 * `write` returns `false` only when the peer is gone ({@linkcode isPeerGone}: `EPIPE`, `ECONNRESET`,
 * `EBADF` or a closed resource, `ESHUTDOWN`) or wedged, and from then on returns `false` without
 * touching the descriptor. Every other failure throws a {@linkcode TransportWriteError} carrying the
 * errno and the original error as `cause`. When such a failure tore a frame (some bytes written, or an
 * unknown count), the next frame starts with a CAN byte (`0x18`) and a newline: the fragment becomes a
 * line of its own that is never valid JSON (a frame reported failed is never completed later), and the
 * next frame arrives intact.
 *
 * With `redirectConsole` (the default for fd 1), `console.log/info/debug/warn` go to stderr while the
 * transport is open. Frames from other threads on the same descriptor are not coordinated with these
 * writes: give each descriptor one transport.
 *
 * @param options The descriptor, `flush`, `closeFd`, `writeTimeoutMs`, `redirectConsole`.
 * @returns A transport; `close()` (or `using`) stops it.
 *
 * @example Answer a parent over stdout until it goes away
 * ```ts
 * import { createStdioTransport } from "./transport.ts";
 * const transport = createStdioTransport(); // also Disposable: `using transport = …` closes it
 * for (let i = 0; i < 3; i++) {
 *   if (!transport.write({ jsonrpc: "2.0", method: "tick", params: { i } })) break; // parent gone
 * }
 * transport.close();
 * ```
 *
 * @example Append frames to a file, synced to disk one by one
 * ```ts
 * import { openSync } from "node:fs";
 * import { createStdioTransport } from "./transport.ts";
 * const transport = createStdioTransport({ fd: openSync("/tmp/frames.jsonl", "a"), flush: true });
 * transport.write({ event: "started" });
 * transport.close(); // closes the descriptor too: it is not 0, 1 or 2
 * ```
 */
export function createStdioTransport(options: StdioTransportOptions = {}): StdioTransport {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(mustBe(CREATE_STDIO, "options", "an object", options));
  }
  const fd = options.fd ?? DEFAULT_TRANSPORT_FD;
  checkNumber(CREATE_STDIO, "fd", fd, "a non-negative integer", (n) => Number.isSafeInteger(n) && n >= 0);
  const flush = options.flush ?? DEFAULT_TRANSPORT_FLUSH;
  if (typeof flush !== "boolean") {
    throw new TypeError(mustBe(CREATE_STDIO, "flush", "a boolean", flush));
  }
  const shouldCloseFd = options.closeFd ?? fd > LAST_STDIO_FD;
  if (typeof shouldCloseFd !== "boolean") {
    throw new TypeError(mustBe(CREATE_STDIO, "closeFd", "a boolean", options.closeFd));
  }
  const writeTimeoutMs = options.writeTimeoutMs ?? DEFAULT_WRITE_TIMEOUT_MS;
  checkNumber(CREATE_STDIO, "writeTimeoutMs", writeTimeoutMs, "a non-negative number", (n) => n >= 0);
  const redirect = options.redirectConsole ?? fd === DEFAULT_TRANSPORT_FD;
  if (typeof redirect !== "boolean") {
    throw new TypeError(mustBe(CREATE_STDIO, "redirectConsole", "a boolean", options.redirectConsole));
  }
  let writer: DescriptorWriter;
  try {
    writer = openDescriptorWriter(fd);
  } catch (error) {
    const reason = errorMessage(error);
    throw new TypeError(`Cannot create a stdio transport: ${reason}`, { cause: error });
  }
  if (writer.limitation !== null && (!writer.exact || Number.isFinite(writeTimeoutMs))) {
    reportOnStderr(writer.limitation);
  }
  return new FdTransport(writer, flush, shouldCloseFd, writeTimeoutMs, redirect);
}

/**
 * A transport that copies every frame to secondary transports (a debug log, a recorder) while the
 * primary alone decides the result.
 *
 * `write` sends the frame to the primary first and returns its result; the primary's exceptions
 * propagate, and then the secondaries do not see the frame. A secondary that returns `false` (its peer
 * is gone) or throws never changes the result: it is dropped and closed, and a throwing one (or a
 * failing close) is reported to {@linkcode TeeTransport.onError}.
 *
 * A secondary never stalls the primary. A secondary made by {@linkcode createStdioTransport} is written
 * without waiting: what its reader does not take at once is queued (in order, up to 1 MiB), the queue
 * is retried on the next frames, and a secondary whose queue would grow past that is dropped and
 * reported (a {@linkcode TransportWriteError} with code `ETIMEDOUT`); at `close()` whatever its reader
 * does not take at once is discarded. This holds wherever the secondary's descriptor can be written
 * without blocking (every pipe, tty, file and socket, except a blocking socket on Node other than
 * stdout: `createStdioTransport` warns about those). Any other {@linkcode Transport} is called as is,
 * so its `write` must not block.
 *
 * @example Mirror the protocol into a file for debugging
 * ```ts
 * import { openSync } from "node:fs";
 * import { createStdioTransport, TeeTransport } from "./transport.ts";
 * const tee = new TeeTransport(
 *   createStdioTransport(),
 *   createStdioTransport({ fd: openSync("/tmp/protocol.jsonl", "a") }),
 * );
 * tee.onError = (error) => console.error("debug copy stopped:", error);
 * tee.write({ id: 1, result: "ok" }); // true unless stdout's reader is gone
 * tee.close();
 * ```
 */
export class TeeTransport implements Transport, Disposable {
  /** The transport whose result and exceptions `write` passes on. */
  readonly primary: Transport;
  /**
   * Receives the error of a secondary that threw from `write` or `close`, with that secondary. When
   * unset, one line describing it goes to stderr (and is lost if stderr is gone too).
   * @default undefined (report on stderr)
   */
  onError: ((error: unknown, secondary: Transport) => void) | undefined = undefined;
  #secondaries: Transport[];
  #closed = false;

  /**
   * Tees every frame to the primary and, once the primary accepted it, to each secondary.
   *
   * @param primary The transport that decides the result.
   * @param secondaries Transports that get a copy of each frame the primary accepted.
   */
  constructor(primary: Transport, ...secondaries: Transport[]) {
    assertTransport(primary, "create a TeeTransport", "primary");
    secondaries.forEach((secondary, index) =>
      assertTransport(secondary, "create a TeeTransport", `secondaries[${index}]`)
    );
    this.primary = primary;
    this.#secondaries = secondaries;
  }

  /** The secondaries still receiving frames (failed ones are dropped). */
  get secondaries(): readonly Transport[] {
    return [...this.#secondaries];
  }

  /**
   * Sends a frame to the primary, then to each secondary.
   *
   * @param frame Any JSON-serialisable value.
   * @returns The primary's result.
   *
   * @example
   * ```ts
   * import { createStdioTransport, TeeTransport } from "./transport.ts";
   * const tee = new TeeTransport(createStdioTransport(), createStdioTransport({ fd: 2 }));
   * tee.write({ hello: "both" });
   * ```
   */
  write(frame: unknown): boolean {
    const delivered = this.primary.write(frame);
    if (this.#secondaries.length === 0) return delivered;
    const failed: Transport[] = [];
    for (const secondary of this.#secondaries) {
      try {
        const delivered = secondary instanceof FdTransport ? secondary[OFFER](frame) : secondary.write(frame);
        if (!delivered) failed.push(secondary);
      } catch (error) {
        failed.push(secondary);
        this.#report(error, secondary);
      }
    }
    if (failed.length > 0) {
      this.#secondaries = this.#secondaries.filter((secondary) => !failed.includes(secondary));
      for (const secondary of failed) this.#closeSecondary(secondary);
    }
    return delivered;
  }

  /**
   * Closes the secondaries (failures go to `onError`), then the primary (its exceptions propagate).
   * Idempotent.
   *
   * @example
   * ```ts
   * import { createStdioTransport, TeeTransport } from "./transport.ts";
   * const tee = new TeeTransport(createStdioTransport());
   * tee.close();
   * console.log(tee.write({ late: true })); // false
   * ```
   */
  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    const secondaries = this.#secondaries;
    this.#secondaries = [];
    for (const secondary of secondaries) this.#closeSecondary(secondary);
    this.primary.close();
  }

  /** Same as {@linkcode TeeTransport.close}, for `using`. */
  [Symbol.dispose](): void {
    this.close();
  }

  #closeSecondary(secondary: Transport): void {
    try {
      secondary.close();
    } catch (error) {
      this.#report(error, secondary);
    }
  }

  #report(error: unknown, secondary: Transport): void {
    const onError = this.onError;
    if (onError) {
      onError(error, secondary);
      return;
    }
    reportOnStderr(`a TeeTransport secondary failed and was dropped: ${describeError(error)}`);
  }
}

/**
 * Runs `fn` with `transport` bound to it and to every call it starts, sync or async; see
 * {@linkcode currentTransport}.
 *
 * @param transport The transport to bind.
 * @param fn The call tree.
 * @returns What `fn` returns (its promise, for an async `fn`).
 *
 * @example Let deep code answer the client of the current request
 * ```ts
 * import { createStdioTransport, currentTransport, withTransport } from "./transport.ts";
 * async function handle(id: number): Promise<void> {
 *   await Promise.resolve();
 *   currentTransport()?.write({ id, result: "done" });
 * }
 * await withTransport(createStdioTransport(), () => handle(7));
 * ```
 */
export function withTransport<T>(transport: Transport, fn: () => T): T {
  assertTransport(transport, BIND_TRANSPORT, "transport");
  if (typeof fn !== "function") {
    throw new TypeError(mustBe(BIND_TRANSPORT, "fn", "a function", fn));
  }
  return transportStore.run(transport, fn);
}

/**
 * The transport bound by the nearest enclosing {@linkcode withTransport}, or `undefined`.
 *
 * @returns The bound transport.
 *
 * @example
 * ```ts
 * import { currentTransport } from "./transport.ts";
 * console.log(currentTransport()); // undefined outside withTransport()
 * ```
 */
export function currentTransport(): Transport | undefined {
  return transportStore.get();
}

/**
 * The part of a web `ReadableStream<Uint8Array>` that {@linkcode readFrames} uses, written out so that the
 * declarations need neither the DOM lib nor `@types/node`: any `ReadableStream<Uint8Array>` is one.
 *
 * @example A web stream is a FrameByteStream
 * ```ts
 * import type { FrameByteStream } from "./transport.ts";
 * const stream: FrameByteStream = new ReadableStream<Uint8Array>();
 * console.log(typeof stream.getReader); // function
 * ```
 */
export interface FrameByteStream {
  /** Locks the stream to one reader. */
  getReader(): {
    read(): Promise<{ done: boolean; value?: Uint8Array | undefined }>;
    cancel(reason?: unknown): Promise<void>;
    releaseLock(): void;
  };
}

/**
 * Reads JSON-lines frames from byte chunks (stdin by default) until end-of-file.
 *
 * Chunks may be split anywhere, even inside a UTF-8 character: lines are cut on the `0x0A` byte first,
 * then the complete lines of a chunk are decoded together and each line is checked strictly. A trailing
 * `\r` is dropped, blank lines are skipped, and a last line without a newline is still a frame. A line
 * that is not valid UTF-8 or JSON (`invalid-json`), or longer than `maxFrameBytes` (`too-large`,
 * discarded as it streams past, never held whole) goes to `onInvalid` as a {@linkcode FrameError} with
 * its line number (without `onInvalid`: one line on stderr), and reading goes on.
 *
 * A source that fails because its peer reset or closed it (`ECONNRESET`, `EPIPE`, …: see
 * {@linkcode isPeerGone}) ends the iteration like end-of-file; other source errors are thrown. Leaving
 * the loop early cancels a source that was passed in. Stdin is different: the process has one stdin
 * reader, never cancelled, so a second `readFrames()` continues exactly where the first loop stopped
 * (the bytes it had read past its last frame included), and a loop that stopped reading does not keep
 * the process alive.
 *
 * @param source A byte stream or async iterable of `Uint8Array` chunks.
 * @param options `maxFrameBytes`, `onInvalid`.
 * @default source this process's stdin
 * @returns The frames, in order.
 *
 * @example Serve requests from stdin, answering on stdout
 * ```ts
 * import { createStdioTransport, readFrames } from "./transport.ts";
 * const out = createStdioTransport();
 * for await (const frame of readFrames(undefined, { onInvalid: (error) => console.error(error.message) })) {
 *   if (!out.write({ echo: frame })) break;
 * }
 * ```
 *
 * @example Frames from a stream of bytes
 * ```ts
 * import { readFrames } from "./transport.ts";
 * const bytes = new TextEncoder().encode('{"a":1}\r\n\n{"b":2}');
 * const stream = new ReadableStream<Uint8Array>({
 *   start(controller) {
 *     controller.enqueue(bytes.subarray(0, 5));
 *     controller.enqueue(bytes.subarray(5));
 *     controller.close();
 *   },
 * });
 * for await (const frame of readFrames(stream)) console.log(frame); // { a: 1 }, then { b: 2 }
 * ```
 */
export function readFrames(
  source?: FrameByteStream | AsyncIterable<Uint8Array>,
  options: ReadFramesOptions = {},
): AsyncIterable<unknown> {
  if (typeof options !== "object" || options === null) {
    throw new TypeError(mustBe(READ_FRAMES, "options", "an object", options));
  }
  const maxFrameBytes = options.maxFrameBytes ?? DEFAULT_MAX_FRAME_BYTES;
  if (typeof maxFrameBytes !== "number") {
    throw new TypeError(mustBe(READ_FRAMES, "maxFrameBytes", "a number", maxFrameBytes));
  }
  if (!Number.isSafeInteger(maxFrameBytes) || maxFrameBytes < 1) {
    throw new RangeError(mustBe(READ_FRAMES, "maxFrameBytes", "a positive integer", maxFrameBytes));
  }
  const onInvalid = options.onInvalid;
  if (onInvalid !== undefined && typeof onInvalid !== "function") {
    throw new TypeError(mustBe(READ_FRAMES, "onInvalid", "a function", onInvalid));
  }
  const chunks = toChunkIterable(source ?? stdinChunks());
  return new FrameIterator(chunks, maxFrameBytes, onInvalid ?? reportInvalidLine);
}

/**
 * Whether an error means the peer is gone: `EPIPE`, `ECONNRESET`, `EBADF` (a closed descriptor),
 * `ESHUTDOWN`, and Deno's `BrokenPipe`, `BadResource` and `ConnectionReset`. Everything else, `ENOSPC`,
 * `EACCES` and `EIO` included, is a real failure.
 *
 * @param error Anything that was thrown or emitted.
 * @returns `true` when the error only says nobody is listening any more.
 *
 * @example Quiet exit on EPIPE from your own stream, loud on anything else
 * ```ts
 * import process from "node:process";
 * import { isPeerGone } from "./transport.ts";
 * process.stdout.on("error", (error) => {
 *   if (isPeerGone(error)) process.exit(0);
 *   throw error;
 * });
 * ```
 */
export function isPeerGone(error: unknown): boolean {
  const code = errorCode(error);
  return code !== undefined && PEER_GONE_CODES.has(code);
}

// ---------------------------------------------------------------------------------------------------
// Private helpers
// ---------------------------------------------------------------------------------------------------

const PEER_GONE_CODES: ReadonlySet<string> = new Set(["EPIPE", "ECONNRESET", "EBADF", "ESHUTDOWN"]);

const NEWLINE = 0x0a;
const CARRIAGE_RETURN = 0x0d;
const SPACE = 0x20;
const TAB = 0x09;

const encoder = new TextEncoder();
/** Reused by {@linkcode encodeLine}: any line of up to 21845 UTF-16 units fits in its worst case. */
const scratch = new Uint8Array(64 * 1024);
const lenientDecoder = new TextDecoder("utf-8");
const fatalDecoder = new TextDecoder("utf-8", { fatal: true });

const transportStore = createContextStore<Transport>();

/** The tee's way into an {@linkcode FdTransport}: a write that never waits. */
const OFFER: unique symbol = Symbol("offer");

/** The {@linkcode StdioTransport} behind {@linkcode createStdioTransport}. */
class FdTransport implements StdioTransport {
  readonly fd: number;
  #writer: DescriptorWriter;
  #flush: boolean;
  #closeFd: boolean;
  #timeoutMs: number;
  #redirect: boolean;
  #peerGone = false;
  #wedged = false;
  #closed = false;
  /** A host error tore the previous frame (or may have): end the fragment before the next frame. */
  #torn = false;
  /** Whether `fsync` applies (a regular file); decided on the first flushed frame. */
  #syncable: boolean | undefined = undefined;
  /** Tee secondary only: lines (or their unwritten rest) waiting for the reader, oldest first. */
  #queue: Uint8Array[] = [];
  #queuedBytes = 0;

  constructor(
    writer: DescriptorWriter,
    flush: boolean,
    closeFd: boolean,
    timeoutMs: number,
    redirect: boolean,
  ) {
    this.fd = writer.fd;
    this.#writer = writer;
    this.#flush = flush;
    this.#closeFd = closeFd;
    this.#timeoutMs = timeoutMs;
    this.#redirect = redirect;
    if (redirect) redirectConsole();
  }

  get peerGone(): boolean {
    return this.#peerGone;
  }

  get wedged(): boolean {
    return this.#wedged;
  }

  get closed(): boolean {
    return this.#closed;
  }

  write(frame: unknown): boolean {
    const text = serialise(frame);
    if (this.#peerGone || this.#closed) return false;
    const bytes = encodeLine(text + "\n");
    let written = 0;
    try {
      if (this.#queue.length > 0 && !this.#drainQueue(this.#timeoutMs)) return this.#wedge();
      if (this.#torn) {
        // End the torn fragment with a byte no JSON text may hold, so it can never become a frame.
        if (writeAllWithin(this.#writer, TORN_END, this.#timeoutMs) < TORN_END.length) return this.#wedge();
        this.#torn = false;
      }
      // One write(2) for a line the descriptor takes whole; partial writes and EAGAIN are looped over
      // (each count exact) and waited out before anything else can write, so frames never interleave.
      written = writeAllWithin(this.#writer, bytes, this.#timeoutMs);
      if (written < bytes.length) return this.#wedge();
    } catch (error) {
      if (isPeerGone(error)) {
        this.#peerGone = true;
        return false;
      }
      // Still torn: the fragment's end itself failed and no byte of this frame went out.
      written = this.#torn ? 0 : (error as { bytesWritten?: number }).bytesWritten ?? 0;
      const exact = (error as { bytesWrittenExact?: boolean }).bytesWrittenExact !== false;
      this.#torn ||= written > 0 || !exact;
      throw new TransportWriteError(this.fd, error, written, bytes.length);
    }
    if (this.#flush) return this.#sync(bytes.length);
    return true;
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#redirect) restoreConsole();
    if (this.#queue.length > 0 && !this.#peerGone) {
      try {
        this.#drainQueue(0); // what the reader takes now; a tee never waits for a stalled secondary
      } catch {
        // the copy is best effort: its reader is gone or failing, and the transport is closing anyway
      }
      this.#queue = [];
      this.#queuedBytes = 0;
    }
    this.#writer.close();
    if (!this.#closeFd) return;
    try {
      closeFd(this.fd);
    } catch (error) {
      if (errorCode(error) !== "EBADF") throw error; // already closed by someone else: nothing to do
    }
  }

  [Symbol.dispose](): void {
    this.close();
  }

  /**
   * Tee secondary: hands the frame to the kernel as far as it takes it now, queues the rest (at most
   * `TEE_QUEUE_BYTES`) and never waits. Returns `false` when the peer is gone; throws
   * {@linkcode TransportWriteError} for host errors and when the queue would overflow.
   */
  [OFFER](frame: unknown): boolean {
    const text = serialise(frame);
    if (this.#peerGone || this.#closed) return false;
    const line = encoder.encode(text + "\n"); // a copy of its own: it may wait in the queue
    try {
      if (this.#queue.length > 0) this.#drainQueue(0);
      if (this.#queue.length === 0) {
        let offset = 0;
        while (offset < line.length) {
          const n = this.#writer.writeSome(offset === 0 ? line : line.subarray(offset));
          if (n === 0) break;
          offset += n;
        }
        if (offset === line.length) return true;
        this.#enqueue(offset === 0 ? line : line.subarray(offset), line.length);
        return true;
      }
      this.#enqueue(line, line.length);
      return true;
    } catch (error) {
      if (error instanceof TransportWriteError) throw error;
      if (isPeerGone(error)) {
        this.#peerGone = true;
        return false;
      }
      throw new TransportWriteError(this.fd, error, 0, line.length);
    }
  }

  #enqueue(bytes: Uint8Array, frameBytes: number): void {
    if (this.#queuedBytes + bytes.length > TEE_QUEUE_BYTES) {
      const cause = new Error(
        `the reader of fd ${this.fd} is stalled: over ${TEE_QUEUE_BYTES} bytes queued for it`,
      );
      Object.assign(cause, { code: "ETIMEDOUT" });
      throw new TransportWriteError(this.fd, cause, 0, frameBytes);
    }
    this.#queue.push(bytes);
    this.#queuedBytes += bytes.length;
  }

  /** Writes queued bytes, waiting at most `timeoutMs` without progress; `true` once the queue is empty. */
  #drainQueue(timeoutMs: number): boolean {
    while (this.#queue.length > 0) {
      const head = this.#queue[0]!;
      const n = writeAllWithin(this.#writer, head, timeoutMs);
      this.#queuedBytes -= n;
      if (n < head.length) {
        this.#queue[0] = head.subarray(n);
        return false;
      }
      this.#queue.shift();
    }
    return true;
  }

  #wedge(): false {
    this.#peerGone = true;
    this.#wedged = true;
    return false;
  }

  /** `fsync(2)` after a frame, on regular files only (pipes, sockets and ttys answer `EINVAL`). */
  #sync(frameBytes: number): boolean {
    try {
      if (this.#syncable === undefined) this.#syncable = fstat(this.fd).isFile;
      if (this.#syncable) fsync(this.fd);
    } catch (error) {
      if (isPeerGone(error)) {
        this.#peerGone = true;
        return false;
      }
      throw new TransportWriteError(this.fd, error, frameBytes, frameBytes);
    }
    return true;
  }
}

/** @default 10000 for {@linkcode StdioTransportOptions.writeTimeoutMs} */
const DEFAULT_WRITE_TIMEOUT_MS = 10_000;

/** The most a tee queues for a secondary whose reader is behind before dropping it: 1 MiB. */
const TEE_QUEUE_BYTES = 1024 * 1024;

/**
 * Ends a torn fragment: CAN ("cancel", `0x18`) is a control character, which no JSON text may hold
 * raw, inside a string or out, so the fragment plus this is never valid JSON whatever was cut.
 */
const TORN_END = Uint8Array.of(0x18, NEWLINE);

/**
 * UTF-8 bytes of a line. Short lines (the common case) are encoded into one reused buffer instead of a
 * fresh allocation: safe because a write is synchronous and finishes before the next one starts.
 */
function encodeLine(line: string): Uint8Array {
  if (line.length * 3 <= scratch.length) {
    const { written } = encoder.encodeInto(line, scratch);
    return scratch.subarray(0, written);
  }
  return encoder.encode(line);
}

// --- Console redirection: one count for every transport that asked for it

type ConsoleMethod = "log" | "info" | "debug" | "warn";
const REDIRECTED_METHODS: readonly ConsoleMethod[] = ["log", "info", "debug", "warn"];
let consoleRedirects = 0;
let savedConsole: Map<ConsoleMethod, unknown> | undefined;
let redirectedTo: ((...args: unknown[]) => void) | undefined;

function redirectConsole(): void {
  if (consoleRedirects++ > 0) return;
  const target = console as unknown as Record<ConsoleMethod, unknown>;
  savedConsole = new Map(REDIRECTED_METHODS.map((name) => [name, target[name]]));
  const error = console.error;
  const toStderr = (...args: unknown[]): void => error.apply(console, args);
  redirectedTo = toStderr;
  for (const name of REDIRECTED_METHODS) target[name] = toStderr;
}

function restoreConsole(): void {
  if (consoleRedirects === 0 || --consoleRedirects > 0) return;
  const target = console as unknown as Record<ConsoleMethod, unknown>;
  for (const name of REDIRECTED_METHODS) {
    // Someone who replaced it after us keeps theirs.
    if (target[name] === redirectedTo) target[name] = savedConsole?.get(name);
  }
  savedConsole = undefined;
  redirectedTo = undefined;
}

/** One line on stderr, for reports nobody asked a callback for; lost only if stderr is gone too. */
const reportOnStderr = stderrReporter("keelson transport");

/** The actions argument errors name. */
const CREATE_STDIO = "create a stdio transport";
const BIND_TRANSPORT = "bind a transport";
const READ_FRAMES = "read frames";

/** `JSON.stringify` that throws `TypeError` for anything it cannot turn into a JSON text. */
function serialise(frame: unknown): string {
  let text: string | undefined;
  try {
    text = JSON.stringify(frame);
  } catch (error) {
    const reason = errorMessage(error);
    throw new TypeError(`Cannot serialise the frame: ${reason}`, { cause: error });
  }
  if (typeof text !== "string") {
    throw new TypeError(`Cannot serialise the frame: JSON has no representation for ${describeValue(frame)}`);
  }
  return text;
}

function assertTransport(value: unknown, action: string, name: string): void {
  if (
    typeof value !== "object" || value === null ||
    typeof (value as Transport).write !== "function" || typeof (value as Transport).close !== "function"
  ) {
    throw new TypeError(mustBe(action, name, "a Transport (write and close methods)", value));
  }
}

/** An async iterable over a ReadableStream or an async iterable. */
function toChunkIterable(
  source: FrameByteStream | AsyncIterable<Uint8Array>,
): AsyncIterable<Uint8Array> {
  if (typeof source === "object" && source !== null) {
    if (typeof (source as AsyncIterable<Uint8Array>)[Symbol.asyncIterator] === "function") {
      return source as AsyncIterable<Uint8Array>;
    }
    if (typeof (source as FrameByteStream).getReader === "function") {
      return readerChunks(source as FrameByteStream);
    }
  }
  throw new TypeError(
    mustBe(READ_FRAMES, "source", "a ReadableStream or an async iterable of Uint8Array", source),
  );
}

/** Chunks of a ReadableStream that is not async-iterable; cancels the stream when left early. */
async function* readerChunks(stream: FrameByteStream): AsyncGenerator<Uint8Array> {
  const reader = stream.getReader();
  let done = false;
  try {
    while (true) {
      const result = await reader.read();
      if (result.done) {
        done = true;
        return;
      }
      if (result.value !== undefined) yield result.value;
    }
  } finally {
    if (!done) await reader.cancel();
    reader.releaseLock();
  }
}

/** Where {@linkcode LineParser.parseText} finds the bytes of a decoded line when it needs them. */
interface LineSource {
  lineBytes(index: number): Uint8Array;
}

/** Returned by {@linkcode LineParser.parseBytes} for a line that is not a frame. */
const NO_FRAME: unique symbol = Symbol("no frame");

/**
 * Turns lines into frames and holds the one line that spans chunks: at most `maxFrameBytes` (+1 for a
 * `\r`) bytes, copied out of the chunks so a source may reuse its buffers; a longer line is only
 * counted while it streams past.
 */
class LineParser {
  line = 0;
  #max: number;
  #onInvalid: (error: FrameError) => void;
  #pending = new Uint8Array(0);
  #pendingLength = 0;
  #discarding = false;
  #discarded = 0;
  #lastDiscarded = 0;

  constructor(max: number, onInvalid: (error: FrameError) => void) {
    this.#max = max;
    this.#onInvalid = onInvalid;
  }

  /** Whether a line is in progress (held or being discarded). */
  get open(): boolean {
    return this.#discarding || this.#pendingLength > 0;
  }

  /** The bytes of the line in progress (empty while discarding), and forgets them. */
  takePending(): Uint8Array {
    const pending = this.#discarding ? EMPTY : this.#pending.slice(0, this.#pendingLength);
    this.#pendingLength = 0;
    this.#discarding = false;
    this.#discarded = 0;
    return pending;
  }

  /** Ends the line in progress at `chunk[end]` (a newline) and returns its frame, or `NO_FRAME`. */
  endLine(chunk: Uint8Array, start: number, end: number): unknown {
    if (this.#discarding) {
      this.line++;
      this.#discarding = false;
      const last = end > start ? chunk[end - 1] : this.#lastDiscarded;
      const bytes = this.#discarded + (end - start) - (last === CARRIAGE_RETURN ? 1 : 0);
      this.#discarded = 0;
      this.#tooLarge(bytes);
      return NO_FRAME;
    }
    if (this.#pendingLength === 0) return this.parseBytes(chunk.subarray(start, end));
    const total = this.#pendingLength + (end - start);
    if (total > this.#max + 1) {
      this.line++;
      const last = end > start ? chunk[end - 1] : this.#pending[this.#pendingLength - 1];
      this.#pendingLength = 0;
      this.#tooLarge(total - (last === CARRIAGE_RETURN ? 1 : 0));
      return NO_FRAME;
    }
    this.#append(chunk, start, end);
    const line = this.#pending.subarray(0, this.#pendingLength);
    this.#pendingLength = 0;
    return this.parseBytes(line);
  }

  /** Keeps the unterminated tail `chunk[start..]` of the line in progress. */
  keep(chunk: Uint8Array, start: number): void {
    const length = chunk.length - start;
    if (length === 0) return;
    if (this.#discarding) {
      this.#discarded += length;
      this.#lastDiscarded = chunk[chunk.length - 1]!;
      return;
    }
    if (this.#pendingLength + length > this.#max + 1) {
      this.#discarding = true;
      this.#discarded = this.#pendingLength + length;
      this.#lastDiscarded = chunk[chunk.length - 1]!;
      this.#pendingLength = 0;
      this.#pending = new Uint8Array(0); // let a large buffer go
      return;
    }
    this.#append(chunk, start, chunk.length);
  }

  /** At end-of-file: the frame of a last line without newline, or `NO_FRAME`. */
  finish(): unknown {
    if (!this.open) return NO_FRAME;
    return this.endLine(EMPTY, 0, 0);
  }

  /** Turns one line's bytes (without `\n`) into a frame, reporting it when it is not one. */
  parseBytes(bytes: Uint8Array): unknown {
    this.line++;
    let length = bytes.length;
    if (length > 0 && bytes[length - 1] === CARRIAGE_RETURN) length--;
    if (length > this.#max) {
      this.#tooLarge(length);
      return NO_FRAME;
    }
    if (length === 0 || isBlank(bytes, length)) return NO_FRAME;
    let text: string;
    try {
      text = decodeStrict(length === bytes.length ? bytes : bytes.subarray(0, length));
    } catch (error) {
      this.#notUtf8(length, error);
      return NO_FRAME;
    }
    return this.#json(text, length);
  }

  /**
   * Turns line `index` of a chunk, decoded with the rest of it, into a frame. `lines` gives the line's
   * bytes (without `\n`) for the rare checks that need them (no closure per line on the hot path): a line that might be over the limit, and a line
   * holding U+FFFD (invalid UTF-8, or a real U+FFFD) when its chunk had invalid bytes.
   */
  parseText(text: string, suspect: boolean, lines: LineSource, index: number): unknown {
    this.line++;
    const units = text.length;
    if (units === 0) return NO_FRAME;
    const first = text.charCodeAt(0);
    if ((first === SPACE || first === TAB || first === CARRIAGE_RETURN) && text.trim() === "") {
      return NO_FRAME;
    }
    // UTF-8 takes at most 3 bytes per UTF-16 unit: only a long line can be over the limit.
    if (units * 3 > this.#max || (suspect && text.indexOf("\uFFFD") !== -1)) {
      const bytes = lines.lineBytes(index);
      let length = bytes.length;
      if (bytes[length - 1] === CARRIAGE_RETURN) length--;
      if (length > this.#max) {
        this.#tooLarge(length);
        return NO_FRAME;
      }
      if (suspect) {
        try {
          fatalDecoder.decode(bytes.subarray(0, length));
        } catch (error) {
          this.#notUtf8(length, error);
          return NO_FRAME;
        }
      }
    }
    // JSON.parse takes a trailing `\r` as whitespace: no copy to cut it off.
    try {
      return JSON.parse(text);
    } catch (error) {
      const length = encoder.encode(text).length - (text.charCodeAt(units - 1) === CARRIAGE_RETURN ? 1 : 0);
      this.#notJson(length, error);
      return NO_FRAME;
    }
  }

  #json(text: string, length: number): unknown {
    try {
      return JSON.parse(text);
    } catch (error) {
      this.#notJson(length, error);
      return NO_FRAME;
    }
  }

  #notUtf8(length: number, error: unknown): void {
    this.#onInvalid(
      new FrameError(this.line, "invalid-json", length, `Line ${this.line} is not valid UTF-8`, error),
    );
  }

  #notJson(length: number, error: unknown): void {
    const reason = errorMessage(error);
    this.#onInvalid(
      new FrameError(this.line, "invalid-json", length, `Line ${this.line} is not JSON: ${reason}`, error),
    );
  }

  #append(chunk: Uint8Array, start: number, end: number): void {
    const needed = this.#pendingLength + (end - start);
    if (needed > this.#pending.length) {
      const grown = new Uint8Array(Math.min(Math.max(needed, this.#pending.length * 2, 1024), this.#max + 1));
      grown.set(this.#pending.subarray(0, this.#pendingLength));
      this.#pending = grown;
    }
    this.#pending.set(chunk.subarray(start, end), this.#pendingLength);
    this.#pendingLength = needed;
  }

  #tooLarge(bytes: number): void {
    this.#onInvalid(
      new FrameError(
        this.line,
        "too-large",
        bytes,
        `Line ${this.line} is ${bytes} bytes, over maxFrameBytes ${this.#max}: skipped`,
      ),
    );
  }
}

const DONE: IteratorReturnResult<undefined> = Object.freeze({ value: undefined, done: true });
const EMPTY = new Uint8Array(0);

/** Where {@linkcode FrameIterator} is in its chunk. */
const AT_HEAD = 0; // the chunk's first line may end a line held from earlier chunks
const AT_BLOCK = 1; // the complete lines after it are next: decode them in one go
const AT_LINES = 2; // handing out the decoded lines one by one
const AT_TAIL = 3; // the unterminated tail is next: hold it for the next chunk
const USED_UP = 4;

/**
 * The frames of a chunk stream (see {@linkcode readFrames}). A hand-written async iterator rather than
 * an async generator: the frames of a chunk already in memory are handed out with one resolved promise
 * each, and only an exhausted chunk waits for the source.
 *
 * Each chunk is cut on its first and last `0x0A`: the complete lines between are decoded with one
 * `TextDecoder` call and split as a string (no copy per line, one decoder call per chunk); only a line
 * spanning chunks is gathered as bytes. Lines are parsed one `next()` at a time, so `onInvalid` calls
 * stay in stream order with the frames.
 */
class FrameIterator implements AsyncIterableIterator<unknown>, LineSource {
  #iterable: AsyncIterable<Uint8Array>;
  #source: AsyncIterator<Uint8Array> | undefined = undefined;
  #parser: LineParser;
  #chunk: Uint8Array = EMPTY;
  #state = USED_UP;
  #blockStart = 0;
  #tailStart = 0;
  #lines: string[] = [];
  #lineIndex = 0;
  #suspect = false;
  /** Byte offsets of the block's newlines, found only when a line's bytes are needed. */
  #newlines: number[] | undefined = undefined;
  #sourceDone = false;
  #finished = false;
  #pulling: Promise<IteratorResult<unknown>> | undefined = undefined;

  constructor(iterable: AsyncIterable<Uint8Array>, max: number, onInvalid: (error: FrameError) => void) {
    this.#iterable = iterable;
    this.#parser = new LineParser(max, onInvalid);
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  next(): Promise<IteratorResult<unknown>> {
    const pulling = this.#pulling;
    if (pulling !== undefined) return pulling.then(() => this.next()); // a next() before the last settled
    if (this.#finished) return Promise.resolve(DONE);
    let frame: unknown;
    try {
      frame = this.#nextInChunk();
    } catch (error) {
      return this.#fail(error);
    }
    if (frame !== NO_FRAME) return Promise.resolve({ value: frame, done: false });
    const pull = this.#pull();
    this.#pulling = pull;
    const settle = () => {
      if (this.#pulling === pull) this.#pulling = undefined;
    };
    pull.then(settle, settle);
    return pull;
  }

  async return(): Promise<IteratorResult<unknown>> {
    if (this.#finished) return DONE;
    this.#finished = true;
    const unread = (this.#iterable as Partial<StdinChunks>).unread;
    if (typeof unread === "function") {
      // The shared stdin: hand back what this loop did not use, so the next loop starts right there.
      const rest = this.#unusedBytes();
      if (rest.length > 0) unread.call(this.#iterable, rest);
    }
    await this.#closeSource();
    return DONE;
  }

  /** The next frame of the chunk in hand, or `NO_FRAME` once it is used up. */
  #nextInChunk(): unknown {
    const chunk = this.#chunk;
    while (true) {
      switch (this.#state) {
        case AT_HEAD: {
          const end = chunk.indexOf(NEWLINE);
          if (end === -1) {
            this.#tailStart = 0;
            this.#state = AT_TAIL;
            break;
          }
          this.#state = AT_BLOCK;
          if (!this.#parser.open) {
            this.#blockStart = 0;
            break;
          }
          this.#blockStart = end + 1;
          const frame = this.#parser.endLine(chunk, 0, end);
          if (frame !== NO_FRAME) return frame;
          break;
        }
        case AT_BLOCK: {
          const last = chunk.lastIndexOf(NEWLINE);
          this.#state = AT_TAIL;
          if (last < this.#blockStart) {
            this.#tailStart = this.#blockStart;
            break;
          }
          this.#tailStart = last + 1;
          const text = lenientDecoder.decode(chunk.subarray(this.#blockStart, last));
          this.#suspect = text.indexOf("\uFFFD") !== -1;
          this.#lines = text.split("\n");
          this.#lineIndex = 0;
          this.#newlines = undefined;
          this.#state = AT_LINES;
          break;
        }
        case AT_LINES: {
          const lines = this.#lines;
          while (this.#lineIndex < lines.length) {
            const index = this.#lineIndex++;
            const frame = this.#parser.parseText(lines[index]!, this.#suspect, this, index);
            if (frame !== NO_FRAME) return frame;
          }
          this.#lines = [];
          this.#state = AT_TAIL;
          break;
        }
        case AT_TAIL:
          this.#state = USED_UP;
          this.#parser.keep(chunk, this.#tailStart);
          return NO_FRAME;
        default:
          return NO_FRAME;
      }
    }
  }

  /** The bytes of decoded line `index` of the block, without its `\n`. */
  lineBytes(index: number): Uint8Array {
    return this.#chunk.subarray(this.#lineStart(index), this.#lineStart(index + 1) - 1);
  }

  /** Byte offset in the chunk where decoded line `index` of the block starts. */
  #lineStart(index: number): number {
    if (index === 0) return this.#blockStart;
    if (this.#newlines === undefined) {
      const newlines: number[] = [];
      for (let at = this.#blockStart; at < this.#tailStart; at = this.#chunk.indexOf(NEWLINE, at) + 1) {
        newlines.push(this.#chunk.indexOf(NEWLINE, at));
      }
      this.#newlines = newlines;
    }
    return this.#newlines[index - 1]! + 1;
  }

  /** What the iteration has not used yet: the line in progress and the rest of the chunk in hand. */
  #unusedBytes(): Uint8Array {
    const chunk = this.#chunk;
    let from = chunk.length;
    if (this.#state === AT_HEAD) from = 0;
    else if (this.#state === AT_BLOCK) from = this.#blockStart;
    else if (this.#state === AT_LINES) from = this.#lineStart(this.#lineIndex);
    else if (this.#state === AT_TAIL) from = this.#tailStart;
    const pending = this.#parser.takePending();
    const rest = chunk.subarray(from);
    if (pending.length === 0) return rest;
    const joined = new Uint8Array(pending.length + rest.length);
    joined.set(pending);
    joined.set(rest, pending.length);
    return joined;
  }

  /** Reads chunks until one yields a frame, or the source ends (a reset stream ends like EOF). */
  async #pull(): Promise<IteratorResult<unknown>> {
    this.#source ??= this.#iterable[Symbol.asyncIterator]();
    let result: IteratorResult<Uint8Array>;
    while (true) {
      try {
        result = await this.#source.next();
      } catch (error) {
        this.#sourceDone = true; // a source that threw is over; it is not asked to return
        if (!isPeerGone(error)) {
          this.#finished = true;
          throw error;
        }
        result = DONE; // the peer reset or closed the stream: that is its end of file
      }
      try {
        if (result.done) {
          this.#sourceDone = true;
          this.#finished = true;
          const last = this.#parser.finish();
          return last === NO_FRAME ? DONE : { value: last, done: false };
        }
        const chunk: unknown = result.value;
        if (!(chunk instanceof Uint8Array)) {
          throw new TypeError(mustBe(READ_FRAMES, "chunk", "a Uint8Array", chunk));
        }
        this.#chunk = chunk;
        this.#state = AT_HEAD;
        const frame = this.#nextInChunk();
        if (frame !== NO_FRAME) return { value: frame, done: false };
      } catch (error) {
        return this.#fail(error);
      }
    }
  }

  /** Ends the iteration with `error`, closing the source first as a `for await` loop would. */
  async #fail(error: unknown): Promise<never> {
    this.#finished = true;
    await this.#closeSource();
    throw error;
  }

  async #closeSource(): Promise<void> {
    const source = this.#source;
    if (source === undefined || this.#sourceDone) return;
    this.#sourceDone = true;
    await source.return?.();
  }
}

/** Without `onInvalid`: one line on stderr per line that is not a frame, and reading goes on. */
function reportInvalidLine(error: FrameError): void {
  reportOnStderr(`readFrames() skipped line ${error.line}: ${error.message}`);
}

/**
 * Decodes UTF-8, throwing `TypeError` on invalid bytes. A fatal decoder is several times slower than a
 * lenient one on some runtimes, so the lenient one runs first: it marks invalid bytes with U+FFFD, and
 * only a line whose text holds U+FFFD (rare: invalid, or a real U+FFFD) is decoded again fatally.
 */
function decodeStrict(bytes: Uint8Array): string {
  const text = lenientDecoder.decode(bytes);
  if (text.indexOf("\uFFFD") !== -1) fatalDecoder.decode(bytes);
  return text;
}

/** Whether the first `length` bytes are all JSON whitespace (space, tab, CR). */
function isBlank(bytes: Uint8Array, length: number): boolean {
  const first = bytes[0];
  if (first !== SPACE && first !== TAB && first !== CARRIAGE_RETURN) return false;
  for (let i = 1; i < length; i++) {
    const byte = bytes[i];
    if (byte !== SPACE && byte !== TAB && byte !== CARRIAGE_RETURN) return false;
  }
  return true;
}
