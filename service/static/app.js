// pcgen playground: builds a /generate request, streams it over SSE (fetch + ReadableStream, since
// EventSource cannot POST), and shows each output with the words that satisfied each keyword highlighted.
"use strict";

const $ = (id) => document.getElementById(id);
const keywords = []; // {text, inflections, case, forms (from the last response, or null)}
let controller = null;
let sentSchema = null; // the JSON task's schema as sent with the last request: outputs are checked against it

// small enough for the demo models' 24 tokens (their tokenizer spells JSON nearly character by character):
// the shortest document, {"animal":"","legs":0}, takes 19
const JSON_PRESET_SCHEMA = {
  type: "object",
  properties: {
    animal: { type: "string", maxLength: 12 },
    legs: { type: "integer", minimum: 0, maximum: 8 },
  },
  required: ["animal", "legs"],
  additionalProperties: false,
};

const PRESETS = {
  commongen: { keywords: ["dog", "frisbee", "catch", "park"], constraint: "" },
  positions: { keywords: [], constraint: JSON.stringify({ all: [{ word_at: 3, word: "pan" }, { word_at: 5, word: "vegetable" }] }, null, 1) },
  forbidden: { keywords: ["dog"], constraint: JSON.stringify({ all: [{ keyword: "dog" }, { forbidden: ["cat"] }] }, null, 1) },
  ordered: { keywords: [], constraint: JSON.stringify({ ordered: ["wake", "coffee", "work"] }, null, 1) },
  counting: { keywords: [], constraint: JSON.stringify({ all: [{ count: "dog", min: 2, max: 2 }, { at_least: 1, of: ["park", "beach", "lake"] }, { word_at: -1, word: "ball", inflections: true }] }, null, 1) },
  insert: { keywords: ["kite"], constraint: "", task: "insert", prompt: "The girl went to the lake", suffix: " and smiled.",
            minWords: 3, maxWords: 10 },
  json: { keywords: [], constraint: "", task: "json", prompt: "", schema: JSON.stringify(JSON_PRESET_SCHEMA, null, 2),
          maxNewTokens: 24 },
};

function renderChips() {
  const box = $("chips");
  box.replaceChildren();
  keywords.forEach((kw, i) => {
    const chip = document.createElement("span");
    chip.className = "chip";
    chip.dataset.keyword = kw.text;
    const label = document.createElement("span");
    label.textContent = kw.text;
    chip.append(label);
    const toggle = document.createElement("label");
    const inflections = document.createElement("input");
    inflections.type = "checkbox";
    inflections.checked = kw.inflections;
    inflections.setAttribute("aria-label", `inflections for ${kw.text}`);
    inflections.addEventListener("change", () => { kw.inflections = inflections.checked; kw.forms = null; renderChips(); });
    toggle.append(inflections, "inflections");
    chip.append(toggle);
    const caseSelect = document.createElement("select");
    caseSelect.setAttribute("aria-label", `case for ${kw.text}`);
    for (const mode of ["natural", "sensitive", "any"]) caseSelect.append(new Option(`case: ${mode}`, mode));
    caseSelect.value = kw.case;
    caseSelect.addEventListener("change", () => { kw.case = caseSelect.value; kw.forms = null; renderChips(); });
    chip.append(caseSelect);
    const remove = document.createElement("button");
    remove.type = "button";
    remove.textContent = "×";
    remove.setAttribute("aria-label", `remove ${kw.text}`);
    remove.addEventListener("click", () => { keywords.splice(i, 1); renderChips(); $("keyword-input").focus(); });
    chip.append(remove);
    if (kw.forms) {
      // what the server's compiler accepts for this keyword, from the last response
      const forms = document.createElement("span");
      forms.className = "forms";
      forms.dataset.testid = "forms";
      forms.textContent = kw.forms.join(" · ");
      chip.append(forms);
    }
    box.append(chip);
  });
}

function addKeyword(text) {
  text = (text || "").trim();
  if (!text || keywords.some((k) => k.text === text)) return;
  keywords.push({ text, inflections: true, case: "natural", forms: null });
  renderChips();
}

function task() {
  return document.querySelector("input[name=task]:checked").value;
}

