// tunelab serve: the Runs view (what each served run is and how it trained) and the
// Playground (one prompt to several models side by side, streamed). No dependencies, no build.
"use strict";

const LOWER_IS_BETTER = new Set(["loss", "perplexity", "repetition", "length_ratio"]);
const $ = (selector, root = document) => root.querySelector(selector);
let served = { base: "", runs: [] };

function headers() {
  const key = localStorage.getItem("tunelab-key");
  const result = { "Content-Type": "application/json" };
  if (key) result.Authorization = `Bearer ${key}`;
  return result;
}

async function getJSON(path) {
  const response = await fetch(path, { headers: headers() });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
  return body;
}

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value);
  }
  for (const child of children) node.append(child);
  return node;
}

function number(value, digits = 4) {
  if (value === null || value === undefined) return "–";
  if (Number.isInteger(value)) return value.toLocaleString("en");
  return Number(value).toPrecision(digits);
}

// ---- Runs -----------------------------------------------------------------------------
function lossCurve(points) {
  const svgNS = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(svgNS, "svg");
  const [width, height, pad] = [180, 48, 4];
  svg.setAttribute("class", "curve");
  svg.setAttribute("width", width);
  svg.setAttribute("height", height);
  if (points.length < 2) {
    const note = document.createElementNS(svgNS, "text");
    note.setAttribute("x", 2);
    note.setAttribute("y", height / 2);
    note.textContent = points.length ? `loss ${number(points[0][1])}` : "no curve";
    svg.append(note);
    return svg;
  }
  const steps = points.map((p) => p[0]);
  const losses = points.map((p) => p[1]);
  const [x0, x1] = [Math.min(...steps), Math.max(...steps)];
  const [y0, y1] = [Math.min(...losses), Math.max(...losses)];
  const x = (s) => pad + ((s - x0) / (x1 - x0 || 1)) * (width - 2 * pad);
  const y = (l) => pad + (1 - (l - y0) / (y1 - y0 || 1)) * (height - 2 * pad - 8);
  const line = document.createElementNS(svgNS, "polyline");
  line.setAttribute("points", points.map(([s, l]) => `${x(s).toFixed(1)},${y(l).toFixed(1)}`).join(" "));
  const label = document.createElementNS(svgNS, "text");
  label.setAttribute("x", pad);
  label.setAttribute("y", height - 1);
  label.textContent = `${number(losses[0], 3)} → ${number(losses[losses.length - 1], 3)} (step ${x1})`;
  svg.append(line, label);
  return svg;
}

function metrics(before, after) {
  const cell = element("td");
  for (const name of Object.keys(after || {})) {
    const [b, a] = [before ? before[name] : undefined, after[name]];
    let verdict = "";
    if (b !== undefined && a !== b) verdict = (a < b) === LOWER_IS_BETTER.has(name) ? "better" : "worse";
    const text = b === undefined ? `${name} ${number(a)}` : `${name} ${number(b)} → ${number(a)}`;
    cell.append(element("span", { class: `metric ${verdict}`, text }));
  }
  return cell;
}

function runRow(run) {
  const s = run.summary;
  const data = run.data.eval ? `${run.data.train} (eval ${run.data.eval})` : run.data.train;
  return element("tr", { "data-run": run.id },
    element("td", {}, element("span", { class: "name", text: run.id }),
      element("span", { class: "hash", text: (run.content_hash || "").slice(0, 19), title: run.root })),
    element("td", { text: run.method }),
    element("td", { text: data }),
    element("td", { class: "num", text: `${number(s.trainable_params)} (${number(s.trainable_percent, 3)}%)` }),
    element("td", { class: "num", text: `${number(s.train_seconds, 3)} s · ${number(s.steps)} steps` }),
    metrics(s.before, s.after),
    element("td", {}, lossCurve(run.loss_curve)));
}

async function showRuns() {
  served = await getJSON("/tunelab/runs");
  $("#base").textContent = `base: ${served.base}`;
  $("#key-box").hidden = !served.auth;
  const body = $("#run-table tbody");
  body.replaceChildren(...served.runs.map(runRow));
  $("#run-table").hidden = served.runs.length === 0;
  $("#status").textContent = served.runs.length ? `${served.runs.length} runs served` : "no runs served (base only)";
  const { reports } = await getJSON("/tunelab/reports");
  if (reports.length) {
    const key = localStorage.getItem("tunelab-key");
    const query = key ? `?key=${encodeURIComponent(key)}` : "";
    $("#reports").replaceChildren(...reports.map((r) =>
      element("li", {}, element("a", { href: r.url + query, target: "_blank", text: r.title }))));
  }
  showChoices();
}

// ---- Playground -----------------------------------------------------------------------
function showChoices() {
  const names = ["base", ...served.runs.map((run) => run.id)];
  $("#choices").replaceChildren(...names.map((name, index) => element("label", { class: "model-choice" },
    Object.assign(element("input", { type: "checkbox", value: name }), { checked: index < 4 }), ` ${name}`)));
}

