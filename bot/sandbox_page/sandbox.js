// The threadflow sandbox page: a Slack channel drawn from the emulator's state.
//
// It never talks to the bot. Reading: one EventSource on /sandbox/events (a snapshot, then changes).
// Acting: POST /sandbox/{command,message,click,view} and the emulator does what Slack would do,
// including signing the request to the bot. Plain JS, no build step, nothing fetched from elsewhere.
'use strict';

(() => {
  const EMOJI = {
    white_check_mark: '✅', x: '❌', hourglass_flowing_sand: '⏳', arrows_counterclockwise: '🔄',
    double_vertical_bar: '⏸️', zzz: '💤', no_entry_sign: '🚫', no_entry: '⛔', warning: '⚠️',
    information_source: 'ℹ️', repeat: '🔁', hourglass: '⌛', tada: '🎉', eyes: '👀', rocket: '🚀',
    thumbsup: '👍', '+1': '👍', wave: '👋', heavy_check_mark: '✔️', robot_face: '🤖', gear: '⚙️', memo: '📝',
  };
  const PALETTE = ['#e8912d', '#2eb67d', '#36c5f0', '#e01e5a', '#1264a3', '#9b59b6', '#4a8c8c'];

  const S = {
    users: {}, channels: [], msgs: {}, ephemerals: [], views: {}, people: [], dismissed: new Set(),
    bot: 'U0BOT', command: '/flow', model: 'offline', me: localStorage.getItem('threadflow.me') || 'U0ALICE',
    channel: 'C0GENERAL', thread: null, modal: null, live: false,
    streams: {}, assistant: { enabled: true, threads: [] }, assistantOpen: false, assistantTs: null,
  };
  const $ = (id) => document.getElementById(id);
  // Every workspace of the sandbox has its own page (``/`` and ``/w/TEAM/``); its endpoints sit beside it.
  const BASE = location.pathname.replace(/[^/]*$/, '');

  // -- text ------------------------------------------------------------------------------------

  const esc = (s) => String(s ?? '').replace(/[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  const unslack = (s) => s.replace(/&lt;/g, '<').replace(/&gt;/g, '>').replace(/&amp;/g, '&');
  const userName = (id) => (S.users[id] ? S.users[id].name : id);

  function slackToken(inner) {
    const [target, label] = inner.split('|', 2);
    if (target.startsWith('@')) {
      const id = target.slice(1);
      return `<span class="mention${id === S.me ? ' me' : ''}">@${esc(label || userName(id))}</span>`;
    }
    if (target.startsWith('#')) {
      const ch = S.channels.find((c) => c.id === target.slice(1));
      return `<span class="mention">#${esc(label || (ch ? ch.name : target.slice(1)))}</span>`;
    }
    if (target.startsWith('!')) {
      const special = target.slice(1).split('^')[0];
      return `<span class="mention">${esc(label || '@' + special)}</span>`;
    }
    return `<a href="${esc(target)}" target="_blank" rel="noopener noreferrer">${esc(label || target)}</a>`;
  }

  // Slack's mrkdwn: ```blocks```, `code`, <@U..>/<#C..>/<url|label>, *bold*, _italic_, ~strike~, > quotes.
  function mrkdwn(text, plain = false) {
    const stash = [];
    const put = (html) => `\u0001${stash.push(html) - 1}\u0002`;
    let s = String(text ?? '');
    if (!plain) {
      s = s.replace(/```([\s\S]*?)```/g, (_, code) =>
        put(`<pre class="code-block">${esc(unslack(code.replace(/^\n/, '')))}</pre>`));
      s = s.replace(/`([^`\n]+)`/g, (_, code) => put(`<code>${esc(unslack(code))}</code>`));
      s = s.replace(/<([@#!][^>\s]*|(?:https?|mailto):[^>\s]+)>/g, (_, inner) => put(slackToken(inner)));
      s = unslack(s);
    }
    s = esc(s);
    s = s.replace(/:([a-z0-9_+-]+):/g, (m, name) =>
      (EMOJI[name] ? put(`<span class="emoji" title=":${name}:">${EMOJI[name]}</span>`) : m));
    if (!plain) {
      s = s.replace(/(^|[^\w*])\*(?=\S)([^*\n]*?\S)\*(?![\w*])/g, '$1<b>$2</b>');
      s = s.replace(/(^|[^\w])_(?=\S)([^_\n]*?\S)_(?!\w)/g, '$1<i>$2</i>');
      s = s.replace(/(^|[^\w~])~(?=\S)([^~\n]*?\S)~(?![\w~])/g, '$1<s>$2</s>');
      s = s.replace(/(^|\n)&gt; ?([^\n]*)/g, '$1<blockquote>$2</blockquote>');
    }
    s = s.replace(/<\/blockquote>\n/g, '</blockquote>').replace(/\n/g, '<br>');
    return s.replace(/\u0001(\d+)\u0002/g, (_, i) => stash[Number(i)]);
  }

  const textObj = (t) => (!t ? '' : t.type === 'mrkdwn' ? mrkdwn(t.text) : mrkdwn(t.text, true));

  // Standard markdown (streamed answers and markdown blocks): ```code```, `code`, **bold**, _italic_, lists,
  // [links](url). Slack's &lt; &gt; &amp; escapes are read back first, as Slack shows them.
  function markdown(text) {
    const stash = [];
    const put = (html) => `\u0001${stash.push(html) - 1}\u0002`;
    let s = unslack(String(text ?? ''));
    s = s.replace(/```(?:\w+\n)?([\s\S]*?)(```|$)/g, (_, code) => put(`<pre class="code-block">${esc(code.replace(/^\n/, ''))}</pre>`));
    s = s.replace(/`([^`\n]+)`/g, (_, code) => put(`<code>${esc(code)}</code>`));
    s = s.replace(/\[([^\]\n]+)\]\((https?:[^)\s]+)\)/g, (_, label, url) =>
      put(`<a href="${esc(url)}" target="_blank" rel="noopener noreferrer">${esc(label)}</a>`));
    s = esc(s);
    s = s.replace(/:([a-z0-9_+-]+):/g, (m, name) => (EMOJI[name] ? put(EMOJI[name]) : m));
    s = s.replace(/\*\*(?=\S)([^*\n]*?\S)\*\*/g, '<b>$1</b>');
    s = s.replace(/(^|[^\w])_(?=\S)([^_\n]*?\S)_(?!\w)/g, '$1<i>$2</i>');
    s = s.replace(/(^|\n)[-*] ([^\n]*)/g, '$1<span class="md-li">• $2</span>');
    s = s.replace(/(^|\n)#{1,6} ([^\n]*)/g, '$1<b>$2</b>');
    s = s.replace(/\n/g, '<br>');
    return s.replace(/\u0001(\d+)\u0002/g, (_, i) => stash[Number(i)]);
  }

  const TASK_ICON = { pending: '○', in_progress: '◌', complete: '✓', error: '✗' };
  const richPlain = (r) => (r && r.elements
    ? unslack(r.elements.map((sec) => (sec.elements || []).map((e) => e.text || '').join('')).join('\n')) : '');

  function taskCardHtml(t) {
    const status = t.status || 'pending';
    const details = richPlain(t.details);
    const output = richPlain(t.output);
    return `<div class="task-card status-${esc(status)}" data-task-id="${esc(t.task_id)}" data-status="${esc(status)}">`
      + `<span class="task-icon" aria-hidden="true">${TASK_ICON[status] || '○'}</span>`
      + `<div class="task-main"><div class="task-title">${esc(t.title)}</div>`
      + `${details ? `<div class="task-details">${esc(details)}</div>` : ''}`
      + `${output ? `<div class="task-output">${esc(output)}</div>` : ''}</div>`
      + `<span class="task-status">${esc(status.replace('_', ' '))}</span></div>`;
  }

  // -- Block Kit -------------------------------------------------------------------------------

  function elementHtml(e, blockId) {
    const data = `data-action-id="${esc(e.action_id || '')}" data-block-id="${esc(blockId || '')}"`;
    if (e.type === 'button') {
      const style = e.style === 'primary' || e.style === 'danger' ? ` bk-${e.style}` : '';
      return `<button type="button" class="bk-button${style}" ${data} data-value="${esc(e.value ?? '')}">`
        + `${textObj(e.text)}</button>`;
    }
    if (e.type === 'static_select') {
      const options = (e.options || []).map((o) => `<option value="${esc(o.value)}">${textObj(o.text)}</option>`);
      return `<select class="bk-select" ${data}><option value="" selected disabled>${textObj(e.placeholder) || 'Select…'}`
        + `</option>${options.join('')}</select>`;
    }
    if (e.type === 'feedback_buttons') {
      const button = (which, icon) => {
        const b = e[`${which}_button`] || {};
        return `<button type="button" class="bk-button bk-feedback" ${data} data-value="${which}" `
          + `title="${esc(b.text ? b.text.text : which)}" aria-label="${esc(b.accessibility_label || which)}">${icon}</button>`;
      };
      return `<span class="bk-feedback-buttons">${button('positive', '👍')}${button('negative', '👎')}</span>`;
    }
    if (e.type === 'image') return `<span class="bk-image">[image: ${esc(e.alt_text || '')}]</span>`;
    return `<span class="bk-unsupported">[${esc(e.type)}]</span>`;
  }

  function richText(b) {
    const inline = (el) => {
      if (el.type === 'text') {
        let h = esc(el.text).replace(/\n/g, '<br>');
        const st = el.style || {};
        if (st.code) h = `<code>${h}</code>`;
        if (st.bold) h = `<b>${h}</b>`;
        if (st.italic) h = `<i>${h}</i>`;
        if (st.strike) h = `<s>${h}</s>`;
        return h;
      }
      if (el.type === 'user') return slackToken('@' + el.user_id);
      if (el.type === 'link') return slackToken(`${el.url}|${el.text || el.url}`);
      if (el.type === 'emoji') return EMOJI[el.name] || `:${esc(el.name)}:`;
      return '';
    };
    const section = (s) => {
      if (s.type === 'rich_text_preformatted') return `<pre class="code-block">${(s.elements || []).map(inline).join('')}</pre>`;
      if (s.type === 'rich_text_quote') return `<blockquote>${(s.elements || []).map(inline).join('')}</blockquote>`;
      if (s.type === 'rich_text_list') return `<ul>${(s.elements || []).map((i) => `<li>${section(i)}</li>`).join('')}</ul>`;
      return (s.elements || []).map(inline).join('');
    };
    return `<div class="bk-text">${(b.elements || []).map(section).join('')}</div>`;
  }

  function blockHtml(b) {
    switch (b.type) {
      case 'header':
        return `<div class="bk-header">${textObj(b.text)}</div>`;
      case 'section': {
        const fields = b.fields ? `<div class="bk-fields">${b.fields.map((f) => `<div>${textObj(f)}</div>`).join('')}</div>` : '';
        const acc = b.accessory ? `<div class="bk-accessory">${elementHtml(b.accessory, b.block_id)}</div>` : '';
        return `<div class="bk-section"><div class="bk-section-main">${b.text ? `<div class="bk-text">${textObj(b.text)}</div>` : ''}`
          + `${fields}</div>${acc}</div>`;
      }
      case 'context':
        return `<div class="bk-context">${(b.elements || []).map((e) =>
          (e.type === 'image' ? elementHtml(e) : `<span>${textObj(e)}</span>`)).join('')}</div>`;
      case 'divider':
        return '<hr class="bk-divider">';
      case 'actions':
        return `<div class="bk-actions">${(b.elements || []).map((e) => elementHtml(e, b.block_id)).join('')}</div>`;
      case 'image':
        return `<div class="bk-image">[image: ${esc(b.alt_text || '')}]</div>`;
      case 'rich_text':
        return richText(b);
      case 'markdown':
        return `<div class="bk-text bk-markdown">${markdown(b.text)}</div>`;
      case 'task_card':
        return taskCardHtml(b);
      case 'plan':
        return `<div class="plan"><div class="plan-title">${esc(b.title || 'Plan')}</div>`
          + `${(b.tasks || []).map(taskCardHtml).join('')}</div>`;
      case 'context_actions':
        return `<div class="bk-context-actions">${(b.elements || []).map((e) => elementHtml(e, b.block_id)).join('')}</div>`;
      default:
        return `<div class="bk-unsupported">This message contains a <code>${esc(b.type)}</code> block the sandbox does not draw.</div>`;
    }
  }

  function contentHtml(m) {
    if (m.blocks && m.blocks.length) return `<div class="blocks">${m.blocks.map(blockHtml).join('')}</div>`;
    let h = `<div class="bk-text">${mrkdwn(m.text)}</div>`;
    for (const a of m.attachments || []) {
      h += `<div class="attachment" style="border-color:${esc(a.color || '#ddd')}">${mrkdwn(a.text || a.fallback || '')}`
        + `${a.blocks ? a.blocks.map(blockHtml).join('') : ''}</div>`;
    }
    return h;
  }

  // -- the model of the page -------------------------------------------------------------------

  const channelMsgs = (cid) => S.msgs[cid] || (S.msgs[cid] = new Map());
  const isReply = (m) => m.thread_ts && m.thread_ts !== m.ts;
  const mine = (e) => e.user === S.me && !S.dismissed.has(e.ts);
  const replies = (cid, root) => [...channelMsgs(cid).values()].filter((m) => m.thread_ts === root && m.ts !== root);

  function put(cid, m) {
    channelMsgs(cid).set(m.ts, { ...m, channel: cid });
  }

  function applySnapshot(snap) {
    S.users = Object.fromEntries(snap.users.map((u) => [u.id, u]));
    S.channels = snap.channels.filter((c) => !c.is_im);
    S.people = snap.people;
    S.bot = snap.bot_user_id;
    S.command = snap.command;
    S.model = snap.model;
    const inspector = $('inspector-link');
    if (snap.inspector_url) { inspector.href = snap.inspector_url; inspector.hidden = false; }
    S.msgs = {};
    for (const [cid, list] of Object.entries(snap.messages)) list.forEach((m) => put(cid, m));
    S.ephemerals = snap.ephemerals;
    S.views = Object.fromEntries(snap.views.map((v) => [v.id, v]));
    S.streams = snap.streams || {};
    S.assistant = snap.assistant || { enabled: false, threads: [] };
    if (!S.people.includes(S.me)) S.me = S.people[0];
    renderAll();
    const link = /^#thread=([^:]+):([\d.]+)$/.exec(location.hash); // a Slack permalink from the inspector
    if (link && !S.thread && channelMsgs(link[1]).has(link[2])) openThread(link[1], link[2]);
  }

  function applyChange(ch) {
    const d = ch.data;
    switch (ch.kind) {
      case 'message.posted':
      case 'message.updated': {
        if (d.message.stream) S.streams[d.ts] = d.message.stream;
        put(d.channel, d.message);
        if (S.assistantOpen && assistantThread() && assistantThread().channel === d.channel) renderAssistant();
        const m = channelMsgs(d.channel).get(d.ts);
        refresh(d.channel, d.ts, ch.kind === 'message.posted' && m.user === S.me);
        if (isReply(m)) refresh(d.channel, m.thread_ts);
        break;
      }
      case 'message.deleted': {
        const m = channelMsgs(d.channel).get(d.ts);
        channelMsgs(d.channel).delete(d.ts);
        document.querySelectorAll(`[data-ts="${CSS.escape(d.ts)}"]`).forEach((el) => el.remove());
        if (m && isReply(m)) refresh(d.channel, m.thread_ts);
        if (S.thread && S.thread.ts === d.ts) closeThread();
        break;
      }
      case 'ephemeral.posted':
      case 'ephemeral.updated': {
        const e = { ...d.message, channel: d.channel, user: d.user };
        const i = S.ephemerals.findIndex((x) => x.ts === d.ts);
        if (i >= 0) S.ephemerals[i] = e; else S.ephemerals.push(e);
        if (e.user === S.me) refresh(d.channel, d.ts, true);
        if (S.assistantOpen) renderAssistant();
        break;
      }
      case 'ephemeral.deleted':
        S.ephemerals = S.ephemerals.filter((x) => x.ts !== d.ts);
        document.querySelectorAll(`[data-ts="${CSS.escape(d.ts)}"]`).forEach((el) => el.remove());
        break;
      case 'assistant.updated': {
        const t = d.thread;
        const i = S.assistant.threads.findIndex((x) => x.channel === t.channel && x.thread_ts === t.thread_ts);
        if (i >= 0) S.assistant.threads[i] = t; else S.assistant.threads.push(t);
        if (S.assistantOpen) renderAssistant();
        break;
      }
      case 'view.opened':
      case 'view.updated':
        S.views[d.id] = { id: d.id, user: d.user, closed: false, view: d.view };
        renderModal();
        break;
      case 'view.closed':
        if (S.views[d.id]) S.views[d.id].closed = true;
        renderModal();
        break;
      default:
        break;
    }
  }

  // -- drawing ---------------------------------------------------------------------------------

  function avatar(id, isBot) {
    if (isBot) return '<div class="avatar bot" aria-hidden="true">tf</div>';
    return `<div class="avatar" style="background:${colorOf(id)}" aria-hidden="true">${initial(id)}</div>`;
  }

  function colorOf(id) {
    let h = 0;
    for (const c of String(id)) h = (h * 31 + c.charCodeAt(0)) >>> 0;
    return PALETTE[h % PALETTE.length];
  }

  const initial = (id) => esc(userName(id || '?').slice(0, 1).toUpperCase());

  function time(ts) {
    return new Date(parseFloat(ts) * 1000).toLocaleTimeString([], { hour: 'numeric', minute: '2-digit' });
  }

  function messageEl(m, where) {
    const eph = m.is_ephemeral === true;
    const isBot = eph || Boolean(m.bot_id);
    const el = document.createElement('div');
    el.className = `msg${eph ? ' ephemeral' : ''}${isBot ? ' from-bot' : ''}`;
    el.dataset.ts = m.ts;
    el.dataset.channel = m.channel;
    let meta = `<span class="author">${esc(isBot ? 'threadflow' : userName(m.user))}</span>`;
    if (isBot) meta += '<span class="app-badge">APP</span>';
    meta += `<time datetime="${new Date(parseFloat(m.ts) * 1000).toISOString()}">${time(m.ts)}</time>`;
    if (m.edited) meta += '<span class="edited">(edited)</span>';
    let html = avatar(m.user, isBot) + `<div class="msg-body"><div class="msg-meta">${meta}</div>`;
    if (eph) {
      html += '<div class="eph-label"><span aria-hidden="true">👁</span> Only visible to you'
        + `<button type="button" class="link dismiss" data-dismiss="${esc(m.ts)}">Dismiss</button></div>`;
    }
    const stream = S.streams[m.ts];
    const streaming = stream && stream.state === 'streaming';
    if (stream) el.dataset.stream = stream.state;
    html += `<div class="msg-content">${contentHtml(m)}${streaming ? '<span class="stream-cursor" aria-label="writing…"></span>' : ''}</div>`;
    if (where === 'channel' && !eph) {
      const rs = replies(m.channel, m.ts);
      if (rs.length) {
        const who = [...new Set(rs.map((r) => r.user))].slice(0, 4).map((u) => (u === S.bot
          ? '<span class="mini-avatar bot">tf</span>'
          : `<span class="mini-avatar" style="background:${colorOf(u)}">${initial(u)}</span>`)).join('');
        html += `<button type="button" class="reply-bar" data-open-thread="${esc(m.ts)}">${who}`
          + `<span class="reply-count">${rs.length} ${rs.length === 1 ? 'reply' : 'replies'}</span>`
          + `<span class="reply-last">Last reply ${time(rs[rs.length - 1].ts)}</span></button>`;
      }
    }
    html += '</div>';
    if (where === 'channel' && !eph) {
      html += `<div class="msg-actions"><button type="button" class="icon-button" data-open-thread="${esc(m.ts)}" `
        + 'title="Reply in thread" aria-label="Reply in thread">💬</button></div>';
    }
    el.innerHTML = html;
    return el;
  }

  // Where a message belongs: the channel list, the open thread, both, or neither.
  function placesOf(cid, ts) {
    const m = channelMsgs(cid).get(ts);
    const e = m ? null : S.ephemerals.find((x) => x.ts === ts && x.channel === cid);
    const item = m || e;
    const places = [];
    if (!item || (e && !mine(e))) return { item, places };
    const inThread = isReply(item) || Boolean(e && e.thread_ts);
    const root = inThread ? item.thread_ts : item.ts;
    if (cid === S.channel && (!inThread || item.subtype === 'thread_broadcast')) places.push(['channel', $('messages')]);
    if (S.thread && S.thread.channel === cid && S.thread.ts === root) places.push(['thread', $('thread-messages')]);
    return { item, places };
  }

  const nearBottom = (box) => box.scrollHeight - box.scrollTop - box.clientHeight < 120;

  function insertSorted(box, el) {
    const ts = parseFloat(el.dataset.ts);
    const after = [...box.querySelectorAll(':scope > .msg')].find((x) => parseFloat(x.dataset.ts) > ts);
    box.insertBefore(el, after || null);
  }

  function refresh(cid, ts, follow = false) {
    const { item, places } = placesOf(cid, ts);
    for (const [where, box] of places) {
      const stick = follow || nearBottom(box);
      const old = box.querySelector(`:scope > .msg[data-ts="${CSS.escape(ts)}"]`);
      const el = messageEl(item, where);
      if (old) old.replaceWith(el); else insertSorted(box, el);
      box.querySelector(':scope > .welcome')?.remove();
      if (stick && !old) box.scrollTop = box.scrollHeight;
    }
  }

  function renderList(box, items, where) {
    box.replaceChildren(...items.sort((a, b) => parseFloat(a.ts) - parseFloat(b.ts)).map((m) => messageEl(m, where)));
    box.scrollTop = box.scrollHeight;
  }

  function renderChannel() {
    const ch = S.channels.find((c) => c.id === S.channel) || { name: S.channel };
    $('channel-title').textContent = `# ${ch.name}`;
    $('composer').placeholder = `Message #${ch.name}`;
    const items = [...channelMsgs(S.channel).values()].filter((m) => !isReply(m) || m.subtype === 'thread_broadcast');
    items.push(...S.ephemerals.filter((e) => e.channel === S.channel && !e.thread_ts && mine(e)));
    const box = $('messages');
    renderList(box, items, 'channel');
    if (!items.length) {
      const w = document.createElement('div');
      w.className = 'welcome';
      w.innerHTML = '<h2>👋 Welcome to the threadflow sandbox</h2>'
        + '<p>This page is a local Slack channel. The bot is the real threadflow bot, running workflows on '
        + `your machine; its agents use the <b>${esc(S.model)}</b> model`
        + (S.model === 'offline' ? ' (set <code>OPENAI_API_KEY</code> for a real one).</p>' : '.</p>')
        + '<ol><li>Type <code>/flow run approval</code>, open the thread and click <b>Approve</b>.</li>'
        + '<li>Switch to <b>bob</b> (bottom left) and try to approve someone else\'s run.</li>'
        + '<li>Run <code>/flow run deploy-app "a Postgres-backed API for 10k users"</code>, approve the cost, '
        + 'then ask in its thread: <i>what did the architect decide?</i> The answer streams in; rate it 👍 / 👎.</li>'
        + '<li>Open <b>✦ Assistant</b> (left): the workflows are offered as prompts, and a run started there '
        + 'lives in that thread.</li></ol>';
      box.append(w);
    }
  }

  function renderThread() {
    const pane = $('thread-pane');
    if (!S.thread) { pane.hidden = true; return; }
    const { channel, ts } = S.thread;
    const root = channelMsgs(channel).get(ts);
    if (!root) { closeThread(); return; }
    pane.hidden = false;
    const ch = S.channels.find((c) => c.id === channel);
    $('thread-channel').textContent = ch ? `#${ch.name}` : '';
    const items = [root, ...replies(channel, ts)];
    items.push(...S.ephemerals.filter((e) => e.channel === channel && e.thread_ts === ts && mine(e)));
    renderList($('thread-messages'), items, 'thread');
  }

  function renderSidebar() {
    $('channels').innerHTML = S.channels.map((c) =>
      `<button type="button" class="channel-link${c.id === S.channel ? ' active' : ''}" data-channel="${esc(c.id)}">`
      + `<span aria-hidden="true">#</span> ${esc(c.name)}</button>`).join('');
    $('user-picker').innerHTML = S.people.map((id) =>
      `<option value="${esc(id)}"${id === S.me ? ' selected' : ''}>${esc(userName(id))}</option>`).join('');
  }

  function renderAll() {
    renderSidebar();
    renderChannel();
    renderThread();
    renderAssistant();
    renderModal();
  }

  function openThread(channel, ts) {
    if (S.assistantOpen) closeAssistant();
    S.thread = { channel, ts };
    renderThread();
    $('thread-composer').focus();
  }

  function closeThread() {
    S.thread = null;
    $('thread-pane').hidden = true;
  }

  // -- the assistant container -----------------------------------------------------------------

  function myThreads() {
    return S.assistant.threads.filter((t) => t.user === S.me);
  }

  function assistantThread() {
    const mine = myThreads();
    return mine.find((t) => t.thread_ts === S.assistantTs) || mine[mine.length - 1] || null;
  }

  function renderAssistant() {
    const pane = $('assistant-pane');
    if (!S.assistantOpen) { pane.hidden = true; return; }
    pane.hidden = false;
    const t = assistantThread();
    $('assistant-title').textContent = t && t.title ? t.title : 'New chat';
    const box = $('assistant-messages');
    const prompts = $('assistant-prompts');
    const status = $('assistant-status');
    if (!t) {
      box.innerHTML = '<div class="welcome"><p>Starting a thread…</p></div>';
      prompts.innerHTML = '';
      status.hidden = true;
      return;
    }
    S.assistantTs = t.thread_ts;
    const items = replies(t.channel, t.thread_ts);
    items.push(...S.ephemerals.filter((e) => e.channel === t.channel && e.thread_ts === t.thread_ts && mine(e)));
    renderList(box, items, 'assistant');
    if (!items.length) {
      const w = document.createElement('div');
      w.className = 'welcome';
      w.innerHTML = '<p>Ask threadflow anything, or start a workflow:</p>';
      box.append(w);
    }
    prompts.innerHTML = (t.prompts_title ? `<div class="prompts-title">${esc(t.prompts_title)}</div>` : '')
      + t.prompts.map((p) => `<button type="button" class="chip prompt" data-prompt="${esc(p.message)}">${esc(p.title)}</button>`).join('');
    prompts.hidden = !t.prompts.length;
    // Slack clears "is thinking..." when the app replies in the thread.
    const answeredAfter = items.some((m) => m.bot_id && parseFloat(m.ts) > (t.status_at || 0));
    const thinking = t.status && !answeredAfter;
    status.hidden = !thinking;
    status.textContent = thinking ? `threadflow ${t.status}` : '';
  }

  async function openAssistant(fresh) {
    S.assistantOpen = true;
    closeThread();
    if (fresh || !myThreads().length) {
      S.assistantTs = null;
      renderAssistant();
      const res = await post(BASE + 'sandbox/assistant', { user: S.me, channel: S.channel });
      if (res && res.thread_ts) S.assistantTs = res.thread_ts;
    }
    renderAssistant();
    $('assistant-composer').focus();
  }

  function closeAssistant() {
    S.assistantOpen = false;
    $('assistant-pane').hidden = true;
  }

  async function askAssistant(text) {
    const t = assistantThread();
    if (!t || !text.trim()) return;
    await post(BASE + 'sandbox/message', { text, user: S.me, channel: t.channel, thread_ts: t.thread_ts });
  }

  // -- modals ----------------------------------------------------------------------------------

  function renderModal() {
    const dialog = $('modal');
    const open = Object.values(S.views).filter((v) => !v.closed && v.user === S.me);
    const current = open[open.length - 1];
    if (!current) {
      S.modal = null;
      if (dialog.open) dialog.close();
      return;
    }
    if (S.modal === current.view.hash && dialog.open) return;
    S.modal = current.view.hash;
    const v = current.view;
    const inputs = (v.blocks || []).map((b) => {
      if (b.type !== 'input') return blockHtml(b);
      const e = b.element || {};
      const name = `${b.block_id}::${e.action_id}`;
      const initial = esc(e.initial_value || '');
      const placeholder = e.placeholder ? ` placeholder="${esc(e.placeholder.text)}"` : '';
      const control = e.type === 'plain_text_input'
        ? (e.multiline ? `<textarea name="${esc(name)}" rows="4"${placeholder}>${initial}</textarea>`
          : `<input type="text" name="${esc(name)}" value="${initial}"${placeholder}>`)
        : `<span class="bk-unsupported">[${esc(e.type)}]</span>`;
      return `<label class="input-block" data-block-id="${esc(b.block_id)}"><span class="input-label">${textObj(b.label)}`
        + `${b.optional ? ' <span class="optional">(optional)</span>' : ''}</span>${control}`
        + `${b.hint ? `<span class="hint">${textObj(b.hint)}</span>` : ''}<span class="input-error" hidden></span></label>`;
    }).join('');
    dialog.innerHTML = `<form method="dialog" class="modal-form" data-view-id="${esc(current.id)}">`
      + `<header><h2>${textObj(v.title)}</h2><button type="button" class="icon-button" data-close-view aria-label="Close">✕</button></header>`
      + `<div class="modal-body">${inputs}</div>`
      + `<footer><button type="button" class="bk-button" data-close-view>${v.close ? textObj(v.close) : 'Cancel'}</button>`
      + `${v.submit ? `<button type="submit" class="bk-button bk-primary">${textObj(v.submit)}</button>` : ''}</footer></form>`;
    if (!dialog.open) dialog.showModal();
    dialog.querySelector('textarea, input')?.focus();
  }

  async function submitModal(form) {
    const values = {};
    for (const field of form.querySelectorAll('[name]')) {
      const [blockId, actionId] = field.name.split('::');
      (values[blockId] = values[blockId] || {})[actionId] = field.value;
    }
    form.querySelectorAll('.input-error').forEach((x) => { x.hidden = true; });
    const res = await post(BASE + 'sandbox/view', { view_id: form.dataset.viewId, values, user: S.me });
    for (const [blockId, message] of Object.entries((res && res.errors) || {})) {
      const slot = form.querySelector(`[data-block-id="${CSS.escape(blockId)}"] .input-error`);
      if (slot) { slot.textContent = message; slot.hidden = false; }
    }
  }

  // -- acting ----------------------------------------------------------------------------------

  function toast(text) {
    const t = $('toast');
    t.textContent = text;
    t.hidden = false;
    clearTimeout(toast.timer);
    toast.timer = setTimeout(() => { t.hidden = true; }, 5000);
  }

  async function post(path, body) {
    try {
      const resp = await fetch(path, {
        method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
      });
      const data = await resp.json();
      if (!resp.ok) toast(data.error || `${path} failed (${resp.status})`);
      return data;
    } catch (err) {
      toast(`The sandbox is not reachable (${err.message}). Is threadflow dev still running?`);
      return null;
    }
  }

  async function send(box, threadTs) {
    const text = box.value.trim();
    if (!text) return;
    box.value = '';
    autosize(box);
    if (text.startsWith('/')) {
      await post(BASE + 'sandbox/command', { text, user: S.me, channel: S.channel });
    } else {
      await post(BASE + 'sandbox/message', { text, user: S.me, channel: threadTs ? S.thread.channel : S.channel, thread_ts: threadTs });
    }
  }

  async function click(button) {
    const msg = button.closest('.msg');
    if (!msg || button.getAttribute('aria-busy') === 'true') return;
    button.setAttribute('aria-busy', 'true');
    try {
      await post(BASE + 'sandbox/click', {
        ts: msg.dataset.ts, action_id: button.dataset.actionId, block_id: button.dataset.blockId || null,
        value: button.dataset.value ?? button.value ?? null, user: S.me,
      });
    } finally {
      button.removeAttribute('aria-busy');
    }
  }

  function autosize(box) {
    box.style.height = 'auto';
    box.style.height = `${Math.min(box.scrollHeight, 200)}px`;
  }

  function wireComposer(form, box, threadTs) {
    form.addEventListener('submit', (ev) => { ev.preventDefault(); send(box, threadTs()); });
    box.addEventListener('input', () => autosize(box));
    box.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
        ev.preventDefault();
        send(box, threadTs());
      }
    });
  }

  function connect() {
    const conn = $('conn');
    const source = new EventSource(BASE + 'sandbox/events');
    source.addEventListener('open', () => { conn.dataset.state = 'live'; conn.textContent = 'live'; });
    source.addEventListener('error', () => { conn.dataset.state = 'down'; conn.textContent = 'reconnecting…'; });
    source.addEventListener('snapshot', (ev) => applySnapshot(JSON.parse(ev.data)));
    source.addEventListener('change', (ev) => applyChange(JSON.parse(ev.data)));
  }

  function init() {
    wireComposer($('composer-form'), $('composer'), () => null);
    wireComposer($('thread-form'), $('thread-composer'), () => (S.thread ? S.thread.ts : null));
    const abox = $('assistant-composer');
    const asend = () => { const text = abox.value; abox.value = ''; autosize(abox); askAssistant(text); };
    $('assistant-form').addEventListener('submit', (ev) => { ev.preventDefault(); asend(); });
    abox.addEventListener('input', () => autosize(abox));
    abox.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); asend(); }
    });
    $('thread-close').addEventListener('click', closeThread);
    $('user-picker').addEventListener('change', (ev) => {
      S.me = ev.target.value;
      localStorage.setItem('threadflow.me', S.me);
      renderAll();
    });
    document.addEventListener('click', (ev) => {
      const t = ev.target.closest('button, [data-open-thread]');
      if (!t) return;
      if (t.dataset.openThread) {
        const msg = t.closest('.msg');
        openThread(msg.dataset.channel, t.dataset.openThread);
      } else if (t.dataset.dismiss) {
        S.dismissed.add(t.dataset.dismiss);
        document.querySelectorAll(`[data-ts="${CSS.escape(t.dataset.dismiss)}"]`).forEach((el) => el.remove());
      } else if (t.dataset.channel) {
        S.channel = t.dataset.channel;
        closeThread();
        renderAll();
      } else if (t.dataset.fill) {
        const box = $('composer');
        box.value = t.dataset.fill;
        autosize(box);
        box.focus();
      } else if (t.dataset.prompt) {
        askAssistant(t.dataset.prompt);
      } else if (t.id === 'assistant-open') {
        openAssistant(false);
      } else if (t.id === 'assistant-new') {
        openAssistant(true);
      } else if (t.id === 'assistant-close') {
        closeAssistant();
      } else if (t.hasAttribute('data-close-view')) {
        const form = t.closest('form');
        post(BASE + 'sandbox/view/close', { view_id: form.dataset.viewId });
      } else if (t.classList.contains('bk-button') && t.dataset.actionId !== undefined) {
        click(t);
      }
    });
    document.addEventListener('change', (ev) => {
      if (ev.target.classList.contains('bk-select')) {
        const sel = ev.target;
        sel.dataset.value = sel.value;
        click(sel);
      }
    });
    const dialog = $('modal');
    dialog.addEventListener('submit', (ev) => { ev.preventDefault(); submitModal(ev.target); });
    dialog.addEventListener('cancel', (ev) => {
      ev.preventDefault();
      const form = dialog.querySelector('form');
      if (form) post(BASE + 'sandbox/view/close', { view_id: form.dataset.viewId });
    });
    connect();
    $('composer').focus();
  }

  // For tests and the curious: the renderer, callable from the console.
  window.threadflowSandbox = { mrkdwn, markdown, state: S };
  init();
})();
