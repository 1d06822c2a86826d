"use strict";
// hiseg viewer: explore one image's tree of regions. Reads the JSON of #hiseg-data
// (hiseg_jax/viewer.py): the photo, the zlib-compressed leaf index of every pixel, and the
// tree. The view is a node `focus` and a depth `level`: the regions shown (the cut) are the
// focus's descendants at that depth, or its leaves that stopped splitting above it.
(() => {
  const DATA = JSON.parse(document.getElementById("hiseg-data").textContent);
  const W = DATA.width;
  const H = DATA.height;
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";
  const LITTLE = new Uint8Array(new Uint32Array([1]).buffer)[0] === 1;
  const THICK = Math.max(1, Math.round(Math.max(W, H) / 512));  // as pictures.render_level

  // ---- the tree, indexed by node id ----
  const size = Math.max(...DATA.nodes.id) + 1;
  const parent = new Int32Array(size).fill(-1);
  const depth = new Int32Array(size);
  const area = new Float64Array(size);
  const color = new Array(size);
  const children = Array.from({ length: size }, () => []);
  DATA.nodes.id.forEach((m, i) => {
    parent[m] = DATA.nodes.parent[i];
    depth[m] = DATA.nodes.depth[i];
    area[m] = DATA.nodes.area[i];
    color[m] = DATA.nodes.color[i];
  });
  DATA.nodes.id.forEach((m) => { if (parent[m] >= 0) children[parent[m]].push(m); });
  const byArea = (a, b) => area[b] - area[a] || a - b;
  children.forEach((list) => list.sort(byArea));
  const deepest = Math.max(...DATA.nodes.depth);
  const leafIds = Int32Array.from(DATA.leafIds);

  const ancestorAt = (m, d) => { while (depth[m] > d) m = parent[m]; return m; };
  const within = (m, f) => ancestorAt(m, depth[f]) === f;  // m is f or below it

  // ---- state ----
  let leaf = null;            // leaf index of every pixel, row-major [H * W]
  let focus = 0;
  let level = Math.min(1, deepest);
  const history = [];         // views to go back to: {focus, level}
  let cut = [];               // nodes shown, largest first
  let cutOfLeaf = new Int32Array(leafIds.length);
  let selected = -1;          // index into cut (keyboard)
  let hovered = -1;           // node under the pointer (image, tree or list)
  let note = "";

  // ---- pixels ----
  const canvases = ["fill", "edges", "hl"].map((id) => {
    const canvas = $(id);
    canvas.width = W;
    canvas.height = H;
    const ctx = canvas.getContext("2d");
    const image = ctx.createImageData(W, H);
    return { ctx, image, px: new Uint32Array(image.data.buffer) };
  });
  const [fillLayer, edgeLayer, hlLayer] = canvases;
  const rgba = (hex, alpha) => {
    const r = parseInt(hex.slice(1, 3), 16), g = parseInt(hex.slice(3, 5), 16);
    const b = parseInt(hex.slice(5, 7), 16);
    return LITTLE ? ((alpha << 24) | (b << 16) | (g << 8) | r) >>> 0
      : ((r << 24) | (g << 16) | (b << 8) | alpha) >>> 0;
  };
  const WHITE = rgba("#ffffff", 255);
  const SHADE = rgba("#10131a", 165);
  const LIGHT = rgba("#ffffff", 80);
  const RING = rgba("#ffd21f", 255);

  // Over the rectangle [x0, x1) x [y0, y1): `near[p]` = city-block distance (capped at 255)
  // to the nearest border pixel, a pixel whose label `labelOf[leaf[p]]` differs from the one
  // above or to its left (pictures.boundary_mask). Two raster passes give the exact distance,
  // so `near < t` is that mask dilated t - 1 times by a cross, as scipy's binary_dilation.
  const near = new Uint8Array(W * H);
  function borderDistance(labelOf, x0, y0, x1, y1) {
    for (let y = y0; y < y1; y++) {
      for (let x = x0, p = y * W + x0; x < x1; x++, p++) {
        const l = labelOf[leaf[p]];
        if ((y > 0 && labelOf[leaf[p - W]] !== l) || (x > 0 && labelOf[leaf[p - 1]] !== l)) {
          near[p] = 0;
          continue;
        }
        let d = 255;
        if (x > x0 && near[p - 1] + 1 < d) d = near[p - 1] + 1;
        if (y > y0 && near[p - W] + 1 < d) d = near[p - W] + 1;
        near[p] = d;
      }
    }
    for (let y = y1 - 1; y >= y0; y--) {
      for (let x = x1 - 1, p = y * W + x1 - 1; x >= x0; x--, p--) {
        let d = near[p];
        if (x < x1 - 1 && near[p + 1] + 1 < d) d = near[p + 1] + 1;
        if (y < y1 - 1 && near[p + W] + 1 < d) d = near[p + W] + 1;
        near[p] = d;
      }
    }
  }

  function paintRegions() {
    const lut = new Uint32Array(leafIds.length);
    cutOfLeaf.forEach((m, k) => { lut[k] = m >= 0 ? rgba(color[m], 255) : 0; });
    borderDistance(cutOfLeaf, 0, 0, W, H);
    const fill = fillLayer.px, edge = edgeLayer.px;
    for (let p = 0; p < W * H; p++) {
      const k = leaf[p];
      fill[p] = lut[k];
      edge[p] = near[p] < THICK ? WHITE : cutOfLeaf[k] < 0 ? SHADE : 0;
    }
    fillLayer.ctx.putImageData(fillLayer.image, 0, 0);
    edgeLayer.ctx.putImageData(edgeLayer.image, 0, 0);
  }

  // Bounding box [x0, y0, x1, y1) of every leaf, so a highlight repaints only its region.
  let leafBox = null;
  function measureLeaves() {
    const K = leafIds.length;
    leafBox = { x0: new Int32Array(K).fill(W), y0: new Int32Array(K).fill(H),
                x1: new Int32Array(K), y1: new Int32Array(K) };
    for (let y = 0, p = 0; y < H; y++) {
      for (let x = 0; x < W; x++, p++) {
        const k = leaf[p];
        if (x < leafBox.x0[k]) leafBox.x0[k] = x;
        if (x >= leafBox.x1[k]) leafBox.x1[k] = x + 1;
        if (y < leafBox.y0[k]) leafBox.y0[k] = y;
        leafBox.y1[k] = y + 1;
      }
    }
  }

  let lit = null;  // the rectangle the highlight covers now
  function paintHighlight(m) {
    const px = hlLayer.px;
    const dirty = lit ? { ...lit } : null;
    if (lit) {
      for (let y = lit.y0; y < lit.y1; y++) px.fill(0, y * W + lit.x0, y * W + lit.x1);
      lit = null;
    }
    if (m >= 0) {
      const inside = Uint8Array.from(leafIds, (n) => (within(n, m) ? 1 : 0));
      const box = { x0: W, y0: H, x1: 0, y1: 0 };
      inside.forEach((on, k) => {
        if (!on || leafBox.x1[k] === 0) return;
        box.x0 = Math.min(box.x0, leafBox.x0[k]);
        box.y0 = Math.min(box.y0, leafBox.y0[k]);
        box.x1 = Math.max(box.x1, leafBox.x1[k]);
        box.y1 = Math.max(box.y1, leafBox.y1[k]);
      });
      if (box.x1 > 0) {  // a node covering no pixel has nothing to light
        const pad = THICK + 1;
        lit = { x0: Math.max(0, box.x0 - pad), y0: Math.max(0, box.y0 - pad),
                x1: Math.min(W, box.x1 + pad), y1: Math.min(H, box.y1 + pad) };
        borderDistance(inside, lit.x0, lit.y0, lit.x1, lit.y1);
        for (let y = lit.y0; y < lit.y1; y++) {
          for (let x = lit.x0, p = y * W + lit.x0; x < lit.x1; x++, p++) {
            px[p] = near[p] <= THICK ? RING : inside[leaf[p]] ? LIGHT : 0;
          }
        }
      }
    }
    const area = [dirty, lit].filter(Boolean);
    if (area.length === 0) return;
    const x0 = Math.min(...area.map((r) => r.x0)), y0 = Math.min(...area.map((r) => r.y0));
    const x1 = Math.max(...area.map((r) => r.x1)), y1 = Math.max(...area.map((r) => r.y1));
    hlLayer.ctx.putImageData(hlLayer.image, 0, 0, x0, y0, x1 - x0, y1 - y0);
  }

  // ---- the view ----
  function computeCut() {
    cut = [];
    const walk = (m) => {
      if (depth[m] === level || children[m].length === 0) cut.push(m);
      else children[m].forEach(walk);
    };
    walk(focus);
    cut.sort(byArea);
    cutOfLeaf = Int32Array.from(leafIds, (n) => (within(n, focus) ? ancestorAt(n, level) : -1));
  }

  function show() {
    computeCut();
    selected = -1;
    hovered = -1;
    paintRegions();
    paintHighlight(-1);
    renderControls();
    renderTree();
    renderInfo();
  }

  function descend(m) {
    if (children[m].length === 0) {
      note = `Region #${m} has no children: it is a leaf of the tree.`;
      renderInfo();
      return;
    }
    history.push({ focus, level });
    focus = m;
    level = depth[m] + 1;
    note = "";
    show();
  }

  function back() {
    if (history.length === 0) return;
    ({ focus, level } = history.pop());
    note = "";
    show();
  }

  function goTo(m) {  // an ancestor of the focus, from the breadcrumb
    const i = history.findIndex((view) => view.focus === m);
    if (i >= 0) {
      ({ focus, level } = history[i]);
      history.length = i;
    } else {
      const keep = history.filter((view) => depth[view.focus] < depth[m]);
      history.length = 0;
      history.push(...keep);
      focus = m;
      level = depth[m] + 1;
    }
    note = "";
    show();
  }

  function setLevel(d) {
    d = Math.max(Math.min(depth[focus] + 1, deepest), Math.min(d, deepest));
    if (d === level) return;
    level = d;
    note = "";
    show();
  }

  function select(step) {
    if (cut.length === 0) return;
    selected = selected < 0 ? (step > 0 ? 0 : cut.length - 1)
      : (selected + step + cut.length) % cut.length;
    hover(-1);
  }

  function hover(m) {
    if (m !== hovered) note = "";
    hovered = m;
    paintHighlight(current());
    renderInfo();
    renderMarks();
  }

  const current = () => (hovered >= 0 ? hovered : selected >= 0 ? cut[selected] : -1);

  // ---- DOM ----
  const share = (m) => {
    const s = (100 * area[m]) / area[0];
    return s >= 9.95 ? `${s.toFixed(0)}%` : `${s.toFixed(1)}%`;
  };
  const swatch = (m) => {
    const span = document.createElement("span");
    span.className = "swatch";
    span.style.background = color[m];
    return span;
  };
  const el = (tag, className, text) => {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  };

  function renderControls() {
    const slider = $("depth");
    slider.min = Math.min(1, deepest);  // depths above the open region's children snap back
    slider.max = deepest;
    slider.value = level;
    slider.disabled = deepest === 0;
    $("depth-out").textContent = `${level} of ${deepest}`;
    const crumbs = $("crumbs");
    crumbs.replaceChildren();
    const path = [];
    for (let m = focus; m >= 0; m = parent[m]) path.unshift(m);
    path.forEach((m, i) => {
      if (i > 0) crumbs.append(el("span", "sep", "›"));
      const label = m === 0 ? "Whole image" : `#${m}`;
      if (m === focus) {
        const here = el("span", "here", label);
        here.setAttribute("aria-current", "location");
        here.dataset.node = m;
        crumbs.append(here);
      } else {
        const button = el("button", "crumb", label);
        button.type = "button";
        button.dataset.node = m;
        button.addEventListener("click", () => goTo(m));
        crumbs.append(button);
      }
    });
    if (history.length) {
      const up = el("button", "crumb back", "↑ Back (Esc)");
      up.type = "button";
      up.id = "back";
      up.addEventListener("click", back);
      crumbs.append(up);
    }
    const what = focus === 0 ? "the image" : `region #${focus}`;
    $("cut-title").textContent = `${cut.length} region${cut.length === 1 ? "" : "s"} of ${what}`;
    const list = $("cut");
    list.replaceChildren();
    cut.forEach((m, i) => {
      const button = el("button", "chip");
      button.type = "button";
      button.dataset.node = m;
      button.append(swatch(m), el("span", "id", `#${m}`), el("span", "muted", share(m)));
      const kids = children[m].length;
      button.append(el("span", "kids", kids ? `▸${kids}` : "leaf"));
      button.title = kids ? `Open #${m}: its ${kids} children become the regions` : `#${m} is a leaf`;
      button.addEventListener("click", () => descend(m));
      button.addEventListener("mouseenter", () => hover(m));
      button.addEventListener("mouseleave", () => hover(-1));
      button.addEventListener("focus", () => { selected = i; hover(-1); });
      const item = el("li");
      item.append(button);
      list.append(item);
    });
  }

  function renderInfo() {
    const info = $("info");
    const m = current() >= 0 ? current() : focus;
    info.replaceChildren();
    info.dataset.node = m;
    const head = el("div", "info-head");
    head.append(swatch(m), el("strong", "", m === 0 ? "Whole image (#0)" : `Region #${m}`));
    if (m === focus && m !== 0 && current() < 0) head.append(el("span", "muted", "(open)"));
    const facts = el("dl");
    const kids = children[m].length;
    const rows = [
      ["depth", String(depth[m])],
      ["area", `${share(m)} · ${area[m].toLocaleString("en-US")} px`],
      ["children", kids ? String(kids) : "none (leaf)"],
    ];
    rows.forEach(([name, value]) => {
      const dd = el("dd", "", value);
      dd.dataset.field = name;
      const pair = el("div");
      pair.append(el("dt", "", name), dd);
      facts.append(pair);
    });
    info.append(head, facts);
    const hint = current() >= 0
      ? (kids ? "Click or Enter: open it" : "A leaf: nothing below")
      : "Hover a region, or select one with ← →";
    info.append(el("p", "hint", note || hint));
  }

  // Leaves take consecutive columns in depth-first order, a parent sits over its children.
  const layout = (() => {
    const column = new Float64Array(size);
    let next = 0;
    const place = (m) => {
      children[m].forEach(place);
      const c = children[m];
      column[m] = c.length ? (column[c[0]] + column[c[c.length - 1]]) / 2 : next++;
    };
    place(0);
    return { column, columns: next };
  })();
  const treeNodes = new Map();

  function buildTree() {
    const room = Math.max(200, $("tree").clientWidth - 24);
    const dx = Math.max(11, Math.min(26, room / Math.max(1, layout.columns - 1)));
    const dy = 26, pad = 10, r = Math.min(7, dx / 2 - 1);
    const at = (m) => [pad + layout.column[m] * dx, pad + depth[m] * dy];
    const svg = document.createElementNS(SVG, "svg");
    const width = 2 * pad + (layout.columns - 1) * dx, height = 2 * pad + deepest * dy;
    svg.setAttribute("width", width);
    svg.setAttribute("height", height);
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    DATA.nodes.id.forEach((m) => {
      if (parent[m] < 0) return;
      const [px, py] = at(parent[m]), [x, y] = at(m);
      const path = document.createElementNS(SVG, "path");
      path.setAttribute("d", `M${px} ${py}V${(py + y) / 2}H${x}V${y}`);
      path.setAttribute("class", "link");
      svg.append(path);
    });
    DATA.nodes.id.forEach((m) => {
      const [x, y] = at(m);
      const g = document.createElementNS(SVG, "g");
      g.setAttribute("class", "node");
      g.dataset.node = m;
      const circle = document.createElementNS(SVG, "circle");
      circle.setAttribute("cx", x);
      circle.setAttribute("cy", y);
      circle.setAttribute("r", r);
      circle.setAttribute("fill", color[m]);
      const title = document.createElementNS(SVG, "title");
      title.textContent = `#${m} · depth ${depth[m]} · ${share(m)} · ${children[m].length} children`;
      g.append(title, circle);
      g.addEventListener("mouseenter", () => hover(m));
      g.addEventListener("mouseleave", () => hover(-1));
      g.addEventListener("click", () => descend(m));
      svg.append(g);
      treeNodes.set(m, g);
    });
    $("tree").replaceChildren(svg);
  }

  function renderTree() {
    const shown = new Set(cut);
    treeNodes.forEach((g, m) => {
      g.classList.toggle("in-cut", shown.has(m));
      g.classList.toggle("focus", m === focus);
      g.classList.toggle("dim", !within(m, focus) && !within(focus, m));
    });
    renderMarks();
  }

  function renderMarks() {
    const m = current();
    treeNodes.forEach((g, n) => g.classList.toggle("hover", n === m));
    document.querySelectorAll("#cut .chip").forEach((chip, i) => {
      chip.classList.toggle("hover", Number(chip.dataset.node) === m);
      chip.setAttribute("aria-selected", String(i === selected));
    });
  }

  // ---- input ----
  const stage = $("stage");
  const nodeAt = (event) => {
    const box = stage.getBoundingClientRect();
    const x = Math.min(W - 1, Math.max(0, Math.floor(((event.clientX - box.left) * W) / box.width)));
    const y = Math.min(H - 1, Math.max(0, Math.floor(((event.clientY - box.top) * H) / box.height)));
    return cutOfLeaf[leaf[y * W + x]];
  };
  stage.addEventListener("mousemove", (event) => {
    if (!leaf) return;
    const m = nodeAt(event);
    stage.dataset.cursor = m < 0 ? "out" : children[m].length ? "open" : "leaf";
    if (m !== hovered) hover(m);
  });
  stage.addEventListener("mouseleave", () => { if (leaf) hover(-1); });
  stage.addEventListener("click", (event) => {
    if (!leaf) return;
    const m = nodeAt(event);
    if (m < 0) back();
    else descend(m);
  });
  $("depth").addEventListener("input", (event) => {
    setLevel(Number(event.target.value));
    event.target.value = level;
  });
  const setMode = (outline) => {
    document.body.classList.toggle("outline", outline);
    $("mode-fill").setAttribute("aria-pressed", String(!outline));
    $("mode-outline").setAttribute("aria-pressed", String(outline));
  };
  $("mode-fill").addEventListener("click", () => setMode(false));
  $("mode-outline").addEventListener("click", () => setMode(true));
  document.addEventListener("keydown", (event) => {
    if (!leaf || event.altKey || event.ctrlKey || event.metaKey) return;
    const target = event.target;
    const onButton = target instanceof HTMLButtonElement;
    switch (event.key) {
      case "ArrowLeft":
      case "ArrowRight":
        if (target === $("depth")) return;
        select(event.key === "ArrowRight" ? 1 : -1);
        break;
      case "ArrowUp":
        setLevel(level - 1);
        break;
      case "ArrowDown":
        setLevel(level + 1);
        break;
      case "Enter":
        if (onButton) return;
        if (selected >= 0) descend(cut[selected]);
        else select(1);
        break;
      case "Escape":
      case "Backspace":
        back();
        break;
      case "o":
      case "O":
        setMode(!document.body.classList.contains("outline"));
        break;
      default:
        return;
    }
    event.preventDefault();
  });

  // ---- start ----
  async function decodeLeaves() {
    const text = atob(DATA.leaves);
    const bytes = new Uint8Array(text.length);
    for (let i = 0; i < text.length; i++) bytes[i] = text.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("deflate"));
    const buffer = await new Response(stream).arrayBuffer();
    const cells = DATA.leafBytes === 2 ? new Uint16Array(buffer) : new Uint8Array(buffer);
    if (cells.length !== W * H) throw new Error(`leaf map has ${cells.length} cells, not ${W * H}`);
    return cells;
  }

  async function start() {
    const leaves = leafIds.length;
    $("summary").textContent = `${W} × ${H} px · ${DATA.nodes.id.length} nodes · ` +
      `${leaves} leaves · depths 0–${deepest}`;
    stage.style.setProperty("--aspect", `${W} / ${H}`);
    const photo = $("photo");
    photo.src = DATA.image;
    buildTree();
    try {
      if (typeof DecompressionStream === "undefined") {
        throw new Error("this browser lacks DecompressionStream (Chrome 80, Firefox 113, " +
          "Safari 16.4 or newer needed)");
      }
      [leaf] = await Promise.all([decodeLeaves(), photo.decode()]);
    } catch (error) {
      stage.append(el("p", "failure", `The viewer cannot show this image: ${error.message}`));
      throw error;
    }
    measureLeaves();
    show();
    document.documentElement.dataset.ready = "true";
  }

  start();
})();
