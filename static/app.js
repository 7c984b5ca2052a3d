// Progressive enhancement for the upload and photo pages: drag-and-drop, paste, in-place results,
// the Grad-CAM opacity slider, and the "correct the labels" forms (they post the photo the browser
// still holds: uploads are never stored on the server). Without JavaScript the same forms post and
// the server renders it all (feedback needs JavaScript).
"use strict";
document.documentElement.classList.add("js");

function bindOpacity(root) {
  root.querySelectorAll("[data-card]").forEach((card) => {
    const slider = card.querySelector("[data-opacity]");
    if (!slider) return;
    const apply = () => card.querySelectorAll(".cam").forEach((img) => {
      img.style.setProperty("--cam-opacity", slider.value / 100);
    });
    slider.addEventListener("input", apply);
    apply();
  });
}

function bindFeedback(root, files) {
  root.querySelectorAll("[data-feedback]").forEach((form) => {
    const status = form.querySelector("[data-feedback-status]");
    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      const file = files[Number(form.dataset.uploadIndex)];
      const body = new FormData();
      body.append("image", file, file.name || "pasted.png");
      body.append("labels", [...form.querySelectorAll("input[name=labels]:checked")].map((c) => c.value).join(","));
      status.textContent = "Saving…";
      try {
        const response = await fetch(form.action, { method: "POST", body });
        const answer = await response.json();
        if (!response.ok) throw new Error(answer.error);
        const labels = answer.labels.length ? answer.labels.join(", ") : "no label";
        status.textContent = `${answer.created ? "Saved" : "Updated"} as ${answer.image}: ${labels}`;
      } catch (err) {
        status.textContent = `Not saved: ${err.message}`;
      }
    });
  });
}

function setupUpload() {
  const form = document.querySelector("[data-upload]");
  if (!form) return;
  const input = form.querySelector("input[type=file]");
  const drop = form.querySelector("[data-drop]");
  const status = form.querySelector("[data-status]");
  const results = document.querySelector("[data-results]");

  async function send(files) {
    if (!files.length) return;
    const body = new FormData();
    for (const f of files) body.append("image", f, f.name || "pasted.png");
    status.textContent = `Predicting ${files.length} photo${files.length > 1 ? "s" : ""}…`;
    try {
      const response = await fetch(form.action, { method: "POST", body, headers: { "X-Requested-With": "fetch" } });
      const html = await response.text();
      if (response.status === 413 && !html.includes("error-card")) throw new Error("the upload is too large (10 MB per request at most)");
      results.innerHTML = html;
      bindOpacity(results);
      bindFeedback(results, files);
      status.textContent = response.ok ? "" : "Some files could not be read.";
    } catch (err) {
      status.textContent = `Upload failed: ${err.message}`;
    }
  }

  setupCamera(send);
  form.addEventListener("submit", (e) => { e.preventDefault(); send([...input.files]); });
  input.addEventListener("change", () => send([...input.files]));
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, () => drop.classList.remove("over")));
  drop.addEventListener("drop", (e) => { e.preventDefault(); send([...e.dataTransfer.files]); });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData?.files || [])].filter((f) => f.type.startsWith("image/"));
    if (files.length) { e.preventDefault(); send(files); }
  });
}

// The camera (getUserMedia: https or localhost only): a video frame drawn to a canvas, sent as a JPEG through `send`.
function setupCamera(send) {
  const box = document.querySelector("[data-camera]");
  if (!box) return;
  const video = box.querySelector("[data-camera-video]");
  const view = box.querySelector("[data-camera-view]");
  const status = box.querySelector("[data-camera-status]");
  let stream = null;
  const stop = () => {
    if (stream) stream.getTracks().forEach((t) => t.stop());
    stream = null;
    video.srcObject = null;
    view.hidden = true;
  };
  box.querySelector("[data-camera-start]").addEventListener("click", async () => {
    if (!navigator.mediaDevices?.getUserMedia) {
      status.textContent = "This browser offers no camera to this page (it needs https or localhost).";
      return;
    }
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
      video.srcObject = stream;
      view.hidden = false;
      status.textContent = "";
    } catch (err) {
      status.textContent = `No camera: ${err.message}`;
    }
  });
  box.querySelector("[data-camera-shoot]").addEventListener("click", () => {
    if (!video.videoWidth) { status.textContent = "The camera has not started yet."; return; }
    const canvas = document.createElement("canvas");
    canvas.width = video.videoWidth;
    canvas.height = video.videoHeight;
    canvas.getContext("2d").drawImage(video, 0, 0);
    const name = `camera-${new Date().toISOString().slice(0, 19).replace(/[:T]/g, "-")}.jpg`;
    canvas.toBlob((blob) => send([new File([blob], name, { type: "image/jpeg" })]), "image/jpeg", 0.92);
  });
  box.querySelector("[data-camera-stop]").addEventListener("click", stop);
}

bindOpacity(document);
setupUpload();
