// Orion ops console: one page, no build step, no external resources (see web/console.py).
// It talks only to the public HTTP API and /v1/ws (API.md and the ops console contract of issue 15).
//
// Hooks for end-to-end tests (stable ids and attributes):
//   #signin (form), #credential (input), #signin-error, #signout, #whoami
//   #ws-state           text and data-state: "live" | "connecting" | "offline"
//   #status-line        the last action's outcome (aria-live)
//   #stat-accepted #stat-confirmed #stat-rejected #stat-payment-failed #stat-cancelled
//   #stat-p50 #stat-p95 #stat-refused; #chart-rate svg, #chart-latency svg (data-points="N")
//   #orders-body tr[data-order-id="…"] > td[data-status="CONFIRMED"]; buttons [data-action="cancel"|"fulfil"]
//   #order-search, #order-search-id; #order-detail (data-order-id), #order-events tr[data-seq],
//     #order-notifications tr[data-notification-id]
//   #stock-body tr[data-sku="…"][data-low-stock="true|false"][data-out-of-stock="true|false"]
//     > td[data-field="available"]; button[data-action="adjust"]
//   #adjust-form: #adjust-sku, #adjust-delta, #adjust-reason, #adjust-threshold; #adjust-result (data-kind)
//   #workers-body .worker[data-worker="w1"] with [data-admission="open|closed"];
//     tr[data-topic][data-partition][data-role] > td[data-field="lag"]
//   #dead-letters-body tr[data-dead-letter-id="3-17"][data-status] with input[type=checkbox],
//     button[data-action="replay"], td[data-outcome]; #dead-letters-replay-selected,
//     #dead-letters-refresh, #dead-letters-status, #dead-letters-select-all, #dead-letters-result
//   #failed-emails-body tr[data-notification-id="…"][data-status] with button[data-action="retry"];
//     #failed-emails-result, #failed-emails-refresh

const STORAGE_KEY = "orion.console.credential";
const ORDER_LIMIT = 50;
const STOCK_LIMIT = 200;
const PAGE_LIMIT = 50;
const HISTORY_SECONDS = 60;
const CANCELLABLE = new Set(["PENDING", "RESERVED", "CONFIRMED"]);
const OUTCOMES = ["CONFIRMED", "REJECTED", "PAYMENT_FAILED", "CANCELLED"];
const STATUS_TONE = {
  PENDING: "idle", RESERVED: "info", CONFIRMED: "ok", FULFILLED: "ok",
  REJECTED: "bad", PAYMENT_FAILED: "bad", CANCELLED: "warn",
};
const LAG_HIGH = 1000;
const SVG_NS = "http://www.w3.org/2000/svg";

// --- Small helpers ------------------------------------------------------------------------

const $ = (id) => document.getElementById(id);

/** An element with attributes (strings set as attributes, `on*` functions as listeners,
 * `dataset` as data-*) and children (strings become text: nothing is parsed as HTML). */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else if (key === "className") node.className = value;
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  append(node, children);
  return node;
}

function append(node, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

function svg(tag, attrs = {}) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  return node;
}

function toDate(value) {
  if (value === null || value === undefined || value === "") return null;
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? null : date;
}

function timeText(value) {
  const date = toDate(value);
  return date ? date.toLocaleTimeString([], { hour12: false }) : "–";
}

function dateTimeText(value) {
  const date = toDate(value);
  return date ? `${date.toLocaleDateString()} ${date.toLocaleTimeString([], { hour12: false })}` : "–";
}

function timeElement(value, withDate = false) {
  const date = toDate(value);
  if (!date) return "–";
  return h("time", { datetime: date.toISOString(), title: date.toISOString() },
    withDate ? dateTimeText(value) : timeText(value));
}

function money(minor, currency) {
  if (typeof minor !== "number") return "–";
  try {
    return new Intl.NumberFormat(undefined, { style: "currency", currency: currency || "EUR" }).format(minor / 100);
  } catch {
    return `${(minor / 100).toFixed(2)} ${currency || ""}`.trim();
  }
}

function num(value, digits = 0) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return Number(value).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

function ms(value) {
  if (value === null || value === undefined) return "–";
  return value >= 1000 ? `${num(value / 1000, 2)} s` : `${num(value, value < 10 ? 1 : 0)} ms`;
}

function statusLabel(status) {
  return String(status || "").replaceAll("_", " ").toLowerCase();
}

function badge(text, tone) {
  return h("span", { className: "badge", dataset: { tone } }, text);
}

function statusBadge(status) {
  return badge(statusLabel(status), STATUS_TONE[status] || "idle");
}

function setResult(node, text, kind = "info") {
  node.textContent = text;
  node.dataset.kind = kind;
}

function showError(node, text) {
  node.textContent = text || "";
  node.hidden = !text;
}

function say(text, kind = "info") {
  setResult($("status-line"), `${timeText(Date.now() / 1000)} · ${text}`, kind);
}

function flash(row) {
  row.classList.remove("flash");
  void row.offsetWidth; // restart the animation
  row.classList.add("flash");
}

// --- The credential and the HTTP API ------------------------------------------------------

const JWT = /^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$/;

function isJwt(credential) {
  return JWT.test(credential);
}

/** The claims of a JWT, read (not verified: the server checks every call), or null. */
function claimsOf(credential) {
  try {
    const part = credential.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const claims = JSON.parse(atob(part + "=".repeat((4 - (part.length % 4)) % 4)));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

/** Why a JWT cannot open the console, known before asking the server (null: ask it). A token
 * without the admin role would only earn a 403, so it is refused here with the reason. */
function tokenRefusal(credential) {
  if (!isJwt(credential)) return null;
  const claims = claimsOf(credential);
  if (!claims) return null;
  if (typeof claims.exp === "number" && claims.exp * 1000 <= Date.now()) {
    return "This token has expired; paste a fresh admin token.";
  }
  const roles = Array.isArray(claims.roles) ? claims.roles : [];
  if (!roles.includes("admin")) {
    const who = typeof claims.sub === "string" ? ` of ${claims.sub}` : "";
    const as = roles.length ? roles.join(", ") : "no role";
    return `This token${who} has ${as}: the console needs an admin token, or an API key with the ops scope.`;
  }
  return null;
}

function authHeaders(credential) {
  return isJwt(credential) ? { Authorization: `Bearer ${credential}` } : { "X-API-Key": credential };
}

/** An API answer that is not 2xx, carrying the problem's `detail`. */
class ApiProblem extends Error {
  constructor(status, detail, problem) {
    super(detail);
    this.status = status;
    this.detail = detail;
    this.problem = problem;
  }
}

const state = {
  credential: null,
  socket: null,
  subscribed: false,
  everSubscribed: false,
  retries: 0,
  reconnectTimer: null,
  orders: new Map(), // order_id -> order (with `version` once a live message came)
  stock: new Map(), // sku -> level
  deadLetters: new Map(), // id -> dead letter
  deadCursor: null,
  emails: new Map(), // id -> notification
  emailCursor: null,
  stats: [], // the last HISTORY_SECONDS console.stats messages
  refused: 0,
  detailOrderId: null,
  generation: 0, // bumped at every sign-in and sign-out: late answers of an old session are dropped
};

async function api(method, path, body) {
  const generation = state.generation;
  const headers = { Accept: "application/json", ...authHeaders(state.credential) };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiProblem(0, "The server could not be reached; check the connection and try again.", null);
  }
  let data = null;
  const text = await response.text().catch(() => "");
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = null;
    }
  }
  if (generation !== state.generation) throw new ApiProblem(-1, "signed out", null);
  if (!response.ok) {
    const detail = (data && (data.detail || data.title)) || `${response.status} ${response.statusText}`;
    const problem = new ApiProblem(response.status, detail, data);
    if (response.status === 401 && state.everSubscribed) signOut(`Signed out: ${detail}`);
    throw problem;
  }
  return { status: response.status, data };
}

