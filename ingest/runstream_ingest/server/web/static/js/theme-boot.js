// Runs before the page paints (a classic script, not a module): the theme the browser remembers,
// else the system's preference.  main.js's toggle writes the same localStorage key.
(function () {
  var t = null;
  try { t = localStorage.getItem("runstream.theme"); } catch (e) { /* storage blocked: use the default */ }
  if (t !== "dark" && t !== "light") {
    t = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  document.documentElement.dataset.theme = t;
})();
