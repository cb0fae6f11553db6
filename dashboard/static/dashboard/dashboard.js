// Smart Cron dashboard: small progressive enhancements (every page works without them).
(function () {
  "use strict";

  // Confirm destructive actions (kill, stop): <form data-confirm="...">.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form.getAttribute && form.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });

  // Elapsed time of running jobs, counted up every second: <td class="elapsed" data-started="epoch">.
  function tick() {
    var now = Date.now() / 1000;
    document.querySelectorAll("td.elapsed[data-started]").forEach(function (cell) {
      var seconds = Math.max(0, Math.round(now - Number(cell.getAttribute("data-started"))));
      var m = Math.floor(seconds / 60), s = seconds % 60;
      cell.textContent = m ? m + " min " + s + " s" : s + " s";
    });
  }
  tick();
  window.setInterval(tick, 1000);

  // Opt-in auto refresh (every 15 s), remembered per browser; never while typing a note.
  var box = document.getElementById("auto-refresh");
  if (box) {
    box.checked = window.localStorage.getItem("smartcron-refresh") === "1";
    box.addEventListener("change", function () {
      window.localStorage.setItem("smartcron-refresh", box.checked ? "1" : "0");
    });
    window.setInterval(function () {
      var typing = document.activeElement && document.activeElement.tagName === "INPUT" &&
        document.activeElement.value;
      if (box.checked && !typing) {
        window.location.reload();
      }
    }, 15000);
  }
})();
