// Helpers shared by the pages: JSON fetches, time formatting, the model banner.
"use strict";

const cxr = (() => {
  // Server clock minus this browser's clock, from the Date header, so that waiting times
  // are right even when the workstation's clock is not.
  let offsetMs = 0;

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    const date = response.headers.get("Date");
    if (date) {
      const server = Date.parse(date);
      if (!Number.isNaN(server)) offsetMs = server - Date.now();
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function now() { return Date.now() + offsetMs; }

  function pad(n) { return String(n).padStart(2, "0"); }

  function formatTime(iso) {
    if (!iso) return "\u2014";
    const d = new Date(iso);
    const t = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    const today = new Date(now());
    if (d.toDateString() === today.toDateString()) return t;
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${t}`;
  }

  function formatDuration(seconds) {
    if (seconds == null || Number.isNaN(seconds)) return "\u2014";
    const s = Math.max(0, Math.floor(seconds));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${pad(s % 60)} s`;
    const h = Math.floor(m / 60);
    if (h < 48) return `${h} h ${pad(m % 60)} min`;
    return `${Math.floor(h / 24)} d ${h % 24} h`;
  }

  function formatScore(value) {
    return value == null ? "\u2014" : Number(value).toFixed(3);
  }

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else if (key === "dataset") Object.assign(node.dataset, value);
      else node.setAttribute(key, value);
    }
    for (const child of children || []) {
      node.append(child);
    }
    return node;
  }

  // Same wording as the server-rendered banner (web/pages.py model_banner).
  async function refreshModelBanner() {
    const target = document.getElementById("model-banner");
    if (!target) return;
    let data;
    try { data = await getJSON("/api/models"); } catch (err) { return; }
    const active = data.models.find((m) => m.version === data.active_version);
    let span;
    if (!active) {
      span = el("span", { className: "model-status none",
        text: "No active model: studies are received but not triaged." });
    } else if (active.clinical) {
      span = el("span", { className: "model-status clinical", text: `Active model: ${active.version}` });
    } else {
      span = el("span", { className: "model-status nonclinical" }, [
        `Active model: ${active.version} \u2014 `,
        el("strong", { text: "NON-CLINICAL" }),
        " (demo / research), not validated for clinical use",
      ]);
    }
    target.replaceChildren(span);
  }

  const STATUS_LABELS = {
    received: "received",
    queued: "queued",
    triaging: "triaging",
    triaged: "triaged",
    no_frontal: "no frontal image",
    no_model: "no active model",
    failed: "failed",
  };

  function statusLabel(status) { return STATUS_LABELS[status] || status; }

  return { getJSON, now, formatTime, formatDuration, formatScore, el, refreshModelBanner, statusLabel };
})();
