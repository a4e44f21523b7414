/**
 * The dynamic section of an ELF shared library: the libraries it needs (DT_NEEDED) and where it
 * asks the loader to look (DT_RPATH, DT_RUNPATH). What `readelf -d` prints, read with plain file
 * reads so that a host without binutils can check a provider library. 64-bit little-endian only
 * (x86-64, aarch64), which is every platform ONNX Runtime's CUDA provider is built for.
 */
import { closeSync, openSync, readSync } from "node:fs";

export interface ElfDynamic {
  soname?: string;
  needed: string[];
  rpath: string[];
  runpath: string[];
}

const PT_LOAD = 1;
const PT_DYNAMIC = 2;
const DT_NULL = 0n;
const DT_NEEDED = 1n;
const DT_STRTAB = 5n;
const DT_STRSZ = 10n;
const DT_SONAME = 14n;
const DT_RPATH = 15n;
const DT_RUNPATH = 29n;

export class NotElfError extends Error {}

/** Reads the dynamic section of `file`; throws NotElfError when it is not a 64-bit little-endian ELF with one. */
export function readElfDynamic(file: string): ElfDynamic {
  const fd = openSync(file, "r");
  try {
    const read = (offset: number, length: number): Buffer => {
      const buf = Buffer.alloc(length);
      const n = readSync(fd, buf, 0, length, offset);
      if (n !== length) throw new NotElfError(`${file}: truncated ELF file`);
      return buf;
    };
    let header: Buffer;
    try {
      header = read(0, 64);
    } catch {
      throw new NotElfError(`${file}: not an ELF file (too short)`);
    }
    if (header.readUInt32BE(0) !== 0x7f454c46) throw new NotElfError(`${file}: not an ELF file`);
    if (header[4] !== 2 || header[5] !== 1) throw new NotElfError(`${file}: not a 64-bit little-endian ELF file`);
    const phoff = Number(header.readBigUInt64LE(0x20));
    const phentsize = header.readUInt16LE(0x36);
    const phnum = header.readUInt16LE(0x38);
    const phdrs = read(phoff, phentsize * phnum);
    const loads: { offset: bigint; vaddr: bigint; filesz: bigint }[] = [];
    let dynamic: { offset: number; size: number } | undefined;
    for (let i = 0; i < phnum; i++) {
      const p = i * phentsize;
      const type = phdrs.readUInt32LE(p);
      const offset = phdrs.readBigUInt64LE(p + 8);
      const vaddr = phdrs.readBigUInt64LE(p + 16);
      const filesz = phdrs.readBigUInt64LE(p + 32);
      if (type === PT_LOAD) loads.push({ offset, vaddr, filesz });
      else if (type === PT_DYNAMIC) dynamic = { offset: Number(offset), size: Number(filesz) };
    }
    if (dynamic === undefined)
      throw new NotElfError(`${file}: an ELF file without a dynamic section (not a shared library)`);
    const dyn = read(dynamic.offset, dynamic.size);
    const entries: [bigint, bigint][] = [];
    for (let p = 0; p + 16 <= dyn.length; p += 16) {
      const tag = dyn.readBigInt64LE(p);
      if (tag === DT_NULL) break;
      entries.push([tag, dyn.readBigUInt64LE(p + 8)]);
    }
    const strtabAddr = entries.find(([t]) => t === DT_STRTAB)?.[1];
    const strsz = entries.find(([t]) => t === DT_STRSZ)?.[1];
    if (strtabAddr === undefined || strsz === undefined)
      throw new NotElfError(`${file}: dynamic section without a string table`);
    // DT_STRTAB is a virtual address: find the loaded segment holding it.
    const seg = loads.find((l) => strtabAddr >= l.vaddr && strtabAddr < l.vaddr + l.filesz);
    if (seg === undefined) throw new NotElfError(`${file}: string table outside every loaded segment`);
    const strtab = read(Number(seg.offset + (strtabAddr - seg.vaddr)), Number(strsz));
    const str = (offset: bigint): string => {
      const start = Number(offset);
      const end = strtab.indexOf(0, start);
      return strtab.toString("utf8", start, end < 0 ? strtab.length : end);
    };
    const paths = (tag: bigint): string[] =>
      entries
        .filter(([t]) => t === tag)
        .flatMap(([, v]) => str(v).split(":"))
        .filter((s) => s !== "");
    const out: ElfDynamic = {
      needed: entries.filter(([t]) => t === DT_NEEDED).map(([, v]) => str(v)),
      rpath: paths(DT_RPATH),
      runpath: paths(DT_RUNPATH),
    };
    const soname = entries.find(([t]) => t === DT_SONAME);
    if (soname !== undefined) out.soname = str(soname[1]);
    return out;
  } finally {
    closeSync(fd);
  }
}
