// platform.ts on whichever runtime runs this file: every export against real files, processes and
// signals. The same file runs under `deno test -A`, `bun test` and `node --test`.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawn } from "node:child_process";
import * as platform from "../platform.ts";
import {
  AS_NOBODY,
  fixture,
  fixtureArgv,
  freshDir,
  killChild,
  ROOT,
  runFixture,
  sleep,
  start,
  tempRoot,
} from "./_helpers.ts";

const dir = tempRoot("keelson-platform-");
const encoder = new TextEncoder();

describe("runtime", () => {
  it("runtime and runtimeVersion name the running runtime", () => {
    const expected = "Deno" in globalThis ? "deno" : "Bun" in globalThis ? "bun" : "node";
    assert.equal(platform.runtime, expected);
    assert.match(platform.runtimeVersion, /^\d+\.\d+\.\d+/);
    assert.equal(platform.isLinux, process.platform === "linux");
  });
});

describe("errorCode()", () => {
  it("errorCode() reads Node-style codes and maps Deno error names", () => {
    assert.equal(platform.errorCode(Object.assign(new Error("x"), { code: "EPIPE" })), "EPIPE");
    for (
      const [name, code] of [
        ["BrokenPipe", "EPIPE"],
        ["BadResource", "EBADF"],
        ["ConnectionReset", "ECONNRESET"],
        ["NotFound", "ENOENT"],
        ["PermissionDenied", "EACCES"],
      ]
    ) {
      const error = new Error("deno-style");
      error.name = name;
      assert.equal(platform.errorCode(error), code, name);
    }
    assert.equal(platform.errorCode(new Error("File too large (os error 27)")), "EFBIG");
    assert.equal(platform.errorCode(new Error("Input/output error (os error 5)")), "EIO");
    assert.equal(platform.errorCode(new Error("Resource temporarily unavailable (os error 11)")), "EAGAIN");
    assert.equal(platform.errorCode(new Error("plain")), undefined);
    assert.equal(platform.errorCode("ENOENT"), undefined);
    assert.equal(platform.errorCode(null), undefined);
  });

  it("errorCode() reports real filesystem errors from this runtime", () => {
    assert.throws(() => platform.stat(path.join(dir, "missing")), (e) => platform.errorCode(e) === "ENOENT");
  });
});

describe("describeValue()", () => {
  it("describeValue() quotes strings as JSON (cut after 40 characters) and names objects by kind only, never throwing", () => {
    assert.equal(platform.describeValue("yes"), '"yes"');
    assert.equal(platform.describeValue(42), "42");
    assert.equal(platform.describeValue(2n), "2n");
    assert.equal(platform.describeValue(null), "null");
    assert.equal(platform.describeValue(undefined), "undefined");
    assert.equal(platform.describeValue(Symbol("s")), "Symbol(s)");
    assert.equal(platform.describeValue(() => 1), "a function");
    assert.equal(platform.describeValue([1]), "an array");
    const cycle: Record<string, unknown> = {};
    cycle["self"] = cycle;
    assert.equal(platform.describeValue(cycle), "an object");
    const revoked = Proxy.revocable([], {});
    revoked.revoke();
    assert.equal(platform.describeValue(revoked.proxy), "an object");
    assert.equal(platform.describeValue("x".repeat(41)), `"${"x".repeat(40)}…"`);
    assert.equal(platform.describeValue("x".repeat(40)), `"${"x".repeat(40)}"`);
  });
});

describe("mustBe()", () => {
  it("mustBe() words a bad argument as Cannot <action>: '<name>' must be <expected>, got <value>", () => {
    assert.equal(
      platform.mustBe("apply WAL", "uri", "a boolean", "yes"),
      `Cannot apply WAL: 'uri' must be a boolean, got "yes"`,
    );
  });
});

describe("checkNumber()", () => {
  it("checkNumber() throws TypeError for a value that is not a number and RangeError for one it refuses", () => {
    const nonNegative = (n: number) => Number.isFinite(n) && n >= 0;
    assert.equal(platform.checkNumber("wait", "timeoutMs", 250, "a finite number >= 0", nonNegative), 250);
    assert.throws(
      () => platform.checkNumber("wait", "timeoutMs", "250", "a finite number >= 0", nonNegative),
      {
        name: "TypeError",
        message: `Cannot wait: 'timeoutMs' must be a finite number >= 0, got "250"`,
      },
    );
    for (const bad of [-1, Number.NaN, Infinity]) {
      assert.throws(
        () => platform.checkNumber("wait", "timeoutMs", bad, "a finite number >= 0", nonNegative),
        {
          name: "RangeError",
          message: `Cannot wait: 'timeoutMs' must be a finite number >= 0, got ${bad}`,
        },
      );
    }
    assert.throws(() => platform.checkNumber("wait", "timeoutMs", 1n, "a finite number >= 0", nonNegative), {
      name: "TypeError",
      message: "Cannot wait: 'timeoutMs' must be a finite number >= 0, got 1n",
    });
  });
});

describe("checkMode()", () => {
  it("checkMode() accepts permission bits from 0 to 0o7777 and words the rest one way", () => {
    assert.equal(platform.checkMode("open the log", 0o640), 0o640);
    assert.equal(platform.checkMode("open the log", 0o7777), 0o7777);
    for (const bad of [-1, 0o10000, 1.5]) {
      assert.throws(() => platform.checkMode("open the log", bad), {
        name: "RangeError",
        message: `Cannot open the log: 'mode' must be permission bits from 0 to 0o7777, got ${bad}`,
      });
    }
    assert.throws(() => platform.checkMode("open the log", "644"), {
      name: "TypeError",
      message: `Cannot open the log: 'mode' must be permission bits from 0 to 0o7777, got "644"`,
    });
  });
});

describe("errorMessage(), isError()", () => {
  it("errorMessage() gives the message alone, or the string form, and never throws", () => {
    assert.equal(platform.errorMessage(new RangeError("too big")), "too big");
    assert.equal(platform.errorMessage("plain"), "plain");
    assert.equal(platform.errorMessage(42), "42");
    const hostile = {
      toString() {
        throw new Error("no");
      },
    };
    assert.equal(platform.errorMessage(hostile), "unprintable error");
  });

  it("isError() knows errors made in another realm, and nothing else", () => {
    const foreign = Object.create(null);
    Object.defineProperty(foreign, Symbol.toStringTag, { value: "Error" });
    assert.equal(platform.isError(new TypeError("x")), true);
    assert.equal(platform.isError(foreign), true); // what a vm context's or worker's Error looks like
    assert.equal(platform.isError({ message: "x", name: "Error" }), false);
    assert.equal(platform.isError("Error: x"), false);
    assert.equal(platform.errorMessage(Object.assign(foreign, { message: "from afar" })), "from afar");
  });
});