function setTask(value) {
  document.querySelector(`input[name=task][value=${value}]`).checked = true;
  document.body.classList.toggle("insert", value === "insert");
  document.body.classList.toggle("json", value === "json");
  $("prompt-label").textContent = value === "insert" ? "Prefix" : "Prompt";
  $("prompt").placeholder = value === "insert" ? "text before the inserted span" : "(optional) text to continue";
}

function applyPreset(name) {
  const preset = PRESETS[name];
  keywords.length = 0;
  preset.keywords.forEach(addKeyword);
  renderChips();
  setTask(preset.task || "continue");
  if (preset.prompt !== undefined) $("prompt").value = preset.prompt;
  $("suffix").value = preset.suffix || "";
  $("min_words").value = preset.minWords ?? "";
  $("max_words").value = preset.maxWords ?? "";
  $("constraint").value = preset.constraint;
  if (preset.schema !== undefined) $("schema").value = preset.schema;
  if (preset.maxNewTokens !== undefined) $("max_new_tokens").value = preset.maxNewTokens;
  $("advanced").open = Boolean(preset.constraint);
  hideFieldError();
}

function showFieldError(message) {
  if (task() === "json" && !$("constraint").value.trim()) { showSchemaError(message); return; }
  const el = $("constraint-error");
  el.textContent = message;
  el.hidden = false;
  $("advanced").open = true;
  $("constraint").setAttribute("aria-invalid", "true");
}

function hideFieldError() {
  $("constraint-error").hidden = true;
  $("constraint").removeAttribute("aria-invalid");
  $("schema-error").hidden = true;
  $("schema").removeAttribute("aria-invalid");
}

function showSchemaError(message) {
  const el = $("schema-error");
  el.textContent = message;
  el.hidden = false;
  $("schema").setAttribute("aria-invalid", "true");
}

function schemaPart() {
  // the JSON task: the schema box as a json_schema constraint (kept for checking the outputs)
  try {
    sentSchema = JSON.parse($("schema").value);
  } catch (err) {
    throw { field: `schema: not valid JSON (${err.message})` };
  }
  return { json_schema: sentSchema };
}

function showError(message) {
  const el = $("error");
  el.textContent = message;
  el.hidden = !message;
}

function numberField(id) {
  const value = $(id).value;
  return value === "" ? undefined : Number(value);
}

function buildRequest() {
  const body = { prompt: $("prompt").value, stream: true, max_new_tokens: numberField("max_new_tokens"),
                 min_new_tokens: numberField("min_new_tokens"), num_return_sequences: numberField("num_return_sequences"),
                 hmm_weight: numberField("hmm_weight") };
  if ($("mode").value === "sample") {
    Object.assign(body, { do_sample: true, num_beams: 1, temperature: numberField("temperature"),
                          top_p: numberField("top_p"), seed: numberField("seed") });
  } else {
    Object.assign(body, { do_sample: false, num_beams: Math.max(numberField("num_beams") || 1, body.num_return_sequences || 1) });
  }
  const parts = [];
  const advanced = $("constraint").value.trim();
  sentSchema = null;
  if (advanced) {
    try {
      parts.push(JSON.parse(advanced));
    } catch (err) {
      throw { field: `constraint: not valid JSON (${err.message})` };
    }
  } else {
    if (task() === "json") parts.push(schemaPart());
    parts.push(...keywords.map((k) => ({ keyword: k.text, inflections: k.inflections, case: k.case })));
  }
  const minWords = numberField("min_words"), maxWords = numberField("max_words");
  if ((minWords !== undefined || maxWords !== undefined) && task() !== "json") {
    parts.push({ word_count: { min: minWords ?? 0, ...(maxWords !== undefined ? { max: maxWords } : {}) } });
  }
  if (!parts.length) {
    throw { field: "constraint: add at least one keyword or a word count, or write a constraint in the advanced box" };
  }
  body.constraint = parts.length === 1 ? parts[0] : { all: parts };
  if (task() === "insert") {
    if (!$("suffix").value) throw { field: "suffix: write the text the inserted span must lead into" };
    body.suffix = $("suffix").value;
  }
  for (const key of Object.keys(body)) if (body[key] === undefined) delete body[key];
  return body;
}

