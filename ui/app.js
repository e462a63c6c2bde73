// The dashboard's script: reads the admin API of the listener that served it (state, stats,
// audit, the event stream) and draws it; with a token, sends changes through the same API.
// No framework and no build step: the binary embeds this file as it is.
"use strict";

const TOKEN_KEY = "switchyard-admin-token";
// The charts show this much history (one point a second).
const HISTORY_SECONDS = 15 * 60;
// The req/s figure is the mean of the last few points, steadier than one second's count.
const RPS_AVERAGE_POINTS = 5;
// Health and inflight change without a change event: the service state is re-read this often.
const REFRESH_MS = 5000;
const AUDIT_ROWS = 25;
const API_READ_TIMEOUT_MS = 15000;
const EVENTS_RETRY_MS = 10000;

const view = {
  services: new Map(), // name → service state (GET /admin/services/{svc})
  series: new Map(), // "svc/pool" → [{t (ms), rps, error_ratio, p50_ms, p99_ms, inflight}]
  cards: new Map(), // name → the card's elements
  auditKeys: new Set(), // the keys of the audit rows shown, and only those: a long-lived tab keeps it small
  token: sessionStorage.getItem(TOKEN_KEY) || "",
};

// === small helpers ===

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return e;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs) {
  const e = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  return e;
}

function fmtRate(v) {
  return v === null || v === undefined ? "–" : v.toFixed(1);
}
function fmtRatio(v) {
  return v === null || v === undefined ? "–" : (v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1) + "%";
}
function fmtMs(v) {
  return v === null || v === undefined ? "–" : (v < 10 ? v.toFixed(2) : v.toFixed(0)) + " ms";
}
function fmtTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleTimeString();
}
function fmtSeconds(s) {
  s = Math.max(0, Math.round(s));
  return s >= 60 ? `${Math.floor(s / 60)} min ${s % 60} s` : `${s} s`;
}

function poolColor(i) {
  return `var(--pool-${Math.min(i, 4)})`;
}

function showPageError(text) {
  const b = document.getElementById("page-error");
  b.textContent = text;
  b.hidden = false;
}

window.addEventListener("error", (e) => showPageError(`The page hit an error: ${e.message}`));
window.addEventListener("unhandledrejection", (e) =>
  showPageError(`The page hit an error: ${e.reason && e.reason.message ? e.reason.message : e.reason}`),
);

// === the admin API ===

async function api(method, path, body, generation) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && view.token) headers["Authorization"] = `Bearer ${view.token}`;
  if (generation !== undefined) headers["If-Match"] = String(generation);
  let resp;
  try {
    resp = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      // A read that hangs would stall the refresh loop; a change is left to finish.
      signal: method === "GET" ? AbortSignal.timeout(API_READ_TIMEOUT_MS) : undefined,
    });
  } catch (e) {
    return { status: 0, json: { error: `the admin listener did not answer (${e.message})` } };
  }
  let json = null;
  try {
    json = await resp.json();
  } catch (_) {
    json = { error: `answer ${resp.status} was not JSON` };
  }
  return { status: resp.status, json };
}

async function fetchService(name) {
  const r = await api("GET", `/admin/services/${encodeURIComponent(name)}`);
  if (r.status === 200) {
    view.services.set(name, r.json);
    return r.json;
  }
  return null;
}

// === the token ===

function applyToken() {
  const on = view.token !== "";
  document.body.classList.toggle("readonly", !on);
  document.getElementById("mode").textContent = on ? "changes enabled" : "read-only";
  document.getElementById("token").value = "";
  document.getElementById("token").placeholder = on ? "token set" : "admin token";
}

function setupToken() {
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const t = document.getElementById("token").value.trim();
    if (!t) return;
    view.token = t;
    // The tab only: closing it forgets the token.
    sessionStorage.setItem(TOKEN_KEY, t);
    applyToken();
  });
  document.getElementById("token-forget").addEventListener("click", () => {
    view.token = "";
    sessionStorage.removeItem(TOKEN_KEY);
    applyToken();
  });
  applyToken();
}

// === changes ===

// How long a success note stays; a refusal stays until the next action.
const INFO_MS = 10000;

