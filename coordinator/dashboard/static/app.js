// The dashboard page: renders each farm snapshot the coordinator streams (server-sent events) and
// sends operator actions to its JSON API. Rows are kept per id and updated in place, so a playing
// preview or a priority being typed survives updates. All user text goes in through textContent.
// On a farm with tokens the page asks for an operator's token and sends it as a bearer header
// (EventSource cannot send headers, so the event stream is read with fetch). The farm's last hour
// and each job's timeline are charts (charts.js), read from /api/history and /api/jobs/ID/timeline.

import { LANE_PX, drawTimeline, farmCharts } from "./charts.js";

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

/** Sets text (and a title) only when it changed, so updates do not churn the DOM. */
function text(e, value, title) {
  const s = String(value);
  if (e.textContent !== s) e.textContent = s;
  if (title !== undefined && e.title !== title) e.title = title;
}

const fmtAge = (ms) =>
  ms < 10_000
    ? `${(ms / 1000).toFixed(1)} s`
    : ms < 120_000
      ? `${Math.round(ms / 1000)} s`
      : `${Math.round(ms / 60_000)} min`;
function fmtEta(s) {
  if (!(s > 0)) return "";
  if (s < 90) return `ETA ${Math.ceil(s)} s`;
  if (s < 5400) return `ETA ${Math.round(s / 60)} min`;
  return `ETA ${(s / 3600).toFixed(1)} h`;
}
function fmtBytes(n) {
  const u = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) ((n /= 1024), i++);
  return `${n.toFixed(i === 0 ? 0 : 1)} ${u[i]}`;
}

function toast(message) {
  const t = $("#toast");
  t.textContent = message;
  t.classList.add("show");
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => t.classList.remove("show"), 3000);
}

const TOKEN_KEY = "framefarm.token";
const authHeaders = () => {
  const t = sessionStorage.getItem(TOKEN_KEY);
  return t ? { authorization: `Bearer ${t}` } : {};
};

async function post(path, body = {}) {
  const res = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json", ...authHeaders() },
    body: JSON.stringify(body),
  });
  if (!res.ok) {
    const err = await res.json().catch(() => ({ error: { message: res.statusText } }));
    throw new Error(err.error?.message ?? res.statusText);
  }
}

/**
 * Whether a button may be used now, as the latest render says. A click disables its button while
 * its request is on the way; the render that arrives meanwhile (the job just cancelled) must still
 * decide what the button is once the request is back, not the click.
 */
function allow(button, allowed) {
  button.dataset.allowed = String(allowed);
  button.disabled = !allowed || button.dataset.busy === "true";
}

async function act(button, path, body, done) {
  button.dataset.busy = "true";
  button.disabled = true;
  try {
    await post(path, body);
    toast(done);
  } catch (err) {
    toast(err.message);
  } finally {
    button.dataset.busy = "false";
    button.disabled = button.dataset.allowed === "false";
  }
}

// ---- nodes ----
const nodeRows = new Map();
function nodeRow(n) {
  let r = nodeRows.get(n.id);
  if (r === undefined) {
    const cells = {};
    for (const c of ["id", "status", "stages", "device", "task", "heartbeat", "rate", "done", "failed", "actions"])
      cells[c] = el("td");
    for (const c of ["heartbeat", "rate", "done", "failed"]) cells[c].className = "num";
    for (const c of ["stages", "device", "task"]) cells[c].className = "wrap";
    cells.id.className = "job-id";
    cells.status.append((cells.badge = el("span", { className: "badge" })));
    cells.actions.append(
      (cells.drain = el("button", { type: "button", textContent: "Drain", dataset: { action: "drain" } })),
    );
    cells.drain.addEventListener("click", () =>
      act(cells.drain, `/api/nodes/${encodeURIComponent(n.id)}/drain`, {}, `drain requested for ${n.id}`),
    );
    const tr = el(
      "tr",
      { dataset: { nodeId: n.id } },
      ...["id", "status", "stages", "device", "task", "heartbeat", "rate", "done", "failed", "actions"].map(
        (c) => cells[c],
      ),
    );
    r = { tr, cells };
    nodeRows.set(n.id, r);
  }
  const c = r.cells;
  text(
    c.id,
    n.id,
    `${n.hostname} · v${n.version} · started ${new Date(n.startedAt).toLocaleString()} · read ${fmtBytes(n.bytesRead)}, wrote ${fmtBytes(n.bytesWritten)}`,
  );
  text(c.badge, n.status, n.statusReason);
  c.badge.className = `badge ${n.status}`;
  text(c.stages, n.stages.join(", "));
  text(c.device, `${n.executionProvider} · ${n.device}`, `bundle ${n.bundle}`);
  const tasks = n.currentTasks.map(
    (t) => `${t.taskId.split(".").slice(1).join(".")} (${t.jobId.slice(0, 8)}, ${fmtAge(t.runningMs)})`,
  );
  text(c.task, tasks.length === 0 ? "idle" : tasks.join("; "), n.currentTasks.map((t) => t.taskId).join("\n"));
  text(c.heartbeat, fmtAge(n.heartbeatAgeMs));
  text(c.rate, n.sectionsPerHour >= 100 ? Math.round(n.sectionsPerHour) : n.sectionsPerHour.toFixed(1));
  text(c.done, n.tasksDone);
  text(c.failed, n.tasksFailed);
  c.drain.hidden = n.status !== "active";
  return r.tr;
}