describe("describeError()", () => {
  it("describeError() gives Name: message, or the string form, and never throws", () => {
    assert.equal(platform.describeError(new RangeError("too big")), "RangeError: too big");
    assert.equal(platform.describeError("plain"), "plain");
    const hostile = {
      toString() {
        throw new Error("no");
      },
    };
    assert.equal(platform.describeError(hostile), "unprintable error");
  });
});

describe("stderrReporter()", () => {
  it("stderrReporter() writes one prefixed line per report on stderr", async () => {
    const result = await runFixture(fixture("platform_reporter.ts"), ["open"]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "done\n");
    assert.equal(
      result.stderr,
      "keelson test: a line\nkeelson test: RangeError: too big\nkeelson test: unprintable error\n",
    );
  });

  it("stderrReporter() never throws when stderr is closed", async () => {
    const result = await runFixture(fixture("platform_reporter.ts"), ["closed"]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "done\n");
  });

  it("stderrReporter({ holdBackMs }) writes the first report, holds back repeats and counts them on the next line", async () => {
    const result = await runFixture(fixture("platform_reporter.ts"), ["hold-back"]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "done\n");
    assert.equal(result.stderr, "keelson test: one\nkeelson test: four (2 more since the last report)\n");
  });

  it("stderrReporter({ holdBackMs }) writes the last report held back when the interval ends, counting the others", async () => {
    const result = await runFixture(fixture("platform_reporter.ts"), ["burst"]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "done\n");
    assert.equal(result.stderr, "keelson test: one\nkeelson test: three (1 more since the last report)\n");
  });

  it("stderrReporter() drops a report rather than wait on a full stderr pipe", async () => {
    // A python3 parent gives the fixture a real pipe as stderr and never reads it (node:child_process
    // would hand it a socket pair); the fixture fills it, reports, and must still print "done".
    const parent = [
      "import os, subprocess, sys",
      "r, w = os.pipe()",
      "child = subprocess.Popen(sys.argv[1:], stderr=w)",
      "os.close(w)",
      "print('exit', child.wait(), flush=True)",
    ].join("\n");
    const child = start("python3", ["-c", parent, ...fixtureArgv(fixture("platform_reporter.ts"), ["full"])]);
    try {
      assert.deepEqual(await child.exited, { code: 0, signal: null });
      assert.deepEqual(child.stdout, ["done", "exit 0"]);
    } finally {
      killChild(child.child);
    }
  });
});

describe("redactArgv()", () => {
  it("redactArgv() hides values of credential-like flags, KEY=value pairs and URL user-info", () => {
    const cases: Array<[string[], string[]]> = [
      [["--token", "abc"], ["--token", "***"]],
      [["--api-key=abc"], ["--api-key=***"]],
      [["API_KEY=x"], ["API_KEY=***"]],
      [["--Password", "p"], ["--Password", "***"]],
      [["-passwd", "p"], ["-passwd", "***"]],
      [["--client-secret=s", "--auth-header", "Bearer x"], ["--client-secret=***", "--auth-header", "***"]],
      [["DB_CREDENTIALS=a:b"], ["DB_CREDENTIALS=***"]],
      [["https://user:pass@host/x"], ["https://***@host/x"]],
      [["postgres://admin:s3cr3t@db:5432/app"], ["postgres://***@db:5432/app"]],
      [["--url=https://u:p@h"], ["--url=https://***@h"]],
      [["http://h/?a=1&token=abc&b=2"], ["http://h/?a=1&token=***&b=2"]],
      [["sh", "-c", "API_KEY=x ./run --token y"], ["sh", "-c", "API_KEY=*** ./run --token ***"]],
      [["--token", "--verbose"], ["--token", "--verbose"]],
      [["--verbose", "name=value", "plain"], ["--verbose", "name=value", "plain"]],
      [["https://example.com/path"], ["https://example.com/path"]],
      [["--keyfile", "/etc/x.pem"], ["--keyfile", "***"]],
      [[], []],
      // Leaks of the first edition.
      [["curl", "-H", "Authorization: Bearer X"], ["curl", "-H", "Authorization: ***"]],
      [["curl", "--header", "X-Api-Key: k1"], ["curl", "--header", "X-Api-Key: ***"]],
      [["--config", '{"password":"x"}'], ["--config", '{"password":"***"}']],
      [["--config", '{"user": "a", "password": "x", "n": 3}'], [
        "--config",
        '{"user": "a", "password": "***", "n": 3}',
      ]],
      [["https://h.example/cb#access_token=x"], ["https://h.example/cb#access_token=***"]],
      [["https://h.example/?sig=1&api_key=k"], ["https://h.example/?sig=1&api_key=***"]],
      [["curl", "-u", "user:pass"], ["curl", "-u", "user:***"]],
      [["--user", "a:b"], ["--user", "a:***"]],
      [["--user=a:b"], ["--user=a:***"]],
      [["openssl", "-passin", "pass:x"], ["openssl", "-passin", "***"]],
      [["openssl", "-passin", "env:VAR"], ["openssl", "-passin", "***"]],
      [["openssl", "enc", "-k", "x", "-pass", "pass:y"], ["openssl", "enc", "-k", "x", "-pass", "***"]],
      [["--pass=x"], ["--pass=***"]],
      [["--pw=x"], ["--pw=***"]],
      [["apiKey=1", "Server=db;User=a;Password=x;"], ["apiKey=***", "Server=db;User=a;Password=***;"]],
      [
        ["sh", "-c", "curl -H 'Authorization: Bearer abc' -u me:pw https://x/?token=1"],
        ["sh", "-c", "curl -H 'Authorization: Bearer ***' -u me:*** https://x/?token=***"],
      ],
      // False positives of the first edition: none of these is a secret.
      [["sort", "--key", "2"], ["sort", "--key", "2"]],
      [["sort", "--key=2,3n"], ["sort", "--key=2,3n"]],
      [["sort", "-k", "2"], ["sort", "-k", "2"]],
      [["--monkey", "x"], ["--monkey", "x"]],
      [["--author", "me"], ["--author", "me"]],
      [["--keyboard=us", "--turkey", "y"], ["--keyboard=us", "--turkey", "y"]],
      [["--key", "abcdef"], ["--key", "***"]],
    ];
    for (const [input, expected] of cases) {
      assert.deepEqual(platform.redactArgv(input), expected, JSON.stringify(input));
    }
  });
});

