// The operations-center wall: KPI tiles against their targets, the live alert feed, a map of every commune
// coloured by its worst alert with the worst ones ranked beside it, and the health of each subsystem, kept
// live over Server-Sent Events (docs/http-api.md). A wall is never scrolled: a list longer than its panel
// is cut into pages that turn by themselves (PAGE_MS, `?page=SECONDS`), its panel showing "1/3".
//
// Data: GET /api/v1/areas, /map, /alerts (+ ?state=resolved), /kpis, /silences, /sources, /telemetry at load
// and whenever the stream says `reset`; then `alert` and `kpi` events from /api/v1/stream. When the stream
// drops, the body gets data-state="stale" and the [data-stale] banner shows; the page reconnects with a
// jittered exponential backoff, sending the id of the last event it had as `Last-Event-ID`: the daemon
// first sends what was missed meanwhile (body data-stream-resumes counts these), or a `reset` event when
// that is gone (a restart, too long away), and then the page reloads everything (data-stream-resets).
//
// The stream is read with fetch() (see StreamSource), not EventSource: EventSource cannot send an
// Authorization header, and a token in the URL would end up in proxies' logs and the browser's history.
//
// Closed reads ([http] public_read = false): the first read answered 401 opens the viewer token entry
// ([data-action=viewer-token] in [data-viewer-dialog]; body data-state="locked"); the token is checked
// (GET /api/v1/areas) and kept in sessionStorage for the browser session, and sent on every read and on
// the stream. An operator's token reads too.
//
// Operators: [data-action=login] opens the token entry ([data-action=token]); the token is checked
// (GET /api/v1/whoami) and kept in sessionStorage for the browser session. Each alert element carries
// data-fingerprint and, for an operator, buttons data-action=ack / unack / silence.

import { initialLanguage, makeFormatter } from "./i18n.js";

const API = "/api/v1";
const TOKEN_KEY = "ioc.operator.token";
const NAME_KEY = "ioc.operator.name";
const VIEWER_KEY = "ioc.viewer.token";
const SEVERITY_RANK = { critical: 3, warning: 2, info: 1 };
const DISPLAY_RANK = { firing: 5, pending: 4, acknowledged: 3, silenced: 2, resolved: 1 };
const HISTORY_MAX = 240; // points per sparkline (values since the page loaded)
const RESOLVED_KEEP = 12; // resolved alerts kept below the active ones...
const RESOLVED_FOR_MS = 12 * 3600 * 1000; // ...if resolved within this long
const SOURCE_QUIET_MS = 5 * 60 * 1000; // a source silent this long is shown as silent
const AQI_FRESH_MS = 3 * 3600 * 1000; // AQI readings older than this are left out of the tile
const DURATIONS = ["30m", "1h", "2h", "4h", "8h", "1d", "3d"];
const DEFAULT_DURATION = "2h";
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
const SOURCES_EVERY_MS = 5000;
const TELEMETRY_EVERY_MS = 5000; // no stream for telemetry: the AQI tile polls
const AGES_EVERY_MS = 15000;
const PAGE_MS = 1000 * (Number(new URLSearchParams(location.search).get("page")) || 10); // a list's page shows this long
const LABEL_PX = 0.82; // map labels, in rem
// VN_AQI bands (Decision 1459/QĐ-TCMT): upper bounds of Good, Moderate, Poor, Bad, Very bad; above: Hazardous.
const AQI_BANDS = [50, 100, 150, 200, 300];

const $ = (selector, root = document) => root.querySelector(selector);
const $$ = (selector, root = document) => Array.from(root.querySelectorAll(selector));

const state = {
  lang: initialLanguage(),
  fmt: null,
  province: document.body.dataset.province,
  areas: new Map(),
  levels: ["province"],
  map: null, // GET /api/v1/map: the cells of the province's communes
  mapDrawn: null, // the map whose cells are in the page
  labelsFor: null, // the map whose names are placed
  day: null, // today's date as the clock shows it (a new day reloads the map)
  dayLang: null,
  pages: new Map(), // a paged list's name -> the index of the page it shows
  alerts: new Map(), // fingerprint -> the latest episode's alert
  kpis: new Map(), // "kpi|area" -> kpi
  aqi: new Map(), // area -> latest env.aqi reading
  history: new Map(), // tile id -> [{t, v}]
  sources: [],
  silences: 0,
  token: sessionStorage.getItem(TOKEN_KEY),
  operator: sessionStorage.getItem(NAME_KEY),
  viewerToken: sessionStorage.getItem(VIEWER_KEY), // for reads when they are closed
  stream: null,
  connection: "connecting",
  backoff: 0,
  reconnectTimer: 0,
  pingTimer: 0,
  lastEventId: null, // the stream's position: sent as Last-Event-ID when it reconnects
  resumes: 0,
  resets: 0,
  loading: false,
  buffered: [],
  loads: 0,
  silenceTarget: null,
  renderTimer: 0,
};
state.fmt = makeFormatter(state.lang);
const t = (key, values) => state.fmt.t(key, values);

// --- DOM helpers -----------------------------------------------------------------------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
  }
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

function icon(name, extra = "") {
  return svg("svg", { class: `icon ${extra}`.trim(), "aria-hidden": "true", focusable: "false" },
    svg("use", { href: `#i-${name}` }));
}

function toast(message, kind = "info") {
  const box = $("[data-toast]");
  box.textContent = message;
  box.dataset.kind = kind;
  box.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { box.hidden = true; }, 6000);
}

// --- the API ---------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** The token sent on reads: the viewer's, else the operator's (which may read too), else none. */
function readToken() {
  return state.viewerToken ?? state.token;
}

/** A call of the API. `auth`: an operator's action, with `token` (default the operator's); otherwise a
 *  read, with readToken() when there is one. A read answered 401 asks for a viewer token. */
