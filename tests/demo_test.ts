// The demo is the main job: its tour must pass on every runtime, and its gateway must answer bad input
// with error frames rather than crash. Everything here runs examples/demo.ts as a real child process
// with the current runtime.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { readPidFile } from "../pidfile.ts";
import { type Outcome, ROOT, runFixture, tempDir } from "./_helpers.ts";

const DEMO = path.join(ROOT, "examples", "demo.ts");
const TOUR_TIMEOUT_MS = 120_000;
const SERVE_TIMEOUT_MS = 60_000;

/** Runs demo.ts with `args`, feeding `input` on stdin (then closing it); kills it after `timeoutMs`. */
function runDemo(args: string[], input: string, timeoutMs: number): Promise<Outcome> {
  return runFixture(DEMO, args, { input, timeoutMs });
}

function transcript(run: Outcome): string {
  return `exit ${run.code ?? run.signal}\n--- stdout ---\n${run.stdout}\n--- stderr ---\n${run.stderr}`;
}

describe("examples/demo.ts", () => {
  it("tour passes all six steps on the current runtime and removes its folder", {
    timeout: TOUR_TIMEOUT_MS + 10_000,
  }, async () => {
    const run = await runDemo([], "", TOUR_TIMEOUT_MS);
    const out = run.stdout;
    const why = transcript(run);
    assert.equal(run.code, 0, why);
    assert.match(out, /^tour: 6\/6 steps ok$/m, why);
    assert.doesNotMatch(out, /✗|FAILED/, why);
    for (let step = 1; step <= 6; step++) assert.match(out, new RegExp(`^   step ${step} ok `, "m"), why);

    // 1. requests answered, served counted in SQLite, WAL on disk, systemd checked.
    assert.match(out, /✓ ping → \{"id":1,"result":"pong","served":1\}/, why);
    assert.match(out, /✓ status → served \d+ \(counted in SQLite\)/, why);
    assert.match(out, /✓ applyWal → wal; the header of gateway\.db on disk says wal/, why);
    assert.match(out, /✓ systemd stop timeout checked at start/, why);
    // 2. the second copy is refused with the holder's pid.
    const holder = /✓ it reported PidFileLockedError naming the holder, pid (\d+)/.exec(out);
    assert.ok(holder, why);
    assert.match(out, new RegExp(`refused to start: PidFileLockedError holder_pid=${holder[1]}:`), why);
    assert.match(out, /✓ the second copy \(pid \d+\) exited with status 3/, why);
    // 3. stale before the restart, running after.
    assert.match(out, /✓ kill -9 \d+: it died by SIGKILL/, why);
    assert.match(out, /✓ readPidFile before the restart: stale \(process \d+ is gone\)/, why);
    assert.match(out, /✓ readPidFile after the restart: running, pid \d+/, why);
    assert.match(out, /✓ ping → served \d+: the count survived the kill -9/, why);
    // 4. every line of the external rotation found, the late ones in the live file.
    assert.match(out, /✓ 320\/320 lines found across \d+ files, 0 duplicated: none lost/, why);
    assert.match(out, /✓ the 20 lines written after the rename: 20 in the live gateway\.log, 0 in/, why);
    // 5. peer gone and end of stdin: status 0, no stack trace.
    assert.match(
      out,
      /✓ closed its stdout reader, sent a ping: the reply found the peer gone, exit status 0/,
      why,
    );
    assert.match(out, /peer gone: the stdout reader closed/, why);
    assert.match(out, /✓ closed the stdin of a new gateway \(pid \d+\): exit status 0/, why);
    assert.equal(out.match(/✓ no stack trace on its stderr/g)?.length, 2, why);
    // 6. the snapshot line and the timed phases, exit 0; --replace names the takeover.
    assert.match(out, /^ {7}signal=SIGTERM signal_number=15 .* parent_cmdline="[^"]*"$/m, why);
    for (const phase of ["drain", "close-db", "release-pidfile"]) {
      assert.match(out, new RegExp(`^ {7}\\+\\d+\\.\\d\\ds phase=${phase} ok$`, "m"), why);
    }
    assert.match(out, /^ {7}\+\d+\.\d\ds shutdown total=\S+ phases=3 failed=0 exit=0$/m, why);
    assert.match(out, /✓ the drain let the in-flight request answer/, why);
    assert.match(
      out,
      /✓ --replace: pid \d+ stopped pid \d+, whose snapshot names the takeover \(exit status 0\)/,
      why,
    );
    assert.match(out, /takeover_for_self=true/, why);

    const folder = /^keelson tour on \S+ \S+, folder (.+)$/m.exec(out);
    assert.ok(folder, why);
    assert.equal(fs.existsSync(folder[1]), false, `the tour left ${folder[1]} behind`);
  });

  it("tour --keep leaves the folder with the gateway's log, database and no PID file", {
    timeout: TOUR_TIMEOUT_MS + 10_000,
  }, async () => {
    const run = await runDemo(["--keep"], "", TOUR_TIMEOUT_MS);
    const why = transcript(run);
    const kept = /^kept (.+)$/m.exec(run.stdout);
    assert.ok(kept, why);
    try {
      assert.equal(run.code, 0, why);
      const names = fs.readdirSync(kept[1]);
      assert.ok(names.includes("gateway.log") && names.includes("gateway.log.ext-1"), names.join(" "));
      assert.ok(names.includes("gateway.db"), names.join(" "));
      assert.deepEqual(readPidFile(path.join(kept[1], "gateway.pid")), { state: "absent" });
    } finally {
      fs.rmSync(kept[1], { recursive: true, force: true });
    }
  });

  it("--serve answers bad lines and unknown methods with error frames and exits 0 at end of input", {
    timeout: SERVE_TIMEOUT_MS + 10_000,
  }, async () => {
    const dir = tempDir();
    try {
      const input = [
        '{"id":1,"method":"ping"}',
        "not json",
        "[1,2]",
        '{"id":2,"method":"nope"}',
        '{"id":3,"method":"log","count":-1}',
        '{"id":4,"method":"slow","ms":"soon"}',
        '{"id":5,"method":"log","count":3,"tag":"t"}',
        '{"id":6,"method":"status"}',
      ].join("\n") + "\n";
      const run = await runDemo(["--serve", dir], input, SERVE_TIMEOUT_MS);
      const why = transcript(run);
      assert.equal(run.code, 0, why);
      const frames = run.stdout.trim().split("\n").map((line) => JSON.parse(line));
      assert.equal(frames[0].event, "ready", why);
      assert.deepEqual(frames.slice(1), [
        { id: 1, result: "pong", served: 1 },
        { error: "invalid frame", line: 2, reason: "invalid-json" },
        { id: null, error: "a request must be a JSON object" },
        { id: 2, error: 'unknown method "nope"' },
        { id: 3, error: "count must be an integer from 0 to 100000" },
        { id: 4, error: "ms must be an integer from 0 to 60000" },
        { id: 5, result: "logged", count: 3, served: 4 },
        { id: 6, result: { pid: frames[0].pid, starts: 1, journal: "wal", onDisk: "wal" }, served: 5 },
      ]);
      assert.match(run.stderr, /stdin ended/, why);
      assert.doesNotMatch(run.stderr, /^\s+at\s/m, why);
      const log = fs.readFileSync(path.join(dir, "gateway.log"), "utf8");
      assert.equal(log.split("\n").filter((line) => line.includes('"msg":"filler"')).length, 3);
      assert.deepEqual(readPidFile(path.join(dir, "gateway.pid")), { state: "absent" });
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it("--serve exits with status 1 and says why when its folder cannot be used", {
    timeout: SERVE_TIMEOUT_MS + 10_000,
  }, async () => {
    const dir = tempDir();
    try {
      const file = path.join(dir, "not-a-folder");
      fs.writeFileSync(file, "");
      const run = await runDemo(["--serve", path.join(file, "gateway")], "", SERVE_TIMEOUT_MS);
      assert.equal(run.code, 1, transcript(run));
      assert.match(run.stderr, /^gateway\[\d+\] failed: Error: ENOTDIR/m, transcript(run));
      assert.equal(run.stdout, "", transcript(run));
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  it(
    "rejects unknown arguments with exit status 2 and a usage line",
    { timeout: SERVE_TIMEOUT_MS },
    async () => {
      for (const args of [["--bogus"], ["--serve"], ["--serve", "/tmp", "--extra"]]) {
        const run = await runDemo(args, "", SERVE_TIMEOUT_MS);
        assert.equal(run.code, 2, transcript(run));
        assert.match(run.stderr, /^usage: demo\.ts/m, transcript(run));
        assert.equal(run.stdout, "", transcript(run));
      }
    },
  );
});
