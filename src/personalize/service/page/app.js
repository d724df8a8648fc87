/* The clinician page: one patient's recommendation at a glance.
 *
 * Plain JavaScript, no build step, no external network: everything comes from this service.
 *   GET  /readyz                  (open)  model block, for the synthetic-data banner
 *   GET  /v1/schema               (key)   the loaded model's patient fields -> the form
 *   POST /v1/recommendations      (key)   the estimate; 422 lists {loc, field, msg, type}
 *   GET  /v1/model?format=html    (key)   the model card, shown in a dialog
 *   GET  /v1/model?format=markdown (key)  the same card, for its download
 * The drivers are drawn as a waterfall: the average benefit (base value), each top driver,
 * the other features together (benefit_parts) and the patient's benefit, which add up.
 * The API key is kept in sessionStorage (this tab, until it is closed) and sent as
 * "Authorization: Bearer <key>". Untrusted text is only ever inserted as text nodes.
 */
"use strict";

(() => {
  const KEY_STORE = "personalize.apiKey";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const MINUS = "\u2212";
  const REQUEST_TIMEOUT_MS = 30000;
  const ARM_COLOURS = { treatment: "#0d6b73", control: "#6a3d9a" };

  const state = {
    schema: null, // SchemaInfo
    inputs: new Map(), // field name -> {info, control(s), error, note, hint}
    preference: null, // FieldInfo of the preference field
    result: null, // last Recommendation
    busy: false,
    card: null, // {key, html, markdown}
  };

  const $ = (id) => document.getElementById(id);

  // ----------------------------------------------------------------------- DOM helpers

  function h(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function s(tag, attrs, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    setAttrs(node, attrs);
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = String(value);
      else if (name === "class") node.setAttribute("class", value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
  }

  function show(node, visible) {
    node.hidden = !visible;
  }

  function safeId(name) {
    return String(name).replace(/[^A-Za-z0-9_-]/g, "_");
  }

  // ----------------------------------------------------------------------- formatting

  const numberFormat = new Intl.NumberFormat("en", { maximumFractionDigits: 2 });

  function fmtNumber(value) {
    return numberFormat.format(value).replace("-", MINUS);
  }

  function signed(value, digits) {
    const rounded = Number(value.toFixed(digits));
    const text = Math.abs(rounded).toFixed(digits);
    if (rounded === 0) return text;
    return (rounded > 0 ? "+" : MINUS) + text;
  }

  function fmtPercent(p) {
    const pct = p * 100;
    if (pct > 0 && pct < 1) return "<1%";
    if (pct < 100 && pct > 99) return ">99%";
    return `${Math.round(pct)}%`;
  }

  /** A difference on the benefit's scale: percentage points or outcome points. */
  function fmtDiff(value, scale) {
    return scale === "probability"
      ? `${signed(value * 100, 1)} pp`
      : `${signed(value, 1)} points`;
  }

  function diffWords(scale) {
    return scale === "probability" ? "percentage points" : "points";
  }

  /** A level as words: "in_person" -> "In person", "lt_25k" -> "< 25k", "25k_50k" -> "25k–50k". */
  function humanize(level) {
    const raw = String(level);
    const bound = raw.match(/^(lt|le|gt|ge)_(\d[\w.]*)$/i);
    if (bound) return `${{ lt: "<", le: "≤", gt: ">", ge: "≥" }[bound[1].toLowerCase()]} ${bound[2]}`;
    const band = raw.match(/^(\d[\w.]*)_(\d[\w.]*)$/);
    if (band) return `${band[1]}–${band[2]}`;
    const text = raw.replace(/_/g, " ");
    return text.charAt(0).toUpperCase() + text.slice(1);
  }

  function isScale(unit) {
    return Boolean(unit) && /^\s*-?\d+(\.\d+)?\s*[-–]\s*-?\d+(\.\d+)?\s*$/.test(unit);
  }

  function rangeText(lo, hi, unit) {
    const text = `${fmtNumber(lo)}\u2060–\u2060${fmtNumber(hi)}`; // no line break at the dash
    return unit && !isScale(unit) ? `${text} ${unit}` : text;
  }

  function levelLabel(info, level) {
    if (info.preference && level === "none") return "No preference";
    if (state.schema && (level === state.schema.treatment || level === state.schema.control)) {
      return level;
    }
    return humanize(level);
  }

  // "an" before a percentage read with a vowel sound (8, 11, 18, 80-89%), as the API says it
function article(p) {
  const spoken = String(Math.round(p * 100));
  return spoken.startsWith("8") || spoken === "11" || spoken === "18" ? "an" : "a";
}

function capitalise(text) {
    return text ? text.charAt(0).toUpperCase() + text.slice(1) : text;
  }

  // ----------------------------------------------------------------------- the API

  class ApiError extends Error {
    constructor(status, body, message) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  function getKey() {
    try {
      return sessionStorage.getItem(KEY_STORE);
    } catch {
      return null;
    }
  }

  function setKey(key) {
    try {
      sessionStorage.setItem(KEY_STORE, key);
    } catch {
      /* storage disabled: the key lives until the page is reloaded */
    }
    memoryKey = key;
  }

  function clearKey() {
    try {
      sessionStorage.removeItem(KEY_STORE);
    } catch {
      /* nothing stored */
    }
    memoryKey = null;
  }

  let memoryKey = null;

  function currentKey() {
    return getKey() || memoryKey;
  }

  function detailText(body) {
    if (body && typeof body === "object" && typeof body.detail === "string") return body.detail;
    return "";
  }

  function explain(status, body) {
    const detail = detailText(body);
    switch (status) {
      case 401:
        return detail.startsWith("missing")
          ? "The service needs an API key for this, and none was sent. Enter your key."
          : "The service did not accept this API key: it is not a valid key, or it has been " +
              "revoked. Check that it was copied completely, or ask your administrator for a " +
              "new one.";
      case 403:
        return "This API key is valid, but its role is not allowed to do this" +
          (detail ? ` (${detail})` : "") + ". Use a key with the clinician role or higher.";
      case 413:
        return `The request was too large for the service${detail ? `: ${detail}` : "."}`;
      case 422:
        return "Some values were not accepted. Check the fields marked below.";
      case 503:
        return "The service is not ready: " + (detail || "no model is loaded yet") +
          ". Try again in a moment.";
      default:
        return `The service answered with an error (HTTP ${status})` +
          (detail ? `: ${detail}` : ".");
    }
  }

  async function api(path, options = {}) {
    const headers = { Accept: options.accept || "application/json" };
    const key = options.anonymous ? null : currentKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    let body;
    if (options.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.json);
    }
    let response;
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      response = await fetch(path, {
        method: options.method || "GET",
        headers,
        body,
        cache: "no-store",
        credentials: "omit",
        signal: controller.signal,
      });
    } catch {
      throw new ApiError(
        0,
        null,
        controller.signal.aborted
          ? `The service did not answer within ${REQUEST_TIMEOUT_MS / 1000} seconds. Try again.`
          : "The service cannot be reached. Check the connection and that the service is " +
            "running, then try again.",
      );
    } finally {
      clearTimeout(timer);
    }
    const type = response.headers.get("content-type") || "";
    let data = null;
    try {
      data = type.includes("json") ? await response.json() : await response.text();
    } catch {
      data = null;
    }
    if (!response.ok) throw new ApiError(response.status, data, explain(response.status, data));
    return data;
  }

  // ----------------------------------------------------------------------- status line

  function setStatus(message, kind, retry) {
    const box = $("status");
    box.replaceChildren();
    box.className = "status";
    if (!message) return;
    box.classList.add(kind === "error" ? "alert" : "status-info");
    if (kind === "error") box.classList.add("alert-error");
    box.append(h("span", {}, message));
    if (retry) {
      box.append(
        " ",
        h("button", { type: "button", class: "button-secondary", onclick: retry }, "Try again"),
      );
    }
  }

  // ----------------------------------------------------------------------- model block

  function showModel(block) {
    if (!block) return;
    const banner = $("synthetic-banner");
    if (block.synthetic) {
      let text = (block.synthetic_notice || "").replace(/^\s*SYNTHETIC DATA:\s*/i, "").trim() ||
        "this model was trained on a simulated cohort, not on real patients; not for clinical use";
      text = capitalise(text);
      $("synthetic-text").textContent = /[.!]$/.test(text) ? text : `${text}.`;
    }
    show(banner, Boolean(block.synthetic));
    const chip = $("model-chip");
    chip.textContent = `${block.name} · version ${block.version}`;
    chip.title = block.source === "cache"
      ? "served from the local cache: the model registry is unreachable"
      : "loaded from the model registry";
    show(chip, true);
  }

  async function loadReadiness() {
    try {
      const ready = await api("/readyz", { anonymous: true });
      showModel(ready.model);
    } catch (err) {
      if (err instanceof ApiError && err.body && err.body.model) showModel(err.body.model);
    }
  }

  // ----------------------------------------------------------------------- the key

  function askForKey(problem) {
    show($("workspace"), false);
    show($("change-key"), false);
    show($("key-panel"), true);
    setStatus("");
    const input = $("api-key");
    const box = $("key-problem");
    input.value = "";
    if (problem) {
      box.textContent = problem;
      show(box, true);
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", "key-problem api-key-hint");
    } else {
      show(box, false);
      input.removeAttribute("aria-invalid");
      input.setAttribute("aria-describedby", "api-key-hint");
    }
    show($("api-key-error"), false);
    input.focus();
  }

  async function onKeySubmit(event) {
    event.preventDefault();
    const input = $("api-key");
    const key = input.value.trim();
    const error = $("api-key-error");
    if (!key) {
      error.textContent = "Enter the API key.";
      show(error, true);
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", "api-key-error api-key-hint");
      input.focus();
      return;
    }
    setKey(key);
    show($("key-panel"), false);
    await loadSchema(true);
  }

  // ----------------------------------------------------------------------- the form

  async function loadSchema(focusForm) {
    setStatus("Loading the model's fields…");
    let schema;
    try {
      schema = await api("/v1/schema");
    } catch (err) {
      if (err.status === 401 || err.status === 403) {
        clearKey();
        askForKey(err.message);
        return;
      }
      show($("workspace"), false);
      setStatus(err.message, "error", () => loadSchema(true));
      return;
    }
    setStatus("");
    const sameModel = state.schema &&
      state.schema.model.name === schema.model.name &&
      state.schema.model.version === schema.model.version;
    state.schema = schema;
    showModel(schema.model);
    if (!sameModel) buildForm(schema);
    show($("key-panel"), false);
    show($("change-key"), true);
    show($("workspace"), true);
    if (focusForm) {
      const first = document.querySelector("#fields input, #fields select");
      if (first) first.focus();
    }
  }

  function currentRawValues() {
    const values = {};
    for (const [name, entry] of state.inputs) values[name] = readRaw(entry);
    return values;
  }

  function readRaw(entry) {
    if (entry.radios) {
      const checked = entry.radios.find((r) => r.checked);
      return checked ? checked.value : "";
    }
    return entry.control.value;
  }

  function writeRaw(entry, value) {
    if (entry.radios) {
      for (const radio of entry.radios) radio.checked = radio.value === value;
      if (!entry.radios.some((r) => r.checked)) entry.radios[0].checked = true;
    } else {
      entry.control.value = value;
    }
  }

  function buildForm(schema) {
    const saved = currentRawValues();
    state.inputs = new Map();
    state.preference = null;
    const host = $("fields");
    host.replaceChildren();
    for (const info of schema.fields) {
      if (info.preference) {
        state.preference = info;
        continue;
      }
      host.append(info.type === "numeric" ? numericField(info) : selectField(info));
    }
    const pref = $("preference");
    $("preference-options").replaceChildren();
    if (state.preference) buildPreference(state.preference);
    show(pref, Boolean(state.preference));
    for (const [name, value] of Object.entries(saved)) {
      const entry = state.inputs.get(name);
      if (entry && value !== "") {
        writeRaw(entry, value);
        checkField(entry);
      }
    }
    clearResult();
  }

  function numericField(info) {
    const id = `field-${safeId(info.name)}`;
    const hintParts = [];
    if (info.min !== null && info.max !== null) {
      hintParts.push(`Range ${rangeText(info.min, info.max, info.unit)}`);
    } else if (info.min !== null) {
      hintParts.push(`At least ${fmtNumber(info.min)}`);
    } else if (info.max !== null) {
      hintParts.push(`At most ${fmtNumber(info.max)}`);
    }
    if (info.observed_min !== null && info.observed_max !== null) {
      hintParts.push(`training data ${rangeText(info.observed_min, info.observed_max, null)}`);
    }
    const hint = h("p", { id: `${id}-hint`, class: "hint" }, hintParts.join("; ") + ".");
    const input = h("input", {
      id,
      name: info.name,
      type: "number",
      inputmode: "decimal",
      step: "any",
      min: info.min ?? null,
      max: info.max ?? null,
      autocomplete: "off",
      "aria-describedby": `${id}-hint`,
    });
    const error = h("p", { id: `${id}-error`, class: "error", hidden: true });
    const note = h("p", { id: `${id}-note`, class: "note", hidden: true });
    const label = h("label", { for: id }, info.label,
      info.unit ? h("span", { class: "unit" }, ` ${info.unit}`) : null);
    const entry = { info, control: input, error, note, hint, id };
    state.inputs.set(info.name, entry);
    input.addEventListener("blur", () => checkField(entry));
    input.addEventListener("input", () => {
      if (entry.control.getAttribute("aria-invalid") === "true") checkField(entry);
    });
    return h("div", { class: "field", "data-field": info.name }, label, input, hint, error, note);
  }

  function selectField(info) {
    const id = `field-${safeId(info.name)}`;
    const select = h("select", { id, name: info.name, "aria-describedby": `${id}-hint` },
      h("option", { value: "" }, "Not known"),
      (info.levels || []).map((level) => h("option", { value: level }, levelLabel(info, level))));
    const hint = h("p", { id: `${id}-hint`, class: "hint" },
      `One of: ${(info.levels || []).map((l) => levelLabel(info, l)).join(", ")}.`);
    const error = h("p", { id: `${id}-error`, class: "error", hidden: true });
    const note = h("p", { id: `${id}-note`, class: "note", hidden: true });
    const entry = { info, control: select, error, note, hint, id };
    state.inputs.set(info.name, entry);
    select.addEventListener("change", () => checkField(entry));
    return h("div", { class: "field", "data-field": info.name },
      h("label", { for: id }, info.label), select, hint, error, note);
  }

  function buildPreference(info) {
    const host = $("preference-options");
    const name = info.name;
    const radios = [];
    const options = [["", "Not asked"], ...(info.levels || []).map((l) => [l, levelLabel(info, l)])];
    options.forEach(([value, text], i) => {
      const id = `pref-${i}`;
      const radio = h("input", {
        id, type: "radio", name, value, checked: value === "",
        "aria-describedby": "preference-hint",
      });
      radios.push(radio);
      host.append(h("div", { class: "choice" }, radio, h("label", { for: id }, text)));
    });
    $("preference-legend").textContent =
      info.label && info.label !== "Preferred treatment"
        ? `Patient's stated preference: ${info.label}`
        : "Patient's stated preference";
    const entry = {
      info, radios, control: radios[0], error: $("preference-error"),
      note: null, hint: $("preference-hint"), id: radios[0].id, group: $("preference"),
    };
    state.inputs.set(name, entry);
  }

  // --- per-field messages

  function describedBy(entry) {
    const ids = [];
    if (!entry.error.hidden) ids.push(entry.error.id);
    if (entry.note && !entry.note.hidden) ids.push(entry.note.id);
    ids.push(entry.hint.id);
    return ids.join(" ");
  }

  function setFieldError(entry, message, source) {
    entry.error.textContent = message || "";
    entry.error.dataset.source = source || "";
    show(entry.error, Boolean(message));
    const controls = entry.radios || [entry.control];
    for (const control of controls) {
      if (message) control.setAttribute("aria-invalid", "true");
      else control.removeAttribute("aria-invalid");
      control.setAttribute("aria-describedby", describedBy(entry));
    }
    const wrapper = entry.group || entry.control.closest(".field");
    if (wrapper) wrapper.classList.toggle("has-error", Boolean(message));
  }

  function setFieldNote(entry, message) {
    if (!entry.note) return;
    entry.note.textContent = message || "";
    show(entry.note, Boolean(message));
    entry.control.setAttribute("aria-describedby", describedBy(entry));
  }

  /** Client-side hints: the server stays the judge (its 422 replaces these on submit). */
  function checkField(entry) {
    const info = entry.info;
    if (info.type !== "numeric") {
      setFieldError(entry, "");
      return true;
    }
    const input = entry.control;
    if (input.validity && input.validity.badInput) {
      setFieldError(entry, "Enter a number, using digits and a decimal point.", "client");
      setFieldNote(entry, "");
      return false;
    }
    if (input.value.trim() === "") {
      setFieldError(entry, "");
      setFieldNote(entry, "");
      return true;
    }
    const value = Number(input.value);
    if (info.min !== null && value < info.min) {
      setFieldError(entry, `Below the lowest allowed value, ${fmtNumber(info.min)}.`, "client");
    } else if (info.max !== null && value > info.max) {
      setFieldError(entry, `Above the highest allowed value, ${fmtNumber(info.max)}.`, "client");
    } else {
      setFieldError(entry, "");
    }
    const outside = info.observed_min !== null && info.observed_max !== null &&
      (value < info.observed_min || value > info.observed_max);
    setFieldNote(entry, outside && entry.error.hidden
      ? `Outside the training data (${rangeText(info.observed_min, info.observed_max, info.unit)}): ` +
        "the estimate will be an extrapolation."
      : "");
    return true;
  }

  function focusEntry(entry) {
    const target = entry.radios ? (entry.radios.find((r) => r.checked) || entry.radios[0])
      : entry.control;
    target.focus();
  }

  function showSummary(items, heading) {
    const box = $("error-summary");
    box.replaceChildren();
    if (!items.length) {
      show(box, false);
      return;
    }
    box.append(h("p", { class: "summary-title" }, heading));
    const list = h("ul", {});
    for (const item of items) {
      if (item.entry) {
        const link = h("a", { href: `#${item.entry.id}` }, `${item.label}: ${item.message}`);
        link.addEventListener("click", (event) => {
          event.preventDefault();
          focusEntry(item.entry);
        });
        list.append(h("li", {}, link));
      } else {
        list.append(h("li", {}, `${item.label}: ${item.message}`));
      }
    }
    box.append(list);
    show(box, true);
  }

  function labelOf(entry) {
    return entry.info.preference ? "Stated preference" : entry.info.label;
  }

  // --- collect and submit

  function collect() {
    const patient = {};
    const blocking = [];
    for (const [name, entry] of state.inputs) {
      const raw = readRaw(entry);
      if (entry.info.type === "numeric") {
        if (entry.control.validity && entry.control.validity.badInput) {
          blocking.push(entry);
          continue;
        }
        if (raw.trim() === "") continue;
        patient[name] = Number(raw);
      } else if (raw !== "") {
        patient[name] = raw;
      }
    }
    return { patient, blocking };
  }

  function clearServerErrors() {
    for (const entry of state.inputs.values()) {
      if (entry.error.dataset.source === "server") setFieldError(entry, "");
    }
    setRefError("");
    showSummary([]);
  }

  function setRefError(message) {
    const input = $("patient-ref");
    const error = $("patient-ref-error");
    error.textContent = message;
    show(error, Boolean(message));
    if (message) {
      input.setAttribute("aria-invalid", "true");
      input.setAttribute("aria-describedby", "patient-ref-error patient-ref-hint");
    } else {
      input.removeAttribute("aria-invalid");
      input.setAttribute("aria-describedby", "patient-ref-hint");
    }
  }

  function setBusy(busy) {
    state.busy = busy;
    const button = $("submit");
    button.setAttribute("aria-disabled", busy ? "true" : "false");
    button.textContent = busy ? "Estimating…" : "Estimate response";
    $("result-panel").setAttribute("aria-busy", busy ? "true" : "false");
  }

  async function onSubmit(event) {
    event.preventDefault();
    if (state.busy) return;
    clearServerErrors();
    setStatus("");
    const { patient, blocking } = collect();
    if (blocking.length) {
      for (const entry of blocking) checkField(entry);
      showSummary(blocking.map((entry) => ({
        entry, label: labelOf(entry), message: entry.error.textContent,
      })), `Check ${blocking.length === 1 ? "this field" : `these ${blocking.length} fields`}:`);
      focusEntry(blocking[0]);
      return;
    }
    const body = { patient };
    const ref = $("patient-ref").value.trim();
    if (ref) body.patient_ref = ref;
    setBusy(true);
    $("result-live").textContent = "Estimating…";
    try {
      const result = await api("/v1/recommendations", { method: "POST", json: body });
      renderResult(result, patient);
    } catch (err) {
      $("result-live").textContent = "";
      if (err.status === 422) {
        showProblems(err.body);
      } else if (err.status === 401 || err.status === 403) {
        clearKey();
        askForKey(`${err.message} Your entries are kept; estimate again after entering a key.`);
      } else {
        markStale(false);
        showSummary([{ label: "The estimate failed", message: err.message }], "No estimate:");
        $("error-summary").focus();
      }
    } finally {
      setBusy(false);
    }
  }

  /** Map the service's 422 problems onto the fields they name. */
  function showProblems(body) {
    const problems = body && Array.isArray(body.detail) ? body.detail : [];
    const items = [];
    let first = null;
    for (const problem of problems) {
      const loc = Array.isArray(problem.loc) ? problem.loc : [];
      const at = loc.indexOf("patient");
      const name = at >= 0 && loc.length > at + 1 ? String(loc[at + 1]) : null;
      const entry = name !== null ? state.inputs.get(name) : undefined;
      const message = capitalise(String(problem.msg || "not accepted"));
      if (entry) {
        setFieldError(entry, `${message}.`.replace(/\.\.$/, "."), "server");
        setFieldNote(entry, "");
        items.push({ entry, label: labelOf(entry), message });
        first = first || entry;
      } else if (loc.includes("patient_ref")) {
        setRefError(`${message}.`);
        items.push({ label: "Patient reference", message });
      } else {
        items.push({ label: problem.field || loc.join("."), message });
      }
    }
    if (!items.length) items.push({ label: "Request", message: explain(422, body) });
    clearResult();
    showSummary(items, `The service did not accept ${items.length === 1 ? "this value" : `these ${items.length} values`}:`);
    if (first) focusEntry(first);
    else $("error-summary").focus();
    $("result-live").textContent = `Not estimated: ${items.length} value${items.length === 1 ? "" : "s"} not accepted.`;
  }

  function onClear() {
    for (const entry of state.inputs.values()) {
      writeRaw(entry, "");
      setFieldError(entry, "");
      setFieldNote(entry, "");
    }
    $("patient-ref").value = "";
    setRefError("");
    showSummary([]);
    clearResult();
    const first = document.querySelector("#patient-form input, #patient-form select");
    if (first) first.focus();
  }

  // ----------------------------------------------------------------------- paste

  function normalizeName(text) {
    return String(text).toLowerCase().replace(/\(.*?\)/g, "").replace(/[^a-z0-9]+/g, "");
  }

  function parsePasted(text) {
    const trimmed = text.trim();
    if (!trimmed) return [];
    if (trimmed.startsWith("{")) {
      const data = JSON.parse(trimmed);
      const obj = data && typeof data.patient === "object" ? data.patient : data;
      return Object.entries(obj).map(([k, v]) => [k, v === null ? "" : String(v)]);
    }
    const pairs = [];
    for (const line of trimmed.split(/\r?\n/)) {
      const match = line.match(/^\s*([^:=\t]+?)\s*(?::|=|\t)\s*(.*?)\s*,?\s*$/);
      if (match) pairs.push([match[1].replace(/^["']|["']$/g, ""), match[2].replace(/^["']|["']$/g, "")]);
    }
    return pairs;
  }

  function onPaste() {
    const out = $("paste-result");
    let pairs;
    try {
      pairs = parsePasted($("paste-text").value);
    } catch {
      out.textContent = "These values could not be read: the text starts like JSON but is not valid JSON.";
      return;
    }
    const byName = new Map();
    for (const [name, entry] of state.inputs) {
      byName.set(normalizeName(name), entry);
      byName.set(normalizeName(entry.info.label), entry);
    }
    let filled = 0;
    const unknown = [];
    const refused = [];
    for (const [key, value] of pairs) {
      const entry = byName.get(normalizeName(key));
      if (!entry) {
        unknown.push(key);
        continue;
      }
      if (entry.info.type === "categorical") {
        const level = (entry.info.levels || []).find((l) =>
          normalizeName(l) === normalizeName(value) ||
          normalizeName(levelLabel(entry.info, l)) === normalizeName(value));
        if (level === undefined && value !== "") {
          refused.push(`${labelOf(entry)} “${value}”`);
          continue;
        }
        writeRaw(entry, level ?? "");
      } else {
        writeRaw(entry, value);
      }
      checkField(entry);
      filled += 1;
    }
    const parts = [`Filled ${filled} field${filled === 1 ? "" : "s"}.`];
    if (unknown.length) parts.push(`Not a field of this model: ${unknown.join(", ")}.`);
    if (refused.length) parts.push(`Not one of the choices: ${refused.join(", ")}.`);
    out.textContent = parts.join(" ");
    markStale(true);
  }

  // ----------------------------------------------------------------------- the result

  function clearResult() {
    state.result = null;
    $("result").replaceChildren();
    show($("result"), false);
    show($("result-empty"), true);
  }

  function markStale(changed) {
    const result = $("result");
    if (!state.result || result.hidden) return;
    if (changed && !result.classList.contains("stale")) {
      result.classList.add("stale");
      result.prepend(h("p", { class: "alert alert-stale", id: "stale-note" },
        "The values have changed since this estimate. Choose Estimate response to update it."));
    }
  }

  function armEntries(result) {
    const entries = Object.entries(result.arms);
    entries.sort((a, b) => (a[1].role === "treatment" ? -1 : 1) - (b[1].role === "treatment" ? -1 : 1));
    return entries.map(([label, arm]) => ({
      label,
      role: arm.role,
      value: arm.probability !== null && arm.probability !== undefined
        ? arm.probability : arm.expected_improvement,
    }));
  }

  function renderResult(result, patient) {
    state.result = { result, patient };
    const binary = result.outcome.kind === "binary";
    const arms = armEntries(result);
    const treatment = arms.find((a) => a.role === "treatment");
    const control = arms.find((a) => a.role === "control");
    const pref = state.preference ? patient[state.preference.name] : undefined;
    const box = $("result");
    box.className = "result";
    box.replaceChildren();

    // recommendation
    const either = result.recommendation_role === "either";
    const headline = either
      ? "No reliable difference: follow the patient's preference"
      : `${result.recommendation} is favoured for this patient`;
    const rec = h("section", {
      class: `recommendation ${either ? "rec-either" : `rec-${result.recommendation_role}`}`,
      "aria-labelledby": "rec-headline",
    },
    h("p", { class: "eyebrow" }, "Recommendation"),
    h("p", { class: "rec-headline", id: "rec-headline" }, headline),
    pref !== undefined
      ? h("p", { class: "rec-pref" }, "Stated preference: ",
        h("strong", {}, levelLabel(state.preference, pref)),
        !either && pref !== result.recommendation && pref !== "none"
          ? " (differs from the estimate: discuss with the patient)" : null)
      : null,
    either && pref === undefined && state.preference
      ? h("p", { class: "rec-pref" }, "The patient's preference was not recorded: ask them.")
      : null,
    result.better_bet
      ? h("p", { class: "rec-bet" }, "Without a preference, ",
        h("strong", {}, result.better_bet),
        ` is the better bet: ${article(result.better_bet_probability)} ` +
        `${Math.round(result.better_bet_probability * 100)}% probability ` +
        "that it is the better programme for this patient, though not a reliable difference.")
      : null,
    h("p", { class: "rationale" }, capitalise(result.rationale)));
    box.append(rec);

    if (result.model && result.model.synthetic) {
      box.append(h("p", { class: "synthetic-inline" },
        h("strong", {}, "Synthetic data. "),
        "This estimate comes from a model trained on simulated patients. It demonstrates the " +
          "method and must not inform a clinical decision."));
    }

    if (result.model && result.model.checks_warning) {
      box.append(h("section", { class: "alert alert-warning model-checks", "aria-labelledby": "checks-title" },
        h("h3", { id: "checks-title" }, "This model failed its checks"),
        h("p", {}, capitalise(result.model.checks_warning) + ". " +
          "It was released with a warning: weigh its estimates with care.")));
    }

    if (result.warnings.length) {
      box.append(h("section", { class: "alert alert-warning warnings", "aria-labelledby": "warn-title" },
        h("h3", { id: "warn-title" }, "Check before relying on this estimate"),
        h("ul", {}, result.warnings.map((w) => h("li", {}, warningText(w))))));
    }

    // per-arm chart
    const armsTitle = binary ? "Chance of response with each programme" : "Expected improvement with each programme";
    const armsChart = h("div", { class: "chart", id: "arms-chart" });
    box.append(h("section", { class: "block", "aria-labelledby": "arms-title" },
      h("h3", { id: "arms-title" }, armsTitle),
      h("p", { class: "block-sub" }, `Outcome: ${result.outcome.definition}.`),
      armsChart,
      h("p", { class: "fine" }, binary
        ? "Calibrated point estimates for this patient. The service gives an interval for the " +
          "difference between the programmes (below), not for each programme separately."
        : "Point estimates for this patient, in the outcome's points. The service gives an " +
          "interval for the difference (below), not for each programme separately.")));

    // benefit
    const b = result.benefit;
    const level = Math.round(b.level * 100);
    const includesZero = b.lower <= 0 && b.upper >= 0;
    const benefitChart = h("div", { class: "chart", id: "benefit-chart" });
    box.append(h("section", { class: "block", "aria-labelledby": "benefit-title" },
      h("h3", { id: "benefit-title" }, `Difference, ${treatment.label} minus ${control.label}`),
      h("p", { class: "benefit-figure" },
        h("span", { class: "big" }, fmtDiff(b.estimate, b.scale)),
        ` (${level}% interval ${fmtDiff(b.lower, b.scale)} to ${fmtDiff(b.upper, b.scale)})`),
      benefitChart,
      h("p", { class: "fine" }, includesZero
        ? `The ${level}% interval includes no difference (0).`
        : `The whole ${level}% interval favours ${b.estimate > 0 ? treatment.label : control.label}.`,
      ` Positive values favour ${treatment.label}; negative values favour ${control.label}.` +
      ` The interval is for ${b.covers}.`)));

    // drivers: a waterfall from the average benefit to this patient's
    if (result.drivers.length) {
      const driversChart = h("div", { class: "chart", id: "drivers-chart" });
      const parts = result.benefit_parts;
      box.append(h("section", { class: "block", "aria-labelledby": "drivers-title" },
        h("h3", { id: "drivers-title" }, "What drives the difference for this patient"),
        h("p", { class: "block-sub" }, parts
          ? `From the average benefit to this patient's: each bar is one value's contribution, in ${diffWords(b.scale)}.`
          : `Each bar is one value's contribution to the difference, in ${diffWords(b.scale)}.`),
        driversChart,
        parts ? waterfallNotes(result) : null));
    }

    if (result.missing_features.length) {
      box.append(h("section", { class: "block missing", "aria-labelledby": "missing-title" },
        h("h3", { id: "missing-title" }, "Not given"),
        h("p", {}, `${result.missing_features.map((m) => m.label).join(", ")}. `,
          "The model handled these as missing; the estimate is less specific to this patient.")));
    }

    box.append(modelSection(result));
    box.append(h("p", { class: "audit" }, "Audit record ", h("code", {}, result.audit_id)));

    show($("result-empty"), false);
    show(box, true);
    drawCharts();
    if (result.model) showModel(result.model);

    const armsText = arms.map((a) => `${a.label} ${binary ? fmtPercent(a.value) : fmtDiff(a.value, "points")}`).join(", ");
    $("result-live").textContent =
      `Estimate ready. ${headline}. ${binary ? "Chance of response" : "Expected improvement"}: ` +
      `${armsText}. ${result.warnings.length ? `${result.warnings.length} warning${result.warnings.length === 1 ? "" : "s"}.` : ""}`;
    if (window.matchMedia("(max-width: 959px)").matches) {
      $("result-panel").scrollIntoView({ block: "start", behavior: "smooth" });
    }
  }

  function warningText(text) {
    // "age=95 is outside ..." -> "Age = 95 is outside ..."
    const match = String(text).match(/^([A-Za-z0-9_]+)=(\S+)(.*)$/);
    if (match && state.inputs.has(match[1])) {
      const info = state.inputs.get(match[1]).info;
      return `${info.label} = ${match[2]}${info.unit && !isScale(info.unit) ? ` ${info.unit}` : ""}${match[3]}`;
    }
    return String(text);
  }

  function modelSection(result) {
    const m = result.model;
    const t = m.trained_on || {};
    const rows = [
      ["Model", `${m.name}, version ${m.version}`],
      ["Learner", m.learner || "not recorded"],
      ["Trained on", [t.description || t.pipeline,
        t.n_patients ? `${t.n_patients.toLocaleString("en")} patients` : null]
        .filter(Boolean).join("; ")],
      ["Data", m.synthetic ? "Synthetic: a simulated cohort, no real patients" : "Trial data"],
      ["Checks", m.checks_warning ? "Failed (released with a warning)" : "Passed"],
      ["Pipeline", t.pipeline],
      ["Loaded from", m.source === "cache"
        ? "Local cache: the model registry is unreachable, the last loaded copy is served"
        : "Model registry"],
    ];
    if (m.run_id) rows.push(["Run", m.run_id]);
    if (t.cohort_sha256) rows.push(["Cohort fingerprint", `SHA-256 ${t.cohort_sha256.slice(0, 16)}…`]);
    const list = h("dl", { class: "model-facts" });
    for (const [term, value] of rows) {
      if (!value) continue;
      list.append(h("div", {}, h("dt", {}, term), h("dd", {}, value)));
    }
    const button = h("button", { type: "button", class: "button-secondary", id: "open-card" },
      "Read the model card");
    button.addEventListener("click", () => openCard(button));
    return h("section", { class: `block model ${m.synthetic ? "model-synthetic" : ""}`, "aria-labelledby": "model-title" },
      h("h3", { id: "model-title" }, "Model", m.synthetic ? h("span", { class: "tag-synthetic" }, "Synthetic data") : null),
      list, h("div", { class: "actions" }, button));
  }

  // ----------------------------------------------------------------------- SVG charts

  function niceStep(span, ticks) {
    const raw = span / Math.max(1, ticks);
    const mag = 10 ** Math.floor(Math.log10(raw));
    const norm = raw / mag;
    return (norm <= 1 ? 1 : norm <= 2 ? 2 : norm <= 2.5 ? 2.5 : norm <= 5 ? 5 : 10) * mag;
  }

  function symmetricDomain(values, minimum) {
    const m = Math.max(minimum, ...values.map((v) => Math.abs(v)));
    const step = niceStep(m, 2);
    const top = Math.ceil((m * 1.05) / step) * step;
    return [-top, top, step];
  }

  function ticksFor(lo, hi, step) {
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) {
      out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return out;
  }

  /** Text anchor that keeps a label of about 2 * half px inside the chart. */
  function anchor(px, width, half) {
    if (px - half < 0) return "start";
    if (px + half > width) return "end";
    return "middle";
  }

  function chartWidth(host) {
    return Math.max(260, Math.floor(host.clientWidth || host.getBoundingClientRect().width || 320));
  }

  function drawCharts() {
    if (!state.result) return;
    const { result, patient } = state.result;
    const arms = $("arms-chart");
    const benefit = $("benefit-chart");
    const drivers = $("drivers-chart");
    if (arms) arms.replaceChildren(armsSvg(result, chartWidth(arms)));
    if (benefit) benefit.replaceChildren(benefitSvg(result, chartWidth(benefit)));
    if (drivers) {
      drivers.replaceChildren(result.benefit_parts
        ? waterfallSvg(result, chartWidth(drivers))
        : driversSvg(result, patient, chartWidth(drivers)));
    }
  }

  function armsSvg(result, width) {
    const binary = result.outcome.kind === "binary";
    const arms = armEntries(result);
    const values = arms.map((a) => a.value);
    let lo = 0;
    let hi = 1;
    let step = 0.25;
    if (!binary) {
      lo = Math.min(0, ...values);
      hi = Math.max(0, ...values);
      step = niceStep(hi - lo || 1, 4);
      lo = Math.floor(lo / step) * step;
      hi = Math.ceil(hi / step) * step || step;
    }
    const pad = { left: 8, right: 12 };
    const rowH = 54;
    const top = 4;
    const height = top + rowH * arms.length + 26;
    const x = (v) => pad.left + ((v - lo) / (hi - lo)) * (width - pad.left - pad.right);
    const fmt = (v) => (binary ? fmtPercent(v) : fmtDiff(v, "points"));
    const label = arms.map((a) => `${a.label} ${fmt(a.value)}`).join(", ");
    const svgNode = s("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": `${binary ? "Chance of response" : "Expected improvement"}: ${label}.`,
      class: "svg-chart",
    });
    svgNode.append(s("title", {}, `${binary ? "Chance of response" : "Expected improvement"}: ${label}`));
    const gridTicks = ticksFor(lo, hi, step);
    for (const t of gridTicks) {
      svgNode.append(s("line", { x1: x(t), x2: x(t), y1: top, y2: top + rowH * arms.length, class: "grid" }));
    }
    arms.forEach((arm, i) => {
      const y = top + i * rowH;
      const colour = ARM_COLOURS[arm.role];
      svgNode.append(s("text", { x: pad.left, y: y + 16, class: "arm-label" }, arm.label));
      svgNode.append(s("text", { x: width - pad.right, y: y + 16, class: "arm-value", "text-anchor": "end" }, fmt(arm.value)));
      svgNode.append(s("rect", { x: x(lo), y: y + 24, width: x(hi) - x(lo), height: 18, class: "track", rx: 3 }));
      const x0 = x(Math.max(lo, Math.min(0, arm.value)));
      const x1 = x(Math.max(0, arm.value));
      svgNode.append(s("rect", {
        x: x0, y: y + 24, width: Math.max(2, x1 - x0), height: 18, fill: colour, rx: 3,
        "data-arm": arm.label,
      }));
    });
    const axisY = top + rowH * arms.length + 16;
    for (const t of gridTicks) {
      svgNode.append(s("text", {
        x: x(t), y: axisY, "text-anchor": anchor(x(t), width, 18), class: "tick",
      }, binary ? `${Math.round(t * 100)}%` : fmtNumber(t)));
    }
    return svgNode;
  }

  function benefitSvg(result, width) {
    const b = result.benefit;
    const arms = armEntries(result);
    const t = arms.find((a) => a.role === "treatment").label;
    const c = arms.find((a) => a.role === "control").label;
    const scale = b.scale === "probability" ? 100 : 1;
    const minimum = b.scale === "probability" ? 0.1 : 1;
    const [lo, hi, step] = symmetricDomain([b.lower, b.upper, b.estimate], minimum);
    const pad = { left: 10, right: 10 };
    const height = 92;
    const x = (v) => pad.left + ((v - lo) / (hi - lo)) * (width - pad.left - pad.right);
    const level = Math.round(b.level * 100);
    const summary = `Difference ${t} minus ${c}: ${fmtDiff(b.estimate, b.scale)}, ${level}% interval ` +
      `${fmtDiff(b.lower, b.scale)} to ${fmtDiff(b.upper, b.scale)}.`;
    const node = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": summary, class: "svg-chart" });
    node.append(s("title", {}, summary));
    node.append(s("rect", { x: x(lo), y: 24, width: x(0) - x(lo), height: 36, class: "half-control" }));
    node.append(s("rect", { x: x(0), y: 24, width: x(hi) - x(0), height: 36, class: "half-treatment" }));
    node.append(s("text", { x: x(lo) + 2, y: 15, class: "favours favours-control" }, `← favours ${c}`));
    node.append(s("text", { x: x(hi) - 2, y: 15, class: "favours favours-treatment", "text-anchor": "end" }, `favours ${t} →`));
    let tickStep = step;
    while ((x(tickStep) - x(0)) < 84 && tickStep < hi) tickStep *= 2;
    const ticks = ticksFor(lo, hi, tickStep);
    for (const tick of ticks) {
      node.append(s("line", { x1: x(tick), x2: x(tick), y1: 24, y2: 60, class: tick === 0 ? "zero" : "grid" }));
      node.append(s("text", {
        x: x(tick), y: 78, class: "tick", "text-anchor": anchor(x(tick), width, 28),
      }, `${tick === 0 ? "0" : signed(tick * scale, step * scale < 1 ? 1 : 0)}${b.scale === "probability" ? " pp" : ""}`));
    }
    const y = 42;
    const colour = b.estimate >= 0 ? ARM_COLOURS.treatment : ARM_COLOURS.control;
    node.append(s("line", { x1: x(b.lower), x2: x(b.upper), y1: y, y2: y, class: "interval" }));
    node.append(s("line", { x1: x(b.lower), x2: x(b.lower), y1: y - 8, y2: y + 8, class: "interval" }));
    node.append(s("line", { x1: x(b.upper), x2: x(b.upper), y1: y - 8, y2: y + 8, class: "interval" }));
    node.append(s("circle", { cx: x(b.estimate), cy: y, r: 7, fill: colour, class: "estimate" }));
    return node;
  }

  function driverValue(driver) {
    const entry = state.inputs.get(driver.feature);
    if (driver.value === null || driver.value === undefined) return "not given";
    if (typeof driver.value === "number") {
      const unit = entry && entry.info.unit && !isScale(entry.info.unit) ? ` ${entry.info.unit}` : "";
      return `${fmtNumber(driver.value)}${unit}`;
    }
    return entry ? levelLabel(entry.info, driver.value) : String(driver.value);
  }

  function driverLabel(driver) {
    const entry = state.inputs.get(driver.feature);
    if (!entry) return driver.label;
    return entry.info.preference ? "Stated preference" : entry.info.label;
  }

  function driversSvg(result, patient, width) {
    const b = result.benefit;
    const arms = armEntries(result);
    const t = arms.find((a) => a.role === "treatment").label;
    const c = arms.find((a) => a.role === "control").label;
    const drivers = result.drivers;
    const minimum = b.scale === "probability" ? 0.02 : 0.5;
    const [lo, hi] = symmetricDomain(drivers.map((d) => d.contribution), minimum);
    const pad = { left: 8, right: 8 };
    const rowH = 52;
    const top = 22;
    const height = top + rowH * drivers.length + 4;
    const x = (v) => pad.left + ((v - lo) / (hi - lo)) * (width - pad.left - pad.right);
    const parts = drivers.map((d) =>
      `${driverLabel(d)} ${driverValue(d)}: ${fmtDiff(d.contribution, b.scale)}, ${d.direction}`);
    const summary = `Drivers of the difference: ${parts.join("; ")}.`;
    const node = s("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": summary, class: "svg-chart" });
    node.append(s("title", {}, summary));
    node.append(s("text", { x: x(lo), y: 13, class: "favours favours-control" }, `← favours ${c}`));
    node.append(s("text", { x: x(hi), y: 13, class: "favours favours-treatment", "text-anchor": "end" }, `favours ${t} →`));
    drivers.forEach((d, i) => {
      const y = top + i * rowH;
      const text = fmtDiff(d.contribution, b.scale);
      const valueRoom = 9 * text.length + 12;
      const label = `${driverLabel(d)}: ${driverValue(d)}`;
      node.append(s("text", { x: pad.left, y: y + 16, class: "driver-label" },
        fitText(label, width - pad.left - pad.right - valueRoom)));
      node.append(s("text", {
        x: width - pad.right, y: y + 16, class: "driver-value", "text-anchor": "end",
        fill: d.contribution >= 0 ? ARM_COLOURS.treatment : ARM_COLOURS.control,
      }, text));
      node.append(s("rect", { x: x(lo), y: y + 23, width: x(hi) - x(lo), height: 18, class: "track", rx: 2 }));
      const x0 = x(Math.min(0, d.contribution));
      const x1 = x(Math.max(0, d.contribution));
      const colour = d.contribution >= 0 ? ARM_COLOURS.treatment : ARM_COLOURS.control;
      node.append(s("rect", { x: x0, y: y + 24, width: Math.max(2, x1 - x0), height: 16, fill: colour, rx: 2, "data-feature": d.feature }));
      node.append(s("line", { x1: x(0), x2: x(0), y1: y + 20, y2: y + 44, class: "zero" }));
    });
    return node;
  }

  function isMissing(driver) {
    return driver.value === null || driver.value === undefined;
  }

  /** The waterfall's rows: the base value, each driver and the other features as steps
   * from the running total, then the patient's benefit. */
  function waterfallRows(result) {
    const b = result.benefit;
    const parts = result.benefit_parts;
    const rows = [{
      part: "base", label: "Average benefit (base value)", from: 0, to: parts.base_value,
      value: parts.base_value,
    }];
    let total = parts.base_value;
    for (const d of result.drivers) {
      rows.push({
        part: "driver", feature: d.feature, missing: isMissing(d), direction: d.direction,
        label: `${driverLabel(d)}: ${driverValue(d)}`, from: total,
        to: total + d.contribution, value: d.contribution,
      });
      total += d.contribution;
    }
    rows.push({
      part: "other", label: "Other features, together", from: total,
      to: total + parts.other_features, value: parts.other_features,
    });
    rows.push({ part: "benefit", label: "Benefit for this patient", from: 0, to: b.estimate, value: b.estimate });
    return rows;
  }

  function waterfallSvg(result, width) {
    const b = result.benefit;
    const arms = armEntries(result);
    const t = arms.find((a) => a.role === "treatment").label;
    const c = arms.find((a) => a.role === "control").label;
    const rows = waterfallRows(result);
    const minimum = b.scale === "probability" ? 0.02 : 0.5;
    const [lo, hi, step] = symmetricDomain(rows.flatMap((r) => [r.from, r.to]), minimum);
    const scale = b.scale === "probability" ? 100 : 1;
    const pad = { left: 8, right: 8 };
    const rowH = 46;
    const top = 22;
    const barY = 21;
    const barH = 16;
    const height = top + rowH * rows.length + 20;
    const x = (v) => pad.left + ((v - lo) / (hi - lo)) * (width - pad.left - pad.right);
    const parts = rows.map((r) => {
      const text = `${r.label} ${fmtDiff(r.value, b.scale)}`;
      return r.part === "driver" ? `${text}, ${r.direction}` : text;
    });
    const summary = `From the average benefit to this patient's: ${parts.join("; ")}.`;
    const node = s("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": summary,
      class: "svg-chart waterfall",
    });
    node.append(s("title", {}, summary));
    node.append(s("text", { x: x(lo), y: 13, class: "favours favours-control" }, `← favours ${c}`));
    node.append(s("text", { x: x(hi), y: 13, class: "favours favours-treatment", "text-anchor": "end" }, `favours ${t} →`));
    let tickStep = step;
    while ((x(tickStep) - x(0)) < 84 && tickStep < hi) tickStep *= 2;
    const bottom = top + rowH * rows.length;
    for (const tick of ticksFor(lo, hi, tickStep)) {
      node.append(s("line", { x1: x(tick), x2: x(tick), y1: top, y2: bottom, class: tick === 0 ? "zero" : "grid" }));
      node.append(s("text", {
        x: x(tick), y: bottom + 14, class: "tick", "text-anchor": anchor(x(tick), width, 28),
      }, `${tick === 0 ? "0" : signed(tick * scale, tickStep * scale < 1 ? 1 : 0)}${b.scale === "probability" ? " pp" : ""}`));
    }
    rows.forEach((r, i) => {
      const y = top + i * rowH;
      const total = r.part === "base" || r.part === "benefit";
      const text = fmtDiff(r.value, b.scale);
      const valueRoom = 9 * text.length + 12;
      const colour = total ? null : r.value >= 0 ? ARM_COLOURS.treatment : ARM_COLOURS.control;
      node.append(s("text", { x: pad.left, y: y + 15, class: `driver-label${total ? " waterfall-total" : ""}` },
        fitText(r.label, width - pad.left - pad.right - valueRoom)));
      node.append(s("text", {
        x: width - pad.right, y: y + 15, class: `driver-value${total ? " waterfall-total" : ""}`,
        "text-anchor": "end", fill: colour,
      }, text));
      const x0 = x(Math.min(r.from, r.to));
      const x1 = x(Math.max(r.from, r.to));
      node.append(s("rect", {
        x: x0, y: y + barY, width: Math.max(2, x1 - x0), height: barH, rx: 2,
        fill: colour, stroke: r.missing ? colour : null,
        class: total ? `bar-total bar-${r.part}` : r.missing ? "bar-missing" : null,
        "data-part": r.part, "data-feature": r.part === "driver" ? r.feature : null,
        "data-value": String(r.value), "data-missing": r.missing ? "true" : null,
      }));
      if (i + 1 < rows.length) {
        // the running total carries on to the next step
        const carry = rows[i + 1].part === "benefit" ? r.to : rows[i + 1].from;
        node.append(s("line", {
          x1: x(carry), x2: x(carry), y1: y + barY + barH, y2: y + rowH + barY, class: "connector",
        }));
      }
    });
    return node;
  }

  /** What the waterfall means, in words; and what a driver of a value not given means. */
  function waterfallNotes(result) {
    const b = result.benefit;
    const parts = result.benefit_parts;
    const missing = result.drivers.filter(isMissing).map(driverLabel);
    const meaning = "its contribution is how the model handles a missing value, not a " +
      "value of this patient.";
    return [
      h("p", { class: "fine", id: "waterfall-reading" },
        `Start at the average benefit (${fmtDiff(parts.base_value, b.scale)}): what the model ` +
        "expects before any of this patient's values is known. Each value then moves it " +
        `(the ${result.drivers.length} largest are shown; all other features together move it ` +
        `${fmtDiff(parts.other_features, b.scale)}), ending at this patient's benefit ` +
        `(${fmtDiff(b.estimate, b.scale)}). The numbers add up, up to rounding.`),
      missing.length
        ? h("p", { class: "missing-driver-note", id: "missing-driver-note", role: "note" },
          h("strong", {}, `Not given: ${missing.join(", ")}. `),
          `${missing.length === 1 ? "This feature was" : "These features were"} left empty; ${meaning}`)
        : h("p", { class: "fine", id: "missing-driver-note" },
          `A driver shown as “not given” is a feature that was left empty: ${meaning}`),
    ];
  }

  /** Shorten a label to the width available (about 7.4 px per character at 13 px). */
  function fitText(text, px) {
    const max = Math.max(12, Math.floor(px / 7.4));
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  // ----------------------------------------------------------------------- model card

  async function openCard(opener) {
    const dialog = $("card-dialog");
    const body = $("card-body");
    const block = state.schema && state.schema.model;
    const cacheKey = block ? `${block.name}@${block.version}` : "";
    dialog.returnFocusTo = opener;
    if (!state.card || state.card.key !== cacheKey) {
      body.replaceChildren(h("p", {}, "Loading the model card…"));
      if (!dialog.open) dialog.showModal();
      try {
        const [html, markdown] = await Promise.all([
          api("/v1/model?format=html", { accept: "text/html" }),
          api("/v1/model?format=markdown", { accept: "text/markdown" }),
        ]);
        state.card = { key: cacheKey, html: String(html), markdown: String(markdown) };
      } catch (err) {
        body.replaceChildren(h("p", { class: "alert alert-error" }, err.message));
        if (err.status === 401) {
          dialog.close();
          clearKey();
          askForKey(err.message);
        }
        return;
      }
    }
    body.replaceChildren(cardNodes(state.card.html));
    const download = $("card-download");
    if (download.dataset.url) URL.revokeObjectURL(download.dataset.url);
    const url = URL.createObjectURL(new Blob([state.card.markdown], { type: "text/markdown" }));
    download.href = url;
    download.dataset.url = url;
    download.download = `${cacheKey.replace(/[^A-Za-z0-9_.-]+/g, "-") || "model"}-model-card.md`;
    show(download, true);
    if (!dialog.open) dialog.showModal();
    body.scrollTop = 0;
    $("card-close").focus();
  }

  // The service renders the card as an escaped HTML fragment. It is parsed inert (DOMParser
  // runs nothing) and rebuilt from the elements and attributes a card uses; anything else
  // keeps only its text, and scripts, styles and embedded content are dropped.
  const CARD_ELEMENTS = new Set([
    "article", "section", "h2", "h3", "p", "ul", "li", "strong", "em", "code", "blockquote",
    "div", "table", "thead", "tbody", "tr", "th", "td",
  ]);
  const CARD_ATTRIBUTES = new Set(["class", "scope", "tabindex"]);
  const CARD_DROPPED = new Set(["script", "style", "template", "iframe", "object", "embed", "svg", "math"]);

  function cardNodes(html) {
    const parsed = new DOMParser().parseFromString(html, "text/html");
    const out = document.createDocumentFragment();
    out.append(...[...parsed.body.childNodes].flatMap(cardNode));
    return out;
  }

  function cardNode(node) {
    if (node.nodeType === Node.TEXT_NODE) return [document.createTextNode(node.data)];
    if (node.nodeType !== Node.ELEMENT_NODE) return [];
    const tag = node.localName;
    if (CARD_DROPPED.has(tag)) return [];
    const children = [...node.childNodes].flatMap(cardNode);
    if (!CARD_ELEMENTS.has(tag)) return children;
    const copy = document.createElement(tag);
    for (const { name, value } of node.attributes) {
      if (CARD_ATTRIBUTES.has(name)) copy.setAttribute(name, value);
    }
    copy.append(...children);
    return [copy];
  }

  // ----------------------------------------------------------------------- start

  function start() {
    $("key-form").addEventListener("submit", onKeySubmit);
    $("patient-form").addEventListener("submit", onSubmit);
    $("patient-form").addEventListener("input", () => markStale(true));
    $("patient-form").addEventListener("change", () => markStale(true));
    $("clear").addEventListener("click", onClear);
    $("paste-fill").addEventListener("click", onPaste);
    $("change-key").addEventListener("click", () => {
      clearKey();
      askForKey("");
    });
    const dialog = $("card-dialog");
    $("card-close").addEventListener("click", () => dialog.close());
    dialog.addEventListener("close", () => {
      if (dialog.returnFocusTo) dialog.returnFocusTo.focus();
    });
    dialog.addEventListener("click", (event) => {
      if (event.target === dialog) dialog.close();
    });

    let frame = 0;
    let lastWidth = 0;
    new ResizeObserver((entries) => {
      const width = Math.round(entries[0].contentRect.width);
      if (width === lastWidth) return;
      lastWidth = width;
      cancelAnimationFrame(frame);
      frame = requestAnimationFrame(drawCharts);
    }).observe($("result-panel"));

    loadReadiness();
    if (currentKey()) loadSchema();
    else askForKey("");
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
