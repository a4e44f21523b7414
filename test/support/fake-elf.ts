/**
 * A minimal 64-bit little-endian ELF shared object with just a dynamic section: what
 * elf-dynamic.ts reads (DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH), for tests that need a
 * provider library without its 230 MB.
 */
export interface FakeElf {
  soname?: string;
  needed?: string[];
  rpath?: string;
  runpath?: string;
}

export function fakeElf(spec: FakeElf): Buffer {
  const strings: string[] = [""];
  const strOffset = (s: string): number => {
    let off = 0;
    for (const x of strings) {
      if (x === s) return off;
      off += Buffer.byteLength(x) + 1;
    }
    strings.push(s);
    return off;
  };
  const entries: [number, number][] = [];
  for (const n of spec.needed ?? []) entries.push([1, strOffset(n)]);
  if (spec.soname !== undefined) entries.push([14, strOffset(spec.soname)]);
  if (spec.rpath !== undefined) entries.push([15, strOffset(spec.rpath)]);
  if (spec.runpath !== undefined) entries.push([29, strOffset(spec.runpath)]);
  const strtab = Buffer.concat(strings.map((s) => Buffer.from(`${s}\0`)));
  const phoff = 64;
  const dynOff = phoff + 2 * 56;
  const dynSize = (entries.length + 3) * 16;
  const strOff = dynOff + dynSize;
  const total = strOff + strtab.length;
  entries.push([5, strOff], [10, strtab.length], [0, 0]);
  const buf = Buffer.alloc(total);
  buf.writeUInt32BE(0x7f454c46, 0);
  buf[4] = 2; // ELFCLASS64
  buf[5] = 1; // little-endian
  buf[6] = 1;
  buf.writeUInt16LE(3, 0x10); // ET_DYN
  buf.writeUInt16LE(62, 0x12); // x86-64
  buf.writeUInt32LE(1, 0x14);
  buf.writeBigUInt64LE(BigInt(phoff), 0x20);
  buf.writeUInt16LE(64, 0x34);
  buf.writeUInt16LE(56, 0x36);
  buf.writeUInt16LE(2, 0x38);
  const phdr = (i: number, type: number, offset: number, size: number): void => {
    const p = phoff + i * 56;
    buf.writeUInt32LE(type, p);
    buf.writeBigUInt64LE(BigInt(offset), p + 8);
    buf.writeBigUInt64LE(BigInt(offset), p + 16);
    buf.writeBigUInt64LE(BigInt(offset), p + 24);
    buf.writeBigUInt64LE(BigInt(size), p + 32);
    buf.writeBigUInt64LE(BigInt(size), p + 40);
  };
  phdr(0, 1, 0, total); // PT_LOAD of the whole file at address 0
  phdr(1, 2, dynOff, dynSize); // PT_DYNAMIC
  entries.forEach(([tag, value], i) => {
    buf.writeBigInt64LE(BigInt(tag), dynOff + i * 16);
    buf.writeBigUInt64LE(BigInt(value), dynOff + i * 16 + 8);
  });
  strtab.copy(buf, strOff);
  return buf;
}

/** What readelf -d shows for the pinned package's libonnxruntime_providers_cuda.so. */
export const PROVIDER_NEEDED = [
  "libcublasLt.so.13",
  "libcublas.so.13",
  "libcurand.so.10",
  "libcudart.so.13",
  "libcuda.so.1",
  "libdl.so.2",
  "librt.so.1",
  "libpthread.so.0",
  "libstdc++.so.6",
  "libm.so.6",
  "libgcc_s.so.1",
  "libc.so.6",
  "ld-linux-x86-64.so.2",
];
