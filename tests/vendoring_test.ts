// Each module vendored alone: `<module>.ts` + `platform.ts` copied into an empty folder must import
// and expose its contract names on the runtime running this test, with nothing else beside them.
import { describe, it } from "node:test";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { runCommand, scriptCommand } from "../platform.ts";
import { freshDir, ROOT, tempRoot } from "./_helpers.ts";

const work = tempRoot("keelson-vendor-");

/** The contract names of ../shared/DESIGN.md that each vendored module must export. */
const CONTRACT: Record<string, string[]> = {
  logging: ["openRotatingFile", "createLogger"],
  pidfile: ["readPidFile", "acquirePidFile", "PidFileLockedError", "markPlannedStop"],
  shutdown: [
    "snapshotShutdownContext",
    "formatShutdownContext",
    "parseSystemdTimespan",
    "checkSystemdStopTimeout",
    "spawnShutdownDiagnostic",
    "installShutdown",
  ],
  transport: [
    "createStdioTransport",
    "TeeTransport",
    "withTransport",
    "currentTransport",
    "readFrames",
    "FrameError",
    "isPeerGone",
  ],
  sqlite_wal: [
    "WAL_INCOMPATIBLE_MARKERS",
    "readJournalModeOnDisk",
    "applyWal",
    "WalDowngradeRefusedError",
    "WalUnsupportedError",
  ],
};

describe("vendoring", () => {
  for (const [module, names] of Object.entries(CONTRACT)) {
    it(`${module}.ts + platform.ts alone import and export the contract`, { timeout: 60_000 }, async () => {
      const folder = freshDir(work, module);
      fs.copyFileSync(path.join(ROOT, `${module}.ts`), path.join(folder, `${module}.ts`));
      fs.copyFileSync(path.join(ROOT, "platform.ts"), path.join(folder, "platform.ts"));
      // A module that reached for anything but ./platform.ts would fail to resolve here.
      const imports = fs.readFileSync(path.join(folder, `${module}.ts`), "utf8")
        .matchAll(/^\s*(?:import|export)\b[^;]*?from\s+["']([^"']+)["']/gm);
      for (const [, specifier] of imports) {
        assert.equal(specifier, "./platform.ts", `${module}.ts imports ${specifier}`);
      }
      const probe = path.join(folder, "probe.ts");
      fs.writeFileSync(
        probe,
        `import * as m from "./${module}.ts";\nconsole.log(JSON.stringify(Object.keys(m).sort()));\n`,
      );
      const { command, args } = scriptCommand(probe);
      const result = await runCommand(command, args, { cwd: folder, timeoutMs: 50_000 });
      assert.equal(result.code, 0, result.stderr);
      const exported: string[] = JSON.parse(result.stdout.trim().split("\n").pop()!);
      for (const name of names) assert.ok(exported.includes(name), `${module}.ts exports ${name}`);
    });
  }

  it("mod.ts re-exports every contract name", async () => {
    const mod = await import("../mod.ts");
    for (const names of Object.values(CONTRACT)) {
      for (const name of names) assert.ok(name in mod, `mod.ts exports ${name}`);
    }
  });
});
