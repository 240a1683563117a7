// The README's examples are the first code a user copies: each ```ts block runs here, as written, as a
// program of its own on the current runtime (its `./mod.ts` import resolved to this repository's mod.ts),
// in an empty working folder with stdin closed. It must exit 0, and every `// prints: TEXT` comment in the
// block names a line the program must print.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import process from "node:process";
import { runCommand, scriptCommand } from "../platform.ts";
import { freshDir, ROOT, tempRoot } from "./_helpers.ts";

const work = tempRoot("keelson-readme-");

interface Example {
  title: string;
  code: string;
}

/** The ```ts blocks of the README, named by their first comment line. */
function readmeExamples(): Example[] {
  const readme = fs.readFileSync(path.join(ROOT, "README.md"), "utf8");
  return [...readme.matchAll(/^```ts\n([\s\S]*?)^```$/gm)].map(([, code = ""], index) => ({
    title: /^\/\/ (.+)$/m.exec(code)?.[1] ?? `block ${index + 1}`,
    code,
  }));
}

describe("README.md", () => {
  const examples = readmeExamples();

  it("has an example for every module", () => {
    const code = examples.map((e) => e.code).join("\n");
    for (const name of ["openRotatingFile", "acquirePidFile", "installShutdown", "readFrames", "applyWal"]) {
      assert.match(code, new RegExp(`\\b${name}\\(`), `the README examples call ${name}()`);
    }
  });

  for (const [index, example] of examples.entries()) {
    it(`runs its example verbatim: ${example.title}`, { timeout: 60_000 }, async () => {
      const folder = freshDir(work, "example");
      // The program lives beside mod.ts's folder only through its import; everything it writes stays in
      // its own working folder.
      const program = path.join(ROOT, `.readme-example-${process.pid}-${index}.ts`);
      fs.writeFileSync(program, example.code);
      try {
        const { command, args } = scriptCommand(program);
        const result = await runCommand(command, args, { cwd: folder, timeoutMs: 50_000 });
        const why = `exit ${result.code}\n--- stdout ---\n${result.stdout}\n--- stderr ---\n${result.stderr}`;
        assert.equal(result.code, 0, why);
        for (const [, line = ""] of example.code.matchAll(/\/\/ prints: (.+)$/gm)) {
          assert.ok(result.stdout.split("\n").includes(line), `prints ${JSON.stringify(line)}\n${why}`);
        }
      } finally {
        fs.rmSync(program, { force: true });
      }
    });
  }
});
