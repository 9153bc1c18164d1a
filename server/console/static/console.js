// qlora-hub console: the only script. The pages work without it; it adds two comforts.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  // Move keyboard and screen-reader focus to an error, so it is announced and seen first.
  var error = document.getElementById("error");
  if (error) { error.setAttribute("tabindex", "-1"); error.focus(); }
  // A form is sent once: its submit button is disabled while the request runs.
  document.querySelectorAll("form").forEach(function (form) {
    form.addEventListener("submit", function () {
      form.querySelectorAll("button[type=submit]").forEach(function (b) {
        setTimeout(function () { b.disabled = true; b.setAttribute("aria-busy", "true"); }, 0);
      });
    });
  });
});
