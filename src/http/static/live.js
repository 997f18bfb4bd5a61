// Live updates without a framework or a build step. Every few seconds this page is fetched again
// and its `#live` region patched in place: a node whose text or attributes are unchanged is not
// touched, rows and strip cells are matched by their `data-key`, so the scroll position, a text
// selection and the focused element survive. A scroll box marked `data-follow` (a run's output)
// follows its end while the reader is at its bottom and stays put when they scrolled up.
// Also: forms marked `data-confirm` ask first (a <dialog>); a strip of outcomes is one tab stop
// whose cells the arrow keys move between; a one-shot `?done=` notice leaves the address, so a
// reload does not bring it back. Without JavaScript the pages are complete; they just do not move.
(function () {
  "use strict";
  const state = document.getElementById("live-state");
  const say = (text) => { if (state) state.textContent = text; };
  const two = (n) => String(n).padStart(2, "0");
  const clock = (d) => two(d.getUTCHours()) + ":" + two(d.getUTCMinutes()) + ":" + two(d.getUTCSeconds()) + " UTC";

  // A notice said once: drop `done` from the address (the page keeps showing it until reload).
  const address = new URL(location.href);
  if (address.searchParams.has("done")) {
    address.searchParams.delete("done");
    history.replaceState(history.state, "", address.pathname + address.search + address.hash);
  }

  // --- patching -------------------------------------------------------------------------------
  const keyOf = (node) => node.nodeType === 1 ? (node.getAttribute("data-key") || node.id || null) : null;
  const sameKind = (a, b) => a.nodeType === b.nodeType && a.nodeName === b.nodeName;
  // Attributes the reader changes, never the server: an open <details>, a strip's roving stop.
  const kept = (element, name) => (name === "open" && element.nodeName === "DETAILS") ||
    (name === "tabindex" && element.classList.contains("cell"));

  function patch(from, to) {
    if (from.nodeType === 3 || from.nodeType === 8) {
      if (from.nodeValue !== to.nodeValue) from.nodeValue = to.nodeValue;
      return;
    }
    if (from.nodeType !== 1) return;
    for (const attribute of Array.from(from.attributes)) {
      if (!to.hasAttribute(attribute.name) && !kept(from, attribute.name)) from.removeAttribute(attribute.name);
    }
    for (const attribute of Array.from(to.attributes)) {
      if (from.getAttribute(attribute.name) !== attribute.value && !kept(from, attribute.name)) {
        from.setAttribute(attribute.name, attribute.value);
      }
    }
    patchChildren(from, to);
  }

  function patchChildren(from, to) {
    const old = Array.from(from.childNodes);
    const byKey = new Map();
    for (const node of old) { const key = keyOf(node); if (key !== null) byKey.set(key, node); }
    const unkeyed = old.filter((node) => keyOf(node) === null);
    const matched = new Set();
    let cursor = 0;
    // Pair each new child with an old one: by key, else the next unkeyed old node of its kind.
    const pairs = Array.from(to.childNodes).map((next) => {
      const key = keyOf(next);
      let match = null;
      if (key !== null) {
        const candidate = byKey.get(key);
        if (candidate && !matched.has(candidate) && sameKind(candidate, next)) match = candidate;
      } else {
        for (let i = cursor; i < unkeyed.length; i++) {
          if (sameKind(unkeyed[i], next)) { match = unkeyed[i]; cursor = i + 1; break; }
        }
      }
      if (match) matched.add(match);
      return [match, next];
    });
    // Remove what is gone first, so what stays is already in order and is not moved.
    for (const node of old) if (!matched.has(node)) from.removeChild(node);
    let position = from.firstChild;
    for (const [match, next] of pairs) {
      if (match) {
        if (match !== position) from.insertBefore(match, position); else position = position.nextSibling;
        patch(match, next);
      } else {
        from.insertBefore(document.importNode(next, true), position);
      }
    }
  }

  // An element's address by keys: its own `data-key` or id and its keyed ancestors'.
  function keyPath(element) {
    const keys = [];
    for (let node = element; node && node !== document.body; node = node.parentElement) {
      const key = keyOf(node);
      if (key !== null) keys.unshift(key);
    }
    return keys.length ? keys : null;
  }
  function findPath(keys) {
    let scope = document;
    for (const key of keys) {
      const next = Array.from(scope.querySelectorAll("[data-key], [id]")).find((node) => keyOf(node) === key);
      if (!next) return null;
      scope = next;
    }
    return scope === document ? null : scope;
  }

  // --- the strip: one tab stop, arrow keys between its runs -------------------------------------
  function tidyStrips() {
    for (const strip of document.querySelectorAll(".strip")) {
      const cells = Array.from(strip.querySelectorAll("a.cell"));
      const current = cells.find((cell) => cell === document.activeElement) ||
        cells.find((cell) => cell.getAttribute("tabindex") === "0") || cells[cells.length - 1];
      for (const cell of cells) cell.setAttribute("tabindex", cell === current ? "0" : "-1");
    }
  }
  document.addEventListener("keydown", (event) => {
    const cell = event.target.closest && event.target.closest(".strip a.cell");
    if (!cell) return;
    const cells = Array.from(cell.parentElement.querySelectorAll("a.cell"));
    let index = cells.indexOf(cell);
    if (event.key === "ArrowLeft") index -= 1;
    else if (event.key === "ArrowRight") index += 1;
    else if (event.key === "Home") index = 0;
    else if (event.key === "End") index = cells.length - 1;
    else return;
    event.preventDefault();
    index = Math.max(0, Math.min(cells.length - 1, index));
    for (const other of cells) other.setAttribute("tabindex", "-1");
    cells[index].setAttribute("tabindex", "0");
    cells[index].focus();
  });

  // --- confirmation ----------------------------------------------------------------------------
  const dialog = document.getElementById("confirm");
  document.addEventListener("submit", (event) => {
    const form = event.target;
    if (!dialog || !form.dataset || !form.dataset.confirm) return;
    if (form.dataset.confirmed === "yes") { delete form.dataset.confirmed; return; }
    event.preventDefault();
    const submitter = event.submitter || null;
    document.getElementById("confirm-question").textContent = form.dataset.confirm;
    document.getElementById("confirm-yes").textContent =
      form.dataset.confirmLabel || (submitter && submitter.textContent) || "Confirm";
    dialog.returnValue = "";
    dialog.onclose = () => {
      if (dialog.returnValue !== "yes") { if (submitter) submitter.focus(); return; }
      form.dataset.confirmed = "yes";
      if (form.requestSubmit) form.requestSubmit(submitter); else form.submit();
    };
    dialog.showModal();
    document.getElementById("confirm-no").focus();
  });

  // --- the live refresh ------------------------------------------------------------------------
  const live = document.getElementById("live");
  tidyStrips();
  const followers = () => Array.from(document.querySelectorAll("[data-follow]"));
  for (const box of followers()) box.scrollTop = box.scrollHeight;
  if (!live || !live.dataset.refresh) { say(live ? "final" : "static"); return; }
  const every = Number(live.dataset.refresh) || 2000;
  let timer = null;
  let busy = false;

  async function refresh() {
    if (document.hidden || busy) return;
    busy = true;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", headers: { "X-Tenure-Live": "1" } });
      if (!response.ok) { say("offline (HTTP " + response.status + ") · retrying"); return; }
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      if (fresh) {
        const bottoms = followers().map((box) => [box.id, box.scrollTop + box.clientHeight >= box.scrollHeight - 8]);
        const focused = document.activeElement;
        const where = focused && focused !== document.body ? keyPath(focused) : null;
        const y = window.scrollY;
        patch(live, fresh);
        // A node moved among its siblings loses focus, a replaced one takes it along: give it
        // back to the node, or to the one now standing for it (same keys), where the reader was.
        if (where && focused !== document.activeElement) {
          const target = focused.isConnected ? focused : findPath(where);
          if (target) { target.focus({ preventScroll: true }); window.scrollTo(window.scrollX, y); }
        }
        tidyStrips();
        for (const [id, atBottom] of bottoms) {
          const box = document.getElementById(id);
          if (box && atBottom) box.scrollTop = box.scrollHeight;
        }
      }
      const badge = page.getElementById("leader-badge"), current = document.getElementById("leader-badge");
      if (badge && current) patch(current, badge);
      const now = clock(new Date());
      if (fresh && !fresh.dataset.refresh) {
        clearInterval(timer);
        say("final · updated " + now);
      } else {
        say("live · updated " + now);
      }
    } catch (error) {
      say("offline · retrying");
    } finally {
      busy = false;
    }
  }
  say("live");
  timer = setInterval(refresh, every);
})();