function renderNodes(nodes) {
  const body = $("#nodes tbody");
  const ids = new Set(nodes.map((n) => n.id));
  for (const [id, r] of nodeRows) if (!ids.has(id)) (r.tr.remove(), nodeRows.delete(id));
  nodes.forEach((n, i) => {
    const tr = nodeRow(n);
    if (body.children[i] !== tr) body.insertBefore(tr, body.children[i] ?? null);
  });
  $("#nodes-empty").hidden = nodes.length > 0;
}

// ---- queues ----
// A stage no active node serves is where jobs get stuck: say so on its row.
function renderQueues(queues, nodes) {
  const body = $("#queues tbody");
  const served = new Set(nodes.filter((n) => n.status === "active").flatMap((n) => n.stages));
  queues.forEach((q, i) => {
    let tr = body.children[i];
    if (tr === undefined) {
      tr = el(
        "tr",
        {},
        el(
          "td",
          {},
          el("span"),
          el("span", { className: "badge gone", textContent: "no node", title: "no active node serves this stage" }),
        ),
        ...[1, 2, 3, 4].map(() => el("td", { className: "num" })),
      );
      body.append(tr);
    }
    tr.dataset.stage = q.stage;
    text(tr.children[0].firstChild, `${q.stage} `);
    tr.children[0].lastChild.hidden = served.has(q.stage);
    [q.waiting, q.inFlight, q.redelivered, q.idleWorkers].forEach((v, j) => text(tr.children[j + 1], v));
  });
}