async function api(path, { method = "GET", body, auth = false, token } = {}) {
  const headers = { Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const sent = auth ? (token ?? state.token) : (token ?? readToken());
  if (sent) headers.Authorization = `Bearer ${sent}`;
  const response = await fetch(API + path, {
    method, headers, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
  });
  let data = null;
  if (response.status !== 204) {
    try { data = await response.json(); } catch { data = null; }
  }
  if (!response.ok) {
    if (response.status === 401 && !auth && token === undefined) askViewerToken();
    throw new ApiError(response.status, data?.error ?? `HTTP ${response.status}`);
  }
  return data;
}

/** An operator action's failure: a bad token logs the operator out; anything else is shown. */
function actionFailed(error) {
  if (error.status === 401) {
    logout(false);
    toast(t("tokenInvalid"), "error");
  } else if (error.status === 403) {
    toast(t("tokenNotOperator"), "error");
  } else {
    toast(t("requestFailed", { error: error.message }), "error");
  }
}

// --- alerts ----------------------------------------------------------------------------------------

const toDate = (text) => (text ? new Date(text) : null);

/** What the feed shows an alert as: resolved, silenced, acknowledged, firing or pending. */
function displayState(alert) {
  if (alert.state === "resolved") return "resolved";
  if (alert.silenced) return "silenced";
  if (alert.acknowledged) return "acknowledged";
  return alert.state;
}

/** Keep one alert per fingerprint: the same episode replaces itself; a new active episode replaces a
 *  resolved one; a resolved one never hides an active episode. */
function mergeAlert(alerts, alert) {
  const known = alerts.get(alert.fingerprint);
  if (!known || known.id === alert.id || alert.state !== "resolved"
      || (known.state === "resolved" && (toDate(alert.resolved_at) ?? 0) >= (toDate(known.resolved_at) ?? 0))) {
    const { change, ...kept } = alert;
    alerts.set(alert.fingerprint, kept);
  }
}

function pruneResolved(alerts, now = Date.now()) {
  const resolved = [...alerts.values()].filter((a) => a.state === "resolved")
    .sort((a, b) => toDate(b.resolved_at) - toDate(a.resolved_at));
  resolved.forEach((alert, index) => {
    const at = toDate(alert.resolved_at)?.getTime() ?? 0;
    if (index >= RESOLVED_KEEP || now - at > RESOLVED_FOR_MS) alerts.delete(alert.fingerprint);
  });
}

function sortedAlerts() {
  const active = [];
  const resolved = [];
  for (const alert of state.alerts.values()) (alert.state === "resolved" ? resolved : active).push(alert);
  active.sort((a, b) => (SEVERITY_RANK[b.severity] ?? 0) - (SEVERITY_RANK[a.severity] ?? 0)
    || DISPLAY_RANK[displayState(b)] - DISPLAY_RANK[displayState(a)]
    || toDate(b.started_at) - toDate(a.started_at));
  resolved.sort((a, b) => toDate(b.resolved_at) - toDate(a.resolved_at));
  return [...active, ...resolved];
}

async function loadAlerts() {
  state.loading = true;
  state.buffered = [];
  try {
    const [active, resolved] = await Promise.all([api("/alerts"), api("/alerts?state=resolved&limit=100")]);
    const next = new Map();
    for (const alert of resolved) mergeAlert(next, alert);
    for (const alert of active) mergeAlert(next, alert);
    for (const alert of state.buffered) mergeAlert(next, alert); // what the stream sent meanwhile
    pruneResolved(next);
    state.alerts = next;
    state.loads += 1;
    document.body.dataset.alertsLoads = String(state.loads);
  } finally {
    state.loading = false;
    state.buffered = [];
  }
  scheduleRender();
}

function onAlertEvent(alert) {
  if (state.loading) state.buffered.push(alert);
  mergeAlert(state.alerts, alert);
  pruneResolved(state.alerts);
  scheduleRender();
}

async function loadSilences() {
  const silences = await api("/silences?status=active");
  state.silences = silences.length;
  scheduleRender();
}

function alertActions(alert) {
  if (!state.token || alert.state === "resolved") return null;
  const buttons = [];
  if (alert.state === "firing" && !alert.acknowledged) {
    buttons.push(el("button", { type: "button", class: "btn", "data-action": "ack", text: t("ack") }));
  }
  if (alert.acknowledged) {
    buttons.push(el("button", { type: "button", class: "btn", "data-action": "unack", text: t("unack") }));
  }
  buttons.push(el("button", { type: "button", class: "btn", "data-action": "silence", text: t("silence") }));
  return el("div", { class: "alert-actions" }, buttons);
}

function areaName(code) {
  return state.areas.get(code)?.name ?? code;
}

const formatters = new Map();

function otherFormatter(lang) {
  if (!formatters.has(lang)) formatters.set(lang, makeFormatter(lang));
  return formatters.get(lang);
}

/** The alert's summary in the wall's language when the rule has one (`summaries`), else its Vietnamese
 *  one: {text, lang}. */
function summaryOf(alert) {
  const own = alert.summaries?.[state.lang];
  return own ? { text: own, lang: state.lang } : { text: alert.summary || alert.rule, lang: "vi" };
}

function renderAlert(alert, now) {
  const shown = displayState(alert);
  const summary = summaryOf(alert);
  // A summary shown in the other language (the rule has none in this one) has that language's decimal
  // mark: the card's value follows it, so one card never mixes 12,5 and 12.5.
  const numbers = summary.lang === state.lang ? state.fmt : otherFormatter(summary.lang);
  const fmt = state.fmt;
  const started = toDate(alert.started_at);
  const meta = [t("startedAt", { at: fmt.when(started, now), age: fmt.age(started, now) })];
  if (alert.state === "resolved") meta.push(t("resolvedAt", { at: fmt.when(toDate(alert.resolved_at), now) }));
  if (alert.value !== null && alert.value !== undefined) meta.push(t("value", { value: numbers.number(alert.value, 2) }));
  const extra = [];
  if (alert.acknowledged) {
    extra.push(el("span", { class: "tag tag-ack" }, icon("acknowledged"),
      t("ackedBy", { by: alert.acknowledged.by, at: fmt.when(toDate(alert.acknowledged.at), now) })));
  }
  if (alert.silenced && shown !== "silenced") {
    extra.push(el("span", { class: "tag tag-silenced" }, icon("silenced"), t("state.silenced")));
  }
  const area = alert.labels?.area;
  return el("li", {
    class: "alert", "data-fingerprint": alert.fingerprint, "data-id": alert.id, "data-state": shown,
    "data-severity": alert.severity, "data-rule": alert.rule,
  },
  el("div", { class: "alert-main" },
    el("div", { class: "alert-head" },
      el("span", { class: "alert-state" }, icon(shown), el("span", { class: "state-text", text: t(`state.${shown}`) })),
      el("span", { class: "severity", "data-severity": alert.severity, text: t(`severity.${alert.severity}`) }),
      area ? el("span", { class: "alert-area", text: areaName(area) }) : null,
      el("span", { class: "alert-rule", text: alert.rule })),
    el("p", { class: "summary", lang: summary.lang, text: summary.text }),
    el("p", { class: "meta", text: meta.join(" · ") }),
    extra.length ? el("p", { class: "meta tags" }, extra) : null),
  alertActions(alert));
}

function renderAlerts(now) {
  const alerts = sortedAlerts();
  const list = $("[data-alerts]");
  list.replaceChildren(...alerts.map((alert) => renderAlert(alert, now)));
  const active = alerts.filter((a) => a.state !== "resolved");
  $("[data-alerts-empty]").hidden = active.length > 0;
  const fmt = state.fmt;
  $("[data-alert-counts]").textContent = [
    fmt.plural("firing", active.filter((a) => a.state === "firing").length),
    fmt.plural("pending", active.filter((a) => a.state === "pending").length),
    fmt.plural("acknowledged", active.filter((a) => a.acknowledged).length),
    fmt.plural("silences", state.silences),
  ].join(" · ");
}

// --- areas -----------------------------------------------------------------------------------------

async function loadAreas() {
  const areas = await api("/areas");
  state.areas = new Map(areas.map((area) => [area.code, area]));
  const levels = ["province", "district", "commune"].filter((level) => areas.some((a) => a.level === level));
  state.levels = levels.length ? levels : ["province"];
  applyTexts();
  scheduleRender();
}

/** Whether `code` is `ancestor` or lies below it in the registry. */
function within(code, ancestor) {
  for (let area = state.areas.get(code), hops = 0; area && hops < 8; area = state.areas.get(area.parent), hops++) {
    if (area.code === ancestor) return true;
  }
  return code === ancestor;
}

async function loadMap() {
  state.map = await api("/map");
  state.mapDrawn = null;
  applyTexts();
  scheduleRender();
}

/** Each commune of the map -> {severity, count}: its worst active alert on it (or a unit below it). An
 *  alert on the province itself is in the feed, not on every cell: it would hide where things are. */
function communeStates() {
  const active = [...state.alerts.values()].filter((a) => a.state !== "resolved" && a.labels?.area);
  const states = new Map();
  for (const cell of state.map?.cells ?? []) {
    const mine = active.filter((alert) => within(alert.labels.area, cell.code));
    const worst = mine.reduce((best, alert) => ((SEVERITY_RANK[alert.severity] ?? 0) > (SEVERITY_RANK[best] ?? 0)
      ? alert.severity : best), "none");
    states.set(cell.code, { severity: worst, count: mine.length });
  }
  return states;
}

/** The cells (drawn once per map), their colours, and the names that fit. */
function renderMap(states) {
  const map = state.map;
  const svgBox = $("[data-map]");
  const cells = $("[data-areas]");
  if (!map) return;
  if (state.mapDrawn !== map) {
    const [left, top, right, bottom] = map.bounds;
    svgBox.setAttribute("viewBox", `${left} ${top} ${right - left} ${bottom - top}`);
    cells.replaceChildren(...map.cells.map((cell) => svg("path", {
      class: "map-cell", "data-area": cell.code, "data-severity": "none",
      d: `M${cell.points.map((p) => p.join(",")).join("L")}Z`,
    }, svg("title", {}, cell.name))));
    cells.dataset.count = String(map.cells.length);
    state.mapDrawn = map;
  }
  for (const path of cells.children) {
    const severity = states.get(path.dataset.area)?.severity ?? "none";
    if (path.dataset.severity !== severity) path.dataset.severity = severity;
  }
  const counts = { critical: 0, warning: 0, info: 0, none: 0 };
  for (const { severity } of states.values()) counts[severity] += 1;
  $("[data-map-legend]").replaceChildren(...["critical", "warning", "info", "none"]
    .filter((severity) => counts[severity] || severity === "none" || severity === "critical")
    .map((severity) => el("span", { class: "legend-item", "data-severity": severity },
      el("span", { class: "swatch", "data-severity": severity }),
      `${t(`severity.${severity}`)} ${state.fmt.number(counts[severity], 0)}`)));
  placeLabels(states);
}

/** Names on the map where they fit: worst communes first, then the largest cells; a name that would
 *  overlap one already placed, or leave the map, is left out (the cell's <title> and the list name it). */
function placeLabels(states) {
  const map = state.map;
  const svgBox = $("[data-map]");
  const layer = $("[data-map-labels]");
  const box = svgBox.getBoundingClientRect();
  if (!map || !box.width || !box.height) { layer.replaceChildren(); return; }
  const [left, top, right, bottom] = map.bounds;
  const scale = Math.min(box.width / (right - left), box.height / (bottom - top)); // px per km ("meet")
  const rem = parseFloat(getComputedStyle(document.documentElement).fontSize);
  // Placed again only when the size or a commune's severity changed (every alert event renders).
  const key = `${box.width}x${box.height}@${rem}|${[...states.values()].map((s) => s.severity).join()}`;
  if (layer.dataset.key === key && state.labelsFor === map) return;
  layer.dataset.key = key;
  state.labelsFor = map;
  const size = (LABEL_PX * rem) / scale;
  const pad = (0.15 * rem) / scale;
  layer.setAttribute("font-size", size.toFixed(4));
  layer.style.fontSize = `${size}px`;
  const order = [...map.cells].sort((a, b) =>
    (SEVERITY_RANK[states.get(b.code)?.severity] ?? 0) - (SEVERITY_RANK[states.get(a.code)?.severity] ?? 0)
    || b.area - a.area);
  const placed = [];
  const labels = [];
  const candidates = order.map((cell) => svg("text", { class: "map-label", x: cell.x, y: cell.y,
    "data-label-for": cell.code, "data-severity": states.get(cell.code)?.severity ?? "none" }, cell.short));
  layer.replaceChildren(...candidates); // all in at once, then measured: one layout, not one per label
  const boxes = candidates.map((label) => label.getBBox());
  for (const [index, label] of candidates.entries()) {
    const b = boxes[index];
    const rect = { x1: b.x - pad, y1: b.y - pad, x2: b.x + b.width + pad, y2: b.y + b.height + pad };
    const outside = rect.x1 < left || rect.x2 > right || rect.y1 < top || rect.y2 > bottom;
    if (outside || placed.some((o) => rect.x1 < o.x2 && o.x1 < rect.x2 && rect.y1 < o.y2 && o.y1 < rect.y2)) {
      label.remove();
      continue;
    }
    placed.push(rect);
    labels.push(label);
  }
  layer.dataset.count = String(labels.length);
}

/** The communes with active alerts, the worst first (severity, then how many alerts, then name). */
function renderWorst(states) {
  const cells = new Map((state.map?.cells ?? []).map((cell) => [cell.code, cell]));
  const ranked = [...states.entries()].filter(([, s]) => s.count > 0)
    .sort(([a, x], [b, y]) => (SEVERITY_RANK[y.severity] ?? 0) - (SEVERITY_RANK[x.severity] ?? 0)
      || y.count - x.count || cells.get(a).name.localeCompare(cells.get(b).name, state.fmt.locale));
  const list = $("[data-worst]");
  list.replaceChildren(...ranked.map(([code, s], index) => el("li", {
    class: "worst-item", "data-worst-area": code, "data-severity": s.severity },
  el("span", { class: "worst-rank", text: state.fmt.number(index + 1, 0) }),
  el("span", { class: "worst-name", text: cells.get(code).name }),
  el("span", { class: "worst-status" }, icon(s.severity === "critical" ? "bad" : s.severity === "warning" ? "warn" : "pending"),
    el("span", { text: t(`severity.${s.severity}`) }), el("span", { text: "·" }),
    el("span", { text: state.fmt.plural("alerts", s.count) })))));
  $("[data-worst-empty]").hidden = ranked.length > 0;
}

function renderAreas() {
  const states = communeStates();
  renderMap(states);
  renderWorst(states);
}

// --- pages of long lists ---------------------------------------------------------------------------

/** Cut a list into pages that fit its height; show the page it was on (or the first), and "2/3". */
function paginate(list) {
  const name = list.dataset.paged;
  const items = [...list.children];
  for (const item of items) item.hidden = false;
  const room = list.clientHeight;
  const gap = parseFloat(getComputedStyle(list).rowGap) || 0;
  const pages = [];
  let page = [];
  let used = 0;
  for (const item of items) {
    const height = item.getBoundingClientRect().height;
    const need = page.length ? used + gap + height : height;
    if (page.length && need > room + 0.5) {
      pages.push(page);
      page = [item];
      used = height;
    } else {
      page.push(item);
      used = need;
    }
  }
  if (page.length) pages.push(page);
  let index = state.pages.get(name) ?? 0;
  if (index >= pages.length) index = 0;
  state.pages.set(name, index);
  pages.forEach((members, i) => { for (const item of members) item.hidden = i !== index; });
  list.dataset.page = String(index + 1);
  list.dataset.pages = String(Math.max(1, pages.length));
  const pager = $(`[data-pager-for="${name}"]`);
  if (pager) {
    pager.hidden = pages.length <= 1;
    pager.textContent = `${state.fmt.number(index + 1, 0)}/${state.fmt.number(pages.length, 0)}`;
  }
}

function paginateAll() {
  for (const list of $$("[data-paged]")) {
    try { paginate(list); } catch (error) { console.error("ioc: paging failed", error); }
  }
}

function turnPages() {
  if ($("dialog[open]")) return; // an operator is silencing or logging in: the alert stays where it is
  for (const list of $$("[data-paged]")) {
    if (list.matches(":hover")) continue; // someone is reading it, or about to press a button in it
    const pages = Number(list.dataset.pages ?? 1);
    if (pages > 1) state.pages.set(list.dataset.paged, (Number(list.dataset.page ?? 1)) % pages);
  }
  paginateAll();
}

// --- KPIs ------------------------------------------------------------------------------------------

function tileDefinitions() {
  const top = state.levels[0];
  const tiles = state.levels.map((level) => ({
    id: `online-${level}`, kind: "kpi", kpi: "kpi.dossier.online_share", level, better: "higher", band: 10,
    unit: "%", digits: 1, title: () => t("tile.online", { level: t(`level.${level}`) }),
  }));
  tiles.push(
    { id: "overdue", kind: "kpi", kpi: "kpi.dossier.overdue_open", level: top, better: "lower", band: 10,
      unit: "", digits: 0, defaultTarget: 0, title: () => t("tile.overdue") },
    { id: "on-time", kind: "kpi", kpi: "kpi.dossier.on_time_rate", level: top, better: "higher", band: 5,
      unit: "%", digits: 1, title: () => t("tile.onTime") },
    { id: "coverage", kind: "kpi", kpi: "kpi.coverage.down_share", level: top, better: "lower", band: 5,
      unit: "%", digits: 1, defaultTarget: 0, title: () => t("tile.coverage") },
    { id: "aqi", kind: "aqi", better: "lower", band: 50, unit: "", digits: 0, defaultTarget: 100,
      title: () => t("tile.aqi") },
  );
  return tiles;
}

/** A tile's current figure: {value, target, note}. The top level's own KPI; for a lower level the mean
 *  of its areas' values, with how many meet their target; for AQI the highest fresh reading. */
function tileFigure(tile, now) {
  if (tile.kind === "aqi") {
    const fresh = [...state.aqi.values()].filter((r) => now - new Date(r.time).getTime() <= AQI_FRESH_MS);
    if (!fresh.length) return { value: null, target: tile.defaultTarget };
    const worst = fresh.reduce((a, b) => (b.value > a.value ? b : a));
    const band = AQI_BANDS.findIndex((limit) => worst.value <= limit);
    return { value: worst.value, target: tile.defaultTarget,
      note: `${t(`aqi.${band === -1 ? 5 : band}`)} · ${t("worstAt", { area: areaName(worst.area) })}` };
  }
  const values = [...state.kpis.values()].filter((k) => k.kpi === tile.kpi && k.level === tile.level);
  if (tile.level === state.levels[0]) {
    const own = values.find((k) => k.area === state.province) ?? values[0];
    return own ? { value: own.value, target: own.target ?? tile.defaultTarget ?? null }
      : { value: null, target: tile.defaultTarget ?? null };
  }
  if (!values.length) return { value: null, target: tile.defaultTarget ?? null };
  const mean = values.reduce((sum, k) => sum + k.value, 0) / values.length;
  const target = values.find((k) => k.target !== null)?.target ?? tile.defaultTarget ?? null;
  const met = values.filter((k) => k.target === null || judge(k.value, k.target, tile) === "ok").length;
  return { value: mean, target, note: t("meeting", { met, total: values.length }) };
}

/** ok / warn / bad by the distance to the target (within `band` of it: warn); none without a value. */
function judge(value, target, tile) {
  if (value === null || value === undefined) return "none";
  if (target === null || target === undefined) return "noTarget";
  const short = tile.better === "higher" ? target - value : value - target;
  if (short <= 0) return "ok";
  return short <= tile.band ? "warn" : "bad";
}

function recordHistory(now = Date.now()) {
  for (const tile of tileDefinitions()) {
    const { value } = tileFigure(tile, now);
    if (value === null || value === undefined) continue;
    const series = state.history.get(tile.id) ?? [];
    const last = series[series.length - 1];
    if (!last || last.v !== value || now - last.t > 60000) series.push({ t: now, v: value });
    if (series.length > HISTORY_MAX) series.splice(0, series.length - HISTORY_MAX);
    state.history.set(tile.id, series);
  }
}

function sparkline(points, target) {
  const box = svg("svg", { class: "spark", viewBox: "0 0 100 32", preserveAspectRatio: "none",
    "aria-hidden": "true" });
  if (!points.length) return box;
  const values = points.map((p) => p.v);
  let low = Math.min(...values);
  let high = Math.max(...values);
  if (target !== null && target !== undefined) { low = Math.min(low, target); high = Math.max(high, target); }
  if (high - low < 1e-9) { high += 1; low -= 1; }
  const y = (v) => (30 - ((v - low) / (high - low)) * 28).toFixed(2);
  const coordinates = points.map((p, i) => `${points.length === 1 ? 100 : ((i / (points.length - 1)) * 100).toFixed(2)},${y(p.v)}`);
  if (points.length === 1) coordinates.unshift(`0,${y(points[0].v)}`);
  if (target !== null && target !== undefined) {
    box.append(svg("line", { class: "spark-target", x1: 0, x2: 100, y1: y(target), y2: y(target),
      "vector-effect": "non-scaling-stroke" }));
  }
  box.append(svg("polyline", { class: "spark-line", points: coordinates.join(" "),
    "vector-effect": "non-scaling-stroke" }));
  return box;
}

function renderTiles(now) {
  const fmt = state.fmt;
  const tiles = tileDefinitions().map((tile) => {
    const figure = tileFigure(tile, now);
    const status = judge(figure.value, figure.target, tile);
    const unit = tile.unit ? `${tile.unit === "%" ? "\u202f" : " "}${tile.unit}` : "";
    const target = figure.target === null || figure.target === undefined ? ""
      : t(tile.better === "higher" ? "targetAtLeast" : "targetAtMost",
        { target: `${fmt.number(figure.target, tile.digits)}${unit}` });
    return el("li", { class: "tile", "data-tile": tile.id, "data-kpi": tile.kpi ?? "env.aqi", "data-status": status },
      el("h3", { class: "tile-title", text: tile.title() }),
      el("p", { class: "tile-value" }, el("span", { class: "number", text: fmt.number(figure.value, tile.digits) }),
        figure.value === null ? "" : el("span", { class: "unit", text: unit })),
      el("p", { class: "tile-status" }, icon(status === "noTarget" ? "none" : status),
        el("span", { text: t(`status.${status}`) }), target ? el("span", { class: "tile-target", text: target }) : null),
      el("p", { class: "tile-note", text: figure.note ?? "" }),
      sparkline(state.history.get(tile.id) ?? [], figure.target));
  });
  $("[data-tiles]").replaceChildren(...tiles);
}

async function loadKpis() {
  const kpis = await api("/kpis");
  state.kpis = new Map(kpis.map((kpi) => [`${kpi.kpi}|${kpi.area}`, kpi]));
  recordHistory();
  scheduleRender();
}

function onKpiEvent(kpi) {
  state.kpis.set(`${kpi.kpi}|${kpi.area}`, kpi);
  recordHistory();
  scheduleRender();
}

async function loadTelemetry() {
  const readings = await api("/telemetry?metric=env.aqi");
  state.aqi = new Map(readings.map((reading) => [reading.area, reading]));
  recordHistory();
  scheduleRender();
}

// --- subsystems ------------------------------------------------------------------------------------

async function loadSources() {
  state.sources = await api("/sources");
  scheduleRender();
}

function renderSources(now) {
  const fmt = state.fmt;
  const rows = state.sources.map((source) => {
    const seen = toDate(source.last_seen);
    const health = !seen ? "unknown" : now.getTime() - seen.getTime() <= SOURCE_QUIET_MS ? "live" : "quiet";
    const facts = [t("lastSeen", { age: fmt.age(seen, now) })];
    if (source.rate !== null && source.rate !== undefined) facts.push(t("rate", { rate: fmt.number(source.rate, 1) }));
    if (source.rejected) facts.push(t("rejected", { count: fmt.number(source.rejected, 0) }));
    return el("li", { class: "source", "data-source": source.source, "data-health": health },
      el("span", { class: "source-name", text: source.source }),
      el("span", { class: "source-health" }, icon(health === "live" ? "ok" : health === "quiet" ? "bad" : "none"),
        el("span", { text: t(`source.${health}`) })),
      el("span", { class: "source-facts", text: facts.join(" · ") }));
  });
  $("[data-sources]").replaceChildren(...rows);
  $("[data-sources-empty]").hidden = rows.length > 0;
}

// --- rendering -------------------------------------------------------------------------------------

function applyTexts() {
  document.documentElement.lang = state.lang;
  for (const node of $$("[data-i18n]")) node.textContent = t(node.dataset.i18n);
  const lang = $("[data-action=lang]");
  lang.textContent = t("otherLanguage");
  lang.setAttribute("aria-label", t("otherLanguageLabel"));
  lang.setAttribute("lang", state.lang === "vi" ? "en" : "vi");
  $("[data-action=login]").textContent = t("login");
  $("[data-action=logout]").textContent = t("logout");
  $("[data-field=comment]").placeholder = t("commentPlaceholder");
  const named = state.map ?? state.areas.get(state.province);
  const province = named ? (state.lang === "en" && named.name_en ? named.name_en : named.name)
    : $("[data-province-name]").textContent;
  $("[data-province-name]").textContent = province;
  document.title = `${t("title")} · ${province}`;
  renderOperator();
  renderConnection();
}

function renderOperator() {
  const named = $("[data-operator-name]");
  named.hidden = !state.token;
  named.textContent = state.token ? t("operator", { name: state.operator ?? "?" }) : "";
  $("[data-action=login]").hidden = Boolean(state.token);
  $("[data-action=logout]").hidden = !state.token;
  document.body.dataset.operator = state.token ? "yes" : "no";
}

function renderConnection() {
  document.body.dataset.state = state.connection;
  $("[data-stale]").hidden = state.connection !== "stale";
  $("[data-conn]").dataset.conn = state.connection;
  $("[data-conn] use").setAttribute("href", state.connection === "live" ? "#i-live" : "#i-stale");
  $("[data-conn-text]").textContent = t(state.connection);
}

function renderClock() {
  const now = new Date();
  const day = state.fmt.clockDate(now);
  // A new day may be a new map (the registry changes by date: mergers take effect at midnight).
  if (state.day && state.day !== day && state.lang === state.dayLang) quietly(loadMap());
  state.day = day;
  state.dayLang = state.lang;
  $("[data-clock-time]").textContent = state.fmt.clockTime(now);
  $("[data-clock-date]").textContent = day;
  $("[data-clock]").setAttribute("datetime", now.toISOString());
}

function render() {
  state.renderTimer = 0;
  const now = new Date();
  const parts = [() => renderTiles(now.getTime()), () => renderAlerts(now), renderAreas, () => renderSources(now),
    paginateAll];
  for (const part of parts) {
    try { part(); } catch (error) { console.error("ioc: render failed", error); } // the others still show
  }
  document.body.dataset.rendered = String(Number(document.body.dataset.rendered ?? 0) + 1);
}

function scheduleRender() {
  if (!state.renderTimer) state.renderTimer = setTimeout(render, 30);
}

// --- the stream ------------------------------------------------------------------------------------

function setConnection(connection) {
  state.connection = connection;
  renderConnection();
}

function quietly(promise) {
  return promise.catch((error) => console.warn("ioc:", error.message));
}

function refreshAll() {
  return Promise.all([loadAlerts(), loadKpis(), loadSilences(), loadSources(), loadTelemetry()].map(quietly));
}

/** Server-Sent Events over fetch(), so that the request can carry `Authorization` (EventSource cannot).
 *  The same events as an EventSource: `open`, one MessageEvent per named event (`alert`, `kpi`, `ping`,
 *  `reset`), `error` once when the stream cannot start or ends (`status` is the HTTP status, 0 without
 *  one). As EventSource does, it follows every `id:` field (also of a frame without data, which
 *  dispatches nothing) in `lastEventId`, and sends the one it started from as `Last-Event-ID`.
 *  No retry of its own: connect() owns reconnecting, with backoff. */
class StreamSource extends EventTarget {
  constructor(url, token, lastEventId = null) {
    super();
    this.status = 0;
    this.closed = false;
    this.lastEventId = lastEventId;
    this.controller = new AbortController();
    this.run(url, token);
  }

  async run(url, token) {
    const headers = { Accept: "text/event-stream" };
    if (token) headers.Authorization = `Bearer ${token}`;
    if (this.lastEventId) headers["Last-Event-ID"] = this.lastEventId;
    try {
      const response = await fetch(url, { headers, cache: "no-store", signal: this.controller.signal });
      this.status = response.status;
      if (!response.ok || !response.body) return;
      this.dispatchEvent(new Event("open"));
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done || this.closed) return;
        buffer += value;
        // Frames end with a blank line; lines may end with \r\n or \r (a lone \r held back: \n may follow).
        const cut = buffer.endsWith("\r") ? buffer.length - 1 : buffer.length;
        const lines = buffer.slice(0, cut).replace(/\r\n?/g, "\n");
        buffer = buffer.slice(cut);
        const frames = lines.split("\n\n");
        buffer = frames.pop() + buffer;
        for (const frame of frames) this.frame(frame);
      }
    } catch {
      // aborted by close(), or the connection broke: the same for the page
    } finally {
      if (!this.closed) this.dispatchEvent(new Event("error"));
    }
  }

  frame(text) {
    let event = "message";
    const data = [];
    for (const line of text.split("\n")) {
      if (!line || line.startsWith(":")) continue; // a comment
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
      else if (field === "id" && !value.includes("\0")) this.lastEventId = value;
    }
    if (this.closed) return;
    this.dispatchEvent(new CustomEvent("position", { detail: this.lastEventId }));
    if (data.length) {
      this.dispatchEvent(new MessageEvent(event, { data: data.join("\n"), lastEventId: this.lastEventId || "" }));
    }
  }

  close() {
    this.closed = true;
    this.controller.abort();
  }
}

