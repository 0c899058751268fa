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
.s-cancelled{background:#ececec;color:#555}
.cards{display:flex;gap:12px;flex-wrap:wrap}.card{background:#fff;border:1px solid #dde1e8;
padding:10px 14px;min-width:120px}.card b{display:block;font-size:20px}
pre{background:#fff;border:1px solid #dde1e8;padding:10px;overflow:auto;max-height:420px}
form.inline{display:inline}button{cursor:pointer}.notice{background:#fff8d8;padding:8px 12px;
border:1px solid #eedc82}.err{color:#a52a22;white-space:pre-wrap;word-break:break-word}
dl{display:grid;grid-template-columns:160px 1fr;gap:4px 12px}dt{color:#7a8291}dd{margin:0}
"""

# Polls the fragment of each [data-live] element and swaps it in; stops while the tab
# is hidden, and keeps the last content when a poll fails.
JS = """
(function () {
  function poll(el) {
    if (document.hidden) return;
    fetch(el.dataset.live, {headers: {"X-Requested-With": "pqrun"}, credentials: "same-origin"})
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (text) { if (text !== null) el.innerHTML = text; })
      .catch(function () {});
  }
  document.querySelectorAll("[data-live]").forEach(function (el) {
    setInterval(function () { poll(el); }, parseInt(el.dataset.every || "2000", 10));
  });
})();
"""