function describe(error) {
  if (error instanceof ApiProblem) {
    const fields = error.problem && Array.isArray(error.problem.errors) && error.problem.errors.length
      ? ` (${error.problem.errors.map((e) => `${e.field}: ${e.message}`).join("; ")})` : "";
    return `${error.detail}${fields}`;
  }
  return String(error && error.message ? error.message : error);
}

function stale(error) {
  return error instanceof ApiProblem && error.status === -1;
}

// --- Sign-in and sign-out -----------------------------------------------------------------

function showSignIn(message) {
  $("console").hidden = true;
  $("signin-panel").hidden = false;
  $("signout").hidden = true;
  $("whoami").hidden = true;
  showError($("signin-error"), message || "");
  const input = $("credential");
  input.value = "";
  input.setAttribute("aria-invalid", message ? "true" : "false");
  input.focus();
}

function resetData() {
  state.orders.clear();
  state.stock.clear();
  state.deadLetters.clear();
  state.emails.clear();
  state.stats = [];
  state.refused = 0;
  state.detailOrderId = null;
  state.deadCursor = null;
  state.emailCursor = null;
  for (const id of ["orders-body", "stock-body", "dead-letters-body", "failed-emails-body"]) $(id).replaceChildren();
  $("workers-body").replaceChildren(h("p", { className: "muted" }, "Waiting for the workers' heartbeats…"));
  $("order-detail").hidden = true;
  $("status-line").textContent = "";
  for (const id of ["adjust-result", "dead-letters-result", "failed-emails-result"]) $(id).textContent = "";
  drawCharts();
  renderStatsNow(null);
}

function signOut(message) {
  state.generation += 1;
  state.credential = null;
  state.subscribed = false;
  state.everSubscribed = false;
  sessionStorage.removeItem(STORAGE_KEY);
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  const socket = state.socket;
  state.socket = null;
  if (socket) {
    socket.onclose = null;
    socket.onmessage = null;
    socket.onerror = null;
    if (socket.readyState <= WebSocket.OPEN) socket.close(1000, "signed out");
  }
  setConnection("offline", "");
  resetData();
  showSignIn(message);
}

async function signIn(credential) {
  const refusal = tokenRefusal(credential);
  if (refusal) {
    sessionStorage.removeItem(STORAGE_KEY);
    showSignIn(refusal);
    return;
  }
  state.generation += 1;
  state.credential = credential;
  resetData();
  const submit = $("signin-submit");
  showError($("signin-error"), "");
  submit.disabled = true;
  submit.textContent = "Signing in…";
  try {
    // The console-only list first: a customer (or a key without the ops scope) is told why here.
    await loadDeadLetters();
  } catch (error) {
    if (stale(error)) return;
    if (error instanceof ApiProblem && (error.status === 401 || error.status === 403)) {
      state.credential = null;
      sessionStorage.removeItem(STORAGE_KEY);
      showSignIn(error.detail);
      return;
    }
    showError($("dead-letters-error"), `Dead letters could not be loaded: ${describe(error)}`);
  } finally {
    submit.disabled = false;
    submit.textContent = "Sign in";
  }
  sessionStorage.setItem(STORAGE_KEY, credential);
  $("signin-panel").hidden = true;
  $("console").hidden = false;
  $("signout").hidden = false;
  $("credential").value = "";
  $("overview-title").focus();
  connect();
  loadReady();
  loadOrders();
  loadStock();
  loadEmails();
}

// --- The WebSocket ------------------------------------------------------------------------

function setConnection(stateName, detail) {
  const node = $("ws-state");
  node.textContent = stateName;
  node.dataset.state = stateName;
  $("ws-detail").textContent = detail || "";
}

function socketUrl(credential) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  const param = isJwt(credential) ? "token" : "api_key";
  return `${scheme}://${location.host}/v1/ws?${param}=${encodeURIComponent(credential)}`;
}

function connect() {
  if (!state.credential) return;
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = null;
  state.subscribed = false;
  setConnection("connecting", state.retries ? `attempt ${state.retries + 1}` : "");
  let socket;
  try {
    socket = new WebSocket(socketUrl(state.credential));
  } catch (error) {
    scheduleReconnect(`could not open: ${describe(error)}`);
    return;
  }
  state.socket = socket;
  socket.onopen = () => {
    socket.send(JSON.stringify({ type: "subscribe", feed: "console" }));
  };
  socket.onmessage = (event) => {
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    if (message && typeof message.type === "string") onMessage(message);
  };
  socket.onerror = () => {}; // the close that follows says what happened
  socket.onclose = (event) => {
    if (state.socket !== socket) return;
    state.socket = null;
    state.subscribed = false;
    if (event.code === 4401) {
      signOut(`Signed out: ${event.reason || "the credential was refused or has expired"}`);
      return;
    }
    const why = event.reason ? `closed: ${event.reason}` : event.code === 1006 ? "connection lost" : `closed (${event.code})`;
    scheduleReconnect(why);
  };
}

function scheduleReconnect(why) {
  if (!state.credential) return;
  const delay = Math.min(30, 2 ** Math.min(state.retries, 5)) * (0.8 + Math.random() * 0.4);
  state.retries += 1;
  setConnection("offline", `${why}; retrying in ${Math.round(delay)} s`);
  clearTimeout(state.reconnectTimer);
  state.reconnectTimer = setTimeout(connect, delay * 1000);
}

