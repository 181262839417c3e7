// The admin's monitoring page: drawn from GET /api/monitoring with inline SVG (no CDN).
"use strict";

(() => {
  // The SVG namespace, from an inline <svg> of the page (HTML parsing puts it there).
  const NS = document.getElementById("svg-namespace").namespaceURI;

  function el(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(width, height) {
    return el("svg", { viewBox: `0 0 ${width} ${height}`, width, height, role: "img" });
  }

  function fmt(x, digits = 3) { return x === null || x === undefined ? "–" : Number(x).toFixed(digits); }

  function interval(p) {
    if (!p || p.value === null) return "–";
    return `${fmt(p.value)} (${fmt(p.low)}–${fmt(p.high)})`;
  }

  function histogram(target, h) {
    target.textContent = "";
    if (!h || !h.edges) { target.textContent = "No drift run with enough studies yet."; return; }
    const W = 560, H = 200, pad = 30, n = h.window.length;
    const top = Math.max(...h.window, ...h.reference, 1e-6);
    const s = svg(W, H);
    s.id = "histogram-svg";
    const bw = (W - 2 * pad) / n;
    h.window.forEach((v, i) => {
      const bh = (H - 2 * pad) * v / top;
      s.appendChild(el("rect", { class: "bar window", x: pad + i * bw + 1, y: H - pad - bh,
        width: bw - 2, height: bh, fill: "#5b8def" }));
    });
    const line = h.reference.map((v, i) =>
      `${pad + (i + 0.5) * bw},${H - pad - (H - 2 * pad) * v / top}`).join(" ");
    s.appendChild(el("polyline", { class: "reference", points: line, fill: "none",
      stroke: "#d9480f", "stroke-width": 2 }));
    s.appendChild(el("line", { x1: pad, y1: H - pad, x2: W - pad, y2: H - pad, stroke: "#333" }));
    s.appendChild(el("text", { x: pad, y: H - 8, "font-size": 11 }, "0"));
    s.appendChild(el("text", { x: W - pad - 6, y: H - 8, "font-size": 11 }, "1"));
    s.appendChild(el("text", { x: pad, y: 14, "font-size": 11 },
      "bars: window · line: reference (validation)"));
    target.appendChild(s);
  }

  function timeline(target, runs) {
    target.textContent = "";
    const ok = runs.filter((r) => r.flag_rate !== null);
    if (!ok.length) { target.textContent = "No drift runs with figures yet."; return; }
    const W = 560, H = 200, pad = 30;
    const top = Math.max(0.3, ...ok.map((r) => Math.max(r.psi || 0, r.flag_rate || 0)));
    const x = (i) => pad + (ok.length === 1 ? 0.5 : i / (ok.length - 1)) * (W - 2 * pad);
    const y = (v) => H - pad - (H - 2 * pad) * v / top;
    const s = svg(W, H);
    s.appendChild(el("line", { x1: pad, y1: y(0.25), x2: W - pad, y2: y(0.25), stroke: "#aaa",
      "stroke-dasharray": "4 3" }));
    s.appendChild(el("text", { x: W - pad - 60, y: y(0.25) - 3, "font-size": 10 }, "PSI 0.25"));
    // The expected flag rate with a +-2 SE band at each run's size.
    const band = ok.map((r, i) => {
      const se = Math.sqrt(r.expected_flag_rate * (1 - r.expected_flag_rate) / Math.max(1, r.n));
      return [x(i), y(r.expected_flag_rate + 2 * se), y(Math.max(0, r.expected_flag_rate - 2 * se))];
    });
    const poly = band.map((b) => `${b[0]},${b[1]}`).concat(band.slice().reverse().map((b) => `${b[0]},${b[2]}`));
    s.appendChild(el("polygon", { points: poly.join(" "), fill: "#e9ecef" }));
    s.appendChild(el("polyline", { points: ok.map((r, i) => `${x(i)},${y(r.flag_rate)}`).join(" "),
      fill: "none", stroke: "#2b8a3e", "stroke-width": 2 }));
    s.appendChild(el("polyline", { points: ok.map((r, i) => `${x(i)},${y(r.psi || 0)}`).join(" "),
      fill: "none", stroke: "#5b8def", "stroke-width": 2 }));
    ok.forEach((r, i) => {
      if (r.alerted) {
        const mark = el("circle", { class: "alert-mark", cx: x(i), cy: y(r.psi || 0), r: 5, fill: "#c92a2a" });
        mark.appendChild(el("title", {}, `alert: ${r.alerts.join(", ")}`));
        s.appendChild(mark);
      }
    });
    s.appendChild(el("text", { x: pad, y: 14, "font-size": 11 },
      "green: flag rate (grey: expected ±2 SE) · blue: PSI · red: alert"));
    target.appendChild(s);
  }

  function rows(tbody, items, cells) {
    tbody.textContent = "";
    for (const item of items) {
      const tr = document.createElement("tr");
      for (const value of cells(item)) {
        const td = document.createElement("td");
        if (value instanceof Node) td.appendChild(value); else td.textContent = value;
        tr.appendChild(td);
      }
      tbody.appendChild(tr);
    }
  }

  function decision(job) {
    if (job.state !== "candidate") return job.decision_reason ? `${job.decided_by}: ${job.decision_reason}` : (job.message || "");
    const span = document.createElement("span");
    for (const verb of ["approve", "reject"]) {
      const button = document.createElement("button");
      button.textContent = verb;
      button.addEventListener("click", async () => {
        const reason = window.prompt(`Reason to ${verb} job ${job.id}`);
        if (!reason) return;
        await cxr.postJSON(`/api/recalibration/${job.id}/${verb}`, { reason });
        load();
      });
      span.appendChild(button);
    }
    return span;
  }

  async function load() {
    const data = await cxr.getJSON("/api/monitoring");
    const banner = document.getElementById("alert-banner");
    if (data.alert) {
      banner.hidden = false;
      banner.textContent = `Drift alert (run ${data.alert.run}, ${data.alert.model_version}): ` +
        data.alert.alerts.map((a) => {
          const size = Object.entries(a).find(([k]) => !["feature", "test", "p"].includes(k));
          return `${a.feature} (${a.test} ${size ? `${size[0]} ${fmt(size[1])}` : ""})`;
        }).join("; ");
    } else {
      banner.hidden = true;
    }
    const policy = data.policy;
    document.getElementById("policy-line").textContent = policy
      ? ` Model ${data.model_version}, policy v${policy.version} (${policy.mode}), tau ${fmt(policy.tau)}, target ${policy.target_metric || "none"}.`
      : " No active model.";
    const latest = data.latest;
    histogram(document.getElementById("histogram"), latest && latest.histogram);
    document.getElementById("window-line").textContent = latest
      ? `Latest run ${latest.id}: ${latest.status}, ${latest.n_studies} studies.` : "";
    timeline(document.getElementById("timeline"), data.runs || []);
    rows(document.querySelector("#tests tbody"), (latest && latest.tests) || [], (t) => [
      t.feature, t.test, `${t.effect_name} ${fmt(t.effect)}`, fmt(t.floor, 2),
      Number(t.p_adjusted).toPrecision(2), t.alert ? "ALERT" : ""]);
    const sg = data.subgroups || { subgroups: [] };
    document.getElementById("subgroup-line").textContent =
      `${sg.labelled || 0} labelled studies; targets ${JSON.stringify(sg.targets || {})}.`;
    rows(document.querySelector("#subgroups tbody"), sg.subgroups, (r) => [
      r.attribute, r.value, r.n,
      r.status === "ok" ? interval(r.sensitivity) : r.status,
      r.status === "ok" ? interval(r.specificity) : "", r.status === "ok" ? interval(r.ppv) : "",
      r.status === "ok" ? interval(r.npv) : "",
      r.auc ? `${fmt(r.auc[0])} (${fmt(r.auc[1])}–${fmt(r.auc[2])})` : "–",
      r.flagged ? r.reasons.join("; ") : ""]);
    const sh = data.shadow_period || { labelled: 0, performance: null };
    document.getElementById("shadow-line").textContent =
      `${sh.labelled || 0} studies decided under a shadow policy have a final read; targets ` +
      `${JSON.stringify(sh.targets || {})}.`;
    const p = sh.performance;
    rows(document.querySelector("#shadow tbody"), p ? [p] : [], (r) => [
      r.n, fmt(sh.concordance, 3),
      r.status === "ok" ? interval(r.sensitivity) : r.status,
      r.status === "ok" ? interval(r.specificity) : "", r.status === "ok" ? interval(r.ppv) : "",
      r.status === "ok" ? interval(r.npv) : "",
      r.status !== "ok" ? "" : r.flagged ? r.reasons.join("; ") : "meets the targets"]);
    const conc = document.getElementById("concordance");
    conc.textContent = (data.concordance || []).map((d) =>
      `${d.day}: ${fmt(d.concordance, 2)} of ${d.n}${d.shadow ? ` (${d.shadow} shadow)` : ""}`).join(" · ") || "No final reads yet.";
    rows(document.querySelector("#jobs tbody"), data.recalibration || [], (j) => [
      j.id, j.state, j.trigger, j.labels_used, fmt(j.tau), fmt(j.temperature, 2),
      j.before ? `${fmt(j.before.nll)} / ${fmt(j.after.nll)}` : "–",
      j.before ? `${fmt(j.before.ece)} / ${fmt(j.after.ece)}` : "–", decision(j)]);
    document.body.dataset.loaded = "true";
  }

  document.addEventListener("DOMContentLoaded", () => { load().catch((err) => {
    document.getElementById("window-line").textContent = `Could not load: ${err.message}`;
  }); });
})();
