import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { execFileSync, spawn } from "node:child_process";
import { runtime, scriptCommand } from "../platform.ts";
import { fixture, fixtureArgv, freshDir, runFixture, runToEnd, sleep, tempRoot } from "./_helpers.ts";
import {
  createStdioTransport,
  currentTransport,
  FrameError,
  isPeerGone,
  readFrames,
  TeeTransport,
  type Transport,
  TransportWriteError,
  withTransport,
} from "../transport.ts";
import {
  PY_CLOSE_AFTER_FIRST_LINE,
  PY_FD3,
  PY_FILE_SIZE_LIMIT,
  PY_LOCKSTEP_CLIENT,
  PY_NEVER_READS,
  PY_PTY_WITHOUT_MASTER,
  PY_RESET_PEER,
  PY_SLOW_NONBLOCKING_READER,
  PY_SLOW_PTY_READER,
  PY_SLOW_SOCKET_READER,
  PY_SOCKET_CLOSED_WITH_UNREAD_DATA,
  PY_STDIN_KEPT_OPEN,
} from "./fixtures/_transport_python.ts";

const WRITER = fixture("transport_writer.ts");
const PEER = fixture("transport_peer.ts");
const SLOW = { timeout: 60_000 };
const encoder = new TextEncoder();

const dir = tempRoot();

// ---------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------

/** Runs an inline python3 program with arguments and parses the JSON it prints. */
async function python(program: string, args: string[]): Promise<Record<string, unknown>> {
  const outcome = await runToEnd("python3", ["-c", program, ...args]);
  assert.equal(outcome.code, 0, `python3 failed: ${outcome.stderr}`);
  return JSON.parse(outcome.stdout);
}

