// The embedding map (/map): every dataset photo from /api/map drawn on a canvas, coloured by its true or
// predicted label set; test errors ringed; hover shows the thumbnail, click opens the photo.
"use strict";

const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];
const OTHER = "#b8c2cf";
const PAD = 12;       // CSS pixels around the points
const RADIUS = 3.5;
const HIT = 8;        // hover reach in CSS pixels

const setName = (labels) => (labels.length ? labels.join(" + ") : "no label");
const sameSet = (a, b) => setName(a) === setName(b);

async function loadPoints(url, status, progress) {
  for (;;) {
    const response = await fetch(url);
    const body = await response.json();
    if (response.ok) return body.points;
    if (response.status !== 503) throw new Error(body.error);
    status.textContent = body.error;
    progress.value = body.progress;
    await new Promise((done) => setTimeout(done, 1000));
  }
}

function colours(points) {
  // The most common true label sets get their own colour, the rest share OTHER.
  const counts = new Map();
  points.forEach((p) => counts.set(setName(p.truth), (counts.get(setName(p.truth)) || 0) + 1));
  const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1]).slice(0, PALETTE.length);
  return new Map(ranked.map(([name], i) => [name, PALETTE[i]]));
}

function setupMap() {
  const canvas = document.querySelector("[data-map]");
  if (!canvas) return;
  const status = document.querySelector("[data-map-status]");
  const progress = document.querySelector("[data-map-progress]");
  const tip = document.querySelector("[data-map-tip]");
  const legend = document.querySelector("[data-map-legend]");
  const photoUrl = (id) => canvas.dataset.photoUrl.replace(/0$/, String(id));
  let points = [], palette = new Map(), by = "truth", size = 0;

  const colourOf = (p) => palette.get(setName(p[by])) || OTHER;
  const place = (p) => [PAD + p.x * (size - 2 * PAD), PAD + p.y * (size - 2 * PAD)];

  function draw() {
    const start = performance.now();
    size = canvas.parentElement.clientWidth;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = canvas.height = Math.round(size * ratio);
    canvas.style.width = canvas.style.height = `${size}px`;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, size, size);
    for (const p of points) {
      const [x, y] = place(p);
      ctx.beginPath();
      ctx.arc(x, y, RADIUS, 0, 2 * Math.PI);
      ctx.fillStyle = colourOf(p);
      ctx.fill();
    }
    ctx.strokeStyle = "#c9372c";
    ctx.lineWidth = 1.6;
    for (const p of points) {
      if (p.split !== "test" || sameSet(p.truth, p.predicted)) continue;
      const [x, y] = place(p);
      ctx.beginPath();
      ctx.arc(x, y, RADIUS + 2.5, 0, 2 * Math.PI);
      ctx.stroke();
    }
    canvas.dataset.drawMs = (performance.now() - start).toFixed(2);
    drawLegend();
  }

  function drawLegend() {
    const counts = new Map();
    points.forEach((p) => counts.set(colourOf(p), (counts.get(colourOf(p)) || 0) + 1));
    legend.replaceChildren();
    for (const [name, colour] of [...palette.entries(), ["other label sets", OTHER]]) {
      if (!counts.get(colour)) continue;
      const item = document.createElement("li");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = colour;
      item.append(swatch, `${name} (${counts.get(colour)})`);
      legend.append(item);
    }
    const errors = points.filter((p) => p.split === "test" && !sameSet(p.truth, p.predicted)).length;
    const item = document.createElement("li");
    const ring = document.createElement("span");
    ring.className = "swatch ring";
    item.append(ring, `test photo predicted wrongly (${errors})`);
    legend.append(item);
  }

  function nearest(event) {
    const box = canvas.getBoundingClientRect();
    const mx = event.clientX - box.left, my = event.clientY - box.top;
    let best = null, bestD = HIT * HIT;
    for (const p of points) {
      const [x, y] = place(p);
      const d = (x - mx) ** 2 + (y - my) ** 2;
      if (d <= bestD) { best = p; bestD = d; }
    }
    return best;
  }

  canvas.addEventListener("mousemove", (event) => {
    const p = nearest(event);
    canvas.classList.toggle("over-point", Boolean(p));
    if (!p) { tip.hidden = true; return; }
    const [x, y] = place(p);
    tip.querySelector("img").src = `${photoUrl(p.photo_id)}/thumb.jpg`;
    tip.querySelector("p").textContent = `#${p.photo_id} · ${p.split} · true: ${setName(p.truth)} · predicted: ${setName(p.predicted)}`;
    tip.style.left = `${Math.min(x + 14, size - 200)}px`;
    tip.style.top = `${y + 14 > size - 240 ? y - 254 : y + 14}px`;
    tip.hidden = false;
  });
  canvas.addEventListener("mouseleave", () => { tip.hidden = true; });
  canvas.addEventListener("click", (event) => {
    const p = nearest(event);
    if (p) window.location.href = photoUrl(p.photo_id);
  });
  document.querySelectorAll("[data-colour]").forEach((radio) => radio.addEventListener("change", () => {
    by = radio.value;
    draw();
  }));
  window.addEventListener("resize", () => points.length && draw());

  loadPoints(canvas.dataset.src, status, progress).then((loaded) => {
    points = loaded;
    palette = colours(points);
    status.textContent = `${points.length} photos`;
    progress.hidden = true;
    draw();
    canvas.dataset.ready = "true";
  }).catch((err) => { status.textContent = `The map could not be loaded: ${err.message}`; });
}

setupMap();
