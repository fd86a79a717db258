// otwatch dashboard: one page, routed by the URL's hash, over /api.
// Everything the server sends is put into the page as text, never as HTML.
"use strict";

const SEVERITIES = ["low", "medium", "high", "critical"];
const STATES = ["open", "acked", "resolved", "suppressed"];
const DETECTORS = ["cycle", "sample", "discrete", "process", "cadence", "sequence", "access"];
const state = { me: null, live: null, alerts: [], route: "" };
const main = () => document.getElementById("main");

// ---------------------------------------------------------------- helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function show(...nodes) {
  main().replaceChildren(...nodes);
}

function fmtTime(v) {
  if (v === null || v === undefined) return "";
  const d = typeof v === "number" ? new Date(v) : new Date(v);
  return isNaN(d) ? String(v) : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
}

function fmtNum(x) {
  if (x === null || x === undefined) return "";
  if (!Number.isFinite(x)) return String(x);
  return Math.abs(x) >= 1000 || Number.isInteger(x) ? x.toLocaleString("en") : x.toPrecision(4);
}

function fmtAgo(ms) {
  if (ms === null || ms === undefined) return "";
  const s = Math.round(ms / 1000);
  if (s < 120) return s + " s";
  if (s < 7200) return Math.round(s / 60) + " min";
  if (s < 172800) return Math.round(s / 3600) + " h";
  return Math.round(s / 86400) + " d";
}

function toast(text) {
  const t = document.getElementById("toast");
  t.textContent = text;
  t.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => (t.hidden = true), 4000);
}

class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.me) headers["X-CSRF-Token"] = state.me.csrf;
  const res = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (res.status === 204) return null;
  let data = null;
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) {
    if (res.status === 401 && path !== "/api/signin") {
      state.me = null;
      signinPage();
    }
    throw new ApiError(res.status, (data && data.error) || res.statusText);
  }
  return data;
}

const isAnalyst = () => state.me && state.me.role === "analyst";

function sevBadge(s) { return h("span", { class: "sev " + s }, s); }
function stateBadge(s) { return h("span", { class: "state " + s, "data-state": s }, s); }

function params() {
  const q = location.hash.split("?")[1] || "";
  return new URLSearchParams(q);
}

function link(page, p) {
  const q = new URLSearchParams(p).toString();
  return "#/" + page + (q ? "?" + q : "");
}

// ---------------------------------------------------------------- sign-in

function signinPage(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("signout").hidden = true;
  document.getElementById("who").textContent = "";
  const err = h("p", { class: "error", id: "signin-error" }, message || "");
  const user = h("input", { name: "user", autocomplete: "username", required: true });
  const pass = h("input", { name: "password", type: "password", autocomplete: "current-password", required: true });
  const form = h("form", { class: "panel signin", id: "signin" },
    h("h1", {}, "Sign in"),
    h("label", {}, "User", user),
    h("label", {}, "Password", pass),
    h("button", { class: "primary", type: "submit" }, "Sign in"),
    err);
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    try {
      state.me = await api("POST", "/api/signin", { user: user.value, password: pass.value });
      signedIn();
    } catch (x) {
      err.textContent = x.message;
    }
  });
  show(form);
  user.focus();
}

function signedIn() {
  document.getElementById("nav").hidden = false;
  document.getElementById("signout").hidden = false;
  const sites = state.me.sites ? " · " + state.me.sites.join(", ") : "";
  document.getElementById("who").textContent = state.me.user + " (" + state.me.role + ")" + sites;
  startLive();
  if (!location.hash || location.hash === "#" || location.hash === "#/") location.hash = "#/alerts";
  else route();
}

async function signOut() {
  try { await api("POST", "/api/signout"); } catch (_) { /* signed out anyway */ }
  state.me = null;
  if (state.live) { state.live.close(); state.live = null; }
  document.getElementById("live").hidden = true;
  signinPage("Signed out.");
}

// ---------------------------------------------------------------- live

function startLive() {
  if (state.live) return;
  const badge = document.getElementById("live");
  const es = new EventSource("/api/live");
  state.live = es;
  badge.hidden = false;
  es.onopen = () => badge.classList.remove("off");
  es.onerror = () => badge.classList.add("off");
  es.addEventListener("alert", (e) => {
    const alert = JSON.parse(e.data);
    toast("New alert: " + alert.site + " " + alert.asset + " — " + alert.message);
    if (state.route === "alerts") {
      state.alerts.unshift(alert);
      renderAlertRows();
      drawTimeline();
    }
  });
  es.addEventListener("update", (e) => {
    const alert = JSON.parse(e.data);
    const i = state.alerts.findIndex((a) => a.id === alert.id);
    if (state.route === "alerts" && i >= 0) {
      state.alerts[i] = alert;
      renderAlertRows();
    }
  });
  es.addEventListener("reload", () => { if (state.route === "alerts") route(); });
}