describe("createBackoff()", () => {
  it("createBackoff() doubles from minMs up to maxMs", () => {
    const backoff = platform.createBackoff({ minMs: 1, maxMs: 4 });
    assert.deepEqual([backoff.next(), backoff.next(), backoff.next(), backoff.next()], [1, 2, 4, 4]);
  });

  it("createBackoff() with jitter draws each pause between half and all of its nominal length", () => {
    const backoff = platform.createBackoff({ minMs: 8, maxMs: 8, jitter: true });
    for (let i = 0; i < 100; i++) {
      const pause = backoff.next()!;
      assert.ok(pause >= 4 && pause <= 8, `pause ${pause}`);
    }
  });

  it("createBackoff() gives null once timeoutMs has passed, and never a pause past it", () => {
    assert.equal(platform.createBackoff({ minMs: 1, maxMs: 1, timeoutMs: 0 }).next(), null);
    const backoff = platform.createBackoff({ minMs: 1_000_000, maxMs: 1_000_000, timeoutMs: 50 });
    const pause = backoff.next();
    assert.ok(pause !== null && pause <= 50, `pause ${pause}`);
    platform.sleepSync(60);
    assert.equal(backoff.next(), null);
  });
});

describe("openAppend()", () => {
  it("openAppend() with exactMode: false creates with mode narrowed by the umask and never calls fchmod", () => {
    const file = path.join(dir, "append-umask.log");
    const previous = process.umask(0o077);
    try {
      platform.closeFd(platform.openAppend(file, { mode: 0o644, exactMode: false }));
      platform.closeFd(platform.createExclusive(`${file}.x`, { mode: 0o644, exactMode: false }));
    } finally {
      process.umask(previous);
    }
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.equal(fs.statSync(`${file}.x`).mode & 0o777, 0o600);
  });

  it("openAppend() creates with the exact mode whatever the umask, and appends", () => {
    const file = path.join(dir, "append.log");
    const previous = process.umask(0o077);
    try {
      const fd = platform.openAppend(file, { mode: 0o644 });
      platform.writeAll(fd, encoder.encode("one\n"));
      platform.closeFd(fd);
    } finally {
      process.umask(previous);
    }
    assert.equal(fs.statSync(file).mode & 0o777, 0o644);
    const fd = platform.openAppend(file);
    platform.writeAll(fd, encoder.encode("two\n"));
    platform.closeFd(fd);
    assert.equal(fs.readFileSync(file, "utf8"), "one\ntwo\n");
  });

  it("openAppend() lands at the new end after an external truncate (no NUL hole)", () => {
    const file = path.join(dir, "truncate.log");
    const fd = platform.openAppend(file);
    platform.writeAll(fd, encoder.encode("a".repeat(1000)));
    fs.truncateSync(file, 0);
    platform.writeAll(fd, encoder.encode("after\n"));
    platform.closeFd(fd);
    assert.equal(fs.readFileSync(file, "utf8"), "after\n");
  });

  it("openAppend() throws ENOENT for a missing folder", () => {
    assert.throws(
      () => platform.openAppend(path.join(dir, "no-such-dir", "x.log")),
      (e) => platform.errorCode(e) === "ENOENT",
    );
  });
});

describe("createExclusive()", () => {
  it("createExclusive() creates once with the mode, then throws EEXIST", () => {
    const file = path.join(dir, "exclusive");
    const fd = platform.createExclusive(file, { mode: 0o600 });
    platform.closeFd(fd);
    assert.equal(fs.statSync(file).mode & 0o777, 0o600);
    assert.throws(() => platform.createExclusive(file), (e) => platform.errorCode(e) === "EEXIST");
  });
});

describe("link()", () => {
  it("link() publishes a file and fails with EEXIST when anything is there", () => {
    const tmp = path.join(dir, "link.tmp");
    const target = path.join(dir, "link.target");
    fs.writeFileSync(tmp, "first\n");
    platform.link(tmp, target);
    assert.equal(fs.readFileSync(target, "utf8"), "first\n");
    assert.equal(platform.stat(target).nlink, 2);
    const other = path.join(dir, "link.other");
    fs.writeFileSync(other, "second\n");
    assert.throws(() => platform.link(other, target), (e) => platform.errorCode(e) === "EEXIST");
    assert.equal(fs.readFileSync(target, "utf8"), "first\n");
  });
});

describe("rename(), unlink(), unlinkIfExists()", () => {
  it("rename() replaces the target; unlink() and unlinkIfExists() remove", () => {
    const a = path.join(dir, "rename.a");
    const b = path.join(dir, "rename.b");
    fs.writeFileSync(a, "A");
    fs.writeFileSync(b, "B");
    platform.rename(a, b);
    assert.equal(fs.readFileSync(b, "utf8"), "A");
    assert.equal(fs.existsSync(a), false);
    platform.unlink(b);
    assert.equal(fs.existsSync(b), false);
    assert.throws(() => platform.unlink(b), (e) => platform.errorCode(e) === "ENOENT");
    assert.equal(platform.unlinkIfExists(b), false);
    fs.writeFileSync(b, "again");
    assert.equal(platform.unlinkIfExists(b), true);
  });
});

describe("chmod(), fchmod()", () => {
  it("chmod() and fchmod() set exact bits", () => {
    const file = path.join(dir, "chmod");
    fs.writeFileSync(file, "");
    platform.chmod(file, 0o640);
    assert.equal(fs.statSync(file).mode & 0o777, 0o640);
    const fd = platform.openAppend(file);
    platform.fchmod(fd, 0o604);
    platform.closeFd(fd);
    assert.equal(fs.statSync(file).mode & 0o777, 0o604);
  });
});

