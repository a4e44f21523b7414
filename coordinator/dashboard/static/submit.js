// The submit page: a form that submits a job through the coordinator's tenant API (/api/tenant/...,
// where the gRPC JobService's own checks run), a preview of each image (or of a video to extend, in
// the start image's place) cropped to the bucket the farm will give it (the bucket comes from the
// server's table; the end image and keyframes take the start image's), and the tenant's jobs followed live
// over server-sent events: each finished section's preview plays as it lands, then the video.
// What the form offers (modes, samplers, caches, LoRAs when the bundle takes them, defaults, limits)
// comes from /api/tenant/options. LoRA files go inline in the request, as images do; a job
// re-submitted names them by SHA-256 (the farm keeps them), so nothing is uploaded again.
// Requests and replies are jobs.proto's messages in JSON form; errors show the server's gRPC status
// and message. All user text goes in through textContent.

const $ = (sel, root = document) => root.querySelector(sel);

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k === "dataset") Object.assign(e.dataset, v);
    else if (k in e) e[k] = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

/** Sets text (and a title) only when it changed, so live updates do not churn the DOM. */
function text(e, value, title) {
  const s = String(value);
  if (e.textContent !== s) e.textContent = s;
  if (title !== undefined && e.title !== title) e.title = title;
}

function toast(message) {
  const t = $("#toast");
  t.textContent = message;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3500);
}

function fmtEta(s) {
  if (!(s > 0)) return "";
  if (s < 90) return `ETA ${Math.ceil(s)} s`;
  if (s < 5400) return `ETA ${Math.round(s / 60)} min`;
  return `ETA ${(s / 3600).toFixed(1)} h`;
}

// ---- the API ----
const TOKEN_KEY = "framefarm.token";
const authHeaders = () => {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { authorization: `Bearer ${t}` } : {};
};

/** A refusal from the server: its gRPC status name and its message. */
class ApiError extends Error {
  constructor(code, message) {
    super(message);
    this.code = code;
  }
}
const errorText = (err) => (err instanceof ApiError ? `${err.code}: ${err.message}` : String(err?.message ?? err));

