"""Bolt listeners: parse a Slack payload, authorize, ack, and hand the work to a background task."""
