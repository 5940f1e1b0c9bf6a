/*
 * Confab chat — the composer of a conversation page (chat/templates/chat/conversation.html).
 *
 *  - Enter sends, Shift+Enter is a new line.
 *  - Send POSTs the form with fetch; the answer is the reply as server-sent events
 *    (data: {"type": "delta", "text"} ... then {"type": "done", tokens, cost, status}),
 *    appended to the reply bubble as it arrives. A refusal (quota, rate, plan, model)
 *    comes back as an HTML fragment shown above the composer.
 *  - Stop aborts the fetch: the server sees the client go away and keeps the part
 *    produced as an interrupted, metered reply.
 *  - The header's forms (rename, tags, persona, archive) are htmx forms; a form error
 *    (400) is swapped in too, inside [data-chat-htmx].
 */
(function () {
  "use strict";

  document.addEventListener("htmx:beforeSwap", function (e) {
    var target = e.detail.target;
    if (e.detail.xhr.status === 400 && target && target.closest && target.closest("[data-chat-htmx]")) {
      e.detail.shouldSwap = true;
      e.detail.isError = false;
    }
  });

  var form = document.querySelector("form[data-chat-composer]");
  if (!form) return;
  var list = document.getElementById("messages");
  var textarea = form.querySelector("textarea");
  var sendButton = form.querySelector("[data-chat-send]");
  var stopButton = form.querySelector("[data-chat-stop]");
  var errorBox = document.getElementById("composer-error");
  var controller = null;
  var reply = null;

  function element(tag, className, text) {
    var el = document.createElement(tag);
    if (className) el.className = className;
    if (text) el.textContent = text;
    return el;
  }

  function bubble(role, text) {
    var empty = document.getElementById("chat-empty");
    if (empty) empty.remove();
    var item = element("li", "chat-message chat-" + role);
    item.setAttribute("data-testid", "message-" + role);
    item.appendChild(element("div", "chat-text", text));
    list.appendChild(item);
    item.scrollIntoView({ block: "end" });
    return item;
  }

  function meta(item, parts, badge) {
    var line = element("div", "chat-meta");
    line.setAttribute("data-testid", "reply-meta");
    parts.forEach(function (part) {
      line.appendChild(element("span", "", part));
    });
    if (badge) line.appendChild(element("span", "badge " + badge[0], badge[1]));
    item.appendChild(line);
  }

  function showError(text) {
    errorBox.textContent = "";
    var box = element("div", "alert alert-error chat-refusal");
    box.setAttribute("role", "alert");
    box.appendChild(element("span", "alert-text", text));
    errorBox.appendChild(box);
  }

  function busy(on) {
    sendButton.disabled = on;
    stopButton.hidden = !on;
    form.classList.toggle("is-streaming", on);
  }

  function finish(item, event) {
    item.classList.remove("is-streaming");
    var badge = null;
    if (event.status === "interrupted") badge = ["badge-warning", "Stopped"];
    if (event.status === "failed") badge = ["badge-error", "Failed"];
    meta(item, [event.input_tokens + " in · " + event.output_tokens + " out tokens", "$" + event.cost], badge);
    if (event.error) item.appendChild(element("div", "chat-error", event.error));
  }

  function stopped(item) {
    item.classList.remove("is-streaming");
    meta(item, ["The part shown is kept and counted."], ["badge-warning", "Stopped"]);
  }

  function readEvents(body, item) {
    var reader = body.getReader();
    var decoder = new TextDecoder();
    var buffer = "";
    var text = item.querySelector(".chat-text");

    function pump() {
      return reader.read().then(function (chunk) {
        if (chunk.done) return;
        buffer += decoder.decode(chunk.value, { stream: true });
        var events = buffer.split("\n\n");
        buffer = events.pop();
        events.forEach(function (raw) {
          if (raw.indexOf("data: ") !== 0) return;
          var event = JSON.parse(raw.slice(6));
          if (event.type === "delta") text.textContent += event.text;
          else if (event.type === "done") finish(item, event);
        });
        return pump();
      });
    }
    return pump();
  }

  function send() {
    if (controller) return;
    var content = textarea.value;
    if (!content.trim()) {
      showError("Write a message first.");
      return;
    }
    errorBox.textContent = "";
    controller = new AbortController();
    busy(true);
    fetch(form.action, {
      method: "POST",
      body: new FormData(form), // carries the form's CSRF token
      headers: { Accept: "text/event-stream" },
      credentials: "same-origin",
      signal: controller.signal,
    })
      .then(function (response) {
        var type = response.headers.get("Content-Type") || "";
        if (response.ok && type.indexOf("text/event-stream") === 0) {
          textarea.value = "";
          bubble("user", content);
          reply = bubble("assistant", "");
          reply.classList.add("is-streaming");
          return readEvents(response.body, reply);
        }
        if (response.headers.get("X-Chat-Refusal")) {
          return response.text().then(function (html) {
            errorBox.innerHTML = html; // our own rendered, escaped fragment
          });
        }
        showError("The message could not be sent (" + response.status + "). Reload the page and try again.");
      })
      .catch(function (err) {
        if (err && err.name === "AbortError") {
          if (reply) stopped(reply);
        } else {
          showError("The connection was lost. What arrived is kept; reload the page to see it.");
        }
      })
      .then(function () {
        controller = null;
        reply = null;
        busy(false);
        textarea.focus();
      });
  }

  form.addEventListener("submit", function (e) {
    e.preventDefault();
    send();
  });

  textarea.addEventListener("keydown", function (e) {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });

  stopButton.addEventListener("click", function () {
    if (controller) controller.abort();
  });
})();
