// The /annotate/ page: the annotate -> train loop on NiiVue (served from npm's @niivue/niivue dist, no build step).
// Everything goes through the app's REST API: /info/, /annotate/api/studies, /activelearning/{strategy},
// /datastore/image, /infer/refsam3d, PUT /datastore/label (final), /train/refsam3d, /model/refsam3d/versions.
import { Niivue, NVImage, SHOW_RENDER } from "./niivue/index.js";

const MODEL = "refsam3d";
const $ = (id) => document.getElementById(id);
const state = { info: null, labels: {}, studies: [], study: null, tool: "navigate", overlay: true, polling: null };
const nv = new Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, multiplanarShowRender: SHOW_RENDER.ALWAYS,
                        dragAndDropEnabled: false });
window.refsam3d = { nv, state, labelBytes: () => labelBytes() };  // for tests and the curious

function say(text, error = false) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function api(path, options = {}) {
  const response = await fetch(path, options);
  if (!response.ok) {
    let detail = await response.text();
    try { detail = JSON.parse(detail).detail || detail; } catch (e) { /* plain text */ }
    throw new Error(`${response.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
  }
  return response;
}

async function guarded(what, fn) {
  say(`${what}...`);
  try {
    const result = await fn();
    say(`${what}: done`);
    return result;
  } catch (e) {
    say(`${what} failed: ${e.message}`, true);
    throw e;
  }
}

// ------------------------------------------------------------------ server state
async function loadInfo() {
  state.info = await (await api("/info/")).json();
  const model = state.info.models[MODEL];
  state.labels = model.labels;
  $("app-name").textContent = state.info.name;
  $("strategy").replaceChildren(...Object.entries(state.info.strategies).map(([name, s]) => {
    const o = new Option(name, name);
    o.title = s.description;
    return o;
  }));
  $("structures").replaceChildren(...Object.entries(state.labels).filter(([, v]) => v !== 255).map(([name, v]) => {
    const li = document.createElement("li");
    li.innerHTML = `<label><input type="checkbox" value="${name}"> ${name} <small>(${v})</small></label>`;
    return li;
  }));
  $("pen-label").replaceChildren(...Object.entries(state.labels).map(([name, v]) => new Option(`${name} (${v})`, v)));
  for (const w of state.info.warnings || []) say(w, true);
  await showVersions();
  showTraining(state.info.train_stats ? state.info.train_stats[MODEL] : null);
}

async function loadStudies() {
  state.studies = (await (await api("/annotate/api/studies")).json()).studies;
  $("studies").replaceChildren(...state.studies.map((s) => {
    const li = document.createElement("li");
    li.textContent = s.id;
    li.dataset.id = s.id;
    li.className = (s.labelled ? "labelled " : "") + (s.id === state.study ? "current" : "");
    li.onclick = () => openStudy(s.id);
    return li;
  }));
}

async function showVersions() {
  const v = await (await api(`/model/${MODEL}/versions`)).json();
  $("weights").textContent = `weights: ${v.served || "not loaded yet"} (${v.versions.length} earlier kept)`;
  $("versions").replaceChildren(...v.versions.map((ver) => {
    const li = document.createElement("li");
    const dice = ver.validation_dice ?? (ver.test ? ver.test.dice : null);
    li.textContent = `${ver.id} ${dice != null ? "Dice " + dice : ""} - ${ver.reason} `;
    const b = document.createElement("button");
    b.textContent = "Restore";
    b.onclick = () => guarded(`Restoring ${ver.id}`, async () => {
      await api(`/model/${MODEL}/versions/${encodeURIComponent(ver.id)}/restore`, { method: "POST" });
      await showVersions();
    });
    li.append(b);
    return li;
  }));
}

// ------------------------------------------------------------------ studies
async function openStudy(id) {
  await guarded(`Opening ${id}`, async () => {
    const url = `/datastore/image?image=${encodeURIComponent(id)}`;
    await nv.loadVolumes([{ url, name: `${id}.nii.gz` }]);
    nv.createEmptyDrawing();
    state.study = id;
    $("study-title").textContent = id;
    setTool(state.tool);
    await loadStudies();
  });
}

async function nextSample() {
  const strategy = $("strategy").value;
  const sample = await guarded(`Next sample (${strategy})`, async () =>
    (await api(`/activelearning/${encodeURIComponent(strategy)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: "{}" })).json());
  if (sample && sample.id) await openStudy(sample.id);
  else say("Next sample: every study has a final label", true);
}