// ---------------------------------------------------------------- alerts

function alertFilters() {
  const p = params();
  const sel = (name, options) => h("select", { name },
    h("option", { value: "" }, "any"),
    options.map((o) => h("option", { value: o, selected: p.get(name) === o }, o)));
  const inp = (name, placeholder) => h("input", { name, placeholder, value: p.get(name) || "" });
  const dt = (name) => h("input", { name, type: "datetime-local", value: p.get(name) ? new Date(+p.get(name)).toISOString().slice(0, 16) : "" });
  const form = h("form", { class: "filters panel", id: "filters" },
    h("label", {}, "Site", inp("site", "plant-…")),
    h("label", {}, "Asset", inp("asset", "line/machine")),
    h("label", {}, "Detector", sel("detector", DETECTORS)),
    h("label", {}, "Severity", sel("severity", SEVERITIES)),
    h("label", {}, "State", sel("state", STATES)),
    h("label", {}, "From (UTC)", dt("from_ms")),
    h("label", {}, "To (UTC)", dt("to_ms")),
    h("button", { type: "submit", class: "primary" }, "Filter"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const q = {};
    for (const el of form.elements) {
      if (!el.name || !el.value) continue;
      q[el.name] = el.type === "datetime-local" ? String(Date.parse(el.value + "Z")) : el.value;
    }
    location.hash = link("alerts", q);
  });
  return form;
}

async function alertsPage() {
  const q = params();
  show(h("h1", {}, "Alerts"), alertFilters(),
    h("div", { class: "panel" }, h("div", { id: "timeline" })),
    h("p", { id: "alerts-note", class: "muted" }, "Loading…"),
    h("table", { id: "alerts" },
      h("thead", {}, h("tr", {}, ["Time (UTC)", "Site", "Asset", "Detector", "Severity", "State", "What"].map((t) => h("th", {}, t)))),
      h("tbody", {})));
  const data = await api("GET", "/api/alerts?" + q.toString());
  state.alerts = data.alerts;
  document.getElementById("alerts-note").textContent =
    data.alerts.length + " alert(s)" + (data.truncated ? " (the newest; narrow the filter for more)" : "");
  renderAlertRows();
  drawTimeline();
}

function renderAlertRows() {
  const body = document.querySelector("#alerts tbody");
  if (!body) return;
  body.replaceChildren(...state.alerts.map((a) => h("tr", {
    class: "click", "data-id": a.id,
    onclick: () => { location.hash = link("alert", { id: a.id }); },
  },
    h("td", {}, fmtTime(a.ts)), h("td", {}, a.site), h("td", {}, a.asset), h("td", {}, a.detector),
    h("td", {}, sevBadge(a.severity)), h("td", {}, stateBadge(a.state)), h("td", {}, a.message))));
}

// Alerts over time, one row per severity.
function drawTimeline() {
  const el = document.getElementById("timeline");
  if (!el || !window.uPlot) return;
  el.replaceChildren();
  const sorted = [...state.alerts].sort((a, b) => Date.parse(a.ts) - Date.parse(b.ts));
  const xs = sorted.map((a) => Date.parse(a.ts) / 1000);
  if (xs.length === 0) { el.append(h("p", { class: "muted" }, "No alerts in this selection.")); return; }
  const colours = { low: "#6b7385", medium: "#c98a00", high: "#d9480f", critical: "#a61e4d" };
  const series = SEVERITIES.map((s) => sorted.map((a) => (a.severity === s ? SEVERITIES.indexOf(s) + 1 : null)));
  new uPlot({
    width: el.clientWidth || 900, height: 150,
    legend: { show: false },
    scales: { y: { range: [0.5, 4.5] } },
    axes: [{}, { size: 70, values: (_, ticks) => ticks.map((t) => SEVERITIES[t - 1] || ""), splits: () => [1, 2, 3, 4] }],
    series: [{}].concat(SEVERITIES.map((s) => ({
      label: s, stroke: colours[s], width: 0,
      points: { show: true, size: 9, fill: colours[s] },
    }))),
    cursor: { drag: { x: true, y: false } },
    hooks: { setSelect: [(u) => {
      if (u.select.width < 5) return;
      const from = Math.round(u.posToVal(u.select.left, "x") * 1000);
      const to = Math.round(u.posToVal(u.select.left + u.select.width, "x") * 1000);
      const q = Object.fromEntries(params());
      location.hash = link("alerts", Object.assign(q, { from_ms: from, to_ms: to }));
    }] },
  }, [xs, ...series], el);
}