function message(name, kind, text) {
  const card = view.cards.get(name);
  if (!card) return;
  clearTimeout(card.msgTimer);
  card.msg.className = `msg ${kind}`;
  card.msg.textContent = text;
  if (kind === "info" && text !== "sending…") {
    card.msgTimer = setTimeout(() => {
      card.msg.textContent = "";
    }, INFO_MS);
  }
}

// Sends one change with If-Match set to the generation on screen; explains a refusal.
async function change(name, method, path, body, done, base) {
  const shown = view.services.get(name);
  const generation = base !== undefined ? base : shown ? shown.generation : undefined;
  message(name, "info", "sending…");
  const r = await api(method, path, body, generation);
  if (r.status === 200) {
    view.services.set(name, r.json);
    const card = view.cards.get(name);
    if (card) card.dirty = false;
    updateService(name, true);
    message(name, "info", done(r.json));
    return;
  }
  if (r.status === 412) {
    const now = await fetchService(name);
    const card = view.cards.get(name);
    if (card) card.dirty = false;
    updateService(name, true);
    const live = now ? now.generation : "?";
    message(
      name,
      "error",
      `Someone else changed this service first (generation ${generation}→${live}); the view is refreshed, check and retry.`,
    );
    return;
  }
  if (r.status === 401) {
    message(name, "error", "The admin token was refused: enter the right one and retry.");
    return;
  }
  const why = r.json && r.json.error ? r.json.error : `answer ${r.status}`;
  message(name, "error", `Refused (${r.status}): ${why}`);
}

function setWeights(name) {
  const card = view.cards.get(name);
  const body = {};
  for (const input of card.weightInputs) {
    const v = Number(input.value);
    if (!Number.isInteger(v) || v < 0) {
      message(name, "error", `The weight of ${input.dataset.pool} must be a whole number of 0 or more.`);
      return;
    }
    body[input.dataset.pool] = v;
  }
  const path = `/admin/services/${encodeURIComponent(name)}/weights`;
  const base = card.dirty ? card.editedAt : undefined;
  change(name, "PUT", path, body, (s) => `Weights set: ${describeWeights(s.weights)} (generation ${s.generation}).`, base);
}

function describeWeights(w) {
  return Object.entries(w || {})
    .map(([p, v]) => `${p}=${v}`)
    .join(", ");
}

function swap(name) {
  const force = view.cards.get(name).force.checked;
  const path = `/admin/services/${encodeURIComponent(name)}/swap${force ? "?force=true" : ""}`;
  change(name, "POST", path, undefined, (s) =>
    force
      ? `Swapped without checks: ${s.active} is active.`
      : `Prepromotion checks passed; ${s.active} is active.`,
  );
}

function rollback(name) {
  const path = `/admin/services/${encodeURIComponent(name)}/rollback`;
  change(name, "POST", path, undefined, (s) => `Rolled back (generation ${s.generation}).`);
}

function drain(name, pool, address, on) {
  const path = `/admin/services/${encodeURIComponent(name)}/pools/${encodeURIComponent(pool)}/endpoints/${encodeURIComponent(address)}/${on ? "drain" : "undrain"}`;
  change(name, "POST", path, undefined, () => `${address} ${on ? "is draining" : "is back in rotation"}.`);
}

function rolloutAction(name, action) {
  const path = `/admin/services/${encodeURIComponent(name)}/rollout/${action}`;
  change(name, "POST", path, undefined, (s) => `Rollout ${action}: now ${s.rollout ? s.rollout.state : "?"}.`);
}

// === one service's card ===

function buildCard(name) {
  const title = el("h2", { text: name });
  const strategy = el("span", { class: "strategy" });
  const gen = el("span", { class: "muted" });
  const split = el("div", { class: "split", "data-split": name });
  const legend = el("div", { class: "split-legend" });
  const msg = el("div", { class: "msg", "data-msg": name, role: "status" });
  const controls = el("div", { class: "controls control" });
  const pools = el("div", { class: "pools" });
  const rollout = el("div", { class: "rollout", hidden: true });
  const root = el(
    "section",
    { class: "card service", "data-service": name },
    el("div", { class: "service-head" }, title, strategy, gen),
    split,
    legend,
    controls,
    msg,
    pools,
    rollout,
  );
  const card = { root, strategy, gen, split, legend, msg, controls, pools, rollout, poolNames: "", dirty: false };
  card.poolEls = new Map();
  view.cards.set(name, card);
  document.getElementById("services").append(root);
  return card;
}

