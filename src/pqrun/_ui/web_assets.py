"""The dashboard's stylesheet and script, served from ``/_/app.css`` and ``/_/app.js``
(the Content-Security-Policy allows no inline style or script)."""

CSS = """
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:center}
header a{color:#cfd8e8;text-decoration:none}header b{font-size:16px;margin-right:10px}
main{padding:16px 20px;max-width:1300px}h2{font-size:15px;margin:22px 0 8px}
table{border-collapse:collapse;width:100%;background:#fff;border:1px solid #dde1e8}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid #eceef2;vertical-align:top}
th{background:#eef0f4;font-weight:600}td.num,th.num{text-align:right}
.muted{color:#7a8291}.badge{padding:1px 7px;border-radius:9px;font-size:12px;font-weight:600}
.s-ready{background:#e3efff;color:#1e56b0}.s-running{background:#fff4d6;color:#8a5a00}
.s-done{background:#def5e5;color:#1c6b3a}.s-failed{background:#fde2e1;color:#a52a22}
.s-cancelled{background:#ececec;color:#555}.s-paused{background:#efe2fb;color:#6a2c99}
#pause{margin-bottom:14px}#pause input[name=reason]{width:22em;max-width:100%}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid #dde1e8;
padding:10px 14px;min-width:120px}.card b{display:block;font-size:20px}
pre{background:#fff;border:1px solid #dde1e8;padding:10px;overflow:auto;max-height:420px}
form.inline{display:inline}button{cursor:pointer}.notice{background:#fff8d8;padding:8px 12px;
border:1px solid #eedc82}.err{color:#a52a22;white-space:pre-wrap;word-break:break-word}
dl{display:grid;grid-template-columns:160px 1fr;gap:4px 12px}dt{color:#7a8291}dd{margin:0}
.scroll{overflow-x:auto;max-width:100%}header{flex-wrap:wrap}.jump input{width:7em}
dd,pre,td,main p{overflow-wrap:anywhere}
.views a{font-weight:600}.views a[aria-current]{color:inherit;text-decoration:none}
form.bulk{margin:8px 0}#filters label{white-space:nowrap}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(280px,1fr));gap:12px;
margin-top:12px}.chart{margin:0;background:#fff;border:1px solid #dde1e8;padding:4px}
.chart svg{display:block;width:100%;height:auto}.ch-t{font-size:12px;font-weight:600;
fill:#1d2330}.ch-l{font-size:10px;fill:#7a8291}.ch-a{stroke:#aab1bd}.ch-g{stroke:#eceef2}
.ch-done{fill:#2f8a52}.ch-failed{fill:#c8443b}.ch-depth{fill:#3b74c4}
details{margin-top:8px}summary{cursor:pointer;color:#7a8291}
@media (max-width:600px){main{padding:12px 10px}header{padding:8px 10px;gap:10px}
dl{grid-template-columns:1fr}dt{margin-top:6px}.card{min-width:0;flex:1 1 40%}
th,td{padding:4px 6px}}
@media (prefers-color-scheme:dark){body{color:#e3e7ee;background:#12151b}
header{background:#05070a}table,.card,pre{background:#1b1f27;border-color:#2c323d}
th{background:#232935}th,td{border-bottom-color:#2c323d}.muted,dt{color:#98a1b0}
a{color:#8fb8ff}header a{color:#cfd8e8}.err{color:#ff9b94}
.notice{background:#3a3416;border-color:#6b5d1f}
input,select,button{background:#232935;color:#e3e7ee;border:1px solid #3a4250}
.s-ready{background:#1c3357;color:#a9c9ff}.s-running{background:#46380f;color:#ffd97a}
.s-done{background:#173d26;color:#93e0ad}.s-failed{background:#4d1d1b;color:#ffaaa4}
.s-cancelled{background:#33363b;color:#c4c7cc}.s-paused{background:#3a2352;color:#dcb8ff}
.chart{background:#1b1f27;border-color:#2c323d}.ch-t{fill:#e3e7ee}.ch-l{fill:#98a1b0}
.ch-a{stroke:#4a5160}.ch-g{stroke:#2c323d}.ch-done{fill:#5cc683}.ch-failed{fill:#ff7b72}
.ch-depth{fill:#6ea8ff}summary{color:#98a1b0}}
"""

# Polls the fragment of each [data-live] element and swaps it in; stops while the tab
# is hidden, and keeps the last content when a poll fails. Boxes ticked in it (jobs
# selected for a bulk action) are ticked again in the new content.
JS = """
(function () {
  function poll(el) {
    if (document.hidden) return;
    fetch(el.dataset.live, {headers: {"X-Requested-With": "pqrun"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) {
        if (text === null) return;
        var ticked = {};
        el.querySelectorAll("input[type=checkbox]:checked").forEach(function (box) {
          ticked[box.value] = true;
        });
        el.innerHTML = text;
        el.querySelectorAll("input[type=checkbox]").forEach(function (box) {
          if (ticked[box.value]) box.checked = true;
        });
      })
      .catch(function () {});
  }
  document.querySelectorAll("[data-live]").forEach(function (el) {
    setInterval(function () { poll(el); }, parseInt(el.dataset.every || "2000", 10));
  });
})();
"""
