#!/usr/bin/env node
// Installs the packed npm tarball the way a user does and proves it works: a fresh project imports
// `keelson` and every subpath on Node, Bun and Deno (through node_modules) and calls one function of each,
// then tsc type-checks a consumer under `node16` and `bundler` resolution with the strictest flags and
// `skipLibCheck: false`. Plain JavaScript, like tools/runtimes.mjs, so any Node.js with npm can start it.
//
//   node tools/check_package.mjs        (KEEP=1 keeps the temporary project for a look)
import { spawnSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const bin = (name) => join(root, "node_modules", ".bin", name);
const SUBPATHS = ["logging", "pidfile", "shutdown", "transport", "sqlite_wal"];

function run(command, args, options = {}) {
  const result = spawnSync(command, args, { encoding: "utf8", ...options });
  if (result.status !== 0) {
    process.stdout.write(result.stdout ?? "");
    process.stderr.write(result.stderr ?? "");
    throw new Error(`${[command, ...args].join(" ")} exited ${result.status ?? result.signal}`);
  }
  return result.stdout;
}

// One call per entry point, each checking its answer, so an import that loads but is broken fails too.
const CONSUMER = `
import * as all from "keelson";
import { openRotatingFile } from "keelson/logging";
import { readPidFile } from "keelson/pidfile";
import { parseSystemdTimespan } from "keelson/shutdown";
import { isPeerGone } from "keelson/transport";
import { readJournalModeOnDisk } from "keelson/sqlite_wal";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const dir = mkdtempSync(join(tmpdir(), "keelson-consumer-"));
const check = (ok: boolean, what: string): void => {
  if (!ok) throw new Error("package check failed: " + what);
};
const file = openRotatingFile(join(dir, "app.log"));
file.write("hello");
file.close();
check(readFileSync(join(dir, "app.log"), "utf8") === "hello\\n", "keelson/logging writes a record");
check(readPidFile(join(dir, "absent.pid")).state === "absent", "keelson/pidfile reads an absent file");
check(parseSystemdTimespan("1min 30s") === 90_000_000, "keelson/shutdown parses a timespan");
check(isPeerGone(Object.assign(new Error("x"), { code: "EPIPE" })), "keelson/transport knows EPIPE");
check(readJournalModeOnDisk(join(dir, "none.db")) === "absent", "keelson/sqlite_wal reads an absent file");
check(typeof all.acquirePidFile === "function" && typeof all.installShutdown === "function", "keelson");
console.log("package ok");
`;

// The consumer's own node imports, declared by hand, so the bundler-style check runs without @types/node.
const NODE_DECLARATIONS = [
  "declare function mkdtempSync(prefix: string): string;",
  "declare function readFileSync(path: string, encoding: string): string;",
  "declare function tmpdir(): string;",
  "declare function join(...parts: string[]): string;",
  "declare const console: { log(...args: unknown[]): void };",
  "",
].join("\n");

const STRICT = {
  target: "ES2022",
  strict: true,
  noUncheckedIndexedAccess: true,
  exactOptionalPropertyTypes: true,
  noImplicitOverride: true,
  noPropertyAccessFromIndexSignature: true,
  skipLibCheck: false,
  noEmit: true,
};

const work = mkdtempSync(join(tmpdir(), "keelson-pack-"));
try {
  console.log("== npm pack (runs prepack: the dist/ build)");
  run("npm", ["pack", "--silent", "--pack-destination", work], { cwd: root });
  const tarball = readdirSync(work).find((name) => name.endsWith(".tgz"));
  if (!tarball) throw new Error("npm pack made no tarball");
  // What ships: the compiled entry points with their types, the .ts sources (vendoring, source maps).
  const listed = run("tar", ["-tzf", join(work, tarball)]).split("\n").filter(Boolean).map((p) =>
    p.replace(/^package\//, "")
  );
  const required = ["package.json", "README.md", "LICENSE", "platform.ts", "dist/platform.js"];
  for (const name of ["mod", ...SUBPATHS]) {
    required.push(`${name}.ts`, `dist/${name}.js`, `dist/${name}.d.ts`);
  }
  const missing = required.filter((name) => !listed.includes(name));
  const stray = listed.filter((name) =>
    !/^(dist\/[a-z_]+\.(js|d\.ts)(\.map)?|[a-z_]+\.ts|package\.json|README\.md|LICENSE)$/.test(name)
  );
  if (missing.length || stray.length) {
    throw new Error(
      `tarball: missing ${missing.join(", ") || "nothing"}; unexpected ${stray.join(", ") || "nothing"}`,
    );
  }
  console.log(`tarball: ${listed.length} files, every entry point as .js + .d.ts, sources beside`);

  const project = join(work, "consumer");
  mkdirSync(project);
  writeFileSync(
    join(project, "package.json"),
    JSON.stringify({ name: "consumer", private: true, type: "module" }),
  );
  run("npm", ["install", "--no-audit", "--no-fund", "--loglevel=error", join(work, tarball)], {
    cwd: project,
  });

  // The consumer is the user's own .ts (each runtime strips it: it is not under node_modules); keelson
  // itself comes from node_modules as the compiled JavaScript.
  writeFileSync(join(project, "consumer.ts"), CONSUMER);
  for (
    const [runtime, args] of [
      ["node", ["consumer.ts"]],
      ["bun", ["consumer.ts"]],
      ["deno", ["run", "-A", "consumer.ts"]],
    ]
  ) {
    const out = run(bin(runtime), args, { cwd: project, env: { ...process.env, NO_COLOR: "1" } }).trim();
    if (out !== "package ok") throw new Error(`${runtime} printed ${JSON.stringify(out)}`);
    console.log(`${runtime}: imported keelson and every subpath from node_modules: ${out}`);
  }

  writeFileSync(
    join(project, "typed.ts"),
    CONSUMER.replace(/^import \{ mkdtempSync[^\n]*\n[^\n]*\n[^\n]*\n/m, NODE_DECLARATIONS),
  );
  // Four consumers: a Node project (node16, ES2023 with @types/node), a bundler/Bun-style one (ESNext and
  // DOM libs, no node types), a bare one (ES2022 lib only, no node types: keelson's declarations must bring
  // what they use), and an old-style node10 one (subpaths through typesVersions, never the .ts sources).
  const nodeTypes = { lib: ["ES2023"], types: ["node"], typeRoots: [join(root, "node_modules", "@types")] };
  const webTypes = { lib: ["ESNext", "DOM"], types: [] };
  const bareTypes = { lib: ["ES2022"], types: [] };
  const node10 = { ...nodeTypes, esModuleInterop: true };
  const consumers = [
    ["node16", "node16", nodeTypes],
    ["ESNext", "bundler", webTypes],
    ["nodenext", "nodenext", bareTypes],
    ["commonjs", "node10", node10],
  ];
  for (const [module, moduleResolution, libs] of consumers) {
    const compilerOptions = { ...STRICT, ...libs, module, moduleResolution };
    const config = { compilerOptions, files: ["typed.ts"] };
    writeFileSync(join(project, "tsconfig.json"), JSON.stringify(config, null, 2));
    run(bin("tsc"), ["-p", "tsconfig.json"], { cwd: project });
    console.log(`tsc (${moduleResolution}, strictest flags, skipLibCheck false): clean`);
  }
} finally {
  if (!process.env.KEEP) rmSync(work, { recursive: true, force: true });
}
