// Live updates without a build step: every few seconds, fetch this page again and swap in the
// fresh `#live` section. Without JavaScript the pages are complete; they just do not move.
(function () {
  const live = document.getElementById("live");
  const state = document.getElementById("live-state");
  if (!live || !live.dataset.refresh) { if (state) state.textContent = "static"; return; }
  const every = Number(live.dataset.refresh) || 2000;
  async function refresh() {
    if (document.hidden) return;
    try {
      const response = await fetch(location.href, { credentials: "same-origin", headers: { "X-Tenure-Live": "1" } });
      if (!response.ok) { if (state) state.textContent = "offline (" + response.status + ")"; return; }
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const fresh = page.getElementById("live");
      if (fresh) live.innerHTML = fresh.innerHTML;
      const badge = page.getElementById("leader-badge"), current = document.getElementById("leader-badge");
      if (badge && current) { current.className = badge.className; current.textContent = badge.textContent; }
      if (state) state.textContent = "live · updated " + new Date().toLocaleTimeString();
      if (fresh && !fresh.dataset.refresh) clearInterval(timer);
    } catch (error) {
      if (state) state.textContent = "offline";
    }
  }
  const timer = setInterval(refresh, every);
})();