function settings() {
  const body = { max_tokens: Number($("#max_tokens").value) || 64 };
  const temperature = Number($("#temperature").value);
  if (temperature > 0) {
    body.temperature = temperature;
    body.top_p = Number($("#top_p").value) || 1;
  }
  for (const name of ["seed", "repetition_penalty", "no_repeat_ngram_size"]) {
    if ($(`#${name}`).value !== "") body[name] = Number($(`#${name}`).value);
  }
  return body;
}

function snippet(model, prompt, options) {
  const body = { model, messages: [{ role: "user", content: prompt }], ...options };
  const extra = {};
  for (const name of ["repetition_penalty", "no_repeat_ngram_size"]) {
    if (name in options) { extra[name] = options[name]; delete body[name]; }
  }
  const curlBody = JSON.stringify({ ...body, ...extra }).replaceAll("'", "'\\''");
  const auth = localStorage.getItem("tunelab-key") ? " -H 'Authorization: Bearer $TUNELAB_KEY'" : "";
  const args = Object.entries(body).filter(([k]) => k !== "model" && k !== "messages")
    .map(([k, v]) => `, ${k}=${JSON.stringify(v)}`).join("");
  const extraArg = Object.keys(extra).length ? `, extra_body=${JSON.stringify(extra)}` : "";
  return [
    `curl ${location.origin}/v1/chat/completions -H 'Content-Type: application/json'${auth} \\`,
    `  -d '${curlBody}'`,
    "",
    "from openai import OpenAI",
    `client = OpenAI(base_url="${location.origin}/v1", api_key="${auth ? "$TUNELAB_KEY" : "unused"}")`,
    `reply = client.chat.completions.create(model=${JSON.stringify(model)}, messages=${JSON.stringify(body.messages)}${args}${extraArg})`,
    "print(reply.choices[0].message.content)",
  ].join("\n");
}

async function streamOne(model, prompt, options, panel) {
  const text = $(".text", panel);
  const stats = $(".stats", panel);
  const started = performance.now();
  let first = null;
  let usage = null;
  const response = await fetch("/v1/chat/completions", {
    method: "POST", headers: headers(),
    body: JSON.stringify({ model, messages: [{ role: "user", content: prompt }], stream: true,
      stream_options: { include_usage: true }, ...options }),
  });
  if (!response.ok) {
    const body = await response.json();
    throw new Error(body.error ? body.error.message : response.statusText);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += value;
    const events = buffer.split("\n\n");
    buffer = events.pop();
    for (const event of events) {
      const data = event.replace(/^data: /, "");
      if (data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new Error(chunk.error.message);
      if (chunk.usage) usage = chunk.usage;
      const delta = chunk.choices.length ? chunk.choices[0].delta.content : "";
      if (delta) {
        if (first === null) first = performance.now();
        text.textContent += delta;
      }
    }
  }
  const seconds = (performance.now() - started) / 1000;
  const tokens = usage ? usage.completion_tokens : 0;
  const ttft = first === null ? "–" : `${((first - started) / 1000).toFixed(2)} s`;
  stats.textContent = `${seconds.toFixed(2)} s · first token ${ttft} · ${tokens} tokens · ${(tokens / seconds).toFixed(1)} tok/s`;
}

function send() {
  const prompt = $("#prompt").value;
  const options = settings();
  const models = [...document.querySelectorAll(".model-choice input:checked")].map((box) => box.value);
  const others = models.slice(1);
  const note = others.length ? `\n\n# the same for ${others.join(", ")}: change model=` : "";
  $("#snippet").textContent = snippet(models[0] || "base", prompt, options) + note;
  $("#outputs").replaceChildren();
  for (const model of models) {
    const panel = element("div", { class: "output", "data-model": model },
      element("h3", { text: model }), element("div", { class: "text" }),
      element("div", { class: "stats", text: "waiting…" }));
    $("#outputs").append(panel);
    streamOne(model, prompt, options, panel)
      .catch((error) => { panel.classList.add("error"); $(".text", panel).textContent = error.message; })
      .finally(() => { panel.dataset.done = "1"; });
  }
}

// ---- wiring ---------------------------------------------------------------------------
for (const tab of document.querySelectorAll(".tab")) {
  tab.addEventListener("click", () => {
    for (const other of document.querySelectorAll(".tab")) other.classList.toggle("active", other === tab);
    for (const view of document.querySelectorAll(".view")) view.hidden = view.id !== tab.dataset.view;
  });
}
$("#send").addEventListener("click", send);
$("#copy").addEventListener("click", () => navigator.clipboard && navigator.clipboard.writeText($("#snippet").textContent));
$("#api-key").value = localStorage.getItem("tunelab-key") || "";
$("#api-key").addEventListener("change", (event) => {
  localStorage.setItem("tunelab-key", event.target.value);
  showRuns().catch(showError);
});

function showError(error) {
  $("#status").textContent = `could not read the runs: ${error.message}`;
  $("#key-box").hidden = false;
}
showRuns().catch(showError);
