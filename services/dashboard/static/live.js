// Live updates from the event log, without polling.
//
// A page lists the API's SSE streams it follows (#live-config: url, the sequence to go on from,
// the event types after which a stream is done). Each event re-renders the page's sections whose
// data-on prefixes match its type (the server renders them, from the same read side as the page),
// at most once a second per section; charts subscribe with AutotuneLive.on(stream, prefix, fn).
// A dropped stream is reopened from the sequence after the last one seen (kept in sessionStorage,
// so a page reopened in the same tab goes on from there too), never from the start.
(() => {
  "use strict";
  const config = JSON.parse(document.getElementById("live-config")?.textContent || "{}");
  const streams = {};
  const handlers = [];
  const THROTTLE_MS = 1000;

  const storeKey = (id) => `autotune.seq:${location.pathname}:${id}`;

  function paint() {
    const el = document.getElementById("live-status");
    if (!el) return;
    const all = Object.values(streams);
    let state = "off";
    if (all.length) {
      if (all.some((s) => s.state === "retrying")) state = "retrying";
      else if (all.some((s) => s.state === "connecting")) state = "connecting";
      else state = all.every((s) => s.state === "done") ? "done" : "live";
    }
    el.dataset.state = state;
    el.textContent = { off: "", live: "● live", connecting: "● connecting", retrying: "● reconnecting", done: "● up to date" }[state];
  }

  function open(s) {
    const stored = Number(sessionStorage.getItem(storeKey(s.id)) || 0);
    const since = Math.max(s.last + 1, stored ? stored + 1 : 0, 1);
    const url = s.url + (s.url.includes("?") ? "&" : "?") + "since_seq=" + since;
    const source = new EventSource(url);
    s.source = source;
    s.opened.push(since);
    s.state = "connecting";
    paint();
    source.onopen = () => {
      s.state = "live";
      s.retries = 0;
      paint();
    };
    const onEvent = (ev) => {
      if (ev.data === undefined) return; // the connection's own error event (below), not a server event
      const seq = Number(ev.lastEventId || 0);
      if (seq && seq < s.last) return; // already seen (an event without an id repeats the last one's)
      if (seq > s.last) {
        s.last = seq;
        sessionStorage.setItem(storeKey(s.id), String(seq));
      }
      let data = null;
      try {
        data = JSON.parse(ev.data);
      } catch {
        return;
      }
      dispatch(s.id, ev.type, data);
      if (s.until.includes(ev.type)) {
        s.done = true;
        source.close();
        s.state = "done";
        paint();
      }
    };
    for (const type of config.types || []) source.addEventListener(type, onEvent);
    source.addEventListener("error", (ev) => {
      if (ev.data !== undefined) return; // a server `error` event was handled above
      source.close();
      if (s.done) return;
      s.state = "retrying";
      paint();
      // the server ended the stream or the connection dropped: go on after the last sequence seen
      const delay = Math.min(15000, 500 * 2 ** Math.min(s.retries++, 5));
      s.timer = setTimeout(() => open(s), delay);
    });
  }

  function matches(el, streamId, type, data) {
    if ((el.dataset.stream || "events") !== streamId) return false;
    const prefixes = (el.dataset.on || "").split(/\s+/).filter(Boolean);
    if (!prefixes.some((p) => type.startsWith(p))) return false;
    const tasks = el.dataset.matchTasks; // only these tasks' events (a stream of every task's)
    if (tasks && !tasks.split(/\s+/).includes(((data && data.event) || {}).task)) return false;
    const host = el.dataset.matchHost;
    if (host) {
      const e = (data && data.event) || {};
      return e.host === host || (data.subject || "").includes(`.host.${host}.`);
    }
    return true;
  }

  function dispatch(streamId, type, data) {
    document.querySelectorAll("[data-part][data-on]").forEach((el) => {
      if (matches(el, streamId, type, data)) schedule(el.id, streams[streamId].stream === "AUTOTUNE_EVENTS" ? data.seq : 0);
    });
    for (const h of handlers) {
      if (h.stream === streamId && type.startsWith(h.prefix)) {
        try {
          h.fn(data, type);
        } catch (err) {
          console.warn("live handler failed", err);
        }
      }
    }
  }

  const refreshing = {};
  function schedule(id, seq) {
    const r = (refreshing[id] ||= { last: 0, timer: null, busy: false, again: false, seq: 0 });
    r.seq = Math.max(r.seq, Number(seq) || 0);
    if (r.busy) {
      r.again = true;
      return;
    }
    if (r.timer) return;
    const wait = Math.max(0, r.last + THROTTLE_MS - Date.now());
    r.timer = setTimeout(() => refresh(id, r), wait);
  }

  // Links that change a section's view (expand a host, page or filter the fleet) go to their URL,
  // where the state lives (a live refresh renders the section from location.search), and re-render
  // only their section: no reload, the streams stay open.
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest?.("a[data-nav]");
    if (!a || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
    const section = a.closest("[data-part]");
    if (!section || !section.id) return;
    ev.preventDefault();
    navigated = true;
    history.pushState({ nav: true }, "", a.href);
    const r = (refreshing[section.id] ||= { last: 0, timer: null, busy: false, again: false, seq: 0 });
    clearTimeout(r.timer);
    if (r.busy) r.again = true;
    else refresh(section.id, r);
  });
  let navigated = false;
  window.addEventListener("popstate", () => navigated && location.reload()); // back to a view this page rendered in place

  async function refresh(id, r) {
    r.timer = null;
    const el = document.getElementById(id);
    if (!el) return;
    r.busy = true;
    r.last = Date.now();
    try {
      // `after`: the server renders once the projection has applied the event that asked for it
      const url = location.pathname + (location.search ? location.search + "&" : "?") + "part=" + encodeURIComponent(el.dataset.part) +
        (r.seq ? "&after=" + r.seq : "");
      const resp = await fetch(url, { headers: { Accept: "text/html" } });
      if (resp.ok) {
        const tpl = document.createElement("template");
        tpl.innerHTML = (await resp.text()).trim();
        const fresh = tpl.content.firstElementChild;
        if (fresh && fresh.id === id) {
          el.replaceWith(fresh);
          if (window.htmx) window.htmx.process(fresh);
          document.dispatchEvent(new CustomEvent("autotune:swapped", { detail: fresh }));
        }
      }
    } catch (err) {
      console.warn("refresh failed", id, err);
    } finally {
      r.busy = false;
      if (r.again) {
        r.again = false;
        schedule(id);
      }
    }
  }

  window.AutotuneLive = {
    streams,
    on(stream, prefix, fn) {
      handlers.push({ stream, prefix, fn });
    },
    // for tests and the curious: drop a stream as a network failure would
    drop(id) {
      const s = streams[id];
      if (s && s.source) s.source.dispatchEvent(new Event("error"));
    },
  };

  for (const cfg of config.streams || []) {
    streams[cfg.id] = { ...cfg, last: (cfg.since_seq || 1) - 1, until: cfg.until || [], retries: 0, opened: [], state: "connecting" };
  }
  window.addEventListener("DOMContentLoaded", () => Object.values(streams).forEach(open));
  window.addEventListener("pagehide", () => Object.values(streams).forEach((s) => s.source && s.source.close()));
  paint();
})();