function poolOrder(s) {
  return Object.keys(s.pools || {});
}

function shares(s) {
  const names = poolOrder(s);
  if (s.weights) {
    const total = Object.values(s.weights).reduce((a, b) => a + b, 0) || 1;
    return names.map((p) => [p, (s.weights[p] || 0) / total, s.weights[p] || 0]);
  }
  return names.map((p) => [p, p === s.active ? 1 : 0, null]);
}

// `rebuild`: redraw the controls even if the operator is on them (after their own change).
function updateService(name, rebuild) {
  const s = view.services.get(name);
  if (!s) return;
  const card = view.cards.get(name) || buildCard(name);
  card.strategy.textContent = s.strategy;
  card.gen.textContent = `generation ${s.generation}${s.persisted ? "" : " · not persisted"}`;

  // The split bar and its legend.
  card.split.replaceChildren();
  const legend = [];
  shares(s).forEach(([pool, share, weight], i) => {
    if (share > 0) {
      card.split.append(
        el(
          "div",
          { style: null, "data-pool": pool, title: `${pool}: ${(share * 100).toFixed(1)}%` },
          `${pool} ${(share * 100).toFixed(0)}%`,
        ),
      );
      const seg = card.split.lastChild;
      seg.style.width = `${share * 100}%`;
      seg.style.background = poolColor(i);
    }
    legend.push(weight === null ? `${pool}${pool === s.active ? " (active)" : " (standby)"}` : `${pool} ${weight}`);
  });
  card.legend.textContent = s.weights ? `weights: ${legend.join(" · ")}` : legend.join(" · ");

  // Not while the operator is using them (a rebuilt input would lose what was typed).
  if (rebuild || (!card.dirty && !card.controls.contains(document.activeElement))) buildControls(name, s, card);
  updatePools(name, s, card);
  updateRollout(name, s, card);
}

function buildControls(name, s, card) {
  card.controls.replaceChildren();
  card.weightInputs = [];
  if (s.weights) {
    for (const pool of Object.keys(s.weights)) {
      const input = el("input", {
        type: "number",
        min: 0,
        step: 1,
        value: s.weights[pool],
        "data-weight": `${name}/${pool}`,
        "data-pool": pool,
        oninput: () => {
          // The edit was made on what the page showed then: that generation goes in If-Match,
          // so a change someone made meanwhile is refused rather than overwritten.
          if (!card.dirty) card.editedAt = view.services.get(name).generation;
          card.dirty = true;
        },
      });
      card.weightInputs.push(input);
      card.controls.append(el("label", {}, pool, input));
    }
    card.controls.append(
      el("button", { type: "button", "data-action": "set-weights", "data-service": name, onclick: () => setWeights(name) }, "Set weights"),
    );
  }
  if (s.strategy === "blue-green") {
    card.force = el("input", { type: "checkbox", "data-force": name });
    card.controls.append(
      el(
        "button",
        { type: "button", "data-action": "swap", "data-service": name, onclick: () => swap(name) },
        `Swap to ${s.standby || "standby"}`,
      ),
      el("label", { title: "skip the prepromotion checks" }, card.force, "skip checks"),
    );
  }
  card.controls.append(
    el("button", { type: "button", "data-action": "rollback", "data-service": name, onclick: () => rollback(name) }, "Roll back"),
  );
}

function buildPool(name, pool, i) {
  const figure = (kind, label, cls) => {
    const value = el("span", { class: "value", [`data-${kind}`]: `${name}/${pool}` }, "–");
    const line = svg("polyline", { points: "" });
    const chart = svg("svg", { viewBox: `0 0 ${HISTORY_SECONDS} 100`, preserveAspectRatio: "none", role: "img", "aria-label": `${label} of ${pool}` });
    chart.append(line);
    return { root: el("div", { class: `figure ${cls}` }, value, el("div", { class: "label", text: label }), chart), value, line };
  };
  const rps = figure("rps", "req/s (last 5 s)", "rate");
  const errors = figure("errors", "5xx ratio", "errors");
  const p99 = figure("p99", "p99 latency", "latency");
  const swatch = el("span", { class: "swatch" });
  swatch.style.background = poolColor(i);
  const endpoints = el("tbody");
  const root = el(
    "div",
    { class: "pool", "data-service": name, "data-pool": pool },
    el("div", { class: "pool-head" }, swatch, el("h3", { text: pool })),
    el("div", { class: "figures" }, rps.root, errors.root, p99.root),
    el(
      "table",
      {},
      el("thead", {}, el("tr", {}, el("th", { text: "endpoint" }), el("th", { text: "health" }), el("th", { class: "num", text: "inflight" }), el("th", {}))),
      endpoints,
    ),
  );
  return { root, rps, errors, p99, endpoints };
}