describe("stat(), fstat()", () => {
  it("stat() and fstat() agree on dev, ino, size, mode and nlink; unlinked → nlink 0", () => {
    const file = path.join(dir, "stat.log");
    const fd = platform.openAppend(file, { mode: 0o600 });
    platform.writeAll(fd, encoder.encode("12345"));
    const byPath = platform.stat(file);
    const byFd = platform.fstat(fd);
    assert.equal(byPath.dev, byFd.dev);
    assert.equal(byPath.ino, byFd.ino);
    assert.ok(byFd.ino === null || byFd.ino > 0);
    assert.equal(byFd.size, 5);
    assert.equal(byFd.mode & 0o777, 0o600);
    assert.equal(byFd.nlink, 1);
    assert.equal(byFd.isFile, true);
    assert.equal(byFd.isDirectory, false);
    assert.ok(byFd.mtimeMs > 0);
    fs.unlinkSync(file);
    assert.equal(platform.fstat(fd).nlink, 0);
    platform.closeFd(fd);
    assert.equal(platform.stat(dir).isDirectory, true);
  });
});

describe("statOrNull()", () => {
  it("statOrNull() is null for ENOENT and ENOTDIR", () => {
    assert.equal(platform.statOrNull(path.join(dir, "nothing")), null);
    const file = path.join(dir, "plain");
    fs.writeFileSync(file, "");
    assert.equal(platform.statOrNull(path.join(file, "below")), null);
    assert.equal(platform.statOrNull(file)?.size, 0);
  });
});

describe("statIdentity()", () => {
  it("statIdentity() gives dev, ino, the current size and the type of a path", () => {
    const file = path.join(freshDir(dir), "app.log");
    fs.writeFileSync(file, "12345");
    const fd = fs.openSync(file, "a");
    fs.writeSync(fd, "678");
    const seen = platform.statIdentity(file);
    const real = fs.fstatSync(fd);
    fs.closeSync(fd);
    assert.deepEqual(seen, { dev: real.dev, ino: real.ino, size: 8, isFile: true });
    assert.equal(platform.statIdentity(path.dirname(file))!.isFile, false);
  });

  it("statIdentity() returns null for a missing path or a file used as a folder", () => {
    const file = path.join(freshDir(dir), "app.log");
    assert.equal(platform.statIdentity(file), null);
    fs.writeFileSync(file, "");
    assert.equal(platform.statIdentity(path.join(file, "below")), null);
  });
});

describe("ftruncate(), fsync()", () => {
  it("ftruncate() and fsync() act on the descriptor", () => {
    const file = path.join(dir, "ftruncate");
    const fd = platform.openAppend(file);
    platform.writeAll(fd, encoder.encode("abcdef"));
    platform.fsync(fd);
    platform.ftruncate(fd, 2);
    platform.closeFd(fd);
    assert.equal(fs.readFileSync(file, "utf8"), "ab");
  });
});

describe("openRead(), readTextFileOrNull()", () => {
  it("openRead(), readTextFileOrNull() read what was written", () => {
    const file = path.join(dir, "read.txt");
    fs.writeFileSync(file, "héllo\n");
    const fd = platform.openRead(file);
    assert.equal(platform.fstat(fd).size, 7);
    platform.closeFd(fd);
    assert.equal(platform.readTextFileOrNull(file), "héllo\n");
    assert.equal(platform.readTextFileOrNull(path.join(dir, "absent")), null);
    assert.throws(() => platform.readTextFileOrNull(dir), (e) => platform.errorCode(e) === "EISDIR");
  });
});

describe("readHead()", () => {
  it("readHead() reads at most N bytes, fewer from a short file, none from an empty one", () => {
    const file = path.join(dir, "head.bin");
    fs.writeFileSync(file, "0123456789");
    assert.equal(new TextDecoder().decode(platform.readHead(file, 4)), "0123");
    assert.equal(platform.readHead(file, 100).length, 10);
    fs.writeFileSync(file, "");
    assert.equal(platform.readHead(file, 100).length, 0);
    assert.throws(
      () => platform.readHead(path.join(dir, "none"), 4),
      (e) => platform.errorCode(e) === "ENOENT",
    );
  });
});

describe("writeTextFile(), writeFileAtomic()", () => {
  it("writeTextFile() replaces with the exact mode; writeFileAtomic() leaves no temporary", () => {
    const file = path.join(dir, "whole.txt");
    const previous = process.umask(0o077);
    try {
      platform.writeTextFile(file, "long content here\n", { mode: 0o640 });
      platform.writeTextFile(file, "short\n", { mode: 0o640 });
    } finally {
      process.umask(previous);
    }
    assert.equal(fs.readFileSync(file, "utf8"), "short\n");
    assert.equal(fs.statSync(file).mode & 0o777, 0o640);
    const atomic = path.join(dir, "atomic.json");
    platform.writeFileAtomic(atomic, '{"a":1}\n', { mode: 0o600 });
    platform.writeFileAtomic(atomic, '{"a":2}\n', { mode: 0o600 });
    assert.equal(fs.readFileSync(atomic, "utf8"), '{"a":2}\n');
    assert.equal(fs.statSync(atomic).mode & 0o777, 0o600);
    assert.deepEqual(fs.readdirSync(dir).filter((n) => n.startsWith("atomic.json.")), []);
    assert.throws(
      () => platform.writeFileAtomic(path.join(dir, "no-dir", "x"), "x"),
      (e) => platform.errorCode(e) === "ENOENT",
    );
  });
});

describe("tempPathBeside()", () => {
  it("tempPathBeside() names unique paths in the same folder", () => {
    const names = new Set(Array.from({ length: 100 }, () => platform.tempPathBeside("/run/app.pid")));
    assert.equal(names.size, 100);
    for (const name of names) assert.ok(name.startsWith("/run/app.pid."));
  });
});

describe("mkdirp(), readDir()", () => {
  it("mkdirp() creates parents and accepts an existing folder; readDir() lists", () => {
    const deep = path.join(dir, "a", "b", "c");
    platform.mkdirp(deep);
    platform.mkdirp(deep);
    assert.equal(fs.statSync(deep).isDirectory(), true);
    assert.deepEqual(platform.readDir(path.join(dir, "a")), ["b"]);
  });
});