function connect() {
  clearTimeout(state.reconnectTimer);
  if (state.stream) state.stream.close();
  const resuming = Boolean(state.lastEventId);
  const stream = new StreamSource(`${API}/stream`, readToken(), state.lastEventId);
  state.stream = stream;
  stream.addEventListener("open", () => {
    state.backoff = 0;
    setConnection("live");
    quietly(loadAreas());
    if (!state.map) quietly(loadMap());
    if (!resuming) {
      refreshAll();
      return;
    }
    // Alerts and KPIs missed meanwhile come first on the stream itself (or a `reset`); the rest polls.
    state.resumes += 1;
    document.body.dataset.streamResumes = String(state.resumes);
    Promise.all([loadSilences(), loadSources(), loadTelemetry()].map(quietly));
  });
  stream.addEventListener("position", (event) => {
    if (state.stream === stream) state.lastEventId = event.detail;
  });
  // What was missed is gone (the daemon restarted, or we were away too long): load everything again.
  stream.addEventListener("reset", () => {
    state.resets += 1;
    document.body.dataset.streamResets = String(state.resets);
    quietly(loadMap()); // a restarted daemon may serve another registry
    refreshAll();
  });
  stream.addEventListener("alert", (event) => onAlertEvent(JSON.parse(event.data)));
  stream.addEventListener("kpi", (event) => onKpiEvent(JSON.parse(event.data)));
  // The server pings every `every` seconds; a stream silent for 3 pings hangs without having closed.
  stream.addEventListener("ping", (event) => {
    const every = Number(JSON.parse(event.data).every) || 15;
    clearTimeout(state.pingTimer);
    state.pingTimer = setTimeout(() => {
      if (state.stream === stream) stream.dispatchEvent(new Event("error"));
    }, every * 3000);
  });
  stream.addEventListener("error", () => {
    if (state.stream !== stream) return;
    clearTimeout(state.pingTimer);
    stream.close();
    state.stream = null;
    if (stream.status === 401) { // reads are closed: the stream starts again once a token is given
      askViewerToken();
      return;
    }
    setConnection("stale");
    const ceiling = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** state.backoff);
    state.backoff = Math.min(state.backoff + 1, 16);
    state.reconnectTimer = setTimeout(connect, ceiling / 2 + Math.random() * (ceiling / 2));
  });
}

