// A page instrumented the way the upstream opentelemetry-js browser READMEs show
// (sdk-trace-web, instrumentation-document-load, instrumentation-user-interaction,
// exporter-trace-otlp-http), exporting OTLP/HTTP JSON straight to otel-bridge.
//
// Test-only: tests/browser/conftest.py bundles this file with esbuild (an IIFE) and the test
// page loads it in <head>. The page says where the receiver is, before this script runs:
//   <script>window.OTEL_JS_TEST = {receiver: "http://127.0.0.1:4318", userId: "...", roles: [...]}</script>
// It exposes `window.otelJsTest` = {sessionId, flush()} for the test.

import { ZoneContextManager } from '@opentelemetry/context-zone';
import { OTLPTraceExporter } from '@opentelemetry/exporter-trace-otlp-http';
import { registerInstrumentations } from '@opentelemetry/instrumentation';
import { DocumentLoadInstrumentation } from '@opentelemetry/instrumentation-document-load';
import { UserInteractionInstrumentation } from '@opentelemetry/instrumentation-user-interaction';
import { resourceFromAttributes } from '@opentelemetry/resources';
import { BatchSpanProcessor } from '@opentelemetry/sdk-trace-base';
import { WebTracerProvider } from '@opentelemetry/sdk-trace-web';

const config = window.OTEL_JS_TEST || {};

// Real apps keep one session id per tab (sessionStorage) and know the signed-in user.
function sessionId() {
  const key = 'otel-js-test.session.id';
  let id = window.sessionStorage.getItem(key);
  if (!id) {
    id = window.crypto.randomUUID();
    window.sessionStorage.setItem(key, id);
  }
  return id;
}

const session = config.sessionId || sessionId();

// Upstream's instrumentations know nothing about sessions or users, so apps stamp them on every
// span with a small span processor like this one (the OpenTelemetry browser docs recommend a
// session.id attribute; user.id / user.roles are the semantic-convention user attributes).
class IdentitySpanProcessor {
  onStart(span) {
    span.setAttribute('session.id', session);
    if (config.userId) span.setAttribute('user.id', config.userId);
    if (config.roles) span.setAttribute('user.roles', config.roles);
  }

  onEnd() {}

  forceFlush() {
    return Promise.resolve();
  }

  shutdown() {
    return Promise.resolve();
  }
}

const exporter = new OTLPTraceExporter({ url: `${config.receiver}/v1/traces` });
const provider = new WebTracerProvider({
  resource: resourceFromAttributes({
    'service.name': config.serviceName || 'otel-js-test-web',
    'service.version': '1.2.3',
    'deployment.environment.name': 'test',
  }),
  spanProcessors: [
    new IdentitySpanProcessor(),
    new BatchSpanProcessor(exporter, { scheduledDelayMillis: 500 }),
  ],
});
provider.register({ contextManager: new ZoneContextManager() });

registerInstrumentations({
  instrumentations: [new DocumentLoadInstrumentation(), new UserInteractionInstrumentation()],
});

window.otelJsTest = {
  sessionId: session,
  // Apps flush on `pagehide`; the test calls this instead of waiting for the batch timer.
  flush: () => provider.forceFlush(),
};
