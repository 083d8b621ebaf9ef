// Mastra peer of `python -m bench` (see bench/mastra_peer.py): a workflow of 10 no-op steps on a LibSQL
// file, run N times one at a time or CONCURRENCY in flight. Prints one JSON line: seconds and per-run latencies.
// Usage: node bench.mjs DB_PATH N CONCURRENCY WARMUP PRAGMAS   (PRAGMAS: "shipped" or "WAL+NORMAL" / "WAL+FULL")
import { Mastra } from "@mastra/core";
import { createStep, createWorkflow } from "@mastra/core/workflows";
import { LibSQLStore } from "@mastra/libsql";
import { createClient } from "@libsql/client";
import { z } from "zod";

const [dbPath, nArg, concArg, warmArg, pragmas] = process.argv.slice(2);
const n = Number(nArg), concurrency = Number(concArg), warmup = Number(warmArg);

const empty = z.object({});
let wf = createWorkflow({ id: "ten", inputSchema: empty, outputSchema: empty });
for (let i = 0; i < 10; i++) {
  wf = wf.then(createStep({ id: `s${i}`, inputSchema: empty, outputSchema: empty, execute: async () => ({}) }));
}
wf.commit();

let storage;
if (pragmas === "shipped") {
  storage = new LibSQLStore({ id: "bench", url: `file:${dbPath}` });
} else {
  const [journal, sync] = pragmas.split("+");
  const client = createClient({ url: `file:${dbPath}` });
  await client.execute(`PRAGMA journal_mode=${journal}`);
  await client.execute(`PRAGMA synchronous=${sync}`);
  storage = new LibSQLStore({ id: "bench", client });
}
const mastra = new Mastra({ workflows: { ten: wf }, storage, logger: false });
const workflow = mastra.getWorkflow("ten");

async function one() {
  const t0 = performance.now();
  const run = await workflow.createRun();
  const result = await run.start({ inputData: {} });
  if (result.status !== "success") throw new Error(`run ended ${result.status}`);
  return (performance.now() - t0) / 1000;
}

for (let i = 0; i < warmup; i++) await one();
const latencies = [];
const cpu0 = process.cpuUsage();
const t0 = performance.now();
let next = 0;
async function lane() {
  while (next < n) {
    next++;
    latencies.push(await one());
  }
}
await Promise.all(Array.from({ length: Math.min(concurrency, n) }, lane));
const seconds = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
let journal = "?", synchronous = "?";
try {
  const probe = createClient({ url: `file:${dbPath}` });
  journal = (await probe.execute("PRAGMA journal_mode")).rows[0][0];
  probe.close();
} catch {}
console.log(JSON.stringify({ seconds, latencies, cpu_us: cpu.user + cpu.system, journal, node: process.version }));
process.exit(0);