describe("writeOnce(), writeAll()", () => {
  it("writeOnce() is one write; writeAll() on /dev/full throws ENOSPC", () => {
    const file = path.join(dir, "once");
    const fd = platform.openAppend(file);
    assert.equal(platform.writeOnce(fd, encoder.encode("abc")), 3);
    platform.closeFd(fd);
    const full = fs.openSync("/dev/full", "w");
    try {
      assert.throws(
        () => platform.writeAll(full, encoder.encode("x")),
        (e) => platform.errorCode(e) === "ENOSPC",
      );
    } finally {
      fs.closeSync(full);
    }
  });

  it("writeAll() on a closed descriptor throws EBADF", () => {
    const fd = platform.openAppend(path.join(dir, "closed"));
    platform.closeFd(fd);
    assert.throws(() => platform.writeAll(fd, encoder.encode("x")), (e) => platform.errorCode(e) === "EBADF");
  });

  it("writeAll() delivers 8 MiB whole through a non-blocking pipe to a slow reader (EAGAIN waited out)", {
    timeout: 120_000,
  }, async () => {
    // A real pipe (not the socketpair some runtimes give children) whose reader starts late.
    const size = 8 * 1024 * 1024;
    const { command, args } = platform.scriptCommand(fixture("platform_write_all.ts"), [String(size)]);
    const result = await platform.runCommand("sh", [
      "-c",
      '"$0" "$@" | { sleep 0.3; cat; }',
      command,
      ...args,
    ], {
      timeoutMs: 100_000,
    });
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stderr, /nonblocking=true eagain=true/);
    assert.equal(result.stdout.length, size + 1);
    assert.equal(result.stdout, "x".repeat(size) + "\n");
  });
});

describe("openDescriptorWriter()", () => {
  it("openDescriptorWriter() words a bad descriptor number one way and throws EBADF for a closed one", () => {
    assert.throws(() => platform.openDescriptorWriter(-1), {
      name: "RangeError",
      message: "Cannot open a descriptor writer: 'fd' must be a non-negative integer, got -1",
    });
    assert.throws(() => platform.openDescriptorWriter("1" as unknown as number), {
      name: "TypeError",
      message: `Cannot open a descriptor writer: 'fd' must be a non-negative integer, got "1"`,
    });
    const fd = platform.openAppend(path.join(dir, "closed-writer.log"));
    platform.closeFd(fd);
    assert.throws(() => platform.openDescriptorWriter(fd), (e) => platform.errorCode(e) === "EBADF");
  });
});

describe("sleepSync()", () => {
  it("sleepSync() blocks for about the time asked", () => {
    const started = performance.now();
    platform.sleepSync(20);
    assert.ok(performance.now() - started >= 19);
    platform.sleepSync(0);
    platform.sleepSync(-1);
  });
});

describe("getPid(), getPpid(), processArgv()", () => {
  it("getPid() and getPpid() match the process; processArgv() has the script", () => {
    assert.equal(platform.getPid(), process.pid);
    assert.equal(platform.getPpid(), process.ppid);
    assert.ok(platform.processArgv().length >= 1);
  });
});

describe("isAlive()", () => {
  it("isAlive(): self alive, pid 1 alive (EPERM or ours), a reaped child dead, nonsense false", async () => {
    assert.equal(platform.isAlive(process.pid), true);
    assert.equal(platform.isAlive(1), true);
    const child = spawn("true");
    const pid = child.pid!;
    await new Promise((resolve) => child.on("close", resolve));
    assert.equal(platform.isAlive(pid), false);
    assert.equal(platform.isAlive(0), false);
    assert.equal(platform.isAlive(-5), false);
    assert.equal(platform.isAlive(1.5), false);
  });

  it("isAlive() is true for another user's process (EPERM) when we are not root", async (t) => {
    if (platform.getUid() === 0) {
      // As root kill(pid, 0) never answers EPERM; run the probe as nobody through setpriv if we can.
      const [setpriv, ...asNobody] = AS_NOBODY;
      const probe = await platform.runCommand(setpriv!, [...asNobody, "kill", "-0", "1"]);
      if (probe.error) return t.skip("setpriv not available to provoke EPERM");
      assert.notEqual(probe.code, 0);
      assert.match(probe.stderr, /not permitted/i);
      return;
    }
    assert.equal(platform.isAlive(1), true);
  });
});

describe("kill()", () => {
  it("kill() sends a real signal; ESRCH for a gone pid; RangeError for a bad pid", async () => {
    const child = spawn("sleep", ["30"]);
    const closed = new Promise<string | null>((resolve) =>
      child.on("close", (_code, signal) => resolve(signal))
    );
    platform.kill(child.pid!, "SIGTERM");
    assert.equal(await closed, "SIGTERM");
    assert.throws(() => platform.kill(child.pid!, 0), (e) => platform.errorCode(e) === "ESRCH");
    assert.throws(() => platform.kill(0, "SIGTERM"), {
      name: "RangeError",
      message: "Cannot send a signal: 'pid' must be a positive integer, got 0",
    });
    assert.throws(() => platform.kill(-1, "SIGTERM"), RangeError);
    assert.throws(() => platform.kill("1" as unknown as number, "SIGTERM"), {
      name: "TypeError",
      message: `Cannot send a signal: 'pid' must be a positive integer, got "1"`,
    });
  });
});

describe("readProcStat()", () => {
  it("readProcStat() parses a command name with spaces and parentheses", async (t) => {
    if (!platform.isLinux) return t.skip("no /proc");
    const weird = path.join(dir, "we ird) (name");
    fs.copyFileSync("/bin/sleep", weird);
    fs.chmodSync(weird, 0o755);
    const child = spawn(weird, ["30"]);
    const closed = new Promise((resolve) => child.on("close", resolve));
    try {
      let stat = platform.readProcStat(child.pid!);
      for (let i = 0; i < 50 && stat?.comm !== "we ird) (name"; i++) {
        await sleep(20);
        stat = platform.readProcStat(child.pid!);
      }
      assert.ok(stat);
      assert.equal(stat.comm, "we ird) (name");
      assert.equal(stat.ppid, process.pid);
      assert.match(stat.state, /^[RSD]$/);
      assert.ok(stat.startTicks > 0);
    } finally {
      child.kill("SIGKILL");
      await closed;
    }
    assert.equal(platform.readProcStat(child.pid!), null);
    assert.equal(platform.readProcStat(-1), null);
  });

  it("readProcStat() shows a zombie as state Z while isAlive() still says true", async (t) => {
    if (!platform.isLinux) return t.skip("no /proc");
    // sh forks `true` then execs sleep: the dead `true` stays an unreaped zombie of the sleep.
    const child = spawn("sh", ["-c", "true & exec sleep 30"]);
    const closed = new Promise((resolve) => child.on("close", resolve));
    try {
      let zombie: number | null = null;
      for (let i = 0; i < 100 && zombie === null; i++) {
        await sleep(20);
        for (const entry of fs.readdirSync("/proc").filter((n) => /^\d+$/.test(n))) {
          const stat = platform.readProcStat(Number(entry));
          if (stat && stat.ppid === child.pid && stat.state === "Z") zombie = Number(entry);
        }
      }
      assert.ok(zombie !== null, "a zombie child of the sleep should exist");
      assert.equal(platform.isAlive(zombie), true);
      assert.equal(platform.readProcStat(zombie)?.state, "Z");
    } finally {
      child.kill("SIGKILL");
      await closed;
    }
  });
});

