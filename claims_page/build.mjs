// Bundles src/ into built/ (claims.js, index.html): the files `royalty claims-page` copies. built/ is
// committed, so writing a page needs no node; `node build.mjs --check` fails when built/ is not what the
// source gives with the locked esbuild and viem (tests/settlement/test_claims_page.py runs it).
import { readFileSync, writeFileSync, mkdirSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const builtDir = join(here, "built");
const check = process.argv.includes("--check");

const result = await build({
  entryPoints: [join(here, "src", "main.js")],
  bundle: true,
  format: "iife",
  platform: "browser",
  target: ["es2020"],
  minify: true,
  legalComments: "eof",
  charset: "utf8",
  write: false,
  logLevel: "warning",
});
const outputs = {
  "claims.js": result.outputFiles[0].text,
  "index.html": readFileSync(join(here, "src", "index.html"), "utf8"),
};

if (check) {
  const stale = Object.keys(outputs).filter((name) => {
    try {
      return readFileSync(join(builtDir, name), "utf8") !== outputs[name];
    } catch {
      return true;
    }
  });
  if (stale.length > 0) {
    console.error(`claims_page/built/ is stale (${stale.join(", ")}): run \`npm run build\` in claims_page/ and commit built/`);
    process.exit(1);
  }
  console.log("claims_page/built/ matches the source");
} else {
  mkdirSync(builtDir, { recursive: true });
  for (const [name, text] of Object.entries(outputs)) writeFileSync(join(builtDir, name), text);
  console.log(`wrote ${Object.keys(outputs).map((n) => `built/${n}`).join(", ")} (${outputs["claims.js"].length.toLocaleString("en-US")} characters of script)`);
}
