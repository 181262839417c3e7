// The worklist: fetched from /api/worklist every few seconds, drawn without a page reload.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const body = document.getElementById("worklist-body");
  const statusLine = document.getElementById("status-line");
  const empty = document.getElementById("worklist-empty");
  const windowSelect = document.getElementById("window");
  let lastUpdate = null;

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
    if (row.flagged) return cxr.el("span", { className: "badge flag", text: "PRIORITY" });
    if (row.score != null) return cxr.el("span", { className: "badge routine", text: "routine" });
    return cxr.el("span", { className: "badge pending", text: "not scored" });
  }

  function open(uid) { window.location.href = `/studies/${encodeURIComponent(uid)}`; }

  function rowFor(row) {
    const tr = cxr.el("tr", {
      tabindex: "0",
      className: row.flagged ? "flagged" : "",
      dataset: { uid: row.study_instance_uid, flagged: String(row.flagged) },
      "aria-label": `${row.flagged ? "Priority: flagged. " : ""}Study ${row.study_instance_uid}, ${cxr.statusLabel(row.status)}`,
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
    tr.append(
      cxr.el("td", {}, [priorityCell(row)]),
      cxr.el("td", {}, [link]),
      cxr.el("td", { className: "waiting", dataset: { since: row.received_at } }),
      cxr.el("td", { className: "num", text: cxr.formatScore(row.score) }),
      cxr.el("td", { text: tau }),
      cxr.el("td", { text: model }),
      cxr.el("td", { className: `status-${row.status}`, text: cxr.statusLabel(row.status) }),
      cxr.el("td", { className: "time", text: cxr.formatTime(row.triaged_at) }),
    );
    return tr;
  }

  function tick() {
    for (const cell of body.querySelectorAll("td.waiting")) {
      cell.textContent = cxr.formatDuration((cxr.now() - Date.parse(cell.dataset.since)) / 1000);
    }
  }

  function render(rows) {
    const focused = document.activeElement && document.activeElement.closest
      ? document.activeElement.closest("tr[data-uid]") : null;
    const focusedUid = focused ? focused.dataset.uid : null;
    body.replaceChildren(...rows.map(rowFor));
    empty.hidden = rows.length > 0;
    tick();
    if (focusedUid) {
      for (const tr of body.rows) {
        if (tr.dataset.uid === focusedUid) { tr.focus(); break; }
      }
    }
  }

  async function load() {
    try {
      const rows = await cxr.getJSON(worklistUrl());
      render(rows);
      lastUpdate = new Date(cxr.now()).toISOString();
      const flagged = rows.filter((r) => r.flagged).length;
      statusLine.className = "status-line";
      statusLine.textContent = `Updated ${cxr.formatTime(lastUpdate)}: ${rows.length} studies ` +
        `${periodText()}, ${flagged} flagged. Refreshes every ${REFRESH_MS / 1000} s.`;
    } catch (err) {
      statusLine.className = "status-line stale";
      statusLine.textContent = `Cannot refresh the worklist: ${err.message}` +
        (lastUpdate ? ` Showing the list as of ${cxr.formatTime(lastUpdate)}.` : "");
    }
  }

  body.addEventListener("click", (event) => {
    const tr = event.target.closest("tr[data-uid]");
    if (tr && !event.target.closest("a")) open(tr.dataset.uid);
  });
  body.addEventListener("keydown", (event) => {
    const tr = event.target.closest("tr[data-uid]");
    if (!tr) return;
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      open(tr.dataset.uid);
    } else if (event.key === "ArrowDown" && tr.nextElementSibling) {
      event.preventDefault();
      tr.nextElementSibling.focus();
    } else if (event.key === "ArrowUp" && tr.previousElementSibling) {
      event.preventDefault();
      tr.previousElementSibling.focus();
    }
  });

  document.getElementById("controls").addEventListener("submit", (event) => event.preventDefault());
  windowSelect.addEventListener("change", () => {
    const address = new URL(window.location.href);
    address.searchParams.set("hours", windowSelect.value);
    window.history.replaceState(null, "", address);
    load();
  });

  load();
  setInterval(load, REFRESH_MS);
  setInterval(cxr.refreshModelBanner, REFRESH_MS * 6);
  setInterval(tick, 1000);
})();