function onMessage(message) {
  switch (message.type) {
    case "hello": {
      const roles = Array.isArray(message.roles) && message.roles.length ? ` (${message.roles.join(", ")})` : "";
      const who = $("whoami");
      who.textContent = `${message.user}${roles}`;
      who.hidden = false;
      break;
    }
    case "subscribed":
      if (message.feed !== "console") break;
      state.subscribed = true;
      state.retries = 0;
      setConnection("live", "");
      if (state.everSubscribed) {
        // Back after a drop: catch up on what was missed while away.
        loadOrders();
        loadStock();
      }
      state.everSubscribed = true;
      break;
    case "error":
      if (!state.subscribed) {
        signOut(`Not allowed: ${message.detail || "the console feed was refused"}`);
      } else {
        say(`Live feed: ${message.detail}`, "error");
      }
      break;
    case "order.status":
      onOrderStatus(message);
      break;
    case "inventory.level":
      onStockLevel(message);
      break;
    case "console.updates":
      // What changed in the last 0.2 s: the latest status of each order, level of each SKU.
      for (const order of message.orders || []) onOrderStatus(order);
      for (const level of message.stock || []) onStockLevel(level);
      if (message.dropped) say(`Busy: ${message.dropped} older change(s) not shown; the newest are`);
      break;
    case "stock.low":
      say(`Low stock: ${message.sku} has ${message.available} available (threshold ${message.threshold})`);
      break;
    case "console.stats":
      onStats(message);
      break;
    case "console.workers":
      renderWorkers(message);
      break;
    default:
      break; // pong and anything newer than this page
  }
}

// --- Overview: stats and charts -----------------------------------------------------------

function onStats(message) {
  const interval = message.interval_s || 1;
  const outcomes = message.outcomes || {};
  const latency = message.latency_ms || {};
  const point = {
    at: message.at,
    accepted: (message.accepted || 0) / interval,
    outcomes: Object.fromEntries(OUTCOMES.map((k) => [k, (outcomes[k] || 0) / interval])),
    p50: latency.p50 ?? null,
    p95: latency.p95 ?? null,
    max: latency.max ?? null,
    count: latency.count || 0,
  };
  state.stats.push(point);
  if (state.stats.length > HISTORY_SECONDS) state.stats.splice(0, state.stats.length - HISTORY_SECONDS);
  renderStatsNow(point);
  drawCharts();
}

function renderStatsNow(point) {
  const o = point ? point.outcomes : {};
  $("stat-accepted").textContent = point ? num(point.accepted, 1) : "–";
  $("stat-confirmed").textContent = point ? num(o.CONFIRMED, 1) : "–";
  $("stat-rejected").textContent = point ? num(o.REJECTED, 1) : "–";
  $("stat-payment-failed").textContent = point ? num(o.PAYMENT_FAILED, 1) : "–";
  $("stat-cancelled").textContent = point ? num(o.CANCELLED, 1) : "–";
  $("stat-p50").textContent = point ? ms(point.p50) : "–";
  $("stat-p95").textContent = point ? ms(point.p95) : "–";
  $("stat-refused").textContent = point || state.refused ? num(state.refused) : "–";
}

function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * power) return step * power;
  return 10 * power;
}