// --- viewers (closed reads) ------------------------------------------------------------------------

/** Reads need a token: stop the stream, show the locked state and the token entry (once). */
function askViewerToken() {
  if (state.viewerToken) { // kept from earlier, and no longer good
    state.viewerToken = null;
    sessionStorage.removeItem(VIEWER_KEY);
  }
  clearTimeout(state.reconnectTimer);
  clearTimeout(state.pingTimer);
  if (state.stream) {
    state.stream.close();
    state.stream = null;
  }
  setConnection("locked");
  const dialog = $("[data-viewer-dialog]");
  if (dialog.open) return;
  $("[data-viewer-error]").hidden = true;
  $("[data-action=viewer-token]").value = "";
  closeDialogs();
  dialog.showModal();
  $("[data-action=viewer-token]").focus();
}

async function submitViewerToken(event) {
  event.preventDefault();
  const token = $("[data-action=viewer-token]").value.trim();
  const error = $("[data-viewer-error]");
  if (!token) return;
  try {
    await api("/areas", { token }); // any read tells whether the token may read
  } catch (failure) {
    error.textContent = failure.status === 401 ? t("tokenInvalid") : t("requestFailed", { error: failure.message });
    error.hidden = false;
    return;
  }
  state.viewerToken = token;
  sessionStorage.setItem(VIEWER_KEY, token);
  $("[data-viewer-dialog]").close();
  setConnection("connecting");
  quietly(loadAreas());
  quietly(loadMap());
  refreshAll();
  connect();
}

