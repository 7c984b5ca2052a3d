// A small ZIP reader for the batch page: the central directory is parsed here, stored entries are sliced out
// of the file and deflated ones inflated with the browser's DecompressionStream("deflate-raw"). One entry at a
// time is read, when asked for, so a large ZIP never sits in memory whole. No ZIP64, no encryption.
"use strict";

const ZIP_EOCD = 0x06054b50, ZIP_CENTRAL = 0x02014b50, ZIP_LOCAL = 0x04034b50;

async function zipView(file, start, end) {
  return new DataView(await file.slice(start, end).arrayBuffer());
}

// [{name, size, blob: () => Promise<Blob>}] for the files in `file` (folders left out); throws on a damaged ZIP.
// An entry is inflated to at most `maxBytes` and never past the size the directory gives it (no ZIP bomb).
async function zipEntries(file, maxBytes) {
  const tailStart = Math.max(0, file.size - 22 - 65535);  // the end record, after at most a 64 KB comment
  const tail = await zipView(file, tailStart, file.size);
  let end = -1;
  for (let i = tail.byteLength - 22; i >= 0 && end < 0; i--) if (tail.getUint32(i, true) === ZIP_EOCD) end = i;
  if (end < 0) throw new Error(`${file.name} is not a ZIP file`);
  const count = tail.getUint16(end + 10, true), size = tail.getUint32(end + 12, true), offset = tail.getUint32(end + 16, true);
  if (count === 0xffff || offset === 0xffffffff) throw new Error(`${file.name} is a ZIP64 archive, which this page does not read`);
  const dir = await zipView(file, offset, offset + size);
  const decoder = new TextDecoder();
  const entries = [];
  for (let p = 0, n = 0; n < count; n++) {
    if (p + 46 > dir.byteLength || dir.getUint32(p, true) !== ZIP_CENTRAL) throw new Error(`${file.name}: damaged ZIP directory`);
    const entry = {
      flags: dir.getUint16(p + 8, true), method: dir.getUint16(p + 10, true), compressed: dir.getUint32(p + 20, true),
      size: dir.getUint32(p + 24, true), local: dir.getUint32(p + 42, true),
      name: decoder.decode(new Uint8Array(dir.buffer, dir.byteOffset + p + 46, dir.getUint16(p + 28, true))),
    };
    p += 46 + dir.getUint16(p + 28, true) + dir.getUint16(p + 30, true) + dir.getUint16(p + 32, true);
    if (!entry.name.endsWith("/")) entries.push({ name: entry.name, size: entry.size, blob: () => zipEntryBlob(file, entry, maxBytes) });
  }
  return entries;
}

async function zipEntryBlob(file, entry, maxBytes) {
  if (entry.flags & 1) throw new Error("encrypted ZIP entry");
  if (entry.size > maxBytes) throw new Error(`${(entry.size / 2 ** 20).toFixed(1)} MB unzipped, over the ${maxBytes / 2 ** 20} MB a request`);
  const head = await zipView(file, entry.local, entry.local + 30);
  if (head.byteLength < 30 || head.getUint32(0, true) !== ZIP_LOCAL) throw new Error("damaged ZIP entry");
  const start = entry.local + 30 + head.getUint16(26, true) + head.getUint16(28, true);
  const data = file.slice(start, start + entry.compressed);
  if (entry.method === 0) return data;
  if (entry.method !== 8) throw new Error(`ZIP compression method ${entry.method} is not supported (only stored and deflate)`);
  const reader = data.stream().pipeThrough(new DecompressionStream("deflate-raw")).getReader();
  const chunks = [];
  for (let inflated = 0; ;) {
    const { done, value } = await reader.read();
    if (done) return new Blob(chunks);
    inflated += value.length;
    if (inflated > entry.size) {
      reader.cancel();
      throw new Error("damaged ZIP entry: it inflates past its stated size");
    }
    chunks.push(value);
  }
}
