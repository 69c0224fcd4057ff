'use strict';

// Reference peer, per the article "Send MMS with Plivo, Node.js & Fastify":
// Fastify app that loads config with dotenv, builds one Plivo client, decorates the
// app with it, registers @fastify/rate-limit, the MMS routes under /api/mms and /health.
//
// Nothing in this file knows about the fake Plivo server. The bench points the Plivo SDK
// at the fake by preloading ../plivo-local.js (node -r ./plivo-local.js src/app.js); see
// benchmarks/peer/README.md.

const path = require('path');
require('dotenv').config({ path: path.join(__dirname, '..', '.env'), quiet: true });

const Fastify = require('fastify');
const plivo = require('plivo');

const requiredEnv = ['PLIVO_AUTH_ID', 'PLIVO_AUTH_TOKEN', 'PLIVO_SENDER_NUMBER'];
const missing = requiredEnv.filter((k) => !process.env[k]);
if (missing.length) {
  // eslint-disable-next-line no-console
  console.error(`Missing required environment variables: ${missing.join(', ')}`);
  process.exit(1);
}

const HOST = process.env.HOST || '127.0.0.1';
const PORT = Number(process.env.PORT || 3000);
const RATE_LIMIT_MAX = Number(process.env.RATE_LIMIT_MAX || 100);

// Logging: pino at 'info' with Fastify's default request logging ("incoming request" /
// "request completed" per request). The article pretty-prints in development and writes
// JSON otherwise; for benchmarking, LOG_FILE sends that JSON to a file (or /dev/null) so the
// terminal is not the bottleneck while the per-request logging cost is still paid.
function loggerOptions() {
  const level = process.env.LOG_LEVEL || 'info';
  if (process.env.LOG_FILE) {
    return { level, file: process.env.LOG_FILE };
  }
  if (process.env.NODE_ENV === 'development') {
    try {
      require.resolve('pino-pretty');
      return { level, transport: { target: 'pino-pretty', options: { translateTime: 'HH:MM:ss Z', ignore: 'pid,hostname' } } };
    } catch (_) { /* pino-pretty is an optional dev dependency */ }
  }
  return { level };
}

function buildApp() {
  const app = Fastify({ logger: loggerOptions() });

  const plivoClient = new plivo.Client(process.env.PLIVO_AUTH_ID, process.env.PLIVO_AUTH_TOKEN);
  app.decorate('plivo', plivoClient);
  app.decorate('plivoSenderNumber', process.env.PLIVO_SENDER_NUMBER);

  // Rate limiting, registered before the routes it protects.
  app.register(require('@fastify/rate-limit'), {
    max: RATE_LIMIT_MAX,
    timeWindow: '1 minute',
    enableDraftSpec: true,
    errorResponseBuilder: (request, context) => ({
      statusCode: 429,
      error: 'Too Many Requests',
      message: `Rate limit exceeded. Retry in ${context.after}.`,
    }),
  });

  app.register(require('./routes/mms'), { prefix: '/api/mms' });

  app.get('/health', async () => ({ status: 'ok', timestamp: new Date().toISOString() }));

  return app;
}

async function start() {
  const app = buildApp();
  const shutdown = async (signal) => {
    app.log.info({ signal }, 'shutting down');
    try { await app.close(); } finally { process.exit(0); }
  };
  process.once('SIGINT', shutdown);
  process.once('SIGTERM', shutdown);
  try {
    await app.listen({ host: HOST, port: PORT });
    // One line on stderr so a supervisor can see readiness even when logs go to /dev/null.
    // eslint-disable-next-line no-console
    console.error(`node-ref listening on http://${HOST}:${PORT} (rate limit ${RATE_LIMIT_MAX}/min, pid ${process.pid})`);
  } catch (err) {
    app.log.error(err);
    // eslint-disable-next-line no-console
    console.error(err);
    process.exit(1);
  }
}

if (require.main === module) {
  start();
}

module.exports = { buildApp };