function bandBar(a) {
  const lo = a.expected_low, hi = a.expected_high, x = a.observed;
  if (!(Number.isFinite(lo) && Number.isFinite(hi) && hi > lo)) return null;
  const min = Math.min(lo, x), max = Math.max(hi, x), span = max - min || 1;
  const pct = (v) => ((v - min) / span) * 96 + 2;
  const expected = h("div", { class: "expected" });
  expected.style.left = pct(lo) + "%";
  expected.style.width = (pct(hi) - pct(lo)) + "%";
  const observed = h("div", { class: "observed" });
  observed.style.left = pct(x) + "%";
  return h("div", {},
    h("div", { class: "band", title: "green: expected band; red: observed" }, expected, observed),
    h("div", { class: "legend-note" }, "expected " + fmtNum(lo) + " – " + fmtNum(hi) + ", observed " + fmtNum(x)));
}

async function alertPage() {
  const id = params().get("id");
  const d = await api("GET", "/api/alerts/" + encodeURIComponent(id));
  const a = d.alert;
  const note = h("p", { class: "muted", id: "action-note" });
  const comment = h("input", { id: "comment", placeholder: "comment (optional)", size: 40 });
  const act = (label, path, body, confirmText) => h("button", {
    id: "btn-" + label.toLowerCase().split(" ")[0],
    disabled: !isAnalyst(),
    title: isAnalyst() ? "" : "viewers cannot change alerts",
    onclick: async () => {
      if (confirmText && !confirm(confirmText)) return;
      try {
        const r = await api("POST", path, body ? body() : undefined);
        note.textContent = r.detail + " (" + r.id + ")";
        setTimeout(route, 800);
      } catch (x) { note.textContent = x.message; note.className = "error"; }
    },
  }, label);
  const forSel = h("select", { id: "suppress-for" }, [["1h", 3600], ["4h", 14400], ["8h", 28800], ["24h", 86400]].map(([t, s]) => h("option", { value: s }, t)));
  const reason = h("input", { id: "suppress-reason", placeholder: "reason (required)" });
  const base = "/api/alerts/" + encodeURIComponent(a.id);
  show(
    h("p", {}, h("a", { href: "#/alerts" }, "← alerts")),
    h("h1", {}, a.message),
    h("div", { class: "panel" },
      h("dl", { class: "grid kv" },
        ...[["Time (UTC)", fmtTime(a.ts)], ["Site", a.site], ["Asset", h("a", { href: link("asset", { site: a.site, asset: a.asset }) }, a.asset)],
          ["Detector", a.detector], ["Name", a.name], ["Severity", sevBadge(a.severity)], ["State", stateBadge(a.state)],
          ["Score", fmtNum(a.score)], ["Agent", a.agent], ["Events", a.event_count + " (seq " + a.first_seq + "–" + a.last_seq + ")"],
          ["ATT&CK for ICS", d.technique ? d.technique.id + " " + d.technique.name + " (" + d.technique.tactics + ")" : (a.technique || "none")],
          ["Set by", a.state_by ? a.state_by + " at " + fmtTime(a.state_at) : ""]]
          .map(([k, v]) => h("div", {}, h("dt", {}, k), h("dd", {}, v)))),
      bandBar(a)),
    h("div", { class: "panel" },
      h("h2", {}, "Decide"),
      isAnalyst() ? null : h("p", { class: "muted" }, "You are a viewer: only analysts ack, resolve, suppress or accept."),
      h("div", { class: "actions" }, comment,
        act("Ack", base + "/ack", () => ({ comment: comment.value })),
        act("Resolve", base + "/resolve", () => ({ comment: comment.value })),
        act("Comment", base + "/comment", () => ({ comment: comment.value }))),
      h("div", { class: "actions" }, "Suppress new alerts of this asset and detector for", forSel, reason,
        act("Suppress", "/api/suppressions", () => ({ site: a.site, asset: a.asset, detector: a.detector, for_secs: +forSel.value, reason: reason.value }))),
      h("div", { class: "actions" },
        act("Accept as normal", base + "/accept", null, "Take this deviation as the asset's new normal? The model stops alerting on it.")),
      note),
    h("h2", {}, "History"),
    h("table", {}, h("tr", {}, ["When", "State", "By", "Comment"].map((t) => h("th", {}, t))),
      d.changes.map((c) => h("tr", {}, h("td", {}, fmtTime(c.at_ms)), h("td", {}, stateBadge(c.state)), h("td", {}, c.state_by || ""), h("td", {}, c.comment || "")))),
    h("h2", {}, "Evidence" + (d.evidence_truncated ? " (first events)" : "")),
    h("table", { id: "evidence" }, h("tr", {}, ["Seq", "Time (UTC)", "Asset", "Kind", "Name", "Value", "Text"].map((t) => h("th", {}, t))),
      d.evidence.map((e) => h("tr", {}, h("td", { class: "num" }, e.seq), h("td", {}, fmtTime(e.ts_ms)), h("td", {}, e.asset), h("td", {}, e.kind),
        h("td", {}, e.name), h("td", { class: "num" }, fmtNum(e.value)), h("td", {}, e.text || "")))));
}

