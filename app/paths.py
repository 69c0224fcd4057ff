"""The two paths several modules need to know: the send route and Plivo's callback route."""

SEND_PATH = "/api/mms/send"
CALLBACK_PATH = "/api/mms/status"