// --- operators -------------------------------------------------------------------------------------

function closeDialogs() {
  for (const dialog of $$("dialog[open]")) dialog.close();
}

function openLogin() {
  const dialog = $("[data-login-dialog]");
  $("[data-login-error]").hidden = true;
  $("[data-action=token]").value = "";
  dialog.showModal();
  $("[data-action=token]").focus();
}

async function submitLogin(event) {
  event.preventDefault();
  const token = $("[data-action=token]").value.trim();
  const error = $("[data-login-error]");
  if (!token) return;
  try {
    const who = await api("/whoami", { auth: true, token });
    state.token = token;
    state.operator = who.name;
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(NAME_KEY, who.name);
    $("[data-login-dialog]").close();
    toast(t("loggedIn", { name: who.name }));
    renderOperator();
    scheduleRender();
  } catch (failure) {
    error.textContent = failure.status === 401 ? t("tokenInvalid")
      : failure.status === 403 ? t("tokenNotOperator") : t("requestFailed", { error: failure.message });
    error.hidden = false;
  }
}

function logout(announce = true) {
  state.token = null;
  state.operator = null;
  sessionStorage.removeItem(TOKEN_KEY);
  sessionStorage.removeItem(NAME_KEY);
  renderOperator();
  scheduleRender();
  if (announce) toast(t("loggedOut"));
}