// ------------------------------------------------------------------ prompts
async function segment(params) {
  if (!state.study) return say("open a study first", true);
  await guarded("Segmenting", async () => {
    const form = new FormData();
    form.append("params", JSON.stringify({ ...params, result_extension: ".nii.gz", result_dtype: "uint8" }));
    const url = `/infer/${MODEL}?image=${encodeURIComponent(state.study)}&output=image`;
    const blob = await (await api(url, { method: "POST", body: form })).blob();
    const mask = await NVImage.loadFromUrl({ url: URL.createObjectURL(blob), name: "mask.nii.gz" });
    if (!nv.loadDrawing(mask)) throw new Error("the mask does not match the image's grid");
    setTool(state.tool);
  });
}

function tickedStructures() {
  return [...document.querySelectorAll("#structures input:checked")].map((i) => i.value);
}

// ------------------------------------------------------------------ editing
function setTool(tool) {
  state.tool = tool;
  for (const b of document.querySelectorAll(".tool")) b.classList.toggle("active", b.id === tool);
  nv.setDrawingEnabled(tool !== "navigate");
  nv.setPenValue(tool === "eraser" ? 0 : Number($("pen-label").value || 1), false);
  nv.opts.penSize = Number($("pen-size").value);
}

function toggleOverlay() {
  state.overlay = !state.overlay;
  nv.setDrawOpacity(state.overlay ? 0.5 : 0);
  $("toggle").classList.toggle("active", !state.overlay);
}

async function labelBytes() {
  return nv.saveImage({ filename: "", isSaveDrawing: true, volumeByIndex: 0 });  // NIfTI in the image's grid
}

async function save() {
  if (!state.study) return say("open a study first", true);
  await guarded(`Saving the final label of ${state.study}`, async () => {
    const form = new FormData();
    form.append("label", new Blob([await labelBytes()]), "label.nii");
    form.append("params", JSON.stringify({ label_info: Object.entries(state.labels).map(([name, idx]) => ({ name, idx })) }));
    await api(`/datastore/label?image=${encodeURIComponent(state.study)}&tag=final`, { method: "PUT", body: form });
    await loadStudies();
    state.info = await (await api("/info/")).json();
  });
}

// ------------------------------------------------------------------ training
function showTraining(ts) {
  if (!ts || !ts.total_epochs || ts.status === "NOT STARTED") {
    $("train-stats").textContent = "no training run yet";
    return;
  }
  const done = ts.status === "DONE";
  const percent = done ? 100 : Math.min(100, Math.round(100 * (ts.iteration || 0) / Math.max(1, ts.total_iterations)));
  $("train-progress").value = percent;
  const loss = ts.train && ts.train.metrics ? ts.train.metrics.train_loss : null;
  const dice = ts.best_metric != null ? ts.best_metric.toFixed(3) : "none (no held-out labelled study)";
  $("train-stats").textContent = [
    `${done ? "done" : ts.status || "running"}: epoch ${ts.epoch}/${ts.total_epochs}, iteration ${ts.iteration}/${ts.total_iterations} (${percent} %)`,
    `loss ${loss != null ? loss.toFixed(4) : "-"}, validation Dice ${dice}`,
    `ETA ${ts.eta || "-"}${ts.published_without_validation ? " - published WITHOUT validation" : ""}`,
  ].join("\n");
  $("train-stats").dataset.status = done ? "DONE" : "RUNNING";
}

