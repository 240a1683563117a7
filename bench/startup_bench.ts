// The start-up cost of `import "./mod.ts"`: the same runtime starting an empty script, against one that
// imports all of keelson, alternated so both see the same machine load. Prints ms and their ratio.
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import { spawnSync } from "node:child_process";
import { runtime, scriptCommand } from "../platform.ts";

const ROUNDS = 15;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), "keelson-startup-"));
const modPath = path.join(import.meta.dirname ?? "bench", "..", "mod.ts");
const empty = path.join(dir, "empty.ts");
const withMod = path.join(dir, "with_mod.ts");
fs.writeFileSync(empty, "export {};\n");
fs.writeFileSync(
  withMod,
  `import * as keelson from ${JSON.stringify(modPath)};\nif (!keelson) throw new Error();\n`,
);

function timeRun(script: string): number {
  const { command, args } = scriptCommand(script);
  const started = performance.now();
  const result = spawnSync(command, args, { stdio: "ignore" });
  if (result.status !== 0) throw new Error(`${script} exited ${result.status}`);
  return performance.now() - started;
}

const median = (values: number[]) => [...values].sort((a, b) => a - b)[Math.floor(values.length / 2)];
timeRun(empty); // warm the runtime's own caches (Deno's module cache, Bun's transpiler cache)
timeRun(withMod);
const emptyMs: number[] = [];
const modMs: number[] = [];
for (let i = 0; i < ROUNDS; i++) {
  emptyMs.push(timeRun(empty));
  modMs.push(timeRun(withMod));
}
fs.rmSync(dir, { recursive: true, force: true });
const e = median(emptyMs);
const m = median(modMs);
console.log(`ms startup/empty-script ${e.toFixed(1)} (${runtime}, median of ${ROUNDS})`);
console.log(`ms startup/import-mod ${m.toFixed(1)}`);
console.log(`ms startup/import-cost ${(m - e).toFixed(1)}`);
console.log(`ratio startup/empty-script ${(m / e).toFixed(2)}`);
