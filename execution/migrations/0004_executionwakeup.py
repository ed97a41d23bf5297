from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('execution', '0003_attempt_closed_reason_fail_reasons'),
    ]

    operations = [
        migrations.CreateModel(
            name='ExecutionWakeup',
            fields=[
                ('id', models.PositiveSmallIntegerField(default=1, primary_key=True, serialize=False)),
                ('pending', models.BooleanField(default=False)),
                ('requested_at', models.DateTimeField(blank=True, null=True)),
            ],
            options={
                'constraints': [models.CheckConstraint(condition=models.Q(('id', 1)), name='execution_wakeup_one_row')],
            },
        ),
        # The row is made here; the service still copes without it (a flushed test database).
        migrations.RunSQL("INSERT INTO execution_executionwakeup (id, pending) VALUES (1, false)",
                          reverse_sql=migrations.RunSQL.noop),
    ]
