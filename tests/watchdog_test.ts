// Tests of the watchdog section of platform.ts: real child processes blocked for real (Atomics.wait, a
// busy loop, a write to a pipe nobody reads), real signals, real exit statuses.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as path from "node:path";
import process from "node:process";
import { type ChildProcess, spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import {
  DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT,
  DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS,
  DEFAULT_WATCHDOG_SIGNALS,
  MAX_WATCHDOG_MS,
  runtime,
  scriptCommand,
  startWatchdog,
  type WatchdogCapabilities,
} from "../platform.ts";
import { killChild, signalTwice, sleep } from "./_helpers.ts";

const FIXTURE = path.join(path.dirname(fileURLToPath(import.meta.url)), "fixtures", "watchdog_child.ts");
const SLOW = { timeout: 60_000 };

/** What each runtime is documented to achieve (see startWatchdog in platform.ts). */
const EXPECTED: Record<string, WatchdogCapabilities> = {
  deno: { deadline: true, secondSignalWhileBlocked: true, mechanism: "deno-worker-signal-listener" },
  node: { deadline: true, secondSignalWhileBlocked: true, mechanism: "node-internal-signal-wrap" },
  bun: { deadline: true, secondSignalWhileBlocked: true, mechanism: "bun-ffi-sigaction" },
};
/** How a second termination signal ends the process: the worker's SIGKILL, on every runtime. */
const SECOND_SIGNAL_ENDING = "SIGKILL";
const expected = EXPECTED[runtime];
const NOT_WHILE_BLOCKED = expected.secondSignalWhileBlocked
  ? false
  : `${runtime}: capabilities.secondSignalWhileBlocked is false, a blocked main thread cannot be ended by a signal`;

interface Run {
  child: ChildProcess;
  /** Resolves with the child's ending. */
  ended: Promise<{ code: number | null; signal: string | null }>;
  /** Resolves with the first stderr line that starts with `prefix`. */
  line(prefix: string): Promise<string>;
  stderr(): string;
}

/** Spawns the fixture with this runtime; stdout is a pipe the test never reads. */
function run(scenario: string): Run {
  const { command, args } = scriptCommand(FIXTURE, [scenario]);
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"] });
  // Listener first: a child that ends at once must still settle.
  const ended = new Promise<{ code: number | null; signal: string | null }>((resolve) => {
    child.on("close", (code, signal) => resolve({ code, signal }));
  });
  let text = "";
  let waiters: Array<() => boolean> = [];
  child.stderr!.setEncoding("utf8");
  child.stderr!.on("data", (chunk: string) => {
    text += chunk;
    waiters = waiters.filter((check) => !check());
  });
  const line = (prefix: string) =>
    new Promise<string>((resolve, reject) => {
      const check = () => {
        const found = text.split("\n").slice(0, -1).find((l) => l.startsWith(prefix));
        if (found !== undefined) resolve(found);
        return found !== undefined;
      };
      if (check()) return;
      waiters.push(check);
      // "close" comes after the last stderr chunk: nothing more can arrive.
      ended.then(() => check() || reject(new Error(`child ended without "${prefix}"; stderr: ${text}`)));
    });
  return { child, ended, line, stderr: () => text };
}

describe("startWatchdog() deadline", () => {
  it("startWatchdog() arm() ends a main thread blocked in Atomics.wait with SIGKILL", SLOW, async () => {
    const r = run("deadline-wait");
    await r.line("armed");
    assert.deepEqual(await r.ended, { code: null, signal: "SIGKILL" });
  });

  it("startWatchdog() arm() ends a main thread spinning in a busy loop with SIGKILL", SLOW, async () => {
    const r = run("deadline-busy");
    await r.line("armed");
    assert.deepEqual(await r.ended, { code: null, signal: "SIGKILL" });
  });

  it("Watchdog.arm() again replaces the deadline", SLOW, async () => {
    const r = run("rearm");
    await r.line("survived");
    assert.deepEqual(await r.ended, { code: null, signal: "SIGKILL" });
  });

  it("Watchdog.disarm() cancels the deadline and the child exits by itself with 0", SLOW, async () => {
    const r = run("disarm");
    const ending = await r.ended;
    assert.match(r.stderr(), /^disarmed$/m);
    assert.deepEqual(ending, { code: 0, signal: null });
  });

  it("Watchdog.stop() is idempotent and leaves an idle process free to exit with 0", SLOW, async () => {
    const r = run("stop");
    const ending = await r.ended;
    assert.match(r.stderr(), /^stopped$/m);
    assert.deepEqual(ending, { code: 0, signal: null });
  });

  it("startWatchdog() never keeps an otherwise idle process alive, even without stop()", SLOW, async () => {
    const r = run("idle");
    const ending = await r.ended;
    assert.match(r.stderr(), /^started$/m);
    assert.deepEqual(ending, { code: 0, signal: null });
  });
});

describe("startWatchdog() signals", () => {
  it("Watchdog.noteSignal() twice ends a blocked main thread with SIGKILL", SLOW, async () => {
    const r = run("note");
    assert.equal(await r.line("seen"), "seen 1");
    assert.deepEqual(await r.ended, { code: null, signal: "SIGKILL" });
  });

  it("startWatchdog() without a handler leaves SIGTERM its default action", SLOW, async () => {
    const r = run("unhandled");
    try {
      await r.line("ready");
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.ended, { code: null, signal: "SIGTERM" });
    } finally {
      killChild(r.child);
    }
  });

  it(
    "startWatchdog() without a handler, main thread blocked: the second SIGTERM ends it",
    { ...SLOW, skip: NOT_WHILE_BLOCKED },
    async () => {
      const r = run("unhandled-blocked");
      try {
        await r.line("ready");
        await sleep(300); // let the write fill the pipe and block
        process.kill(r.child.pid!, "SIGTERM");
        const early = await Promise.race([r.ended, sleep(500).then(() => "alive")]);
        assert.equal(early, "alive", "a blocked main thread cannot act on the first SIGTERM");
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.ended, { code: null, signal: SECOND_SIGNAL_ENDING });
      } finally {
        killChild(r.child);
      }
    },
  );

  it(
    "startWatchdog() second SIGTERM ends a main thread blocked in a write to a full pipe",
    { ...SLOW, skip: NOT_WHILE_BLOCKED },
    async () => {
      const r = run("second-signal-blocked");
      try {
        const ready = await r.line("ready");
        assert.deepEqual(JSON.parse(ready.slice("ready ".length)), expected);
        await sleep(300); // let the write fill the pipe and block
        process.kill(r.child.pid!, "SIGTERM");
        await sleep(300);
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.ended, { code: null, signal: SECOND_SIGNAL_ENDING });
        assert.doesNotMatch(r.stderr(), /handled SIGTERM/, "the main thread was blocked throughout");
      } finally {
        killChild(r.child);
      }
    },
  );

  it(
    "startWatchdog() with secondSignalGraceMs still ends a blocked main thread after the grace",
    { ...SLOW, skip: NOT_WHILE_BLOCKED },
    async () => {
      const r = run("second-signal-grace-blocked");
      try {
        await r.line("ready");
        await sleep(300); // let the write fill the pipe and block
        process.kill(r.child.pid!, "SIGTERM");
        await sleep(300);
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.ended, { code: null, signal: SECOND_SIGNAL_ENDING });
        assert.doesNotMatch(r.stderr(), /handled SIGTERM/, "the main thread was blocked throughout");
      } finally {
        killChild(r.child);
      }
    },
  );

  it(
    "startWatchdog() with secondSignalGraceMs lets a free main thread end the process its own way",
    SLOW,
    async () => {
      const r = run("second-signal-grace-free");
      try {
        await r.line("ready");
        process.kill(r.child.pid!, "SIGTERM");
        await r.line("handled 1");
        await sleep(250); // past the window in which a repeat counts once
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.ended, { code: 7, signal: null });
        assert.match(r.stderr(), /handled 2/);
      } finally {
        killChild(r.child);
      }
    },
  );

  it(
    "startWatchdog() second SIGTERM ends a child whose handler of the first one blocked",
    { ...SLOW, skip: NOT_WHILE_BLOCKED },
    async () => {
      const r = run("second-signal-handled");
      try {
        await r.line("ready");
        process.kill(r.child.pid!, "SIGTERM");
        await r.line("handled SIGTERM");
        await sleep(300);
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.ended, { code: null, signal: SECOND_SIGNAL_ENDING });
      } finally {
        killChild(r.child);
      }
    },
  );

  it(
    "startWatchdog() counts across signals: SIGTERM then SIGINT ends a blocked main thread",
    { ...SLOW, skip: NOT_WHILE_BLOCKED },
    async () => {
      const r = run("second-signal-blocked");
      try {
        await r.line("ready");
        await sleep(300);
        process.kill(r.child.pid!, "SIGTERM");
        await sleep(300);
        process.kill(r.child.pid!, "SIGINT");
        assert.deepEqual(await r.ended, { code: null, signal: "SIGKILL" });
      } finally {
        killChild(r.child);
      }
    },
  );

  it("Watchdog.stop() gives SIGTERM its default action back", SLOW, async () => {
    const r = run("stopped");
    try {
      await r.line("ready");
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.ended, { code: null, signal: "SIGTERM" });
    } finally {
      killChild(r.child);
    }
  });

  it("Watchdog.stop() leaves the program's own SIGTERM handler getting every delivery", SLOW, async () => {
    const r = run("stopped-handler");
    try {
      await r.line("ready");
      process.kill(r.child.pid!, "SIGTERM");
      await r.line("handled 1");
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.ended, { code: 0, signal: null });
      assert.match(r.stderr(), /^handled 2$/m);
    } finally {
      killChild(r.child);
    }
  });

  it("startWatchdog() capabilities are the documented ones for this runtime", SLOW, async () => {
    const { command, args } = scriptCommand(FIXTURE, ["capabilities"]);
    const child = spawn(command, args, { stdio: ["ignore", "pipe", "inherit"] });
    const ended = new Promise<number | null>((resolve) => child.on("close", (code) => resolve(code)));
    let out = "";
    child.stdout!.setEncoding("utf8");
    child.stdout!.on("data", (chunk: string) => out += chunk);
    assert.equal(await ended, 0);
    const [first, second] = out.trim().split("\n").map((l) => JSON.parse(l));
    assert.deepEqual(first.on, expected);
    assert.deepEqual(first.off, { deadline: true, secondSignalWhileBlocked: false, mechanism: "off" });
    assert.deepEqual(second.stopped, {
      deadline: false,
      secondSignalWhileBlocked: false,
      mechanism: expected.mechanism,
    });
  });

  it("a child that never starts a watchdog keeps the default action of SIGTERM", SLOW, async () => {
    const r = run("plain");
    try {
      await r.line("ready");
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.ended, { code: null, signal: "SIGTERM" });
    } finally {
      killChild(r.child);
    }
  });
});

