// taskutils console: an opt-in auto-refresh. Every page works without this script.
(function () {
  "use strict";
  var marker = document.querySelector("[data-refresh]");
  if (!marker) return;
  var seconds = Number(marker.getAttribute("data-refresh")) || 2;
  var key = "taskutils.console.refresh";
  var label = document.createElement("label");
  var box = document.createElement("input");
  box.type = "checkbox";
  box.id = "auto-refresh";
  box.checked = window.localStorage.getItem(key) === "on";
  label.appendChild(box);
  label.appendChild(document.createTextNode(" Auto-refresh"));
  document.querySelector("header").appendChild(label);
  box.addEventListener("change", function () {
    window.localStorage.setItem(key, box.checked ? "on" : "off");
  });
  function refresh() {
    if (!box.checked || document.hidden) return;
    fetch(window.location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html").querySelector("main");
        var main = document.querySelector("main");
        if (fresh && main) main.innerHTML = fresh.innerHTML;
      })
      .catch(function () {});
  }
  window.setInterval(refresh, seconds * 1000);
})();
