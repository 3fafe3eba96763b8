// chattune ui: plain JS, no build step, no network beyond this server. Every action is one /api call.
"use strict";
const $ = (s, el = document) => el.querySelector(s);
const $$ = (s, el = document) => [...el.querySelectorAll(s)];
const esc = (s) => String(s ?? "").replace(/[&<>"']/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}[c]));
const fmt = (v, d = 4) => (typeof v === "number" ? (Number.isInteger(v) ? v.toLocaleString() : v.toFixed(d)) : v ?? "–");
const pct = (v) => (typeof v === "number" ? (100 * v).toFixed(1) + "%" : "–");
const state = {key: sessionStorage.getItem("chattune-key") || "", fields: [], live: null, chat: null, info: null};

// ------------------------------------------------------------------ HTTP + server-sent events
function headers() {
  const h = {"Content-Type": "application/json"};
  if (state.key) h.Authorization = "Bearer " + state.key;
  return h;
}
class ApiError extends Error { constructor(msg, field, body) { super(msg); this.field = field; this.body = body; } }
async function api(path, body, opts = {}) {
  const r = await fetch(path, {method: body === undefined ? "GET" : "POST", headers: opts.raw ? {...headers(), "Content-Type": "application/octet-stream"} : headers(),
                               body: body === undefined ? undefined : (opts.raw ? body : JSON.stringify(body))});
  if (r.status === 401 && askKey()) return api(path, body, opts);
  const data = await r.json().catch(() => ({error: `HTTP ${r.status}`}));
  if (!r.ok) throw new ApiError(data.error || `HTTP ${r.status}`, data.field || "", data);
  return data;
}
function askKey() {
  const k = prompt("This chattune UI needs its API key:");
  if (!k) return false;
  state.key = k; sessionStorage.setItem("chattune-key", k); return true;
}
// EventSource cannot send headers (the key) or a POST body, so events are read from a fetch stream.
async function sse(path, body, onEvent, signal) {
  const r = await fetch(path, {method: body === undefined ? "GET" : "POST", headers: headers(), signal,
                               body: body === undefined ? undefined : JSON.stringify(body)});
  if (!r.ok) { const d = await r.json().catch(() => ({})); throw new ApiError(d.error || `HTTP ${r.status}`, d.field || ""); }
  const reader = r.body.getReader(), dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) break;
    buf += dec.decode(value, {stream: true});
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, i); buf = buf.slice(i + 2);
      for (const line of chunk.split("\n")) if (line.startsWith("data: ")) onEvent(JSON.parse(line.slice(6)));
    }
  }
}

