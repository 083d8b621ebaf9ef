"""Getting what a person must see into Slack: a projection of each run's events, delivered until Slack takes it."""

from .live import LiveSteps, Streams
from .planner import RunView, plan
from .sender import Sender
from .service import DeliveryService

__all__ = ["DeliveryService", "LiveSteps", "RunView", "Sender", "Streams", "plan"]
