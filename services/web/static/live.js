// Live updates of Baton's event log: new events arrive as server-sent events from
// /events/live (with the page's filters) and are added at the top of the table. Rows are built
// with DOM calls and textContent only, so no text from an event is ever parsed as HTML.
"use strict";

(function () {
  const status = document.getElementById("live-status");
  const table = document.getElementById("events");
  if (!status || !table || !window.EventSource) {
    return;
  }
  const body = table.tBodies[0];
  const source = new EventSource(status.dataset.src);

  function cell(text) {
    const td = document.createElement("td");
    td.textContent = text || "";
    return td;
  }

  function row(event) {
    const tr = document.createElement("tr");
    tr.className = "event tone-" + event.tone + (event.failed ? " failed" : "");
    tr.dataset.sequence = String(event.sequence);
    tr.dataset.type = event.kind;
    const when = document.createElement("td");
    const time = document.createElement("time");
    time.dateTime = event.time;
    time.textContent = "just now";
    when.appendChild(time);
    tr.appendChild(when);
    tr.appendChild(cell(event.kind));
    tr.appendChild(cell(event.app));
    tr.appendChild(cell(event.environment));
    const release = document.createElement("td");
    if (event.release) {
      const link = document.createElement("a");
      link.href = "/releases/" + encodeURIComponent(event.release);
      link.textContent = event.release.slice(0, 8);
      release.appendChild(link);
    }
    tr.appendChild(release);
    tr.appendChild(cell(event.actor));
    tr.appendChild(cell(event.summary));
    return tr;
  }

  source.addEventListener("open", function () {
    status.textContent = "live";
    status.dataset.state = "live";
  });
  source.addEventListener("error", function () {
    status.textContent = "reconnecting";
    status.dataset.state = "reconnecting";
  });
  source.addEventListener("baton", function (message) {
    let event;
    try {
      event = JSON.parse(message.data);
    } catch (e) {
      return;
    }
    if (body.querySelector('tr[data-sequence="' + String(Number(event.sequence)) + '"]')) {
      return;
    }
    body.insertBefore(row(event), body.firstChild);
  });
})();
