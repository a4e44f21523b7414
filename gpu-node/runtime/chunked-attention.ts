/**
 * Memory-bounded attention for exported ONNX graphs whose attention is plain ops:
 *   MatMul(q [* s], kT [* s]) -> Add(mask) -> Softmax(last axis) -> MatMul(., v)
 * (what torch's scaled_dot_product_attention with a mask exports to). onnxruntime materialises
 * the [B, H, N, N] scores, the mask and the probabilities: the HunyuanVideo VAE's mid-block
 * attends over every token of a decode tile, so at 640x640 (5 latent frames of 68x88, N = 29920)
 * each of those tensors is 3.58 GB and a decode passes 20 GB.
 *
 * rewriteChunkedAttention replaces each such pattern with a Loop over blocks of query rows, so
 * only a [B, H, rows, N] slice of scores exists at a time. Each output row is computed by the same
 * kernels over the same operands in the same order as before (a row of softmax and of both
 * matmuls does not depend on the other rows), so the results are bit-identical; the query-side
 * scale multiplies move into the loop body with the matmul, so onnxruntime's MatMulScaleFusion
 * fuses them exactly as it did. The block-causal mask of the VAE (Where(LessOrEqual(frame_of_row,
 * frame_of_col), 0, -inf)) is rebuilt per block from its [N, 1] row operand and never
 * materialised whole; any other mask is sliced per block.
 */
import { readFile } from "node:fs/promises";
import { readFields, fieldString, int64s, Writer, type Field } from "./onnx-proto.js";

interface OnnxNode {
  input: string[];
  output: string[];
  name: string;
  opType: string;
  domain: string;
  attributes: Field[];
  raw: Uint8Array;
}

function parseNode(f: Field): OnnxNode {
  const node: OnnxNode = { input: [], output: [], name: "", opType: "", domain: "", attributes: [], raw: f.payload };
  for (const g of readFields(f.payload)) {
    if (g.no === 1) node.input.push(fieldString(g));
    else if (g.no === 2) node.output.push(fieldString(g));
    else if (g.no === 3) node.name = fieldString(g);
    else if (g.no === 4) node.opType = fieldString(g);
    else if (g.no === 7) node.domain = fieldString(g);
    else if (g.no === 5) node.attributes.push(g);
  }
  return node;
}

function attributeName(a: Field): string {
  const name = readFields(a.payload).find((f) => f.no === 1);
  return name === undefined ? "" : fieldString(name);
}

function intAttribute(node: OnnxNode, name: string): bigint | undefined {
  const a = node.attributes.find((x) => attributeName(x) === name);
  if (a === undefined) return undefined;
  const i = readFields(a.payload).find((f) => f.no === 3);
  return i === undefined ? undefined : BigInt.asIntN(64, i.varint);
}

function hasGraphAttribute(node: OnnxNode): boolean {
  return node.attributes.some((a) => readFields(a.payload).some((f) => f.no === 6 || f.no === 11));
}

interface Initializer {
  dims: bigint[];
  dataType: number;
  raw: Uint8Array;
  fields: Field[];
}

function parseInitializer(payload: Uint8Array): [string, Initializer] {
  const fields = readFields(payload);
  const name = fields.find((f) => f.no === 8);
  const dataType = fields.find((f) => f.no === 2);
  return [
    name === undefined ? "" : fieldString(name),
    { dims: int64s(fields, 1), dataType: Number(dataType?.varint ?? 0n), raw: payload, fields },
  ];
}

/** An int64 initializer's values (raw_data or int64_data), or undefined when it is not one. */
function int64Values(init: Initializer | undefined): bigint[] | undefined {
  if (init === undefined || init.dataType !== 7) return undefined;
  const raw = init.fields.find((f) => f.no === 9);
  if (raw !== undefined) {
    const view = new DataView(raw.payload.buffer, raw.payload.byteOffset, raw.payload.byteLength);
    return Array.from({ length: raw.payload.byteLength / 8 }, (_, i) => view.getBigInt64(i * 8, true));
  }
  return int64s(init.fields, 7);
}

const isScalar = (init: Initializer | undefined): boolean => init !== undefined && init.dims.every((d) => d === 1n);

// ---- writing nodes and graphs -------------------------------------------------------------------