describe("processStartTime()", () => {
  it("processStartTime() is stable for one process and differs for a later one", async (t) => {
    if (!platform.isLinux) return t.skip("no /proc");
    const self = platform.processStartTime(process.pid);
    assert.ok(self !== null);
    assert.equal(platform.processStartTime(process.pid), self);
    // Not performance.now(): Deno counts it from the test file's worker, started long after the process.
    assert.ok(self <= Date.now() + 1000 && Date.now() - self < 3_600_000, "start time within the last hour");
    await sleep(30);
    const child = spawn("sleep", ["30"]);
    const closed = new Promise((resolve) => child.on("close", resolve));
    try {
      const start = platform.processStartTime(child.pid!);
      assert.ok(start !== null && start > self);
    } finally {
      child.kill("SIGKILL");
      await closed;
    }
    assert.equal(platform.processStartTime(child.pid!), null);
    const boot = platform.bootTimeMs();
    assert.ok(boot !== null && boot < self);
    assert.equal(platform.CLOCK_TICKS_PER_SECOND, 100);
  });
});

describe("readProcStatus(), readProcCmdline()", () => {
  it("readProcStatus() and readProcCmdline() describe a real child", async (t) => {
    if (!platform.isLinux) return t.skip("no /proc");
    const child = spawn("sleep", ["30"]);
    const closed = new Promise((resolve) => child.on("close", resolve));
    try {
      let cmdline = platform.readProcCmdline(child.pid!);
      for (let i = 0; i < 50 && !cmdline?.[0].endsWith("sleep"); i++) {
        await sleep(20);
        cmdline = platform.readProcCmdline(child.pid!);
      }
      // Some runtimes pass the resolved path as argv[0].
      assert.deepEqual([path.basename(cmdline![0]), ...cmdline!.slice(1)], ["sleep", "30"]);
      const status = platform.readProcStatus(child.pid!);
      assert.ok(status);
      assert.equal(status.Name, "sleep");
      assert.equal(status.PPid, String(process.pid));
      assert.equal(status.TracerPid, "0");
      assert.match(status.Uid, /^\d+\s+\d+/);
    } finally {
      child.kill("SIGKILL");
      await closed;
    }
    assert.equal(platform.readProcStatus(child.pid!), null);
    assert.equal(platform.readProcCmdline(child.pid!), null);
  });
});

describe("loadAverage(), hostname(), getUid()", () => {
  it("loadAverage(), hostname(), getUid() report the machine", () => {
    const load = platform.loadAverage();
    assert.ok(load && load.length === 3 && load.every((n) => Number.isFinite(n) && n >= 0));
    assert.equal(platform.hostname(), os.hostname());
    assert.equal(platform.getUid(), process.getuid?.() ?? null);
  });
});

describe("getEnv()", () => {
  it("getEnv() reads this process's environment as it is now (set and removed at run time)", () => {
    const name = "KEELSON_PLATFORM_TEST";
    process.env[name] = "value 1";
    assert.equal(platform.getEnv(name), "value 1");
    delete process.env[name];
    assert.equal(platform.getEnv(name), undefined);
  });
});

describe("onExit()", () => {
  it("onExit() runs at a natural end and at exit(); an unsubscribed handler never runs", async () => {
    const natural = await runFixture(fixture("platform_on_exit.ts"), ["natural"]);
    assert.equal(natural.code, 0, natural.stderr);
    assert.equal(natural.stdout, "main done\ntimer done\nexit handler ran\n");
    const exited = await runFixture(fixture("platform_on_exit.ts"), ["exit"]);
    assert.equal(exited.code, 3, exited.stderr);
    assert.equal(exited.stdout, "main done\nexit handler ran\n");
  });
});

describe("exit()", () => {
  it("exit() ends the process with the code, even with timers pending", async () => {
    const result = await runFixture(fixture("platform_exit.ts"), ["7"]);
    assert.equal(result.code, 7);
    assert.equal(result.stdout, "before\n");
  });
});

// The identity cases share these.
const judgeIdentity = platform.judgeIdentity;
const me = () => platform.selfIdentity();
const linux = platform.isLinux;

describe("selfIdentity()", () => {
  it("selfIdentity() reads pid, start ticks and time, boot id, PID namespace and host name", (t) => {
    const self = me();
    assert.equal(self.pid, process.pid);
    assert.equal(self.hostname, os.hostname());
    if (!linux) return t.skip("no /proc off Linux");
    assert.ok(Number.isInteger(self.startTicks));
    assert.ok(Math.abs(self.startTime! - platform.processStartTime(process.pid)!) <= 10);
    assert.equal(self.bootId, fs.readFileSync("/proc/sys/kernel/random/boot_id", "utf8").trim());
    assert.equal(self.pidNamespace, fs.readlinkSync("/proc/self/ns/pid"));
    assert.equal(platform.identityPermissionProblem(), null);
  });
});

describe("identityOf()", () => {
  it("identityOf() names a live child with its start ticks, and null once it is reaped", async (t) => {
    if (!linux) return t.skip("no /proc off Linux");
    const child = spawn("sleep", ["30"]);
    const closed = new Promise((resolve) => child.on("close", resolve));
    const live = platform.identityOf(child.pid!);
    assert.equal(live?.pid, child.pid);
    assert.equal(live?.startTicks, platform.readProcStat(child.pid!)?.startTicks);
    assert.equal(live?.bootId, me().bootId);
    child.kill("SIGKILL");
    await closed;
    assert.equal(platform.identityOf(child.pid!), null);
    assert.equal(platform.identityOf(0), null);
  });
});