async function api(path, { method = "GET", body } = {}) {
  const res = await fetch(path, {
    method,
    headers: { ...(body !== undefined ? { "content-type": "application/json" } : {}), ...authHeaders() },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const data = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(data?.error?.code ?? `HTTP ${res.status}`, data?.error?.message ?? res.statusText);
  return data;
}

/** Random hex: crypto.randomUUID exists only in secure contexts, and a farm may be plain http. */
function randomHex(bytes) {
  return [...crypto.getRandomValues(new Uint8Array(bytes))].map((b) => b.toString(16).padStart(2, "0")).join("");
}
const randomSeed = () => String(crypto.getRandomValues(new Uint32Array(1))[0]);

// ---- the form ----
let options;

function fillSelect(select, choices) {
  select.replaceChildren(
    ...choices.map((c) => el("option", { value: c.value, textContent: c.label, selected: c.isDefault })),
  );
}
const chosen = (select, choices) => choices.find((c) => c.value === select.value);

function setRange(input, min, max, value) {
  if (min !== undefined) input.min = String(min);
  if (max !== undefined) input.max = String(max);
  if (value !== undefined) input.value = String(value);
}

function setUpForm(o) {
  options = o;
  const d = o.defaults;
  const l = o.limits;
  fillSelect($("#mode"), o.modes);
  fillSelect($("#sampler"), o.samplers);
  fillSelect($("#unipc-variant"), o.unipcVariants);
  fillSelect($("#cache"), o.caches);
  fillSelect($("#format"), o.formats);
  setRange($("#seconds"), 0.1, l.maxSeconds);
  setRange($("#steps"), 1, l.maxSteps, d.steps);
  setRange($("#guidance"), 0, l.maxGuidance, d.guidanceScale);
  setRange($("#cfg"), 0, l.maxTrueCfg, d.trueCfgScale);
  $("#seed").value = d.seed;
  setRange($("#resolution"), l.minResolution, l.maxResolution, d.resolution);
  setRange($("#window"), 1, l.maxLatentWindow, d.latentWindowSize);
  setRange($("#fps"), 1, l.maxFps, d.fps);
  setRange($("#crf"), 0, 51, d.crf);
  setRange($("#cfg-rescale"), 0, 1, d.cfgRescale);
  setRange($("#magcache-k"), 1, l.maxSteps, d.magcacheK);
  setRange($("#magcache-retention"), 0, 1, d.magcacheRetention);
  setRange($("#blend"), 0, l.maxPromptBlendSections, 0);
  setRange($("#context-frames"), l.minContextFrames, l.maxContextFrames, d.contextFrames);
  // The words come from the coordinator, which knows what its decode trades.
  text($("#vae-tiling-label"), o.vaeTiling.label);
  text($("#vae-tiling-help"), `(${o.vaeTiling.help})`);
  $("#vae-tiling").checked = o.vaeTiling.isDefault;
  text($("#bundle-note"), `bundle ${o.bundle}`);
  // LoRAs only where the bundle takes them (its manifest names their targets).
  $("#loras").hidden = o.loras === null || o.loras === undefined;
  if (o.loras)
    text(
      $("#lora-note"),
      `up to ${o.loras.maxLoras}, weight ${-o.loras.maxWeight} to ${o.loras.maxWeight} (1 adds the whole delta)`,
    );
  if ($("#prompt-rows").children.length === 0) addPromptRow(0, "");
  showDependentFields();
}

/** Fields that belong to one sampler or cache show only with it; a cache's threshold starts at its default. */
function showDependentFields() {
  const sampler = chosen($("#sampler"), options.samplers)?.name;
  const cache = chosen($("#cache"), options.caches);
  for (const f of document.querySelectorAll("[data-for-sampler]")) f.hidden = f.dataset.forSampler !== sampler;
  for (const f of document.querySelectorAll("[data-for-cache]"))
    f.hidden = !f.dataset.forCache.split(" ").includes(cache?.name);
  const mode = chosen($("#mode"), options.modes);
  $("#end-drop").dataset.unused = String(mode !== undefined && !mode.endImage);
  // Keyframes only where the mode takes them (inverted) and with a start image (a video has no slot
  // for them): hidden, they are not sent either.
  const start = images.get(startZone)?.kind ?? "image";
  $("#keyframes").hidden = (mode !== undefined && !mode.keyframes) || start === "video";
  for (const f of document.querySelectorAll("[data-for-start]")) f.hidden = f.dataset.forStart !== start;
}
$("#cache").addEventListener("change", () => {
  const cache = chosen($("#cache"), options.caches);
  if (cache?.threshold !== null) $("#cache-threshold").value = String(cache.threshold);
  showDependentFields();
});
$("#sampler").addEventListener("change", showDependentFields);
$("#mode").addEventListener("change", () => (showDependentFields(), updateCrops()));
$("#random-seed").addEventListener("click", () => ($("#seed").value = randomSeed()));

// Prompts: one per row, each from a time on; several become a timed prompt "[0s: ...] [2s: ...]".
function addPromptRow(at, value) {
  const rows = $("#prompt-rows");
  const first = rows.children.length === 0;
  const atInput = el("input", {
    type: "number",
    className: "prompt-at",
    min: "0",
    step: "0.1",
    value: String(at),
    disabled: first,
    "aria-label": "from second",
  });
  const textArea = el("textarea", {
    className: "prompt-text",
    rows: 2,
    value,
    placeholder: first ? "What happens in the video" : "What happens from then on",
    "aria-label": first ? "prompt" : "later prompt",
  });
  const remove = el("button", { type: "button", className: "prompt-remove", textContent: "×", title: "remove" });
  // The first prompt starts at 0 s and stays; its button keeps its place so the rows line up.
  if (first) remove.style.visibility = "hidden";
  const row = el(
    "div",
    { className: "prompt-row" },
    el("label", { className: "prompt-from" }, "from ", atInput, " s"),
    textArea,
    remove,
  );
  remove.addEventListener("click", () => (row.remove(), promptRowsChanged()));
  rows.append(row);
  promptRowsChanged();
  return textArea;
}
function promptRowsChanged() {
  $("#blend-field").hidden = $("#prompt-rows").children.length < 2;
}
$("#add-prompt").addEventListener("click", () => {
  const rows = [...$("#prompt-rows").children];
  const last = Number(rows.at(-1)?.querySelector(".prompt-at").value ?? 0);
  addPromptRow(Math.round((last + 2) * 10) / 10, "").focus();
});
function promptText() {
  const rows = [...$("#prompt-rows").children].map((r) => ({
    at: r.querySelector(".prompt-at").value.trim() || "0",
    text: r.querySelector(".prompt-text").value.trim(),
  }));
  return rows.length === 1 ? rows[0].text : rows.map((r) => `[${r.at}s: ${r.text}]`).join(" ");
}

// ---- images, shown cropped to their bucket ----
// Each drop zone's image (start, end, one per keyframe row), by the zone's element.
const images = new Map();
const startZone = $("#start-drop");
const endZone = $("#end-drop");
const keyframeZones = () => [...document.querySelectorAll("#keyframe-rows .drop")];

/** A video to extend (in the start image's place), by its type or, when the browser gives none, its name. */
const isVideo = (file) =>
  file.type.startsWith("video/") || (file.type === "" && /\.(mp4|m4v|mov|webm|mkv|avi)$/i.test(file.name));

/** The frame size of an image or video element. */
const sizeOf = (media) =>
  media.videoWidth !== undefined
    ? { w: media.videoWidth, h: media.videoHeight }
    : { w: media.naturalWidth, h: media.naturalHeight };

/** A video element showing the file's first frame, or null when this browser cannot play it. */
function loadVideo(url) {
  return new Promise((resolve) => {
    const v = el("video", { muted: true, preload: "auto", playsInline: true });
    v.addEventListener("loadeddata", () => resolve(v.videoWidth > 0 ? v : null), { once: true });
    v.addEventListener("error", () => resolve(null), { once: true });
    v.src = url;
  });
}

/** A video plays on at its own frame rate unless one is given: the fps field empties for it. */
function startKindChanged() {
  const video = images.get(startZone)?.kind === "video";
  const fps = $("#fps");
  fps.placeholder = video ? "the video's" : "";
  if (video && fps.value === String(options.defaults.fps)) fps.value = "";
  if (!video && fps.value === "") fps.value = String(options.defaults.fps);
  showDependentFields();
}

async function setImage(z, file) {
  // Another image is another attempt: the last refusal no longer applies.
  delete z.dataset.invalid;
  $("#submit-error").hidden = true;
  if (file === undefined || file === null) {
    images.delete(z);
    z.dataset.empty = "true";
    delete z.dataset.kind;
    delete z.dataset.preview;
    $(".crop", z).hidden = true;
    text($(".drop-caption", z), "");
    $(".drop-clear", z)?.setAttribute("hidden", "");
    $("input[type=file]", z).value = "";
    if (z === startZone) startKindChanged();
    return updateCrops();
  }
  const kind = z === startZone && isVideo(file) ? "video" : "image";
  const entry = { file, kind, img: null };
  images.set(z, entry);
  z.dataset.empty = "false";
  z.dataset.kind = kind;
  $(".drop-clear", z)?.removeAttribute("hidden");
  if (z === startZone) startKindChanged();
  if (kind === "video") entry.img = await loadVideo(URL.createObjectURL(file));
  else {
    const img = new Image();
    img.src = URL.createObjectURL(file);
    try {
      await img.decode();
      entry.img = img;
    } catch {
      // Not for the browser to refuse: the farm reads more formats than a browser shows, and says
      // why when it cannot.
    }
  }
  if (images.get(z) === entry) await updateCrops();
}

/** The bucket the farm gives an image of width x height at the form's resolution (the server's table). */
async function bucketOf(width, height) {
  const resolution = $("#resolution").value.trim() || String(options.defaults.resolution);
  const q = new URLSearchParams({ resolution, width: String(width), height: String(height) });
  return api(`/api/tenant/bucket?${q}`);
}

/** Draws img centre-cropped to the bucket's shape, as the farm resizes to cover and crops. */
function drawCrop(canvas, img, bucket) {
  const k = Math.min(480 / bucket.width, 480 / bucket.height);
  canvas.width = Math.round(bucket.width * k);
  canvas.height = Math.round(bucket.height * k);
  const { w, h } = sizeOf(img);
  const cover = Math.max(bucket.width / w, bucket.height / h);
  const sw = bucket.width / cover;
  const sh = bucket.height / cover;
  canvas.getContext("2d").drawImage(img, (w - sw) / 2, (h - sh) / 2, sw, sh, 0, 0, canvas.width, canvas.height);
  canvas.hidden = false;
}

let cropGeneration = 0;
async function updateCrops() {
  const generation = ++cropGeneration;
  const resolution = $("#resolution").value.trim() || String(options.defaults.resolution);
  let startBucket = null;
  for (const z of [startZone, endZone, ...keyframeZones()]) {
    const entry = images.get(z);
    const which = z === startZone ? "start" : z === endZone ? "end" : "keyframe";
    if (entry === undefined) continue;
    const caption = $(".drop-caption", z);
    const size =
      entry.file.size < 1 << 20
        ? `${Math.ceil(entry.file.size / 1024)} KiB`
        : `${(entry.file.size / (1 << 20)).toFixed(1)} MiB`;
    z.dataset.preview = entry.img === null ? "none" : "crop";
    if (entry.img === null) {
      $(".crop", z).hidden = true;
      text(caption, `${entry.file.name} (${size}): this browser cannot show it; the farm checks it when you submit`);
      continue;
    }
    const { w, h } = sizeOf(entry.img);
    let bucket;
    try {
      // The end image and keyframes are resized to the start image's size.
      bucket = which !== "start" && startBucket !== null ? startBucket : await bucketOf(w, h);
    } catch (err) {
      if (generation === cropGeneration) text(caption, `${entry.file.name}: ${errorText(err)}`);
      continue;
    }
    if (generation !== cropGeneration) return;
    if (which === "start") startBucket = bucket;
    drawCrop($(".crop", z), entry.img, bucket);
    const unused = which === "end" && z.dataset.unused === "true";
    text(
      caption,
      `${entry.file.name} · ${entry.kind === "video" ? "video " : ""}${w}×${h} → ${bucket.width}×${bucket.height}` +
        (which === "start" ? ` (bucket at resolution ${resolution})` : " (the start image's size)") +
        (entry.kind === "video" ? " · the new part follows its last frame" : "") +
        (unused ? " · this mode takes no end image" : ""),
      entry.file.name,
    );
  }
}
let cropTimer;
$("#resolution").addEventListener("input", () => {
  clearTimeout(cropTimer);
  cropTimer = setTimeout(updateCrops, 250);
});

/** Wires a drop zone: a file chosen or dropped is its image; its remove button clears it. */
function setUpZone(z) {
  const input = $("input[type=file]", z);
  input.addEventListener("change", () => setImage(z, input.files[0]));
  z.addEventListener("dragover", (e) => {
    e.preventDefault();
    z.dataset.over = "true";
  });
  z.addEventListener("dragleave", () => delete z.dataset.over);
  z.addEventListener("drop", (e) => {
    e.preventDefault();
    delete z.dataset.over;
    const file = e.dataTransfer?.files[0];
    if (file !== undefined) void setImage(z, file);
  });
  $(".drop-clear", z)?.addEventListener("click", () => setImage(z, null));
}
setUpZone(startZone);
setUpZone(endZone);

// Keyframes: one row each, a time and an image (shown cropped to the start image's size).
function addKeyframeRow(at) {
  const time = el("input", {
    type: "number",
    className: "keyframe-time",
    min: "0",
    step: "0.1",
    value: String(at),
    "aria-label": "keyframe time in seconds",
  });
  const input = el("input", { type: "file", accept: "image/*", "aria-label": "keyframe image" });
  const z = el(
    "div",
    { className: "drop keyframe-drop", dataset: { empty: "true" } },
    input,
    el(
      "label",
      { className: "drop-area" },
      el("canvas", { className: "crop", width: 0, height: 0, hidden: true }),
      el(
        "span",
        { className: "drop-hint" },
        el("b", {}, "Keyframe image"),
        el("br"),
        "drop it here or click to choose",
      ),
      el("span", { className: "drop-nopreview", textContent: "no preview" }),
    ),
    el("div", { className: "drop-caption" }),
  );
  // A label holding no control of its own would not open the file chooser.
  input.id = `keyframe-file-${randomHex(4)}`;
  $(".drop-area", z).htmlFor = input.id;
  const remove = el("button", { type: "button", className: "keyframe-remove", textContent: "×", title: "remove" });
  const row = el(
    "div",
    { className: "keyframe-row" },
    el("label", { className: "keyframe-at" }, "at ", time, " s"),
    z,
    remove,
  );
  remove.addEventListener("click", () => {
    images.delete(z);
    row.remove();
  });
  time.addEventListener("input", () => delete z.dataset.invalid);
  setUpZone(z);
  $("#keyframe-rows").append(row);
  return row;
}
$("#add-keyframe").addEventListener("click", () => {
  const times = [...document.querySelectorAll(".keyframe-time")].map((t) => Number(t.value) || 0);
  // The first at the video's middle, each next a second later: a start the person then moves.
  const next = times.length === 0 ? Math.round((Number($("#seconds").value) || 2) * 5) / 10 : Math.max(...times) + 1;
  $(".keyframe-time", addKeyframeRow(next)).focus();
});
// A file dropped beside a zone must not replace the page with the file.
for (const type of ["dragover", "drop"]) window.addEventListener(type, (e) => e.preventDefault());

// ---- LoRAs: one row each, a .safetensors file and its weight ----
const SLIDER_RANGE = 2; // the slider's reach; the number field takes the farm's whole range

function addLoraRow(file) {
  const max = options.loras.maxWeight;
  const weight = el("input", {
    type: "number",
    className: "lora-weight-value",
    min: String(-max),
    max: String(max),
    step: "0.05",
    value: String(options.loras.defaultWeight),
    "aria-label": `weight of ${file.name}`,
  });
  const slider = el("input", {
    type: "range",
    className: "lora-weight-slider",
    min: String(-SLIDER_RANGE),
    max: String(SLIDER_RANGE),
    step: "0.05",
    value: String(options.loras.defaultWeight),
    "aria-label": `weight slider of ${file.name}`,
  });
  const size = file.size < 1 << 20 ? `${Math.ceil(file.size / 1024)} KiB` : `${(file.size / (1 << 20)).toFixed(1)} MiB`;
  const remove = el("button", { type: "button", className: "lora-remove", textContent: "×", title: "remove" });
  const row = el(
    "div",
    { className: "lora-row" },
    el(
      "span",
      { className: "lora-name", title: file.name },
      file.name,
      " ",
      el("span", { className: "lora-size" }, size),
    ),
    el("label", { className: "lora-weight" }, "weight ", slider, weight),
    remove,
  );
  row.loraFile = file;
  slider.addEventListener("input", () => ((weight.value = slider.value), delete row.dataset.invalid));
  weight.addEventListener("input", () => {
    delete row.dataset.invalid;
    const v = Number(weight.value);
    if (weight.value.trim() !== "" && Number.isFinite(v)) slider.value = String(v);
  });
  remove.addEventListener("click", () => (row.remove(), lorasChanged()));
  $("#lora-rows").append(row);
  lorasChanged();
  return row;
}
const loraRows = () => [...document.querySelectorAll("#lora-rows .lora-row")];
function lorasChanged() {
  $("#submit-error").hidden = true;
  $("#add-lora").disabled = options.loras !== null && loraRows().length >= options.loras.maxLoras;
}
function addLoraFiles(files) {
  for (const file of files) {
    if (loraRows().length >= options.loras.maxLoras) {
      toast(`at most ${options.loras.maxLoras} LoRAs`);
      break;
    }
    addLoraRow(file);
  }
}
$("#add-lora").addEventListener("click", () => $("#lora-file").click());
$("#lora-file").addEventListener("change", () => {
  addLoraFiles([...$("#lora-file").files]);
  $("#lora-file").value = "";
});
{
  const box = $("#loras");
  box.addEventListener("dragover", (e) => (e.preventDefault(), (box.dataset.over = "true")));
  box.addEventListener("dragleave", () => delete box.dataset.over);
  box.addEventListener("drop", (e) => {
    e.preventDefault();
    delete box.dataset.over;
    addLoraFiles([...(e.dataTransfer?.files ?? [])]);
  });
}

/** The LoRA rows as the request's loras (inline files, by name and weight); none when the bundle takes none. */
async function lorasRequest() {
  if ($("#loras").hidden) return [];
  const out = [];
  for (const [i, row] of loraRows().entries()) {
    const w = $(".lora-weight-value", row);
    if (w.validity.badInput || w.value.trim() === "") throw new Error(`LoRA ${i + 1}'s weight is not a number`);
    out.push({ data: await base64Of(row.loraFile), weight: Number(w.value), name: row.loraFile.name });
  }
  // The request carries every file inline: beyond its limit the farm could not even read it.
  const bytes = loraRows().reduce((n, r) => n + r.loraFile.size, 0);
  if (bytes > options.loras.maxRequestBytes)
    throw new Error(
      `the LoRA files are ${(bytes / (1 << 20)).toFixed(0)} MiB together; a submission takes at most ` +
        `${(options.loras.maxRequestBytes / (1 << 20)).toFixed(0)} MiB (upload larger ones with the CLI and name them by key)`,
    );
  return out;
}

function base64Of(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(String(reader.result).slice(String(reader.result).indexOf(",") + 1));
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

/** A number field's value; undefined when empty (the farm's default applies). */
function numberOf(id) {
  const input = $(id);
  if (input.validity.badInput)
    throw new Error(`${input.closest("label").firstChild.textContent.trim()} is not a number`);
  return input.value.trim() === "" ? undefined : Number(input.value);
}

/**
 * The keyframe rows as the request's keyframes, in time order (the order the farm asks for), each
 * row's zone noted so a refusal naming "keyframe N" marks it; none when the mode takes none.
 */
let sentKeyframes = [];
async function keyframesRequest() {
  if ($("#keyframes").hidden) return [];
  const rows = [...document.querySelectorAll("#keyframe-rows .keyframe-row")].map((row) => {
    const time = $(".keyframe-time", row);
    if (time.validity.badInput || time.value.trim() === "") throw new Error("a keyframe's time is not a number");
    return { timeSeconds: Number(time.value), zone: $(".drop", row) };
  });
  rows.sort((a, b) => a.timeSeconds - b.timeSeconds);
  sentKeyframes = rows.map((r) => r.zone);
  const out = [];
  for (const r of rows) {
    const entry = images.get(r.zone);
    // No image: the farm says which keyframe lacks one.
    out.push({
      timeSeconds: r.timeSeconds,
      ...(entry !== undefined ? { image: { data: await base64Of(entry.file) } } : {}),
    });
  }
  return out;
}

/** The form as a SubmitJobRequest in JSON form. */
async function submitRequest() {
  const sampler = chosen($("#sampler"), options.samplers);
  const cache = chosen($("#cache"), options.caches);
  const blend = numberOf("#blend");
  const negative = $("#negative").value;
  const settings = {
    prompt: promptText(),
    ...(negative.trim() !== "" ? { negativePrompt: negative } : {}),
    seconds: numberOf("#seconds"),
    mode: $("#mode").value,
    steps: numberOf("#steps"),
    guidanceScale: numberOf("#guidance"),
    trueCfgScale: numberOf("#cfg"),
    ...($("#seed").value.trim() !== "" ? { seed: $("#seed").value.trim() } : {}),
    resolution: numberOf("#resolution"),
    latentWindowSize: numberOf("#window"),
    fps: numberOf("#fps"),
    crf: numberOf("#crf"),
    lossless: $("#lossless").checked,
    format: $("#format").value,
    saveFrames: $("#save-frames").checked,
    vaeTiling: $("#vae-tiling").checked,
    sampler: $("#sampler").value,
    ...(sampler?.name === "unipc"
      ? { unipc: { variant: $("#unipc-variant").value, cfgRescale: numberOf("#cfg-rescale") } }
      : {}),
    ...(cache !== undefined && cache.name !== "none"
      ? {
          cache: cache.value,
          cacheThreshold: numberOf("#cache-threshold"),
          ...(cache.name === "magcache"
            ? { magcacheK: numberOf("#magcache-k"), magcacheRetention: numberOf("#magcache-retention") }
            : {}),
        }
      : {}),
    ...($("#prompt-rows").children.length > 1 && blend > 0 ? { promptSchedule: { blendSections: blend } } : {}),
    ...(images.get(startZone)?.kind === "video" ? { contextFrames: numberOf("#context-frames") } : {}),
  };
  const start = images.get(startZone);
  const end = images.get(endZone);
  const startData = start === undefined ? null : { data: await base64Of(start.file) };
  return {
    ...(startData !== null ? (start.kind === "video" ? { video: startData } : { image: startData }) : {}),
    ...(end !== undefined ? { endImage: { data: await base64Of(end.file) } } : {}),
    keyframes: await keyframesRequest(),
    loras: await lorasRequest(),
    settings,
    // A retried or doubled click gives the job of the first, not a second job.
    idempotencyKey: `page-${randomHex(16)}`,
  };
}

$("#job-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const button = $("#submit");
  const error = $("#submit-error");
  error.hidden = true;
  for (const z of [startZone, endZone, ...keyframeZones()]) delete z.dataset.invalid;
  for (const r of loraRows()) delete r.dataset.invalid;
  button.disabled = true;
  text(button, "Submitting…");
  try {
    const { job } = await api("/api/tenant/jobs", { method: "POST", body: await submitRequest() });
    upsert(job);
    select(job.id);
    toast(`Job ${job.id.slice(0, 8)} submitted`);
    if (matchMedia("(max-width: 900px)").matches) $("#viewer").scrollIntoView({ behavior: "smooth" });
  } catch (err) {
    text(error, errorText(err));
    error.hidden = false;
    // The farm names the input it refuses ("image ...", "end image ...", "keyframe 2 ...", "video ..."):
    // mark its zone too.
    const m = /^(?:(end )?image|keyframe (\d+)|video)\b/.exec(err.message ?? "");
    const z =
      m === null ? undefined : m[2] !== undefined ? sentKeyframes[Number(m[2]) - 1] : m[1] ? endZone : startZone;
    if (z !== undefined) z.dataset.invalid = "true";
    // "LoRA 2 (style.safetensors): unknown key ...": mark its row.
    const lora = /^LoRA (\d+)\b/.exec(err.message ?? "");
    const row = lora === null ? undefined : loraRows()[Number(lora[1]) - 1];
    if (row !== undefined) row.dataset.invalid = "true";
  } finally {
    button.disabled = false;
    text(button, "Submit job");
  }
});

// ---- jobs ----
const jobs = new Map();
let selectedId = null;
const OPEN = new Set(["JOB_STATE_QUEUED", "JOB_STATE_RUNNING"]);
const stateName = (s) => s.replace("JOB_STATE_", "");
const promptOf = (job) =>
  job.settings?.prompt || (job.settings?.promptSchedule?.sectionPrompts ?? []).join(" | ") || "(no prompt)";
const createdMs = (job) => Date.parse(job.createdAt ?? "") || 0;

/** Sections done, plus the running section's share of its steps, out of 1. */
function fraction(job) {
  if (job.state === "JOB_STATE_SUCCEEDED") return 1;
  const p = job.progress ?? {};
  if (!(p.sectionsTotal > 0)) return 0;
  const step = job.state === "JOB_STATE_RUNNING" && p.stepsPerSection > 0 ? p.currentStep / p.stepsPerSection : 0;
  return Math.min(1, (p.sectionsDone + step) / p.sectionsTotal);
}

function progressText(job) {
  const p = job.progress ?? {};
  const parts = [`sections ${p.sectionsDone ?? 0}/${p.sectionsTotal ?? 0}`];
  if (job.state === "JOB_STATE_RUNNING" && p.currentStep > 0)
    parts.push(`section ${p.currentSection + 1} step ${p.currentStep}/${p.stepsPerSection}`);
  if (OPEN.has(job.state)) parts.push(fmtEta(p.etaSeconds));
  return parts.filter(Boolean).join(" · ");
}

function metaText(job) {
  const keyframes = job.keyframeTimes ?? [];
  return [
    `${job.width}×${job.height}`,
    `${job.numFrames} frames`,
    ...(keyframes.length > 0 ? [`keyframes at ${keyframes.map((t) => `${t} s`).join(", ")}`] : []),
    ...(job.settings?.contextFrames ? ["extends a video"] : []),
    ...((job.loras ?? []).length > 0 ? [`LoRA ${job.loras.map((l) => `${l.name} × ${l.weight}`).join(", ")}`] : []),
    `seed ${job.settings?.seed ?? "?"}`,
    // It changes the frames, so a job says so where its seed is shown.
    job.settings?.vaeTiling ? "VAE tiled" : "",
    progressText(job),
    new Date(createdMs(job)).toLocaleTimeString(),
  ]
    .filter(Boolean)
    .join(" · ");
}

function actionButtons(id) {
  const download = el("a", { className: "download button", textContent: "Download" });
  const cancel = el("button", {
    type: "button",
    className: "danger",
    textContent: "Cancel",
    dataset: { action: "cancel" },
  });
  const resubmit = el("button", {
    type: "button",
    textContent: "Re-submit, new seed",
    title: "same settings, new seed",
    dataset: { action: "resubmit" },
  });
  return { download, cancel, resubmit };
}

function updateActions(a, job) {
  // What act() restores once its request is back (the job may have ended meanwhile).
  a.cancel.dataset.allowed = String(OPEN.has(job.state));
  a.cancel.disabled = !OPEN.has(job.state);
  a.cancel.hidden = !OPEN.has(job.state);
  a.download.hidden = job.videoUrl === "" || job.videoUrl === undefined;
  if (!a.download.hidden && a.download.href !== job.videoUrl) {
    a.download.href = job.videoUrl;
    // The URL itself asks for a download under the job's name (the farm presigns it so).
    a.download.download = "";
  }
}

async function act(button, path, done) {
  button.disabled = true;
  try {
    const { job } = await api(path, { method: "POST", body: {} });
    upsert(job);
    done(job);
  } catch (err) {
    toast(errorText(err));
  } finally {
    button.disabled = button.dataset.allowed === "false";
  }
}
const cancelJob = (button, id) =>
  act(button, `/api/tenant/jobs/${encodeURIComponent(id)}/cancel`, () => toast(`Job ${id.slice(0, 8)} cancelled`));
const resubmitJob = (button, id) =>
  act(button, `/api/tenant/jobs/${encodeURIComponent(id)}/resubmit`, (job) => {
    select(job.id);
    toast(`Re-submitted as ${job.id.slice(0, 8)} with seed ${job.settings.seed}`);
  });

// My jobs: one row each, newest first, updated in place.
const rows = new Map();
function jobRow(job) {
  let r = rows.get(job.id);
  if (r === undefined) {
    r = { actions: actionButtons(job.id) };
    r.badge = el("span", { className: "badge job-state" });
    r.prompt = el("span", { className: "job-prompt" });
    r.meta = el("span", { className: "job-meta" });
    r.bar = el("div", { className: "bar" });
    r.open = el(
      "button",
      { type: "button", className: "row-main", title: "show this job" },
      el("span", { className: "row-head" }, r.badge, r.prompt),
      r.meta,
      el("span", { className: "progress" }, r.bar),
    );
    r.open.addEventListener("click", () => select(job.id));
    r.actions.cancel.addEventListener("click", () => cancelJob(r.actions.cancel, job.id));
    r.actions.resubmit.addEventListener("click", () => resubmitJob(r.actions.resubmit, job.id));
    r.li = el(
      "li",
      { className: "job-row", dataset: { jobId: job.id } },
      r.open,
      el("span", { className: "row-actions" }, r.actions.download, r.actions.resubmit, r.actions.cancel),
    );
    rows.set(job.id, r);
  }
  const state = stateName(job.state);
  text(r.badge, state.toLowerCase());
  r.badge.className = `badge job-state ${state}`;
  r.li.dataset.state = state;
  r.li.classList.toggle("selected", job.id === selectedId);
  text(r.prompt, promptOf(job), promptOf(job));
  text(r.meta, metaText(job));
  r.bar.style.width = `${(100 * fraction(job)).toFixed(1)}%`;
  updateActions(r.actions, job);
  return r.li;
}

function renderList() {
  const list = $("#jobs");
  const sorted = [...jobs.values()].sort((a, b) => createdMs(b) - createdMs(a));
  for (const [id, r] of rows) if (!jobs.has(id)) (r.li.remove(), rows.delete(id));
  sorted.forEach((job, i) => {
    const li = jobRow(job);
    if (list.children[i] !== li) list.insertBefore(li, list.children[i] ?? null);
  });
  $("#jobs-empty").hidden = jobs.size > 0;
}

// The viewer: the selected job, its newest section's preview while it runs, its video once done.
const viewer = (() => {
  const root = $("#viewer-job");
  const a = {
    download: $(".download", root),
    cancel: $('[data-action="cancel"]', root),
    resubmit: $('[data-action="resubmit"]', root),
  };
  a.cancel.addEventListener("click", () => cancelJob(a.cancel, selectedId));
  a.resubmit.addEventListener("click", () => resubmitJob(a.resubmit, selectedId));
  return { root, actions: a, video: $("video", root), sections: [] };
})();

function renderViewer() {
  const job = jobs.get(selectedId);
  $("#viewer-empty").hidden = job !== undefined;
  viewer.root.hidden = job === undefined;
  if (job === undefined) return;
  const root = viewer.root;
  const state = stateName(job.state);
  root.dataset.jobId = job.id;
  root.dataset.state = state;
  const badge = $(".job-state", root);
  text(badge, state.toLowerCase());
  badge.className = `badge job-state ${state}`;
  text($(".job-id", root), job.id.slice(0, 8), job.id);
  text($(".job-prompt", root), promptOf(job), promptOf(job));
  text($(".job-meta", root), metaText(job));
  $(".progress .bar", root).style.width = `${(100 * fraction(job)).toFixed(1)}%`;
  const error = $(".job-error", root);
  text(error, job.error ? `${job.errorStatus}: ${job.error}` : "");
  error.hidden = !job.error;
  updateActions(viewer.actions, job);
  // The whole video once done; before that the newest finished section's preview, as it lands.
  const done = job.state === "JOB_STATE_SUCCEEDED" && job.videoUrl;
  const media = done
    ? { key: job.videoKey, url: job.videoUrl, caption: "the whole video" }
    : job.previewUrl
      ? { key: job.previewKey, url: job.previewUrl, caption: `preview: the newest finished section` }
      : null;
  const player = $(".player", root);
  player.dataset.media = media === null ? "none" : done ? "video" : "preview";
  if (media !== null && viewer.video.dataset.key !== media.key) {
    viewer.video.dataset.key = media.key;
    viewer.video.src = media.url;
    viewer.video.play().catch(() => undefined); // a newer preview may replace it before it starts
  } else if (media === null && viewer.video.dataset.key !== undefined) {
    delete viewer.video.dataset.key;
    viewer.video.removeAttribute("src");
    viewer.video.load();
  }
  text(
    $(".caption", player),
    media?.caption ??
      (OPEN.has(job.state)
        ? "each section's preview plays here as soon as it is finished"
        : `no video: the job ${stateName(job.state).toLowerCase()}`),
  );
}

function select(id) {
  selectedId = id;
  for (const [rid, r] of rows) r.li.classList.toggle("selected", rid === id);
  renderViewer();
}

function upsert(job) {
  // A reply can arrive after a newer event of the same job (the submission's, say): keep the newer.
  const known = jobs.get(job.id);
  if (known !== undefined && Date.parse(known.updatedAt) > Date.parse(job.updatedAt)) return;
  jobs.set(job.id, job);
  renderList();
  if (job.id === selectedId) renderViewer();
}

// ---- live updates ----
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function onFrame(frame) {
  let event = "message";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("event: ")) event = line.slice(7);
    else if (line.startsWith("data: ")) data.push(line.slice(6));
  }
  if (data.length === 0) return;
  const value = JSON.parse(data.join("\n"));
  if (event === "jobs") {
    // A fresh list on every (re)connection; a job submitted meanwhile stays.
    for (const job of value.jobs) jobs.set(job.id, job);
    renderList();
    if (selectedId === null && value.jobs.length > 0) select(value.jobs[0].id);
    else renderViewer();
  } else if (event === "job" && value.job !== undefined) upsert(value.job);
}

