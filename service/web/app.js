// Candor's chat page: a client of the public REST API (docs/feedback.md, "The chat page").
// Document text is untrusted: everything from the API goes into the page as text nodes
// (textContent / createTextNode), never as HTML.
"use strict";

(function () {
  const KEY_SLOT = "candor.apiKey";
  const MAX_HISTORY = 20; // turns the API accepts as history

  const LAYERS = {
    retrieval_gate: ["the retrieval gate",
      "No passage in this collection answers it: even the closest passages match the question too weakly."],
    verifier: ["the answerability verifier",
      "The passages are about this topic but do not say: the verifier judged that none of them answers the question."],
    reader: ["the answerability reader",
      "The passages are about this topic but do not say: the reader found no span in them that answers the question."],
    model: ["the model",
      "The model read the passages and declined: it found no answer in them."],
    threshold: ["the confidence threshold",
      "The model was not confident enough in an answer from these passages, so Candor refused rather than guess."],
    grounding: ["the grounding check",
      "The model drafted an answer that the passages do not support, so Candor withheld it."],
  };

  const VERDICTS = [
    ["hallucination", "Hallucination", "the answer is not in the passages", "answered"],
    ["correct", "Correct", "", "both"],
    ["should_have_refused", "Should have refused", "", "answered"],
    ["wrong_refusal", "Wrong refusal", "the passages do answer it", "refused"],
  ];

  const state = {
    key: null,        // null: none yet; "": the server needs none (auth disabled)
    history: [],      // [{role, content}] of this conversation, oldest first
    busy: false,
  };

  // --- small helpers ----------------------------------------------------------------------------
  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function announce(text) {
    const live = $("live");
    live.textContent = "";
    window.setTimeout(() => { live.textContent = text; }, 30);
  }

  function showNotice(box, text, kind) {
    box.textContent = text;
    box.className = "notice " + (kind || "error");
    box.hidden = !text;
  }

  let uid = 0;
  const nextId = (prefix) => `${prefix}-${++uid}`;

  // --- the API ----------------------------------------------------------------------------------
  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  function headers(json) {
    const h = { Accept: "application/json" };
    if (json) h["Content-Type"] = "application/json";
    if (state.key) h.Authorization = "Bearer " + state.key;
    return h;
  }

  function sentenceFor(status, body, response) {
    const said = body && typeof body.error === "string" ? body.error : "";
    const rid = (body && body.request_id) || (response && response.headers.get("X-Request-ID")) || "";
    const ref = rid ? ` (request id ${rid})` : "";
    switch (status) {
      case 0:
        return "Candor's API cannot be reached from this page. Check that `candor serve` is running and try again.";
      case 401:
        return "The API key was not accepted: it is missing, mistyped or revoked. Use “Forget key” and enter a valid key.";
      case 403:
        return "This key may not do that" + (said ? `: ${said}` : "") + ". Ask an administrator, or use an admin key.";
      case 404:
        return (said ? upper(said) : "Not found") + ". It may have been deleted, or this key may not use it.";
      case 409:
        return (said ? upper(said) : "That conflicts with a change made meanwhile") + ".";
      case 413:
        return "That is too long for Candor to accept. Shorten it and try again.";
      case 422:
        return "Candor could not accept that: " + validation(body) + ".";
      case 429: {
        const wait = response && response.headers.get("Retry-After");
        return `Too many requests with this key. Wait ${wait ? wait + " seconds" : "a moment"} and try again.`;
      }
      case 503:
        return "A service Candor depends on (the model server, the document store or the database) is " +
          `unavailable. Try again in a minute; if it persists, ask the operator to check /readyz${ref}.`;
      default:
        if (status >= 500) return `Candor failed while answering. Try again; if it persists, tell the operator${ref}.`;
        return said ? upper(said) + "." : `The request failed (HTTP ${status}).`;
    }
  }

  function upper(text) { return text ? text.charAt(0).toUpperCase() + text.slice(1) : text; }

  function validation(body) {
    if (body && Array.isArray(body.detail) && body.detail.length) {
      return body.detail.map((d) => {
        const where = Array.isArray(d.loc) ? d.loc.filter((p) => p !== "body").join(".") : "";
        return (where ? where + ": " : "") + (d.msg || "invalid");
      }).join("; ");
    }
    return (body && body.error) || "the input is not valid";
  }

  async function call(method, path, payload) {
    let response;
    try {
      response = await fetch(path, {
        method,
        headers: headers(payload !== undefined),
        body: payload === undefined ? undefined : JSON.stringify(payload),
        credentials: "omit",
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, sentenceFor(0));
    }
    let body = null;
    try { body = await response.json(); } catch (err) { body = null; }
    if (!response.ok) throw new ApiError(response.status, sentenceFor(response.status, body, response));
    return body;
  }

  // --- keys -------------------------------------------------------------------------------------
  function storedKey() {
    try { return window.sessionStorage.getItem(KEY_SLOT); } catch (err) { return null; }
  }

  function storeKey(key) {
    try {
      if (key) window.sessionStorage.setItem(KEY_SLOT, key); else window.sessionStorage.removeItem(KEY_SLOT);
    } catch (err) { /* private mode: the key lives in memory for this page only */ }
  }

  async function start() {
    const saved = storedKey();
    state.key = saved || "";
    try {
      const body = await call("GET", "/v1/collections");
      enter(body.collections || [], saved ? "key" : "none");
    } catch (err) {
      state.key = null;
      if (saved && err.status === 401) storeKey(null);
      showKeyForm(err.status === 401 ? (saved ? err.message : "") : err.message);
    }
  }

  function showKeyForm(message) {
    $("views").hidden = true;
    $("key-status").hidden = true;
    $("chat-view").hidden = true;
    $("review-view").hidden = true;
    $("key-view").hidden = false;
    showNotice($("notice"), message || "", "error");
    $("key-input").value = "";
    $("key-input").focus();
  }

  async function useKey(event) {
    event.preventDefault();
    const key = $("key-input").value.trim();
    if (!key) {
      showNotice($("notice"), "Enter an API key first.", "error");
      $("key-input").focus();
      return;
    }
    state.key = key;
    try {
      const body = await call("GET", "/v1/collections");
      storeKey(key);
      enter(body.collections || [], "key");
    } catch (err) {
      state.key = null;
      showNotice($("notice"), err.status === 401
        ? "That API key was not accepted: it is mistyped or revoked. Check it and enter it again." : err.message, "error");
      $("key-input").focus();
      $("key-input").select();
    }
  }

  function forgetKey() {
    storeKey(null);
    state.key = null;
    resetConversation();
    showKeyForm("");
    announce("The key is forgotten.");
  }

  function enter(collections, how) {
    showNotice($("notice"), "", "error");
    $("key-view").hidden = true;
    $("views").hidden = false;
    $("key-status").hidden = false;
    $("key-label").textContent = how === "key"
      ? "Using key …" + state.key.slice(-4)
      : "No key needed: this server runs without authentication (local demo)";
    $("forget-key").hidden = how !== "key";
    const select = $("collection");
    select.replaceChildren(...collections.map((name) => el("option", { value: name }, name)));
    showView("chat");
    if (!collections.length) {
      showNotice($("notice"), "This key may not read any collection yet. An administrator can ingest documents " +
        "(`candor ingest DIR --collection NAME`) or give the key access to one.", "info");
    }
    $("question").focus();
  }

  // --- views ------------------------------------------------------------------------------------
  function showView(name) {
    $("chat-view").hidden = name !== "chat";
    $("review-view").hidden = name !== "review";
    for (const [tab, view] of [["tab-chat", "chat"], ["tab-review", "review"]]) {
      if (view === name) $(tab).setAttribute("aria-current", "page"); else $(tab).removeAttribute("aria-current");
    }
    if (name === "review") loadReview();
  }

  // --- asking -----------------------------------------------------------------------------------
  function resetConversation() {
    state.history = [];
    $("conversation").replaceChildren();
  }

  async function ask(event) {
    event.preventDefault();
    if (state.busy) return;
    const question = $("question").value.trim();
    const collection = $("collection").value;
    if (!collection) {
      showNotice($("notice"), "Choose a collection first.", "error");
      $("collection").focus();
      return;
    }
    if (!question) {
      showNotice($("notice"), "Type a question first.", "error");
      $("question").focus();
      return;
    }
    showNotice($("notice"), "", "error");
    const turn = renderTurn(question, collection);
    const history = state.history.slice(-MAX_HISTORY);
    setBusy(true);
    try {
      const result = await streamAnswer({ question, collection, stream: true, history }, turn);
      finishTurn(turn, result);
      state.history.push({ role: "user", content: question }, { role: "assistant", content: result.answer });
      $("question").value = "";
      announce(result.refused ? "Candor refused: " + layerName(result.refusal_layer) + "." : "The answer is ready.");
    } catch (err) {
      turn.text.removeAttribute("aria-busy");
      turn.text.textContent = "";
      turn.node.append(el("p", { class: "status error", role: "alert" }, err.message));
      announce(err.message);
    } finally {
      setBusy(false);
      $("question").focus();
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    $("ask-button").disabled = busy;
    $("ask-button").textContent = busy ? "Answering…" : "Ask";
  }

  async function streamAnswer(payload, turn) {
    let response;
    try {
      response = await fetch("/v1/chat", {
        method: "POST",
        headers: { ...headers(true), Accept: "text/event-stream" },
        body: JSON.stringify(payload),
        credentials: "omit",
        cache: "no-store",
      });
    } catch (err) {
      throw new ApiError(0, sentenceFor(0));
    }
    if (!response.ok) {
      let body = null;
      try { body = await response.json(); } catch (err) { body = null; }
      throw new ApiError(response.status, sentenceFor(response.status, body, response));
    }
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    let result = null;
    let tokens = 0;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const event = parseEvent(block);
        if (!event) continue;
        if (event.name === "token") {
          tokens += 1;
          turn.text.append(document.createTextNode(event.data.text || ""));
          turn.text.dataset.tokenEvents = String(tokens);
        } else if (event.name === "done") {
          result = event.data;
        } else if (event.name === "error") {
          const status = event.data.status || 502;
          throw new ApiError(status, sentenceFor(status, event.data, null));
        }
      }
    }
    if (!result) throw new ApiError(502, "The answer stopped before it was complete. Ask again.");
    return result;
  }

  function parseEvent(block) {
    let name = "message";
    const data = [];
    for (const line of block.split("\n")) {
      if (line.startsWith("event:")) name = line.slice(6).trim();
      else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    }
    if (!data.length) return null;
    try { return { name, data: JSON.parse(data.join("\n")) }; } catch (err) { return null; }
  }

  function layerName(layer) { return (LAYERS[layer] || [layer || "a refusal layer"])[0]; }

  function renderTurn(question, collection) {
    const id = nextId("turn");
    const text = el("p", { class: "answer-text", "aria-busy": "true", id: id + "-answer" });
    const node = el("li", { class: "turn", "aria-labelledby": id + "-q" },
      el("p", { class: "meta" }, "You asked ", el("span", {}, collection), ":"),
      el("p", { class: "question", id: id + "-q" }, question),
      el("h2", { class: "visually-hidden" }, "Candor's answer"),
      text);
    $("conversation").append(node);
    node.scrollIntoView({ block: "nearest" });
    return { id, node, text };
  }

  function finishTurn(turn, result) {
    const { node, text } = turn;
    text.removeAttribute("aria-busy");
    text.textContent = result.answer; // the final answer (a withdrawn draft is replaced)
    node.dataset.answerId = result.answer_id;
    node.dataset.refused = String(result.refused);
    node.dataset.refusalLayer = result.refusal_layer || "";
    if (result.refused) {
      const [name, why] = LAYERS[result.refusal_layer] || [result.refusal_layer || "Candor", ""];
      node.append(el("div", { class: "refusal", "data-layer": result.refusal_layer || "" },
        el("p", {}, el("strong", {}, "Refused by " + name + ". "), why)));
    }
    if (result.citations && result.citations.length) node.append(renderCitations(result.citations));
    if (result.evidence) {
      node.append(renderEvidence(result.evidence));
      const mark = node.querySelector(".evidence-passage mark");
      if (mark) mark.parentNode.scrollTop = Math.max(0, mark.offsetTop - 24); // the span in view, not the page
    }
    const bits = [];
    if (result.grounded !== null && result.grounded !== undefined) bits.push(result.grounded ? "grounded" : "not grounded");
    if (result.refusal_confidence !== null && result.refusal_confidence !== undefined) {
      bits.push("refusal confidence " + result.refusal_confidence.toFixed(2));
    }
    if (result.timings_ms) bits.push(Math.round(result.timings_ms.total) + " ms");
    bits.push("answer " + result.answer_id);
    node.append(el("p", { class: "meta" }, bits.join(" · ")));
    node.append(renderFlagForm(result));
  }

  function renderCitations(citations) {
    return el("details", { class: "sources", open: true },
      el("summary", {}, `Sources (${citations.length})`),
      el("ol", { class: "citations" }, citations.map((c) => el("li", {},
        el("p", { class: "meta" }, c.source || c.doc_id, ` · score ${Number(c.score).toFixed(2)}`),
        el("blockquote", { class: "passage", tabindex: "0", "aria-label": "Passage from " + (c.source || c.doc_id) },
          c.snippet)))));
  }

  function renderEvidence(ev) {
    const passage = el("blockquote", { class: "passage evidence-passage", tabindex: "0",
      "aria-label": "Evidence passage from " + ev.doc_id });
    const text = ev.passage || "";
    const hasSpan = Number.isInteger(ev.start) && Number.isInteger(ev.end) && ev.start >= 0 &&
      ev.end > ev.start && ev.end <= text.length;
    if (hasSpan) {
      passage.append(text.slice(0, ev.start), el("mark", {}, text.slice(ev.start, ev.end)), text.slice(ev.end));
    } else {
      passage.append(text);
    }
    return el("details", { class: "evidence", open: true },
      el("summary", {}, "Evidence"),
      el("p", { class: "meta" }, `The reader's best passage (${ev.doc_id}), P(answerable) ${Number(ev.score).toFixed(2)}.`,
        hasSpan ? " The marked words are where it finds the answer." : " It marked no span in it."),
      passage);
  }

  function renderFlagForm(result) {
    const id = nextId("flag");
    const kind = result.refused ? "refused" : "answered";
    const radios = VERDICTS.map(([value, label, hint, fits]) => {
      const usable = fits === "both" || fits === kind;
      const why = usable ? hint : (fits === "refused" ? "only for refusals" : "only for answers");
      return el("label", {},
        el("input", { type: "radio", name: id + "-verdict", value, disabled: !usable }),
        label, why ? el("span", { class: "hint" }, `(${why})`) : null);
    });
    const status = el("p", { class: "status", role: "status", hidden: true });
    const form = el("form", { class: "flag-form", novalidate: true },
      el("fieldset", {},
        el("legend", {}, "Flag this answer"),
        el("div", { class: "verdicts", role: "radiogroup", "aria-label": "Verdict" }, radios),
        el("div", { class: "stack" },
          el("label", { for: id + "-correction" }, "Correction (optional): what the answer should have been"),
          el("textarea", { id: id + "-correction", name: "correction", rows: "2", maxlength: "4000" }),
          el("label", { for: id + "-comment" }, "Comment (optional)"),
          el("textarea", { id: id + "-comment", name: "comment", rows: "2", maxlength: "4000" })),
        el("div", { class: "actions" }, el("button", { type: "submit" }, "Send flag")),
        status));
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const chosen = form.querySelector("input[type=radio]:checked");
      if (!chosen) {
        setStatus(status, "Choose a verdict first.", "error");
        form.querySelector("input[type=radio]:not([disabled])").focus();
        return;
      }
      const payload = { verdict: chosen.value };
      const correction = form.elements.correction.value.trim();
      const comment = form.elements.comment.value.trim();
      if (correction) payload.correction = correction;
      if (comment) payload.comment = comment;
      const button = form.querySelector("button[type=submit]");
      button.disabled = true;
      try {
        const flag = await call("POST", `/v1/answers/${encodeURIComponent(result.answer_id)}/feedback`, payload);
        const review = flag.review_status === "pending" ? "it waits for an administrator's review"
          : flag.review_status === "approved" ? "it is approved for the next retraining run" : flag.review_status;
        setStatus(status, `Flag recorded (${flag.verdict.replace(/_/g, " ")}): ${review}. ` +
          `You can change it and send again. Flag id ${flag.feedback_id}.`, "ok");
        form.dataset.flagId = flag.feedback_id;
      } catch (err) {
        setStatus(status, err.message, "error");
      } finally {
        button.disabled = false;
      }
    });
    return form;
  }

  function setStatus(node, text, kind) {
    node.textContent = text;
    node.className = "status " + kind;
    node.hidden = false;
    if (kind === "error") node.setAttribute("role", "alert"); else node.setAttribute("role", "status");
  }

  // --- review (admin keys) ----------------------------------------------------------------------
  async function loadReview() {
    const notice = $("review-notice");
    showNotice(notice, "", "error");
    $("review-body").hidden = false;
    $("pending").replaceChildren();
    $("runs").replaceChildren(el("p", { class: "muted" }, "Loading…"));
    $("adapters").replaceChildren(el("p", { class: "muted" }, "Loading…"));
    let pending;
    try {
      pending = await call("GET", "/v1/feedback/pending?limit=50");
    } catch (err) {
      $("review-body").hidden = true;
      showNotice(notice, err.status === 403
        ? "Review needs an admin key: this key is a user key, so the API refuses to show the flags, retraining " +
          "runs and adapters. Use “Forget key” and enter an admin key."
        : err.message, "error");
      return;
    }
    renderPending(pending.items || [], Boolean(pending.next_cursor));
    loadRuns();
    loadAdapters();
  }

  function renderPending(items, more) {
    $("pending-empty").hidden = items.length > 0;
    $("pending").replaceChildren(...items.map(renderPendingItem));
    if (more) $("pending").append(el("li", { class: "muted" }, "More flags are waiting: review these, then reload."));
  }

  function renderPendingItem(flag) {
    const a = flag.answer;
    const id = nextId("review");
    const status = el("p", { class: "status", role: "status", hidden: true });
    const note = el("input", { type: "text", id: id + "-note", maxlength: "1000" });
    const decide = (decision) => async () => {
      buttons.forEach((b) => { b.disabled = true; });
      try {
        await call("POST", "/v1/feedback/review", { flag_ids: [flag.id], decision, note: note.value.trim() || null });
        setStatus(status, decision === "approved" ? "Approved: it may reach the next retraining run."
          : "Rejected: it will never reach training.", "ok");
        card.dataset.reviewStatus = decision;
      } catch (err) {
        setStatus(status, err.message, "error");
        buttons.forEach((b) => { b.disabled = false; });
      }
    };
    const buttons = [
      el("button", { type: "button", class: "primary", onclick: decide("approved") }, "Approve"),
      el("button", { type: "button", onclick: decide("rejected") }, "Reject"),
    ];
    const passages = (a.passages || []).filter((p) => p.in_prompt);
    const shown = passages.length ? passages : (a.passages || []);
    const card = el("li", { class: "card", "data-flag-id": flag.id, "aria-labelledby": id + "-title" },
      el("h3", { id: id + "-title" }, flag.verdict.replace(/_/g, " "),
        el("span", { class: "badge" }, a.collection)),
      el("p", { class: "meta" }, `flag ${flag.id} · key ${flag.api_key_id || "none"} · ${flag.created_at}`),
      el("p", {}, el("strong", {}, "Question: "), a.question),
      el("p", {}, el("strong", {}, a.refused ? `Answer (refused by ${layerName(a.refusal_layer)}): ` : "Answer: "),
        a.answer || "(none)"),
      flag.correction ? el("p", {}, el("strong", {}, "Correction: "), flag.correction) : null,
      flag.comment ? el("p", {}, el("strong", {}, "Comment: "), flag.comment) : null,
      el("details", {},
        el("summary", {}, `Passages (${shown.length}${passages.length ? " in the prompt" : " retrieved, none in the prompt"})`),
        el("ol", { class: "citations" }, shown.map((p) => el("li", {},
          el("p", { class: "meta" }, `${p.source} · score ${Number(p.score).toFixed(2)}`),
          el("blockquote", { class: "passage", tabindex: "0", "aria-label": "Passage from " + p.source }, p.text))))),
      el("div", { class: "actions" },
        el("div", { class: "note stack" }, el("label", { for: id + "-note" }, "Note (optional)"), note),
        buttons),
      status);
    return card;
  }

  async function loadRuns() {
    const box = $("runs");
    try {
      const body = await call("GET", "/v1/retrain/runs?limit=10");
      const runs = body.runs || [];
      if (!runs.length) {
        box.replaceChildren(el("p", { class: "muted" }, "No retraining run recorded yet (`candor retrain`)."));
        return;
      }
      box.replaceChildren(el("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": "Retraining runs" },
        el("table", {},
          el("thead", {}, el("tr", {}, ["Finished", "Outcome", "Gate", "Reasons"].map((h) => el("th", { scope: "col" }, h)))),
          el("tbody", {}, runs.map((r) => {
            const d = r.decision || {};
            return el("tr", {},
              el("td", {}, r.finished_at || ""),
              el("td", {}, r.status + (r.exported_flags !== null && r.exported_flags !== undefined
                ? ` (${r.exported_flags} flag${r.exported_flags === 1 ? "" : "s"})` : "")),
              el("td", {}, d.verdict ? `${d.verdict}${d.candidate_version ? " " + d.candidate_version : ""}` : "—"),
              el("td", {}, r.error ? r.error : (d.reasons && d.reasons.length
                ? el("ul", {}, d.reasons.map((x) => el("li", {}, x))) : "—")));
          })))));
    } catch (err) {
      box.replaceChildren(el("p", { class: "status error", role: "alert" }, err.message));
    }
  }

  async function loadAdapters() {
    const box = $("adapters");
    let body;
    try {
      body = await call("GET", "/v1/adapters");
    } catch (err) {
      box.replaceChildren(el("p", { class: "status error", role: "alert" }, err.message));
      return;
    }
    const status = el("p", { class: "status", role: "status", hidden: true });
    const swapId = nextId("swap");
    const swap = el("input", { type: "checkbox", id: swapId, checked: true });
    const change = (path, verb) => async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        const out = await call("POST", path, { swap: swap.checked });
        let text = `${verb}: ${out.current} is now current`;
        text += out.swapped ? " and serving." : (out.swap_error ? `, but ${out.swap_error}.` : " (not swapped in).");
        await loadAdapters();
        const fresh = $("adapters").querySelector(".status");
        setStatus(fresh, text, out.swap_error ? "error" : "ok");
      } catch (err) {
        setStatus(status, err.message, "error");
        button.disabled = false;
      }
    };
    const versions = body.versions || [];
    const serving = body.serving && body.serving.version;
    const list = el("ul", { class: "versions" }, versions.map((v) => el("li", { "data-version": v.version },
      el("code", {}, v.version),
      el("span", { class: "meta" }, `${v.created_at} · ${v.source}` + (v.parent ? ` · from ${v.parent}` : "") +
        ` · ${v.flag_ids.length} flag${v.flag_ids.length === 1 ? "" : "s"}`),
      v.version === body.current ? el("span", { class: "badge" }, "current") : null,
      v.version === body.previous ? el("span", { class: "badge" }, "previous") : null,
      v.version === serving ? el("span", { class: "badge" }, "serving") : null,
      v.version !== body.current
        ? el("button", { type: "button", onclick: change(`/v1/adapters/${encodeURIComponent(v.version)}/promote`, "Promoted"),
          "aria-label": `Promote ${v.version}` }, "Promote")
        : null)));
    const readerChange = (path, verb) => async (event) => {
      const button = event.currentTarget;
      button.disabled = true;
      try {
        const out = await call("POST", path, path.endsWith("/reload") ? {} : { reload: true });
        const served = out.serving || out;
        await loadAdapters();
        setStatus($("adapters").querySelector(".status"),
          `${verb}: the API serves reader ${served.model || served.version} (threshold ${served.threshold}).`, "ok");
      } catch (err) {
        setStatus(status, err.message, "error");
        button.disabled = false;
      }
    };
    const reader = body.answerability
      ? el("p", {}, el("strong", {}, upper(body.answerability.layer) + ": "),
        `version ${body.answerability.version}, threshold ${body.answerability.threshold ?? "its own"} ` +
        "(a collection calibrated with `candor calibrate` refuses at its own). ",
        body.answerability.layer === "reader"
          ? el("button", { type: "button", onclick: readerChange("/v1/readers/reload", "Reloaded") }, "Reload reader")
          : null,
        body.answerability.layer === "reader"
          ? el("button", { type: "button", onclick: readerChange("/v1/readers/rollback", "Rolled back") },
            "Roll back reader")
          : null)
      : el("p", { class: "muted" }, "No answerability reader or verifier is configured: only the model refuses.");
    box.replaceChildren(
      reader,
      versions.length ? list : el("p", { class: "muted" }, "No adapter is registered (`candor adapters register`)."),
      el("div", { class: "actions" },
        el("label", { for: swapId, class: "inline" }, swap, " Also load into the model server (hot swap)"),
        body.previous
          ? el("button", { type: "button", onclick: change("/v1/adapters/rollback", "Rolled back") },
            `Roll back to ${body.previous}`)
          : null),
      status);
  }

  // --- wiring -----------------------------------------------------------------------------------
  function wire() {
    $("key-form").addEventListener("submit", useKey);
    $("forget-key").addEventListener("click", forgetKey);
    $("ask-form").addEventListener("submit", ask);
    $("question").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) $("ask-form").requestSubmit();
    });
    $("new-conversation").addEventListener("click", () => {
      resetConversation();
      announce("New conversation.");
      $("question").focus();
    });
    $("collection").addEventListener("change", () => {
      if (state.history.length) { resetConversation(); announce("New conversation in " + $("collection").value + "."); }
    });
    $("tab-chat").addEventListener("click", () => showView("chat"));
    $("tab-review").addEventListener("click", () => showView("review"));
    $("reload-review").addEventListener("click", loadReview);
    start();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wire); else wire();
})();
