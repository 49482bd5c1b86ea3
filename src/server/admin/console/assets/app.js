// Tessera's console: keeps the page's live region current and runs the action buttons.
//
// Every two seconds the page's own URL is fetched with `fragment=1`, which the server
// answers with the live region only; it is swapped in when it changed. The markup comes
// from this origin and every value in it is escaped by the server; the page's
// Content-Security-Policy runs no inline script besides.
//
// A button with `data-post` POSTs to that URL of the JSON API (the same routes as
// `tessera suspend`, `resume`, `reconcile`, `renew`), then refreshes; a refusal shows the
// API's `error` message (a viewer's 403, a follower's 409).
'use strict';

(function () {
  // How often the live region is refreshed: the issue asks for changes within a couple
  // of seconds.
  const POLL_MS = 2000;

  let inFlight = false;
  let last = null;

  function liveRegion() {
    return document.getElementById('live');
  }

  function fragmentUrl() {
    const url = new URL(window.location.href);
    url.searchParams.set('fragment', '1');
    return url.toString();
  }

  function show(message, kind) {
    const flash = document.getElementById('flash');
    if (!flash) {
      return;
    }
    flash.textContent = message;
    flash.className = kind;
  }

  async function refresh() {
    const live = liveRegion();
    if (!live || inFlight || document.hidden) {
      return;
    }
    inFlight = true;
    try {
      const response = await fetch(fragmentUrl(), {
        credentials: 'same-origin',
        headers: { Accept: 'text/html' },
        cache: 'no-store',
      });
      if (response.status === 401) {
        window.location.assign('/ui/login');
        return;
      }
      if (!response.ok) {
        return;
      }
      const html = await response.text();
      if (last === null) {
        last = live.innerHTML;
      }
      if (html !== last) {
        last = html;
        live.innerHTML = html;
        live.dataset.refreshed = String(Date.now());
      }
    } catch (error) {
      // The server restarting: the next poll tries again.
    } finally {
      inFlight = false;
    }
  }

  async function post(button) {
    button.disabled = true;
    show('Working…', 'info');
    try {
      const response = await fetch(button.dataset.post, {
        method: 'POST',
        credentials: 'same-origin',
        headers: { Accept: 'application/json' },
      });
      let body = null;
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
      if (response.ok) {
        show((body && body.message) || 'Done.', 'ok');
      } else {
        const reason = (body && body.error) || response.statusText;
        show(`${response.status}: ${reason}`, 'error');
      }
    } catch (error) {
      show(String(error), 'error');
    } finally {
      button.disabled = false;
      refresh();
    }
  }

  document.addEventListener('click', function (event) {
    const button = event.target.closest('button[data-post]');
    if (button) {
      event.preventDefault();
      post(button);
    }
  });

  window.setInterval(refresh, POLL_MS);
})();
