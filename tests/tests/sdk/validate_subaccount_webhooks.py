"""Checks the simulator's webhooks for a subaccount's number with Twilio's official RequestValidator.

The official SDK creates a subaccount and reads its auth token back (as a parent account does), buys a number in the
subaccount whose SmsUrl points at a small HTTP server in this script, and sends a message from it that asks for
status callbacks there. The simulator is then told that a handset replied and that the message was delivered; it
calls this script's server as Twilio would. Each request must validate with the subaccount's token and not with the
main account's. Prints one JSON line.

Usage: validate_subaccount_webhooks.py BASE_URL ACCOUNT_SID AUTH_TOKEN
"""
import http.server
import json
import sys
import threading
import time
import urllib.parse
import urllib.request

from twilio.request_validator import RequestValidator
from twilio.rest import Client

base, main_sid, main_token = sys.argv[1:4]
captured = []


class Capture(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode()
        captured.append({
            "url": f"http://127.0.0.1:{self.server.server_port}{self.path}",
            "signature": self.headers.get("X-Twilio-Signature", ""),
            "params": dict(urllib.parse.parse_qsl(body, keep_blank_values=True)),
        })
        self.send_response(200)
        self.send_header("Content-Type", "text/xml")
        self.end_headers()
        self.wfile.write(b"<Response/>")

    def log_message(self, *args):
        pass


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Capture)
threading.Thread(target=server.serve_forever, daemon=True).start()
hook = f"http://127.0.0.1:{server.server_port}"

c = Client(main_sid, main_token)
c.api.base_url = base
sub = c.api.v2010.accounts.create(friendly_name="Validator check")
fetched = c.api.v2010.accounts(sub.sid).fetch()
sub_token = fetched.auth_token
out = {
    "sub_sid": sub.sid,
    "owner": fetched.owner_account_sid,
    "status": fetched.status,
    "token_differs": bool(sub_token) and sub_token != main_token,
}

in_sub = c.api.v2010.accounts(sub.sid)
available = in_sub.available_phone_numbers("US").local.list(area_code=415, limit=1)
number = in_sub.incoming_phone_numbers.create(phone_number=available[0].phone_number, sms_url=f"{hook}/inbound")
message = in_sub.messages.create(
    to="+14155552671", from_=number.phone_number, body="Water off Tuesday", status_callback=f"{hook}/status?b=x"
)


def sim(path, payload):
    req = urllib.request.Request(base + path, data=json.dumps(payload).encode(),
                                 headers={"Content-Type": "application/json"})
    return json.loads(urllib.request.urlopen(req).read())


sim("/_sim/inbound", {"from": "+14155552671", "to": number.phone_number, "body": "STOP"})
sim("/_sim/status-callback", {"sid": message.sid, "status": "delivered"})
deadline = time.time() + 5
while len(captured) < 2 and time.time() < deadline:
    time.sleep(0.05)

for who, token in [("subaccount_token", sub_token), ("main_token", main_token)]:
    validator = RequestValidator(token)
    out[who] = [validator.validate(r["url"], r["params"], r["signature"]) for r in captured]
out["account_sids"] = [r["params"].get("AccountSid") for r in captured]
out["paths"] = [urllib.parse.urlparse(r["url"]).path for r in captured]
print(json.dumps(out))
