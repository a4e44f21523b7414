import { test } from "node:test";
import assert from "node:assert/strict";
import { parseTaskId, taskLabel, timelineSvg } from "../bench/scaling/timeline-svg.js";

test("a task id names its stage and section; labels are short", () => {
  assert.deepEqual(parseTaskId("job-1.denoise.3"), { stage: "denoise", section: 3 });
  assert.deepEqual(parseTaskId("job-1.mux"), { stage: "mux" });
  assert.equal(taskLabel("denoise", 3), "d3");
  assert.equal(taskLabel("decode", 3), "v3");
  assert.equal(taskLabel("mux"), "mux");
});

test("the timeline is one SVG with one bar per task, a row per node, an axis and a legend", () => {
  const tasks = [
    { node: "node-0", stage: "denoise", section: 0, startMs: 100, endMs: 2100 },
    { node: "node-0", stage: "denoise", section: 1, startMs: 2150, endMs: 4200 },
    { node: "node-1", stage: "decode", section: 0, startMs: 2200, endMs: 3000 },
    { node: "node-1", stage: "decode", section: 1, startMs: 4300, endMs: 5000 },
    { node: "node-1", stage: "mux", startMs: 5100, endMs: 5400 },
  ];
  const svg = timelineSvg([
    { title: "two nodes <b>", tasks },
    { title: "one node", tasks: tasks.map((t) => ({ ...t, node: "node-0" })) },
  ]);
  assert.match(svg, /^<svg xmlns="http:\/\/www\.w3\.org\/2000\/svg"[^>]*>/);
  assert.match(svg, /<\/svg>\n$/);
  assert.equal(svg.match(/<rect class="task"/g)?.length, 2 * tasks.length);
  assert.equal(svg.match(/<rect /g)?.length, svg.match(/<\/rect>|<rect [^>]*\/>/g)?.length);
  assert.ok(svg.includes(">node-1</text>"));
  assert.ok(svg.includes(">d1</text>") && svg.includes(">v0</text>") && svg.includes(">mux</text>"));
  assert.ok(svg.includes("two nodes &lt;b&gt;"), "titles are escaped");
  assert.ok(svg.includes(">seconds since submit</text>"));
  assert.ok(svg.includes('class="legend"'));
  // Every bar lies inside the drawing.
  const width = Number(/width="(\d+)"/.exec(svg)![1]);
  for (const m of svg.matchAll(/<rect class="task" x="([\d.]+)" y="[\d.]+" width="([\d.]+)"/g))
    assert.ok(Number(m[1]) >= 0 && Number(m[1]) + Number(m[2]) <= width + 0.5);
});

test("overlapping tasks of one node go to separate lanes", () => {
  const svg = timelineSvg([
    {
      title: "one node",
      tasks: [
        { node: "n", stage: "denoise", section: 1, startMs: 0, endMs: 1000 },
        { node: "n", stage: "decode", section: 0, startMs: 500, endMs: 1500 },
        { node: "n", stage: "denoise", section: 2, startMs: 1000, endMs: 2000 },
      ],
    },
  ]);
  const ys = [...svg.matchAll(/<rect class="task" x="[\d.]+" y="([\d.]+)"/g)].map((m) => Number(m[1]));
  assert.equal(ys.length, 3);
  assert.equal(ys[0], ys[2], "back-to-back tasks share a lane");
  assert.notEqual(ys[0], ys[1], "an overlapping task gets a lane of its own");
});
