from .base import ConnectionLost, Outcome, SendResult, Transport, transport_for

__all__ = ["ConnectionLost", "Outcome", "SendResult", "Transport", "transport_for"]