// ---- jobs ----
const jobCards = new Map();
function jobCard(j) {
  let c = jobCards.get(j.id);
  if (c === undefined) {
    c = {};
    c.badge = el("span", { className: "badge job-state" });
    c.id = el("span", { className: "job-id" });
    c.prompt = el("span", { className: "job-prompt" });
    c.meta = el("div", { className: "job-meta" });
    c.error = el("div", { className: "job-error" });
    c.sections = el("div", { className: "sections" });
    c.priority = el("input", {
      type: "number",
      step: "1",
      min: "-1000",
      max: "1000",
      className: "priority",
      "aria-label": "priority",
    });
    c.setPriority = el("button", { type: "button", textContent: "Set priority", dataset: { action: "priority" } });
    c.cancel = el("button", {
      type: "button",
      className: "danger",
      textContent: "Cancel",
      dataset: { action: "cancel" },
    });
    c.retry = el("button", { type: "button", textContent: "Retry", dataset: { action: "retry" } });
    c.showTimeline = el("button", {
      type: "button",
      textContent: "Timeline",
      title: "each task on its node over time",
      dataset: { action: "timeline" },
      "aria-expanded": "false",
    });
    c.timelineCanvas = el("canvas", { "aria-label": "the job's tasks per node over time" });
    c.timeline = el(
      "div",
      { className: "timeline", hidden: true },
      el("div", { className: "timeline-box" }, c.timelineCanvas),
    );
    c.showTimeline.addEventListener("click", () => {
      c.timeline.hidden = !c.timeline.hidden;
      c.showTimeline.setAttribute("aria-expanded", String(!c.timeline.hidden));
      if (!c.timeline.hidden) void refreshTimeline(c, c.job);
    });
    c.download = el("a", { textContent: "Download MP4", className: "download" });
    c.video = el("video", { muted: true, loop: true, controls: true, playsInline: true, preload: "auto" });
    c.caption = el("div", { className: "caption" });
    c.preview = el("div", { className: "preview" }, c.video, c.caption);
    const jobPath = `/api/jobs/${encodeURIComponent(j.id)}`;
    c.cancel.addEventListener("click", () =>
      act(c.cancel, `${jobPath}/cancel`, {}, `job ${j.id.slice(0, 8)} cancelled`),
    );
    c.retry.addEventListener("click", () => act(c.retry, `${jobPath}/retry`, {}, `job ${j.id.slice(0, 8)} retried`));
    c.setPriority.addEventListener("click", () => {
      const p = Number(c.priority.value);
      void act(c.setPriority, `${jobPath}/priority`, { priority: p }, `job ${j.id.slice(0, 8)} priority ${p}`).then(
        () => (c.priorityDirty = false),
      );
    });
    c.priority.addEventListener("input", () => (c.priorityDirty = true));
    c.root = el(
      "article",
      { className: "job", dataset: { jobId: j.id } },
      el(
        "div",
        {},
        el("div", { className: "job-head" }, c.badge, c.id, c.prompt),
        c.meta,
        c.sections,
        c.error,
        el(
          "div",
          { className: "job-actions" },
          c.cancel,
          c.retry,
          el("label", {}, "priority ", c.priority),
          c.setPriority,
          c.showTimeline,
          c.download,
        ),
      ),
      c.preview,
      c.timeline,
    );
    jobCards.set(j.id, c);
  }
  text(c.badge, j.state);
  c.badge.className = `badge job-state ${j.state}`;
  c.root.dataset.state = j.state;
  text(c.id, j.id.slice(0, 8), j.id);
  text(c.prompt, j.prompt, j.prompt);
  const live = j.sections.find((s) => s.step !== undefined);
  text(
    c.meta,
    [
      `${j.width}×${j.height}, ${j.numFrames} frames`,
      j.inputVideoFrames ? `extends a video of ${j.inputVideoFrames} frames` : "",
      `sections ${j.sectionsDone}/${j.sectionsTotal}`,
      live ? `section ${live.index} step ${live.step}/${j.steps}` : "",
      `tasks ${j.tasksDone}/${j.tasksTotal}`,
      j.retries > 0 ? `retried ${j.retries}×` : "",
      fmtEta(j.etaSeconds),
      `created ${new Date(j.createdAt).toLocaleTimeString()}`,
    ]
      .filter(Boolean)
      .join(" · "),
  );
  text(c.error, j.error ? `${j.errorStatus ?? ""} ${j.error}`.trim() : "");
  c.error.hidden = !j.error;
  while (c.sections.children.length < j.sections.length)
    c.sections.append(el("div", { className: "section" }, el("div", { className: "fill" })));
  j.sections.forEach((s, i) => {
    const box = c.sections.children[i];
    box.dataset.denoise = s.denoise;
    box.dataset.decode = s.decode;
    box.title = `section ${s.index}: denoise ${s.denoise}${s.step !== undefined ? ` (step ${s.step}/${j.steps})` : ""}, decode ${s.decode}`;
    box.firstChild.style.width = s.step !== undefined ? `${(100 * s.step) / j.steps}%` : "0";
  });
  const open = j.state === "QUEUED" || j.state === "RUNNING";
  allow(c.cancel, open);
  allow(c.retry, j.state === "FAILED");
  if (!c.priorityDirty && document.activeElement !== c.priority) c.priority.value = String(j.priority);
  c.download.hidden = j.video === undefined;
  if (j.video !== undefined && c.download.dataset.key !== j.video.key) {
    c.download.href = j.video.url;
    c.download.dataset.key = j.video.key;
    c.download.download = `${j.id}.mp4`;
  }
  // The newest decoded section while running; the whole video once done.
  const media = j.video
    ? { ...j.video, caption: "final video" }
    : j.preview
      ? { ...j.preview, caption: `preview: section ${j.preview.section}` }
      : undefined;
  c.preview.hidden = media === undefined;
  if (media !== undefined && c.video.dataset.key !== media.key) {
    c.video.dataset.key = media.key;
    c.video.src = media.url;
  }
  text(c.caption, media?.caption ?? "");
  c.job = j;
  // An open timeline follows the job: at each change of its record, and every 2 s while it runs
  // (running bars grow).
  if (!c.timeline.hidden && (c.timelineFor !== j.updatedAt || (open && Date.now() - c.timelineFetchedAt > 2000)))
    void refreshTimeline(c, j);
  return c.root;
}

