// OpenDeploy dashboard: live deployment grid, logs in place, confirmations. Plain JS.
(function () {
  "use strict";

  var HEADERS = { "X-Requested-With": "opendeploy-dashboard" };
  var POLL_MS = 1000;
  var HIDDEN_POLL_MS = 5000;
  var LOG_POLL_MS = 1500;

  function signInAgain() {
    var here = window.location.pathname + window.location.search;
    window.location.assign("/ui/signin?next=" + encodeURIComponent(here));
  }

  function get(url) {
    return fetch(url, { headers: HEADERS, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (response.status === 401) {
          signInAgain();
          throw new Error("signed out");
        }
        return response.text().then(function (text) {
          if (!response.ok) throw new Error(text || "HTTP " + response.status);
          return text;
        });
      });
  }

  function fragment(html) {
    var template = document.createElement("template");
    template.innerHTML = html;
    return template.content;
  }

  function quote(value) {
    return window.CSS && CSS.escape ? CSS.escape(value) : value.replace(/["\\]/g, "\\$&");
  }

  var live = document.getElementById("live");
  var panel = document.getElementById("log-panel");
  var selected = null; // { target, event, status }
  var panelTimer = null;
  var failures = 0;

  function liveRoot() {
    return live ? live.querySelector(".live-root") : null;
  }

  function findCell(target, event) {
    if (!live) return null;
    return live.querySelector(
      'a.cell[data-target="' + quote(target) + '"][data-event="' + quote(event) + '"]'
    );
  }

  function markSelected() {
    if (!live) return;
    Array.prototype.forEach.call(live.querySelectorAll("a.cell.selected"), function (cell) {
      cell.classList.remove("selected");
    });
    if (selected) {
      var cell = findCell(selected.target, selected.event);
      if (cell) cell.classList.add("selected");
    }
  }

  // -- the live grid ---------------------------------------------------------------------

  function schedule(delay) {
    window.setTimeout(refresh, delay || (document.hidden ? HIDDEN_POLL_MS : POLL_MS));
  }

  function refresh() {
    get(live.dataset.src)
      .then(function (html) {
        failures = 0;
        live.classList.remove("stale");
        live.replaceChildren(fragment(html));
        markSelected();
        var root = liveRoot();
        if (root) document.title = document.title.replace(/^[^·]*·/, root.dataset.status + " ·");
        if (selected) {
          var cell = findCell(selected.target, selected.event);
          if (cell && cell.dataset.status !== selected.status) {
            selected.status = cell.dataset.status;
            loadEvent(false);
          }
        }
        if (root && root.dataset.active === "true") schedule();
      })
      .catch(function () {
        failures += 1;
        live.classList.add("stale");
        schedule(Math.min(15000, POLL_MS * Math.pow(2, failures)));
      });
  }

  if (live && liveRoot() && liveRoot().dataset.active === "true") {
    document.title = liveRoot().dataset.status + " · " + document.title;
    schedule();
  }

  // -- the log panel ---------------------------------------------------------------------

  function eventUrl() {
    return (
      panel.dataset.src +
      "?target=" + encodeURIComponent(selected.target) +
      "&event=" + encodeURIComponent(selected.event)
    );
  }

  function loadEvent(reveal) {
    if (!panel || !selected) return;
    window.clearTimeout(panelTimer);
    var wanted = selected;
    get(eventUrl())
      .then(function (html) {
        if (selected !== wanted) return;
        var old = panel.querySelector("pre.log");
        var atBottom = !old || old.scrollTop + old.clientHeight >= old.scrollHeight - 8;
        var oldTop = old ? old.scrollTop : 0;
        panel.replaceChildren(fragment(html));
        panel.hidden = false;
        var log = panel.querySelector("pre.log");
        if (log) log.scrollTop = reveal || atBottom ? log.scrollHeight : oldTop;
        if (reveal) panel.scrollIntoView({ behavior: "smooth", block: "start" });
        var root = panel.querySelector(".event-detail");
        if (root && root.dataset.live === "true") {
          panelTimer = window.setTimeout(function () { loadEvent(false); }, LOG_POLL_MS);
        }
      })
      .catch(function (error) {
        if (error.message === "signed out") return;
        panel.hidden = false;
        panel.replaceChildren();
        var message = document.createElement("p");
        message.className = "alert";
        message.textContent = "Cannot load this log: " + error.message;
        panel.appendChild(message);
      });
  }

  function select(target, event, status) {
    selected = { target: target, event: event, status: status };
    markSelected();
    var query = "?target=" + encodeURIComponent(target) + "&event=" + encodeURIComponent(event);
    window.history.replaceState(null, "", window.location.pathname + query);
    loadEvent(true);
  }

  function closePanel() {
    window.clearTimeout(panelTimer);
    selected = null;
    panel.hidden = true;
    panel.replaceChildren();
    markSelected();
    window.history.replaceState(null, "", window.location.pathname);
  }

  document.addEventListener("click", function (event) {
    if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) {
      return;
    }
    if (!panel) return;
    var link = event.target.closest("a[data-log]");
    if (link) {
      event.preventDefault();
      select(link.dataset.target, link.dataset.event, link.dataset.status || "");
      return;
    }
    if (event.target.closest("[data-close-panel]")) {
      event.preventDefault();
      closePanel();
    }
  });

  document.addEventListener("keydown", function (event) {
    if (event.key === "Escape" && panel && !panel.hidden) closePanel();
  });

  if (panel && panel.dataset.selectedTarget && panel.dataset.selectedEvent) {
    var initial = findCell(panel.dataset.selectedTarget, panel.dataset.selectedEvent);
    select(
      panel.dataset.selectedTarget,
      panel.dataset.selectedEvent,
      initial ? initial.dataset.status : ""
    );
  }

  // -- forms -----------------------------------------------------------------------------

  document.addEventListener("submit", function (event) {
    var form = event.target;
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) {
      event.preventDefault();
      return;
    }
    var button = form.querySelector("button[type=submit]");
    if (button && form.method.toLowerCase() === "post") {
      window.setTimeout(function () { button.disabled = true; }, 0);
    }
  });
})();