async function acknowledge(alert, action) {
  try {
    const updated = await api(`/alerts/${encodeURIComponent(alert.id)}/${action}`, { method: "POST", auth: true });
    onAlertEvent(updated);
    toast(t(action === "ack" ? "acked" : "unacked"));
  } catch (error) {
    actionFailed(error);
  }
}

/** The matchers of a silence for exactly this alert: its rule and each of its labels. */
function silenceMatchers(alert) {
  const labels = { rule: alert.rule, ...alert.labels };
  return Object.entries(labels).map(([name, value]) => ({ name, value: String(value), op: "=" }));
}

function openSilence(alert) {
  state.silenceTarget = alert;
  $("[data-silence-summary]").textContent = summaryOf(alert).text;
  $("[data-silence-matchers]").replaceChildren(...silenceMatchers(alert).map((m) => el("li", {},
    el("code", { text: `${m.name} ${m.op} "${m.value}"` }),
    m.name === "area" && state.areas.has(m.value) ? ` (${areaName(m.value)})` : "")));
  const select = $("[data-field=duration]");
  select.replaceChildren(...DURATIONS.map((d) => el("option", { value: d, selected: d === DEFAULT_DURATION,
    text: t(`duration.${d}`) })));
  $("[data-field=comment]").value = "";
  $("[data-silence-error]").hidden = true;
  $("[data-silence-dialog]").showModal();
  $("[data-field=comment]").focus();
}

