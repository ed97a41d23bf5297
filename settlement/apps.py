from django.apps import AppConfig


class SettlementConfig(AppConfig):
    name = "settlement"
    verbose_name = "Settlement, ledger and balances"

    def ready(self) -> None:
        from django.db.models.signals import post_migrate

        from settlement.ledger import known_accounts

        # Emptied tables (flush) give accounts new ids: what the process remembers is wrong.
        post_migrate.connect(known_accounts.forget_all, dispatch_uid="ledger_known_accounts")
