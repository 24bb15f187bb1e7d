// floatkey console: live parts of the pages (Server-Sent Events).
// Every page works without this script; with it, the sections marked data-live are
// replaced by the server-rendered HTML each event carries.
"use strict";

for (const section of document.querySelectorAll("[data-live]")) {
  const source = new EventSource(section.dataset.live);
  source.addEventListener("open", () => section.classList.add("is-live"));
  source.addEventListener("error", () => section.classList.remove("is-live"));
  source.addEventListener("update", (event) => {
    section.innerHTML = event.data;
  });
  source.addEventListener("expired", () => {
    // The session ended (idle, logged out elsewhere): the log-in page says so.
    source.close();
    window.location.reload();
  });
}

// Keep a pasted product key tidy: one line, no surrounding spaces (the server accepts
// it either way; this only helps reading it back before pressing Unlock).
const key = document.getElementById("key");
if (key) {
  key.addEventListener("paste", () => {
    window.setTimeout(() => {
      key.value = key.value.trim();
    }, 0);
  });
}