async function submitSilence(event) {
  event.preventDefault();
  const alert = state.silenceTarget;
  if (!alert) return;
  const comment = $("[data-field=comment]").value.trim();
  const duration = $("[data-field=duration]").value;
  const error = $("[data-silence-error]");
  try {
    const created = await api("/silences", { method: "POST", auth: true,
      body: { matchers: silenceMatchers(alert), duration, comment } });
    const silence = await api(`/silences/${encodeURIComponent(created.id)}`);
    $("[data-silence-dialog]").close();
    state.silenceTarget = null;
    toast(t("silenced", { end: state.fmt.when(toDate(silence.ends_at)) }));
    quietly(loadSilences());
  } catch (failure) {
    if (failure.status === 401 || failure.status === 403) {
      $("[data-silence-dialog]").close();
      actionFailed(failure);
      return;
    }
    error.textContent = t("requestFailed", { error: failure.message });
    error.hidden = false;
  }
}

function onClick(event) {
  const control = event.target.closest("[data-action]");
  if (!control) return;
  const action = control.dataset.action;
  if (action === "lang") {
    state.lang = state.lang === "vi" ? "en" : "vi";
    state.fmt = makeFormatter(state.lang);
    const url = new URL(location.href);
    if (state.lang === "vi") url.searchParams.delete("lang"); else url.searchParams.set("lang", state.lang);
    history.replaceState(null, "", url);
    applyTexts();
    render();
  } else if (action === "login") {
    openLogin();
  } else if (action === "logout") {
    logout();
  } else if (action === "cancel") {
    closeDialogs();
  } else if (action === "ack" || action === "unack" || action === "silence") {
    const fingerprint = control.closest("[data-fingerprint]")?.dataset.fingerprint;
    const alert = state.alerts.get(fingerprint);
    if (!alert) return;
    if (!state.token) { toast(t("needLogin"), "error"); return; }
    if (action === "silence") openSilence(alert); else acknowledge(alert, action);
  }
}

