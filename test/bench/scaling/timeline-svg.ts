/**
 * A job's timeline as a plain SVG: one row per node (a lane more wherever its tasks overlap), one bar per task (x: seconds since the job was
 * submitted, colour: stage, label: "d3" denoise 3, "v3" decode 3, "mux", ...), an x axis in seconds
 * and a legend. Several panels (one per farm configuration) share one time scale.
 */

export interface TimelineTask {
  node: string;
  /** The stage kind: encode_text, encode_image, vae_encode, denoise, decode, mux. */
  stage: string;
  /** Section index, for denoise and decode. */
  section?: number;
  startMs: number;
  endMs: number;
}

export interface TimelinePanel {
  title: string;
  tasks: TimelineTask[];
}

const COLOURS: Record<string, string> = {
  encode_text: "#9467bd",
  encode_image: "#8c564b",
  vae_encode: "#e377c2",
  denoise: "#1f77b4",
  decode: "#ff7f0e",
  mux: "#2ca02c",
};
const SHORT: Record<string, string> = {
  encode_text: "txt",
  encode_image: "img",
  vae_encode: "enc",
  denoise: "d",
  decode: "v",
  mux: "mux",
};

/** "d3" for denoise 3, "v3" for decode 3, "mux", "txt", "img", "enc". */
export function taskLabel(stage: string, section?: number): string {
  const s = SHORT[stage] ?? stage;
  return section === undefined ? s : `${s}${section}`;
}

/** A task id `<job>.<stage>[.<k>]` as stage and section. */
export function parseTaskId(taskId: string): { stage: string; section?: number } {
  const parts = taskId.split(".");
  const last = parts.at(-1)!;
  if (parts.length >= 3 && /^\d+$/.test(last)) return { stage: parts.at(-2)!, section: Number(last) };
  return { stage: last };
}

const esc = (s: string): string => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** Nice tick step (1, 2 or 5 x 10^n seconds) for about 10 ticks over maxS. */
function tickStep(maxS: number): number {
  const raw = Math.max(maxS, 1e-3) / 10;
  const p = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= raw)!;
}

export function timelineSvg(panels: TimelinePanel[], width = 1200): string {
  const left = 90;
  const right = 20;
  const rowH = 28;
  const titleH = 22;
  const axisH = 30;
  const plotW = width - left - right;
  const maxMs = Math.max(1, ...panels.flatMap((p) => p.tasks.map((t) => t.endMs)));
  const step = tickStep(maxMs / 1000);
  const x = (ms: number): number => left + (ms / maxMs) * plotW;
  const out: string[] = [];
  let y = 10;
  for (const panel of panels) {
    out.push(`<text x="${left}" y="${y + 15}" font-weight="bold">${esc(panel.title)}</text>`);
    y += titleH;
    const nodes = [...new Set(panel.tasks.map((t) => t.node))].sort();
    let rowY = y;
    for (const node of nodes) {
      // A node runs tasks of different stages at once: overlapping bars go to lanes below each other.
      const laneEnds: number[] = [];
      const placed = panel.tasks
        .filter((t) => t.node === node)
        .sort((a, b) => a.startMs - b.startMs)
        .map((t) => {
          let lane = laneEnds.findIndex((end) => end <= t.startMs);
          if (lane < 0) lane = laneEnds.push(0) - 1;
          laneEnds[lane] = t.endMs;
          return { t, lane };
        });
      const lanes = Math.max(1, laneEnds.length);
      out.push(`<text x="${left - 6}" y="${rowY + (lanes * rowH) / 2 + 4}" text-anchor="end">${esc(node)}</text>`);
      out.push(
        `<line x1="${left}" y1="${rowY + lanes * rowH}" x2="${width - right}" y2="${rowY + lanes * rowH}" stroke="#ddd"/>`,
      );
      for (const { t, lane } of placed) {
        const x0 = x(t.startMs);
        const w = Math.max(1, x(t.endMs) - x0);
        const barY = rowY + lane * rowH;
        const label = taskLabel(t.stage, t.section);
        const secs = `${(t.startMs / 1000).toFixed(2)}-${(t.endMs / 1000).toFixed(2)} s`;
        out.push(
          `<rect class="task" x="${x0.toFixed(1)}" y="${barY + 3}" width="${w.toFixed(1)}" height="${rowH - 6}" fill="${COLOURS[t.stage] ?? "#7f7f7f"}" stroke="#fff" stroke-width="0.5"><title>${esc(`${label} ${t.stage} on ${node}: ${secs}`)}</title></rect>`,
        );
        // Labels only where they fit (about 7 px a character).
        if (w >= label.length * 7 + 2)
          out.push(
            `<text x="${(x0 + w / 2).toFixed(1)}" y="${barY + rowH / 2 + 4}" text-anchor="middle" fill="#fff">${esc(label)}</text>`,
          );
      }
      rowY += lanes * rowH;
    }
    y = Math.max(rowY, y + rowH);
    // Axis in seconds.
    out.push(`<line x1="${left}" y1="${y}" x2="${width - right}" y2="${y}" stroke="#000"/>`);
    for (let s = 0; s * 1000 <= maxMs + 1e-9; s += step) {
      const tx = x(s * 1000).toFixed(1);
      out.push(`<line x1="${tx}" y1="${y}" x2="${tx}" y2="${y + 4}" stroke="#000"/>`);
      out.push(`<text x="${tx}" y="${y + 16}" text-anchor="middle">${Number(s.toFixed(6))}</text>`);
    }
    out.push(`<text x="${width - right}" y="${y + 28}" text-anchor="end">seconds since submit</text>`);
    y += axisH + 10;
  }
  // Legend.
  let lx = left;
  for (const [stage, colour] of Object.entries(COLOURS)) {
    out.push(`<rect class="legend" x="${lx}" y="${y}" width="12" height="12" fill="${colour}"/>`);
    out.push(`<text x="${lx + 16}" y="${y + 11}">${stage} (${SHORT[stage]})</text>`);
    lx += 150;
  }
  y += 24;
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${y}" viewBox="0 0 ${width} ${y}" font-family="sans-serif" font-size="12">`,
    `<rect x="0" y="0" width="${width}" height="${y}" fill="#fff"/>`,
    ...out,
    "</svg>",
    "",
  ].join("\n");
}
