#!/usr/bin/env node
// Runs keelson's test suite (or the demo, or the benches) on the pinned Deno, Bun and Node from
// node_modules, installing them first when they are missing. Plain JavaScript so the machine's own
// Node.js (any version with npm) can start it before the pinned runtimes exist.
//
//   node tools/runtimes.mjs test [deno|bun|node ...] [file-filter ...]   the suite (or the matching
//                                                      files), one summary per runtime
//   node tools/runtimes.mjs demo [runtime]             examples/demo.ts (Deno by default)
//   node tools/runtimes.mjs bench [runtime ...]        bench/run.ts on each runtime
import { spawnSync } from "node:child_process";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name) => join(root, "node_modules", ".bin", name);
const RUNTIMES = ["deno", "bun", "node"];
// Generous: multi-process tests spawn many children on a 2-core machine.
const BUN_TEST_TIMEOUT_MS = 120_000;

function pinnedVersions() {
  const pkg = JSON.parse(readFileSync(join(root, "package.json"), "utf8"));
  return pkg.devDependencies;
}

function installedVersion(name) {
  const file = join(root, "node_modules", name, "package.json");
  return existsSync(file) ? JSON.parse(readFileSync(file, "utf8")).version : null;
}

function ensureRuntimes() {
  const pins = pinnedVersions();
  const missing = RUNTIMES.filter((name) => installedVersion(name) !== pins[name] || !existsSync(bin(name)));
  if (missing.length === 0) return;
  console.log(`installing pinned runtimes (${missing.map((n) => `${n}@${pins[n]}`).join(", ")}) ...`);
  const npm = process.platform === "win32" ? "npm.cmd" : "npm";
  const result = spawnSync(npm, ["install", "--no-audit", "--no-fund", "--loglevel=error"], {
    cwd: root,
    stdio: "inherit",
  });
  if (result.status !== 0) {
    console.error("npm install failed");
    process.exit(1);
  }
}

// Optional filters (e.g. "logging" or "tests/logging_test.ts") pick test files by substring.
function testFiles(filters = []) {
  return readdirSync(join(root, "tests"))
    .filter((name) => name.endsWith("_test.ts"))
    .filter((name) => filters.length === 0 || filters.some((f) => `tests/${name}`.includes(f)))
    .sort()
    .map((name) => `tests/${name}`);
}

function commandFor(runtime, files) {
  switch (runtime) {
    case "deno":
      return [bin("deno"), ["test", "-A", "--no-check", ...files]];
    case "bun":
      return [bin("bun"), ["test", `--timeout=${BUN_TEST_TIMEOUT_MS}`, ...files.map((f) => `./${f}`)]];
    case "node":
      return [bin("node"), ["--test", "--test-concurrency=1", ...files]];
  }
  throw new Error(`unknown runtime ${runtime}`);
}

// deno-lint-ignore no-control-regex
const stripAnsi = (text) => text.replace(/\x1b\[[0-9;]*m/g, "");

// Each runner prints its own closing summary; read the counts from it.
function parseCounts(runtime, output) {
  const text = stripAnsi(output);
  const last = (re) => {
    const all = [...text.matchAll(re)];
    return all.length ? Number(all[all.length - 1][1]) : null;
  };
  if (runtime === "deno") {
    // "ok | 7 passed (46 steps) | 0 failed": node:test's it() blocks are Deno's steps; count those.
    const m = [
      ...text.matchAll(
        /^(?:ok|FAILED) \| (\d+) passed(?: \((\d+) steps?\))? \| (\d+) failed(?: \((\d+) steps?\))?/gm,
      ),
    ].pop();
    if (!m) return null;
    return { passed: Number(m[2] ?? m[1]), failed: Number(m[4] ?? m[3]) };
  }
  if (runtime === "bun") {
    const passed = last(/^\s*(\d+) pass$/gm);
    const failed = last(/^\s*(\d+) fail$/gm);
    return passed === null ? null : { passed, failed: failed ?? 0 };
  }
  const passed = last(/^(?:#|ℹ) pass (\d+)$/gm);
  const failed = last(/^(?:#|ℹ) fail (\d+)$/gm);
  return passed === null ? null : { passed, failed: failed ?? 0 };
}

function runTests(selected, filters) {
  const files = testFiles(filters);
  if (files.length === 0) {
    console.error("no test files under tests/");
    process.exit(1);
  }
  const summaries = [];
  for (const runtime of selected) {
    const [command, args] = commandFor(runtime, files);
    console.log(`\n=== ${runtime} ${installedVersion(runtime)}: ${files.length} test files ===`);
    const started = Date.now();
    const result = spawnSync(command, args, {
      cwd: root,
      encoding: "utf8",
      maxBuffer: 256 * 1024 * 1024,
      env: { ...process.env, NO_COLOR: "1", FORCE_COLOR: "0" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    // bun test reports on stderr, the others on stdout: show both, in order of importance.
    process.stdout.write(result.stdout ?? "");
    process.stdout.write(result.stderr ?? "");
    const counts = parseCounts(runtime, `${result.stdout}\n${result.stderr}`);
    const seconds = ((Date.now() - started) / 1000).toFixed(1);
    let { passed, failed } = counts ?? { passed: 0, failed: 0 };
    // A crashed runner or a non-zero exit with no failure counted still counts as one failure.
    if (counts === null || (result.status !== 0 && failed === 0)) failed += 1;
    summaries.push({ runtime, passed, failed, seconds, status: result.status });
  }
  console.log("\n=== summary ===");
  for (const s of summaries) {
    console.log(
      `${s.runtime.padEnd(5)} ${String(s.passed).padStart(4)} passed ${
        String(s.failed).padStart(3)
      } failed  (${s.seconds}s, exit ${s.status})`,
    );
  }
  const passed = summaries.reduce((n, s) => n + s.passed, 0);
  const failed = summaries.reduce((n, s) => n + s.failed, 0);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 ? 0 : 1);
}

function runScript(runtime, script, extra = []) {
  const args = runtime === "deno" ? ["run", "-A", script, ...extra] : [script, ...extra];
  const result = spawnSync(bin(runtime), args, { cwd: root, stdio: "inherit" });
  return result.status ?? 1;
}

const [task = "test", ...rest] = process.argv.slice(2);
const picked = rest.filter((r) => RUNTIMES.includes(r));
const others = rest.filter((r) => !RUNTIMES.includes(r));
ensureRuntimes();
if (task === "test") runTests(picked.length ? picked : RUNTIMES, others);
else if (task === "demo") process.exit(runScript(picked[0] ?? "deno", "examples/demo.ts", others));
else if (task === "bench") {
  let status = 0;
  for (const runtime of picked.length ? picked : RUNTIMES) {
    console.log(`\n=== bench on ${runtime} ${installedVersion(runtime)} ===`);
    status ||= runScript(runtime, "bench/run.ts", others);
  }
  process.exit(status);
} else {
  console.error(`unknown task ${task}: expected test, demo or bench`);
  process.exit(2);
}
