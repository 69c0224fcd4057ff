"""mms-gateway: send MMS to US/CA phones through Plivo."""

__version__ = "0.1.0"
