// Starts ReDoc on the page's #redoc element, from the package's own files.
"use strict";
window.addEventListener("load", function () {
  var root = document.getElementById("redoc");
  Redoc.init(root.dataset.openapi, {}, root);
});
