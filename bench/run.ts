// Runs every bench/<module>_bench.ts on the runtime running this file and prints one table of the
// figures they report (lines such as `ratio logging/raw-append 0.83`).
import * as fs from "node:fs";
import * as path from "node:path";
import { runCommand, runtime, runtimeVersion, scriptCommand } from "../platform.ts";

const dir = import.meta.dirname ?? "bench";
const only = process.argv.slice(2).filter((a) => !a.startsWith("-"));
const benches = fs.readdirSync(dir)
  .filter((name) => name.endsWith("_bench.ts"))
  .filter((name) => only.length === 0 || only.some((o) => name.startsWith(o)))
  .sort();

const rows: Array<[string, string, string, string]> = [];
let failed = 0;
for (const name of benches) {
  const { command, args } = scriptCommand(path.join(dir, name));
  const result = await runCommand(command, args, { timeoutMs: 180_000 });
  if (result.code !== 0) {
    failed += 1;
    console.error(
      `${name} failed (exit ${result.code}${result.timedOut ? ", timed out" : ""}):\n${result.stderr}`,
    );
  }
  for (const line of result.stdout.split("\n")) {
    const match = /^(\w+) (\S+) (\S+)(.*)$/.exec(line.trim());
    if (match) rows.push([match[1], match[2], match[3], match[4].trim()]);
  }
}
const width = Math.max(...rows.map((r) => r[1].length), 10);
console.log(`keelson benches on ${runtime} ${runtimeVersion}`);
console.log(`${"kind".padEnd(6)} ${"figure".padEnd(width)} ${"value".padStart(12)}  note`);
for (const [kind, figure, value, note] of rows) {
  console.log(`${kind.padEnd(6)} ${figure.padEnd(width)} ${value.padStart(12)}  ${note}`);
}
if (failed > 0) process.exitCode = 1;
