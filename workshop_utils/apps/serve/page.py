"""The one-page web app of the web API (at ``/``): choose or drop a photo, see its label and a bar per class.

It reads ``/health`` for the model's description and the upload limit, and posts the photo to ``predict``
(relative, so it also works behind a proxy such as Colab's).
"""
from __future__ import annotations

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Car-damage classifier</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem; color: #222; }
  h1 { font-size: 1.5rem; margin-bottom: .2rem; }
  #model { color: #666; margin-top: 0; }
  #drop { border: 2px dashed #999; border-radius: .6rem; padding: 1.5rem; text-align: center; cursor: pointer; }
  #drop.over { border-color: #1a73e8; background: #eef4fd; }
  #preview { max-width: 100%; max-height: 18rem; margin-top: 1rem; display: none; border-radius: .4rem; }
  #error { display: none; background: #fdecea; color: #8a1c12; border-left: 4px solid #d93025;
           padding: .6rem .8rem; margin-top: 1rem; border-radius: .3rem; }
  #result { display: none; margin-top: 1rem; }
  #label { font-size: 1.4rem; font-weight: 600; }
  .bar-row { display: grid; grid-template-columns: 10rem 1fr 4rem; gap: .5rem; align-items: center; margin: .25rem 0; }
  .bar { background: #e8eaed; height: 1rem; border-radius: .2rem; overflow: hidden; }
  .bar > div { background: #1a73e8; height: 100%; }
  .bar-row.top .bar > div { background: #188038; }
  .num { text-align: right; font-variant-numeric: tabular-nums; }
  #busy { color: #666; display: none; }
</style>
</head>
<body>
<h1>Car-damage classifier</h1>
<p id="model">Loading the model's description…</p>
<form id="upload-form" action="predict" method="post" enctype="multipart/form-data">
  <label id="drop" for="file">
    <strong>Choose a photo</strong> or drop it here (JPEG, PNG, GIF or BMP)<br>
    <input id="file" name="file" type="file" accept="image/*">
  </label>
  <noscript><p><button type="submit">Classify</button> (without JavaScript the answer is shown as JSON)</p></noscript>
</form>
<img id="preview" alt="the photo you chose">
<p id="busy">Classifying…</p>
<div id="error" role="alert"></div>
<div id="result" aria-live="polite">
  <p>Predicted: <span id="label"></span> (<span id="probability"></span>)
     <small id="timing"></small></p>
  <div id="bars"></div>
</div>
<script>
"use strict";
const PREDICT_URL = "predict";   // relative, so it also works behind a proxy (Colab)
let maxBytes = null;
const $ = (id) => document.getElementById(id);

function showError(message) {
  $("busy").style.display = "none";
  $("result").style.display = "none";
  $("error").textContent = message;
  $("error").style.display = "block";
}

function showResult(answer) {
  $("busy").style.display = "none";
  $("error").style.display = "none";
  $("label").textContent = answer.label;
  $("probability").textContent = (100 * answer.probability).toFixed(1) + " %";
  $("timing").textContent = "in " + answer.time_ms.toFixed(0) + " ms";
  const bars = $("bars");
  bars.replaceChildren();
  const rows = Object.entries(answer.scores).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of rows) {
    const row = document.createElement("div");
    row.className = "bar-row" + (name === answer.label ? " top" : "");
    const label = document.createElement("span");
    label.textContent = name;
    const bar = document.createElement("div");
    bar.className = "bar";
    const fill = document.createElement("div");
    fill.style.width = (100 * p).toFixed(1) + "%";
    bar.appendChild(fill);
    const value = document.createElement("span");
    value.className = "num";
    value.textContent = (100 * p).toFixed(1) + " %";
    row.append(label, bar, value);
    bars.appendChild(row);
  }
  $("result").style.display = "block";
}

async function classify(file) {
  if (!file) return;
  const preview = $("preview");
  preview.onerror = () => { preview.style.display = "none"; };   // not something the browser can show
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.style.display = "block";
  if (maxBytes !== null && file.size > maxBytes) {
    showError(`${file.name} is ${(file.size / 1048576).toFixed(1)} MB, over this server's limit of ` +
              `${(maxBytes / 1048576).toFixed(1)} MB: choose a smaller photo.`);
    return;
  }
  $("busy").style.display = "block";
  $("error").style.display = "none";
  const form = new FormData();
  form.append("file", file, file.name);
  let response;
  try {
    response = await fetch(PREDICT_URL, { method: "POST", body: form });
  } catch (err) {
    showError("The server did not answer (" + err.message + "). Is it still running?");
    return;
  }
  let answer = null;
  try { answer = await response.json(); } catch (err) { answer = null; }
  if (!response.ok || answer === null || answer.error) {
    showError((answer && answer.error) || `The server answered ${response.status} ${response.statusText}.`);
    return;
  }
  showResult(answer);
}

$("file").addEventListener("change", (event) => classify(event.target.files[0]));
const drop = $("drop");
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("over"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("over"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  if (event.dataTransfer.files.length) classify(event.dataTransfer.files[0]);
});
document.getElementById("upload-form").addEventListener("submit", (event) => event.preventDefault());
// a photo dropped next to the box must not make the browser leave the page to display it
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());

fetch("health").then((r) => r.json()).then((health) => {
  maxBytes = health.max_bytes;
  const m = health.model;
  $("model").textContent = `${m.arch} · ${m.classes.length} classes: ${m.classes.join(", ")}`;
}).catch(() => { $("model").textContent = "Could not read the model's description from /health."; });
</script>
</body>
</html>
"""
