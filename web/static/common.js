// Helpers shared by the pages: JSON calls with the session cookie and CSRF header, time
// formatting, the model banner and the signed-in user.
"use strict";

const cxr = (() => {
  // Server clock minus this browser's clock, from the Date header, so that waiting times
  // are right even when the workstation's clock is not.
  let offsetMs = 0;

  function cookie(name) {
    for (const part of document.cookie.split(";")) {
      const [key, ...rest] = part.trim().split("=");
      if (key === name) return decodeURIComponent(rest.join("="));
    }
    return "";
  }

  function toLogin() {
    const here = window.location.pathname + window.location.search;
    window.location.href = `/login?${new URLSearchParams({ next: here })}`;
  }

  // The session cookie goes with every same-origin request; a change also carries the CSRF
  // header (double submit of the cxr_csrf cookie). 401: the session ended, log in again.
  async function call(method, url, payload) {
    const headers = { Accept: "application/json" };
    const init = { method, cache: "no-store", headers, credentials: "same-origin" };
    if (method !== "GET") {
      headers["X-CSRF-Token"] = cookie("cxr_csrf");
      if (payload !== undefined) {
        headers["Content-Type"] = "application/json";
        init.body = JSON.stringify(payload);
      }
    }
    const response = await fetch(url, init);
    const date = response.headers.get("Date");
    if (date) {
      const server = Date.parse(date);
      if (!Number.isNaN(server)) offsetMs = server - Date.now();
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (response.status === 401) toLogin();
    if (!response.ok) {
      const detail = body && typeof body.detail === "string" ? body.detail : `HTTP ${response.status}`;
      const error = new Error(detail);
      error.status = response.status;
      throw error;
    }
    return body;
  }

  function getJSON(url) { return call("GET", url); }

  function postJSON(url, payload) { return call("POST", url, payload === undefined ? {} : payload); }

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

  // The worklist fields a site keeps (CXR_WORKLIST_PHI): accession, date, description, age, sex.
  function studyFacts(row) {
    const who = [row.age_band, row.sex].filter(Boolean).join(" ");
    return [row.accession_number ? `Acc ${row.accession_number}` : null, row.study_date,
      row.study_description, who || null].filter(Boolean).join(" \u00b7 ");
  }

  function viewerLink(row) {
    if (!row.viewer_url) return null;
    return el("a", { href: row.viewer_url, className: "viewer-link", target: "_blank",
      rel: "noopener noreferrer", text: "Open in viewer" });
  }

  function modelSpan(active) {
    // Same wording as the server-rendered banner (web/pages.py model_banner).
    if (!active) {
      return el("span", { className: "model-status none",
        text: "No active model: studies are received but not triaged." });
    }
    if (active.clinical) {
      return el("span", { className: "model-status clinical", text: `Active model: ${active.version}` });
    }
    return el("span", { className: "model-status nonclinical" }, [
      `Active model: ${active.version} \u2014 `,
      el("strong", { text: "NON-CLINICAL" }),
      " (demo / research), not validated for clinical use",
    ]);
  }

  // The model banner and, when the model or its policy changed within the last day, a notice:
  // flags before and after the change were decided differently.
  async function refreshModelBanner() {
    let data;
    try { data = await getJSON("/api/status"); } catch (err) { return; }
    const target = document.getElementById("model-banner");
    if (target) {
      const policy = data.policy_in_force;
      const parts = [modelSpan(data.active_model)];
      if (data.active_model && policy) {
        parts.push(el("span", { className: "policy-status",
          text: `Policy v${policy.version}: ${policy.operating_point}, \u03c4 = ${Number(policy.tau).toFixed(3)}, approved by ${policy.approved_by}` }));
      }
      target.replaceChildren(...parts);
    }
    const notice = document.getElementById("change-banner");
    if (notice) {
      const changes = data.recent_changes || [];
      notice.hidden = changes.length === 0;
      notice.replaceChildren(...(changes.length ? [
        el("strong", { text: `Changed in the last ${data.recent_hours} hours: ` }),
        changes.map((c) => `${c.summary} at ${formatTime(c.at)}`).join("; ") + ". ",
        "Studies triaged before the change were decided by the previous model or threshold.",
      ] : []));
    }
  }

  // The signed-in user and the sign-out form (its CSRF value comes from the cookie).
  async function showUser() {
    const target = document.getElementById("user-name");
    const csrf = document.getElementById("logout-csrf");
    if (csrf) csrf.value = cookie("cxr_csrf");
    if (!target) return null;
    try {
      const me = await getJSON("/api/me");
      target.textContent = `${me.name} (${me.role})`;
      return me;
    } catch (err) {
      return null;
    }
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

  return {
    getJSON, postJSON, now, formatTime, formatDuration, formatScore, el, refreshModelBanner,
    showUser, statusLabel, studyFacts, viewerLink,
  };
})();
