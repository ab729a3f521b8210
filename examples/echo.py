"""Echo server in uWSGI's style: runs unmodified under uWSGI and geows.

geows serve examples/echo.py      # then open http://127.0.0.1:8000/
"""

import uwsgi

PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>geows echo</title></head>
<body>
<h1>geows echo</h1>
<form id="f"><input id="m" value="hello" autofocus> <button>send</button></form>
<pre id="log"></pre>
<script>
const log = (t) => document.getElementById("log").textContent += t + "\\n";
const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://")
                         + location.host + "/ws");
ws.onopen = () => log("open");
ws.onmessage = (e) => log("< " + e.data);
ws.onclose = (e) => log("closed " + e.code);
document.getElementById("f").onsubmit = (e) => {
  e.preventDefault();
  const m = document.getElementById("m").value;
  ws.send(m); log("> " + m);
};
</script>
</body></html>
"""


def application(env, start_response):
    if env["PATH_INFO"] == "/ws":
        uwsgi.websocket_handshake(
            env["HTTP_SEC_WEBSOCKET_KEY"], env.get("HTTP_ORIGIN", "")
        )
        while True:
            msg = uwsgi.websocket_recv()
            uwsgi.websocket_send(msg)
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
    return [PAGE]
