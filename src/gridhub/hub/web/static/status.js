// Refresh the status page's site list from the server every data-refresh seconds.
"use strict";
(function () {
  const box = document.getElementById("sites");
  if (!box) return;
  const seconds = Math.max(2, Number(box.dataset.refresh) || 10);
  async function refresh() {
    try {
      const response = await fetch(box.dataset.source, { credentials: "same-origin", cache: "no-store" });
      if (response.status === 401) {
        window.location.assign(box.dataset.source.replace(/status\/sites$/, "login"));
        return;
      }
      if (response.ok) {
        box.innerHTML = await response.text();  // server-rendered and escaped by the hub
        box.classList.remove("stale");
      } else {
        box.classList.add("stale");
      }
    } catch (error) {
      box.classList.add("stale");  // hub unreachable: keep the last view, marked stale
    }
    window.setTimeout(refresh, seconds * 1000);
  }
  window.setTimeout(refresh, seconds * 1000);
})();
