"""The built-in example workflows every installation has."""

from __future__ import annotations

from ..workflow import CommittedWorkflow


def builtin_workflows() -> list[CommittedWorkflow]:
    from .approval import approval
    from .greet import greet_user

    found = [greet_user, approval]
    try:
        from .deploy_app import chat_flow, deploy_app
    except ImportError:  # agents not available in this build
        return found
    return found + [deploy_app, chat_flow]