describe("startWatchdog() first signal and repeats", () => {
  for (const scenario of ["first-signal-blocked", "first-signal-busy"]) {
    it(
      `startWatchdog() armOnFirstSignalMs ends a main thread wedged before the signal (${scenario})`,
      { ...SLOW, skip: NOT_WHILE_BLOCKED },
      async () => {
        const r = run(scenario);
        try {
          await r.line("ready");
          await sleep(300); // let the write fill the pipe and block, or the loop spin
          const sentAt = performance.now();
          process.kill(r.child.pid!, "SIGTERM");
          assert.deepEqual(await r.ended, { code: null, signal: "SIGKILL" });
          // The guarantee is a bound: 500 ms armed from the signal, plus 1 s.
          assert.ok(
            performance.now() - sentAt < 1_500,
            `ended ${performance.now() - sentAt} ms after SIGTERM`,
          );
        } finally {
          killChild(r.child);
        }
      },
    );
  }

  it("startWatchdog() counts one signal delivered twice 3 ms apart once", SLOW, async () => {
    const r = run("repeat");
    try {
      await r.line("ready");
      signalTwice(r.child.pid!, "SIGTERM", 3);
      assert.deepEqual(await r.ended, { code: 0, signal: null }, r.stderr());
      assert.match(r.stderr(), /handled 1/);
    } finally {
      killChild(r.child);
    }
  });

  it("startWatchdog() still counts the same signal 300 ms later as a second one", SLOW, async () => {
    const r = run("repeat");
    try {
      await r.line("ready");
      process.kill(r.child.pid!, "SIGTERM");
      await sleep(300);
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.ended, { code: null, signal: "SIGKILL" }, r.stderr());
    } finally {
      killChild(r.child);
    }
  });
});