function shellQuote(parts: string[]): string {
  return parts.map((part) => `'${part.replaceAll("'", `'\\''`)}'`).join(" ");
}

/** A real pipe inside this process: a FIFO opened at both ends. Close `reader` to make the peer go. */
function openFifo(): { reader: number; writer: number } {
  const fifo = path.join(dir, `fifo-${Math.random().toString(36).slice(2)}`);
  execFileSync("mkfifo", [fifo]);
  const reader = fs.openSync(fifo, fs.constants.O_RDONLY | fs.constants.O_NONBLOCK);
  const writer = fs.openSync(fifo, fs.constants.O_WRONLY);
  fs.unlinkSync(fifo);
  return { reader, writer };
}

function readAvailable(fd: number): string {
  const buffer = Buffer.alloc(1 << 20);
  let text = "";
  while (true) {
    let n = 0;
    try {
      n = fs.readSync(fd, buffer, 0, buffer.length, null);
    } catch (error) {
      if ((error as { code?: string }).code === "EAGAIN") break;
      throw error;
    }
    if (n === 0) break;
    text += buffer.subarray(0, n).toString();
  }
  return text;
}

function tempFile(name: string): { file: string; fd: number } {
  const file = path.join(dir, `${name}-${Math.random().toString(36).slice(2)}`);
  return { file, fd: fs.openSync(file, "a") };
}

async function* chunksOf(parts: Uint8Array[]): AsyncGenerator<Uint8Array> {
  for (const part of parts) yield part;
}

async function collect(
  source: AsyncIterable<Uint8Array> | ReadableStream<Uint8Array>,
  maxFrameBytes?: number,
): Promise<{ frames: unknown[]; errors: FrameError[]; order: string[] }> {
  const frames: unknown[] = [];
  const errors: FrameError[] = [];
  const order: string[] = [];
  const options = {
    maxFrameBytes,
    onInvalid: (error: FrameError) => {
      errors.push(error);
      order.push(`error:${error.line}`);
    },
  };
  for await (const frame of readFrames(source, options)) {
    frames.push(frame);
    order.push("frame");
  }
  return { frames, errors, order };
}

/** A transport that records frames, for tee tests; `fail` makes write throw or return false. */
class Recorder implements Transport {
  frames: unknown[] = [];
  closed = 0;
  fail: "throw" | "false" | "none" = "none";
  closeThrows = false;
  write(frame: unknown): boolean {
    if (this.fail === "throw") throw new Error("recorder broke");
    if (this.fail === "false") return false;
    this.frames.push(frame);
    return true;
  }
  close(): void {
    this.closed++;
    if (this.closeThrows) throw new Error("close broke");
  }
}

// ---------------------------------------------------------------------------------------------------
// createStdioTransport()
// ---------------------------------------------------------------------------------------------------

describe("createStdioTransport()", () => {
  it("createStdioTransport() writes one JSON line per frame through a real pipe and returns true", () => {
    const { reader, writer } = openFifo();
    try {
      const transport = createStdioTransport({ fd: writer });
      assert.equal(transport.fd, writer);
      const frames = [{ a: 1 }, "text with\nnewline", [1, "\u2713", "\u{1d11e}"], null, 0, {
        "\u2028": "sep",
      }];
      for (const frame of frames) assert.equal(transport.write(frame), true);
      const lines = readAvailable(reader).split("\n");
      assert.equal(lines.pop(), "");
      assert.deepEqual(lines.map((line) => JSON.parse(line)), frames);
      assert.equal(transport.peerGone, false);
    } finally {
      fs.closeSync(writer);
      fs.closeSync(reader);
    }
  });

  it("createStdioTransport() write() throws TypeError and writes nothing for unserialisable frames", () => {
    const { file, fd } = tempFile("unserialisable");
    const transport = createStdioTransport({ fd });
    const cycle: Record<string, unknown> = { name: "cycle" };
    cycle.self = cycle;
    const bad: Array<[string, unknown]> = [
      ["cycle", cycle],
      ["BigInt", { n: 10n }],
      ["undefined", undefined],
      ["function", () => 1],
      ["symbol", Symbol("s")],
      ["throwing toJSON", {
        toJSON: () => {
          throw new Error("toJSON broke");
        },
      }],
    ];
    for (const [label, frame] of bad) {
      assert.throws(() => transport.write(frame), TypeError, label);
      assert.equal(fs.statSync(file).size, 0, `${label} wrote something`);
    }
    const error = (() => {
      try {
        transport.write({ n: 1n });
      } catch (error) {
        return error as TypeError;
      }
    })();
    assert.match(error!.message, /serialise/);
    assert.ok(error!.cause instanceof TypeError, "the JSON.stringify error is the cause");
    assert.equal(transport.write({ ok: true }), true, "the transport still works afterwards");
    assert.equal(fs.readFileSync(file, "utf8"), '{"ok":true}\n');
    transport.close();
  });

  it("createStdioTransport() write() throws TransportWriteError with the cause on /dev/full, every time", () => {
    const fd = fs.openSync("/dev/full", "w");
    const transport = createStdioTransport({ fd });
    for (let attempt = 0; attempt < 2; attempt++) {
      assert.throws(
        () => transport.write({ attempt }),
        (error: unknown) => {
          assert.ok(error instanceof TransportWriteError);
          assert.ok(error instanceof Error);
          assert.equal(error.name, "TransportWriteError");
          assert.equal(error.code, "ENOSPC");
          assert.equal((error.cause as { code?: string }).code, "ENOSPC");
          assert.equal(error.fd, fd);
          assert.equal(error.bytesWritten, 0);
          assert.equal(error.frameBytes, `{"attempt":${attempt}}\n`.length);
          assert.match(error.message, /ENOSPC/);
          assert.equal(isPeerGone(error), false);
          return true;
        },
      );
    }
    assert.equal(transport.peerGone, false);
    transport.close();
  });

  it("createStdioTransport() throws TypeError for a descriptor that is not open, it is not a gone peer", () => {
    const fd = fs.openSync("/dev/null", "w");
    fs.closeSync(fd);
    assert.throws(
      () => createStdioTransport({ fd, closeFd: false }),
      (error: unknown) => error instanceof TypeError && /not an open descriptor/.test(error.message),
    );
    const reader = fs.openSync("/dev/null", "r");
    try {
      assert.throws(() => createStdioTransport({ fd: reader, closeFd: false }), TypeError);
    } finally {
      fs.closeSync(reader);
    }
  });

  it("createStdioTransport() write() returns false once its descriptor was closed behind its back", () => {
    const fd = fs.openSync("/dev/null", "w");
    const transport = createStdioTransport({ fd, closeFd: false });
    fs.closeSync(fd);
    assert.equal(transport.write({ to: "nobody" }), false);
    assert.equal(transport.peerGone, true);
  });

  it("createStdioTransport() returns false once the reader closed the pipe, then never touches the fd", () => {
    const { reader, writer } = openFifo();
    const transport = createStdioTransport({ fd: writer, closeFd: false });
    assert.equal(transport.write({ seq: 1 }), true);
    fs.closeSync(reader);
    assert.equal(transport.write({ seq: 2 }), false);
    assert.equal(transport.peerGone, true);
    // Hand the descriptor number to a new file: a transport that still wrote to it would land there.
    fs.closeSync(writer);
    const { file, fd } = tempFile("reused");
    const extra: number[] = [];
    let reused = fd;
    while (reused !== writer && extra.length < 64) {
      extra.push(reused);
      reused = fs.openSync(file, "a");
    }
    try {
      assert.equal(reused, writer, "the descriptor number was handed out again");
      assert.equal(transport.write({ seq: 3 }), false);
      assert.equal(fs.statSync(file).size, 0);
    } finally {
      fs.closeSync(reused);
      for (const other of extra) fs.closeSync(other);
    }
  });

  it(
    "createStdioTransport() returns false when the reader quits early (head -n 1): exit 0, no stack",
    SLOW,
    async () => {
      const script = `${
        shellQuote(fixtureArgv(WRITER, ["until-gone"]))
      } | head -n 1; echo "status=\${PIPESTATUS[0]}" >&2`;
      const outcome = await runToEnd("bash", ["-c", script]);
      assert.equal(outcome.code, 0);
      assert.deepEqual(JSON.parse(outcome.stdout), { seq: 0, text: "a frame for a reader that may quit" });
      assert.match(outcome.stderr, /^gone after \d+ frames\nstatus=0\n$/);
    },
  );

  it(
    "createStdioTransport() returns false when the parent closes its end of stdout: exit 0, no stack",
    SLOW,
    async () => {
      const result = await python(PY_CLOSE_AFTER_FIRST_LINE, fixtureArgv(WRITER, ["until-gone"]));
      assert.deepEqual(JSON.parse(result.first as string), {
        seq: 0,
        text: "a frame for a reader that may quit",
      });
      assert.equal(result.rc, 0);
      assert.match(result.stderr as string, /^gone after \d+ frames\n$/);
    },
  );

  it(
    "createStdioTransport() returns false when the peer of a socket stdout closes it: exit 0",
    SLOW,
    async () => {
      const result = await python(PY_SOCKET_CLOSED_WITH_UNREAD_DATA, fixtureArgv(WRITER, ["until-gone"]));
      assert.deepEqual(JSON.parse(result.first as string), {
        seq: 0,
        text: "a frame for a reader that may quit",
      });
      assert.equal(result.rc, 0);
      assert.match(result.stderr as string, /^gone after \d+ frames\n$/);
    },
  );

  it(
    "createStdioTransport() returns false when this runtime's parent destroys the child's stdout",
    SLOW,
    async () => {
      const { command, args } = scriptCommand(WRITER, ["until-gone"]);
      const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
      let stderr = "";
      let first = "";
      const closed = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
      child.stderr!.on("data", (chunk: Uint8Array) => (stderr += Buffer.from(chunk).toString()));
      child.stdout!.on("data", (chunk: Uint8Array) => {
        if (first === "") {
          first = Buffer.from(chunk).toString().split("\n")[0];
          child.stdout!.destroy();
        }
      });
      assert.equal(await closed, 0);
      assert.deepEqual(JSON.parse(first), { seq: 0, text: "a frame for a reader that may quit" });
      assert.match(stderr, /^gone after \d+ frames\n$/);
    },
  );

  it("createStdioTransport() delivers a 10 MiB frame whole to a slow reader", SLOW, async () => {
    const size = 10 * 1024 * 1024;
    const { command, args } = scriptCommand(WRITER, ["big", String(size)]);
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
    const chunks: Uint8Array[] = [];
    let stderr = "";
    const closed = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    child.stderr!.on("data", (chunk: Uint8Array) => (stderr += Buffer.from(chunk).toString()));
    let reads = 0;
    child.stdout!.on("data", (chunk: Uint8Array) => {
      chunks.push(chunk);
      if (reads++ < 100) {
        child.stdout!.pause(); // a slow reader: the writer's pipe stays full
        setTimeout(() => child.stdout!.resume(), 3);
      }
    });
    assert.equal(await closed, 0, stderr);
    const lines = Buffer.concat(chunks).toString().split("\n");
    assert.equal(lines.length, 3);
    assert.equal(lines[2], "");
    const big = JSON.parse(lines[0]);
    assert.equal(big.size, size);
    assert.equal(big.big.length, size);
    assert.ok(/^x+$/.test(big.big));
    assert.deepEqual(JSON.parse(lines[1]), { after: true });
    assert.deepEqual(JSON.parse(stderr).delivered, [true, true]);
  });

  it(
    "createStdioTransport() delivers a 10 MiB frame whole when fd 1 is a non-blocking pipe",
    SLOW,
    async () => {
      // The parent makes the pipe non-blocking, as Node does to a piped stdout once process.stdout is used.
      const size = 10 * 1024 * 1024;
      const result = await python(PY_SLOW_NONBLOCKING_READER, fixtureArgv(WRITER, ["big", String(size)]));
      assert.equal(result.rc, 0, result.stderr as string);
      const report = JSON.parse(result.stderr as string);
      assert.equal(report.nonBlocking, true, "fd 1 really was non-blocking");
      assert.deepEqual(report.delivered, [true, true]);
      assert.deepEqual(result.frames, [{ big: { len: size, uniform: true }, size }, { after: true }]);
      assert.equal(result.invalid, 0);
      assert.equal(result.trailing, 0);
    },
  );

  it(
    "createStdioTransport() delivers a 10 MiB frame whole after process.stdout made fd 1 non-blocking",
    SLOW,
    async () => {
      const size = 10 * 1024 * 1024;
      const script = `${
        shellQuote(fixtureArgv(WRITER, ["big", String(size), "--touch-stdout"]))
      } | (sleep 0.3; cat)`;
      const outcome = await runToEnd("bash", ["-c", script]);
      assert.equal(outcome.code, 0, outcome.stderr);
      const report = JSON.parse(outcome.stderr);
      if (runtime === "node") {
        assert.equal(
          report.nonBlocking,
          true,
          "Node made the piped stdout non-blocking",
        );
      }
      assert.deepEqual(report.delivered, [true, true]);
      const lines = outcome.stdout.split("\n");
      assert.equal(lines.length, 3);
      assert.equal(JSON.parse(lines[0]).big.length, size);
      assert.deepEqual(JSON.parse(lines[1]), { after: true });
    },
  );

  it(
    "createStdioTransport() never interleaves frames from sync and async writers on a non-blocking pipe",
    SLOW,
    async () => {
      const result = await python(PY_SLOW_NONBLOCKING_READER, fixtureArgv(WRITER, ["mixed"]));
      assert.equal(result.rc, 0, result.stderr as string);
      const { written } = JSON.parse(result.stderr as string);
      const frames = result.frames as Array<{ writer: string; seq: number; size: number; body: unknown }>;
      assert.equal(result.invalid, 0, "every line is one whole frame");
      assert.equal(result.trailing, 0);
      assert.equal(frames.length, written);
      assert.equal(written, 20 + 3 * 24 + 10);
      for (const frame of frames) assert.deepEqual(frame.body, { len: frame.size, uniform: true });
      for (const writer of ["sync", "alpha", "beta", "gamma", "timer"]) {
        const seqs = frames.filter((frame) => frame.writer === writer).map((frame) => frame.seq);
        assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `${writer} frames stay in order`);
      }
    },
  );

  it(
    "createStdioTransport() throws TransportWriteError on EIO (a tty whose other end is gone)",
    SLOW,
    async () => {
      const result = await python(PY_PTY_WITHOUT_MASTER, fixtureArgv(WRITER, ["report-error"]));
      assert.equal(result.rc, 0);
      assert.deepEqual(JSON.parse(result.stderr as string), {
        name: "TransportWriteError",
        code: "EIO",
        causeCode: "EIO",
        bytesWritten: 0,
        isError: true,
      });
    },
  );

  it(
    "createStdioTransport() starts the next frame on a fresh line after a host error tore one",
    SLOW,
    async () => {
      const limit = 1000;
      const file = path.join(dir, "torn.jsonl");
      const result = await python(PY_FILE_SIZE_LIMIT, [
        String(limit),
        ...fixtureArgv(WRITER, ["torn", file, String(limit)]),
      ]);
      assert.equal(result.rc, 0);
      const report = JSON.parse(result.stderr as string);
      assert.equal(report.first.name, "TransportWriteError");
      assert.equal(report.first.isError, true);
      assert.ok(report.first.bytesWritten <= limit);
      assert.equal(report.second, true);
      // The fragment (truncated away here) is ended by CAN and a newline; the next frame arrives intact.
      assert.equal(fs.readFileSync(file, "utf8"), '\x18\n{"next":"intact"}\n');
    },
  );

  it(
    "createStdioTransport({ flush: true }) fsyncs a regular file after each frame and skips pipes",
    SLOW,
    async () => {
      const file = path.join(dir, "flushed.jsonl");
      const trace = path.join(dir, "flush.strace");
      const argv = fixtureArgv(WRITER, ["flush", file, "5"]);
      const outcome = await runToEnd("strace", ["-f", "-e", "trace=fsync,fdatasync", "-o", trace, ...argv]);
      assert.equal(outcome.code, 0, outcome.stderr);
      const report = JSON.parse(outcome.stderr.trim().split("\n").pop()!);
      assert.equal(report.fileClosed, true);
      assert.equal(outcome.stdout.trim().split("\n").length, 5);
      assert.equal(fs.readFileSync(file, "utf8").trim().split("\n").length, 5);
      // The runtime's own threads sync their caches too: count only the main thread's syncs of our file,
      // and check that no sync of any descriptor from the main thread failed (none was tried on the pipe).
      const lines = fs.readFileSync(trace, "utf8").split("\n").filter((line) =>
        line.startsWith(`${report.pid} `)
      );
      const ours = lines.filter((line) => new RegExp(`f(data)?sync\\(${report.fd}\\)\\s+= 0$`).test(line));
      assert.equal(ours.length, 5, lines.join("\n"));
      assert.deepEqual(lines.filter((line) => /= -1 /.test(line)), [], "no fsync failed");
    },
  );

  it("createStdioTransport() close() stops writes and closes only descriptors it owns", () => {
    const { file, fd } = tempFile("close");
    const owned = createStdioTransport({ fd });
    assert.equal(owned.write({ n: 1 }), true);
    owned.close();
    owned.close(); // idempotent
    assert.equal(owned.closed, true);
    assert.throws(() => fs.fstatSync(fd), (error: unknown) => isPeerGone(error), "fd was closed");
    assert.equal(owned.write({ n: 2 }), false);
    assert.equal(fs.readFileSync(file, "utf8"), '{"n":1}\n');

    const kept = tempFile("kept");
    const borrowed = createStdioTransport({ fd: kept.fd, closeFd: false });
    borrowed.close();
    assert.equal(borrowed.write({ n: 3 }), false);
    assert.ok(fs.fstatSync(kept.fd).isFile(), "closeFd: false leaves the descriptor open");
    fs.closeSync(kept.fd);

    const stdout = createStdioTransport();
    stdout[Symbol.dispose]();
    assert.equal(stdout.closed, true);
    assert.ok(fs.fstatSync(1), "fd 1 stays open by default");
  });

  it("createStdioTransport() rejects bad options with a TypeError (wrong type) or RangeError naming the option", () => {
    assert.throws(() => createStdioTransport({ fd: -1 }), {
      name: "RangeError",
      message: /^Cannot create a stdio transport: 'fd' must be a non-negative integer, got -1$/,
    });
    assert.throws(() => createStdioTransport({ fd: 1.5 }), { name: "RangeError", message: /'fd'/ });
    assert.throws(() => createStdioTransport({ writeTimeoutMs: -1 }), {
      name: "RangeError",
      message: /^Cannot create a stdio transport: 'writeTimeoutMs' must be a non-negative number, got -1$/,
    });
    assert.throws(() => createStdioTransport({ writeTimeoutMs: "5" as unknown as number }), {
      name: "TypeError",
      message: /^Cannot create a stdio transport: 'writeTimeoutMs' must be a non-negative number, got "5"$/,
    });
    assert.throws(() => createStdioTransport({ fd: "1" as unknown as number }), {
      name: "TypeError",
      message: /fd/,
    });
    assert.throws(() => createStdioTransport({ flush: "yes" as unknown as boolean }), {
      name: "TypeError",
      message: /^Cannot create a stdio transport: 'flush' must be a boolean, got "yes"$/,
    });
    assert.throws(() => createStdioTransport({ closeFd: 1 as unknown as boolean }), {
      name: "TypeError",
      message: /closeFd/,
    });
    assert.throws(() => createStdioTransport(null as unknown as object), {
      name: "TypeError",
      message: /options/,
    });
  });
});

// ---------------------------------------------------------------------------------------------------
// isPeerGone()
// ---------------------------------------------------------------------------------------------------

describe("isPeerGone()", () => {
  it("isPeerGone() is true for EPIPE, ECONNRESET, EBADF, ESHUTDOWN and Deno's gone-peer errors", () => {
    for (const code of ["EPIPE", "ECONNRESET", "EBADF", "ESHUTDOWN"]) {
      assert.equal(isPeerGone(Object.assign(new Error(code), { code })), true, code);
    }
    for (const name of ["BrokenPipe", "BadResource", "ConnectionReset"]) {
      const error = new Error(name);
      error.name = name;
      assert.equal(isPeerGone(error), true, name);
    }
  });

  it("isPeerGone() is false for host errors and for anything that is not an errno error", () => {
    for (const code of ["ENOSPC", "EACCES", "EIO", "EAGAIN", "EFBIG", "EINVAL"]) {
      assert.equal(isPeerGone(Object.assign(new Error(code), { code })), false, code);
    }
    const denied = new Error("denied");
    denied.name = "PermissionDenied";
    assert.equal(isPeerGone(denied), false);
    for (const value of [undefined, null, "EPIPE", 32, new Error("EPIPE"), new TypeError("x")]) {
      assert.equal(isPeerGone(value), false, String(value));
    }
  });

  it("isPeerGone() recognises the real error of a write to a pipe without reader", () => {
    const { reader, writer } = openFifo();
    fs.closeSync(reader);
    try {
      assert.throws(() => fs.writeSync(writer, "x\n"), (error: unknown) => isPeerGone(error));
    } finally {
      fs.closeSync(writer);
    }
  });
});

// ---------------------------------------------------------------------------------------------------
// TeeTransport
// ---------------------------------------------------------------------------------------------------

describe("TeeTransport", () => {
  it("TeeTransport write() returns the primary's result whatever the secondaries do", () => {
    const primary = tempFile("tee-primary");
    const copy = tempFile("tee-copy");
    const full = createStdioTransport({ fd: fs.openSync("/dev/full", "w") });
    const fifo = openFifo();
    const gone = createStdioTransport({ fd: fifo.writer });
    fs.closeSync(fifo.reader);
    const thrower = new Recorder();
    thrower.fail = "throw";
    const liar = new Recorder();
    liar.fail = "false";
    const good = createStdioTransport({ fd: copy.fd });
    const tee = new TeeTransport(createStdioTransport({ fd: primary.fd }), full, gone, thrower, liar, good);
    const reported: Array<[unknown, Transport]> = [];
    tee.onError = (error, secondary) => reported.push([error, secondary]);

    assert.equal(tee.write({ n: 1 }), true);
    assert.equal(tee.write({ n: 2 }), true);
    assert.deepEqual(tee.secondaries, [good], "failed secondaries are dropped");
    assert.equal(full.closed, true, "a dropped secondary is closed");
    assert.equal(gone.closed, true);
    assert.equal(thrower.closed, 1);
    assert.equal(liar.closed, 1);
    assert.deepEqual(reported.map(([, secondary]) => secondary), [full, thrower], "throwers are reported");
    assert.equal((reported[0][0] as TransportWriteError).code, "ENOSPC");
    assert.equal(fs.readFileSync(primary.file, "utf8"), '{"n":1}\n{"n":2}\n');
    assert.equal(fs.readFileSync(copy.file, "utf8"), '{"n":1}\n{"n":2}\n');
    tee.close();
  });

  it("TeeTransport queues what a slow secondary's reader has not taken yet and delivers it in order, once", () => {
    const primary = tempFile("tee-slow-primary");
    const fifo = openFifo();
    const secondary = createStdioTransport({ fd: fifo.writer });
    const tee = new TeeTransport(createStdioTransport({ fd: primary.fd }), secondary);
    const errors: unknown[] = [];
    tee.onError = (error) => errors.push(error);
    const body = "q".repeat(2000);
    for (let seq = 0; seq < 100; seq++) assert.equal(tee.write({ seq, body }), true); // 200 KB > the pipe
    let received = "";
    for (let seq = 100; seq < 400 && received.split("\n").length <= 400; seq++) {
      received += readAvailable(fifo.reader); // the reader catches up a little, then more frames come
      assert.equal(tee.write({ seq, body: "" }), true);
    }
    while (received.split("\n").length <= 400) {
      received += readAvailable(fifo.reader);
      tee.write({ seq: -1, body: "" });
      if (tee.secondaries.length === 0) break;
    }
    assert.deepEqual(errors, []);
    const seqs = received.split("\n").filter((line) => line !== "").map((line) => JSON.parse(line).seq);
    assert.deepEqual(seqs.filter((seq) => seq >= 0), Array.from({ length: 400 }, (_, i) => i));
    tee.close();
    fs.closeSync(fifo.reader);
  });

  it("TeeTransport write() propagates the primary's exceptions and then skips the secondaries", () => {
    const secondary = new Recorder();
    const tee = new TeeTransport(createStdioTransport({ fd: fs.openSync("/dev/full", "w") }), secondary);
    assert.throws(() => tee.write({ n: 1 }), TransportWriteError);
    assert.throws(() => tee.write({ n: 2n }), TypeError);
    assert.deepEqual(secondary.frames, []);
    assert.deepEqual(tee.secondaries, [secondary], "a primary failure does not drop secondaries");
    tee.close();
  });

  it("TeeTransport write() returns false when the primary's peer is gone and still copies the frame", () => {
    const { reader, writer } = openFifo();
    fs.closeSync(reader);
    const secondary = new Recorder();
    const tee = new TeeTransport(createStdioTransport({ fd: writer }), secondary);
    assert.equal(tee.write({ n: 1 }), false);
    assert.deepEqual(secondary.frames, [{ n: 1 }]);
    tee.close();
  });

  it("TeeTransport close() closes every secondary safely, then the primary, once", () => {
    const primary = new Recorder();
    primary.closeThrows = true;
    const a = new Recorder();
    a.closeThrows = true;
    const b = new Recorder();
    const tee = new TeeTransport(primary, a, b);
    const reported: unknown[] = [];
    tee.onError = (error) => reported.push(error);
    assert.throws(() => tee.close(), /close broke/, "the primary's close error propagates");
    assert.deepEqual([primary.closed, a.closed, b.closed], [1, 1, 1]);
    assert.equal(reported.length, 1);
    tee.close();
    assert.deepEqual([primary.closed, a.closed, b.closed], [1, 1, 1], "idempotent");
    assert.deepEqual(tee.secondaries, []);
  });

  it("TeeTransport reports a failed secondary on stderr when onError is unset", SLOW, async () => {
    const outcome = await runFixture(WRITER, ["tee-stderr"]);
    assert.equal(outcome.code, 0, outcome.stderr);
    assert.equal(outcome.stdout, '{"n":1}\n{"n":2}\n');
    const lines = outcome.stderr.trim().split("\n");
    assert.equal(lines.length, 2);
    assert.match(lines[0], /^keelson transport: a TeeTransport secondary failed and was dropped: .*ENOSPC/);
    assert.deepEqual(JSON.parse(lines[1]), { results: [true, true], secondaries: 0 });
  });

  it("TeeTransport rejects a primary or secondary that is not a Transport", () => {
    assert.throws(() => new TeeTransport(null as unknown as Transport), {
      name: "TypeError",
      message: /primary/,
    });
    assert.throws(() => new TeeTransport(new Recorder(), {} as Transport), {
      name: "TypeError",
      message:
        /^Cannot create a TeeTransport: 'secondaries\[0\]' must be a Transport \(write and close methods\), got an object$/,
    });
  });
});

// ---------------------------------------------------------------------------------------------------
// withTransport() / currentTransport()
// ---------------------------------------------------------------------------------------------------

describe("withTransport()", () => {
  it("withTransport() binds a transport for the whole async call tree, nested and concurrent", async () => {
    const a = new Recorder();
    const b = new Recorder();
    assert.equal(currentTransport(), undefined);
    const seen: unknown[] = [];
    const task = async (expected: Transport) => {
      await sleep(5);
      seen.push(currentTransport() === expected);
      await Promise.resolve();
      currentTransport()!.write({ from: expected === a ? "a" : "b" });
    };
    await Promise.all([withTransport(a, () => task(a)), withTransport(b, () => task(b))]);
    const nested = withTransport(a, () => {
      const inner = withTransport(b, () => currentTransport());
      return [inner, currentTransport()];
    });
    assert.deepEqual(seen, [true, true]);
    assert.deepEqual(a.frames, [{ from: "a" }]);
    assert.deepEqual(b.frames, [{ from: "b" }]);
    assert.equal(nested[0], b);
    assert.equal(nested[1], a);
    assert.equal(currentTransport(), undefined);
    assert.equal(withTransport(a, () => 42), 42);
  });

  it("withTransport() rejects a non-transport and a non-function", () => {
    assert.throws(() => withTransport({} as Transport, () => 1), {
      name: "TypeError",
      message:
        /^Cannot bind a transport: 'transport' must be a Transport \(write and close methods\), got an object$/,
    });
    assert.throws(() => withTransport(new Recorder(), 1 as unknown as () => number), {
      name: "TypeError",
      message: /fn/,
    });
  });
});

// ---------------------------------------------------------------------------------------------------
// readFrames()
// ---------------------------------------------------------------------------------------------------

describe("readFrames()", () => {
  const frames = [{ text: "h\u00e9llo \u2713" }, ["\u{1d11e}", 1], "\u00df", { n: null }];
  const input = encoder.encode(
    frames.map((frame) => JSON.stringify(frame)).join("\r\n") + "\n\n  \r\n" + '{"last":"no newline \u2713"}',
  );
  const expected = [...frames, { last: "no newline \u2713" }];

  it("readFrames() survives chunks split at every point, even inside a UTF-8 character", async () => {
    for (let i = 0; i <= input.length; i++) {
      for (let j = i; j <= input.length; j += 3) {
        const parts = [input.subarray(0, i), input.subarray(i, j), input.subarray(j)];
        const result = await collect(chunksOf(parts));
        assert.deepEqual(result.frames, expected, `split at ${i} and ${j}`);
        assert.deepEqual(result.errors, []);
      }
    }
  });

  it("readFrames() survives one byte per chunk and a source that reuses its buffer", async () => {
    async function* reused(): AsyncGenerator<Uint8Array> {
      const buffer = new Uint8Array(3);
      for (let offset = 0; offset < input.length; offset += 3) {
        const part = input.subarray(offset, offset + 3);
        buffer.fill(0);
        buffer.set(part);
        yield buffer.subarray(0, part.length);
      }
    }
    const bytewise = [...input].map((byte) => Uint8Array.of(byte));
    assert.deepEqual((await collect(chunksOf(bytewise))).frames, expected);
    assert.deepEqual((await collect(reused())).frames, expected);
  });

  it("readFrames() hands invalid lines to onInvalid with their line numbers, in order, and goes on", async () => {
    const bytes = Buffer.concat([
      encoder.encode('{"a":1}\nnot json\n\n{"b":2}\r\n'),
      Uint8Array.of(0x22, 0xff, 0x22, 0x0a), // line 5: not UTF-8
      Uint8Array.of(0x22, 0xe2, 0x9c, 0x22, 0x0a), // line 6: a truncated character
      encoder.encode('{"c":\n[1,2]\n{"d":3'), // line 7 invalid, line 8 valid, line 9 cut off at EOF
    ]);
    const result = await collect(chunksOf([bytes.subarray(0, 7), bytes.subarray(7)]));
    assert.deepEqual(result.frames, [{ a: 1 }, { b: 2 }, [1, 2]]);
    assert.deepEqual(result.errors.map((error) => [error.line, error.reason]), [
      [2, "invalid-json"],
      [5, "invalid-json"],
      [6, "invalid-json"],
      [7, "invalid-json"],
      [9, "invalid-json"],
    ]);
    assert.deepEqual(result.order, [
      "frame",
      "error:2",
      "frame",
      "error:5",
      "error:6",
      "error:7",
      "frame",
      "error:9",
    ]);
    for (const error of result.errors) {
      assert.ok(error instanceof FrameError);
      assert.ok(error instanceof Error);
      assert.equal(error.name, "FrameError");
      assert.ok(error.cause instanceof Error, "the decoder or parser error is the cause");
      assert.match(error.message, new RegExp(`^Line ${error.line} `));
    }
    assert.match(result.errors[1].message, /UTF-8/);
  });

  it(
    "readFrames() without onInvalid reports each invalid line on stderr and goes on (the README server)",
    SLOW,
    async () => {
      const input = Buffer.from('garbage\n{"id":1}\n{"id":\n\xff\n{"id":2}\n', "latin1");
      const outcome = await runFixture(PEER, ["plain"], { input });
      assert.equal(outcome.code, 0, outcome.stderr);
      assert.equal(outcome.stdout, '{"id":1,"result":"ok"}\n{"id":2,"result":"ok"}\n');
      const reports = outcome.stderr.trim().split("\n");
      assert.equal(reports.length, 3, outcome.stderr);
      assert.match(reports[0], /line 1: Line 1 is not JSON/);
      assert.match(reports[1], /line 3: Line 3 is not JSON/);
      assert.match(reports[2], /line 4: Line 4 is not valid UTF-8/);
    },
  );

  it("readFrames() ends like EOF when its source fails with a reset, and rethrows other errors", async () => {
    async function* reset(code: string): AsyncGenerator<Uint8Array> {
      yield encoder.encode('{"ok":1}\n{"cut');
      throw Object.assign(new Error("read failed"), { code });
    }
    const seen: unknown[] = [];
    for await (const frame of readFrames(reset("ECONNRESET"), { onInvalid: () => {} })) seen.push(frame);
    assert.deepEqual(seen, [{ ok: 1 }], "the cut line is reported, not a frame");
    await assert.rejects(async () => {
      for await (const _ of readFrames(reset("EIO"), { onInvalid: () => {} })) { /* drain */ }
    }, (error: unknown) => (error as { code?: string }).code === "EIO");
  });

  it("readFrames() skips a line over maxFrameBytes as too-large, wherever the chunks split it", async () => {
    const max = 16;
    const exact = `"${"a".repeat(max - 2)}"`; // exactly max bytes: accepted
    const bytes = encoder.encode(
      `${exact}\r\n"${"b".repeat(max)}"\n{"after":1}\n${exact}\n"${"c".repeat(40)}`,
    );
    for (let size = 1; size <= bytes.length; size++) {
      const parts: Uint8Array[] = [];
      for (let offset = 0; offset < bytes.length; offset += size) {
        parts.push(bytes.subarray(offset, offset + size));
      }
      const result = await collect(chunksOf(parts), max);
      assert.deepEqual(
        result.frames,
        [JSON.parse(exact), { after: 1 }, JSON.parse(exact)],
        `chunks of ${size}`,
      );
      assert.deepEqual(result.errors.map((error) => [error.line, error.reason, error.bytes]), [
        [2, "too-large", max + 2],
        [5, "too-large", 41],
      ]);
      assert.match(result.errors[0].message, /maxFrameBytes 16/);
    }
  });

  it(
    "readFrames() skips a 64 MiB line with maxFrameBytes 1 MiB without holding it in memory",
    SLOW,
    async () => {
      const chunk = new Uint8Array(1024 * 1024).fill(0x61);
      chunk[0] = 0x22;
      async function* source(): AsyncGenerator<Uint8Array> {
        yield encoder.encode('{"before":1}\n');
        for (let i = 0; i < 64; i++) yield chunk;
        yield encoder.encode('"\n{"after":2}\n');
      }
      const rssBefore = process.memoryUsage().rss;
      const result = await collect(source(), 1024 * 1024);
      const grown = process.memoryUsage().rss - rssBefore;
      assert.deepEqual(result.frames, [{ before: 1 }, { after: 2 }]);
      assert.deepEqual(result.errors.map((error) => [error.line, error.reason, error.bytes]), [
        [2, "too-large", 64 * 1024 * 1024 + 1],
      ]);
      assert.ok(grown < 32 * 1024 * 1024, `rss grew by ${grown} bytes`);
    },
  );

  it("readFrames() reads a ReadableStream, and a stream without async iteration, and cancels it early", async () => {
    let cancelled = 0;
    const stream = () =>
      new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(encoder.encode('{"a":1}\n{"b"'));
          controller.enqueue(encoder.encode(':2}\n{"c":3}\n'));
        },
        cancel() {
          cancelled++;
        },
      });
    const first: unknown[] = [];
    for await (const frame of readFrames(stream())) {
      first.push(frame);
      if (first.length === 2) break;
    }
    assert.deepEqual(first, [{ a: 1 }, { b: 2 }]);
    const plain = stream();
    const readerOnly = { getReader: () => plain.getReader() } as unknown as ReadableStream<Uint8Array>;
    const second: unknown[] = [];
    for await (const frame of readFrames(readerOnly)) {
      second.push(frame);
      if (second.length === 3) break;
    }
    assert.deepEqual(second, [{ a: 1 }, { b: 2 }, { c: 3 }]);
    assert.equal(cancelled, 2, "leaving the loop early cancelled both streams");
  });

  it("readFrames() ends at EOF, including a source with no bytes or only blank lines", async () => {
    assert.deepEqual((await collect(chunksOf([]))).frames, []);
    assert.deepEqual((await collect(chunksOf([encoder.encode("\n\r\n \t\n")]))).frames, []);
    assert.deepEqual((await collect(chunksOf([encoder.encode("7")]))).frames, [7]);
  });

  it("readFrames() rejects bad options and bad sources with typed errors", async () => {
    const empty = chunksOf([]);
    assert.throws(() => readFrames(empty, { maxFrameBytes: 0 }), {
      name: "RangeError",
      message: /maxFrameBytes/,
    });
    assert.throws(() => readFrames(empty, { maxFrameBytes: 1.5 }), RangeError);
    assert.throws(() => readFrames(empty, { maxFrameBytes: Infinity }), RangeError);
    assert.throws(() => readFrames(empty, { maxFrameBytes: "1" as unknown as number }), TypeError);
    assert.throws(() => readFrames(empty, { onInvalid: "log" as unknown as () => void }), {
      name: "TypeError",
      message: /onInvalid/,
    });
    assert.throws(() => readFrames(42 as unknown as AsyncIterable<Uint8Array>), {
      name: "TypeError",
      message: /source/,
    });
    async function* strings(): AsyncGenerator<Uint8Array> {
      yield "not bytes" as unknown as Uint8Array;
    }
    await assert.rejects(async () => {
      for await (const _ of readFrames(strings())) assert.fail("no frame expected");
    }, { name: "TypeError", message: /Uint8Array/ });
  });

  it("readFrames() takes a line of exactly 16 MiB by default and skips one byte more as too-large", async () => {
    const limit = 16 * 1024 * 1024;
    const atLimit = `"${"a".repeat(limit - 2)}"\n`;
    const overLimit = `"${"b".repeat(limit - 1)}"\n`;
    const invalid: FrameError[] = [];
    const frames: unknown[] = [];
    async function* chunks(): AsyncGenerator<Uint8Array> {
      yield new TextEncoder().encode(atLimit);
      yield new TextEncoder().encode(overLimit);
    }
    for await (
      const frame of readFrames(chunks(), {
        onInvalid: (error) => invalid.push(error),
      })
    ) frames.push(frame);
    assert.equal(frames.length, 1);
    assert.equal((frames[0] as string).length, limit - 2);
    assert.deepEqual(invalid.map((e) => [e.line, e.reason]), [[2, "too-large"]]);
  });
});

