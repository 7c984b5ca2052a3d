// The training page: upload a dataset ZIP (POST /api/datasets), start a job (POST /api/jobs), then poll
// GET /api/jobs/ID once a second for the progress bar, its message, the ETA and the learning curve.
"use strict";

const uploadForm = document.querySelector("[data-upload]");
const uploadStatus = document.querySelector("[data-upload-status]");
const trainForm = document.querySelector("[data-train]");
const trainStatus = document.querySelector("[data-train-status]");
const datasets = document.querySelector("[data-datasets]");
const panel = document.querySelector("[data-job]");
const bar = panel.querySelector("[data-job-bar]");
const text = panel.querySelector("[data-job-text]");
const cancel = panel.querySelector("[data-job-cancel]");
const curveBox = panel.querySelector("[data-job-curve]");
const done = panel.querySelector("[data-job-done]");
const SVG = "http://www.w3.org/2000/svg";

function say(where, message, isError) {
  where.textContent = message;
  where.className = isError ? "upload-result error" : "upload-result";
}

async function send(url, options) {
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `the server answered ${response.status}`);
  return body;
}

uploadForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  say(uploadStatus, "Uploading and checking every photo…");
  try {
    const d = await send(uploadForm.action, { method: "POST", body: new FormData(uploadForm) });
    const more = d.skipped_count > d.skipped.length ? `; and ${d.skipped_count - d.skipped.length} more` : "";
    const skipped = d.skipped_count ? ` Left out ${d.skipped_count}: ${d.skipped.map((s) => `${s.image} (${s.error})`).join("; ")}${more}.` : "";
    say(uploadStatus, `Dataset ${d.dataset}: ${d.photos} photos, labels ${d.labels.join(", ")}.${skipped}`);
    datasets.prepend(new Option(`${d.dataset} · ${d.photos} photos · ${d.labels.join(", ")}`, d.dataset, true, true));
    trainForm.querySelector("button[type=submit]").disabled = false;
    document.querySelector("[data-no-datasets]")?.remove();  // there is one now
  } catch (e) {
    say(uploadStatus, e.message, true);
  }
});

trainForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(trainForm);
  const job = { dataset: form.get("dataset"), mode: form.get("mode") };
  if (job.mode === "full") job.epochs = Number(form.get("epochs"));
  else job.backbone = form.get("backbone");
  try {
    const started = await send(trainForm.action, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(job) });
    say(trainStatus, "");
    follow(started.job);
  } catch (e) {
    say(trainStatus, e.message, true);
  }
});

function drawCurve(curve) {
  const svg = curveBox.querySelector("svg");
  svg.replaceChildren();
  if (!curve.length) return;
  curveBox.hidden = false;
  const values = curve.flatMap((p) => [p.loss, p.val_loss]);
  const top = Math.max(...values) * 1.05, W = 400, H = 160, pad = 24;
  const x = (i) => pad + (curve.length === 1 ? 0 : i * (W - 2 * pad) / (curve.length - 1));
  const y = (v) => H - pad - v / top * (H - 2 * pad);
  for (const [key, cls] of [["loss", "train"], ["val_loss", "val"]]) {
    const line = document.createElementNS(SVG, "polyline");
    line.setAttribute("class", cls);
    line.setAttribute("points", curve.map((p, i) => `${x(i).toFixed(1)},${y(p[key]).toFixed(1)}`).join(" "));
    svg.append(line);
  }
  const label = document.createElementNS(SVG, "text");
  label.setAttribute("x", 4);
  label.setAttribute("y", 12);
  label.textContent = `loss, 0 to ${top.toFixed(2)}; ${curve.length} epochs`;
  svg.append(label);
}

function show(status) {
  bar.value = status.progress;
  const eta = status.eta_s == null ? "" : `, about ${status.eta_s < 90 ? `${status.eta_s} s` : `${Math.round(status.eta_s / 60)} min`} left`;
  text.textContent = `${status.state}: ${Math.round(status.progress * 100)}% · ${status.message}${eta}`;
  drawCurve(status.curve || []);
  const live = status.state === "queued" || status.state === "running";
  const loading = status.state === "done" && status.ready === false;  // the server loads the new model
  cancel.hidden = !live;
  if (loading) text.textContent = `done: 100% · loading the model for serving, a few seconds`;
  if (status.state === "done" && !loading) {
    done.querySelector("[data-job-model]").textContent = status.model;
    done.hidden = false;
  }
  panel.dataset.state = loading ? "loading" : status.state;
  return live || loading;
}

async function follow(job) {
  panel.hidden = false;
  panel.dataset.jobId = job;
  panel.querySelector("[data-job-name]").textContent = job;
  done.hidden = true;
  curveBox.hidden = true;
  for (;;) {
    try {
      if (!show(await send(`/api/jobs/${encodeURIComponent(job)}`))) return;
    } catch (e) {
      text.textContent = e.message;
      return;
    }
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

cancel.addEventListener("click", async () => {
  if (!confirm("Cancel this training job? Its progress is lost.")) return;
  try {
    show(await send(`/api/jobs/${encodeURIComponent(panel.dataset.jobId)}`, { method: "DELETE" }));
  } catch (e) {
    text.textContent = e.message;
  }
});

if (panel.dataset.jobId) follow(panel.dataset.jobId);  // a job already running when the page was opened
