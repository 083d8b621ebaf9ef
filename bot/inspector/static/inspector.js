/* threadflow run inspector: live updates and the workflow graph. The pages work without it. */
(() => {
  'use strict';
  const $ = (id) => document.getElementById(id);
  const SVG = 'http://www.w3.org/2000/svg';
  const CLUSTERS = new Set(['loop', 'foreach', 'workflow']);
  const BAND = 18;
  const SIZES = { start: [64, 26], end: [64, 26], join: [14, 14], parallel: [96, 28], branch: [96, 28], map: [130, 32] };
  const api = { updates: [] };
  window.threadflowInspector = api;

  function el(name, attrs, parent) {
    const node = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  const clip = (text, n) => (text && text.length > n ? text.slice(0, n - 1) + '…' : text || '');

  // -- the graph (laid out by dagre, drawn as SVG) -------------------------------------------------
  function drawGraph(box, graph, statuses) {
    if (!window.dagre) { box.textContent = 'The graph library did not load.'; return null; }
    const g = new dagre.graphlib.Graph({ compound: true, multigraph: true });
    g.setGraph({ rankdir: 'TB', nodesep: 22, ranksep: 36, edgesep: 12, marginx: 10, marginy: 10 + BAND });
    const byId = new Map(graph.nodes.map((n) => [n.id, n]));
    for (const n of graph.nodes) {
      if (CLUSTERS.has(n.kind)) g.setNode(n.id, { paddingTop: 30, paddingBottom: 10, paddingLeft: 12, paddingRight: 12 });
      else { const [w, h] = SIZES[n.kind] || [168, 40]; g.setNode(n.id, { width: w, height: h }); }
    }
    for (const n of graph.nodes) if (n.parent) g.setParent(n.id, n.parent);
    graph.edges.forEach((e, i) => g.setEdge(e.source, e.target,
      { label: e.label || '', width: e.label ? 8 * e.label.length : 0, height: e.label ? 14 : 0, back: e.back }, 'e' + i));
    dagre.layout(g);
    const size = g.graph();
    const svg = el('svg', { viewBox: `0 0 ${size.width} ${size.height}`, class: 'graph-svg', role: 'img',
      'aria-label': `Graph of workflow ${graph.workflow_id}` });
    svg.style.maxWidth = size.width + 'px';
    const defs = el('defs', {}, svg);
    const marker = el('marker', { id: 'arrow-' + graph.workflow_id, viewBox: '0 0 10 10', refX: 9, refY: 5, markerWidth: 7, markerHeight: 7, orient: 'auto-start-reverse' }, defs);
    el('path', { d: 'M0,0 L10,5 L0,10 z', class: 'arrow' }, marker);
    const depth = (id) => { let d = 0; for (let p = byId.get(id).parent; p; p = byId.get(p).parent) d += 1; return d; };
    const clusters = graph.nodes.filter((n) => CLUSTERS.has(n.kind)).sort((a, b) => depth(a.id) - depth(b.id));
    for (const n of clusters) {
      const b = g.node(n.id);
      const grp = el('g', { class: `cluster kind-${n.kind}`, 'data-id': n.id, ...(n.key ? { 'data-key': n.key } : {}) }, svg);
      // A loop says its condition at the bottom (where it is checked), other clusters name themselves on top;
      // each gets a band of its own, so nested clusters' labels do not overlap.
      const bottom = n.kind === 'loop';
      const top = b.y - b.height / 2 - (bottom ? 0 : BAND), height = b.height + BAND;
      el('rect', { x: b.x - b.width / 2, y: top, width: b.width, height, rx: 8 }, grp);
      const t = el('text', { x: b.x - b.width / 2 + 10, y: bottom ? top + height - 7 : top + 15, class: 'cluster-label' }, grp);
      t.textContent = clip(n.label + (n.detail ? ` · ${n.detail}` : ''), Math.max(12, Math.floor(b.width / 7)));
      el('title', {}, grp).textContent = n.label;
    }
    for (const e of g.edges()) {
      const data = g.edge(e);
      const d = data.points.map((p, i) => `${i ? 'L' : 'M'}${p.x.toFixed(1)},${p.y.toFixed(1)}`).join(' ');
      el('path', { d, class: 'edge' + (data.back ? ' back' : ''), 'marker-end': `url(#arrow-${graph.workflow_id})` }, svg);
      if (data.label) {
        const t = el('text', { x: data.x, y: data.y + 4, class: 'edge-label', 'text-anchor': 'middle' }, svg);
        t.textContent = data.label;
      }
    }
    for (const n of graph.nodes) {
      if (CLUSTERS.has(n.kind)) continue;
      const b = g.node(n.id);
      const grp = el('g', { class: `node kind-${n.kind}`, 'data-id': n.id, ...(n.key ? { 'data-key': n.key, tabindex: 0, role: 'button' } : {}) }, svg);
      const x = b.x - b.width / 2, y = b.y - b.height / 2;
      const rx = n.kind === 'start' || n.kind === 'end' || n.kind === 'join' ? b.height / 2 : 6;
      el('rect', { x, y, width: b.width, height: b.height, rx }, grp);
      if (n.kind !== 'join') {
        const sub = ['start', 'end', 'step'].includes(n.kind) ? '' : clip(n.kind === 'agent' ? n.detail : n.kind, 26);
        const t = el('text', { x: b.x, y: b.y + (sub ? -3 : 1), 'text-anchor': 'middle', class: 'label' }, grp);
        t.textContent = clip(n.label, 22);
        if (sub) el('text', { x: b.x, y: b.y + 13, 'text-anchor': 'middle', class: 'sub' }, grp).textContent = sub;
      }
      el('title', {}, grp).textContent = `${n.label}${n.detail ? ' — ' + n.detail : ''}`;
      if (n.key) {
        const badge = el('text', { x: x + b.width - 6, y: y + 11, 'text-anchor': 'end', class: 'count' }, grp);
        badge.textContent = '';
        const open = () => openStep(n.key);
        grp.addEventListener('click', open);
        grp.addEventListener('keydown', (ev) => { if (ev.key === 'Enter' || ev.key === ' ') { ev.preventDefault(); open(); } });
      }
    }
    box.replaceChildren(svg);
    applyStatuses(svg, statuses || {});
    return svg;
  }

  function applyStatuses(svg, statuses) {
    if (!svg) return;
    svg.querySelectorAll('[data-key]').forEach((node) => {
      const st = statuses[node.dataset.key];
      const status = st ? (typeof st === 'string' ? st : st.status) : 'pending';
      node.setAttribute('data-status', status);
      node.classList.forEach((c) => { if (c.startsWith('status-')) node.classList.remove(c); });
      node.classList.add('status-' + status);
      const count = node.querySelector('.count');
      if (count) count.textContent = st && st.instances > 1 ? `×${st.instances}` : '';
    });
  }

  function openStep(key) {
    const step = document.querySelector(`details.step[data-key="${CSS.escape(key)}"]`);
    if (!step) return;
    step.open = true;
    step.scrollIntoView({ behavior: 'smooth', block: 'start' });
  }

  // -- the run page: follow the run's events ---------------------------------------------------------
  function swap(box, html) {
    const before = new Map([...box.querySelectorAll('details[id]')].map((d) => [d.id, d.open]));
    const focused = document.activeElement && box.contains(document.activeElement) ? document.activeElement : null;
    if (focused && focused.matches('input, textarea, select')) return false; // never pull a field from under a typist
    box.innerHTML = html;
    box.querySelectorAll('details[id]').forEach((d) => { if (before.has(d.id)) d.open = before.get(d.id); });
    return true;
  }

  function followRun(svg) {
    const live = $('run-live');
    if (!live || !window.EventSource) return;
    let pending = null;
    const source = new EventSource(`${live.dataset.live}?after=${live.dataset.after}`);
    source.addEventListener('open', () => { document.body.dataset.live = 'open'; });
    source.addEventListener('update', (msg) => {
      const data = JSON.parse(msg.data);
      applyStatuses(svg, data.nodes);
      api.updates.push({ received: Date.now(), events: data.events, status: data.status });
      if (!swap(live, data.html)) pending = data.html;
      document.body.dataset.runStatus = data.status;
      if (['success', 'failed', 'canceled'].includes(data.status)) {
        ['cancel-form', 'event-form'].forEach((id) => { if ($(id)) $(id).hidden = true; });
      }
      document.body.dataset.lastEvent = data.last_event_id;
    });
    live.addEventListener('focusout', () => { if (pending && swap(live, pending)) pending = null; });
    source.addEventListener('end', () => { source.close(); document.body.dataset.live = 'ended'; });
  }

  // -- the runs page: reload the table when runs change ----------------------------------------------
  function followRuns() {
    const box = $('runs-live');
    if (!box || !window.EventSource) return;
    let timer = null;
    const refresh = async () => {
      timer = null;
      const resp = await fetch(box.dataset.partial, { credentials: 'same-origin', headers: { Accept: 'text/html' } });
      if (resp.ok) box.innerHTML = await resp.text();
    };
    const source = new EventSource(box.dataset.live);
    source.addEventListener('open', () => { document.body.dataset.live = 'open'; });
    source.addEventListener('changed', () => { if (!timer) timer = setTimeout(refresh, 150); });
    const form = $('filters');
    if (form) form.querySelectorAll('select').forEach((s) => s.addEventListener('change', () => form.submit()));
  }

  // -- actions: posted by fetch, so the page stays open and its live updates show what followed ------
  function flash(text, bad) {
    const box = $('flash');
    if (!box) return;
    box.textContent = text;
    box.hidden = false;
    box.classList.toggle('bad', !!bad);
  }

  document.addEventListener('submit', async (ev) => {
    const form = ev.target;
    if (!(form instanceof HTMLFormElement) || !form.hasAttribute('data-fetch')) return;
    ev.preventDefault();
    const body = new URLSearchParams(new FormData(form, ev.submitter));
    form.querySelectorAll('button').forEach((b) => { b.disabled = true; });
    try {
      const resp = await fetch(form.action, { method: 'POST', body, credentials: 'same-origin',
        headers: { 'X-Requested-With': 'fetch' } });
      const text = await resp.text();
      let data = null;
      try { data = JSON.parse(text); } catch (_) { data = { ok: false, message: text || resp.statusText }; }
      flash(data.message, !resp.ok);
      if (data.location && data.location !== location.pathname) location.assign(data.location);
    } catch (err) {
      flash(`The request failed: ${err}`, true);
    } finally {
      form.querySelectorAll('button').forEach((b) => { b.disabled = false; });
    }
  });

  function init() {
    const page = document.body.dataset.page;
    if (page === 'run') {
      const box = $('graph');
      const svg = box ? drawGraph(box, JSON.parse($('graph-data').textContent), JSON.parse($('graph-status').textContent)) : null;
      followRun(svg);
    } else if (page === 'runs') {
      followRuns();
    } else if (page === 'workflows') {
      document.querySelectorAll('[data-graph]').forEach((box) => drawGraph(box, JSON.parse($(box.dataset.graph).textContent), {}));
    }
  }

  api.drawGraph = drawGraph;
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init); else init();
})();