function describeValidation(detail) {
  // FastAPI 422: [{loc: ["body", "constraint", ...], msg}]; pcgen errors: {error: {type, message, path}}
  if (detail && detail.error) {
    const e = detail.error;
    return { field: e.path ? `${e.path}: ${e.message}` : e.message, constraint: true };
  }
  const items = Array.isArray(detail && detail.detail) ? detail.detail : [];
  const lines = items.map((d) => `${(d.loc || []).filter((p) => p !== "body").join(".")}: ${d.msg}`);
  const constraint = items.some((d) => (d.loc || []).includes("constraint") || (d.loc || []).includes("keywords"));
  return { field: lines.join("\n") || "invalid request", constraint };
}

async function explainFailure(response) {
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  if (response.status === 422) {
    const { field, constraint } = describeValidation(body);
    if (constraint) showFieldError(field); else showError(`Invalid request: ${field}`);
  } else if (response.status === 429) {
    const wait = response.headers.get("Retry-After");
    showError(`The server is busy (too many requests). Try again${wait ? ` in ${wait} seconds` : " shortly"}.`);
  } else if (response.status === 401) {
    showError("This server needs an API key: enter it in the API key field and generate again.");
    document.body.classList.add("needs-key");
    $("api-key").focus();
  } else if (response.status === 413) {
    showError("The request is too large for this server.");
  } else if (response.status === 504) {
    showError("The generation took longer than the server allows (timeout). Try fewer tokens or beams.");
  } else {
    showError(`The server answered ${response.status}: ${(body && body.error && body.error.message) || response.statusText}`);
  }
}

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}

function highlight(text, matches) {
  // matches: [{keyword, start, end}] character spans from the server's checker
  const spans = (matches || []).slice().sort((a, b) => a.start - b.start);
  let html = "", at = 0;
  for (const m of spans) {
    if (m.start < at) continue;
    html += escapeHtml(text.slice(at, m.start));
    html += `<mark title="satisfies: ${escapeHtml(m.keyword)}" data-keyword="${escapeHtml(m.keyword)}">${escapeHtml(text.slice(m.start, m.end))}</mark>`;
    at = m.end;
  }
  return html + escapeHtml(text.slice(at));
}

function renderResult(result) {
  const list = $("results");
  list.replaceChildren();
  result.outputs.forEach((out, i) => {
    const li = document.createElement("li");
    const ok = out.constraint_satisfied;
    const inserting = task() === "insert";
    const before = inserting ? `<span class="context">${escapeHtml($("prompt").value)}</span>` : escapeHtml($("prompt").value);
    const after = inserting ? `<span class="context">${escapeHtml($("suffix").value)}</span>` : "";
    li.innerHTML = `<span class="badge ${ok ? "ok" : "bad"}" data-testid="badge">${ok ? "satisfied" : "not satisfied"}</span>` +
      `<span class="text" data-testid="output-text">${before}<span data-testid="span">${highlight(out.text, out.matches)}</span>${after}</span>` +
      `<div class="meta">#${i + 1} · finish: ${out.finish_reason} · LM log-likelihood ${out.logprob.toFixed(2)}</div>`;
    if (sentSchema !== null) li.append(...jsonView(out.text, sentSchema));
    list.append(li);
  });
  const t = result.timings || {};
  const rows = [["queue", t.queue_ms], ["DFA compile", t.dfa_ms], ["guide precompute", t.precompute_ms],
                ["decode", t.decode_ms], ["total", t.total_ms]].filter(([, v]) => v !== undefined)
    .map(([k, v]) => `<dt>${k}</dt><dd>${v.toFixed(1)} ms</dd>`);
  if (result.dfa_states !== undefined) rows.push(`<dt>DFA size</dt><dd>${result.dfa_states} states</dd>`);
  if (result.cached) rows.push(`<dt>cache</dt><dd>hit</dd>`);
  $("timings").innerHTML = rows.join("");
  $("timings").hidden = rows.length === 0;
  showForms(result.keywords || []);
}