describe("startWatchdog() arguments and state", () => {
  it("startWatchdog() rejects a signal it cannot count with a TypeError naming it", () => {
    assert.throws(() => startWatchdog({ signals: ["SIGKILL"] }), { name: "TypeError", message: /"SIGKILL"/ });
    assert.throws(() => startWatchdog({ signals: "SIGTERM" as unknown as string[] }), TypeError);
    assert.throws(
      () => startWatchdog({ secondSignalExit: "yes" as unknown as boolean }),
      { name: "TypeError", message: /secondSignalExit/ },
    );
    assert.throws(
      () => startWatchdog({ secondSignalGraceMs: "1" as unknown as number }),
      { name: "TypeError", message: /secondSignalGraceMs/ },
    );
    assert.throws(() => startWatchdog({ secondSignalGraceMs: -1 }), { name: "RangeError", message: /-1/ });
    assert.throws(() => startWatchdog({ secondSignalGraceMs: Number.NaN }), RangeError);
    assert.throws(
      () => startWatchdog({ onError: 1 as unknown as () => void }),
      { name: "TypeError", message: /onError/ },
    );
  });

  it("Watchdog.arm() rejects a bad deadline, and arming after stop() throws", SLOW, () => {
    const watchdog = startWatchdog({ secondSignalExit: false });
    try {
      assert.throws(() => watchdog.arm(-1), { name: "RangeError", message: /-1/ });
      assert.throws(() => watchdog.arm(Number.NaN), RangeError);
      assert.throws(() => watchdog.arm(Infinity), RangeError);
      assert.throws(() => watchdog.arm(MAX_WATCHDOG_MS + 1), RangeError);
      assert.throws(() => watchdog.arm("5" as unknown as number), TypeError);
      assert.equal(watchdog.capabilities.deadline, true);
      assert.equal(watchdog.signalsSeen, 0);
      watchdog.noteSignal();
      assert.equal(watchdog.signalsSeen, 1);
    } finally {
      watchdog.stop();
    }
    watchdog.stop();
    watchdog.disarm();
    assert.equal(watchdog.capabilities.deadline, false);
    assert.throws(() => watchdog.arm(1000), { name: "Error", message: /stopped/ });
  });

  it("DEFAULT_WATCHDOG_SIGNALS are the four termination signals", () => {
    assert.deepEqual([...DEFAULT_WATCHDOG_SIGNALS], ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"]);
    assert.ok(Object.isFrozen(DEFAULT_WATCHDOG_SIGNALS));
    assert.equal(DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT, true);
    assert.equal(DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS, 0);
  });
});