function chartFrame(box, max, format) {
  const width = box.clientWidth;
  const height = box.clientHeight;
  const pad = { left: 40, right: 8, top: 8, bottom: 16 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  const plotW = width - pad.left - pad.right;
  const plotH = height - pad.top - pad.bottom;
  for (const fraction of [0, 0.5, 1]) {
    const y = pad.top + plotH * (1 - fraction);
    root.append(svg("line", { x1: pad.left, x2: width - pad.right, y1: y, y2: y, class: "grid-line" }));
    const label = svg("text", { x: pad.left - 6, y: y + 3, "text-anchor": "end", class: "axis-label" });
    label.textContent = format(max * fraction);
    root.append(label);
  }
  const ago = svg("text", { x: pad.left, y: height - 3, class: "axis-label" });
  ago.textContent = `−${HISTORY_SECONDS} s`;
  const now = svg("text", { x: width - pad.right, y: height - 3, "text-anchor": "end", class: "axis-label" });
  now.textContent = "now";
  root.append(ago, now);
  const slot = plotW / HISTORY_SECONDS;
  // x of the i-th of n points, the newest at the right edge
  const x = (i, n) => pad.left + plotW - (n - i) * slot;
  const y = (value) => pad.top + plotH * (1 - Math.min(value, max) / max);
  return { root, slot, x, y, plotH, pad };
}

function linePath(points, x, y) {
  let d = "";
  let pen = false;
  points.forEach((value, i) => {
    if (value === null || value === undefined) {
      pen = false;
      return;
    }
    d += `${pen ? "L" : "M"}${x(i).toFixed(1)},${y(value).toFixed(1)} `;
    pen = true;
  });
  return d.trim();
}

function axisNumber(value) {
  return num(value, value < 10 && value % 1 ? 1 : 0);
}

function drawCharts() {
  if (!$("chart-rate").clientWidth) return; // hidden: drawn when it is shown (the ResizeObserver)
  const points = state.stats;
  const n = points.length;
  const last = points[n - 1];

  const rateBox = $("chart-rate");
  const rateMax = niceMax(Math.max(1, ...points.map((p) => Math.max(p.accepted, OUTCOMES.reduce((s, k) => s + p.outcomes[k], 0)))));
  const rate = chartFrame(rateBox, rateMax, axisNumber);
  const classes = { CONFIRMED: "bar-confirmed", REJECTED: "bar-rejected", PAYMENT_FAILED: "bar-payment", CANCELLED: "bar-cancelled" };
  points.forEach((p, i) => {
    let base = 0;
    for (const outcome of OUTCOMES) {
      const value = p.outcomes[outcome];
      if (!value) continue;
      const top = rate.y(base + value);
      const bottom = rate.y(base);
      rate.root.append(svg("rect", {
        x: (rate.x(i, n) + 0.5).toFixed(1), width: Math.max(rate.slot - 1, 1).toFixed(1),
        y: top.toFixed(1), height: Math.max(bottom - top, 0).toFixed(1), class: classes[outcome],
      }));
      base += value;
    }
  });
  const accepted = linePath(points.map((p) => p.accepted), (i) => rate.x(i, n) + rate.slot / 2, rate.y);
  if (accepted) rate.root.append(svg("path", { d: accepted, class: "line-accepted" }));
  rate.root.setAttribute("aria-label", last
    ? `Orders per second: ${num(last.accepted, 1)} accepted, ${OUTCOMES.map((k) => `${num(last.outcomes[k], 1)} ${statusLabel(k)}`).join(", ")}`
    : "Orders per second: no data yet");
  rate.root.dataset.points = String(n);
  rateBox.replaceChildren(rate.root);

  const latencyBox = $("chart-latency");
  const latencyMax = niceMax(Math.max(1, ...points.map((p) => Math.max(p.p50 || 0, p.p95 || 0))));
  const lat = chartFrame(latencyBox, latencyMax, (v) => (v >= 1000 ? `${num(v / 1000, 1)}s` : axisNumber(v)));
  const px = (i) => lat.x(i, n) + lat.slot / 2;
  const p95 = linePath(points.map((p) => p.p95), px, lat.y);
  const p50 = linePath(points.map((p) => p.p50), px, lat.y);
  if (p95) lat.root.append(svg("path", { d: p95, class: "line-p95" }));
  if (p50) lat.root.append(svg("path", { d: p50, class: "line-p50" }));
  lat.root.setAttribute("aria-label", last
    ? `Accept-to-decision latency: p50 ${ms(last.p50)}, p95 ${ms(last.p95)}`
    : "Accept-to-decision latency: no data yet");
  lat.root.dataset.points = String(n);
  latencyBox.replaceChildren(lat.root);
}

async function loadReady() {
  const generation = state.generation;
  try {
    const response = await fetch("/ready", { cache: "no-store", headers: { Accept: "application/json" } });
    const data = await response.json().catch(() => null);
    if (generation !== state.generation) return;
    const status = data && data.status ? data.status : `HTTP ${response.status}`;
    const missing = data && Array.isArray(data.missing) && data.missing.length ? ` (missing: ${data.missing.join(", ")})` : "";
    $("ready-state").textContent = `This worker: ${status}${missing}`;
  } catch {
    if (generation === state.generation) $("ready-state").textContent = "This worker: unreachable";
  }
}

// --- Orders -------------------------------------------------------------------------------

async function loadOrders() {
  try {
    const { data } = await api("GET", `/v1/orders?limit=${ORDER_LIMIT}`);
    showError($("orders-error"), "");
    const fresh = new Map();
    for (const order of data.items || []) {
      const known = state.orders.get(order.order_id);
      // A live message newer than the page of orders wins.
      fresh.set(order.order_id, known && known.version && known.updated_at > order.updated_at ? known : order);
    }
    state.orders = fresh;
    renderOrders();
  } catch (error) {
    if (!stale(error)) showError($("orders-error"), `Orders could not be loaded: ${describe(error)}`);
  }
}

function orderRow(order) {
  const row = h("tr", { dataset: { orderId: order.order_id } });
  fillOrderRow(row, order);
  return row;
}

function fillOrderRow(row, order) {
  const status = order.status;
  const id = h("button", {
    type: "button", className: "linkish id", title: "Show this order's details",
    "aria-label": `Order ${order.order_id}: show details`, onclick: () => showOrder(order.order_id),
  }, shortId(order.order_id));
  const actions = h("td", { className: "actions" });
  if (CANCELLABLE.has(status)) {
    actions.append(h("button", {
      type: "button", className: "btn btn-small btn-danger", dataset: { action: "cancel" },
      "aria-label": `Cancel order ${order.order_id}`, onclick: (e) => orderAction(order.order_id, "cancel", e.currentTarget),
    }, "Cancel"));
  }
  if (status === "CONFIRMED") {
    actions.append(h("button", {
      type: "button", className: "btn btn-small", dataset: { action: "fulfil" },
      "aria-label": `Fulfil order ${order.order_id}`, onclick: (e) => orderAction(order.order_id, "fulfil", e.currentTarget),
    }, "Fulfil"));
  }
  row.replaceChildren(
    h("td", {}, id),
    h("td", { className: "nowrap" }, order.user_id || "–"),
    h("td", { className: "num nowrap" }, money(order.total, order.currency)),
    h("td", { dataset: { status } }, statusBadge(status),
      order.failure_reason ? h("span", { className: "failure" }, order.failure_reason) : null),
    h("td", { className: "nowrap" }, timeElement(order.updated_at || order.created_at)),
    actions,
  );
  row.dataset.status = status;
}

function shortId(id) {
  const text = String(id);
  return text.length > 13 ? `${text.slice(0, 8)}…${text.slice(-4)}` : text;
}

function renderOrders() {
  const sorted = [...state.orders.values()].sort((a, b) => String(b.created_at || "").localeCompare(String(a.created_at || "")));
  const keep = sorted.slice(0, ORDER_LIMIT);
  state.orders = new Map(keep.map((o) => [o.order_id, o]));
  $("orders-body").replaceChildren(...keep.map(orderRow));
  $("orders-empty").hidden = keep.length > 0;
}

function onOrderStatus(message) {
  const known = state.orders.get(message.order_id);
  if (known && known.version && message.version && message.version <= known.version) return; // a redelivered copy
  const order = {
    ...(known || {}),
    order_id: message.order_id,
    status: message.status,
    updated_at: message.at ?? known?.updated_at,
    failure_reason: message.failure_reason ?? null,
    version: message.version ?? known?.version,
  };
  for (const key of ["user_id", "total", "currency", "created_at"]) {
    if (message[key] !== undefined && message[key] !== null) order[key] = message[key];
  }
  if (!order.created_at) order.created_at = order.updated_at;
  state.orders.set(order.order_id, order);
  const body = $("orders-body");
  let row = body.querySelector(`tr[data-order-id="${CSS.escape(order.order_id)}"]`);
  if (row) {
    fillOrderRow(row, order);
  } else {
    row = orderRow(order);
    body.prepend(row);
    while (body.rows.length > ORDER_LIMIT) {
      const dropped = body.rows[body.rows.length - 1];
      state.orders.delete(dropped.dataset.orderId);
      dropped.remove();
    }
    $("orders-empty").hidden = true;
  }
  flash(row);
  if (state.detailOrderId === order.order_id) refreshDetailStatus(order);
}

async function orderAction(orderId, action, button) {
  const verb = action === "cancel" ? "Cancel" : "Fulfil";
  if (button) button.disabled = true;
  try {
    const { data } = await api("POST", `/v1/orders/${encodeURIComponent(orderId)}/${action}`);
    say(`${verb} of order ${orderId} accepted (${statusLabel(data && data.status) || "sent"}); the row updates when it happens.`, "ok");
  } catch (error) {
    if (stale(error)) return;
    say(`${verb} of order ${orderId} refused: ${describe(error)}`, "error");
    if (button && button.isConnected) button.disabled = false;
  }
}

// --- Order search and detail --------------------------------------------------------------

async function showOrder(orderId) {
  const id = orderId.trim();
  if (!id) return;
  const panel = $("order-detail");
  const body = $("order-detail-body");
  state.detailOrderId = id;
  panel.hidden = false;
  panel.dataset.orderId = id;
  $("order-detail-title").textContent = `Order ${id}`;
  body.replaceChildren(h("p", { className: "muted" }, "Loading…"));
  const path = `/v1/orders/${encodeURIComponent(id)}`;
  let o;
  try {
    o = (await api("GET", path)).data;
  } catch (error) {
    if (stale(error) || state.detailOrderId !== id) return;
    body.replaceChildren(h("p", { className: "error", role: "alert" },
      error.status === 404 ? `No order ${id}.` : `The order could not be loaded: ${describe(error)}`));
    panel.focus();
    return;
  }
  const [events, emails] = await Promise.allSettled([api("GET", `${path}/events`), api("GET", `${path}/notifications`)]);
  if (state.detailOrderId !== id) return;
  const lines = h("ul", { className: "lines" }, (o.lines || []).map((l) =>
    h("li", {}, `${l.quantity} × ${l.sku} at ${money(l.unit_price, o.currency)} = ${money(l.line_total, o.currency)}`)));
  const summary = h("dl", { className: "kv", id: "order-detail-summary" },
    kv("Status", h("span", { id: "order-detail-status", dataset: { status: o.status } }, statusBadge(o.status))),
    kv("User", o.user_id), kv("Total", money(o.total, o.currency)),
    kv("Created", timeElement(o.created_at, true)), kv("Updated", timeElement(o.updated_at, true)),
    o.failure_reason ? kv("Failure", o.failure_reason) : null);
  const parts = [summary, h("h4", {}, "Lines"), lines, h("h4", {}, "Audit trail")];
  if (events.status === "fulfilled") {
    const items = events.value.data.items || [];
    parts.push(items.length ? table("order-events", ["#", "At", "Event", "Actor", "Correlation id", "Data"], items.map((ev) =>
      h("tr", { dataset: { seq: ev.seq } },
        h("td", { className: "num" }, ev.seq), h("td", { className: "nowrap" }, timeElement(ev.at, true)),
        h("td", { className: "nowrap" }, ev.type),
        h("td", {}, ev.actor || "–", ev.actor_roles && ev.actor_roles.length ? h("span", { className: "failure" }, ev.actor_roles.join(", ")) : null),
        h("td", { className: "id" }, ev.correlation_id || "–"),
        h("td", {}, h("pre", { className: "data-json" }, ev.data ? JSON.stringify(ev.data) : ""))))) : h("p", { className: "muted" }, "No audit entries."));
  } else if (!stale(events.reason)) {
    parts.push(h("p", { className: "error" }, `The audit trail could not be loaded: ${describe(events.reason)}`));
  }
  parts.push(h("h4", {}, "Emails"));
  if (emails.status === "fulfilled") {
    const items = emails.value.data.items || [];
    parts.push(items.length ? table("order-notifications", ["Id", "Template", "Recipient", "Status", "Attempts", "Last error", ""], items.map((n) =>
      h("tr", { dataset: { notificationId: n.id, status: n.status } },
        h("td", { className: "id" }, n.id), h("td", {}, n.template), h("td", {}, n.recipient),
        h("td", { dataset: { field: "status" } }, notificationBadge(n.status)), h("td", { className: "num" }, n.attempts ?? "–"),
        h("td", {}, n.last_error || "–"),
        h("td", { className: "actions" }, n.status === "failed" ? retryButton(n.id) : null)))) : h("p", { className: "muted" }, "No emails."));
  } else if (!stale(emails.reason)) {
    parts.push(h("p", { className: "error" }, `The emails could not be loaded: ${describe(emails.reason)}`));
  }
  body.replaceChildren(...parts);
  panel.focus();
}

function refreshDetailStatus(order) {
  const node = $("order-detail-status");
  if (!node) return;
  node.dataset.status = order.status;
  node.replaceChildren(statusBadge(order.status));
}

function kv(label, value) {
  return h("div", {}, h("dt", {}, label), h("dd", {}, value ?? "–"));
}

function table(id, headings, rows) {
  return h("div", { className: "table-wrap", tabindex: "0", role: "region", "aria-label": headings.join(", ") },
    h("table", { className: "table", id },
      h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)));
}

