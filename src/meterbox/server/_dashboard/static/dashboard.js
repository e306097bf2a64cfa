// Refreshes every element with a data-poll URL every 2 s (the seats panel).
// Shipped as a static file: the dashboard's Content-Security-Policy allows no inline script.
"use strict";
(function () {
  var PERIOD_MS = 2000;
  function poll(el) {
    var url = el.getAttribute("data-poll");
    fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (r.status === 401) {
          el.setAttribute("data-stale", "session");
          return null;
        }
        return r.ok ? r.text() : null;
      })
      .then(function (html) {
        // Replace only when something changed, so screen readers hear real changes only.
        if (html !== null && html !== el.getAttribute("data-last")) {
          el.setAttribute("data-last", html);
          el.innerHTML = html;
        }
      })
      .catch(function () { el.setAttribute("data-stale", "network"); })
      .then(function () { setTimeout(function () { poll(el); }, PERIOD_MS); });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var els = document.querySelectorAll("[data-poll]");
    for (var i = 0; i < els.length; i++) {
      (function (el) { setTimeout(function () { poll(el); }, PERIOD_MS); })(els[i]);
    }
  });
})();