async function pollTraining() {
  const task = await (await api("/train/")).json();  // MONAI Label's last train task: SUBMITTED ... DONE
  const info = await (await api("/info/")).json();
  const ts = info.train_stats ? info.train_stats[MODEL] : null;
  const fresh = ts && ts.run_id && ts.run_id !== state.previousRunId;  // this run's stats, not the last run's
  if (fresh) showTraining(ts);
  const finished = ["DONE", "ERROR", "STOPPED"].includes(task.status);
  $("train-stats").dataset.task = task.status;
  if (finished) {
    clearInterval(state.polling);
    state.polling = null;
    $("train").disabled = false;
    $("app-name").textContent = info.name;  // says what the served weights are now
    await showVersions();
    say(`Training: ${task.status.toLowerCase()}`, task.status === "ERROR");
  }
}

async function train() {
  await guarded("Starting training", async () => {
    const body = { max_epochs: Number($("epochs").value) };
    const before = (await (await api("/info/")).json()).train_stats;
    state.previousRunId = before && before[MODEL] ? before[MODEL].run_id : null;
    await api(`/train/${MODEL}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    $("train").disabled = true;
    state.trainStarted = Date.now();
    $("train-stats").dataset.status = "RUNNING";
    $("train-stats").dataset.task = "SUBMITTED";
    if (!state.polling) state.polling = setInterval(() => pollTraining().catch((e) => say(e.message, true)), 2000);
  });
}

// ------------------------------------------------------------------ wiring
function bind() {
  $("next").onclick = nextSample;
  $("run-text").onclick = () => segment({ text_prompt: $("prompt").value.trim() });
  $("prompt").onkeydown = (e) => { if (e.key === "Enter") $("run-text").click(); };
  $("run-structures").onclick = () => segment({ label_prompt: tickedStructures() });
  for (const t of ["brush", "eraser", "navigate"]) $(t).onclick = () => setTool(t);
  $("pen-size").oninput = () => setTool(state.tool);
  $("pen-label").onchange = () => setTool(state.tool === "navigate" ? "brush" : state.tool);
  $("undo").onclick = () => nv.drawUndo();
  $("toggle").onclick = toggleOverlay;
  $("save").onclick = save;
  $("train").onclick = train;
  $("stop-train").onclick = () => guarded("Stopping training", () => api("/train/", { method: "DELETE" }));
  for (const b of document.querySelectorAll("[data-view]")) b.onclick = () => view(Number(b.dataset.view));
  document.addEventListener("keydown", (e) => {
    if (e.target.tagName === "INPUT" && e.target.type === "text") return;
    const key = e.key.toLowerCase();
    if ((e.ctrlKey || e.metaKey) && key === "z") { e.preventDefault(); nv.drawUndo(); }
    else if ((e.ctrlKey || e.metaKey) && key === "s") { e.preventDefault(); save(); }
    else if (key === "n") nextSample();
    else if (key === "b") setTool("brush");
    else if (key === "e") setTool("eraser");
    else if (key === "escape") setTool("navigate");
    else if (key === "o") toggleOverlay();
    else if ("12345".includes(key)) view(Number(key) - 1);
  });
}

function view(index) {
  nv.setSliceType([nv.sliceTypeAxial, nv.sliceTypeCoronal, nv.sliceTypeSagittal, nv.sliceTypeMultiplanar,
                   nv.sliceTypeRender][index]);
}

async function main() {
  bind();
  await nv.attachTo("gl");
  nv.setDrawOpacity(0.5);
  view(3);
  await loadInfo();
  await loadStudies();
  say(`${state.studies.length} studies; ${state.studies.filter((s) => s.labelled).length} with a final label`);
  document.body.dataset.ready = "true";
}

main().catch((e) => say(`the page could not start: ${e.message}`, true));
