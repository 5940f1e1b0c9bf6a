/*
 * Confab — small page behaviours. No dependencies; uses window.htmx and
 * window.Chart when they are loaded (both vendored in static/js/).
 *
 *  - CSRF: adds X-CSRFToken (from <meta name="csrf-token">) to every htmx request.
 *  - Copy: <button data-copy="#element-id"> copies that element's value/text;
 *          <button data-copy="literal text"> copies the literal text.
 *  - Confirm: <form data-confirm="Sure?"> / <button data-confirm="Sure?"> asks first.
 *  - Dismiss: <button data-dismiss> removes its closest .dismissible / li / .alert.
 *  - Charts: <canvas data-chart='{"type":"line","data":{...},"options":{...}}'>
 *            drawn on load and after every htmx swap; destroyed when swapped out.
 *  - Theme:  <html data-theme="light|dark|system">; window.Confab.theme() gives the
 *            effective theme; <select data-theme-preview> previews a choice live.
 */
(function () {
  "use strict";

  var root = document.documentElement;

  /* ------------------------------------------------------------------ theme */

  var darkQuery = window.matchMedia ? window.matchMedia("(prefers-color-scheme: dark)") : null;

  function themeSetting() {
    var t = root.getAttribute("data-theme");
    return t === "light" || t === "dark" ? t : "system";
  }

  function effectiveTheme() {
    var t = themeSetting();
    if (t !== "system") return t;
    return darkQuery && darkQuery.matches ? "dark" : "light";
  }

  function applyTheme(setting) {
    if (setting) root.setAttribute("data-theme", setting);
    root.setAttribute("data-theme-effective", effectiveTheme());
    restyleCharts();
  }

  if (darkQuery) {
    var onSchemeChange = function () {
      if (themeSetting() === "system") applyTheme();
    };
    if (darkQuery.addEventListener) darkQuery.addEventListener("change", onSchemeChange);
    else if (darkQuery.addListener) darkQuery.addListener(onSchemeChange);
  }

  // Live preview for a theme <select>/<input type=radio> carrying data-theme-preview.
  document.addEventListener("change", function (e) {
    var el = e.target;
    if (el && el.hasAttribute && el.hasAttribute("data-theme-preview")) {
      var v = el.value;
      if (v === "light" || v === "dark" || v === "system") applyTheme(v);
    }
  });

  /* ------------------------------------------------------------------- CSRF */

  function csrfToken() {
    var meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.getAttribute("content") : "";
  }

  document.addEventListener("htmx:configRequest", function (e) {
    var token = csrfToken();
    if (token && e.detail && e.detail.headers) {
      e.detail.headers["X-CSRFToken"] = token;
    }
  });

  /* ------------------------------------------------------------------- copy */

  function textToCopy(spec) {
    if (spec && spec.charAt(0) === "#") {
      var target = null;
      try {
        target = document.querySelector(spec);
      } catch (err) {
        target = null;
      }
      if (target) {
        return "value" in target && typeof target.value === "string"
          ? target.value
          : target.textContent.trim();
      }
    }
    return spec || "";
  }

  function fallbackCopy(text) {
    var ta = document.createElement("textarea");
    ta.value = text;
    ta.setAttribute("readonly", "");
    ta.style.position = "fixed";
    ta.style.top = "-1000px";
    ta.style.opacity = "0";
    document.body.appendChild(ta);
    ta.select();
    var ok = false;
    try {
      ok = document.execCommand("copy");
    } catch (err) {
      ok = false;
    }
    document.body.removeChild(ta);
    return ok ? Promise.resolve() : Promise.reject(new Error("copy failed"));
  }

  function copyText(text) {
    if (navigator.clipboard && window.isSecureContext) {
      return navigator.clipboard.writeText(text).catch(function () {
        return fallbackCopy(text);
      });
    }
    return fallbackCopy(text);
  }

  function flashButton(btn, label, cls) {
    if (!btn.hasAttribute("data-copy-label")) {
      btn.setAttribute("data-copy-label", btn.textContent);
    }
    btn.textContent = label;
    btn.classList.add(cls);
    clearTimeout(btn._confabTimer);
    btn._confabTimer = setTimeout(function () {
      btn.textContent = btn.getAttribute("data-copy-label");
      btn.classList.remove(cls);
    }, 2000);
  }

  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest("[data-copy]");
    if (!btn) return;
    e.preventDefault();
    copyText(textToCopy(btn.getAttribute("data-copy"))).then(
      function () {
        flashButton(btn, btn.getAttribute("data-copied-text") || "Copied!", "is-copied");
      },
      function () {
        flashButton(btn, "Press Ctrl/⌘+C", "is-copy-failed");
        var spec = btn.getAttribute("data-copy");
        var target = spec && spec.charAt(0) === "#" ? document.querySelector(spec) : null;
        if (target) selectContents(target);
      }
    );
  });

  function selectContents(el) {
    if (typeof el.select === "function") {
      el.select();
      return;
    }
    var range = document.createRange();
    range.selectNodeContents(el);
    var sel = window.getSelection();
    sel.removeAllRanges();
    sel.addRange(range);
  }

  /* ------------------------------------------------------ confirm & dismiss */

  document.addEventListener(
    "click",
    function (e) {
      var el = e.target.closest && e.target.closest("button[data-confirm], a[data-confirm], input[data-confirm]");
      if (el && !window.confirm(el.getAttribute("data-confirm"))) {
        e.preventDefault();
        e.stopImmediatePropagation();
      }
    },
    true
  );

  document.addEventListener("submit", function (e) {
    var form = e.target;
    if (form.hasAttribute && form.hasAttribute("data-confirm") && !window.confirm(form.getAttribute("data-confirm"))) {
      e.preventDefault();
    }
  });

  document.addEventListener("click", function (e) {
    var btn = e.target.closest && e.target.closest("[data-dismiss]");
    if (!btn) return;
    var box = btn.closest(".dismissible, li, .alert");
    if (box) box.remove();
  });

  /* ----------------------------------------------------------------- charts */

  function cssVar(name, fallback) {
    var v = getComputedStyle(root).getPropertyValue(name);
    return v && v.trim() ? v.trim() : fallback;
  }

  function chartDefaults() {
    if (!window.Chart) return;
    var C = window.Chart;
    C.defaults.color = cssVar("--text-muted", "#6b7280");
    C.defaults.borderColor = cssVar("--border", "#e5e7eb");
    C.defaults.font.family = getComputedStyle(document.body || root).fontFamily;
    // Changing borderColor switches Chart.js's Colors plugin off; we colour below.
    if (C.defaults.plugins && C.defaults.plugins.colors) C.defaults.plugins.colors.enabled = false;
  }

  function palette() {
    var fallback = ["#4f46e5", "#0ea5e9", "#10b981", "#f59e0b", "#ef4444", "#a855f7"];
    return fallback.map(function (c, i) {
      return cssVar("--chart-" + (i + 1), c);
    });
  }

  function withAlpha(color, alpha) {
    var m = /^#([0-9a-f]{6})$/i.exec(color);
    if (!m) return color;
    var n = parseInt(m[1], 16);
    return "rgba(" + (n >> 16) + "," + ((n >> 8) & 255) + "," + (n & 255) + "," + alpha + ")";
  }

  // Give datasets that have no colours of their own the theme's palette.
  function colourDatasets(config) {
    var colors = palette();
    var perPoint = ["pie", "doughnut", "polarArea"].indexOf(config.type) !== -1;
    (config.data.datasets || []).forEach(function (ds, i) {
      if (ds.backgroundColor !== undefined || ds.borderColor !== undefined) return;
      var c = colors[i % colors.length];
      if (perPoint) {
        var n = (ds.data || []).length;
        ds.backgroundColor = [];
        for (var k = 0; k < n; k++) ds.backgroundColor.push(colors[k % colors.length]);
        ds.borderColor = cssVar("--surface", "#ffffff");
      } else if ((ds.type || config.type) === "bar") {
        ds.backgroundColor = withAlpha(c, 0.85);
        ds.borderColor = c;
      } else {
        ds.borderColor = c;
        ds.backgroundColor = withAlpha(c, 0.15);
        if (ds.pointBackgroundColor === undefined) ds.pointBackgroundColor = c;
      }
    });
  }

  function forEachChart(fn) {
    if (!window.Chart) return;
    document.querySelectorAll("canvas[data-chart]").forEach(function (canvas) {
      var chart = window.Chart.getChart(canvas);
      if (chart) fn(chart);
    });
  }

  function restyleCharts() {
    if (!window.Chart) return;
    chartDefaults();
    forEachChart(function (chart) {
      // Scale colours were resolved at creation time; rebuild from the config.
      var canvas = chart.canvas;
      chart.destroy();
      drawChart(canvas);
    });
  }

  function drawChart(canvas) {
    if (!window.Chart || window.Chart.getChart(canvas)) return;
    var config;
    try {
      config = JSON.parse(canvas.getAttribute("data-chart"));
    } catch (err) {
      console.error("Confab: invalid data-chart JSON", canvas, err);
      return;
    }
    if (!config || typeof config !== "object" || !config.type) {
      console.error("Confab: data-chart needs at least {type, data}", canvas);
      return;
    }
    config.data = config.data || { labels: [], datasets: [] };
    config.options = config.options || {};
    colourDatasets(config);
    if (config.options.responsive === undefined) config.options.responsive = true;
    // Inside a sized .chart-box the canvas fills the box instead of keeping 2:1.
    if (
      config.options.maintainAspectRatio === undefined &&
      canvas.parentElement &&
      canvas.parentElement.classList.contains("chart-box")
    ) {
      config.options.maintainAspectRatio = false;
    }
    try {
      new window.Chart(canvas, config);
    } catch (err) {
      console.error("Confab: could not draw chart", canvas, err);
    }
  }

  function initCharts(scope) {
    if (!window.Chart || !scope) return;
    chartDefaults();
    if (scope.matches && scope.matches("canvas[data-chart]")) drawChart(scope);
    if (scope.querySelectorAll) scope.querySelectorAll("canvas[data-chart]").forEach(drawChart);
  }

  function destroyCharts(scope) {
    if (!window.Chart || !scope) return;
    var list = [];
    if (scope.matches && scope.matches("canvas[data-chart]")) list.push(scope);
    if (scope.querySelectorAll) list = list.concat(Array.prototype.slice.call(scope.querySelectorAll("canvas[data-chart]")));
    list.forEach(function (canvas) {
      var chart = window.Chart.getChart(canvas);
      if (chart) chart.destroy();
    });
  }

  // htmx fires htmx:load for the body at start-up and for every swapped-in element.
  document.addEventListener("htmx:load", function (e) {
    initCharts(e.target);
  });
  document.addEventListener("htmx:beforeCleanupElement", function (e) {
    destroyCharts(e.target);
  });

  // On narrow screens the settings sub-nav scrolls sideways: bring the active tab into view.
  function revealActiveTab() {
    var active = document.querySelector(".settings-nav a.active");
    var list = active && active.closest("ul");
    if (!list || list.scrollWidth <= list.clientWidth) return;
    var left = active.offsetLeft - list.offsetLeft;
    list.scrollLeft = Math.max(0, left - (list.clientWidth - active.offsetWidth) / 2);
  }

  function onReady() {
    root.setAttribute("data-theme-effective", effectiveTheme());
    revealActiveTab();
    initCharts(document.body); // no-op for charts htmx already drew
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", onReady);
  } else {
    onReady();
  }

  /* ----------------------------------------------------------------- public */

  window.Confab = {
    theme: effectiveTheme,
    setTheme: applyTheme,
    csrfToken: csrfToken,
    copy: copyText,
    initCharts: initCharts,
  };
})();