describe("judgeIdentity()", () => {
  it("judgeIdentity() in this boot and PID namespace judges by pid and start ticks, whatever the host name", async (t) => {
    if (!linux) return t.skip("no /proc off Linux");
    const self = judgeIdentity({ ...me(), hostname: "renamed-host" });
    assert.deepEqual([self.alive, self.basis, self.self], [true, "pid", true]);
    assert.equal(self.live?.startTicks, me().startTicks);
    const earlier = judgeIdentity({ ...me(), startTicks: me().startTicks! - 1 });
    assert.deepEqual([earlier.alive, earlier.basis, earlier.self], [false, "pid", false]);
    assert.match(earlier.reason, /reused/);
    const child = spawn("true");
    await new Promise((resolve) => child.on("close", resolve));
    const gone = judgeIdentity({ pid: child.pid!, bootId: me().bootId, pidNamespace: me().pidNamespace });
    assert.deepEqual([gone.alive, gone.basis], [false, "pid"]);
    assert.match(gone.reason, /gone/);
    // No start recorded: a process that started after the record was written is not its writer.
    const plain = judgeIdentity({ pid: process.pid }, { writtenAtMs: me().startTime! - 60_000 });
    assert.deepEqual([plain.alive, plain.self], [false, false]);
    const plainOk = judgeIdentity({ pid: process.pid }, { writtenAtMs: Date.now() });
    assert.deepEqual([plainOk.alive, plainOk.self], [true, true]);
    // A wall-clock start within the one tolerance is the same process; far off is not.
    assert.equal(judgeIdentity({ pid: process.pid, startTime: me().startTime! + 900 }).alive, true);
    assert.equal(judgeIdentity({ pid: process.pid, startTime: me().startTime! + 5000 }).alive, false);
  });

  it("judgeIdentity() judges another PID namespace by heartbeat: fresh alive, stale after 3 periods", () => {
    const now = 1_800_000_000_000;
    const record = { pid: 1, startTicks: 5, bootId: me().bootId, pidNamespace: "pid:[1]", heartbeatMs: 1000 };
    const fresh = judgeIdentity(record, { mtimeMs: now - 2999, nowMs: now });
    assert.deepEqual([fresh.alive, fresh.basis, fresh.self, fresh.live], [true, "heartbeat", false, null]);
    const stale = judgeIdentity(record, { mtimeMs: now - 3000, nowMs: now });
    assert.deepEqual([stale.alive, stale.basis], [false, "heartbeat"]);
    assert.match(stale.reason, /namespace/);
    // The record's own period wins over the judge's option; the option serves records that state none.
    assert.equal(
      judgeIdentity(record, { mtimeMs: now - 5000, nowMs: now, heartbeatMs: 10_000 }).alive,
      false,
    );
    const silent = { ...record, heartbeatMs: null };
    assert.equal(judgeIdentity(silent, { mtimeMs: now - 5000, nowMs: now, heartbeatMs: 10_000 }).alive, true);
    assert.equal(judgeIdentity(silent, { mtimeMs: now - 30_000, nowMs: now }).alive, false, "default 10 s");
    // No mtime to judge by: assumed alive, never stolen.
    assert.equal(judgeIdentity(record).alive, true);
  });

  it("judgeIdentity() calls a record of another boot of this host stale, and judges another host by heartbeat", () => {
    const now = 1_800_000_000_000;
    const otherBoot = judgeIdentity({
      pid: process.pid,
      bootId: "00000000-0000-0000-0000-000000000000",
      hostname: me().hostname,
    }, {
      mtimeMs: now,
      nowMs: now,
    });
    if (me().bootId === null) return;
    assert.deepEqual([otherBoot.alive, otherBoot.basis], [false, "boot"]);
    const otherHost = {
      pid: process.pid,
      bootId: "00000000-0000-0000-0000-000000000000",
      hostname: "elsewhere",
    };
    const fresh = judgeIdentity({ ...otherHost, heartbeatMs: 100 }, { mtimeMs: now - 250, nowMs: now });
    assert.deepEqual([fresh.alive, fresh.basis, fresh.self], [true, "heartbeat", false]);
    assert.match(fresh.reason, /host "elsewhere"/);
    const stale = judgeIdentity({ ...otherHost, heartbeatMs: 100 }, { mtimeMs: now - 300, nowMs: now });
    assert.deepEqual([stale.alive, stale.basis], [false, "heartbeat"]);
  });

  it("judgeIdentity() gives the same verdict whatever the mtime's precision (Deno whole ms, Node and Bun fractions)", () => {
    const now = 1_800_000_000_000;
    const record = { pid: 1, pidNamespace: "pid:[1]", heartbeatMs: 100 };
    for (const mtime of [now - 300, now - 299.999, now - 300.4]) {
      assert.equal(
        judgeIdentity(record, { mtimeMs: mtime, nowMs: now }).alive,
        Math.floor(mtime) > now - 300,
      );
      assert.equal(
        judgeIdentity(record, { mtimeMs: Math.floor(mtime), nowMs: now }).alive,
        judgeIdentity(record, { mtimeMs: mtime, nowMs: now }).alive,
      );
    }
  });

  it(
    "judgeIdentity() on Deno without -A names the missing permission once on stderr",
    { timeout: 60_000 },
    async (t) => {
      const deno = path.join(ROOT, "node_modules", ".bin", "deno");
      if (!fs.existsSync(deno)) return t.skip("the pinned Deno is not installed");
      if (!linux) return t.skip("no /proc off Linux");
      const result = await platform.runCommand(deno, [
        "run",
        "--allow-read",
        "--allow-write",
        "--quiet",
        fixture("platform_identity.ts"),
      ]);
      const out = JSON.parse(result.stdout) as {
        problem: string | null;
        verdicts: Array<{ alive: boolean }>;
      };
      assert.match(out.problem ?? "", /--allow-all/);
      const warnings = result.stderr.split("\n").filter((line) => line.startsWith("keelson:"));
      assert.equal(warnings.length, 1, result.stderr);
      assert.match(warnings[0]!, /--allow-all/);
    },
  );
});

describe("signalNumber(), signalName()", () => {
  it("signalNumber() and signalName() map both ways; unknown → undefined", () => {
    const linux: Record<string, number> = {
      SIGHUP: 1,
      SIGINT: 2,
      SIGQUIT: 3,
      SIGKILL: 9,
      SIGUSR1: 10,
      SIGUSR2: 12,
      SIGTERM: 15,
    };
    for (const [name, number] of Object.entries(linux)) {
      assert.equal(platform.signalNumber(name), number, name);
      assert.equal(platform.signalName(number), name, String(number));
    }
    assert.equal(platform.signalNumber("SIGNOPE"), undefined);
    assert.equal(platform.signalNumber("toString"), undefined);
    assert.equal(platform.signalName(999), undefined);
  });
});