// --- Stock --------------------------------------------------------------------------------

async function loadStock() {
  try {
    const { data } = await api("GET", `/v1/inventory?limit=${STOCK_LIMIT}`);
    showError($("stock-error"), "");
    for (const level of data.items || []) {
      const known = state.stock.get(level.sku);
      if (!(known && known.version && level.version && known.version > level.version)) state.stock.set(level.sku, level);
    }
    renderStock();
  } catch (error) {
    if (!stale(error)) showError($("stock-error"), `Stock could not be loaded: ${describe(error)}`);
  }
}

function stockState(level) {
  if (level.available <= 0) return { label: "Out of stock", tone: "bad", low: true, out: true };
  if (level.low_stock) return { label: "Low", tone: "warn", low: true, out: false };
  return { label: "OK", tone: "ok", low: false, out: false };
}

function stockRow(level) {
  const row = h("tr", { dataset: { sku: level.sku } });
  fillStockRow(row, level);
  return row;
}

function fillStockRow(row, level) {
  const s = stockState(level);
  row.dataset.lowStock = String(s.low);
  row.dataset.outOfStock = String(s.out);
  row.hidden = $("stock-low-only").checked && !s.low;
  row.replaceChildren(
    h("th", { scope: "row", className: "id" }, level.sku),
    h("td", { className: "num stock-available", dataset: { field: "available" } }, num(level.available)),
    h("td", { className: "num", dataset: { field: "on_hand" } }, num(level.on_hand)),
    h("td", { className: "num", dataset: { field: "reserved" } }, num(level.reserved)),
    h("td", { className: "num", dataset: { field: "threshold" } }, num(level.low_stock_threshold)),
    h("td", {}, badge(s.label, s.tone)),
    h("td", { className: "actions" }, h("button", {
      type: "button", className: "btn btn-small", dataset: { action: "adjust" },
      "aria-label": `Adjust stock of ${level.sku}`, onclick: () => pickSku(level.sku),
    }, "Adjust")),
  );
}