// ---------------------------------------------------------------- assets

async function assetsPage() {
  const d = await api("GET", "/api/assets");
  show(h("h1", {}, "Assets"),
    h("table", { id: "assets" },
      h("tr", {}, ["Site", "Asset", "State", "Since", "Open episodes"].map((t) => h("th", {}, t))),
      d.assets.map((a) => h("tr", { class: "click", onclick: () => { location.hash = link("asset", { site: a.site, asset: a.asset }); } },
        h("td", {}, a.site), h("td", {}, a.asset), h("td", {}, a.state), h("td", {}, a.since_ns ? fmtTime(a.since_ns / 1e6) : ""),
        h("td", { class: "num" }, a.models.filter((m) => m.open_since_ns).length)))));
}

async function assetPage() {
  const p = params();
  const site = p.get("site"), name = p.get("asset");
  const d = await api("GET", "/api/asset?" + new URLSearchParams({ site, asset: name }));
  const a = d.asset;
  const note = h("p", { class: "muted", id: "model-note" });
  const choice = h("select", { id: "series" }, d.series.map((s) =>
    h("option", { value: s.kind + "|" + s.name, selected: p.get("series") === s.kind + "|" + s.name }, (s.kind === "CYCLE" ? "cycle time: " : "tag: ") + s.name + " (" + s.points + ")")));
  const range = h("select", { id: "range" }, [["1h", 1], ["6h", 6], ["24h", 24], ["7d", 168]].map(([t, hrs]) =>
    h("option", { value: hrs, selected: (p.get("hours") || "6") === String(hrs) }, "last " + t)));
  const replot = () => {
    const q = { site, asset: name, series: choice.value, hours: range.value };
    history.replaceState(null, "", link("asset", q));
    plotSeries(d, choice.value, +range.value);
  };
  choice.addEventListener("change", replot);
  range.addEventListener("change", replot);
  const decide = (label, body, text) => h("button", {
    id: "btn-" + label.toLowerCase(), disabled: !isAnalyst(),
    onclick: async () => {
      if (!confirm(text)) return;
      try { const r = await api("POST", "/api/relearn", body); note.textContent = r.detail; } catch (x) { note.textContent = x.message; }
    },
  }, label);
  show(
    h("p", {}, h("a", { href: "#/assets" }, "← assets")),
    h("h1", {}, site + " · " + name),
    h("div", { class: "panel" },
      h("dl", { class: "grid kv" },
        h("div", {}, h("dt", {}, "Model"), h("dd", { id: "model-state" }, a.state)),
        h("div", {}, h("dt", {}, a.state === "learning" ? "Learning since" : "Protecting since"), h("dd", {}, a.since_ns ? fmtTime(a.since_ns / 1e6) : "")),
        a.learn_until_ns ? h("div", {}, h("dt", {}, "Learns until at least"), h("dd", {}, fmtTime(a.learn_until_ns / 1e6))) : null,
        h("div", {}, h("dt", {}, "Newest event"), h("dd", {}, a.at_ns ? fmtTime(a.at_ns / 1e6) : ""))),
      h("div", { class: "actions" },
        decide("Relearn", { site, asset: name }, "Forget what " + name + " learned and learn it again from its next events?"),
        h("span", { class: "muted" }, "Accept an open episode as normal from the models below.")),
      note),
    h("div", { class: "panel" }, h("div", { class: "actions" }, choice, range),
      h("div", { id: "plot", class: "plot" }), h("p", { id: "plot-note", class: "legend-note" })),
    h("h2", {}, "Models"),
    h("table", { id: "models" }, h("tr", {}, ["Model", "Tag", "State", "Learned", "Open since", "Open alerts"].map((t) => h("th", {}, t))),
      a.models.map((m) => h("tr", {}, h("td", {}, m.model), h("td", {}, m.name), h("td", {}, m.state), h("td", {}, m.baseline),
        h("td", {}, m.open_since_ns ? fmtTime(m.open_since_ns / 1e6) : ""),
        h("td", {}, m.open_alerts.map((id) => h("span", {},
          h("a", { href: link("alert", { id }) }, id.slice(0, 12) + "…"), " ",
          isAnalyst() ? h("button", {
            class: "accept",
            onclick: async () => {
              if (!confirm("Take the deviation of this episode (" + m.model + (m.name ? " " + m.name : "") + ") as the new normal?")) return;
              try { const r = await api("POST", "/api/alerts/" + encodeURIComponent(id) + "/accept"); note.textContent = r.detail; } catch (x) { note.textContent = x.message; }
            },
          }, "Accept") : null, " ")))))));
  if (d.series.length) await plotSeries(d, choice.value, +range.value);
  else document.getElementById("plot").append(h("p", { class: "muted" }, "No cycle times or numeric tags in the last day."));
}