// --- start -----------------------------------------------------------------------------------------

function start() {
  if (new URLSearchParams(location.search).get("theme") === "light") document.documentElement.dataset.theme = "light";
  document.addEventListener("click", onClick);
  $("[data-login-form]").addEventListener("submit", submitLogin);
  $("[data-silence-form]").addEventListener("submit", submitSilence);
  $("[data-viewer-form]").addEventListener("submit", submitViewerToken);
  // The page shows nothing without a token: Escape must not close the entry.
  $("[data-viewer-dialog]").addEventListener("cancel", (event) => event.preventDefault());
  applyTexts();
  renderClock();
  setInterval(renderClock, 1000);
  setInterval(() => quietly(loadSources()), SOURCES_EVERY_MS);
  setInterval(() => quietly(loadTelemetry()), TELEMETRY_EVERY_MS);
  setInterval(() => { recordHistory(); scheduleRender(); }, AGES_EVERY_MS); // ages, stale readings
  if (state.token) { // a token kept from earlier in this session: still good?
    api("/whoami", { auth: true }).then((who) => { state.operator = who.name; renderOperator(); })
      .catch((error) => { if (error.status === 401 || error.status === 403) logout(false); });
  }
  setInterval(turnPages, PAGE_MS);
  // A new size (another wall, a window resized): the labels and the pages are fitted again.
  new ResizeObserver(() => scheduleRender()).observe($("[data-map-box]"));
  quietly(loadAreas());
  quietly(loadMap());
  refreshAll();
  connect();
  render();
}

start();
