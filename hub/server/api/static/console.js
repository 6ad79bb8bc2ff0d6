// Live updates for the server-rendered console: apply server-sent events (/console/events) to the page.
// Without JavaScript every page still works; reloading shows the same state.
(function () {
  "use strict";
  var live = document.getElementById("live");
  if (!live || !live.dataset.events || !window.EventSource) { return; }
  var source = new EventSource(live.dataset.events);
  source.addEventListener("device", function (message) {
    var event = JSON.parse(message.data);
    if (!event.device_id || !event.status || event.action === "verdict") { return; }
    document.querySelectorAll('[data-device="' + CSS.escape(event.device_id) + '"] [data-status]').forEach(function (badge) {
      badge.textContent = event.status;
      badge.className = "badge status-" + event.status;
    });
    var note = document.createElement("p");
    note.textContent = event.device_id + ": " + event.status + (event.reason ? " (" + event.reason + ")" : "");
    live.appendChild(note);
    while (live.children.length > 3) { live.removeChild(live.firstChild); }
  });
})();
