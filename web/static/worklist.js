// The worklist: fetched from /api/worklist every few seconds, drawn without a page reload;
// each study can be acknowledged, overridden and given its final read from here.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const body = document.getElementById("worklist-body");
  const statusLine = document.getElementById("status-line");
  const empty = document.getElementById("worklist-empty");
  const windowSelect = document.getElementById("window");
  const rowsByUid = new Map();
  let lastUpdate = null;
  let note = "";  // the outcome of the last action, kept in the status line until the next one

  // The period shown comes from the address (?hours=N, 0 for any time), so a bookmark keeps it.
  const fromAddress = new URLSearchParams(window.location.search).get("hours");
  if (fromAddress !== null && [...windowSelect.options].some((o) => o.value === fromAddress)) {
    windowSelect.value = fromAddress;
  }

  function periodText() {
    const hours = Number(windowSelect.value);
    return hours > 0 ? `received in the last ${windowSelect.selectedOptions[0].textContent}`
      : "received at any time";
  }

  function worklistUrl() {
    const hours = Number(windowSelect.value);
    if (!(hours > 0)) return "/api/worklist";
    const since = new Date(cxr.now() - hours * 3600 * 1000).toISOString();
    return `/api/worklist?${new URLSearchParams({ received_after: since })}`;
  }

  function priorityCell(row) {
    const parts = [];
    if (row.priority === "priority") {
      parts.push(cxr.el("span", { className: "badge flag", text: "PRIORITY" }));
    } else if (row.priority_override || row.score != null) {
      parts.push(cxr.el("span", { className: "badge routine", text: "routine" }));
    } else {
      parts.push(cxr.el("span", { className: "badge pending", text: "not scored" }));
    }
    if (row.priority_override) {
      parts.push(cxr.el("span", {
        className: "override-note",
        title: `Reason: ${row.override_reason || ""}`,
        text: `set by ${row.overridden_by}${row.model_flagged ? " (model: flagged)" : " (model: not flagged)"}`,
      }));
    }
    return cxr.el("td", { className: "priority" }, parts);
  }

  function readCell(row) {
    const parts = [];
    if (row.acknowledged_at) {
      parts.push(cxr.el("span", { className: "ack",
        text: `\u2713 acknowledged by ${row.acknowledged_by} ${cxr.formatTime(row.acknowledged_at)}` }));
    }
    const read = cxrActions.finalReadText(row);
    if (read) parts.push(cxr.el("span", { className: "final-read", text: `Final read: ${read}` }));
    if (!parts.length) parts.push("\u2014");
    return cxr.el("td", { className: "read" }, parts);
  }

  function open(uid) { window.location.href = `/studies/${encodeURIComponent(uid)}`; }

  function rowFor(row) {
    const priority = row.priority === "priority";
    const tr = cxr.el("tr", {
      tabindex: "0",
      className: priority ? "flagged" : "",
      dataset: { uid: row.study_instance_uid, flagged: String(row.flagged), priority: row.priority },
      "aria-label": `${priority ? "Priority. " : ""}Study ${row.study_instance_uid}, ${cxr.statusLabel(row.status)}`,
    });
    const link = cxr.el("a", {
      href: `/studies/${encodeURIComponent(row.study_instance_uid)}`,
      className: "uid",
      tabindex: "-1",  // the row itself takes the focus: one stop per study
      text: row.study_instance_uid,
    });
    const tau = row.tau == null ? "\u2014"
      : `${Number(row.tau).toFixed(3)}${row.operating_point ? ` (${row.operating_point})` : ""}`;
    const model = row.model_version == null ? "\u2014"
      : `${row.model_version}${row.policy_version != null ? ` \u00b7 policy v${row.policy_version}` : ""}`;
    const waitEnd = row.final_read_at || "";
    const facts = cxr.studyFacts(row);
    const viewer = cxr.viewerLink(row);
    const studyCell = [link];
    if (facts) studyCell.push(cxr.el("div", { className: "study-facts", text: facts }));
    if (viewer) studyCell.push(cxr.el("div", {}, [viewer]));
    tr.append(
      priorityCell(row),
      cxr.el("td", {}, studyCell),
      cxr.el("td", { className: "waiting", dataset: { since: row.received_at, until: waitEnd } }),
      cxr.el("td", { className: "num", text: cxr.formatScore(row.score) }),
      cxr.el("td", { text: tau }),
      cxr.el("td", { className: "decided-by", text: model }),
      cxr.el("td", { className: `status-${row.status}`, text: cxr.statusLabel(row.status) }),
      cxr.el("td", { className: "time", text: cxr.formatTime(row.triaged_at) }),
      readCell(row),
      cxr.el("td", { className: "actions" }, cxrActions.buttons(row, saved, failed)),
    );
    return tr;
  }

  function tick() {
    for (const cell of body.querySelectorAll("td.waiting")) {
      const until = cell.dataset.until ? Date.parse(cell.dataset.until) : cxr.now();
      const text = cxr.formatDuration((until - Date.parse(cell.dataset.since)) / 1000);
      cell.textContent = cell.dataset.until ? `read after ${text}` : text;
    }
  }

  function render(rows) {
    const focused = document.activeElement && document.activeElement.closest
      ? document.activeElement.closest("tr[data-uid]") : null;
    const focusedUid = focused ? focused.dataset.uid : null;
    const onRow = focused === document.activeElement;
    rowsByUid.clear();
    for (const row of rows) rowsByUid.set(row.study_instance_uid, row);
    body.replaceChildren(...rows.map(rowFor));
    empty.hidden = rows.length > 0;
    tick();
    if (focusedUid && onRow) {
      for (const tr of body.rows) {
        if (tr.dataset.uid === focusedUid) { tr.focus(); break; }
      }
    }
  }

  function describe(rows) {
    const priority = rows.filter((r) => r.priority === "priority").length;
    return `Updated ${cxr.formatTime(lastUpdate)}: ${rows.length} studies ${periodText()}, ` +
      `${priority} priority. Refreshes every ${REFRESH_MS / 1000} s.`;
  }

  async function load() {
    if (document.querySelector("dialog[open]")) return;  // never redraw under an open form
    try {
      const rows = await cxr.getJSON(worklistUrl());
      render(rows);
      lastUpdate = new Date(cxr.now()).toISOString();
      statusLine.className = "status-line";
      statusLine.textContent = `${note}${describe(rows)}`;
    } catch (err) {
      statusLine.className = "status-line stale";
      if (err.status === 403) {
        statusLine.textContent = `The worklist is for radiologists: ${err.message}`;
        return;
      }
      statusLine.textContent = `Cannot refresh the worklist: ${err.message}` +
        (lastUpdate ? ` Showing the list as of ${cxr.formatTime(lastUpdate)}.` : "");
    }
  }

  function saved(row) {
    note = `Saved for study ${row.study_instance_uid}. `;
    load();
  }

  function failed(err) {
    statusLine.className = "status-line stale";
    statusLine.textContent = `Not saved: ${err.message}`;
  }

  async function shortcut(action, uid) {
    const row = rowsByUid.get(uid);
    if (!row) return;
    try {
      const result = action === "a" ? await cxrActions.acknowledge(uid)
        : action === "o" ? await cxrActions.openOverride(row)
          : await cxrActions.openFinalRead(row);
      if (result) saved(result);
    } catch (err) {
      failed(err);
    }
  }

  body.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-uid]");
    if (tr && !event.target.closest("a, button")) open(tr.dataset.uid);
  });
  body.addEventListener("keydown", (event) => {
    const tr = event.target.closest("tr[data-uid]");
    if (!tr || event.target !== tr || event.altKey || event.ctrlKey || event.metaKey) return;
    const key = event.key.toLowerCase();
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      open(tr.dataset.uid);
    } else if (event.key === "ArrowDown" && tr.nextElementSibling) {
      event.preventDefault();
      tr.nextElementSibling.focus();
    } else if (event.key === "ArrowUp" && tr.previousElementSibling) {
      event.preventDefault();
      tr.previousElementSibling.focus();
    } else if (key === "a" || key === "o" || key === "f") {
      event.preventDefault();
      shortcut(key, tr.dataset.uid);
    }
  });

  document.getElementById("controls").addEventListener("submit", (event) => event.preventDefault());
  windowSelect.addEventListener("change", () => {
    const address = new URL(window.location.href);
    address.searchParams.set("hours", windowSelect.value);
    window.history.replaceState(null, "", address);
    load();
  });

  cxr.showUser();
  cxr.refreshModelBanner();
  load();
  setInterval(load, REFRESH_MS);
  setInterval(cxr.refreshModelBanner, REFRESH_MS * 6);
  setInterval(tick, 1000);
})();
