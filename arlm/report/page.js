// The HTML report's behaviour, inlined into the page by arlm/report/page.py after
// gateview.js (the gate view it shares with the browser page, arlm/webpage). It reads every
// number and word from the JSON element #gate-data and writes text only through
// textContent, never as markup, so a sentence cannot inject anything into the page.
"use strict";
(function () {
  const D = JSON.parse(document.getElementById("gate-data").textContent);
  const $ = (id) => document.getElementById(id);
  const V = window.ArlmGateView;
  const pick = $("sentence");

  D.sentences.forEach((s, n) => V.option(pick, n, (n + 1) + ": " + (s.text.length > 40 ? s.text.slice(0, 39) + "…" : s.text)));
  const sentence = () => D.sentences[+pick.value];
  const gates = { names: D.gates, labels: D.labels, meanings: D.meanings, explain: D.explain, sigmoid: D.sigmoid };
  const view = V.create(gates, D.num_layers, D.hidden_size, sentence, render);

  function render() {
    $("source").textContent = sentence().text;
    view.draw();
  }

  pick.addEventListener("change", () => {
    view.active = -1;
    $("detail").replaceChildren();
    $("tip").style.display = "none";
    render();
  });
  render();
})();