async function plotSeries(d, which, hours) {
  const [kind, name] = which.split("|");
  const a = d.asset;
  const to = a.at_ns ? Math.ceil(a.at_ns / 1e6) + 1 : Date.now();
  const from = to - hours * 3600 * 1000;
  const started = performance.now();
  const s = await api("GET", "/api/series?" + new URLSearchParams({ site: a.site, asset: a.asset, kind, name, from_ms: from, to_ms: to }));
  const model = a.models.find((m) => (kind === "CYCLE" ? m.model === "cycle" : m.model === "sample") && m.name === name);
  const alerts = d.alerts.filter((x) => x.name === name).map((x) => Date.parse(x.ts));
  drawSeries(document.getElementById("plot"), s.t, s.v, model && model.band, alerts, kind === "CYCLE" ? name + " time (ms)" : name);
  const ms = performance.now() - started;
  window.otwatchLastPlot = { points: s.t.length, ms };
  document.getElementById("plot-note").textContent = s.t.length.toLocaleString("en") + " points" + (s.truncated ? " (the newest)" : "") +
    " in " + Math.round(ms) + " ms" + (model && model.band ? "; green: the learned band " + fmtNum(model.band[0]) + " – " + fmtNum(model.band[1]) : "; no fixed band learned") +
    (alerts.length ? "; red lines: alerts" : "");
}

// A series (times in ms) with the learned band and alert marks.
function drawSeries(el, t, v, band, alertMs, label) {
  el.replaceChildren();
  const xs = new Float64Array(t.length);
  for (let i = 0; i < t.length; i++) xs[i] = t[i] / 1000;
  const data = [xs, v];
  const series = [{}, { label, stroke: "#1f5fbf", width: 1, points: { show: false } }];
  const opts = {
    width: el.clientWidth || 900, height: 320, series,
    scales: { x: { time: true } },
    axes: [{}, { size: 80 }],
    hooks: { draw: [(u) => {
      const ctx = u.ctx;
      ctx.save();
      if (band) {
        const y0 = u.valToPos(band[1], "y", true), y1 = u.valToPos(band[0], "y", true);
        ctx.fillStyle = "rgba(43,138,62,0.15)";
        ctx.fillRect(u.bbox.left, y0, u.bbox.width, y1 - y0);
      }
      ctx.strokeStyle = "rgba(217,72,15,0.8)";
      ctx.lineWidth = 1;
      for (const ms of alertMs || []) {
        const x = u.valToPos(ms / 1000, "x", true);
        if (x < u.bbox.left || x > u.bbox.left + u.bbox.width) continue;
        ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      }
      ctx.restore();
    }] },
  };
  if (band) {
    opts.scales.y = { range: (u, lo, hi) => [Math.min(lo, band[0]) - 0.05 * Math.abs(band[1] - band[0]), Math.max(hi, band[1]) + 0.05 * Math.abs(band[1] - band[0])] };
  }
  return new uPlot(opts, data, el);
}
window.otwatchDrawSeries = drawSeries;

