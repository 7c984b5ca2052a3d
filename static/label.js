// The /label page: create a dataset from a ZIP, or from a folder of photos (zipped here, stored, no compression:
// photos do not shrink), with the label names; then open it in the labeller.
"use strict";

const form = document.querySelector("[data-create]");
const status = document.querySelector("[data-create-status]");
const PHOTO = /\.(jpe?g|png|webp|bmp|gif|tiff?)$/i;

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

// A ZIP (stored entries) of `files`, each under its path inside the chosen folder.
async function zipFolder(files) {
  const parts = [], central = [], encoder = new TextEncoder();
  let offset = 0;
  for (const file of files) {
    const name = encoder.encode(file.webkitRelativePath || file.name);
    const data = new Uint8Array(await file.arrayBuffer());
    const crc = crc32(data);
    const local = new DataView(new ArrayBuffer(30));
    [[0, 0x04034b50, 4], [4, 20, 2], [14, crc, 4], [18, data.length, 4], [22, data.length, 4], [26, name.length, 2]]
      .forEach(([at, value, size]) => (size === 4 ? local.setUint32(at, value, true) : local.setUint16(at, value, true)));
    const entry = new DataView(new ArrayBuffer(46));
    [[0, 0x02014b50, 4], [4, 20, 2], [6, 20, 2], [16, crc, 4], [20, data.length, 4], [24, data.length, 4], [28, name.length, 2], [42, offset, 4]]
      .forEach(([at, value, size]) => (size === 4 ? entry.setUint32(at, value, true) : entry.setUint16(at, value, true)));
    parts.push(local, name, data);
    central.push(entry, name);
    offset += 30 + name.length + data.length;
  }
  const size = central.reduce((n, p) => n + p.byteLength, 0);
  const end = new DataView(new ArrayBuffer(22));
  [[0, 0x06054b50, 4], [8, files.length, 2], [10, files.length, 2], [12, size, 4], [16, offset, 4]]
    .forEach(([at, value, size]) => (size === 4 ? end.setUint32(at, value, true) : end.setUint16(at, value, true)));
  return new Blob([...parts, ...central, end], { type: "application/zip" });
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const zip = form.querySelector("[data-zip]").files[0];
  const folder = [...form.querySelector("[data-folder]").files].filter((f) => PHOTO.test(f.name));
  const body = new FormData();
  body.append("labels", form.querySelector("[data-labels]").value);
  status.className = "upload-result";
  try {
    if (zip) body.append("file", zip);
    else if (folder.length) {
      status.textContent = `Packing ${folder.length} photos…`;
      const root = (folder[0].webkitRelativePath || "photos").split("/")[0];
      body.append("file", await zipFolder(folder), `${root}.zip`);
    } else throw new Error("choose a ZIP or a folder of photos first");
    status.textContent = "Uploading and checking every photo…";
    const response = await fetch(form.action, { method: "POST", body });
    const d = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
    if (!response.ok) throw new Error(d.error || `the server answered ${response.status}`);
    const skipped = d.skipped_count ? ` Left out ${d.skipped_count}, the first: ${d.skipped[0].image} (${d.skipped[0].error}).` : "";
    status.textContent = `Dataset ${d.dataset}: ${d.photos} photos, ${d.labelled} labelled, labels ${d.labels.join(", ")}.${skipped} Opening the labeller…`;
    window.location.assign(`/label/${encodeURIComponent(d.dataset)}`);
  } catch (e) {
    status.textContent = e.message;
    status.className = "upload-result error";
  }
});
