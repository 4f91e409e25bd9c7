// The fleet on the overview: the timeline of experiments per GPU (a canvas: tens of thousands of
// bars), the GPU rows' sparklines (SVG), and the cells of a host shown as one row. Live GPU samples
// update all three in place. Uses charts.js (AutotuneCharts: its builders, source, width).
(() => {
  "use strict";
  const { builders, source, width } = window.AutotuneCharts;

  const STATUS_COLOR = { completed: "#2f9e44", failed: "#e03131", cancelled: "#adb5bd", cancelling: "#adb5bd" };
  function timeline(el) {
    if (el.dataset.url && !el.querySelector("script.chart-data")) {
      // the bars are fetched (a fleet's hours are tens of thousands): the page is not held up by them
      fetch(el.dataset.url)
        .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
        .then((T) => drawTimeline(el, T))
        .catch((err) => console.warn("timeline", err));
      return;
    }
    drawTimeline(el, source(el));
  }
  function drawTimeline(el, T) {
    el.dataset.redrawOnResize = "";
    const count = el.closest("section")?.querySelector("[data-bar-count]");
    if (count) count.textContent = T ? `${T.n.length.toLocaleString()} bar${T.n.length === 1 ? "" : "s"}` : "";
    el.dataset.bars = T ? T.n.length : 0;
    if (!T || !T.lanes.length) {
      el.innerHTML = '<p class="empty">No experiment ran on a GPU in this window.</p>';
      return;
    }
    const canvas = document.createElement("canvas");
    el.appendChild(canvas);
    const lanes = T.lanes.length;
    const laneH = Math.max(4, Math.min(18, Math.floor(480 / lanes)));
    const labelW = laneH >= 10 ? 120 : 0;
    const bars = [];
    const draw = () => {
      const W = width(el), H = lanes * laneH + 24, dpr = window.devicePixelRatio || 1;
      canvas.width = W * dpr; canvas.height = H * dpr;
      canvas.style.width = W + "px"; canvas.style.height = H + "px";
      const ctx = canvas.getContext("2d");
      ctx.scale(dpr, dpr);
      // the window the user chose, narrowed to where the bars are (a young fleet is not a sliver)
      const now = Date.now() / 1000, t1 = Math.max(T.until, now), first = T.since + Math.min(...T.start);
      const t0 = Math.max(T.since, first - Math.max(60, (t1 - first) * 0.05));
      const x = (t) => labelW + ((t - t0) / (t1 - t0)) * (W - labelW - 4);
      ctx.font = "11px system-ui, sans-serif";
      ctx.fillStyle = "#495057";
      if (labelW) T.lanes.forEach((l, k) => ctx.fillText(l, 2, k * laneH + laneH - 3));
      ctx.strokeStyle = "#dee2e6";
      for (let k = 0; k <= 6; k++) {
        const t = t0 + ((t1 - t0) * k) / 6, px = x(t);
        ctx.beginPath(); ctx.moveTo(px, 0); ctx.lineTo(px, lanes * laneH); ctx.stroke();
        const d = new Date(t * 1000);
        const hm = `${String(d.getUTCHours()).padStart(2, "0")}:${String(d.getUTCMinutes()).padStart(2, "0")}`;
        const label = t1 - t0 < 600 ? `${hm}:${String(d.getUTCSeconds()).padStart(2, "0")}Z` : `${hm}Z`;
        ctx.fillText(label, Math.min(px, W - 56), lanes * laneH + 16);
      }
      bars.length = 0;
      T.lane.forEach((lane, i) => {
        const a = x(Math.max(T.since + T.start[i], t0)), b = x(T.end[i] == null ? now : T.since + T.end[i]);
        const y = lane * laneH + 1, w = Math.max(1.5, b - a), h = laneH - 2;
        ctx.fillStyle = STATUS_COLOR[T.statuses[T.status[i]]] || "#1c7ed6";
        ctx.fillRect(a, y, w, h);
        bars.push([a, y, w, h, i]);
      });
    };
    const hit = (ev) => {
      const r = canvas.getBoundingClientRect(), px = ev.clientX - r.left, py = ev.clientY - r.top;
      for (let k = bars.length - 1; k >= 0; k--) {
        const [a, y, w, h, i] = bars[k];
        if (px >= a - 1 && px <= a + w + 1 && py >= y && py <= y + h) return i;
      }
      return -1;
    };
    canvas.addEventListener("mousemove", (ev) => {
      const i = hit(ev);
      canvas.style.cursor = i < 0 ? "default" : "pointer";
      canvas.title = i < 0 ? "" : `${T.tasks[T.task[i]]} experiment ${T.n[i]} (attempt ${T.attempt[i]}), ${T.statuses[T.status[i]]} on ${T.lanes[T.lane[i]]}`;
    });
    canvas.addEventListener("click", (ev) => {
      const i = hit(ev);
      if (i >= 0) location.href = `/tasks/${encodeURIComponent(T.tasks[T.task[i]])}/experiments/${T.n[i]}?attempt=${T.attempt[i]}`;
    });
    el._redraw = draw;
    draw();
    // running bars grow with the clock: a local redraw, no request
    el._clock = setInterval(() => (document.contains(el) ? draw() : clearInterval(el._clock)), 15000);
  }

  const sparkValues = (line) => (line.dataset.values || "").split(",").filter((v) => v !== "").map(Number);
  function drawSpark(line) {
    const vals = sparkValues(line);
    if (vals.length < 2) { line.setAttribute("points", ""); return; }
    const step = 60 / (vals.length - 1);
    line.setAttribute("points", vals.map((v, i) => `${(i * step).toFixed(1)},${(16 - (Math.min(Math.max(v, 0), 100) / 100) * 16).toFixed(1)}`).join(" "));
  }

  function pushSpark(row, kind, value) {
    const line = row.querySelector(`polyline[data-spark="${kind}"]`);
    if (!line || value == null) return;
    line.dataset.values = [...sparkValues(line), Math.round(value)].slice(-40).join(",");
    drawSpark(line);
  }

  // a host shown as one row: its GPUs are cells of a strip, colored by utilization, with their figures
  // as data; a sample updates its cell and the row's mean, memory and hottest GPU
  function gpuTitle(c) {
    const d = c.dataset, gib = (v) => (Number(v) / 1024).toFixed(1);
    return `GPU ${d.gpu.split("/").pop()}: ${d.u === "" ? "–" : d.u + " %"} utilization, ${d.m === "" ? "–" : gib(d.m)} / ${gib(d.mt || 0)} GiB, ` +
      `${d.t === "" ? "–" : d.t + " °C"}${d.l ? `, held by ${d.l}` : ", free"}`;
  }
  function summarize(row) {
    const cells = [...row.querySelectorAll(".strip i")];
    const vals = (k) => cells.map((c) => c.dataset[k]).filter((v) => v !== "" && v !== undefined).map(Number);
    const set = (f, text) => { const c = row.querySelector(`[data-field="${f}"]`); if (c) c.textContent = text; };
    const u = vals("u"), m = vals("m"), t = vals("t"), total = vals("mt").reduce((a, b) => a + b, 0);
    set("util", u.length ? `${Math.round(u.reduce((a, b) => a + b, 0) / u.length)} %` : "–");
    set("mem", m.length ? `${Math.round(m.reduce((a, b) => a + b, 0) / 1024)} / ${Math.round(total / 1024)} GiB` : "–");
    set("temp", t.length ? `max ${Math.round(Math.max(...t))} °C` : "–");
  }
  document.addEventListener("mouseover", (ev) => {
    const c = ev.target.closest?.(".strip i");
    if (c) c.title = gpuTitle(c);
  });

  function onSample(msg) {
    const e = msg.event;
    if (!e) return;
    document.querySelectorAll(`.strip i[data-gpu="${CSS.escape(`${e.host}/${e.index}`)}"]`).forEach((c) => {
      if (e.util_gpu != null) { c.dataset.u = Math.round(e.util_gpu); c.style.setProperty("--u", c.dataset.u); }
      if (e.memory_used_mib != null) c.dataset.m = Math.round(e.memory_used_mib);
      if (e.memory_total_mib) c.dataset.mt = Math.round(e.memory_total_mib);
      if (e.temperature_c != null) c.dataset.t = Math.round(e.temperature_c);
      const row = c.closest("tr");
      summarize(row);
      row.dataset.samples = String(Number(row.dataset.samples || 0) + 1);
    });
    document.querySelectorAll(`tr[data-gpu="${CSS.escape(`${e.host}/${e.index}`)}"]`).forEach((row) => {
      const set = (f, text) => { const c = row.querySelector(`[data-field="${f}"]`); if (c) c.textContent = text; };
      if (e.util_gpu != null) set("util", `${Math.round(e.util_gpu)} %`);
      if (e.temperature_c != null) set("temp", `${Math.round(e.temperature_c)} °C`);
      const total = e.memory_total_mib || Number(row.dataset.memTotal) || 0;
      if (e.memory_used_mib != null && total) set("mem", `${(e.memory_used_mib / 1024).toFixed(1)} / ${Math.round(total / 1024)} GiB`);
      pushSpark(row, "util", e.util_gpu);
      if (e.memory_used_mib != null && total) pushSpark(row, "mem", (100 * e.memory_used_mib) / total);
      pushSpark(row, "temp", e.temperature_c);
      row.dataset.samples = String(Number(row.dataset.samples || 0) + 1);
    });
  }

  builders.timeline = timeline;
  const sparks = (root) => root.querySelectorAll("polyline[data-spark]").forEach(drawSpark);
  window.addEventListener("DOMContentLoaded", () => {
    sparks(document);
    window.AutotuneLive?.on("telemetry", "gpu.sample", onSample);
  });
  document.addEventListener("autotune:swapped", (ev) => sparks(ev.detail));
})();