function renderStock() {
  const levels = [...state.stock.values()].sort((a, b) => a.sku.localeCompare(b.sku));
  $("stock-body").replaceChildren(...levels.map(stockRow));
  const select = $("adjust-sku");
  const chosen = select.value;
  select.replaceChildren(...levels.map((l) => h("option", { value: l.sku }, l.sku)));
  if (chosen && state.stock.has(chosen)) select.value = chosen;
  summariseStock();
}

function summariseStock() {
  let low = 0;
  let out = 0;
  for (const level of state.stock.values()) {
    const s = stockState(level);
    if (s.out) out += 1;
    else if (s.low) low += 1;
  }
  $("stock-summary").textContent = `${state.stock.size} SKUs · ${low} low · ${out} out of stock`;
}

function onStockLevel(message) {
  const known = state.stock.get(message.sku);
  if (known && known.version && message.version && message.version <= known.version) return;
  const level = { ...(known || {}), ...message };
  delete level.type;
  state.stock.set(level.sku, level);
  const body = $("stock-body");
  const row = body.querySelector(`tr[data-sku="${CSS.escape(level.sku)}"]`);
  if (row) {
    fillStockRow(row, level);
    flash(row);
    summariseStock();
  } else {
    renderStock();
  }
}

function pickSku(sku) {
  $("adjust-sku").value = sku;
  $("adjust-delta").focus();
}

async function adjustStock(event) {
  event.preventDefault();
  const result = $("adjust-result");
  const sku = $("adjust-sku").value;
  const delta = Number.parseInt($("adjust-delta").value, 10);
  const reason = $("adjust-reason").value;
  const thresholdText = $("adjust-threshold").value.trim();
  if (!sku) return setResult(result, "Choose a SKU.", "error");
  if (!Number.isInteger(delta) || delta === 0) {
    $("adjust-delta").focus();
    return setResult(result, "Enter a whole number of units other than 0 (negative to remove).", "error");
  }
  const body = { delta, reason, low_stock_threshold: thresholdText === "" ? null : Number.parseInt(thresholdText, 10) };
  const submit = $("adjust-submit");
  submit.disabled = true;
  setResult(result, `Adjusting ${sku} by ${delta}…`);
  try {
    const { status, data } = await api("POST", `/v1/inventory/${encodeURIComponent(sku)}/adjustments`, body);
    if (status === 200 && data && data.level) {
      onStockLevel({ ...data.level, sku: data.level.sku || sku });
      setResult(result, `Applied: ${sku} ${delta > 0 ? "+" : ""}${delta} (${reason}); available now ${data.level.available}.`, "ok");
    } else {
      setResult(result, `Sent: ${sku} ${delta > 0 ? "+" : ""}${delta} (${reason}) is pending; the table updates when it is applied.`, "ok");
    }
    $("adjust-delta").value = "";
    $("adjust-threshold").value = "";
  } catch (error) {
    if (!stale(error)) setResult(result, `Not adjusted: ${describe(error)}`, "error");
  } finally {
    submit.disabled = false;
  }
}

// --- Workers and partitions ---------------------------------------------------------------

function renderWorkers(message) {
  const workers = Array.isArray(message.workers) ? [...message.workers] : [];
  workers.sort((a, b) => String(a.worker).localeCompare(String(b.worker)));
  let refused = 0;
  let projectionLag = 0;
  let closed = 0;
  const cards = workers.map((w) => {
    const a = w.admission || {};
    const refusedCounts = Object.entries(a.refused || {});
    refused += refusedCounts.reduce((s, [, n]) => s + (Number(n) || 0), 0);
    const projection = Array.isArray(w.projection) ? w.projection : [];
    projectionLag += projection.reduce((s, p) => s + (Number(p.lag) || 0), 0);
    if (a.open === false) closed += 1;
    const admission = a.open === false
      ? badge(`admission closed${a.reason ? `: ${a.reason}` : ""}`, "bad")
      : badge("admission open", "ok");
    const partitions = Array.isArray(w.partitions) ? [...w.partitions] : [];
    partitions.sort((p, q) => String(p.topic).localeCompare(String(q.topic)) || p.partition - q.partition);
    return h("article", { className: "worker", dataset: { worker: w.worker, admission: a.open === false ? "closed" : "open" }, "aria-label": `Worker ${w.worker}` },
      h("div", { className: "worker-head" },
        h("h3", {}, w.worker), admission,
        h("span", { className: "muted small" }, `seen ${num(w.age_s, 1)} s ago`)),
      h("dl", { className: "kv" },
        kv("In flight", num(a.in_flight)),
        kv("Decisions / s", num(a.decisions_per_second, 1)),
        kv("Queue delay", a.queue_delay_seconds === null || a.queue_delay_seconds === undefined ? "–" : ms(a.queue_delay_seconds * 1000)),
        kv("Refused", refusedCounts.length ? refusedCounts.map(([k, n]) => `${k}: ${num(n)}`).join(", ") : "none")),
      partitions.length
        ? table(`partitions-${w.worker}`, ["Topic", "Partition", "Role", "Lag"], partitions.map((p) => partitionRow(p, true)))
        : h("p", { className: "muted small" }, "No partitions assigned."),
      projection.length
        ? table(`projection-${w.worker}`, ["Projection topic", "Partition", "Lag"], projection.map((p) => partitionRow(p, false)))
        : null);
  });
  state.refused = refused;
  $("stat-refused").textContent = num(refused);
  $("workers-summary").textContent = `${workers.length} worker${workers.length === 1 ? "" : "s"}`
    + `${closed ? ` · ${closed} refusing orders` : ""} · projection lag ${num(projectionLag)}`;
  const body = $("workers-body");
  if (!workers.length) {
    body.replaceChildren(h("p", { className: "muted" }, "No worker has reported in the last 10 s."));
    return;
  }
  // Keep the scroll position of each partition table across the once-a-second redraw.
  const scroll = new Map([...body.querySelectorAll(".table-wrap")].map((n) => [n.querySelector("table")?.id, n.scrollLeft]));
  body.replaceChildren(...cards);
  for (const wrap of body.querySelectorAll(".table-wrap")) {
    const left = scroll.get(wrap.querySelector("table")?.id);
    if (left) wrap.scrollLeft = left;
  }
}

function partitionRow(p, withRole) {
  const lag = Number(p.lag) || 0;
  const lagCell = h("td", { className: `num${lag >= LAG_HIGH ? " lag-high" : ""}`, dataset: { field: "lag" } },
    num(p.lag), lag >= LAG_HIGH ? " (high)" : "");
  return h("tr", { dataset: { topic: p.topic, partition: p.partition, role: p.role || "" } },
    h("td", {}, p.topic), h("td", { className: "num" }, p.partition),
    withRole ? h("td", {}, p.role === "standby" ? badge("standby", "idle") : badge(p.role || "active", "info")) : null,
    lagCell);
}

