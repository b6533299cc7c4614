// Herald: refresh a live region of a page without reloading it.
// <div data-live-url="/jobs/live/" data-live-every="5"> is re-fetched every
// N seconds and its content replaced, unless the tab is hidden or someone
// is typing in one of its forms.
(function () {
  "use strict";

  function busy(region) {
    var active = document.activeElement;
    return active && region.contains(active) && /^(INPUT|SELECT|TEXTAREA)$/.test(active.tagName);
  }

  function watch(region) {
    var url = region.getAttribute("data-live-url");
    var every = Math.max(parseInt(region.getAttribute("data-live-every"), 10) || 5, 2) * 1000;
    var inFlight = false;

    function refresh() {
      if (inFlight || document.hidden || busy(region)) return;
      inFlight = true;
      fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
        .then(function (response) {
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          if (!busy(region)) {
            region.innerHTML = html;
            region.removeAttribute("data-live-stale");
          }
        })
        .catch(function () {
          region.setAttribute("data-live-stale", "true");
        })
        .finally(function () {
          inFlight = false;
        });
    }

    setInterval(refresh, every);
    document.addEventListener("visibilitychange", function () {
      if (!document.hidden) refresh();
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live-url]").forEach(watch);
  });
})();
