// edgespec dashboard: subscribes over MQTT websockets (mqtt.js, vendored) to the fleet's
// result, availability and verifier stats topics and draws one tile per camera, a verifier
// strip and a live chart. Every message is validated; one that is not valid JSON or breaks the
// format (schemas/README.md) is shown nowhere and only counted as rejected.
//
// A result's `extra` may say how it was made: `mode` (hybrid, cloud_only, edge_only; missing:
// hybrid), `verified: false` (an edge_only caption, the draft model's alone), `replaces` (the
// session id of the unverified caption this verified one replaces, in place) and `link` (the
// camera's measurements). Device-supplied text is only ever set as textContent.
"use strict";

(() => {
  const ID_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
  const MAX_PAYLOAD = 64 * 1024;          // schemas.results.MAX_RESULT_BYTES
  const HISTORY = 4;                       // earlier captions kept on a tile
  const CHART_WINDOW_S = 300;
  const RATE_WINDOW_S = 60;
  const COLORS = ["#2563eb", "#db2777", "#059669", "#d97706", "#7c3aed", "#0891b2", "#dc2626", "#4d7c0f"];
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MAX_TRACKED = 1000;                // unverified / replaced session ids kept per camera
  const MODES = { hybrid: "hybrid", cloud_only: "cloud only", edge_only: "edge only" };
  const MODE_TITLES = {
    hybrid: "speculative decoding: drafted on the camera, checked by a verifier's target model",
    cloud_only: "the verifier's target model wrote the caption and streamed it to the camera",
    edge_only: "the camera's draft model alone (no verifier reachable, or by policy): captions are unverified until a verifier checks them",
  };

  const state = {
    cameras: new Map(),    // id -> {status, results: [], latest, link, unverified: Map, tokens: [[recv_s, n]], firstSeen, el}
    verifiers: new Map(),  // id -> {status, stats, prevStats, rate, el}
    rejected: 0,
    verified: new Map(),   // "<device>/<session id>" -> what a verifier verified
    captions: 0,
    points: [],            // chart: {t, device, acceptance}
    fleetRate: [],         // chart: [t, tokens/s]
    started: Date.now() / 1000,
  };
  window.edgespec = state;  // for tests and the curious

  const $ = (id) => document.getElementById(id);
  const now = () => Date.now() / 1000;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  // ------------------------------------------------------------------ validation
  const decoder = new TextDecoder("utf-8", { fatal: true });

  function reject(why, topic) {
    state.rejected += 1;
    const r = $("rejected");
    r.textContent = String(state.rejected);
    r.classList.add("nonzero");
    console.warn("rejected message on", topic, ":", why);
  }

  function parseJson(payload) {
    if (payload.length > MAX_PAYLOAD) throw new Error("oversize");
    return JSON.parse(decoder.decode(payload));
  }

  const isObj = (x) => x !== null && typeof x === "object" && !Array.isArray(x);
  const isNum = (x) => typeof x === "number" && Number.isFinite(x);
  const isInt = (x) => Number.isInteger(x) && x >= 0;

  function checkResult(body, device) {
    if (!isObj(body) || body.v !== 1) throw new Error("not a v1 result object");
    if (body.device_id !== device) throw new Error("device_id differs from the topic's");
    const types = { session_id: "string", text: "string" };
    for (const [k, t] of Object.entries(types)) if (typeof body[k] !== t) throw new Error(`field ${k}`);
    for (const k of ["ts", "acceptance_rate", "mean_accepted"]) if (!isNum(body[k])) throw new Error(`field ${k}`);
    for (const k of ["rounds", "bytes_up", "bytes_down"]) if (!isInt(body[k])) throw new Error(`field ${k}`);
    if (!Array.isArray(body.token_ids)) throw new Error("field token_ids");
    if (body.extra !== undefined && !isObj(body.extra)) throw new Error("field extra");
    return body;
  }

  // The new `extra` fields are read leniently: a value of the wrong type is ignored (the result
  // then shows as an older camera's would), never trusted.
  function modeOf(r) {
    const m = r.extra && r.extra.mode;
    if (m === undefined || m === null) return "hybrid";  // cameras that do not say
    if (typeof m !== "string") return "unknown";
    const k = m.replace(/-/g, "_");
    return Object.hasOwn(MODES, k) ? k : "unknown";
  }
  const isUnverified = (r) => !!r.extra && r.extra.verified === false;
  const replacesOf = (r) => (r.extra && typeof r.extra.replaces === "string" && r.extra.replaces.length <= 128
    ? r.extra.replaces : null);

  // The camera's link measurements of a result, only the well-formed ones; null if none.
  function linkOf(r) {
    const l = r.extra && r.extra.link;
    if (!isObj(l)) return null;
    const out = {};
    for (const k of ["rtt_ms", "acceptance", "draft_ms_per_token", "verify_ms", "gamma"]) {
      if (isNum(l[k]) && l[k] >= 0) out[k] = l[k];
    }
    return Object.keys(out).length ? out : null;
  }

  // What a verifier verified (dev/<id>/verified, a topic only verifiers may write): a result
  // shows as verified only when one matches it exactly; otherwise it is the device's claim.
  function checkVerified(body, device) {
    if (!isObj(body) || body.v !== 1) throw new Error("not a v1 verified object");
    if (body.device_id !== device) throw new Error("device_id differs from the topic's");
    for (const k of ["session_id", "verifier_id", "text"]) if (typeof body[k] !== "string") throw new Error(`field ${k}`);
    if (!Array.isArray(body.token_ids) || !isInt(body.resumed)) throw new Error("field token_ids or resumed");
    return body;
  }

  function setVerified(id, v) {
    state.verified.set(`${id}/${v.session_id}`, v);
    if (state.verified.size > 1000) state.verified.delete(state.verified.keys().next().value);
    const c = state.cameras.get(id);
    if (c && c.results.some((r) => r.session_id === v.session_id)) renderCaptions(c);
  }

  // "unverified" (the camera says its draft model wrote it alone), "yes" (a verifier's
  // VerifiedMsg matches it exactly) or "no" (the device's claim).
  function verification(c, r) {
    if (isUnverified(r)) return { state: "unverified", v: null };
    const v = state.verified.get(`${c.id}/${r.session_id}`);
    const ok = !!v && v.resumed === 0 && v.text === r.text && v.token_ids.length === r.token_ids.length
      && v.token_ids.every((t, i) => t === r.token_ids[i]);
    return { state: ok ? "yes" : "no", v: ok ? v : null };
  }

  // "verified later; N of M offline tokens kept" for a result that replaced an unverified one.
  function laterNote(r) {
    if (!replacesOf(r)) return "";
    const kept = r.extra.replayed_accepted, of = r.extra.offline_tokens;
    return isInt(kept) && isInt(of) ? `verified later; ${kept} of ${of} offline tokens kept` : "verified later";
  }

  function markVerified(c, r) {
    const { state: s, v } = verification(c, r);
    const later = laterNote(r);
    c.parts.caption.dataset.verified = s;
    c.parts.caption.classList.toggle("unverified", s === "unverified");
    c.parts.flag.hidden = s !== "unverified";
    const how = s === "unverified" ? " · unverified — draft only (the camera's draft model alone, no verifier has checked it)"
      : s === "yes" ? ` · verified by ${v.verifier_id}` : " · not verified (the device's claim)";
    c.parts.when.textContent = eventTime(r) + how + (later ? ` · ${later}` : "");
  }

  function checkStats(body, verifier) {
    if (!isObj(body) || body.verifier_id !== verifier) throw new Error("not a stats object of this verifier");
    if (!isInt(body.sessions) || !isNum(body.ts)) throw new Error("field sessions or ts");
    for (const k of ["stats", "batch_sizes", "rejected"]) {
      if (body[k] !== undefined && !isObj(body[k])) throw new Error(`field ${k}`);
    }
    return body;
  }

  // ------------------------------------------------------------------ formatting
  function kib(n) {
    if (!isNum(n)) return "–";
    return n >= 1048576 ? `${(n / 1048576).toFixed(1)} MiB` : n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
  }
  const clock = (s) => new Date(s * 1000).toLocaleTimeString([], { hour12: false });
  function ago(s) {
    const d = Math.max(0, now() - s);
    return d < 60 ? `${Math.round(d)} s ago` : d < 3600 ? `${Math.round(d / 60)} min ago` : clock(s);
  }
  function eventTime(r) {
    const ev = r.extra && r.extra.event;
    if (isObj(ev) && isNum(ev.start_t) && isNum(ev.end_t)) {
      // Camera event times are seconds on the camera's stream clock (not wall time).
      return `event at ${ev.start_t.toFixed(1)}–${ev.end_t.toFixed(1)} s of the stream · captioned ${clock(r.ts)}`;
    }
    return `captioned ${clock(r.ts)}`;
  }

  // ------------------------------------------------------------------ cameras
  function camera(id) {
    let c = state.cameras.get(id);
    if (c) return c;
    c = { id, status: "unknown", results: [], tokens: [], firstSeen: now(), color: COLORS[state.cameras.size % COLORS.length] };
    const t = el("article", "tile unknown");
    t.dataset.device = id;
    const head = el("div", "head");
    const mode = el("span", "mode", "");
    mode.hidden = true;
    const waiting = el("span", "waiting", "");
    waiting.hidden = true;
    waiting.dataset.count = "0";
    head.append(el("span", "id", id), el("span", "pill unknown", "status?"), mode, waiting, el("span", "seen", ""));
    const flag = el("div", "flag", "unverified — draft only");
    flag.title = "written by the camera's draft model alone while no verifier was reachable; "
      + "it is replaced here once a verifier has checked it";
    flag.hidden = true;
    const caption = el("p", "caption none", "no caption yet");
    const when = el("div", "when", "");
    const metrics = el("div", "metrics");
    for (const [k, title] of [["acceptance", "share of drafted tokens the verifier accepted"],
                              ["tokens/round", "tokens committed per verifier round trip (accepted + 1)"],
                              ["tokens/s", "caption tokens per second from this camera over the last minute"]]) {
      const m = el("div", "metric");
      m.title = title;
      m.append(el("div", "v", "–"), el("div", "k", k));
      metrics.append(m);
    }
    const bytes = el("div", "bytes", "");
    const bar = el("div", "bar");
    bar.append(el("span"));
    bytes.append(el("span", "btext", "sent –"), bar);
    const link = el("div", "link");
    link.hidden = true;
    const history = el("ol", "history");
    t.append(head, flag, caption, when, metrics, link, bytes, history);
    c.el = t;
    c.unverified = new Map();  // session id -> unverified result still waiting for its replacement
    c.replaced = new Set();    // session ids a verified result replaced
    c.verifiedLater = 0;
    c.link = null;             // {values, ts} of the latest result that carried link measurements
    c.parts = { pill: head.children[1], mode, waiting, seen: head.children[4], flag, caption, when, link,
                values: [...metrics.querySelectorAll(".v")], btext: bytes.firstChild, bar: bar.firstChild, history };
    state.cameras.set(id, c);
    const tiles = $("tiles");
    $("no-cameras")?.remove();
    const after = [...tiles.children].find((x) => x.dataset.device > id);
    tiles.insertBefore(t, after || null);
    renderLegend();
    return c;
  }

  function setCameraStatus(id, status) {
    const c = camera(id);
    c.status = status;
    c.el.classList.toggle("offline", status === "offline");
    c.el.classList.toggle("online", status === "online");
    c.el.classList.toggle("unknown", status === "unknown");
    c.parts.pill.className = `pill ${status === "offline" ? "off" : status === "online" ? "" : "unknown"}`;
    c.parts.pill.textContent = status;
    renderCounters();
  }

  function cameraRate(c) {
    const t = now();
    c.tokens = c.tokens.filter(([s]) => s > t - RATE_WINDOW_S);
    const sum = c.tokens.reduce((a, [, n]) => a + n, 0);
    return sum / Math.max(5, Math.min(RATE_WINDOW_S, t - c.firstSeen));
  }

  function bounded(coll, max) {
    while (coll.size > max) coll.delete(coll.keys().next().value);
  }

  function addResult(id, r) {
    const c = camera(id);
    const received = Date.now();
    r.receivedAt = received;
    const replaces = replacesOf(r);
    if (isUnverified(r) && c.replaced.has(r.session_id)) return;  // its verified replacement came first
    let slot = -1, known = false;
    if (replaces) {
      known = c.unverified.delete(replaces);
      slot = c.results.findIndex((x) => x.session_id === replaces);
      c.replaced.add(replaces);
      bounded(c.replaced, MAX_TRACKED);
      if (known || slot >= 0) c.verifiedLater += 1;
    }
    if (isUnverified(r)) {
      c.unverified.set(r.session_id, r);
      bounded(c.unverified, MAX_TRACKED);
    }
    if (slot >= 0) {
      c.results[slot] = r;  // in place: same tile, same row
    } else if (!known) {
      c.results.unshift(r);
      c.results.length = Math.min(c.results.length, HISTORY + 1);
      state.captions += 1;
    }  // else: it replaces a caption that has left the tile's history; only the counts change
    c.latest = r;
    const link = linkOf(r);
    if (link) c.link = { values: link, ts: r.ts };
    c.tokens.push([received / 1000, r.token_ids.length]);
    renderMode(c);
    renderCaptions(c);
    if (modeOf(r) === "hybrid") {
      state.points.push({ t: received / 1000, device: id, acceptance: Math.max(0, Math.min(1, r.acceptance_rate)) });
    }
    renderCounters();
    renderChart();
  }

  // The camera's mode (its latest result's), its unverified captions waiting, its link.
  function renderMode(c) {
    const p = c.parts;
    const m = modeOf(c.latest);
    p.mode.hidden = false;
    p.mode.className = `mode mode-${m}`;
    p.mode.dataset.mode = m;
    p.mode.textContent = MODES[m] || "mode?";
    p.mode.title = MODE_TITLES[m] || "the camera named a mode this page does not know";
    const n = c.unverified.size;
    p.waiting.hidden = n === 0;
    p.waiting.dataset.count = String(n);
    p.waiting.textContent = `${n} unverified waiting`;
    p.waiting.title = `${n} caption${n === 1 ? "" : "s"} written by the draft model alone, waiting for a verifier`
      + (c.verifiedLater ? `; ${c.verifiedLater} verified later so far` : "");
    if (c.link) {
      const l = c.link.values;
      const items = [];
      const ms = (x) => x.toFixed(x < 1 ? 2 : x < 100 ? 1 : 0);
      if (l.rtt_ms !== undefined) items.push(["RTT", `${ms(l.rtt_ms)} ms`, "rtt"]);
      if (l.acceptance !== undefined) items.push(["acceptance", `${Math.round(Math.min(1, l.acceptance) * 100)}%`, "acceptance"]);
      if (l.gamma !== undefined) items.push(["γ", String(Math.round(l.gamma)), "gamma"]);
      if (l.draft_ms_per_token !== undefined) items.push(["draft", `${ms(l.draft_ms_per_token)} ms/token`, "draft"]);
      if (l.verify_ms !== undefined) items.push(["verify", `${ms(l.verify_ms)} ms`, "verify"]);
      p.link.replaceChildren(el("span", "lk", "link"), ...items.map(([k, v, key]) => {
        const s = el("span", "", `${k} `);
        const b = el("b", "", v);
        b.dataset.k = key;
        s.append(b);
        return s;
      }));
      p.link.title = `the camera's link measurements with its result of ${clock(c.link.ts)}: round-trip time, `
        + "smoothed per-position draft acceptance, draft length γ, draft time per token, verifier time per block";
      p.link.hidden = false;
    }
  }

  // The tile's caption, its figures and its history, from c.results (newest first).
  function renderCaptions(c) {
    const r = c.results[0];
    if (!r) return;
    const p = c.parts;
    p.caption.textContent = r.text.length > 400 ? r.text.slice(0, 400) + "…" : r.text;
    p.caption.classList.toggle("none", r.text.length === 0);
    if (r.text.length === 0) p.caption.textContent = "(empty caption)";
    p.caption.dataset.session = r.session_id;
    p.caption.dataset.receivedAt = String(r.receivedAt);
    p.caption.dataset.mode = modeOf(r);
    markVerified(c, r);
    const m = modeOf(r);
    p.values[0].textContent = m === "hybrid" ? `${Math.round(r.acceptance_rate * 100)}%` : "–";
    p.values[0].parentElement.title = m === "hybrid" ? "share of drafted tokens the verifier accepted"
      : m === "edge_only" ? "no verifier checked this caption" : "the verifier's target wrote every token";
    p.values[1].textContent = m === "edge_only" ? "–" : (r.mean_accepted + 1).toFixed(2);
    const seconds = isNum(r.seconds) ? r.seconds : r.extra && isNum(r.extra.seconds) ? r.extra.seconds : null;
    p.values[2].dataset.speed = seconds && seconds > 0 ? (r.token_ids.length / seconds).toFixed(1) : "";
    renderRate(c);
    const jpeg = r.extra && isInt(r.extra.jpeg_bytes_keyframes) ? r.extra.jpeg_bytes_keyframes : null;
    if (jpeg) {
      const ratio = jpeg / Math.max(1, r.bytes_up);
      p.btext.textContent = `sent ${kib(r.bytes_up)} vs ${kib(jpeg)} for JPEG key frames — ${ratio >= 9.95 ? Math.round(ratio) : ratio.toFixed(1)}× less`;
      p.bar.style.width = `${Math.min(100, (100 * r.bytes_up) / jpeg).toFixed(1)}%`;
    } else {
      p.btext.textContent = `sent ${kib(r.bytes_up)}, received ${kib(r.bytes_down)}`;
      p.bar.style.width = "100%";
    }
    p.history.replaceChildren(...c.results.slice(1).map((h) => {
      const li = el("li", "", `${clock(h.ts)} — ${h.text.length > 120 ? h.text.slice(0, 120) + "…" : h.text}`);
      const s = verification(c, h).state;
      li.dataset.session = h.session_id;
      li.dataset.verified = s;
      li.dataset.mode = modeOf(h);
      if (s === "unverified") {
        li.className = "unverified";
        li.append(" ", el("span", "tag", "unverified — draft only"));
      } else if (replacesOf(h)) {
        li.append(" ", el("span", "tag later", laterNote(h)));
      }
      return li;
    }));
    p.seen.textContent = ago(r.ts);
  }

  function renderRate(c) {
    const v = c.parts.values[2];
    v.textContent = v.dataset.speed || cameraRate(c).toFixed(1);
  }

  // ------------------------------------------------------------------ verifiers
  function verifier(id) {
    let v = state.verifiers.get(id);
    if (v) return v;
    v = { id, status: "unknown", stats: null, rate: null };
    const box = el("div", "verifier");
    box.dataset.verifier = id;
    const name = el("div", "name");
    name.append(el("span", "", id), el("span", "pill unknown", "status?"));
    const kv = el("div", "kv");
    box.append(name, kv);
    v.el = box;
    v.pill = name.children[1];
    v.kv = kv;
    state.verifiers.set(id, v);
    const strip = $("verifiers");
    strip.querySelector(".empty")?.remove();
    const after = [...strip.children].find((x) => x.dataset.verifier > id);
    strip.insertBefore(box, after || null);
    return v;
  }

  function setVerifierStatus(id, status) {
    const v = verifier(id);
    v.status = status;
    v.el.classList.toggle("offline", status === "offline");
    v.pill.className = `pill ${status === "offline" ? "off" : status === "online" ? "" : "unknown"}`;
    v.pill.textContent = status;
  }

  function setVerifierStats(id, s) {
    const v = verifier(id);
    const counters = s.stats || {};
    const committed = (counters.accepted_tokens || 0) + (counters.verified_blocks || 0);
    if (v.stats && s.ts > v.stats.ts) {
      const prev = (v.stats.stats?.accepted_tokens || 0) + (v.stats.stats?.verified_blocks || 0);
      v.rate = Math.max(0, committed - prev) / (s.ts - v.stats.ts);
    }
    v.stats = s;
    let n = 0, sum = 0, max = 0;
    for (const [k, count] of Object.entries(s.batch_sizes || {})) {
      const size = Number(k);
      if (!isInt(size) || !isInt(count)) continue;
      n += count; sum += size * count; max = Math.max(max, size);
    }
    const rejected = Object.values(s.rejected || {}).reduce((a, x) => a + (isInt(x) ? x : 0), 0);
    const rows = [
      ["sessions", String(s.sessions)],
      ["KV cache", kib(s.kv_bytes)],
      ["batch size", n ? `${(sum / n).toFixed(1)} mean, ${max} max` : "–"],
      ["batches", String(n)],
      ["tokens/s", v.rate === null ? "–" : v.rate.toFixed(1)],
      ["rejected", String(rejected)],
    ];
    v.kv.replaceChildren(...rows.flatMap(([k, val]) => [el("span", "", k), el("b", "", val)]));
    if (s.final) v.kv.append(el("span", "", "final stats"), el("b", "", clock(s.ts)));
  }

  // ------------------------------------------------------------------ header, chart
  function renderCounters() {
    const cams = [...state.cameras.values()];
    $("n-cameras").textContent = String(cams.length);
    $("n-online").textContent = String(cams.filter((c) => c.status === "online").length);
    $("n-captions").textContent = String(state.captions);
    const waiting = cams.reduce((a, c) => a + c.unverified.size, 0);
    $("n-unverified").textContent = String(waiting);
    $("n-unverified").classList.toggle("nonzero", waiting > 0);
  }

  function renderLegend() {
    $("legend").replaceChildren(...[...state.cameras.values()].map((c) => {
      const s = el("span", "", c.id);
      const i = el("i");
      i.style.background = c.color;
      s.prepend(i);
      return s;
    }), (() => { const s = el("span", "", "- - fleet tokens/s (right axis)"); return s; })());
  }

  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function renderChart() {
    const W = 800, H = 160, L = 34, R = 40, T = 8, B = 18;
    // The time axis grows with the page's age from 1 to 5 minutes, then scrolls.
    const t1 = now(), span = Math.min(CHART_WINDOW_S, Math.max(60, t1 - state.started)), t0 = t1 - span;
    state.points = state.points.filter((p) => p.t >= t1 - CHART_WINDOW_S);
    state.fleetRate = state.fleetRate.filter(([t]) => t >= t1 - CHART_WINDOW_S);
    const x = (t) => L + ((t - t0) / span) * (W - L - R);
    const y = (a) => T + (1 - a) * (H - T - B);
    const parts = [];
    for (const a of [0, 0.5, 1]) {
      parts.push(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(a), y2: y(a) }));
      parts.push(svg("text", { class: "axis", x: 2, y: y(a) + 3 }, `${a * 100}%`));
    }
    for (const k of [5, 4, 3, 2, 1]) {
      const s = (span * k) / 5;
      parts.push(svg("text", { class: "axis", x: x(t1 - s) - 14, y: H - 4 }, span < 150 ? `-${Math.round(s)} s` : `-${(s / 60).toFixed(1)} min`));
    }
    parts.push(svg("text", { class: "axis", x: W - R - 18, y: H - 4 }, "now"));
    const shown = state.fleetRate.filter(([t]) => t >= t0);
    const maxRate = Math.max(1, ...shown.map(([, r]) => r));
    const ry = (r) => T + (1 - r / maxRate) * (H - T - B);
    parts.push(svg("text", { class: "axis", x: W - R + 4, y: T + 8 }, `${maxRate.toFixed(0)}/s`));
    parts.push(svg("text", { class: "axis", x: W - R + 4, y: H - B }, "0/s"));
    if (shown.length > 1) {
      parts.push(svg("polyline", { class: "rate", points: shown.map(([t, r]) => `${x(t).toFixed(1)},${ry(r).toFixed(1)}`).join(" ") }));
    }
    for (const c of state.cameras.values()) {
      const pts = state.points.filter((p) => p.device === c.id && p.t >= t0);
      if (pts.length > 1) {
        parts.push(svg("polyline", { fill: "none", stroke: c.color, "stroke-width": 1.5, opacity: 0.7,
          points: pts.map((p) => `${x(p.t).toFixed(1)},${y(p.acceptance).toFixed(1)}`).join(" ") }));
      }
      for (const p of pts) parts.push(svg("circle", { cx: x(p.t).toFixed(1), cy: y(p.acceptance).toFixed(1), r: 3.5, fill: c.color }));
    }
    $("chart").replaceChildren(...parts);
  }

  function tick() {
    // Fleet caption tokens/s over the last 30 s, sampled every 2 s; tiles' ages and rates.
    const t = now();
    let tokens = 0;
    for (const c of state.cameras.values()) {
      for (const [s, n] of c.tokens) if (s > t - 30) tokens += n;
      renderRate(c);
      if (c.results.length) c.parts.seen.textContent = ago(c.results[0].ts);
    }
    state.fleetRate.push([t, tokens / 30]);
    renderChart();
  }

  // ------------------------------------------------------------------ MQTT
  function onMessage(prefix, topic, payload, retained) {
    if (!topic.startsWith(prefix + "/")) return;
    const [kind, id, leaf, ...rest] = topic.slice(prefix.length + 1).split("/");
    if (rest.length || !ID_RE.test(id || "")) return reject("unexpected topic", topic);
    if (payload.length === 0) return;  // a retained message being cleared: nothing to show
    if (leaf === "status") {
      const text = payload.length <= 16 ? new TextDecoder().decode(payload) : "";
      if (text !== "online" && text !== "offline") return reject("status is neither online nor offline", topic);
      return kind === "dev" ? setCameraStatus(id, text) : kind === "verifier" ? setVerifierStatus(id, text) : reject("unexpected topic", topic);
    }
    if (retained && (leaf === "result" || leaf === "verified")) return reject("a retained result (stored, not an event)", topic);
    let body;
    try {
      body = parseJson(payload);
    } catch (err) {
      return reject(`not JSON: ${err.message}`, topic);
    }
    try {
      if (kind === "dev" && leaf === "result") return addResult(id, checkResult(body, id));
      if (kind === "dev" && leaf === "verified") return setVerified(id, checkVerified(body, id));
      if (kind === "verifier" && leaf === "stats") return setVerifierStats(id, checkStats(body, id));
      return reject("unexpected topic", topic);
    } catch (err) {
      return reject(err.message, topic);
    }
  }

  function setConn(mode, text) {
    document.body.dataset.mqtt = mode;
    $("conn-text").textContent = text;
  }

  async function main() {
    const cfg = await (await fetch("config.json", { cache: "no-store" })).json();
    const prefix = (cfg.prefix || "edgespec/v1").replace(/\/+$/, "");
    const url = cfg.broker_ws || `ws://${location.hostname || "127.0.0.1"}:${cfg.default_ws_port || 9001}`;
    const opts = { protocolVersion: 5, clean: true, reconnectPeriod: 2000, connectTimeout: 8000,
                   clientId: `edgespec-dashboard-${Math.random().toString(16).slice(2, 10)}` };
    if (cfg.username) opts.username = cfg.username;
    if (cfg.password) opts.password = cfg.password;
    setConn("connecting", `connecting to ${url}…`);
    const client = mqtt.connect(url, opts);
    const topics = [`${prefix}/dev/+/result`, `${prefix}/dev/+/verified`, `${prefix}/dev/+/status`, `${prefix}/verifier/+/status`, `${prefix}/verifier/+/stats`];
    client.on("connect", () => {
      client.subscribe(topics, { qos: 1 }, (err) => {
        if (err) setConn("offline", `subscribe failed: ${err.message}`);
        else setConn("connected", `${url} · ${prefix}`);
      });
    });
    client.on("message", (topic, payload, packet) => {
      try {
        onMessage(prefix, topic, payload, !!(packet && packet.retain));
      } catch (err) {  // nothing a message holds may break the page
        reject(`page error: ${err && err.message}`, topic);
      }
    });
    client.on("reconnect", () => setConn("connecting", `reconnecting to ${url}…`));
    client.on("offline", () => setConn("offline", `broker ${url} unreachable`));
    client.on("error", (err) => setConn("offline", `${url}: ${err.message}`));
    state.client = client;
    setInterval(tick, 2000);
    renderChart();
  }

  main().catch((err) => setConn("offline", `dashboard failed to start: ${err.message}`));
})();