// --- Dead letters -------------------------------------------------------------------------

async function loadDeadLetters(more = false) {
  const status = $("dead-letters-status").value;
  const cursor = more && state.deadCursor ? `&cursor=${encodeURIComponent(state.deadCursor)}` : "";
  const { data } = await api("GET", `/v1/dead-letters?status=${status}&limit=${PAGE_LIMIT}${cursor}`);
  if (!more) state.deadLetters.clear();
  for (const item of data.items || []) state.deadLetters.set(item.id, item);
  state.deadCursor = data.next_cursor || null;
  showError($("dead-letters-error"), "");
  renderDeadLetters();
}

async function refreshDeadLetters(more = false) {
  const button = more ? $("dead-letters-more") : $("dead-letters-refresh");
  button.disabled = true;
  try {
    await loadDeadLetters(more);
    if (!more) setResult($("dead-letters-result"), "");
  } catch (error) {
    if (!stale(error)) showError($("dead-letters-error"), `Dead letters could not be loaded: ${describe(error)}`);
  } finally {
    button.disabled = false;
  }
}

function renderDeadLetters() {
  const items = [...state.deadLetters.values()];
  $("dead-letters-body").replaceChildren(...items.map(deadLetterRow));
  $("dead-letters-empty").hidden = items.length > 0;
  $("dead-letters-more").hidden = !state.deadCursor;
  $("dead-letters-select-all").checked = false;
  updateReplaySelected();
}

const PAYLOAD_PREVIEW = 60;

function payloadCell(payload) {
  const text = payload === null || payload === undefined ? "" : String(payload);
  if (text.length <= PAYLOAD_PREVIEW) return h("td", { className: "payload" }, h("code", {}, text || "(empty)"));
  let pretty = text;
  try {
    pretty = JSON.stringify(JSON.parse(text), null, 2);
  } catch {
    pretty = text;
  }
  return h("td", { className: "payload" },
    h("code", {}, `${text.slice(0, PAYLOAD_PREVIEW)}…`),
    h("details", {}, h("summary", {}, `Show all (${text.length} characters)`), h("pre", {}, pretty)));
}

function deadLetterRow(item) {
  const row = h("tr", { dataset: { deadLetterId: item.id, status: item.status } });
  const canReplay = item.replayable !== false;
  const box = h("input", {
    type: "checkbox", "aria-label": `Select dead letter ${item.id}`, disabled: !canReplay,
    onchange: updateReplaySelected,
  });
  box.dataset.id = item.id;
  const last = Array.isArray(item.replays) && item.replays.length ? item.replays[item.replays.length - 1] : null;
  row.append(
    h("td", {}, box),
    h("td", { className: "id" }, item.id),
    h("td", {}, item.reason || "–", item.reason_class ? h("span", { className: "reason-class" }, item.reason_class) : null),
    h("td", { className: "nowrap" }, item.source_topic || "–"),
    h("td", { className: "num" }, item.source_partition ?? "–"),
    h("td", { className: "num" }, item.source_offset ?? "–"),
    payloadCell(item.payload),
    h("td", {}, badge(item.status || "open", item.status === "replayed" ? "ok" : "warn"),
      h("span", { className: "failure" }, timeText(item.dead_at))),
    outcomeCell(last ? { outcome: last.outcome, detail: last.detail, at: last.at } : null),
    h("td", { className: "actions" }, canReplay
      ? h("button", {
        type: "button", className: "btn btn-small", dataset: { action: "replay" },
        "aria-label": `Replay dead letter ${item.id}`, onclick: (e) => replayOne(item.id, e.currentTarget),
      }, "Replay")
      : h("span", { className: "muted small" }, "not replayable")),
  );
  return row;
}

function outcomeCell(result) {
  const cell = h("td", { className: "outcome" });
  if (result) {
    cell.dataset.outcome = result.outcome;
    const tone = result.outcome === "replayed" ? "ok" : result.outcome === "refused" ? "bad" : "idle";
    cell.append(badge(String(result.outcome).replaceAll("_", " "), tone));
    const where = result.partition !== undefined && result.partition !== null
      ? ` → partition ${result.partition}, offset ${result.offset}` : "";
    if (result.detail || where) cell.append(h("span", {}, `${result.detail || ""}${where}`));
  } else {
    cell.append("–");
  }
  return cell;
}

function applyReplay(result) {
  const item = state.deadLetters.get(result.id);
  if (item && (result.outcome === "replayed" || result.outcome === "already_replayed")) item.status = "replayed";
  const row = $("dead-letters-body").querySelector(`tr[data-dead-letter-id="${CSS.escape(result.id)}"]`);
  if (!row) return;
  if (item) row.dataset.status = item.status;
  if (item) row.cells[7].replaceChildren(badge(item.status, item.status === "replayed" ? "ok" : "warn"),
    h("span", { className: "failure" }, timeText(item.dead_at)));
  row.cells[8].replaceWith(outcomeCell(result));
  const box = row.querySelector("input[type=checkbox]");
  if (box) box.checked = false;
  flash(row);
}

function summariseReplays(results) {
  const counts = {};
  for (const r of results) counts[r.outcome] = (counts[r.outcome] || 0) + 1;
  return Object.entries(counts).map(([k, n]) => `${n} ${k.replaceAll("_", " ")}`).join(", ");
}

async function replayOne(id, button) {
  const result = $("dead-letters-result");
  button.disabled = true;
  try {
    const { data } = await api("POST", `/v1/dead-letters/${encodeURIComponent(id)}/replay`);
    const item = data && data.id ? data : { id, outcome: "replayed" };
    applyReplay(item);
    setResult(result, `${id}: ${String(item.outcome).replaceAll("_", " ")}${item.detail ? ` (${item.detail})` : ""}`,
      item.outcome === "refused" ? "error" : "ok");
  } catch (error) {
    if (stale(error)) return;
    if (error.status === 422) applyReplay({ id, outcome: "refused", detail: error.detail });
    setResult(result, `${id} not replayed: ${describe(error)}`, "error");
  } finally {
    if (button.isConnected) button.disabled = false;
    updateReplaySelected();
  }
}

function selectedDeadLetters() {
  return [...$("dead-letters-body").querySelectorAll("input[type=checkbox]:checked")].map((b) => b.dataset.id);
}

function updateReplaySelected() {
  const count = selectedDeadLetters().length;
  const button = $("dead-letters-replay-selected");
  button.disabled = count === 0;
  button.textContent = count ? `Replay selected (${count})` : "Replay selected";
}

