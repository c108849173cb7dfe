/*!
 * otel-bridge.js: the browser tracker of otel-bridge (user analytics, web vitals, JS errors).
 * Plain ES2018, one file, no dependencies, no build step.
 *
 * Usage:
 *   <script src="https://collector.example.com/otel-bridge.js"></script>
 *   <script>
 *     otelBridge.identify("u-42", "Quality Analyst"); // may come before init: the first page view then has the user
 *     otelBridge.init({endpoint: "https://collector.example.com", serviceName: "cqms-web",
 *                      release: "1.4.0", environment: "production"});
 *     otelBridge.track("export", "reports-export", {format: "csv"});
 *   </script>
 *   <button data-otel-action="filter" data-otel-target="status-filter" data-otel-filter-value="open">
 *   <form id="create-audit"> ... <button type="button" data-otel-draft>Save draft</button> </form>
 * Options: endpoint (OTLP/HTTP base URL), serviceName, release, environment, batchSize (10),
 * batchIntervalMs (5000), sampleRate (1, decided per session), sessionIdleMs (30 min), propagateTo
 * ([]: more origins, strings or RegExps, whose requests get the baggage header; same-origin always
 * does), slug (function(location) -> page slug). API: init, identify(userId, role), track(type,
 * target, context), breadcrumb(message, category, data), flush() -> Promise, pageViewId().
 *
 * Sends OTLP/JSON logs to POST {endpoint}/v1/logs, one event per record (eventName):
 *   browser.page_view          hard load and every SPA navigation to a new path
 *   otel_bridge.page_leave     visible time on page, scroll depth, interactions
 *   otel_bridge.user_action    clicks, submits, selects, form abandons, validation errors, track()
 *   browser.web_vital          LCP, CLS, INP, FCP, TTFB, once per page load
 *   browser.navigation_timing  once after load;  browser.resource_timing: up to 50 per page view
 *   exception                  uncaught errors and unhandled rejections, with the last 100 breadcrumbs
 * Every record has session.id, user.id and user.roles (once identified), otel_bridge.page_view.id,
 * url.full and otel_bridge.page.slug (when the slug option gives one). Same-origin fetch/XHR calls
 * carry `baggage: otel_bridge.page_view.id=<id>`, so the server's spans join the page view.
 * The collector must answer CORS for this origin, with Access-Control-Allow-Credentials: true for
 * the sendBeacon fallback (beacons are sent with credentials) and Expose-Headers: Retry-After.
 *
 * Privacy: input values never go into a record (a field counts as filled by an emptiness check;
 * <select> values are sent: they are fixed options, not free text). Text content is used only for
 * annotated (data-otel-*) elements without data-otel-target, id or name. Breadcrumbs of http calls
 * and navigations carry no query strings. The session id is kept in localStorage, the user in
 * sessionStorage; no cookies, and the collector is called without credentials where we choose.
 */