type Attr = {
  name: string;
  int?: bigint | number;
  ints?: (bigint | number)[];
  tensor?: Uint8Array;
  graph?: Uint8Array;
  raw?: Uint8Array;
};

function nodeBytes(opType: string, inputs: string[], outputs: string[], name: string, attrs: Attr[] = []): Uint8Array {
  const w = new Writer();
  for (const i of inputs) w.string(1, i);
  for (const o of outputs) w.string(2, o);
  w.string(3, name);
  w.string(4, opType);
  for (const a of attrs) {
    if (a.raw !== undefined) {
      w.bytes(5, a.raw);
      continue;
    }
    w.message(5, (aw) => {
      aw.string(1, a.name);
      if (a.int !== undefined) aw.int(3, a.int).int(20, 2);
      else if (a.ints !== undefined) {
        for (const v of a.ints) aw.int(8, v);
        aw.int(20, 7);
      } else if (a.tensor !== undefined) aw.bytes(5, a.tensor).int(20, 4);
      else if (a.graph !== undefined) aw.bytes(6, a.graph).int(20, 5);
    });
  }
  return w.finish();
}

function int64Tensor(values: (bigint | number)[], dims: number[]): Uint8Array {
  const raw = new Uint8Array(values.length * 8);
  const view = new DataView(raw.buffer);
  values.forEach((v, i) => view.setBigInt64(i * 8, BigInt(v), true));
  const w = new Writer();
  for (const d of dims) w.int(1, d);
  w.int(2, 7);
  w.bytes(9, raw);
  return w.finish();
}

/** A ValueInfoProto of a tensor: elemType 1 float, 7 int64, 9 bool; scalar gives shape []. */
function valueInfo(name: string, elemType: number, scalar: boolean): Uint8Array {
  return new Writer()
    .string(1, name)
    .message(2, (t) =>
      t.message(1, (tt) => {
        tt.int(1, elemType);
        if (scalar) tt.bytes(2, new Uint8Array(0));
      }),
    )
    .finish();
}

// ---- the rewrite --------------------------------------------------------------------------------

export interface ChunkedAttentionOptions {
  /** Bytes of one [rows, N] block of scores per batch and head; rows = max(minRows, budget / (4 N)). */
  blockBytes: number;
  /** Fewest query rows per block. */
  minRows?: number;
}

export interface RewriteResult {
  model: Uint8Array;
  /** How many attention patterns became loops. */
  rewritten: number;
}

interface Pattern {
  scores: OnnxNode;
  add: OnnxNode | null;
  softmax: OnnxNode;
  out: OnnxNode;
  q: string;
  qScale: OnnxNode | null;
  k: string;
  kScale: OnnxNode | null;
  v: string;
  mask: string | null;
  /** Set when the mask is Where(LessOrEqual(a, b), x, y) broadcast up: rebuilt per block. */
  causal: { le: OnnxNode; where: OnnxNode; rowOperand: 0 | 1; chain: OnnxNode[] } | null;
}

/**
 * Rewrites every matching attention in an ONNX model. Returns the input unchanged (rewritten 0)
 * when nothing matches or the graph has control flow of its own (whose outer references this
 * reader does not follow).
 */
