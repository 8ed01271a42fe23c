// Taskforge's admin pages under the Content-Security-Policy (config/settings.py), which runs
// no inline event handler: the buttons that copy a value shown once are wired here.
// <button data-copy="ELEMENT_ID"> copies that element's text; the API key message's button
// (right after <code id="new-api-key">) is recognised too.
"use strict";
document.addEventListener("click", function (event) {
  var button = event.target.closest("button[data-copy], code#new-api-key ~ button");
  if (!button) {
    return;
  }
  var source = document.getElementById(button.dataset.copy || "new-api-key");
  if (!source || !navigator.clipboard) {
    return;
  }
  navigator.clipboard.writeText(source.textContent).then(function () {
    button.textContent = "Copied";
  });
});
