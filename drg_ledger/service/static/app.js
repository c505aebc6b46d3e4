// The web page: pick a pool, year and hospital; draw its month-end balances as known at a
// moment; move the moment and keep the previous curve faint; the pool's clearing; a case's
// explanation on click. Plain browser JavaScript, no build step; every figure comes from the
// HTTP API as the decimal strings the ledger computed (arithmetic on them is BigInt, never float).
(function () {
  "use strict";

  const T = JSON.parse(document.getElementById("i18n").textContent);
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(window.location.search);
  const state = {
    token: sessionStorage.getItem("drg-ledger-token") || "",
    pools: [],
    moments: [],
    knownAt: params.get("known_at") || null, // null: now
    current: null, // the balance series drawn strong
    previous: null, // the one drawn before it, kept faint
    chart: null,
    generation: 0,
  };

  // ---------------------------------------------------------------- helpers

  function setStatus(kind, text) {
    document.body.dataset.state = kind;
    const el = $("status");
    el.textContent = text || "";
    el.className = "status " + kind;
  }

  async function api(path, query) {
    const url = new URL(path, window.location.origin);
    Object.entries(query || {}).forEach(([k, v]) => {
      if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    });
    const headers = { Accept: "application/json" };
    if (state.token) headers.Authorization = "Bearer " + state.token;
    const response = await fetch(url, { headers });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(body.detail || response.statusText);
      error.status = response.status;
      error.problem = body;
      throw error;
    }
    return body;
  }

  // "1234567.8900" -> "1,234,567.8900": digits grouped, never rounded (the ledger rounded it).
  function fmt(s) {
    if (s === null || s === undefined) return "";
    const text = String(s);
    const neg = text.startsWith("-");
    const [int, frac] = (neg ? text.slice(1) : text).split(".");
    const grouped = int.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return (neg ? "-" : "") + grouped + (frac !== undefined ? "." + frac : "");
  }

  // Exact difference of two decimal strings, as a decimal string with the larger scale.
  function diff(a, b) {
    if (a === null || b === null || a === undefined || b === undefined) return null;
    const scale = Math.max((a.split(".")[1] || "").length, (b.split(".")[1] || "").length);
    const big = (s) => {
      const neg = s.startsWith("-");
      const [i, f = ""] = (neg ? s.slice(1) : s).split(".");
      const v = BigInt(i + f.padEnd(scale, "0"));
      return neg ? -v : v;
    };
    const d = big(a) - big(b);
    const neg = d < 0n;
    let digits = (neg ? -d : d).toString().padStart(scale + 1, "0");
    const out = scale ? digits.slice(0, -scale) + "." + digits.slice(-scale) : digits;
    return (neg ? "-" : d > 0n ? "+" : "") + out;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function fill(select, items, chosen) {
    select.innerHTML = "";
    items.forEach(([value, label]) => {
      const option = document.createElement("option");
      option.value = value;
      option.textContent = label;
      select.appendChild(option);
    });
    if (chosen !== null && items.some(([v]) => String(v) === String(chosen))) select.value = String(chosen);
  }

  // An instant as China-time date: the date input's value for a moment.
  function chinaDate(iso) {
    const ms = Date.parse(iso) + 8 * 3600 * 1000;
    return new Date(ms).toISOString().slice(0, 10);
  }

  function momentMillis(knownAt) {
    if (!knownAt) return Date.now();
    if (knownAt.length === 10) return Date.parse(knownAt + "T23:59:59.999+08:00"); // the end of that day
    return Date.parse(knownAt);
  }

  function describe(moment) {
    return moment.events.map((e) => {
      if (e.event_type === "PolicyVersionPublished") return e.component + " " + e.version;
      if (e.event_type === "CoefficientChanged") return "coefficient " + (e.hospital_id || e.drg_code || e.grade) + " " + e.coefficient;
      if (e.event_type === "BudgetSet") return "budget " + fmt(e.amount);
      if (e.event_type === "ClearingCompleted") return "clearing PV " + e.point_value;
      return e.event_type;
    }).join(", ");
  }

  function syncUrl() {
    const q = new URLSearchParams();
    q.set("lang", document.body.dataset.lang);
    if ($("pool").value) q.set("pool", $("pool").value);
    if ($("year").value) q.set("year", $("year").value);
    if ($("hospital").value) q.set("hospital", $("hospital").value);
    if (state.knownAt) q.set("known_at", state.knownAt);
    history.replaceState(null, "", "/?" + q.toString());
    const other = new URLSearchParams(q);
    other.set("lang", $("lang-switch").dataset.lang);
    $("lang-switch").href = "/?" + other.toString();
  }

  // ---------------------------------------------------------------- loading

  async function signIn() {
    if (!state.token) {
      $("whoami").textContent = T.no_token;
      setStatus("idle", "");
      return;
    }
    try {
      const me = await api("/whoami");
      $("whoami").textContent = T.signed_in_as + ": " + me.role + " (" + me.name + ")";
      await loadPools();
    } catch (e) {
      $("whoami").textContent = T.error + ": " + e.message;
      setStatus("error", e.message);
    }
  }

  async function loadPools() {
    state.pools = await api("/pools");
    fill($("pool"), state.pools.map((p) => [p.pool, p.pool]), params.get("pool"));
    await onPool();
  }

  async function onPool() {
    const pool = state.pools.find((p) => p.pool === $("pool").value);
    if (!pool) return;
    const years = pool.years.slice().reverse();
    fill($("year"), years.map((y) => [y, String(y)]), params.get("year"));
    const hospitals = await api("/hospitals", { pool: pool.pool });
    fill($("hospital"), hospitals.map((h) => [h.hospital_id, h.hospital_id + " " + h.name + " (" + h.grade + ")"]),
      params.get("hospital"));
    await onYear();
  }

  async function onYear() {
    const data = await api("/moments", { pool: $("pool").value, year: $("year").value });
    state.moments = data.moments;
    const slider = $("known-at-slider");
    slider.max = String(state.moments.length); // the last position is "now"
    placeSlider();
    await redraw();
  }

  // The slider sits on the latest moment at or before the known-at moment.
  function placeSlider() {
    const slider = $("known-at-slider");
    let position = state.moments.length;
    if (state.knownAt) {
      const at = momentMillis(state.knownAt);
      position = 0;
      state.moments.forEach((m, i) => { if (Date.parse(m.at) <= at) position = i; });
      $("known-at-date").value = state.knownAt.length === 10 ? state.knownAt : chinaDate(state.knownAt);
    } else {
      $("known-at-date").value = "";
    }
    slider.value = String(position);
    labelSlider();
  }

  function labelSlider() {
    const i = Number($("known-at-slider").value);
    const m = state.moments[i];
    $("known-at-label").textContent = m ? chinaDate(m.at) + " · " + describe(m) : T.now;
  }

  async function redraw() {
    const hospital = $("hospital").value;
    const pool = $("pool").value;
    const year = $("year").value;
    if (!hospital || !pool || !year) return;
    syncUrl();
    const generation = ++state.generation;
    setStatus("loading", T.loading);
    const knownAt = state.knownAt;
    try {
      const [series, clearing, cases] = await Promise.all([
        api("/balance-series", { hospital, year, known_at: knownAt }),
        api("/clearing", { pool, year, known_at: knownAt }).catch((e) => ({ error: e })),
        api("/cases", { hospital, year, known_at: knownAt, limit: 40 }),
      ]);
      if (generation !== state.generation) return; // a newer redraw is under way
      if (state.current && state.current.hospital_id === series.hospital_id && state.current.year === series.year) {
        state.previous = state.current;
      } else {
        state.previous = null;
      }
      state.current = series;
      $("chart-known-at").textContent = T.known_at + " " + series.known_at;
      drawChart();
      drawMonths();
      drawClearing(clearing, hospital);
      drawCases(cases);
      document.body.dataset.knownAt = knownAt || "now";
      setStatus("ready", "");
    } catch (e) {
      if (generation !== state.generation) return;
      setStatus("error", T.error + ": " + e.message);
    }
  }

  // ---------------------------------------------------------------- drawing

  function column(series, name) {
    return series.months.map((m) => (m.balance ? Number(m.balance[name]) : null));
  }

  function drawChart() {
    const el = $("chart");
    const months = state.current.months.map((_, i) => i + 1);
    const data = [months, column(state.current, "net_points"), column(state.current, "fund_due")];
    const series = [
      {},
      { label: T.net_points, scale: "pts", stroke: "#1f4e79", width: 2.5, points: { size: 6 } },
      { label: T.fund_due, scale: "yuan", stroke: "#c0392b", width: 2.5, points: { size: 6 } },
    ];
    if (state.previous) {
      data.push(column(state.previous, "net_points"), column(state.previous, "fund_due"));
      series.push(
        { label: T.net_points + " (" + T.previous + ")", scale: "pts", stroke: "rgba(31,78,121,0.28)", width: 2, dash: [6, 4] },
        { label: T.fund_due + " (" + T.previous + ")", scale: "yuan", stroke: "rgba(192,57,43,0.28)", width: 2, dash: [6, 4] },
      );
    }
    const opts = {
      width: Math.max(480, el.clientWidth || 800),
      height: 320,
      scales: { x: { time: false }, pts: { auto: true }, yuan: { auto: true } },
      axes: [
        { values: (u, ticks) => ticks.map((v) => (Number.isInteger(v) ? String(v) : "")) , label: T.month },
        { scale: "pts", label: T.net_points, size: 70 },
        { scale: "yuan", side: 1, label: T.fund_due, size: 90, grid: { show: false } },
      ],
      series,
    };
    if (state.chart) state.chart.destroy();
    el.innerHTML = "";
    state.chart = new uPlot(opts, data, el);
  }

  function drawMonths() {
    const body = $("months").querySelector("tbody");
    body.innerHTML = "";
    state.current.months.forEach((m, i) => {
      const tr = document.createElement("tr");
      const b = m.balance;
      const was = state.previous ? state.previous.months[i].balance : null;
      cell(tr, m.as_of);
      if (!b) {
        const td = cell(tr, T.cannot_compute + ": " + (m.error || ""), "error");
        td.colSpan = 6;
      } else {
        cell(tr, fmt(b.net_points), "num net-points");
        cell(tr, fmt(b.fund_due), "num fund-due");
        cell(tr, fmt(b.clearing_amount), "num");
        cell(tr, b.point_value, "num");
        cell(tr, T[b.point_value_kind] || b.point_value_kind);
        const change = was ? diff(b.fund_due, was.fund_due) : null;
        cell(tr, change === null ? "" : fmt(change), "num change");
      }
      body.appendChild(tr);
    });
  }

  function drawClearing(clearing, hospital) {
    const body = $("clearing").querySelector("tbody");
    body.innerHTML = "";
    if (clearing.error) {
      $("clearing-summary").textContent = T.cannot_compute + ": " + clearing.error.message;
      return;
    }
    $("clearing-summary").textContent = T.clearing_summary
      .replace("{pv}", clearing.point_value).replace("{budget}", fmt(clearing.budget)).replace("{tp}", fmt(clearing.total_points))
      + " · " + T.known_at + " " + clearing.known_at;
    clearing.hospitals.forEach((h) => {
      const tr = document.createElement("tr");
      tr.dataset.hospital = h.hospital_id;
      if (h.hospital_id === hospital) tr.className = "selected";
      cell(tr, h.hospital_id);
      ["settled_points", "deducted_points", "net_points", "personal_paid", "fund_due", "prepaid", "clearing_amount"]
        .forEach((k) => cell(tr, fmt(h[k]), "num " + k.replace(/_/g, "-")));
      tr.addEventListener("click", () => {
        $("hospital").value = h.hospital_id;
        state.previous = null;
        redraw();
      });
      body.appendChild(tr);
    });
  }

  function drawCases(cases) {
    const body = $("cases").querySelector("tbody");
    body.innerHTML = "";
    $("cases-total").textContent = T.total_cases.replace("{n}", String(cases.total));
    cases.cases.forEach((c) => {
      const tr = document.createElement("tr");
      tr.dataset.case = c.case_id;
      cell(tr, c.case_id);
      cell(tr, c.discharge_date);
      cell(tr, c.drg_code);
      cell(tr, c.case_type);
      cell(tr, c.coefficient || "", "num");
      cell(tr, c.coefficient_why || "");
      cell(tr, fmt(c.net_points), "num");
      tr.addEventListener("click", () => explain(c.case_id));
      body.appendChild(tr);
    });
  }

  async function explain(caseId) {
    $("explain-case").textContent = caseId;
    const body = $("explanation").querySelector("tbody");
    body.innerHTML = "";
    try {
      const data = await api("/explain", { case: caseId, known_at: state.knownAt });
      $("explain-hint").textContent = "";
      Object.entries(data).forEach(([k, v]) => {
        const tr = document.createElement("tr");
        cell(tr, k, "key");
        const td = cell(tr, "");
        if (Array.isArray(v) && v.every((x) => x === null || typeof x !== "object")) {
          td.textContent = v.join(", ");
        } else if (v !== null && typeof v === "object") {
          // One line per member: policy versions, coefficient and its source, verdict, penalty.
          const pre = document.createElement("pre");
          pre.textContent = Object.entries(v).map(([name, x]) => name + ": " + JSON.stringify(x)).join("\n");
          td.appendChild(pre);
        } else {
          td.textContent = String(v);
        }
        body.appendChild(tr);
      });
      document.body.dataset.explained = caseId;
    } catch (e) {
      $("explain-hint").textContent = T.error + ": " + e.message;
    }
  }

  // ---------------------------------------------------------------- wiring

  $("use-token").addEventListener("click", () => {
    state.token = $("token").value.trim();
    sessionStorage.setItem("drg-ledger-token", state.token);
    signIn();
  });
  $("token").addEventListener("keydown", (e) => { if (e.key === "Enter") $("use-token").click(); });
  $("pool").addEventListener("change", () => { state.previous = null; onPool(); });
  $("year").addEventListener("change", () => { state.previous = null; onYear(); });
  $("hospital").addEventListener("change", () => { state.previous = null; redraw(); });
  $("known-at-slider").addEventListener("input", labelSlider);
  $("known-at-slider").addEventListener("change", () => {
    const m = state.moments[Number($("known-at-slider").value)];
    state.knownAt = m ? m.at : null;
    $("known-at-date").value = m ? chinaDate(m.at) : "";
    redraw();
  });
  $("known-at-date").addEventListener("change", () => {
    state.knownAt = $("known-at-date").value || null; // a date: the end of that day, China time
    placeSlider();
    redraw();
  });
  window.addEventListener("resize", () => { if (state.current) drawChart(); });

  if (state.token) $("token").value = state.token;
  setStatus("idle", "");
  signIn();
})();