// ---------------------------------------------------------------- fleet, overview

async function fleetPage() {
  const d = await api("GET", "/api/fleet");
  show(h("h1", {}, "Fleet"),
    h("p", { class: "muted" }, "Agents heard from in the last day, or connected now. A row stands out when its agent has been quiet for five of its usual gaps (and at least 30 s); a certificate that expires within 30 days is marked."),
    h("table", { id: "fleet" },
      h("tr", {}, ["Site", "Agent", "Connected", "Last seen", "Quiet for", "Events/s (5 min)", "Usual gap", "Backlog", "Certificate expires", "Version", "Address", "Assets"].map((t) => h("th", {}, t))),
      d.agents.map((a) => {
        const certDays = a.cert_not_after_ms === null ? null : (a.cert_not_after_ms - d.now_ms) / 86400000;
        return h("tr", { class: a.silent ? "silent" : "", "data-silent": a.silent },
          h("td", {}, a.site), h("td", {}, a.agent),
          h("td", {}, a.connected ? "since " + fmtTime(a.connected_since_ms) : "no"),
          h("td", {}, fmtTime(a.last_seen_ms)), h("td", {}, fmtAgo(a.quiet_ms) + (a.silent ? " — silent" : "")),
          h("td", { class: "num" }, a.events_per_second.toFixed(1)), h("td", {}, a.usual_gap_ms === null ? "" : fmtAgo(a.usual_gap_ms)),
          h("td", { class: "num" }, a.queue_backlog === null ? "" : fmtNum(a.queue_backlog)),
          h("td", { class: certDays !== null && certDays < 30 ? "error" : "" }, a.cert_not_after_ms === null ? "" : fmtTime(a.cert_not_after_ms).slice(0, 10) + " (" + Math.floor(certDays) + " d)"),
          h("td", {}, a.version || ""), h("td", {}, a.peer || ""), h("td", { class: "num" }, a.assets));
      })));
}

async function overviewPage() {
  const d = await api("GET", "/api/overview");
  const sites = [...new Set(d.alerts.map((r) => r.site))].sort();
  const count = (site, sev) => (d.alerts.find((r) => r.site === site && r.severity === sev) || {}).alerts || 0;
  show(h("h1", {}, "Overview"),
    h("h2", {}, "Alerts from " + fmtTime(d.from_ms) + " to " + fmtTime(d.to_ms)),
    h("table", { id: "per-site" }, h("tr", {}, h("th", {}, "Site"), SEVERITIES.map((s) => h("th", { class: "num" }, s))),
      sites.length ? sites.map((site) => h("tr", { class: "click", onclick: () => { location.hash = link("alerts", { site }); } },
        h("td", {}, site), SEVERITIES.map((s) => h("td", { class: "num" }, count(site, s))))) : h("tr", {}, h("td", { colspan: 5, class: "muted" }, "No alerts."))),
    h("h2", {}, "Consumers, slowest first"),
    h("table", { id: "components" }, h("tr", {}, ["Component", "Reads", "Lag (records)", "State", "Failures"].map((t) => h("th", {}, t))),
      d.components.map((c) => h("tr", { class: c.healthy ? "" : "silent" }, h("td", {}, c.name), h("td", {}, c.topic || ""),
        h("td", { class: "num" }, c.lag), h("td", {}, c.state), h("td", { class: "num" }, c.failures)))));
}

// ---------------------------------------------------------------- routing

const PAGES = { alerts: alertsPage, alert: alertPage, assets: assetsPage, asset: assetPage, fleet: fleetPage, overview: overviewPage };

async function route() {
  if (!state.me) return;
  const page = (location.hash.slice(2).split("?")[0]) || "alerts";
  state.route = page;
  for (const a of document.querySelectorAll("#nav a")) {
    a.classList.toggle("active", a.dataset.page === page || a.dataset.page + "s" === page || (page === "alert" && a.dataset.page === "alerts"));
  }
  const render = PAGES[page];
  if (!render) { show(h("p", {}, "No such page.")); return; }
  try {
    await render();
  } catch (x) {
    if (x.status !== 401) show(h("p", { class: "error" }, x.message));
  }
}

window.addEventListener("hashchange", route);
window.addEventListener("DOMContentLoaded", async () => {
  document.getElementById("signout").addEventListener("click", signOut);
  try {
    state.me = await api("GET", "/api/session");
    signedIn();
  } catch (_) {
    signinPage();
  }
});