// ---------------------------------------------------------------------------------------------------
// Round trips with real peers
// ---------------------------------------------------------------------------------------------------

describe("createStdioTransport() exactly once, any descriptor, wedged peers", () => {
  for (const kind of ["unix", "tcp"]) {
    it(
      `createStdioTransport() delivers every frame exactly once through a non-blocking ${kind} socket with a small SO_SNDBUF and a slow reader`,
      SLOW,
      async () => {
        const count = 240;
        const result = await python(PY_SLOW_SOCKET_READER, [
          kind,
          ...fixtureArgv(WRITER, ["seq", String(count)]),
        ]);
        assert.equal(result.rc, 0, result.stderr as string);
        assert.deepEqual(JSON.parse(result.stderr as string), { written: count, results: [true] });
        assert.equal(result.invalid, 0, "no torn or duplicated bytes");
        assert.equal(result.bad, 0);
        assert.equal(result.trailing, 0);
        assert.deepEqual(
          result.seqs,
          Array.from({ length: count }, (_, i) => i),
          "each frame once, in order",
        );
      },
    );

    it(
      `readFrames() ends like EOF when the peer resets the ${kind} socket that is stdin and stdout: exit 0, no stack`,
      SLOW,
      async () => {
        const result = await python(PY_RESET_PEER, [kind, ...fixtureArgv(PEER, ["plain"])]);
        assert.deepEqual(JSON.parse(result.first as string), { id: 1, result: "ok" });
        // Only the report of the request the reset cut in half; no stack trace.
        assert.match(result.stderr as string, /^keelson transport: readFrames\(\) skipped line 3: [^\n]*\n$/);
        assert.equal(result.rc, 0);
      },
    );
  }

  it(
    "createStdioTransport() delivers every frame exactly once to a tty whose reader is slow",
    SLOW,
    async () => {
      const count = 60;
      const result = await python(PY_SLOW_PTY_READER, fixtureArgv(WRITER, ["seq", String(count)]));
      assert.equal(result.rc, 0, result.stderr as string);
      assert.deepEqual(JSON.parse(result.stderr as string), { written: count, results: [true] });
      assert.equal(result.invalid, 0, "no torn or duplicated bytes");
      assert.equal(result.bad, 0);
      assert.deepEqual(result.seqs, Array.from({ length: count }, (_, i) => i), "each frame once, in order");
    },
  );

  it("createStdioTransport({ fd: 3 }) delivers frames to an inherited pipe", SLOW, async () => {
    const result = await python(PY_FD3, ["read", ...fixtureArgv(WRITER, ["fd3", "4"])]);
    assert.equal(result.rc, 0, result.stderr as string);
    assert.deepEqual(JSON.parse(result.stderr as string), { results: [true, true, true, true] });
    const lines = (result.fd3 as string).split("\n");
    assert.equal(lines.pop(), "");
    assert.deepEqual(lines.map((line) => JSON.parse(line).seq), [0, 1, 2, 3]);
    assert.equal(JSON.parse(lines[1]).body.length, 200_000);
  });

  it(
    "createStdioTransport() throws for a descriptor number that is not open, on every runtime",
    SLOW,
    async () => {
      const outcome = await runFixture(WRITER, ["bad-fd"]);
      const report = JSON.parse(outcome.stderr);
      assert.equal(report.threw, true);
      assert.equal(report.name, "TypeError");
      assert.match(report.message, /fd 987 is not an open descriptor/);
    },
  );

  it(
    "readFrames() twice over stdin: the second loop continues exactly where the first stopped",
    SLOW,
    async () => {
      const frames = [{ hello: 1 }, { n: 2 }, { n: 3 }, { n: "four" }, { n: 5 }];
      const input = frames.map((frame) => JSON.stringify(frame)).join("\n") + "\n";
      const outcome = await runFixture(PEER, ["two-loops"], { input });
      assert.equal(outcome.code, 0, outcome.stderr);
      assert.equal(outcome.stderr, "");
      assert.deepEqual(outcome.stdout.trim().split("\n").map((line) => JSON.parse(line)), [
        { loop: 1, frame: frames[0] },
        ...frames.slice(1).map((frame) => ({ loop: 2, frame })),
        { done: true },
      ]);
    },
  );

  it(
    "readFrames() over stdin: leaving the loop early lets the process exit while stdin stays open",
    SLOW,
    async () => {
      const result = await python(PY_STDIN_KEPT_OPEN, fixtureArgv(PEER, ["first-only"]));
      assert.equal(result.rc, 0, result.stderr as string);
      assert.equal(result.stdout, '{"first":{"n":1}}\n');
    },
  );

  for (const kind of ["pipe", "unix"]) {
    it(
      `createStdioTransport() write() returns false within writeTimeoutMs when a ${kind} reader never reads`,
      SLOW,
      async () => {
        const timeoutMs = 1000;
        const result = await python(PY_NEVER_READS, [
          kind,
          ...fixtureArgv(WRITER, ["wedged", String(timeoutMs)]),
        ]);
        assert.equal(result.rc, 0, result.stderr as string);
        const report = JSON.parse(result.stderr as string);
        assert.ok(report.frames > 0);
        assert.equal(report.wedged, true);
        assert.equal(report.again, false);
        // The bound is the guarantee: no progress for writeTimeoutMs, plus generous slack for a busy machine.
        assert.ok(
          report.lastWriteMs >= timeoutMs - 50 && report.lastWriteMs < timeoutMs + 5000,
          `${report.lastWriteMs}`,
        );
      },
    );
  }

  it(
    "createStdioTransport() sends console.log/info/debug/warn to stderr while open, not into the frames",
    SLOW,
    async () => {
      const outcome = await runFixture(WRITER, ["console"]);
      assert.equal(outcome.code, 0, outcome.stderr);
      assert.equal(outcome.stdout, '{"n":1}\n{"n":2}\nafter close\n', "close() restores console.log");
      for (const word of ["log", "info", "debug", "warn"]) {
        assert.match(
          outcome.stderr,
          new RegExp(`stray ${word}`),
        );
      }
    },
  );

  it(
    "TeeTransport drops a secondary whose reader stalls, and the primary never waits for it",
    SLOW,
    async () => {
      const count = 3000;
      const result = await python(PY_FD3, ["stall", ...fixtureArgv(WRITER, ["tee-stalled", String(count)])]);
      assert.equal(result.rc, 0, result.stderr as string);
      const report = JSON.parse(result.stderr as string);
      assert.deepEqual(report, { results: [true], secondaries: 0, reported: ["ETIMEDOUT"] });
      const lines = (result.stdout as string).trim().split("\n");
      assert.equal(lines.length, count, "the primary got every frame");
    },
  );

  // Deno without --allow-ffi has no libc write: each descriptor kind gets the route that is exact for it
  // (all-or-nothing PIPE_BUF pieces for pipes, a private /proc/self/fd/N description for inherited ones),
  // or a one-line warning where none exists (a non-blocking socket).
  const denoWithoutFfi = (script: string, args: string[]): string[] => [
    process.execPath,
    "run",
    "-A",
    "--deny-ffi",
    "--quiet",
    script,
    ...args,
  ];

  it(
    "Deno without FFI: a 10 MiB frame through a non-blocking pipe to a slow reader arrives exactly once",
    SLOW,
    async (t) => {
      if (runtime !== "deno") return t.skip("the no-FFI route exists only on Deno");
      const size = 10 * 1024 * 1024;
      const result = await python(PY_SLOW_NONBLOCKING_READER, denoWithoutFfi(WRITER, ["big", String(size)]));
      assert.equal(result.rc, 0, result.stderr as string);
      // Deno without -A cannot read the pipe's flags: the write is exact, the wait maybe not bounded.
      const lines = (result.stderr as string).trim().split("\n");
      assert.match(lines[0], /^keelson transport: fd 1 is a pipe whose flags deno cannot read here/);
      assert.deepEqual(JSON.parse(lines[1]).delivered, [true, true]);
      assert.deepEqual(result.frames, [{ big: { len: size, uniform: true }, size }, { after: true }]);
      assert.equal(result.invalid, 0);
    },
  );

  it("Deno without FFI: frames for an inherited fd 3 pipe are delivered", SLOW, async (t) => {
    if (runtime !== "deno") return t.skip("the no-FFI route exists only on Deno");
    const result = await python(PY_FD3, ["read", ...denoWithoutFfi(WRITER, ["fd3", "3"])]);
    assert.equal(result.rc, 0, result.stderr as string);
    assert.deepEqual(JSON.parse(result.stderr as string), { results: [true, true, true] });
    assert.deepEqual((result.fd3 as string).trim().split("\n").map((line) => JSON.parse(line).seq), [
      0,
      1,
      2,
    ]);
  });

  it(
    "Deno without FFI: a non-blocking socket as stdout gets a one-line warning on stderr",
    SLOW,
    async (t) => {
      if (runtime !== "deno") return t.skip("the no-FFI route exists only on Deno");
      const result = await python(PY_SLOW_SOCKET_READER, ["unix", ...denoWithoutFfi(WRITER, ["seq", "12"])]);
      assert.equal(result.rc, 0, result.stderr as string);
      const lines = (result.stderr as string).trim().split("\n");
      assert.equal(lines.length, 2, result.stderr as string);
      assert.match(lines[0], /^keelson transport: fd 1 is a non-blocking socket .*--allow-ffi/);
      assert.deepEqual(JSON.parse(lines[1]), { written: 12, results: [true] });
    },
  );

  it(
    "createStdioTransport() never lets a frame reported failed (ENOSPC on fd 1) be completed by the next write",
    SLOW,
    async (t) => {
      if (process.getuid?.() !== 0) return t.skip("needs root for unshare and a tmpfs mount");
      const mount = freshDir(dir, "full");
      const script = `mount -t tmpfs -o size=128k keelson-full "$0" || exit 90
head -c $((116 * 1024)) /dev/zero > "$0/filler"
"$@" > "$0/out"
status=$?
cat "$0/out"
umount "$0"
exit $status`;
      try {
        const outcome = await runToEnd("unshare", [
          "-m",
          "bash",
          "-c",
          script,
          mount,
          ...fixtureArgv(WRITER, ["enospc", path.join(mount, "filler")]),
        ]);
        if (outcome.code === 90) return t.skip("cannot mount a tmpfs here");
        assert.equal(outcome.code, 0, outcome.stderr);
        const report = JSON.parse(outcome.stderr);
        assert.equal(report.first.name, "TransportWriteError");
        assert.equal(report.first.code, "ENOSPC");
        assert.ok(report.first.bytesWritten > 0, "the frame was torn, not refused whole");
        assert.equal(report.second, true);
        const lines = outcome.stdout.split("\n");
        assert.equal(lines.pop(), "");
        assert.equal(lines.length, 2);
        assert.ok(lines[0].endsWith("\x18"), "the fragment is ended by CAN");
        assert.equal(lines[0].length, report.first.bytesWritten + 1, "exactly the bytes reported");
        assert.throws(() => JSON.parse(lines[0]), "the failed frame never becomes valid");
        assert.deepEqual(JSON.parse(lines[1]), { next: "intact" });
      } finally {
        fs.rmSync(mount, { recursive: true, force: true });
      }
    },
  );
});