/** Fetches and draws a job's timeline (one fetch at a time per card). */
async function refreshTimeline(c, j) {
  if (c.timelineLoading) return;
  c.timelineLoading = true;
  c.timelineFor = j.updatedAt;
  c.timelineFetchedAt = Date.now();
  try {
    const res = await fetch(`/api/jobs/${encodeURIComponent(j.id)}/timeline`, { headers: authHeaders() });
    if (!res.ok) throw new Error((await res.json().catch(() => null))?.error?.message ?? res.statusText);
    const t = await res.json();
    c.timeline.firstChild.style.height = `${t.lanes.length * LANE_PX + 90}px`;
    c.timelineChart = drawTimeline(c.timelineCanvas, t, c.timelineChart);
    c.timeline.dataset.bars = String(t.bars.length);
    c.timeline.dataset.state = t.state;
  } catch (err) {
    toast(`timeline: ${err.message}`);
  } finally {
    c.timelineLoading = false;
  }
}

function renderJobs(jobs) {
  const list = $("#jobs");
  const ids = new Set(jobs.map((j) => j.id));
  for (const [id, c] of jobCards) if (!ids.has(id)) (c.root.remove(), jobCards.delete(id));
  jobs.forEach((j, i) => {
    const card = jobCard(j);
    if (list.children[i] !== card) list.insertBefore(card, list.children[i] ?? null);
  });
  $("#jobs-empty").hidden = jobs.length > 0;
}

function render(s) {
  renderNodes(s.nodes);
  renderQueues(s.queues, s.nodes);
  renderJobs(s.jobs);
  const up = s.nodes.filter((n) => n.status !== "gone" && n.status !== "stopped").length;
  const st = s.jobStates;
  text(
    $("#summary"),
    `${up} node${up === 1 ? "" : "s"} up · ${st.RUNNING} running · ${st.QUEUED} queued · ${st.SUCCEEDED} done · ${st.FAILED} failed · ${st.CANCELLED} cancelled`,
  );
  document.body.dataset.updatedAt = s.at;
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
  if (event === "snapshot" && data.length > 0) render(JSON.parse(data.join("\n")));
}

/** Reads the server-sent event stream, reconnecting after 2 s whenever it ends. */
async function stream() {
  const live = $("#live");
  for (;;) {
    try {
      const res = await fetch("/api/events", { headers: authHeaders() });
      if (res.status === 401) return start(); // the token stopped working
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

// ---- the farm's last hour ----
let farm;
let following = false;
/** Reads /api/history at the coordinator's sampling interval (2 to 10 s) and redraws the farm's charts. */
async function followHistory() {
  farm ??= farmCharts($("#farm-panel"));
  following = true;
  for (;;) {
    let wait = 5000;
    try {
      const res = await fetch("/api/history", { headers: authHeaders() });
      if (res.status === 401) return void (following = false); // the event stream asks for a token again
      if (res.ok) {
        const h = await res.json();
        farm.update(h);
        wait = Math.min(10_000, Math.max(2000, h.intervalMs));
      }
    } catch {
      // the coordinator is away: try again
    }
    await sleep(wait);
  }
}

/** Opens the dashboard if this tab's token (or an open farm) passes; asks for a token otherwise. */
async function start(message = "") {
  const session = await (await fetch("/api/session", { headers: authHeaders() })).json();
  $("main").hidden = !session.authorized;
  $("#login").hidden = session.authorized;
  if (session.authorized) {
    if (!following) void followHistory();
    return stream();
  }
  $("#live").textContent = "token needed";
  const error = $("#login-error");
  error.textContent = message;
  error.hidden = message === "";
}

$("#login").addEventListener("submit", (e) => {
  e.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("#token").value.trim());
  $("#token").value = "";
  start("That token does not open this dashboard.");
});
start();