function updatePools(name, s, card) {
  const names = poolOrder(s);
  if (card.poolNames !== names.join("\n")) {
    card.poolNames = names.join("\n");
    card.pools.replaceChildren();
    card.poolEls = new Map();
    names.forEach((pool, i) => {
      const p = buildPool(name, pool, i);
      card.poolEls.set(pool, p);
      card.pools.append(p.root);
    });
  }
  for (const pool of names) {
    const p = card.poolEls.get(pool);
    p.endpoints.replaceChildren();
    for (const ep of s.pools[pool].endpoints) {
      const health = ep.draining
        ? el("span", { class: "draining", text: "draining" })
        : ep.healthy
          ? el("span", { class: "healthy", text: "healthy" })
          : el("span", { class: "unhealthy", text: ep.ejected_until ? `ejected until ${fmtTime(ep.ejected_until)}` : "unhealthy" });
      const button = el(
        "button",
        {
          type: "button",
          class: "control",
          "data-drain": `${name}/${pool}/${ep.address}`,
          onclick: () => drain(name, pool, ep.address, !ep.draining),
        },
        ep.draining ? "Undrain" : "Drain",
      );
      p.endpoints.append(
        el("tr", { "data-endpoint": ep.address }, el("td", { text: ep.address }), el("td", {}, health), el("td", { class: "num", text: ep.inflight }), el("td", {}, button)),
      );
    }
    drawPool(name, pool);
  }
}

// The x axis spans the points there are (a minute at least, 15 minutes at most), so a page
// opened on a young process still draws a readable line.
function drawChart(fig, points, pick) {
  const now = Date.now();
  const oldest = points.length ? points[0].t : now;
  const span = Math.min(HISTORY_SECONDS, Math.max(60, (now - oldest) / 1000));
  let max = 0;
  for (const pt of points) {
    const v = pick(pt);
    if (v !== null && v !== undefined && v > max) max = v;
  }
  max = max > 0 ? max * 1.1 : 1;
  const coords = [];
  for (const pt of points) {
    const v = pick(pt);
    if (v === null || v === undefined) continue;
    const x = HISTORY_SECONDS - ((now - pt.t) / 1000 / span) * HISTORY_SECONDS;
    if (x < 0) continue;
    coords.push(`${x.toFixed(1)},${(100 - (v / max) * 96).toFixed(1)}`);
  }
  fig.line.setAttribute("points", coords.join(" "));
}

function drawPool(name, pool) {
  const card = view.cards.get(name);
  const p = card && card.poolEls.get(pool);
  if (!p) return;
  const points = view.series.get(`${name}/${pool}`) || [];
  const recent = points.slice(-RPS_AVERAGE_POINTS);
  const rps = recent.length ? recent.reduce((a, pt) => a + pt.rps, 0) / recent.length : null;
  const last = points.length ? points[points.length - 1] : null;
  p.rps.value.textContent = fmtRate(rps);
  p.rps.value.dataset.value = rps === null ? "" : String(rps);
  p.errors.value.textContent = fmtRatio(last ? last.error_ratio : null);
  p.p99.value.textContent = fmtMs(last ? last.p99_ms : null);
  drawChart(p.rps, points, (pt) => pt.rps);
  drawChart(p.errors, points, (pt) => pt.error_ratio);
  drawChart(p.p99, points, (pt) => pt.p99_ms);
}

// === the rollout ===

function stepClass(r, i) {
  if (r.state === "promoted") return "passed";
  let verdict = null;
  for (const h of r.history || []) if (h.step === i) verdict = h.outcome;
  if (i === r.step && r.state === "aborted") return "aborted";
  if (i === r.step && (r.state === "progressing" || r.state === "paused")) return verdict === "inconclusive" ? "current inconclusive" : "current";
  return verdict || "pending";
}