(function () {
  'use strict';
  if (typeof window === 'undefined' || window.otelBridge) return;

  const VERSION = '0.1.0';
  const SESSION_KEY = 'otel_bridge.session', USER_KEY = 'otel_bridge.user', BAGGAGE_KEY = 'otel_bridge.page_view.id';
  const MAX_QUEUE = 1000, MAX_BATCH = 100, MAX_ATTEMPTS = 5, MAX_CRUMBS = 100 /* as Sentry */, MAX_RESOURCES = 50 /* per page view */;
  const KEEPALIVE_BYTES = 60000; // a page may have 64 KiB of keepalive/beacon bodies in flight
  const CLICKABLE = 'button, a, [role=button], input[type=submit], input[type=button]';
  const THRESHOLDS = { LCP: [2500, 4000], FCP: [1800, 3000], CLS: [0.1, 0.25], INP: [200, 500], TTFB: [800, 1800] };
  const TIMINGS = ['fetchStart', 'domainLookupStart', 'domainLookupEnd', 'connectStart', 'connectEnd', 'secureConnectionStart',
    'requestStart', 'responseStart', 'responseEnd'];
  const SIZES = ['transferSize', 'encodedBodySize', 'decodedBodySize'];

  let cfg = null;
  let resource = null; // OTLP resource attributes
  let sess = null; // {id, lastActivity, sampled}
  let view = null; // the current page view
  let landing = null; // the hard load's page view: web vitals and navigation timing belong to it
  let user = load(() => sessionStorage, USER_KEY);
  const crumbs = [], queue = [];
  const origFetch = window.fetch, encoder = new TextEncoder();

  // ---- helpers -----------------------------------------------------------------------------------

  // Listeners and public methods must never throw into the page.
  function safe(fn) {
    return function () { try { return fn.apply(this, arguments); } catch (err) { debug('internal error', err); } };
  }
  function debug(...args) { try { console.debug('[otel-bridge]', ...args); } catch (_) { /* no console */ } }

  // Storage throws in some private modes and sandboxed iframes: state then lives in memory only.
  function load(storage, key) { try { return JSON.parse(storage().getItem(key)); } catch (_) { return null; } }
  function save(storage, key, value) {
    try { value == null ? storage().removeItem(key) : storage().setItem(key, JSON.stringify(value)); } catch (_) { /* memory only */ }
  }

  function uuid() {
    if (crypto.randomUUID) return crypto.randomUUID(); // secure contexts only
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // variant 10
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  // Milliseconds go out as doubles even when whole, so that an attribute never changes type.
  function Double(v) { this.v = v; }
  const dbl = (v) => new Double(v);

  function anyValue(v, depth = 0) {
    if (v instanceof Double) return Number.isFinite(v.v) ? { doubleValue: v.v } : undefined;
    if (typeof v === 'string') return { stringValue: v };
    if (typeof v === 'boolean') return { boolValue: v };
    if (typeof v === 'number') {
      if (!Number.isFinite(v)) return undefined;
      return Number.isSafeInteger(v) ? { intValue: String(v) } : { doubleValue: v }; // int64 is a string in OTLP JSON
    }
    if (!v || typeof v !== 'object') return undefined; // undefined, null, functions, symbols
    if (v instanceof Date) return { stringValue: v.toISOString() };
    if (depth > 4) return { stringValue: '[too deep]' }; // a caller's context may be cyclic
    if (Array.isArray(v)) return { arrayValue: { values: v.map((x) => anyValue(x, depth + 1)).filter(Boolean) } };
    return { kvlistValue: { values: keyValues(v, depth + 1) } };
  }
  function keyValues(obj, depth) {
    const out = [];
    for (const key of Object.keys(obj)) {
      const value = anyValue(obj[key], depth);
      if (value) out.push({ key, value });
    }
    return out;
  }

  function pathOf(href) { // no query string, no fragment
    try { const u = new URL(href, location.href); return u.origin === location.origin ? u.pathname : u.origin + u.pathname; } catch (_) { return ''; }
  }
  const snake = (camel) => camel.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());

  // ---- session, user, records, breadcrumbs -------------------------------------------------------

  // One session per origin, shared by its tabs, rotated after sessionIdleMs without activity.
  // A changed session starts a new page view, so that every session has its page views.
  function checkSession(rotateView) {
    const now = Date.now();
    let s = load(() => localStorage, SESSION_KEY);
    if (!s || typeof s.id !== 'string' || typeof s.lastActivity !== 'number') s = sess;
    if (!s || now - s.lastActivity > cfg.sessionIdleMs) s = { id: uuid(), sampled: Math.random() < cfg.sampleRate };
    s.lastActivity = now;
    sess = s;
    save(() => localStorage, SESSION_KEY, s);
    if (rotateView && view && view.session.id !== s.id) {
      if (!view.leaveSent) pageLeave(view);
      pageView('navigate', view.url, true);
    }
  }

  function identify(userId, role) {
    user = userId == null ? null : { id: String(userId), roles: role == null ? [] : [].concat(role).map(String) };
    save(() => sessionStorage, USER_KEY, user);
  }

  // opts.view: the record belongs to that page view, maybe a former one (its leave, its vitals).
  // opts.error: ERROR severity, and sent even when the session is not sampled.
  function emit(eventName, attributes, opts = {}) {
    if (!cfg) return;
    if (!opts.view) checkSession(true);
    const v = opts.view || view;
    if (!v.session.sampled && !opts.error) return;
    const base = { 'session.id': v.session.id, 'otel_bridge.page_view.id': v.id, 'url.full': opts.view ? v.url : location.href, 'otel_bridge.page.slug': v.slug };
    if (user) Object.assign(base, { 'user.id': user.id, 'user.roles': user.roles.length ? user.roles : undefined });
    const ns = Date.now() + '000000';
    enqueue({
      timeUnixNano: ns, observedTimeUnixNano: ns, severityNumber: opts.error ? 17 : 9, severityText: opts.error ? 'ERROR' : 'INFO',
      eventName, attributes: keyValues(Object.assign(base, attributes)),
    });
  }

  function breadcrumb(message, category, data, level) {
    const crumb = { timestamp: Date.now() / 1000, category: category || 'default', message: String(message), level: level || 'info' };
    if (data && typeof data === 'object' && Object.keys(data).length) crumb.data = Object.assign({}, data);
    crumbs.push(crumb);
    if (crumbs.length > MAX_CRUMBS) crumbs.shift();
  }

  // ---- page views and leaves ---------------------------------------------------------------------

  function pageView(type, referrer, sameDocument) {
    checkSession(false);
    let slug;
    try { slug = cfg.slug ? cfg.slug(location) : undefined; } catch (err) { debug('slug()', err); }
    view = {
      id: uuid(), session: sess, url: location.href, slug: slug ? String(slug) : undefined,
      visibleMs: 0, visibleSince: document.visibilityState === 'hidden' ? null : Date.now(),
      scroll: 0, interactions: 0, leaveSent: false, resources: 0, forms: new Map(),
    };
    emit('browser.page_view', {
      'otel_bridge.page.referrer': referrer || undefined, 'browser.navigation.type': type,
      'browser.navigation.same_document': sameDocument, 'otel_bridge.page.title': document.title,
    });
  }

  // ((scrollY + innerHeight) / scrollHeight) * 100; a page that does not scroll was seen whole.
  function scrollDepth() {
    const height = Math.max(document.documentElement.scrollHeight, document.body ? document.body.scrollHeight : 0);
    return height <= innerHeight + 1 ? 100 : Math.min(100, Math.round(((scrollY + innerHeight) / height) * 100));
  }

  function pageLeave(v) {
    if (v === view) v.scroll = Math.max(v.scroll, scrollDepth());
    abandonForms(v);
    emit('otel_bridge.page_leave', {
      'otel_bridge.page.time_on_page_ms': Math.round(v.visibleMs + (v.visibleSince == null ? 0 : Date.now() - v.visibleSince)),
      'otel_bridge.page.scroll_depth': v.scroll,
      'otel_bridge.page.interactions': v.interactions,
    }, { view: v });
    v.leaveSent = true;
  }

  // After history.pushState/replaceState and on popstate. Only a new path is a new page: query and
  // fragment changes (filters, tabs) stay in the page view.
  function onNavigate(type) {
    const from = view.url;
    if (pathOf(from) === location.pathname) { view.url = location.href; return; }
    finalVitals(); // the landing page's LCP/CLS/INP end at its first soft navigation
    pageLeave(view);
    breadcrumb(`${pathOf(from)} -> ${location.pathname}`, 'navigation');
    pageView(type, from, true);
  }

  // Hidden is the last moment mobile browsers reliably give us: send the leave and flush. If the
  // page comes back (tab switch, bfcache), it keeps measuring and sends a newer leave next time.
  function onHidden() {
    if (view.visibleSince != null) { view.visibleMs += Date.now() - view.visibleSince; view.visibleSince = null; }
    finalVitals();
    if (!view.leaveSent) { view.url = location.href; pageLeave(view); }
    flushOnHide();
  }
  function onVisible() {
    checkSession(true); // after a long absence: a new session and page view, the old one's leave is sent
    view.leaveSent = false;
    if (view.visibleSince == null) view.visibleSince = Date.now();
  }

  // ---- actions -----------------------------------------------------------------------------------

  function trackAction(type, target, context, category, v) {
    const attrs = { 'otel_bridge.action.type': String(type), 'otel_bridge.action.target': target == null ? '' : String(target) };
    if (context && typeof context === 'object' && Object.keys(context).length) attrs['otel_bridge.action.context'] = context;
    emit('otel_bridge.user_action', attrs, v ? { view: v } : undefined);
    breadcrumb(`${type} ${attrs['otel_bridge.action.target']}`.trim(), category, context);
  }

  function ancestor(el, test) { // the element or one of its 5 closest ancestors
    for (let i = 0; el && i <= 5; i++, el = el.parentElement) if (test(el)) return el;
    return null;
  }
  function selector(el) { // tag#id.class:nth-of-type(n)
    let s = el.tagName.toLowerCase();
    if (el.id) return `${s}#${el.id}`;
    const classes = typeof el.className === 'string' ? el.className.trim().split(/\s+/).filter(Boolean).slice(0, 2) : [];
    if (classes.length) s += '.' + classes.join('.');
    const same = el.parentElement ? Array.from(el.parentElement.children).filter((c) => c.tagName === el.tagName) : [];
    return same.length > 1 ? `${s}:nth-of-type(${same.indexOf(el) + 1})` : s;
  }
  const fieldKey = (el) => el.getAttribute('name') || el.id || '';
  const describe = (el) => el.id || el.getAttribute('name') || selector(el);

  function onClick(e) {
    view.interactions++;
    const el = e.target instanceof Element ? e.target : null;
    if (!el) return;
    const form = el.closest('form');
    if (form && ancestor(el, (a) => a.hasAttribute('data-otel-draft'))) formState(form).drafts++;
    const annotated = ancestor(el, (a) => a.hasAttribute('data-otel-action') || a.hasAttribute('data-otel-target'));
    if (annotated) {
      const context = {}; // data-otel-filter-value="open" -> {filter_value: "open"}
      for (const { name, value } of Array.from(annotated.attributes)) {
        const key = name.slice(10);
        if (name.startsWith('data-otel-') && !['action', 'target', 'draft'].includes(key)) context[key.replace(/-/g, '_')] = value;
      }
      const text = annotated.type === 'password' ? '' : (annotated.textContent || '').trim().slice(0, 40);
      const target = annotated.getAttribute('data-otel-target') || annotated.id || annotated.getAttribute('name') || text || selector(annotated);
      trackAction(annotated.getAttribute('data-otel-action') || 'click', target, context, 'ui.click');
      return;
    }
    const clickable = ancestor(el, (a) => a.matches(CLICKABLE));
    if (clickable) trackAction('click', describe(clickable), undefined, 'ui.click');
  }

  function onChange(e) {
    const el = e.target;
    if (el.tagName === 'SELECT') {
      view.interactions++;
      const value = el.multiple ? Array.from(el.selectedOptions, (o) => o.value) : el.value;
      trackAction('dropdown_select', describe(el), { name: fieldKey(el), value }, 'ui.change');
    } else if (el.type === 'checkbox' || el.type === 'radio') { // its click counted the interaction
      trackAction('change', describe(el), { checked: el.checked }, 'ui.change');
    } else if (el.tagName === 'INPUT' || el.tagName === 'TEXTAREA') {
      view.interactions++; // one per edited field, not per keystroke; the value stays in the page
    }
  }

  function track(type, target, context) {
    if (!cfg || !type) return;
    view.interactions++;
    if (type === 'draft_save') {
      const form = document.getElementById(target) || document.forms[target];
      if (form instanceof HTMLFormElement) formState(form).drafts++;
    }
    trackAction(type, target, context, 'ui.action');
  }

  // ---- forms: time to complete, fields filled, validation errors, draft saves, abandons -----------

  const formId = (form) => form.getAttribute('id') || form.getAttribute('name') || selector(form); // form.id may be an <input name="id">
  const formOf = (el) => (el instanceof Element ? el.form || el.closest('form') : null);
  function formState(form) { // started by the first focus or input inside the form
    let st = view.forms.get(form);
    if (!st) view.forms.set(form, (st = { start: Date.now(), errors: 0, drafts: 0, invalid: new Set(), abandoned: false }));
    return st;
  }

  // Fields counted by name/id; values are read only to know whether they are empty.
  function formMetrics(form, st, timeKey) {
    const filled = new Map();
    for (const el of Array.from(form.elements)) {
      const key = fieldKey(el);
      if (!key || el.disabled || !/^(INPUT|SELECT|TEXTAREA)$/.test(el.tagName) || /^(submit|button|reset|hidden|image)$/.test(el.type)) continue;
      filled.set(key, filled.get(key) || (el.type === 'checkbox' || el.type === 'radio' ? el.checked : el.value !== ''));
    }
    return {
      [timeKey]: Date.now() - st.start, fields_filled: Array.from(filled.values()).filter(Boolean).length,
      fields_total: filled.size, validation_errors: st.errors, draft_saves: st.drafts,
    };
  }

  function onFormActivity(e) {
    const form = formOf(e.target);
    if (form) formState(form);
  }

  function onSubmit(e) {
    const form = e.target;
    if (!(form instanceof HTMLFormElement)) return;
    view.interactions++;
    if (e.submitter && e.submitter.hasAttribute('data-otel-draft')) return; // a draft save, counted by its click
    trackAction('submit', formId(form), formMetrics(form, formState(form), 'time_to_complete_ms'), 'ui.submit');
    view.forms.delete(form);
  }

  function onInvalid(e) {
    const form = formOf(e.target);
    if (!form) return;
    const st = formState(form);
    st.errors++;
    const key = fieldKey(e.target) || selector(e.target);
    if (st.invalid.has(key)) return;
    st.invalid.add(key);
    trackAction('validation_error', key, { form: formId(form) }, 'ui.action');
  }

  // A page view being left with started, unsubmitted forms: one abandon per form start.
  function abandonForms(v) {
    for (const [form, st] of v.forms) {
      if (st.abandoned) continue;
      st.abandoned = true;
      trackAction('form_abandon', formId(form), formMetrics(form, st, 'time_spent_ms'), 'ui.action', v);
    }
  }

  // ---- performance: web vitals, navigation and resource timing -----------------------------------

  function observe(type, callback, options) {
    const PO = window.PerformanceObserver;
    if (!PO || !(PO.supportedEntryTypes || []).includes(type)) return null;
    try {
      const po = new PO(safe((list) => callback(list.getEntries())));
      po.observe(Object.assign({ type, buffered: true }, options));
      po.drain = () => callback(po.takeRecords()); // entries not delivered yet, before a final report
      return po;
    } catch (err) { debug('observe', type, err); return null; }
  }
  const navEntry = () => (performance.getEntriesByType ? performance.getEntriesByType('navigation')[0] : undefined);

  const vital = { sent: {}, lcp: undefined, lcpFinal: false, cls: 0, win: 0, winFirst: 0, winLast: 0, inp: new Map(), po: {} };
  let firstHidden = document.visibilityState === 'hidden' ? 0 : Infinity;

  function reportVital(name, value) {
    if (vital.sent[name] || value == null || !Number.isFinite(value)) return;
    vital.sent[name] = true;
    const [good, poor] = THRESHOLDS[name];
    emit('browser.web_vital', {
      'browser.web_vital.name': name, 'browser.web_vital.value': dbl(value),
      'browser.web_vital.rating': value <= good ? 'good' : value <= poor ? 'needs-improvement' : 'poor',
      'browser.web_vital.id': `v1-${Date.now()}-${Math.floor(Math.random() * 8999999999999) + 1e12}`,
      'browser.web_vital.delta': dbl(value), // each is reported once: the delta is the whole value
    }, { view: landing });
  }

  function vitals() {
    const nav = navEntry();
    const since = (t) => Math.max(t - ((nav && nav.activationStart) || 0), 0); // prerendered pages start at activation
    const ttfb = () => { const n = navEntry(); if (n && n.responseStart > 0) reportVital('TTFB', since(n.responseStart)); };
    ttfb();
    addEventListener('load', safe(ttfb));
    // Paints after the page was first hidden are not what the user waited for.
    observe('paint', (entries) => {
      for (const e of entries) if (e.name === 'first-contentful-paint' && e.startTime < firstHidden) reportVital('FCP', since(e.startTime));
    });
    vital.po.lcp = observe('largest-contentful-paint', (entries) => {
      for (const e of entries) if (!vital.lcpFinal && e.startTime < firstHidden) vital.lcp = since(e.startTime);
    });
    for (const type of ['keydown', 'click']) addEventListener(type, safe(finalLcp), { once: true, capture: true }); // as the browser does
    // CLS: the largest session window (shifts < 1 s apart, at most 5 s), without shifts right after input.
    vital.po.cls = observe('layout-shift', (entries) => {
      for (const e of entries) {
        if (e.hadRecentInput) continue;
        if (vital.win && e.startTime - vital.winLast < 1000 && e.startTime - vital.winFirst < 5000) vital.win += e.value;
        else { vital.win = e.value; vital.winFirst = e.startTime; }
        vital.winLast = e.startTime;
        vital.cls = Math.max(vital.cls, vital.win);
      }
    });
    // INP, approximated: the longest entry per interaction; of those the worst, or one fewer per 50
    // interactions (p98) as web-vitals does.
    const onEvents = (entries) => {
      for (const e of entries) if (e.interactionId) vital.inp.set(e.interactionId, Math.max(vital.inp.get(e.interactionId) || 0, e.duration));
    };
    vital.po.inp = observe('event', onEvents, { durationThreshold: 40 });
    vital.po.fid = observe('first-input', onEvents);
  }

  function finalLcp() {
    if (vital.po.lcp && !vital.lcpFinal) vital.po.lcp.drain();
    vital.lcpFinal = true;
    reportVital('LCP', vital.lcp);
  }

  // On the first hide or soft navigation, whichever comes first.
  function finalVitals() {
    if (vital.finalized) return;
    vital.finalized = true;
    finalLcp();
    for (const po of Object.values(vital.po)) if (po) po.drain();
    if (vital.po.cls) reportVital('CLS', vital.cls);
    const worst = Array.from(vital.inp.values()).sort((a, b) => b - a);
    if (worst.length) reportVital('INP', worst[Math.min(worst.length - 1, Math.floor(worst.length / 50))]);
  }

  // JavaScript execution time: the sum of 'longtask' durations (main-thread tasks over 50 ms, so
  // shorter tasks are left out) where the browser has them; elsewhere the summed durations of
  // script resources, which is download time, not execution. The _source attribute says which.
  let longTasks = null, longTaskMs = 0, scriptMs = 0;

  function navigationTiming() {
    const nav = navEntry();
    if (!nav) return;
    const attrs = timingAttributes('browser.navigation_timing.', nav, [...TIMINGS, 'domInteractive', 'domContentLoadedEventEnd', 'loadEventEnd']);
    if (longTasks) longTasks.drain();
    attrs['otel_bridge.page.javascript_execution_time_ms'] = dbl(longTasks ? longTaskMs : scriptMs);
    attrs['otel_bridge.page.javascript_execution_time_source'] = longTasks ? 'longtask' : 'script_resources';
    emit('browser.navigation_timing', attrs, { view: landing });
  }

  // Times in ms from the entry's start (0: did not happen or not exposed cross-origin), sizes in bytes.
  function timingAttributes(prefix, entry, timings) {
    const attrs = {};
    for (const f of timings) attrs[prefix + snake(f)] = dbl(entry[f] > 0 ? entry[f] - entry.startTime : 0);
    for (const f of SIZES) attrs[prefix + snake(f)] = Math.round(entry[f] || 0);
    return attrs;
  }

  function onResources(entries) {
    for (const e of entries) {
      if (e.name.startsWith(cfg.url)) continue; // our own POSTs
      if (e.initiatorType === 'script') scriptMs += e.duration;
      if (view.resources >= MAX_RESOURCES) continue;
      view.resources++;
      emit('browser.resource_timing', Object.assign(timingAttributes('browser.resource_timing.', e, TIMINGS), {
        'url.full': e.name.slice(0, 500), 'browser.document.url.full': location.href,
        'browser.resource_timing.initiator_type': e.initiatorType, 'browser.resource_timing.duration': dbl(e.duration),
      }));
    }
  }

  // ---- errors ------------------------------------------------------------------------------------

  const recentErrors = new Map(); // "type|message|stack" -> time, to drop repeats within 5 s

  function reportError(kind, type, message, stack, where) {
    const key = `${type}|${message}|${stack}`;
    const now = Date.now();
    for (const [k, t] of recentErrors) if (now - t > 5000) recentErrors.delete(k);
    if (recentErrors.has(key)) return;
    recentErrors.set(key, now);
    emit('exception', Object.assign({
      'exception.type': type, 'exception.message': String(message).slice(0, 2000),
      'exception.stacktrace': stack ? String(stack).slice(0, 16000) : undefined, 'otel_bridge.error.kind': kind,
      'otel_bridge.breadcrumbs': crumbs.map((c) => Object.assign({}, c, { timestamp: dbl(c.timestamp) })),
    }, where), { error: true });
    breadcrumb(`${type}: ${message}`.slice(0, 200), 'error', undefined, 'error');
    flush();
  }

  function onError(e) {
    if (e.target && e.target !== window) return; // an <img>/<script> that failed to load, not a script error
    const err = e.error;
    reportError('error', (err && err.name) || 'Error', (err && err.message) || e.message || '', err && err.stack,
      { 'code.filepath': e.filename || undefined, 'code.lineno': e.lineno || undefined, 'code.column': e.colno || undefined });
  }

  function onRejection(e) {
    const r = e.reason;
    if (r instanceof Error || (r && typeof r.message === 'string' && typeof r.stack === 'string')) {
      reportError('unhandledrejection', r.name || 'Error', r.message, r.stack);
      return;
    }
    let message;
    try { message = typeof r === 'string' ? r : JSON.stringify(r); } catch (_) { message = String(r); }
    reportError('unhandledrejection', 'UnhandledRejection', String(message).slice(0, 1000));
  }

  // ---- baggage and http breadcrumbs --------------------------------------------------------------

  // Same origin and listed origins only: a new header on any other call would force a CORS preflight.
  function propagates(url) {
    return !url.href.startsWith(cfg.url) &&
      (url.origin === location.origin || cfg.propagateTo.some((o) => (o instanceof RegExp ? o.test(url.href) : o === url.origin)));
  }
  function httpCrumb(method, url, status) {
    const level = !status || status >= 500 ? 'error' : status >= 400 ? 'warning' : 'info';
    breadcrumb(`${method} ${pathOf(url.href)}`, 'http', status ? { status_code: status } : { error: 'network' }, level);
  }

  function wrapFetch() {
    if (!origFetch) return;
    window.fetch = function (input, init) {
      let url, method;
      try {
        const isRequest = typeof Request !== 'undefined' && input instanceof Request;
        url = new URL(isRequest ? input.url : String(input), location.href);
        method = String((init && init.method) || (isRequest && input.method) || 'GET').toUpperCase();
        if (propagates(url)) {
          const headers = new Headers((init && init.headers) || (isRequest ? input.headers : undefined));
          const current = headers.get('baggage');
          if (!current || !current.includes(BAGGAGE_KEY + '=')) {
            headers.set('baggage', (current ? current + ',' : '') + `${BAGGAGE_KEY}=${view.id}`);
            init = Object.assign({}, init, { headers });
          }
        }
      } catch (err) { url = undefined; debug('fetch', err); }
      const result = origFetch.call(window, input, init);
      if (url) result.then((res) => safe(httpCrumb)(method, url, res.status), () => safe(httpCrumb)(method, url, 0));
      return result;
    };
  }

  function wrapXhr() {
    if (!window.XMLHttpRequest) return;
    const proto = XMLHttpRequest.prototype;
    const { open, send } = proto;
    const calls = new WeakMap();
    proto.open = function (method, url) {
      try { calls.set(this, { method: String(method).toUpperCase(), url: new URL(String(url), location.href) }); } catch (_) { calls.delete(this); }
      return open.apply(this, arguments);
    };
    proto.send = function () {
      const call = calls.get(this);
      try {
        // A baggage header the page set already is merged by XHR itself: "theirs, ours".
        if (call && propagates(call.url)) this.setRequestHeader('baggage', `${BAGGAGE_KEY}=${view.id}`);
        if (call) this.addEventListener('loadend', safe(() => httpCrumb(call.method, call.url, this.status)));
      } catch (err) { debug('xhr', err); }
      return send.apply(this, arguments);
    };
  }

  // ---- transport ---------------------------------------------------------------------------------

  let chain = Promise.resolve(), retryTimer = null, attempt = 0, dropped = 0;

  function enqueue(...records) {
    queue.push(...records);
    capQueue();
    if (queue.length >= cfg.batchSize) flush();
  }
  function capQueue() { // drop the oldest
    if (queue.length <= MAX_QUEUE) return;
    dropped += queue.splice(0, queue.length - MAX_QUEUE).length;
    debug(`queue full: ${dropped} records dropped so far`);
  }

  function body(records) {
    const scope = { name: 'otel-bridge.js', version: VERSION };
    return JSON.stringify({ resourceLogs: [{ resource: { attributes: resource }, scopeLogs: [{ scope, logRecords: records }] }] });
  }

  // Resolves once the queue is sent, given up on, or waiting for a retry; never rejects.
  function flush() {
    if (!cfg || retryTimer) return chain;
    chain = chain.then(drain).catch((err) => debug('flush', err));
    return chain;
  }

  async function drain() {
    while (queue.length && !retryTimer) {
      const batch = queue.splice(0, MAX_BATCH);
      const retryAfter = await post(batch);
      if (retryAfter == null) { attempt = 0; continue; }
      if (++attempt >= MAX_ATTEMPTS) { debug(`dropped ${batch.length} records after ${attempt} attempts`); attempt = 0; continue; }
      queue.unshift(...batch);
      capQueue();
      retryTimer = setTimeout(() => { retryTimer = null; flush(); }, retryAfter || 1000 * 2 ** (attempt - 1)); // 1 s, 2 s, 4 s, 8 s
    }
  }

  // null: done (sent, or refused for good); a number: retry in that many ms (0: the backoff's choice).
  async function post(records) {
    const data = body(records);
    const abort = new AbortController();
    const timeout = setTimeout(() => abort.abort(), 15000);
    try {
      const res = await origFetch.call(window, cfg.url, {
        method: 'POST', headers: { 'content-type': 'application/json' }, body: data, credentials: 'omit',
        keepalive: data.length < KEEPALIVE_BYTES / 3, // survives an unload, and leaves most of the budget to flushOnHide
        signal: abort.signal,
      });
      if (res.ok) return null;
      if ([429, 502, 503, 504].includes(res.status)) return retryAfterMs(res.headers.get('retry-after'));
      debug(`collector answered ${res.status}: dropped ${records.length} records`);
      return null;
    } catch (_) {
      return 0; // network error or timeout
    } finally {
      clearTimeout(timeout);
    }
  }

  function retryAfterMs(header) { // seconds or an HTTP date
    const seconds = Number(header);
    const ms = !header ? 0 : Number.isFinite(seconds) ? seconds * 1000 : Date.parse(header) - Date.now();
    return ms > 0 ? Math.min(ms, 300000) : 0;
  }

  // The page may be gone in a moment: hand the queue to the browser now. Keepalive fetch and
  // sendBeacon share a 64 KiB in-flight budget, so the newest records (the leave, errors) go first,
  // in bodies that fit; the rest goes by plain fetch, which gets through when the page was only hidden.
  function flushOnHide() {
    const records = queue.splice(0).reverse();
    const keepalive = typeof Request !== 'undefined' && 'keepalive' in Request.prototype;
    const overhead = encoder.encode(body([])).length;
    let budget = KEEPALIVE_BYTES, chunk = [], size = overhead;
    const send = () => {
      if (!chunk.length) return;
      const sent = chunk.reverse();
      const data = body(sent);
      const beacon = () => !!navigator.sendBeacon && navigator.sendBeacon(cfg.url, new Blob([data], { type: 'application/json' }));
      if (keepalive && size <= budget) {
        budget -= size;
        origFetch.call(window, cfg.url, { method: 'POST', keepalive: true, credentials: 'omit', headers: { 'content-type': 'application/json' }, body: data })
          .then((res) => res.ok || debug(`collector answered ${res.status}`), () => beacon() || debug(`lost ${sent.length} records`));
      } else if (!beacon()) {
        queue.unshift(...sent);
      }
      [chunk, size] = [[], overhead];
    };
    for (const record of records) {
      const n = encoder.encode(JSON.stringify(record)).length + 1;
      if (size + n > KEEPALIVE_BYTES) send();
      chunk.push(record);
      size += n;
    }
    send();
    if (queue.length) flush();
  }

  // ---- init --------------------------------------------------------------------------------------

  function init(options) {
    if (cfg) return;
    if (!options || !options.endpoint) { debug('init: endpoint is required'); return; }
    cfg = Object.assign({ batchSize: 10, batchIntervalMs: 5000, sampleRate: 1, sessionIdleMs: 30 * 60 * 1000, propagateTo: [] }, options);
    cfg.url = String(cfg.endpoint).replace(/\/+$/, '') + '/v1/logs';
    cfg.propagateTo = [].concat(cfg.propagateTo).map((o) => { try { return o instanceof RegExp ? o : new URL(o).origin; } catch (_) { return String(o); } });
    const ua = navigator.userAgentData; // Chromium only
    resource = keyValues({
      'service.name': cfg.serviceName || 'unknown_service:browser', 'service.version': cfg.release,
      'deployment.environment.name': cfg.environment, 'telemetry.sdk.language': 'webjs',
      'telemetry.sdk.name': 'otel-bridge.js', 'telemetry.sdk.version': VERSION, 'user_agent.original': navigator.userAgent,
      'browser.platform': (ua && ua.platform) || navigator.platform || undefined, 'browser.mobile': ua ? ua.mobile : undefined,
      'browser.language': navigator.language,
    });

    pageView('navigate', document.referrer, false);
    landing = view;

    const on = (target, type, fn, opts) => target.addEventListener(type, safe(fn), opts);
    on(document, 'click', onClick, true);
    on(document, 'change', onChange, true);
    on(document, 'submit', onSubmit, true);
    on(document, 'invalid', onInvalid, true); // does not bubble: capture it
    on(document, 'focusin', onFormActivity, true);
    on(document, 'input', onFormActivity, true);
    on(window, 'scroll', () => { if (view.visibleSince != null) view.scroll = Math.max(view.scroll, scrollDepth()); }, { passive: true });
    on(document, 'visibilitychange', () => {
      if (document.visibilityState !== 'hidden') return onVisible();
      firstHidden = Math.min(firstHidden, performance.now());
      onHidden();
    });
    on(window, 'pagehide', onHidden);
    on(window, 'popstate', () => onNavigate('pop'));
    for (const name of ['pushState', 'replaceState']) {
      const original = history[name];
      history[name] = function () {
        const result = original.apply(this, arguments);
        safe(onNavigate)(name === 'pushState' ? 'push' : 'replace');
        return result;
      };
    }
    on(window, 'error', onError);
    on(window, 'unhandledrejection', onRejection);
    wrapFetch();
    wrapXhr();

    vitals();
    longTasks = observe('longtask', (entries) => { for (const e of entries) longTaskMs += e.duration; });
    observe('resource', onResources);
    const afterLoad = () => setTimeout(safe(navigationTiming), 0); // loadEventEnd is set once the load handlers ran
    if (document.readyState === 'complete') afterLoad(); else addEventListener('load', afterLoad, { once: true });
    setInterval(safe(flush), cfg.batchIntervalMs);
  }

  window.otelBridge = Object.freeze({
    version: VERSION,
    init: safe(init),
    identify: safe(identify),
    track: safe(track),
    breadcrumb: safe((message, category, data) => breadcrumb(message, category || 'manual', data)),
    flush: () => { try { return flush(); } catch (err) { debug('flush', err); return Promise.resolve(); } },
    pageViewId: () => (view ? view.id : null),
  });
})();
