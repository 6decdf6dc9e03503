// weft console: the only script. The console works without it; with it,
// a page of running work refreshes in place and "select all" works.
(function () {
  "use strict";
  document.addEventListener("change", function (event) {
    var all = event.target.getAttribute && event.target.getAttribute("data-select-all");
    if (!all) return;
    var form = event.target.form;
    if (!form) return;
    form.querySelectorAll('input[type=checkbox][name="' + all + '"]').forEach(function (box) {
      box.checked = event.target.checked;
    });
  });
  var main = document.getElementById("main");
  if (!main || !main.dataset.live) return;
  var every = Math.max(1000, parseInt(main.dataset.live, 10) || 3000);
  function busy() {
    var active = document.activeElement;
    if (active && active !== document.body && main.contains(active) && active.tagName !== "A") return true;
    return main.querySelector("input[type=checkbox]:checked") !== null;
  }
  function refresh() {
    if (document.hidden || busy()) { setTimeout(refresh, every); return; }
    fetch(location.href, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (response) { return response.ok ? response.text() : null; })
      .then(function (text) {
        if (!text) return;
        var fresh = new DOMParser().parseFromString(text, "text/html").getElementById("main");
        if (!fresh) return;
        main.innerHTML = fresh.innerHTML;
        if (!fresh.dataset.live) { delete main.dataset.live; return; }
        setTimeout(refresh, every);
      })
      .catch(function () { setTimeout(refresh, every * 2); });
  }
  setTimeout(refresh, every);
})();