// Canary requests since the current step's window opened, from the per-second points.
function canaryRequestsSince(name, r) {
  const since = Date.parse(r.since);
  if (isNaN(since)) return null;
  const points = view.series.get(`${name}/${r.canary}`) || [];
  let n = 0;
  for (const pt of points) if (pt.t > since) n += pt.rps;
  return Math.round(n);
}

function figureCell(side, key, fmt) {
  return side ? fmt(side[key]) : "–";
}

function updateRollout(name, s, card) {
  const r = s.rollout;
  card.rollout.hidden = !r;
  if (!r) return;
  card.rollout.replaceChildren();
  const actions = {
    start: ["idle", "aborted", "promoted"],
    pause: ["progressing"],
    resume: ["paused"],
    promote: ["idle", "progressing", "paused", "aborted"],
    abort: ["progressing", "paused"],
  };
  const buttons = el("span", { class: "controls control" });
  for (const [action, states] of Object.entries(actions)) {
    buttons.append(
      el(
        "button",
        {
          type: "button",
          class: action === "abort" ? "danger" : null,
          "data-rollout": action,
          "data-service": name,
          disabled: !states.includes(r.state),
          onclick: () => rolloutAction(name, action),
        },
        action[0].toUpperCase() + action.slice(1),
      ),
    );
  }
  const steps = r.steps || [];
  card.rollout.append(
    el(
      "div",
      { class: "rollout-head" },
      el("h3", { text: "Rollout" }),
      el("strong", { class: `state-${r.state}`, "data-rollout-state": name, text: r.state }),
      el("span", { text: `${r.canary} at ${r.weight}% · step ${Math.min(r.step + 1, steps.length)} of ${steps.length}` }),
      el("span", { class: "muted", text: `since ${fmtTime(r.since)}` }),
      buttons,
    ),
  );
  if (r.reason) card.rollout.append(el("div", { class: "muted", text: `reason: ${r.reason}` }));
  if (r.waiting_for) card.rollout.append(el("div", { class: "muted", text: `waiting for ${r.waiting_for}` }));
  const gates = gateRows(name, r);
  if (gates.length) {
    card.rollout.append(
      el(
        "table",
        { class: "gates" },
        el("thead", {}, el("tr", {}, ...["gate", "state", "value / last call", "bound", "failures in a row", "detail"].map((t) => el("th", { text: t })))),
        el("tbody", {}, ...gates),
      ),
    );
  }

  const timeline = el("div", { class: "steps" });
  steps.forEach((w, i) => {
    timeline.append(el("div", { class: `step ${stepClass(r, i)}`, "data-step": i }, el("div", { class: "w", text: `${w}%` }), el("div", { text: stepClass(r, i).replace("current ", "") })));
  });
  card.rollout.append(timeline);

  card.progress = null;
  if (r.state === "progressing" || r.state === "paused") {
    const dwellBar = el("div");
    const dwellText = el("span", { class: "num" });
    const reqBar = el("div");
    const reqText = el("span", { class: "num", "data-canary-requests": name });
    card.rollout.append(
      el("div", { class: "progress" }, el("span", { text: `dwell (interval ${fmtSeconds(r.interval_s)})` }), el("div", { class: "bar" }, dwellBar), dwellText),
      el("div", { class: "progress" }, el("span", { text: `canary requests (min ${r.min_requests})` }), el("div", { class: "bar" }, reqBar), reqText),
    );
    card.progress = { r, dwellBar, dwellText, reqBar, reqText };
    updateProgress(name);
  }

  const history = (r.history || []).slice().reverse();
  if (history.length) {
    const rows = history.map((h) =>
      el(
        "tr",
        {},
        el("td", { text: `${h.step + 1} (${h.weight}%)` }),
        el("td", { class: h.outcome === "passed" ? "healthy" : "unhealthy", text: h.outcome }),
        el("td", { class: "num", text: h.canary_requests }),
        el("td", { class: "num", text: `${figureCell(h.canary, "error_rate", fmtRatio)} / ${figureCell(h.baseline, "error_rate", fmtRatio)}` }),
        el("td", { class: "num", text: `${figureCell(h.canary, "p99_ms", fmtMs)} / ${figureCell(h.baseline, "p99_ms", fmtMs)}` }),
        el("td", { text: fmtTime(h.at) }),
        el("td", { class: "muted", text: h.detail || "" }),
      ),
    );
    card.rollout.append(
      el(
        "table",
        { class: "judgements" },
        el(
          "thead",
          {},
          el("tr", {}, ...["step", "verdict", "canary req", "5xx canary / baseline", "p99 canary / baseline", "judged", "detail"].map((t) => el("th", { text: t }))),
        ),
        el("tbody", {}, ...rows),
      ),
    );
  }
}

