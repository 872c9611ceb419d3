"""Drives Twilio's official Python SDK against the simulator and prints what it parsed, as one JSON line.

Usage: twilio_sdk_check.py BASE_URL ACCOUNT_SID AUTH_TOKEN
"""
import datetime
import json
import sys

from twilio.base.exceptions import TwilioException, TwilioRestException
from twilio.rest import Client

base, sid, token = sys.argv[1:4]


def client(tok):
    c = Client(sid, tok)
    # Every request and every next_page_uri goes through the API domain's base URL.
    c.api.base_url = base
    return c


c = client(token)
out = {}

available = c.available_phone_numbers("US").local.list(area_code=415, sms_enabled=True, limit=3)
out["available"] = len(available)
number = c.incoming_phone_numbers.create(phone_number=available[0].phone_number, friendly_name="msgr:sdk:1")
out["bought_sid"] = number.sid
out["by_friendly_name"] = len(c.incoming_phone_numbers.list(friendly_name="msgr:sdk:1"))

m = c.messages.create(to="+14155552671", from_=number.phone_number, body="x" * 161)
out["message_sid"] = m.sid
out["num_segments"] = m.num_segments
out["date_created_is_datetime"] = isinstance(m.date_created, datetime.datetime)
for i in range(119):
    c.messages.create(to="+14155552671", from_=number.phone_number, body=f"n{i}")
# page_size 50 makes the SDK follow next_page_uri twice.
out["listed"] = len(list(c.messages.stream(to="+14155552671", page_size=50)))


def error(fn):
    try:
        fn()
    except TwilioRestException as e:
        return [e.status, e.code]
    return None


out["invalid_to"] = error(lambda: c.messages.create(to="5551234567", from_=number.phone_number, body="x"))
out["too_long"] = error(lambda: c.messages.create(to="+14155552671", from_=number.phone_number, body="x" * 1601))
out["bad_auth"] = error(lambda: client("wrong").messages.create(to="+14155552671", from_=number.phone_number, body="x"))
# A list page that is not HTTP 200 raises the SDK's generic "Unable to fetch page" with the response attached.
try:
    client("wrong").messages.list(limit=1)
    out["bad_auth_list"] = None
except TwilioException as e:
    out["bad_auth_list"] = e.args[1].status_code
print(json.dumps(out))
