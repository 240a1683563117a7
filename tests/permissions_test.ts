// What each module needs from Deno's permissions, as the README's table says: every module runs with
// --allow-read --allow-write, pidfile.ts refuses with a typed error without -A (it cannot judge a reused PID
// without /proc), and shutdown.ts says once on stderr what its snapshot loses. Runs the pinned Deno
// whatever runtime runs this file.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { isLinux, runCommand } from "../platform.ts";
import { fixture, freshDir, ROOT, tempRoot } from "./_helpers.ts";

const deno = path.join(ROOT, "node_modules", ".bin", "deno");
const FIXTURE = fixture("deno_permissions.ts");
const work = tempRoot("keelson-permissions-");

async function runWith(flags: string[]): Promise<{ outcome: Record<string, unknown>; warnings: string[] }> {
  const dir = freshDir(work, "run");
  const result = await runCommand(deno, ["run", "--quiet", ...flags, FIXTURE, dir], { timeoutMs: 60_000 });
  assert.equal(result.code, 0, result.stderr);
  const outcome = JSON.parse(result.stdout.trim().split("\n").pop() ?? "{}") as Record<string, unknown>;
  const warnings = result.stderr.split("\n").filter((line) => line.startsWith("keelson"));
  return { outcome, warnings };
}

describe("Deno permissions", () => {
  const skip = !fs.existsSync(deno)
    ? "the pinned Deno is not installed"
    : !isLinux
    ? "no /proc off Linux"
    : false;

  it("every module runs under -A with no warning", { skip, timeout: 90_000 }, async () => {
    const { outcome, warnings } = await runWith(["-A"]);
    assert.deepEqual(outcome, {
      logging: "ok",
      pidfile: "ok",
      shutdown: "ok",
      sqlite_wal: "wal",
      transport: "ok",
    });
    assert.deepEqual(warnings, []);
  });

  it("with --allow-read --allow-write: pidfile refuses with PidFileError, shutdown warns once", {
    skip,
    timeout: 90_000,
  }, async () => {
    const { outcome, warnings } = await runWith(["--allow-read", "--allow-write"]);
    assert.deepEqual(outcome, {
      logging: "ok",
      pidfile: "PidFileError",
      shutdown: "ok",
      sqlite_wal: "wal",
      transport: "ok",
    });
    const snapshot = warnings.filter((line) => line.includes("shutdown snapshot"));
    assert.equal(snapshot.length, 1, warnings.join("\n"));
    assert.match(snapshot[0] ?? "", /--allow-all/);
  });
});