describe("readFrames() and createStdioTransport() round trip", () => {
  it(
    "readFrames() and createStdioTransport() serve a python3 client in lock-step over stdio",
    SLOW,
    async () => {
      const result = await python(PY_LOCKSTEP_CLIENT, fixtureArgv(PEER, ["echo"]));
      assert.equal(result.rc, 0, result.stderr as string);
      assert.equal(result.stderr, "");
      const text = "h\u00e9llo \u2713 \u{1d11e}";
      assert.deepEqual(result.replies, [
        { id: 1, echo: { id: 1, text } },
        { id: 2, echo: { id: 2, text } },
        { invalid: 4, reason: "invalid-json" },
        { invalid: 5, reason: "too-large" },
        { id: 4, echo: { id: 4 } },
        { done: 3 },
      ]);
      assert.equal(result.rest, "");
    },
  );

  it("readFrames() and createStdioTransport() talk in a loop through jq", SLOW, async () => {
    const fifo = path.join(dir, "jq-loop");
    execFileSync("mkfifo", [fifo]);
    const script = `${shellQuote(fixtureArgv(PEER, ["count-to", "50"]))} < ${shellQuote([fifo])} | ` +
      `jq -c --unbuffered '{n: (.n + 1)}' > ${shellQuote([fifo])}`;
    const outcome = await runToEnd("bash", ["-c", script]);
    assert.equal(outcome.code, 0, outcome.stderr);
    assert.deepEqual(JSON.parse(outcome.stderr), { last: 50 });
  });
});
