// Charts (uPlot) drawn from the JSON the server embeds or the page fetches
// in the page (<script type="application/json">, the read side's own shapes). Live events append
// to them; a chart the user zoomed keeps its zoom (setData without resetting the scales).
(() => {
  "use strict";
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22"];
  const FEASIBLE = "#1f77b4", INFEASIBLE = "#b0b0b0", FRONTIER = "#e8590c";
  const plots = new Set();

  const source = (el) => {
    const node = el.dataset.source ? document.getElementById(el.dataset.source) : el.querySelector("script.chart-data");
    return node ? JSON.parse(node.textContent || "null") : null;
  };
  const width = (el) => Math.max(260, Math.floor(el.getBoundingClientRect().width || el.parentElement.getBoundingClientRect().width || 480));
  const fmt = (v) => (v == null ? "–" : Math.abs(v) >= 1000 || Number.isInteger(v) ? Math.round(v).toLocaleString() : Number(v.toPrecision(4)).toString());

  function plot(el, { legend = true, dragY = false, ...opts }, data) {
    el.textContent = "";
    const u = new uPlot(
      {
        width: width(el),
        height: opts.height || 260,
        legend: { show: legend },
        cursor: { drag: { x: true, y: dragY, uni: 30 }, ...(opts.cursor || {}) },
        ...opts,
        hooks: {
          ...(opts.hooks || {}),
          setSelect: [(u) => { if (u.select.width > 0 || u.select.height > 0) u._zoomed = true; }],
        },
      },
      data,
      el,
    );
    u._zoomed = false;
    u.over.addEventListener("dblclick", () => { u._zoomed = false; });
    el._plot = u;
    plots.add(u);
    return u;
  }
  // new data; the scales stay where the user zoomed them, else they follow the data
  const update = (u, data) => u.setData(data, !u._zoomed);
  // a little room around the data, so that points on the edge are whole
  const padded = (u, min, max) => {
    if (min == null || max == null) return [0, 1];
    const span = max - min || Math.abs(max) || 1;
    return [min - span * 0.06, max + span * 0.06];
  };
  const scatter = (label, color, size = 5) => ({ label, stroke: color, fill: color, paths: () => null, points: { show: true, space: 0, size, fill: color, stroke: color } });

  // --- a task's finished experiments (history, Pareto, slices share one columnar store) ----------------

  const stores = {};
  // the charts of one data set share it: embedded in the page, or fetched once from data-url
  function store(el) {
    const id = el.dataset.source;
    let st = stores[id];
    if (!st) {
      st = stores[id] = { P: null, charts: [], waiting: [] };
      const node = document.getElementById(id);
      if (node) st.P = JSON.parse(node.textContent || "null");
      else if (el.dataset.url) {
        fetch(el.dataset.url)
          .then((r) => (r.ok ? r.json() : Promise.reject(new Error(`HTTP ${r.status}`))))
          .then((P) => {
            st.P = P;
            st.waiting.splice(0).forEach((f) => f());
          })
          .catch((err) => console.warn("chart data", err));
      }
      if (el.dataset.task) follow(st, el.dataset.task);
    }
    if (!st.charts.includes(el)) st.charts.push(el);
    return st;
  }
  // build when the data is there
  const whenLoaded = (st, el, build) => {
    if (st.P) return false;
    st.waiting.push(() => build(el));
    return true;
  };

  function follow(st, task) {
    // a finished experiment: fetch its point (and the task's frontier now) and append it
    let pending = new Set(), timer = null, after = 0;
    const flush = async () => {
      timer = null;
      if (!st.P) {
        timer = setTimeout(flush, 500); // the page's own fetch of the data is not back yet
        return;
      }
      const ns = [...pending];
      pending = new Set();
      const q = new URLSearchParams({ x: st.P.x, y: st.P.y, after }); // read once the projection has these results
      ns.forEach((n) => q.append("n", n));
      try {
        const r = await fetch(`/tasks/${encodeURIComponent(task)}/points.json?${q}`);
        if (!r.ok) return;
        merge(st.P, await r.json());
        st.charts.forEach((el) => el._redraw && el._redraw());
      } catch (err) {
        console.warn("points", err);
      }
    };
    window.AutotuneLive?.on("events", "experiment.", (d, type) => {
      if (type !== "experiment.completed" && type !== "experiment.failed") return;
      pending.add(d.event.n);
      after = Math.max(after, d.seq || 0);
      if (!timer) timer = setTimeout(flush, 500);
    });
  }

  function merge(P, add) {
    const at = new Map(P.n.map((n, i) => [`${n}.${P.attempt[i]}`, i]));
    const cols = ["n", "attempt", "status", "score", "slo_met", "failure_kind", "xs", "ys"];
    add.n.forEach((n, j) => {
      let i = at.get(`${n}.${add.attempt[j]}`);
      if (i === undefined) {
        i = P.n.length;
        cols.forEach((c) => P[c].push(null));
        Object.keys(P.parameters).forEach((k) => P.parameters[k].push(null));
      }
      cols.forEach((c) => { P[c][i] = add[c][j]; });
      Object.keys(add.parameters).forEach((k) => {
        if (!P.parameters[k]) P.parameters[k] = P.n.map(() => null);
        P.parameters[k][i] = add.parameters[k][j];
      });
    });
    P.frontier_keys = add.frontier_keys;
  }

  const frontierSet = (P) => new Set((P.frontier_keys || []).map(([n, a]) => `${n}.${a}`));
  const done = (P, i) => P.status[i] === "completed";

  function history(el) {
    const st = store(el);
    if (whenLoaded(st, el, history)) return;
    let u = null;
    const data = () => {
      const P = st.P;
      const idx = P.n.map((_, i) => i).filter((i) => done(P, i) && P.score[i] != null).sort((a, b) => P.n[a] - P.n[b] || P.attempt[a] - P.attempt[b]);
      let best = Infinity;
      const bests = idx.map((i) => (best = Math.min(best, P.score[i])));
      return [idx.map((i) => P.n[i]), idx.map((i) => P.score[i]), bests];
    };
    el._redraw = () => (u ? update(u, data()) : null);
    const d = data();
    if (!d[0].length) {
      el.innerHTML = '<p class="empty">No finished experiment yet.</p>';
      el._redraw = () => { if (data()[0].length) { el._redraw = null; history_again(el, st); } };
      return;
    }
    u = plot(el, {
      scales: { x: { time: false, range: padded }, y: { range: padded } },
      axes: [{ label: "experiment" }, { label: "score", size: 70, values: (u, vs) => vs.map(fmt) }],
      series: [{ label: "experiment" }, scatter("score", FEASIBLE), { label: "best so far", stroke: FRONTIER, width: 2, paths: uPlot.paths.stepped({ align: 1 }), points: { show: false } }],
    }, d);
  }
  function history_again(el, st) { st.charts = st.charts.filter((c) => c !== el); history(el); }

  function pareto(el) {
    const st = store(el);
    if (whenLoaded(st, el, pareto)) return;
    const task = el.dataset.task;
    let u = null, idx = [];
    const data = () => {
      const P = st.P, front = frontierSet(P);
      idx = P.n.map((_, i) => i).filter((i) => done(P, i) && P.xs[i] != null && P.ys[i] != null).sort((a, b) => P.xs[a] - P.xs[b]);
      el.dataset.frontier = idx.filter((i) => front.has(`${P.n[i]}.${P.attempt[i]}`)).map((i) => P.n[i]).join(",");
      el.dataset.points = idx.length;
      const count = document.querySelector(`[data-frontier-count="${el.dataset.source}"]`);
      if (count) count.textContent = String(front.size);
      return [
        idx.map((i) => P.xs[i]),
        idx.map((i) => (P.slo_met[i] !== false ? P.ys[i] : null)),
        idx.map((i) => (P.slo_met[i] === false ? P.ys[i] : null)),
        idx.map((i) => (front.has(`${P.n[i]}.${P.attempt[i]}`) ? P.ys[i] : null)),
      ];
    };
    const shade = (u) => {
      const P = st.P;
      if (P.x_bound == null && P.y_bound == null) return;
      let { left: x0, top: y0, width: w, height: h } = u.bbox;
      let x1 = x0 + w, y1 = y0 + h;
      if (P.x_bound != null) {
        const px = u.valToPos(P.x_bound, "x", true);
        if (P.x_better === "max") x0 = Math.max(x0, px); else x1 = Math.min(x1, px);
      }
      if (P.y_bound != null) {
        const py = u.valToPos(P.y_bound, "y", true);
        if (P.y_better === "max") y1 = Math.min(y1, py); else y0 = Math.max(y0, py);
      }
      if (x1 > x0 && y1 > y0) {
        u.ctx.save();
        u.ctx.fillStyle = "rgba(46, 160, 67, 0.12)";
        u.ctx.fillRect(x0, y0, x1 - x0, y1 - y0);
        u.ctx.restore();
      }
    };
    const nearest = (u, px, py) => {
      let best = -1, dist = 12 * 12;
      const [xs, ...ys] = u.data;
      xs.forEach((x, k) => {
        const y = ys[0][k] ?? ys[1][k];
        if (y == null) return;
        const dx = u.valToPos(x, "x") - px, dy = u.valToPos(y, "y") - py;
        if (dx * dx + dy * dy < dist) { dist = dx * dx + dy * dy; best = k; }
      });
      return best;
    };
    el._redraw = () => (u ? update(u, data()) : null);
    const d = data();
    if (!d[0].length) {
      el.innerHTML = '<p class="empty">No completed experiment with both figures yet.</p>';
      el._redraw = () => { if (data()[0].length) { st.charts = st.charts.filter((c) => c !== el); pareto(el); } };
      return;
    }
    const P = st.P;
    u = plot(el, {
      height: 320,
      dragY: true,
      legend: false,
      scales: { x: { time: false, range: padded }, y: { range: padded } },
      axes: [{ label: P.x_label, values: (u, vs) => vs.map(fmt) }, { label: P.y_label, size: 70, values: (u, vs) => vs.map(fmt) }],
      series: [
        { label: P.x_label, value: (u, v) => fmt(v) },
        scatter("meets the SLOs", FEASIBLE),
        scatter("misses them", INFEASIBLE),
        { label: "frontier", stroke: FRONTIER, width: 2, spanGaps: true, points: { show: true, space: 0, size: 9, fill: FRONTIER, stroke: FRONTIER } },
      ],
      hooks: { drawClear: [shade] },
    }, d);
    u.over.style.cursor = "pointer";
    u.over.addEventListener("click", (ev) => {
      const k = nearest(u, ev.offsetX, ev.offsetY);
      if (k < 0) return;
      const i = idx[k];
      location.href = `/tasks/${encodeURIComponent(task)}/experiments/${st.P.n[i]}?attempt=${st.P.attempt[i]}`;
    });
    u.over.addEventListener("mousemove", (ev) => {
      const k = nearest(u, ev.offsetX, ev.offsetY);
      if (k < 0) { u.over.title = ""; return; }
      const i = idx[k], P = st.P;
      const params = Object.keys(P.parameters).map((p) => `${p}=${P.parameters[p][i]}`).join(" ");
      u.over.title = `experiment ${P.n[i]}: ${fmt(P.xs[i])}, ${fmt(P.ys[i])}, score ${fmt(P.score[i])}\n${params}`;
    });
    // where experiment n is drawn, in page coordinates (for tests and links from elsewhere)
    el._pointOf = (n) => {
      const k = idx.findIndex((i) => st.P.n[i] === n);
      if (k < 0) return null;
      const r = u.over.getBoundingClientRect();
      return { x: r.left + u.valToPos(u.data[0][k], "x"), y: r.top + u.valToPos(st.P.ys[idx[k]], "y") };
    };
  }

  function slices(el) {
    const st = store(el);
    if (whenLoaded(st, el, slices)) return;
    const draw = () => {
      const P = st.P;
      el.textContent = "";
      const names = Object.keys(P.parameters);
      if (!names.length || !P.n.some((_, i) => done(P, i) && P.score[i] != null)) {
        el.innerHTML = '<p class="empty">No finished experiment yet.</p>';
        return;
      }
      for (const name of names) {
        const fig = document.createElement("figure");
        fig.innerHTML = `<figcaption>${name.replace(/[<&]/g, "")}</figcaption>`;
        const box = document.createElement("div");
        fig.appendChild(box);
        el.appendChild(fig);
        const vals = P.parameters[name];
        const idx = P.n.map((_, i) => i).filter((i) => done(P, i) && P.score[i] != null && vals[i] != null);
        const numeric = idx.every((i) => typeof vals[i] === "number");
        const cats = numeric ? [] : [...new Set(idx.map((i) => String(vals[i])))].sort();
        const xOf = (i) => (numeric ? vals[i] : cats.indexOf(String(vals[i])));
        idx.sort((a, b) => xOf(a) - xOf(b));
        plot(box, {
          width: 260,
          height: 180,
          legend: false,
          scales: { x: { time: false, range: numeric ? padded : [-0.5, cats.length - 0.5] }, y: { range: padded } },
          axes: [{ values: numeric ? (u, vs) => vs.map(fmt) : (u, vs) => vs.map((v) => (Number.isInteger(v) ? cats[v] ?? "" : "")), splits: numeric ? undefined : () => cats.map((_, k) => k) },
            { size: 60, values: (u, vs) => vs.map(fmt) }],
          series: [{}, scatter("score", FEASIBLE, 4)],
        }, [idx.map(xOf), idx.map((i) => P.score[i])]);
      }
    };
    el._redraw = draw;
    draw();
  }

  // --- telemetry over time (an experiment's GPUs, a host's GPUs) ---------------------------------------

  function telemetry(el) {
    const src = source(el);
    const field = el.dataset.field;
    const gpus = [...new Set([...(src.gpus || []), ...src.points.map((p) => p.gpu)])].sort((a, b) => a - b);
    const rows = new Map();
    for (const p of src.points) {
      const t = Date.parse(p.t) / 1000;
      if (!rows.has(t)) rows.set(t, {});
      rows.get(t)[p.gpu] = p[field];
    }
    const data = () => {
      const ts = [...rows.keys()].sort((a, b) => a - b);
      return [ts, ...gpus.map((g) => ts.map((t) => rows.get(t)[g] ?? null))];
    };
    const d = data();
    if (!gpus.length) {
      el.innerHTML = '<p class="empty">No GPU.</p>';
      return;
    }
    const u = plot(el, {
      height: 200,
      axes: [{}, { size: 70, values: (u, vs) => vs.map(fmt) }],
      series: [{}, ...gpus.map((g, k) => ({ label: `GPU ${g}`, stroke: COLORS[k % COLORS.length], width: 1.5, spanGaps: true }))],
    }, d);
    window.AutotuneLive?.on("telemetry", "gpu.sample", (msg) => {
      const e = msg.event;
      if (!gpus.includes(e.index) || e[field] == null) return;
      const t = Date.parse(e.at) / 1000;
      if (!rows.has(t)) rows.set(t, {});
      rows.get(t)[e.index] = e[field];
      update(u, data());
      el.dataset.appended = String(Number(el.dataset.appended || 0) + 1);
    });
  }

  function cdf(el) {
    const src = source(el);
    const item = src.items.find((x) => x.metric === el.dataset.metric);
    if (!item || !item.cdf_v.length) {
      el.innerHTML = '<p class="empty">No successful request.</p>';
      return;
    }
    const pts = item.cdf_v.map((v, k) => [v, item.cdf_p[k] * 100]).filter(([v]) => v != null);
    plot(el, {
      height: 200,
      legend: false,
      scales: { x: { time: false } },
      axes: [{ label: "seconds", values: (u, vs) => vs.map(fmt) }, { label: "% of requests", size: 50 }],
      series: [{}, { label: "share of requests at or below", stroke: FEASIBLE, width: 2 }],
    }, [pts.map((p) => p[0]), pts.map((p) => p[1])]);
  }

  // --- several tasks' fronts --------------------------------------------------------------------------------

  function compare(el) {
    const list = source(el) || [];
    // one x column for every task's finished points; per task a scatter and its frontier
    const data = () => {
      const entries = [];
      list.forEach((P, k) => {
        const front = frontierSet(P);
        P.n.forEach((n, i) => {
          if (done(P, i) && P.xs[i] != null && P.ys[i] != null) entries.push([P.xs[i], k, P.ys[i], front.has(`${n}.${P.attempt[i]}`)]);
        });
      });
      entries.sort((a, b) => a[0] - b[0]);
      const out = [entries.map((e) => e[0])];
      list.forEach((P, k) => {
        out.push(entries.map((e) => (e[1] === k ? e[2] : null)));
        out.push(entries.map((e) => (e[1] === k && e[3] ? e[2] : null)));
      });
      el.dataset.points = entries.length;
      return out;
    };
    let u = null;
    const build = () => {
      const d = data();
      if (!d[0].length) {
        el.innerHTML = '<p class="empty">None of these tasks has a completed experiment with both figures yet.</p>';
        return;
      }
      const series = [{ label: list[0]?.x_label }];
      list.forEach((P, k) => {
        const c = COLORS[k % COLORS.length];
        series.push({ ...scatter(`${P.task}`, c + "55", 4) });
        series.push({ label: `${P.task} frontier`, stroke: c, width: 2, spanGaps: true, points: { show: true, space: 0, size: 8, fill: c, stroke: c } });
      });
      u = plot(el, {
        height: 360,
        dragY: true,
        scales: { x: { time: false, range: padded }, y: { range: padded } },
        axes: [{ label: list[0]?.x_label, values: (u, vs) => vs.map(fmt) }, { label: list[0]?.y_label, size: 70, values: (u, vs) => vs.map(fmt) }],
        series,
      }, d);
    };
    build();
    // a running task's finished experiments join its points (and its frontier moves); a zoom stays
    const pending = new Map();
    let timer = null, after = 0;
    const flush = async () => {
      timer = null;
      const asked = [...pending.entries()];
      pending.clear();
      for (const [k, ns] of asked) {
        const P = list[k];
        const q = new URLSearchParams({ x: P.x, y: P.y, after });
        ns.forEach((n) => q.append("n", n));
        try {
          const r = await fetch(`/tasks/${encodeURIComponent(P.task)}/points.json?${q}`);
          if (r.ok) merge(P, await r.json());
        } catch (err) {
          console.warn("points", err);
        }
      }
      if (u) update(u, data());
      else build();
    };
    window.AutotuneLive?.on("events", "experiment.", (d, type) => {
      if (type !== "experiment.completed" && type !== "experiment.failed") return;
      const k = list.findIndex((P) => P.task === d.event.task);
      if (k < 0) return;
      if (!pending.has(k)) pending.set(k, new Set());
      pending.get(k).add(d.event.n);
      after = Math.max(after, d.seq || 0);
      if (!timer) timer = setTimeout(flush, 500);
    });
  }

  // fleet.js adds the timeline; a builder draws one [data-chart] element
  const builders = { history, pareto, slices, telemetry, cdf, compare };
  function init(root) {
    root.querySelectorAll("[data-chart]").forEach((el) => {
      if (el._built) return;
      el._built = true;
      try {
        builders[el.dataset.chart]?.(el);
      } catch (err) {
        console.error("chart", el.dataset.chart, err);
      }
    });
  }

  window.AutotuneCharts = { init, plots, builders, source, width };
  window.addEventListener("DOMContentLoaded", () => init(document));
  document.addEventListener("autotune:swapped", (ev) => init(ev.detail));
  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => {
      for (const u of plots) if (document.contains(u.root) && !u.root.closest(".slices")) u.setSize({ width: width(u.root.parentElement), height: u.height });
      document.querySelectorAll("[data-chart][data-redraw-on-resize]").forEach((el) => el._redraw && el._redraw());
    }, 200);
  });
})();