export function rewriteChunkedAttention(model: Uint8Array, options: ChunkedAttentionOptions): RewriteResult {
  const top = readFields(model);
  const graphField = top.find((f) => f.no === 7);
  if (graphField === undefined) return { model, rewritten: 0 };
  const graphFields = readFields(graphField.payload);
  const nodes = graphFields.filter((f) => f.no === 1).map(parseNode);
  if (nodes.some(hasGraphAttribute)) return { model, rewritten: 0 };
  const inits = new Map(graphFields.filter((f) => f.no === 5).map((f) => parseInitializer(f.payload)));
  const graphOutputs = new Set(
    graphFields
      .filter((f) => f.no === 12)
      .map((f) => {
        const n = readFields(f.payload).find((g) => g.no === 1);
        return n === undefined ? "" : fieldString(n);
      }),
  );
  const producer = new Map<string, OnnxNode>();
  const consumers = new Map<string, OnnxNode[]>();
  for (const n of nodes) {
    for (const o of n.output) producer.set(o, n);
    for (const i of n.input) consumers.set(i, [...(consumers.get(i) ?? []), n]);
  }
  const onlyConsumer = (name: string, node: OnnxNode): boolean =>
    !graphOutputs.has(name) && (consumers.get(name) ?? []).length === 1 && consumers.get(name)![0] === node;
  const scaleMul = (name: string, into: OnnxNode): OnnxNode | null => {
    const p = producer.get(name);
    if (p === undefined || p.opType !== "Mul" || p.domain !== "" || !onlyConsumer(name, into)) return null;
    return isScalar(inits.get(p.input[1]!)) ? p : null;
  };

  const patterns: Pattern[] = [];
  for (const softmax of nodes) {
    if (softmax.opType !== "Softmax" || softmax.domain !== "") continue;
    const axis = intAttribute(softmax, "axis") ?? -1n;
    if (axis !== -1n && axis !== 3n) continue;
    const out = consumers.get(softmax.output[0]!);
    if (
      out?.length !== 1 ||
      out[0]!.opType !== "MatMul" ||
      out[0]!.input[0] !== softmax.output[0] ||
      graphOutputs.has(softmax.output[0]!)
    )
      continue;
    let scoresName = softmax.input[0]!;
    let add: OnnxNode | null = null;
    let mask: string | null = null;
    const before = producer.get(scoresName);
    if (before?.opType === "Add" && before.domain === "" && onlyConsumer(scoresName, softmax)) {
      const m = before.input.findIndex((i) => producer.get(i)?.opType === "MatMul");
      if (m < 0) continue;
      add = before;
      mask = before.input[1 - m]!;
      scoresName = before.input[m]!;
    }
    const scores = producer.get(scoresName);
    if (scores?.opType !== "MatMul" || scores.domain !== "" || !onlyConsumer(scoresName, add ?? softmax)) continue;
    const qScale = scaleMul(scores.input[0]!, scores);
    const kScale = scaleMul(scores.input[1]!, scores);
    const pattern: Pattern = {
      scores,
      add,
      softmax,
      out: out[0]!,
      q: qScale?.input[0] ?? scores.input[0]!,
      qScale,
      k: kScale?.input[0] ?? scores.input[1]!,
      kScale,
      v: out[0]!.input[1]!,
      mask,
      causal: null,
    };
    if (mask !== null) pattern.causal = causalMask(mask, add!);
    patterns.push(pattern);
  }
  if (patterns.length === 0) return { model, rewritten: 0 };

  // Nodes the loops replace, and the mask chains nothing else reads.
  const removed = new Set<OnnxNode>();
  for (const p of patterns) {
    for (const n of [p.scores, p.add, p.softmax, p.out, p.qScale, p.kScale]) if (n !== null) removed.add(n);
  }
  for (const p of patterns) {
    if (p.causal === null) continue;
    for (const n of p.causal.chain) {
      if (n.output.every((o) => !graphOutputs.has(o) && (consumers.get(o) ?? []).every((c) => removed.has(c))))
        removed.add(n);
    }
  }

  const added: Uint8Array[][] = patterns.map((p, i) => loopNodes(p, i, options, inits));
  const w = new Writer();
  let nodeIndex = 0;
  for (const f of graphFields) {
    if (f.no !== 1) {
      w.raw(f.raw);
      continue;
    }
    const node = nodes[nodeIndex++]!;
    if (!removed.has(node)) {
      w.raw(f.raw);
      continue;
    }
    // A loop goes where its pattern's last node was: every input it reads is defined by then.
    const p = patterns.findIndex((x) => x.out === node);
    if (p >= 0) for (const bytes of added[p]!) w.bytes(1, bytes);
  }
  const graph = w.finish();
  const mw = new Writer();
  for (const f of top) {
    if (f.no === 7) mw.bytes(7, graph);
    else mw.raw(f.raw);
  }
  return { model: mw.finish(), rewritten: patterns.length };

  function causalMask(maskName: string, addNode: OnnxNode): Pattern["causal"] {
    const chain: OnnxNode[] = [];
    let name = maskName;
    let node = producer.get(name);
    let consumer = addNode;
    while (
      node !== undefined &&
      ["Reshape", "Expand", "Unsqueeze"].includes(node.opType) &&
      node.domain === "" &&
      onlyConsumer(name, consumer)
    ) {
      chain.push(node);
      consumer = node;
      name = node.input[0]!;
      node = producer.get(name);
    }
    if (node?.opType !== "Where" || node.domain !== "" || !onlyConsumer(name, consumer)) return null;
    const where = node;
    if (!isScalar(inits.get(where.input[1]!)) || !isScalar(inits.get(where.input[2]!))) return null;
    const le = producer.get(where.input[0]!);
    if (le?.opType !== "LessOrEqual" || !onlyConsumer(where.input[0]!, where)) return null;
    // One operand must be x[:, None] (rows), the other x[None, :] of the same 1-D x.
    const unsq = le.input.map((i) => producer.get(i));
    if (unsq.some((u) => u?.opType !== "Unsqueeze") || unsq[0]!.input[0] !== unsq[1]!.input[0]) return null;
    const axes = unsq.map((u) => int64Values(inits.get(u!.input[1]!))?.[0]);
    const rowOperand = axes[0] === 1n && axes[1] === 0n ? 0 : axes[0] === 0n && axes[1] === 1n ? 1 : -1;
    if (rowOperand < 0) return null;
    chain.push(where, le);
    return { le, where, rowOperand: rowOperand as 0 | 1, chain };
  }
}