// ------------------------------------------------------------------ SVG charts
function lineChart(series, {w = 640, h = 240, xlabel = "step", ylabel = "loss"} = {}) {
  const pts = series.flatMap((s) => s.points);
  if (!pts.length) return `<div class="empty">no points yet</div>`;
  const L = 58, R = 14, T = 26, B = 38;
  let [x0, x1] = [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))];
  let [y0, y1] = [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))];
  if (x1 === x0) { x0 -= 1; x1 += 1; }
  if (y1 === y0) { y0 -= 0.5; y1 += 0.5; }
  const pad = (y1 - y0) * 0.08; y0 -= pad; y1 += pad;
  const X = (x) => L + (x - x0) / (x1 - x0) * (w - L - R), Y = (y) => T + (1 - (y - y0) / (y1 - y0)) * (h - T - B);
  let g = `<svg class="chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="${esc(ylabel)} by ${esc(xlabel)}">`;
  g += `<rect x="${L}" y="${T}" width="${w - L - R}" height="${h - T - B}" fill="#fbfcfd" stroke="#e3e6ea"/>`;
  const ydec = Math.max(0, Math.min(6, Math.ceil(-Math.log10((y1 - y0) / 4)) + 1));  // distinct tick labels
  for (let k = 0; k <= 4; k++) {
    const yv = y0 + (y1 - y0) * k / 4;
    g += `<line x1="${L}" x2="${w - R}" y1="${Y(yv)}" y2="${Y(yv)}" stroke="#eef0f3"/>`;
    g += `<text x="${L - 6}" y="${Y(yv) + 4}" font-size="11" text-anchor="end" fill="#6a7480">${yv.toFixed(ydec)}</text>`;
  }
  const xstep = Math.max(1, Math.ceil((x1 - x0) / 6));  // whole steps only
  for (let xv = Math.ceil(x0); xv <= x1; xv += xstep)
    g += `<text x="${X(xv)}" y="${h - B + 15}" font-size="11" text-anchor="middle" fill="#6a7480">${xv}</text>`;
  g += `<text x="${(L + w - R) / 2}" y="${h - 6}" font-size="12" text-anchor="middle" fill="#374151">${esc(xlabel)}</text>`;
  g += `<text x="14" y="${(T + h - B) / 2}" font-size="12" text-anchor="middle" fill="#374151" transform="rotate(-90 14 ${(T + h - B) / 2})">${esc(ylabel)}</text>`;
  series.forEach((s, si) => {
    if (!s.points.length) return;
    g += `<polyline fill="none" stroke="${s.color}" stroke-width="2" points="${s.points.map((p) => `${X(p[0])},${Y(p[1])}`).join(" ")}"/>`;
    g += s.points.map((p) => `<circle class="pt ${esc(s.cls || "")}" cx="${X(p[0])}" cy="${Y(p[1])}" r="3" fill="${s.color}"><title>${esc(s.name)} step ${p[0]}: ${p[1].toFixed(4)}</title></circle>`).join("");
    g += `<rect x="${L + si * 120}" y="6" width="10" height="10" fill="${s.color}"/><text x="${L + 14 + si * 120}" y="15" font-size="12" fill="#374151">${esc(s.name)}</text>`;
  });
  return g + "</svg>";
}
function barChart(bins, {w = 640, h = 220} = {}) {
  if (!bins || !bins.length) return `<div class="empty">no sequences</div>`;
  const L = 46, R = 10, T = 22, B = 44, top = Math.max(...bins.map((b) => b.count), 1);
  const bw = (w - L - R) / bins.length;
  let g = `<svg class="chart" viewBox="0 0 ${w} ${h}" role="img" aria-label="token length histogram">`;
  g += `<line x1="${L}" x2="${w - R}" y1="${h - B}" y2="${h - B}" stroke="#9ca3af"/>`;
  for (let k = 0; k <= 2; k++) {
    const v = Math.round(top * k / 2), y = h - B - (h - T - B) * v / top;
    g += `<text x="${L - 6}" y="${y + 4}" font-size="11" text-anchor="end" fill="#6a7480">${v}</text><line x1="${L}" x2="${w - R}" y1="${y}" y2="${y}" stroke="#eef0f3"/>`;
  }
  bins.forEach((b, i) => {
    const bh = (h - T - B) * b.count / top, x = L + i * bw;
    g += `<rect class="bar" x="${x + 4}" y="${h - B - bh}" width="${bw - 8}" height="${bh}" fill="#60a5fa"><title>${esc(b.range)} tokens: ${b.count}</title></rect>`;
    g += `<text x="${x + bw / 2}" y="${h - B - bh - 4}" font-size="11" text-anchor="middle" fill="#374151">${b.count}</text>`;
    g += `<text x="${x + bw / 2}" y="${h - B + 15}" font-size="11" text-anchor="middle" fill="#6a7480">${esc(b.range)}</text>`;
  });
  g += `<text x="${(L + w - R) / 2}" y="${h - 8}" font-size="12" text-anchor="middle" fill="#374151">tokens per sequence</text>`;
  return g + "</svg>";
}

// ------------------------------------------------------------------ navigation
function show(page) {
  $$("nav button").forEach((b) => b.classList.toggle("on", b.dataset.page === page));
  $$("section.page").forEach((s) => s.classList.toggle("on", s.id === "page-" + page));
  if (page === "runs") loadRuns();
  if (page === "chat") loadChatRuns();
}
$$("nav button").forEach((b) => b.addEventListener("click", () => show(b.dataset.page)));

