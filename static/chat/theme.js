/*
 * Applies the remembered light/dark choice before the page paints (loaded synchronously in
 * <head>, so there is no flash of the wrong theme). With no stored choice it follows
 * prefers-color-scheme, live; the stylesheets key every colour on data-theme alone.
 * Wires every [data-theme-toggle] button; GrokTheme exposes the same to other scripts.
 */
(function () {
  "use strict";
  var KEY = "grokweb-theme";
  var root = document.documentElement;

  function stored() {
    try {
      var value = localStorage.getItem(KEY);
      return value === "light" || value === "dark" ? value : null;
    } catch (err) {
      return null; // storage can be disabled; then the system preference rules
    }
  }

  function current() {
    return stored() || (window.matchMedia && matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light");
  }

  function apply(theme) {
    root.setAttribute("data-theme", theme);
  }

  function toggle() {
    var next = current() === "dark" ? "light" : "dark";
    try {
      localStorage.setItem(KEY, next);
    } catch (err) {
      /* not remembered, still applied */
    }
    apply(next);
    return next;
  }

  apply(current());
  if (window.matchMedia) {
    matchMedia("(prefers-color-scheme: dark)").addEventListener("change", function () {
      if (!stored()) apply(current());
    });
  }

  function wireButtons() {
    document.querySelectorAll("[data-theme-toggle]").forEach(function (button) {
      function label() {
        var dark = current() === "dark";
        button.setAttribute("aria-pressed", dark ? "true" : "false");
        button.setAttribute("title", dark ? "Switch to light theme" : "Switch to dark theme");
      }
      label();
      button.addEventListener("click", function () {
        toggle();
        label();
      });
    });
  }
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", wireButtons);
  else wireButtons();

  window.GrokTheme = { current: current, toggle: toggle };
})();