function loopNodes(
  p: Pattern,
  index: number,
  options: ChunkedAttentionOptions,
  inits: Map<string, Initializer>,
): Uint8Array[] {
  const x = (s: string): string => `chunked_attention_${index}_${s}`;
  const minRows = options.minRows ?? 16;
  const outer: Uint8Array[] = [];
  const constant = (name: string, values: (bigint | number)[], dims: number[]): void => {
    outer.push(nodeBytes("Constant", [], [name], name, [{ name: "value", tensor: int64Tensor(values, dims) }]));
  };
  constant(x("budget"), [Math.max(1, Math.floor(options.blockBytes / 4))], [1]);
  constant(x("min_rows"), [minRows], [1]);
  constant(x("one"), [1], [1]);
  constant(x("zero"), [0], [1]);
  constant(x("row_axis"), [-2], [1]);
  constant(x("last_axis"), [-1], [1]);
  // rows = max(min_rows, budget / N_keys); trips = ceil(N_queries / rows)
  outer.push(nodeBytes("Shape", [p.q], [x("q_shape")], x("q_shape")));
  outer.push(nodeBytes("Gather", [x("q_shape"), x("row_axis")], [x("n_q")], x("n_q"), [{ name: "axis", int: 0 }]));
  outer.push(nodeBytes("Shape", [p.k], [x("k_shape")], x("k_shape")));
  outer.push(nodeBytes("Gather", [x("k_shape"), x("last_axis")], [x("n_k")], x("n_k"), [{ name: "axis", int: 0 }]));
  outer.push(nodeBytes("Div", [x("budget"), x("n_k")], [x("fit")], x("fit")));
  outer.push(nodeBytes("Max", [x("fit"), x("min_rows")], [x("rows")], x("rows")));
  outer.push(nodeBytes("Add", [x("n_q"), x("rows")], [x("n_q_plus")], x("n_q_plus")));
  outer.push(nodeBytes("Sub", [x("n_q_plus"), x("one")], [x("n_q_up")], x("n_q_up")));
  outer.push(nodeBytes("Div", [x("n_q_up"), x("rows")], [x("trips_1")], x("trips_1")));
  outer.push(nodeBytes("Squeeze", [x("trips_1")], [x("trips")], x("trips")));
  // The output starts as v with no rows: [B, H, 0, dv].
  outer.push(nodeBytes("Slice", [p.v, x("zero"), x("zero"), x("row_axis")], [x("acc0")], x("acc0")));

  const b = (s: string): string => x(`body_${s}`);
  const body: Uint8Array[] = [];
  const local = (name: string, init: Initializer): void => {
    body.push(nodeBytes("Constant", [], [name], name, [{ name: "value", tensor: init.raw }]));
  };
  body.push(nodeBytes("Mul", [b("i"), x("rows")], [b("start")], b("start")));
  body.push(nodeBytes("Add", [b("start"), x("rows")], [b("end_unclipped")], b("end_unclipped")));
  body.push(nodeBytes("Min", [b("end_unclipped"), x("n_q")], [b("end")], b("end")));
  body.push(nodeBytes("Slice", [p.q, b("start"), b("end"), x("row_axis")], [b("q")], b("q")));
  let q = b("q");
  if (p.qScale !== null) {
    local(b("q_scale"), inits.get(p.qScale.input[1]!)!);
    body.push(nodeBytes("Mul", [q, b("q_scale")], [b("q_scaled")], b("q_scaled")));
    q = b("q_scaled");
  }
  let k = p.k;
  if (p.kScale !== null) {
    local(b("k_scale"), inits.get(p.kScale.input[1]!)!);
    body.push(nodeBytes("Mul", [k, b("k_scale")], [b("k_scaled")], b("k_scaled")));
    k = b("k_scaled");
  }
  body.push(nodeBytes("MatMul", [q, k], [b("scores")], b("scores")));
  let scores = b("scores");
  if (p.add !== null && p.mask !== null) {
    let mask: string;
    if (p.causal !== null) {
      const { le, where, rowOperand } = p.causal;
      const rows = le.input[rowOperand]!;
      body.push(nodeBytes("Slice", [rows, b("start"), b("end"), x("zero")], [b("mask_rows")], b("mask_rows")));
      const leInputs = rowOperand === 0 ? [b("mask_rows"), le.input[1]!] : [le.input[0]!, b("mask_rows")];
      body.push(nodeBytes("LessOrEqual", leInputs, [b("mask_cond")], b("mask_cond")));
      body.push(nodeBytes("Where", [b("mask_cond"), where.input[1]!, where.input[2]!], [b("mask")], b("mask")));
      mask = b("mask");
    } else {
      body.push(nodeBytes("Slice", [p.mask, b("start"), b("end"), x("row_axis")], [b("mask")], b("mask")));
      mask = b("mask");
    }
    const addInputs = p.add.input[0] === p.mask ? [mask, scores] : [scores, mask];
    body.push(nodeBytes("Add", addInputs, [b("masked")], b("masked")));
    scores = b("masked");
  }
  body.push(
    nodeBytes(
      "Softmax",
      [scores],
      [b("probs")],
      b("probs"),
      p.softmax.attributes.map((raw) => ({ name: "", raw: raw.payload })),
    ),
  );
  body.push(nodeBytes("MatMul", [b("probs"), p.v], [b("out")], b("out")));
  body.push(nodeBytes("Concat", [b("acc"), b("out")], [b("acc_next")], b("acc_next"), [{ name: "axis", int: -2 }]));
  body.push(nodeBytes("Identity", [b("cond")], [b("cond_next")], b("cond_next")));

  const g = new Writer();
  for (const n of body) g.bytes(1, n);
  g.string(2, x("body"));
  g.bytes(11, valueInfo(b("i"), 7, true));
  g.bytes(11, valueInfo(b("cond"), 9, true));
  g.bytes(11, valueInfo(b("acc"), 1, false));
  g.bytes(12, valueInfo(b("cond_next"), 9, true));
  g.bytes(12, valueInfo(b("acc_next"), 1, false));
  outer.push(
    nodeBytes("Loop", [x("trips"), "", x("acc0")], [p.out.output[0]!], x("loop"), [
      { name: "body", graph: g.finish() },
    ]),
  );
  return outer;
}

/** Fields of a TensorProto that place its data outside the model file. */
function usesExternalData(graphPayload: Uint8Array): boolean {
  return readFields(graphPayload).some(
    (f) => f.no === 5 && readFields(f.payload).some((t) => t.no === 14 && t.varint === 1n),
  );
}

/**
 * The model to give onnxruntime for `file`: its bytes with attention chunked, or the file name
 * itself when nothing matches or its weights live in external data files (which onnxruntime finds
 * only next to a model it loads by path).
 */
export async function chunkedAttentionModel(file: string, blockBytes: number): Promise<string | Uint8Array> {
  const bytes = new Uint8Array(await readFile(file));
  const graph = readFields(bytes).find((f) => f.no === 7);
  if (graph === undefined || usesExternalData(graph.payload)) return file;
  const { model, rewritten } = rewriteChunkedAttention(bytes, { blockBytes });
  return rewritten === 0 ? file : model;
}