// ------------------------------------------------------------------ Data
async function loadFiles(select) {
  const {files} = await api("/api/files");
  const el = $("#data-file");
  el.innerHTML = `<option value="">— pick a file —</option>` + files.map((f) => `<option>${esc(f)}</option>`).join("");
  if (select) { if (!files.includes(select)) el.insertAdjacentHTML("beforeend", `<option>${esc(select)}</option>`); el.value = select; }
}
function clearErrs(...ids) { ids.forEach((i) => { $("#err-" + i).textContent = ""; }); }
async function dataCheck() {
  clearErrs("path", "model", "options");
  const out = $("#data-out");
  const kind = $("#data-kind").value, name = $("#data-model").value.trim();
  const body = {path: $("#data-file").value, format: $("#data-format").value, loss: $("#data-loss").value,
                thinking: $("#data-thinking").value, system: $("#data-system").value, max_length: $("#data-maxlen").value || null};
  if (name) body[kind] = name;
  if (!body.path) { $("#err-path").textContent = "pick or upload a data file"; return; }
  out.innerHTML = `<div class="card dim">checking ${esc(body.path)} …</div>`;
  try {
    const res = await api("/api/data/check", body);
    renderReport(res, out);
  } catch (e) {
    out.innerHTML = "";
    $("#err-" + (["path", "model", "tokenizer", "options"].includes(e.field) ? (e.field === "tokenizer" ? "model" : e.field) : "options")).textContent = e.message;
  }
}
function renderReport(res, out) {
  const r = res.report, tk = r.tokens, fid = r.fidelity;
  if (!r.files) {  // the file could not be read: the reader's message belongs to the file field
    $("#err-path").textContent = r.errors.join("\n");
    out.innerHTML = "";
    return;
  }
  const shape = r.files.map((f) => f.format).join(", ");
  let kv = [["file", esc(res.path)], ["detected shape", `<b id="data-shape">${esc(shape)}</b>`],
            ["records → conversations", `${fmt(r.files.reduce((a, f) => a + f.records, 0))} → ${fmt(r.conversations)}`],
            ["duplicates removed", fmt(r.duplicates_removed)],
            ["skipped rows", Object.entries(r.skipped_rows || {}).map(([k, v]) => `${esc(k)} ${v}`).join(", ") || "–"],
            ["assistant turns / conversation", stats(r.turns)], ["prompt chars", stats(r.chars.prompt)], ["answer chars", stats(r.chars.answer)]];
  if (tk) kv = kv.concat([["sequences", fmt(tk.sequences)], ["tokens", `${fmt(tk.total)} (${fmt(tk.trained)} trained, <b>${pct(tk.trained_share)}</b>)`],
                          ["sequence tokens", stats(tk.lengths)], [`over max_length=${tk.max_length}`, `${tk.over_max_length} (${pct(tk.over_share)}); would drop ${tk.would_drop}`],
                          ["template kwargs", esc(JSON.stringify(tk.template_kwargs || {}))]]);
  if (fid) kv.push(["fidelity (a)(b)(c)", `<span class="${fid.failed ? "warn" : "ok"}">${fid.checked - fid.failed}/${fid.checked} sampled conversations match apply_chat_template</span>`]);
  const msgs = r.errors.map((e) => `<div class="err">error: ${esc(e)}</div>`).join("") + r.warnings.map((w) => `<div class="warn">warning: ${esc(w)}</div>`).join("")
             || `<div class="ok">clean</div>`;
  let html = `<div class="grid2"><div class="card" id="data-report"><h3>data check</h3><table class="kv">${kv.map(([k, v]) => `<tr><td>${k}</td><td>${v}</td></tr>`).join("")}</table>
    <div style="margin-top:8px" id="data-findings">${msgs}</div></div>`;
  html += `<div class="card"><h3>sequence length (tokens)</h3>${tk ? barChart(tk.histogram) : `<div class="empty">name a model or tokenizer to see token lengths</div>`}</div></div>`;
  if (res.preview) {
    html += `<div class="card" id="data-preview"><h3>preview <span class="dim">— <span class="tokens" style="display:inline;padding:0 4px"><span class="t">trained tokens</span></span> highlighted, the rest is context</span></h3>`;
    for (const it of res.preview) {
      html += `<div class="dim">${esc(it.source)} · line/row ${it.row}</div>`;
      if (it.error) html += `<div class="err">cannot render: ${esc(it.error)}</div>`;
      for (const s of it.sequences) {
        html += `<div class="tokens seq">${s.segments.map(([text, tr]) => `<span class="${tr ? "t" : "u"}">${esc(text)}</span>`).join("")}</div>`;
        html += `<div class="dim">${s.tokens} tokens, ${s.trained_tokens} trained${s.truncated ? ", TRUNCATED" : ""} · first ${s.messages} messages</div>`;
      }
      for (const s of it.skipped_turns) html += `<div class="warn">message ${s.message} not trained: ${esc(s.why)}</div>`;
    }
    html += "</div>";
  }
  out.innerHTML = html;
}
function stats(s) { return s && s.min !== undefined ? `min ${s.min} · median ${s.median} · p95 ${s.p95} · max ${s.max}` : "–"; }
$("#data-check").addEventListener("click", dataCheck);
$("#data-file").addEventListener("change", () => { if ($("#data-file").value) dataCheck(); });
$("#data-upload").addEventListener("change", async (ev) => {
  const f = ev.target.files[0];
  if (!f) return;
  clearErrs("path");
  try {
    const res = await api("/api/upload?name=" + encodeURIComponent(f.name), await f.arrayBuffer(), {raw: true});
    await loadFiles(res.path);
    await dataCheck();
  } catch (e) { $("#err-path").textContent = e.message; }
  ev.target.value = "";
});
$("#data-to-train").addEventListener("click", () => {
  const f = $("#data-file").value, m = $("#data-model").value.trim();
  if (f) setField("data.train", f);
  if (m && $("#data-kind").value === "model") setField("model.name_or_path", m);
  show("train");
});