function jsonView(text, schema) {
  // the output pretty-printed, and the page's own check of it against the schema (schema_check.js)
  const pre = document.createElement("pre");
  pre.className = "json-output";
  pre.dataset.testid = "json-output";
  const verdict = document.createElement("div");
  verdict.dataset.testid = "schema-check";
  let problems;
  try {
    const value = JSON.parse(text);
    pre.textContent = JSON.stringify(value, null, 2);
    problems = checkSchema(schema, value);
  } catch (err) {
    pre.textContent = text;
    problems = [`not JSON: ${err.message}`];
  }
  verdict.className = `schema-check ${problems.length ? "bad" : "ok"}`;
  verdict.textContent = problems.length ? `schema check in the page: invalid (${problems.join("; ")})`
    : "schema check in the page: valid";
  return [pre, verdict];
}

function showForms(entries) {
  // entries: [{keyword, case, polarity, forms}] as the server expanded them
  const required = entries.filter((e) => e.polarity === "required");
  for (const kw of keywords) {
    const entry = required.find((e) => e.keyword === kw.text && e.case === kw.case);
    kw.forms = entry ? entry.forms : null;
  }
  renderChips();
  const list = $("forms");
  list.replaceChildren();
  for (const e of entries) {
    const dt = document.createElement("dt");
    dt.textContent = `${e.polarity === "forbidden" ? "never: " : ""}${e.keyword} (case ${e.case})`;
    const dd = document.createElement("dd");
    dd.textContent = e.forms.join(", ");
    list.append(dt, dd);
  }
  list.hidden = entries.length === 0;
}

async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const raw = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let event = "message", data = "";
      for (const line of raw.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trim();
      }
      if (data) onEvent(event, JSON.parse(data));
    }
  }
}

async function generate(event) {
  event.preventDefault();
  showError("");
  hideFieldError();
  let body;
  try { body = buildRequest(); } catch (err) { showFieldError(err.field); return; }
  const headers = { "Content-Type": "application/json", Accept: "text/event-stream" };
  const key = $("api-key").value.trim();
  if (key) headers.Authorization = `Bearer ${key}`;
  controller = new AbortController();
  $("generate").disabled = true;
  $("stop").disabled = false;
  $("output").setAttribute("aria-busy", "true");
  $("results").replaceChildren();
  $("timings").hidden = true;
  const streams = [];
  const inserting = task() === "insert";
  $("stream-prefix").textContent = inserting ? $("prompt").value : "";
  $("stream-suffix").textContent = inserting ? $("suffix").value : "";
  $("stream-span").textContent = "";
  try {
    const response = await fetch("generate", { method: "POST", headers, body: JSON.stringify(body), signal: controller.signal });
    if (!response.ok) { await explainFailure(response); return; }
    await readEvents(response, (kind, data) => {
      if (kind === "token") {
        streams[data.index] = (streams[data.index] || "") + data.text;
        $("stream-span").textContent = streams.map((s, i) => (streams.length > 1 ? `[${i + 1}] ` : "") + (s || "")).join("\n");
      } else if (kind === "result") {
        renderResult(data);
      } else if (kind === "error") {
        showError(data.error ? data.error.message : "generation failed");
      }
    });
  } catch (err) {
    if (err.name !== "AbortError") showError(`Network error: ${err.message}`);
  } finally {
    $("generate").disabled = false;
    $("stop").disabled = true;
    $("output").setAttribute("aria-busy", "false");
    controller = null;
  }
}

function init() {
  document.body.classList.add("beam");
  document.querySelectorAll("input[name=task]").forEach((r) => r.addEventListener("change", () => setTask(task())));
  $("mode").addEventListener("change", () => {
    document.body.classList.toggle("sample", $("mode").value === "sample");
    document.body.classList.toggle("beam", $("mode").value !== "sample");
  });
  $("keyword-input").addEventListener("keydown", (e) => {
    if (e.key === "Enter") { e.preventDefault(); addKeyword(e.target.value); e.target.value = ""; }
    else if (e.key === "Backspace" && !e.target.value && keywords.length) { keywords.pop(); renderChips(); }
  });
  $("add-keyword").addEventListener("click", () => { addKeyword($("keyword-input").value); $("keyword-input").value = ""; });
  document.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", () => applyPreset(b.dataset.preset)));
  $("constraint").addEventListener("input", hideFieldError);
  $("form").addEventListener("submit", generate);
  $("stop").addEventListener("click", () => controller && controller.abort());
  applyPreset("commongen");
}

init();
