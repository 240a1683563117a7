// Tests of the watchdog section of platform.ts: real child processes blocked for real (Atomics.wait, a
// busy loop, a write to a pipe nobody reads), real signals, real exit statuses.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import process from "node:process";
import {
  DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT,
  DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS,
  DEFAULT_WATCHDOG_SIGNALS,
  HANDLED_SIGNALS,
  MAX_WATCHDOG_MS,
  runtime,
  startWatchdog,
  type WatchdogCapabilities,
} from "../platform.ts";
import {
  fixture,
  killChild,
  runFixture,
  type Running,
  signalTwice,
  sleep,
  startFixture,
} from "./_helpers.ts";

const FIXTURE = fixture("watchdog_child.ts");
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

/** Starts the fixture with this runtime; stdout is a pipe the test never reads. */
function run(scenario: string): Running {
  return startFixture(FIXTURE, [scenario], { stdoutMode: "ignore-reading" });
}

describe("startWatchdog() deadline", () => {
  it("startWatchdog() arm() ends a main thread blocked in Atomics.wait with SIGKILL", SLOW, async () => {
    const r = run("deadline-wait");
    await r.waitFor("stderr", /^armed/);
    assert.deepEqual(await r.exited, { code: null, signal: "SIGKILL" });
  });

  it("startWatchdog() arm() ends a main thread spinning in a busy loop with SIGKILL", SLOW, async () => {
    const r = run("deadline-busy");
    await r.waitFor("stderr", /^armed/);
    assert.deepEqual(await r.exited, { code: null, signal: "SIGKILL" });
  });

  it("Watchdog.arm() again replaces the deadline", SLOW, async () => {
    const r = run("rearm");
    await r.waitFor("stderr", /^survived/);
    assert.deepEqual(await r.exited, { code: null, signal: "SIGKILL" });
  });

  it("Watchdog.disarm() cancels the deadline and the child exits by itself with 0", SLOW, async () => {
    const r = run("disarm");
    const ending = await r.exited;
    assert.match((await r.done).stderr, /^disarmed$/m);
    assert.deepEqual(ending, { code: 0, signal: null });
  });

  it("Watchdog.stop() is idempotent and leaves an idle process free to exit with 0", SLOW, async () => {
    const r = run("stop");
    const ending = await r.exited;
    assert.match((await r.done).stderr, /^stopped$/m);
    assert.deepEqual(ending, { code: 0, signal: null });
  });

  it("startWatchdog() never keeps an otherwise idle process alive, even without stop()", SLOW, async () => {
    const r = run("idle");
    const ending = await r.exited;
    assert.match((await r.done).stderr, /^started$/m);
    assert.deepEqual(ending, { code: 0, signal: null });
  });
});

describe("startWatchdog() signals", () => {
  it("Watchdog.noteSignal() twice ends a blocked main thread with SIGKILL", SLOW, async () => {
    const r = run("note");
    assert.equal(await r.waitFor("stderr", /^seen/), "seen 1");
    assert.deepEqual(await r.exited, { code: null, signal: "SIGKILL" });
  });

  it("startWatchdog() without a handler leaves SIGTERM its default action", SLOW, async () => {
    const r = run("unhandled");
    try {
      await r.waitFor("stderr", /^ready/);
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.exited, { code: null, signal: "SIGTERM" });
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
        await r.waitFor("stderr", /^ready/);
        await sleep(300); // let the write fill the pipe and block
        process.kill(r.child.pid!, "SIGTERM");
        const early = await Promise.race([r.exited, sleep(500).then(() => "alive")]);
        assert.equal(early, "alive", "a blocked main thread cannot act on the first SIGTERM");
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.exited, { code: null, signal: SECOND_SIGNAL_ENDING });
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
        const ready = await r.waitFor("stderr", /^ready/);
        assert.deepEqual(JSON.parse(ready.slice("ready ".length)), expected);
        await sleep(300); // let the write fill the pipe and block
        process.kill(r.child.pid!, "SIGTERM");
        await sleep(300);
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.exited, { code: null, signal: SECOND_SIGNAL_ENDING });
        assert.doesNotMatch(
          (await r.done).stderr,
          /handled SIGTERM/,
          "the main thread was blocked throughout",
        );
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
        await r.waitFor("stderr", /^ready/);
        await sleep(300); // let the write fill the pipe and block
        process.kill(r.child.pid!, "SIGTERM");
        await sleep(300);
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.exited, { code: null, signal: SECOND_SIGNAL_ENDING });
        assert.doesNotMatch(
          (await r.done).stderr,
          /handled SIGTERM/,
          "the main thread was blocked throughout",
        );
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
        await r.waitFor("stderr", /^ready/);
        process.kill(r.child.pid!, "SIGTERM");
        await r.waitFor("stderr", /^handled 1/);
        await sleep(250); // past the window in which a repeat counts once
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.exited, { code: 7, signal: null });
        assert.match((await r.done).stderr, /handled 2/);
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
        await r.waitFor("stderr", /^ready/);
        process.kill(r.child.pid!, "SIGTERM");
        await r.waitFor("stderr", /^handled SIGTERM/);
        await sleep(300);
        process.kill(r.child.pid!, "SIGTERM");
        assert.deepEqual(await r.exited, { code: null, signal: SECOND_SIGNAL_ENDING });
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
        await r.waitFor("stderr", /^ready/);
        await sleep(300);
        process.kill(r.child.pid!, "SIGTERM");
        await sleep(300);
        process.kill(r.child.pid!, "SIGINT");
        assert.deepEqual(await r.exited, { code: null, signal: "SIGKILL" });
      } finally {
        killChild(r.child);
      }
    },
  );

  it("Watchdog.stop() gives SIGTERM its default action back", SLOW, async () => {
    const r = run("stopped");
    try {
      await r.waitFor("stderr", /^ready/);
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.exited, { code: null, signal: "SIGTERM" });
    } finally {
      killChild(r.child);
    }
  });

  it("Watchdog.stop() leaves the program's own SIGTERM handler getting every delivery", SLOW, async () => {
    const r = run("stopped-handler");
    try {
      await r.waitFor("stderr", /^ready/);
      process.kill(r.child.pid!, "SIGTERM");
      await r.waitFor("stderr", /^handled 1/);
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.exited, { code: 0, signal: null });
      assert.match((await r.done).stderr, /^handled 2$/m);
    } finally {
      killChild(r.child);
    }
  });

  it("startWatchdog() capabilities are the documented ones for this runtime", SLOW, async () => {
    const result = await runFixture(FIXTURE, ["capabilities"]);
    assert.equal(result.code, 0, result.stderr);
    const [first, second] = result.stdout.trim().split("\n").map((l) => JSON.parse(l));
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
      await r.waitFor("stderr", /^ready/);
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.exited, { code: null, signal: "SIGTERM" });
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
          await r.waitFor("stderr", /^ready/);
          await sleep(300); // let the write fill the pipe and block, or the loop spin
          const sentAt = performance.now();
          process.kill(r.child.pid!, "SIGTERM");
          assert.deepEqual(await r.exited, { code: null, signal: "SIGKILL" });
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
      await r.waitFor("stderr", /^ready/);
      signalTwice(r.child.pid!, "SIGTERM", 3);
      assert.deepEqual(await r.exited, { code: 0, signal: null }, (await r.done).stderr);
      assert.match((await r.done).stderr, /handled 1/);
    } finally {
      killChild(r.child);
    }
  });

  it("startWatchdog() still counts the same signal 300 ms later as a second one", SLOW, async () => {
    const r = run("repeat");
    try {
      await r.waitFor("stderr", /^ready/);
      process.kill(r.child.pid!, "SIGTERM");
      await sleep(300);
      process.kill(r.child.pid!, "SIGTERM");
      assert.deepEqual(await r.exited, { code: null, signal: "SIGKILL" }, (await r.done).stderr);
    } finally {
      killChild(r.child);
    }
  });
});

