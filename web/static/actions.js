// What a radiologist does to a study: acknowledge, override the priority (with a reason),
// record the final read. Shared by the worklist and the study page. The two forms are modal
// <dialog> elements: the browser moves the focus into them, Escape closes them, and the focus
// goes back to where it was.
"use strict";

const cxrActions = (() => {
  const el = cxr.el;

  function radio(name, value, label, checked) {
    const id = `${name}-${value}`;
    const input = el("input", { type: "radio", name, value, id });
    if (checked) input.checked = true;
    return el("div", { className: "choice" }, [input, el("label", { for: id, text: label })]);
  }

  function buildDialog(id, title, fields, submitText) {
    const error = el("p", { className: "error", id: `${id}-error`, role: "alert" });
    const form = el("form", { method: "dialog", id: `${id}-form` }, [
      el("h2", { id: `${id}-title`, text: title }),
      el("p", { className: "dialog-study uid", id: `${id}-study` }),
      ...fields,
      error,
      el("div", { className: "dialog-buttons" }, [
        el("button", { type: "submit", value: "save", className: "primary", text: submitText }),
        el("button", { type: "button", value: "cancel", className: "cancel", text: "Cancel" }),
      ]),
    ]);
    const dialog = el("dialog", { id, "aria-labelledby": `${id}-title` }, [form]);
    form.querySelector("button.cancel").addEventListener("click", () => dialog.close("cancel"));
    document.body.append(dialog);
    return { dialog, form, error };
  }

  const override = buildDialog("override-dialog", "Override the priority", [
    el("fieldset", {}, [
      el("legend", { text: "Priority" }),
      radio("priority", "priority", "Priority: read first", true),
      radio("priority", "routine", "Routine: in the order received", false),
    ]),
    el("label", { for: "override-reason", text: "Reason (required; no patient identifiers)" }),
    el("textarea", { id: "override-reason", name: "reason", rows: "3", maxlength: "1000",
      required: "" }),
  ], "Save override");

  const finalRead = buildDialog("final-read-dialog", "Final read", [
    el("fieldset", {}, [
      el("legend", { text: "Pneumonia?" }),
      radio("pneumonia", "yes", "Yes: pneumonia", false),
      radio("pneumonia", "no", "No pneumonia", false),
    ]),
  ], "Record final read");

  // Open a dialog for a study; resolve with the saved study row, or null when cancelled.
  function ask(parts, uid, prepare, send) {
    return new Promise((resolve) => {
      const opener = document.activeElement;
      parts.error.textContent = "";
      parts.dialog.querySelector(".dialog-study").textContent = `Study ${uid}`;
      prepare();
      let saved = null;
      async function onSubmit(event) {
        event.preventDefault();
        try {
          saved = await send();
          parts.dialog.close("save");
        } catch (err) {
          parts.error.textContent = `Not saved: ${err.message}`;
        }
      }
      function onClose() {
        parts.form.removeEventListener("submit", onSubmit);
        parts.dialog.removeEventListener("close", onClose);
        // The list may have been redrawn meanwhile: then focus the study's new row.
        const back = opener && opener.isConnected ? opener
          : document.querySelector(`tr[data-uid="${CSS.escape(uid)}"]`);
        if (back && back.focus) back.focus();
        resolve(saved);
      }
      parts.form.addEventListener("submit", onSubmit);
      parts.dialog.addEventListener("close", onClose);
      parts.dialog.showModal();
    });
  }

  function studyUrl(uid, action) {
    return `/api/studies/${encodeURIComponent(uid)}/${action}`;
  }

  function acknowledge(uid) { return cxr.postJSON(studyUrl(uid, "acknowledge")); }

  function openOverride(row) {
    const reason = override.form.querySelector("#override-reason");
    return ask(override, row.study_instance_uid, () => {
      // Suggest the other priority: an override usually goes against the model's flag.
      const suggested = row.priority === "priority" ? "routine" : "priority";
      override.form.querySelector(`#priority-${suggested}`).checked = true;
      reason.value = "";
    }, () => {
      const chosen = override.form.querySelector("input[name=priority]:checked");
      if (!reason.value.trim()) throw new Error("give a reason");
      return cxr.postJSON(studyUrl(row.study_instance_uid, "override"),
        { priority: chosen.value, reason: reason.value.trim() });
    });
  }

  function openFinalRead(row) {
    return ask(finalRead, row.study_instance_uid, () => {
      for (const input of finalRead.form.querySelectorAll("input[name=pneumonia]")) {
        input.checked = row.final_read != null && input.value === (row.final_read ? "yes" : "no");
      }
    }, () => {
      const chosen = finalRead.form.querySelector("input[name=pneumonia]:checked");
      if (!chosen) throw new Error("choose yes or no");
      return cxr.postJSON(studyUrl(row.study_instance_uid, "final-read"),
        { pneumonia: chosen.value === "yes" });
    });
  }

  // The buttons of one study; each calls done(row) with the saved study row.
  function buttons(row, done, onError) {
    const run = async (action) => {
      try {
        const saved = await action();
        if (saved) done(saved);
      } catch (err) {
        onError(err);
      }
    };
    const ack = el("button", { type: "button", className: "act-ack",
      text: row.acknowledged_at ? "Acknowledged" : "Acknowledge",
      title: "Acknowledge (key A)" });
    if (row.acknowledged_at) ack.disabled = true;
    ack.addEventListener("click", (e) => { e.stopPropagation(); run(() => acknowledge(row.study_instance_uid)); });
    const over = el("button", { type: "button", className: "act-override", text: "Override\u2026",
      title: "Override the priority (key O)" });
    over.addEventListener("click", (e) => { e.stopPropagation(); run(() => openOverride(row)); });
    const read = el("button", { type: "button", className: "act-read", text: "Final read\u2026",
      title: "Record the final read (key F)" });
    read.addEventListener("click", (e) => { e.stopPropagation(); run(() => openFinalRead(row)); });
    return [ack, over, read];
  }

  function finalReadText(row) {
    if (row.final_read == null) return null;
    return `${row.final_read ? "pneumonia" : "no pneumonia"} (${row.final_read_by}, ${cxr.formatTime(row.final_read_at)})`;
  }

  return { acknowledge, openOverride, openFinalRead, buttons, finalReadText };
})();