// One row per Prometheus check (state, last value, bound, failures in a row) and per webhook
// (its moment, last call and outcome).
function gateRows(name, r) {
  const bound = (c) => [c.min != null ? `≥ ${c.min}` : null, c.max != null ? `≤ ${c.max}` : null].filter(Boolean).join(", ");
  const checks = (r.checks || []).map((c) =>
    el(
      "tr",
      { "data-check": `${name}/${c.name}` },
      el("td", { text: `check ${c.name}` }),
      el("td", { class: c.state === "ok" ? "healthy" : c.state === "pending" ? "muted" : "unhealthy", text: c.state }),
      el("td", { class: "num", text: c.value == null ? "–" : String(c.value) }),
      el("td", { text: bound(c) }),
      el("td", { class: "num", text: `${c.failures_in_row} of ${c.failures}` }),
      el("td", { class: "muted", text: c.detail || "" }),
    ),
  );
  const hooks = (r.hooks || []).map((h) =>
    el(
      "tr",
      { "data-hook": `${name}/${h.name}` },
      el("td", { text: `hook ${h.name} (${h.on})` }),
      el("td", { class: h.outcome == null ? "muted" : h.outcome === "ok" ? "healthy" : "unhealthy", text: h.outcome || "not called" }),
      el("td", { text: h.last_call ? fmtTime(h.last_call) : "–" }),
      el("td", { text: "" }),
      el("td", { class: "num", text: h.on === "step" || h.on === "confirm-promotion" ? String(h.failures_in_row) : "" }),
      el("td", { class: "muted", text: h.detail || "" }),
    ),
  );
  return checks.concat(hooks);
}

function updateProgress(name) {
  const card = view.cards.get(name);
  const p = card && card.progress;
  if (!p) return;
  const since = Date.parse(p.r.since);
  const dwell = isNaN(since) ? 0 : (Date.now() - since) / 1000;
  const interval = p.r.interval_s || 1;
  p.dwellBar.style.width = `${Math.min(100, (dwell / interval) * 100)}%`;
  p.dwellText.textContent = `${fmtSeconds(dwell)} / ${fmtSeconds(interval)}`;
  const n = canaryRequestsSince(name, p.r);
  const min = p.r.min_requests || 1;
  p.reqBar.style.width = `${Math.min(100, ((n || 0) / min) * 100)}%`;
  p.reqText.textContent = n === null ? "–" : `≈ ${n} / ${min}`;
}

// === the audit list ===

// Who made a change, in words: an admin call names its client, a fleet change its replica.
function auditWho(e) {
  switch (e.actor) {
    case "admin":
      return e.caller ? `admin (${e.caller})` : "admin";
    case "fleet":
      return e.replica ? `fleet (${e.replica})` : "fleet";
    case "file":
      return "config file";
    case "rollout":
      return "rollout";
    default:
      return e.actor || "–";
  }
}

// The touched fields of one side of a change (`before` or `after`): weights, active pool,
// drains, rollout position; several services as "name: fields".
function auditFields(side) {
  if (!side || typeof side !== "object") return "–";
  const one = (f) => {
    const parts = [];
    if (f.weights) {
      parts.push(Object.entries(f.weights).map(([p, w]) => `${p}=${w}`).join(","));
    }
    if (f.active) parts.push(`active=${f.active}`);
    if (f.drained) parts.push(`drained=[${f.drained.join(", ")}]`);
    if (f.rollout) parts.push(`rollout ${f.rollout.state} step ${f.rollout.step}`);
    return parts.join(" ");
  };
  const text = side.services
    ? Object.entries(side.services).map(([n, f]) => `${n}: ${one(f)}`).join("; ")
    : one(side);
  return text || "–";
}

