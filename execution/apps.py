from django.apps import AppConfig


class ExecutionConfig(AppConfig):
    name = "execution"

    def ready(self) -> None:
        from execution.services.recovery import execution_resume_after_reset
        from risk.services.breaker import breaker_on_reset

        # Quotes held while the breaker was open start as soon as an operator resets it
        # (the minute job `resume_waiting` would pick them up anyway).
        breaker_on_reset(execution_resume_after_reset)
