// taskutils console: times in the browser's zone, and an opt-in auto-refresh. Every page works without this script.
(function () {
  "use strict";
  // Each <time datetime="..."> shows UTC; add the same moment in the browser's own zone beside it.
  function localTimes(root) {
    var times = root.querySelectorAll("time[datetime]");
    for (var i = 0; i < times.length; i++) {
      var node = times[i];
      if (node.getAttribute("data-local")) continue;
      var moment = new Date(node.getAttribute("datetime"));
      if (isNaN(moment.getTime())) continue;
      var local = document.createElement("span");
      local.className = "local-time";
      local.textContent = " · " + moment.toLocaleString(undefined, { timeZoneName: "short" });
      node.setAttribute("data-local", "1");
      node.setAttribute("title", moment.toString());
      node.parentNode.insertBefore(local, node.nextSibling);
    }
  }
  localTimes(document);
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
        if (fresh && main) {
          main.innerHTML = fresh.innerHTML;
          localTimes(main);
        }
      })
      .catch(function () {});
  }
  window.setInterval(refresh, seconds * 1000);
})();