function auditKey(e) {
  return `${e.at}|${e.call}|${e.generation}`;
}

function addAudit(entries, atTop) {
  const tbody = document.querySelector("#audit tbody");
  const rows = [];
  for (const e of entries) {
    const key = auditKey(e);
    if (view.auditKeys.has(key)) continue;
    view.auditKeys.add(key);
    rows.push(
      el(
        "tr",
        { "data-call": e.call, "data-key": key },
        el("td", { text: fmtTime(e.at), title: e.at }),
        el("td", { class: "who", "data-actor": e.actor, text: auditWho(e) }),
        el("td", { text: e.call }),
        el("td", { text: `${auditFields(e.before)} → ${auditFields(e.after)}` }),
        el("td", { class: "num", text: e.generation }),
      ),
    );
  }
  if (atTop) tbody.prepend(...rows);
  else tbody.append(...rows);
  while (tbody.rows.length > AUDIT_ROWS) {
    const gone = tbody.lastChild;
    view.auditKeys.delete(gone.dataset.key);
    gone.remove();
  }
}

// === the live feed ===

function addPoint(key, pt) {
  const t = Date.parse(pt.t);
  let points = view.series.get(key);
  if (!points) {
    points = [];
    view.series.set(key, points);
  }
  if (points.length && points[points.length - 1].t >= t) return;
  points.push({ ...pt, t });
  const from = Date.now() - HISTORY_SECONDS * 1000;
  while (points.length && points[0].t < from) points.shift();
}

function onStats(data) {
  for (const [svc, s] of Object.entries(data.services || {})) {
    for (const [pool, pt] of Object.entries(s.pools || {})) {
      addPoint(`${svc}/${pool}`, pt);
      drawPool(svc, pool);
    }
    updateProgress(svc);
  }
}

function onChange(data) {
  view.services.set(data.service, data.state);
  updateService(data.service);
  if (data.audit) addAudit([data.audit], true);
  document.getElementById("generation").textContent = `generation ${data.state.generation}`;
}

function openEvents() {
  const live = document.getElementById("live");
  const source = new EventSource("/admin/events");
  source.addEventListener("open", () => {
    live.textContent = "live";
    live.className = "badge on";
  });
  source.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.className = "badge off";
    // EventSource reconnects by itself after a dropped stream, but gives up on an answer
    // that is not a stream (a 503 when too many are open): then try again later.
    if (source.readyState === EventSource.CLOSED) setTimeout(openEvents, EVENTS_RETRY_MS);
  });
  source.addEventListener("stats", (e) => onStats(JSON.parse(e.data)));
  source.addEventListener("change", (e) => onChange(JSON.parse(e.data)));
}

// === start ===

async function refreshAll() {
  const status = await api("GET", "/admin/status");
  if (status.status !== 200) {
    showPageError(`GET /admin/status answered ${status.status}`);
    return;
  }
  document.getElementById("generation").textContent = `generation ${status.json.generation}`;
  const names = Object.keys(status.json.services || {});
  for (const [name, card] of view.cards) {
    if (!names.includes(name)) {
      card.root.remove();
      view.cards.delete(name);
      view.services.delete(name);
    }
  }
  for (const name of names) {
    if (await fetchService(name)) updateService(name);
  }
}

async function start() {
  setupToken();
  await refreshAll();
  const stats = await api("GET", "/admin/stats?window=15m");
  if (stats.status === 200) {
    for (const [svc, s] of Object.entries(stats.json.services || {})) {
      for (const [pool, points] of Object.entries(s.pools || {})) {
        for (const pt of points) addPoint(`${svc}/${pool}`, pt);
        drawPool(svc, pool);
      }
      updateProgress(svc);
    }
  }
  const audit = await api("GET", `/admin/audit?limit=${AUDIT_ROWS}`);
  if (audit.status === 200) addAudit(audit.json, false);
  openEvents();
  setTimeout(refreshLoop, REFRESH_MS);
}

// The next refresh is scheduled when this one is done, so that a slow admin API gets one
// refresh at a time rather than a new one every REFRESH_MS piling up.
async function refreshLoop() {
  try {
    await refreshAll();
  } finally {
    setTimeout(refreshLoop, REFRESH_MS);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  start();
});
