// The rating page's keyboard: 1-5 answer an ACR question; arrows answer an A/B one. One answer per page load.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("answer-form");
  if (!form) return;
  let sent = false;
  form.addEventListener("submit", () => { sent = true; });
  document.addEventListener("keydown", (event) => {
    if (sent || event.altKey || event.ctrlKey || event.metaKey) return;
    const button = form.querySelector('button[data-key="' + event.key + '"]');
    if (!button) return;
    event.preventDefault();
    sent = true;
    form.querySelectorAll("button").forEach((b) => { b.classList.toggle("chosen", b === button); });
    form.requestSubmit(button);
  });
});
