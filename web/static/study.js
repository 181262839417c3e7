// A study page: its result, stage timestamps and per-image results, refreshed every few seconds.
"use strict";

(() => {
  const REFRESH_MS = 5000;
  const main = document.getElementById("study");
  const uid = main.dataset.uid;
  const statusLine = document.getElementById("status-line");

  function seconds(from, to) {
    if (!from || !to) return null;
    return (Date.parse(to) - Date.parse(from)) / 1000;
  }

  function renderPeople(s) {
    const priority = s.priority === "priority"
      ? cxr.el("span", { className: "badge flag", text: "PRIORITY" })
      : cxr.el("span", { className: "badge routine", text: "routine" });
    const items = [
      ["Priority", priority],
      ["Override", s.priority_override == null ? "none (the model's flag decides)"
        : `${s.priority_override} by ${s.overridden_by}, ${cxr.formatTime(s.overridden_at)}: ${s.override_reason}`],
      ["Acknowledged", s.acknowledged_at == null ? "no"
        : `by ${s.acknowledged_by}, ${cxr.formatTime(s.acknowledged_at)}`],
      ["Final read", cxrActions.finalReadText(s) || "not recorded"],
    ];
    document.getElementById("people").replaceChildren(...items.flatMap(([term, value]) => [
      cxr.el("dt", { text: term }),
      cxr.el("dd", {}, [value]),
    ]));
    const box = document.getElementById("study-actions");
    const focused = box.contains(document.activeElement) ? document.activeElement.className : null;
    box.replaceChildren(
      ...cxrActions.buttons(s, () => load(), (err) => {
        statusLine.className = "status-line stale";
        statusLine.textContent = `Not saved: ${err.message}`;
      }));
    const again = focused ? box.querySelector(`button.${focused}`) : null;
    if (again) again.focus();
  }

  function renderStudy(s) {
    const facts = cxr.studyFacts(s);
    const viewer = cxr.viewerLink(s);
    const box = document.getElementById("study-facts");
    box.replaceChildren(...[facts ? cxr.el("p", { text: facts }) : null,
      viewer ? cxr.el("p", {}, [viewer]) : null].filter(Boolean));
    box.hidden = !facts && !viewer;
    showFigure("thumbnail", s.thumbnail_url, "The image that decided the score",
      "Scored image (highest score)");
    showFigure("heatmap", s.heatmap_url,
      "AI triage heatmap over the scored image, not for diagnostic use",
      "AI triage heatmap \u2014 not for diagnostic use");
  }

  // An image figure shown while there is an image at `url` (redrawn only when it changes).
  function showFigure(id, url, alt, caption) {
    const figure = document.getElementById(id);
    if (url && figure.dataset.src !== url) {
      figure.dataset.src = url;
      figure.replaceChildren(cxr.el("img", { src: url, alt, width: "256" }),
        cxr.el("figcaption", { text: caption }));
    }
    figure.hidden = !url;
  }

  function renderSummary(s) {
    const flag = s.flagged
      ? cxr.el("span", { className: "badge flag", text: "PRIORITY (flagged)" })
      : cxr.el("span", { text: s.score == null ? "not scored" : "not flagged" });
    const items = [
      ["Status", `${cxr.statusLabel(s.status)}${s.status_detail ? ` \u2014 ${s.status_detail}` : ""}`],
      ["Model\u2019s flag", flag],
      ["Score", cxr.formatScore(s.score)],
      ["Threshold \u03c4", s.tau == null ? "\u2014"
        : `${Number(s.tau).toFixed(3)}${s.operating_point ? ` (${s.operating_point})` : ""}`],
      ["Model version", s.model_version == null ? "\u2014"
        : `${s.model_version} (SHA-256 ${String(s.model_sha256 || "").slice(0, 12)}\u2026)`],
      ["Policy version", s.policy_version == null ? "\u2014" : `v${s.policy_version}`],
      ["Images", `${s.images.length} received, ${s.images_scored} scored, ${s.images_skipped} skipped`],
    ];
    const dl = document.getElementById("summary");
    dl.replaceChildren(...items.flatMap(([term, value]) => [
      cxr.el("dt", { text: term }),
      cxr.el("dd", {}, [value]),
    ]));
  }

  function renderStages(s) {
    const t = s.timestamps;
    const stages = [
      ["First instance received", t.first_received_at],
      ["Last instance received", t.last_received_at],
      ["Queued for triage", t.queued_at],
      ["Inference started", t.started_at],
      ["Inference finished", t.finished_at],
      ["Triaged", t.triaged_at],
    ];
    document.getElementById("stages-body").replaceChildren(...stages.map(([name, at]) =>
      cxr.el("tr", {}, [
        cxr.el("th", { scope: "row", text: name }),
        cxr.el("td", { className: "time", text: cxr.formatTime(at) }),
        cxr.el("td", { className: "num", text: at ? `+${seconds(t.first_received_at, at).toFixed(1)} s` : "\u2014" }),
      ])));
  }

  function renderImages(s) {
    document.getElementById("images-body").replaceChildren(...s.images.map((image) => {
      const result = image.scored
        ? cxr.el("span", { text: "scored" })
        : cxr.el("span", { className: "skipped",
          text: image.skipped_reason ? `skipped: ${image.skipped_reason}` : "not processed yet" });
      const view = [image.modality, image.view_position, image.body_part].filter(Boolean).join(" / ");
      return cxr.el("tr", { dataset: { sop: image.sop_instance_uid } }, [
        cxr.el("td", { className: "uid", text: image.sop_instance_uid }),
        cxr.el("td", { className: "uid", text: image.series_instance_uid || "\u2014" }),
        cxr.el("td", { text: view || "\u2014" }),
        cxr.el("td", { className: "num", text: cxr.formatScore(image.probability) }),
        cxr.el("td", {}, [result]),
        cxr.el("td", { className: "time", text: cxr.formatTime(image.received_at) }),
        cxr.el("td", { className: "time", text: cxr.formatTime(image.timestamps.decoded_at) }),
        cxr.el("td", { className: "time", text: cxr.formatTime(image.timestamps.preprocessed_at) }),
        cxr.el("td", { className: "time", text: cxr.formatTime(image.timestamps.inferred_at) }),
      ]);
    }));
  }

  async function load() {
    if (document.querySelector("dialog[open]")) return;  // never redraw under an open form
    try {
      const s = await cxr.getJSON(`/api/studies/${encodeURIComponent(uid)}`);
      renderStudy(s);
      renderSummary(s);
      renderPeople(s);
      renderStages(s);
      renderImages(s);
      statusLine.className = "status-line";
      statusLine.textContent = `Updated ${cxr.formatTime(new Date(cxr.now()).toISOString())}. ` +
        `Refreshes every ${REFRESH_MS / 1000} s.`;
    } catch (err) {
      statusLine.className = "status-line stale";
      statusLine.textContent = `Cannot refresh the study: ${err.message}`;
    }
  }

  cxr.showUser();
  cxr.refreshModelBanner();
  load();
  setInterval(load, REFRESH_MS);
})();