// ------------------------------------------------------------------ Train
function fieldInput(f) {
  const id = "f-" + f.key.replace(/\./g, "-");
  const dflt = f.default === null || f.default === undefined ? "" : (typeof f.default === "object" ? JSON.stringify(f.default) : String(f.default));
  if (f.kind === "bool") return `<input type="checkbox" id="${id}" data-key="${f.key}" ${f.default ? "checked" : ""}>`;
  if (f.kind === "choice") return `<select id="${id}" data-key="${f.key}">${f.options.map((o) => `<option value='${esc(JSON.stringify(o))}' ${JSON.stringify(o) === JSON.stringify(f.default) ? "selected" : ""}>${o === null ? "auto (None)" : esc(o)}</option>`).join("")}</select>`;
  if (f.kind === "paths") return `<textarea id="${id}" data-key="${f.key}" rows="2" placeholder="one data file per line"></textarea>`;
  return `<input type="text" id="${id}" data-key="${f.key}" placeholder="${esc(dflt)}" data-default="${esc(dflt)}">`;
}
async function buildForm() {
  const {fields, sections: about} = await api("/api/config/schema");
  state.fields = fields;
  const sections = [...new Set(fields.map((f) => f.section))];
  let html = "";
  for (const sec of sections) {
    const fs = fields.filter((f) => f.section === sec);
    const row = (f) => `<div class="field" data-for="${f.key}"><label class="k" for="f-${f.key.replace(/\./g, "-")}">${esc(f.key)}</label><div>${fieldInput(f)}</div>
      <div class="d">${esc(f.description || "")}${f.default !== null && f.default !== "" && f.kind !== "bool" ? ` <span title="default">(default: ${esc(typeof f.default === "object" ? JSON.stringify(f.default) : f.default)})</span>` : ""}</div>
      <div class="err ferr" data-for="${f.key}"></div></div>`;
    const basic = fs.filter((f) => !f.advanced), adv = fs.filter((f) => f.advanced);
    html += `<fieldset><legend>${esc(sec)}${about[sec] ? ` <span class="dim">— ${esc(about[sec])}</span>` : ""}</legend>${basic.map(row).join("")}` +
            (adv.length ? `<details class="adv"><summary>advanced (${adv.length})</summary>${adv.map(row).join("")}</details>` : "") + `</fieldset>`;
  }
  $("#train-form").innerHTML = html;
  const stamp = new Date().toISOString().slice(0, 19).replace(/[-:T]/g, "").replace(/^(\d{8})/, "$1-");
  setField("output_dir", "run-" + stamp);
}
function setField(key, value) {
  const el = $(`[data-key="${key}"]`);
  if (!el) return;
  if (el.type === "checkbox") el.checked = !!value; else el.value = value;
}
function formValues() {
  const vals = {};
  for (const f of state.fields) {
    const el = $(`[data-key="${f.key}"]`);
    if (f.kind === "bool") { if (el.checked !== !!f.default) vals[f.key] = el.checked; continue; }
    if (f.kind === "choice") { const v = JSON.parse(el.value); if (JSON.stringify(v) !== JSON.stringify(f.default)) vals[f.key] = v; continue; }
    if (f.kind === "paths") { const v = el.value.split("\n").map((s) => s.trim()).filter(Boolean); if (v.length) vals[f.key] = v; continue; }
    if (el.value.trim() !== "") vals[f.key] = el.value.trim();
  }
  return vals;
}
function trainBody() {
  return $("#tab-yaml").classList.contains("on") ? {yaml: $("#yaml-text").value, values: {}} : {yaml: null, values: formValues()};
}
function showConfigErrors(errors) {
  $$(".field").forEach((el) => el.classList.remove("bad"));
  $$(".ferr").forEach((el) => { el.textContent = ""; });
  $("#err-config").textContent = "";
  for (const [key, lines] of Object.entries(errors || {})) {
    const slot = $(`.ferr[data-for="${key}"]`);
    if (slot && $("#tab-form").classList.contains("on")) {
      slot.textContent = lines.join("\n");
      slot.closest(".field").classList.add("bad");
      const det = slot.closest("details"); if (det) det.open = true;
    } else $("#err-config").textContent += lines.join("\n") + "\n";
  }
  const first = $(".field.bad"); if (first) first.scrollIntoView({block: "center"});
}
function planTable(rows) {
  return `<table class="tbl"><tr><th>decision</th><th>value</th><th>reason</th></tr>${rows.map((p) => `<tr><td>${esc(p.decision)}</td><td>${esc(typeof p.value === "object" ? JSON.stringify(p.value) : p.value)}</td><td>${esc(p.reason)}</td></tr>`).join("")}</table>`;
}
function renderEstimate(est) {
  if (!est) return "";
  const colour = {fits: "ok", tight: "warn"}[est.verdict] || "err";
  const parts = Object.entries(est.gib).filter(([k]) => !["total", "budget"].includes(k));
  return `<div class="card" id="train-estimate" style="margin:10px 0 0"><h3>memory estimate (chattune doctor): <span class="${colour}">${esc(est.verdict)}</span></h3>
    <div class="dim">${esc(est.model)} · ${esc(est.method)} · ${esc(est.dtype)} · ${esc(est.device)} · batch ${est.batch_size} × ${est.max_length} tokens ·
      params ${fmt(est.params)} · trainable ${fmt(est.trainable_params)}</div>
    <table class="tbl" style="max-width:520px;margin-top:6px"><tr><th>part</th><th>GiB</th></tr>${parts.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${v.toFixed(3)}</td></tr>`).join("")}
    <tr><td><b>total</b></td><td><b>${est.gib.total.toFixed(3)}</b></td></tr><tr><td>budget</td><td>${est.gib.budget.toFixed(3)}</td></tr></table>
    ${(est.advice || []).map((t) => `<div class="warn">· ${esc(t)}</div>`).join("")}</div>`;
}
async function trainCheck() {
  $("#train-result").innerHTML = `<div class="dim">checking …</div>`;
  const res = await api("/api/config/check", trainBody());
  showConfigErrors(res.errors);
  $("#train-result").innerHTML = res.ok ? `<div class="ok" id="train-ok">config valid → ${esc(res.output_dir)}</div>` + renderEstimate(res.estimate)
    + (res.plan ? `<div class="card" id="train-plan" style="margin:10px 0 0"><h3>run plan (what chattune train will decide here)</h3>${planTable(res.plan)}</div>` : "") : "";
  return res.ok;
}
async function trainStart() {
  $("#train-start").disabled = true;
  try {
    const res = await api("/api/train/start", trainBody());
    showConfigErrors({});
    $("#train-result").innerHTML = `<div class="ok">started ${esc(res.run)}</div>`;
    liveRun(res.run, $("#train-live"));
  } catch (e) {
    if (e.body && e.body.errors) { showConfigErrors(e.body.errors); $("#train-result").innerHTML = `<div class="err">nothing started: fix the fields marked in red</div>`; }
    else $("#err-config").textContent = e.message;
  } finally { $("#train-start").disabled = false; }
}
$("#train-check").addEventListener("click", trainCheck);
$("#train-start").addEventListener("click", trainStart);
$("#tab-form").addEventListener("click", () => { $("#tab-form").classList.add("on"); $("#tab-yaml").classList.remove("on"); $("#train-form").style.display = ""; $("#train-yaml").style.display = "none"; });
$("#tab-yaml").addEventListener("click", async () => {
  if (!$("#yaml-text").value.trim()) {  // start from the form's config, as the validator resolves it
    const res = await api("/api/config/check", {yaml: null, values: formValues()});
    $("#yaml-text").value = res.config_yaml || "";
    if (!res.ok) showConfigErrors(res.errors);
  }
  $("#tab-yaml").classList.add("on"); $("#tab-form").classList.remove("on"); $("#train-yaml").style.display = ""; $("#train-form").style.display = "none";
});

// ------------------------------------------------------------------ live run view (Train and Runs pages)
function progressHtml(v) {
  const frac = v.max_steps && v.step ? Math.min(1, v.step / v.max_steps) : (v.status === "finished" ? 1 : 0);
  return `<div class="row" style="justify-content:space-between"><div><span class="badge b-${v.status}" id="live-status">${esc(v.status)}</span>
    step <b id="live-step">${v.step ?? 0}</b>${v.max_steps ? " / " + v.max_steps : ""} · loss <b>${fmt(v.loss)}</b></div></div>
    <div class="progress" style="margin:8px 0"><div style="width:${(100 * frac).toFixed(1)}%"></div></div>`;
}
function lossChart(m) {
  return lineChart([{name: "train loss", color: "#2563eb", cls: "train", points: m.train},
                    {name: "eval loss", color: "#db2777", cls: "eval", points: m.eval}]);
}
function liveRun(name, box, onEnd) {
  if (state.live) state.live.abort();
  const ctl = new AbortController(); state.live = ctl;
  box.innerHTML = `<div class="card live" data-run="${esc(name)}"><div class="row" style="justify-content:space-between"><h3>${esc(name)}</h3>
    <div class="row"><button class="act danger" data-act="stop">Stop</button><button class="act alt" data-act="open">Open run →</button></div></div>
    <div class="live-progress"></div><div class="grid2"><div class="live-chart"></div><div><pre class="log live-log"></pre></div></div></div>`;
  box.querySelector('[data-act="stop"]').onclick = () => api(`/api/runs/${name}/stop`, {}).catch((e) => alert(e.message));
  box.querySelector('[data-act="open"]').onclick = () => { show("runs"); openRun(name); };
  sse(`/api/runs/${name}/events`, undefined, (v) => {
    if (v.end) { box.querySelector('[data-act="stop"]').disabled = true; loadChatRuns(); if (onEnd) onEnd(v); return; }
    box.querySelector(".live-progress").innerHTML = progressHtml(v);
    box.querySelector(".live-chart").innerHTML = lossChart(v.metrics);
    const log = box.querySelector(".live-log"); log.textContent = v.log || "(no output yet)"; log.scrollTop = log.scrollHeight;
    box.querySelector('[data-act="stop"]').disabled = v.status !== "running";
  }, ctl.signal).catch((e) => { if (e.name !== "AbortError") box.insertAdjacentHTML("beforeend", `<div class="err">${esc(e.message)}</div>`); });
}

// ------------------------------------------------------------------ Runs
async function loadRuns() {
  const {runs} = await api("/api/runs");
  $("#runs-root").textContent = state.info ? "in " + state.info.runs : "";
  $("#runs-list").innerHTML = runs.length ? `<table class="tbl" id="runs-table"><tr><th>run</th><th>status</th><th>step</th><th>last loss</th><th>updated</th></tr>` +
    runs.map((r) => `<tr class="click" data-run="${esc(r.name)}"><td>${esc(r.name)}</td><td><span class="badge b-${r.status}">${r.status}</span>${r.resumable ? ' <span class="dim">resumable</span>' : ""}</td>
      <td>${r.step ?? "–"}${r.max_steps ? " / " + r.max_steps : ""}</td><td>${fmt(r.loss)}</td><td class="dim">${r.updated ? new Date(r.updated * 1000).toLocaleString() : "–"}</td></tr>`).join("") + "</table>"
    : `<div class="empty">no runs yet under ${esc(state.info && state.info.runs)}: start one on the Train page</div>`;
  $$("#runs-table tr.click").forEach((tr) => tr.addEventListener("click", () => openRun(tr.dataset.run)));
}
function kvTable(obj) {
  return `<table class="kv">${Object.entries(obj || {}).map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(typeof v === "object" ? JSON.stringify(v) : v)}</td></tr>`).join("")}</table>`;
}
function metricTable(cols) {
  const names = Object.keys(cols), keys = [...new Set(names.flatMap((n) => Object.keys(cols[n] || {})))];
  return `<table class="tbl"><tr><th>metric</th>${names.map((n) => `<th>${esc(n)}</th>`).join("")}</tr>${keys.map((k) => `<tr><td>${esc(k)}</td>${names.map((n) => `<td>${fmt(cols[n][k])}</td>`).join("")}</tr>`).join("")}</table>`;
}
async function openRun(name) {
  $$("#runs-table tr").forEach((tr) => tr.classList.toggle("sel", tr.dataset.run === name));
  const d = await api(`/api/runs/${name}`);
  const box = $("#run-detail");
  let html = `<div class="card" id="run-view" data-run="${esc(name)}"><div class="row" style="justify-content:space-between"><h3>${esc(name)} <span class="badge b-${d.status}">${d.status}</span></h3><div class="row">
    ${d.status === "running" ? `<button class="act danger" id="run-stop">Stop</button>` : ""}${d.resumable ? `<button class="act" id="run-resume">Resume</button>` : ""}
    ${d.status === "finished" ? `<button class="act alt" id="run-chat">Chat with it →</button>` : ""}</div></div><div class="dim">${esc(d.path)}</div>`;
  if (d.job) html += `<div class="dim">started here: <code>${esc(d.job.cmd)}</code>${d.job.returncode !== null ? ` · exit code ${d.job.returncode}` : ""}${d.job.stopped ? " · stopped" : ""}</div>`;
  html += `</div><div id="run-live-box"></div><div class="grid2">`;
  const s = d.metrics.summary;
  html += `<div class="card"><h3>loss</h3>${lossChart(d.metrics)}${s ? `<div class="dim">train loss ${fmt(s.train_loss)} · ${fmt(s.train_runtime_s, 1)} s · ${fmt(s.tokens_per_s, 1)} tok/s</div>` : ""}</div>`;
  html += `<div class="card"><h3>data</h3>${d.data ? dataFiles(d.data) : `<div class="empty">no data.json yet</div>`}</div></div>`;
  if (d.plan) html += `<div class="card" id="run-plan"><h3>run plan: decisions and reasons</h3>${planTable(d.plan)}</div>`;
  for (const ev of d.evals || []) {
    if (ev.compare) html += `<div class="card"><h3>eval --compare: ${esc(ev.name)} <span class="dim">${esc(ev.compare.n)} examples · base ${esc(ev.compare.base_model)}</span></h3>${metricTable({base: ev.compare.base, tuned: ev.compare.tuned})}
      <table class="tbl" style="margin-top:8px"><tr><th>#</th><th>input</th><th>reference</th><th>base</th><th></th><th>tuned</th><th></th></tr>${ev.rows.map((r) => `<tr><td>${r.index}</td><td>${esc(r.input)}</td><td>${esc(r.reference)}</td><td>${esc(r.base_output)}</td><td>${esc(r.base_ok)}</td><td>${esc(r.tuned_output)}</td><td>${esc(r.tuned_ok)}</td></tr>`).join("")}</table></div>`;
    else html += `<div class="card"><h3>eval: ${esc(ev.name)}</h3>${metricTable({[name]: (ev.metrics && ev.metrics.metrics) || ev.metrics || {}})}</div>`;
  }
  for (const ex of d.exports || []) {
    html += `<div class="card export"><h3>export: ${esc(ex.target)}${ex.quant ? " (" + esc(ex.quant) + ")" : ""} <span class="dim">${esc(ex.folder)} · ${(ex.size / 2 ** 20).toFixed(1)} MiB · ${fmt(ex.seconds, 1)} s</span></h3>
      ${ex.verified ? `<table class="tbl"><tr><th>check</th><th>result</th></tr>${(ex.parity || []).map((p) => `<tr><td>${esc(p.name)}</td><td class="${p.ok ? "ok" : "err"}">${p.matched}/${p.total} (${fmt(p.percent, 1)}%)${p.first_mismatch ? " — first mismatch: " + esc(p.first_mismatch) : ""}</td></tr>`).join("")}
      ${ex.metric ? `<tr><td>${esc(ex.metric.name)} on ${ex.metric.n} held-out prompts</td><td>export ${fmt(ex.metric.engine, 3)} vs HF ${fmt(ex.metric.hf, 3)}</td></tr>` : ""}</table>` : `<div class="warn">not verified (--no-verify)</div>`}
      ${(ex.usage || []).length ? `<pre class="cfg" style="margin-top:8px">${esc(ex.usage.join("\n"))}</pre>` : ""}${(ex.notes || []).map((n) => `<div class="dim">· ${esc(n)}</div>`).join("")}</div>`;
  }
  if (d.demo && d.demo.html) html += `<div class="card"><h3>demo report</h3><iframe class="report" sandbox="" id="demo-report"></iframe></div>`;
  html += `<div class="grid2"><div class="card"><h3>config (chattune.yaml)</h3><pre class="cfg">${esc(d.config || "(not written yet)")}</pre></div>
    <div class="card"><h3>versions</h3>${d.versions ? kvTable(d.versions) : `<div class="empty">not written yet</div>`}</div></div>`;
  if (d.log) html += `<div class="card"><h3>training log (tail)</h3><pre class="log">${esc(d.log)}</pre></div>`;
  box.innerHTML = html;
  if (d.demo && d.demo.html) $("#demo-report").srcdoc = d.demo.html;
  if (d.status === "running") liveRun(name, $("#run-live-box"), () => loadRuns().then(() => openRun(name)));  // re-read at the end
  const on = (id, fn) => { const el = $(id); if (el) el.onclick = fn; };
  on("#run-stop", () => api(`/api/runs/${name}/stop`, {}).then(() => setTimeout(() => openRun(name), 800)));
  on("#run-resume", () => api(`/api/runs/${name}/resume`, {}).then(() => openRun(name)).catch((e) => alert(e.message)));
  on("#run-chat", () => { show("chat"); loadChatRuns(name); });
}
function dataFiles(d) {
  const files = d.files || d.train || [];
  const rows = (Array.isArray(files) ? files : []).map((f) => `<tr><td>${esc(f.path)}</td><td>${esc(f.format ?? "")}</td><td>${fmt(f.conversations ?? f.records)}</td><td><code>${esc((f.sha256 || "").slice(0, 16))}</code></td></tr>`).join("");
  const rest = Object.fromEntries(Object.entries(d).filter(([k, v]) => typeof v !== "object"));
  return (rows ? `<table class="tbl"><tr><th>file</th><th>shape</th><th>conv.</th><th>sha256</th></tr>${rows}</table>` : "") + kvTable(rest);
}

