// Validates Strimzi custom resources (kafka.strimzi.io/v1) against the
// openAPIV3Schema of Strimzi's published CRDs, compiled into validators by
// the npm package pinned in package.json (see README.md here).
//
// Usage: node validate.mjs FILE.json   (a JSON array of resources)
// Prints one line per resource; exits 1 if any resource is invalid.
//
// Two checks per resource:
//  1. the compiled schema: types, enums, patterns, bounds, required fields;
//  2. no unknown fields. CRD schemas do not say `additionalProperties: false`
//     (the API server prunes unknown fields, and `kubectl apply` refuses them
//     under strict field validation), so the validator would pass a misspelt
//     field silently. The resource is handed to the validator through
//     proxies that record which fields the schema looked up: a field of an
//     object that the schema inspected, and that the schema never looked up,
//     is not in the schema. Objects whose fields the schema enumerates (maps
//     such as labels) or never inspects (free-form, such as a topic's
//     `config`) take any field, as they do on the API server.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { pathToFileURL } from "node:url";

const KINDS = ["Kafka", "KafkaNodePool", "KafkaTopic", "KafkaUser"];
const API_VERSION = "kafka.strimzi.io/v1";

const require = createRequire(import.meta.url);
const pkgDir = dirname(
  require.resolve("@kubernetes-models/strimzi-kafka-operator/package.json"),
);

async function validatorFor(kind) {
  const file = join(pkgDir, "_schemas", `KafkaStrimziIoV1${kind}.js`);
  const mod = await import(pathToFileURL(file).href);
  return mod.validate;
}

// Wraps `value` so that every field read and every enumeration of its
// objects is recorded in `seen` (object -> {read: Set, enumerated: bool}).
function traced(value, seen) {
  if (value === null || typeof value !== "object") return value;
  if (!seen.has(value)) seen.set(value, { read: new Set(), enumerated: false });
  const entry = seen.get(value);
  return new Proxy(value, {
    get(target, key, receiver) {
      if (typeof key === "string") entry.read.add(key);
      return traced(Reflect.get(target, key, receiver), seen);
    },
    has(target, key) {
      if (typeof key === "string") entry.read.add(key);
      return Reflect.has(target, key);
    },
    getOwnPropertyDescriptor(target, key) {
      if (typeof key === "string") entry.read.add(key);
      return Reflect.getOwnPropertyDescriptor(target, key);
    },
    ownKeys(target) {
      entry.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

function unknownFields(value, seen, path, out) {
  if (value === null || typeof value !== "object") return;
  if (Array.isArray(value)) {
    value.forEach((item, i) => unknownFields(item, seen, `${path}[${i}]`, out));
    return;
  }
  const entry = seen.get(value);
  if (!entry) return; // never reached: its parent reports it
  const inspected = !entry.enumerated && entry.read.size > 0;
  for (const key of Object.keys(value)) {
    if (inspected && !entry.read.has(key)) {
      out.push(`${path}.${key}: unknown field`);
      continue;
    }
    unknownFields(value[key], seen, `${path}.${key}`, out);
  }
}

function describeErrors(errors) {
  return (errors || []).map(
    (e) => `${e.instancePath || "/"}: ${e.message || e.keyword} ${JSON.stringify(e.params)}`,
  );
}

const file = process.argv[2];
if (!file) {
  console.error("usage: node validate.mjs FILE.json");
  process.exit(2);
}
const resources = JSON.parse(readFileSync(file, "utf8"));
let failed = 0;
for (const resource of resources) {
  const name = `${resource.kind}/${resource?.metadata?.name}`;
  const problems = [];
  if (resource.apiVersion !== API_VERSION) {
    problems.push(`apiVersion is ${resource.apiVersion}, expected ${API_VERSION}`);
  }
  if (!KINDS.includes(resource.kind)) {
    problems.push(`no schema shipped for kind ${resource.kind}`);
  }
  if (problems.length === 0) {
    const validate = await validatorFor(resource.kind);
    const seen = new Map();
    const ok = validate(traced(resource, seen));
    if (!ok) problems.push(...describeErrors(validate.errors));
    unknownFields(resource, seen, "", problems);
  }
  if (problems.length) {
    failed++;
    console.log(`ERROR ${file}: ${name}:`);
    for (const p of problems) console.log(`  ${p}`);
  } else {
    console.log(`INFO ${file}: ${name} passed against ${API_VERSION}`);
  }
}
process.exit(failed ? 1 : 0);
