// Draws every chart the page holds from its Vega-Lite spec (data-spec), on load and after htmx swaps one in.
(function () {
  function draw(root) {
    if (typeof vegaEmbed === "undefined") return;
    (root || document).querySelectorAll(".chart[data-spec]:not([data-drawn])").forEach(function (el) {
      el.setAttribute("data-drawn", "1");
      vegaEmbed(el, JSON.parse(el.getAttribute("data-spec")), { actions: false, renderer: "svg" });
    });
  }
  document.addEventListener("DOMContentLoaded", function () { draw(document); });
  document.addEventListener("htmx:afterSettle", function (event) { draw(event.target); });
})();