// ------------------------------------------------------------------ Chat
async function loadChatRuns(select) {
  const {runs} = await api("/api/runs");
  const done = runs.filter((r) => r.status === "finished");
  const el = $("#chat-run"), cur = select || el.value;
  el.innerHTML = done.length ? done.map((r) => `<option>${esc(r.name)}</option>`).join("") : `<option value="">(no finished run yet)</option>`;
  if (cur && done.some((r) => r.name === cur)) el.value = cur;
  if (select || !state.chat || state.chat.run !== el.value) resetChat();
}
function resetChat() {
  const compare = $("#chat-compare").checked;
  state.chat = {run: $("#chat-run").value, cols: compare ? [{role: "base", msgs: []}, {role: "tuned", msgs: []}] : [{role: "tuned", msgs: []}], ctl: null, ids: []};
  $("#chat-cols").className = "chatcols" + (compare ? " two" : "");
  $("#chat-cols").innerHTML = state.chat.cols.map((c, i) => `<div class="card"><h3>${c.role === "base" ? "base model" : "tuned: " + esc(state.chat.run)}</h3>
    <div class="transcript" id="chat-col-${i}" data-role="${c.role}"><div class="empty">say something</div></div></div>`).join("");
  $("#err-chat").textContent = "";
}
async function chatSend() {
  const text = $("#chat-input").value.trim();
  if (!text || !state.chat || !state.chat.run) { if (!state.chat || !state.chat.run) $("#err-chat").textContent = "pick a finished run"; return; }
  $("#chat-input").value = ""; $("#err-chat").textContent = "";
  const sys = $("#chat-system").value.trim(), ctl = new AbortController();
  state.chat.ctl = ctl; state.chat.ids = [];
  $("#chat-send").disabled = true; $("#chat-stop").disabled = false;
  const jobs = state.chat.cols.map(async (col, i) => {
    const box = $("#chat-col-" + i);
    if (box.querySelector(".empty")) box.innerHTML = "";
    col.msgs.push({role: "user", content: text});
    box.insertAdjacentHTML("beforeend", `<div class="msg user">${esc(text)}</div>`);
    const bubble = document.createElement("div"); bubble.className = "msg assistant streaming"; box.appendChild(bubble);
    let reply = "";
    const think = $("#chat-thinking");
    const body = {run: state.chat.run, base: col.role === "base", temperature: parseFloat($("#chat-temp").value) || 0,
                  max_new_tokens: parseInt($("#chat-max").value, 10) || 128, thinking: think.disabled ? null : think.checked,
                  messages: (sys ? [{role: "system", content: sys}] : []).concat(col.msgs)};
    try {
      await sse("/api/chat", body, (ev) => {
        if (ev.id) {
          state.chat.ids.push(ev.id); think.disabled = !ev.thinking_supported;
          $("#chat-system").placeholder = ev.system ? "(the run's own: " + ev.system + ")" : "(none)";
        }
        if (ev.delta) { reply += ev.delta; bubble.textContent = reply; box.scrollTop = box.scrollHeight; }
        if (ev.error) $("#err-chat").textContent = ev.error;
        if (ev.done) {
          reply = ev.done.content ?? ev.done.text; bubble.textContent = reply;  // history keeps the answer only
          if (ev.done.reasoning) bubble.insertAdjacentHTML("afterbegin", `<span class="think">${esc(ev.done.reasoning)}</span>`);
          bubble.insertAdjacentHTML("beforeend", `<span class="meta">${ev.done.completion_tokens} tokens · ${ev.done.finish_reason === "length" ? "cut at max new tokens" : "stopped at end of turn"}</span>`);
        }
      }, ctl.signal);
    } catch (e) { if (e.name !== "AbortError") $("#err-chat").textContent = e.message; }
    bubble.classList.remove("streaming"); bubble.classList.add("done");
    col.msgs.push({role: "assistant", content: reply});
  });
  await Promise.all(jobs);
  $("#chat-send").disabled = false; $("#chat-stop").disabled = true;
}
$("#chat-send").addEventListener("click", chatSend);
$("#chat-input").addEventListener("keydown", (ev) => { if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); chatSend(); } });
$("#chat-stop").addEventListener("click", () => { (state.chat.ids || []).forEach((id) => api("/api/chat/stop", {id})); });
$("#chat-reset").addEventListener("click", resetChat);
$("#chat-compare").addEventListener("change", resetChat);
$("#chat-run").addEventListener("change", resetChat);

// ------------------------------------------------------------------ start
(async () => {
  state.info = await api("/api/info");
  $("#where").textContent = "runs: " + state.info.runs;
  await Promise.all([loadFiles(), buildForm()]);
})().catch((e) => { document.body.insertAdjacentHTML("afterbegin", `<div class="err" style="padding:10px">${esc(e.message)}</div>`); });
