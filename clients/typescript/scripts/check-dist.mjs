// Fails when the committed dist/ is not what the sources compile to:
// compiles src/ into a temporary directory with the locked TypeScript and
// compares every file, both ways. Fix with `npm run build` and commit dist/.
import { execFileSync } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const require = createRequire(import.meta.url);
let tsc;
try {
  tsc = require.resolve("typescript/bin/tsc", { paths: [root] });
} catch {
  console.error("check-dist: TypeScript is not installed; run `npm ci` in clients/typescript");
  process.exit(1);
}

const out = mkdtempSync(join(tmpdir(), "shardchat-dist-"));
let failed = false;
try {
  execFileSync(process.execPath, [tsc, "-p", join(root, "tsconfig.json"), "--outDir", out], {
    cwd: root,
    stdio: "inherit",
  });
  const dist = join(root, "dist");
  const fresh = readdirSync(out).sort();
  const committed = existsSync(dist) ? readdirSync(dist).sort() : [];
  for (const name of new Set([...fresh, ...committed])) {
    if (!fresh.includes(name)) {
      console.error(`check-dist: dist/${name} is not produced by the sources (remove it)`);
      failed = true;
    } else if (!committed.includes(name)) {
      console.error(`check-dist: dist/${name} is missing`);
      failed = true;
    } else if (!readFileSync(join(out, name)).equals(readFileSync(join(dist, name)))) {
      console.error(`check-dist: dist/${name} differs from what src/ compiles to`);
      failed = true;
    }
  }
} finally {
  rmSync(out, { recursive: true, force: true });
}
if (failed) {
  console.error("check-dist: dist/ is out of date: run `npm run build` in clients/typescript and commit dist/");
  process.exit(1);
}
console.log("check-dist: dist/ matches src/");
