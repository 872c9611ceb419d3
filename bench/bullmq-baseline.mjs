// BullMQ baseline: enqueue N no-op jobs, then consume them with one worker process (concurrency 50) and print
// {"jobs", "seconds", "per_sec"} as one JSON line. Usage: node bullmq-baseline.mjs REDIS_URL JOBS [CONCURRENCY]
import { Queue, Worker } from 'bullmq';

const [url, jobsArg, concArg] = process.argv.slice(2);
const { hostname, port } = new URL(url);
const connection = { host: hostname, port: Number(port), maxRetriesPerRequest: null };
const jobs = Number(jobsArg ?? 100000);
const concurrency = Number(concArg ?? 50);
const name = `baseline-${Date.now()}`;

const queue = new Queue(name, { connection });
for (let i = 0; i < jobs; i += 1000) {
  const batch = [];
  for (let j = i; j < Math.min(i + 1000, jobs); j++) {
    batch.push({ name: 'noop', data: { i: j }, opts: { removeOnComplete: true, removeOnFail: true } });
  }
  await queue.addBulk(batch);
}

let done = 0;
const started = process.hrtime.bigint();
await new Promise((resolve) => {
  const worker = new Worker(name, async () => {}, { connection, concurrency });
  worker.on('completed', () => {
    done += 1;
    if (done === jobs) resolve(worker);
  });
}).then((worker) => worker.close());
const seconds = Number(process.hrtime.bigint() - started) / 1e9;
await queue.obliterate({ force: true });
await queue.close();
console.log(JSON.stringify({ jobs, seconds, per_sec: jobs / seconds }));