/** Reads the server-sent event stream, reconnecting after 2 s whenever it ends. */
async function stream() {
  const live = $("#live");
  for (;;) {
    try {
      const res = await fetch("/api/tenant/events", { headers: authHeaders() });
      if (res.status === 401 || res.status === 403) return start(); // the token stopped working
      if (!res.ok || res.body === null) throw new Error(res.statusText);
      live.dataset.state = "live";
      live.textContent = "live";
      const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        for (let i = buf.indexOf("\n\n"); i >= 0; i = buf.indexOf("\n\n")) {
          onFrame(buf.slice(0, i));
          buf = buf.slice(i + 2);
        }
      }
    } catch {
      // the coordinator is away: try again
    }
    live.dataset.state = "offline";
    live.textContent = "reconnecting";
    await sleep(2000);
  }
}

/** Opens the page if this tab's token (or an open farm) passes; asks for a token otherwise. */
async function start(message = "") {
  const session = await (await fetch("/api/tenant/session", { headers: authHeaders() })).json();
  $("main").hidden = !session.authorized;
  $("#login").hidden = session.authorized;
  if (session.authorized) {
    text($("#tenant"), `tenant ${session.tenant}`);
    // The dashboard is for operators: link it only for a token that opens it.
    const operator = await (await fetch("/api/session", { headers: authHeaders() })).json().catch(() => ({}));
    $("a.nav").hidden = operator.authorized !== true;
    if (options === undefined) setUpForm(await api("/api/tenant/options"));
    return stream();
  }
  $("#live").textContent = "token needed";
  $("a.nav").hidden = true;
  const error = $("#login-error");
  text(error, message === "" ? "" : `${message} (${session.error.code}: ${session.error.message})`);
  error.hidden = message === "";
}

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  void start("That token does not open this page.");
});
void start();
