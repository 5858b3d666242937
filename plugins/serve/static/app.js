// btc-quant dashboard: plain JS over the JSON API (same origin; GETs use the session cookie,
// actions send the token in the Authorization header). Live data arrives over /api/stream (SSE).
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const esc = v => String(v ?? "-").replace(/[&<>"']/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const num = (v, d = 2) => v === null || v === undefined ? "-" : Number(v).toLocaleString("en-US", {minimumFractionDigits: d, maximumFractionDigits: d});
const pct = v => v === null || v === undefined ? "-" : (100 * v).toFixed(2) + "%";
const signed = (v, d = 2) => {
  if (v === null || v === undefined) return "-";
  const r = Math.round(v * 10 ** d) / 10 ** d || 0;  // no "-0.00"
  return `<b class="${r > 0 ? "pos" : r < 0 ? "neg" : ""}">${r > 0 ? "+" : ""}${num(r, d)}</b>`;
};
const when = ms => ms ? new Date(ms).toISOString().replace("T", " ").slice(0, 19) + " UTC" : "-";

async function api(path, options = {}) {
  const r = await fetch(path, {credentials: "same-origin", ...options});
  if (r.status === 401) { location.replace("/"); throw new Error("signed out"); }
  if (!r.ok) throw new Error((await r.json().catch(() => ({}))).detail || r.statusText);
  return r.json();
}

// --- tabs -------------------------------------------------------------------------------------
for (const b of document.querySelectorAll("nav button")) {
  b.onclick = () => {
    for (const o of document.querySelectorAll("nav button")) o.classList.toggle("active", o === b);
    for (const s of document.querySelectorAll("main > section")) s.hidden = s.id !== "tab-" + b.dataset.tab;
    if (b.dataset.tab === "runs") loadRuns();
  };
}

// --- bots -------------------------------------------------------------------------------------
function fact(label, value, id) { return `<div${id ? ` data-f="${id}"` : ""}><span>${label}</span><b>${value}</b></div>`; }

function botCard(v) {
  const p = v.position || {};
  const orders = (v.orders || []).map(o => `<tr data-cid="${esc(o.client_id)}"><td>${esc(o.client_id)}</td><td>${esc(o.side)}</td>
    <td>${o.qty == null ? "-" : esc(o.qty)}</td><td>${o.price == null ? "-" : num(o.price)}</td><td class="${o.status}">${o.status}</td></tr>`).join("");
  const events = [...(v.events || []).map(e => ({ts: e.ts * 1000, text: `${e.kind}: ${e.message}`})),
                  ...(v.fills || []).map(f => ({ts: f.ts_ms, text: `fill ${f.side} ${f.quantity} @ ${num(f.price)} (${f.client_id})`}))]
    .sort((a, b) => a.ts - b.ts).slice(-30).reverse();
  const canAct = ["running", "halted", "stopping"].includes(v.status);
  return `<article class="bot" data-bot="${esc(v.bot)}">
    <h2>${esc(v.bot)} <span class="badge ${v.status}" data-f="status">${v.status}</span>
      <small class="muted">${esc(v.mode)} · ${esc(v.strategy)} on ${esc(v.exchange)} ${esc(v.symbol)}${v.testnet ? " (testnet)" : ""}</small></h2>
    <div class="facts">
      ${fact("price", num(v.price), "price")}
      ${fact("position", p.sides ? Object.entries(p.sides).map(([s, q]) => `${s} ${q.quantity} @ ${num(q.entry_price)}`).join(", ")
                                 : `${p.quantity ?? "-"} @ ${num(p.entry_price)}`, "position")}
      ${fact("wallet", num(v.wallet_balance), "wallet")}
      ${fact("available", num(v.available), "available")}
      ${fact("equity", num(v.equity), "equity")}
      ${fact("liquidation price", v.liquidation_price ? num(v.liquidation_price) : "-", "liq")}
      ${fact("distance to liquidation", pct(v.liquidation_distance), "liqdist")}
      ${fact("PnL today", signed(v.pnl_today), "pnl_today")}
      ${fact("PnL since start", signed(v.pnl_since_start), "pnl_start")}
      ${fact("orders live / wanted", `${v.orders_live ?? "-"} / ${v.orders_wanted ?? "-"}${v.orders_missing ? ` (${v.orders_missing} missing)` : ""}`, "orders")}
      ${fact("last settled reconcile", when(v.last_settled_reconcile_ms), "reconcile")}
      ${fact("heartbeat", v.heartbeat_age_s == null ? "-" : v.heartbeat_age_s.toFixed(0) + " s ago", "heartbeat")}
      ${fact("market data", v.market_age_s == null ? "-" : v.market_age_s.toFixed(0) + " s ago", "market")}
      ${fact("fills / bars", `${v.fill_count ?? "-"} / ${v.bars ?? "-"}`, "fills")}
      ${fact("kill switch", esc(v.halted || "off"), "halted")}
      ${fact("refused by risk checks", v.risk_refusals == null ? "-" : `${v.risk_refusals}${v.last_risk_refusal ? ` (last: ${esc(v.last_risk_refusal)})` : ""}`, "refused")}
    </div>
    <div class="cols">
      <div><h3>Orders: strategy vs exchange</h3>
        <table class="grid orders"><thead><tr><th>client id</th><th>side</th><th>qty</th><th>price</th><th>state</th></tr></thead>
        <tbody>${orders || '<tr><td colspan="5" class="muted">no open orders</td></tr>'}</tbody></table></div>
      <div><h3>Recent events</h3><ul class="events">${events.map(e => `<li>${when(e.ts)} ${esc(e.text)}</li>`).join("") || '<li class="muted">none</li>'}</ul></div>
    </div>
    ${canAct ? `<div class="actions"><button class="stop" data-action="stop">Stop</button>
      <button class="flatten" data-action="flatten">Flatten</button></div>` : ""}
  </article>`;
}

function renderBots(bots) {
  const box = $("#bots");
  if (!bots.length) return;
  box.innerHTML = bots.map(botCard).join("");
  for (const b of box.querySelectorAll("button[data-action]")) b.onclick = () => act(b.closest("article").dataset.bot, b.dataset.action);
}

async function act(bot, action) {
  const what = action === "flatten" ? "cancel its orders, close its position at market and stop it" : "stop placing orders and exit (open orders stay)";
  if (!confirm(`${action} bot ${bot}: ${what}?`)) return;
  let token = sessionStorage.getItem("quant_token");
  if (!token) { token = prompt("The token is needed for actions"); if (!token) return; sessionStorage.setItem("quant_token", token); }
  try {
    const r = await api(`/api/bots/${encodeURIComponent(bot)}/${action}`, {method: "POST",
      headers: {"Authorization": "Bearer " + token, "Content-Type": "application/json"}, body: JSON.stringify({confirm: bot, who: "dashboard"})});
    flash(`${r.action} sent to ${r.bot} at ${r.at}`);
  } catch (e) { flash(`${action} failed: ${e.message}`); }
}

function flash(text) { $("#live").textContent = text; }

// --- studies and alerts -------------------------------------------------------------------------
function renderStudies(rows) {
  $("#studies tbody").innerHTML = rows.map(s => `<tr data-study="${esc(s.study)}"><td>${esc(s.study)}</td><td>${esc(s.folder)}</td>
    <td>${esc(s.direction)}</td><td class="trials">${s.trials}</td><td>${s.complete}</td><td>${s.running}</td><td>${s.failed}</td>
    <td class="best">${s.best_value == null ? "-" : Number(s.best_value).toPrecision(6)}</td>
    <td><code>${s.error ? "unreadable: " + esc(s.error) : esc(JSON.stringify(s.best_params ?? null))}</code></td></tr>`).join("")
    || '<tr><td colspan="9" class="muted">no studies (quant optimize writes them under optimize/)</td></tr>';
}

function renderAlerts(rows) {
  $("#alerts").innerHTML = rows.slice().reverse().map(a => `<li class="${a.level}">${when(a.ts * 1000)} <b>${esc(a.title)}</b>: ${esc(a.message)}</li>`).join("")
    || '<li class="muted">no alerts</li>';
}

// --- runs -------------------------------------------------------------------------------------
let runsLoaded = null;
async function loadRuns() {
  const q = $("#run-filter").value;
  const rows = await api("/api/runs?q=" + encodeURIComponent(q));
  runsLoaded = q;
  $("#runs tbody").innerHTML = rows.map(r => `<tr data-run="${esc(r.run_id)}"><td><input type="checkbox" value="${esc(r.run_id)}"></td>
    <td><code>${esc(r.run_id)}</code></td><td>${esc(r.strategy)}</td><td>${esc(r.broker)}</td><td>${esc(r.start)}</td><td>${esc(r.end)}</td>
    <td>${pct(r.total_return)}</td><td>${pct(r.max_drawdown)}</td><td>${r.sharpe == null ? "-" : Number(r.sharpe).toFixed(3)}</td><td>${esc(r.trades)}</td>
    <td><button class="open-report">report</button></td></tr>`).join("") || '<tr><td colspan="11" class="muted">no saved runs</td></tr>';
  picked = picked.filter(id => rows.some(r => r.run_id === id));
  for (const c of document.querySelectorAll("#runs input[type=checkbox]")) {
    c.checked = picked.includes(c.value);
    c.onchange = () => { picked = picked.filter(id => id !== c.value); if (c.checked) picked.push(c.value); selectionChanged(); };
  }
  for (const b of document.querySelectorAll("#runs .open-report")) b.onclick = () => openReport(b.closest("tr").dataset.run);
  selectionChanged();
}
let picked = [];  // the runs ticked, in the order they were ticked (the first is "a")
function selected() { return picked; }
function selectionChanged() { $("#compare").disabled = selected().length !== 2; }
let filterTimer;
$("#run-filter").oninput = () => { clearTimeout(filterTimer); filterTimer = setTimeout(loadRuns, 200); };
$("#compare").onclick = async () => {
  const [a, b] = selected();
  const c = await api(`/api/compare?a=${encodeURIComponent(a)}&b=${encodeURIComponent(b)}`);
  const fmt = v => typeof v !== "number" ? esc(v) : Number.isInteger(v) ? String(v) : Math.abs(v) >= 100 ? num(v) : String(Number(v.toPrecision(5)));
  $("#comparison").innerHTML = `<h2>Compared: <span class="legend"><span class="a">${esc(c.a.run_id)}</span> vs <span class="b">${esc(c.b.run_id)}</span></span></h2>
    <table class="grid" id="compare-table"><thead><tr><th>metric</th><th class="a">${esc(c.a.run_id)}</th><th class="b">${esc(c.b.run_id)}</th></tr></thead>
    <tbody>${c.metrics.map(m => `<tr data-metric="${esc(m.metric)}"><td>${esc(m.metric)}</td><td>${fmt(m.a)}</td><td>${fmt(m.b)}</td></tr>`).join("")}</tbody></table>
    ${chart([c.a.equity, c.b.equity])}`;
};
function openReport(id) {
  $("#report-box").hidden = false;
  $("#report-title").textContent = "Report of run " + id;
  $("#report").src = `/api/runs/${encodeURIComponent(id)}/report`;
}

// equity curves overlaid, plain SVG: x is time, y is equity (both runs on the same axes)
function chart(series) {
  const W = 1000, H = 280, L = 70, R = 10, T = 10, B = 30;
  const xs = series.flatMap(s => s.ts_ms), ys = series.flatMap(s => s.equity);
  if (!xs.length) return "";
  const x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
  const X = t => L + (W - L - R) * (x1 > x0 ? (t - x0) / (x1 - x0) : 0.5);
  const Y = v => T + (H - T - B) * (y1 > y0 ? 1 - (v - y0) / (y1 - y0) : 0.5);
  const lines = series.map((s, i) => `<polyline class="${"ab"[i]}" fill="none" stroke-width="1.5" points="${s.ts_ms.map((t, k) => `${X(t).toFixed(1)},${Y(s.equity[k]).toFixed(1)}`).join(" ")}"/>`).join("");
  const ticks = [y0, (y0 + y1) / 2, y1].map(v => `<text x="${L - 6}" y="${Y(v) + 4}" text-anchor="end">${num(v, 0)}</text>`).join("");
  const dates = [x0, x1].map((t, i) => `<text x="${X(t)}" y="${H - 8}" text-anchor="${i ? "end" : "start"}">${when(t).slice(0, 10)}</text>`).join("");
  return `<svg class="chart" id="equity-chart" viewBox="0 0 ${W} ${H}" preserveAspectRatio="none">${ticks}${dates}${lines}</svg>`;
}

// --- live updates -----------------------------------------------------------------------------
function connect() {
  const es = new EventSource("/api/stream");
  es.onopen = () => { $("#live").textContent = "live"; $("#live").classList.add("on"); };
  es.onmessage = e => {
    const d = JSON.parse(e.data);
    renderBots(d.bots); renderStudies(d.studies); renderAlerts(d.alerts);
    document.body.dataset.updated = Date.now();
  };
  es.onerror = () => { $("#live").textContent = "reconnecting…"; $("#live").classList.remove("on"); };
}
connect();
