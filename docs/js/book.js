// Added to every page of both editions (book.toml, additional-js): a language switch that links
// this chapter to the same chapter in the other edition, and the Pagefind search box.
//
// Layout of the built site (docs/build): the English edition at the root, the Chinese edition in
// zh-CN/, and one Pagefind bundle in pagefind/ at the root holding an index per language (Pagefind
// reads each page's <html lang>), so each edition searches its own language.
(function () {
  "use strict";

  const EDITIONS = [
    { lang: "en", dir: "", label: "English", title: "Read this page in English" },
    { lang: "zh-CN", dir: "zh-CN/", label: "中文", title: "阅读本页的中文版" },
  ];
  const SEARCH_LABEL = { en: "Search this book", "zh-CN": "搜索本书" };

  const lang = document.documentElement.lang || "en";
  const here = EDITIONS.find((e) => e.lang === lang) || EDITIONS[0];
  // mdBook defines path_to_root on every page: the way up to this edition's root.
  // (It is "" on a page at the root: new URL("", page) would be the page itself, not its folder.)
  const up = typeof path_to_root === "string" ? path_to_root : "";
  const editionRoot = new URL(up || "./", location.href);
  const siteRoot = new URL(here.dir ? "../" : "./", editionRoot);
  let page = location.pathname.startsWith(editionRoot.pathname)
    ? location.pathname.slice(editionRoot.pathname.length)
    : "";
  if (page === "" || page.endsWith("/")) page += "index.html";

  const rightButtons = document.querySelector(".menu-bar .right-buttons");
  const leftButtons = document.querySelector(".menu-bar .left-buttons");

  // The language switch: one link per other edition, to the same page and the same heading
  // (the translation keeps every heading's id).
  for (const other of EDITIONS) {
    if (other === here || !rightButtons) continue;
    const a = document.createElement("a");
    a.className = "language-switch";
    a.href = new URL(other.dir + page, siteRoot).href + location.hash;
    a.hreflang = other.lang;
    a.lang = other.lang;
    a.title = other.title;
    a.textContent = other.label;
    a.addEventListener("click", () => {
      a.href = new URL(other.dir + page, siteRoot).href + location.hash;
    });
    rightButtons.prepend(a);
  }

  // Search: a button in the menu bar opens a panel with Pagefind's UI, loaded on first use.
  if (!leftButtons) return;
  const button = document.createElement("button");
  button.id = "pagefind-toggle";
  button.className = "icon-button";
  button.type = "button";
  button.title = SEARCH_LABEL[here.lang] + " (/)";
  button.setAttribute("aria-label", SEARCH_LABEL[here.lang]);
  button.setAttribute("aria-expanded", "false");
  button.innerHTML =
    '<svg viewBox="0 0 512 512" width="1em" height="1em" aria-hidden="true"><path fill="currentColor" ' +
    'd="M416 208c0 45.9-14.9 88.3-40 122.7l126.6 126.7c12.5 12.5 12.5 32.8 0 45.3s-32.8 12.5-45.3 ' +
    '0L330.7 376c-34.4 25.2-76.8 40-122.7 40C93.1 416 0 322.9 0 208S93.1 0 208 0s208 93.1 208 ' +
    '208zM208 352a144 144 0 1 0 0-288 144 144 0 1 0 0 288z"/></svg>';
  leftButtons.append(button);

  const panel = document.createElement("div");
  panel.id = "pagefind-panel";
  panel.hidden = true;
  panel.innerHTML = '<div id="pagefind-search"></div>';
  document.querySelector(".menu-bar").after(panel);

  let ui = null;
  function load() {
    if (ui) return Promise.resolve(ui);
    const bundle = new URL("pagefind/", siteRoot);
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = bundle.href + "pagefind-ui.css";
    document.head.append(css);
    return new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = bundle.href + "pagefind-ui.js";
      script.onload = () => {
        ui = new PagefindUI({
          element: "#pagefind-search",
          bundlePath: bundle.pathname,
          baseUrl: siteRoot.pathname,
          showSubResults: true,
          showImages: false,
          resetStyles: false,
        });
        resolve(ui);
      };
      script.onerror = () => {
        panel.textContent =
          "Search is built by docs/build (Pagefind) and needs the book served over HTTP.";
        reject(new Error("no Pagefind bundle at " + bundle.href));
      };
      document.head.append(script);
    });
  }
  function open(term) {
    panel.hidden = false;
    button.setAttribute("aria-expanded", "true");
    return load().then((ui) => {
      if (term) ui.triggerSearch(term);
      const input = panel.querySelector("input");
      if (input) input.focus();
    });
  }
  function close() {
    panel.hidden = true;
    button.setAttribute("aria-expanded", "false");
  }
  button.addEventListener("click", () => (panel.hidden ? open() : close()));
  document.addEventListener("keydown", (e) => {
    const typing = /^(INPUT|TEXTAREA|SELECT)$/.test(document.activeElement.tagName);
    if (e.key === "Escape" && !panel.hidden) close();
    else if (!typing && !e.ctrlKey && !e.metaKey && !e.altKey && (e.key === "/" || e.key === "s")) {
      e.preventDefault();
      open();
    }
  });
  // ?search=term opens the panel with that search (bookmarkable; docs/search-test.py uses it).
  const term = new URLSearchParams(location.search).get("search");
  if (term) open(term);
})();
