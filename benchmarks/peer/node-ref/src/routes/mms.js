'use strict';

// POST /api/mms/send  (prefix set in app.js)
// Body: { to: E.164, media_urls: [uri, ...] (at most 10), text: string }
// Sends through the Plivo Node SDK: plivoClient.messages.create(src, dst, text, { type: 'mms', media_urls })

// The article checks for a "PlivoResponseError". The plivo package (4.x) exports no class by
// that name: every HTTP error it raises (InvalidRequestError, AuthenticationError,
// ServerError, ...) extends PlivoRestError (dist/utils/restException) and carries
// .status / .message (Plivo's "error") / .apiID. We treat those as the Plivo response errors.
let PlivoRestError = null;
try {
  // eslint-disable-next-line global-require
  PlivoRestError = require('plivo/dist/utils/restException');
} catch (_) { /* layout changed: fall back to duck typing below */ }

function isPlivoResponseError(err) {
  if (!err || typeof err !== 'object') return false;
  if (err.name === 'PlivoResponseError') return true;
  if (typeof PlivoRestError === 'function' && err instanceof PlivoRestError) return true;
  return typeof err.status === 'number' && 'apiID' in err;
}

const sendMmsSchema = {
  body: {
    type: 'object',
    required: ['to', 'media_urls', 'text'],
    additionalProperties: false,
    properties: {
      to: {
        type: 'string',
        description: 'Recipient phone number in E.164 format (e.g. +14155550100)',
        pattern: '^\\+[1-9]\\d{1,14}$',
      },
      media_urls: {
        type: 'array',
        maxItems: 10,
        items: { type: 'string', format: 'uri' },
      },
      text: { type: 'string' },
    },
  },
  response: {
    200: {
      type: 'object',
      properties: {
        message: { type: 'string' },
        messageUuid: { type: 'array', items: { type: 'string' } },
        apiId: { type: 'string' },
      },
    },
  },
};

async function mmsRoutes(fastify) {
  fastify.post('/send', { schema: sendMmsSchema }, async (request, reply) => {
    const { to, media_urls: mediaUrls, text } = request.body;
    const plivoClient = fastify.plivo;
    const src = fastify.plivoSenderNumber;

    const params = { type: 'mms', media_urls: mediaUrls };

    try {
      request.log.info({ to, mediaCount: mediaUrls.length }, 'Sending MMS via Plivo');
      const response = await plivoClient.messages.create(src, to, text, params);
      request.log.info({ messageUuid: response.messageUuid, apiId: response.apiId }, 'MMS queued');
      return reply.code(200).send({
        message: response.message,
        messageUuid: response.messageUuid,
        apiId: response.apiId,
      });
    } catch (error) {
      request.log.error({ err: error }, 'Failed to send MMS via Plivo');

      if (isPlivoResponseError(error)) {
        // Common Plivo codes: 400 invalid params/number, 401 bad credentials,
        // 404 unknown resource, 5xx Plivo-side failure.
        const upstream = error.status;
        const statusCode = upstream >= 400 && upstream < 500 ? upstream : 502;
        return reply.code(statusCode).send({
          error: 'Plivo API Error',
          message: error.message || 'Plivo rejected the request',
          plivoStatus: upstream,
          plivoApiId: error.apiID,
        });
      }

      // Anything else: network failure (the SDK rejects with a stack *string* when there is
      // no HTTP response), unmapped statuses such as 429 (SDK wraps them in a plain Error), bugs.
      return reply.code(500).send({
        error: 'Internal Server Error',
        message: 'Failed to send MMS',
      });
    }
  });
}

module.exports = mmsRoutes;
