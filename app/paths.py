"""The paths several modules need to know: the send route and Plivo's signed routes."""

SEND_PATH = "/api/mms/send"
CALLBACK_PATH = "/api/mms/status"
INBOUND_PATH = "/api/mms/inbound"
MMS_PATH = "/api/mms"  # lookups: /api/mms/{id} (the `Location` of an asynchronous send)
