// The page to try an edit: a client of the public API only (docs/usage.md#the-try-page).
// Sign-in: Supabase Auth's password grant (POST {auth}/token?grant_type=password), or a pasted token.
// Edits: POST /v1/edits (multipart, Idempotency-Key), POST /v1/edits/{id}/stream-token then
// EventSource(events_url), DELETE /v1/edits/{id}, GET /v1/edits (paged by its Link header).
"use strict";

(() => {
  const config = JSON.parse(document.getElementById("config").textContent);
  const api = new URL(config.api.replace(/\/?$/, "/"), window.location.href);
  const limits = config.limits;
  const TERMINAL = new Set(["succeeded", "failed", "canceled"]);
  const STATUS_WORDS = {
    awaiting_image: "Waiting for the image",
    queued: "Queued",
    processing: "Processing",
    succeeded: "Done",
    failed: "Failed",
    canceled: "Canceled",
  };
  const SESSION_KEY = "qwen-edit-processor:try-session";
  const STREAM_RETRIES = 30;

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = Object.assign(document.createElement(tag), props);
    node.append(...children);
    return node;
  };

  // --- Session -------------------------------------------------------------------------------------

  let session = null; // {access_token, expires_at, name}

  function claimsOf(token) {
    // Read, not verified: only to show who is signed in and when the token ends (the API verifies).
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part.padEnd(part.length + ((4 - (part.length % 4)) % 4), "=")));
    } catch {
      return {};
    }
  }

  function loadSession() {
    try {
      const saved = JSON.parse(window.sessionStorage.getItem(SESSION_KEY));
      if (saved && saved.access_token && (!saved.expires_at || saved.expires_at * 1000 > Date.now())) {
        return saved;
      }
    } catch {
      // a damaged entry: sign in again
    }
    return null;
  }

  function saveSession(value) {
    session = value;
    if (value) window.sessionStorage.setItem(SESSION_KEY, JSON.stringify(value));
    else window.sessionStorage.removeItem(SESSION_KEY);
  }

  async function signInWithPassword(email, password) {
    const url = `${config.auth.url.replace(/\/$/, "")}/token?grant_type=password`;
    const response = await fetch(url, {
      method: "POST",
      headers: {
        apikey: config.auth.anon_key,
        "content-type": "application/json",
        // Errors as {code, message}, as supabase-js asks for them.
        "x-supabase-api-version": "2024-01-01",
      },
      body: JSON.stringify({ email, password }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok || !body.access_token) {
      throw new Error(body.message || body.msg || body.error_description || `Auth answered ${response.status}`);
    }
    return {
      access_token: body.access_token,
      expires_at: body.expires_at || claimsOf(body.access_token).exp,
      name: (body.user && body.user.email) || email,
    };
  }

  function showSignedIn() {
    $("sign-in").hidden = true;
    $("workspace").hidden = false;
    $("who").hidden = false;
    $("who-name").textContent = session.name;
    loadRecent();
  }

  function showSignIn(message) {
    stopFollowing();
    $("workspace").hidden = true;
    $("who").hidden = true;
    $("sign-in").hidden = false;
    $("sign-in-error").textContent = message || "";
    if (!config.auth) {
      $("password-form").hidden = true;
      $("token-sign-in").open = true;
    } else if (config.dev_user && !$("email").value) {
      $("email").value = config.dev_user.email;
      $("password").value = config.dev_user.password;
      $("dev-user-hint").hidden = false;
    }
  }

  function signOut(message) {
    saveSession(null);
    showSignIn(message);
  }

  $("password-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = $("sign-in-button");
    button.disabled = true;
    $("sign-in-error").textContent = "";
    try {
      saveSession(await signInWithPassword($("email").value.trim(), $("password").value));
      showSignedIn();
    } catch (error) {
      $("sign-in-error").textContent = `Could not sign in: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  });

  $("token-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const token = $("access-token").value.trim();
    const claims = claimsOf(token);
    saveSession({ access_token: token, expires_at: claims.exp, name: claims.email || claims.sub || "a user" });
    try {
      await call("GET", "edits?limit=1"); // the API says whether the token is good
      $("access-token").value = "";
      showSignedIn();
    } catch (error) {
      signOut(`That token does not work here: ${error.message}`);
    }
  });

  $("sign-out").addEventListener("click", () => signOut("Signed out."));

  // --- The API -------------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  async function call(method, path, { body, headers = {} } = {}) {
    const response = await fetch(new URL(path, api), {
      method,
      body,
      headers: { ...headers, Authorization: `Bearer ${session.access_token}` },
    });
    const data = await response.json().catch(() => null);
    if (response.status === 401) {
      signOut("Your session has ended: sign in again.");
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      const wait = response.headers.get("Retry-After");
      const message = (error.message || response.statusText) + (wait ? ` (try again in ${wait} s)` : "");
      throw new ApiError(response.status, error.code || `http_${response.status}`, message);
    }
    return { data, response };
  }

  function describe(error) {
    return error.code ? `${error.message} (${error.code})` : error.message;
  }

  function newKey() {
    if (window.crypto.randomUUID) return window.crypto.randomUUID();
    const bytes = window.crypto.getRandomValues(new Uint8Array(16));
    return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  // --- The form ------------------------------------------------------------------------------------

  let picked = []; // [{file, url}]

  function fillForm() {
    const speed = $("speed");
    speed.append(el("option", { value: "", textContent: `Default (${config.default_speed})` }));
    for (const name of config.speeds) speed.append(el("option", { value: name, textContent: name }));
    const format = $("output-format");
    format.append(el("option", { value: "", textContent: `Default (${config.default_format})` }));
    for (const name of config.formats) format.append(el("option", { value: name, textContent: name }));
    for (const id of ["width", "height"]) {
      Object.assign($(id), { min: limits.min_side, max: limits.max_side, step: limits.side_multiple });
    }
    Object.assign($("steps"), { min: limits.min_steps, max: limits.max_steps });
    $("prompt").maxLength = limits.max_prompt_chars;
    const megabytes = Math.floor(limits.max_image_bytes / (1024 * 1024));
    $("image-hint").textContent =
      `PNG, JPEG or WebP, up to ${limits.max_images} images of at most ${megabytes} MB each. ` +
      "No image: the prompt creates a new picture.";
    $("size-hint").textContent =
      `Both or neither, multiples of ${limits.side_multiple} from ${limits.min_side} to ${limits.max_side}, ` +
      `at most ${(limits.max_pixels / 1e6).toFixed(1)} megapixels. Neither: the first image's size ` +
      "(1024 × 1024 for a creation).";
  }

  function pick(files) {
    const problems = [];
    const chosen = [];
    for (const file of files) {
      if (!["image/png", "image/jpeg", "image/webp"].includes(file.type)) {
        problems.push(`${file.name} is not a PNG, JPEG or WebP image`);
      } else if (file.size > limits.max_image_bytes) {
        problems.push(`${file.name} is larger than the limit`);
      } else {
        chosen.push(file);
      }
    }
    if (chosen.length > limits.max_images) {
      problems.push(`at most ${limits.max_images} images: the first ${limits.max_images} are kept`);
      chosen.length = limits.max_images;
    }
    for (const item of picked) URL.revokeObjectURL(item.url);
    picked = chosen.map((file) => ({ file, url: URL.createObjectURL(file) }));
    const list = $("picked");
    list.replaceChildren(
      ...picked.map((item) =>
        el("li", {}, el("img", { src: item.url, alt: item.file.name }), el("span", { textContent: item.file.name })),
      ),
    );
    $("clear-images").hidden = picked.length === 0;
    $("form-error").textContent = problems.join("; ");
  }

  $("image").addEventListener("change", () => pick(Array.from($("image").files)));
  $("clear-images").addEventListener("click", () => {
    $("image").value = "";
    pick([]);
  });

  const zone = $("drop-zone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    $("image").value = "";
    pick(Array.from(event.dataTransfer.files));
  });

  function formBody() {
    const body = new FormData();
    body.append("prompt", $("prompt").value);
    for (const item of picked) body.append("image", item.file, item.file.name);
    const fields = [
      ["speed", $("speed").value],
      ["output_format", $("output-format").value],
      ["width", $("width").value],
      ["height", $("height").value],
      ["num_inference_steps", $("steps").value],
      ["seed", $("seed").value],
    ];
    for (const [name, value] of fields) if (value !== "") body.append(name, value); // empty: the default
    return body;
  }

  $("edit-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const error = $("form-error");
    error.textContent = "";
    if (($("width").value === "") !== ($("height").value === "")) {
      error.textContent = "Give both the width and the height, or neither.";
      return;
    }
    const button = $("submit");
    button.disabled = true;
    // One key per submission: a retry after a lost answer gets the same request back, never a second.
    const key = newKey();
    const before = picked.length ? picked[0].url : null;
    const prompt = $("prompt").value;
    try {
      let accepted;
      for (let attempt = 1; ; attempt++) {
        try {
          accepted = (await call("POST", "edits", { body: formBody(), headers: { "Idempotency-Key": key } })).data;
          break;
        } catch (failure) {
          const retry = failure instanceof TypeError || (failure.status === 503 && attempt < 3);
          if (!retry || attempt >= 3) throw failure;
        }
      }
      follow(accepted.id, { before, prompt });
    } catch (failure) {
      if (session) error.textContent = `Not submitted: ${describe(failure)}`;
    } finally {
      button.disabled = false;
    }
  });

  // --- Following one edit --------------------------------------------------------------------------

  let current = null; // {id, before, prompt, source, finished, retries, lastLine, previewStep}

  function log(state, line) {
    if (state !== current || line === state.lastLine) return;
    state.lastLine = line;
    const time = new Date().toLocaleTimeString();
    $("events").append(el("li", { textContent: `${time} ${line}` }));
  }

  function stopFollowing() {
    if (current && current.source) current.source.close();
    current = null;
  }

  function follow(id, { before = null, prompt = "", view = null } = {}) {
    stopFollowing();
    const state = { id, before, prompt, source: null, finished: false, retries: 0, lastLine: "", previewStep: null };
    current = state;
    $("current").hidden = false;
    $("current-id").textContent = id;
    $("current-error").textContent = "";
    $("events").replaceChildren();
    $("progress").value = 0;
    $("preview-figure").hidden = true;
    $("result").hidden = true;
    $("download").hidden = true;
    $("cancel").disabled = false;
    $("cancel").hidden = false;
    log(state, view ? `showing ${id}` : `submitted ${id}`);
    setStatus(state, view || { status: "queued", progress: 0 });
    $("current").scrollIntoView({ block: "nearest" });
    if (view && TERMINAL.has(view.status)) {
      finish(state, view);
    } else {
      openStream(state);
    }
  }

  function setStatus(state, row) {
    const word = STATUS_WORDS[row.status] || row.status;
    const percent = Math.round((row.progress || 0) * 100);
    const text = row.status === "processing" ? `${word}: ${percent}%` : word;
    $("current-status").textContent = text;
    $("progress").value = row.progress || 0;
    log(state, row.status === "processing" ? `processing ${percent}%` : row.status);
  }

  async function openStream(state) {
    if (state !== current || state.finished) return;
    try {
      const { data } = await call("POST", `edits/${state.id}/stream-token`);
      if (state !== current || state.finished) return;
      const source = new EventSource(data.events_url);
      state.source = source;
      source.addEventListener("progress", (event) => onProgress(state, JSON.parse(event.data)));
      source.addEventListener("done", (event) => {
        source.close();
        finish(state, JSON.parse(event.data));
      });
      source.addEventListener("error", () => {
        // The stream ended or failed (its token is single-use in spirit and short-lived): check, then reopen.
        source.close();
        if (state === current && !state.finished) retry(state);
      });
    } catch (error) {
      if (state !== current || !session) return;
      if (error.status === 404) {
        $("current-error").textContent = describe(error);
        return;
      }
      retry(state);
    }
  }

  function retry(state) {
    state.retries += 1;
    if (state.retries > STREAM_RETRIES) {
      $("current-error").textContent = "Lost the event stream; Refresh the list below to see how it ended.";
      return;
    }
    window.setTimeout(async () => {
      if (state !== current || state.finished) return;
      try {
        const { data } = await call("GET", `edits/${state.id}`);
        if (TERMINAL.has(data.status)) finish(state, data);
        else openStream(state);
      } catch {
        if (session) retry(state);
      }
    }, Math.min(500 * state.retries, 5000));
  }

  function onProgress(state, row) {
    if (state !== current || state.finished) return;
    setStatus(state, row);
    if (row.preview_url && row.preview_step !== state.previewStep) {
      state.previewStep = row.preview_step;
      $("preview").src = row.preview_url;
      $("preview-caption").textContent = `Live preview at step ${row.preview_step}`;
      $("preview-figure").hidden = false;
      log(state, `preview at step ${row.preview_step}`);
    }
  }

  function finish(state, row) {
    if (state !== current || state.finished) return;
    state.finished = true;
    if (state.source) state.source.close();
    $("cancel").disabled = true;
    $("cancel").hidden = true;
    setStatus(state, row);
    $("preview-figure").hidden = true;
    if (row.status === "succeeded" && row.output_url) {
      $("progress").value = 1;
      $("after").src = row.output_url;
      $("after").alt = state.prompt ? `The result of: ${state.prompt}` : "The result of the edit";
      $("before-figure").hidden = !state.before;
      if (state.before) $("before").src = state.before;
      $("result").hidden = false;
      // Storage's ?download= makes it an attachment, named after the object ({id}.png/.webp/.jpg).
      const link = new URL(row.output_url);
      link.searchParams.set("download", "");
      Object.assign($("download"), { href: link.href, hidden: false });
    } else if (row.status === "failed") {
      $("current-error").textContent = `The edit failed: ${row.error || "no reason given"}` +
        (row.error_code ? ` (${row.error_code})` : "");
    }
    loadRecent();
  }

  $("cancel").addEventListener("click", async () => {
    const state = current;
    if (!state || state.finished) return;
    const button = $("cancel");
    button.disabled = true;
    log(state, "cancel asked");
    try {
      const { data } = await call("DELETE", `edits/${state.id}`);
      if (TERMINAL.has(data.status)) finish(state, data);
    } catch (error) {
      if (error.status === 409) return; // it finished first: the stream says how
      button.disabled = false;
      if (session) $("current-error").textContent = `Could not cancel: ${describe(error)}`;
    }
  });

  // --- Recent edits --------------------------------------------------------------------------------

  let next = null;

  function recentItem(view) {
    const item = el("li", { className: "recent-item" });
    item.dataset.id = view.id;
    item.dataset.status = view.status;
    if (view.status === "succeeded" && view.output_url) {
      item.append(el("img", { src: view.output_url, alt: `Result of: ${view.prompt}`, loading: "lazy" }));
    } else {
      item.append(el("div", { className: `badge ${view.status}`, textContent: STATUS_WORDS[view.status] || view.status }));
    }
    const when = new Date(view.created_at).toLocaleString();
    item.append(
      el("p", { className: "prompt", textContent: view.prompt }),
      el("p", { className: "hint", textContent: `${STATUS_WORDS[view.status] || view.status} · ${when}` }),
      el("button", {
        type: "button",
        className: "secondary",
        textContent: TERMINAL.has(view.status) ? "Show" : "Follow",
        onclick: () => follow(view.id, { prompt: view.prompt, view }),
      }),
    );
    return item;
  }

  async function loadRecent(more = false) {
    if (!session) return;
    $("recent-error").textContent = "";
    try {
      const { data, response } = await call("GET", more && next ? next : `edits?limit=${limits.list_limit}`);
      const items = data.map(recentItem);
      if (more) $("recent-list").append(...items);
      else $("recent-list").replaceChildren(...items);
      if (!items.length && !more) {
        $("recent-list").append(el("li", { className: "hint", textContent: "No edits yet." }));
      }
      const link = /<([^>]+)>;\s*rel="next"/.exec(response.headers.get("Link") || "");
      next = link ? link[1] : null;
      $("more").hidden = !next;
    } catch (error) {
      if (session) $("recent-error").textContent = `Could not list your edits: ${describe(error)}`;
    }
  }

  $("refresh").addEventListener("click", () => loadRecent());
  $("more").addEventListener("click", () => loadRecent(true));

  // --- Start ---------------------------------------------------------------------------------------

  fillForm();
  session = loadSession();
  if (session) showSignedIn();
  else showSignIn();
})();
