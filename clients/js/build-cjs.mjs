// Builds the CommonJS entry (notify-client.cjs) and its types (notify-client.d.cts)
// from the ES module, the one source: `npm pack` runs it (prepack), and so does
// `node build-cjs.mjs`. No bundler: the module has no imports, so turning its
// `export` declarations into plain ones and listing them on `module.exports` is the
// whole conversion. It refuses a source it cannot convert rather than emit a broken file.
import { readFileSync, writeFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

const here = (name) => fileURLToPath(new URL(name, import.meta.url));
const source = readFileSync(here("notify-client.js"), "utf8");

if (/^\s*import\s/m.test(source) || /^\s*export\s+(default|\{|\*)/m.test(source)) {
  throw new Error("notify-client.js: only `export const|function|class NAME` can be converted");
}
const names = [];
const body = source.replace(
  /^export\s+(const|let|function|class|async\s+function)\s+([A-Za-z_$][\w$]*)/gm,
  (_, kind, name) => {
    names.push(name);
    return `${kind} ${name}`;
  },
);
if (/^\s*export\s/m.test(body)) throw new Error("notify-client.js: an export was not converted");

const header = "// Generated from notify-client.js by build-cjs.mjs: edit that file, not this one.\n";
writeFileSync(
  here("notify-client.cjs"),
  `${header}"use strict";\n${body}\nmodule.exports = { ${names.join(", ")} };\n`,
);
writeFileSync(here("notify-client.d.cts"), header + readFileSync(here("notify-client.d.ts"), "utf8"));
process.stderr.write(`notify-client.cjs: ${names.join(", ")}\n`);