describe("onSignal()", () => {
  it("onSignal() rejects signals it does not handle", () => {
    assert.throws(() => platform.onSignal("SIGKILL", () => {}), {
      name: "TypeError",
      message: `Cannot subscribe to a signal: 'signal' must be one of ${
        platform.HANDLED_SIGNALS.join(", ")
      }, got "SIGKILL"`,
    });
    assert.throws(() => platform.onSignal("nope", () => {}), /SIGTERM/);
  });

  it("onSignal() delivers each handled signal by name in a real child, and unsubscribes", {
    timeout: 60_000,
  }, async () => {
    const result = await runFixture(fixture("platform_signals.ts"));
    assert.equal(result.code, 0, result.stderr);
    const lines = result.stdout.trim().split("\n");
    assert.deepEqual(lines, [
      "got SIGTERM",
      "got SIGINT",
      "got SIGHUP",
      "got SIGQUIT",
      "got SIGUSR1",
      "got SIGUSR2",
      "unsubscribed",
    ]);
  });
});

describe("signalListenerCount()", () => {
  it("signalListenerCount() counts onSignal subscriptions", () => {
    const before = platform.signalListenerCount("SIGUSR2");
    assert.equal(typeof before, "number");
    const off = platform.onSignal("SIGUSR2", () => {});
    assert.equal(platform.signalListenerCount("SIGUSR2"), before! + 1);
    off();
    assert.equal(platform.signalListenerCount("SIGUSR2"), before);
  });

  it("signalListenerCount() counts alike in two copies of platform.ts loaded by one process", async () => {
    const copy = path.join(fs.mkdtempSync(path.join(dir, "copy-")), "platform.ts");
    fs.copyFileSync(path.join(ROOT, "platform.ts"), copy);
    const result = await runFixture(fixture("platform_two_copies.ts"), [copy]);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "2 2 0 0\n");
  });
});

describe("runCommand()", () => {
  it("runCommand() captures output and the exit code", async () => {
    const result = await platform.runCommand("sh", ["-c", "echo out; echo err >&2; exit 3"]);
    assert.deepEqual(
      { code: result.code, stdout: result.stdout, stderr: result.stderr, timedOut: result.timedOut },
      { code: 3, stdout: "out\n", stderr: "err\n", timedOut: false },
    );
    assert.equal(result.error, null);
  });

  it("runCommand() feeds stdin", async () => {
    const result = await platform.runCommand("cat", [], { input: "piped\n" });
    assert.equal(result.stdout, "piped\n");
  });

  it("runCommand() kills a command at its timeout", async () => {
    const result = await platform.runCommand("sleep", ["30"], { timeoutMs: 200 });
    assert.equal(result.timedOut, true);
    assert.equal(result.signal, "SIGKILL");
    assert.equal(result.code, null);
  });

  it("runCommand() resolves with an error for a missing program", async () => {
    const result = await platform.runCommand("keelson-no-such-program", []);
    assert.equal(result.code, null);
    assert.equal(platform.errorCode(result.error), "ENOENT");
  });

  it("runCommand() has a documented default time limit", () => {
    assert.equal(platform.DEFAULT_COMMAND_TIMEOUT_MS, 10_000);
  });
});

describe("spawnDetached()", () => {
  it("spawnDetached() starts a child in its own session writing to our descriptor", {
    timeout: 30_000,
  }, async () => {
    const out = path.join(dir, "detached.out");
    const fd = platform.openAppend(out, { mode: 0o600 });
    const pid = platform.spawnDetached("sh", ["-c", 'echo "sid=$(ps -o sid= -p $$ | tr -d " ") pid=$$"'], {
      stdoutFd: fd,
    });
    platform.closeFd(fd);
    assert.ok(pid !== null && pid > 0);
    let text = "";
    for (let i = 0; i < 200 && !text.includes("\n"); i++) {
      await sleep(20);
      text = fs.readFileSync(out, "utf8");
    }
    // Its own session: the session id is its own pid, not ours.
    assert.equal(text, `sid=${pid} pid=${pid}\n`);
  });

  it("spawnDetached() survives the death of the process that started it", { timeout: 30_000 }, async () => {
    const out = path.join(dir, "orphan.out");
    const result = await runFixture(fixture("platform_spawn_orphan.ts"), [out]);
    assert.equal(result.code, 0, result.stderr);
    const orphanPid = Number(result.stdout.trim());
    let text = "";
    for (let i = 0; i < 200 && !text.includes("done"); i++) {
      await sleep(25);
      text = fs.existsSync(out) ? fs.readFileSync(out, "utf8") : "";
    }
    assert.equal(text, `alive ${orphanPid}\ndone\n`);
  });

  it("spawnDetached() returns null or a pid that fails for a missing program, never throws", () => {
    assert.doesNotThrow(() => platform.spawnDetached("keelson-no-such-program", []));
  });
});

describe("scriptCommand()", () => {
  it("scriptCommand() runs a script with this runtime", async () => {
    const { command, args } = platform.scriptCommand(fixture("platform_exit.ts"), ["0"]);
    assert.equal(command, process.execPath);
    const result = await platform.runCommand(command, args);
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout, "before\n");
  });
});

describe("stdinChunks()", () => {
  it("stdinChunks() yields the bytes piped to a child's stdin", { timeout: 30_000 }, async () => {
    const { command, args } = platform.scriptCommand(fixture("platform_stdin.ts"));
    const result = await platform.runCommand(command, args, { input: "héllo\nworld\n".repeat(1000) });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(result.stdout.trim(), String(encoder.encode("héllo\nworld\n".repeat(1000)).length));
  });
});

describe("createContextStore()", () => {
  it("createContextStore() binds a value across awaits and timers, isolated per call tree", async () => {
    const store = platform.createContextStore<string>();
    assert.equal(store.get(), undefined);
    const seen = await Promise.all(
      ["a", "b"].map((value) =>
        store.run(value, async () => {
          await new Promise((r) => setTimeout(r, value === "a" ? 20 : 5));
          const inTimer = await new Promise<string | undefined>((r) => setTimeout(() => r(store.get()), 1));
          return [store.get(), inTimer];
        })
      ),
    );
    assert.deepEqual(seen, [["a", "a"], ["b", "b"]]);
    assert.equal(store.run("sync", () => store.get()), "sync");
    assert.equal(store.get(), undefined);
  });
});
