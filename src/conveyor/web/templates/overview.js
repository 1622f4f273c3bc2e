"use strict";
(function () {
  const colors = { succeeded: "#1f8a4c", failed: "#c23a3a", delay_p50: "#3a5bd9", delay_p95: "#b7791f" };
  const dash = "\u2013";
  const fmt = (v) => (v === null || v === undefined ? dash : String(v));
  const count = Object.assign((v) => String(Math.round(v)), { integer: true });
  const secs = (v) => (v === null || v === undefined ? "-" : v < 1 ? Math.round(v * 1000) + " ms" : v.toFixed(1) + " s");

  // Axis marks from 0 to at least `max`: 1, 2 or 5 times a power of ten apart, about four of
  // them; whole numbers (a step of 1 at least) for counts, so few samples never read "1, 1, 0".
  function ticks(max, integer) {
    const floor = integer ? 1 : 0.004;
    const want = Math.max(max, floor) / 4;
    const power = Math.pow(10, Math.floor(Math.log10(want)));
    let step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= want);
    if (integer) step = Math.max(1, Math.round(step));
    const marks = [0];
    while (marks[marks.length - 1] < max || marks.length < 2) marks.push(+(marks[marks.length - 1] + step).toPrecision(12));
    return marks;
  }
  window.conveyorTicks = ticks;

  function draw(canvas, points, keys, unit) {
    const ratio = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    canvas.width = w * ratio; canvas.height = h * ratio;
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    const left = 48, right = w - 6, ceiling = 8, bottom = h - 18;
    ctx.font = "11px system-ui, sans-serif";
    let max = 0;
    for (const p of points) for (const k of keys) if (p[k] !== null) max = Math.max(max, p[k]);
    const marks = ticks(max, unit.integer);
    const scale = marks[marks.length - 1];
    const y = (v) => bottom - ((bottom - ceiling) * v) / scale;
    for (const v of marks) {
      ctx.strokeStyle = "#e3e6ec"; ctx.beginPath(); ctx.moveTo(left, y(v)); ctx.lineTo(right, y(v)); ctx.stroke();
      ctx.fillStyle = "#6b7385"; ctx.fillText(unit(v), 2, y(v) + 4);
    }
    canvas.dataset.ticks = marks.map(unit).join(",");
    if (points.length < 2) { ctx.fillText("collecting samples\u2026", w / 2 - 50, h / 2); return; }
    const t0 = points[0].t, t1 = points[points.length - 1].t;
    const x = (t) => left + ((right - left) * (t - t0)) / Math.max(t1 - t0, 1);
    ctx.fillText(Math.round(t1 - t0) + " s", right - 30, h - 4);
    for (const k of keys) {
      ctx.strokeStyle = colors[k]; ctx.lineWidth = 2; ctx.beginPath();
      let started = false;
      for (const p of points) {
        if (p[k] === null) continue;
        if (started) ctx.lineTo(x(p.t), y(p[k])); else { ctx.moveTo(x(p.t), y(p[k])); started = true; }
      }
      ctx.stroke(); ctx.lineWidth = 1;
    }
  }

  function cell(text, cls) { const td = document.createElement("td"); td.textContent = text; if (cls) td.className = cls; return td; }
  function link(text, href) { const a = document.createElement("a"); a.href = href; a.textContent = text; return a; }

  function rows(data) {
    const body = document.querySelector("#queues tbody");
    if (!data.rows.length) return;
    body.replaceChildren(...data.rows.map((r) => {
      const tr = document.createElement("tr");
      const q = cell(""); q.appendChild(link(r.queue, "/queues/" + encodeURIComponent(r.queue)));
      if (r.paused) { const b = document.createElement("span"); b.className = "badge paused"; b.textContent = "paused"; q.append(" ", b); }
      const dead = cell("", "num");
      if (r.dead) dead.appendChild(link(String(r.dead), "/dead?queue=" + encodeURIComponent(r.queue))); else dead.textContent = "0";
      tr.append(q, cell(r.priority), cell(String(r.ready), "num"), cell(String(r.scheduled), "num"), cell(String(r.running), "num"),
        cell(fmt(r.succeeded_per_min), "num"), cell(fmt(r.failed_per_min), "num"), dead);
      return tr;
    }));
  }

  async function refresh() {
    try {
      const response = await fetch("/api/overview", { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401) { location.reload(); return; }
      const data = await response.json();
      document.getElementById("succeeded").textContent = fmt(data.succeeded_per_min);
      document.getElementById("failed").textContent = fmt(data.failed_per_min);
      document.getElementById("delay").textContent = secs(data.delay.p50) + " / " + secs(data.delay.p95);
      document.getElementById("workers").textContent = data.workers;
      document.getElementById("in-flight").textContent = data.in_flight;
      draw(document.getElementById("throughput"), data.series, ["succeeded", "failed"], count);
      draw(document.getElementById("latency"), data.series, ["delay_p50", "delay_p95"], secs);
      rows(data);
    } catch (e) { /* the next poll retries */ }
  }
  refresh();
  setInterval(refresh, 2000);
})();