describe("startWatchdog() arguments and state", () => {
  it("startWatchdog() rejects a signal it cannot count with a TypeError naming it", () => {
    const cannot = "Cannot start the watchdog:";
    assert.throws(() => startWatchdog({ signals: ["SIGKILL"] }), {
      name: "TypeError",
      message: `${cannot} 'signals' must be names among ${HANDLED_SIGNALS.join(", ")}, got "SIGKILL"`,
    });
    assert.throws(() => startWatchdog({ signals: "SIGTERM" as unknown as string[] }), {
      name: "TypeError",
      message: `${cannot} 'signals' must be an array of signal names, got "SIGTERM"`,
    });
    assert.throws(
      () => startWatchdog({ secondSignalExit: "yes" as unknown as boolean }),
      { name: "TypeError", message: `${cannot} 'secondSignalExit' must be a boolean, got "yes"` },
    );
    assert.throws(
      () => startWatchdog({ secondSignalGraceMs: "1" as unknown as number }),
      {
        name: "TypeError",
        message: `${cannot} 'secondSignalGraceMs' must be 0 to ${MAX_WATCHDOG_MS} milliseconds, got "1"`,
      },
    );
    assert.throws(() => startWatchdog({ secondSignalGraceMs: -1 }), {
      name: "RangeError",
      message: `${cannot} 'secondSignalGraceMs' must be 0 to ${MAX_WATCHDOG_MS} milliseconds, got -1`,
    });
    assert.throws(() => startWatchdog({ secondSignalGraceMs: Number.NaN }), RangeError);
    assert.throws(() => startWatchdog({ armOnFirstSignalMs: MAX_WATCHDOG_MS + 1 }), {
      name: "RangeError",
      message: /^Cannot start the watchdog: 'armOnFirstSignalMs' must be 0 to \d+ milliseconds, got \d+$/,
    });
    assert.throws(
      () => startWatchdog({ onError: 1 as unknown as () => void }),
      { name: "TypeError", message: `${cannot} 'onError' must be a function, got 1` },
    );
  });

  it("Watchdog.arm() rejects a bad deadline, and arming after stop() throws", SLOW, () => {
    const watchdog = startWatchdog({ secondSignalExit: false });
    try {
      assert.throws(() => watchdog.arm(-1), {
        name: "RangeError",
        message: `Cannot arm the watchdog: 'ms' must be 0 to ${MAX_WATCHDOG_MS} milliseconds, got -1`,
      });
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
    assert.throws(() => watchdog.arm(1000), {
      name: "Error",
      message: "Cannot arm the watchdog: it was stopped",
    });
  });

  it("DEFAULT_WATCHDOG_SIGNALS are the four termination signals", () => {
    assert.deepEqual([...DEFAULT_WATCHDOG_SIGNALS], ["SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT"]);
    assert.ok(Object.isFrozen(DEFAULT_WATCHDOG_SIGNALS));
    assert.equal(DEFAULT_WATCHDOG_SECOND_SIGNAL_EXIT, true);
    assert.equal(DEFAULT_WATCHDOG_SECOND_SIGNAL_GRACE_MS, 0);
  });
});