async function replaySelected() {
  const ids = selectedDeadLetters();
  if (!ids.length) return;
  const result = $("dead-letters-result");
  const button = $("dead-letters-replay-selected");
  button.disabled = true;
  setResult(result, `Replaying ${ids.length}…`);
  try {
    const { data } = await api("POST", "/v1/dead-letters/replay", { ids });
    const items = (data && data.items) || [];
    items.forEach(applyReplay);
    const refused = items.filter((r) => r.outcome === "refused");
    setResult(result, `Replay of ${ids.length}: ${summariseReplays(items)}`
      + (refused.length ? `. Refused: ${refused.map((r) => `${r.id} (${r.detail || "no detail"})`).join("; ")}` : ""),
    refused.length ? "error" : "ok");
  } catch (error) {
    if (!stale(error)) setResult(result, `Not replayed: ${describe(error)}`, "error");
  } finally {
    updateReplaySelected();
  }
}

function selectAllDeadLetters(event) {
  for (const box of $("dead-letters-body").querySelectorAll("input[type=checkbox]:not(:disabled)")) box.checked = event.target.checked;
  updateReplaySelected();
}

// --- Failed emails ------------------------------------------------------------------------

async function loadEmails(more = false) {
  const button = more ? $("failed-emails-more") : $("failed-emails-refresh");
  button.disabled = true;
  try {
    const cursor = more && state.emailCursor ? `&cursor=${encodeURIComponent(state.emailCursor)}` : "";
    const { data } = await api("GET", `/v1/notifications?status=failed&limit=${PAGE_LIMIT}${cursor}`);
    if (!more) state.emails.clear();
    for (const item of data.items || []) state.emails.set(item.id, item);
    state.emailCursor = data.next_cursor || null;
    showError($("failed-emails-error"), "");
    if (!more) setResult($("failed-emails-result"), "");
    renderEmails();
  } catch (error) {
    if (!stale(error)) showError($("failed-emails-error"), `Failed emails could not be loaded: ${describe(error)}`);
  } finally {
    button.disabled = false;
  }
}

function notificationBadge(status) {
  return badge(status || "–", status === "sent" ? "ok" : status === "failed" ? "bad" : "info");
}

function retryButton(id) {
  return h("button", {
    type: "button", className: "btn btn-small", dataset: { action: "retry" },
    "aria-label": `Retry email ${id}`, onclick: (e) => retryEmail(id, e.currentTarget),
  }, "Retry");
}

function emailRow(n) {
  return h("tr", { dataset: { notificationId: n.id, status: n.status } },
    h("td", { className: "id" }, n.id),
    h("td", {}, n.order_id ? h("button", {
      type: "button", className: "linkish id", "aria-label": `Order ${n.order_id}: show details`,
      onclick: () => showOrder(n.order_id),
    }, shortId(n.order_id)) : "–"),
    h("td", {}, n.recipient || "–"),
    h("td", {}, n.template || "–"),
    h("td", {}, n.last_error || "–"),
    h("td", { className: "num" }, n.attempts ?? "–"),
    h("td", { dataset: { field: "status" } }, notificationBadge(n.status)),
    h("td", { className: "actions" }, n.status === "failed" ? retryButton(n.id) : null));
}

function renderEmails() {
  const items = [...state.emails.values()];
  $("failed-emails-body").replaceChildren(...items.map(emailRow));
  $("failed-emails-empty").hidden = items.length > 0;
  $("failed-emails-more").hidden = !state.emailCursor;
}

async function retryEmail(id, button) {
  const result = $("failed-emails-result");
  button.disabled = true;
  try {
    const { data } = await api("POST", `/v1/notifications/${encodeURIComponent(id)}/retry`);
    const updated = { ...(state.emails.get(id) || {}), ...(data || {}), id };
    state.emails.set(id, updated);
    for (const row of document.querySelectorAll(`tr[data-notification-id="${CSS.escape(id)}"]`)) {
      row.dataset.status = updated.status || "queued";
      row.querySelector('[data-field="status"]')?.replaceChildren(notificationBadge(updated.status || "queued"));
      row.querySelector("[data-action=retry]")?.remove();
      flash(row);
    }
    setResult(result, `Email ${id} queued again (attempts start over).`, "ok");
  } catch (error) {
    if (stale(error)) return;
    setResult(result, `Email ${id} not retried: ${describe(error)}`, "error");
    if (button.isConnected) button.disabled = false;
  }
}

// --- Wiring -------------------------------------------------------------------------------

function wire() {
  $("signin").addEventListener("submit", (event) => {
    event.preventDefault();
    const credential = $("credential").value.trim();
    if (!credential) {
      showError($("signin-error"), "Paste an admin token or an API key.");
      $("credential").setAttribute("aria-invalid", "true");
      $("credential").focus();
      return;
    }
    signIn(credential);
  });
  $("signout").addEventListener("click", () => signOut(""));
  $("order-search").addEventListener("submit", (event) => {
    event.preventDefault();
    showOrder($("order-search-id").value);
  });
  $("order-detail-close").addEventListener("click", () => {
    state.detailOrderId = null;
    $("order-detail").hidden = true;
    $("order-search-id").focus();
  });
  $("adjust-form").addEventListener("submit", adjustStock);
  $("stock-low-only").addEventListener("change", (event) => {
    for (const row of $("stock-body").rows) row.hidden = event.target.checked && row.dataset.lowStock !== "true";
  });
  $("dead-letters-refresh").addEventListener("click", () => refreshDeadLetters(false));
  $("dead-letters-more").addEventListener("click", () => refreshDeadLetters(true));
  $("dead-letters-status").addEventListener("change", () => refreshDeadLetters(false));
  $("dead-letters-replay-selected").addEventListener("click", replaySelected);
  $("dead-letters-select-all").addEventListener("change", selectAllDeadLetters);
  $("failed-emails-refresh").addEventListener("click", () => loadEmails(false));
  $("failed-emails-more").addEventListener("click", () => loadEmails(true));
  // Redrawn at the box's size whenever it changes (and when the console is first shown).
  let frame = 0;
  const observer = new ResizeObserver(() => {
    cancelAnimationFrame(frame);
    frame = requestAnimationFrame(drawCharts);
  });
  observer.observe($("chart-rate"));
}

function start() {
  wire();
  const saved = sessionStorage.getItem(STORAGE_KEY);
  if (saved) {
    $("signin-panel").hidden = true;
    signIn(saved);
  } else {
    showSignIn("");
  }
}

start();
