"""Execution services: start, drive, guard, record and recover Solana executions.

Public entry points: `execution_run` (the task), `execution_drive`,
`execution_recover_stuck`, `execution_resume_waiting`.
"""
