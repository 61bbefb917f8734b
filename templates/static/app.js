// airut dashboard: live updates, replay slider, stop button.
// Hand-written, no build step, no inline scripts (the CSP forbids them).
(function () {
  "use strict";

  var body = document.body;
  var status = document.getElementById("live-status");

  function setStatus(text, cls) {
    if (!status) return;
    status.textContent = text;
    status.className = "live " + (cls || "");
  }

  // Fetch this page's live region again and swap it in.
  var pending = null;
  var inflight = false;
  function refresh() {
    if (inflight) { schedule(); return; }
    var live = document.getElementById("live");
    if (!live) return;
    inflight = true;
    fetch(location.href, { headers: { "X-Airut-Fragment": "1" }, credentials: "same-origin" })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        inflight = false;
        if (html === null) return;
        var focused = document.activeElement && document.activeElement.id;
        var keepOpen = [];
        live.querySelectorAll("details[open]").forEach(function (d, i) { keepOpen.push(i); });
        live.innerHTML = html;
        var all = live.querySelectorAll("details");
        keepOpen.forEach(function (i) { if (all[i]) all[i].open = true; });
        if (focused) { var el = document.getElementById(focused); if (el) el.focus(); }
        wire();
        body.setAttribute("data-refreshed", String(Date.now()));
      })
      .catch(function () { inflight = false; });
  }
  function schedule() {
    if (pending) return;
    pending = setTimeout(function () { pending = null; refresh(); }, 250);
  }

  // Live stream: any event that can change what this page shows.
  var streamUrl = body.getAttribute("data-stream");
  if (streamUrl && window.EventSource) {
    var es = new EventSource(streamUrl);
    es.onopen = function () { setStatus("live", "on"); };
    es.onerror = function () { setStatus("reconnecting", "off"); };
    es.onmessage = function (m) {
      var ev;
      try { ev = JSON.parse(m.data); } catch (e) { return; }
      body.setAttribute("data-last-seq", String(ev.seq));
      if (/^(task|container|reply|repo|channel|server|config|conversation|network)\./.test(ev.type)) {
        if (ev.type === "container.output" && !document.querySelector(".action-group, .task-detail, .task-card")) return;
        schedule();
      }
    };
    // Browsers allow few connections per host: never keep a stream open
    // for a page that is hidden in the back-forward cache.
    window.addEventListener("pagehide", function () { es.close(); });
    window.addEventListener("pageshow", function (e) { if (e.persisted) location.reload(); });
  }

  function wire() {
    // Replay slider: jump to a position.
    var slider = document.getElementById("replay-slider");
    if (slider && !slider.dataset.wired) {
      slider.dataset.wired = "1";
      slider.addEventListener("change", function () {
        var url = new URL(location.href);
        url.searchParams.delete("at");
        url.searchParams.set("v", slider.value);
        location.href = url.toString();
      });
    }
    // Stop button: POST in the background, show the answer in place.
    document.querySelectorAll("form.stop-form").forEach(function (form) {
      if (form.dataset.wired) return;
      form.dataset.wired = "1";
      form.addEventListener("submit", function (e) {
        e.preventDefault();
        var out = document.getElementById("stop-result");
        var btn = form.querySelector("button");
        if (btn) btn.disabled = true;
        fetch(form.action, {
          method: "POST",
          credentials: "same-origin",
          headers: { "X-Airut-Fragment": "1", "Content-Type": "application/x-www-form-urlencoded" },
          body: new URLSearchParams(new FormData(form)).toString()
        }).then(function (r) { return r.text(); })
          .then(function (html) { if (out) out.innerHTML = html; })
          .catch(function (err) { if (out) out.textContent = "Stop failed: " + err; if (btn) btn.disabled = false; });
      });
    });
  }
  wire();
})();
